//! Writing a model's weights as transformers' `save_pretrained` does: `model.safetensors`, or,
//! above the shard size, `model-00001-of-0000N.safetensors` files and a
//! `model.safetensors.index.json` mapping every tensor to its file, in f32, bf16 or f16.
//! Tensors are laid out in the order given (a model's load order); a shard is closed before the
//! tensor that would take it past the limit, and a tensor larger than the limit gets a shard of
//! its own, as transformers' sharding does.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use serde_json::{json, Map, Value};

use crate::ModelError;

/// How to write weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SaveOptions {
    /// The element type on disk (f32, bf16 or f16).
    pub dtype: DType,
    /// The largest shard in bytes (`None`: one file).
    pub max_shard_bytes: Option<u64>,
}

impl Default for SaveOptions {
    fn default() -> Self {
        Self { dtype: DType::F32, max_shard_bytes: None }
    }
}

/// A size as transformers' `max_shard_size` takes it: a number of bytes, or with a unit (`KB`,
/// `MB`, `GB` are powers of 1000, `KiB`, `MiB`, `GiB` of 1024; any case).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("{text:?}: expected a size like 2GB, 500MB or 1073741824"))?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024f64.powi(2),
        "gib" => 1024f64.powi(3),
        "tib" => 1024f64.powi(4),
        other => return Err(format!("{text:?}: unknown unit {other:?} (use KB, MB, GB, KiB, MiB or GiB)")),
    };
    let bytes = value * scale;
    if bytes < 1.0 || !bytes.is_finite() {
        return Err(format!("{text:?}: must be at least one byte"));
    }
    Ok(bytes as u64)
}

/// Writes `tensors` into `dir` as `opts` says; returns the files written.
pub fn save(dir: &Path, tensors: &[(String, Tensor)], opts: &SaveOptions) -> Result<Vec<PathBuf>, ModelError> {
    let converted = tensors
        .iter()
        .map(|(name, t)| {
            t.to_dtype(opts.dtype)
                .map(|t| (name.clone(), t))
                .map_err(|source| ModelError::Tensor { context: format!("converting {name}"), source })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let shards = plan(&converted, opts.max_shard_bytes);
    let n = shards.len();
    let name_of = |i: usize| if n == 1 { "model.safetensors".to_string() } else { format!("model-{:05}-of-{n:05}.safetensors", i + 1) };
    let mut files = vec![];
    let mut weight_map = Map::new();
    for (i, shard) in shards.iter().enumerate() {
        let file = name_of(i);
        let path = dir.join(&file);
        let map: HashMap<String, Tensor> = shard.iter().map(|&k| converted[k].clone()).collect();
        candle_core::safetensors::save(&map, &path)
            .map_err(|e| ModelError::Io { path: path.clone(), source: std::io::Error::other(e.to_string()) })?;
        for &k in shard {
            weight_map.insert(converted[k].0.clone(), Value::String(file.clone()));
        }
        files.push(path);
    }
    if n > 1 {
        let total: u64 = converted.iter().map(|(_, t)| bytes(t)).sum();
        let index = json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
        let path = dir.join("model.safetensors.index.json");
        let text = serde_json::to_vec_pretty(&index).map_err(|e| ModelError::Io { path: path.clone(), source: e.into() })?;
        std::fs::write(&path, text).map_err(|source| ModelError::Io { path: path.clone(), source })?;
        files.push(path);
    }
    Ok(files)
}

fn bytes(t: &Tensor) -> u64 {
    (t.elem_count() * t.dtype().size_in_bytes()) as u64
}

/// The tensors (by index) of each shard.
fn plan(tensors: &[(String, Tensor)], max: Option<u64>) -> Vec<Vec<usize>> {
    let Some(max) = max else { return vec![(0..tensors.len()).collect()] };
    let mut shards: Vec<Vec<usize>> = vec![vec![]];
    let mut size = 0u64;
    for (k, (_, t)) in tensors.iter().enumerate() {
        let b = bytes(t);
        if size + b > max && !shards.last().is_some_and(Vec::is_empty) {
            shards.push(vec![]);
            size = 0;
        }
        if let Some(shard) = shards.last_mut() {
            shard.push(k);
        }
        size += b;
    }
    shards
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_transformers_reads_them() {
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_size("5GiB"), Ok(5 * (1 << 30)));
        assert_eq!(parse_size("500mb"), Ok(500_000_000));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert!(parse_size("2 parsecs").is_err());
        assert!(parse_size("0GB").is_err());
    }

    #[test]
    fn shards_close_before_the_limit_and_a_big_tensor_stands_alone() -> candle_core::Result<()> {
        let t = |n: usize| Tensor::zeros(n, DType::F32, &candle_core::Device::Cpu).map(|t| (format!("t{n}"), t));
        let tensors = vec![t(10)?, t(10)?, t(30)?, t(5)?, t(5)?];
        // 40 bytes, 40, 120, 20, 20 against a limit of 100.
        assert_eq!(plan(&tensors, Some(100)), vec![vec![0, 1], vec![2], vec![3, 4]]);
        assert_eq!(plan(&tensors, None), vec![vec![0, 1, 2, 3, 4]]);
        Ok(())
    }
}
