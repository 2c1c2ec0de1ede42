//! The pack stage: many short [`Example`]s share one sequence of at most `max_seq_length`
//! tokens, so a batch wastes no room on padding. Bins are filled by best-fit decreasing
//! (longest example first; each goes into the open bin it fills most tightly), which is
//! deterministic: ties in length keep input order, ties in room go to the older bin.
//!
//! Every row keeps its own positions (`position_ids` restart at 0) and its place is recorded
//! as `boundaries` (flash-attention's `cu_seqlens`: row starts, then the end), so attention
//! can stay within a row.

use std::collections::BTreeSet;

use thiserror::Error;

use crate::conversation::RowRef;
use crate::encode::Example;

/// Why examples cannot be packed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PackError {
    /// The limit is zero.
    #[error("packing needs max_seq_length of at least 1")]
    ZeroLimit,
    /// An example is longer than a sequence may be.
    #[error("{row}: example of {tokens} tokens exceeds max_seq_length {max}; encode with the same max_seq_length (truncation drop or right) before packing")]
    TooLong {
        /// The row.
        row: RowRef,
        /// Its length in tokens.
        tokens: usize,
        /// The limit.
        max: usize,
    },
    /// An example whose labels are not as long as its input ids.
    #[error("{row}: {ids} input ids but {labels} labels")]
    Mismatch {
        /// The row.
        row: RowRef,
        /// Input ids.
        ids: usize,
        /// Labels.
        labels: usize,
    },
}

/// Several examples in one training sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedSequence {
    /// The rows' token ids, one after another.
    pub input_ids: Vec<u32>,
    /// Their labels, unchanged (not shifted).
    pub labels: Vec<i32>,
    /// Each row's positions, starting at 0 for every row.
    pub position_ids: Vec<u32>,
    /// Where each row starts, then the total length (`cu_seqlens`): `rows.len() + 1` entries.
    pub boundaries: Vec<u32>,
    /// The rows, in the order they appear.
    pub rows: Vec<RowRef>,
}

impl PackedSequence {
    /// Its length in tokens.
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    /// Whether it holds no token.
    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }
}

/// Which examples go into which bin, by index into the input: best-fit decreasing.
/// Errors when an example exceeds `max`.
pub fn plan(examples: &[Example], max: usize) -> Result<Vec<Vec<usize>>, PackError> {
    if max == 0 {
        return Err(PackError::ZeroLimit);
    }
    for e in examples {
        if e.input_ids.len() > max {
            return Err(PackError::TooLong { row: e.source.clone(), tokens: e.input_ids.len(), max });
        }
        if e.input_ids.len() != e.labels.len() {
            return Err(PackError::Mismatch { row: e.source.clone(), ids: e.input_ids.len(), labels: e.labels.len() });
        }
    }
    let lengths: Vec<usize> = examples.iter().map(|e| e.input_ids.len()).collect();
    Ok(plan_lengths(&lengths, max))
}

/// [`plan`] over lengths alone (each at most `max`, which is at least 1): what packing a
/// dataset too large to hold needs.
pub fn plan_lengths(lengths: &[usize], max: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    // Stable: equal lengths keep input order.
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    let mut bins: Vec<Vec<usize>> = Vec::new();
    // Open bins as (remaining room, bin index): the first at or above a length is the tightest
    // fit, and among equal rooms the oldest bin.
    let mut open: BTreeSet<(usize, usize)> = BTreeSet::new();
    let mut room: Vec<usize> = Vec::new();
    for i in order {
        let len = lengths[i];
        let bin = match open.range((len, 0)..).next().copied() {
            Some(key) => {
                open.remove(&key);
                key.1
            }
            None => {
                bins.push(Vec::new());
                room.push(max);
                bins.len() - 1
            }
        };
        bins[bin].push(i);
        room[bin] = room[bin].saturating_sub(len);
        if room[bin] > 0 {
            open.insert((room[bin], bin));
        }
    }
    bins
}

