//! The training config: [`RawTrainConfig`] mirrors the YAML file with the keys TRL / Axolotl
//! users know (the template and encode keys are sft-data's [`TemplateSettings`] and
//! [`EncodeSettings`], flattened in, the same structs the CLI's flags are); every default lives
//! in its [`Default`]. [`RawTrainConfig::resolve`] validates it once into [`TrainConfig`].
//! Unknown keys, nested ones too, are errors with the closest known key suggested; the known
//! keys are read off the struct itself ([`known_keys`]). `--set key=value` overrides are applied
//! to the YAML before it is read.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_yaml::Value as Yaml;
use sft_data::data::{columns, sharegpt, DataFormat, OnBadRow};
use sft_data::encode::{EncodeOptions, EncodeSettings};
use sft_data::template::TemplateSettings;
use sft_model::lora::{LoraSettings, PeftConfig, Targets, ADAPTER_CONFIG};
use sft_model::quant::BaseFormat;

mod dataset;

pub use dataset::{RawDataset, RoleNames};

use crate::optim::OptimKind;
use crate::schedule::SchedulerKind;
use crate::TrainError;

/// `finetuning`: what trains.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Finetuning {
    /// LoRA adapters on a frozen base.
    #[default]
    Lora,
    /// Every weight.
    Full,
}

/// `bnb_4bit_quant_type`: the 4-bit data type of `load_in_4bit`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuantType {
    /// NormalFloat4, QLoRA's type.
    #[default]
    Nf4,
}

/// The YAML file, key for key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
#[allow(missing_docs)]
pub struct RawTrainConfig {
    /// A model directory, a hub id (`org/name[@revision]`) or a GGUF file.
    pub model: String,
    /// The tokenizer's model, when not the model's own (the same kinds of name).
    pub tokenizer: Option<String>,
    #[serde(flatten)]
    pub template: TemplateSettings,
    pub datasets: Vec<RawDataset>,
    pub eval_dataset: Option<RawDataset>,
    pub on_bad_row: OnBadRow,
    pub eval_split: Option<f64>,
    pub output_dir: PathBuf,
    pub finetuning: Finetuning,
    #[serde(flatten)]
    pub encode: EncodeSettings,
    pub packing: bool,
    pub learning_rate: f64,
    pub lr_scheduler_type: SchedulerKind,
    /// The optimizer: adamw_torch (default), adamw_8bit, sgd or adafactor.
    pub optim: OptimKind,
    pub warmup_steps: Option<usize>,
    pub warmup_ratio: Option<f64>,
    pub num_train_epochs: f64,
    pub max_steps: Option<i64>,
    pub per_device_train_batch_size: usize,
    pub gradient_accumulation_steps: usize,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    pub seed: u64,
    pub logging_steps: usize,
    pub eval_steps: Option<usize>,
    pub save_steps: usize,
    pub save_total_limit: Option<usize>,
    /// A PEFT adapter to continue training (a new run from its weights; its
    /// adapter_config.json sets the LoRA keys): a directory or a hub id (`org/name[@revision]`).
    pub adapter: Option<String>,
    /// LoRA rank (default [`LORA_DEFAULTS`]'s; unset so that `adapter` can tell a key the file
    /// sets from a default).
    pub lora_r: Option<usize>,
    pub lora_alpha: Option<f64>,
    pub lora_dropout: Option<f64>,
    /// `all-linear` or a list of module names.
    pub target_modules: Option<Value>,
    pub use_rslora: Option<bool>,
    /// DoRA (PEFT's `use_dora`): a trainable magnitude per output row of every adapted module.
    pub use_dora: Option<bool>,
    /// New special tokens for the tokenizer (the model's vocabulary grows to fit; see
    /// [`crate::added`]).
    pub added_tokens: Option<Value>,
    /// Modules trained whole next to the adapters (PEFT's `modules_to_save`: `embed_tokens`,
    /// `lm_head`).
    pub modules_to_save: Option<Value>,
    /// Recompute each layer in the backward pass instead of keeping its activations.
    pub gradient_checkpointing: bool,
    /// Frozen base linear weights in bf16, multiplied in bf16 with f32 sums (on AMX tiles where
    /// the CPU has them); adapters, optimizer states and everything else stay f32 (LoRA only).
    pub bf16: bool,
    /// QLoRA: frozen base linear weights in 4-bit NF4 (LoRA only).
    pub load_in_4bit: bool,
    /// With load_in_4bit: also quantize the NF4 block scales (8-bit).
    pub bnb_4bit_use_double_quant: bool,
    /// With load_in_4bit: the 4-bit data type.
    pub bnb_4bit_quant_type: QuantType,
}

