//! Flags shared by the subcommands that read data and render it, resolved in one place.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{Map, Value};
use sft_data::data::{read_dataset, Dataset, Format, OnBadRow, ReadOptions, ShareGptOptions};
use sft_data::encode::{AppendEos, EncodeOptions, Markers, Masking, Truncation};
use sft_data::template::{Clock, Renderer, TemplateChoice};
use sft_data::tokens::TextTokenizer;
use sft_model::model::{Model, Trainable};
use sft_model::quant::BaseFormat;

/// Data and template flags.
#[derive(Debug, Clone, Args)]
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
    #[arg(value_name = "DATA", required_unless_present = "data_flag")]
    pub data_arg: Option<String>,
    /// The data file, as a flag (the same as the positional DATA).
    #[arg(long = "data", value_name = "DATA", conflicts_with = "data_arg")]
    pub data_flag: Option<String>,
}

/// What these flags resolve to.
pub struct Loaded {
    pub dataset: Dataset,
    pub renderer: Renderer,
    pub tokenizer: Option<TextTokenizer>,
}

impl DataArgs {
    /// The data file, given positionally or with --data.
    pub fn data(&self) -> &str {
        self.data_arg.as_deref().or(self.data_flag.as_deref()).unwrap_or("-")
    }

    /// The read options, template choice and template kwargs the flags give.
    fn settings(&self) -> anyhow::Result<(ReadOptions, TemplateChoice, Map<String, Value>)> {
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
        Ok((ReadOptions { format, sharegpt: ShareGptOptions::default(), on_bad_row }, choice, kwargs))
    }

    /// Reads the data, loads the template and (when `need_tokenizer`) the tokenizer.
    pub fn load(&self, need_tokenizer: bool) -> anyhow::Result<Loaded> {
        let (opts, choice, kwargs) = self.settings()?;
        // Loading the tokenizer takes as long as reading a mid-sized data file: do both at once
        // (errors are reported in the order the steps are listed).
        let (tokenizer, (renderer, dataset)) = rayon::join(
            || self.tokenizer.as_deref().filter(|_| need_tokenizer).map(TextTokenizer::from_dir).transpose(),
            || (Renderer::new(self.tokenizer.as_deref(), &choice, kwargs), read_dataset(self.data(), &opts)),
        );
        let renderer = renderer?;
        if need_tokenizer && self.tokenizer.is_none() {
            bail!("tokenizing needs --tokenizer DIR (a directory with tokenizer.json)");
        }
        let (tokenizer, dataset) = (tokenizer?, dataset?);
        self.report(&dataset, dataset.conversations.len());
        Ok(Loaded { dataset, renderer, tokenizer })
    }

    /// Loads the template and the tokenizer, not the data (for reading it a chunk at a time
    /// with the read options returned).
    pub fn load_tools(&self) -> anyhow::Result<(Renderer, TextTokenizer, ReadOptions)> {
        let (opts, choice, kwargs) = self.settings()?;
        let Some(dir) = self.tokenizer.as_deref() else {
            bail!("tokenizing needs --tokenizer DIR (a directory with tokenizer.json)");
        };
        let (tokenizer, renderer) = rayon::join(|| TextTokenizer::from_dir(dir), || Renderer::new(Some(dir), &choice, kwargs));
        let renderer = renderer?;
        Ok((renderer, tokenizer?, opts))
    }

    /// Prints the data file's format and row count, and the rows skipped as unreadable.
    pub fn report(&self, dataset: &Dataset, rows: usize) {
        eprintln!("{}: {} format ({}), {} rows", self.data(), dataset.format, if dataset.detected { "detected" } else { "given" }, rows);
        if let Some(report) = dataset.skipped_report(self.data()) {
            eprintln!("{report}");
        }
    }
}

/// How conversations become training examples (shared by prepare, eval and train).
#[derive(Debug, Args)]
pub struct EncodeArgs {
    /// Which tokens train: assistant (every assistant turn), last (the last one), all, or
    /// markers (text after --response-part until --instruction-part).
    #[arg(long, default_value = "assistant")]
    pub masking: String,
    /// With --masking markers: the text that starts a user turn, e.g. "<|im_start|>user\n".
    #[arg(long)]
    pub instruction_part: Option<String>,
    /// With --masking markers: the text that starts an assistant turn, e.g. "<|im_start|>assistant\n".
    #[arg(long)]
    pub response_part: Option<String>,
    /// When to append the EOS: auto (unless the template ends turns with it), always, never.
    #[arg(long, default_value = "auto")]
    pub append_eos: String,
    /// The longest example in tokens (and, with --packing, the length of a sequence).
    #[arg(long)]
    pub max_seq_length: Option<usize>,
    /// What to do with a longer example: drop it, or cut it on the right.
    #[arg(long, default_value = "drop")]
    pub truncation: String,
}

