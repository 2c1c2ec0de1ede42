//! Causal attention in one op, with its backward: the `[seq, seq]` score and probability matrices
//! are never stored. Work runs in blocks of [`BLOCK`] queries of one row, for all the query heads
//! that share a key/value head at once (stacked head by head, so grouped-query attention reads
//! each key and value block once and runs one larger GEMM instead of one per head): the block's
//! scores against the keys it may see come from one GEMM, are scaled, masked, soft-capped and
//! normalised in place, and multiply the values in a second GEMM. Only each query's log-sum-exp
//! is kept for the backward pass, which recomputes the block's probabilities.
//!
//! Query `i` of a row sees keys `first[i]..=i` (its packed segment's start, or the sliding
//! window's). Layouts are the projections' own: `q` `[batch·seq, heads·head_dim]`, `k`/`v`
//! `[batch·seq, kv_heads·head_dim]` (any shape of that layout, such as `[batch, seq, heads,
//! head_dim]`), the output `[batch·seq, heads·head_dim]`. With a RoPE table the op rotates q and
//! k itself (and its gradients back), so the graph holds no reshapes or rotated copies.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{cpu_f32, lock, with_f32s, RopeTable};
use crate::kernels::gemm::{gemm, Dst, Mat};
use crate::kernels::lanes::{self, wide};
use crate::kernels::{dot, exp_shifted_in_place};

/// Queries per block.
const BLOCK: usize = 64;
/// Tasks the backward pass aims for (at least one per row and key/value head).
const BACKWARD_TASKS: usize = 16;

/// What a forward pass needs besides q, k, v.
#[derive(Debug, Clone)]
pub struct AttentionSpec {
    /// Rows (sequences) of the batch.
    pub batch: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (dividing `heads`).
    pub kv_heads: usize,
    /// Features per head.
    pub head_dim: usize,
    /// Rotates q and k first (tokens in `first`'s order).
    pub rope: Option<Arc<RopeTable>>,
    /// Multiplies q·k (before soft-capping).
    pub scale: f32,
    /// Gemma 2's `attn_logit_softcapping`: scores become `c·tanh(s/c)`.
    pub softcap: Option<f32>,
    /// Per token (`batch·seq`): the first key position of its row it may attend to
    /// (non-decreasing along a row).
    pub first: Arc<Vec<u32>>,
}

/// Attention of `q` over `k`, `v` (see the module docs for layouts and masking).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, spec: &AttentionSpec) -> Result<Tensor> {
    let op = Attention { spec: spec.clone(), lse: Mutex::new(None) };
    q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

struct Attention {
    spec: AttentionSpec,
    /// Log-sum-exp of every stacked query row, per block (in [`Dims::blocks`] order), from the
    /// forward pass.
    lse: Mutex<Option<Arc<Vec<Vec<f32>>>>>,
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

/// Queries `i0..i1` of row `b` for the query heads of key/value head `kvh`, against keys `lo..i1`.
#[derive(Debug, Clone, Copy)]
struct Block {
    b: usize,
    kvh: usize,
    i0: usize,
    i1: usize,
    lo: usize,
}

/// A block's log-sum-exp per stacked row: known (the backward pass normalises by it) or to be
/// found (the forward pass).
enum Lse<'a> {
    Known(&'a [f32]),
    Find(&'a mut [f32]),
}

impl Block {
    fn rows(&self) -> usize {
        self.i1 - self.i0
    }

    fn keys(&self) -> usize {
        self.i1 - self.lo
    }
}

impl Dims {
    /// The sizes of `spec`, checked against the element counts of q, k and v.
    fn of(spec: &AttentionSpec, q: usize, k: usize, v: usize) -> Result<Self> {
        let (b, nh, nkv, hd) = (spec.batch, spec.heads, spec.kv_heads, spec.head_dim);
        let t = spec.first.len().checked_div(b).unwrap_or(0);
        if b * t != spec.first.len() || nkv == 0 || nh % nkv != 0 || q != b * t * nh * hd || k != b * t * nkv * hd || v != k {
            candle_core::bail!(
                "attention: q, k, v of {q}, {k}, {v} values do not fit {b} rows of {} tokens, {nh} query and {nkv} key/value heads of {hd}",
                spec.first.len()
            );
        }
        Ok(Self { b, t, nh, nkv, hd })
    }

    /// Query heads per key/value head.
    fn group(&self) -> usize {
        self.nh / self.nkv
    }

    /// Offset of `x[b, i, h, 0]` in a `[b, t, heads, hd]` array.
    fn at(&self, heads: usize, b: usize, i: usize, h: usize) -> usize {
        ((b * self.t + i) * heads + h) * self.hd
    }

    /// Blocks per (row, key/value head).
    fn per_head(&self) -> usize {
        self.t.div_ceil(BLOCK)
    }

    /// Every block, by row, then key/value head, then position.
    fn blocks(&self, first: &[u32]) -> Vec<Block> {
        let mut all = Vec::with_capacity(self.b * self.nkv * self.per_head());
        for b in 0..self.b {
            for kvh in 0..self.nkv {
                for i0 in (0..self.t).step_by(BLOCK) {
                    let i1 = (i0 + BLOCK).min(self.t);
                    all.push(Block { b, kvh, i0, i1, lo: first[b * self.t + i0] as usize });
                }
            }
        }
        all
    }

    /// The block's rows of `x` (`[b, t, nh, hd]`) stacked head by head: `[group·rows, hd]`.
    fn stack(&self, x: &[f32], blk: &Block) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.group() * blk.rows() * self.hd);
        for h in blk.kvh * self.group()..(blk.kvh + 1) * self.group() {
            for i in blk.i0..blk.i1 {
                let at = self.at(self.nh, blk.b, i, h);
                out.extend_from_slice(&x[at..at + self.hd]);
            }
        }
        out
    }