/// The LoRA keys' defaults (PEFT's `LoraConfig`, with TRL's usual rank 16 and alpha 32), applied
/// when resolving: the keys are optional in [`RawTrainConfig`] so that a config continuing an
/// `adapter` can be checked for keys that contradict the adapter's own.
pub const LORA_DEFAULTS: LoraDefaults = LoraDefaults { r: 16, alpha: 32.0, dropout: 0.0, use_rslora: false, use_dora: false };

/// See [`LORA_DEFAULTS`] (`target_modules` defaults to `all-linear`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoraDefaults {
    /// `lora_r`.
    pub r: usize,
    /// `lora_alpha`.
    pub alpha: f64,
    /// `lora_dropout`.
    pub dropout: f64,
    /// `use_rslora`.
    pub use_rslora: bool,
    /// `use_dora`.
    pub use_dora: bool,
}

/// Training's `max_seq_length` when the config sets none (the flattened encode keys take their
/// defaults from [`EncodeSettings`], which has no limit, so it is applied when resolving).
pub const MAX_SEQ_LENGTH: usize = 1024;

impl Default for RawTrainConfig {
    /// Every key's default (transformers' `TrainingArguments` / PEFT's where they have one).
    fn default() -> Self {
        Self {
            model: String::new(),
            tokenizer: None,
            template: TemplateSettings::default(),
            datasets: vec![],
            eval_dataset: None,
            on_bad_row: OnBadRow::Fail,
            eval_split: None,
            output_dir: "outputs".into(),
            finetuning: Finetuning::Lora,
            encode: EncodeSettings { max_seq_length: Some(MAX_SEQ_LENGTH), ..EncodeSettings::default() },
            packing: false,
            learning_rate: 2e-4,
            lr_scheduler_type: SchedulerKind::Linear,
            optim: OptimKind::AdamWTorch,
            warmup_steps: None,
            warmup_ratio: None,
            num_train_epochs: 1.0,
            max_steps: None,
            per_device_train_batch_size: 1,
            gradient_accumulation_steps: 1,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            seed: 42,
            logging_steps: 10,
            eval_steps: None,
            save_steps: 500,
            save_total_limit: None,
            adapter: None,
            lora_r: None,
            lora_alpha: None,
            lora_dropout: None,
            target_modules: None,
            use_rslora: None,
            use_dora: None,
            added_tokens: None,
            modules_to_save: None,
            gradient_checkpointing: false,
            bf16: false,
            load_in_4bit: false,
            bnb_4bit_use_double_quant: true,
            bnb_4bit_quant_type: QuantType::Nf4,
        }
    }
}

/// Every key a config may have, as a tree: [`RawTrainConfig`] serialized with one dataset in
/// each list, so nested keys (`datasets[].format`) are there too.
pub fn known_keys() -> Yaml {
    let names = columns::ROW_COLUMNS.iter().chain(columns::MESSAGE_KEYS);
    let roles = sft_data::conversation::ROLES.iter().chain([&sharegpt::FUNCTION_CALL]);
    let dataset = RawDataset {
        columns: names.map(|n| (n.to_string(), String::new())).collect(),
        roles: roles.map(|r| (r.to_string(), RoleNames::Many(vec![]))).collect(),
        ..RawDataset::default()
    };
    let example = RawTrainConfig { datasets: vec![dataset.clone()], eval_dataset: Some(dataset), ..RawTrainConfig::default() };
    serde_yaml::to_value(example).unwrap_or(Yaml::Null)
}

