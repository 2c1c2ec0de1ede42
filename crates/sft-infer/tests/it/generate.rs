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

/// Sequences stepped together ([`Decoder::step_all`]: greedy, sampled, with log-probabilities,
/// with a repetition penalty, on the base and on an adapter model; prompts of different
/// lengths, one joining late) produce exactly the tokens and log-probabilities each produces
/// stepped alone.
#[test]
fn sequences_stepped_together_equal_each_stepped_alone() {
    use sft_infer::Decoder;
    let dir = model_fixture("qwen2");
    for trainable in [Trainable::Frozen, Trainable::Adapter { dir: dir.join("adapter"), train: false }] {
        let model = Model::load(&dir, &trainable).expect("load");
        let sampled = Sampling { temperature: 0.8, top_k: 20, top_p: 0.9, seed: 5, ..Sampling::default() };
        let penalty = Sampling { repetition_penalty: 1.3, ..Sampling::default() };
        let jobs: Vec<(Vec<u32>, Sampling, Option<usize>)> = vec![
            ((1..5).collect(), Sampling::default(), None),
            ((10..22).collect(), sampled, None),
            ((30..33).collect(), Sampling::default(), Some(3)),
            ((40..47).collect(), penalty, None),
            ((50..52).collect(), Sampling::default(), None),
        ];
        let alone: Vec<Vec<sft_infer::Step>> = jobs
            .iter()
            .map(|(p, s, lp)| {
                let mut d = Decoder::new(p, s);
                (0..6).map(|_| d.step(&model, *lp).expect("step")).collect()
            })
            .collect();
        let mut decoders: Vec<Decoder> = jobs.iter().map(|(p, s, _)| Decoder::new(p, s)).collect();
        let mut together: Vec<Vec<sft_infer::Step>> = vec![vec![]; jobs.len()];
        // The last sequence joins two steps late (its prompt is fed while the others decode).
        for tick in 0..8 {
            let active: Vec<usize> = (0..jobs.len()).filter(|&i| together[i].len() < 6 && (i < 4 || tick >= 2)).collect();
            let mut batch: Vec<(&mut Decoder, Option<usize>)> =
                decoders.iter_mut().enumerate().filter(|(i, _)| active.contains(i)).map(|(i, d)| (d, jobs[i].2)).collect();
            let steps = Decoder::step_all(&model, &mut batch).expect("step_all");
            for (i, s) in active.into_iter().zip(steps) {
                together[i].push(s);
            }
        }
        for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
            assert_eq!(a.iter().map(|s| s.id).collect::<Vec<_>>(), t.iter().map(|s| s.id).collect::<Vec<_>>(), "sequence {i}: ids");
            for (sa, st) in a.iter().zip(t) {
                match (&sa.logprobs, &st.logprobs) {
                    (Some(x), Some(y)) => assert!((x.logprob - y.logprob).abs() <= 1e-5, "sequence {i}: {} vs {}", x.logprob, y.logprob),
                    (None, None) => {}
                    _ => panic!("sequence {i}: log-probabilities asked for one way only"),
                }
            }
        }
    }
}
