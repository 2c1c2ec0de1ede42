//! The tokenizer as llama.cpp reads it from GGUF (`tokenizer.ggml.*`), written from the HF
//! `tokenizer.json` the way `convert_hf_to_gguf.py` writes it: a byte-level BPE as `gpt2`
//! (tokens, token types, merges, and the `pre` name llama.cpp picks its pre-tokenizer by), a
//! BPE with byte fallback (Llama 2, Mistral, Gemma) as `llama` (SentencePiece-style tokens
//! with scores, `<0xNN>` byte tokens).
//!
//! llama.cpp names a BPE's pre-tokenizer by the sha256 of `str(tokenizer.encode(chktxt))`;
//! `pre_hashes.tsv` is its table (generated from the converter, see
//! tests/fixtures/gguf_export/gen_pre_hashes.py), and the hash is computed here with the
//! tokenizers crate transformers' fast tokenizers run on.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use crate::gguf::GgufError;

const PRE_HASHES: &str = include_str!("pre_hashes.tsv");
const PRE_CHECK_TEXT: &str = include_str!("pre_check.txt");

/// llama.cpp's token types.
const NORMAL: i32 = 1;
const UNUSED: i32 = 5;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const BYTE: i32 = 6;

/// The special tokens to declare, by their text.
#[derive(Debug, Clone, Default)]
pub struct Specials {
    /// The BOS (`bos_token`).
    pub bos: Option<String>,
    /// The EOS generation stops at (the one `map_eos_token` chose, when it did).
    pub eos: Option<String>,
    /// The template's end-of-turn token.
    pub eot: Option<String>,
    /// The padding token.
    pub pad: Option<String>,
    /// The unknown token.
    pub unk: Option<String>,
}

/// Tokenizer metadata ready for the GGUF header, and what could not be matched exactly.
pub struct Vocab {
    /// `tokenizer.ggml.*` keys.
    pub metadata: Vec<(String, Value)>,
    /// Things the user should know (an unknown pre-tokenizer, a token that is missing).
    pub warnings: Vec<String>,
}

struct Token {
    text: String,
    kind: i32,
}

/// Reads `dir/tokenizer.json` (and `tokenizer_config.json`) into GGUF tokenizer metadata for
/// a model with `vocab_size` embedding rows.
pub fn vocab(dir: &Path, vocab_size: usize, specials: &Specials) -> Result<Vocab, GgufError> {
    let path = dir.join("tokenizer.json");
    let text = std::fs::read_to_string(&path).map_err(|source| GgufError::Io { path: path.clone(), source })?;
    let json: Json = serde_json::from_str(&text).map_err(|e| GgufError::File { path: path.clone(), message: e.to_string() })?;
    let model = &json["model"];
    if model["type"].as_str() != Some("BPE") {
        let message = format!("model.type {}: only BPE tokenizers can be exported to GGUF", model["type"]);
        return Err(GgufError::File { path, message });
    }
    let spm = model["byte_fallback"].as_bool().unwrap_or(false);
    let tokens = read_tokens(&path, &json, vocab_size, spm)?;
    let mut warnings = Vec::new();
    let declared = {
        let ids: HashMap<&str, usize> = tokens.iter().enumerate().filter_map(|(i, t)| t.as_ref().map(|t| (t.text.as_str(), i))).collect();
        let mut id_of = |what: &str, token: &Option<String>| -> Option<u32> {
            let token = token.as_ref()?;
            let id = ids.get(token.as_str()).map(|&i| i as u32);
            if id.is_none() {
                warnings.push(format!("{}: {what} {token:?} is not a token; not declared", path.display()));
            }
            id
        };
        [
            ("bos", id_of("bos_token", &specials.bos)),
            ("eos", id_of("eos_token", &specials.eos)),
            ("eot", id_of("end-of-turn token", &specials.eot)),
            ("padding", id_of("pad_token", &specials.pad)),
            ("unknown", id_of("unk_token", &specials.unk)),
        ]
    };
    let (add_bos, add_eos) = added_specials(&path, declared[0].1, declared[1].1)?;
    let mut metadata = vec![("tokenizer.ggml.model".to_string(), Value::String(if spm { "llama" } else { "gpt2" }.into()))];
    let pre = if spm { Some("default".to_string()) } else { pre_name(&path)? };
    if pre.is_none() {
        warnings.push(format!(
            "{}: llama.cpp knows no pre-tokenizer for this tokenizer (its check-text hash is not in llama.cpp's table); \
             wrote tokenizer.ggml.pre = \"default\", so llama.cpp may split text differently from training",
            path.display()
        ));
    }
    metadata.push(("tokenizer.ggml.pre".into(), Value::String(pre.unwrap_or_else(|| "default".into()))));
    let (texts, kinds): (Vec<Value>, Vec<Value>) = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| match t {
            Some(t) => (Value::String(t.text), Value::I32(t.kind)),
            None => (Value::String(format!("[PAD{i}]")), Value::I32(UNUSED)),
        })
        .unzip();
    if spm {
        metadata.push(("tokenizer.ggml.scores".into(), Value::Array(spm_scores(&path, model, &texts)?)));
        metadata.push(("tokenizer.ggml.add_space_prefix".into(), Value::Bool(prepends_space(&json))));
    }
    metadata.push(("tokenizer.ggml.tokens".into(), Value::Array(texts)));
    metadata.push(("tokenizer.ggml.token_type".into(), Value::Array(kinds)));
    if !spm {
        metadata.push(("tokenizer.ggml.merges".into(), Value::Array(merges(&path, model)?)));
    }
    for (key, id) in declared {
        if let Some(id) = id {
            metadata.push((format!("tokenizer.ggml.{key}_token_id"), Value::U32(id)));
        }
    }
    metadata.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(add_bos)));
    metadata.push(("tokenizer.ggml.add_eos_token".into(), Value::Bool(add_eos)));
    Ok(Vocab { metadata, warnings })
}

