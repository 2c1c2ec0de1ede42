//! New tokens and whole trained modules: `added_tokens` (special tokens added to the tokenizer,
//! as transformers' `add_special_tokens({"additional_special_tokens": [...]})`; the model's
//! embedding and output layer grow to the tokenizer's length, the new rows the mean of the old
//! ones) and `modules_to_save` (PEFT's: `embed_tokens` and/or `lm_head` trained whole next to
//! the LoRA adapters and saved in the adapter file). The extended tokenizer is written to
//! `output_dir/tokenizer` and used for the data and every checkpoint.

use std::path::{Path, PathBuf};

use serde_json::Value;
use sft_data::tokens::added::{add_special_tokens, AddedTokens};
use sft_hub::LocalModel;
use sft_model::lora::{LoraSettings, SavedModule};

use crate::config::{Method, RawTrainConfig, TrainConfig};
use crate::TrainError;

fn config_err(path: &Path, key: &str, message: impl Into<String>) -> TrainError {
    TrainError::Config { path: path.into(), key: key.into(), message: message.into() }
}

/// `modules_to_save`: a list of `embed_tokens` and `lm_head`, sorted.
pub fn modules_to_save(value: Option<&Value>, path: &Path) -> Result<Vec<SavedModule>, TrainError> {
    let err = |m: String| config_err(path, "modules_to_save", m);
    let items = match value {
        None | Some(Value::Null) => return Ok(vec![]),
        Some(Value::Array(items)) => items,
        Some(other) => return Err(err(format!("expected a list like [embed_tokens, lm_head], got {other}"))),
    };
    let mut modules = items
        .iter()
        .map(|v| {
            let name = v.as_str().ok_or_else(|| err(format!("expected module names, got {v}")))?;
            SavedModule::parse(name).ok_or_else(|| err(format!("{name:?} is not supported; expected embed_tokens or lm_head")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    modules.sort();
    modules.dedup();
    Ok(modules)
}

/// With `adapter:`, the config's `modules_to_save` (when set) as `(mine, theirs)` where it is not
/// the adapter's.
pub fn saved_differs(mine: Option<&Value>, adapter: &LoraSettings, path: &Path) -> Result<Option<(String, String)>, TrainError> {
    if mine.is_none() {
        return Ok(None);
    }
    let names = |m: &[SavedModule]| format!("{:?}", m.iter().map(|m| m.name()).collect::<Vec<_>>());
    let ours = modules_to_save(mine, path)?;
    Ok((ours != adapter.modules_to_save).then(|| (names(&ours), names(&adapter.modules_to_save))))
}

/// Checks `added_tokens` and `modules_to_save` against the method; returns the tokens.
pub fn check_keys(raw: &RawTrainConfig, method: &Method, path: &Path) -> Result<Vec<String>, TrainError> {
    let err = |m: String| config_err(path, "added_tokens", m);
    let tokens = match &raw.added_tokens {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v.as_str() {
                Some(s) if !s.is_empty() => Ok(s.to_string()),
                _ => Err(err(format!("expected token strings like [\"<|tool|>\"], got {v}"))),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(err(format!("expected a list of token strings like [\"<|tool|>\"], got {other}"))),
    };
    match method {
        Method::Full if !modules_to_save(raw.modules_to_save.as_ref(), path)?.is_empty() => Err(config_err(
            path,
            "modules_to_save",
            "applies to LoRA adapters (finetuning: full trains every weight already); use finetuning: lora",
        )),
        Method::Lora(lora) if !tokens.is_empty() && lora.modules_to_save != SavedModule::ALL => Err(err(
            "with LoRA the new tokens' embedding and output rows must train and be saved with the adapter: set modules_to_save: [embed_tokens, lm_head]"
                .into(),
        )),
        _ => Ok(tokens),
    }
}

/// The tokenizer a run uses: `tokenizer` itself, or with `added_tokens` a copy with them added,
/// written to `output_dir/tokenizer` (rank 0; other ranks write theirs to a temporary directory),
/// and the tokenizer's new length (the vocabulary the model must have).
pub fn tokenizer(cfg: &TrainConfig, tokenizer: LocalModel, writer: bool) -> Result<(LocalModel, Option<usize>), TrainError> {
    if cfg.added_tokens.is_empty() {
        return Ok((tokenizer, None));
    }
    let out = match writer {
        true => cfg.output_dir.join("tokenizer"),
        false => std::env::temp_dir().join(format!("sft-tokenizer-{}", std::process::id())),
    };
    let AddedTokens { ids, added, len } = add_special_tokens(&tokenizer.dir, &cfg.added_tokens, &out)?;
    if writer {
        let listed: Vec<String> = ids.iter().map(|(t, id)| format!("{t} {id}")).collect();
        eprintln!(
            "added_tokens: {added} new of {} ({}); the tokenizer has {len} tokens, in {}",
            ids.len(),
            listed.join(", "),
            out.display()
        );
    }
    Ok((LocalModel { dir: PathBuf::from(&out), ..tokenizer }, Some(len)))
}

#[cfg(test)]
mod tests {
    use crate::config::load;

    fn write(name: &str, text: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join("sft-train-added-tests");
        std::fs::create_dir_all(&dir).expect("dir");
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p
    }

    const MIN: &str = "model: m\ndatasets:\n  - path: d.jsonl\n";

    #[test]
    fn good_values_resolve() {
        let p = write("ok.yaml", &format!("{MIN}added_tokens: [\"<|tool|>\", \"<|think|>\"]\nmodules_to_save: [lm_head, embed_tokens]\n"));
        let c = load(&p, &[]).expect("valid");
        assert_eq!(c.added_tokens, ["<|tool|>", "<|think|>"]);
        let crate::config::Method::Lora(lora) = c.method else { panic!("lora") };
        assert_eq!(lora.modules_to_save, sft_model::lora::SavedModule::ALL);
        load(&write("full.yaml", &format!("{MIN}finetuning: full\nadded_tokens: [\"<x>\"]\n")), &[]).expect("full fine-tuning adds tokens");
    }

    #[test]
    fn bad_values_name_the_key() {
        for (extra, expect) in [
            ("modules_to_save: [foo]", "modules_to_save: \"foo\" is not supported; expected embed_tokens or lm_head"),
            ("modules_to_save: lm_head", "modules_to_save: expected a list"),
            ("modules_to_save: [1]", "modules_to_save: expected module names"),
            ("added_tokens: [1, 2]\nmodules_to_save: [embed_tokens, lm_head]", "added_tokens: expected token strings"),
            ("added_tokens: \"<x>\"", "added_tokens: expected a list of token strings"),
            ("added_tokens: [\"\"]", "added_tokens: expected token strings"),
            ("added_tokens: [\"<x>\"]", "added_tokens: with LoRA the new tokens' embedding and output rows must train"),
            ("added_tokens: [\"<x>\"]\nmodules_to_save: [embed_tokens]", "set modules_to_save: [embed_tokens, lm_head]"),
            ("finetuning: full\nmodules_to_save: [lm_head]", "modules_to_save: applies to LoRA adapters"),
        ] {
            let e = load(&write("bad.yaml", &format!("{MIN}{extra}\n")), &[]).unwrap_err().to_string();
            assert!(e.contains(expect), "{extra}: {e}");
        }
    }
}