/// What fine-tuning trains.
#[derive(Debug, Clone)]
pub enum Method {
    /// Every weight.
    Full,
    /// LoRA adapters.
    Lora(LoraSettings),
}

/// How long to train.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Length {
    /// Epochs over the data (fractions allowed).
    Epochs(f64),
    /// Optimizer steps.
    Steps(usize),
}

/// A validated training config. Paths are relative to the working directory.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// The file (for messages).
    pub source: PathBuf,
    /// The base model's name (a directory, hub id or GGUF file; see sft-hub).
    pub model: String,
    /// The tokenizer's model name (the model's when not given).
    pub tokenizer: String,
    /// The chat template, `map_eos_token` and extra template variables.
    pub template: TemplateSettings,
    /// Training files.
    pub datasets: Vec<RawDataset>,
    /// Held-out file.
    pub eval_dataset: Option<RawDataset>,
    /// Fraction of the training rows held out when there is no eval file.
    pub eval_split: Option<f64>,
    /// Fail on the first bad data row (default), or skip bad rows, counted and listed.
    pub on_bad_row: OnBadRow,
    /// Where checkpoints go.
    pub output_dir: PathBuf,
    /// Full or LoRA.
    pub method: Method,
    /// The PEFT adapter directory a LoRA run starts from (its settings are in `method`).
    pub adapter: Option<PathBuf>,
    /// Special tokens added to the tokenizer, in order (none: the tokenizer as it is).
    pub added_tokens: Vec<String>,
    /// Encoding.
    pub encode: EncodeOptions,
    /// Pack examples into max_seq_length sequences.
    pub packing: bool,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Schedule shape.
    pub scheduler: SchedulerKind,
    /// The optimizer.
    pub optim: OptimKind,
    /// Warmup: steps, or a ratio of the total.
    pub warmup_steps: Option<usize>,
    /// Warmup ratio.
    pub warmup_ratio: f64,
    /// How long.
    pub length: Length,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub accumulation: usize,
    /// Weight decay (decoupled for the AdamWs and Adafactor, L2 for SGD), rank >= 2 tensors.
    pub weight_decay: f64,
    /// Global gradient-norm clip (0 = off).
    pub max_grad_norm: f64,
    /// AdamW betas and epsilon.
    pub betas: (f64, f64),
    /// AdamW epsilon.
    pub adam_epsilon: f64,
    /// Seed of data order and adapter init.
    pub seed: u64,
    /// Log every this many steps.
    pub logging_steps: usize,
    /// Evaluate every this many steps (None: at the end only, when there is eval data).
    pub eval_steps: Option<usize>,
    /// Checkpoint every this many steps (and at the end).
    pub save_steps: usize,
    /// Keep at most this many checkpoints.
    pub save_total_limit: Option<usize>,
    /// Recompute layers in the backward pass (less memory).
    pub gradient_checkpointing: bool,
    /// How the frozen base linear weights are held (f32, bf16 with bf16: true, or NF4 with load_in_4bit).
    pub base_format: BaseFormat,
    /// The raw form, saved next to the checkpoints.
    pub raw: RawTrainConfig,
}

/// Reads `path`, applies `--set key=value` overrides, and resolves.
pub fn load(path: &Path, overrides: &[String]) -> Result<TrainConfig, TrainError> {
    let config_err = |key: &str, message: String| TrainError::Config { path: path.into(), key: key.into(), message };
    let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io { path: path.into(), source })?;
    let mut value: Yaml = serde_yaml::from_str(&text).map_err(|e| config_err("", e.to_string()))?;
    let map = value.as_mapping_mut().ok_or_else(|| config_err("", "expected a mapping of keys to values".into()))?;
    for o in overrides {
        let (key, v) = o.split_once('=').ok_or_else(|| config_err(o, "--set expects key=value".into()))?;
        let parsed: Yaml = serde_yaml::from_str(v).unwrap_or(Yaml::String(v.into()));
        map.insert(Yaml::String(key.trim().into()), parsed);
    }
    check_keys(&value, &known_keys(), "").map_err(|(key, message)| config_err(&key, message))?;
    let raw: RawTrainConfig =
        serde_yaml::from_value(value.clone()).map_err(|e| config_err("", keyed_message(&value).unwrap_or_else(|| e.to_string())))?;
    raw.resolve(path)
}