    /// The block's keys or values: rows `lo..i1` of head `kvh` of `x` (`[b, t, nkv, hd]`).
    fn kv<'a>(&self, x: &'a [f32], blk: &Block) -> Mat<'a> {
        Mat { data: &x[self.at(self.nkv, blk.b, blk.lo, blk.kvh)..], rs: self.nkv * self.hd, cs: 1 }
    }

    /// Where stacked row `row` of block `blk` lives in a `[b, t, nh, hd]` array.
    fn stacked_at(&self, blk: &Block, row: usize) -> usize {
        let (g, r) = (row / blk.rows(), row % blk.rows());
        self.at(self.nh, blk.b, blk.i0 + r, blk.kvh * self.group() + g)
    }
}

impl Attention {
    /// The scores of the block's stacked queries `qs` against its keys `k`, turned into
    /// probabilities in `p` (`[group·rows, keys]`, masked entries 0), normalised by or finding
    /// each row's log-sum-exp. Returns the soft-capped scores' tanh values when soft-capping (for
    /// the backward pass), else nothing.
    fn probabilities(&self, d: &Dims, blk: &Block, (qs, k): (&[f32], &[f32]), p: &mut [f32], mut lse: Lse<'_>) -> Vec<f32> {
        let (rows, nk) = (blk.rows(), blk.keys());
        gemm(Dst::rows(p, nk).scaled(self.spec.scale), (d.group() * rows, nk, d.hd), Mat::rows(qs, d.hd), d.kv(k, blk).t());
        let first = &self.spec.first[blk.b * d.t..(blk.b + 1) * d.t];
        let mut tanhs = vec![];
        for (n, row) in p.chunks_exact_mut(nk).enumerate() {
            let i = blk.i0 + n % rows;
            let (from, to) = (first[i] as usize - blk.lo, i - blk.lo + 1);
            if let Some(c) = self.spec.softcap {
                row[from..to].iter_mut().for_each(|x| *x = (*x / c).tanh() * c);
                tanhs.extend(row[..to].iter().enumerate().map(|(j, x)| if j >= from { x / c } else { 0.0 }));
                tanhs.extend(std::iter::repeat_n(0.0, nk - to));
            }
            let keys = &mut row[from..to];
            match &mut lse {
                Lse::Known(l) => exp_shifted_in_place(keys, l[n]),
                Lse::Find(out) => out[n] = lanes::softmax(keys),
            }
            row[..from].fill(0.0);
            row[to..].fill(0.0);
        }
        tanhs
    }

