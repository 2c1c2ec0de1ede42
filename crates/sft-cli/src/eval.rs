//! `sft eval`: the mean loss of a model (optionally with a LoRA adapter) over the trained tokens
//! of a data file, encoded exactly as training encodes it; token-weighted across the file.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use serde_json::json;
use sft_data::encode::{encode_all, EncodeSettings};
use sft_data::pack::pack;
use sft_model::model::Sequence;
use sft_train::threads::ThreadGroups;

use crate::common::{encode_options, DataArgs, ModelArgs};

/// Sequences are packed to at least this many tokens (rows never attend to each other).
const PACK_TOKENS: usize = 2048;

/// `sft eval` flags.
#[derive(Debug, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Print one JSON object {"loss", "tokens", "perplexity"} instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub encode: EncodeSettings,
}

/// Runs `sft eval`.
pub fn run(args: &EvalArgs) -> anyhow::Result<ExitCode> {
    // Packed sequences are evaluated side by side, one group per core (before any tensor op).
    let groups = ThreadGroups::new(rayon::current_num_threads())?;
    sft_model::runtime::tune_for_training(groups.is_parallel());
    let options = encode_options(&args.encode)?;
    let (model, source) = args.model.load_model()?;
    let mut data = args.data.clone();
    data.tokenizer.get_or_insert(source.tokenizer_dir.display().to_string());
    let loaded = data.load(true)?;
    let tokenizer = loaded.tokenizer.as_ref().context("eval needs a tokenizer")?;
    let encoded = encode_all(&loaded.dataset.conversations, &options, &loaded.renderer, tokenizer)
        .with_context(|| format!("{}: nothing to evaluate", data.data()))?;
    if !encoded.excluded.is_empty() {
        eprintln!("{}: {} rows excluded (no trained token left):", data.data(), encoded.excluded.len());
        for ex in encoded.excluded.iter().take(20) {
            eprintln!("  {ex}");
        }
    }
    let longest = encoded.examples.iter().map(|e| e.input_ids.len()).max().unwrap_or(0);
    let packed = pack(&encoded.examples, longest.max(PACK_TOKENS))?;
    let sequences: Vec<Sequence> = packed.iter().map(|p| Sequence::packed(&p.input_ids, &p.labels, &p.boundaries)).collect();
    let result = groups
        .evaluate(&model, &sequences)
        .with_context(|| format!("evaluating {} with {} (do the tokenizer and the model match?)", data.data(), args.model.model))?;
    if args.json {
        println!("{}", json!({ "loss": result.loss(), "tokens": result.tokens, "perplexity": result.perplexity() }));
    } else {
        println!("examples    {}", encoded.examples.len());
        println!("tokens      {}", result.tokens);
        println!("loss        {:.6}", result.loss());
        println!("perplexity  {:.4}", result.perplexity());
    }
    Ok(ExitCode::SUCCESS)
}
