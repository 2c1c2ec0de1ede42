//! LoRA: a frozen linear layer plus a trainable low-rank update, `y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ`, with
//! `s = alpha / r` (or `alpha / √r` with rsLoRA), in PEFT's file format: `adapter_config.json`
//! ([`PeftConfig`]) and `adapter_model.safetensors` with names like
//! `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`.

use std::path::Path;

use candle_core::Tensor;
use regex::Regex;
use serde::Deserialize;
use serde_json::Value;

use crate::rng::SplitMix;
use crate::ModelError;

/// The file PEFT writes next to the adapter weights (keys read; others ignored).
#[derive(Debug, Clone, Deserialize)]
#[allow(missing_docs)]
pub struct PeftConfig {
    #[serde(default)]
    pub peft_type: Option<String>,
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    #[serde(default)]
    pub target_modules: Option<Value>,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub bias: Option<String>,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub modules_to_save: Option<Value>,
    #[serde(default)]
    pub rank_pattern: Option<Value>,
    #[serde(default)]
    pub alpha_pattern: Option<Value>,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default)]
    pub exclude_modules: Option<Value>,
    #[serde(default)]
    pub layers_to_transform: Option<Value>,
    #[serde(default)]
    pub target_parameters: Option<Value>,
    #[serde(default)]
    pub lora_bias: bool,
}

/// Which linear modules carry adapters.
#[derive(Debug, Clone)]
pub enum Targets {
    /// Every linear layer of the decoder layers (PEFT's `all-linear`; never the output layer).
    AllLinear,
    /// Modules whose name equals one of these or ends with `.` + one of them (`q_proj`, ...).
    Names(Vec<String>),
    /// Modules whose full name matches this regular expression (PEFT's string form).
    Pattern(Regex),
}

impl Targets {
    /// Whether the module with this HF name (e.g. `model.layers.0.self_attn.q_proj`) is a target.
    pub fn matches(&self, module: &str) -> bool {
        match self {
            Targets::AllLinear => module != "lm_head",
            Targets::Names(names) => names.iter().any(|n| module == n || module.ends_with(&format!(".{n}"))),
            Targets::Pattern(re) => re.is_match(module),
        }
    }
}

/// A validated LoRA setup.
#[derive(Debug, Clone)]
pub struct LoraSettings {
    /// Rank.
    pub r: usize,
    /// Alpha.
    pub alpha: f64,
    /// Scale by `alpha / √r` instead of `alpha / r`.
    pub use_rslora: bool,
    /// Dropout on the adapter's input while training.
    pub dropout: f64,
    /// Which modules.
    pub targets: Targets,
}

impl LoraSettings {
    /// The factor on the low-rank update.
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    /// Reads and validates `dir/adapter_config.json`.
    pub fn from_adapter_dir(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io { path: path.clone(), source })?;
        let raw: PeftConfig = serde_json::from_str(&text).map_err(|e| ModelError::Json { path: path.clone(), message: e.to_string() })?;
        raw.resolve(&path)
    }
}

impl PeftConfig {
    /// Validates; `path` names the file in errors. Features sft does not implement are refused
    /// rather than ignored.
    pub fn resolve(&self, path: &Path) -> Result<LoraSettings, ModelError> {
        let err = |key: &str, message: String| ModelError::Config { path: path.into(), key: key.into(), message };
        if let Some(t) = &self.peft_type {
            if t != "LORA" {
                return Err(err("peft_type", format!("{t:?} adapters are not supported (only LORA)")));
            }
        }
        if self.r == 0 {
            return Err(err("r", "must be at least 1".into()));
        }
        if self.use_dora {
            return Err(err("use_dora", "DoRA adapters are not supported".into()));
        }
        if self.fan_in_fan_out {
            return Err(err("fan_in_fan_out", "transposed (Conv1D) adapters are not supported".into()));
        }
        if let Some(b) = self.bias.as_deref().filter(|b| *b != "none") {
            return Err(err("bias", format!("{b:?} is not supported (only \"none\")")));
        }
        let nonempty = |v: &Option<Value>| match v {
            None | Some(Value::Null) => false,
            Some(Value::Object(m)) => !m.is_empty(),
            Some(Value::Array(a)) => !a.is_empty(),
            Some(_) => true,
        };
        if self.lora_bias {
            return Err(err("lora_bias", "adapters with a bias on B are not supported".into()));
        }
        let unsupported = [
            ("modules_to_save", &self.modules_to_save),
            ("rank_pattern", &self.rank_pattern),
            ("alpha_pattern", &self.alpha_pattern),
            ("exclude_modules", &self.exclude_modules),
            ("layers_to_transform", &self.layers_to_transform),
            ("target_parameters", &self.target_parameters),
        ];
        for (key, v) in unsupported {
            if nonempty(v) {
                return Err(err(key, "is not supported; it must be empty".into()));
            }
        }
        let targets = match &self.target_modules {
            Some(Value::String(s)) if s == "all-linear" => Targets::AllLinear,
            Some(Value::String(s)) => Targets::Pattern(
                Regex::new(&format!("^(?:{s})$")).map_err(|e| err("target_modules", format!("invalid regular expression: {e}")))?,
            ),
            Some(Value::Array(items)) => Targets::Names(
                items
                    .iter()
                    .map(|v| v.as_str().map(str::to_string).ok_or_else(|| err("target_modules", "expected module names".into())))
                    .collect::<Result<_, _>>()?,
            ),
            _ => return Err(err("target_modules", "missing; expected a list of module names or \"all-linear\"".into())),
        };
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(err("lora_dropout", "must be in [0, 1)".into()));
        }
        Ok(LoraSettings { r: self.r, alpha: self.lora_alpha, use_rslora: self.use_rslora, dropout: self.lora_dropout, targets })
    }
}

