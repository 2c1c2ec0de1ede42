//! `x·Wᵀ` for a few rows of `x` (token-by-token decoding). The weight is streamed from memory once
//! per call, rows of `W` split across threads; each output is a dot product over a contiguous row,
//! so the kernel runs at memory bandwidth instead of paying a GEMM's packing for one row.
//! Inference only: the op has no backward, and candle reports an error if a gradient is asked
//! through it (it never silently drops one).

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{cpu_f32, linear_dims};

/// The most rows of `x` the kernel takes; larger inputs go through the GEMM.
pub const MATVEC_MAX_ROWS: usize = 8;

/// Parallel tasks per thread (a few, so threads that finish early can take more).
const TASKS_PER_THREAD: usize = 4;

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

/// `y[r][o] = dot_row(o, x[r])` for the `n` rows of `x` and every one of the weight's `out`
/// rows, returned as `[n, out]`. Each task takes a contiguous block of weight rows (streamed from
/// memory once, in order) and dots it with every row of `x`.
pub(crate) fn matvec_rows(x: &[f32], n: usize, out: usize, dot_row: impl Fn(usize, &[f32]) -> f32 + Sync) -> Vec<f32> {
    let inp = x.len() / n.max(1);
    let block = out.div_ceil(TASKS_PER_THREAD * rayon::current_num_threads()).max(8);
    // Blocks in [out, n] order (each task writes its own rows), transposed at the end.
    let mut yt = vec![0f32; out * n];
    yt.par_chunks_mut(block * n).enumerate().for_each(|(b, y)| {
        for (i, y) in y.chunks_exact_mut(n).enumerate() {
            for (r, y) in y.iter_mut().enumerate() {
                *y = dot_row(b * block + i, &x[r * inp..(r + 1) * inp]);
            }
        }
    });
    if n == 1 {
        yt
    } else {
        (0..n * out).map(|i| yt[(i % out) * n + i / out]).collect()
    }
}

/// A weight element the dot product widens to f32: f32 itself, or bf16 bits (`u16`).
pub(crate) trait Widen: Copy {
    /// The value as f32.
    fn widen(self) -> f32;
}

impl Widen for f32 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
}

impl Widen for u16 {
    #[inline(always)]
    fn widen(self) -> f32 {
        f32::from_bits((self as u32) << 16)
    }
}

/// Σ wᵢ·xᵢ, with AVX-512 or AVX2+FMA instructions where the CPU has them.
pub(crate) fn dot<W: Widen>(w: &[W], x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports the features the function is compiled for (checked above).
            return unsafe { dot_avx512(w, x) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            return unsafe { dot_avx2(w, x) };
        }
    }
    dot_portable(w, x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_avx512<W: Widen>(w: &[W], x: &[f32]) -> f32 {
    dot_portable(w, x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2<W: Widen>(w: &[W], x: &[f32]) -> f32 {
    dot_portable(w, x)
}

/// 32 independent partial sums, so the compiler vectorizes the loop without reassociating.
#[inline(always)]
fn dot_portable<W: Widen>(w: &[W], x: &[f32]) -> f32 {
    const LANES: usize = 32;
    let mut acc = [0f32; LANES];
    let (cw, cx) = (w.chunks_exact(LANES), x.chunks_exact(LANES));
    let tail: f32 = cw.remainder().iter().zip(cx.remainder()).map(|(a, b)| a.widen() * b).sum();
    for (a, b) in cw.zip(cx) {
        for k in 0..LANES {
            acc[k] = a[k].widen().mul_add(b[k], acc[k]);
        }
    }
    acc.iter().sum::<f32>() + tail
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