/// Every embedding row's token, by id (`None` for rows no token uses), typed as the converter
/// types them.
fn read_tokens(path: &Path, json: &Json, vocab_size: usize, spm: bool) -> Result<Vec<Option<Token>>, GgufError> {
    let bad = |message: String| GgufError::File { path: path.into(), message };
    let mut tokens: Vec<Option<Token>> = (0..vocab_size).map(|_| None).collect();
    let mut put = |id: u64, token: Token| -> Result<(), GgufError> {
        let slot = tokens.get_mut(id as usize).ok_or_else(|| bad(format!("token id {id} is past the model's vocab_size {vocab_size}")))?;
        *slot = Some(token);
        Ok(())
    };
    let vocab = json["model"]["vocab"].as_object().ok_or_else(|| bad("model.vocab: expected an object".into()))?;
    for (text, id) in vocab {
        let id = id.as_u64().ok_or_else(|| bad(format!("model.vocab.{text}: expected an id")))?;
        let byte = spm && text.len() == 6 && text.starts_with("<0x") && text.ends_with('>');
        put(id, Token { text: text.clone(), kind: if byte { BYTE } else { NORMAL } })?;
    }
    for added in json["added_tokens"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let (Some(id), Some(content)) = (added["id"].as_u64(), added["content"].as_str()) else {
            return Err(bad("added_tokens: an entry without id and content".into()));
        };
        let special = added["special"].as_bool().unwrap_or(false) || looks_special(content);
        let kind = if special { CONTROL } else { USER_DEFINED };
        // llama.cpp expects user-defined tokens pre-normalized: SentencePiece's ▁ as a space.
        let text = if spm || special { content.to_string() } else { content.replace('\u{2581}', " ") };
        put(id, Token { text, kind })?;
    }
    Ok(tokens)
}

