//! `import`: a GGUF file written out as a Hugging Face model directory. Everything is written
//! into a temporary directory beside the output, checked by loading its config, and renamed into
//! place, so an interrupted import leaves nothing half-written under the output's name and an
//! existing non-empty directory is never touched.

use std::path::{Path, PathBuf};

use candle_core::Tensor;

use crate::file::GgufFile;
use crate::metadata::GgufMetadata;
use crate::{tensors, tokenizer, GgufError};

/// What an import wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportSummary {
    /// The directory.
    pub dir: PathBuf,
    /// transformers' `model_type`.
    pub architecture: String,
    /// Tensors written.
    pub tensors: usize,
    /// Parameters written.
    pub parameters: usize,
    /// `gpt2` or `llama` (`tokenizer.ggml.model`).
    pub tokenizer: String,
    /// Whether the output layer is the embedding (the file has no `output.weight`).
    pub tied: bool,
}

/// Writes the model directory `gguf` stands for at `out`, which must not exist or be empty.
pub fn import(gguf: &Path, out: &Path) -> Result<ImportSummary, GgufError> {
    if !is_empty_or_missing(out)? {
        return Err(GgufError::OutputExists { path: out.into() });
    }
    let mut file = GgufFile::open(gguf)?;
    let meta = GgufMetadata::read(file.metadata(), gguf)?;
    let tied = !file.entries().iter().any(|e| e.name == "output.weight");
    let rebuilt = tokenizer::build(&meta)?;
    let weights = tensors::convert(&mut file, &meta)?;
    let tmp = temp_dir(out)?;
    let written = write_dir(&tmp, &meta, &rebuilt, &weights, tied).and_then(|_| check(&tmp, gguf)).and_then(|_| place(&tmp, out));
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    written?;
    Ok(ImportSummary {
        dir: out.into(),
        architecture: meta.architecture.model_type().into(),
        tensors: weights.len(),
        parameters: weights.iter().map(|(_, t)| t.elem_count()).sum(),
        tokenizer: meta.tokenizer.model.clone(),
        tied,
    })
}

fn is_empty_or_missing(dir: &Path) -> Result<bool, GgufError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => Ok(false),
        Err(e) => Err(GgufError::io(dir, e)),
    }
}

/// A fresh directory beside `out` (same file system, so the final rename is atomic).
fn temp_dir(out: &Path) -> Result<PathBuf, GgufError> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| GgufError::io(&parent, e))?;
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let tmp = parent.join(format!(".{name}.partial-{}-{nanos}", std::process::id()));
    std::fs::create_dir(&tmp).map_err(|e| GgufError::io(&tmp, e))?;
    Ok(tmp)
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<(), GgufError> {
    let mut text = serde_json::to_string_pretty(v).map_err(|e| GgufError::io(path, std::io::Error::other(e)))?;
    text.push('\n');
    std::fs::write(path, text).map_err(|e| GgufError::io(path, e))
}

fn write_dir(
    dir: &Path,
    meta: &GgufMetadata,
    rebuilt: &tokenizer::Rebuilt,
    weights: &[(String, Tensor)],
    tied: bool,
) -> Result<(), GgufError> {
    write_json(&dir.join("config.json"), &meta.hf_config(tied))?;
    write_json(&dir.join("generation_config.json"), &meta.generation_config())?;
    write_json(&dir.join("tokenizer.json"), &rebuilt.tokenizer_json)?;
    write_json(&dir.join("tokenizer_config.json"), &rebuilt.tokenizer_config)?;
    if let Some(template) = &rebuilt.chat_template {
        let path = dir.join("chat_template.jinja");
        std::fs::write(&path, template).map_err(|e| GgufError::io(&path, e))?;
    }
    save_weights(&dir.join("model.safetensors"), weights)
}

/// The one place safetensors are written (candle's writer; the tensors keep their dtype).
fn save_weights(path: &Path, weights: &[(String, Tensor)]) -> Result<(), GgufError> {
    // Tensor clones share their storage.
    let map: std::collections::HashMap<&str, Tensor> = weights.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    candle_core::safetensors::save(&map, path).map_err(|e| GgufError::io(path, std::io::Error::other(e.to_string())))
}

/// The converted config must resolve as sft's own loader resolves it.
fn check(dir: &Path, gguf: &Path) -> Result<(), GgufError> {
    sft_model::config::ModelConfig::from_dir(dir)
        .map(|_| ())
        .map_err(|e| GgufError::Converted { path: gguf.into(), message: e.to_string() })
}

/// Renames `tmp` to `out`; an empty `out` is replaced, a non-empty one (another process won
/// the race) is an error.
fn place(tmp: &Path, out: &Path) -> Result<(), GgufError> {
    if out.is_dir() && is_empty_or_missing(out)? {
        std::fs::remove_dir(out).map_err(|e| GgufError::io(out, e))?;
    }
    std::fs::rename(tmp, out).map_err(|e| match e.kind() {
        std::io::ErrorKind::DirectoryNotEmpty | std::io::ErrorKind::AlreadyExists => GgufError::OutputExists { path: out.into() },
        _ => GgufError::io(out, e),
    })
}