/// Checks every key of `value` (and of its nested mappings and lists of mappings) against the
/// tree of known keys; an unknown one is `(its path, "unknown key; did you mean ...?")`.
fn check_keys(value: &Yaml, known: &Yaml, at: &str) -> Result<(), (String, String)> {
    let (Some(map), Some(known)) = (value.as_mapping(), known.as_mapping()) else { return Ok(()) };
    for (k, v) in map {
        let name = k.as_str().unwrap_or_default();
        let path = if at.is_empty() { name.to_string() } else { format!("{at}.{name}") };
        let Some(expected) = known.get(k) else {
            let siblings = known.keys().filter_map(Yaml::as_str);
            let hint = closest(name, siblings).map(|c| format!("; did you mean {c}?")).unwrap_or_default();
            return Err((path, format!("unknown key{hint}")));
        };
        match (v, expected) {
            (Yaml::Sequence(items), Yaml::Sequence(example)) => {
                if let Some(example) = example.first() {
                    for (i, item) in items.iter().enumerate() {
                        check_keys(item, example, &format!("{path}[{i}]"))?;
                    }
                }
            }
            _ => check_keys(v, expected, &path)?,
        }
    }
    Ok(())
}

/// The deserialization error of `value` with the key it is at. `from_value` does not track the
/// key, and neither does serde for the flattened template and encode keys; reading the YAML
/// back as text does, so the whole file is read from text, then each flattened group from the
/// text of its own keys. Line and column refer to that text, not the user's file, so they are
/// dropped.
fn keyed_message(value: &Yaml) -> Option<String> {
    fn from_text<T: DeserializeOwned>(value: &Yaml) -> Option<String> {
        let e = serde_yaml::from_str::<T>(&serde_yaml::to_string(value).ok()?).err()?.to_string();
        Some(e.rsplit_once(" at line ").map_or(e.clone(), |(message, _)| message.to_string()))
    }
    fn group<T: DeserializeOwned + Serialize + Default>(value: &Yaml) -> Option<String> {
        let keys = serde_yaml::to_value(T::default()).ok()?;
        let mut own = serde_yaml::Mapping::new();
        for (k, v) in value.as_mapping()? {
            if keys.as_mapping()?.contains_key(k) {
                own.insert(k.clone(), v.clone());
            }
        }
        from_text::<T>(&Yaml::Mapping(own))
    }
    let whole = from_text::<RawTrainConfig>(value)?;
    let known = known_keys();
    let names_a_key = whole.split_once(": ").is_some_and(|(key, _)| known.as_mapping().is_some_and(|m| m.contains_key(key)));
    match names_a_key {
        true => Some(whole),
        false => group::<TemplateSettings>(value).or_else(|| group::<EncodeSettings>(value)).or(Some(whole)),
    }
}

/// The name among `known` nearest to `name` by edit distance, when close enough.
fn closest<'a>(name: &str, known: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut cur = vec![i + 1];
            for (j, cb) in b.iter().enumerate() {
                cur.push((prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1));
            }
            prev = cur;
        }
        prev[b.len()]
    }
    known.map(|k| (distance(name, k), k)).filter(|(d, k)| *d <= 3.max(k.len() / 3)).min().map(|(_, k)| k)
}

