//! sft-hub: where models come from. Every command that takes a model names it the same way, and
//! this crate turns the name into local files:
//!
//! - a model directory (`config.json`, safetensors, tokenizer files), as transformers saves one;
//! - a PEFT adapter directory, such as a LoRA training checkpoint: its `adapter_config.json`
//!   names the base model, and it carries the tokenizer and chat template training used (when
//!   it has no tokenizer, the base's is used);
//! - a Hugging Face hub id, `org/name` or `org/name@revision` (a branch, tag or commit), found
//!   in the HF cache as huggingface_hub lays it out ([`cache`]), and downloaded into it when
//!   missing unless `HF_HUB_OFFLINE` is set ([`download`]); the settings are [`HubEnv`]. A hub
//!   repository holding `adapter_config.json` is an adapter, as an adapter directory is;
//! - a GGUF file (`*.gguf`), converted once into a model directory.
//!
//! [`locate`] makes one name a model directory; [`resolve`] also follows an adapter to its base.
//! Both read the hub settings from the environment; [`locate_with`] and [`resolve_with`] take
//! them as a [`HubEnv`].
//!
//! ```no_run
//! let model = sft_hub::resolve("outputs/checkpoint-100", None)?;
//! println!("base {} ({}), adapter {:?}", model.base.dir.display(), model.base.name, model.adapter);
//! # Ok::<(), sft_hub::HubError>(())
//! ```
#![deny(missing_docs)]
// HubError carries the id, revision, file and folder of what failed (about 170 bytes); errors are
// rare and never on a hot path, so they are not boxed.
#![allow(clippy::result_large_err)]

pub mod cache;
pub mod download;
mod env;
pub mod files;
mod spec;

use std::path::{Path, PathBuf};

use sft_model::lora::{PeftConfig, ADAPTER_CONFIG};

