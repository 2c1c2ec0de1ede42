//! New special tokens in a tokenizer directory, as transformers'
//! `tokenizer.add_special_tokens({"additional_special_tokens": [...]})` then `save_pretrained`
//! leave it: each token not yet in the vocabulary (nor among its added tokens) gets the next id
//! and an entry in tokenizer.json's `added_tokens` (special, not normalized, no strip, not single
//! word); tokenizer_config.json lists it in `added_tokens_decoder` (when the file has that map)
//! and among the extra special tokens (`extra_special_tokens`, transformers 5's key, when the
//! file has it, else `additional_special_tokens`, which both 4 and 5 read);
//! special_tokens_map.json likewise. The other files of the directory that describe the
//! tokenizer and template are copied as they are.

use std::path::Path;

use serde_json::{json, Map, Value};

use super::TokenError;

/// Files copied unchanged beside the edited ones.
const COPIED: &[&str] = &["chat_template.jinja", "chat_template.json", "template_kwargs.json"];

/// What [`add_special_tokens`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedTokens {
    /// Every requested token and its id (new or already there), in request order.
    pub ids: Vec<(String, u32)>,
    /// How many were new.
    pub added: usize,
    /// The tokenizer's length afterwards (`len(tokenizer)`: the largest id + 1).
    pub len: usize,
}

fn load_err(path: &Path, message: impl ToString) -> TokenError {
    TokenError::Load { path: path.display().to_string(), message: message.to_string() }
}

fn read_json(path: &Path) -> Result<Option<Map<String, Value>>, TokenError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| load_err(path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(load_err(path, e)),
    }
}

fn write_json(path: &Path, map: &Map<String, Value>) -> Result<(), TokenError> {
    let text = serde_json::to_string_pretty(map).map_err(|e| load_err(path, e))?;
    std::fs::write(path, text + "\n").map_err(|e| load_err(path, e))
}

/// Every id the tokenizer has, by token text: the model's vocabulary and its added tokens.
fn known_ids(tokenizer: &Map<String, Value>) -> std::collections::HashMap<String, u32> {
    let mut ids = std::collections::HashMap::new();
    match tokenizer.get("model").and_then(|m| m.get("vocab")) {
        Some(Value::Object(vocab)) => ids.extend(vocab.iter().filter_map(|(k, v)| Some((k.clone(), v.as_u64()? as u32)))),
        // Unigram: a list of [piece, score], the id its position.
        Some(Value::Array(pieces)) => {
            ids.extend(pieces.iter().enumerate().filter_map(|(i, p)| Some((p.get(0)?.as_str()?.to_string(), i as u32))))
        }
        _ => {}
    }
    for t in tokenizer.get("added_tokens").and_then(Value::as_array).into_iter().flatten() {
        if let (Some(content), Some(id)) = (t.get("content").and_then(Value::as_str), t.get("id").and_then(Value::as_u64)) {
            ids.insert(content.to_string(), id as u32);
        }
    }
    ids
}

