//! The training loop, top to bottom: read and encode the data, plan the order, load the model
//! (or resume a checkpoint), then for every step: learning rate → micro-batches with the loss
//! token-weighted over the whole step → clip → AdamW → log → evaluate → checkpoint.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use sft_data::data::{read_dataset, ReadOptions, ShareGptOptions};
use sft_data::encode::{encode_all, Example};
use sft_data::prepared::{DataFingerprint, ManifestKey, PreparedDataset, Settings, MANIFEST};
use sft_data::template::{Clock, Renderer, TemplateChoice};
use sft_data::tokens::TextTokenizer;
use sft_model::model::{Batch, Model, Trainable, IGNORE};

use crate::batches::{records, Plan, Record};
use crate::checkpoint::{self, Contents, TrainerState};
use crate::config::{Length, Method, RawDataset, TrainConfig};
use crate::metrics::{Metrics, Progress};
use crate::optim::{clip_grad_norm, AdamW, AdamWConfig};
use crate::schedule::{warmup_from_ratio, Schedule};
use crate::shards::{Gradients, Shards};
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

/// The encoded data of a run.
struct Data {
    train: Vec<Record>,
    eval: Vec<Record>,
    template: String,
    trained_tokens: usize,
}

/// Trains as `cfg` says.
pub fn train(cfg: &TrainConfig, opts: &Options) -> Result<Summary, TrainError> {
    let shards = Shards::for_training(cfg.batch_size, matches!(cfg.method, Method::Full))?;
    sft_model::runtime::tune_for_training(shards.is_parallel());
    let data = prepare(cfg)?;
    let plan = Plan { records: data.train.len(), batch_size: cfg.batch_size, accumulation: cfg.accumulation, seed: cfg.seed };
    let total = match cfg.length {
        Length::Steps(n) => n,
        Length::Epochs(e) => ((e * plan.steps_per_epoch() as f64).ceil() as usize).max(1),
    };
    let warmup = cfg.warmup_steps.unwrap_or_else(|| warmup_from_ratio(cfg.warmup_ratio, total));
    let schedule = Schedule { kind: cfg.scheduler, peak_lr: cfg.learning_rate, warmup_steps: warmup, total_steps: total };

    let resume_dir = match &opts.resume {
        None => None,
        Some(Resume::Latest) => Some(checkpoint::latest(&cfg.output_dir).ok_or_else(|| TrainError::Checkpoint {
            path: cfg.output_dir.clone(),
            message: "--resume latest: no checkpoint-N directory with a trainer_state.json here".into(),
        })?),
        Some(Resume::Path(p)) => Some(p.clone()),
    };
    let mut model = match (&cfg.method, &resume_dir) {
        (Method::Full, None) => Model::load(&cfg.model, &Trainable::Full)?,
        (Method::Full, Some(dir)) => Model::load(dir, &Trainable::Full)?,
        (Method::Lora(settings), None) => {
            Model::load_as(&cfg.model, &Trainable::NewLora { settings: settings.clone(), seed: cfg.seed }, cfg.base_format)?
        }
        (Method::Lora(_), Some(dir)) => Model::load_as(&cfg.model, &Trainable::Adapter { dir: dir.clone(), train: true }, cfg.base_format)?,
    };
    model.set_gradient_checkpointing(cfg.gradient_checkpointing);
    let adam = AdamWConfig { beta1: cfg.betas.0, beta2: cfg.betas.1, eps: cfg.adam_epsilon, weight_decay: cfg.weight_decay };
    let mut optimizer = AdamW::new(model.params().to_vec(), adam)?;
    let mut state = TrainerState {
        global_step: 0,
        epoch: 0.0,
        max_steps: total,
        log_history: vec![],
        logging_steps: cfg.logging_steps,
        save_steps: cfg.save_steps,
        train_batch_size: cfg.batch_size,
        seed: cfg.seed,
        window: (0.0, 0),
    };
    if let Some(dir) = &resume_dir {
        state = checkpoint::read_state(dir)?;
        optimizer.load_state(&checkpoint::read_optimizer(dir)?)?;
        state.max_steps = total;
        eprintln!("resuming from {} at step {}", dir.display(), state.global_step);
    }
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
    let mut metrics = Metrics::open(&cfg.output_dir, &state.log_history)?;
    let mut progress = Progress::new(total, state.global_step, opts.progress_bar);
    let config_yaml = serde_yaml::to_string(&cfg.raw).unwrap_or_default();
    let config_copy = cfg.output_dir.join("training_config.yaml");
    std::fs::write(&config_copy, &config_yaml).map_err(|source| TrainError::Io { path: config_copy, source })?;
    let save = |state: &TrainerState, model: &Model, optimizer: &AdamW| -> Result<PathBuf, TrainError> {
        let contents = Contents {
            model,
            base_model: &cfg.model,
            optimizer: optimizer.state(),
            config_yaml: config_yaml.clone(),
            tokenizer: &cfg.tokenizer,
            chat_template: &data.template,
        };
        checkpoint::save(&cfg.output_dir, state, &contents, cfg.save_total_limit)
    };
    let mut last_saved = None;
    let mut eval_loss = None;
    for step in state.global_step..total {
        if opts.stop.load(Ordering::SeqCst) {
            let saved = save(&state, &model, &optimizer)?;
            return Err(TrainError::Interrupted { step, saved });
        }
        let started = Instant::now();
        let lr = schedule.lr(step);
        // Each micro-batch as one batch per pass side by side; the loss is token-weighted over
        // the whole step.
        let micro: Vec<Vec<Batch>> = plan
            .step(step)
            .iter()
            .map(|m| shards.batches(&m.iter().map(|&i| data.train[i].sequence()).collect::<Vec<_>>()))
            .collect::<Result<_, _>>()?;
        let targets: usize = micro.iter().flatten().map(|b| b.targets.len()).sum();
        let tokens: usize = micro.iter().flatten().map(|b| b.batch * b.seq).sum();
        let mut sum = Gradients::default();
        for (m, batches) in micro.iter().enumerate() {
            // LoRA dropout masks: a pure function of seed, step, micro-batch (and group).
            let dropout_seed = cfg.seed ^ ((step as u64) << 20 | m as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
            let part = shards.gradients(&model, batches, 1.0 / targets.max(1) as f64, Some(dropout_seed))?;
            sum.add(&part, &model)?;
        }
        let Gradients { loss_sum, mut grads } = sum;
        let loss = crate::fault::loss(step, loss_sum / targets.max(1) as f64);
        let norm = clip_grad_norm(&mut grads, cfg.max_grad_norm)?;
        if !loss.is_finite() || !norm.is_finite() {
            let saved = save(&state, &model, &optimizer)?;
            let what = if loss.is_finite() { "the gradient norm" } else { "the loss" };
            return Err(TrainError::NonFinite { step, what: what.into(), saved });
        }
        optimizer.step(&grads, lr)?;
        state.global_step = step + 1;
        state.epoch = plan.epoch_at(step + 1);
        state.window = (state.window.0 + loss, state.window.1 + 1);
        let seconds = started.elapsed().as_secs_f64();
        progress.step(loss, lr, tokens as f64 / seconds.max(1e-9));
        let last = step + 1 == total;
        if (step + 1) % cfg.logging_steps == 0 || last {
            let entry = json!({
                "step": step + 1,
                "epoch": state.epoch,
                "loss": state.window.0 / state.window.1.max(1) as f64,
                "learning_rate": lr,
                "grad_norm": norm,
            });
            state.window = (0.0, 0);
            metrics.log(&entry, json!({ "tokens_per_second": tokens as f64 / seconds.max(1e-9), "step_seconds": seconds }))?;
            state.log_history.push(entry);
            progress.line(&state.log_history[state.log_history.len() - 1]);
        }
        let eval_due = !data.eval.is_empty() && (last || cfg.eval_steps.is_some_and(|n| (step + 1) % n == 0));
        if eval_due {
            let seqs: Vec<_> = data.eval.iter().map(Record::sequence).collect();
            let result = shards.evaluate(&model, &seqs)?;
            eval_loss = Some(result.loss());
            let entry = json!({ "step": step + 1, "epoch": state.epoch, "eval_loss": result.loss(), "eval_tokens": result.tokens });
            metrics.log(&entry, json!({}))?;
            state.log_history.push(entry);
            progress.line(&state.log_history[state.log_history.len() - 1]);
            metrics.plot()?;
        }
        if (step + 1) % cfg.save_steps == 0 || last {
            last_saved = Some(save(&state, &model, &optimizer)?);
        }
    }
    progress.finish();
    metrics.plot()?;
    let checkpoint = match last_saved {
        Some(p) => p,
        None => save(&state, &model, &optimizer)?,
    };
    let last_loss = state.log_history.iter().rev().find_map(|e| e.get("loss").and_then(|v| v.as_f64()));
    Ok(Summary { steps: state.global_step, last_loss, eval_loss, checkpoint })
}

/// The records of a prepared dataset directory (`sft prepare`), after checking that it was made
/// with this run's tokenizer, template, settings and an unchanged data file.
fn prepared_records(cfg: &TrainConfig, dir: &Path, renderer: &Renderer) -> Result<Vec<Record>, TrainError> {
    let dataset = PreparedDataset::open(dir)?;
    let source = DataFingerprint::of(&dataset.manifest().key.data.path)?;
    let expected = ManifestKey::new(&cfg.tokenizer, renderer, Settings::new(&cfg.encode, cfg.packing), None, source)?;
    if let Some(reason) = dataset.is_stale(&expected) {
        return Err(TrainError::Config {
            path: cfg.source.clone(),
            key: "datasets".into(),
            message: format!(
                "{}: the prepared dataset does not fit this run ({reason}); run `sft prepare` again or train on the data file",
                dir.display()
            ),
        });
    }
    Ok((0..dataset.len())
        .filter_map(|i| dataset.get(i))
        .map(|r| {
            let len = r.input_ids.len() as u32;
            // Packed rows restart their positions at 0.
            let mut boundaries: Vec<u32> = match r.position_ids {
                Some(p) => p.iter().enumerate().filter(|(_, &x)| x == 0).map(|(i, _)| i as u32).collect(),
                None => vec![0],
            };
            boundaries.push(len);
            Record { input_ids: r.input_ids.to_vec(), labels: r.labels.to_vec(), boundaries }
        })
        .collect())
}

/// Reads, renders, tokenizes and masks the training (and evaluation) data.
fn prepare(cfg: &TrainConfig) -> Result<Data, TrainError> {
    let choice = TemplateChoice { template: cfg.chat_template.clone(), map_eos_token: false, clock: Clock::System };
    let renderer = Renderer::new(Some(&cfg.tokenizer), &choice, cfg.template_kwargs.clone())?;
    let tokenizer = TextTokenizer::from_dir(&cfg.tokenizer)?;
    let encode = |ds: &RawDataset| -> Result<Vec<Example>, TrainError> {
        let format = match ds.format.as_deref() {
            None | Some("auto") => None,
            Some(f) => Some(f.parse().map_err(|e| TrainError::Config {
                path: cfg.source.clone(),
                key: "datasets.format".into(),
                message: format!("{e}"),
            })?),
        };
        let opts = ReadOptions { format, sharegpt: ShareGptOptions::default(), on_bad_row: cfg.on_bad_row };
        let dataset = read_dataset(&ds.path.to_string_lossy(), &opts)?;
        if let Some(report) = dataset.skipped_report(&ds.path.to_string_lossy()) {
            eprintln!("{report}");
        }
        let encoded = encode_all(&dataset.conversations, &cfg.encode, &renderer, &tokenizer)?;
        for ex in encoded.excluded.iter().take(10) {
            eprintln!("{}: excluded {ex}", ds.path.display());
        }
        if encoded.excluded.len() > 10 {
            eprintln!("{}: ... {} rows excluded in all", ds.path.display(), encoded.excluded.len());
        }
        if let Some(w) = encoded.stats.eos_warning() {
            eprintln!("warning: {}: {w}", ds.path.display());
        }
        Ok(encoded.examples)
    };
    let mut train: Vec<Example> = vec![];
    let mut prepared: Vec<Record> = vec![];
    for ds in &cfg.datasets {
        if ds.path.join(MANIFEST).is_file() {
            prepared.extend(prepared_records(cfg, &ds.path, &renderer)?);
        } else {
            train.extend(encode(ds)?);
        }
    }
    let mut eval = match &cfg.eval_dataset {
        Some(ds) => encode(ds)?,
        None => vec![],
    };
    if let (Some(frac), true) = (cfg.eval_split, eval.is_empty()) {
        let n = ((train.len() as f64 * frac).round() as usize).clamp(1, train.len().saturating_sub(1).max(1));
        let order = Plan { records: train.len(), batch_size: 1, accumulation: 1, seed: cfg.seed ^ 0x5EED }.order(0);
        let held: std::collections::BTreeSet<usize> = order.into_iter().take(n).collect();
        let (e, t): (Vec<_>, Vec<_>) = train.into_iter().enumerate().partition(|(i, _)| held.contains(i));
        eval = e.into_iter().map(|(_, x)| x).collect();
        train = t.into_iter().map(|(_, x)| x).collect();
    }
    if train.is_empty() && prepared.is_empty() {
        return Err(TrainError::Config { path: cfg.source.clone(), key: "datasets".into(), message: "no training example left".into() });
    }
    let trained_tokens = train.iter().map(Example::trained_tokens).sum::<usize>()
        + prepared.iter().map(|r| r.labels.iter().filter(|&&l| l != IGNORE).count()).sum::<usize>();
    let pack_to = cfg.packing.then_some(cfg.encode.max_seq_length).flatten();
    let mut train = records(&train, pack_to)?;
    train.extend(prepared);
    Ok(Data { train, eval: records(&eval, None)?, template: renderer.templates().default.source().to_string(), trained_tokens })
}
