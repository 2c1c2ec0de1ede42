//! Prepared datasets: encoded (and optionally packed) examples stored once, so training can
//! start without tokenizing again. A directory holds
//!
//! - `tokens.bin`: every record's input ids, little-endian `u32`, one after another;
//! - `labels.bin`: their labels, little-endian `i32` (`-100` where the loss ignores);
//! - `index.bin`: per record, its start and length in tokens, two little-endian `u64`;
//! - `positions.bin` (packed datasets only): position ids, little-endian `u32`, restarting at
//!   0 for every row of a sequence (row boundaries are where they restart);
//! - `manifest.json`: the [`Manifest`]: format and sft versions, what the data was made from
//!   (tokenizer and template hashes, settings, data file size and mtime) and the counts.
//!
//! [`StoreWriter`] builds the directory beside its target and renames it into place, so a reader
//! never sees half a dataset; [`PreparedDataset::open`] checks every file against the manifest
//! and [`PreparedDataset::is_stale`] says why it no longer fits the current inputs.

mod build;
mod manifest;
mod store;

pub use build::{build, BuildError, BuildInputs, Built};
pub use manifest::{file_sha256, template_sha256, Counts, DataFingerprint, Manifest, ManifestKey, Settings, FORMAT_VERSION};
pub use store::{PreparedDataset, Record, StoreWriter};

use thiserror::Error;

/// The manifest's file name.
pub const MANIFEST: &str = "manifest.json";

/// Why a prepared dataset cannot be written or read.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PreparedError {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// `manifest.json` is not a manifest.
    #[error("{path}: not a valid prepared-dataset manifest: {source}")]
    Manifest {
        /// The manifest file.
        path: String,
        /// The cause.
        source: serde_json::Error,
    },
    /// Written by a different layout version.
    #[error("{path}: format version {found}, this sft reads {expected}; prepare the data again")]
    Version {
        /// The manifest file.
        path: String,
        /// The version found.
        found: u32,
        /// The version this code reads.
        expected: u32,
    },
    /// A data file's size disagrees with the manifest.
    #[error("{path}: {found} bytes, but manifest.json promises {expected} (truncated or from another run); prepare the data again")]
    Size {
        /// The file.
        path: String,
        /// Bytes expected.
        expected: u64,
        /// Bytes found.
        found: u64,
    },
    /// The index points outside the token files or records overlap.
    #[error("{path}: record {record}: {message}; prepare the data again")]
    Index {
        /// The index file.
        path: String,
        /// The record, 0-based.
        record: usize,
        /// What is wrong.
        message: String,
    },
    /// The output exists and is not a prepared dataset.
    #[error("{path}: exists and is not an empty directory or a prepared dataset (only manifest.json and its .bin files); refusing to overwrite it, choose another --out")]
    NotPrepared {
        /// The directory.
        path: String,
    },
    /// A record's ids, labels and positions differ in length.
    #[error("record {record}: {message}")]
    Record {
        /// The record, 0-based.
        record: usize,
        /// What is wrong.
        message: String,
    },
}

impl PreparedError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        PreparedError::Io { path: path.display().to_string(), source }
    }
}
