//! The training config: [`RawTrainConfig`] mirrors the YAML file with the keys TRL / Axolotl
//! users know; [`RawTrainConfig::resolve`] validates it once into [`TrainConfig`]. Unknown keys
//! are errors with the closest known key suggested; `--set key=value` overrides are applied to
//! the YAML before it is read.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sft_data::data::OnBadRow;
use sft_data::encode::{AppendEos, EncodeOptions, Markers, Masking, Truncation};
use sft_model::lora::{LoraSettings, Targets};
use sft_model::quant::BaseFormat;

use crate::schedule::SchedulerKind;
use crate::TrainError;

/// One training data file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawDataset {
    /// JSONL, JSON or Parquet file.
    pub path: PathBuf,
    /// auto (default), alpaca, sharegpt or openai.
    #[serde(default)]
    pub format: Option<String>,
}

/// The YAML file, key for key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RawTrainConfig {
    pub model: PathBuf,
    #[serde(default)]
    pub tokenizer: Option<PathBuf>,
    #[serde(default)]
    pub chat_template: Option<String>,
    #[serde(default)]
    pub template_kwargs: Option<Map<String, Value>>,
    pub datasets: Vec<RawDataset>,
    #[serde(default)]
    pub eval_dataset: Option<RawDataset>,
    #[serde(default = "defaults::on_bad_row")]
    pub on_bad_row: String,
    #[serde(default)]
    pub eval_split: Option<f64>,
    #[serde(default = "defaults::output_dir")]
    pub output_dir: PathBuf,
    #[serde(default = "defaults::finetuning")]
    pub finetuning: String,
    #[serde(default = "defaults::masking")]
    pub masking: String,
    #[serde(default)]
    pub instruction_part: Option<String>,
    #[serde(default)]
    pub response_part: Option<String>,
    #[serde(default = "defaults::auto")]
    pub append_eos: String,
    #[serde(default = "defaults::max_seq_length")]
    pub max_seq_length: usize,
    #[serde(default = "defaults::truncation")]
    pub truncation: String,
    #[serde(default)]
    pub packing: bool,
    #[serde(default = "defaults::learning_rate")]
    pub learning_rate: f64,
    #[serde(default = "defaults::scheduler")]
    pub lr_scheduler_type: String,
    #[serde(default)]
    pub warmup_steps: Option<usize>,
    #[serde(default)]
    pub warmup_ratio: Option<f64>,
    #[serde(default = "defaults::epochs")]
    pub num_train_epochs: f64,
    #[serde(default)]
    pub max_steps: Option<i64>,
    #[serde(default = "defaults::one")]
    pub per_device_train_batch_size: usize,
    #[serde(default = "defaults::one")]
    pub gradient_accumulation_steps: usize,
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default = "defaults::max_grad_norm")]
    pub max_grad_norm: f64,
    #[serde(default = "defaults::beta1")]
    pub adam_beta1: f64,
    #[serde(default = "defaults::beta2")]
    pub adam_beta2: f64,
    #[serde(default = "defaults::adam_epsilon")]
    pub adam_epsilon: f64,
    #[serde(default = "defaults::seed")]
    pub seed: u64,
    #[serde(default = "defaults::logging_steps")]
    pub logging_steps: usize,
    #[serde(default)]
    pub eval_steps: Option<usize>,
    #[serde(default = "defaults::save_steps")]
    pub save_steps: usize,
    #[serde(default)]
    pub save_total_limit: Option<usize>,
    #[serde(default = "defaults::lora_r")]
    pub lora_r: usize,
    #[serde(default = "defaults::lora_alpha")]
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    #[serde(default = "defaults::target_modules")]
    pub target_modules: Value,
    #[serde(default)]
    pub use_rslora: bool,
    /// Recompute each layer in the backward pass instead of keeping its activations.
    #[serde(default)]
    pub gradient_checkpointing: bool,
    /// Frozen base linear weights in bf16, multiplied in bf16 with f32 sums (on AMX tiles where
    /// the CPU has them); adapters, optimizer states and everything else stay f32 (LoRA only).
    #[serde(default)]
    pub bf16: bool,
    /// QLoRA: frozen base linear weights in 4-bit NF4 (LoRA only).
    #[serde(default)]
    pub load_in_4bit: bool,
    /// With load_in_4bit: also quantize the NF4 block scales (8-bit).
    #[serde(default = "defaults::yes")]
    pub bnb_4bit_use_double_quant: bool,
    /// With load_in_4bit: the 4-bit data type (only "nf4").
    #[serde(default = "defaults::nf4")]
    pub bnb_4bit_quant_type: String,
}

