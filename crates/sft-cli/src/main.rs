//! `sft`: chat fine-tuning for LLMs as one binary.
//!
//! Subcommands follow the pipeline: `render` and `inspect` show how data meets the chat
//! template; `prepare` encodes it once for training; later stages (train, eval, generate) build
//! on them; `eval` scores a model on a data file.

mod chat;
mod common;
mod eval;
mod export;
mod generate;
mod import;
mod init_model;
mod inspect;
mod merge;
mod prepare;
mod quickstart;
mod ranks;
mod render;
mod serve;
mod train;

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
    /// Mean loss and perplexity of a model (and adapter) over the trained tokens of a data file.
    Eval(eval::EvalArgs),
    /// Fine-tune a tiny model on the bundled chats and score it before and after (no download).
    Quickstart(quickstart::QuickstartArgs),
    /// Fine-tune a model as a YAML config says (LoRA or full), with checkpoints and resume.
    Train(train::TrainArgs),
    /// Generate answers (greedy or sampled) from a model, a model + adapter, or a checkpoint.
    Generate(generate::GenerateArgs),
    /// Talk with a model or checkpoint, turn by turn (/reset, /exit).
    Chat(chat::ChatArgs),
    /// Fold a LoRA adapter into its base model and save an HF model directory.
    Merge(merge::MergeArgs),
    /// Write a model (or an adapter alone) as a GGUF file for llama.cpp and Ollama.
    Export(export::ExportArgs),
    /// Write a GGUF file (llama.cpp, Ollama) out as a Hugging Face model directory.
    Import(import::ImportArgs),
    /// Serve a model (and named adapters on it) over an OpenAI-compatible HTTP API.
    Serve(serve::ServeArgs),
    /// Create a model directory with random weights from a config.json (no download needed).
    InitModel(init_model::InitModelArgs),
}

fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Render(args) => render::run(&args),
        Command::Inspect(args) => inspect::run(&args),
        Command::Prepare(args) => prepare::run(&args),
        Command::Eval(args) => eval::run(&args),
        Command::Import(args) => import::run(&args),
        Command::InitModel(args) => init_model::run(&args),
        Command::Train(args) => train::run(&args),
        Command::Quickstart(args) => quickstart::run(&args),
        Command::Generate(args) => generate::run(&args),
        Command::Merge(args) => merge::run(&args),
        Command::Chat(args) => chat::run(&args),
        Command::Export(args) => export::run(&args),
        Command::Serve(args) => serve::run(&args),
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
