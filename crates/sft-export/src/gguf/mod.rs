//! GGUF export: an HF model directory (with an adapter merged first, or the adapter alone as a
//! llama.cpp LoRA) written as the GGUF file llama.cpp and Ollama load, with the tokenizer and
//! the chat template and EOS the model was trained with. GGUF names live in this module only.
//!
//! The file is written with candle's `quantized::gguf_file` writer and its block types
//! (Q8_0, Q5_0, Q6_K, f16, bf16; Q4_K blocks are filled as llama.cpp fills them, [`q4k`]); names, layouts and metadata follow llama.cpp's
//! `convert_hf_to_gguf.py` and `convert_lora_to_gguf.py`, and q4_k_m follows llama-quantize's
//! mix ([`outtype`]). `tests/fixtures/gguf_export/check_llamacpp.py` has llama.cpp itself load
//! the files, tokenize, generate and measure perplexity against ours.
//!
//! A file is written to a temporary name beside the target and renamed when complete, so a
//! failed export leaves nothing behind, and an existing file is replaced only when asked.

mod lora;
pub mod metadata;
pub mod names;
pub mod outtype;
mod q4k;
pub mod vocab;

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use sft_data::template::{Renderer, TemplateError};
use sft_model::config::{HfConfig, ModelConfig};
use sft_model::model::{Model, Trainable};
use sft_model::ModelError;

pub use lora::export_adapter;
pub use outtype::OutType;
pub use vocab::Specials;

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    /// Loading or merging the model.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Reading the chat template.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file's content is not what an export needs.
    #[error("{}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A tensor could not be converted.
    #[error("tensor {tensor}: {message}")]
    Tensor {
        /// The tensor (HF name).
        tensor: String,
        /// What went wrong.
        message: String,
    },
    /// The output exists and replacing it was not asked for.
    #[error("{} exists; pass --force to replace it", path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },
}

/// A model to export, with what it was trained with.
pub struct ModelSource<'a> {
    /// The HF model directory (config.json + safetensors).
    pub model_dir: &'a Path,
    /// A PEFT adapter to merge in first.
    pub adapter: Option<&'a Path>,
    /// Where tokenizer.json and tokenizer_config.json are (a checkpoint's own).
    pub tokenizer_dir: &'a Path,
    /// The chat template it was trained with, its EOS already mapped.
    pub renderer: &'a Renderer,
    /// `general.name`.
    pub name: String,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Exported {
    /// The file.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// Tensors by ggml type name (`q4_K`: 180, ...).
    pub types: BTreeMap<String, usize>,
    /// Things the user should know.
    pub warnings: Vec<String>,
}

/// Fails when `out` exists and `force` is not set (checked before any work).
pub fn check_target(out: &Path, force: bool) -> Result<(), GgufError> {
    match std::fs::symlink_metadata(out) {
        Ok(_) if !force => Err(GgufError::Exists { path: out.into() }),
        Ok(m) if m.is_dir() => Err(GgufError::File { path: out.into(), message: "is a directory".into() }),
        _ => Ok(()),
    }
}

/// One tensor as it goes into the file.
struct Entry {
    name: String,
    source: String,
    tensor: Tensor,
}

/// Writes the model of `src` as a GGUF file at `out` in `outtype`.
pub fn export_model(src: &ModelSource<'_>, outtype: OutType, out: &Path, force: bool) -> Result<Exported, GgufError> {
    check_target(out, force)?;
    let (config, raw) = read_config(src.model_dir)?;
    let model = match src.adapter {
        Some(adapter) => Model::merged(src.model_dir, adapter)?,
        None => Model::load(src.model_dir, &Trainable::Full)?,
    };
    let heads = names::Heads { q: config.num_heads, kv: config.num_kv_heads };
    let mut entries = Vec::new();
    for (hf, var) in model.params() {
        let (name, layout) = names::gguf_name(config.family, heads, hf)
            .ok_or_else(|| GgufError::Tensor { tensor: hf.clone(), message: "has no place in llama.cpp's format".into() })?;
        let tensor = names::apply(layout, var.as_tensor()).map_err(|e| tensor_err(hf, e))?;
        entries.push(Entry { name, source: hf.clone(), tensor });
    }
    if let Some(factors) = metadata::rope_freqs(&config, &raw) {
        let n = factors.len();
        let tensor = Tensor::from_vec(factors, n, &Device::Cpu).map_err(|e| tensor_err("rope_freqs", e))?;
        entries.insert(0, Entry { name: "rope_freqs.weight".into(), source: "rope_scaling".into(), tensor });
    }
    drop(model);
    let mut meta = metadata::model_keys(&config, &raw, &src.name, outtype.file_type());
    let specials = specials(src.renderer);
    let vocab = vocab::vocab(src.tokenizer_dir, config.vocab_size, &specials)?;
    meta.extend(vocab.metadata);
    let templates = src.renderer.templates();
    meta.push(("tokenizer.chat_template".into(), Value::String(templates.default.source().to_string())));
    if let Some(tools) = &templates.tool_use {
        meta.push(("tokenizer.chat_template.tool_use".into(), Value::String(tools.source().to_string())));
    }
    let tensors = quantize_as(entries, outtype, false)?;
    let mut exported = write_gguf(out, &meta, &tensors)?;
    exported.warnings = vocab.warnings;
    Ok(exported)
}

