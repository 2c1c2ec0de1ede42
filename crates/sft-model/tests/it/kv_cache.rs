//! The KV-cached forward pass against the full forward pass.

use sft_model::model::{Batch, Cache, Model, Sequence, Trainable, IGNORE};

use crate::common::{model_fixture, relative_error};

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
