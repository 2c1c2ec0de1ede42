//! Fixture paths and a scratch directory.

use std::path::{Path, PathBuf};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `tests/fixtures/gguf/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures/gguf").join(name)
}

/// A JSON fixture.
pub fn json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A fresh, empty directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let d = root().join("target/gguf-tests").join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// Ids of a JSON array.
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().expect("ids").iter().map(|i| i.as_u64().expect("id") as u32).collect()
}

/// `n` greedy tokens after `prompt`, not stopping at EOS.
pub fn greedy(model: &sft_model::model::Model, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut cache = sft_model::model::Cache::default();
    let mut next = prompt.to_vec();
    let mut out = vec![];
    for _ in 0..n {
        let id = model.next_greedy(&next, &mut cache).expect("decode");
        out.push(id);
        next = vec![id];
    }
    out
}
