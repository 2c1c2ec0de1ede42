//! The training loop, top to bottom: the data ([`data::prepare`]) and its order ([`Plan`]), the
//! learning-rate schedule, the model and optimizer, new or resumed from a checkpoint
//! ([`Run::start`]); then for every step: stop if asked → learning rate → micro-batches with the
//! loss token-weighted over the whole step → clip → AdamW ([`Run::step`]) → log → evaluate →
//! checkpoint.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use sft_hub::LocalModel;
use sft_model::model::{Batch, Model, Trainable};

use crate::batches::{Plan, Record};
use crate::checkpoint::{self, Contents, TrainerState};
use crate::config::{Length, Method, TrainConfig};
use crate::data::{self, TrainData};
use crate::metrics::{LogEntry, Metrics, Progress, Timing};
use crate::optim::{clip_grad_norm, AdamW, AdamWConfig};
use crate::schedule::{warmup_from_ratio, Schedule};
use crate::threads::{Gradients, ThreadGroups};
use crate::TrainError;

/// Where to continue from.
#[derive(Debug, Clone)]
pub enum Resume {
    /// The newest checkpoint in the output directory.
    Latest,
    /// This checkpoint directory.
    Path(PathBuf),
}

/// How a run is driven.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Continue a previous run.
    pub resume: Option<Resume>,
    /// Set (by a Ctrl-C handler) to save a checkpoint and stop after the current step.
    pub stop: Arc<AtomicBool>,
    /// Draw a progress bar (a terminal); otherwise log lines.
    pub progress_bar: bool,
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Steps taken in total.
    pub steps: usize,
    /// The last logged training loss.
    pub last_loss: Option<f64>,
    /// The last evaluation loss.
    pub eval_loss: Option<f64>,
    /// The final checkpoint.
    pub checkpoint: PathBuf,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Every step was taken.
    Finished(Summary),
    /// [`Options::stop`] was set: a checkpoint of the steps so far was saved.
    Interrupted {
        /// The step that was about to run.
        step: usize,
        /// The checkpoint saved.
        saved: PathBuf,
    },
}

/// Trains as `cfg` says.
pub fn train(cfg: &TrainConfig, opts: &Options) -> Result<Outcome, TrainError> {
    let groups = ThreadGroups::for_training(cfg.batch_size, matches!(cfg.method, Method::Full))?;
    let base = sft_hub::locate(&cfg.model)?;
    let tokenizer = if cfg.tokenizer == cfg.model { base.clone() } else { sft_hub::locate(&cfg.tokenizer)? };
    let data = data::prepare(cfg, &tokenizer.dir)?;
    let plan = Plan { records: data.train.len(), batch_size: cfg.batch_size, accumulation: cfg.accumulation, seed: cfg.seed };
    let schedule = schedule(cfg, &plan);
    let mut run = Run::start(Setup { cfg, base, tokenizer, data: &data }, opts, schedule.total_steps)?;
    for step in run.state.global_step..schedule.total_steps {
        if opts.stop.load(Ordering::SeqCst) {
            return Ok(Outcome::Interrupted { step, saved: run.save()? });
        }
        let started = Instant::now();
        let lr = schedule.lr(step);
        let update = run.step(&plan, &groups, step, lr)?;
        run.state.global_step = step + 1;
        run.state.epoch = plan.epoch_at(step + 1);
        let last = step + 1 == schedule.total_steps;
        let seconds = started.elapsed().as_secs_f64();
        let timing = Timing { tokens_per_second: update.tokens as f64 / seconds.max(1e-9), step_seconds: seconds };
        run.log(&update, lr, timing, last)?;
        if !data.eval.is_empty() && (last || cfg.eval_steps.is_some_and(|n| (step + 1).is_multiple_of(n))) {
            run.evaluate(&groups)?;
        }
        if (step + 1).is_multiple_of(cfg.save_steps) || last {
            run.last_saved = Some(run.save()?);
        }
    }
    run.finish().map(Outcome::Finished)
}

/// The learning rate of every step: the config's schedule over the run's total steps.
fn schedule(cfg: &TrainConfig, plan: &Plan) -> Schedule {
    let total = match cfg.length {
        Length::Steps(n) => n,
        Length::Epochs(e) => ((e * plan.steps_per_epoch() as f64).ceil() as usize).max(1),
    };
    let warmup = cfg.warmup_steps.unwrap_or_else(|| warmup_from_ratio(cfg.warmup_ratio, total));
    Schedule { kind: cfg.scheduler, peak_lr: cfg.learning_rate, warmup_steps: warmup, total_steps: total }
}

/// What one optimizer step did.
struct Update {
    /// The mean loss over the step's target tokens.
    loss: f64,
    /// The gradient norm before clipping.
    grad_norm: f64,
    /// Input tokens in the step (padding included).
    tokens: usize,
}

