//! Gradient checkpointing changes memory, not results: every parameter's gradient equals the
//! one computed without it, for full fine-tuning, a PEFT adapter, and new LoRA and DoRA
//! adapters with dropout (whose masks must repeat exactly when a layer runs again), on every
//! architecture.

use sft_model::lora::{LoraSettings, Targets};
use sft_model::model::{Batch, Model, Trainable};

use crate::common::{json, model_fixture};
use crate::parity::{fixture_batch, CASES};

fn gradients(model: &Model, batch: &Batch) -> Vec<(String, Vec<f32>)> {
    let loss = model.loss_with(batch, Some(7)).expect("loss");
    let store = loss.backward(1.0 / loss.tokens as f64).expect("backward");
    model
        .params()
        .iter()
        .map(|(name, var)| {
            let g = store.get(var.as_tensor()).unwrap_or_else(|| panic!("{name}: no gradient"));
            (name.clone(), g.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("read"))
        })
        .collect()
}

#[test]
fn checkpointed_layers_give_the_same_gradients() {
    let lora = LoraSettings {
        r: 4,
        alpha: 8.0,
        use_rslora: false,
        dropout: 0.2,
        targets: Targets::AllLinear,
        use_dora: false,
        modules_to_save: vec![],
    };
    let mut failures = vec![];
    for case in CASES {
        let dir = model_fixture(case);
        let batch = fixture_batch(&json(dir.join("inputs.json")));
        let ways = [
            ("full", Trainable::Full),
            ("adapter", Trainable::Adapter { dir: dir.join("adapter"), train: true }),
            ("new lora with dropout", Trainable::NewLora { settings: lora.clone(), seed: 3 }),
            ("new dora with dropout", Trainable::NewLora { settings: LoraSettings { use_dora: true, ..lora.clone() }, seed: 3 }),
        ];
        for (what, trainable) in ways {
            let mut model = Model::load(&dir, &trainable).expect("load");
            let plain = gradients(&model, &batch);
            model.set_gradient_checkpointing(true);
            let recomputed = gradients(&model, &batch);
            assert_eq!(plain.len(), recomputed.len());
            for ((name, a), (_, b)) in plain.iter().zip(&recomputed) {
                let scale = a.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
                let err = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale;
                if err.is_nan() || err > 1e-6 {
                    failures.push(format!("{case} {what} {name}: relative difference {err:e}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
