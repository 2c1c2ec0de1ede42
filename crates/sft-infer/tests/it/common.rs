//! Fixture paths shared by the tests.

use std::path::PathBuf;

/// `tests/fixtures/model/<name>` of the repository.
pub fn model_fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/model").join(name)
}

/// A fixture's JSON file.
pub fn json(path: PathBuf) -> serde_json::Value {
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
