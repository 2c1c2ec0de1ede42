//! sft-hub: where models come from. Every command that takes a model names it the same way, and
//! [`resolve`] turns the name into local files:
//!
//! - a model directory (`config.json`, safetensors, tokenizer files), as transformers saves one;
//! - a PEFT adapter directory, such as a LoRA training checkpoint: its `adapter_config.json`
//!   names the base model, and it carries the tokenizer and chat template training used.
//!
//! ```no_run
//! let model = sft_hub::resolve("outputs/checkpoint-100".as_ref(), None)?;
//! println!("base {}, adapter {:?}", model.base.display(), model.adapter);
//! # Ok::<(), sft_hub::HubError>(())
//! ```
#![deny(missing_docs)]

use std::path::{Path, PathBuf};

use sft_model::lora::{PeftConfig, ADAPTER_CONFIG};

/// Why a model name could not be resolved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// The adapter's config could not be read.
    #[error(transparent)]
    Adapter(#[from] sft_model::ModelError),
    /// An adapter directory that does not say what it adapts.
    #[error("{}: base_model_name_or_path is missing; pass --model BASE --adapter {}", config.display(), dir.display())]
    NoBase {
        /// The adapter_config.json.
        config: PathBuf,
        /// The adapter directory.
        dir: PathBuf,
    },
}

/// A model as local files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The base model directory.
    pub base: PathBuf,
    /// The adapter directory to apply, if any.
    pub adapter: Option<PathBuf>,
    /// Where the tokenizer files and chat template are: an adapter checkpoint's own, else the
    /// model's.
    pub tokenizer_dir: PathBuf,
}

/// Resolves `model` (with an explicit `adapter`, or none): a checkpoint holding an adapter names
/// its base model and carries its own tokenizer and chat template.
pub fn resolve(model: &Path, adapter: Option<&Path>) -> Result<Resolved, HubError> {
    if adapter.is_none() && model.join(ADAPTER_CONFIG).is_file() {
        let config = PeftConfig::read(model)?;
        let base = config
            .base_model_name_or_path
            .ok_or_else(|| HubError::NoBase { config: model.join(ADAPTER_CONFIG), dir: model.to_path_buf() })?;
        return Ok(Resolved { base: PathBuf::from(base), adapter: Some(model.to_path_buf()), tokenizer_dir: model.to_path_buf() });
    }
    Ok(Resolved { base: model.to_path_buf(), adapter: adapter.map(Path::to_path_buf), tokenizer_dir: model.to_path_buf() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sft-hub-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_checkpoint_names_its_base_and_carries_its_tokenizer() {
        let ckpt = dir("ckpt");
        std::fs::write(ckpt.join(ADAPTER_CONFIG), r#"{"r": 4, "lora_alpha": 8, "base_model_name_or_path": "/models/base"}"#).unwrap();
        let got = resolve(&ckpt, None).unwrap();
        assert_eq!(got, Resolved { base: "/models/base".into(), adapter: Some(ckpt.clone()), tokenizer_dir: ckpt.clone() });
        // An explicit adapter: the model is the base, and its own tokenizer is used.
        let got = resolve(Path::new("/models/other"), Some(&ckpt)).unwrap();
        assert_eq!(got.base, PathBuf::from("/models/other"));
        assert_eq!(got.adapter, Some(ckpt.clone()));
        assert_eq!(got.tokenizer_dir, PathBuf::from("/models/other"));
        std::fs::write(ckpt.join(ADAPTER_CONFIG), r#"{"r": 4, "lora_alpha": 8}"#).unwrap();
        let e = resolve(&ckpt, None).unwrap_err().to_string();
        assert!(e.contains("base_model_name_or_path is missing") && e.contains("--adapter"), "{e}");
        std::fs::write(ckpt.join(ADAPTER_CONFIG), "{").unwrap();
        assert!(resolve(&ckpt, None).unwrap_err().to_string().contains(ADAPTER_CONFIG));
        std::fs::remove_dir_all(&ckpt).unwrap();
    }

    #[test]
    fn a_model_directory_is_its_own_base_and_tokenizer() {
        let model = dir("model");
        let got = resolve(&model, None).unwrap();
        assert_eq!(got, Resolved { base: model.clone(), adapter: None, tokenizer_dir: model.clone() });
        std::fs::remove_dir_all(&model).unwrap();
    }
}
