//! [`Collective`] over the system's MPI (Open MPI, MPICH, Intel MPI) through rsmpi, the `mpi`
//! crate: `mpirun -np N sft train` or `srun sft train` starts the ranks, and MPI carries the
//! messages (shared memory within a node, TCP or InfiniBand between nodes). MPI's default error
//! handler ends the job on a failed operation, so the operations here do not fail on their own;
//! a rank that dies (SIGKILL) is noticed by the launcher, which ends the others.

use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
use mpi::environment::Universe;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::Threading;

use super::Collective;
use crate::TrainError;

/// The ranks of `MPI_COMM_WORLD`; dropping it finalizes MPI.
pub struct Mpi {
    world: SimpleCommunicator,
    local_size: usize,
    // Last: finalizes MPI once the communicators are gone.
    _universe: Universe,
}

impl Mpi {
    /// Initializes MPI (once per process). Only the main thread calls MPI; the compute threads
    /// never do (`MPI_THREAD_FUNNELED`).
    pub fn init() -> Result<Self, TrainError> {
        let (universe, _) = mpi::initialize_with_threading(Threading::Funneled)
            .ok_or_else(|| TrainError::Collective { message: "MPI was initialized already".into() })?;
        let world = universe.world();
        let local_size = world.split_shared(world.rank()).size().max(1) as usize;
        Ok(Mpi { world, local_size, _universe: universe })
    }

    /// How many ranks share this node (for dividing its cores among them).
    pub fn local_size(&self) -> usize {
        self.local_size
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }
    fn size(&self) -> usize {
        self.world.size() as usize
    }
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<(), TrainError> {
        // rsmpi has no MPI_IN_PLACE: the send side is a copy.
        let send = buf.to_vec();
        self.world.all_reduce_into(&send[..], buf, SystemOperation::sum());
        Ok(())
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<(), TrainError> {
        let send = buf.to_vec();
        self.world.all_reduce_into(&send[..], buf, SystemOperation::sum());
        Ok(())
    }
    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<(), TrainError> {
        self.world.process_at_rank(root as i32).broadcast_into(buf);
        Ok(())
    }
    fn barrier(&self) -> Result<(), TrainError> {
        self.world.barrier();
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}
