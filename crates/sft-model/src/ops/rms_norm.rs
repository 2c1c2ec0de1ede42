//! RMSNorm over the last dimension: `y = x / sqrt(mean(x²) + eps) · (w + offset)`, with
//! `offset` 0 (Llama) or 1 (Gemma's `1 + weight`). Statistics in f32, as transformers does.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{cpu_f32, with_f32s};
use crate::kernels::dot;
use crate::kernels::lanes::wide;

/// `rms_norm(x, weight, eps, offset)`; `x` is `[.., d]`, `weight` is `[d]`.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64, offset: f32) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&weight.contiguous()?, RmsNorm { eps: eps as f32, offset })
}

/// Rows per block of the weight-gradient reduction.
const ROWS_PER_BLOCK: usize = 64;

struct RmsNorm {
    eps: f32,
    offset: f32,
}

fn inv_rms(row: &[f32], eps: f32) -> f32 {
    let ms = dot(row, row) / row.len() as f32;
    1.0 / (ms + eps).sqrt()
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "sft-rms-norm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_f32(s1, l1, self.name())?;
        let w = cpu_f32(s2, l2, self.name())?;
        let d = w.len();
        if l1.dims().last() != Some(&d) {
            candle_core::bail!("rms_norm: input {:?} does not end in the weight's size {d}", l1.dims());
        }
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(|(yr, xr)| {
            let r = inv_rms(xr, self.eps);
            wide(|| yr.iter_mut().zip(xr).zip(w).for_each(|((yv, xv), wv)| *yv = xv * r * (wv + self.offset)));
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let d = w.elem_count();
        let (dx, dw) = with_f32s([x, w, grad], self.name(), |[x, w, g]| {
            let mut dx = vec![0f32; x.len()];
            // Fixed blocks of rows, summed in order: the weight gradient is the same
            // bit for bit on every run (resume must equal an uninterrupted run).
            let partials: Vec<Vec<f32>> = dx
                .par_chunks_mut(ROWS_PER_BLOCK * d)
                .zip(x.par_chunks(ROWS_PER_BLOCK * d).zip(g.par_chunks(ROWS_PER_BLOCK * d)))
                .map(|(dxb, (xb, gb))| {
                    let mut dw = vec![0f32; d];
                    for (dxr, (xr, gr)) in dxb.chunks_mut(d).zip(xb.chunks(d).zip(gb.chunks(d))) {
                        let r = inv_rms(xr, self.eps);
                        // ĝ = g · (w + offset); dx = r · (ĝ − x̂ · mean(ĝ · x̂)), x̂ = x · r
                        // ĝ first (into dx), then dx in place.
                        wide(|| dxr.iter_mut().zip(gr.iter().zip(w)).for_each(|(gh, (gv, wv))| *gh = gv * (wv + self.offset)));
                        let mean = dot(dxr, xr) * r / d as f32;
                        wide(|| {
                            for (k, dxv) in dxr.iter_mut().enumerate() {
                                let xhat = xr[k] * r;
                                *dxv = r * (*dxv - xhat * mean);
                                dw[k] += gr[k] * xhat;
                            }
                        });
                    }
                    dw
                })
                .collect();
            let mut dw = vec![0f32; d];
            for p in &partials {
                dw.iter_mut().zip(p).for_each(|(a, b)| *a += b);
            }
            Ok((dx, dw))
        })?;
        let dx = Tensor::from_vec(dx, x.shape(), x.device())?;
        let dw = Tensor::from_vec(dw, w.shape(), w.device())?;
        Ok((Some(dx), Some(dw)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{check, random, weighted_sum};

    /// The same norm composed from candle's differentiable primitives.
    fn composed(x: &Tensor, w: &Tensor, eps: f64, offset: f64) -> Result<Tensor> {
        let ms = x.sqr()?.mean_keepdim(candle_core::D::Minus1)?;
        let xn = x.broadcast_div(&(ms + eps)?.sqrt()?)?;
        xn.broadcast_mul(&(w + offset)?)
    }

    #[test]
    fn forward_matches_composed_ops() -> Result<()> {
        let x = random(&[3, 5, 8], 1)?;
        let w = random(&[8], 2)?;
        for offset in [0.0, 1.0] {
            let ours = rms_norm(&x, &w, 1e-6, offset as f32)?;
            let theirs = composed(&x, &w, 1e-6, offset)?;
            let diff = (ours - theirs)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-5, "offset {offset}: {diff}");
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        for offset in [0.0, 1.0] {
            let x = random(&[2, 3, 6], 3)?;
            let w = random(&[6], 4)?;
            check(&[x, w], |t| weighted_sum(&rms_norm(&t[0], &t[1], 1e-5, offset)?, 9), 2e-3)?;
        }
        Ok(())
    }
}
