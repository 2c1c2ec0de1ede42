//! The training loop, top to bottom: the data ([`data::prepare`]) and its order ([`Plan`]), the
//! learning-rate schedule, the model and optimizer, new or resumed from a checkpoint
//! ([`Run::start`]); then for every step: stop if asked → learning rate → micro-batches with the
//! loss token-weighted over the whole step → clip → the optimizer step ([`Run::step`]) → log → evaluate →
//! checkpoint.
//!
//! Data-parallel over ranks (a [`Collective`]): the data order is the global batch's
//! (`per_device_train_batch_size` × ranks records per micro-batch), each rank takes its share
//! of every micro-batch, the step's trained-token count is summed over ranks before the
//! backward pass (so every rank scales its loss by the global count, as one process would), the
//! gradients and loss sums are summed after it, and every rank then clips and steps the same
//! numbers: the parameters stay identical. Rank 0 alone holds the output directory's lock and
//! writes checkpoints, metrics, the plot and the progress bar.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use sft_hub::LocalModel;
use sft_model::model::{Batch, Evaluation, LoadOptions, Model, Trainable};

use crate::batches::{Plan, Record};
use crate::checkpoint::{self, Contents, TrainerState};
use crate::collective::{broadcast_params, share, sum_gradients, Collective};
use crate::config::{Length, Method, TrainConfig};
use crate::data::{self, TrainData};
use crate::lock::RunLock;
use crate::metrics::{LogEntry, Metrics, Progress, Timing};
use crate::optim::{clip_grad_norm, AdamWConfig, Optimizer};
use crate::schedule::{warmup_from_ratio, Schedule};
use crate::threads::{Gradients, ThreadGroups};
use crate::{during, TrainError};

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
    /// The optimizer's name (the `optim` value).
    pub optimizer: &'static str,
    /// Bytes of optimizer state (moment estimates) on each rank.
    pub optimizer_state_bytes: usize,
}