/// Packs `examples` into sequences of at most `max` tokens by best-fit decreasing; the result
/// is the same for the same input. Errors when an example exceeds `max`.
pub fn pack(examples: &[Example], max: usize) -> Result<Vec<PackedSequence>, PackError> {
    let bins = plan(examples, max)?;
    Ok(bins.iter().map(|bin| concat(bin.iter().map(|&i| &examples[i]))).collect())
}

fn concat<'a>(examples: impl Iterator<Item = &'a Example>) -> PackedSequence {
    let mut seq =
        PackedSequence { input_ids: Vec::new(), labels: Vec::new(), position_ids: Vec::new(), boundaries: vec![0], rows: Vec::new() };
    for e in examples {
        seq.input_ids.extend_from_slice(&e.input_ids);
        seq.labels.extend_from_slice(&e.labels);
        // Lengths fit max_seq_length, which fits u32 in any sequence we can hold.
        seq.position_ids.extend((0..e.input_ids.len()).map(|p| p as u32));
        seq.boundaries.push(seq.input_ids.len() as u32);
        seq.rows.push(e.source.clone());
    }
    seq
}

/// How full `sequences` packed sequences holding `tokens` tokens are: tokens over
/// `sequences × max`, 0 to 1.
pub fn fill_ratio(tokens: usize, sequences: usize, max: usize) -> f64 {
    match sequences * max {
        0 => 0.0,
        room => tokens as f64 / room as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(row: usize, len: usize) -> Example {
        Example {
            source: RowRef { file: "t".into(), row },
            input_ids: (0..len as u32).map(|t| t + 1000 * row as u32).collect(),
            labels: (0..len).map(|t| if t % 2 == 0 { -100 } else { t as i32 }).collect(),
        }
    }

    #[test]
    fn best_fit_picks_the_tightest_bin() {
        // Sorted: 6, 5, 4, 3, 2. 6→A(4 left), 5→B(5 left), 4→A (tightest, 0 left), 3→B (2 left), 2→B.
        let examples: Vec<Example> = [3, 6, 2, 5, 4].iter().enumerate().map(|(i, &l)| ex(i + 1, l)).collect();
        let bins = plan(&examples, 10).unwrap();
        assert_eq!(bins, vec![vec![1, 4], vec![3, 0, 2]]);
    }

    #[test]
    fn ties_keep_input_order() {
        let examples: Vec<Example> = (1..=4).map(|r| ex(r, 3)).collect();
        assert_eq!(plan(&examples, 6).unwrap(), vec![vec![0, 1], vec![2, 3]]);
    }

    #[test]
    fn too_long_and_zero_limit_are_errors() {
        let err = plan(&[ex(7, 5)], 4).unwrap_err();
        assert!(err.to_string().starts_with("t:7: example of 5 tokens exceeds max_seq_length 4"), "{err}");
        assert!(matches!(plan(&[], 0), Err(PackError::ZeroLimit)));
    }

    #[test]
    fn sequences_concatenate_with_restarting_positions() {
        let seqs = pack(&[ex(1, 2), ex(2, 3)], 8).unwrap();
        assert_eq!(seqs.len(), 1);
        let s = &seqs[0];
        assert_eq!(s.position_ids, vec![0, 1, 2, 0, 1]);
        assert_eq!(s.boundaries, vec![0, 3, 5]);
        assert_eq!(s.labels, vec![-100, 1, -100, -100, 1]);
        assert_eq!(s.rows.iter().map(|r| r.row).collect::<Vec<_>>(), vec![2, 1]);
        assert!((fill_ratio(seqs.iter().map(PackedSequence::len).sum(), seqs.len(), 8) - 5.0 / 8.0).abs() < 1e-9);
    }

    #[test]
    fn empty_input_gives_no_sequence() {
        assert!(pack(&[], 4).unwrap().is_empty());
    }
}
