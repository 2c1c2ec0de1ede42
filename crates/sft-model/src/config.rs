//! A model's `config.json`: [`HfConfig`] mirrors the keys transformers writes (old and new
//! spellings: `rope_theta` + `rope_scaling` or transformers 5's `rope_parameters`), and
//! [`HfConfig::resolve`] turns it, once and with errors naming the key, into the
//! [`ModelConfig`] the model is built from.

use std::path::Path;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::ops::Activation;
use crate::ModelError;

mod rope;

pub use rope::{LengthScaling, Rope};

/// The keys of transformers' `config.json` this crate reads (others are ignored).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct HfConfig {
    pub model_type: Option<String>,
    pub architectures: Vec<String>,
    pub vocab_size: Option<usize>,
    pub hidden_size: Option<usize>,
    pub intermediate_size: Option<usize>,
    pub num_hidden_layers: Option<usize>,
    pub num_attention_heads: Option<usize>,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub rms_norm_eps: Option<f64>,
    pub initializer_range: Option<f64>,
    pub max_position_embeddings: Option<usize>,
    pub original_max_position_embeddings: Option<usize>,
    pub rope_theta: Option<f64>,
    pub rope_scaling: Option<Value>,
    pub rope_parameters: Option<Value>,
    pub rope_local_base_freq: Option<f64>,
    pub partial_rotary_factor: Option<f64>,
    pub tie_word_embeddings: Option<bool>,
    pub attention_bias: Option<bool>,
    pub mlp_bias: Option<bool>,
    pub hidden_act: Option<String>,
    pub hidden_activation: Option<String>,
    pub sliding_window: Option<usize>,
    pub use_sliding_window: Option<bool>,
    pub max_window_layers: Option<usize>,
    pub sliding_window_pattern: Option<usize>,
    pub layer_types: Option<Vec<String>>,
    pub attn_logit_softcapping: Option<f64>,
    pub final_logit_softcapping: Option<f64>,
    pub query_pre_attn_scalar: Option<f64>,
    pub bos_token_id: Option<Value>,
    pub eos_token_id: Option<Value>,
    pub pad_token_id: Option<Value>,
}

/// The architectures implemented, by `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `llama` (Llama 2/3.x, SmolLM2, TinyLlama).
    Llama,
    /// `mistral`.
    Mistral,
    /// `qwen2` (Qwen2, Qwen2.5): q/k/v biases.
    Qwen2,
    /// `qwen3`: RMSNorm on queries and keys.
    Qwen3,
    /// `phi3`: fused qkv_proj and gate_up_proj.
    Phi3,
    /// `gemma`: `1 + weight` norms, scaled embeddings, tanh-GELU.
    Gemma,
    /// `gemma2`: Gemma plus sandwich norms, soft-capping and alternating sliding windows.
    Gemma2,
    /// `gemma3_text`: Gemma 2 plus q/k norms and a local RoPE base for sliding layers.
    Gemma3,
}

const SUPPORTED: &str = "llama, mistral, qwen2, qwen3, phi3, gemma, gemma2, gemma3_text";

impl Family {
    fn from_model_type(t: &str) -> Option<Self> {
        Some(match t {
            "llama" => Family::Llama,
            "mistral" => Family::Mistral,
            "qwen2" => Family::Qwen2,
            "qwen3" => Family::Qwen3,
            "phi3" => Family::Phi3,
            "gemma" => Family::Gemma,
            "gemma2" => Family::Gemma2,
            "gemma3_text" => Family::Gemma3,
            _ => return None,
        })
    }

    fn is_gemma(self) -> bool {
        matches!(self, Family::Gemma | Family::Gemma2 | Family::Gemma3)
    }
}

/// One decoder layer's attention shape.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerConfig {
    /// A query attends only to the last `w` keys (itself included).
    pub sliding_window: Option<usize>,
    /// Its rotary embedding.
    pub rope: Rope,
}