impl EncodeArgs {
    /// Resolves the encode flags.
    pub fn options(&self) -> anyhow::Result<EncodeOptions> {
        let mut masking: Masking = self.masking.parse().map_err(|e| anyhow::anyhow!("--masking: {e}"))?;
        match (&mut masking, &self.instruction_part, &self.response_part) {
            (Masking::Markers(m), Some(i), Some(r)) => {
                *m = Markers { instruction_part: i.clone(), response_part: r.clone() };
            }
            (Masking::Markers(_), _, _) => {
                bail!("--masking markers needs --instruction-part and --response-part (e.g. \"<|im_start|>user\\n\" and \"<|im_start|>assistant\\n\")")
            }
            (_, None, None) => {}
            _ => bail!("--instruction-part and --response-part apply only with --masking markers"),
        }
        let append_eos: AppendEos = self.append_eos.parse().map_err(|e| anyhow::anyhow!("--append-eos: {e}"))?;
        let truncation: Truncation = self.truncation.parse().map_err(|e| anyhow::anyhow!("--truncation: {e}"))?;
        Ok(EncodeOptions { masking, append_eos, max_seq_length: self.max_seq_length, truncation })
    }
}

/// Which model to load: a model directory, optionally an adapter; or a checkpoint directory.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Model directory, or a training checkpoint (outputs/checkpoint-N).
    #[arg(long)]
    pub model: PathBuf,
    /// A PEFT LoRA adapter directory to apply.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Hold the base linear weights in 4-bit NF4 (QLoRA's format, with double quantization).
    #[arg(long, conflicts_with = "dtype")]
    pub load_in_4bit: bool,
    /// Precision of the base linear weights: f32 (exact) or bf16 (half the memory traffic:
    /// faster decoding, slightly different numbers).
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: Dtype,
}

/// `--dtype` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Dtype {
    F32,
    Bf16,
}

impl ModelArgs {
    /// A model or checkpoint directory, f32, no separate adapter.
    pub fn dir(model: PathBuf) -> Self {
        Self { model, adapter: None, load_in_4bit: false, dtype: Dtype::F32 }
    }

    /// (base model, adapter, tokenizer directory): a checkpoint holding an adapter names its
    /// base model and carries its own tokenizer and chat template.
    pub fn resolve(&self) -> anyhow::Result<(PathBuf, Option<PathBuf>, PathBuf)> {
        let config = self.model.join("adapter_config.json");
        if self.adapter.is_none() && config.is_file() {
            let text = std::fs::read_to_string(&config).with_context(|| format!("reading {}", config.display()))?;
            let v: Value = serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", config.display()))?;
            let base = v.get("base_model_name_or_path").and_then(Value::as_str).with_context(|| {
                format!("{}: base_model_name_or_path is missing; pass --model BASE --adapter {}", config.display(), self.model.display())
            })?;
            return Ok((PathBuf::from(base), Some(self.model.clone()), self.model.clone()));
        }
        Ok((self.model.clone(), self.adapter.clone(), self.model.clone()))
    }

    /// Loads the model for inference (nothing trains); returns it with its tokenizer directory.
    pub fn load_model(&self) -> anyhow::Result<(Model, PathBuf)> {
        let (base, adapter, tokenizer_dir) = self.resolve()?;
        let trainable = match adapter {
            Some(dir) => Trainable::Adapter { dir, train: false },
            None => Trainable::Frozen,
        };
        let format = match (self.load_in_4bit, self.dtype) {
            (true, _) => BaseFormat::Nf4 { double_quant: true },
            (false, Dtype::Bf16) => BaseFormat::Bf16,
            (false, Dtype::F32) => BaseFormat::F32,
        };
        let model = Model::load_as(&base, &trainable, format).with_context(|| format!("loading {}", base.display()))?;
        Ok((model, tokenizer_dir))
    }
}

/// Tokenizer and generation files that travel with a model directory.
const MODEL_SIDE_FILES: &[&str] =
    &["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "generation_config.json"];

/// Copies those of [`MODEL_SIDE_FILES`] that `from` has into `to`.
pub fn copy_side_files(from: &std::path::Path, to: &std::path::Path) -> anyhow::Result<()> {
    for name in MODEL_SIDE_FILES {
        let src = from.join(name);
        if src.is_file() {
            std::fs::copy(&src, to.join(name)).with_context(|| format!("copying {}", src.display()))?;
        }
    }
    Ok(())
}

/// Refuses an output directory that exists and holds anything (nothing the user has is
/// overwritten).
pub fn require_new_dir(out: &std::path::Path) -> anyhow::Result<()> {
    if out.exists() && std::fs::read_dir(out).map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("{}: already exists and is not empty; choose a new directory", out.display());
    }
    Ok(())
}
