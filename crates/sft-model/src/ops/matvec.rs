//! `x·Wᵀ` for a few rows of `x` (token-by-token decoding). The weight is streamed from memory once
//! per call, rows of `W` split across threads; each output is a dot product over a contiguous row,
//! so the kernel runs at memory bandwidth instead of paying a GEMM's packing for one row.
//! Inference only: the op has no backward, and candle reports an error if a gradient is asked
//! through it (it never silently drops one).

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

use super::{cpu_f32, linear_dims};
use crate::kernels::{dot, matvec_rows};

/// The most rows of `x` the kernel takes; larger inputs go through the GEMM.
pub const MATVEC_MAX_ROWS: usize = 8;

/// `x` `[n, in]` (n ≤ [`MATVEC_MAX_ROWS`]) times `weight` `[out, in]` transposed → `[n, out]`.
pub fn matvec(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&weight.contiguous()?, MatVec)
}

struct MatVec;

impl CustomOp2 for MatVec {
    fn name(&self) -> &'static str {
        "sft-matvec"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_f32(s1, l1, self.name())?;
        let w = cpu_f32(s2, l2, self.name())?;
        let (n, inp, out) = linear_dims("matvec", l1, l2)?;
        if n == 0 || n > MATVEC_MAX_ROWS {
            candle_core::bail!("matvec: x {:?} has {n} rows; the kernel takes 1 to {MATVEC_MAX_ROWS}", l1.dims());
        }
        let y = matvec_rows(x, n, out, |o, x| dot(&w[o * inp..(o + 1) * inp], x));
        Ok((CpuStorage::F32(y), Shape::from((n, out))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::random;

    #[test]
    fn matches_the_gemm_for_one_and_several_rows() -> Result<()> {
        for (n, inp, out) in [(1, 576, 1536), (3, 70, 200), (8, 33, 5), (1, 7, 1)] {
            let x = random(&[n, inp], 1)?;
            let w = random(&[out, inp], 2)?;
            let want = x.matmul(&w.t()?)?.to_vec2::<f32>()?;
            let got = matvec(&x, &w)?.to_vec2::<f32>()?;
            for (g, e) in got.iter().flatten().zip(want.iter().flatten()) {
                assert!((g - e).abs() <= 1e-4 * (1.0 + e.abs()), "{n}x{inp} · {out}: {g} vs {e}");
            }
        }
        Ok(())
    }

    #[test]
    fn refuses_a_gradient_instead_of_dropping_it() -> Result<()> {
        let x = candle_core::Var::from_tensor(&random(&[1, 4], 1)?)?;
        let w = random(&[3, 4], 2)?;
        assert!(matvec(x.as_tensor(), &w)?.sum_all()?.backward().is_err());
        Ok(())
    }
}
