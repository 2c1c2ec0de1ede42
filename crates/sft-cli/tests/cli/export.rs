//! Issue 23: `sft export` end to end: a GGUF plus an Ollama Modelfile from a model directory,
//! outputs never replaced without `--force`, and the bad-input cases named clearly.

use std::path::{Path, PathBuf};

use super::{init_model, root, sft, stderr, QUICKSTART_TOKENIZER};

fn tiny_model(name: &str) -> PathBuf {
    let dir = root().join("target/cli-tests").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    let model = dir.join("model");
    init_model(
        r#"{"model_type": "qwen2", "vocab_size": 832, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 1, "num_attention_heads": 2, "eos_token_id": 2}"#,
        Path::new(QUICKSTART_TOKENIZER),
        0,
        &model,
    );
    model
}

#[test]
fn export_writes_a_gguf_and_a_modelfile_and_replaces_them_only_with_force() {
    let model = tiny_model("export");
    let ollama = model.with_file_name("ollama");
    let args = ["export", "--model", model.to_str().unwrap(), "--ollama", ollama.to_str().unwrap(), "--outtype", "q8_0"];
    let out = sft(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let gguf = std::fs::read(ollama.join("model.gguf")).unwrap();
    assert_eq!(&gguf[..4], b"GGUF");
    let modelfile = std::fs::read_to_string(ollama.join("Modelfile")).unwrap();
    assert!(modelfile.contains("FROM ./model.gguf") && modelfile.contains("PARAMETER stop \"<|im_end|>\""), "{modelfile}");

    let again = sft(&args);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("exists; pass --force"), "{}", stderr(&again));
    assert_eq!(std::fs::read(ollama.join("model.gguf")).unwrap(), gguf, "kept");
    let forced = sft(&[&args[..args.len() - 2], &["--outtype", "f16", "--force"]].concat());
    assert!(forced.status.success(), "{}", stderr(&forced));
    assert_ne!(std::fs::read(ollama.join("model.gguf")).unwrap(), gguf, "replaced");
    let left: Vec<String> = std::fs::read_dir(&ollama).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(left.len(), 2, "no temporary files left: {left:?}");
}

#[test]
fn export_bad_inputs_say_what_is_wrong() {
    let model = tiny_model("export-bad");
    let m = model.to_str().unwrap();
    let out_file = model.with_file_name("x.gguf");
    let o = out_file.to_str().unwrap();
    let out = sft(&["export", "--model", m, "--out", o, "--outtype", "q3_k"]);
    assert!(stderr(&out).contains("q4_k_m") && stderr(&out).contains("bf16"), "{}", stderr(&out));
    let out = sft(&["export", "--model", m, "--out", o, "--adapter-only"]);
    assert!(!out.status.success() && stderr(&out).contains("--adapter-only needs --adapter"), "{}", stderr(&out));
    std::fs::write(model.join("config.json"), r#"{"model_type": "mamba"}"#).unwrap();
    let out = sft(&["export", "--model", m, "--out", o]);
    assert!(!out.status.success() && stderr(&out).contains("\"mamba\"") && stderr(&out).contains("supported: llama"), "{}", stderr(&out));
    assert!(!out_file.exists());
}
