//! The model's hyperparameters under llama.cpp's keys (`{arch}.block_count`, ...), as
//! `convert_hf_to_gguf.py`'s `set_gguf_parameters` writes them per architecture, and Llama 3's
//! RoPE scaling as the `rope_freqs.weight` factors its `generate_extra_tensors` computes.

use candle_core::quantized::gguf_file::Value;
use serde_json::{Map, Value as Json};
use sft_model::config::{Family, HfConfig, ModelConfig};

use crate::gguf::names::arch;

/// The RoPE parameters of full-attention layers: transformers 5's `rope_parameters` (flat or
/// per layer kind) or the legacy `rope_theta` + `rope_scaling`.
fn rope_params(raw: &HfConfig, kind: &str) -> Map<String, Json> {
    match &raw.rope_parameters {
        Some(Json::Object(map)) => match map.get(kind) {
            Some(Json::Object(inner)) => inner.clone(),
            _ => map.clone(),
        },
        _ => {
            let mut map = match &raw.rope_scaling {
                Some(Json::Object(m)) => m.clone(),
                _ => Map::new(),
            };
            if let Some(theta) = raw.rope_theta {
                map.insert("rope_theta".into(), theta.into());
            }
            map
        }
    }
}

fn rope_type(params: &Map<String, Json>) -> String {
    params.get("rope_type").or_else(|| params.get("type")).and_then(Json::as_str).unwrap_or("default").to_lowercase()
}

/// The RoPE types whose scaling this exporter writes (`linear` as `rope.scaling.*`, `llama3`
/// as `rope_freqs.weight`); the others (`yarn`, `dynamic`, `longrope`) would give a GGUF that
/// rotates like the unscaled model, so [`unsupported_rope`] refuses them.
const WRITTEN_ROPE_TYPES: &[&str] = &["default", "linear", "llama3"];

/// The rope_type of a layer kind whose scaling the GGUF could not carry, if any.
pub fn unsupported_rope(raw: &HfConfig) -> Option<String> {
    ["full_attention", "sliding_attention"]
        .into_iter()
        .map(|kind| rope_type(&rope_params(raw, kind)))
        .find(|t| !WRITTEN_ROPE_TYPES.contains(&t.as_str()))
}

/// `{arch}.*` and `general.*` keys for `config` (read from `raw`).
pub fn model_keys(config: &ModelConfig, raw: &HfConfig, name: &str, file_type: u32) -> Vec<(String, Value)> {
    let a = arch(config.family);
    let mut m: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(a.into())),
        ("general.type".into(), Value::String("model".into())),
        ("general.name".into(), Value::String(name.into())),
        ("general.file_type".into(), Value::U32(file_type)),
        ("general.quantization_version".into(), Value::U32(2)),
    ];
    let mut put = |key: &str, v: Value| m.push((format!("{a}.{key}"), v));
    let u = |n: usize| Value::U32(n as u32);
    put("block_count", u(config.layers.len()));
    put("context_length", u(raw.max_position_embeddings.unwrap_or(2048)));
    put("embedding_length", u(config.hidden_size));
    put("feed_forward_length", u(config.intermediate_size));
    put("attention.head_count", u(config.num_heads));
    put("attention.head_count_kv", u(config.num_kv_heads));
    put("attention.layer_norm_rms_epsilon", Value::F32(config.rms_norm_eps as f32));
    let full = rope_params(raw, "full_attention");
    let theta = full.get("rope_theta").and_then(Json::as_f64).or(raw.rope_theta).unwrap_or(10_000.0);
    put("rope.freq_base", Value::F32(theta as f32));
    let gemma = matches!(config.family, Family::Gemma | Family::Gemma2 | Family::Gemma3);
    if raw.head_dim.is_some() || gemma {
        put("attention.key_length", u(config.head_dim));
        put("attention.value_length", u(config.head_dim));
    }
    let rotary = config.layers.first().map_or(config.head_dim, |l| 2 * l.rope.inv_freq.len());
    match config.family {
        Family::Llama | Family::Mistral => {
            put("vocab_size", u(config.vocab_size));
            put("rope.dimension_count", u(rotary));
        }
        Family::Phi3 => put("rope.dimension_count", u(rotary)),
        _ => {}
    }
    if rope_type(&full) == "linear" {
        if let Some(f) = full.get("factor").and_then(Json::as_f64) {
            put("rope.scaling.type", Value::String("linear".into()));
            put("rope.scaling.factor", Value::F32(f as f32));
        }
    }
    let window = config.layers.iter().find_map(|l| l.sliding_window);
    match config.family {
        Family::Gemma2 | Family::Gemma3 => {
            if let Some(w) = window {
                put("attention.sliding_window", u(w));
            }
            if let Some(c) = config.attn_softcap {
                put("attn_logit_softcapping", Value::F32(c as f32));
            }
            if let Some(c) = config.final_softcap {
                put("final_logit_softcapping", Value::F32(c as f32));
            }
            if config.family == Family::Gemma3 {
                let local = rope_params(raw, "sliding_attention");
                let swa = local.get("rope_theta").and_then(Json::as_f64).or(raw.rope_local_base_freq).unwrap_or(10_000.0);
                put("rope.freq_base_swa", Value::F32(swa as f32));
            }
        }
        Family::Phi3 => {
            if let Some(w) = window {
                put("attention.sliding_window", u(w));
            }
        }
        _ => {}
    }
    m
}

/// Llama 3's RoPE scaling as llama.cpp takes it: a factor per rotated pair that divides the
/// frequency (`rope_freqs.weight`), computed as the converter computes it; `None` for other
/// RoPE types and architectures.
pub fn rope_freqs(config: &ModelConfig, raw: &HfConfig) -> Option<Vec<f32>> {
    if !matches!(config.family, Family::Llama | Family::Mistral) {
        return None;
    }
    let p = rope_params(raw, "full_attention");
    if rope_type(&p) != "llama3" {
        return None;
    }
    let num = |k: &str, d: f64| p.get(k).and_then(Json::as_f64).unwrap_or(d);
    let base = num("rope_theta", raw.rope_theta.unwrap_or(10_000.0));
    let dim = config.head_dim;
    let (factor, low, high, old) =
        (num("factor", 8.0), num("low_freq_factor", 1.0), num("high_freq_factor", 4.0), num("original_max_position_embeddings", 8192.0));
    let (low_wavelen, high_wavelen) = (old / low, old / high);
    Some(
        (0..dim / 2)
            .map(|i| {
                // torch: 1 / base ** (arange(0, dim, 2, f32) / dim), in f32.
                let freq = 1.0 / (base as f32).powf((2 * i) as f32 / dim as f32);
                let wavelen = 2.0 * std::f64::consts::PI / freq as f64;
                if wavelen < high_wavelen {
                    1.0
                } else if wavelen > low_wavelen {
                    factor as f32
                } else {
                    let smooth = (old / wavelen - low) / (high - low);
                    (1.0 / ((1.0 - smooth) / factor + smooth)) as f32
                }
            })
            .collect(),
    )
}
