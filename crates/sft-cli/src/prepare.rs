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
use sft_data::encode::{EncodeError, EncodeOptions, EncodeSettings};
use sft_data::pack::fill_ratio;
use sft_data::prepared::{build, BuildError, BuildInputs, Built, DataFingerprint, ManifestKey, PreparedDataset, Settings};

use crate::common::{encode_options, DataArgs};

/// How many excluded rows the summary lists before counting the rest.
const LISTED_EXCLUDED: usize = 20;

/// `sft prepare` flags.
#[derive(Debug, Args)]
pub struct PrepareArgs {
    /// A training config (YAML): its tokenizer, chat template, template kwargs, masking, EOS,
    /// length and packing settings apply (and the format and ShareGPT roles of DATA when it is
    /// one of its datasets), so that `sft train` with that config reuses the result.
    #[arg(long, conflicts_with_all = [
        "tokenizer", "chat_template", "template_kwargs", "map_eos_token", "now", "roles", "masking", "instruction_part",
        "response_part", "append_eos", "max_seq_length", "truncation", "packing",
    ])]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub data: DataArgs,
    /// Output directory: created, or replaced when it already holds a prepared dataset.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub encode: EncodeSettings,
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
            let options = encode_options(&self.encode)?;
            if self.packing && options.max_seq_length.is_none() {
                bail!("--packing needs --max-seq-length N (the length of a packed sequence)");
            }
            return Ok(Job { data: self.data.clone(), options, packing: self.packing });
        };
        let cfg = sft_train::config::load(path, &[])?;
        let listed = cfg.datasets.iter().chain(&cfg.eval_dataset).find(|d| d.path == Path::new(self.data.data()));
        let mut data = self.data.clone();
        data.tokenizer = Some(cfg.tokenizer.clone());
        data.template = cfg.template.clone();
        if let Some(listed) = listed {
            data.format = listed.format;
            data.roles = listed.sharegpt().map_err(anyhow::Error::msg)?.roles;
        }
        Ok(Job { data, options: cfg.encode.clone(), packing: cfg.packing })
    }
}

/// Runs `sft prepare`: the data file is read, encoded and stored a chunk of rows at a time
/// (see [`sft_data::prepared::build`]). The manifest key holds what the dataset is made from:
/// hashes of the tokenizer and the template in use (with its variables, `--template-kwargs` and
/// `--now`), the settings and the data file's fingerprint (taken before reading it); `sft
/// train` builds the same key to check a prepared dataset with
/// [`sft_data::prepared::PreparedDataset::is_stale`].
pub fn run(args: &PrepareArgs) -> anyhow::Result<ExitCode> {
    let job = args.job()?;
    let (data, options, packing) = (&job.data, &job.options, job.packing);
    let Some(dir) = data.tokenizer_dir()? else {
        bail!("prepare needs --tokenizer DIR (a directory with tokenizer.json)");
    };
    let fingerprint = DataFingerprint::of(data.data())?;
    let (renderer, tokenizer, read) = data.load_tools()?;
    let key = ManifestKey::new(&dir, &renderer, Settings::new(options, packing), data.template.now.as_deref(), fingerprint)?;
    let inputs = BuildInputs {
        data: data.data(),
        read: &read,
        options,
        packing,
        renderer: &renderer,
        tokenizer: &tokenizer,
        keep_excluded: LISTED_EXCLUDED,
    };
    let built = build(&inputs, &args.out, key).map_err(|e| match e {
        BuildError::Encode(e @ EncodeError::NothingLeft { .. }) => {
            anyhow::Error::new(e).context(format!("{}: nothing to prepare", data.data()))
        }
        BuildError::Prepared(e) => anyhow::Error::new(e).context(format!("writing {}", args.out.display())),
        other => other.into(),
    })?;
    data.report(&built.dataset, built.stats.rows);
    if let Some(path) = &args.emit_jsonl {
        let stored = PreparedDataset::open(&args.out)?;
        emit_jsonl(path, &stored).with_context(|| format!("--emit-jsonl {}", path.display()))?;
    }
    summarize(args, &job, &built);
    Ok(ExitCode::SUCCESS)
}

/// One JSON line per record.
fn emit_jsonl(path: &Path, records: &PreparedDataset) -> anyhow::Result<()> {
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

fn summarize(args: &PrepareArgs, job: &Job, built: &Built) {
    let name = job.data.data();
    let (s, counts, excluded) = (&built.stats, &built.manifest.counts, &built.excluded);
    let n_excluded: usize = s.excluded.values().sum();
    eprintln!("{name}: {} rows read, {} examples, {} rows excluded", s.rows, s.examples, n_excluded);
    for (kind, n) in &counts.excluded {
        eprintln!("  excluded, {kind}: {n}");
    }
    for ex in excluded.iter().take(LISTED_EXCLUDED) {
        eprintln!("    {ex}");
    }
    if n_excluded > excluded.len() {
        eprintln!("    ... and {} more", n_excluded - excluded.len());
    }
    eprintln!("{name}: {} tokens, {} trained", s.tokens, s.trained_tokens);
    if s.truncated_rows > 0 {
        eprintln!("{name}: {} rows truncated, losing {} trained tokens", s.truncated_rows, s.trained_tokens_lost);
    }
    if let (true, Some(max)) = (job.packing, job.options.max_seq_length) {
        eprintln!(
            "{name}: packed {} examples into {} sequences of up to {max} tokens ({:.1}% full)",
            s.examples,
            counts.sequences,
            100.0 * fill_ratio(counts.tokens, counts.sequences, max)
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
