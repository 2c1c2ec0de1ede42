//! Flags shared by the subcommands that read data and render it, resolved in one place.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{Map, Value};
use sft_data::data::{read_dataset, Dataset, Format, OnBadRow, ReadOptions, ShareGptOptions};
use sft_data::template::{Clock, Renderer, TemplateChoice};
use sft_data::tokens::TextTokenizer;

/// Data and template flags.
#[derive(Debug, Args)]
pub struct DataArgs {
    /// Tokenizer directory (tokenizer.json, tokenizer_config.json, optional chat_template.jinja).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Chat template: a .jinja file, a built-in name (chatml, llama-3, llama-2, mistral, gemma,
    /// phi-3, qwen-2.5, zephyr, vicuna, alpaca) or a name from the tokenizer config's list.
    #[arg(long)]
    pub chat_template: Option<String>,
    /// With a built-in template: its end-of-turn token becomes the EOS.
    #[arg(long)]
    pub map_eos_token: bool,
    /// Data format: auto, alpaca, sharegpt or openai.
    #[arg(long, default_value = "auto")]
    pub format: String,
    /// Extra template variables as a JSON object, e.g. '{"enable_thinking": false}'.
    #[arg(long)]
    pub template_kwargs: Option<String>,
    /// Freeze strftime_now at this local time (YYYY-MM-DDTHH:MM:SS), for reproducible renders.
    #[arg(long)]
    pub now: Option<String>,
    /// What to do with a row that cannot be read: fail (default) or skip (counted and listed).
    #[arg(long, default_value = "fail")]
    pub on_bad_row: String,
    /// Data file (JSONL, JSON array or Parquet), or - for stdin.
    pub data: String,
}

/// What these flags resolve to.
pub struct Loaded {
    pub dataset: Dataset,
    pub renderer: Renderer,
    pub tokenizer: Option<TextTokenizer>,
}

impl DataArgs {
    /// Reads the data, loads the template and (when `need_tokenizer`) the tokenizer.
    pub fn load(&self, need_tokenizer: bool) -> anyhow::Result<Loaded> {
        let format = match self.format.as_str() {
            "auto" => None,
            other => Some(other.parse::<Format>().map_err(|e| anyhow::anyhow!("--format: {e}"))?),
        };
        let on_bad_row: OnBadRow = self.on_bad_row.parse().map_err(|e| anyhow::anyhow!("--on-bad-row: {e}"))?;
        let kwargs = match &self.template_kwargs {
            None => Map::new(),
            Some(text) => match serde_json::from_str(text).context("--template-kwargs: invalid JSON")? {
                Value::Object(map) => map,
                _ => bail!("--template-kwargs: expected a JSON object like '{{\"enable_thinking\": false}}'"),
            },
        };
        let clock = match &self.now {
            None => Clock::System,
            Some(t) => Clock::Fixed(
                chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S")
                    .with_context(|| format!("--now {t:?}: expected YYYY-MM-DDTHH:MM:SS"))?,
            ),
        };
        let choice = TemplateChoice { template: self.chat_template.clone(), map_eos_token: self.map_eos_token, clock };
        let renderer = Renderer::new(self.tokenizer.as_deref(), &choice, kwargs)?;
        let tokenizer = match (&self.tokenizer, need_tokenizer) {
            (Some(dir), true) => Some(TextTokenizer::from_dir(dir)?),
            (None, true) => bail!("tokenizing needs --tokenizer DIR (a directory with tokenizer.json)"),
            _ => None,
        };
        let opts = ReadOptions { format, sharegpt: ShareGptOptions::default(), on_bad_row };
        let dataset = read_dataset(&self.data, &opts)?;
        eprintln!(
            "{}: {} format ({}), {} rows",
            self.data,
            dataset.format,
            if dataset.detected { "detected" } else { "given" },
            dataset.conversations.len()
        );
        if !dataset.skipped.is_empty() {
            eprintln!("{}: skipped {} bad rows:", self.data, dataset.skipped.len());
            for (at, reason) in &dataset.skipped {
                eprintln!("  {at}: {reason}");
            }
        }
        Ok(Loaded { dataset, renderer, tokenizer })
    }
}
