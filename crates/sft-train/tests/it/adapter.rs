//! `adapter: DIR` (issue 27): a new run that starts from a trained PEFT adapter. Stopped before
//! its first step, it saves the adapter's tensors unchanged; its first step's loss, over the
//! whole eval fixture in one batch, is the loss PEFT computes for that adapter
//! (`tests/fixtures/model/gen_eval_fixture.py`).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use candle_core::{DType, Device};
use sft_train::collective::Single;
use sft_train::trainer::{train, Options, Outcome};

fn eval_fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/model/eval").join(name)
}

/// A config continuing the eval fixture's adapter on its 10 conversations, all in one step.
fn config(name: &str) -> (PathBuf, sft_train::config::TrainConfig) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/sft-train-tests").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let yaml = format!(
        "model: {}\nadapter: {}\ndatasets:\n  - path: {}\noutput_dir: {}\nmax_steps: 1\nper_device_train_batch_size: 10\n\
         logging_steps: 1\nlearning_rate: 0.01\n",
        eval_fixture("model").display(),
        eval_fixture("adapter").display(),
        eval_fixture("data.jsonl").display(),
        dir.join("out").display()
    );
    let path = dir.join("train.yaml");
    std::fs::write(&path, yaml).expect("write");
    let cfg = sft_train::config::load(&path, &[]).expect("valid config");
    (dir, cfg)
}

fn tensors(file: &Path) -> Vec<(String, Vec<f32>)> {
    let mut all: Vec<(String, Vec<f32>)> = candle_core::safetensors::load(file, &Device::Cpu)
        .expect("safetensors")
        .into_iter()
        .map(|(name, t)| (name, t.to_dtype(DType::F32).and_then(|t| t.flatten_all()).and_then(|t| t.to_vec1()).expect("values")))
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

#[test]
fn stopped_before_its_first_step_it_saves_the_adapter_unchanged() {
    let (_, cfg) = config("adapter-zero-steps");
    let opts = Options { stop: Arc::new(AtomicBool::new(true)), ..Options::default() };
    let Outcome::Interrupted { step: 0, saved } = train(&cfg, &opts, &Single).expect("train") else { panic!("expected a stop at step 0") };
    let (ours, theirs) = (tensors(&saved.join("adapter_model.safetensors")), tensors(&eval_fixture("adapter/adapter_model.safetensors")));
    assert_eq!(ours.len(), 28, "two layers × seven modules × A and B");
    assert_eq!(ours, theirs, "the saved adapter is the one it started from, bit for bit");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(saved.join("adapter_config.json")).expect("config")).expect("json");
    assert_eq!((config["r"].as_u64(), config["lora_alpha"].as_f64()), (Some(4), Some(8.0)), "the adapter's own r and alpha");
}

#[test]
fn its_first_step_loss_is_the_peft_loss_of_the_adapter() {
    let (_, cfg) = config("adapter-first-step");
    let Outcome::Finished(summary) = train(&cfg, &Options::default(), &Single).expect("train") else { panic!("not finished") };
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(eval_fixture("expected.json")).expect("expected")).expect("json");
    let (peft, base) = (expected["adapter"]["loss"].as_f64().expect("loss"), expected["base"]["loss"].as_f64().expect("loss"));
    let first = summary.last_loss.expect("a logged loss");
    assert!(((first - peft) / peft).abs() <= 1e-5, "first-step loss {first} vs PEFT's loss of the adapter {peft}");
    assert!((first - base).abs() > 1e-3, "the adapter's weights were not loaded (base loss {base})");
}
