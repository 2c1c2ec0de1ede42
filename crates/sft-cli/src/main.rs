//! `sft`: chat fine-tuning for LLMs as one binary.
//!
//! Subcommands follow the pipeline: `render` and `inspect` show how data meets the chat
//! template; `prepare` encodes it once for training; later stages (train, eval, generate) build
//! on them.

mod common;
mod inspect;
mod prepare;
mod render;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Chat fine-tuning for LLMs: exact templates and masks, one binary.
#[derive(Debug, Parser)]
#[command(name = "sft", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Render data rows with a chat template, exactly as transformers' apply_chat_template.
    Render(render::RenderArgs),
    /// Show rows as a person would check them: rendered text, trained tokens highlighted.
    Inspect(inspect::InspectArgs),
    /// Encode (and optionally pack) data once into a prepared dataset directory for training.
    Prepare(prepare::PrepareArgs),
}

fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Render(args) => render::run(&args),
        Command::Inspect(args) => inspect::run(&args),
        Command::Prepare(args) => prepare::run(&args),
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
