//! Causal attention in one op, with its backward: the `[seq, seq]` score and probability matrices
//! are never stored. Work runs per (row, query head) in blocks of [`BLOCK`] queries: the block's
//! scores against the keys it may see come from one small GEMM, are masked, scaled, soft-capped
//! and normalised in place, and multiply the values in a second GEMM. Only each query's
//! log-sum-exp is kept for the backward pass, which recomputes the block's probabilities.
//!
//! Query `i` of a row sees keys `first[i]..=i` (its packed segment's start, or the sliding
//! window's); grouped-query heads read their key/value head directly. Layouts are the
//! projections' own: `q` `[batch, seq, heads, head_dim]`, `k`/`v` `[batch, seq, kv_heads,
//! head_dim]`, output like `q`.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::gemm::{gemm, Dst, Mat};
use super::{cpu_f32, exp_in_place, lock, with_f32s};

/// Queries per block.
const BLOCK: usize = 64;

/// What a forward pass needs besides q, k, v.
#[derive(Debug, Clone)]
pub struct AttentionSpec {
    /// Multiplies q·k (before soft-capping).
    pub scale: f32,
    /// Gemma 2's `attn_logit_softcapping`: scores become `c·tanh(s/c)`.
    pub softcap: Option<f32>,
    /// Per token (`batch·seq`): the first key position of its row it may attend to.
    pub first: Arc<Vec<u32>>,
}

/// Attention of `q` over `k`, `v` (see the module docs for layouts and masking).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, spec: &AttentionSpec) -> Result<Tensor> {
    let op = Attention { spec: spec.clone(), lse: Mutex::new(None) };
    q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

struct Attention {
    spec: AttentionSpec,
    /// Log-sum-exp of every query's scores, `[batch, heads, seq]`, from the forward pass.
    lse: Mutex<Option<Arc<Vec<f32>>>>,
}

/// Sizes of one call.
#[derive(Debug, Clone, Copy)]
struct Dims {
    b: usize,
    t: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
}

impl Dims {
    fn of(q: &[usize], k: &[usize], v: &[usize]) -> Result<Self> {
        let (&[b, t, nh, hd], &[kb, kt, nkv, khd]) = (q, k) else {
            candle_core::bail!("attention: expects q [b, t, heads, d] and k [b, t, kv_heads, d], got {q:?} and {k:?}");
        };
        if (kb, kt, khd) != (b, t, hd) || k != v || nkv == 0 || nh % nkv != 0 {
            candle_core::bail!("attention: q {q:?}, k {k:?} and v {v:?} do not fit together");
        }
        Ok(Self { b, t, nh, nkv, hd })
    }

    /// Offset of `x[b, i, h, 0]` in a `[b, t, heads, hd]` array.
    fn at(&self, heads: usize, b: usize, i: usize, h: usize) -> usize {
        ((b * self.t + i) * heads + h) * self.hd
    }
}

impl Attention {
    /// Scores of queries `i0..i1` of row `b`, head `h` against keys `lo..i1`, turned into
    /// probabilities in place (masked entries 0). With `lse` given they are normalised by it;
    /// otherwise each row's log-sum-exp is written into `lse_out`. Returns the soft-capped
    /// scores' tanh values when soft-capping (for the backward pass).
    #[allow(clippy::too_many_arguments)]
    fn probabilities(&self, d: &Dims, q: &[f32], k: &[f32], (b, h): (usize, usize), (i0, i1, lo): (usize, usize, usize), p: &mut [f32], lse: Option<&[f32]>, lse_out: &mut [f32]) -> Vec<f32> {
        let nk = i1 - lo;
        let kvh = h / (d.nh / d.nkv);
        let qm = Mat { data: &q[d.at(d.nh, b, i0, h)..], rs: d.nh * d.hd, cs: 1 };
        let km = Mat { data: &k[d.at(d.nkv, b, lo, kvh)..], rs: 1, cs: d.nkv * d.hd };
        gemm(Dst::rows(p, nk), (i1 - i0, nk, d.hd), qm, km);
        let first = &self.spec.first[b * d.t..(b + 1) * d.t];
        let mut tanhs = vec![];
        for (r, row) in p.chunks_exact_mut(nk).enumerate() {
            let i = i0 + r;
            let (from, to) = (first[i] as usize - lo, i - lo + 1);
            for x in row[from..to].iter_mut() {
                *x *= self.spec.scale;
                if let Some(c) = self.spec.softcap {
                    *x = (*x / c).tanh() * c;
                }
            }
            if let Some(c) = self.spec.softcap {
                tanhs.extend(row[..to].iter().enumerate().map(|(j, x)| if j >= from { x / c } else { 0.0 }));
                tanhs.extend(std::iter::repeat_n(0.0, nk - to));
            }
            let keys = &mut row[from..to];
            match lse {
                Some(l) => {
                    keys.iter_mut().for_each(|x| *x -= l[r]);
                    exp_in_place(keys);
                }
                None => {
                    let max = keys.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    keys.iter_mut().for_each(|x| *x -= max);
                    exp_in_place(keys);
                    let sum: f32 = keys.iter().sum();
                    let inv = 1.0 / sum;
                    keys.iter_mut().for_each(|x| *x *= inv);
                    lse_out[r] = max + sum.ln();
                }
            }
            row[..from].fill(0.0);
            row[to..].fill(0.0);
        }
        tanhs
    }

