//! `sft init-model`: a new model directory with random weights from a `config.json` (the way
//! transformers initialises one), plus tokenizer files copied beside it. For trying the tool
//! without downloading weights, benchmarks, and the quickstart.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use sft_model::config::HfConfig;
use sft_model::model::Model;

use crate::common::{copy_side_files, require_new_dir};

/// `sft init-model` flags.
#[derive(Debug, Args)]
pub struct InitModelArgs {
    /// An HF config.json (model_type, sizes, ...).
    #[arg(long)]
    pub config: PathBuf,
    /// Directory of tokenizer files to copy in.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The new model directory (must not exist, or be empty).
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs `sft init-model`.
pub fn run(args: &InitModelArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.config).with_context(|| format!("reading {}", args.config.display()))?;
    let raw: HfConfig = serde_json::from_str(&text).with_context(|| format!("{}: invalid config", args.config.display()))?;
    let config = raw.resolve(&args.config)?;
    require_new_dir(&args.out)?;
    let model = Model::init(config, args.seed, &args.out)?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    std::fs::write(args.out.join("config.json"), &text).with_context(|| format!("writing {}", args.out.display()))?;
    model.save_weights(&args.out)?;
    if let Some(dir) = &args.tokenizer {
        copy_tokenizer(dir, &args.out)?;
    }
    let n: usize = model.params().iter().map(|(_, v)| v.elem_count()).sum();
    eprintln!("{}: new {:?} model, {n} parameters, seed {}", args.out.display(), model.config().family, args.seed);
    Ok(ExitCode::SUCCESS)
}

fn copy_tokenizer(from: &Path, to: &Path) -> anyhow::Result<()> {
    if !from.join("tokenizer.json").is_file() {
        bail!("{}: no tokenizer.json", from.display());
    }
    copy_side_files(from, to)
}