/// A validated model configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// The architecture.
    pub family: Family,
    /// Vocabulary entries (rows of the embedding).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `num_heads`).
    pub num_kv_heads: usize,
    /// Width of a head.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Added to norm weights (1 for Gemma's `1 + weight`).
    pub norm_offset: f32,
    /// The output layer reuses the embedding.
    pub tie_word_embeddings: bool,
    /// q/k/v projections have biases.
    pub qkv_bias: bool,
    /// o_proj has a bias.
    pub o_bias: bool,
    /// MLP projections have biases.
    pub mlp_bias: bool,
    /// RMSNorm over each query/key head before RoPE.
    pub qk_norm: bool,
    /// Phi-3's fused projections.
    pub fused: bool,
    /// Gemma 2/3's norms after attention and around the MLP.
    pub sandwich_norms: bool,
    /// The MLP gate's activation.
    pub activation: Activation,
    /// Embeddings multiplied by this (Gemma: √hidden_size).
    pub embed_scale: Option<f32>,
    /// Attention scores multiplied by this.
    pub attention_scale: f64,
    /// Gemma 2's attention soft-capping.
    pub attn_softcap: Option<f64>,
    /// Gemma 2's final logit soft-capping.
    pub final_softcap: Option<f64>,
    /// Per decoder layer.
    pub layers: Vec<LayerConfig>,
    /// Standard deviation of a new model's weights.
    pub initializer_range: f64,
    /// Token ids that end generation.
    pub eos_token_ids: Vec<u32>,
    /// The BOS id, if any.
    pub bos_token_id: Option<u32>,
    /// Most positions (prompt and answer) the model was trained for, when config.json says.
    pub max_position_embeddings: Option<usize>,
}

impl ModelConfig {
    /// Reads and resolves `dir/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io { path: path.clone(), source })?;
        let raw: HfConfig = serde_json::from_str(&text).map_err(|e| ModelError::Json { path: path.clone(), message: e.to_string() })?;
        raw.resolve(&path)
    }

    /// Whether any layer's attention is windowed.
    pub fn has_sliding_window(&self) -> bool {
        self.layers.iter().any(|l| l.sliding_window.is_some())
    }
}

/// Upper bounds far above any released model, so that a config from the internet can not make
/// loading allocate without bound before the weights are checked against it.
const LIMITS: &[(&str, usize)] = &[
    ("vocab_size", 1 << 22),
    ("hidden_size", 1 << 17),
    ("intermediate_size", 1 << 19),
    ("num_hidden_layers", 1 << 10),
    ("num_attention_heads", 1 << 10),
    ("num_key_value_heads", 1 << 10),
    ("head_dim", 1 << 12),
];

struct Ctx<'a> {
    path: &'a Path,
}

impl Ctx<'_> {
    fn err(&self, key: &str, message: impl Into<String>) -> ModelError {
        ModelError::Config { path: self.path.to_path_buf(), key: key.to_string(), message: message.into() }
    }

    fn need(&self, v: Option<usize>, key: &str) -> Result<usize, ModelError> {
        match v {
            Some(0) => Err(self.err(key, "must be at least 1")),
            Some(n) => match LIMITS.iter().find(|(k, _)| *k == key) {
                Some((_, max)) if n > *max => Err(self.err(key, format!("{n} is implausibly large (at most {max})"))),
                _ => Ok(n),
            },
            None => Err(self.err(key, "missing")),
        }
    }
}

