//! Log-probabilities of every token of a sequence under the model (what an OpenAI `echo`
//! request with `logprobs` returns, and what lm-evaluation-harness sums for a loglikelihood):
//! one forward pass over the whole sequence, then the output layer a block of rows at a time,
//! so a long prompt with a large vocabulary never holds its full logits matrix.

use candle_core::Tensor;

use super::{layer, Batch, Model, Sequence, IGNORE};
use crate::error::TensorContext;
use crate::ModelError;

/// Rows of the output layer computed at once.
const BLOCK: usize = 32;

/// The log-probability of one token given the tokens before it, and the most likely tokens at
/// its position.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    /// `log p(token | tokens before it)`.
    pub logprob: f32,
    /// The `top` most likely tokens at this position, most likely first (ties: lower id first).
    pub top: Vec<(u32, f32)>,
}

/// The log-softmax of one row of logits, computed in f64 and rounded to f32.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let total: f64 = logits.iter().map(|&z| (z as f64 - max).exp()).sum();
    let log_total = max + total.ln();
    logits.iter().map(|&z| (z as f64 - log_total) as f32).collect()
}

/// The `n` largest entries of `logprobs` as (id, value), largest first, lower id first among ties.
pub fn top_n(logprobs: &[f32], n: usize) -> Vec<(u32, f32)> {
    let mut order: Vec<(u32, f32)> = logprobs.iter().enumerate().map(|(i, &v)| (i as u32, v)).collect();
    let n = n.min(order.len());
    if n == 0 {
        return vec![];
    }
    order.select_nth_unstable_by(n - 1, |a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    order.truncate(n);
    order.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    order
}

impl Model {
    /// The log-probability of every token of `ids` after the first (`ids.len() - 1` entries:
    /// entry `i` is about `ids[i + 1]`), each with the `top` most likely tokens at its position.
    pub fn token_logprobs(&self, ids: &[u32], top: usize) -> Result<Vec<TokenLogprobs>, ModelError> {
        if ids.len() < 2 {
            return Ok(vec![]);
        }
        let labels = vec![IGNORE; ids.len()];
        let batch = Batch::new(&[Sequence::single(ids, &labels)], 0)?;
        let h = self.hidden(&batch)?;
        let rows = ids.len() - 1;
        let mut out = Vec::with_capacity(rows);
        for first in (0..rows).step_by(BLOCK) {
            let n = BLOCK.min(rows - first);
            let logits = h
                .narrow(0, first, n)
                .and_then(|x| layer::project(&x, self.output_weight()))
                .and_then(|z| self.final_softcap(z))
                .and_then(|z| z.flatten_all())
                .and_then(|z: Tensor| z.to_vec1::<f32>())
                .during(|| format!("output layer at positions {first}..{}", first + n))?;
            for (r, row) in logits.chunks(self.config.vocab_size).enumerate() {
                let lp = log_softmax(row);
                let next = ids[first + r + 1] as usize;
                out.push(TokenLogprobs { logprob: lp[next], top: top_n(&lp, top) });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_sums_to_one_and_top_n_orders() {
        let lp = log_softmax(&[1.0, 3.0, 3.0, -2.0]);
        let total: f64 = lp.iter().map(|&v| (v as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert_eq!(top_n(&lp, 2).iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(top_n(&lp, 9).len(), 4);
        assert!(top_n(&lp, 0).is_empty());
    }
}
