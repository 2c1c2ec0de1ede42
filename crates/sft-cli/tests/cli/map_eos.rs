//! Issue 21: the seed's workflow as training keys. A run shaped like the seed (ShareGPT data,
//! `chat_template: chatml`, `map_eos_token: true`, Unsloth's markers, `load_in_4bit`,
//! `max_seq_length: 2048`, LoRA) on a base-style model whose EOS (`<|endoftext|>`) is not the
//! template's end-of-turn token (`<|im_end|>`): every trained turn ends in a trained
//! `<|im_end|>`, no other EOS is appended, the checkpoint (and its merge) declare `<|im_end|>` as
//! the EOS, keep the template keyword arguments, and generation from it stops there, as
//! transformers' `generate` does on the merged model of tests/fixtures/train/map_eos.

use std::path::{Path, PathBuf};

use super::{init_model, json_file, jsonl_file, root, sft, stderr};

/// Token ids of the quickstart tokenizer's special tokens.
const ENDOFTEXT: i64 = 0;
const IM_END: i64 = 2;
/// A base-style model: the quickstart tokenizer with `<|endoftext|>` as its EOS and no chat
/// template of its own, and a tiny random Llama whose config says the same.
fn base_model(dir: &Path) -> PathBuf {
    let tokenizer = dir.join("tokenizer");
    std::fs::create_dir_all(&tokenizer).unwrap();
    std::fs::copy(root().join("examples/quickstart/tokenizer/tokenizer.json"), tokenizer.join("tokenizer.json")).unwrap();
    let mut config = json_file(&root().join("examples/quickstart/tokenizer/tokenizer_config.json"));
    config["eos_token"] = "<|endoftext|>".into();
    config.as_object_mut().unwrap().remove("chat_template");
    std::fs::write(tokenizer.join("tokenizer_config.json"), config.to_string()).unwrap();
    std::fs::write(tokenizer.join("generation_config.json"), r#"{"eos_token_id": 0}"#).unwrap();
    let model = dir.join("base");
    init_model(
        r#"{"model_type": "llama", "vocab_size": 829, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
            "tie_word_embeddings": true, "eos_token_id": 0, "initializer_range": 0.1}"#,
        &tokenizer,
        7,
        &model,
    );
    model
}

