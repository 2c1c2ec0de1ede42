//! PEFT's `adapter_config.json`, the one place it is read and written: [`PeftConfig`] mirrors the
//! keys PEFT writes for a LoRA adapter (others are ignored when reading), [`PeftConfig::resolve`]
//! validates it into [`LoraSettings`], refusing features sft does not implement rather than
//! ignoring them, and [`PeftConfig::for_adapter`] builds the file sft saves with a trained
//! adapter.

use std::path::Path;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{LoraSettings, SavedModule, Targets};
use crate::ModelError;

/// The adapter config's file name.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// The adapter weights' file name.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

/// `adapter_config.json`, key for key (in the order PEFT writes them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct PeftConfig {
    #[serde(default)]
    pub peft_type: Option<String>,
    #[serde(default)]
    pub task_type: Option<String>,
    /// The base model: a hub id (with `@revision`) or an absolute directory.
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// The hub commit of the base model, when it came from the hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub target_modules: Option<Value>,
    #[serde(default)]
    pub bias: Option<String>,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub inference_mode: bool,
    #[serde(default)]
    pub init_lora_weights: Option<Value>,
    #[serde(default)]
    pub modules_to_save: Option<Value>,
    #[serde(default)]
    pub rank_pattern: Map<String, Value>,
    #[serde(default)]
    pub alpha_pattern: Map<String, Value>,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude_modules: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers_to_transform: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_parameters: Option<Value>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lora_bias: bool,
}

impl PeftConfig {
    /// The config of a trained adapter: `settings`, on the modules `targets` (PEFT lists the
    /// short names, `q_proj`, …), for the base model named `base_model` (at hub commit
    /// `revision`).
    pub fn for_adapter(settings: &LoraSettings, targets: Vec<String>, base_model: String, revision: Option<String>) -> Self {
        PeftConfig {
            peft_type: Some("LORA".into()),
            task_type: Some("CAUSAL_LM".into()),
            base_model_name_or_path: Some(base_model),
            revision,
            r: settings.r,
            lora_alpha: settings.alpha,
            lora_dropout: settings.dropout,
            use_rslora: settings.use_rslora,
            target_modules: Some(Value::from(targets)),
            bias: Some("none".into()),
            fan_in_fan_out: false,
            inference_mode: true,
            init_lora_weights: Some(Value::Bool(true)),
            modules_to_save: (!settings.modules_to_save.is_empty())
                .then(|| Value::from(settings.modules_to_save.iter().map(|m| m.name()).collect::<Vec<_>>())),
            rank_pattern: Map::new(),
            alpha_pattern: Map::new(),
            use_dora: settings.use_dora,
            exclude_modules: None,
            layers_to_transform: None,
            target_parameters: None,
            lora_bias: false,
        }
    }

