//! Data parallelism inside one machine: [`ThreadGroups`] are rayon pools, each its share of the
//! cores; a micro-batch's sequences are split into groups of similar token counts, each group's
//! forward and backward pass runs on its own pool, and the groups' gradients are summed.
//!
//! Why: one pass spread over every core waits at every op for the slowest thread and runs candle's
//! graph bookkeeping (a zero fill and an add per graph edge) on one thread while the others idle;
//! one-thread passes side by side keep every core busy. Full fine-tuning stays one pass: each
//! pass holds a whole gradient, and side by side it was no faster, with more memory. The
//! measurements are in docs/performance.md.
//!
//! The loss is the same sum over the same targets; only the order of the float additions in the
//! gradient sum differs. LoRA dropout masks are drawn per group (group 0 keeps the micro-batch's
//! seed, so a single group draws exactly what one pass did).

use candle_core::Tensor;
use rayon::{ThreadPool, ThreadPoolBuilder};
use sft_model::model::{Batch, Evaluation, Model, Sequence};

use crate::{during, TrainError};

/// Groups of cores that run passes side by side (none: one pass on the caller's threads).
pub struct ThreadGroups {
    pools: Vec<ThreadPool>,
}

/// One micro-batch's loss sum and its parameters' gradients (aligned with [`Model::params`]);
/// the default, with no gradients yet, is where sums start.
#[derive(Default)]
pub struct Gradients {
    /// Σ cross-entropy over the micro-batch's targets.
    pub loss_sum: f64,
    /// `scale · ∂ loss_sum / ∂ parameter`; zeros where the loss does not reach a parameter.
    pub grads: Vec<Tensor>,
}

impl ThreadGroups {
    /// One pass at a time on the caller's threads.
    pub fn one() -> Self {
        Self { pools: vec![] }
    }

    /// Up to `groups` passes side by side, sharing rayon's threads as evenly as possible (one
    /// group, or one thread: [`ThreadGroups::one`]).
    pub fn new(groups: usize) -> Result<Self, TrainError> {
        let threads = rayon::current_num_threads();
        let groups = groups.min(threads);
        if groups <= 1 {
            return Ok(Self::one());
        }
        let pools = (0..groups)
            .map(|g| {
                let share = threads / groups + usize::from(g < threads % groups);
                ThreadPoolBuilder::new().num_threads(share).thread_name(move |i| format!("sft-pass{g}-{i}")).build()
            })
            .collect::<Result<_, _>>()
            .map_err(|e| TrainError::Threads { message: e.to_string() })?;
        Ok(Self { pools })
    }

    /// What training uses: adapters run up to `batch_size` passes side by side; full
    /// fine-tuning runs one (a pass's gradient is as large as the model).
    pub fn for_training(batch_size: usize, full: bool) -> Result<Self, TrainError> {
        Self::new(Self::training_groups(batch_size, full))
    }

    /// How many passes training runs side by side on rayon's threads (see
    /// [`ThreadGroups::for_training`]), known before any pool is built: a binary sets its process-wide
    /// thread settings by it.
    pub fn training_groups(batch_size: usize, full: bool) -> usize {
        if full {
            1
        } else {
            batch_size.min(rayon::current_num_threads())
        }
    }

    /// How many passes run side by side.
    pub fn passes(&self) -> usize {
        self.pools.len().max(1)
    }

    /// Whether passes run side by side.
    pub fn is_parallel(&self) -> bool {
        self.pools.len() > 1
    }

    /// The indices of sequences of these `lengths` in at most [`ThreadGroups::passes`] groups (none
    /// empty): longest first, each goes to the group with the fewest tokens so far; every group
    /// keeps the original order.
    pub fn split(&self, lengths: &[usize]) -> Vec<Vec<usize>> {
        let n = self.passes().min(lengths.len());
        let mut by_length: Vec<usize> = (0..lengths.len()).collect();
        by_length.sort_by_key(|&i| (std::cmp::Reverse(lengths[i]), i));
        let mut groups = vec![vec![]; n];
        let mut tokens = vec![0usize; n];
        for i in by_length {
            let g = (0..n).min_by_key(|&g| (tokens[g], g)).unwrap_or(0);
            tokens[g] += lengths[i];
            groups[g].push(i);
        }
        groups.iter_mut().for_each(|g| g.sort_unstable());
        groups.retain(|g| !g.is_empty());
        groups
    }