/// The special tokens to declare: the renderer's (the EOS is the one `map_eos_token` chose),
/// and the template's end-of-turn token.
pub fn specials(renderer: &Renderer) -> Specials {
    let var = |k: &str| renderer.template_vars().get(k).and_then(serde_json::Value::as_str).map(str::to_string);
    Specials {
        bos: var("bos_token"),
        eos: var("eos_token"),
        eot: renderer.end_of_turn().ok(),
        pad: var("pad_token"),
        unk: var("unk_token"),
    }
}

fn read_config(dir: &Path) -> Result<(ModelConfig, HfConfig), GgufError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| GgufError::Io { path: path.clone(), source })?;
    let raw: HfConfig = serde_json::from_str(&text).map_err(|e| GgufError::File { path: path.clone(), message: e.to_string() })?;
    let config = raw.resolve(&path)?;
    if let Some(t) = metadata::unsupported_rope(&raw) {
        let message = format!("rope_type {t:?}: the GGUF export writes only default, linear and llama3 RoPE scaling");
        return Err(GgufError::File { path, message });
    }
    Ok((config, raw))
}

fn tensor_err(tensor: &str, e: candle_core::Error) -> GgufError {
    GgufError::Tensor { tensor: tensor.into(), message: e.to_string() }
}

/// Each entry in the type its plan gives (an adapter's matrices all in `outtype`), quantized
/// on all cores.
fn quantize_as(entries: Vec<Entry>, outtype: OutType, adapter: bool) -> Result<Vec<(String, QTensor)>, GgufError> {
    use rayon::prelude::*;
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    let mut plan = outtype::TypePlan::new(outtype, &names);
    let types: Vec<GgmlDType> = entries
        .iter()
        .map(|e| match e.tensor.dims() {
            [_, cols] if adapter => outtype::matrix_type(outtype, *cols),
            dims => plan.next(&e.name, dims),
        })
        .collect();
    entries
        .into_par_iter()
        .zip(types)
        .map(|(e, t)| {
            // Q4_K as llama.cpp quantizes it (see q4k); every other type is candle's.
            let q = match t {
                GgmlDType::Q4K => q4k::quantize(&e.tensor),
                t => QTensor::quantize(&e.tensor, t),
            }
            .map_err(|err| tensor_err(&e.source, err))?;
            Ok((e.name, q))
        })
        .collect()
}

/// Writes header and tensors to a temporary file beside `out`, then renames it to `out`.
fn write_gguf(out: &Path, meta: &[(String, Value)], tensors: &[(String, QTensor)]) -> Result<Exported, GgufError> {
    let file_name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "export.gguf".into());
    let tmp = out.with_file_name(format!(".{file_name}.partial-{}", std::process::id()));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| GgufError::Io { path, source }
    };
    let result = (|| {
        let file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        let mut w = BufWriter::new(file);
        let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        gguf_file::write(&mut w, &meta_refs, &tensor_refs)
            .map_err(|e| GgufError::Io { path: tmp.clone(), source: std::io::Error::other(e.to_string()) })?;
        w.flush().map_err(io(&tmp))?;
        w.get_ref().sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, out).map_err(io(out))
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let bytes = std::fs::metadata(out).map_err(io(out))?.len();
    let mut types = BTreeMap::new();
    for (_, t) in tensors {
        *types.entry(format!("{:?}", t.dtype())).or_insert(0) += 1;
    }
    Ok(Exported { path: out.into(), bytes, types, warnings: vec![] })
}
