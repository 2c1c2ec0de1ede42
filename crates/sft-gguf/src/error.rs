//! Why a GGUF file could not be made a model directory: each error names the file and, where
//! there is one, the metadata key or the tensor.

use std::path::PathBuf;

/// An error reading or converting a GGUF file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    /// The file (or an output path) could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a GGUF file, or its header is cut short or inconsistent.
    #[error("{}: not a valid GGUF file: {message}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A metadata key is missing, of the wrong type or out of range.
    #[error("{}: key {key}: {message}", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// The GGUF key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A tensor is missing, of an unknown type, out of the file's bounds or of the wrong shape.
    #[error("{}: tensor {tensor}: {message}", path.display())]
    Tensor {
        /// The file.
        path: PathBuf,
        /// The GGUF tensor name.
        tensor: String,
        /// What is wrong.
        message: String,
    },
    /// `general.architecture` names a model this build does not implement.
    #[error("{}: key general.architecture: {architecture:?} is not supported (supported: {supported})", path.display())]
    UnsupportedArchitecture {
        /// The file.
        path: PathBuf,
        /// The architecture the file names.
        architecture: String,
        /// The architectures that are.
        supported: String,
    },
    /// The output directory exists and is not empty.
    #[error("{}: exists and is not empty; choose another --out (nothing was overwritten)", path.display())]
    OutputExists {
        /// The directory.
        path: PathBuf,
    },
    /// The converted directory failed its own check (config, tokenizer, weights).
    #[error("{}: the converted model does not load: {message}", path.display())]
    Converted {
        /// The GGUF file.
        path: PathBuf,
        /// The loader's error.
        message: String,
    },
}

impl GgufError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        GgufError::Io { path: path.into(), source }
    }
}
