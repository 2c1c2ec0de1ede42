//! `sft generate`: answers from a model, a model + adapter, or a training checkpoint directly
//! (it knows its base model, tokenizer and chat template). The prompt is the chat template
//! with `add_generation_prompt=true`; generation stops at the EOS / end-of-turn tokens and at
//! `--stop` strings. With an `--input` file whose rows carry `"expected"`, answers are scored
//! (exact match and contains).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use serde_json::json;
use sft_data::template::TemplateSettings;
use sft_infer::prompts::{read_messages, read_prompts, single, Prompt};
use sft_infer::{GenerateParams, Sampling, Score};

use crate::common::ModelArgs;

/// `sft generate` flags.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// One user message.
    #[arg(long, conflicts_with_all = ["input", "messages"])]
    pub prompt: Option<String>,
    /// A system message before --prompt.
    #[arg(long, requires = "prompt")]
    pub system: Option<String>,
    /// A JSON file holding one conversation to continue: a list of {"role", "content"}
    /// messages, or an object with "messages" (and "tools").
    #[arg(long, conflicts_with = "input")]
    pub messages: Option<PathBuf>,
    /// A JSONL file: one {"messages": [...]} per line (optionally "expected" to score).
    #[arg(long)]
    pub input: Option<PathBuf>,
    #[command(flatten)]
    pub template: TemplateSettings,
    #[command(flatten)]
    pub generation: GenerationArgs,
    /// Print one JSON object per prompt: {"text", "token_ids"} (and the score fields).
    #[arg(long)]
    pub json: bool,
    /// Write the accuracy summary as JSON here (with --input rows that have "expected").
    #[arg(long)]
    pub scores: Option<PathBuf>,
}

/// How answers are generated (shared by generate and chat).
#[derive(Debug, Clone, Args)]
pub struct GenerationArgs {
    /// Most new tokens per answer.
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Keep the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Nucleus sampling threshold (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Drop tokens below min_p × the top probability (0 = off).
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f64,
    /// Repetition penalty (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f64,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// End the answer where this text appears (not included; repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
}

impl GenerationArgs {
    /// The generation parameters, with `seed` for the sampler.
    pub fn params(&self, seed: u64) -> GenerateParams {
        let sampling = Sampling {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            seed,
        };
        GenerateParams { max_new_tokens: self.max_new_tokens, sampling, stop: self.stop.clone() }
    }
}

fn prompts(args: &GenerateArgs) -> anyhow::Result<Vec<Prompt>> {
    if let Some(text) = &args.prompt {
        return Ok(vec![Prompt { conversation: single("--prompt", args.system.as_deref(), text), expected: None }]);
    }
    if let Some(path) = &args.messages {
        return Ok(vec![Prompt { conversation: read_messages(path)?, expected: None }]);
    }
    let Some(path) = &args.input else { bail!("give --prompt TEXT, --messages FILE.json or --input FILE.jsonl") };
    Ok(read_prompts(path)?)
}

/// Runs `sft generate`.
pub fn run(args: &GenerateArgs) -> anyhow::Result<ExitCode> {
    let inference = args.model.load(&args.template)?;
    let params = args.generation.params(args.generation.seed);
    let prompts = prompts(args)?;
    let mut score = Score::default();
    let stream_text = !args.json && args.input.is_none();
    for p in &prompts {
        let answer = inference.answer(&p.conversation, &params, |piece| {
            if stream_text {
                print!("{piece}");
                let _ = std::io::stdout().flush();
            }
        })?;
        let text = &answer.text;
        if let Some(expected) = &p.expected {
            score.add(text, expected);
        }
        if args.json {
            let mut obj = json!({ "text": text, "token_ids": answer.ids });
            if let Some(e) = &p.expected {
                obj["expected"] = json!(e);
                obj["exact_match"] = json!(Score::is_exact(text, e));
            }
            println!("{obj}");
        } else if stream_text {
            println!();
        } else {
            println!("{}: {}", p.conversation.source, text.replace('\n', "\\n"));
        }
    }
    if score.total > 0 {
        let summary = score.summary();
        eprintln!(
            "scored {} prompts: exact match {:.1}%, contains {:.1}%",
            summary.prompts,
            100.0 * summary.exact_match,
            100.0 * summary.contains
        );
        if let Some(path) = &args.scores {
            std::fs::write(path, serde_json::to_string(&summary)?).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
