//! sft-hub's integration tests: hub ids through caches laid out as huggingface_hub lays them
//! out (`cache`), and downloads from a stand-in hub on 127.0.0.1 (`download`, `fake_hub`).

use std::path::{Path, PathBuf};

use sft_hub::HubEnv;

mod cache;
mod download;
mod fake_hub;

/// A fresh scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sft-hub").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Hub settings for a test: this cache, this endpoint (nothing listens on port 9), no token.
fn env(cache: &Path, endpoint: Option<&str>, offline: bool) -> HubEnv {
    HubEnv { cache: cache.to_path_buf(), endpoint: endpoint.unwrap_or("http://127.0.0.1:9").into(), token: None, offline, progress: false }
}

/// A commit hash made from a label.
fn commit(label: &str) -> String {
    fake_hub::sha256_hex(label.as_bytes())[..40].to_string()
}

/// The files of a small model: config, tokenizer files, and unsharded weights or an index
/// with `shards` shards (the bytes only need to be distinct here).
fn model_files(shards: usize) -> Vec<(String, Vec<u8>)> {
    let mut files = vec![
        ("config.json".to_string(), br#"{"model_type": "llama"}"#.to_vec()),
        ("tokenizer.json".into(), b"{\"tokenizer\": 1}".to_vec()),
        ("tokenizer_config.json".into(), b"{\"eos_token\": \"</s>\"}".to_vec()),
        ("chat_template.jinja".into(), b"{{ messages }}".to_vec()),
    ];
    if shards == 0 {
        files.push(("model.safetensors".into(), vec![7; 3000]));
    } else {
        let names: Vec<String> = (1..=shards).map(|i| format!("model-{i:05}-of-{shards:05}.safetensors")).collect();
        let map: serde_json::Map<_, _> = names.iter().enumerate().map(|(i, n)| (format!("t{i}"), n.clone().into())).collect();
        files
            .push(("model.safetensors.index.json".into(), serde_json::json!({"metadata": {}, "weight_map": map}).to_string().into_bytes()));
        for (i, name) in names.into_iter().enumerate() {
            files.push((name, vec![i as u8 + 1; 4000 + i]));
        }
    }
    files
}
