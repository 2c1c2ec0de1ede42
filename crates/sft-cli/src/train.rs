//! `sft train CONFIG.yaml`: fine-tune as the YAML says (`--set key=value` overrides keys), with
//! checkpoints in `output_dir/checkpoint-N`, `--resume` to continue one, and Ctrl-C saving a
//! checkpoint before it exits. Under `mpirun -np N` or `srun` (built with the `mpi` feature) the
//! N processes train data-parallel; an error on one rank is printed with its rank and ends the
//! whole job.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Args;
use sft_train::collective::Collective;
use sft_train::config::{Method, TrainConfig};
use sft_train::threads::ThreadGroups;
use sft_train::trainer::{train, Options, Outcome, Resume};
use sft_train::TrainError;

/// `sft train` flags.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The training config (YAML).
    pub config: PathBuf,
    /// Override a config key, e.g. --set learning_rate=1e-4 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Continue from a checkpoint directory, or the newest one in output_dir (`latest`).
    #[arg(long, num_args = 0..=1, default_missing_value = "latest", value_name = "PATH|latest")]
    pub resume: Option<String>,
}

/// Runs `sft train`.
pub fn run(args: &TrainArgs) -> anyhow::Result<ExitCode> {
    let comm = crate::ranks::connect()?;
    let comm = comm.as_ref();
    let outcome = sft_train::config::load(&args.config, &args.overrides)
        .map_err(anyhow::Error::from)
        .and_then(|cfg| run_config(&cfg, args.resume.as_deref(), comm));
    let writer = comm.is_writer();
    match outcome {
        Ok(Outcome::Finished(summary)) => {
            if writer {
                eprintln!(
                    "done: {} steps; final checkpoint {}; optimizer {}: {}",
                    summary.steps,
                    summary.checkpoint.display(),
                    summary.optimizer,
                    sft_train::trainer::state_memory(summary.optimizer_state_bytes)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Ok(Outcome::Interrupted { step, saved }) => {
            if writer {
                eprintln!("stopped at step {step}; resume with --resume {}", saved.display());
            }
            Ok(ExitCode::from(130))
        }
        Err(err) if comm.size() > 1 => Ok(end_job(comm, &err)),
        Err(err) => Err(err),
    }
}

/// A rank's error in a data-parallel run. One every rank reached together (a loss that is not
/// finite is summed over ranks: all see it at the same step) is printed by rank 0 and every
/// rank exits; any other is printed with this rank's number and ends every rank of the job
/// (MPI_Abort), since the others would wait for this one forever.
fn end_job(comm: &dyn Collective, err: &anyhow::Error) -> ExitCode {
    let (rank, size) = (comm.rank(), comm.size());
    if matches!(err.downcast_ref::<TrainError>(), Some(TrainError::NonFinite { .. })) {
        if comm.is_writer() {
            eprintln!("error: {err:#}");
        }
        return ExitCode::FAILURE;
    }
    eprintln!("error: rank {rank} of {size}: {err:#}; ending every rank of the job");
    comm.abort(1)
}

/// Trains with the process tuned for it (sft-model's runtime settings, applied here, in the
/// binary) and Ctrl-C handling; shared with the quickstart.
pub fn run_config(cfg: &TrainConfig, resume: Option<&str>, comm: &dyn Collective) -> anyhow::Result<Outcome> {
    sft_model::runtime::tune_for_training(ThreadGroups::training_groups(cfg.batch_size, matches!(cfg.method, Method::Full)) > 1);
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // First Ctrl-C: finish the step, save, exit. Second: exit at once.
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\ninterrupted: saving a checkpoint after this step (Ctrl-C again to quit now)");
    });
    let resume = resume.map(|r| if r == "latest" { Resume::Latest } else { Resume::Path(r.into()) });
    let opts = Options { resume, stop, progress_bar: std::io::stderr().is_terminal() };
    Ok(train(cfg, &opts, comm)?)
}
