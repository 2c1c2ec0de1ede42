//! `sft merge`: fold a LoRA adapter into its base model and save an HF model directory
//! (config.json, model.safetensors, tokenizer files, chat template) that transformers loads.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use sft_model::model::Model;

use crate::common::{copy_side_files, require_new_dir, ModelArgs};

/// `sft merge` flags.
#[derive(Debug, Args)]
pub struct MergeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The new model directory (must not exist, or be empty).
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs `sft merge`.
pub fn run(args: &MergeArgs) -> anyhow::Result<ExitCode> {
    let source = sft_hub::resolve(&args.model.model, args.model.adapter.as_deref())?;
    let (base, tokenizer_dir) = (&source.base.dir, &source.tokenizer_dir);
    let Some(adapter) = &source.adapter else {
        bail!("merge needs --adapter DIR (or --model pointing at a LoRA checkpoint)");
    };
    let out = &args.out;
    require_new_dir(out)?;
    let model = Model::merged(base, adapter)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::copy(base.join("config.json"), out.join("config.json"))
        .with_context(|| format!("copying {}", base.join("config.json").display()))?;
    model.save_weights(out)?;
    for dir in [base, tokenizer_dir] {
        copy_side_files(dir, out)?;
    }
    eprintln!("{}: {} merged into {}", out.display(), adapter.display(), base.display());
    Ok(ExitCode::SUCCESS)
}
