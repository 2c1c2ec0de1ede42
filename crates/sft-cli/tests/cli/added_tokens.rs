//! Issue 27's `added_tokens` and `modules_to_save` through the binary, on the eval fixture's
//! tied Qwen2 model and real tokenizer with tests/fixtures/model/added_tokens (made by
//! gen_added_tokens_fixtures.py with transformers + PEFT): a run adds the tokens, grows the
//! model, starts at the loss PEFT computes for the fresh setup and saves an adapter with PEFT's
//! names and the extended tokenizer; eval, merge, `--resume` and `adapter:` load it; eval loads
//! the adapter PEFT saved with PEFT's loss; bad values are refused naming the key.

use std::path::Path;

use super::{config, json_file, lines, logged_losses, root, sft, stderr};

const FIXTURE: &str = "tests/fixtures/model/added_tokens";
const BODY: &str = "model: tests/fixtures/model/eval/model\ndatasets:\n  - path: tests/fixtures/model/added_tokens/data.jsonl\n\
     added_tokens: [\"<|tool|>\", \"<|think|>\", \"<|im_end|>\"]\nmodules_to_save: [embed_tokens, lm_head]\n\
     lora_r: 4\nlora_alpha: 8\nmax_steps: 3\nper_device_train_batch_size: 4\nlogging_steps: 1\nlearning_rate: 0.01\nsave_steps: 3\n";

fn eval(args: &[&str]) -> f64 {
    let out = sft(&[&["eval"], args, &["--data", &format!("{FIXTURE}/data.jsonl"), "--json"][..]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    lines(&out)[0]["loss"].as_f64().unwrap()
}

/// The shapes of a safetensors file's tensors, by name.
fn shapes(path: &Path) -> serde_json::Map<String, serde_json::Value> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header.into_iter().filter(|(k, _)| k != "__metadata__").map(|(k, v)| (k, v["shape"].clone())).collect()
}

fn close(a: f64, b: f64, what: &str) {
    assert!(((a - b) / b).abs() <= 1e-4, "{what}: {a} vs {b}");
}

#[test]
fn added_tokens_train_save_and_load_like_peft() {
    let expected = json_file(&root().join(FIXTURE).join("tied/inputs.json"));
    let cfg = config("added-tokens", BODY);
    let out = sft(&["train", cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("added_tokens: 2 new of 3 (<|tool|> 320, <|think|> 321, <|im_end|> 2)"), "{}", stderr(&out));
    let ckpt = cfg.parent().unwrap().join("out/checkpoint-3");
    let losses = logged_losses(&ckpt);
    // Step 1 sees the whole file with B = 0: PEFT's loss of the fresh resized model over it.
    close(losses[0], expected["fresh"]["data"]["loss"].as_f64().unwrap(), "first loss");
    assert!(losses[2] < losses[0], "it trains: {losses:?}");

    // PEFT's layout: modules_to_save listed, the whole layers under PEFT's names, and the
    // extended tokenizer beside the adapter.
    let peft = json_file(&ckpt.join("adapter_config.json"));
    assert_eq!(peft["modules_to_save"], serde_json::json!(["embed_tokens", "lm_head"]));
    let shapes = shapes(&ckpt.join("adapter_model.safetensors"));
    for name in ["base_model.model.model.embed_tokens.weight", "base_model.model.lm_head.weight"] {
        assert_eq!(shapes.get(name), Some(&serde_json::json!([322, 32])), "{name} in {:?}", shapes.keys());
    }
    let tokenizer = json_file(&ckpt.join("tokenizer.json"));
    let added: Vec<(u64, &str)> =
        tokenizer["added_tokens"].as_array().unwrap().iter().map(|t| (t["id"].as_u64().unwrap(), t["content"].as_str().unwrap())).collect();
    assert_eq!(&added[3..], [(320, "<|tool|>"), (321, "<|think|>")]);
    let theirs = json_file(&root().join(FIXTURE).join("tied/tokenizer/tokenizer.json"));
    assert_eq!(tokenizer["added_tokens"], theirs["added_tokens"], "transformers' added_tokens entries");

    // eval, merge, --resume and adapter: load it.
    let trained = eval(&["--model", ckpt.to_str().unwrap()]);
    assert!(trained.is_finite() && trained < losses[0], "{trained}");
    let merged = root().join("target/cli-tests/added-tokens-merged");
    let _ = std::fs::remove_dir_all(&merged);
    let out = sft(&["merge", "--model", ckpt.to_str().unwrap(), "--out", merged.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let merged_config = json_file(&merged.join("config.json"));
    assert_eq!((merged_config["vocab_size"].as_u64(), merged_config["tie_word_embeddings"].as_bool()), (Some(322), Some(false)));
    close(eval(&["--model", merged.to_str().unwrap()]), trained, "merged");
    let out = sft(&["train", cfg.to_str().unwrap(), "--resume", "latest", "--set", "max_steps=4"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let body = format!("{BODY}adapter: {}\n", ckpt.display());
    let cont = config("added-tokens-continue", &body);
    let out = sft(&["train", cont.to_str().unwrap(), "--set", "max_steps=1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let first = logged_losses(&cont.parent().unwrap().join("out/checkpoint-1"))[0];
    close(first, trained, "continued from the adapter");
}

/// The adapter PEFT saved (with its tokenizer beside it) loads with PEFT's loss.
#[test]
fn a_peft_adapter_with_modules_to_save_evaluates_to_peft_s_loss() {
    for case in ["tied", "untied"] {
        let expected = json_file(&root().join(FIXTURE).join(case).join("inputs.json"));
        let base = expected["base"].as_str().unwrap().to_string();
        let got = eval(&["--model", &base, "--adapter", &format!("{FIXTURE}/{case}/adapter")]);
        close(got, expected["adapter"]["data"]["loss"].as_f64().unwrap(), case);
    }
}

#[test]
fn bad_added_tokens_and_modules_to_save_values_name_the_key() {
    for (set, expect) in [
        ("modules_to_save=[foo]", "modules_to_save: \"foo\" is not supported; expected embed_tokens or lm_head"),
        ("added_tokens=[1, 2]", "added_tokens: expected token strings"),
        ("modules_to_save=[embed_tokens]", "added_tokens: with LoRA the new tokens' embedding and output rows must train"),
        ("finetuning=full", "modules_to_save: applies to LoRA adapters"),
    ] {
        let cfg = config("added-tokens-bad", BODY);
        let out = sft(&["train", cfg.to_str().unwrap(), "--set", set]);
        assert!(!out.status.success(), "{set}");
        assert!(stderr(&out).contains(expect), "{set}: {}", stderr(&out));
        assert!(!cfg.parent().unwrap().join("out").exists(), "{set}: nothing may be written");
    }
}
