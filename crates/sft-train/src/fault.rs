//! Faults the crash-safety tests inject through the `SFT_FAULT` environment variable, unset in
//! real runs (issue 9): `disk-full:N` fails the save of checkpoint N after its weights are
//! written, as a full disk would; `slow-save:MS` pauses every save there, so that a test can
//! kill the process mid-save; `nan-loss:N` makes the loss of step N (0-based) NaN.

use std::path::Path;
use std::time::Duration;

use crate::TrainError;

/// The fault asked for, as (kind, argument).
fn fault() -> Option<(String, String)> {
    let spec = std::env::var("SFT_FAULT").ok()?;
    let (kind, arg) = spec.split_once(':')?;
    Some((kind.to_string(), arg.to_string()))
}

/// Called by a checkpoint save once the weights are in `dir`.
pub(crate) fn after_weights(step: usize, dir: &Path) -> Result<(), TrainError> {
    match fault() {
        Some((kind, n)) if kind == "disk-full" && n.parse::<usize>() == Ok(step) => Err(TrainError::Io {
            path: dir.join("optimizer.safetensors"),
            source: std::io::Error::new(std::io::ErrorKind::StorageFull, "no space left on device"),
        }),
        Some((kind, ms)) if kind == "slow-save" => {
            std::thread::sleep(Duration::from_millis(ms.parse().unwrap_or(0)));
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The loss of `step`, or NaN when the fault says so.
pub(crate) fn loss(step: usize, loss: f64) -> f64 {
    match fault() {
        Some((kind, n)) if kind == "nan-loss" && n.parse::<usize>() == Ok(step) => f64::NAN,
        _ => loss,
    }
}
