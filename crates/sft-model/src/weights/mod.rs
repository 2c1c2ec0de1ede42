//! A model directory's safetensors files: reading tensors by name (one file, or shards listed in
//! `model.safetensors.index.json`), memory-mapped, converted to f32 and shape-checked; and
//! writing them as transformers does ([`write`]).

pub mod write;

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

    /// The shape of tensor `name`, when present.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.has(name).then(|| self.files.get(name).ok().map(|v| v.shape().to_vec())).flatten()
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
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| ModelError::Json { path: index.into(), message: "weight_map: missing or not an object".into() })?;
    let mut seen = BTreeSet::new();
    let mut paths = vec![];
    for (name, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| ModelError::Json { path: index.into(), message: format!("weight_map.{name}: expected a file name") })?;
        if file.contains('/') || file.contains('\\') || file.starts_with('.') {
            return Err(ModelError::Json { path: index.into(), message: format!("weight_map.{name}: {file:?} is not a plain file name") });
        }
        if seen.insert(file.to_string()) {
            paths.push(dir.join(file));
        }
    }
    Ok(paths)
}

/// Checks the safetensors header before mapping: an 8-byte length that fits the file, a JSON
/// object, and every tensor's dtype, shape and data offsets agreeing with each other and with
/// the file (so a truncated or lying file is an error naming it and the tensor, not a crash).
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
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header).map_err(|source| ModelError::Io { path: path.into(), source })?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| err(format!("the header is not a JSON object: {e}")))?;
    let data_len = size - 8 - n;
    for (name, entry) in header.iter().filter(|(name, _)| *name != "__metadata__") {
        check_entry(entry, data_len).map_err(|message| err(format!("tensor {name}: {message}")))?;
    }
    Ok(())
}

/// One header entry: `{"dtype", "shape", "data_offsets"}` inside `data_len` bytes of data.
fn check_entry(entry: &serde_json::Value, data_len: u64) -> Result<(), String> {
    let dtype = entry.get("dtype").and_then(|d| d.as_str()).ok_or("dtype is missing")?;
    let shape: Vec<u64> = entry
        .get("shape")
        .and_then(|s| s.as_array())
        .and_then(|dims| dims.iter().map(|d| d.as_u64()).collect())
        .ok_or("shape is not a list of sizes")?;
    let offsets: Vec<u64> = entry
        .get("data_offsets")
        .and_then(|o| o.as_array())
        .and_then(|o| o.iter().map(|d| d.as_u64()).collect())
        .filter(|o: &Vec<u64>| o.len() == 2)
        .ok_or("data_offsets is not a pair of offsets")?;
    let (start, end) = (offsets[0], offsets[1]);
    if start > end || end > data_len {
        return Err(format!("data_offsets [{start}, {end}] do not fit the {data_len} bytes of data (a truncated file?)"));
    }
    let bits: u64 = match dtype {
        "F64" | "I64" | "U64" => 64,
        "F32" | "I32" | "U32" => 32,
        "F16" | "BF16" | "I16" | "U16" => 16,
        "F8_E4M3" | "F8_E5M2" | "I8" | "U8" | "BOOL" => 8,
        // Packed and future types: the safetensors reader checks them.
        _ => return Ok(()),
    };
    let bytes = shape.iter().try_fold(bits, |acc, &d| acc.checked_mul(d)).map(|b| b.div_ceil(8));
    match bytes {
        Some(b) if b == end - start => Ok(()),
        Some(b) => Err(format!("shape {shape:?} of {dtype} is {b} bytes, but data_offsets [{start}, {end}] hold {}", end - start)),
        None => Err(format!("shape {shape:?} is too large")),
    }
}
