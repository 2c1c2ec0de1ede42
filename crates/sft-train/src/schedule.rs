//! Learning-rate schedules as pure functions of the optimizer step, equal to transformers'
//! `get_constant_schedule_with_warmup`, `get_linear_schedule_with_warmup` and
//! `get_cosine_schedule_with_warmup` (`num_cycles = 0.5`) driven the way the HF `Trainer` drives
//! them.
//!
//! The HF `Trainer` calls `scheduler.step()` after `optimizer.step()`, and `LambdaLR` sets the
//! learning rate for step 0 when it is built, so the update at (0-based) optimizer step `k` uses
//! `peak_lr * lambda(k)`. With warmup the first update therefore uses a learning rate of 0.
//!
//! ```
//! use sft_train::schedule::{Schedule, SchedulerKind};
//!
//! let s = Schedule { kind: SchedulerKind::Linear, peak_lr: 1e-3, warmup_steps: 2, total_steps: 10 };
//! assert_eq!(s.lr(0), 0.0);
//! assert_eq!(s.lr(1), 5e-4);
//! assert_eq!(s.lr(2), 1e-3);
//! assert_eq!(s.lr(10), 0.0);
//! ```

/// Which transformers schedule to follow (the `lr_scheduler_type` names, snake case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerKind {
    /// Linear warmup from 0, then the peak learning rate (`get_constant_schedule_with_warmup`).
    #[serde(alias = "constant_with_warmup")]
    Constant,
    /// Linear warmup from 0, then linear decay to 0 at `total_steps`
    /// (`get_linear_schedule_with_warmup`).
    Linear,
    /// Linear warmup from 0, then a half cosine down to 0 at `total_steps`
    /// (`get_cosine_schedule_with_warmup` with `num_cycles = 0.5`).
    Cosine,
}

/// A resolved schedule: the kind, the peak learning rate and the step counts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// The schedule's shape.
    pub kind: SchedulerKind,
    /// The learning rate after warmup (the optimizer's base lr in transformers).
    pub peak_lr: f64,
    /// Number of warmup steps (see [`warmup_from_ratio`] and [`resolve_warmup`]).
    pub warmup_steps: usize,
    /// Total number of optimizer steps of the run.
    pub total_steps: usize,
}

impl Schedule {
    /// The lr used by optimizer step `step` (0-based: the first update uses lr(0)).
    ///
    /// Steps past `total_steps` follow the same formulas as transformers (linear stays at 0;
    /// cosine continues its cosine, clamped at 0).
    pub fn lr(&self, step: usize) -> f64 {
        self.peak_lr * self.multiplier(step)
    }

    /// The `LambdaLR` multiplier of step `step`, computed with the same f64 operations in the
    /// same order as transformers' `_get_*_schedule_with_warmup_lr_lambda`.
    pub fn multiplier(&self, step: usize) -> f64 {
        let current = step as f64;
        let warmup = self.warmup_steps;
        if step < warmup {
            // All three kinds divide by max(1, warmup); warmup > step >= 0 here, so warmup >= 1.
            return current / (warmup as f64);
        }
        // Python ints: num_training_steps - num_warmup_steps may be negative; max(1, ..) then
        // gives 1.
        let decay_len = (self.total_steps as i128 - warmup as i128).max(1) as f64;
        match self.kind {
            SchedulerKind::Constant => 1.0,
            SchedulerKind::Linear => {
                let remaining = (self.total_steps as i128 - step as i128) as f64;
                (remaining / decay_len).max(0.0)
            }
            SchedulerKind::Cosine => {
                let progress = ((step - warmup) as f64) / decay_len;
                let num_cycles = 0.5_f64;
                (0.5 * (1.0 + (std::f64::consts::PI * num_cycles * 2.0 * progress).cos())).max(0.0)
            }
        }
    }
}

/// warmup_steps from a ratio as transformers' `TrainingArguments.get_warmup_steps` does for a
/// ratio (`ceil(total_steps * ratio)`).
///
/// Non-finite or negative ratios give 0 (transformers rejects a negative value earlier).
pub fn warmup_from_ratio(ratio: f64, total_steps: usize) -> usize {
    if !ratio.is_finite() || ratio <= 0.0 {
        return 0;
    }
    (total_steps as f64 * ratio).ceil() as usize
}

/// Resolves transformers 5's `warmup_steps` argument, which is a float: a value `>= 1` is a
/// number of steps (truncated, as Python's `int()` does), a value in `[0, 1)` is a ratio of
/// `total_steps` (see [`warmup_from_ratio`]). This is `TrainingArguments.get_warmup_steps`.
///
/// ```
/// use sft_train::schedule::resolve_warmup;
/// assert_eq!(resolve_warmup(0.1, 25), 3);
/// assert_eq!(resolve_warmup(7.9, 25), 7);
/// assert_eq!(resolve_warmup(1.0, 25), 1);
/// ```
pub fn resolve_warmup(warmup_steps: f64, total_steps: usize) -> usize {
    if warmup_steps >= 1.0 {
        // `as` saturates for huge or infinite values.
        warmup_steps.trunc() as usize
    } else {
        warmup_from_ratio(warmup_steps, total_steps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(kind: SchedulerKind, warmup_steps: usize, total_steps: usize) -> Schedule {
        Schedule { kind, peak_lr: 2.0, warmup_steps, total_steps }
    }

    #[test]
    fn warmup_starts_at_zero_and_reaches_peak() {
        for kind in [SchedulerKind::Constant, SchedulerKind::Linear, SchedulerKind::Cosine] {
            let s = sched(kind, 4, 20);
            assert_eq!(s.lr(0), 0.0);
            assert_eq!(s.lr(2), 1.0);
            assert_eq!(s.lr(4), 2.0);
        }
    }

    #[test]
    fn no_warmup_starts_at_peak() {
        for kind in [SchedulerKind::Constant, SchedulerKind::Linear, SchedulerKind::Cosine] {
            assert_eq!(sched(kind, 0, 10).lr(0), 2.0);
        }
    }

    #[test]
    fn decays_end_at_zero() {
        assert_eq!(sched(SchedulerKind::Linear, 2, 10).lr(10), 0.0);
        assert_eq!(sched(SchedulerKind::Linear, 2, 10).lr(15), 0.0);
        assert!(sched(SchedulerKind::Cosine, 2, 10).lr(10) < 1e-15);
        assert_eq!(sched(SchedulerKind::Constant, 2, 10).lr(10), 2.0);
    }

    #[test]
    fn warmup_longer_than_run() {
        let s = sched(SchedulerKind::Linear, 10, 5);
        assert_eq!(s.lr(4), 0.8);
        assert_eq!(s.lr(10), 0.0);
    }

    #[test]
    fn ratio_is_ceiled() {
        assert_eq!(warmup_from_ratio(0.1, 25), 3);
        assert_eq!(warmup_from_ratio(0.1, 30), 3);
        assert_eq!(warmup_from_ratio(0.0, 30), 0);
        assert_eq!(warmup_from_ratio(-1.0, 30), 0);
        assert_eq!(warmup_from_ratio(f64::NAN, 30), 0);
    }

    #[test]
    fn kind_serde_names() -> Result<(), serde_json::Error> {
        let k: SchedulerKind = serde_json::from_str("\"cosine\"")?;
        assert_eq!(k, SchedulerKind::Cosine);
        assert_eq!(serde_json::to_string(&SchedulerKind::Constant)?, "\"constant\"");
        Ok(())
    }
}
