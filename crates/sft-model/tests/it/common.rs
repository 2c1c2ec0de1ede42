//! Fixture paths and tensor comparison shared by the tests.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `tests/fixtures/model/<name>`.
pub fn model_fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures/model").join(name)
}

/// A fixture's JSON file.
pub fn json(path: PathBuf) -> serde_json::Value {
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every tensor of a safetensors file.
pub fn tensors(path: PathBuf) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(&path, &Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// max |ours − theirs| / max |theirs| (shapes must agree).
pub fn relative_error(ours: &Tensor, theirs: &Tensor) -> f32 {
    assert_eq!(ours.dims(), theirs.dims(), "shapes differ");
    let diff = (ours - theirs).and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>()).expect("diff");
    let scale = theirs.abs().and_then(|t| t.max_all()?.to_scalar::<f32>()).expect("scale");
    diff / scale.max(f32::MIN_POSITIVE)
}
