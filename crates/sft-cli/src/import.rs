//! `sft import`: a GGUF file written out as a Hugging Face model directory (config.json,
//! model.safetensors, tokenizer files, chat template) that transformers and every sft command
//! load. `--model FILE.gguf` does the same on the fly into a cache; this keeps the result.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

/// `sft import` flags.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The GGUF file (llama.cpp / Ollama), e.g. SmolLM2-135M-Instruct.Q4_1.gguf.
    #[arg(long)]
    pub gguf: PathBuf,
    /// The model directory to write (must not exist, or be empty).
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs `sft import`.
pub fn run(args: &ImportArgs) -> anyhow::Result<ExitCode> {
    let summary = sft_gguf::import(&args.gguf, &args.out)
        .with_context(|| format!("importing {} into {}", args.gguf.display(), args.out.display()))?;
    println!(
        "{}: {} model, {} tensors ({:.1}M parameters{}), {} tokenizer",
        summary.dir.display(),
        summary.architecture,
        summary.tensors,
        summary.parameters as f64 / 1e6,
        if summary.tied { ", tied embeddings" } else { "" },
        summary.tokenizer,
    );
    Ok(ExitCode::SUCCESS)
}