mod defaults {
    use std::path::PathBuf;

    use serde_json::Value;

    pub fn on_bad_row() -> String {
        "fail".into()
    }
    pub fn output_dir() -> PathBuf {
        "outputs".into()
    }
    pub fn finetuning() -> String {
        "lora".into()
    }
    pub fn yes() -> bool {
        true
    }
    pub fn nf4() -> String {
        "nf4".into()
    }
    pub fn masking() -> String {
        "assistant".into()
    }
    pub fn auto() -> String {
        "auto".into()
    }
    pub fn max_seq_length() -> usize {
        1024
    }
    pub fn truncation() -> String {
        "drop".into()
    }
    pub fn learning_rate() -> f64 {
        2e-4
    }
    pub fn scheduler() -> String {
        "linear".into()
    }
    pub fn epochs() -> f64 {
        1.0
    }
    pub fn one() -> usize {
        1
    }
    pub fn max_grad_norm() -> f64 {
        1.0
    }
    pub fn beta1() -> f64 {
        0.9
    }
    pub fn beta2() -> f64 {
        0.999
    }
    pub fn adam_epsilon() -> f64 {
        1e-8
    }
    pub fn seed() -> u64 {
        42
    }
    pub fn logging_steps() -> usize {
        10
    }
    pub fn save_steps() -> usize {
        500
    }
    pub fn lora_r() -> usize {
        16
    }
    pub fn lora_alpha() -> f64 {
        32.0
    }
    pub fn target_modules() -> Value {
        Value::String("all-linear".into())
    }
}

/// The keys the file may have (for suggestions).
const KEYS: &[&str] = &[
    "model",
    "tokenizer",
    "chat_template",
    "template_kwargs",
    "datasets",
    "eval_dataset",
    "eval_split",
    "on_bad_row",
    "output_dir",
    "finetuning",
    "masking",
    "instruction_part",
    "response_part",
    "append_eos",
    "max_seq_length",
    "truncation",
    "packing",
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "warmup_ratio",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "weight_decay",
    "max_grad_norm",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "seed",
    "logging_steps",
    "eval_steps",
    "save_steps",
    "save_total_limit",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "use_rslora",
    "gradient_checkpointing",
    "bf16",
    "load_in_4bit",
    "bnb_4bit_use_double_quant",
    "bnb_4bit_quant_type",
];

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
    /// The base model directory.
    pub model: PathBuf,
    /// Tokenizer directory (the model's when not given).
    pub tokenizer: PathBuf,
    /// Template choice (None: the tokenizer's).
    pub chat_template: Option<String>,
    /// Extra template variables.
    pub template_kwargs: Map<String, Value>,
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
    /// Encoding.
    pub encode: EncodeOptions,
    /// Pack examples into max_seq_length sequences.
    pub packing: bool,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Schedule shape.
    pub scheduler: SchedulerKind,
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
    /// AdamW decoupled weight decay.
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
    let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io { path: path.into(), source })?;
    let mut value: serde_yaml::Value =
        serde_yaml::from_str(&text).map_err(|e| TrainError::Config { path: path.into(), key: String::new(), message: e.to_string() })?;
    let map = value.as_mapping_mut().ok_or_else(|| TrainError::Config {
        path: path.into(),
        key: String::new(),
        message: "expected a mapping of keys to values".into(),
    })?;
    for o in overrides {
        let (key, v) = o.split_once('=').ok_or_else(|| TrainError::Config {
            path: path.into(),
            key: o.clone(),
            message: "--set expects key=value".into(),
        })?;
        let parsed: serde_yaml::Value = serde_yaml::from_str(v).unwrap_or(serde_yaml::Value::String(v.into()));
        map.insert(serde_yaml::Value::String(key.trim().into()), parsed);
    }
    for k in map.keys() {
        let name = k.as_str().unwrap_or_default();
        if !KEYS.contains(&name) {
            let hint = closest(name).map(|c| format!("; did you mean {c}?")).unwrap_or_default();
            return Err(TrainError::Config { path: path.into(), key: name.into(), message: format!("unknown key{hint}") });
        }
    }
    let raw: RawTrainConfig = serde_yaml::from_value(value.clone()).map_err(|e| TrainError::Config {
        path: path.into(),
        key: String::new(),
        message: keyed_message(&value).unwrap_or_else(|| e.to_string()),
    })?;
    raw.resolve(path)
}

