//! Greedy decoding's argmax over the vocabulary without reading every f32 row of the output
//! layer: a bf16 copy screens the rows (half the bytes), with a proven bound on how far each
//! screened logit can be from the exact one; only rows that can still be the maximum are
//! computed exactly, with the same f32 dot product the full output layer uses. The token is
//! therefore the one the full f32 logits give (the first index among equal maxima).
//!
//! The bound for row r: |Σ wᵢxᵢ − Σ ŵᵢxᵢ| ≤ ‖x‖·‖w − ŵ‖ (Cauchy–Schwarz), and each f32 sum (in
//! any order) is within γₙ·Σ|aᵢ| of the exact one, γₙ = n·u/(1 − n·u), u = 2⁻²⁴, with
//! Σ|wᵢxᵢ| ≤ ‖x‖·‖w‖. So |z − ẑ| ≤ ‖x‖·cᵣ with cᵣ = ‖w − ŵ‖ + γₙ·(‖w‖ + ‖ŵ‖), widened by 1%
//! for the rounding of the norms themselves.

use rayon::prelude::*;

use crate::kernels::{dot, matvec_rows};
use crate::quant::{from_bf16, to_bf16, BaseFormat, QuantWeight};

/// The index of the largest logit (the first among equal ones; 0 when none is above -inf).
pub fn argmax(logits: &[f32]) -> usize {
    logits.iter().enumerate().fold((0usize, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0
}

/// A bf16 screen of an output layer `[rows, cols]`.
#[derive(Debug)]
pub(crate) struct GreedyScreen {
    screen: QuantWeight,
    /// ‖x‖·`slack[r]` bounds |z_r − ẑ_r|.
    slack: Vec<f32>,
}

impl GreedyScreen {
    /// The screen of `w` (`rows × cols`, row-major); `None` if bf16 packing gives none.
    pub(crate) fn new(w: &[f32], cols: usize) -> Option<Self> {
        let rows = w.len() / cols.max(1);
        let screen = QuantWeight::new(w, rows, cols, BaseFormat::Bf16)?;
        let n = cols as f64;
        let u = f64::from(f32::EPSILON) / 2.0;
        let gamma = n * u / (1.0 - n * u);
        let slack = w
            .par_chunks(cols)
            .map(|row| {
                let (mut norm, mut rounded, mut err) = (0f64, 0f64, 0f64);
                for &v in row {
                    let (v, r) = (f64::from(v), f64::from(from_bf16(to_bf16(v))));
                    norm += v * v;
                    rounded += r * r;
                    err += (v - r) * (v - r);
                }
                ((err.sqrt() + gamma * (norm.sqrt() + rounded.sqrt())) * 1.01) as f32
            })
            .collect();
        Some(GreedyScreen { screen, slack })
    }

    /// The argmax of `w·x` as the full f32 output layer computes it (`w` the rows the screen was
    /// made from); `None` when `x` is not finite or does not fit.
    #[cfg(test)]
    pub(crate) fn argmax(&self, w: &[f32], x: &[f32]) -> Option<usize> {
        self.argmax_rows(w, x, 1).map(|ids| ids[0])
    }

    /// [`argmax`](Self::argmax) of each of the `n` rows of `x` (`[n, cols]`), the screen read
    /// once for all of them; `None` when any row is not finite or `x` does not fit.
    pub(crate) fn argmax_rows(&self, w: &[f32], x: &[f32], n: usize) -> Option<Vec<usize>> {
        let (rows, cols) = self.screen.dims();
        if n == 0 || x.len() != n * cols || w.len() != rows * cols || !x.iter().all(|v| v.is_finite()) {
            return None;
        }
        let screened = matvec_rows(x, n, rows, |r, x| self.screen.dot_row(r, x));
        x.chunks_exact(cols).zip(screened.chunks_exact(rows)).map(|(x, screened)| self.pick(w, x, screened)).collect()
    }

    /// The exact argmax of `w·x` among the rows whose screened logit `screened[r]` can still
    /// be the largest.
    fn pick(&self, w: &[f32], x: &[f32], screened: &[f32]) -> Option<usize> {
        let cols = x.len();
        let x_norm = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>().sqrt() as f32;
        // The best lower bound; every row whose upper bound reaches it may be the maximum.
        let floor = screened.iter().zip(&self.slack).map(|(&z, &s)| z - x_norm * s).fold(f32::NEG_INFINITY, f32::max);
        if !floor.is_finite() {
            return None;
        }
        let mut best: Option<(usize, f32)> = None;
        for (r, (&z, &s)) in screened.iter().zip(&self.slack).enumerate() {
            if z + x_norm * s >= floor {
                let exact = dot(&w[r * cols..(r + 1) * cols], x);
                if best.is_none_or(|(_, b)| exact > b) {
                    best = Some((r, exact));
                }
            }
        }
        best.map(|(r, _)| r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SplitMix64 floats in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = s;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    fn full_argmax(w: &[f32], x: &[f32], cols: usize) -> usize {
        let z: Vec<f32> = w.chunks(cols).map(|row| dot(row, x)).collect();
        z.iter().enumerate().fold((0usize, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0
    }

    #[test]
    fn picks_the_full_argmax_even_among_near_ties() {
        let (rows, cols) = (3000, 96);
        let mut w = values(rows * cols, 7);
        // Near-ties: rows that differ from row 10 by one ulp-scale change, and exact copies
        // (the first index must win), so the screen cannot separate them.
        for r in [11usize, 1200, 2999] {
            let (src, dst) = (10 * cols, r * cols);
            w.copy_within(src..src + cols, dst);
        }
        w[1200 * cols + 5] += 1e-6;
        let screen = GreedyScreen::new(&w, cols).unwrap();
        for seed in 0..200 {
            let mut x = values(cols, 1000 + seed);
            if seed % 2 == 0 {
                // Point x along row 10 so the near-tied rows are the top candidates.
                for (xi, wi) in x.iter_mut().zip(&w[10 * cols..11 * cols]) {
                    *xi = *wi * 3.0 + *xi * 1e-3;
                }
            }
            assert_eq!(screen.argmax(&w, &x), Some(full_argmax(&w, &x, cols)), "seed {seed}");
        }
        assert_eq!(screen.argmax(&w, &vec![f32::NAN; cols]), None);
    }

    #[test]
    fn several_rows_at_once_equal_one_at_a_time() {
        let (rows, cols, n) = (500, 40, 5);
        let w = values(rows * cols, 3);
        let x = values(n * cols, 4);
        let screen = GreedyScreen::new(&w, cols).unwrap();
        let one: Vec<usize> = x.chunks(cols).map(|x| full_argmax(&w, x, cols)).collect();
        assert_eq!(screen.argmax_rows(&w, &x, n), Some(one));
        let mut bad = x.clone();
        bad[3 * cols] = f32::INFINITY;
        assert_eq!(screen.argmax_rows(&w, &bad, n), None);
    }
}