    /// The key ranges must fit the shape and never move back along a row.
    fn check(&self, d: &Dims) -> Result<()> {
        let first = &self.spec.first;
        let fits = first.len() == d.b * d.t
            && first.iter().enumerate().all(|(n, &f)| f as usize <= n % d.t)
            && first.windows(2).enumerate().all(|(n, w)| (n + 1) % d.t == 0 || w[0] <= w[1]);
        if !fits {
            candle_core::bail!("attention: the key ranges do not fit [{}, {}] or move back along a row", d.b, d.t);
        }
        Ok(())
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "sft-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = Dims::of(&self.spec, l1.shape().elem_count(), l2.shape().elem_count(), l3.shape().elem_count())?;
        let (q, k, v) = (cpu_f32(s1, l1, self.name())?, cpu_f32(s2, l2, self.name())?, cpu_f32(s3, l3, self.name())?);
        self.check(&d)?;
        let rotated = self.rotated(&d, q, k)?;
        let (q, k) = rotated.as_ref().map_or((q, k), |(q, k)| (q.as_slice(), k.as_slice()));
        let blocks = d.blocks(&self.spec.first);
        // Per block: the stacked output `[group·rows, hd]` and log-sum-exp `[group·rows]`.
        // (`p` is scratch, reused by the blocks one thread runs.)
        let parts: Vec<(Vec<f32>, Vec<f32>)> = blocks
            .par_iter()
            .map_init(Vec::new, |p, blk| {
                let m = d.group() * blk.rows();
                p.resize(m * blk.keys(), 0.0);
                let (mut lse, mut out) = (vec![0f32; m], vec![0f32; m * d.hd]);
                self.probabilities(&d, blk, (&d.stack(q, blk), k), p, Lse::Find(&mut lse));
                gemm(Dst::rows(&mut out, d.hd), (m, d.hd, blk.keys()), Mat::rows(p, blk.keys()), d.kv(v, blk));
                (out, lse)
            })
            .collect();
        let mut y = vec![0f32; q.len()];
        unstack(&d, &blocks, &mut y, |n| &parts[n].0);
        *lock(&self.lse, "attention")? = Some(Arc::new(parts.into_iter().map(|(_, l)| l).collect()));
        Ok((CpuStorage::F32(y), Shape::from((d.b * d.t, d.nh * d.hd))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = Dims::of(&self.spec, q.elem_count(), k.elem_count(), v.elem_count())?;
        let lse = lock(&self.lse, "attention")?.clone();
        let Some(lse) = lse else { candle_core::bail!("attention: backward before forward") };
        let [dq, dk, dv] = with_f32s([q, k, v, out, grad], self.name(), |[q_, k_, v_, o_, g_]| {
            let rotated = self.rotated(&d, q_, k_)?;
            let (q_, k_) = rotated.as_ref().map_or((q_, k_), |(q, k)| (q.as_slice(), k.as_slice()));
            let [mut dq, mut dk, dv] = self.backward(&d, &lse, [q_, k_, v_, o_, g_])?;
            if let Some(table) = &self.spec.rope {
                // The gradients of the rotated q and k, rotated back.
                table.rotate(&mut dq, d.hd, true)?;
                table.rotate(&mut dk, d.hd, true)?;
            }
            Ok([dq, dk, dv])
        })?;
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), &Device::Cpu)?),
            Some(Tensor::from_vec(dk, k.shape(), &Device::Cpu)?),
            Some(Tensor::from_vec(dv, v.shape(), &Device::Cpu)?),
        ))
    }
}

impl Attention {
    /// q and k rotated by the RoPE table, if there is one.
    fn rotated(&self, d: &Dims, q: &[f32], k: &[f32]) -> Result<Option<(Vec<f32>, Vec<f32>)>> {
        let Some(table) = &self.spec.rope else { return Ok(None) };
        let (mut q, mut k) = (q.to_vec(), k.to_vec());
        table.rotate(&mut q, d.hd, false)?;
        table.rotate(&mut k, d.hd, false)?;
        Ok(Some((q, k)))
    }
}

/// Writes stacked per-block rows (`rows_of(block index)`) back into `y` (`[b, t, nh, hd]`), a
/// token per task.
fn unstack<'a>(d: &Dims, blocks: &[Block], y: &mut [f32], rows_of: impl Fn(usize) -> &'a [f32] + Sync) {
    y.par_chunks_mut(d.nh * d.hd).enumerate().for_each(|(token, yt)| {
        let (b, i) = (token / d.t, token % d.t);
        for (h, dst) in yt.chunks_exact_mut(d.hd).enumerate() {
            let n = (b * d.nkv + h / d.group()) * d.per_head() + i / BLOCK;
            let row = (h % d.group()) * blocks[n].rows() + i - blocks[n].i0;
            dst.copy_from_slice(&rows_of(n)[row * d.hd..(row + 1) * d.hd]);
        }
    });
}