impl RawTrainConfig {
    /// Validates every key; `path` names the file in errors.
    pub fn resolve(&self, path: &Path) -> Result<TrainConfig, TrainError> {
        let err = |key: &str, message: &str| TrainError::Config { path: path.into(), key: key.into(), message: message.into() };
        self.check_numbers(path)?;
        if self.model.is_empty() {
            return Err(err("model", "missing: a model directory, hub id (org/name) or GGUF file"));
        }
        if self.datasets.is_empty() {
            return Err(err("datasets", "needs at least one file"));
        }
        self.check_datasets(path)?;
        let length = match self.max_steps {
            Some(n) if n > 0 => Length::Steps(n as usize),
            Some(0) => return Err(err("max_steps", "must be positive (or -1 to use num_train_epochs)")),
            _ => Length::Epochs(self.num_train_epochs),
        };
        if self.adapter.is_some() && self.finetuning == Finetuning::Full {
            return Err(err("adapter", "continues a LoRA adapter: use finetuning: lora"));
        }
        if self.use_dora == Some(true) && self.finetuning == Finetuning::Full {
            return Err(err("use_dora", "DoRA is a LoRA variant: use finetuning: lora"));
        }
        let adapter = match &self.adapter {
            Some(name) => Some(sft_hub::locate(name).map_err(|e| err("adapter", &e.to_string()))?.dir),
            None => None,
        };
        let method = match self.finetuning {
            Finetuning::Full => Method::Full,
            Finetuning::Lora => Method::Lora(self.lora(adapter.as_deref(), path)?),
        };
        let added_tokens = crate::added::check_keys(self, &method, path)?;
        let mut encode = self.encode.resolve().map_err(|e| err(e.key, &e.message))?;
        encode.max_seq_length = encode.max_seq_length.or(Some(MAX_SEQ_LENGTH));
        Ok(TrainConfig {
            source: path.into(),
            model: self.model.clone(),
            tokenizer: self.tokenizer.clone().unwrap_or_else(|| self.model.clone()),
            template: self.template.clone(),
            datasets: self.datasets.clone(),
            eval_dataset: self.eval_dataset.clone(),
            eval_split: self.eval_split,
            on_bad_row: self.on_bad_row,
            output_dir: self.output_dir.clone(),
            adapter,
            added_tokens,
            base_format: self.base_format(&method, path)?,
            method,
            encode,
            packing: self.packing,
            learning_rate: self.learning_rate,
            scheduler: self.lr_scheduler_type,
            optim: self.optim,
            warmup_steps: self.warmup_steps,
            warmup_ratio: self.warmup_ratio.unwrap_or(0.0),
            length,
            batch_size: self.per_device_train_batch_size,
            accumulation: self.gradient_accumulation_steps,
            weight_decay: self.weight_decay,
            max_grad_norm: self.max_grad_norm,
            betas: (self.adam_beta1, self.adam_beta2),
            adam_epsilon: self.adam_epsilon,
            seed: self.seed,
            logging_steps: self.logging_steps,
            eval_steps: self.eval_steps.filter(|&n| n > 0),
            save_steps: self.save_steps,
            save_total_limit: self.save_total_limit,
            gradient_checkpointing: self.gradient_checkpointing,
            raw: self.clone(),
        })
    }

    /// The numeric keys' ranges.
    fn check_numbers(&self, path: &Path) -> Result<(), TrainError> {
        let err = |key: &str, message: &str| TrainError::Config { path: path.into(), key: key.into(), message: message.into() };
        let positive = |key: &str, v: f64| if v > 0.0 && v.is_finite() { Ok(()) } else { Err(err(key, "must be greater than 0")) };
        positive("learning_rate", self.learning_rate)?;
        positive("adam_epsilon", self.adam_epsilon)?;
        if !matches!(self.max_steps, Some(n) if n > 0) {
            positive("num_train_epochs", self.num_train_epochs)?;
        }
        for (key, v) in [
            ("per_device_train_batch_size", self.per_device_train_batch_size),
            ("gradient_accumulation_steps", self.gradient_accumulation_steps),
            ("logging_steps", self.logging_steps),
            ("save_steps", self.save_steps),
        ] {
            if v == 0 {
                return Err(err(key, "must be at least 1"));
            }
        }
        let fractions = [
            ("weight_decay", self.weight_decay, "must be in [0, 1)"),
            ("adam_beta1", self.adam_beta1, "must be in [0, 1)"),
            ("adam_beta2", self.adam_beta2, "must be in [0, 1)"),
        ];
        for (key, v, message) in fractions {
            if !(0.0..1.0).contains(&v) {
                return Err(err(key, message));
            }
        }
        if !(self.max_grad_norm >= 0.0 && self.max_grad_norm.is_finite()) {
            return Err(err("max_grad_norm", "must be 0 (off) or positive"));
        }
        if !(0.0..=1.0).contains(&self.warmup_ratio.unwrap_or(0.0)) {
            return Err(err("warmup_ratio", "must be in [0, 1]"));
        }
        if self.eval_split.is_some_and(|s| !(s > 0.0 && s < 1.0)) {
            return Err(err("eval_split", "must be a fraction in (0, 1)"));
        }
        Ok(())
    }