impl HfConfig {
    /// Validates and resolves; `path` names the file in errors.
    pub fn resolve(&self, path: &Path) -> Result<ModelConfig, ModelError> {
        let cx = Ctx { path };
        let model_type = self.model_type.clone().unwrap_or_default();
        let family = Family::from_model_type(&model_type).ok_or_else(|| ModelError::UnsupportedArchitecture {
            path: path.to_path_buf(),
            model_type: if model_type.is_empty() { format!("(none; architectures {:?})", self.architectures) } else { model_type.clone() },
            supported: SUPPORTED.into(),
        })?;
        let hidden_size = cx.need(self.hidden_size, "hidden_size")?;
        let num_heads = cx.need(self.num_attention_heads, "num_attention_heads")?;
        let num_kv_heads = cx.need(Some(self.num_key_value_heads.unwrap_or(num_heads)), "num_key_value_heads")?;
        if num_heads % num_kv_heads != 0 {
            return Err(cx.err("num_key_value_heads", format!("{num_kv_heads} does not divide num_attention_heads {num_heads}")));
        }
        let head_dim = match self.head_dim {
            Some(d) => cx.need(Some(d), "head_dim")?,
            None if hidden_size % num_heads == 0 => hidden_size / num_heads,
            None => {
                return Err(cx.err(
                    "head_dim",
                    format!("missing, and hidden_size {hidden_size} is not a multiple of num_attention_heads {num_heads}"),
                ))
            }
        };
        let num_layers = cx.need(self.num_hidden_layers, "num_hidden_layers")?;
        let gemma = family.is_gemma();
        let activation = self.activation(&cx, family)?;
        let (attention_scale, attn_softcap, final_softcap) = self.attention_scaling(&cx, family, head_dim)?;
        let layers = self.layer_configs(&cx, family, num_layers, head_dim)?;
        Ok(ModelConfig {
            family,
            vocab_size: cx.need(self.vocab_size, "vocab_size")?,
            hidden_size,
            intermediate_size: cx.need(self.intermediate_size, "intermediate_size")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: self.rms_norm_eps.unwrap_or(1e-6),
            norm_offset: if gemma { 1.0 } else { 0.0 },
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(gemma),
            qkv_bias: family == Family::Qwen2 || self.attention_bias.unwrap_or(false),
            o_bias: family != Family::Qwen2 && self.attention_bias.unwrap_or(false),
            mlp_bias: self.mlp_bias.unwrap_or(false),
            qk_norm: matches!(family, Family::Qwen3 | Family::Gemma3),
            fused: family == Family::Phi3,
            sandwich_norms: matches!(family, Family::Gemma2 | Family::Gemma3),
            activation,
            embed_scale: gemma.then(|| (hidden_size as f32).sqrt()),
            attention_scale,
            attn_softcap,
            final_softcap,
            layers,
            initializer_range: match self.initializer_range {
                Some(r) if !(r > 0.0 && r.is_finite()) => return Err(cx.err("initializer_range", "must be positive")),
                other => other.unwrap_or(0.02),
            },
            eos_token_ids: token_ids(&cx, self.eos_token_id.as_ref(), "eos_token_id")?,
            bos_token_id: token_ids(&cx, self.bos_token_id.as_ref(), "bos_token_id")?.first().copied(),
            max_position_embeddings: self.max_position_embeddings,
        })
    }

    /// The attention score scale, and Gemma 2/3's attention and final logit soft-caps.
    fn attention_scaling(&self, cx: &Ctx<'_>, family: Family, head_dim: usize) -> Result<(f64, Option<f64>, Option<f64>), ModelError> {
        let attention_scale = match (family, self.query_pre_attn_scalar) {
            (Family::Gemma2 | Family::Gemma3, Some(s)) if s > 0.0 => s.powf(-0.5),
            (Family::Gemma2 | Family::Gemma3, Some(_)) => return Err(cx.err("query_pre_attn_scalar", "must be positive")),
            _ => (head_dim as f64).powf(-0.5),
        };
        let softcap = |v: Option<f64>, key: &str| match v {
            Some(c) if c <= 0.0 => Err(cx.err(key, "must be positive")),
            other => Ok(other),
        };
        match family {
            Family::Gemma2 | Family::Gemma3 => Ok((
                attention_scale,
                softcap(self.attn_logit_softcapping, "attn_logit_softcapping")?,
                softcap(self.final_logit_softcapping, "final_logit_softcapping")?,
            )),
            _ => Ok((attention_scale, None, None)),
        }
    }

