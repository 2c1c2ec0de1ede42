//! Paths shared by the integration tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The real tokenizers and TRL templates (`scripts/fetch-assets.sh`), or `$SFT_ASSETS`.
pub fn assets() -> PathBuf {
    let dir = std::env::var_os("SFT_ASSETS").map(PathBuf::from).unwrap_or_else(|| root().join("assets"));
    assert!(
        dir.join("tokenizers").is_dir() && dir.join("trl_chat_templates").is_dir(),
        "{} lacks the real tokenizers/templates: run scripts/fetch-assets.sh first",
        dir.display()
    );
    dir
}

/// A JSON fixture under `tests/fixtures/` (e.g. `render/render_parity.json`).
pub fn fixture(rel: &str) -> Value {
    let path = root().join("tests/fixtures").join(rel);
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("fixture JSON")
}

/// The time a fixture's generator froze `strftime_now` at.
pub fn frozen_time(fx: &Value) -> chrono::NaiveDateTime {
    chrono::NaiveDateTime::parse_from_str(fx["frozen_time"].as_str().unwrap(), "%Y-%m-%dT%H:%M:%S").unwrap()
}

/// A fixture's conversations by id.
pub fn conversations_by_id(fx: &Value) -> BTreeMap<&str, &Value> {
    fx["conversations"].as_array().unwrap().iter().map(|c| (c["id"].as_str().unwrap(), c)).collect()
}