/// Writes the tokenizer of `src` with `tokens` added as special tokens into `out` (created).
pub fn add_special_tokens(src: &Path, tokens: &[String], out: &Path) -> Result<AddedTokens, TokenError> {
    let path = src.join("tokenizer.json");
    let mut tokenizer = read_json(&path)?.ok_or_else(|| load_err(&path, "no such file"))?;
    let mut known = known_ids(&tokenizer);
    let mut next = known.values().max().map_or(0, |m| m + 1);
    let (mut ids, mut new) = (vec![], vec![]);
    for t in tokens {
        let id = match known.get(t) {
            Some(&id) => id,
            None => {
                known.insert(t.clone(), next);
                new.push((t.clone(), next));
                next += 1;
                next - 1
            }
        };
        ids.push((t.clone(), id));
    }
    let added = tokenizer.entry("added_tokens").or_insert_with(|| Value::Array(vec![]));
    let list = added.as_array_mut().ok_or_else(|| load_err(&path, "added_tokens: expected a list"))?;
    for (content, id) in &new {
        list.push(json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}));
    }
    std::fs::create_dir_all(out).map_err(|e| load_err(out, e))?;
    write_json(&out.join("tokenizer.json"), &tokenizer)?;
    let names: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let config_path = src.join("tokenizer_config.json");
    if let Some(mut config) = read_json(&config_path)? {
        if let Some(Value::Object(decoder)) = config.get_mut("added_tokens_decoder") {
            for (content, id) in &new {
                decoder.insert(
                    id.to_string(),
                    json!({"content": content, "lstrip": false, "normalized": false, "rstrip": false, "single_word": false, "special": true}),
                );
            }
        }
        let key = if config.contains_key("extra_special_tokens") { "extra_special_tokens" } else { "additional_special_tokens" };
        extend_list(&mut config, key, &names).map_err(|m| load_err(&config_path, m))?;
        write_json(&out.join("tokenizer_config.json"), &config)?;
    }
    let map_path = src.join("special_tokens_map.json");
    if let Some(mut map) = read_json(&map_path)? {
        extend_list(&mut map, "additional_special_tokens", &names).map_err(|m| load_err(&map_path, m))?;
        write_json(&out.join("special_tokens_map.json"), &map)?;
    }
    for name in COPIED {
        let from = src.join(name);
        if from.is_file() {
            std::fs::copy(&from, out.join(name)).map_err(|e| load_err(&from, e))?;
        }
    }
    Ok(AddedTokens { ids, added: new.len(), len: next as usize })
}

/// Appends the `names` missing from the list under `key` (strings, or `{"content": ...}` objects
/// as older files write them); creates it when absent.
fn extend_list(map: &mut Map<String, Value>, key: &str, names: &[&str]) -> Result<(), String> {
    let list = match map.entry(key).or_insert_with(|| Value::Array(vec![])) {
        Value::Array(list) => list,
        // transformers 5 may write a mapping of names to tokens; those stay, the list is not touched.
        Value::Object(_) => return Ok(()),
        Value::Null => {
            map.insert(key.into(), Value::Array(vec![]));
            return extend_list(map, key, names);
        }
        other => return Err(format!("{key}: expected a list, got {other}")),
    };
    for name in names {
        let present = list.iter().any(|v| v.as_str() == Some(name) || v.get("content").and_then(Value::as_str) == Some(name));
        if !present {
            list.push(Value::from(*name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_tokens_get_the_next_ids_and_known_ones_keep_theirs() {
        let dir = std::env::temp_dir().join(format!("sft-added-tokens-{}", std::process::id()));
        let (src, out) = (dir.join("src"), dir.join("out"));
        std::fs::create_dir_all(&src).expect("dir");
        let tokenizer = r#"{"added_tokens": [{"id": 3, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}], "model": {"type": "WordLevel", "vocab": {"a": 0, "b": 1, "c": 2, "<s>": 3}, "unk_token": "a"}}"#;
        std::fs::write(src.join("tokenizer.json"), tokenizer).expect("write");
        std::fs::write(src.join("tokenizer_config.json"), r#"{"added_tokens_decoder": {}, "eos_token": "<s>"}"#).expect("write");
        let tokens: Vec<String> = ["<t>", "b", "<s>", "<u>", "<t>"].map(String::from).to_vec();
        let got = add_special_tokens(&src, &tokens, &out).expect("adds");
        let ids: Vec<u32> = got.ids.iter().map(|(_, id)| *id).collect();
        assert_eq!((ids, got.added, got.len), (vec![4, 1, 3, 5, 4], 2, 6));
        let config = read_json(&out.join("tokenizer_config.json")).expect("json").expect("file");
        assert_eq!(config["additional_special_tokens"], json!(["<t>", "b", "<s>", "<u>"]));
        assert_eq!(config["added_tokens_decoder"]["5"]["content"], "<u>");
        let t = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).expect("loads");
        assert_eq!((t.token_to_id("<u>"), t.get_vocab_size(true)), (Some(5), 6));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