impl Attention {
    /// dq, dk, dv from the (rotated) inputs, the output and its gradient (all `[b, t, heads,
    /// hd]`).
    fn backward(&self, d: &Dims, lse: &[Vec<f32>], [q_, k_, v_, o_, g_]: [&[f32]; 5]) -> Result<[Vec<f32>; 3]> {
        let blocks = d.blocks(&self.spec.first);
        if lse.len() != blocks.len() {
            candle_core::bail!("attention: backward of a different shape than the forward pass");
        }
        // Tasks: the blocks of a (row, key/value head) dealt round-robin into `split` parts, so
        // that there are enough tasks to share among threads; each part sums its own dk and dv.
        // The split depends on the shape only, so the sums are the same on any machine.
        let split = BACKWARD_TASKS.div_ceil(d.b * d.nkv).clamp(1, d.per_head());
        let tasks: Vec<(usize, usize)> = (0..d.b * d.nkv).flat_map(|head| (0..split).map(move |part| (head, part))).collect();
        type Part = (Vec<(usize, Vec<f32>)>, Vec<f32>, Vec<f32>);
        let parts: Vec<Part> = tasks
            .par_iter()
            .map(|&(head, part)| {
                let (mut dqs, mut dk, mut dv) = (vec![], vec![0f32; d.t * d.hd], vec![0f32; d.t * d.hd]);
                let (mut p, mut dp) = (vec![], vec![]);
                for n in (head * d.per_head() + part..(head + 1) * d.per_head()).step_by(split) {
                    let blk = &blocks[n];
                    let (m, nk) = (d.group() * blk.rows(), blk.keys());
                    let (qs, gs) = (d.stack(q_, blk), d.stack(g_, blk));
                    p.resize(m * nk, 0.0);
                    dp.resize(m * nk, 0.0);
                    let tanhs = self.probabilities(d, blk, (&qs, k_), &mut p, Lse::Known(&lse[n]));
                    // dP = dO · Vᵀ
                    gemm(Dst::rows(&mut dp, nk), (m, nk, d.hd), Mat::rows(&gs, d.hd), d.kv(v_, blk).t());
                    // dS = P ∘ (dP − rowsum(dO ∘ O)), through the soft-cap and the scale.
                    for r in 0..m {
                        let at = d.stacked_at(blk, r);
                        let delta = dot(&g_[at..at + d.hd], &o_[at..at + d.hd]);
                        let th = if tanhs.is_empty() { None } else { Some(&tanhs[r * nk..(r + 1) * nk]) };
                        score_grad(&mut dp[r * nk..(r + 1) * nk], &p[r * nk..(r + 1) * nk], delta, th, self.spec.scale);
                    }
                    // dQ = dS · K;  dK += dSᵀ · Q;  dV += Pᵀ · dO
                    let mut dq = vec![0f32; m * d.hd];
                    gemm(Dst::rows(&mut dq, d.hd), (m, d.hd, nk), Mat::rows(&dp, nk), d.kv(k_, blk));
                    dqs.push((n, dq));
                    let (lo, hi) = (blk.lo * d.hd, blk.i1 * d.hd);
                    gemm(Dst::rows(&mut dk[lo..hi], d.hd).add(), (nk, d.hd, m), Mat::rows(&dp, nk).t(), Mat::rows(&qs, d.hd));
                    gemm(Dst::rows(&mut dv[lo..hi], d.hd).add(), (nk, d.hd, m), Mat::rows(&p, nk).t(), Mat::rows(&gs, d.hd));
                }
                (dqs, dk, dv)
            })
            .collect();
        let mut by_block: Vec<&[f32]> = vec![&[]; blocks.len()];
        for (n, dq) in parts.iter().flat_map(|(dqs, _, _)| dqs) {
            by_block[*n] = dq;
        }
        let mut dq = vec![0f32; q_.len()];
        unstack(d, &blocks, &mut dq, |n| by_block[n]);
        // dk and dv back to `[b, t, nkv, hd]`, summed over the parts, a token per task.
        let (mut dk, mut dv) = (vec![0f32; k_.len()], vec![0f32; v_.len()]);
        let kv = d.nkv * d.hd;
        dk.par_chunks_mut(kv).zip(dv.par_chunks_mut(kv)).enumerate().for_each(|(token, (dkt, dvt))| {
            let (b, i) = (token / d.t, token % d.t);
            for (kvh, (dkh, dvh)) in dkt.chunks_exact_mut(d.hd).zip(dvt.chunks_exact_mut(d.hd)).enumerate() {
                for (_, pk, pv) in &parts[(b * d.nkv + kvh) * split..][..split] {
                    dkh.iter_mut().zip(&pk[i * d.hd..(i + 1) * d.hd]).for_each(|(x, y)| *x += y);
                    dvh.iter_mut().zip(&pv[i * d.hd..(i + 1) * d.hd]).for_each(|(x, y)| *x += y);
                }
            }
        });
        Ok([dq, dk, dv])
    }
}