/// One module's adapter.
#[derive(Debug, Clone)]
pub struct Lora {
    /// `[r, in]`.
    pub a: Tensor,
    /// `[out, r]`.
    pub b: Tensor,
    /// The factor on `x·Aᵀ·Bᵀ`.
    pub scaling: f64,
    /// The module's number in load order (it seeds the module's dropout mask).
    pub index: u64,
}

/// Dropout on the adapters' input for one forward pass: probability `p`; the masks are a pure
/// function of `seed` and the module, so a resumed run draws the same ones.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dropout {
    /// Probability of zeroing an input element.
    pub p: f64,
    /// Seed of this forward pass's masks.
    pub seed: u64,
}

impl Dropout {
    /// The mask of module `index` over `n` input elements: 0 with probability `p`, otherwise
    /// 1/(1−p).
    pub fn mask(&self, index: u64, n: usize) -> Vec<f32> {
        let mut rng = SplitMix(self.seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let keep = (1.0 / (1.0 - self.p)) as f32;
        (0..n).map(|_| if rng.next_f64() < self.p { 0.0 } else { keep }).collect()
    }
}

impl Lora {
    /// The update `s · (drop(x)·Aᵀ)·Bᵀ` for `x` of shape `[n, in]` (PEFT's order).
    pub fn forward(&self, x: &Tensor, dropout: Option<Dropout>) -> candle_core::Result<Tensor> {
        let x = match dropout {
            Some(d) if d.p > 0.0 => (x * Tensor::from_vec(d.mask(self.index, x.elem_count()), x.shape(), x.device())?)?,
            _ => x.clone(),
        };
        x.matmul(&self.a.t()?)?.matmul(&self.b.t()?)? * self.scaling
    }
}

/// PEFT's saved names of a module's A and B matrices.
pub fn peft_names(module: &str) -> (String, String) {
    (format!("base_model.model.{module}.lora_A.weight"), format!("base_model.model.{module}.lora_B.weight"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(json: &str) -> Result<LoraSettings, ModelError> {
        let raw: PeftConfig = serde_json::from_str(json).expect("test json");
        raw.resolve(Path::new("adapter_config.json"))
    }

    #[test]
    fn targets_match_like_peft() {
        let s = settings(r#"{"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}"#).expect("valid");
        assert!(s.targets.matches("model.layers.0.self_attn.q_proj"));
        assert!(!s.targets.matches("model.layers.0.self_attn.qq_proj"));
        assert_eq!(s.scaling(), 2.0);
        let s = settings(r#"{"r": 4, "lora_alpha": 8, "use_rslora": true, "target_modules": "all-linear"}"#).expect("valid");
        assert!(s.targets.matches("model.layers.1.mlp.down_proj") && !s.targets.matches("lm_head"));
        assert_eq!(s.scaling(), 4.0);
        let s = settings(r#"{"r": 4, "lora_alpha": 8, "target_modules": ".*\\.(q|k)_proj"}"#).expect("valid");
        assert!(s.targets.matches("model.layers.1.self_attn.k_proj") && !s.targets.matches("model.layers.1.self_attn.v_proj"));
    }

    #[test]
    fn dropout_masks_are_seeded_and_scaled() -> candle_core::Result<()> {
        let dev = candle_core::Device::Cpu;
        let lora = Lora {
            a: Tensor::eye(3, candle_core::DType::F32, &dev)?,
            b: Tensor::eye(3, candle_core::DType::F32, &dev)?,
            scaling: 1.0,
            index: 4,
        };
        let x = Tensor::ones((50, 3), candle_core::DType::F32, &dev)?;
        let d = Some(Dropout { p: 0.5, seed: 9 });
        let a = lora.forward(&x, d)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(a, lora.forward(&x, d)?.flatten_all()?.to_vec1::<f32>()?);
        assert!(a.iter().all(|&v| v == 0.0 || v == 2.0));
        let kept = a.iter().filter(|&&v| v == 2.0).count();
        assert!((40..110).contains(&kept), "{kept} of 150 kept");
        assert_eq!(lora.forward(&x, None)?.sum_all()?.to_scalar::<f32>()?, 150.0);
        Ok(())
    }

    #[test]
    fn unsupported_features_are_refused_by_key() {
        for (json, key) in [
            (r#"{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "use_dora": true}"#, "use_dora"),
            (r#"{"r": 0, "lora_alpha": 8, "target_modules": ["q_proj"]}"#, "r:"),
            (r#"{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "bias": "all"}"#, "bias"),
            (r#"{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "rank_pattern": {"q_proj": 2}}"#, "rank_pattern"),
            (r#"{"r": 4, "lora_alpha": 8}"#, "target_modules"),
        ] {
            let e = settings(json).unwrap_err().to_string();
            assert!(e.contains(key), "{json}: {e}");
        }
    }
}
