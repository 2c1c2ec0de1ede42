//! Rotary position embedding in transformers' `rotate_half` layout: within the first
//! `rotary_dim` features of a head, feature `i` pairs with `i + rotary_dim/2`; the rest pass
//! through (Phi's `partial_rotary_factor`). Angles come per token, so packed rows whose
//! positions restart at 0 rotate exactly like separate rows. cos and sin carry the RoPE's
//! `attention_scaling` (YaRN, LongRoPE), as transformers' rotary embeddings return them: the
//! rotated features are scaled by it, the passed-through ones are not.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{cpu_f32, with_f32};
use crate::config::Rope;

/// cos and sin of every token's angles: `tokens × rotary_dim/2` each.
#[derive(Debug, Clone)]
pub struct RopeTable {
    cos: Vec<f32>,
    sin: Vec<f32>,
    half: usize,
}

impl RopeTable {
    /// Angles `position · inv_freq[i]` for every token's position, as transformers computes
    /// them (f32 products), unscaled.
    pub fn new(positions: &[u32], inv_freq: &[f32]) -> Self {
        let mut table = Self::empty(positions.len(), inv_freq.len());
        positions.iter().for_each(|&p| table.push(p, inv_freq, 1.0));
        table
    }

    /// The tokens of one forward pass at `positions` (a batch's, packed or not): frequencies
    /// for a sequence of `max(positions) + 1` tokens, as transformers' `dynamic_rope_update`
    /// picks them from `position_ids`, and the RoPE's attention scaling.
    pub fn forward(positions: &[u32], rope: &Rope) -> Self {
        let len = positions.iter().max().map_or(0, |&p| p as usize + 1);
        let inv_freq = rope.inv_freq_at(len);
        let mut table = Self::empty(positions.len(), inv_freq.len());
        positions.iter().for_each(|&p| table.push(p, &inv_freq, rope.attention_scaling));
        table
    }

    /// Tokens that are each the newest of a different sequence (a decoding step of several
    /// sequences): the token at position `p` gets the frequencies of a sequence of `p + 1`
    /// tokens, what a step of its sequence alone gives.
    pub fn newest(positions: &[u32], rope: &Rope) -> Self {
        let mut table = Self::empty(positions.len(), rope.inv_freq.len());
        positions.iter().for_each(|&p| table.push(p, &rope.inv_freq_at(p as usize + 1), rope.attention_scaling));
        table
    }

    fn empty(tokens: usize, half: usize) -> Self {
        Self { cos: Vec::with_capacity(tokens * half), sin: Vec::with_capacity(tokens * half), half }
    }

    /// One token's cos and sin, times `scale` (in f32 after the cos, as transformers does).
    fn push(&mut self, position: u32, inv_freq: &[f32], scale: f32) {
        for &f in inv_freq {
            let angle = position as f32 * f;
            self.cos.push(angle.cos() * scale);
            self.sin.push(angle.sin() * scale);
        }
    }

    /// How many tokens it covers.
    pub fn tokens(&self) -> usize {
        self.cos.len().checked_div(self.half).unwrap_or(0)
    }

    /// Rotates `x` in place: the table's tokens one after the other, each some heads of
    /// `head_dim` features; `inverse` rotates by the negative angles (a rotation's transpose, for
    /// backward passes; a scaled rotation's transpose is the scaled inverse rotation).
    pub(crate) fn rotate(&self, x: &mut [f32], head_dim: usize, inverse: bool) -> Result<()> {
        let (half, tokens) = (self.half, self.tokens());
        if x.is_empty() && tokens == 0 {
            return Ok(());
        }
        if 2 * half > head_dim || tokens == 0 || !x.len().is_multiple_of(tokens * head_dim) {
            candle_core::bail!("rope: table for {tokens} tokens × {half} angles does not fit {} values of heads of {head_dim}", x.len());
        }
        let sign = if inverse { -1.0 } else { 1.0 };
        x.par_chunks_mut(x.len() / tokens).enumerate().for_each(|(token, xt)| {
            let cos = &self.cos[token * half..(token + 1) * half];
            let sin = &self.sin[token * half..(token + 1) * half];
            for head in xt.chunks_mut(head_dim) {
                for i in 0..half {
                    let (a, b) = (head[i], head[i + half]);
                    let s = sign * sin[i];
                    head[i] = a * cos[i] - b * s;
                    head[i + half] = b * cos[i] + a * s;
                }
            }
        });
        Ok(())
    }
}

/// Rotates `x` of shape `[batch, seq, heads, head_dim]` (tokens in the table's order).
pub fn rope(x: &Tensor, table: &Arc<RopeTable>) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Rotate { table: table.clone(), inverse: false })
}

struct Rotate {
    table: Arc<RopeTable>,
    /// Rotate by the negative angle (the backward pass: a rotation's transpose).
    inverse: bool,
}

