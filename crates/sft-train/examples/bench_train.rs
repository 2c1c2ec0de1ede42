//! Benchmark helper for scripts/bench-train.sh (not a test): the time of one training step
//! (forward, masked loss, backward, AdamW) on synthetic sequences, and the peak resident memory.
//! Usage: bench_train MODEL_DIR lora|lora-bf16|full STEPS SEQ BATCH [gc] [one] → one JSON line
//! on stdout (`lora-bf16`: `bf16: true`, base weights in bf16 multiplied in bf16; `gc`: gradient
//! checkpointing; `one`: one pass over all cores instead of the trainer's passes side by side):
//! {"step_seconds": [...], "losses": [...], "tokens_per_s", "busy_cores" (CPU time over wall time
//! of the timed steps), "peak_rss_mib", "matmul_gflops", "trainable"}.
//! Every sequence has its first half masked (-100) and trains on the second half; ids are a
//! fixed pseudo-random function of the position, as in scripts/bench_train.py.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor};
use sft_model::lora::{LoraSettings, Targets};
use sft_model::model::{Model, Sequence, Trainable};
use sft_model::quant::BaseFormat;
use sft_train::optim::{AdamW, AdamWConfig};
use sft_train::threads::ThreadGroups;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().collect();
    let one = args.last().is_some_and(|a| a == "one") && args.pop().is_some();
    let checkpointing = args.last().is_some_and(|a| a == "gc") && args.pop().is_some();
    let [_, dir, mode, steps, seq, batch] = args.as_slice() else {
        return Err("usage: bench_train MODEL_DIR lora|lora-bf16|full STEPS SEQ BATCH [gc] [one]".into());
    };
    let (steps, seq, batch): (usize, usize, usize) = (steps.parse()?, seq.parse()?, batch.parse()?);
    let lora = Trainable::NewLora {
        settings: LoraSettings {
            r: 16,
            alpha: 32.0,
            use_rslora: false,
            dropout: 0.0,
            targets: Targets::AllLinear,
            use_dora: false,
            modules_to_save: vec![],
        },
        seed: 0,
    };
    let (trainable, format) = match mode.as_str() {
        "full" => (Trainable::Full, BaseFormat::F32),
        "lora" => (lora, BaseFormat::F32),
        "lora-bf16" => (lora, BaseFormat::Bf16Matmul),
        other => return Err(format!("mode {other:?}: expected lora, lora-bf16 or full").into()),
    };
    let groups = if one { ThreadGroups::one() } else { ThreadGroups::for_training(batch, matches!(trainable, Trainable::Full))? };
    sft_model::runtime::tune_for_training(groups.is_parallel());
    let mut model = Model::load_as(&PathBuf::from(dir), &trainable, format)?;
    model.set_gradient_checkpointing(checkpointing);
    let vocab = model.config().vocab_size as u64;
    let rows: Vec<(Vec<u32>, Vec<i32>)> = (0..batch)
        .map(|b| {
            let ids: Vec<u32> = (0..seq).map(|t| (3 + ((b * seq + t) as u64 * 2_654_435_761 % (vocab - 3))) as u32).collect();
            let labels = ids.iter().enumerate().map(|(t, &i)| if t < seq / 2 { -100 } else { i as i32 }).collect();
            (ids, labels)
        })
        .collect();
    let sequences: Vec<Sequence<'_>> = rows.iter().map(|(i, l)| Sequence::single(i, l)).collect();
    let batches = groups.batches(&sequences)?;
    let targets: usize = batches.iter().map(|b| b.targets.len()).sum();
    let adam = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
    let mut optimizer = AdamW::new(model.params().to_vec(), adam)?;
    let (mut times, mut losses, mut cpu, mut optimizer_seconds) = (vec![], vec![], 0.0, 0.0);
    // One untimed warm-up step, then `steps` timed ones.
    for step in 0..=steps {
        let (start, cpu_start) = (Instant::now(), cpu_seconds());
        // As the trainer: the passes (their graphs gone once they return), then the optimizer.
        let g = groups.gradients(&model, &batches, 1.0 / targets as f64, None)?;
        losses.push(g.loss_sum / targets as f64);
        let optimizer_start = Instant::now();
        optimizer.step(&g.grads, 1e-4)?;
        if step > 0 {
            optimizer_seconds += optimizer_start.elapsed().as_secs_f64();
            times.push(start.elapsed().as_secs_f64());
            cpu += cpu_seconds() - cpu_start;
        }
    }
    let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
    let trainable: usize = model.params().iter().map(|(_, v)| v.elem_count()).sum();
    let line = serde_json::json!({
        "step_seconds": times, "losses": losses, "tokens_per_s": (seq * batch) as f64 / mean,
        "busy_cores": cpu / times.iter().sum::<f64>(),
        "optimizer_seconds": optimizer_seconds / times.len().max(1) as f64, "peak_rss_mib": peak_rss_mib(),
        "matmul_gflops": matmul_gflops(seq * batch, model.config().hidden_size, model.config().intermediate_size)?,
        "trainable": trainable,
    });
    println!("{line}");
    Ok(())
}

/// f32 GEMM speed on this machine: `[n, d] · [f, d]ᵀ`, best of 5 (candle's matmul).
fn matmul_gflops(n: usize, d: usize, f: usize) -> candle_core::Result<f64> {
    let x = Tensor::randn(0f32, 1.0, (n, d), &Device::Cpu)?;
    let w = Tensor::randn(0f32, 1.0, (f, d), &Device::Cpu)?;
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let start = Instant::now();
        let _ = x.matmul(&w.t()?)?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok(2.0 * (n * d * f) as f64 / best / 1e9)
}

/// CPU time of the whole process so far (user and system, all threads), in seconds; 0 where
/// unknown. /proc/self/stat counts it in USER_HZ ticks, which Linux fixes at 100 per second.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name (which may hold spaces) start with the state, field 3;
    // utime and stime are fields 14 and 15.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: f64 = after.split_whitespace().skip(11).take(2).filter_map(|v| v.parse::<f64>().ok()).sum();
    ticks / 100.0
}

/// Peak resident memory of the process (VmHWM of /proc/self/status), in MiB; 0 where unknown.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib =
        status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok());
    kib.unwrap_or(0.0) / 1024.0
}
