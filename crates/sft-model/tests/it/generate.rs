//! Greedy generation equals transformers' `generate` token for token, on every tiny parity
//! model, without and with its PEFT adapter (tests/fixtures/model/generate.json).

use sft_model::generate::{generate, Sampling};
use sft_model::model::{Batch, Cache, Model, Sequence, Trainable, IGNORE};

use crate::common::{json, model_fixture, relative_error};

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
            let (out, _) = generate(&model, &prompt, max_new, &[eos], &Sampling::default(), |t| streamed.push(t)).expect("generate");
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
    let run = |seed| generate(&model, &[5, 6, 7], 10, &[], &s(seed), |_| {}).expect("generate").0;
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
}

/// The KV-cached forward (a prompt chunk, then one token at a time, then a chunk) gives the
/// logits of a full forward over the whole sequence, windows and soft-caps included.
#[test]
fn cached_forward_equals_the_full_forward() {
    const CASES: &[&str] = &["llama", "llama3", "qwen2", "qwen3", "mistral", "phi3", "gemma", "gemma2", "gemma3"];
    let ids: Vec<u32> = (0..14).map(|i| (i * 37 + 11) % 128).collect();
    for case in CASES {
        let model = Model::load(&model_fixture(case), &Trainable::Frozen).expect("load");
        let mut cache = Cache::default();
        let mut cached = vec![model.forward_cached(&ids[..6], &mut cache).expect("prompt")];
        for t in 6..10 {
            cached.push(model.forward_cached(&ids[t..t + 1], &mut cache).expect("token"));
        }
        cached.push(model.forward_cached(&ids[10..], &mut cache).expect("chunk"));
        assert_eq!(cache.tokens(), ids.len());
        for (k, end) in [6, 7, 8, 9, 10, 14].into_iter().enumerate() {
            let labels = vec![IGNORE; end];
            let batch = Batch::new(&[Sequence::single(&ids[..end], &labels)], 0).expect("batch");
            let full = model.last_logits(&batch).expect("full");
            let err = relative_error(&cached[k], &full);
            assert!(err <= 1e-5, "{case}: after {end} tokens, relative error {err:e}");
        }
    }
}