/// `does_token_look_special` of the converter: added tokens some models leave unmarked.
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<\u{ff5c}") && t.ends_with("\u{ff5c}>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// `model.merges` as `"a b"` strings (tokenizers writes pairs or joined strings).
fn merges(path: &Path, model: &Json) -> Result<Vec<Value>, GgufError> {
    let list = model["merges"].as_array().map(Vec::as_slice).unwrap_or_default();
    list.iter()
        .map(|m| match m {
            Json::String(s) => Ok(Value::String(s.clone())),
            Json::Array(pair) if pair.len() == 2 && pair.iter().all(Json::is_string) => {
                Ok(Value::String(format!("{} {}", pair[0].as_str().unwrap_or_default(), pair[1].as_str().unwrap_or_default())))
            }
            other => Err(GgufError::File { path: path.into(), message: format!("model.merges: {other} is not a merge") }),
        })
        .collect()
}

/// SentencePiece-style scores for a BPE with byte fallback: a token made by merge `r` scores
/// `-r` (llama.cpp's SPM tokenizer merges the best-scoring pair first, which is BPE's rank
/// order); bytes, specials and unmerged tokens score 0 like SentencePiece's.
fn spm_scores(path: &Path, model: &Json, texts: &[Value]) -> Result<Vec<Value>, GgufError> {
    let mut rank: HashMap<String, usize> = HashMap::new();
    for (r, m) in merges(path, model)?.into_iter().enumerate() {
        if let Value::String(s) = m {
            rank.entry(s.replacen(' ', "", 1)).or_insert(r);
        }
    }
    Ok(texts
        .iter()
        .map(|t| match t {
            Value::String(s) => Value::F32(rank.get(s).map_or(0.0, |&r| -(r as f32) - 1.0)),
            _ => Value::F32(0.0),
        })
        .collect())
}

/// Whether the normalizer puts `▁` in front of the text (Llama 2's `Prepend`).
fn prepends_space(json: &Json) -> bool {
    let norm = &json["normalizer"];
    let one = |n: &Json| n["type"] == "Prepend";
    one(norm) || norm["normalizers"].as_array().is_some_and(|v| v.iter().any(one))
}

fn load(path: &Path) -> Result<tokenizers::Tokenizer, GgufError> {
    tokenizers::Tokenizer::from_file(path).map_err(|e| GgufError::File { path: path.into(), message: e.to_string() })
}

/// Whether encoding with special tokens (the post-processor) puts the BOS first / EOS last.
fn added_specials(path: &Path, bos: Option<u32>, eos: Option<u32>) -> Result<(bool, bool), GgufError> {
    let tok = load(path)?;
    let enc = tok.encode("a", true).map_err(|e| GgufError::File { path: path.into(), message: e.to_string() })?;
    let plain = tok.encode("a", false).map_err(|e| GgufError::File { path: path.into(), message: e.to_string() })?;
    let (with, without) = (enc.get_ids(), plain.get_ids());
    let add_bos = with.len() > without.len() && bos.is_some() && with.first().copied() == bos;
    let add_eos = with.len() > without.len() && eos.is_some() && with.last().copied() == eos;
    Ok((add_bos, add_eos))
}

/// llama.cpp's name for this tokenizer's pre-tokenizer, if its table has the hash.
fn pre_name(path: &Path) -> Result<Option<String>, GgufError> {
    let tok = load(path)?;
    let enc = tok.encode(PRE_CHECK_TEXT, true).map_err(|e| GgufError::File { path: path.into(), message: e.to_string() })?;
    let hash = pre_hash(enc.get_ids());
    Ok(PRE_HASHES
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('\t'))
        .find(|(h, _)| *h == hash)
        .map(|(_, name)| name.to_string()))
}

/// sha256 of the ids as Python prints a list (`[1, 2, 3]`), in hex.
pub fn pre_hash(ids: &[u32]) -> String {
    let listed = format!("[{}]", ids.iter().map(u32::to_string).collect::<Vec<_>>().join(", "));
    Sha256::digest(listed.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_of_the_python_list_text() {
        // hashlib.sha256(str([1, 2, 3]).encode()).hexdigest()
        assert_eq!(pre_hash(&[1, 2, 3]), "a36b1f2c3f84522dd1005145646617d7054c0851e97c72a039c0bdfac9fa07f3");
        // The converter's chktxt, character for character.
        assert_eq!(PRE_CHECK_TEXT.chars().count(), 350);
        assert!(looks_special("<|im_end|>") && !looks_special("hello"));
    }
}