    /// Each decoder layer's attention window and rotary embedding.
    fn layer_configs(&self, cx: &Ctx<'_>, family: Family, num_layers: usize, head_dim: usize) -> Result<Vec<LayerConfig>, ModelError> {
        let layer_types = self.layer_types(cx, family, num_layers)?;
        let mut layers = Vec::with_capacity(num_layers);
        for kind in &layer_types {
            let sliding = kind == "sliding_attention";
            let sliding_window = match (sliding, self.sliding_window) {
                (false, _) => None,
                (true, Some(0)) => return Err(cx.err("sliding_window", "must be at least 1")),
                (true, Some(w)) => Some(w),
                (true, None) => return Err(cx.err("sliding_window", "missing, but layer_types has sliding_attention layers")),
            };
            layers.push(LayerConfig { sliding_window, rope: self.rope(cx, family, kind, head_dim)? });
        }
        Ok(layers)
    }

    fn activation(&self, cx: &Ctx<'_>, family: Family) -> Result<Activation, ModelError> {
        // Gemma's MLP reads hidden_activation (its hidden_act is a legacy key).
        let (key, name) = match (&self.hidden_activation, &self.hidden_act) {
            (Some(a), _) if family.is_gemma() => ("hidden_activation", a.as_str()),
            (_, Some(a)) => ("hidden_act", a.as_str()),
            (None, None) if family.is_gemma() => return Ok(Activation::GeluTanh),
            (_, None) => return Ok(Activation::Silu),
        };
        match name {
            "silu" | "swish" => Ok(Activation::Silu),
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Ok(Activation::GeluTanh),
            other => Err(cx.err(key, format!("activation {other:?} is not supported (supported: silu, gelu_pytorch_tanh)"))),
        }
    }

    /// `full_attention` / `sliding_attention` per layer, from `layer_types` or the family's rule.
    fn layer_types(&self, cx: &Ctx<'_>, family: Family, n: usize) -> Result<Vec<String>, ModelError> {
        if let Some(types) = &self.layer_types {
            if types.len() != n {
                return Err(cx.err("layer_types", format!("{} entries for {n} layers", types.len())));
            }
            if let Some(bad) = types.iter().find(|t| *t != "full_attention" && *t != "sliding_attention") {
                return Err(cx.err("layer_types", format!("{bad:?} is not one of full_attention, sliding_attention")));
            }
            return Ok(types.clone());
        }
        let pattern = match self.sliding_window_pattern {
            Some(0) => return Err(cx.err("sliding_window_pattern", "must be at least 1")),
            other => other.unwrap_or(6),
        };
        let kind = |sliding: bool| if sliding { "sliding_attention" } else { "full_attention" }.to_string();
        Ok((0..n)
            .map(|i| match family {
                Family::Mistral => kind(self.sliding_window.is_some()),
                Family::Qwen2 | Family::Qwen3 => kind(self.use_sliding_window.unwrap_or(false) && i >= self.max_window_layers.unwrap_or(0)),
                Family::Gemma2 => kind(i % 2 == 0),
                Family::Gemma3 => kind((i + 1) % pattern != 0),
                _ => kind(false),
            })
            .collect())
    }

    /// The RoPE parameters that apply to a layer kind: transformers 5's `rope_parameters` (flat,
    /// or keyed by layer kind), else the legacy `rope_theta` + `rope_scaling`.
    fn rope(&self, cx: &Ctx<'_>, family: Family, kind: &str, head_dim: usize) -> Result<Rope, ModelError> {
        let (key, params): (String, Map<String, Value>) = match &self.rope_parameters {
            Some(Value::Object(map)) if map.contains_key(kind) => match &map[kind] {
                Value::Object(inner) => (format!("rope_parameters.{kind}"), inner.clone()),
                _ => return Err(cx.err(&format!("rope_parameters.{kind}"), "expected an object")),
            },
            Some(Value::Object(map)) => ("rope_parameters".into(), map.clone()),
            Some(Value::Null) | None => {
                let mut map = match &self.rope_scaling {
                    Some(Value::Object(m)) if !(family == Family::Gemma3 && kind == "sliding_attention") => m.clone(),
                    Some(Value::Object(_)) | Some(Value::Null) | None => Map::new(),
                    Some(_) => return Err(cx.err("rope_scaling", "expected an object or null")),
                };
                let theta = match (family, kind) {
                    (Family::Gemma3, "sliding_attention") => self.rope_local_base_freq.unwrap_or(10_000.0),
                    _ => self.rope_theta.unwrap_or(10_000.0),
                };
                map.insert("rope_theta".into(), theta.into());
                ("rope_scaling".into(), map)
            }
            Some(_) => return Err(cx.err("rope_parameters", "expected an object")),
        };
        rope::resolve(
            cx,
            &rope::RopeSource {
                key: &key,
                params: &params,
                family,
                head_dim,
                rope_theta: self.rope_theta,
                partial_rotary_factor: self.partial_rotary_factor,
                max_position_embeddings: self.max_position_embeddings,
                original_max_position_embeddings: self.original_max_position_embeddings,
            },
        )
    }
}

