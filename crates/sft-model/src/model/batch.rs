//! A batch as the model sees it: token ids `[batch, seq]`, per-token positions that restart at
//! every packed row, which row (segment) each token belongs to, and the loss targets — the next
//! token's label wherever it is not -100 and the next token is in the same row.

use candle_core::{Device, Tensor};

use crate::ModelError;

/// The label of a position that does not train (transformers' `ignore_index`).
pub const IGNORE: i32 = -100;

/// One sequence of a batch: a single example, or several packed ones.
#[derive(Debug, Clone, Copy)]
pub struct Sequence<'a> {
    /// Token ids.
    pub input_ids: &'a [u32],
    /// Labels aligned with `input_ids` (not shifted), -100 where nothing trains.
    pub labels: &'a [i32],
    /// Row starts then the end (`cu_seqlens`), for packed rows; `None` for one row.
    pub boundaries: Option<&'a [u32]>,
}

impl<'a> Sequence<'a> {
    /// One example.
    pub fn single(input_ids: &'a [u32], labels: &'a [i32]) -> Self {
        Self { input_ids, labels, boundaries: None }
    }

    /// Packed examples with their boundaries.
    pub fn packed(input_ids: &'a [u32], labels: &'a [i32], boundaries: &'a [u32]) -> Self {
        Self { input_ids, labels, boundaries: Some(boundaries) }
    }
}

/// Sequences laid out for the model (shorter ones padded at the end; padding is a row of its
/// own that never trains).
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[batch, seq]`, u32.
    pub input_ids: Tensor,
    /// Rows (batch size).
    pub batch: usize,
    /// Length of every row after padding.
    pub seq: usize,
    /// Position of each token within its row (`batch·seq`).
    pub positions: Vec<u32>,
    /// Segment (row) id of each token, unique across the batch (`batch·seq`).
    pub segments: Vec<u32>,
    /// Flat indices (`b·seq + t`) of positions whose next token is a target.
    pub target_rows: Vec<u32>,
    /// The target token of each of those positions.
    pub targets: Vec<u32>,
}

impl Batch {
    /// Lays out `sequences`; `pad_id` fills the tail of shorter ones.
    pub fn new(sequences: &[Sequence<'_>], pad_id: u32) -> Result<Self, ModelError> {
        let seq = sequences.iter().map(|s| s.input_ids.len()).max().unwrap_or(0);
        if seq == 0 {
            return Err(ModelError::Batch("no tokens".into()));
        }
        let n = sequences.len() * seq;
        let mut ids = Vec::with_capacity(n);
        let mut positions = Vec::with_capacity(n);
        let mut segments = Vec::with_capacity(n);
        let mut target_rows = vec![];
        let mut targets = vec![];
        let mut segment = 0u32;
        for (b, s) in sequences.iter().enumerate() {
            let len = s.input_ids.len();
            if s.labels.len() != len {
                return Err(ModelError::Batch(format!("sequence {b}: {len} input ids but {} labels", s.labels.len())));
            }
            let whole = [0, len as u32];
            let bounds = s.boundaries.unwrap_or(&whole);
            check_boundaries(b, bounds, len)?;
            let mut starts = vec![false; len];
            for w in bounds.windows(2) {
                starts[w[0] as usize] = true;
                for t in w[0]..w[1] {
                    positions.push(t - w[0]);
                    segments.push(segment);
                }
                segment += 1;
            }
            for t in 0..len.saturating_sub(1) {
                let label = s.labels[t + 1];
                if label == IGNORE || starts[t + 1] {
                    continue;
                }
                let target = u32::try_from(label).map_err(|_| {
                    ModelError::Batch(format!("sequence {b}: label {label} at position {} is neither -100 nor a token id", t + 1))
                })?;
                target_rows.push((b * seq + t) as u32);
                targets.push(target);
            }
            ids.extend_from_slice(s.input_ids);
            ids.extend(std::iter::repeat_n(pad_id, seq - len));
            if seq > len {
                positions.extend(0..(seq - len) as u32);
                segments.extend(std::iter::repeat_n(segment, seq - len));
                segment += 1;
            }
        }
        let input_ids = Tensor::from_vec(ids, (sequences.len(), seq), &Device::Cpu).map_err(|e| ModelError::Batch(e.to_string()))?;
        Ok(Self { input_ids, batch: sequences.len(), seq, positions, segments, target_rows, targets })
    }

    /// For every token (`batch·seq`), the first position of its row it may attend to: its
    /// segment's start, or later within a sliding `window`; it sees that key through itself.
    pub fn attention_starts(&self, window: Option<usize>) -> Vec<u32> {
        let t = self.seq;
        let mut first = Vec::with_capacity(self.segments.len());
        for row in self.segments.chunks(t) {
            let mut start = 0;
            for (i, seg) in row.iter().enumerate() {
                if i > 0 && *seg != row[i - 1] {
                    start = i;
                }
                let windowed = window.map_or(0, |w| (i + 1).saturating_sub(w));
                first.push(start.max(windowed) as u32);
            }
        }
        first
    }
}

fn check_boundaries(b: usize, bounds: &[u32], len: usize) -> Result<(), ModelError> {
    let ok = bounds.len() >= 2 && bounds[0] == 0 && bounds[bounds.len() - 1] as usize == len && bounds.windows(2).all(|w| w[0] < w[1]);
    if ok {
        Ok(())
    } else {
        Err(ModelError::Batch(format!("sequence {b}: boundaries {bounds:?} must rise strictly from 0 to its length {len}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_skip_ignored_labels_and_row_starts() {
        let ids = [5, 6, 7, 8, 9];
        let labels = [6, 7, IGNORE, 9, 10];
        let bounds = [0, 3, 5];
        let batch = Batch::new(&[Sequence::packed(&ids, &labels, &bounds), Sequence::single(&[1, 2], &[IGNORE, 2])], 0).expect("valid");
        assert_eq!(batch.positions, vec![0, 1, 2, 0, 1, 0, 1, 0, 1, 2]);
        // row 0: position 0 predicts 7 (label of 1); 1 → ignored; 2 → 9 is a row start; 3 → 10.
        // row 1 (offset 5): position 0 predicts 2.
        assert_eq!(batch.target_rows, vec![0, 3, 5]);
        assert_eq!(batch.targets, vec![7, 10, 2]);
        assert_eq!(batch.segments, vec![0, 0, 0, 1, 1, 2, 2, 3, 3, 3]);
    }

    #[test]
    fn attention_starts_keep_rows_apart_and_apply_the_window() {
        let batch = Batch::new(&[Sequence::packed(&[1, 2, 3, 4, 5], &[IGNORE; 5], &[0, 1, 5]), Sequence::single(&[1, 2], &[IGNORE; 2])], 0)
            .expect("valid");
        // Row 0: segments [0, 1) and [1, 5); row 1: one segment, then padding (its own segment).
        assert_eq!(batch.attention_starts(None), vec![0, 1, 1, 1, 1, 0, 0, 2, 2, 2]);
        assert_eq!(batch.attention_starts(Some(2)), vec![0, 1, 1, 2, 3, 0, 0, 2, 2, 3]);
    }

    #[test]
    fn malformed_input_is_an_error() {
        assert!(Batch::new(&[Sequence::single(&[1, 2], &[1])], 0).is_err());
        assert!(Batch::new(&[Sequence::packed(&[1, 2], &[1, 2], &[0, 3])], 0).is_err());
        assert!(Batch::new(&[Sequence::single(&[1, 2], &[1, -5])], 0).is_err());
        assert!(Batch::new(&[], 0).is_err());
    }
}
