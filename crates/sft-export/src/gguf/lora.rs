//! A PEFT adapter as llama.cpp's LoRA GGUF (`llama-cli --lora FILE`), as
//! `convert_lora_to_gguf.py` writes it: `general.type = adapter`, `adapter.type = lora`,
//! `adapter.lora.alpha`, and per adapted weight `blk.N.attn_q.weight.lora_a` (PEFT's A,
//! `[r, in]`) and `.lora_b` (B, `[out, r]`), B's rows permuted like the weight they adapt.
//!
//! llama.cpp scales an adapter by `alpha / r`; for rsLoRA (`alpha / √r`) the alpha written is
//! the one that gives the same scale.

use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::Device;
use sft_model::lora::{LoraSettings, ADAPTER_WEIGHTS};

use super::names::{self, Layout};
use super::{check_target, read_config, tensor_err, Entry, Exported, GgufError, OutType};

/// Writes the adapter in `adapter_dir` (trained on the model in `model_dir`) as a LoRA GGUF.
pub fn export_adapter(model_dir: &Path, adapter_dir: &Path, outtype: OutType, out: &Path, force: bool) -> Result<Exported, GgufError> {
    check_target(out, force)?;
    if outtype == OutType::Q4KM {
        return Err(GgufError::File {
            path: adapter_dir.into(),
            message: "a LoRA GGUF is written in f32, f16, bf16 or q8_0 (llama.cpp's convert_lora_to_gguf types), not q4_k_m".into(),
        });
    }
    let (config, _) = read_config(model_dir)?;
    let settings = LoraSettings::from_adapter_dir(adapter_dir)?;
    if settings.use_dora {
        return Err(GgufError::File {
            path: adapter_dir.join(sft_model::lora::ADAPTER_CONFIG),
            message: "use_dora: llama.cpp's LoRA GGUF has no DoRA magnitudes; export the merged model instead (without --adapter-only)"
                .into(),
        });
    }
    let path = adapter_dir.join(ADAPTER_WEIGHTS);
    let weights =
        candle_core::safetensors::load(&path, &Device::Cpu).map_err(|e| GgufError::File { path: path.clone(), message: e.to_string() })?;
    let heads = names::Heads { q: config.num_heads, kv: config.num_kv_heads };
    let mut modules: Vec<(usize, String, String)> = Vec::new();
    for name in weights.keys() {
        let Some(module) = name.strip_prefix("base_model.model.").and_then(|n| n.strip_suffix(".lora_A.weight")) else {
            if !name.ends_with(".lora_B.weight") {
                return Err(GgufError::Tensor {
                    tensor: name.clone(),
                    message: format!("in {}: not a LoRA A or B matrix", path.display()),
                });
            }
            continue;
        };
        let (gguf, _) = names::gguf_name(config.family, heads, &format!("{module}.weight")).ok_or_else(|| GgufError::Tensor {
            tensor: name.clone(),
            message: "adapts a weight llama.cpp's format has no place for".into(),
        })?;
        let layer = gguf.split('.').nth(1).and_then(|n| n.parse().ok()).unwrap_or(usize::MAX);
        modules.push((layer, gguf, module.to_string()));
    }
    // Layer order, then llama.cpp's tensor order within a layer (by name is stable and readable).
    modules.sort();
    let mut entries = Vec::new();
    for (_, gguf, module) in &modules {
        let (a_name, b_name) = sft_model::lora::peft_names(module);
        let a = weights.get(&a_name).ok_or_else(|| GgufError::Tensor { tensor: a_name.clone(), message: "missing".into() })?;
        let b = weights.get(&b_name).ok_or_else(|| GgufError::Tensor { tensor: b_name.clone(), message: "missing".into() })?;
        let (_, layout) = names::gguf_name(config.family, heads, &format!("{module}.weight")).unwrap_or((String::new(), Layout::AsIs));
        let b = names::apply(layout, b).map_err(|e| tensor_err(&b_name, e))?;
        let a = a.to_dtype(candle_core::DType::F32).map_err(|e| tensor_err(&a_name, e))?;
        let b = b.to_dtype(candle_core::DType::F32).map_err(|e| tensor_err(&b_name, e))?;
        entries.push(Entry { name: format!("{gguf}.lora_a"), source: a_name, tensor: a });
        entries.push(Entry { name: format!("{gguf}.lora_b"), source: b_name, tensor: b });
    }
    let meta = vec![
        ("general.architecture".to_string(), Value::String(names::arch(config.family).into())),
        ("general.type".into(), Value::String("adapter".into())),
        ("general.name".into(), Value::String(adapter_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())),
        ("general.file_type".into(), Value::U32(outtype.file_type())),
        ("adapter.type".into(), Value::String("lora".into())),
        ("adapter.lora.alpha".into(), Value::F32((settings.scaling() * settings.r as f64) as f32)),
    ];
    let tensors = super::quantize_as(entries, outtype, true)?;
    super::write_gguf(out, &meta, &tensors)
}
