//! The KV-cached forward pass against the full forward pass.

use sft_model::model::{Batch, Cache, Model, Sequence, Trainable, IGNORE};

use crate::common::{model_fixture, relative_error};

/// The KV-cached forward (a prompt chunk, then one token at a time, then a chunk) gives the
/// logits of a full forward over the whole sequence, windows, soft-caps and YaRN included
/// (RoPE that changes with the length does not: see `rope.rs`).
#[test]
fn cached_forward_equals_the_full_forward() {
    const CASES: &[&str] =
        &["llama", "llama3", "qwen2", "qwen3", "mistral", "phi3", "gemma", "gemma2", "gemma3", "rope/llama_yarn", "rope/qwen2_yarn"];
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

/// A decoding step of several sequences at once (different prompt lengths, so different
/// positions and cache sizes; greedy and logits rows mixed, and all greedy) gives each
/// sequence exactly what a step of it alone gives, over several steps; with dynamic and
/// LongRoPE, some rows past the length where the frequencies change and some not.
#[test]
fn a_step_of_several_sequences_equals_each_decoded_alone() {
    use sft_model::model::{DecodeRow, Next};
    const CASES: &[&str] = &["llama", "qwen3", "phi3", "gemma2", "gemma3", "rope/llama_dynamic", "rope/phi3_longrope"];
    for case in CASES {
        let model = Model::load(&model_fixture(case), &Trainable::Frozen).expect("load");
        let prompts: Vec<Vec<u32>> = (0..5).map(|s| (0..3 + 2 * s).map(|i| ((i * 29 + s * 7 + 3) % 128) as u32).collect()).collect();
        let start = |caches: &mut Vec<Cache>| -> Vec<u32> {
            prompts.iter().zip(caches.iter_mut()).map(|(p, c)| model.next_greedy(p, c).expect("prompt")).collect()
        };
        let (mut alone, mut together) = (vec![Cache::default(); 5], vec![Cache::default(); 5]);
        let (mut next_alone, mut next_together) = (start(&mut alone), start(&mut together));
        for step in 0..4 {
            // Step 1 asks every row for logits, step 3 mixes; the others are all greedy.
            let greedy = |i: usize| !(step == 1 || (step == 3 && i.is_multiple_of(2)));
            let want: Vec<Next> = alone
                .iter_mut()
                .zip(&next_alone)
                .enumerate()
                .map(|(i, (c, &id))| {
                    let logits = model.forward_cached(&[id], c).expect("alone").to_vec1::<f32>().expect("logits");
                    if greedy(i) {
                        Next::Id(sft_model::model::argmax(&logits) as u32)
                    } else {
                        Next::Logits(logits)
                    }
                })
                .collect();
            let mut rows: Vec<DecodeRow> = together
                .iter_mut()
                .zip(&next_together)
                .enumerate()
                .map(|(i, (cache, &id))| DecodeRow { id, cache, greedy: greedy(i) })
                .collect();
            let got = model.decode_rows(&mut rows).expect("together");
            assert_eq!(got, want, "{case}: step {step}");
            let pick = |n: &Next| match n {
                Next::Id(id) => *id,
                Next::Logits(z) => sft_model::model::argmax(z) as u32,
            };
            next_alone = want.iter().map(pick).collect();
            next_together = got.iter().map(pick).collect();
        }
        assert_eq!(alone.iter().map(Cache::tokens).collect::<Vec<_>>(), together.iter().map(Cache::tokens).collect::<Vec<_>>());
    }
}
