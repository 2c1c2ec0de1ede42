//! Greedy generation equals transformers' `generate` token for token, on every tiny parity
//! model, without and with its PEFT adapter (tests/fixtures/model/generate.json).

use sft_infer::generate::decode_tokens;
use sft_infer::Sampling;
use sft_model::model::{Model, Trainable};

use crate::common::{json, model_fixture};

#[test]
fn greedy_decoding_matches_transformers_generate() {
    let expected = json(model_fixture("generate.json"));
    let max_new = expected["max_new_tokens"].as_u64().expect("max_new_tokens") as usize;
    let eos = expected["eos_token_id"].as_u64().expect("eos") as u32;
    let ids = |v: &serde_json::Value| -> Vec<u32> { v.as_array().expect("ids").iter().map(|x| x.as_u64().expect("id") as u32).collect() };
    let mut mismatches = vec![];
    for (case, want) in expected.as_object().expect("object").iter().filter(|(_, v)| v.is_object()) {
        let dir = model_fixture(case);
        let prompt = ids(&want["prompt"]);
        for (kind, trainable) in [("base", Trainable::Frozen), ("lora", Trainable::Adapter { dir: dir.join("adapter"), train: false })] {
            let model = Model::load(&dir, &trainable).expect("load");
            let mut streamed = vec![];
            let (out, _) = decode_tokens(&model, &prompt, max_new, &[eos], &Sampling::default(), |t| {
                streamed.push(t);
                true
            })
            .expect("generate");
            assert_eq!(out, streamed, "{case} {kind}: streamed tokens differ from the result");
            if out != ids(&want[kind]) {
                mismatches.push(format!("{case} {kind}: sft {out:?} vs transformers {:?}", ids(&want[kind])));
            }
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn seeded_sampling_is_reproducible() {
    let dir = model_fixture("llama");
    let model = Model::load(&dir, &Trainable::Frozen).expect("load");
    let s = |seed| Sampling { temperature: 1.0, top_p: 0.9, top_k: 50, seed, ..Sampling::default() };
    let run = |seed| decode_tokens(&model, &[5, 6, 7], 10, &[], &s(seed), |_| true).expect("generate").0;
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
}
