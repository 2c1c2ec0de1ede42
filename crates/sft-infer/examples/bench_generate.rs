//! Benchmark helper for scripts/bench-generate.sh (not a test): greedy decoding speed of a model
//! directory on given prompt ids, timed inside the process (model loading excluded), best of N.
//! Usage: bench_generate MODEL_DIR PROMPT.json NEW_TOKENS RUNS [f32|bf16|nf4] → one JSON line on stdout:
//! {"new_tokens", "seconds", "tokens_per_s", "token_ids", "rss_after_load_mib", "quantized_bytes"}.

use std::path::PathBuf;
use std::time::Instant;

use sft_infer::generate::decode_tokens;
use sft_infer::Sampling;
use sft_model::model::{Model, Trainable};
use sft_model::quant::BaseFormat;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (format, args) = match args.as_slice() {
        [rest @ .., last] if last == "bf16" => (BaseFormat::Bf16, rest),
        [rest @ .., last] if last == "f32" => (BaseFormat::F32, rest),
        [rest @ .., last] if last == "nf4" => (BaseFormat::Nf4 { double_quant: true }, rest),
        all => (BaseFormat::F32, all),
    };
    let [_, dir, prompt, new, runs] = args else {
        return Err("usage: bench_generate MODEL_DIR PROMPT.json NEW_TOKENS RUNS [f32|bf16|nf4]".into());
    };
    let prompt: Vec<u32> = serde_json::from_str(&std::fs::read_to_string(prompt)?)?;
    let (new, runs): (usize, usize) = (new.parse()?, runs.parse()?);
    let model = Model::load_as(&PathBuf::from(dir), &Trainable::Frozen, format)?;
    let rss = resident_mib();
    let mut best = f64::INFINITY;
    let mut ids = vec![];
    for _ in 0..runs {
        let start = Instant::now();
        let (out, _) = decode_tokens(&model, &prompt, new, &[], &Sampling::default(), |_| true)?;
        best = best.min(start.elapsed().as_secs_f64());
        ids = out;
    }
    let line = serde_json::json!({
        "new_tokens": ids.len(), "seconds": best, "tokens_per_s": ids.len() as f64 / best, "token_ids": ids,
        "rss_after_load_mib": rss, "quantized_bytes": model.quantized().1,
    });
    println!("{line}");
    Ok(())
}

/// The process's resident memory (VmRSS of /proc/self/status), in MiB; 0 where unknown.
fn resident_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok());
    kib.unwrap_or(0.0) / 1024.0
}