impl Rotate {
    fn apply(&self, x: &[f32], dims: &[usize]) -> Result<Vec<f32>> {
        let &[b, t, _, d] = dims else {
            candle_core::bail!("rope: expects [batch, seq, heads, head_dim], got {dims:?}");
        };
        if self.table.tokens() != b * t {
            candle_core::bail!("rope: table for {} tokens does not fit {dims:?}", self.table.tokens());
        }
        let mut y = x.to_vec();
        self.table.rotate(&mut y, d, self.inverse)?;
        Ok(y)
    }
}

impl CustomOp1 for Rotate {
    fn name(&self) -> &'static str {
        "sft-rope"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_f32(storage, layout, self.name())?;
        Ok((CpuStorage::F32(self.apply(x, layout.dims())?), layout.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let inverse = Rotate { table: self.table.clone(), inverse: !self.inverse };
        let dx = with_f32(grad, self.name(), |g| inverse.apply(g, grad.dims()))?;
        Ok(Some(Tensor::from_vec(dx, grad.shape(), grad.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LengthScaling;
    use crate::ops::gradcheck::{check, random, weighted_sum};

    /// transformers' formula, composed: x·cos + rotate_half(x)·sin on the rotary part, cos and
    /// sin times `scale`.
    fn composed(x: &Tensor, positions: &[u32], inv_freq: &[f32], scale: f32) -> Result<Tensor> {
        let (b, t, h, d) = x.dims4()?;
        let half = inv_freq.len();
        let mut cos = vec![];
        let mut sin = vec![];
        for &p in positions {
            for k in 0..2 * half {
                let angle = p as f32 * inv_freq[k % half];
                cos.push(angle.cos() * scale);
                sin.push(angle.sin() * scale);
            }
        }
        let cos = Tensor::from_vec(cos, (b, t, 1, 2 * half), x.device())?;
        let sin = Tensor::from_vec(sin, (b, t, 1, 2 * half), x.device())?;
        let rot = x.narrow(3, 0, 2 * half)?;
        let pass = x.narrow(3, 2 * half, d - 2 * half)?;
        let x1 = rot.narrow(3, 0, half)?;
        let x2 = rot.narrow(3, half, half)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], 3)?;
        let out = (rot.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?)?;
        let _ = h;
        Tensor::cat(&[&out, &pass], 3)
    }

    #[test]
    fn forward_matches_rotate_half() -> Result<()> {
        let x = random(&[2, 3, 2, 8], 5)?;
        let positions = [0, 1, 2, 0, 1, 7];
        for inv_freq in [vec![1.0, 0.1, 0.01, 0.001], vec![0.5, 0.05]] {
            let table = Arc::new(RopeTable::new(&positions, &inv_freq));
            let ours = rope(&x, &table)?;
            let theirs = composed(&x, &positions, &inv_freq, 1.0)?;
            let diff = (ours - theirs)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-6, "{inv_freq:?}: {diff}");
        }
        Ok(())
    }

    fn long_rope() -> Rope {
        Rope {
            inv_freq: vec![0.5, 0.05],
            attention_scaling: 1.3,
            length: LengthScaling::LongRope { original_max_position_embeddings: 4, long_inv_freq: vec![0.25, 0.01] },
        }
    }

    /// The attention scaling multiplies the rotated features only; the frequencies follow
    /// the forward's longest sequence, or each token's own sequence for `newest`.
    #[test]
    fn scaled_tables_match_rotate_half_times_the_scaling() -> Result<()> {
        let x = random(&[1, 3, 2, 6], 7)?;
        let rope_ = long_rope();
        let cases: [(&[u32], RopeTable, &[f32]); 3] = [
            (&[0, 1, 2], RopeTable::forward(&[0, 1, 2], &rope_), &[0.5, 0.05]),
            (&[2, 3, 4], RopeTable::forward(&[2, 3, 4], &rope_), &[0.25, 0.01]),
            (&[1, 2, 3], RopeTable::newest(&[1, 2, 3], &rope_), &[0.5, 0.05]),
        ];
        for (positions, table, inv_freq) in cases {
            let ours = rope(&x, &Arc::new(table))?;
            let theirs = composed(&x, positions, inv_freq, 1.3)?;
            let diff = (ours - theirs)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-6, "{positions:?}: {diff}");
        }
        // newest: the token at position 4 is a sequence of 5 > 4 tokens, the others are not.
        let mixed = RopeTable::newest(&[4, 0], &rope_);
        let long = RopeTable::forward(&[4], &rope_);
        assert_eq!(mixed.cos[..2], long.cos[..]);
        assert_eq!(mixed.cos[2..], [1.3, 1.3]);
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let table = Arc::new(RopeTable::new(&[3, 0, 1, 2], &[0.9, 0.3]));
        let x = random(&[1, 4, 2, 6], 6)?;
        check(std::slice::from_ref(&x), |t| weighted_sum(&rope(&t[0], &table)?, 11), 2e-3)?;
        let scaled = Arc::new(RopeTable::forward(&[3, 4, 1, 2], &long_rope()));
        check(&[x], |t| weighted_sum(&rope(&t[0], &scaled)?, 12), 2e-3)
    }
}
