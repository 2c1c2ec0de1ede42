//! The data of a run: every training file read, rendered, tokenized and masked (or a prepared
//! dataset taken as stored, once its manifest fits the run), an eval file or split held out,
//! and the examples made into [`Record`]s (packed when the config says so). Which rows of each
//! file are used, and in what shares, is [`crate::mix`]'s rule.

use std::collections::BTreeSet;
use std::path::Path;

use sft_data::conversation::Conversation;
use sft_data::data::{read_dataset, ReadOptions};
use sft_data::encode::{encode_all, Example};
use sft_data::prepared::{DataFingerprint, ManifestKey, PreparedDataset, Settings, MANIFEST};
use sft_data::template::Renderer;
use sft_data::tokens::TextTokenizer;
use sft_model::model::IGNORE;

use crate::batches::{records, Plan, Record};
use crate::config::{RawDataset, TrainConfig};
use crate::mix::{row_order, weighted_counts, DatasetCount};
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
    /// What the run took from each training file.
    pub datasets: Vec<DatasetCount>,
}

/// Reads, renders, tokenizes and masks the training (and evaluation) data with the tokenizer and
/// template of `tokenizer_dir`.
pub fn prepare(cfg: &TrainConfig, tokenizer_dir: &Path) -> Result<TrainData, TrainError> {
    let renderer = Renderer::new(Some(tokenizer_dir), &cfg.template.choice()?, cfg.template.kwargs_for(Some(tokenizer_dir))?)?;
    let tokenizer = TextTokenizer::from_dir(tokenizer_dir)?;
    let mut files: Vec<Vec<Example>> = vec![];
    let mut prepared: Vec<Record> = vec![];
    let mut datasets: Vec<DatasetCount> = vec![];
    for (i, ds) in cfg.datasets.iter().enumerate() {
        if ds.path.join(MANIFEST).is_file() {
            let records = prepared_records(cfg, i, ds, tokenizer_dir, &renderer)?;
            let n = records.len();
            datasets.push(DatasetCount {
                path: ds.path.display().to_string(),
                format: "prepared".into(),
                rows: n,
                selected: n,
                examples: n,
                used: n,
                weight: None,
            });
            prepared.extend(records);
        } else {
            let (examples, count) = encode_file(cfg, ds, i, &renderer, &tokenizer)?;
            files.push(examples);
            datasets.push(count);
        }
    }
    let weights: Option<Vec<f64>> = cfg.datasets.iter().map(|d| d.weight).collect();
    // Every dataset has a weight, so none is a prepared one (they take no weight): `files` and
    // `datasets` are the config's datasets, in order.
    if let Some(weights) = weights {
        let counts = weighted_counts(&files.iter().map(Vec::len).collect::<Vec<_>>(), &weights);
        for ((examples, count), k) in files.iter_mut().zip(&mut datasets).zip(counts) {
            examples.truncate(k);
            count.used = k;
        }
    }
    let mut train: Vec<Example> = files.into_iter().flatten().collect();
    let mut eval = match &cfg.eval_dataset {
        Some(ds) => encode_file(cfg, ds, cfg.datasets.len(), &renderer, &tokenizer)?.0,
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
        datasets,
    })
}

/// The examples of one data file (its rows picked by `shuffle` and `max_samples`; `index`, its
/// position in `datasets`, seeds the shuffle), with its skipped and excluded rows reported.
fn encode_file(
    cfg: &TrainConfig,
    ds: &RawDataset,
    index: usize,
    renderer: &Renderer,
    tokenizer: &TextTokenizer,
) -> Result<(Vec<Example>, DatasetCount), TrainError> {
    let name = ds.path.to_string_lossy();
    let columns = ds.read_columns().map_err(|message| TrainError::Config { path: cfg.source.clone(), key: "columns".into(), message })?;
    let sharegpt = ds.sharegpt().map_err(|message| TrainError::Config { path: cfg.source.clone(), key: "roles".into(), message })?;
    let opts = ReadOptions { format: ds.format.format(), sharegpt, on_bad_row: cfg.on_bad_row, columns };
    let dataset = read_dataset(&name, &opts)?;
    if let Some(report) = dataset.skipped_report(&name) {
        eprintln!("{report}");
    }
    let rows = dataset.conversations.len();
    let mut all: Vec<Option<Conversation>> = dataset.conversations.into_iter().map(Some).collect();
    let picked: Vec<Conversation> =
        row_order(rows, ds.shuffle, ds.max_samples, cfg.seed, index).into_iter().filter_map(|i| all[i].take()).collect();
    let encoded = encode_all(&picked, &cfg.encode, renderer, tokenizer)?;
    for ex in encoded.excluded.iter().take(10) {
        eprintln!("{name}: excluded {ex}");
    }
    if encoded.excluded.len() > 10 {
        eprintln!("{name}: ... {} rows excluded in all", encoded.excluded.len());
    }
    if let Some(w) = encoded.stats.eos_warning() {
        eprintln!("warning: {name}: {w}");
    }
    let examples = encoded.examples.len();
    let count = DatasetCount {
        path: name.into_owned(),
        format: dataset.format.to_string(),
        rows,
        selected: picked.len(),
        examples,
        used: examples,
        weight: ds.weight,
    };
    Ok((encoded.examples, count))
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
/// `datasets[index]` is such a directory; its rows were chosen when it was prepared, so the
/// mixing and column keys are refused.
fn prepared_records(
    cfg: &TrainConfig,
    index: usize,
    ds: &RawDataset,
    tokenizer_dir: &Path,
    renderer: &Renderer,
) -> Result<Vec<Record>, TrainError> {
    let dir = &ds.path;
    let mixing = [
        ("shuffle", ds.shuffle),
        ("max_samples", ds.max_samples.is_some()),
        ("weight", ds.weight.is_some()),
        ("columns", !ds.columns.is_empty()),
    ];
    if let Some((key, _)) = mixing.iter().find(|(_, set)| *set) {
        return Err(TrainError::Config {
            path: cfg.source.clone(),
            key: format!("datasets[{index}].{key}"),
            message: format!("{}: a prepared dataset is used whole; set {key} on the data file instead", dir.display()),
        });
    }
    let dataset = PreparedDataset::open(dir)?;
    let source = DataFingerprint::of(&dataset.manifest().key.data.path)?;
    let expected = ManifestKey::new(tokenizer_dir, renderer, Settings::new(&cfg.encode, cfg.packing), cfg.template.now.as_deref(), source)?;
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