    /// `sequences` in the groups of [`ThreadGroups::split`].
    fn groups<'a>(&self, sequences: &[Sequence<'a>]) -> Vec<Vec<Sequence<'a>>> {
        let lengths: Vec<usize> = sequences.iter().map(|s| s.input_ids.len()).collect();
        self.split(&lengths).into_iter().map(|g| g.into_iter().map(|i| sequences[i]).collect()).collect()
    }

    /// The micro-batch `sequences` as one batch per group.
    pub fn batches(&self, sequences: &[Sequence<'_>]) -> Result<Vec<Batch>, TrainError> {
        Ok(self.groups(sequences).iter().map(|g| Batch::new(g, 0)).collect::<Result<_, _>>()?)
    }

    /// `f(g)` for every group `g < n`, each on its own pool (group `g` on pool `g % passes`);
    /// the results in order of `g`. A single group runs on the caller's threads, all of them.
    pub fn run<T: Send>(&self, n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
        let Some((first, rest)) = self.pools.split_first().filter(|_| n > 1) else {
            return (0..n).map(f).collect();
        };
        let stride = self.pools.len();
        let f = &f;
        std::thread::scope(|s| {
            let handles: Vec<_> = rest
                .iter()
                .enumerate()
                .map(|(p, pool)| s.spawn(move || (p + 1..n).step_by(stride).map(|g| (g, pool.install(|| f(g)))).collect::<Vec<_>>()))
                .collect();
            let mut out: Vec<(usize, T)> = (0..n).step_by(stride).map(|g| (g, first.install(|| f(g)))).collect();
            for h in handles {
                match h.join() {
                    Ok(part) => out.extend(part),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            out.sort_by_key(|(g, _)| *g);
            out.into_iter().map(|(_, t)| t).collect()
        })
    }

    /// The loss sum and the gradients of `scale · loss` of a micro-batch laid out by
    /// [`ThreadGroups::batches`]; `dropout_seed` draws the LoRA dropout masks.
    pub fn gradients(&self, model: &Model, batches: &[Batch], scale: f64, dropout_seed: Option<u64>) -> Result<Gradients, TrainError> {
        let parts = self.run(batches.len(), |g| -> Result<Gradients, TrainError> {
            let seed = dropout_seed.map(|s| if g == 0 { s } else { s ^ (g as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) });
            let loss = model.loss_with(&batches[g], seed)?;
            let loss_sum = during(loss.sum.to_scalar::<f32>(), || "reading the loss".into())? as f64;
            let store = loss.backward(scale)?;
            let grads = model
                .params()
                .iter()
                .map(|(name, var)| match store.get(var.as_tensor()) {
                    Some(g) => Ok(g.clone()),
                    None => during(var.as_tensor().zeros_like(), || format!("zero gradient of {name}")),
                })
                .collect::<Result<_, _>>()?;
            Ok(Gradients { loss_sum, grads })
        });
        let mut total = Gradients::default();
        for part in parts {
            total.add(&part?, model)?;
        }
        Ok(total)
    }

    /// The evaluation of `sequences` (no gradients), split over the groups.
    pub fn evaluate(&self, model: &Model, sequences: &[Sequence<'_>]) -> Result<Evaluation, TrainError> {
        let groups = self.groups(sequences);
        let parts = self.run(groups.len(), |g| model.evaluate(&groups[g]));
        let mut total = Evaluation::default();
        for part in parts {
            let part = part?;
            total.loss_sum += part.loss_sum;
            total.tokens += part.tokens;
        }
        Ok(total)
    }
}

impl Gradients {
    /// Adds `other` (another micro-batch or group of the same step); an empty `self` takes it.
    pub fn add(&mut self, other: &Gradients, model: &Model) -> Result<(), TrainError> {
        self.loss_sum += other.loss_sum;
        if self.grads.is_empty() {
            self.grads = other.grads.clone();
            return Ok(());
        }
        for ((acc, g), (name, _)) in self.grads.iter_mut().zip(&other.grads).zip(model.params()) {
            *acc = during(&*acc + g, || format!("accumulating the gradient of {name}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Built = Result<(), rayon::ThreadPoolBuildError>;

    fn one_thread_each(groups: usize) -> Result<ThreadGroups, rayon::ThreadPoolBuildError> {
        let pools = (0..groups).map(|_| ThreadPoolBuilder::new().num_threads(1).build()).collect::<Result<_, _>>()?;
        Ok(ThreadGroups { pools })
    }

    #[test]
    fn split_balances_tokens_and_keeps_order() -> Built {
        // 9 → group 0, 5 → group 1, 4 → group 1 (5 < 9), 3 → group 0 (9 = 9, the first).
        assert_eq!(one_thread_each(2)?.split(&[5, 9, 4, 3]), vec![vec![1, 3], vec![0, 2]]);
        assert_eq!(one_thread_each(2)?.split(&[4, 4, 4, 4]), vec![vec![0, 2], vec![1, 3]]);
        assert_eq!(one_thread_each(3)?.split(&[7]), vec![vec![0]]);
        assert_eq!(ThreadGroups::one().split(&[2, 1]), vec![vec![0, 1]]);
        assert!(one_thread_each(2)?.split(&[]).is_empty());
        Ok(())
    }

    #[test]
    fn run_returns_results_in_order_from_each_pool() -> Built {
        let s = one_thread_each(2)?;
        let ran = s.run(5, |g| (g, std::thread::current().id()));
        assert_eq!(ran.iter().map(|(g, _)| *g).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
        // Groups 0, 2, 4 share one pool and 1, 3 the other; each pool is a thread of its own.
        assert_eq!((ran[0].1, ran[1].1), (ran[2].1, ran[3].1));
        assert_eq!(ran[0].1, ran[4].1);
        assert_ne!(ran[0].1, ran[1].1);
        assert_ne!(ran[0].1, std::thread::current().id());
        assert_eq!(s.run(2, |_| rayon::current_num_threads()), vec![1, 1]);
        // One group (a micro-batch of one sequence) keeps every thread.
        assert_eq!(
            s.run(1, |_| (rayon::current_num_threads(), std::thread::current().id())),
            vec![(rayon::current_num_threads(), std::thread::current().id())]
        );
        Ok(())
    }
}
