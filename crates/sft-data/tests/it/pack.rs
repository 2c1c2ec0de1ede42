//! The pack stage: best-fit decreasing keeps every row whole, once, with its own positions and
//! labels, never overfills a sequence, and uses fewer sequences than next-fit.

use std::collections::HashMap;

use sft_data::conversation::RowRef;
use sft_data::encode::{Example, IGNORE_INDEX};
use sft_data::pack::{pack, PackError};

/// A small deterministic generator (xorshift), so the cases are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self, below: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % below as u64) as usize
    }
}

/// Row `row` with `len` tokens that name their row and place; labels ignore a pseudo-random prefix.
fn example(row: usize, len: usize, masked: usize) -> Example {
    Example {
        source: RowRef { file: "gen".into(), row },
        input_ids: (0..len).map(|i| (row * 10_000 + i) as u32).collect(),
        labels: (0..len).map(|i| if i < masked { IGNORE_INDEX } else { (row * 10_000 + i) as i32 }).collect(),
    }
}

fn random_examples(seed: u64, n: usize, max: usize) -> Vec<Example> {
    let mut rng = Rng(seed);
    (1..=n)
        .map(|row| {
            let len = 1 + rng.next(max);
            example(row, len, rng.next(len))
        })
        .collect()
}

#[test]
fn every_row_appears_once_whole_with_restarting_positions_and_its_labels() {
    for seed in 1..=20u64 {
        let max = 16 + (seed as usize * 7) % 50;
        let examples = random_examples(seed * 7919, 60, max);
        let seqs = pack(&examples, max).unwrap();
        let by_row: HashMap<usize, &Example> = examples.iter().map(|e| (e.source.row, e)).collect();
        let mut seen = HashMap::new();
        for s in &seqs {
            assert!(s.len() <= max, "seed {seed}: a sequence of {} tokens over {max}", s.len());
            assert_eq!(s.boundaries.len(), s.rows.len() + 1);
            assert_eq!((s.boundaries[0], *s.boundaries.last().unwrap() as usize), (0, s.len()));
            assert_eq!((s.labels.len(), s.position_ids.len()), (s.len(), s.len()));
            for (k, row) in s.rows.iter().enumerate() {
                let (a, b) = (s.boundaries[k] as usize, s.boundaries[k + 1] as usize);
                let e = by_row[&row.row];
                assert_eq!(&s.input_ids[a..b], &e.input_ids[..], "seed {seed}: row {row} not whole");
                assert_eq!(&s.labels[a..b], &e.labels[..], "seed {seed}: row {row} labels changed");
                assert_eq!(s.position_ids[a..b], (0..(b - a) as u32).collect::<Vec<_>>()[..]);
                *seen.entry(row.row).or_insert(0) += 1;
            }
        }
        assert_eq!(seen.len(), examples.len(), "seed {seed}: rows lost");
        assert!(seen.values().all(|&c| c == 1), "seed {seed}: a row packed twice");
        let tokens: usize = examples.iter().map(|e| e.input_ids.len()).sum();
        assert_eq!(seqs.iter().map(|s| s.len()).sum::<usize>(), tokens);
    }
}

#[test]
fn packing_is_deterministic() {
    let examples = random_examples(42, 200, 100);
    assert_eq!(pack(&examples, 128).unwrap(), pack(&examples, 128).unwrap());
}

/// Next-fit in input order: the baseline best-fit decreasing must beat.
fn next_fit(lengths: &[usize], max: usize) -> usize {
    let (mut bins, mut room) = (0, 0);
    for &len in lengths {
        if len > room {
            bins += 1;
            room = max;
        }
        room -= len;
    }
    bins
}

#[test]
fn best_fit_decreasing_beats_next_fit_on_a_crafted_case() {
    let lengths = [6, 5, 4, 5];
    let examples: Vec<Example> = lengths.iter().enumerate().map(|(i, &l)| example(i + 1, l, 0)).collect();
    let seqs = pack(&examples, 10).unwrap();
    assert_eq!(next_fit(&lengths, 10), 3);
    assert_eq!(seqs.len(), 2);
    assert!(seqs.iter().all(|s| s.len() == 10));
}

#[test]
fn best_fit_decreasing_never_uses_more_sequences_than_next_fit() {
    for seed in 1..=10u64 {
        let examples = random_examples(seed * 104_729, 100, 64);
        let lengths: Vec<usize> = examples.iter().map(|e| e.input_ids.len()).collect();
        assert!(pack(&examples, 64).unwrap().len() <= next_fit(&lengths, 64), "seed {seed}");
    }
}

#[test]
fn an_example_over_the_limit_is_an_error_naming_the_row() {
    let err = pack(&[example(1, 3, 0), example(2, 9, 0)], 8).unwrap_err();
    assert!(matches!(&err, PackError::TooLong { tokens: 9, max: 8, .. }), "{err}");
    assert!(err.to_string().starts_with("gen:2:"), "{err}");
}