use cache::{CacheRepo, Cached, Missing, Snapshot, DEFAULT_REVISION};
pub use env::{HubEnv, DEFAULT_ENDPOINT};
use files::TOKENIZER;
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
    /// A hub id the cache does not hold, while offline.
    #[error("{id}@{revision}: not in the HF cache ({}) and HF_HUB_OFFLINE is set; run once without it to download the model, or set HF_HUB_CACHE to a cache that holds it", cache.display())]
    NotCached {
        /// `org/name`.
        id: String,
        /// The revision asked for.
        revision: String,
        /// The cache looked in.
        cache: PathBuf,
    },
    /// A cached snapshot lacks a file the model needs.
    #[error("{id}@{revision}: the cached snapshot {} (commit {commit}) has no {file}{why}; run without HF_HUB_OFFLINE to download it", dir.display())]
    MissingFile {
        /// `org/name`.
        id: String,
        /// The revision asked for.
        revision: String,
        /// The snapshot's commit.
        commit: String,
        /// The snapshot folder.
        dir: PathBuf,
        /// The file, relative to the snapshot.
        file: String,
        /// Why it is needed, when not obvious.
        why: String,
    },
    /// The hub repository lacks a file the model needs.
    #[error("{id}@{revision}: the repository has no {file}{why}")]
    NotInRepo {
        /// `org/name`.
        id: String,
        /// The revision asked for.
        revision: String,
        /// The file.
        file: String,
        /// Why it is needed, when not obvious.
        why: String,
    },
    /// The hub answered with an error status.
    #[error("{id}@{revision}: {file}: HTTP {status} from {url}: {message}")]
    Http {
        /// `org/name`.
        id: String,
        /// The revision asked for.
        revision: String,
        /// The file requested (or the file list).
        file: String,
        /// The HTTP status.
        status: u16,
        /// The URL that answered.
        url: String,
        /// What it likely means, and what the hub said.
        message: String,
    },
    /// Fetching a file failed: the network, an interrupted transfer, a wrong answer or wrong
    /// bytes (which are removed, never used).
    #[error("{id}@{revision}: {file}: {message}")]
    Download {
        /// `org/name`.
        id: String,
        /// The revision asked for.
        revision: String,
        /// The file (or the file list).
        file: String,
        /// What went wrong.
        message: String,
    },
    /// A sharded index that cannot be read.
    #[error("{}: {message}", path.display())]
    BadIndex {
        /// The `model.safetensors.index.json`.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// Reading or writing the cache failed.
    #[error("{}: {source}", path.display())]
    Cache {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
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

/// The model directory `name` stands for, with the hub settings of the environment.
pub fn locate(name: &str) -> Result<LocalModel, HubError> {
    locate_with(name, &HubEnv::from_env())
}

/// The model directory `name` stands for.
pub fn locate_with(name: &str, env: &HubEnv) -> Result<LocalModel, HubError> {
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
        ModelSpec::Hub { id, revision } => {
            let revision = revision.as_deref().unwrap_or(DEFAULT_REVISION);
            cache::check_revision(name, revision)?;
            let snapshot = hub_snapshot(&id, revision, env)?;
            Ok(LocalModel { dir: snapshot.dir, name: id, revision: Some(snapshot.commit) })
        }
    }
}

/// The complete snapshot of `id` at `revision`: from the cache, else downloaded unless offline.
fn hub_snapshot(id: &str, revision: &str, env: &HubEnv) -> Result<Snapshot, HubError> {
    let missing = |snapshot: Snapshot, m: Missing| HubError::MissingFile {
        id: id.into(),
        revision: revision.into(),
        commit: snapshot.commit,
        dir: snapshot.dir,
        file: m.file,
        why: m.why,
    };
    match CacheRepo::new(&env.cache, id).find(revision)? {
        Cached::Complete(snapshot) => Ok(snapshot),
        Cached::Incomplete(snapshot, m) if env.offline => Err(missing(snapshot, m)),
        Cached::Absent if env.offline => Err(HubError::NotCached { id: id.into(), revision: revision.into(), cache: env.cache.clone() }),
        Cached::Incomplete(..) | Cached::Absent => {
            let snapshot = download::fetch(env, id, revision)?;
            match cache::missing(&snapshot.dir)? {
                None => Ok(snapshot),
                Some(m) => Err(missing(snapshot, m)),
            }
        }
    }
}

/// Resolves `model` (with an explicit `adapter`, or none) with the hub settings of the
/// environment: an adapter directory names its base model and carries its own tokenizer and
/// chat template.
pub fn resolve(model: &str, adapter: Option<&str>) -> Result<Resolved, HubError> {
    resolve_with(model, adapter, &HubEnv::from_env())
}

/// [`resolve`] with the given hub settings.
pub fn resolve_with(model: &str, adapter: Option<&str>, env: &HubEnv) -> Result<Resolved, HubError> {
    let located = locate_with(model, env)?;
    if let Some(adapter) = adapter {
        let adapter = locate_with(adapter, env)?.dir;
        return Ok(Resolved { tokenizer_dir: tokenizer_dir(&adapter, &located.dir), base: located, adapter: Some(adapter) });
    }
    if located.dir.join(ADAPTER_CONFIG).is_file() {
        let dir = located.dir;
        let config = PeftConfig::read(&dir)?;
        let base_name =
            config.base_model_name_or_path.ok_or_else(|| HubError::NoBase { config: dir.join(ADAPTER_CONFIG), dir: dir.clone() })?;
        let base = match config.revision {
            Some(rev) if !base_name.contains('@') && matches!(ModelSpec::parse(&base_name), Ok(ModelSpec::Hub { .. })) => {
                locate_with(&format!("{base_name}@{rev}"), env)?
            }
            _ => locate_with(&base_name, env)?,
        };
        return Ok(Resolved { tokenizer_dir: tokenizer_dir(&dir, &base.dir), base, adapter: Some(dir) });
    }
    Ok(Resolved { tokenizer_dir: located.dir.clone(), base: located, adapter: None })
}

/// Where an adapter's tokenizer is: beside it when it was saved with one (a checkpoint, or new
/// tokens: TRL's `tokenizer.save_pretrained` beside the adapter), else its base's (PEFT's
/// save_pretrained writes none, so a hub adapter often has none).
fn tokenizer_dir(adapter: &Path, base: &Path) -> PathBuf {
    match adapter.join(TOKENIZER).is_file() {
        true => adapter.to_path_buf(),
        false => base.to_path_buf(),
    }
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
        assert_eq!(got, Resolved { base: local(&base), adapter: Some(ckpt.clone()), tokenizer_dir: base.clone() }, "no tokenizer");
        std::fs::write(ckpt.join(TOKENIZER), "{}").unwrap();
        let got = resolve(&name(&ckpt), None).unwrap();
        assert_eq!(got, Resolved { base: local(&base), adapter: Some(ckpt.clone()), tokenizer_dir: ckpt.clone() });
        // An explicit adapter: the model is the base; the tokenizer beside the adapter is used.
        let got = resolve(&name(&base), Some(&name(&ckpt))).unwrap();
        assert_eq!(got, Resolved { base: local(&base), adapter: Some(ckpt.clone()), tokenizer_dir: ckpt.clone() });
        std::fs::remove_file(ckpt.join(TOKENIZER)).unwrap();
        let got = resolve(&name(&base), Some(&name(&ckpt))).unwrap();
        assert_eq!(got.tokenizer_dir, base, "an adapter without a tokenizer: the base's");
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
