//! Decoding attention over cached keys and values. Each layer keeps the keys and values of the
//! tokens seen so far per key/value head, contiguous in position order, and new queries attend
//! to them directly (grouped-query heads share their key/value head; no repeated copies, no
//! score matrix or mask tensors). Inference only: nothing here is part of a gradient graph.

use rayon::prelude::*;

use crate::kernels::dot;

/// The attention shape and options of one layer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttentionShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Multiplies q·k.
    pub scale: f32,
    /// Gemma 2's `attn_logit_softcapping`.
    pub softcap: Option<f32>,
    /// Keys further back than this many positions are not seen (sliding window).
    pub window: Option<usize>,
}

/// Attention of new rows over their caches: with one cache every row is one of its sequence's
/// new tokens, in order; with several, row `i` is the one new token of `caches[i]`'s sequence
/// (sequences attend side by side on the thread pool). `q` is `[rows, heads, head_dim]`, `k`
/// and `v` `[rows, kv_heads, head_dim]`; returns `[rows, heads · head_dim]`.
pub(crate) fn attend_rows(
    caches: &mut [&mut KvCache],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: &AttentionShape,
) -> candle_core::Result<Vec<f32>> {
    let (qw, kw) = (s.heads * s.head_dim, s.kv_heads * s.head_dim);
    let rows = q.len() / qw.max(1);
    match caches {
        [one] => Ok(one.attend(q, k, v, s)),
        many if rows == many.len() && k.len() == rows * kw && v.len() == rows * kw => {
            let outs: Vec<Vec<f32>> = many
                .par_iter_mut()
                .enumerate()
                .map(|(i, c)| c.attend(&q[i * qw..(i + 1) * qw], &k[i * kw..(i + 1) * kw], &v[i * kw..(i + 1) * kw], s))
                .collect();
            Ok(outs.concat())
        }
        many => candle_core::bail!("attention: {rows} new rows for {} caches", many.len()),
    }
}

/// One layer's keys and values of the tokens seen so far.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    /// Per key/value head: `[tokens, head_dim]`.
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    tokens: usize,
}

impl KvCache {
    /// Appends the new tokens' keys and values (`[n, kv_heads, head_dim]`, after RoPE), then
    /// attends each new query (`[n, heads, head_dim]`) causally to every cached token; returns
    /// `[n, heads · head_dim]`.
    pub(crate) fn attend(&mut self, q: &[f32], k: &[f32], v: &[f32], s: &AttentionShape) -> Vec<f32> {
        let (hd, nkv) = (s.head_dim, s.kv_heads);
        let n = q.len() / (s.heads * hd);
        if self.keys.len() != nkv {
            self.keys = vec![vec![]; nkv];
            self.values = vec![vec![]; nkv];
        }
        for t in 0..n {
            for h in 0..nkv {
                let at = (t * nkv + h) * hd;
                self.keys[h].extend_from_slice(&k[at..at + hd]);
                self.values[h].extend_from_slice(&v[at..at + hd]);
            }
        }
        let past = self.tokens;
        self.tokens += n;
        let group = s.heads / nkv;
        let mut out = vec![0f32; n * s.heads * hd];
        let mut scores = Vec::with_capacity(self.tokens);
        for t in 0..n {
            let pos = past + t;
            let first = s.window.map_or(0, |w| (pos + 1).saturating_sub(w));
            for h in 0..s.heads {
                let (keys, values) = (&self.keys[h / group], &self.values[h / group]);
                let query = &q[(t * s.heads + h) * hd..][..hd];
                scores.clear();
                scores.extend((first..=pos).map(|j| {
                    let z = dot(query, &keys[j * hd..(j + 1) * hd]) * s.scale;
                    s.softcap.map_or(z, |c| (z / c).tanh() * c)
                }));
                let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut total = 0f32;
                for x in scores.iter_mut() {
                    *x = (*x - max).exp();
                    total += *x;
                }
                let o = &mut out[(t * s.heads + h) * hd..][..hd];
                for (j, p) in (first..=pos).zip(&scores) {
                    let w = p / total;
                    for (o, v) in o.iter_mut().zip(&values[j * hd..(j + 1) * hd]) {
                        *o += w * v;
                    }
                }
            }
        }
        out
    }
}
