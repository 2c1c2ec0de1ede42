//! Softmax over the last dimension, with backward `dx = y · (g − Σ g·y)`. Entries of −∞ (masked
//! attention scores) get probability 0; every row must hold at least one finite entry.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{cpu_f32, with_f32s};
use crate::kernels::dot;
use crate::kernels::lanes::{self, wide};

/// Softmax over the last dimension.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Softmax)
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "sft-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_f32(storage, layout, self.name())?;
        let d = layout.dims().last().copied().unwrap_or(1).max(1);
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(|(yr, xr)| {
            yr.copy_from_slice(xr);
            lanes::softmax(yr);
        });
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let d = res.dims().last().copied().unwrap_or(1).max(1);
        let dx = with_f32s([res, grad], self.name(), |[y, g]| {
            let mut dx = vec![0f32; y.len()];
            dx.par_chunks_mut(d).zip(y.par_chunks(d).zip(g.par_chunks(d))).for_each(|(dr, (yr, gr))| {
                let dot = dot(yr, gr);
                wide(|| dr.iter_mut().zip(yr).zip(gr).for_each(|((dv, yv), gv)| *dv = yv * (gv - dot)));
            });
            Ok(dx)
        })?;
        Ok(Some(Tensor::from_vec(dx, res.shape(), res.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{check, random, weighted_sum};

    #[test]
    fn forward_matches_composed_ops() -> Result<()> {
        let x = (random(&[4, 7], 7)? * 5.0)?;
        let ours = softmax_last_dim(&x)?;
        let e = x.broadcast_sub(&x.max_keepdim(1)?)?.exp()?;
        let theirs = e.broadcast_div(&e.sum_keepdim(1)?)?;
        let diff = (ours - theirs)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "{diff}");
        Ok(())
    }

    #[test]
    fn masked_entries_get_zero() -> Result<()> {
        let x = Tensor::new(&[[0.5f32, f32::NEG_INFINITY, 1.0]], &candle_core::Device::Cpu)?;
        let y = softmax_last_dim(&x)?.to_vec2::<f32>()?;
        assert_eq!(y[0][1], 0.0);
        assert!((y[0][0] + y[0][2] - 1.0).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let x = (random(&[3, 5], 8)? * 2.0)?;
        check(&[x], |t| weighted_sum(&softmax_last_dim(&t[0])?, 12), 2e-3)
    }
}