    fn blocks(&self, d: &Dims, b: usize) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        let t = d.t;
        (0..t).step_by(BLOCK).map(move |i0| {
            let i1 = (i0 + BLOCK).min(t);
            (i0, i1, self.spec.first[b * t + i0] as usize)
        })
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "sft-attention"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = Dims::of(l1.dims(), l2.dims(), l3.dims())?;
        let (q, k, v) = (cpu_f32(s1, l1, self.name())?, cpu_f32(s2, l2, self.name())?, cpu_f32(s3, l3, self.name())?);
        if self.spec.first.len() != d.b * d.t || self.spec.first.iter().enumerate().any(|(n, &f)| f as usize > n % d.t) {
            candle_core::bail!("attention: the key ranges do not fit [{}, {}]", d.b, d.t);
        }
        // Per (row, head): output `[t, hd]` and log-sum-exp `[t]`.
        let parts: Vec<(Vec<f32>, Vec<f32>)> = (0..d.b * d.nh)
            .into_par_iter()
            .map(|task| {
                let (b, h) = (task / d.nh, task % d.nh);
                let kvh = h / (d.nh / d.nkv);
                let mut out = vec![0f32; d.t * d.hd];
                let mut lse = vec![0f32; d.t];
                let mut p = vec![];
                for (i0, i1, lo) in self.blocks(&d, b) {
                    let nk = i1 - lo;
                    p.resize((i1 - i0) * nk, 0.0);
                    self.probabilities(&d, q, k, (b, h), (i0, i1, lo), &mut p, None, &mut lse[i0..i1]);
                    let vm = Mat { data: &v[d.at(d.nkv, b, lo, kvh)..], rs: d.nkv * d.hd, cs: 1 };
                    gemm(Dst::rows(&mut out[i0 * d.hd..i1 * d.hd], d.hd), (i1 - i0, d.hd, nk), Mat::rows(&p, nk), vm);
                }
                (out, lse)
            })
            .collect();
        let mut y = vec![0f32; d.b * d.t * d.nh * d.hd];
        let mut lse = vec![0f32; d.b * d.nh * d.t];
        for (task, (out, l)) in parts.into_iter().enumerate() {
            let (b, h) = (task / d.nh, task % d.nh);
            for i in 0..d.t {
                let at = d.at(d.nh, b, i, h);
                y[at..at + d.hd].copy_from_slice(&out[i * d.hd..(i + 1) * d.hd]);
            }
            lse[task * d.t..(task + 1) * d.t].copy_from_slice(&l);
        }
        *lock(&self.lse, "attention")? = Some(Arc::new(lse));
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(&self, q: &Tensor, k: &Tensor, v: &Tensor, out: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = Dims::of(q.dims(), k.dims(), v.dims())?;
        let lse = lock(&self.lse, "attention")?.clone();
        let Some(lse) = lse else { candle_core::bail!("attention: backward before forward") };
        with_f32s([q, k, v, out, grad], self.name(), |[q_, k_, v_, o_, g_]| self.backward(&d, &lse, [q_, k_, v_, o_, g_]))
    }
}

