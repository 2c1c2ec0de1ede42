//! Building a prepared dataset from a data file a chunk of rows at a time: read → convert →
//! encode (each chunk in parallel, in file order) → stored, so memory stays bounded on a file
//! larger than RAM. Packing needs every example's length first: the examples are stored in a
//! scratch dataset beside the output, then packed from it into the output.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::store::{hidden_sibling, le_words, DirGuard, LABELS, TOKENS};
use super::{Counts, Manifest, ManifestKey, PreparedError, Record, StoreWriter};
use crate::data::{DataError, Dataset, ReadOptions, RowConverter, RowStream};
use crate::encode::{EncodeError, EncodeOptions, EncodeStats, Encoder, Excluded, Tally};
use crate::pack::{plan_lengths, PackError};
use crate::template::Renderer;
use crate::tokens::TextTokenizer;

/// Why a prepared dataset could not be built.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BuildError {
    /// Reading or converting the data file.
    #[error(transparent)]
    Data(#[from] DataError),
    /// Encoding (or nothing left to train on).
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// Packing.
    #[error(transparent)]
    Pack(#[from] PackError),
    /// Writing the dataset.
    #[error(transparent)]
    Prepared(#[from] PreparedError),
}

/// What to build from.
#[derive(Debug, Clone, Copy)]
pub struct BuildInputs<'a> {
    /// The data file (`-` for stdin).
    pub data: &'a str,
    /// How to read it.
    pub read: &'a ReadOptions,
    /// How to encode its rows.
    pub options: &'a EncodeOptions,
    /// Pack examples into sequences of `options.max_seq_length` tokens.
    pub packing: bool,
    /// The chat template.
    pub renderer: &'a Renderer,
    /// The tokenizer.
    pub tokenizer: &'a TextTokenizer,
    /// How many excluded rows to keep for a report (all are counted): memory for them grows
    /// with the file otherwise.
    pub keep_excluded: usize,
}

/// What a build did.
#[derive(Debug)]
pub struct Built {
    /// The file's format and skipped rows (its conversations are not kept).
    pub dataset: Dataset,
    /// Encoding counts.
    pub stats: EncodeStats,
    /// The first [`BuildInputs::keep_excluded`] rows left out, in file order (all are counted
    /// in `stats`).
    pub excluded: Vec<Excluded>,
    /// The manifest written.
    pub manifest: Manifest,
}

/// Builds the prepared dataset of `inputs` at `out` with the manifest key `key`. `out` is
/// replaced only once the whole dataset is written (see [`StoreWriter`]).
pub fn build(inputs: &BuildInputs<'_>, out: &Path, key: ManifestKey) -> Result<Built, BuildError> {
    let max = inputs.options.max_seq_length.filter(|_| inputs.packing);
    if max == Some(0) {
        return Err(PackError::ZeroLimit.into());
    }
    let scratch = max.map(|_| scratch_beside(out));
    let mut writer = StoreWriter::create(scratch.as_ref().map_or(out, |s| s.0.as_path()), false)?;
    let mut converter = RowConverter::new(inputs.data, inputs.read)?;
    let mut stream = RowStream::open(inputs.data)?;
    let encoder = Encoder::new(inputs.renderer, inputs.tokenizer, inputs.options)?;
    let mut tally = Tally::keeping(inputs.keep_excluded);
    let mut lengths = Vec::new();
    while let Some(rows) = stream.next_chunk()? {
        let conversations = converter.convert(rows)?;
        for outcome in encoder.encode_many(&conversations) {
            if let Some(ex) = tally.add(outcome?) {
                if max.is_some() {
                    lengths.push(ex.input_ids.len());
                }
                writer.push(Record { input_ids: &ex.input_ids, labels: &ex.labels, position_ids: None })?;
            }
        }
    }
    let dataset = converter.finish(stream.kind(), Vec::new())?;
    let (stats, excluded) = tally.finish()?;
    let mut counts = counts(&dataset, &stats);
    let manifest = match (scratch, max) {
        (Some(scratch), Some(max)) => {
            let mut examples_key = key.clone();
            examples_key.settings.packing = false;
            writer.finish(&Manifest::new(examples_key, counts.clone()))?;
            let mut packed = StoreWriter::create(out, true)?;
            pack_into(&scratch.0, &lengths, &plan_lengths(&lengths, max), &mut packed)?;
            counts.sequences = packed.records();
            counts.tokens = packed.tokens();
            let manifest = Manifest::new(key, counts);
            packed.finish(&manifest)?;
            manifest
        }
        _ => {
            counts.sequences = writer.records();
            counts.tokens = writer.tokens();
            let manifest = Manifest::new(key, counts);
            writer.finish(&manifest)?;
            manifest
        }
    };
    Ok(Built { dataset, stats, excluded, manifest })
}

/// Stores one sequence per bin: its examples (read from the scratch dataset in `dir`, whose
/// example lengths are `lengths`) one after another, positions restarting at 0 for every
/// example. Examples are read with plain reads, not mapped, so memory stays bounded.
fn pack_into(dir: &Path, lengths: &[usize], bins: &[Vec<usize>], out: &mut StoreWriter) -> Result<(), PreparedError> {
    let starts: Vec<u64> = lengths.iter().scan(0u64, |at, &n| Some(std::mem::replace(at, *at + n as u64))).collect();
    let mut tokens = WordFile::open(&dir.join(TOKENS))?;
    let mut labels = WordFile::open(&dir.join(LABELS))?;
    let (mut ids, mut label_words, mut positions) = (Vec::new(), Vec::new(), Vec::new());
    for bin in bins {
        ids.clear();
        label_words.clear();
        positions.clear();
        for &i in bin {
            tokens.read(starts[i], lengths[i], &mut ids)?;
            labels.read(starts[i], lengths[i], &mut label_words)?;
            positions.extend((0..lengths[i]).map(|p| p as u32));
        }
        let labels: &[i32] = bytemuck::cast_slice(&label_words);
        out.push(Record { input_ids: &ids, labels, position_ids: Some(&positions) })?;
    }
    Ok(())
}

/// A file of little-endian 32-bit words, read a range at a time.
struct WordFile {
    path: PathBuf,
    file: File,
    bytes: Vec<u8>,
}

impl WordFile {
    fn open(path: &Path) -> Result<Self, PreparedError> {
        let file = File::open(path).map_err(|e| PreparedError::io(path, e))?;
        Ok(WordFile { path: path.to_path_buf(), file, bytes: Vec::new() })
    }

    /// Appends words `start..start + len` to `out`.
    fn read(&mut self, start: u64, len: usize, out: &mut Vec<u32>) -> Result<(), PreparedError> {
        self.bytes.resize(len * 4, 0);
        self.file.seek(SeekFrom::Start(start * 4)).map_err(|e| PreparedError::io(&self.path, e))?;
        self.file.read_exact(&mut self.bytes).map_err(|e| PreparedError::io(&self.path, e))?;
        out.extend(le_words(&self.bytes));
        Ok(())
    }
}

/// The manifest counts of a build (`sequences` and `tokens` are set by the writer).
fn counts(dataset: &Dataset, stats: &EncodeStats) -> Counts {
    let by_reason: BTreeMap<String, usize> = stats.excluded.iter().map(|(kind, n)| (kind.to_string(), *n)).collect();
    Counts {
        rows: stats.rows,
        bad_rows_skipped: dataset.skipped.len(),
        examples: stats.examples,
        excluded: by_reason,
        sequences: 0,
        tokens: 0,
        trained_tokens: stats.trained_tokens,
        truncated_rows: stats.truncated_rows,
        trained_tokens_lost: stats.trained_tokens_lost,
    }
}

/// Where a packed build keeps its unpacked examples: a hidden directory beside the output,
/// removed when done (or on failure).
fn scratch_beside(out: &Path) -> DirGuard {
    DirGuard(hidden_sibling(out, "examples"))
}
