//! Paths shared by the integration tests.

use std::path::{Path, PathBuf};

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
