//! Decoding's memory-bound kernels: rows of a weight dotted with a few input rows, the weight
//! streamed from memory once, in order, split across threads; the dot product widens f32 or
//! bf16 weights and runs on AVX-512 or AVX2+FMA where the CPU has them.

use rayon::prelude::*;

/// Parallel tasks per thread (a few, so threads that finish early can take more).
const TASKS_PER_THREAD: usize = 4;

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
