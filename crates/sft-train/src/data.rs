//! The data of a run: every training file read, rendered, tokenized and masked (or a prepared
//! dataset taken as stored, once its manifest fits the run), an eval file or split held out,
//! and the examples made into [`Record`]s (packed when the config says so).

use std::collections::BTreeSet;
use std::path::Path;

use sft_data::data::{read_dataset, ReadOptions, ShareGptOptions};
use sft_data::encode::{encode_all, Example};
use sft_data::prepared::{DataFingerprint, ManifestKey, PreparedDataset, Settings, MANIFEST};
use sft_data::template::{Clock, Renderer};
use sft_data::tokens::TextTokenizer;
use sft_model::model::IGNORE;

use crate::batches::{records, Plan, Record};
use crate::config::{RawDataset, TrainConfig};
use crate::TrainError;

/// The encoded data of a run.
pub struct TrainData {
    /// Training records.
    pub train: Vec<Record>,
    /// Held-out records (none: no evaluation).
    pub eval: Vec<Record>,
    /// The chat template's source, saved with every checkpoint.
    pub template: String,
    /// The EOS `map_eos_token` chose (the template's end-of-turn token) and its id.
    pub mapped_eos: Option<(String, u32)>,
    /// The template's extra keyword arguments, saved with every checkpoint.
    pub template_kwargs: serde_json::Map<String, serde_json::Value>,
    /// Tokens that train, over all training records.
    pub trained_tokens: usize,
}

/// Reads, renders, tokenizes and masks the training (and evaluation) data with the tokenizer and
/// template of `tokenizer_dir`.
pub fn prepare(cfg: &TrainConfig, tokenizer_dir: &Path) -> Result<TrainData, TrainError> {
    let renderer = Renderer::new(Some(tokenizer_dir), &cfg.template.choice(Clock::System), cfg.template.kwargs_for(Some(tokenizer_dir))?)?;
    let tokenizer = TextTokenizer::from_dir(tokenizer_dir)?;
    let mut train: Vec<Example> = vec![];
    let mut prepared: Vec<Record> = vec![];
    for ds in &cfg.datasets {
        if ds.path.join(MANIFEST).is_file() {
            prepared.extend(prepared_records(cfg, &ds.path, tokenizer_dir, &renderer)?);
        } else {
            train.extend(encode_file(cfg, ds, &renderer, &tokenizer)?);
        }
    }
    let mut eval = match &cfg.eval_dataset {
        Some(ds) => encode_file(cfg, ds, &renderer, &tokenizer)?,
        None => vec![],
    };
    if let (Some(fraction), true) = (cfg.eval_split, eval.is_empty()) {
        (train, eval) = split(train, fraction, cfg.seed);
    }
    if train.is_empty() && prepared.is_empty() {
        return Err(TrainError::Config { path: cfg.source.clone(), key: "datasets".into(), message: "no training example left".into() });
    }
    let trained_tokens = train.iter().map(Example::trained_tokens).sum::<usize>()
        + prepared.iter().map(|r| r.labels.iter().filter(|&&l| l != IGNORE).count()).sum::<usize>();
    let pack_to = cfg.packing.then_some(cfg.encode.max_seq_length).flatten();
    let mut train = records(&train, pack_to)?;
    train.extend(prepared);
    let mapped_eos = match &renderer.templates().eos_override {
        None => None,
        Some(token) => Some((
            token.clone(),
            tokenizer.token_to_id(token).ok_or_else(|| TrainError::Config {
                path: cfg.source.clone(),
                key: "map_eos_token".into(),
                message: format!("the tokenizer has no token {token:?} (the template's end-of-turn token) to make the EOS"),
            })?,
        )),
    };
    Ok(TrainData {
        train,
        eval: records(&eval, None)?,
        template: renderer.templates().default.source().to_string(),
        mapped_eos,
        template_kwargs: renderer.kwargs().clone(),
        trained_tokens,
    })
}

/// The examples of one data file, with its skipped and excluded rows reported.
fn encode_file(cfg: &TrainConfig, ds: &RawDataset, renderer: &Renderer, tokenizer: &TextTokenizer) -> Result<Vec<Example>, TrainError> {
    let name = ds.path.to_string_lossy();
    let opts = ReadOptions { format: ds.format.format(), sharegpt: ShareGptOptions::default(), on_bad_row: cfg.on_bad_row };
    let dataset = read_dataset(&name, &opts)?;
    if let Some(report) = dataset.skipped_report(&name) {
        eprintln!("{report}");
    }
    let encoded = encode_all(&dataset.conversations, &cfg.encode, renderer, tokenizer)?;
    for ex in encoded.excluded.iter().take(10) {
        eprintln!("{name}: excluded {ex}");
    }
    if encoded.excluded.len() > 10 {
        eprintln!("{name}: ... {} rows excluded in all", encoded.excluded.len());
    }
    if let Some(w) = encoded.stats.eos_warning() {
        eprintln!("warning: {name}: {w}");
    }
    Ok(encoded.examples)
}

/// `(train, eval)`: `fraction` of the examples (at least one, and one fewer than all) held out,
/// chosen by a shuffle of their order from `seed`.
fn split(examples: Vec<Example>, fraction: f64, seed: u64) -> (Vec<Example>, Vec<Example>) {
    let n = ((examples.len() as f64 * fraction).round() as usize).clamp(1, examples.len().saturating_sub(1).max(1));
    let order = Plan { records: examples.len(), batch_size: 1, accumulation: 1, seed: seed ^ 0x5EED }.order(0);
    let held: BTreeSet<usize> = order.into_iter().take(n).collect();
    let (eval, train): (Vec<_>, Vec<_>) = examples.into_iter().enumerate().partition(|(i, _)| held.contains(i));
    (train.into_iter().map(|(_, x)| x).collect(), eval.into_iter().map(|(_, x)| x).collect())
}

/// The records of a prepared dataset directory (`sft prepare`), after checking that it was made
/// with this run's tokenizer, template, settings and an unchanged data file.
fn prepared_records(cfg: &TrainConfig, dir: &Path, tokenizer_dir: &Path, renderer: &Renderer) -> Result<Vec<Record>, TrainError> {
    let dataset = PreparedDataset::open(dir)?;
    let source = DataFingerprint::of(&dataset.manifest().key.data.path)?;
    let expected = ManifestKey::new(tokenizer_dir, renderer, Settings::new(&cfg.encode, cfg.packing), None, source)?;
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
