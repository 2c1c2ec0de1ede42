//! The files a model directory must hold for `sft` to load it, and the optional ones it uses
//! when present; likewise for a PEFT adapter repository (one with `adapter_config.json`). One
//! list serves both the cache check (is this snapshot complete?) and the download (which files
//! of the repository to fetch), so the two cannot disagree.

use std::collections::BTreeSet;
use std::path::Path;

use serde::Deserialize;

use sft_model::lora::ADAPTER_CONFIG;

use crate::HubError;

/// The model's configuration.
pub const CONFIG: &str = "config.json";
/// Unsharded weights.
pub const WEIGHTS: &str = "model.safetensors";
/// The index of sharded weights: `weight_map` names the shard of every tensor.
pub const WEIGHTS_INDEX: &str = "model.safetensors.index.json";
/// The tokenizer (HF `tokenizers`' file).
pub const TOKENIZER: &str = "tokenizer.json";
/// Files every model needs besides its config and weights.
pub const REQUIRED: &[&str] = &[TOKENIZER, "tokenizer_config.json"];
/// Files used when the model has them.
pub const OPTIONAL: &[&str] = &["generation_config.json", "chat_template.jinja", "special_tokens_map.json"];

/// A PEFT adapter's weights (sft reads safetensors, not `adapter_model.bin`).
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// Files of an adapter repository used when it has them: the tokenizer and chat template it
/// was trained with (TRL saves them beside the adapter), its template keyword arguments.
pub const ADAPTER_OPTIONAL: &[&str] = &[
    TOKENIZER,
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
    sft_data::template::TEMPLATE_KWARGS_FILE,
];

/// The files to fetch of a repository that `has` shows: an adapter's ([`adapter_files`]) when
/// it has `adapter_config.json`, as a local adapter directory is told apart, else a model's
/// ([`model_files`]).
pub fn repo_files(has: impl Fn(&str) -> bool) -> Result<Vec<&'static str>, &'static str> {
    match has(ADAPTER_CONFIG) {
        true => adapter_files(has),
        false => model_files(has),
    }
}

/// The files of a PEFT adapter that `has` shows: config, weights, then the optional ones.
/// `Err` names the first required file it lacks.
pub fn adapter_files(has: impl Fn(&str) -> bool) -> Result<Vec<&'static str>, &'static str> {
    let mut files = vec![ADAPTER_CONFIG, ADAPTER_WEIGHTS];
    if let Some(missing) = files.iter().find(|f| !has(f)) {
        return Err(missing);
    }
    files.extend(ADAPTER_OPTIONAL.iter().filter(|f| has(f)));
    Ok(files)
}

/// The files of a model that `has` (a lookup by name) shows, in the order to fetch them:
/// config, weights (the index when sharded; its shards come from [`shards`]), tokenizer files,
/// then the optional files it has. `Err` names the first required file it lacks (for weights,
/// `model.safetensors`: neither it nor an index).
pub fn model_files(has: impl Fn(&str) -> bool) -> Result<Vec<&'static str>, &'static str> {
    let weights = match WeightsLayout::of(&has) {
        Some(WeightsLayout::Sharded) => WEIGHTS_INDEX,
        Some(WeightsLayout::Single) => WEIGHTS,
        None => return Err(WEIGHTS),
    };
    let mut files = vec![CONFIG, weights];
    files.extend(REQUIRED);
    if let Some(missing) = files.iter().find(|f| !has(f)) {
        return Err(missing);
    }
    files.extend(OPTIONAL.iter().filter(|f| has(f)));
    Ok(files)
}

/// `model.safetensors.index.json` as transformers writes it (only the key we read).
#[derive(Debug, Deserialize)]
struct HfSafetensorsIndex {
    weight_map: std::collections::BTreeMap<String, String>,
}

/// Where the weights are: one file, or an index and the shards it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightsLayout {
    /// `model.safetensors`.
    Single,
    /// `model.safetensors.index.json` and its shards.
    Sharded,
}

impl WeightsLayout {
    /// The layout a set of file names shows (an index wins, as in transformers), or `None`.
    pub fn of(has: impl Fn(&str) -> bool) -> Option<Self> {
        if has(WEIGHTS_INDEX) {
            Some(Self::Sharded)
        } else if has(WEIGHTS) {
            Some(Self::Single)
        } else {
            None
        }
    }
}

/// The shard files `index` (a `model.safetensors.index.json`) names, each once, in name order.
/// A shard must be a plain file name beside the index: anything else could point outside it.
pub fn shards(index: &Path) -> Result<Vec<String>, HubError> {
    let bad = |message: String| HubError::BadIndex { path: index.to_path_buf(), message };
    let text = std::fs::read_to_string(index).map_err(|e| bad(e.to_string()))?;
    let parsed: HfSafetensorsIndex = serde_json::from_str(&text).map_err(|e| bad(format!("{}:{}: {e}", e.line(), e.column())))?;
    let names: BTreeSet<String> = parsed.weight_map.into_values().collect();
    if names.is_empty() {
        return Err(bad("weight_map is empty".into()));
    }
    for name in &names {
        let plain = Path::new(name).file_name().is_some_and(|f| f == name.as_str()) && !name.starts_with('.');
        if !plain {
            return Err(bad(format!("weight_map names shard {name:?}; expected a file name beside the index")));
        }
    }
    Ok(names.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_names_its_shards_once_and_only_beside_itself() {
        let dir = std::env::temp_dir().join(format!("sft-hub-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let index = dir.join(WEIGHTS_INDEX);
        let write = |map: &str| std::fs::write(&index, format!(r#"{{"metadata": {{}}, "weight_map": {map}}}"#)).unwrap();
        write(r#"{"a": "m-2.safetensors", "b": "m-1.safetensors", "c": "m-2.safetensors"}"#);
        assert_eq!(shards(&index).unwrap(), ["m-1.safetensors", "m-2.safetensors"]);
        for evil in ["../x.safetensors", "/etc/passwd", "sub/x.safetensors", ".hidden"] {
            write(&format!(r#"{{"a": {evil:?}}}"#));
            let e = shards(&index).unwrap_err().to_string();
            assert!(e.contains(WEIGHTS_INDEX) && e.contains(evil), "{e}");
        }
        write("{}");
        assert!(shards(&index).unwrap_err().to_string().contains("empty"));
        std::fs::write(&index, "{").unwrap();
        assert!(shards(&index).unwrap_err().to_string().contains(WEIGHTS_INDEX));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(WeightsLayout::of(|f| f == WEIGHTS || f == WEIGHTS_INDEX), Some(WeightsLayout::Sharded));
        assert_eq!(WeightsLayout::of(|f| f == WEIGHTS), Some(WeightsLayout::Single));
        assert_eq!(WeightsLayout::of(|_| false), None);
    }

    #[test]
    fn a_model_needs_config_weights_and_tokenizer() {
        let with = |names: &'static [&'static str]| move |f: &str| names.contains(&f);
        const FULL: &[&str] = &["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"];
        assert_eq!(model_files(with(FULL)).unwrap(), FULL);
        const SHARDED: &[&str] = &["config.json", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json"];
        assert_eq!(model_files(with(SHARDED)).unwrap(), SHARDED);
        assert_eq!(model_files(with(&["config.json", "tokenizer.json", "tokenizer_config.json"])), Err(WEIGHTS));
        assert_eq!(model_files(with(&["model.safetensors", "tokenizer.json", "tokenizer_config.json"])), Err(CONFIG));
        assert_eq!(model_files(with(&["config.json", "model.safetensors", "tokenizer.json"])), Err("tokenizer_config.json"));
    }
}
