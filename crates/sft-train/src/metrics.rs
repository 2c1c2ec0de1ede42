//! What a run shows and keeps: a progress bar (or plain log lines when stderr is not a
//! terminal), `metrics.jsonl` (one object per log or eval event), and `loss_curve.png`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::TrainError;

/// One logged event, as `trainer_state.json`'s `log_history` holds it (transformers' keys).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LogEntry {
    /// Training, averaged over the steps since the last one.
    Train {
        /// The optimizer step after which it was logged.
        step: usize,
        /// Epochs done, fractional.
        epoch: f64,
        /// Mean training loss over the logged steps.
        loss: f64,
        /// The learning rate of the last step.
        learning_rate: f64,
        /// The gradient norm of the last step, before clipping.
        grad_norm: f64,
    },
    /// An evaluation.
    Eval {
        /// The optimizer step after which it ran.
        step: usize,
        /// Epochs done, fractional.
        epoch: f64,
        /// Token-weighted mean loss over the eval data.
        eval_loss: f64,
        /// Target tokens evaluated.
        eval_tokens: usize,
    },
}

impl LogEntry {
    /// The step it was logged at.
    pub fn step(&self) -> usize {
        match self {
            LogEntry::Train { step, .. } | LogEntry::Eval { step, .. } => *step,
        }
    }
}

/// How long a step took (metrics.jsonl only; not part of the trainer state).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Timing {
    /// Input tokens per second of the step.
    pub tokens_per_second: f64,
    /// The step's wall time.
    pub step_seconds: f64,
}

/// A line of metrics.jsonl: the entry, and the timing of training entries.
#[derive(Serialize)]
struct Line<'a> {
    #[serde(flatten)]
    entry: &'a LogEntry,
    #[serde(flatten)]
    timing: Option<Timing>,
}

/// `metrics.jsonl` and the loss curve of an output directory.
pub struct Metrics {
    path: PathBuf,
    file: File,
}

impl Metrics {
    /// Starts `output_dir/metrics.jsonl` over from `history` (a resumed run drops lines logged
    /// after its checkpoint).
    pub fn open(output_dir: &Path, history: &[LogEntry]) -> Result<Self, TrainError> {
        std::fs::create_dir_all(output_dir).map_err(|source| TrainError::Io { path: output_dir.into(), source })?;
        let path = output_dir.join("metrics.jsonl");
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)
            .map_err(|source| TrainError::Io { path: path.clone(), source })?;
        let mut metrics = Self { path, file };
        for entry in history {
            metrics.log(entry, None)?;
        }
        Ok(metrics)
    }

    /// Appends an entry (with the timing of its step, for training entries).
    pub fn log(&mut self, entry: &LogEntry, timing: Option<Timing>) -> Result<(), TrainError> {
        let io = |e: std::io::Error| TrainError::Io { path: self.path.clone(), source: e };
        let line = serde_json::to_string(&Line { entry, timing }).map_err(|e| io(e.into()))?;
        writeln!(self.file, "{line}").map_err(io)
    }

    /// Draws `loss_curve.png` beside metrics.jsonl from `history`: training loss (blue) and
    /// evaluation loss (red) against the step, on a shared scale.
    pub fn plot(&self, history: &[LogEntry]) -> Result<PathBuf, TrainError> {
        let out = self.path.with_file_name("loss_curve.png");
        crate::plot::loss_curve(history, &out)?;
        Ok(out)
    }
}

/// The live view: a bar on a terminal, log lines otherwise.
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// For `total` steps, starting after `done`.
    pub fn new(total: usize, done: usize, bar: bool) -> Self {
        let bar = bar.then(|| {
            let pb = ProgressBar::new(total as u64);
            let style = ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  [{elapsed} < {eta}]")
                .unwrap_or_else(|_| ProgressStyle::default_bar());
            pb.set_style(style);
            pb.set_position(done as u64);
            pb
        });
        Self { bar }
    }

    /// After a step.
    pub fn step(&mut self, loss: f64, lr: f64, tokens_per_second: f64) {
        if let Some(pb) = &self.bar {
            pb.set_message(format!("loss {loss:.4}  lr {lr:.2e}  {tokens_per_second:.0} tok/s"));
            pb.inc(1);
        }
    }

    /// A logged entry, as a line.
    pub fn line(&self, entry: &LogEntry) {
        let text = serde_json::to_string(entry).unwrap_or_default();
        match &self.bar {
            Some(pb) => pb.println(text),
            None => eprintln!("{text}"),
        }
    }

    /// Ends the bar.
    pub fn finish(&self) {
        if let Some(pb) = &self.bar {
            pb.finish();
        }
    }
}