    /// Each dataset's path and mixing keys: `weight` on every dataset or on none, positive;
    /// `max_samples` at least 1; the eval file takes no `weight`.
    fn check_datasets(&self, path: &Path) -> Result<(), TrainError> {
        let err = |key: String, message: &str| TrainError::Config { path: path.into(), key, message: message.into() };
        let weighted = self.datasets.iter().filter(|d| d.weight.is_some()).count();
        let named = self.eval_dataset.iter().map(|d| ("eval_dataset".to_string(), d));
        for (key, ds) in self.datasets.iter().enumerate().map(|(i, d)| (format!("datasets[{i}]"), d)).chain(named) {
            if ds.path.as_os_str().is_empty() {
                return Err(err(format!("{key}.path"), "missing"));
            }
            ds.read_columns().map_err(|message| err(format!("{key}.columns"), &message))?;
            ds.sharegpt().map_err(|message| err(format!("{key}.roles"), &message))?;
            if !ds.roles.is_empty() && !matches!(ds.format, DataFormat::Auto | DataFormat::ShareGpt) {
                return Err(err(format!("{key}.roles"), "names ShareGPT speakers: use it with format: sharegpt (or auto)"));
            }
            if ds.max_samples == Some(0) {
                return Err(err(format!("{key}.max_samples"), "must be at least 1"));
            }
            match ds.weight {
                Some(_) if key == "eval_dataset" => {
                    return Err(err(format!("{key}.weight"), "applies only to training datasets (their shares of the mixed set)"))
                }
                Some(w) if !(w > 0.0 && w.is_finite()) => return Err(err(format!("{key}.weight"), "must be greater than 0")),
                None if weighted > 0 && key != "eval_dataset" => {
                    return Err(err(format!("{key}.weight"), "missing: set weight on every dataset or on none"))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// How the frozen base linear weights are held: `bf16` and `load_in_4bit` are for LoRA only,
    /// and exclusive.
    fn base_format(&self, method: &Method, path: &Path) -> Result<BaseFormat, TrainError> {
        let err = |key: &str, message: &str| TrainError::Config { path: path.into(), key: key.into(), message: message.into() };
        let full = matches!(method, Method::Full);
        match (self.bf16, self.load_in_4bit) {
            (true, true) => Err(err("bf16", "choose one of bf16 and load_in_4bit")),
            (true, false) if full => Err(err("bf16", "bf16 base weights are frozen: use finetuning: lora")),
            (false, true) if full => Err(err("load_in_4bit", "4-bit base weights are frozen: use finetuning: lora")),
            (true, false) => Ok(BaseFormat::Bf16Matmul),
            (false, true) => match self.bnb_4bit_quant_type {
                QuantType::Nf4 => Ok(BaseFormat::Nf4 { double_quant: self.bnb_4bit_use_double_quant }),
            },
            (false, false) => Ok(BaseFormat::F32),
        }
    }

    /// The LoRA settings: the config's keys, or with `adapter` the adapter's own (a key the
    /// config sets as well must agree with it).
    fn lora(&self, adapter: Option<&Path>, path: &Path) -> Result<LoraSettings, TrainError> {
        let err = |key: &str, message: &str| TrainError::Config { path: path.into(), key: key.into(), message: message.into() };
        if let Some(dir) = adapter {
            return self.adapter_lora(dir, path);
        }
        let d = LORA_DEFAULTS;
        let (r, alpha, dropout) = (self.lora_r.unwrap_or(d.r), self.lora_alpha.unwrap_or(d.alpha), self.lora_dropout.unwrap_or(d.dropout));
        if r == 0 {
            return Err(err("lora_r", "must be at least 1"));
        }
        if alpha <= 0.0 {
            return Err(err("lora_alpha", "must be greater than 0"));
        }
        if !(0.0..1.0).contains(&dropout) {
            return Err(err("lora_dropout", "must be in [0, 1)"));
        }
        let targets = match self.target_modules.as_ref().unwrap_or(&Value::String("all-linear".into())) {
            Value::String(s) if s == "all-linear" => Targets::AllLinear,
            Value::Array(items) if !items.is_empty() => Targets::Names(
                items
                    .iter()
                    .map(|v| v.as_str().map(str::to_string).ok_or_else(|| err("target_modules", "expected module names")))
                    .collect::<Result<_, _>>()?,
            ),
            _ => return Err(err("target_modules", "expected \"all-linear\" or a list of module names like [q_proj, v_proj]")),
        };
        let (use_rslora, use_dora) = (self.use_rslora.unwrap_or(d.use_rslora), self.use_dora.unwrap_or(d.use_dora));
        let modules_to_save = crate::added::modules_to_save(self.modules_to_save.as_ref(), path)?;
        Ok(LoraSettings { r, alpha, use_rslora, dropout, targets, use_dora, modules_to_save })
    }

    /// `adapter: DIR`'s settings from its adapter_config.json; a LoRA key the config also sets
    /// must hold the adapter's value.
    fn adapter_lora(&self, dir: &Path, path: &Path) -> Result<LoraSettings, TrainError> {
        let err = |key: &str, message: String| TrainError::Config { path: path.into(), key: key.into(), message };
        let file = dir.join(ADAPTER_CONFIG);
        if !file.is_file() {
            return Err(err("adapter", format!("{}: no {ADAPTER_CONFIG}; expected a PEFT adapter directory", dir.display())));
        }
        let peft = PeftConfig::read(dir).map_err(|e| err("adapter", e.to_string()))?;
        let settings = peft.resolve(&file).map_err(|e| err("adapter", e.to_string()))?;
        let same_targets = |mine: &Value| {
            let sorted = |v: &Value| {
                let mut names: Vec<String> = v.as_array()?.iter().map(|n| n.as_str().map(str::to_string)).collect::<Option<_>>()?;
                names.sort();
                Some(names)
            };
            let theirs = peft.target_modules.as_ref().unwrap_or(&Value::Null);
            mine == theirs || sorted(mine).is_some_and(|m| sorted(theirs) == Some(m))
        };
        // `(mine, theirs)` as text when the config sets a value and it is not the adapter's.
        fn differs<T: PartialEq + ToString>(mine: Option<T>, theirs: T) -> Option<(String, String)> {
            mine.filter(|m| *m != theirs).map(|m| (m.to_string(), theirs.to_string()))
        }
        let targets = self
            .target_modules
            .as_ref()
            .filter(|t| !same_targets(t))
            .map(|t| (t.to_string(), peft.target_modules.as_ref().map_or("none".into(), Value::to_string)));
        let conflicts = [
            ("lora_r", "r", differs(self.lora_r, peft.r)),
            ("lora_alpha", "lora_alpha", differs(self.lora_alpha, peft.lora_alpha)),
            ("lora_dropout", "lora_dropout", differs(self.lora_dropout, peft.lora_dropout)),
            ("use_rslora", "use_rslora", differs(self.use_rslora, peft.use_rslora)),
            ("use_dora", "use_dora", differs(self.use_dora, peft.use_dora)),
            ("target_modules", "target_modules", targets),
            ("modules_to_save", "modules_to_save", crate::added::saved_differs(self.modules_to_save.as_ref(), &settings, path)?),
        ];
        if let Some((key, name, Some((mine, value)))) = conflicts.into_iter().find(|c| c.2.is_some()) {
            return Err(err(
                key,
                format!(
                    "{mine} conflicts with adapter: {}, whose {ADAPTER_CONFIG} has {name} {value} (the adapter's settings are used; remove {key} or make it match)",
                    dir.display()
                ),
            ));
        }
        Ok(settings)
    }
}

#[cfg(test)]
mod tests;
