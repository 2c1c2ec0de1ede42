//! sft-hub: where models come from. Every command that takes a model names it the same way, and
//! this crate turns the name into local files:
//!
//! - a model directory (`config.json`, safetensors, tokenizer files), as transformers saves one;
//! - a PEFT adapter directory, such as a LoRA training checkpoint: its `adapter_config.json`
//!   names the base model, and it carries the tokenizer and chat template training used;
//! - a Hugging Face hub id, `org/name` or `org/name@revision`, found in the HF cache
//!   (downloaded into it when missing);
//! - a GGUF file (`*.gguf`), converted once into a model directory.
//!
//! [`locate`] makes one name a model directory; [`resolve`] also follows an adapter to its base.
//!
//! ```no_run
//! let model = sft_hub::resolve("outputs/checkpoint-100", None)?;
//! println!("base {} ({}), adapter {:?}", model.base.dir.display(), model.base.name, model.adapter);
//! # Ok::<(), sft_hub::HubError>(())
//! ```
#![deny(missing_docs)]

mod spec;

use std::path::{Path, PathBuf};

use sft_model::lora::{PeftConfig, ADAPTER_CONFIG};

pub use spec::ModelSpec;

/// Why a model name could not be resolved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// A GGUF file could not be converted.
    #[error(transparent)]
    Gguf(#[from] sft_gguf::GgufError),
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
    /// The name is not a directory, a GGUF file or a hub id.
    #[error("{name}: {message}")]
    BadName {
        /// The name as given.
        name: String,
        /// What it was taken for and why that failed.
        message: String,
    },
    /// The name is of a kind this build cannot load yet.
    #[error("{name}: {what} are not supported yet")]
    Unsupported {
        /// The name as given.
        name: String,
        /// The kind of name.
        what: &'static str,
    },
}

/// A model as a local directory, and how to name it on another machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalModel {
    /// The directory: `config.json`, weights, tokenizer files.
    pub dir: PathBuf,
    /// The name a checkpoint records as `base_model_name_or_path`: the hub id, or the
    /// directory's absolute path.
    pub name: String,
    /// The hub commit the directory holds (recorded as PEFT's `revision`).
    pub revision: Option<String>,
}

/// A model as local files: its base and the adapter to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The base model.
    pub base: LocalModel,
    /// The adapter directory to apply, if any.
    pub adapter: Option<PathBuf>,
    /// Where the tokenizer files and chat template are: an adapter checkpoint's own, else the
    /// base model's.
    pub tokenizer_dir: PathBuf,
}

/// The model directory `name` stands for.
pub fn locate(name: &str) -> Result<LocalModel, HubError> {
    match ModelSpec::parse(name)? {
        ModelSpec::Dir(dir) => {
            let absolute = std::path::absolute(&dir).unwrap_or_else(|_| dir.clone());
            Ok(LocalModel { name: absolute.display().to_string(), dir, revision: None })
        }
        ModelSpec::Gguf(file) => {
            let dir = sft_gguf::cached(&file)?;
            let absolute = std::path::absolute(&file).unwrap_or(file);
            Ok(LocalModel { name: absolute.display().to_string(), dir, revision: None })
        }
        ModelSpec::Hub { .. } => Err(HubError::Unsupported { name: name.into(), what: "hub ids" }),
    }
}

/// Resolves `model` (with an explicit `adapter`, or none): an adapter directory names its base
/// model and carries its own tokenizer and chat template.
pub fn resolve(model: &str, adapter: Option<&str>) -> Result<Resolved, HubError> {
    let located = locate(model)?;
    if let Some(adapter) = adapter {
        let adapter = locate(adapter)?.dir;
        return Ok(Resolved { tokenizer_dir: located.dir.clone(), base: located, adapter: Some(adapter) });
    }
    if located.dir.join(ADAPTER_CONFIG).is_file() {
        let dir = located.dir;
        let config = PeftConfig::read(&dir)?;
        let base_name =
            config.base_model_name_or_path.ok_or_else(|| HubError::NoBase { config: dir.join(ADAPTER_CONFIG), dir: dir.clone() })?;
        let base = match config.revision {
            Some(rev) if !base_name.contains('@') && matches!(ModelSpec::parse(&base_name), Ok(ModelSpec::Hub { .. })) => {
                locate(&format!("{base_name}@{rev}"))?
            }
            _ => locate(&base_name)?,
        };
        return Ok(Resolved { base, adapter: Some(dir.clone()), tokenizer_dir: dir });
    }
    Ok(Resolved { tokenizer_dir: located.dir.clone(), base: located, adapter: None })
}

/// `dir`'s [`LocalModel`] when it is known to be a local directory (tests, checkpoints).
pub fn local(dir: &Path) -> LocalModel {
    let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    LocalModel { name: absolute.display().to_string(), dir: dir.to_path_buf(), revision: None }
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

    fn name(p: &Path) -> String {
        p.display().to_string()
    }

    #[test]
    fn a_checkpoint_names_its_base_and_carries_its_tokenizer() {
        let (ckpt, base) = (dir("ckpt"), dir("base"));
        let config = format!(r#"{{"r": 4, "lora_alpha": 8, "base_model_name_or_path": {:?}}}"#, name(&base));
        std::fs::write(ckpt.join(ADAPTER_CONFIG), config).unwrap();
        let got = resolve(&name(&ckpt), None).unwrap();
        assert_eq!(got, Resolved { base: local(&base), adapter: Some(ckpt.clone()), tokenizer_dir: ckpt.clone() });
        // An explicit adapter: the model is the base, and its own tokenizer is used.
        let got = resolve(&name(&base), Some(&name(&ckpt))).unwrap();
        assert_eq!(got, Resolved { base: local(&base), adapter: Some(ckpt.clone()), tokenizer_dir: base.clone() });
        std::fs::write(ckpt.join(ADAPTER_CONFIG), r#"{"r": 4, "lora_alpha": 8}"#).unwrap();
        let e = resolve(&name(&ckpt), None).unwrap_err().to_string();
        assert!(e.contains("base_model_name_or_path is missing") && e.contains("--adapter"), "{e}");
        std::fs::write(ckpt.join(ADAPTER_CONFIG), "{").unwrap();
        assert!(resolve(&name(&ckpt), None).unwrap_err().to_string().contains(ADAPTER_CONFIG));
        for d in [ckpt, base] {
            std::fs::remove_dir_all(&d).unwrap();
        }
    }

    #[test]
    fn a_directory_is_named_by_its_absolute_path() {
        let model = dir("model");
        let got = locate(&name(&model)).unwrap();
        assert_eq!(got.dir, model);
        assert!(Path::new(&got.name).is_absolute());
        assert_eq!(resolve(&name(&model), None).unwrap().adapter, None);
        std::fs::remove_dir_all(&model).unwrap();
    }
}