/// An id or a list of ids.
fn token_ids(cx: &Ctx<'_>, v: Option<&Value>, key: &str) -> Result<Vec<u32>, ModelError> {
    let one =
        |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| cx.err(key, "expected a token id or a list of them"));
    match v {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Array(items)) => items.iter().map(one).collect(),
        Some(v) => Ok(vec![one(v)?]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(json: &str) -> Result<ModelConfig, ModelError> {
        let raw: HfConfig = serde_json::from_str(json).expect("test json");
        raw.resolve(Path::new("config.json"))
    }

    const BASE: &str = r#""vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2"#;

    #[test]
    fn llama_defaults() {
        let c = resolve(&format!(r#"{{"model_type": "llama", {BASE}}}"#)).expect("valid");
        assert_eq!((c.head_dim, c.num_kv_heads, c.tie_word_embeddings), (4, 2, false));
        assert_eq!(c.layers[0].rope.inv_freq, vec![1.0, 0.01]);
        assert!(!c.has_sliding_window());
    }

    #[test]
    fn unknown_architecture_and_bad_keys_are_named() {
        let e = resolve(&format!(r#"{{"model_type": "gpt2", {BASE}}}"#)).unwrap_err().to_string();
        assert!(e.contains("\"gpt2\"") && e.contains("supported: llama"), "{e}");
        let e = resolve(r#"{"model_type": "llama", "hidden_size": 8}"#).unwrap_err().to_string();
        assert!(e.contains("config.json: num_attention_heads: missing"), "{e}");
        let e = resolve(&format!(r#"{{"model_type": "llama", {BASE}, "num_key_value_heads": 3}}"#)).unwrap_err().to_string();
        assert!(e.contains("num_key_value_heads: 3 does not divide"), "{e}");
        let e = resolve(&format!(r#"{{"model_type": "llama", {BASE}, "rope_scaling": {{"rope_type": "proportional", "factor": 2}}}}"#))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "rope_scaling.rope_type: \"proportional\" is not supported (supported: default, linear, llama3, dynamic, yarn, longrope)"
            ),
            "{e}"
        );
    }

    /// Issue 9: a hostile config.json fails before anything config-sized is allocated.
    #[test]
    fn implausible_sizes_and_a_zero_pattern_are_errors_not_allocations_or_panics() {
        let e = resolve(r#"{"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1000000000000000, "num_attention_heads": 2}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("config.json: num_hidden_layers: 1000000000000000 is implausibly large (at most 1024)"), "{e}");
        let e = resolve(&format!(r#"{{"model_type": "llama", {BASE}, "head_dim": 1099511627776}}"#)).unwrap_err().to_string();
        assert!(e.contains("head_dim: 1099511627776 is implausibly large"), "{e}");
        let e = resolve(&format!(r#"{{"model_type": "gemma3_text", {BASE}, "sliding_window": 4, "sliding_window_pattern": 0}}"#))
            .unwrap_err()
            .to_string();
        assert!(e.contains("sliding_window_pattern: must be at least 1"), "{e}");
    }
}
