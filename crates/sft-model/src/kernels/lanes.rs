//! Row reductions that vectorize, and the softmax rows built on them. The crate's baseline target
//! is SSE2 and a plain `sum()` or `fold(max)` over f32 runs one operation after another (the
//! compiler may not reassociate floating-point adds), which made attention's softmax as slow as
//! its matrix products. Here the work is split over independent lanes and compiled for AVX-512
//! where the CPU has it.

use super::exp_shifted_in_place;

const LANES: usize = 16;

/// The largest value of `xs` (−∞ for none; NaNs are skipped).
pub(crate) fn max(xs: &[f32]) -> f32 {
    wide(|| fold(xs, f32::NEG_INFINITY, |m, x| if x > m { x } else { m }))
}

/// The sum of `xs`.
pub(crate) fn sum(xs: &[f32]) -> f32 {
    wide(|| fold(xs, 0.0, |s, x| s + x))
}

/// `xs ← exp(xs − max(xs))`; returns their log-sum-exp.
pub(crate) fn log_sum_exp(xs: &mut [f32]) -> f32 {
    let (max, sum) = exp_from_max(xs);
    max + sum.ln()
}

/// `xs ← softmax(xs)`; returns their log-sum-exp.
pub(crate) fn softmax(xs: &mut [f32]) -> f32 {
    let (max, sum) = exp_from_max(xs);
    let inv = 1.0 / sum;
    wide(|| xs.iter_mut().for_each(|x| *x *= inv));
    max + sum.ln()
}

/// `xs ← exp(xs − max(xs))`; returns the max and the sum of the exponentials.
fn exp_from_max(xs: &mut [f32]) -> (f32, f32) {
    let max = max(xs);
    exp_shifted_in_place(xs, max);
    (max, sum(xs))
}

/// `f` folded over `xs` in [`LANES`] independent lanes, then across them.
#[inline(always)]
fn fold(xs: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder().iter().fold(init, |a, &x| f(a, x));
    for c in chunks {
        for k in 0..LANES {
            acc[k] = f(acc[k], c[k]);
        }
    }
    acc.iter().fold(tail, |a, &x| f(a, x))
}

/// Runs `body` inside a function compiled for AVX-512 where the CPU has it, so its loops
/// vectorize 16 wide; elsewhere as it is.
#[inline(always)]
pub fn wide<R>(body: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512<R>(body: impl FnOnce() -> R) -> R {
            body()
        }
        // SAFETY: the CPU supports the feature the function is compiled for (checked above).
        return unsafe { avx512(body) };
    }
    body()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_and_sum_match_the_sequential_ones() {
        for n in [0, 1, 15, 16, 17, 100, 513] {
            let xs: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 100.0 - 5.0).collect();
            assert_eq!(max(&xs), xs.iter().copied().fold(f32::NEG_INFINITY, f32::max), "max of {n}");
            let want: f64 = xs.iter().map(|&x| x as f64).sum();
            assert!((sum(&xs) as f64 - want).abs() < 1e-3, "sum of {n}");
        }
    }
}
