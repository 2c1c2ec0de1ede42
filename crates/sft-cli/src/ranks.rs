//! Which ranks this process trains among: under `mpirun` or `srun` (seen in the launcher's
//! environment), MPI's world with the `mpi` feature; otherwise one process alone. MPI is only
//! initialized under a launcher, so a plain `sft train` never depends on an MPI runtime being
//! configured. The cores of a node are divided among the ranks on it, unless the user set
//! `RAYON_NUM_THREADS` (and `CANDLE_NUM_THREADS`) already.

use sft_train::collective::{Collective, Single};

/// Environment variables a launcher sets in every rank: Open MPI's mpirun, MPICH/Hydra and
/// Intel MPI (PMI), PMIx launchers (Open MPI 5, `srun --mpi=pmix`), and a Slurm job step.
const LAUNCHER_VARS: &[&str] = &["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "SLURM_STEP_ID"];

/// The launcher variable found, if any.
fn launcher() -> Option<&'static str> {
    LAUNCHER_VARS.iter().copied().find(|v| std::env::var_os(v).is_some())
}

/// The collective of this process (one process alone when not started by a launcher).
#[cfg(feature = "mpi")]
pub fn connect() -> anyhow::Result<Box<dyn Collective>> {
    if launcher().is_none() {
        return Ok(Box::new(Single));
    }
    let mpi = sft_train::collective::Mpi::init()?;
    share_cores(mpi.local_size());
    Ok(Box::new(mpi))
}

/// The collective of this process: one process alone (built without the `mpi` feature).
#[cfg(not(feature = "mpi"))]
pub fn connect() -> anyhow::Result<Box<dyn Collective>> {
    if let Some(var) = launcher() {
        eprintln!("warning: started by an MPI launcher ({var} is set), but this sft is built without the `mpi` feature: every process trains alone (build with --features mpi for data-parallel training)");
    }
    Ok(Box::new(Single))
}

/// Gives each of the `local` ranks on this node its share of the cores for rayon (our kernels)
/// and candle's pool, unless the user chose. Runs before the first parallel op.
#[cfg(feature = "mpi")]
fn share_cores(local: usize) {
    if local <= 1 {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let share = (cores / local).max(1).to_string();
    for var in ["RAYON_NUM_THREADS", "CANDLE_NUM_THREADS"] {
        if std::env::var_os(var).is_none() {
            std::env::set_var(var, &share);
        }
    }
}