/// Optimizer-state bytes in words: `"1234 bytes of state (0.0 MiB)"`.
pub fn state_memory(bytes: usize) -> String {
    format!("{bytes} bytes of state ({:.1} MiB)", bytes as f64 / (1 << 20) as f64)
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

/// Trains as `cfg` says, as one rank of `comm` (one process: [`crate::collective::Single`]).
pub fn train(cfg: &TrainConfig, opts: &Options, comm: &dyn Collective) -> Result<Outcome, TrainError> {
    let groups = ThreadGroups::for_training(cfg.batch_size, matches!(cfg.method, Method::Full))?;
    let base = sft_hub::locate(&cfg.model)?;
    let tokenizer = if cfg.tokenizer == cfg.model { base.clone() } else { sft_hub::locate(&cfg.tokenizer)? };
    // Rank 0 writes the output directory, so it holds the lock (taken once the model is found,
    // so a run that cannot start writes nothing); the other ranks only read it.
    let _lock = comm.is_writer().then(|| RunLock::acquire(&cfg.output_dir)).transpose()?;
    // With added_tokens, a copy of the tokenizer with them (the model grows to its length).
    let (tokenizer, vocab_size) = crate::added::tokenizer(cfg, tokenizer, comm.is_writer())?;
    let data = data::prepare(cfg, &tokenizer.dir)?;
    let plan = Plan { records: data.train.len(), batch_size: cfg.batch_size * comm.size(), accumulation: cfg.accumulation, seed: cfg.seed };
    let schedule = schedule(cfg, &plan);
    let mut run = Run::start(Setup { cfg, base, tokenizer, vocab_size, data: &data, comm }, opts, schedule.total_steps)?;
    for step in run.state.global_step..schedule.total_steps {
        if any_rank(comm, opts.stop.load(Ordering::SeqCst))? {
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

/// Whether `flag` is set on any rank (a Ctrl-C that reached only some of them stops all).
fn any_rank(comm: &dyn Collective, flag: bool) -> Result<bool, TrainError> {
    let mut v = [f64::from(u8::from(flag))];
    comm.all_reduce_sum_f64(&mut v)?;
    Ok(v[0] > 0.0)
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
    /// The tokenizer's length when tokens were added (the model's vocabulary grows to it).
    vocab_size: Option<usize>,
    data: &'a TrainData,
    comm: &'a dyn Collective,
}

/// A run in progress: the model, its optimizer and the state a checkpoint keeps.
struct Run<'a> {
    cfg: &'a TrainConfig,
    base: LocalModel,
    tokenizer: LocalModel,
    data: &'a TrainData,
    comm: &'a dyn Collective,
    model: Model,
    optimizer: Optimizer,
    state: TrainerState,
    /// Rank 0's; none on the other ranks.
    metrics: Option<Metrics>,
    /// Rank 0's; none on the other ranks.
    progress: Option<Progress>,
    /// The resolved config as saved beside the checkpoints.
    config_yaml: String,
    last_saved: Option<PathBuf>,
    eval_loss: Option<f64>,
}

impl<'a> Run<'a> {
    /// Loads the model and a new optimizer, or resumes both and the trainer state from the
    /// checkpoint `opts` names; prints what trains.
    fn start(setup: Setup<'a>, opts: &Options, total: usize) -> Result<Self, TrainError> {
        let Setup { cfg, base, tokenizer, vocab_size, data, comm } = setup;
        let writer = comm.is_writer();
        let resume_dir = match &opts.resume {
            None => None,
            Some(Resume::Latest) => Some(checkpoint::latest(&cfg.output_dir).ok_or_else(|| TrainError::Checkpoint {
                path: cfg.output_dir.clone(),
                message: "--resume latest: no checkpoint-N directory with a trainer_state.json here".into(),
            })?),
            Some(Resume::Path(p)) => Some(p.clone()),
        };
        let load = LoadOptions { format: cfg.base_format, vocab_size, saved_modules: None };
        let mut model = match (&cfg.method, &resume_dir) {
            (Method::Full, None) => Model::load_with(&base.dir, &Trainable::Full, &load)?,
            (Method::Full, Some(dir)) => Model::load_with(dir, &Trainable::Full, &load)?,
            (Method::Lora(settings), None) => {
                let trainable = match &cfg.adapter {
                    // A new run from a trained adapter: its weights, a fresh optimizer and schedule.
                    Some(dir) => Trainable::Adapter { dir: dir.clone(), train: true },
                    None => Trainable::NewLora { settings: settings.clone(), seed: cfg.seed },
                };
                Model::load_with(&base.dir, &trainable, &load)?
            }
            (Method::Lora(_), Some(dir)) => Model::load_with(&base.dir, &Trainable::Adapter { dir: dir.clone(), train: true }, &load)?,
        };
        model.set_gradient_checkpointing(cfg.gradient_checkpointing);
        // Every rank loaded the same files; rank 0's values make sure they start equal.
        broadcast_params(comm, model.params())?;
        let adam = AdamWConfig { beta1: cfg.betas.0, beta2: cfg.betas.1, eps: cfg.adam_epsilon, weight_decay: cfg.weight_decay };
        let mut optimizer = Optimizer::new(cfg.optim, model.params().to_vec(), adam)?;
        let mut state = TrainerState::new(cfg, total, comm.size());
        if let (Some(dir), None, true) = (&cfg.adapter, &resume_dir, writer) {
            eprintln!("starting from the adapter {}: its weights, a fresh optimizer and schedule", dir.display());
        }
        if let Some(dir) = &resume_dir {
            state = checkpoint::read_state(dir)?;
            optimizer.load_state(&checkpoint::read_optimizer(dir)?)?;
            if writer {
                eprintln!("resuming from {} at step {}", dir.display(), state.global_step);
                warn_if_the_global_batch_changed(&state, cfg.batch_size, comm.size());
            }
            (state.max_steps, state.train_batch_size, state.world_size) = (total, cfg.batch_size, comm.size());
        }
        let config_yaml = serde_yaml::to_string(&cfg.raw).unwrap_or_default();
        let (mut metrics, mut progress) = (None, None);
        if writer {
            describe(cfg, data, &model, &optimizer, total, comm.size());
            metrics = Some(Metrics::open(&cfg.output_dir, &state.log_history)?);
            progress = Some(Progress::new(total, state.global_step, opts.progress_bar));
            let config_copy = cfg.output_dir.join("training_config.yaml");
            std::fs::write(&config_copy, &config_yaml).map_err(|source| TrainError::Io { path: config_copy, source })?;
            let summary = cfg.output_dir.join("data_summary.json");
            let text = serde_json::to_vec_pretty(&serde_json::json!({ "datasets": data.datasets })).unwrap_or_default();
            std::fs::write(&summary, text).map_err(|source| TrainError::Io { path: summary, source })?;
        }
        let last_saved = None;
        Ok(Run { cfg, base, tokenizer, data, comm, model, optimizer, state, metrics, progress, config_yaml, last_saved, eval_loss: None })
    }

    /// This rank's batches of each micro-batch of `step`: its share of the global micro-batch,
    /// laid out for the thread groups.
    fn local_batches(&self, plan: &Plan, groups: &ThreadGroups, step: usize) -> Result<Vec<Vec<Batch>>, TrainError> {
        let (rank, ranks) = (self.comm.rank(), self.comm.size());
        plan.step(step)
            .iter()
            .map(|m| groups.batches(&m[share(m.len(), ranks, rank)].iter().map(|&i| self.data.train[i].sequence()).collect::<Vec<_>>()))
            .collect()
    }

    /// One optimizer step: every micro-batch's gradients of the loss token-weighted over the
    /// whole step (each micro-batch as passes side by side), summed over micro-batches and
    /// ranks; clipped; the optimizer's step. A loss or norm that is not finite saves the last good step and
    /// stops.
    fn step(&mut self, plan: &Plan, groups: &ThreadGroups, step: usize, lr: f64) -> Result<Update, TrainError> {
        let (rank, ranks) = (self.comm.rank(), self.comm.size());
        let micro = self.local_batches(plan, groups, step)?;
        // The step's target and input tokens over every rank, before any loss is scaled.
        let mut counts = [
            micro.iter().flatten().map(|b| b.targets.len()).sum::<usize>() as f64,
            micro.iter().flatten().map(|b| b.batch * b.seq).sum::<usize>() as f64,
        ];
        self.comm.all_reduce_sum_f64(&mut counts)?;
        let (targets, tokens) = (counts[0] as usize, counts[1] as usize);
        let mut sum = Gradients::default();
        for (m, batches) in micro.iter().enumerate() {
            // LoRA dropout masks: a pure function of seed, step, micro-batch, rank (and group).
            let dropout_seed = self.cfg.seed
                ^ ((step as u64) << 20 | m as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)
                ^ (rank as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
            let part = groups.gradients(&self.model, batches, 1.0 / targets.max(1) as f64, Some(dropout_seed))?;
            sum.add(&part, &self.model)?;
        }
        let Gradients { loss_sum, mut grads } = sum;
        if grads.is_empty() {
            // A rank whose share of every micro-batch was empty (the epoch's short last step).
            let zeros = self.model.params().iter().map(|(_, v)| v.as_tensor().zeros_like()).collect();
            grads = during(zeros, || "zero gradients for an empty share".into())?;
        }
        // The loss sum, then per rank whether its own was finite (so a NaN names its rank).
        let mut sums = vec![0.0; 1 + ranks];
        sums[0] = crate::fault::loss(step, rank, loss_sum);
        sums[1 + rank] = f64::from(u8::from(!sums[0].is_finite()));
        self.comm.all_reduce_sum_f64(&mut sums)?;
        sum_gradients(self.comm, &mut grads)?;
        let loss = sums[0] / targets.max(1) as f64;
        let grad_norm = clip_grad_norm(&mut grads, self.cfg.max_grad_norm)?;
        if !loss.is_finite() || !grad_norm.is_finite() {
            let saved = self.save()?;
            let bad: Vec<String> = (0..ranks).filter(|&r| sums[1 + r] > 0.0).map(|r| r.to_string()).collect();
            let what = match (loss.is_finite(), ranks > 1 && !bad.is_empty()) {
                (true, _) => "the gradient norm".to_string(),
                (false, true) => format!("the loss (of rank {})", bad.join(", rank ")),
                (false, false) => "the loss".to_string(),
            };
            return Err(TrainError::NonFinite { step, what, saved });
        }
        self.optimizer.step(&grads, lr)?;
        Ok(Update { loss, grad_norm, tokens })
    }

    /// Adds the step's loss to the window and, every `logging_steps` (and at the `last` step),
    /// logs the window's mean.
    fn log(&mut self, update: &Update, lr: f64, timing: Timing, last: bool) -> Result<(), TrainError> {
        let state = &mut self.state;
        state.window = (state.window.0 + update.loss, state.window.1 + 1);
        if let Some(p) = &mut self.progress {
            p.step(update.loss, lr, timing.tokens_per_second);
        }
        if !state.global_step.is_multiple_of(self.cfg.logging_steps) && !last {
            return Ok(());
        }
        let mean = state.window.0 / state.window.1.max(1) as f64;
        let entry =
            LogEntry::Train { step: state.global_step, epoch: state.epoch, loss: mean, learning_rate: lr, grad_norm: update.grad_norm };
        state.window = (0.0, 0);
        self.record(&entry, Some(timing))
    }

    /// Adds a log entry to the history and, on rank 0, to metrics.jsonl and the console.
    fn record(&mut self, entry: &LogEntry, timing: Option<Timing>) -> Result<(), TrainError> {
        if let (Some(metrics), Some(progress)) = (&mut self.metrics, &self.progress) {
            metrics.log(entry, timing)?;
            progress.line(entry);
        }
        self.state.log_history.push(entry.clone());
        Ok(())
    }

    /// Evaluates on the held-out records (each rank its share), logs the loss and redraws the
    /// plot.
    fn evaluate(&mut self, groups: &ThreadGroups) -> Result<(), TrainError> {
        let mine = share(self.data.eval.len(), self.comm.size(), self.comm.rank());
        let sequences: Vec<_> = self.data.eval[mine].iter().map(Record::sequence).collect();
        let local = groups.evaluate(&self.model, &sequences)?;
        let mut sums = [local.loss_sum, local.tokens as f64];
        self.comm.all_reduce_sum_f64(&mut sums)?;
        let result = Evaluation { loss_sum: sums[0], tokens: sums[1] as usize };
        self.eval_loss = Some(result.loss());
        let entry =
            LogEntry::Eval { step: self.state.global_step, epoch: self.state.epoch, eval_loss: result.loss(), eval_tokens: result.tokens };
        self.record(&entry, None)?;
        if let Some(metrics) = &self.metrics {
            metrics.plot(&self.state.log_history)?;
        }
        Ok(())
    }

    /// Saves a checkpoint of the steps so far (rank 0; the other ranks return its path).
    fn save(&self) -> Result<PathBuf, TrainError> {
        if !self.comm.is_writer() {
            return Ok(checkpoint::dir_of(&self.cfg.output_dir, self.state.global_step));
        }
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

    /// Ends the run: the bar, the plot, the final checkpoint (saved unless the last step was);
    /// every rank returns once rank 0 has saved it.
    fn finish(self) -> Result<Summary, TrainError> {
        if let (Some(metrics), Some(progress)) = (&self.metrics, &self.progress) {
            progress.finish();
            metrics.plot(&self.state.log_history)?;
        }
        let checkpoint = match &self.last_saved {
            Some(p) => p.clone(),
            None => self.save()?,
        };
        self.comm.barrier()?;
        let last_loss = self.state.log_history.iter().rev().find_map(|e| match e {
            LogEntry::Train { loss, .. } => Some(*loss),
            LogEntry::Eval { .. } => None,
        });
        Ok(Summary {
            steps: self.state.global_step,
            last_loss,
            eval_loss: self.eval_loss,
            checkpoint,
            optimizer: self.optimizer.kind().name(),
            optimizer_state_bytes: self.optimizer.state_bytes(),
        })
    }
}

/// Prints what trains: records, tokens, steps, parameters with and without weight decay, and
/// the memory of compact base weights.
fn describe(cfg: &TrainConfig, data: &TrainData, model: &Model, optimizer: &Optimizer, total: usize, ranks: usize) {
    let (decayed, plain) = optimizer.decay_counts();
    let n_params: usize = model.params().iter().map(|(_, v)| v.elem_count()).sum();
    eprintln!(
        "training {} records ({} trained tokens) for {total} steps; {n_params} trainable parameters in {} tensors ({decayed} with weight decay, {plain} without)",
        data.train.len(),
        data.trained_tokens,
        model.params().len()
    );
    for count in &data.datasets {
        eprintln!("  {count}");
    }
    eprintln!("optimizer {}: {}", optimizer.kind().name(), state_memory(optimizer.state_bytes()));
    if ranks > 1 {
        eprintln!(
            "data-parallel over {ranks} ranks: global batch {} = per_device_train_batch_size {} × gradient_accumulation_steps {} × {ranks} ranks",
            cfg.batch_size * cfg.accumulation * ranks,
            cfg.batch_size,
            cfg.accumulation
        );
    }
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

/// Warns when a resumed run's global micro-batch (records per micro-batch over every rank)
/// differs from the checkpoint's: the data order from here on is not the original run's.
fn warn_if_the_global_batch_changed(state: &TrainerState, batch_size: usize, ranks: usize) {
    let (before, now) = (state.train_batch_size * state.world_size, batch_size * ranks);
    if before != now {
        eprintln!(
            "warning: the checkpoint was trained with {before} records per micro-batch ({} per device × {} ranks), this run takes {now} ({batch_size} × {ranks}): \
             the data order from here on differs from the original run's (set per_device_train_batch_size to {before} / ranks to keep it)",
            state.train_batch_size, state.world_size
        );
    }
}