    /// Reads `dir/adapter_config.json`.
    pub fn read(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join(ADAPTER_CONFIG);
        let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io { path: path.clone(), source })?;
        serde_json::from_str(&text).map_err(|e| ModelError::Json { path, message: e.to_string() })
    }

    /// The file's bytes, pretty-printed as PEFT writes them.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain fields cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Validates; `path` names the file in errors. Features sft does not implement are refused
    /// rather than ignored.
    pub fn resolve(&self, path: &Path) -> Result<LoraSettings, ModelError> {
        let err = |key: &str, message: String| ModelError::Config { path: path.into(), key: key.into(), message };
        if let Some(t) = self.peft_type.as_deref().filter(|t| *t != "LORA") {
            return Err(err("peft_type", format!("{t:?} adapters are not supported (only LORA)")));
        }
        if self.r == 0 {
            return Err(err("r", "must be at least 1".into()));
        }
        if self.fan_in_fan_out {
            return Err(err("fan_in_fan_out", "transposed (Conv1D) adapters are not supported".into()));
        }
        if let Some(b) = self.bias.as_deref().filter(|b| *b != "none") {
            return Err(err("bias", format!("{b:?} is not supported (only \"none\")")));
        }
        if self.lora_bias {
            return Err(err("lora_bias", "adapters with a bias on B are not supported".into()));
        }
        let nonempty = |v: &Option<Value>| match v {
            None | Some(Value::Null) => false,
            Some(Value::Object(m)) => !m.is_empty(),
            Some(Value::Array(a)) => !a.is_empty(),
            Some(_) => true,
        };
        let unsupported = [
            ("rank_pattern", !self.rank_pattern.is_empty()),
            ("alpha_pattern", !self.alpha_pattern.is_empty()),
            ("exclude_modules", nonempty(&self.exclude_modules)),
            ("layers_to_transform", nonempty(&self.layers_to_transform)),
            ("target_parameters", nonempty(&self.target_parameters)),
        ];
        if let Some((key, _)) = unsupported.iter().find(|(_, set)| *set) {
            return Err(err(key, "is not supported; it must be empty".into()));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(err("lora_dropout", "must be in [0, 1)".into()));
        }
        Ok(LoraSettings {
            r: self.r,
            alpha: self.lora_alpha,
            use_rslora: self.use_rslora,
            dropout: self.lora_dropout,
            targets: self.targets(path)?,
            use_dora: self.use_dora,
            modules_to_save: self.modules_to_save(path)?,
        })
    }

    /// `modules_to_save`: a list of `embed_tokens` and `lm_head` (the modules sft trains whole).
    fn modules_to_save(&self, path: &Path) -> Result<Vec<SavedModule>, ModelError> {
        let err = |message: String| ModelError::Config { path: path.into(), key: "modules_to_save".into(), message };
        let items = match &self.modules_to_save {
            None | Some(Value::Null) => return Ok(vec![]),
            Some(Value::Array(items)) => items,
            Some(other) => return Err(err(format!("expected a list of module names, got {other}"))),
        };
        let mut modules = items
            .iter()
            .map(|v| {
                let name = v.as_str().ok_or_else(|| err(format!("expected module names, got {v}")))?;
                SavedModule::parse(name)
                    .ok_or_else(|| err(format!("{name:?} is not supported (only embed_tokens and lm_head are trained whole)")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        modules.sort();
        modules.dedup();
        Ok(modules)
    }

    /// `target_modules`: `"all-linear"`, a regular expression over full module names, or a list
    /// of names.
    fn targets(&self, path: &Path) -> Result<Targets, ModelError> {
        let err = |message: String| ModelError::Config { path: path.into(), key: "target_modules".into(), message };
        match &self.target_modules {
            Some(Value::String(s)) if s == "all-linear" => Ok(Targets::AllLinear),
            Some(Value::String(s)) => {
                Regex::new(&format!("^(?:{s})$")).map(Targets::Pattern).map_err(|e| err(format!("invalid regular expression: {e}")))
            }
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_string).ok_or_else(|| err("expected module names".into())))
                .collect::<Result<_, _>>()
                .map(Targets::Names),
            _ => Err(err("missing; expected a list of module names or \"all-linear\"".into())),
        }
    }
}

impl LoraSettings {
    /// Reads and validates `dir/adapter_config.json`.
    pub fn from_adapter_dir(dir: &Path) -> Result<Self, ModelError> {
        PeftConfig::read(dir)?.resolve(&dir.join(ADAPTER_CONFIG))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(json: &str) -> Result<LoraSettings, ModelError> {
        let raw: PeftConfig = serde_json::from_str(json).expect("test json");
        raw.resolve(Path::new(ADAPTER_CONFIG))
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
    fn unsupported_features_are_refused_by_key() {
        for (json, key) in [
            (r#"{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "fan_in_fan_out": true}"#, "fan_in_fan_out"),
            (r#"{"r": 0, "lora_alpha": 8, "target_modules": ["q_proj"]}"#, "r:"),
            (r#"{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "bias": "all"}"#, "bias"),
            (r#"{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "rank_pattern": {"q_proj": 2}}"#, "rank_pattern"),
            (r#"{"r": 4, "lora_alpha": 8}"#, "target_modules"),
            (r#"{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "modules_to_save": ["score"]}"#, "modules_to_save"),
        ] {
            let e = settings(json).unwrap_err().to_string();
            assert!(e.contains(key), "{json}: {e}");
        }
    }

    /// What sft writes reads back as the same settings, with PEFT's keys in PEFT's order.
    #[test]
    fn a_written_config_reads_back() {
        let s = settings(
            r#"{"r": 4, "lora_alpha": 8, "use_rslora": true, "lora_dropout": 0.1, "target_modules": "all-linear", "use_dora": true, "modules_to_save": ["lm_head", "embed_tokens"]}"#,
        )
        .expect("valid");
        let written = PeftConfig::for_adapter(&s, vec!["q_proj".into(), "v_proj".into()], "/models/base".into(), None);
        let text = String::from_utf8(written.to_json()).expect("utf-8");
        let back: PeftConfig = serde_json::from_str(&text).expect("reads back");
        assert_eq!(back, written);
        let keys: Vec<String> = serde_json::from_str::<Map<String, Value>>(&text).expect("object").keys().cloned().collect();
        assert_eq!(&keys[..4], ["peft_type", "task_type", "base_model_name_or_path", "r"]);
        let again = back.resolve(Path::new(ADAPTER_CONFIG)).expect("valid");
        assert_eq!((again.r, again.alpha, again.use_rslora, again.dropout, again.use_dora), (4, 8.0, true, 0.1, true));
        assert_eq!(again.modules_to_save, SavedModule::ALL);
        assert!(text.contains("\"modules_to_save\": [\n    \"embed_tokens\",\n    \"lm_head\"\n  ]"), "{text}");
        assert!(again.targets.matches("model.layers.0.self_attn.v_proj") && !again.targets.matches("model.layers.0.mlp.up_proj"));
    }
}
