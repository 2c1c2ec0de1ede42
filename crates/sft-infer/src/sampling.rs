//! Choosing the next token from one row of logits: greedy, or sampled as transformers' logits
//! processors do (repetition penalty, temperature, top-k, min-p, top-p), from a seeded generator.

use sft_model::model::argmax;
use sft_model::rng::SplitMix;

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// 0 = greedy (argmax); otherwise logits are divided by it.
    pub temperature: f64,
    /// Keep the `k` most likely tokens (0 = off).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches `p` (1 = off).
    pub top_p: f64,
    /// Drop tokens less likely than `min_p` × the top probability (0 = off).
    pub min_p: f64,
    /// transformers' repetition penalty over prompt and output (1 = off).
    pub repetition_penalty: f64,
    /// Seed of the sampler.
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Self { temperature: 0.0, top_k: 0, top_p: 1.0, min_p: 0.0, repetition_penalty: 1.0, seed: 0 }
    }
}

/// Picks the next token from one row of logits; `context` holds the ids so far (prompt and
/// output), for the repetition penalty.
pub fn choose(logits: &mut [f32], context: &[u32], s: &Sampling, rng: &mut SplitMix) -> u32 {
    if s.repetition_penalty != 1.0 {
        let p = s.repetition_penalty as f32;
        let mut seen = std::collections::BTreeSet::new();
        for &t in context {
            if seen.insert(t) {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l < 0.0 { *l * p } else { *l / p };
                }
            }
        }
    }
    if s.temperature <= 0.0 {
        return argmax(logits) as u32;
    }
    let t = s.temperature as f32;
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(usize, f64)> = logits.iter().enumerate().map(|(i, &l)| (i, (((l - max) / t) as f64).exp())).collect();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if s.top_k > 0 {
        probs.truncate(s.top_k);
    }
    let total: f64 = probs.iter().map(|p| p.1).sum();
    if s.min_p > 0.0 {
        let floor = s.min_p * probs[0].1;
        probs.retain(|p| p.1 >= floor);
    }
    if s.top_p < 1.0 {
        let mut acc = 0.0;
        let keep = probs
            .iter()
            .position(|p| {
                acc += p.1 / total;
                acc >= s.top_p
            })
            .map_or(probs.len(), |i| i + 1);
        probs.truncate(keep.max(1));
    }
    let total: f64 = probs.iter().map(|p| p.1).sum();
    let mut r = rng.next_f64() * total;
    for (i, p) in &probs {
        r -= p;
        if r <= 0.0 {
            return *i as u32;
        }
    }
    probs.last().map_or(0, |p| p.0 as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_argmax_and_sampling_is_seeded() {
        let mut rng = SplitMix(1);
        let mut l = vec![0.1, 3.0, 0.2];
        assert_eq!(choose(&mut l, &[], &Sampling::default(), &mut rng), 1);
        let s = Sampling { temperature: 1.0, seed: 5, ..Sampling::default() };
        let draw = |seed| {
            let mut rng = SplitMix(seed);
            (0..20).map(|_| choose(&mut [1.0, 1.0, 1.0, 1.0], &[], &s, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(draw(5), draw(5));
        assert_ne!(draw(5), draw(6));
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy() {
        let mut rng = SplitMix(3);
        for s in [
            Sampling { temperature: 1.0, top_k: 1, ..Sampling::default() },
            Sampling { temperature: 1.0, top_p: 0.01, ..Sampling::default() },
            Sampling { temperature: 1.0, min_p: 0.99, ..Sampling::default() },
        ] {
            for _ in 0..10 {
                assert_eq!(choose(&mut [0.0, 2.0, 1.0], &[], &s, &mut rng), 1, "{s:?}");
            }
        }
    }

    #[test]
    fn repetition_penalty_lowers_seen_tokens() {
        let mut rng = SplitMix(0);
        let s = Sampling { repetition_penalty: 10.0, ..Sampling::default() };
        assert_eq!(choose(&mut [0.5, 2.0, 1.0], &[1], &s, &mut rng), 2);
    }
}
