//! Training for sft, stage by stage: the YAML config ([`config`]), new tokens ([`added`]), the data read and encoded
//! ([`data`]) and mixed ([`mix`]), its order ([`batches`]), passes side by side on the cores ([`threads`]),
//! learning-rate schedules as pure functions of the step ([`schedule`]), the optimizers ([`optim`]),
//! checkpoints ([`checkpoint`]), metrics ([`metrics`]) and their plot ([`plot`]) and the training loop, one
//! straight-line function ([`trainer::train`]).
#![deny(missing_docs)]

pub mod added;
pub mod batches;
pub mod checkpoint;
pub mod collective;
pub mod config;
pub mod data;
mod fault;
pub mod lock;
pub mod metrics;
pub mod mix;
pub mod optim;
pub mod plot;
pub mod schedule;
pub mod threads;
pub mod trainer;

use std::path::PathBuf;

use thiserror::Error;

/// What stopped training.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TrainError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A config key is wrong.
    #[error("{}: {}{message}", path.display(), if key.is_empty() { String::new() } else { format!("{key}: ") })]
    Config {
        /// The config file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A data file could not be read.
    #[error(transparent)]
    Read(#[from] sft_data::data::DataError),
    /// The chat template could not be loaded.
    #[error(transparent)]
    Template(#[from] sft_data::template::TemplateError),
    /// The tokenizer could not be loaded.
    #[error(transparent)]
    Tokenizer(#[from] sft_data::tokens::TokenError),
    /// Encoding left nothing to train on, or failed.
    #[error(transparent)]
    Encode(#[from] sft_data::encode::EncodeError),
    /// Packing failed.
    #[error(transparent)]
    Pack(#[from] sft_data::pack::PackError),
    /// A prepared dataset could not be read.
    #[error(transparent)]
    Prepared(#[from] sft_data::prepared::PreparedError),
    /// The model failed.
    #[error(transparent)]
    Model(#[from] sft_model::ModelError),
    /// The model or tokenizer name could not be resolved (boxed: a hub error carries URLs and
    /// paths, and every training call returns this type).
    #[error(transparent)]
    Hub(Box<sft_hub::HubError>),
    /// The optimizer failed.
    #[error(transparent)]
    Optim(#[from] optim::OptimError),
    /// A checkpoint is unusable.
    #[error("{}: {message}", path.display())]
    Checkpoint {
        /// The checkpoint directory or file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A tensor operation failed.
    #[error("{context}: {source}")]
    Tensor {
        /// What was being done.
        context: String,
        /// The cause.
        source: candle_core::Error,
    },
    /// A checkpoint could not be saved; its temporary directory was removed and the earlier
    /// checkpoints are untouched.
    #[error("saving checkpoint-{step} failed: {cause}; {}", match latest {
        Some(dir) => format!("the newest complete checkpoint, {}, is intact (resume with --resume)", dir.display()),
        None => "no earlier checkpoint exists".to_string(),
    })]
    Save {
        /// The step being saved.
        step: usize,
        /// The newest complete checkpoint left.
        latest: Option<PathBuf>,
        /// The cause.
        cause: Box<TrainError>,
    },
    /// The loss or the gradients stopped being finite.
    #[error("step {step}: {what} is not finite; a checkpoint of the last good step was saved at {} (lower learning_rate, or clip with max_grad_norm)", saved.display())]
    NonFinite {
        /// The optimizer step.
        step: usize,
        /// loss or gradient norm.
        what: String,
        /// The checkpoint written before stopping.
        saved: PathBuf,
    },
    /// Another run holds the output directory.
    #[error("{}: another `sft train` is using this output_dir{}; wait for it to end or choose another output_dir (under mpirun or srun, a build without the `mpi` feature starts independent runs: build with --features mpi)", dir.display(), match holder {
        Some(h) => format!(" ({h})"),
        None => String::new(),
    })]
    Locked {
        /// The output directory.
        dir: PathBuf,
        /// Who holds it, as its lock file says.
        holder: Option<lock::Holder>,
    },
    /// A collective operation between ranks failed.
    #[error("data-parallel training: {message}")]
    Collective {
        /// What failed.
        message: String,
    },
    /// The threads for passes side by side could not be started.
    #[error("starting training threads: {message}")]
    Threads {
        /// The cause.
        message: String,
    },
}

/// Adds what was being done to a candle error.
pub(crate) fn during<T>(r: candle_core::Result<T>, context: impl FnOnce() -> String) -> Result<T, TrainError> {
    r.map_err(|source| TrainError::Tensor { context: context(), source })
}

impl From<sft_hub::HubError> for TrainError {
    fn from(e: sft_hub::HubError) -> Self {
        Self::Hub(Box::new(e))
    }
}