impl Attention {
    /// dq, dk, dv from the inputs, the output and its gradient (all `[b, t, heads, hd]`).
    fn backward(&self, d: &Dims, lse: &[f32], [q_, k_, v_, o_, g_]: [&[f32]; 5]) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let group = d.nh / d.nkv;
        // Per (row, query head): dq, dk, dv, each `[t, hd]`.
        let parts: Vec<[Vec<f32>; 3]> = (0..d.b * d.nh)
            .into_par_iter()
            .map(|task| {
                let (b, h) = (task / d.nh, task % d.nh);
                let kvh = h / group;
                let (mut dq, mut dk, mut dv) = (vec![0f32; d.t * d.hd], vec![0f32; d.t * d.hd], vec![0f32; d.t * d.hd]);
                let lse = &lse[task * d.t..(task + 1) * d.t];
                let (mut p, mut dp) = (vec![], vec![]);
                let mut unused = vec![0f32; BLOCK];
                for (i0, i1, lo) in self.blocks(&d, b) {
                    let (rows, nk) = (i1 - i0, i1 - lo);
                    p.resize(rows * nk, 0.0);
                    dp.resize(rows * nk, 0.0);
                    let tanhs = self.probabilities(&d, &q_, &k_, (b, h), (i0, i1, lo), &mut p, Some(&lse[i0..i1]), &mut unused);
                    let gm = || Mat { data: &g_[d.at(d.nh, b, i0, h)..], rs: d.nh * d.hd, cs: 1 };
                    // dP = dO · Vᵀ
                    gemm(Dst::rows(&mut dp, nk), (rows, nk, d.hd), gm(), Mat { data: &v_[d.at(d.nkv, b, lo, kvh)..], rs: 1, cs: d.nkv * d.hd });
                    // dS = P ∘ (dP − rowsum(dO ∘ O)), through the soft-cap and the scale.
                    for r in 0..rows {
                        let at = d.at(d.nh, b, i0 + r, h);
                        let delta: f32 = g_[at..at + d.hd].iter().zip(&o_[at..at + d.hd]).map(|(a, b)| a * b).sum();
                        for j in 0..nk {
                            let n = r * nk + j;
                            let mut ds = p[n] * (dp[n] - delta);
                            if let Some(th) = tanhs.get(n) {
                                ds *= 1.0 - th * th;
                            }
                            dp[n] = ds * self.spec.scale;
                        }
                    }
                    let dsm = || Mat { data: &dp, rs: nk, cs: 1 };
                    // dQ = dS · K;  dK += dSᵀ · Q;  dV += Pᵀ · dO
                    gemm(Dst::rows(&mut dq[i0 * d.hd..i1 * d.hd], d.hd), (rows, d.hd, nk), dsm(), Mat { data: &k_[d.at(d.nkv, b, lo, kvh)..], rs: d.nkv * d.hd, cs: 1 });
                    let qm = Mat { data: &q_[d.at(d.nh, b, i0, h)..], rs: d.nh * d.hd, cs: 1 };
                    gemm(Dst::rows(&mut dk[lo * d.hd..i1 * d.hd], d.hd).add(), (nk, d.hd, rows), Mat::rows(&dp, nk).t(), qm);
                    gemm(Dst::rows(&mut dv[lo * d.hd..i1 * d.hd], d.hd).add(), (nk, d.hd, rows), Mat::rows(&p, nk).t(), gm());
                }
                [dq, dk, dv]
            })
            .collect();
        let mut dq = vec![0f32; q_.len()];
        let (mut dk, mut dv) = (vec![0f32; k_.len()], vec![0f32; v_.len()]);
        for (task, [pq, pk, pv]) in parts.into_iter().enumerate() {
            let (b, h) = (task / d.nh, task % d.nh);
            for i in 0..d.t {
                let (at, kat, src) = (d.at(d.nh, b, i, h), d.at(d.nkv, b, i, h / group), i * d.hd);
                dq[at..at + d.hd].copy_from_slice(&pq[src..src + d.hd]);
                for (x, y) in dk[kat..kat + d.hd].iter_mut().zip(&pk[src..src + d.hd]) {
                    *x += y;
                }
                for (x, y) in dv[kat..kat + d.hd].iter_mut().zip(&pv[src..src + d.hd]) {
                    *x += y;
                }
            }
        }
        let (q_shape, kv_shape) = ((d.b, d.t, d.nh, d.hd), (d.b, d.t, d.nkv, d.hd));
        Ok((
            Some(Tensor::from_vec(dq, q_shape, &Device::Cpu)?),
            Some(Tensor::from_vec(dk, kv_shape, &Device::Cpu)?),
            Some(Tensor::from_vec(dv, kv_shape, &Device::Cpu)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{check, random, weighted_sum};
    use crate::ops::softmax_last_dim;

    /// Attention through plain tensor ops with an additive mask, as the reference.
    fn composed(q: &Tensor, k: &Tensor, v: &Tensor, spec: &AttentionSpec) -> Result<Tensor> {
        let (b, t, nh, hd) = q.dims4()?;
        let nkv = k.dim(2)?;
        let rep = |x: &Tensor| -> Result<Tensor> {
            let x = x.transpose(1, 2)?.contiguous()?; // [b, nkv, t, hd]
            x.unsqueeze(2)?.broadcast_as((b, nkv, nh / nkv, t, hd))?.reshape((b, nh, t, hd))
        };
        let qh = q.transpose(1, 2)?.contiguous()?;
        let mut s = (qh.matmul(&rep(k)?.t()?)? * spec.scale as f64)?;
        if let Some(c) = spec.softcap {
            s = ((s / c as f64)?.tanh()? * c as f64)?;
        }
        let mut mask = vec![f32::NEG_INFINITY; b * t * t];
        for row in 0..b {
            for i in 0..t {
                for j in spec.first[row * t + i] as usize..=i {
                    mask[(row * t + i) * t + j] = 0.0;
                }
            }
        }
        let mask = Tensor::from_vec(mask, (b, 1, t, t), q.device())?;
        let p = softmax_last_dim(&s.broadcast_add(&mask)?)?;
        p.matmul(&rep(v)?)?.transpose(1, 2)?.contiguous()
    }

    /// Two rows of 70 tokens (two blocks and a tail): row 0 packs segments [0, 30) and [30, 70),
    /// row 1 has a sliding window of 20.
    fn spec(softcap: Option<f32>, t: usize) -> AttentionSpec {
        let mut first = vec![];
        for i in 0..t {
            first.push(if i < 30.min(t) { 0 } else { 30 });
        }
        for i in 0..t {
            first.push((i + 1).saturating_sub(20) as u32);
        }
        AttentionSpec { scale: 0.3, softcap, first: Arc::new(first) }
    }

    #[test]
    fn equals_the_composed_attention_and_its_gradients() -> Result<()> {
        for softcap in [None, Some(2.0)] {
            let s = spec(softcap, 70);
            let vars = [random(&[2, 70, 4, 8], 1)?, random(&[2, 70, 2, 8], 2)?, random(&[2, 70, 2, 8], 3)?]
                .map(|t| candle_core::Var::from_tensor(&(t * 3.0).unwrap()).unwrap());
            let [q, k, v] = [0, 1, 2].map(|i| vars[i].as_tensor().clone());
            let ours = attention(&q, &k, &v, &s)?;
            let theirs = composed(&q, &k, &v, &s)?;
            let diff = (&ours - &theirs)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-5, "{softcap:?}: forward differs by {diff}");
            let g1 = weighted_sum(&ours, 5)?.backward()?;
            let g2 = weighted_sum(&theirs, 5)?.backward()?;
            for (name, x) in [("q", &q), ("k", &k), ("v", &v)] {
                let (a, b) = (g1.get(x).expect("ours"), g2.get(x).expect("theirs"));
                let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(diff < 1e-5, "{softcap:?}: d{name} differs by {diff}");
            }
        }
        Ok(())
    }

    #[test]
    fn gradient_check() -> Result<()> {
        for softcap in [None, Some(1.5)] {
            let s = spec(softcap, 9);
            let inputs = [random(&[2, 9, 2, 3], 1)?, random(&[2, 9, 1, 3], 2)?, random(&[2, 9, 1, 3], 3)?];
            check(&inputs, |t| weighted_sum(&attention(&t[0], &t[1], &t[2], &s)?, 4), 2e-2)?;
        }
        Ok(())
    }
}
