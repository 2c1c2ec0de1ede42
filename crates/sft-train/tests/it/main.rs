//! Integration tests for sft-train: one module per stage.

mod adapter;
mod collective;
mod optim;
mod optimizers;
mod schedule;
mod threads;

use std::path::PathBuf;

/// Path of a file under `tests/fixtures/train/`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/train").join(name)
}

/// The parity fixture written by `tests/fixtures/train/gen_optim_fixtures.py`.
pub fn parity() -> serde_json::Value {
    let path = fixture("optim_parity.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e} (run gen_optim_fixtures.py)", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