/// What a run starts from: the config, the base model and tokenizer located, the data.
struct Setup<'a> {
    cfg: &'a TrainConfig,
    base: LocalModel,
    tokenizer: LocalModel,
    data: &'a TrainData,
}

/// A run in progress: the model, its optimizer and the state a checkpoint keeps.
struct Run<'a> {
    cfg: &'a TrainConfig,
    base: LocalModel,
    tokenizer: LocalModel,
    data: &'a TrainData,
    model: Model,
    optimizer: AdamW,
    state: TrainerState,
    metrics: Metrics,
    progress: Progress,
    /// The resolved config as saved beside the checkpoints.
    config_yaml: String,
    last_saved: Option<PathBuf>,
    eval_loss: Option<f64>,
}

impl<'a> Run<'a> {
    /// Loads the model and a new optimizer, or resumes both and the trainer state from the
    /// checkpoint `opts` names; prints what trains.
    fn start(setup: Setup<'a>, opts: &Options, total: usize) -> Result<Self, TrainError> {
        let Setup { cfg, base, tokenizer, data } = setup;
        let resume_dir = match &opts.resume {
            None => None,
            Some(Resume::Latest) => Some(checkpoint::latest(&cfg.output_dir).ok_or_else(|| TrainError::Checkpoint {
                path: cfg.output_dir.clone(),
                message: "--resume latest: no checkpoint-N directory with a trainer_state.json here".into(),
            })?),
            Some(Resume::Path(p)) => Some(p.clone()),
        };
        let mut model = match (&cfg.method, &resume_dir) {
            (Method::Full, None) => Model::load(&base.dir, &Trainable::Full)?,
            (Method::Full, Some(dir)) => Model::load(dir, &Trainable::Full)?,
            (Method::Lora(settings), None) => {
                Model::load_as(&base.dir, &Trainable::NewLora { settings: settings.clone(), seed: cfg.seed }, cfg.base_format)?
            }
            (Method::Lora(_), Some(dir)) => {
                Model::load_as(&base.dir, &Trainable::Adapter { dir: dir.clone(), train: true }, cfg.base_format)?
            }
        };
        model.set_gradient_checkpointing(cfg.gradient_checkpointing);
        let adam = AdamWConfig { beta1: cfg.betas.0, beta2: cfg.betas.1, eps: cfg.adam_epsilon, weight_decay: cfg.weight_decay };
        let mut optimizer = AdamW::new(model.params().to_vec(), adam)?;
        let mut state = TrainerState::new(cfg, total);
        if let Some(dir) = &resume_dir {
            state = checkpoint::read_state(dir)?;
            optimizer.load_state(&checkpoint::read_optimizer(dir)?)?;
            state.max_steps = total;
            eprintln!("resuming from {} at step {}", dir.display(), state.global_step);
        }
        describe(cfg, data, &model, &optimizer, total);
        let metrics = Metrics::open(&cfg.output_dir, &state.log_history)?;
        let progress = Progress::new(total, state.global_step, opts.progress_bar);
        let config_yaml = serde_yaml::to_string(&cfg.raw).unwrap_or_default();
        let config_copy = cfg.output_dir.join("training_config.yaml");
        std::fs::write(&config_copy, &config_yaml).map_err(|source| TrainError::Io { path: config_copy, source })?;
        Ok(Run { cfg, base, tokenizer, data, model, optimizer, state, metrics, progress, config_yaml, last_saved: None, eval_loss: None })
    }

