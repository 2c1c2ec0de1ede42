//! `sft prepare`: encode a data file once (template, loss mask, EOS, length limit), optionally
//! pack it, and store it as a prepared dataset directory that training reads without
//! tokenizing again. A summary of what happened to the rows goes to stderr.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use serde_json::json;
use sft_data::encode::{encode_all, EncodeOptions, Encoded};
use sft_data::pack::{fill_ratio, pack, PackedSequence};
use sft_data::prepared::{
    write, Counts, DataFingerprint, Manifest, ManifestKey, Records, Settings,
};

use crate::common::{DataArgs, EncodeArgs, Loaded};

/// How many excluded rows the summary lists before counting the rest.
const LISTED_EXCLUDED: usize = 20;

/// `sft prepare` flags.
#[derive(Debug, Args)]
pub struct PrepareArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Output directory: created, or replaced when it already holds a prepared dataset.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub encode: EncodeArgs,
    /// Pack examples into sequences of --max-seq-length tokens (best-fit decreasing).
    #[arg(long)]
    pub packing: bool,
    /// Also write one JSON line per stored record: {"input_ids", "labels"} (and
    /// "position_ids" with --packing).
    #[arg(long)]
    pub emit_jsonl: Option<PathBuf>,
}

impl PrepareArgs {
    /// Resolves the encode flags.
    fn options(&self) -> anyhow::Result<EncodeOptions> {
        let options = self.encode.options()?;
        if self.packing && options.max_seq_length.is_none() {
            bail!("--packing needs --max-seq-length N (the length of a packed sequence)");
        }
        Ok(options)
    }
}

/// What a prepared dataset is made from: hashes of the tokenizer and the template in use (with
/// its variables, `--template-kwargs` and `--now`), the settings and the data file's
/// fingerprint (taken before reading it). `sft train` builds the same key to check a prepared
/// dataset with [`sft_data::prepared::PreparedDataset::is_stale`].
pub(crate) fn manifest_key(
    data: &DataArgs,
    loaded: &Loaded,
    settings: Settings,
    fingerprint: DataFingerprint,
) -> anyhow::Result<ManifestKey> {
    let dir = data.tokenizer.as_deref().context("prepare needs --tokenizer DIR")?;
    Ok(ManifestKey::new(dir, &loaded.renderer, settings, data.now.as_deref(), fingerprint)?)
}

/// Runs `sft prepare`.
pub fn run(args: &PrepareArgs) -> anyhow::Result<ExitCode> {
    let options = args.options()?;
    if args.data.tokenizer.is_none() {
        bail!("prepare needs --tokenizer DIR (a directory with tokenizer.json)");
    }
    let fingerprint = DataFingerprint::of(args.data.data())?;
    let loaded = args.data.load(true)?;
    let tokenizer = loaded.tokenizer.as_ref().context("prepare needs --tokenizer DIR")?;
    let encoded = encode_all(&loaded.dataset.conversations, &options, &loaded.renderer, tokenizer)
        .with_context(|| format!("{}: nothing to prepare", args.data.data()))?;
    let packed = match (args.packing, options.max_seq_length) {
        (true, Some(max)) => Some(pack(&encoded.examples, max)?),
        _ => None,
    };
    let records = match &packed {
        Some(seqs) => Records::Packed(seqs),
        None => Records::Examples(&encoded.examples),
    };
    let counts = counts(&loaded, &encoded, &records);
    let key = manifest_key(&args.data, &loaded, Settings::new(&options, args.packing), fingerprint)?;
    let manifest = Manifest::new(key, counts);
    write(&args.out, &manifest, records).with_context(|| format!("writing {}", args.out.display()))?;
    if let Some(path) = &args.emit_jsonl {
        emit_jsonl(path, records).with_context(|| format!("--emit-jsonl {}", path.display()))?;
    }
    summarize(args, &encoded, packed.as_deref(), &manifest.counts);
    Ok(ExitCode::SUCCESS)
}

fn counts(loaded: &Loaded, encoded: &Encoded, records: &Records<'_>) -> Counts {
    let mut excluded = std::collections::BTreeMap::new();
    for ex in &encoded.excluded {
        *excluded.entry(ex.reason.kind().to_string()).or_insert(0) += 1;
    }
    let s = &encoded.stats;
    Counts {
        rows: s.rows,
        bad_rows_skipped: loaded.dataset.skipped.len(),
        examples: s.examples,
        excluded,
        sequences: records.len(),
        tokens: records.tokens(),
        trained_tokens: s.trained_tokens,
        truncated_rows: s.truncated_rows,
        trained_tokens_lost: s.trained_tokens_lost,
    }
}

/// One JSON line per record.
fn emit_jsonl(path: &Path, records: Records<'_>) -> anyhow::Result<()> {
    let mut out = BufWriter::new(File::create(path)?);
    for i in 0..records.len() {
        let Some(r) = records.get(i) else { break };
        let line = match r.position_ids {
            Some(pos) => json!({ "input_ids": r.input_ids, "labels": r.labels, "position_ids": pos }),
            None => json!({ "input_ids": r.input_ids, "labels": r.labels }),
        };
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    Ok(())
}

fn summarize(args: &PrepareArgs, encoded: &Encoded, packed: Option<&[PackedSequence]>, counts: &Counts) {
    let name = args.data.data();
    let s = &encoded.stats;
    eprintln!("{name}: {} rows read, {} examples, {} rows excluded", s.rows, s.examples, encoded.excluded.len());
    for (kind, n) in &counts.excluded {
        eprintln!("  excluded, {kind}: {n}");
    }
    for ex in encoded.excluded.iter().take(LISTED_EXCLUDED) {
        eprintln!("    {ex}");
    }
    if encoded.excluded.len() > LISTED_EXCLUDED {
        eprintln!("    ... and {} more", encoded.excluded.len() - LISTED_EXCLUDED);
    }
    eprintln!("{name}: {} tokens, {} trained", s.tokens, s.trained_tokens);
    if s.truncated_rows > 0 {
        eprintln!("{name}: {} rows truncated, losing {} trained tokens", s.truncated_rows, s.trained_tokens_lost);
    }
    if let (Some(seqs), Some(max)) = (packed, args.encode.max_seq_length) {
        eprintln!(
            "{name}: packed {} examples into {} sequences of up to {max} tokens ({:.1}% full)",
            s.examples,
            seqs.len(),
            100.0 * fill_ratio(seqs, max)
        );
    }
    if let Some(warning) = s.eos_warning() {
        eprintln!("warning: {warning}");
    }
    eprintln!("{}: prepared dataset with {} records, {} tokens", args.out.display(), counts.sequences, counts.tokens);
    if let Some(path) = &args.emit_jsonl {
        eprintln!("{}: {} JSON lines", path.display(), counts.sequences);
    }
}
