//! `sft generate`: answers from a model, a model + adapter, or a training checkpoint directly
//! (it knows its base model, tokenizer and chat template). The prompt is the chat template
//! with `add_generation_prompt=true`; generation stops at the EOS / end-of-turn tokens. With an
//! `--input` file whose rows carry `"expected"`, answers are scored (exact match and contains).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Map, Value};
use sft_data::conversation::{Conversation, Message, RowRef};
use sft_data::data::reader::read_rows;
use sft_data::data::{openai, DataError};
use sft_data::template::{Clock, Renderer, TemplateChoice};
use sft_data::tokens::TextTokenizer;
use sft_model::generate::{generate, Sampling};
use sft_model::model::Model;

use crate::common::ModelArgs;

/// A model ready for inference, with the tokenizer and template it was trained with.
pub struct Loaded {
    pub model: Model,
    pub tokenizer: TextTokenizer,
    pub renderer: Renderer,
    /// `eos_token_id` of the model's generation_config.json.
    pub generation_eos: Vec<u32>,
}

/// Loads model, tokenizer and template (`template` overrides the tokenizer's).
pub fn load(args: &ModelArgs, template: Option<String>) -> anyhow::Result<Loaded> {
    let (model, tok_dir) = args.load_model()?;
    let (base, _, _) = args.resolve()?;
    let generation_eos = generation_eos(&base.join("generation_config.json"))?;
    let tokenizer = TextTokenizer::from_dir(&tok_dir)?;
    let choice = TemplateChoice { template, map_eos_token: false, clock: Clock::System };
    let renderer = Renderer::new(Some(&tok_dir), &choice, Map::new())?;
    Ok(Loaded { model, tokenizer, renderer, generation_eos })
}

/// The `eos_token_id` (an id or a list) of a generation_config.json, if there is one.
fn generation_eos(path: &Path) -> anyhow::Result<Vec<u32>> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(vec![]) };
    let v: Value = serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))?;
    let ids = match v.get("eos_token_id") {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(items)) => items.clone(),
        Some(one) => vec![one.clone()],
    };
    ids.iter()
        .map(|i| {
            i.as_u64().and_then(|n| u32::try_from(n).ok()).with_context(|| format!("{}: eos_token_id: expected token ids", path.display()))
        })
        .collect()
}

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
    /// Chat template override (file, built-in name, or a name from the tokenizer config).
    #[arg(long)]
    pub chat_template: Option<String>,
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
    /// Print one JSON object per prompt: {"text", "token_ids"} (and the score fields).
    #[arg(long)]
    pub json: bool,
    /// Write the accuracy summary as JSON here (with --input rows that have "expected").
    #[arg(long)]
    pub scores: Option<PathBuf>,
}

/// One prompt and, when scoring, the answer expected.
struct Prompt {
    conversation: Conversation,
    expected: Option<String>,
}

fn prompts(args: &GenerateArgs) -> anyhow::Result<Vec<Prompt>> {
    if let Some(text) = &args.prompt {
        let mut messages = vec![];
        if let Some(s) = &args.system {
            messages.push(Message::text("system", s));
        }
        messages.push(Message::text("user", text));
        let source = RowRef { file: "--prompt".into(), row: 1 };
        return Ok(vec![Prompt { conversation: Conversation { source, messages, tools: None, documents: None }, expected: None }]);
    }
    if let Some(path) = &args.messages {
        return Ok(vec![Prompt { conversation: messages_from(path)?, expected: None }]);
    }
    let Some(path) = &args.input else { bail!("give --prompt TEXT, --messages FILE.json or --input FILE.jsonl") };
    prompts_from(path)
}

/// The conversation of a `--messages` file.
fn messages_from(path: &Path) -> anyhow::Result<Conversation> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let value: Value = serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))?;
    let row = match value {
        Value::Array(list) => Map::from_iter([("messages".to_string(), Value::Array(list))]),
        Value::Object(row) => row,
        _ => bail!("{}: expected a list of messages or an object with \"messages\"", path.display()),
    };
    let source = RowRef { file: path.display().to_string(), row: 1 };
    openai::convert(&row, &source, "messages").map_err(|error| DataError::Row { at: source, error }.into())
}