/// The seed's training config, LoRA on a 4-bit base.
fn seed_config(dir: &Path, model: &Path, steps: usize) -> PathBuf {
    let yaml = format!(
        "model: {model}\ndatasets:\n  - path: examples/quickstart/train_sharegpt.jsonl\n    format: sharegpt\n\
         chat_template: chatml\nmap_eos_token: true\ntemplate_kwargs:\n  custom_flag: true\n\
         masking: markers\ninstruction_part: \"<|im_start|>user\\n\"\nresponse_part: \"<|im_start|>assistant\\n\"\n\
         load_in_4bit: true\nmax_seq_length: 2048\nfinetuning: lora\nlora_r: 8\nlora_alpha: 16\n\
         learning_rate: 0.01\nmax_steps: {steps}\nper_device_train_batch_size: 2\nlogging_steps: 1\nsave_steps: {steps}\n\
         seed: 3\noutput_dir: {out}\n",
        model = model.display(),
        out = dir.join("out").display()
    );
    let path = dir.join("train.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

fn ints(v: &serde_json::Value) -> Vec<i64> {
    v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect()
}

#[test]
fn a_seed_shaped_run_trains_stops_and_declares_the_mapped_eos() {
    let dir = root().join("target/cli-tests/map-eos");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let model = base_model(&dir);
    let config = seed_config(&dir, &model, 4);

    // The examples: every trained run holds a trained <|im_end|>, followed at most by the
    // newline ChatML writes after it; <|endoftext|> never appears.
    let rows = dir.join("rows.jsonl");
    let args = [
        "prepare",
        "--config",
        &config.display().to_string(),
        "--out",
        &dir.join("prepared").display().to_string(),
        "--emit-jsonl",
        &rows.display().to_string(),
        "examples/quickstart/train_sharegpt.jsonl",
    ];
    let out = sft(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut turns = 0;
    for row in jsonl_file(&rows) {
        let (ids, labels) = (ints(&row["input_ids"]), ints(&row["labels"]));
        assert!(!ids.contains(&ENDOFTEXT), "an EOS was appended: {ids:?}");
        let mut run: Vec<i64> = vec![];
        for (i, &l) in labels.iter().enumerate() {
            if l != -100 {
                run.push(l);
            }
            let ends = l != -100 && labels.get(i + 1).is_none_or(|&n| n == -100);
            if ends {
                let last_real = run.iter().rposition(|&t| t == IM_END);
                assert!(last_real.is_some_and(|p| run.len() - p <= 2), "a trained turn that does not end in <|im_end|>: {run:?}");
                turns += 1;
                run.clear();
            }
        }
    }
    assert!(turns > 800, "{turns} trained turns");

    // Training: the checkpoint declares <|im_end|> as the EOS and keeps the template kwargs.
    let out = sft(&["train", &config.display().to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ckpt = dir.join("out/checkpoint-4");
    assert_declares_im_end(&ckpt);
    assert_eq!(json_file(&ckpt.join("template_kwargs.json")), serde_json::json!({"custom_flag": true}));

    // Generation from the checkpoint (the seed's command) stops at <|im_end|> when it comes.
    let ckpt_name = ckpt.display().to_string();
    let args = [
        "generate",
        "--model",
        &ckpt_name,
        "--load-in-4bit",
        "--temperature",
        "0.7",
        "--prompt",
        "The striker scored. Topic?",
        "--json",
        "--max-new-tokens",
        "24",
    ];
    let out = sft(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids = ints(&answer["token_ids"]);
    if let Some(p) = ids.iter().position(|&t| t == IM_END) {
        assert_eq!(p + 1, ids.len(), "generation went on after <|im_end|>: {ids:?}");
    }

    // The merged model declares it too, for transformers, llama.cpp and Ollama.
    let merged = dir.join("merged");
    let out = sft(&["merge", "--model", &ckpt_name, "--out", &merged.display().to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_declares_im_end(&merged);
}

fn assert_declares_im_end(dir: &Path) {
    assert_eq!(json_file(&dir.join("tokenizer_config.json"))["eos_token"], "<|im_end|>", "{}", dir.display());
    let generation = json_file(&dir.join("generation_config.json"));
    assert_eq!(ints(&generation["eos_token_id"]), vec![IM_END, ENDOFTEXT], "{}", dir.display());
}

/// transformers' greedy `generate` on the merged model of a longer seed-shaped run (made by
/// tests/fixtures/train/gen_map_eos_fixture.py) stops at `<|im_end|>` on every prompt;
/// `sft generate` on the same merged model gives the same tokens.
#[test]
fn generation_stops_at_the_mapped_eos_as_transformers_does() {
    let fixture = root().join("tests/fixtures/train/map_eos");
    let expected = json_file(&fixture.join("expected.json"));
    let model = fixture.join("merged").display().to_string();
    for case in expected["cases"].as_array().unwrap() {
        let want = ints(&case["transformers_ids"]);
        assert_eq!(want.last(), Some(&IM_END), "the fixture's transformers run must stop at <|im_end|>");
        let messages = scratch_messages(&case["messages"]);
        let args = ["generate", "--model", &model, "--messages", &messages.display().to_string(), "--json", "--max-new-tokens", "48"];
        let out = sft(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(ints(&got["token_ids"]), want, "{}", case["messages"]);
    }
}

fn scratch_messages(messages: &serde_json::Value) -> PathBuf {
    let path = root().join("target/cli-tests/map-eos-messages").join(format!("{:x}.json", fxhash(&messages.to_string())));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, messages.to_string()).unwrap();
    path
}

fn fxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}
