//! Benchmark helper (not a test): aggregate greedy decoding speed of 1, 2, 4 and 8 sequences
//! stepped together ([`Decoder::step_all`]) after their prompts, model loading and prompts
//! excluded. Usage: bench_batched MODEL_DIR NEW_TOKENS [f32|bf16] → one JSON line per row count.

use std::path::PathBuf;
use std::time::Instant;

use sft_infer::{Decoder, Sampling};
use sft_model::model::{Model, Trainable};
use sft_model::quant::BaseFormat;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, new, rest @ ..] = args.as_slice() else {
        return Err("usage: bench_batched MODEL_DIR NEW_TOKENS [f32|bf16]".into());
    };
    let format = if rest.first().is_some_and(|f| f == "bf16") { BaseFormat::Bf16 } else { BaseFormat::F32 };
    let new: usize = new.parse()?;
    let model = Model::load_as(&PathBuf::from(dir), &Trainable::Frozen, format)?;
    let mut single = 0.0;
    for rows in [1usize, 2, 4, 8] {
        let mut decoders: Vec<Decoder> = (0..rows)
            .map(|r| Decoder::new(&(0..24).map(|i| (i * 31 + r as u32 * 7 + 100) % 4000).collect::<Vec<u32>>(), &Sampling::default()))
            .collect();
        for d in &mut decoders {
            d.step(&model, None)?;
        }
        let start = Instant::now();
        for _ in 0..new {
            let mut batch: Vec<(&mut Decoder, Option<usize>)> = decoders.iter_mut().map(|d| (d, None)).collect();
            Decoder::step_all(&model, &mut batch)?;
        }
        let tok_s = (rows * new) as f64 / start.elapsed().as_secs_f64();
        if rows == 1 {
            single = tok_s;
        }
        println!("{}", serde_json::json!({"rows": rows, "tokens_per_s": tok_s, "vs_one_row": tok_s / single}));
    }
    Ok(())
}