/// Generates the answer to one conversation; returns (text, new ids).
pub fn answer(
    loaded: &Loaded,
    conversation: &Conversation,
    max_new_tokens: usize,
    sampling: &Sampling,
    mut stream: impl FnMut(&str),
) -> anyhow::Result<(String, Vec<u32>)> {
    let rendered = loaded.renderer.render(conversation, true, false).with_context(|| format!("{}: rendering", conversation.source))?;
    let ids = loaded.tokenizer.encode(&rendered.text, &[])?.input_ids;
    let stop = stop_ids(loaded);
    let mut shown = String::new();
    let mut new_ids: Vec<u32> = vec![];
    let (out, _) = generate(&loaded.model, &ids, max_new_tokens, &stop, sampling, |t| {
        new_ids.push(t);
        if let Ok(text) = loaded.tokenizer.decode(&new_ids, true) {
            if text.len() > shown.len() && text.starts_with(&shown) {
                stream(&text[shown.len()..]);
                shown = text;
            }
        }
    })?;
    let text = loaded.tokenizer.decode(&out, true)?;
    Ok((text, out))
}

/// EOS ids of the model config, its generation_config.json and the template's EOS token.
fn stop_ids(loaded: &Loaded) -> Vec<u32> {
    let mut stop = loaded.model.config().eos_token_ids.clone();
    stop.extend(&loaded.generation_eos);
    if let Some(id) = loaded.renderer.template_vars().get("eos_token").and_then(Value::as_str).and_then(|t| loaded.tokenizer.token_to_id(t))
    {
        stop.push(id);
    }
    stop.sort();
    stop.dedup();
    stop
}

/// Accuracy over scored prompts.
#[derive(Debug, Default, Clone, Copy)]
pub struct Score {
    /// Prompts with an expected answer.
    pub total: usize,
    /// Answers equal to it (surrounding whitespace ignored).
    pub exact: usize,
    /// Answers containing it.
    pub contains: usize,
}

impl Score {
    /// Adds one answer.
    pub fn add(&mut self, answer: &str, expected: &str) {
        self.total += 1;
        self.exact += usize::from(answer.trim() == expected.trim());
        self.contains += usize::from(answer.contains(expected.trim()));
    }

    /// As a JSON object.
    pub fn to_json(self) -> Value {
        let pct = |n: usize| if self.total == 0 { 0.0 } else { n as f64 / self.total as f64 };
        json!({ "prompts": self.total, "exact_match": pct(self.exact), "contains": pct(self.contains) })
    }
}

/// Scores every prompt of a JSONL file (quiet; for the quickstart).
pub fn score_file(loaded: &Loaded, path: &Path, max_new_tokens: usize) -> anyhow::Result<Score> {
    let mut score = Score::default();
    for p in &prompts_from(path)? {
        if let Some(expected) = &p.expected {
            let (text, _) = answer(loaded, &p.conversation, max_new_tokens, &Sampling::default(), |_| {})?;
            score.add(&text, expected);
        }
    }
    Ok(score)
}

fn prompts_from(path: &Path) -> anyhow::Result<Vec<Prompt>> {
    let name = path.to_string_lossy();
    let mut out = vec![];
    for row in read_rows(&name)?.rows {
        let row = row?;
        let conversation =
            openai::convert(&row.value, &row.source, "messages").map_err(|error| DataError::Row { at: row.source.clone(), error })?;
        let expected = match row.value.get("expected") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => bail!("{}: \"expected\" must be a string", row.source),
        };
        out.push(Prompt { conversation, expected });
    }
    Ok(out)
}

/// Runs `sft generate`.
pub fn run(args: &GenerateArgs) -> anyhow::Result<ExitCode> {
    let loaded = load(&args.model, args.chat_template.clone())?;
    let sampling = Sampling {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repetition_penalty: args.repetition_penalty,
        seed: args.seed,
    };
    let prompts = prompts(args)?;
    let mut score = Score::default();
    let stream_text = !args.json && args.input.is_none();
    for p in &prompts {
        let (text, ids) = answer(&loaded, &p.conversation, args.max_new_tokens, &sampling, |piece| {
            if stream_text {
                print!("{piece}");
                let _ = std::io::stdout().flush();
            }
        })?;
        if let Some(expected) = &p.expected {
            score.add(&text, expected);
        }
        if args.json {
            let mut obj = json!({ "text": text, "token_ids": ids });
            if let Some(e) = &p.expected {
                obj["expected"] = json!(e);
                obj["exact_match"] = json!(text.trim() == e.trim());
            }
            println!("{obj}");
        } else if stream_text {
            println!();
        } else {
            println!("{}: {}", p.conversation.source, text.replace('\n', "\\n"));
        }
    }
    if score.total > 0 {
        eprintln!(
            "scored {} prompts: exact match {:.1}%, contains {:.1}%",
            score.total,
            100.0 * score.exact as f64 / score.total as f64,
            100.0 * score.contains as f64 / score.total as f64
        );
        if let Some(path) = &args.scores {
            std::fs::write(path, score.to_json().to_string()).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
