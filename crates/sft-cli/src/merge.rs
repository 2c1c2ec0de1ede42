//! `sft merge`: fold a LoRA adapter into its base model and save an HF model directory
//! (config.json, model.safetensors, tokenizer files, chat template) that transformers loads.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use sft_model::model::Model;

use crate::common::ModelArgs;

/// Files copied from the tokenizer directory when present.
const COPIED: &[&str] = &["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "generation_config.json"];

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
    let (base, adapter, tokenizer_dir) = args.model.resolve()?;
    let Some(adapter) = adapter else {
        bail!("merge needs --adapter DIR (or --model pointing at a LoRA checkpoint)");
    };
    let out = &args.out;
    if out.exists() && std::fs::read_dir(out).map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("{}: already exists and is not empty; choose a new directory", out.display());
    }
    let model = Model::merged(&base, &adapter)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::copy(base.join("config.json"), out.join("config.json")).with_context(|| format!("copying {}", base.join("config.json").display()))?;
    model.save_weights(out)?;
    for dir in [&base, &tokenizer_dir] {
        for name in COPIED {
            let src = dir.join(name);
            if src.is_file() {
                std::fs::copy(&src, out.join(name)).with_context(|| format!("copying {}", src.display()))?;
            }
        }
    }
    eprintln!("{}: {} merged into {}", out.display(), adapter.display(), base.display());
    Ok(ExitCode::SUCCESS)
}
