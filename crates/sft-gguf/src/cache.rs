//! GGUF files converted once: [`cached`] keeps the model directory of a file under
//! [`cache_root`]`/gguf/<stem>-<key>`, the key a hash of the file's absolute path, size and
//! modification time (a changed file gets a new directory). The directory appears by an atomic
//! rename ([`import`](crate::import)), so one that exists is complete.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::{import, GgufError};

/// `$SFT_CACHE_DIR`, else `$XDG_CACHE_HOME/sft`, else `~/.cache/sft`.
pub fn cache_root() -> Option<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("SFT_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("sft")))
        .or_else(|| var("HOME").map(|h| h.join(".cache").join("sft")))
}

/// The model directory of `gguf`, converted on first use.
pub fn cached(gguf: &Path) -> Result<PathBuf, GgufError> {
    let root = cache_root().ok_or_else(|| GgufError::io(gguf, std::io::Error::other("no cache directory: set SFT_CACHE_DIR or HOME")))?;
    let dir = root.join("gguf").join(cache_name(gguf)?);
    if dir.join("config.json").is_file() {
        return Ok(dir);
    }
    match import(gguf, &dir) {
        Ok(_) => Ok(dir),
        // Another process finished the same conversion first.
        Err(GgufError::OutputExists { .. }) if dir.join("config.json").is_file() => Ok(dir),
        Err(e) => Err(e),
    }
}

fn cache_name(gguf: &Path) -> Result<String, GgufError> {
    let absolute = std::fs::canonicalize(gguf).map_err(|e| GgufError::io(gguf, e))?;
    let meta = std::fs::metadata(&absolute).map_err(|e| GgufError::io(gguf, e))?;
    let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_nanos()).unwrap_or(0);
    let mut h = Sha256::new();
    h.update(absolute.as_os_str().as_encoded_bytes());
    h.update(meta.len().to_le_bytes());
    h.update(mtime.to_le_bytes());
    let key: String = h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect();
    let stem: String = gguf
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "._-".contains(*c))
        .collect();
    Ok(format!("{stem}-{key}"))
}
