//! Reading tensors by name from a directory's safetensors files (one file, or shards listed in
//! `model.safetensors.index.json`), memory-mapped, converted to f32 and shape-checked.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use crate::ModelError;

/// The tensors of one directory.
pub(crate) struct Weights {
    dir: PathBuf,
    files: MmapedSafetensors,
    names: BTreeSet<String>,
}

impl Weights {
    /// Opens `dir/<single>` or the shards that `dir/<single>.index.json` lists.
    pub fn open(dir: &Path, single: &str) -> Result<Self, ModelError> {
        let index = dir.join(format!("{single}.index.json"));
        let paths = if index.is_file() {
            shard_paths(dir, &index)?
        } else {
            let path = dir.join(single);
            if !path.is_file() {
                return Err(ModelError::Io {
                    path,
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file (nor a sharded index)"),
                });
            }
            vec![path]
        };
        for p in &paths {
            check_header(p)?;
        }
        // SAFETY: the files are mapped read-only; like every safetensors reader we rely on them
        // not being modified while the model is loaded.
        let files = unsafe { MmapedSafetensors::multi(&paths) }.map_err(|e| ModelError::Safetensors {
            path: paths.first().cloned().unwrap_or_else(|| dir.to_path_buf()),
            message: e.to_string(),
        })?;
        let names = files.tensors().into_iter().map(|(n, _)| n).collect();
        Ok(Self { dir: dir.to_path_buf(), files, names })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every tensor name.
    pub fn names(&self) -> &BTreeSet<String> {
        &self.names
    }

    /// Whether a tensor is present.
    pub fn has(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// Tensor `name` as f32 with the given shape.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor, ModelError> {
        if !self.has(name) {
            return Err(ModelError::MissingTensor { dir: self.dir.clone(), name: name.into() });
        }
        let bad = |message: String| ModelError::BadTensor { dir: self.dir.clone(), name: name.into(), message };
        let view = self.files.get(name).map_err(|e| bad(e.to_string()))?;
        if view.shape() != shape {
            return Err(bad(format!("shape {:?}, expected {shape:?}", view.shape())));
        }
        let t = self.files.load(name, &Device::Cpu).map_err(|e| bad(e.to_string()))?;
        match t.dtype() {
            DType::F32 => Ok(t),
            DType::BF16 | DType::F16 | DType::F64 => t.to_dtype(DType::F32).map_err(|e| bad(e.to_string())),
            other => Err(bad(format!("dtype {other:?}; expected f32, bf16 or f16"))),
        }
    }
}

/// The distinct shard files of an index, in order of first appearance.
fn shard_paths(dir: &Path, index: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let text = std::fs::read_to_string(index).map_err(|source| ModelError::Io { path: index.into(), source })?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ModelError::Json { path: index.into(), message: e.to_string() })?;
    let map = json.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| ModelError::Json {
        path: index.into(),
        message: "weight_map: missing or not an object".into(),
    })?;
    let mut seen = BTreeSet::new();
    let mut paths = vec![];
    for (name, file) in map {
        let file = file.as_str().ok_or_else(|| ModelError::Json {
            path: index.into(),
            message: format!("weight_map.{name}: expected a file name"),
        })?;
        if file.contains('/') || file.contains('\\') || file.starts_with('.') {
            return Err(ModelError::Json { path: index.into(), message: format!("weight_map.{name}: {file:?} is not a plain file name") });
        }
        if seen.insert(file.to_string()) {
            paths.push(dir.join(file));
        }
    }
    Ok(paths)
}

/// Checks the safetensors header before mapping: an 8-byte length that fits the file and a
/// JSON header (so a truncated or lying file is an error naming it, not a crash).
fn check_header(path: &Path) -> Result<(), ModelError> {
    use std::io::Read;
    let err = |message: String| ModelError::Safetensors { path: path.into(), message };
    let mut file = std::fs::File::open(path).map_err(|source| ModelError::Io { path: path.into(), source })?;
    let size = file.metadata().map_err(|source| ModelError::Io { path: path.into(), source })?.len();
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|_| err(format!("{size} bytes is too short for a header")))?;
    let n = u64::from_le_bytes(len);
    if n > size.saturating_sub(8) || n > 100 << 20 {
        return Err(err(format!("header length {n} does not fit the file of {size} bytes")));
    }
    Ok(())
}
