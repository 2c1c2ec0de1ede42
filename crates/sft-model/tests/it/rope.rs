//! Scaled RoPE against transformers: logits, loss and every gradient of tiny random models with
//! YaRN (llama, qwen2 in the legacy `rope_scaling` spelling), dynamic NTK (llama) and LongRoPE
//! (phi3), over sequences shorter and longer than the length where dynamic / LongRoPE change
//! frequencies, and a KV-cached decode across that length (tests/fixtures/model/rope, made by
//! gen_rope_fixtures.py). Tolerance per tensor as in `parity`: max |ours − theirs| ≤ 1e-4 ·
//! max |theirs|.

use candle_core::Tensor;
use serde_json::Value;
use sft_model::config::{LengthScaling, ModelConfig};
use sft_model::model::{Batch, Cache, Model, Sequence, Trainable};

use crate::common::{json, model_fixture, tensors};
use crate::parity::Mismatches;

const CASES: &[&str] = &["rope/llama_yarn", "rope/llama_dynamic", "rope/qwen2_yarn", "rope/phi3_longrope"];

fn ids<T: TryFrom<i64>>(v: &Value) -> Vec<T> {
    v.as_array().expect("array").iter().map(|x| T::try_from(x.as_i64().expect("int")).ok().expect("in range")).collect()
}

fn run_batch(run: &Value) -> Batch {
    let rows: Vec<Vec<u32>> = run["input_ids"].as_array().expect("rows").iter().map(ids).collect();
    let labels: Vec<Vec<i32>> = run["labels"].as_array().expect("rows").iter().map(ids).collect();
    let seqs: Vec<Sequence> = rows.iter().zip(&labels).map(|(i, l)| Sequence::single(i, l)).collect();
    Batch::new(&seqs, 0).expect("batch")
}

fn check_case(case: &str) -> Vec<String> {
    let dir = model_fixture(case);
    let inputs = json(dir.join("inputs.json"));
    let expected = tensors(dir.join("expected.safetensors"));
    let mut m = Mismatches(vec![]);
    let model = Model::load(&dir, &Trainable::Full).expect("load");
    for run in ["long", "short"] {
        let Some(r) = inputs.get(run) else { continue };
        let batch = run_batch(r);
        m.tensor(&format!("{run} logits"), &model.logits(&batch).expect("logits"), &expected[&format!("{run}.logits")]);
        let mean = model.loss(&batch).expect("loss").mean().expect("mean");
        m.scalar(&format!("{run} loss"), mean.to_scalar::<f32>().expect("scalar"), r["loss"].as_f64().expect("loss"));
        let grads = mean.backward().expect("backward");
        m.grads(run, &model, &grads, &expected, &format!("{run}.grad."));
    }

    // Decoding: the prompt, then a token at a time, each step's logits as transformers' with
    // its cache (frequencies from the length so far; cached keys keep theirs).
    let frozen = Model::load(&dir, &Trainable::Frozen).expect("load frozen");
    let d = &inputs["decode"];
    let (tokens, prompt): (Vec<u32>, usize) = (ids(&d["input_ids"]), d["prompt"].as_u64().expect("prompt") as usize);
    let mut cache = Cache::default();
    let mut rows = vec![frozen.forward_cached(&tokens[..prompt], &mut cache).expect("prompt")];
    for t in prompt..tokens.len() {
        rows.push(frozen.forward_cached(&tokens[t..t + 1], &mut cache).expect("token"));
    }
    m.tensor("decode logits", &Tensor::stack(&rows, 0).expect("stack"), &expected["decode.logits"]);
    m.0.into_iter().map(|s| format!("{case}: {s}")).collect()
}

#[test]
fn scaled_rope_matches_transformers() {
    let failures: Vec<String> = CASES.iter().flat_map(|c| check_case(c)).collect();
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
}

/// The fixtures exercise what they are meant to: the scaling resolved from each config.json,
/// and the long runs past the length where dynamic / LongRoPE switch, the short ones not.
#[test]
fn the_fixtures_cover_both_sides_of_the_switch() {
    for case in CASES {
        let dir = model_fixture(case);
        let config = ModelConfig::from_dir(&dir).expect("config");
        let rope = &config.layers[0].rope;
        let inputs = json(dir.join("inputs.json"));
        let len = |run: &str| inputs[run]["input_ids"][0].as_array().expect("row").len();
        match (&rope.length, case.ends_with("yarn")) {
            (LengthScaling::Fixed, true) => assert!(rope.attention_scaling != 1.0, "{case}"),
            (LengthScaling::DynamicNtk { max_position_embeddings: n, .. }, false) => {
                assert!(len("short") <= *n && len("long") > *n, "{case}")
            }
            (LengthScaling::LongRope { original_max_position_embeddings: n, .. }, false) => {
                assert!(len("short") <= *n && len("long") > *n && rope.attention_scaling > 1.0, "{case}")
            }
            other => panic!("{case}: unexpected {other:?}"),
        }
    }
}
