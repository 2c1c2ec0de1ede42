//! Checkpoints `output_dir/checkpoint-N`: weights (a PEFT adapter, or an HF model directory for
//! full fine-tuning), optimizer state, `trainer_state.json` (step, epoch, log history), the
//! resolved config, and the tokenizer files with the chat template used, so inference loads
//! exactly what training saw. A checkpoint is written into a temporary directory and renamed
//! into place, so a crash during a save leaves the previous checkpoints untouched.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use sft_hub::LocalModel;
use sft_model::lora::{PeftConfig, ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use sft_model::model::Model;

use crate::metrics::LogEntry;
use crate::TrainError;

/// Files copied from the tokenizer directory.
const TOKENIZER_FILES: &[&str] = &["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"];

/// The progress saved with a checkpoint (transformers' `trainer_state.json` keys).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    /// Optimizer steps taken.
    pub global_step: usize,
    /// Epochs done, fractional.
    pub epoch: f64,
    /// The planned total of steps.
    pub max_steps: usize,
    /// Logged metrics, in order.
    pub log_history: Vec<LogEntry>,
    /// Log interval.
    pub logging_steps: usize,
    /// Save interval.
    pub save_steps: usize,
    /// Records per micro-batch on each rank (per_device_train_batch_size).
    pub train_batch_size: usize,
    /// Data-parallel ranks (the global micro-batch is `train_batch_size × world_size`).
    #[serde(default = "one")]
    pub world_size: usize,
    /// Data-order seed.
    pub seed: u64,
    /// Losses summed since the last log line, and how many steps (so a resumed run logs the
    /// same averages).
    #[serde(default)]
    pub window: (f64, usize),
}

impl TrainerState {
    /// The state of a new run of `max_steps` steps.
    pub fn new(cfg: &crate::config::TrainConfig, max_steps: usize, world_size: usize) -> Self {
        TrainerState {
            global_step: 0,
            epoch: 0.0,
            max_steps,
            log_history: vec![],
            logging_steps: cfg.logging_steps,
            save_steps: cfg.save_steps,
            train_batch_size: cfg.batch_size,
            world_size,
            seed: cfg.seed,
            window: (0.0, 0),
        }
    }
}

/// A checkpoint without `world_size` was trained by one process.
fn one() -> usize {
    1
}

/// What goes into a checkpoint besides the trainer state.
pub struct Contents<'a> {
    /// The model (its trainable parameters are saved).
    pub model: &'a Model,
    /// The base model (its config.json for full fine-tuning; named in adapter_config.json).
    pub base_model: &'a LocalModel,
    /// Optimizer state tensors.
    pub optimizer: HashMap<String, Tensor>,
    /// The resolved training config, as YAML.
    pub config_yaml: String,
    /// Tokenizer directory.
    pub tokenizer: &'a Path,
    /// The chat template text in use.
    pub chat_template: &'a str,
    /// The EOS `map_eos_token` chose, and its id.
    pub mapped_eos: Option<&'a (String, u32)>,
    /// The template's extra keyword arguments.
    pub template_kwargs: &'a serde_json::Map<String, serde_json::Value>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io { path: path.to_path_buf(), source }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let mut f = File::create(path).map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

fn save_tensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<(), TrainError> {
    candle_core::safetensors::save(tensors, path)
        .map_err(|e| TrainError::Io { path: path.into(), source: std::io::Error::other(e.to_string()) })?;
    File::open(path).and_then(|f| f.sync_all()).map_err(io(path))
}

/// The directory of step `step`.
pub fn dir_of(output_dir: &Path, step: usize) -> PathBuf {
    output_dir.join(format!("checkpoint-{step}"))
}

/// Every `checkpoint-N` in `output_dir`, by step.
pub fn list(output_dir: &Path) -> Vec<(usize, PathBuf)> {
    let mut found: Vec<(usize, PathBuf)> = std::fs::read_dir(output_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name.strip_prefix("checkpoint-")?.parse().ok()?;
            e.path().join("trainer_state.json").is_file().then(|| (n, e.path()))
        })
        .collect();
    found.sort();
    found
}

/// The newest complete checkpoint.
pub fn latest(output_dir: &Path) -> Option<PathBuf> {
    list(output_dir).pop().map(|(_, p)| p)
}

