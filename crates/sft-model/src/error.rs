//! Errors of loading and running a model: each names the file, the config key or the tensor.

use std::path::PathBuf;

use thiserror::Error;

/// What went wrong.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A JSON file is not valid or has the wrong shape.
    #[error("{}: {message}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A config key is missing or out of range.
    #[error("{}: {key}: {message}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// The key, dotted.
        key: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A model type this crate does not implement.
    #[error("{}: model_type {model_type:?} is not supported (supported: {supported})", path.display())]
    UnsupportedArchitecture {
        /// The config file.
        path: PathBuf,
        /// Its model_type.
        model_type: String,
        /// The ones that are.
        supported: String,
    },
    /// A weights file is not valid safetensors.
    #[error("{}: not a valid safetensors file: {message}", path.display())]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The cause.
        message: String,
    },
    /// A tensor the model needs is absent.
    #[error("{}: tensor {name} is missing", dir.display())]
    MissingTensor {
        /// The model or adapter directory.
        dir: PathBuf,
        /// The tensor's name.
        name: String,
    },
    /// A tensor has the wrong shape or type.
    #[error("{}: tensor {name}: {message}", dir.display())]
    BadTensor {
        /// The model or adapter directory.
        dir: PathBuf,
        /// The tensor's name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// An input batch is malformed.
    #[error("batch: {0}")]
    Batch(String),
    /// A tensor operation failed.
    #[error("{context}: {source}")]
    Tensor {
        /// What was being done.
        context: String,
        /// The cause.
        source: candle_core::Error,
    },
}

/// Adds what was being done to a candle error.
pub(crate) trait TensorContext<T> {
    fn during(self, context: impl FnOnce() -> String) -> Result<T, ModelError>;
}

impl<T> TensorContext<T> for candle_core::Result<T> {
    fn during(self, context: impl FnOnce() -> String) -> Result<T, ModelError> {
        self.map_err(|source| ModelError::Tensor { context: context(), source })
    }
}
