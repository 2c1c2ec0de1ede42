//! Passes side by side change the order of float additions, not the results: the loss and every
//! gradient of a micro-batch split over two one-thread passes equal those of one pass over the
//! whole batch, for adapters and full fine-tuning, with and without gradient checkpointing.

use std::path::PathBuf;

use rayon::ThreadPoolBuilder;
use sft_model::lora::{LoraSettings, Targets};
use sft_model::model::{Batch, Model, Sequence, Trainable};
use sft_train::threads::{Gradients, ThreadGroups};

fn llama() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/model/llama")
}

/// Three sequences of different lengths, each training on its second half.
fn rows(vocab: u32) -> Vec<(Vec<u32>, Vec<i32>)> {
    [13usize, 7, 10]
        .iter()
        .enumerate()
        .map(|(b, &len)| {
            let ids: Vec<u32> = (0..len).map(|t| 3 + ((b * 31 + t * 17) as u32 % (vocab - 3))).collect();
            let labels = ids.iter().enumerate().map(|(t, &i)| if t < len / 2 { -100 } else { i as i32 }).collect();
            (ids, labels)
        })
        .collect()
}

fn run(model: &Model, groups: &ThreadGroups, sequences: &[Sequence<'_>]) -> Gradients {
    let batches = groups.batches(sequences).expect("batches");
    let targets: usize = batches.iter().map(|b| b.targets.len()).sum();
    groups.gradients(model, &batches, 1.0 / targets as f64, None).expect("gradients")
}

#[test]
fn two_passes_side_by_side_equal_one_pass() {
    let two_threads = ThreadPoolBuilder::new().num_threads(2).build().expect("pool");
    let side_by_side = two_threads.install(|| ThreadGroups::new(2).map_err(|e| e.to_string())).expect("groups");
    assert_eq!(side_by_side.passes(), 2);
    let lora = LoraSettings {
        r: 4,
        alpha: 8.0,
        use_rslora: false,
        dropout: 0.0,
        targets: Targets::AllLinear,
        use_dora: false,
        modules_to_save: vec![],
    };
    let mut failures = vec![];
    for (what, trainable) in [("lora", Trainable::NewLora { settings: lora, seed: 1 }), ("full", Trainable::Full)] {
        let mut model = Model::load(&llama(), &trainable).expect("load");
        let data = rows(model.config().vocab_size as u32);
        let sequences: Vec<Sequence<'_>> = data.iter().map(|(i, l)| Sequence::single(i, l)).collect();
        assert_eq!(side_by_side.batches(&sequences).expect("batches").len(), 2);
        let one = run(&model, &ThreadGroups::one(), &sequences);
        for checkpointing in [false, true] {
            model.set_gradient_checkpointing(checkpointing);
            let two = run(&model, &side_by_side, &sequences);
            if (one.loss_sum - two.loss_sum).abs() > 1e-5 * one.loss_sum.abs() {
                failures.push(format!("{what} (checkpointing {checkpointing}): loss {} vs {}", one.loss_sum, two.loss_sum));
            }
            assert_eq!(one.grads.len(), model.params().len());
            for ((a, b), (name, _)) in one.grads.iter().zip(&two.grads).zip(model.params()) {
                let (a, b) = (
                    a.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("a"),
                    b.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("b"),
                );
                let scale = a.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
                let err = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale;
                if err.is_nan() || err > 1e-5 {
                    failures.push(format!("{what} (checkpointing {checkpointing}) {name}: relative difference {err:e}"));
                }
            }
        }
        let whole = model.evaluate(&sequences).expect("evaluate");
        let split = side_by_side.evaluate(&model, &sequences).expect("evaluate split");
        assert_eq!(whole.tokens, split.tokens);
        assert!((whole.loss_sum - split.loss_sum).abs() <= 1e-9 * whole.loss_sum.abs(), "{what}: {whole:?} vs {split:?}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn one_pass_equals_the_batch_as_the_model_sees_it() {
    let model = Model::load(&llama(), &Trainable::Full).expect("load");
    let data = rows(model.config().vocab_size as u32);
    let sequences: Vec<Sequence<'_>> = data.iter().map(|(i, l)| Sequence::single(i, l)).collect();
    let batch = Batch::new(&sequences, 0).expect("batch");
    let loss = model.loss(&batch).expect("loss");
    let expected = loss.sum.to_scalar::<f32>().expect("sum") as f64;
    let got = run(&model, &ThreadGroups::one(), &sequences);
    assert_eq!(got.loss_sum, expected);
}
