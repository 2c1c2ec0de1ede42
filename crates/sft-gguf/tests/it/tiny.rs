//! A tiny random Llama with a SentencePiece vocabulary, written by gguf-py as llama.cpp's
//! converter writes one (Q/K rows permuted, mixed tensor types, untied output), against what
//! transformers' GGUF loader makes of it: token ids, per-sequence loss, last logits, greedy.

use sft_model::model::{Batch, Model, Sequence, Trainable};

use super::common::{fixture, greedy, ids, json, scratch};

#[test]
fn tiny_spm_llama_matches_transformers() {
    let out = scratch("tiny").join("model");
    let summary = sft_gguf::import(&fixture("tiny_llama_spm.gguf"), &out).expect("import");
    assert_eq!((summary.architecture.as_str(), summary.tokenizer.as_str(), summary.tied), ("llama", "llama", false));
    let reference = json(&fixture("tiny_llama_spm.json"));
    let tok = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).expect("tokenizer.json loads");
    let mut checked = 0;
    for case in reference["texts"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let got = tok.encode(text, true).expect("encode").get_ids().to_vec();
        assert_eq!(got, ids(&case["ids"]), "{text:?}");
        checked += 1;
    }
    assert!(checked >= 20);
    let config: serde_json::Value = json(&out.join("tokenizer_config.json"));
    assert_eq!((config["add_bos_token"].as_bool(), config["bos_token"].as_str()), (Some(true), Some("<s>")));
    assert!(std::fs::read_to_string(out.join("chat_template.jinja")).unwrap().contains("[INST]"));

    let model = Model::load(&out, &Trainable::Frozen).expect("model loads");
    for case in reference["sequences"].as_array().unwrap() {
        let input = ids(&case["ids"]);
        let labels: Vec<i32> = input.iter().map(|&i| i as i32).collect();
        let batch = Batch::new(&[Sequence::single(&input, &labels)], 0).unwrap();
        let loss = model.evaluate(&[Sequence::single(&input, &labels)]).unwrap().loss();
        let want = case["loss"].as_f64().unwrap();
        assert!((loss - want).abs() / want < 1e-5, "{}: loss {loss} vs {want}", case["text"]);
        let last: Vec<f32> = model.last_logits(&batch).unwrap().to_vec1().unwrap();
        let want_logits: Vec<f64> = case["last_logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(last.len(), want_logits.len());
        let worst = last.iter().zip(&want_logits).map(|(a, b)| (*a as f64 - b).abs()).fold(0f64, f64::max);
        assert!(worst < 1e-4, "{}: logits differ by {worst}", case["text"]);
    }
    for case in reference["greedy"].as_array().unwrap() {
        assert_eq!(greedy(&model, &ids(&case["ids"]), 16), ids(&case["new"]), "{}", case["prompt"]);
    }
}

#[test]
fn an_existing_output_is_never_overwritten() {
    let dir = scratch("exists");
    std::fs::write(dir.join("keep.txt"), "mine").unwrap();
    let e = sft_gguf::import(&fixture("tiny_llama_spm.gguf"), &dir).unwrap_err().to_string();
    assert!(e.contains("exists and is not empty"), "{e}");
    assert_eq!(std::fs::read_to_string(dir.join("keep.txt")).unwrap(), "mine");
    let names: Vec<_> = std::fs::read_dir(dir.parent().unwrap()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(!names.iter().any(|n| n.to_string_lossy().contains(".partial-")), "{names:?}");
}
