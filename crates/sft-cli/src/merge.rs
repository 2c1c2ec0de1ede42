//! `sft merge`: fold a LoRA adapter into its base model and save an HF model directory
//! (config.json, safetensors in f32, bf16 or f16, sharded with an index above
//! `--max-shard-size`, tokenizer files, chat template) that transformers loads.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use sft_model::model::Model;
use sft_model::weights::write::{parse_size, SaveOptions};

use crate::common::{copy_side_files, require_new_dir};

/// `sft merge` flags.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The base model (a directory, hub id or GGUF file), or a LoRA checkpoint naming its base.
    #[arg(long)]
    pub model: String,
    /// A PEFT LoRA adapter (a directory or hub id) to fold in.
    #[arg(long)]
    pub adapter: Option<String>,
    /// The element type of the saved weights.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: SavedDtype,
    /// Split the weights into files of at most this size, with an index (e.g. 2GB, 500MB, 1GiB).
    #[arg(long)]
    pub max_shard_size: Option<String>,
    /// The new model directory (must not exist, or be empty).
    #[arg(long)]
    pub out: PathBuf,
}

/// `--dtype` values of `sft merge`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SavedDtype {
    F32,
    Bf16,
    F16,
}

/// Runs `sft merge`.
pub fn run(args: &MergeArgs) -> anyhow::Result<ExitCode> {
    let source = sft_hub::resolve(&args.model, args.adapter.as_deref())?;
    let (base, tokenizer_dir) = (&source.base.dir, &source.tokenizer_dir);
    let Some(adapter) = &source.adapter else {
        bail!("merge needs --adapter DIR (or --model pointing at a LoRA checkpoint)");
    };
    let max_shard_bytes =
        args.max_shard_size.as_deref().map(parse_size).transpose().map_err(|e| anyhow::anyhow!("--max-shard-size {e}"))?;
    let dtype = match args.dtype {
        SavedDtype::F32 => candle_core::DType::F32,
        SavedDtype::Bf16 => candle_core::DType::BF16,
        SavedDtype::F16 => candle_core::DType::F16,
    };
    let out = &args.out;
    require_new_dir(out)?;
    let model = Model::merged(base, adapter)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    write_config(&base.join("config.json"), &out.join("config.json"), args.dtype, &model)?;
    let files = model.save_weights_as(out, &SaveOptions { dtype, max_shard_bytes })?;
    for dir in [base, tokenizer_dir] {
        copy_side_files(dir, out)?;
    }
    eprintln!("{}: {} merged into {} ({} weight files)", out.display(), adapter.display(), base.display(), files.len());
    Ok(ExitCode::SUCCESS)
}

/// The base's config.json with the saved element type (`dtype`, transformers 5's key, and
/// `torch_dtype` where the file has it) and the merged model's vocabulary keys.
fn write_config(from: &std::path::Path, to: &std::path::Path, dtype: SavedDtype, model: &Model) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(from).with_context(|| format!("reading {}", from.display()))?;
    let mut config: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", from.display()))?;
    let name = match dtype {
        SavedDtype::F32 => "float32",
        SavedDtype::Bf16 => "bfloat16",
        SavedDtype::F16 => "float16",
    };
    config.insert("dtype".into(), name.into());
    // Added tokens (modules_to_save): the merged vocabulary, untied when trained apart.
    model.update_hf_config(&mut config);
    if config.contains_key("torch_dtype") {
        config.insert("torch_dtype".into(), name.into());
    }
    std::fs::write(to, serde_json::to_vec_pretty(&config)?).with_context(|| format!("writing {}", to.display()))
}
