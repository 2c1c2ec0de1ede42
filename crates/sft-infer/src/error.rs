//! What can go wrong while loading a model for inference or generating from it.

use thiserror::Error;

/// An inference error; each names the file, row or key it is about.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum InferError {
    /// The model name could not be resolved (boxed: a hub error carries URLs and paths, and
    /// every inference call returns this type).
    #[error(transparent)]
    Hub(Box<sft_hub::HubError>),
    /// The model could not be loaded or run.
    #[error(transparent)]
    Model(#[from] sft_model::ModelError),
    /// The tokenizer could not be loaded or used.
    #[error(transparent)]
    Tokenizer(#[from] sft_data::tokens::TokenError),
    /// The chat template could not be loaded or rendered.
    #[error(transparent)]
    Template(#[from] sft_data::template::TemplateError),
    /// A prompt file could not be read.
    #[error(transparent)]
    Data(#[from] sft_data::data::DataError),
    /// A file is not what it should be (its path and what is wrong).
    #[error("{path}: {message}")]
    File {
        /// The file, or `file:row`.
        path: String,
        /// What is wrong.
        message: String,
    },
}

impl From<sft_hub::HubError> for InferError {
    fn from(e: sft_hub::HubError) -> Self {
        Self::Hub(Box::new(e))
    }
}