/// `dp ← scale · p ∘ (dp − delta)`, times `1 − tanh²` of the soft-capped scores if given.
fn score_grad(dp: &mut [f32], p: &[f32], delta: f32, tanhs: Option<&[f32]>, scale: f32) {
    match tanhs {
        None => wide(|| dp.iter_mut().zip(p).for_each(|(d, &p)| *d = p * (*d - delta) * scale)),
        Some(th) => wide(|| dp.iter_mut().zip(p.iter().zip(th)).for_each(|(d, (&p, &t))| *d = p * (*d - delta) * (1.0 - t * t) * scale)),
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

    /// Two rows of `t` tokens: row 0 packs segments [0, 30) and [30, t), row 1 has a sliding
    /// window of 20; `heads` are (query, key/value, dim); positions restart with each segment;
    /// cos and sin of the RoPE scaled by 1.2.
    fn spec(softcap: Option<f32>, t: usize, (heads, kv_heads, head_dim): (usize, usize, usize), rope: bool) -> AttentionSpec {
        let mut first = vec![];
        for i in 0..t {
            first.push(if i < 30.min(t) { 0 } else { 30 });
        }
        for i in 0..t {
            first.push((i + 1).saturating_sub(20) as u32);
        }
        let positions: Vec<u32> =
            first.iter().enumerate().map(|(n, &f)| if n < t { (n - f as usize) as u32 } else { (n - t) as u32 }).collect();
        let inv_freq: Vec<f32> = (0..head_dim / 2).map(|i| 0.5f32.powi(i as i32)).collect();
        // Scaled like YaRN's cos and sin, which the backward's inverse rotation must carry too.
        let scaled = crate::config::Rope { inv_freq, attention_scaling: 1.2, length: crate::config::LengthScaling::Fixed };
        let rope = rope.then(|| Arc::new(RopeTable::forward(&positions, &scaled)));
        AttentionSpec { batch: 2, heads, kv_heads, head_dim, rope, scale: 0.3, softcap, first: Arc::new(first) }
    }

    /// The reference: RoPE as its own op, then the composed attention, flattened like ours.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, s: &AttentionSpec) -> Result<Tensor> {
        let (q, k) = match &s.rope {
            Some(table) => (crate::ops::rope(q, table)?, crate::ops::rope(k, table)?),
            None => (q.clone(), k.clone()),
        };
        let (b, t, nh, hd) = q.dims4()?;
        composed(&q, &k, v, s)?.reshape((b * t, nh * hd))
    }

    #[test]
    fn equals_the_composed_attention_and_its_gradients() -> Result<()> {
        for (softcap, rope) in [(None, false), (Some(2.0), false), (None, true)] {
            let s = spec(softcap, 70, (4, 2, 8), rope);
            let vars = [random(&[2, 70, 4, 8], 1)?, random(&[2, 70, 2, 8], 2)?, random(&[2, 70, 2, 8], 3)?]
                .map(|t| candle_core::Var::from_tensor(&(t * 3.0).unwrap()).unwrap());
            let [q, k, v] = [0, 1, 2].map(|i| vars[i].as_tensor().clone());
            let ours = attention(&q, &k, &v, &s)?;
            let theirs = reference(&q, &k, &v, &s)?;
            let diff = (&ours - &theirs)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-5, "{softcap:?}, rope {rope}: forward differs by {diff}");
            let g1 = weighted_sum(&ours, 5)?.backward()?;
            let g2 = weighted_sum(&theirs, 5)?.backward()?;
            for (name, x) in [("q", &q), ("k", &k), ("v", &v)] {
                let (a, b) = (g1.get(x).expect("ours"), g2.get(x).expect("theirs"));
                assert_eq!(a.dims(), x.dims(), "d{name} has its input's shape");
                let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(diff < 1e-5, "{softcap:?}, rope {rope}: d{name} differs by {diff}");
            }
        }
        Ok(())
    }

    #[test]
    fn takes_flat_inputs_and_refuses_ones_that_do_not_fit() -> Result<()> {
        let s = spec(None, 70, (4, 2, 8), true);
        let [q, k, v] = [random(&[2, 70, 4, 8], 1)?, random(&[2, 70, 2, 8], 2)?, random(&[2, 70, 2, 8], 3)?];
        let flat = attention(&q.reshape((140, 32))?, &k.reshape((140, 16))?, &v.reshape((140, 16))?, &s)?;
        assert_eq!(flat.dims(), [140, 32]);
        assert_eq!(flat.to_vec2::<f32>()?, attention(&q, &k, &v, &s)?.to_vec2::<f32>()?);
        assert!(attention(&q, &q, &v, &s).is_err(), "k with the query heads' size");
        let backwards = AttentionSpec { first: Arc::new((0..140).map(|n| if n == 50 { 0 } else { (n % 70) as u32 / 2 }).collect()), ..s };
        assert!(attention(&q, &k, &v, &backwards).is_err(), "key ranges that move back");
        Ok(())
    }

    #[test]
    fn gradient_check() -> Result<()> {
        for (softcap, rope) in [(None, false), (Some(1.5), false), (None, true)] {
            let s = spec(softcap, 9, (2, 1, 4), rope);
            let inputs = [random(&[2, 9, 2, 4], 1)?, random(&[2, 9, 1, 4], 2)?, random(&[2, 9, 1, 4], 3)?];
            check(&inputs, |t| weighted_sum(&attention(&t[0], &t[1], &t[2], &s)?, 4), 2e-2)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod speed {
    use super::*;
    use crate::ops::gradcheck::random;

    /// Times the forward and backward passes at the benchmark's shape (SmolLM2-135M: 9 query
    /// heads, 3 key/value heads of 64; 2 rows of 512, causal), alternating with nothing else
    /// (release build: `cargo test --release -p sft-model --lib attention::speed -- --ignored
    /// --nocapture`).
    #[test]
    #[ignore]
    fn speed() -> Result<()> {
        crate::runtime::keep_freed_memory();
        let (b, t) = (2, 512);
        let positions: Vec<u32> = (0..b * t).map(|n| (n % t) as u32).collect();
        let inv_freq: Vec<f32> = (0..32).map(|i| 10000f32.powf(-(i as f32) / 32.0)).collect();
        let rope = Some(Arc::new(RopeTable::new(&positions, &inv_freq)));
        let spec = AttentionSpec {
            batch: b,
            heads: 9,
            kv_heads: 3,
            head_dim: 64,
            rope,
            scale: 0.125,
            softcap: None,
            first: Arc::new(vec![0; b * t]),
        };
        let vars = [random(&[b, t, 9, 64], 1)?, random(&[b, t, 3, 64], 2)?, random(&[b, t, 3, 64], 3)?]
            .map(|x| candle_core::Var::from_tensor(&x).expect("var"));
        let [q, k, v] = [0, 1, 2].map(|i| vars[i].as_tensor().clone());
        let g = random(&[b * t, 9 * 64], 4)?;
        let (mut fwd, mut bwd) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..30 {
            let start = std::time::Instant::now();
            let y = attention(&q, &k, &v, &spec)?;
            fwd = fwd.min(start.elapsed().as_secs_f64());
            let start = std::time::Instant::now();
            let _ = (y * &g)?.sum_all()?.backward()?;
            bwd = bwd.min(start.elapsed().as_secs_f64());
        }
        eprintln!("attention [2, 512, 9/3, 64]: forward {:.2} ms, backward {:.2} ms (fastest of 30)", fwd * 1e3, bwd * 1e3);
        Ok(())
    }
}