/// Writes checkpoint `state.global_step` atomically and removes the oldest beyond `limit`. A
/// save that fails (a full disk, say) removes its temporary directory and leaves every earlier
/// checkpoint as it was; the error names the newest complete one.
pub fn save(output_dir: &Path, state: &TrainerState, contents: &Contents<'_>, limit: Option<usize>) -> Result<PathBuf, TrainError> {
    std::fs::create_dir_all(output_dir).map_err(io(output_dir))?;
    let step = state.global_step;
    let tmp = output_dir.join(format!(".checkpoint-{step}.partial"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    if let Err(source) = write_all(&tmp, state, contents) {
        // Best effort: a torn directory is never taken for a checkpoint anyway.
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(TrainError::Save { step, latest: latest(output_dir), cause: Box::new(source) });
    }
    let final_dir = dir_of(output_dir, step);
    if final_dir.exists() {
        // The same step saved again (a resumed run): the new one replaces it.
        std::fs::remove_dir_all(&final_dir).map_err(io(&final_dir))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(io(&final_dir))?;
    File::open(output_dir).and_then(|d| d.sync_all()).map_err(io(output_dir))?;
    if let Some(limit) = limit {
        let all = list(output_dir);
        let excess = all.len().saturating_sub(limit.max(1));
        for (_, old) in all.into_iter().take(excess).filter(|(_, p)| *p != final_dir) {
            std::fs::remove_dir_all(&old).map_err(io(&old))?;
        }
    }
    Ok(final_dir)
}

/// Every file of a checkpoint, into the temporary directory `tmp`.
fn write_all(tmp: &Path, state: &TrainerState, contents: &Contents<'_>) -> Result<(), TrainError> {
    std::fs::create_dir_all(tmp).map_err(io(tmp))?;
    write_weights(tmp, contents)?;
    crate::fault::after_weights(state.global_step, tmp)?;
    save_tensors(&tmp.join("optimizer.safetensors"), &contents.optimizer)?;
    let state_json = serde_json::to_vec_pretty(state).map_err(|e| TrainError::Io { path: tmp.into(), source: e.into() })?;
    write_synced(&tmp.join("training_config.yaml"), contents.config_yaml.as_bytes())?;
    write_inference_files(tmp, contents)?;
    // trainer_state.json last: a directory without it is never taken for a checkpoint.
    write_synced(&tmp.join("trainer_state.json"), &state_json)
}

/// What inference reads back from a checkpoint: the tokenizer files, the chat template, the
/// template's keyword arguments, and the base's generation config. With `map_eos_token` the
/// chosen EOS is declared where transformers, llama.cpp and Ollama look for it:
/// tokenizer_config.json's `eos_token`, and first in generation_config.json's `eos_token_id`.
fn write_inference_files(tmp: &Path, c: &Contents<'_>) -> Result<(), TrainError> {
    let template_err = |e: sft_data::template::TemplateError| TrainError::Template(e);
    for name in TOKENIZER_FILES {
        let src = c.tokenizer.join(name);
        let bytes = match c.mapped_eos {
            Some((eos, _)) if *name == "tokenizer_config.json" => {
                sft_data::template::config_with_eos(c.tokenizer, eos).map_err(template_err)?
            }
            _ => src.is_file().then(|| std::fs::read(&src)).transpose().map_err(io(&src))?,
        };
        if let Some(bytes) = bytes {
            write_synced(&tmp.join(name), &bytes)?;
        }
    }
    write_synced(&tmp.join("chat_template.jinja"), c.chat_template.as_bytes())?;
    if !c.template_kwargs.is_empty() {
        let text = serde_json::to_vec_pretty(c.template_kwargs).map_err(|e| TrainError::Io { path: tmp.into(), source: e.into() })?;
        write_synced(&tmp.join(sft_data::template::TEMPLATE_KWARGS_FILE), &text)?;
    }
    let src = c.base_model.dir.join("generation_config.json");
    let mut generation = match std::fs::read_to_string(&src) {
        Ok(text) => serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&text)
            .map_err(|e| TrainError::Checkpoint { path: src.clone(), message: e.to_string() })?,
        Err(_) if c.mapped_eos.is_some() => serde_json::Map::new(),
        Err(_) => return Ok(()),
    };
    if let Some((_, id)) = c.mapped_eos {
        let old = match generation.get("eos_token_id") {
            Some(serde_json::Value::Array(ids)) => ids.clone(),
            Some(serde_json::Value::Null) | None => vec![],
            Some(one) => vec![one.clone()],
        };
        let mut ids = vec![serde_json::Value::from(*id)];
        ids.extend(old.into_iter().filter(|v| v.as_u64() != Some(u64::from(*id))));
        generation.insert("eos_token_id".into(), serde_json::Value::Array(ids));
    }
    let text = serde_json::to_vec_pretty(&generation).map_err(|e| TrainError::Io { path: tmp.into(), source: e.into() })?;
    write_synced(&tmp.join("generation_config.json"), &text)
}

fn write_weights(dir: &Path, c: &Contents<'_>) -> Result<(), TrainError> {
    let tensors: HashMap<String, Tensor> = c.model.params().iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
    match c.model.lora() {
        Some(lora) => {
            save_tensors(&dir.join(ADAPTER_WEIGHTS), &tensors)?;
            let mut targets: Vec<String> = c
                .model
                .params()
                .iter()
                .filter_map(|(n, _)| n.strip_suffix(".lora_A.weight")?.rsplit('.').next().map(str::to_string))
                .collect();
            targets.sort();
            targets.dedup();
            let config = PeftConfig::for_adapter(lora, targets, c.base_model.name.clone(), c.base_model.revision.clone());
            write_synced(&dir.join(ADAPTER_CONFIG), &config.to_json())
        }
        None => {
            save_tensors(&dir.join("model.safetensors"), &tensors)?;
            let src = c.base_model.dir.join("config.json");
            let bytes = std::fs::read(&src).map_err(io(&src))?;
            let mut config: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(&bytes).map_err(|e| TrainError::Checkpoint { path: src.clone(), message: e.to_string() })?;
            let before = config.clone();
            // Added tokens change vocab_size; the base's own file is kept byte for byte otherwise.
            c.model.update_hf_config(&mut config);
            let bytes = match config == before {
                true => bytes,
                false => serde_json::to_vec_pretty(&config).map_err(|e| TrainError::Io { path: dir.into(), source: e.into() })?,
            };
            write_synced(&dir.join("config.json"), &bytes)
        }
    }
}

/// Reads a checkpoint's trainer state.
pub fn read_state(dir: &Path) -> Result<TrainerState, TrainError> {
    let path = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint { path, message: e.to_string() })
}

/// Reads a checkpoint's optimizer state.
pub fn read_optimizer(dir: &Path) -> Result<HashMap<String, Tensor>, TrainError> {
    let path = dir.join("optimizer.safetensors");
    candle_core::safetensors::load(&path, &candle_core::Device::Cpu).map_err(|e| TrainError::Checkpoint { path, message: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(step: usize) -> TrainerState {
        TrainerState {
            global_step: step,
            epoch: 0.0,
            max_steps: 10,
            log_history: vec![],
            logging_steps: 1,
            save_steps: 2,
            train_batch_size: 1,
            world_size: 1,
            seed: 0,
            window: (0.0, 0),
        }
    }

    /// A save cut short (killed before its rename) leaves a partial directory, and a directory
    /// without trainer_state.json is incomplete: neither is ever taken for a checkpoint.
    #[test]
    fn an_interrupted_save_leaves_the_previous_checkpoint_the_latest() {
        let out = std::env::temp_dir().join(format!("sft-checkpoint-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let good = dir_of(&out, 2);
        std::fs::create_dir_all(&good).expect("dir");
        std::fs::write(good.join("trainer_state.json"), serde_json::to_vec(&state(2)).expect("json")).expect("write");
        let partial = out.join(".checkpoint-4.partial");
        std::fs::create_dir_all(&partial).expect("dir");
        std::fs::write(partial.join("model.safetensors"), b"torn").expect("write");
        std::fs::create_dir_all(dir_of(&out, 6)).expect("dir");
        assert_eq!(latest(&out), Some(good.clone()));
        assert_eq!(read_state(&good).expect("state"), state(2));
        assert_eq!(list(&out).len(), 1);
        std::fs::remove_dir_all(&out).expect("cleanup");
    }
}
