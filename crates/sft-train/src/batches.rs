//! The data order: which records make up each micro-batch of each optimizer step, as a pure
//! function of the step. Every epoch visits every record once, in an order shuffled from the seed
//! and the epoch number, so a resumed run needs nothing but the step to continue exactly.

use sft_data::encode::Example;
use sft_data::pack::pack;
use sft_model::model::Sequence;
use sft_model::rng::SplitMix;

use crate::TrainError;

/// One training record: an example, or packed examples with their boundaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Token ids.
    pub input_ids: Vec<u32>,
    /// Labels (-100 where nothing trains), not shifted.
    pub labels: Vec<i32>,
    /// Row starts then the end.
    pub boundaries: Vec<u32>,
}

impl Record {
    /// As the model takes it.
    pub fn sequence(&self) -> Sequence<'_> {
        Sequence::packed(&self.input_ids, &self.labels, &self.boundaries)
    }
}

/// Examples as records; with `pack_to`, bin-packed into sequences of at most that many tokens.
pub fn records(examples: &[Example], pack_to: Option<usize>) -> Result<Vec<Record>, TrainError> {
    Ok(match pack_to {
        Some(max) => pack(examples, max)?
            .into_iter()
            .map(|p| Record { input_ids: p.input_ids, labels: p.labels, boundaries: p.boundaries })
            .collect(),
        None => examples
            .iter()
            .map(|e| Record { input_ids: e.input_ids.clone(), labels: e.labels.clone(), boundaries: vec![0, e.input_ids.len() as u32] })
            .collect(),
    })
}

/// The order of records over steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Records in the data.
    pub records: usize,
    /// Records per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub accumulation: usize,
    /// Shuffle seed.
    pub seed: u64,
}

impl Plan {
    /// Micro-batches in one epoch (the last may be short).
    pub fn micro_batches_per_epoch(&self) -> usize {
        self.records.div_ceil(self.batch_size.max(1))
    }

    /// Optimizer steps in one epoch (the last may have fewer micro-batches).
    pub fn steps_per_epoch(&self) -> usize {
        self.micro_batches_per_epoch().div_ceil(self.accumulation.max(1)).max(1)
    }

    /// The epoch a step falls in, as a fraction (for logs).
    pub fn epoch_at(&self, step: usize) -> f64 {
        step as f64 / self.steps_per_epoch() as f64
    }

    /// The record order of an epoch.
    pub fn order(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.records).collect();
        let mut rng = SplitMix(self.seed ^ (epoch as u64).wrapping_mul(0xA24B_AED4_963E_E407));
        for i in (1..order.len()).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        order
    }

    /// The micro-batches (record indices) of optimizer step `step` (0-based).
    pub fn step(&self, step: usize) -> Vec<Vec<usize>> {
        let per_epoch = self.steps_per_epoch();
        let (epoch, local) = (step / per_epoch, step % per_epoch);
        let order = self.order(epoch);
        let micro: Vec<&[usize]> = order.chunks(self.batch_size.max(1)).collect();
        let start = local * self.accumulation;
        let end = (start + self.accumulation).min(micro.len());
        micro[start.min(end)..end].iter().map(|m| m.to_vec()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_epoch_visits_every_record_once_in_a_new_order() {
        let plan = Plan { records: 10, batch_size: 3, accumulation: 2, seed: 7 };
        assert_eq!(plan.micro_batches_per_epoch(), 4);
        assert_eq!(plan.steps_per_epoch(), 2);
        for epoch in 0..3 {
            let mut seen: Vec<usize> = (0..2).flat_map(|s| plan.step(epoch * 2 + s)).flatten().collect();
            seen.sort();
            assert_eq!(seen, (0..10).collect::<Vec<_>>(), "epoch {epoch}");
        }
        assert_ne!(plan.order(0), plan.order(1));
        assert_eq!(plan.step(1).len(), 2);
        assert_eq!(plan.step(1)[1].len(), 1, "the epoch's last micro-batch is short");
    }

    #[test]
    fn the_order_depends_only_on_seed_and_step() {
        let a = Plan { records: 50, batch_size: 4, accumulation: 1, seed: 1 };
        assert_eq!(a.step(17), a.step(17));
        assert_ne!(a.step(0), Plan { seed: 2, ..a }.step(0));
    }
}