/// The deserialization error of `value` with the key it is at (`from_value` does not track
/// it; reading the same YAML back as text does). The line and column refer to that text, not
/// the user's file, so they are dropped.
fn keyed_message(value: &serde_yaml::Value) -> Option<String> {
    let text = serde_yaml::to_string(value).ok()?;
    let e = serde_yaml::from_str::<RawTrainConfig>(&text).err()?.to_string();
    Some(e.rsplit_once(" at line ").map_or(e.clone(), |(message, _)| message.to_string()))
}

/// The known key nearest to `name` by edit distance, when close enough.
fn closest(name: &str) -> Option<&'static str> {
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
    KEYS.iter().map(|k| (distance(name, k), *k)).filter(|(d, k)| *d <= 3.max(k.len() / 3)).min().map(|(_, k)| k)
}

impl RawTrainConfig {
    /// Validates every key; `path` names the file in errors.
    pub fn resolve(&self, path: &Path) -> Result<TrainConfig, TrainError> {
        let err = |key: &str, message: &str| TrainError::Config { path: path.into(), key: key.into(), message: message.into() };
        let positive = |key: &str, v: f64| if v > 0.0 && v.is_finite() { Ok(()) } else { Err(err(key, "must be greater than 0")) };
        positive("learning_rate", self.learning_rate)?;
        for (key, v) in [
            ("per_device_train_batch_size", self.per_device_train_batch_size),
            ("gradient_accumulation_steps", self.gradient_accumulation_steps),
            ("max_seq_length", self.max_seq_length),
            ("logging_steps", self.logging_steps),
            ("save_steps", self.save_steps),
        ] {
            if v == 0 {
                return Err(err(key, "must be at least 1"));
            }
        }
        if self.datasets.is_empty() {
            return Err(err("datasets", "needs at least one file"));
        }
        if !(0.0..1.0).contains(&self.weight_decay) {
            return Err(err("weight_decay", "must be in [0, 1)"));
        }
        if self.max_grad_norm < 0.0 {
            return Err(err("max_grad_norm", "must be 0 (off) or positive"));
        }
        for (key, b) in [("adam_beta1", self.adam_beta1), ("adam_beta2", self.adam_beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(err(key, "must be in [0, 1)"));
            }
        }
        positive("adam_epsilon", self.adam_epsilon)?;
        let length = match self.max_steps {
            Some(n) if n > 0 => Length::Steps(n as usize),
            Some(0) => return Err(err("max_steps", "must be positive (or -1 to use num_train_epochs)")),
            _ => {
                positive("num_train_epochs", self.num_train_epochs)?;
                Length::Epochs(self.num_train_epochs)
            }
        };
        let warmup_ratio = self.warmup_ratio.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&warmup_ratio) {
            return Err(err("warmup_ratio", "must be in [0, 1]"));
        }
        if let Some(s) = self.eval_split {
            if !(s > 0.0 && s < 1.0) {
                return Err(err("eval_split", "must be a fraction in (0, 1)"));
            }
        }
        let scheduler = match self.lr_scheduler_type.as_str() {
            "linear" => SchedulerKind::Linear,
            "cosine" => SchedulerKind::Cosine,
            "constant" | "constant_with_warmup" => SchedulerKind::Constant,
            other => {
                return Err(err("lr_scheduler_type", &format!("{other:?} is not one of linear, cosine, constant, constant_with_warmup")))
            }
        };
        let method = match self.finetuning.as_str() {
            "full" => Method::Full,
            "lora" => Method::Lora(self.lora(path)?),
            other => return Err(err("finetuning", &format!("{other:?} is not one of lora, full"))),
        };
        let encode = self.encode().map_err(|(key, message)| err(key, &message))?;
        let base_format = match (self.load_in_4bit, &method, self.bnb_4bit_quant_type.as_str()) {
            (false, Method::Full, _) if self.bf16 => return Err(err("bf16", "bf16 base weights are frozen: use finetuning: lora")),
            (false, _, _) if self.bf16 => BaseFormat::Bf16Matmul,
            (true, _, _) if self.bf16 => return Err(err("bf16", "choose one of bf16 and load_in_4bit")),
            (false, _, _) => BaseFormat::F32,
            (true, Method::Full, _) => return Err(err("load_in_4bit", "4-bit base weights are frozen: use finetuning: lora")),
            (true, Method::Lora(_), "nf4") => BaseFormat::Nf4 { double_quant: self.bnb_4bit_use_double_quant },
            (true, _, other) => return Err(err("bnb_4bit_quant_type", &format!("{other:?} is not supported; use \"nf4\""))),
        };
        let on_bad_row = self.on_bad_row.parse().map_err(|message: String| err("on_bad_row", &message))?;
        Ok(TrainConfig {
            source: path.into(),
            model: self.model.clone(),
            tokenizer: self.tokenizer.clone().unwrap_or_else(|| self.model.clone()),
            chat_template: self.chat_template.clone(),
            template_kwargs: self.template_kwargs.clone().unwrap_or_default(),
            datasets: self.datasets.clone(),
            eval_dataset: self.eval_dataset.clone(),
            eval_split: self.eval_split,
            on_bad_row,
            output_dir: self.output_dir.clone(),
            method,
            encode,
            packing: self.packing,
            learning_rate: self.learning_rate,
            scheduler,
            warmup_steps: self.warmup_steps,
            warmup_ratio,
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
            base_format,
            raw: self.clone(),
        })
    }

    fn lora(&self, path: &Path) -> Result<LoraSettings, TrainError> {
        let err = |key: &str, message: &str| TrainError::Config { path: path.into(), key: key.into(), message: message.into() };
        if self.lora_r == 0 {
            return Err(err("lora_r", "must be at least 1"));
        }
        if self.lora_alpha <= 0.0 {
            return Err(err("lora_alpha", "must be greater than 0"));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(err("lora_dropout", "must be in [0, 1)"));
        }
        let targets = match &self.target_modules {
            Value::String(s) if s == "all-linear" => Targets::AllLinear,
            Value::Array(items) if !items.is_empty() => Targets::Names(
                items
                    .iter()
                    .map(|v| v.as_str().map(str::to_string).ok_or_else(|| err("target_modules", "expected module names")))
                    .collect::<Result<_, _>>()?,
            ),
            _ => return Err(err("target_modules", "expected \"all-linear\" or a list of module names like [q_proj, v_proj]")),
        };
        Ok(LoraSettings { r: self.lora_r, alpha: self.lora_alpha, use_rslora: self.use_rslora, dropout: self.lora_dropout, targets })
    }

    fn encode(&self) -> Result<EncodeOptions, (&'static str, String)> {
        let mut masking: Masking = self.masking.parse().map_err(|e| ("masking", format!("{e}")))?;
        if let Masking::Markers(m) = &mut masking {
            match (&self.instruction_part, &self.response_part) {
                (Some(i), Some(r)) => *m = Markers { instruction_part: i.clone(), response_part: r.clone() },
                _ => return Err(("masking", "markers needs instruction_part and response_part".into())),
            }
        }
        let append_eos: AppendEos = self.append_eos.parse().map_err(|e| ("append_eos", format!("{e}")))?;
        let truncation: Truncation = self.truncation.parse().map_err(|e| ("truncation", format!("{e}")))?;
        Ok(EncodeOptions { masking, append_eos, max_seq_length: Some(self.max_seq_length), truncation })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join("sft-train-config-tests");
        std::fs::create_dir_all(&dir).expect("dir");
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p
    }

    const MIN: &str = "model: m\ndatasets:\n  - path: d.jsonl\n";

    #[test]
    fn defaults_and_overrides() {
        let p = write("ok.yaml", MIN);
        let c = load(&p, &["learning_rate=1e-3".into(), "finetuning=full".into(), "max_steps=7".into()]).expect("valid");
        assert_eq!(c.learning_rate, 1e-3);
        assert!(matches!(c.method, Method::Full));
        assert_eq!(c.length, Length::Steps(7));
        assert_eq!(c.tokenizer, PathBuf::from("m"));
        assert_eq!(c.base_format, BaseFormat::F32);
        let c = load(&p, &["bf16=true".into()]).expect("valid");
        assert_eq!(c.base_format, BaseFormat::Bf16Matmul);
    }

    #[test]
    fn unknown_keys_suggest_the_closest() {
        let p = write("typo.yaml", &format!("{MIN}learning_rte: 0.1\n"));
        let e = load(&p, &[]).unwrap_err().to_string();
        assert!(e.contains("learning_rte: unknown key; did you mean learning_rate?"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        for (extra, key) in [
            ("learning_rate: 0", "learning_rate: must be greater than 0"),
            ("per_device_train_batch_size: 0", "per_device_train_batch_size: must be at least 1"),
            ("lr_scheduler_type: step", "lr_scheduler_type"),
            ("learning_rate: fast", "invalid type"),
            ("finetuning: qlora", "finetuning"),
            ("finetuning: full\nbf16: true", "bf16: bf16 base weights are frozen: use finetuning: lora"),
            ("bf16: true\nload_in_4bit: true", "bf16: choose one of bf16 and load_in_4bit"),
        ] {
            let p = write("bad.yaml", &format!("{MIN}{extra}\n"));
            let e = load(&p, &[]).unwrap_err().to_string();
            assert!(e.contains(key), "{extra}: {e}");
        }
    }
}
