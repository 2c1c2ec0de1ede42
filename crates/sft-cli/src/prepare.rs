//! `sft prepare`: encode a data file once (template, loss mask, EOS, length limit), optionally
//! pack it, and store it as a prepared dataset directory that training reads without
//! tokenizing again. A summary of what happened to the rows goes to stderr.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Value};
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
    /// A training config (YAML): its tokenizer, chat template, template kwargs, masking, EOS,
    /// length and packing settings apply (and the format of DATA when it is one of its
    /// datasets), so that `sft train` with that config reuses the result.
    #[arg(long, conflicts_with_all = [
        "tokenizer", "chat_template", "template_kwargs", "map_eos_token", "now", "masking", "instruction_part",
        "response_part", "append_eos", "max_seq_length", "truncation", "packing",
    ])]
    pub config: Option<PathBuf>,
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

/// What to prepare, from the flags or from a training config.
struct Job {
    data: DataArgs,
    options: EncodeOptions,
    packing: bool,
}

impl PrepareArgs {
    /// Resolves the flags, or the training config's settings with `--config`.
    fn job(&self) -> anyhow::Result<Job> {
        let Some(path) = &self.config else {
            let options = self.encode.options()?;
            if self.packing && options.max_seq_length.is_none() {
                bail!("--packing needs --max-seq-length N (the length of a packed sequence)");
            }
            return Ok(Job { data: self.data.clone(), options, packing: self.packing });
        };
        let cfg = sft_train::config::load(path, &[])?;
        let listed = cfg.datasets.iter().chain(&cfg.eval_dataset).find(|d| d.path == Path::new(self.data.data()));
        let mut data = self.data.clone();
        data.tokenizer = Some(cfg.tokenizer.clone());
        data.chat_template = cfg.chat_template.clone();
        data.template_kwargs = (!cfg.template_kwargs.is_empty()).then(|| Value::Object(cfg.template_kwargs.clone()).to_string());
        if let Some(format) = listed.and_then(|d| d.format.clone()) {
            data.format = format;
        }
        Ok(Job { data, options: cfg.encode.clone(), packing: cfg.packing })
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
    let job = args.job()?;
    let (data, options, packing) = (&job.data, &job.options, job.packing);
    if data.tokenizer.is_none() {
        bail!("prepare needs --tokenizer DIR (a directory with tokenizer.json)");
    }
    let fingerprint = DataFingerprint::of(data.data())?;
    let loaded = data.load(true)?;
    let tokenizer = loaded.tokenizer.as_ref().context("prepare needs --tokenizer DIR")?;
    let encoded = encode_all(&loaded.dataset.conversations, options, &loaded.renderer, tokenizer)
        .with_context(|| format!("{}: nothing to prepare", data.data()))?;
    let packed = match (packing, options.max_seq_length) {
        (true, Some(max)) => Some(pack(&encoded.examples, max)?),
        _ => None,
    };
    let records = match &packed {
        Some(seqs) => Records::Packed(seqs),
        None => Records::Examples(&encoded.examples),
    };
    let counts = counts(&loaded, &encoded, &records);
    let key = manifest_key(data, &loaded, Settings::new(options, packing), fingerprint)?;
    let manifest = Manifest::new(key, counts);
    write(&args.out, &manifest, records).with_context(|| format!("writing {}", args.out.display()))?;
    if let Some(path) = &args.emit_jsonl {
        emit_jsonl(path, records).with_context(|| format!("--emit-jsonl {}", path.display()))?;
    }
    summarize(args, &job, &encoded, packed.as_deref(), &manifest.counts);
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

fn summarize(args: &PrepareArgs, job: &Job, encoded: &Encoded, packed: Option<&[PackedSequence]>, counts: &Counts) {
    let name = job.data.data();
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
    if let (Some(seqs), Some(max)) = (packed, job.options.max_seq_length) {
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