    /// One optimizer step: every micro-batch's gradients of the loss token-weighted over the
    /// whole step (each micro-batch as passes side by side), summed; clipped; AdamW. A loss or
    /// norm that is not finite saves the last good step and stops.
    fn step(&mut self, plan: &Plan, groups: &ThreadGroups, step: usize, lr: f64) -> Result<Update, TrainError> {
        let micro: Vec<Vec<Batch>> = plan
            .step(step)
            .iter()
            .map(|m| groups.batches(&m.iter().map(|&i| self.data.train[i].sequence()).collect::<Vec<_>>()))
            .collect::<Result<_, _>>()?;
        let targets: usize = micro.iter().flatten().map(|b| b.targets.len()).sum();
        let tokens: usize = micro.iter().flatten().map(|b| b.batch * b.seq).sum();
        let mut sum = Gradients::default();
        for (m, batches) in micro.iter().enumerate() {
            // LoRA dropout masks: a pure function of seed, step, micro-batch (and group).
            let dropout_seed = self.cfg.seed ^ ((step as u64) << 20 | m as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
            let part = groups.gradients(&self.model, batches, 1.0 / targets.max(1) as f64, Some(dropout_seed))?;
            sum.add(&part, &self.model)?;
        }
        let Gradients { loss_sum, mut grads } = sum;
        let loss = crate::fault::loss(step, loss_sum / targets.max(1) as f64);
        let grad_norm = clip_grad_norm(&mut grads, self.cfg.max_grad_norm)?;
        if !loss.is_finite() || !grad_norm.is_finite() {
            let saved = self.save()?;
            let what = if loss.is_finite() { "the gradient norm" } else { "the loss" };
            return Err(TrainError::NonFinite { step, what: what.into(), saved });
        }
        self.optimizer.step(&grads, lr)?;
        Ok(Update { loss, grad_norm, tokens })
    }

    /// Adds the step's loss to the window and, every `logging_steps` (and at the `last` step),
    /// logs the window's mean.
    fn log(&mut self, update: &Update, lr: f64, timing: Timing, last: bool) -> Result<(), TrainError> {
        let state = &mut self.state;
        state.window = (state.window.0 + update.loss, state.window.1 + 1);
        self.progress.step(update.loss, lr, timing.tokens_per_second);
        if !state.global_step.is_multiple_of(self.cfg.logging_steps) && !last {
            return Ok(());
        }
        let mean = state.window.0 / state.window.1.max(1) as f64;
        let entry =
            LogEntry::Train { step: state.global_step, epoch: state.epoch, loss: mean, learning_rate: lr, grad_norm: update.grad_norm };
        state.window = (0.0, 0);
        self.metrics.log(&entry, Some(timing))?;
        self.progress.line(&entry);
        self.state.log_history.push(entry);
        Ok(())
    }

    /// Evaluates on the held-out records, logs the loss and redraws the plot.
    fn evaluate(&mut self, groups: &ThreadGroups) -> Result<(), TrainError> {
        let sequences: Vec<_> = self.data.eval.iter().map(Record::sequence).collect();
        let result = groups.evaluate(&self.model, &sequences)?;
        self.eval_loss = Some(result.loss());
        let entry =
            LogEntry::Eval { step: self.state.global_step, epoch: self.state.epoch, eval_loss: result.loss(), eval_tokens: result.tokens };
        self.metrics.log(&entry, None)?;
        self.progress.line(&entry);
        self.state.log_history.push(entry);
        self.metrics.plot(&self.state.log_history)?;
        Ok(())
    }

    /// Saves a checkpoint of the steps so far.
    fn save(&self) -> Result<PathBuf, TrainError> {
        let contents = Contents {
            model: &self.model,
            base_model: &self.base,
            optimizer: self.optimizer.state(),
            config_yaml: self.config_yaml.clone(),
            tokenizer: &self.tokenizer.dir,
            chat_template: &self.data.template,
            mapped_eos: self.data.mapped_eos.as_ref(),
            template_kwargs: &self.data.template_kwargs,
        };
        checkpoint::save(&self.cfg.output_dir, &self.state, &contents, self.cfg.save_total_limit)
    }

    /// Ends the run: the bar, the plot, the final checkpoint (saved unless the last step was).
    fn finish(self) -> Result<Summary, TrainError> {
        self.progress.finish();
        self.metrics.plot(&self.state.log_history)?;
        let checkpoint = match &self.last_saved {
            Some(p) => p.clone(),
            None => self.save()?,
        };
        let last_loss = self.state.log_history.iter().rev().find_map(|e| match e {
            LogEntry::Train { loss, .. } => Some(*loss),
            LogEntry::Eval { .. } => None,
        });
        Ok(Summary { steps: self.state.global_step, last_loss, eval_loss: self.eval_loss, checkpoint })
    }
}

/// Prints what trains: records, tokens, steps, parameters with and without weight decay, and
/// the memory of compact base weights.
fn describe(cfg: &TrainConfig, data: &TrainData, model: &Model, optimizer: &AdamW, total: usize) {
    let (decayed, plain) = optimizer.decay_counts();
    let n_params: usize = model.params().iter().map(|(_, v)| v.elem_count()).sum();
    eprintln!(
        "training {} records ({} trained tokens) for {total} steps; {n_params} trainable parameters in {} tensors ({decayed} with weight decay, {plain} without)",
        data.train.len(),
        data.trained_tokens,
        model.params().len()
    );
    let (quantized, bytes) = model.quantized();
    if quantized > 0 {
        let mib = |b: usize| b as f64 / (1 << 20) as f64;
        eprintln!(
            "base linear weights in {:?}: {:.1} MiB ({:.2}× their {:.1} MiB in bf16)",
            cfg.base_format,
            mib(bytes),
            bytes as f64 / (2 * quantized) as f64,
            mib(2 * quantized)
        );
    }
}
