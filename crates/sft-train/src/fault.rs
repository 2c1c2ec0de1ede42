//! Faults the crash-safety tests inject, with the `fault-injection` feature only (the CLI's
//! crash tests enable it; release builds have none of this). `SFT_FAULT`, read once per process:
//! `disk-full:N` fails the save of checkpoint N after its weights are written, as a full disk
//! would; `slow-save:MS` pauses every save there, so that a test can kill the process mid-save;
//! `nan-loss:N` makes the loss of step N (0-based) NaN, on every rank; `nan-loss:N@R` on rank R
//! only. Without the feature these are no-ops.

use std::path::Path;

use crate::TrainError;

/// The fault asked for, as (kind, argument), read from the environment on first use.
#[cfg(feature = "fault-injection")]
fn fault() -> Option<&'static (String, String)> {
    static FAULT: std::sync::OnceLock<Option<(String, String)>> = std::sync::OnceLock::new();
    FAULT
        .get_or_init(|| {
            let spec = std::env::var("SFT_FAULT").ok()?;
            let (kind, arg) = spec.split_once(':')?;
            Some((kind.to_string(), arg.to_string()))
        })
        .as_ref()
}

/// Called by a checkpoint save once the weights are in `dir`.
#[cfg(feature = "fault-injection")]
pub(crate) fn after_weights(step: usize, dir: &Path) -> Result<(), TrainError> {
    match fault() {
        Some((kind, n)) if kind == "disk-full" && n.parse::<usize>() == Ok(step) => Err(TrainError::Io {
            path: dir.join("optimizer.safetensors"),
            source: std::io::Error::new(std::io::ErrorKind::StorageFull, "no space left on device"),
        }),
        Some((kind, ms)) if kind == "slow-save" => {
            std::thread::sleep(std::time::Duration::from_millis(ms.parse().unwrap_or(0)));
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Rank `rank`'s loss of `step`, or NaN when the fault says so.
#[cfg(feature = "fault-injection")]
pub(crate) fn loss(step: usize, rank: usize, loss: f64) -> f64 {
    let hit = |arg: &str| match arg.split_once('@') {
        Some((n, r)) => n.parse::<usize>() == Ok(step) && r.parse::<usize>() == Ok(rank),
        None => arg.parse::<usize>() == Ok(step),
    };
    match fault() {
        Some((kind, arg)) if kind == "nan-loss" && hit(arg) => f64::NAN,
        _ => loss,
    }
}

/// Called by a checkpoint save once the weights are in `dir`.
#[cfg(not(feature = "fault-injection"))]
pub(crate) fn after_weights(_step: usize, _dir: &Path) -> Result<(), TrainError> {
    Ok(())
}

/// Rank `rank`'s loss of `step`.
#[cfg(not(feature = "fault-injection"))]
pub(crate) fn loss(_step: usize, _rank: usize, loss: f64) -> f64 {
    loss
}
