//! Dataset mixing: which rows of each training file a run uses, from the per-dataset keys
//! `shuffle`, `max_samples` and `weight`, and the counts the run reports for each file.
//!
//! For each file, in this order:
//! 1. `shuffle: true` puts its rows in an order shuffled from the run's `seed` and the file's
//!    position in `datasets` (a Fisher–Yates shuffle over SplitMix, like the data order); without
//!    it the rows stay in file order;
//! 2. `max_samples: N` keeps the first N rows of that order (LLaMA-Factory's `max_samples`, per
//!    dataset), before they are encoded;
//! 3. `weight` (set on every dataset or on none) makes the files' shares of the mixed training
//!    set their weights' proportions `p_i = w_i / Σw`: the mixed set has
//!    `N = min_i ⌊n_i / p_i⌋` examples (`n_i`: file i's examples after encoding), of which
//!    `p_i · N` (rounded so that the counts add up to N, largest remainders first) are file i's
//!    first examples in the order of step 1. These are the counts Hugging Face datasets'
//!    `interleave_datasets(probabilities=p, stopping_strategy="first_exhausted")` draws in
//!    expectation (LLaMA-Factory's `mix_strategy: interleave_under`), made exact and free of
//!    random draws; no example repeats. The trainer shuffles the mixed set every epoch anyway,
//!    so only the counts matter, not an interleaving order.
//!
//! The functions are pure (counts and seeds in, indices out), written here because the rule is
//! this small and must stay deterministic under the seed.

use serde::Serialize;
use sft_model::rng::SplitMix;

/// The rows of a file of `rows` rows that a run reads, in order: shuffled from `seed` and the
/// file's `index` in `datasets` when `shuffle`, then the first `max_samples`.
pub fn row_order(rows: usize, shuffle: bool, max_samples: Option<usize>, seed: u64, index: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..rows).collect();
    if shuffle {
        let mut rng = SplitMix(seed ^ 0x5348_5546_464C_4531 ^ (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        for i in (1..order.len()).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
    }
    order.truncate(max_samples.unwrap_or(rows));
    order
}

/// How many examples of each file the mixed set takes, for files of `available` examples with
/// `weights` (all positive): see the module doc. Never more than a file has.
pub fn weighted_counts(available: &[usize], weights: &[f64]) -> Vec<usize> {
    let sum: f64 = weights.iter().sum();
    if available.is_empty() || sum.is_nan() || sum <= 0.0 {
        return available.to_vec();
    }
    let shares: Vec<f64> = weights.iter().map(|w| w / sum).collect();
    let total = available.iter().zip(&shares).map(|(&n, &p)| (n as f64 / p).floor() as usize).min().unwrap_or(0);
    let exact: Vec<f64> = shares.iter().map(|p| p * total as f64).collect();
    let mut counts: Vec<usize> = exact.iter().map(|x| x.floor() as usize).collect();
    let mut by_remainder: Vec<usize> = (0..counts.len()).collect();
    // Largest remainder first; ties to the earlier file.
    by_remainder.sort_by(|&a, &b| (exact[b] - exact[b].floor()).total_cmp(&(exact[a] - exact[a].floor())).then(a.cmp(&b)));
    let short = total.saturating_sub(counts.iter().sum());
    for &i in by_remainder.iter().take(short) {
        counts[i] += 1;
    }
    counts.iter().zip(available).map(|(&k, &n)| k.min(n)).collect()
}

/// What a run took from one training file: printed in the run summary and saved as
/// `output_dir/data_summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DatasetCount {
    /// The file as the config names it.
    pub path: String,
    /// The row format read (`prepared` for a prepared dataset).
    pub format: String,
    /// Rows read from the file (bad rows skipped by `on_bad_row: skip` not included).
    pub rows: usize,
    /// Rows kept by `shuffle` and `max_samples`, the ones encoded.
    pub selected: usize,
    /// Encoded examples (rows with nothing to train are excluded).
    pub examples: usize,
    /// Examples in the mixed training set (by `weight`; all of them without it), before any
    /// `eval_split` is held out.
    pub used: usize,
    /// The dataset's weight, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
}

impl std::fmt::Display for DatasetCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {} rows", self.path, self.format, self.rows)?;
        if self.selected != self.rows {
            write!(f, ", {} selected", self.selected)?;
        }
        write!(f, ", {} examples, {} used", self.examples, self.used)?;
        if let Some(w) = self.weight {
            write!(f, " (weight {w})")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_set_exact_shares_and_the_scarcest_file_bounds_the_total() {
        // p = (0.5, 0.25, 0.25): file 1 (40 examples) allows 160, file 0 allows 200, file 2 400.
        assert_eq!(weighted_counts(&[100, 40, 100], &[2.0, 1.0, 1.0]), [80, 40, 40]);
        // Remainders: N = min(10/0.5, 7/0.3, 100/0.2) = 20 → 10, 6, 4.
        assert_eq!(weighted_counts(&[10, 7, 100], &[5.0, 3.0, 2.0]), [10, 6, 4]);
        // Thirds of N = 10: 3.33 each, the spare example goes to the first.
        assert_eq!(weighted_counts(&[10, 10, 10], &[1.0, 1.0, 1.0]), [10, 10, 10]);
        assert_eq!(weighted_counts(&[4, 10, 10], &[1.0, 1.0, 1.0]).iter().sum::<usize>(), 12);
        assert_eq!(weighted_counts(&[4, 10, 10], &[1.0, 1.0, 1.0]), [4, 4, 4]);
        assert_eq!(weighted_counts(&[5, 100], &[1.0, 1.0]), [5, 5]);
        assert_eq!(weighted_counts(&[0, 100], &[1.0, 1.0]), [0, 0]);
    }

    #[test]
    fn row_order_is_the_file_order_or_a_seeded_shuffle_cut_at_max_samples() {
        assert_eq!(row_order(5, false, None, 1, 0), [0, 1, 2, 3, 4]);
        assert_eq!(row_order(5, false, Some(2), 1, 0), [0, 1]);
        assert_eq!(row_order(5, false, Some(9), 1, 0).len(), 5);
        let a = row_order(50, true, Some(10), 1, 0);
        assert_eq!(a, row_order(50, true, Some(10), 1, 0), "deterministic under the seed");
        assert_ne!(a, row_order(50, true, Some(10), 2, 0), "another seed");
        assert_ne!(a, row_order(50, true, Some(10), 1, 1), "another dataset");
        assert_ne!(a, (0..10).collect::<Vec<_>>());
        let mut all = row_order(50, true, None, 1, 0);
        all.sort();
        assert_eq!(all, (0..50).collect::<Vec<_>>());
    }
}
