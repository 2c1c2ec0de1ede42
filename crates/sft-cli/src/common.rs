//! Flags shared by the subcommands that read data and render it, resolved in one place.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use sft_data::data::{read_dataset, DataFormat, Dataset, OnBadRow, ReadOptions, ShareGptOptions};
use sft_data::encode::{EncodeOptions, EncodeSettings};
use sft_data::template::{Renderer, TemplateChoice, TemplateSettings};
use sft_data::tokens::TextTokenizer;
use sft_hub::Resolved;
use sft_infer::{Inference, LoadOptions};
use sft_model::model::Model;
use sft_model::quant::BaseFormat;

/// Data and template flags.
#[derive(Debug, Clone, Args)]
pub struct DataArgs {
    /// Tokenizer: a directory (tokenizer.json, tokenizer_config.json, optional
    /// chat_template.jinja), or a model's hub id or GGUF file.
    #[arg(long)]
    pub tokenizer: Option<String>,
    #[command(flatten)]
    pub template: TemplateSettings,
    /// Data format (detected from the first row with auto).
    #[arg(long, value_enum, default_value_t, ignore_case = true)]
    pub format: DataFormat,
    /// A ShareGPT speaker name and the role it plays, e.g. --role human=user --role bot=assistant
    /// (beyond the usual human, gpt, system, …).
    #[arg(long = "role", value_name = "NAME=ROLE", value_parser = role_pair)]
    pub roles: Vec<(String, String)>,
    /// What to do with a row that cannot be read: fail, or skip it (counted and listed).
    #[arg(long, value_enum, default_value_t)]
    pub on_bad_row: OnBadRow,
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

/// One `--role NAME=ROLE`.
fn role_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, role)) if !name.is_empty() && !role.is_empty() => Ok((name.to_string(), role.to_string())),
        _ => Err("expected NAME=ROLE, e.g. --role human=user".into()),
    }
}

impl DataArgs {
    /// The data file, given positionally or with --data.
    pub fn data(&self) -> &str {
        self.data_arg.as_deref().or(self.data_flag.as_deref()).unwrap_or("-")
    }

    /// The read options and template choice the flags give.
    fn settings(&self) -> anyhow::Result<(ReadOptions, TemplateChoice)> {
        let read = ReadOptions {
            format: self.format.format(),
            sharegpt: ShareGptOptions { roles: self.roles.clone(), ..ShareGptOptions::default() },
            on_bad_row: self.on_bad_row,
            ..ReadOptions::default()
        };
        Ok((read, self.template.choice()?))
    }

    /// The tokenizer's directory, when one is named.
    pub fn tokenizer_dir(&self) -> anyhow::Result<Option<PathBuf>> {
        Ok(self.tokenizer.as_deref().map(sft_hub::locate).transpose()?.map(|m| m.dir))
    }

    /// Reads the data, loads the template and (when `need_tokenizer`) the tokenizer.
    pub fn load(&self, need_tokenizer: bool) -> anyhow::Result<Loaded> {
        let (opts, choice) = self.settings()?;
        let dir = self.tokenizer_dir()?;
        // Loading the tokenizer takes as long as reading a mid-sized data file: do both at once
        // (errors are reported in the order the steps are listed).
        let (tokenizer, (renderer, dataset)) = rayon::join(
            || dir.as_deref().filter(|_| need_tokenizer).map(TextTokenizer::from_dir).transpose(),
            || {
                (
                    self.template.kwargs_for(dir.as_deref()).and_then(|kw| Renderer::new(dir.as_deref(), &choice, kw)),
                    read_dataset(self.data(), &opts),
                )
            },
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
        let (opts, choice) = self.settings()?;
        let Some(dir) = self.tokenizer_dir()? else {
            bail!("tokenizing needs --tokenizer DIR (a directory with tokenizer.json)");
        };
        let (tokenizer, renderer) =
            rayon::join(|| TextTokenizer::from_dir(&dir), || Renderer::new(Some(&dir), &choice, self.template.kwargs_for(Some(&dir))?));
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

/// The encode flags, checked (the same check a training config's keys get).
pub fn encode_options(settings: &EncodeSettings) -> anyhow::Result<EncodeOptions> {
    settings.resolve().map_err(|e| anyhow::anyhow!(e.for_flags()))
}

/// Which model to load: a model directory, optionally an adapter; or a checkpoint directory.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Model: a directory, a training checkpoint (outputs/checkpoint-N), a hub id
    /// (org/name[@revision]) or a GGUF file.
    #[arg(long)]
    pub model: String,
    /// A PEFT LoRA adapter (a directory or hub id) to apply.
    #[arg(long)]
    pub adapter: Option<String>,
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
    /// A model or checkpoint, f32, no separate adapter.
    pub fn named(model: String) -> Self {
        Self { model, adapter: None, load_in_4bit: false, dtype: Dtype::F32 }
    }

    /// How the base linear weights are held.
    pub fn format(&self) -> BaseFormat {
        match (self.load_in_4bit, self.dtype) {
            (true, _) => BaseFormat::Nf4 { double_quant: true },
            (false, Dtype::Bf16) => BaseFormat::Bf16,
            (false, Dtype::F32) => BaseFormat::F32,
        }
    }

    /// What to load, with `template` as the template settings.
    pub fn load_options(&self, template: &TemplateSettings) -> LoadOptions {
        LoadOptions { model: self.model.clone(), adapter: self.adapter.clone(), format: self.format(), template: template.clone() }
    }

    /// Loads the model for scoring (nothing trains), with where its files are.
    pub fn load_model(&self) -> anyhow::Result<(Model, Resolved)> {
        sft_infer::load::load_model(&self.load_options(&TemplateSettings::default())).with_context(|| format!("loading {}", self.model))
    }

    /// Loads the model with its tokenizer and template for generating.
    pub fn load(&self, template: &TemplateSettings) -> anyhow::Result<Inference> {
        Inference::load(&self.load_options(template)).with_context(|| format!("loading {}", self.model))
    }
}

/// Tokenizer and generation files that travel with a model directory.
const MODEL_SIDE_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
    "template_kwargs.json",
];

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
