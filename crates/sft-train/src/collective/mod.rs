//! Data parallelism across processes: the [`Collective`] a run's ranks talk through (all-reduce,
//! broadcast, barrier), passed into the trainer like the optimizer, so one rank or many the loop
//! reads the same. [`Single`] is one process (every operation a no-op); [`Mpi`] (the `mpi`
//! feature) is the system's MPI through rsmpi, under `mpirun` or Slurm's `srun`. A GPU backend
//! adds NCCL (through cudarc) behind the same trait: docs/scaling.md has the plan.
//!
//! On top of the trait, [`sum_gradients`] and [`broadcast_params`] move whole tensor lists in
//! buckets of at most [`BUCKET_ELEMENTS`] floats: a LoRA adapter's few MB go in one message, a
//! full model's gradient in as many as it takes, so the copy beside each message stays bounded.
//! They run after the backward pass, not overlapped with it: on CPU the compute threads would
//! share cores with MPI's progress, and a step's all-reduce is a small part of a step at these
//! model sizes (docs/scaling.md has the cost model).

#[cfg(feature = "mpi")]
mod mpi;

use candle_core::{Tensor, Var};

#[cfg(feature = "mpi")]
pub use self::mpi::Mpi;
use crate::{during, TrainError};

/// The ranks of a data-parallel run and the collective operations between them. Every rank
/// calls the same operations in the same order, with buffers of the same length.
pub trait Collective {
    /// This process's rank, `0..size()`.
    fn rank(&self) -> usize;
    /// How many ranks run.
    fn size(&self) -> usize;
    /// Sums `buf` element-wise over every rank; every rank gets the same sum.
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<(), TrainError>;
    /// As [`Collective::all_reduce_sum`], in f64 (loss sums, token counts, flags).
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<(), TrainError>;
    /// Replaces `buf` on every rank by rank `root`'s.
    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<(), TrainError>;
    /// Waits until every rank has come here.
    fn barrier(&self) -> Result<(), TrainError>;
    /// Ends every rank of the job at once (after this rank printed why).
    fn abort(&self, code: i32) -> !;

    /// Whether this rank writes (checkpoints, metrics, the plot, the progress bar): rank 0.
    fn is_writer(&self) -> bool {
        self.rank() == 0
    }
}

/// One process alone.
#[derive(Debug, Clone, Copy, Default)]
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _buf: &mut [f32]) -> Result<(), TrainError> {
        Ok(())
    }
    fn all_reduce_sum_f64(&self, _buf: &mut [f64]) -> Result<(), TrainError> {
        Ok(())
    }
    fn broadcast(&self, _buf: &mut [f32], _root: usize) -> Result<(), TrainError> {
        Ok(())
    }
    fn barrier(&self) -> Result<(), TrainError> {
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// Floats per all-reduce or broadcast message: 16 Mi (64 MiB), more than any LoRA adapter of
/// the models we train (135M–8B at r ≤ 64), a bounded copy for a full model.
pub const BUCKET_ELEMENTS: usize = 1 << 24;

/// The `i`-th share of `n` items split into `parts` contiguous shares as even as possible (the
/// first `n % parts` one longer): the records rank `i` takes of a global micro-batch.
pub fn share(n: usize, parts: usize, i: usize) -> std::ops::Range<usize> {
    let parts = parts.max(1);
    let (base, extra) = (n / parts, n % parts);
    let start = i * base + i.min(extra);
    start..(start + base + usize::from(i < extra)).min(n)
}

/// Applies `op` to `tensors`' elements laid end to end, a bucket of at most `bucket` floats at a
/// time, and returns the tensors rebuilt from what `op` left in each bucket.
fn bucketed(
    tensors: &[Tensor],
    bucket: usize,
    mut op: impl FnMut(&mut [f32]) -> Result<(), TrainError>,
) -> Result<Vec<Tensor>, TrainError> {
    let mut out = Vec::with_capacity(tensors.len());
    let mut start = 0;
    while start < tensors.len() {
        // At least one tensor per bucket; a tensor larger than `bucket` goes alone.
        let mut end = start + 1;
        let mut len = tensors[start].elem_count();
        while end < tensors.len() && len + tensors[end].elem_count() <= bucket {
            len += tensors[end].elem_count();
            end += 1;
        }
        let mut buf = Vec::with_capacity(len);
        for t in &tensors[start..end] {
            buf.extend(during(t.flatten_all().and_then(|f| f.to_vec1::<f32>()), || "reading a tensor to send".into())?);
        }
        op(&mut buf)?;
        let mut offset = 0;
        for t in &tensors[start..end] {
            let n = t.elem_count();
            let part = Tensor::from_slice(&buf[offset..offset + n], t.shape(), t.device());
            out.push(during(part, || "rebuilding a received tensor".into())?);
            offset += n;
        }
        start = end;
    }
    Ok(out)
}

/// Sums every rank's gradients (aligned with the model's parameters), in buckets. One rank:
/// returns at once, the gradients untouched.
pub fn sum_gradients(comm: &dyn Collective, grads: &mut Vec<Tensor>) -> Result<(), TrainError> {
    if comm.size() > 1 {
        *grads = bucketed(grads, BUCKET_ELEMENTS, |buf| comm.all_reduce_sum(buf))?;
    }
    Ok(())
}

/// Gives every rank rank 0's values of `params`, in buckets (one rank: nothing to do).
pub fn broadcast_params(comm: &dyn Collective, params: &[(String, Var)]) -> Result<(), TrainError> {
    if comm.size() == 1 {
        return Ok(());
    }
    let tensors: Vec<Tensor> = params.iter().map(|(_, v)| v.as_tensor().clone()).collect();
    let received = bucketed(&tensors, BUCKET_ELEMENTS, |buf| comm.broadcast(buf, 0))?;
    for ((name, var), t) in params.iter().zip(received) {
        during(var.set(&t), || format!("setting {name} from rank 0"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn shares_cover_every_item_once_in_order() {
        for n in 0..9 {
            for parts in 1..5 {
                let all: Vec<usize> = (0..parts).flat_map(|i| share(n, parts, i)).collect();
                assert_eq!(all, (0..n).collect::<Vec<_>>(), "n {n} parts {parts}");
                let sizes: Vec<usize> = (0..parts).map(|i| share(n, parts, i).len()).collect();
                assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1, "{sizes:?}");
            }
        }
        assert_eq!(share(2, 2, 1), 1..2);
    }

    #[test]
    fn buckets_keep_every_tensor_and_respect_the_size() -> candle_core::Result<()> {
        let d = Device::Cpu;
        let tensors = vec![
            Tensor::arange(0f32, 6., &d)?.reshape((2, 3))?,
            Tensor::arange(6f32, 10., &d)?,
            Tensor::arange(10f32, 30., &d)?.reshape((4, 5))?,
            Tensor::arange(30f32, 31., &d)?,
        ];
        let mut sizes = vec![];
        let out = bucketed(&tensors, 10, |buf| {
            sizes.push(buf.len());
            buf.iter_mut().for_each(|x| *x *= 2.0);
            Ok(())
        })
        .expect("bucketed");
        // 6 + 4 fit in 10; the 20-element tensor goes alone; then the last.
        assert_eq!(sizes, vec![10, 20, 1]);
        for (a, b) in tensors.iter().zip(&out) {
            assert_eq!(a.shape(), b.shape());
            assert_eq!((a * 2.0)?.flatten_all()?.to_vec1::<f32>()?, b.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(())
    }
}
