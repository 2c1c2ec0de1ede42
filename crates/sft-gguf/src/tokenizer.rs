//! The tokenizer a GGUF file describes, rebuilt as a Hugging Face `tokenizer.json` and
//! `tokenizer_config.json`, exactly as transformers' GGUF loader rebuilds it
//! (`transformers/integrations/gguf/gguf_tokenizer_mapping.py`, with `GPT2Tokenizer` and
//! `LlamaTokenizer` supplying the pipeline), so that both tokenize a text to the same ids:
//!
//! - `gpt2`: byte-level BPE with the file's merges; tokens spelled outside the byte alphabet are
//!   respelled byte by byte; the split regex chosen from `tokenizer.ggml.pre` where transformers
//!   knows one ([`split_regex`]), else GPT-2's own `ByteLevel` regex.
//! - `llama`: SentencePiece as BPE with byte fallback, `Metaspace` (`▁`, prepended to the first
//!   word), merges from the file or recovered from the scores ([`merges_from_scores`]); Phi-3
//!   files get a normalizer in place of `Metaspace`.
//! - Control tokens (type 3) and the BOS/EOS/UNK/padding tokens become special added tokens,
//!   user-defined ones (type 4) plain added tokens; BOS/EOS are added per
//!   `tokenizer.ggml.add_bos_token` / `add_eos_token` (llama vocabularies add BOS when unsaid).
//!
//! The JSON is written out rather than assembled from `tokenizers`' builder types because it is
//! the artifact (transformers reads it too); [`build`] then parses it with the `tokenizers`
//! crate, so a file that does not load is an error here, not later.

use std::collections::HashSet;

use serde_json::{json, Map, Value as Json};

use crate::metadata::{Architecture, GgufMetadata};
use crate::GgufError;

/// ggml token types.
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;

const LLAMA3_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN_SPLIT: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*",
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);
const GPT4O_SPLIT: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);

/// The split regex transformers uses for a `tokenizer.ggml.pre` value (its
/// `GGUF_PRE_TOKENIZER_SPLITS`); `None`: GPT-2's `ByteLevel` regex.
pub fn split_regex(pre: &str) -> Option<&'static str> {
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2" | "jina-v5-nano" | "dbrx"
        | "smaug-bpe" => LLAMA3_SPLIT,
        "tekken" => TEKKEN_SPLIT,
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => QWEN2_SPLIT,
        "qwen35" => QWEN35_SPLIT,
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => GPT4O_SPLIT,
        _ => return None,
    })
}

/// A rebuilt tokenizer: `tokenizer.json`, `tokenizer_config.json` and the chat template.
#[derive(Debug, Clone)]
pub struct Rebuilt {
    /// `tokenizer.json`.
    pub tokenizer_json: Json,
    /// `tokenizer_config.json`.
    pub tokenizer_config: Json,
    /// `chat_template.jinja`, when the file has a template.
    pub chat_template: Option<String>,
    /// The tokenizer, parsed by the `tokenizers` crate.
    pub tokenizer: tokenizers::Tokenizer,
}

/// GPT-2's byte-to-character table (`bytes_to_unicode`): printable bytes stand for themselves,
/// the others are shifted to U+0100 and up.
pub fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut shifted = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[b as usize] = if printable {
            char::from(b)
        } else {
            shifted += 1;
            // 256 + n stays below U+0200: always a valid char.
            char::from_u32(255 + shifted).unwrap_or('\u{FFFD}')
        };
    }
    table
}

/// `generate_merges(vocab, scores)` of transformers: every split of a piece into two pieces
/// of the vocabulary, best score first (ties: shorter left, then shorter right, then order).
pub fn merges_from_scores(tokens: &[String], scores: &[f32]) -> Vec<(String, String)> {
    let mut vocab = std::collections::HashMap::new();
    for (i, t) in tokens.iter().enumerate() {
        vocab.insert(t.as_str(), i);
    }
    // dict(zip(tokens, scores)): first position, last score.
    let mut order: Vec<(&str, f32)> = Vec::new();
    let mut at = std::collections::HashMap::new();
    for (t, &s) in tokens.iter().zip(scores) {
        match at.get(t.as_str()) {
            Some(&i) => order[i] = (t.as_str(), s),
            None => {
                at.insert(t.as_str(), order.len());
                order.push((t.as_str(), s));
            }
        }
    }
    let mut merges: Vec<(&str, &str, f32)> = Vec::new();
    for (piece, score) in order {
        let mut local: Vec<(&str, &str, f32)> = piece
            .char_indices()
            .skip(1)
            .map(|(i, _)| (&piece[..i], &piece[i..], score))
            .filter(|(l, r, _)| vocab.contains_key(l) && vocab.contains_key(r))
            .collect();
        local.sort_by_key(|(l, r, _)| (vocab[l], vocab[r]));
        merges.extend(local);
    }
    // Python's sort(reverse=True) is stable, as is sort_by.
    merges.sort_by(|a, b| {
        let key = |m: &(&str, &str, f32)| (m.2, m.0.chars().count(), m.1.chars().count());
        let (ka, kb) = (key(a), key(b));
        kb.0.total_cmp(&ka.0).then(kb.1.cmp(&ka.1)).then(kb.2.cmp(&ka.2))
    });
    merges.into_iter().map(|(l, r, _)| (l.to_string(), r.to_string())).collect()
}

/// Rebuilds the tokenizer of `meta`.
pub fn build(meta: &GgufMetadata) -> Result<Rebuilt, GgufError> {
    let t = &meta.tokenizer;
    let n = t.tokens.len();
    if n == 0 {
        return Err(meta.key_error("tokenizer.ggml.tokens", "is empty"));
    }
    for (key, id) in [
        ("tokenizer.ggml.bos_token_id", t.bos),
        ("tokenizer.ggml.eos_token_id", t.eos),
        ("tokenizer.ggml.unknown_token_id", t.unk),
        ("tokenizer.ggml.padding_token_id", t.pad),
    ] {
        if let Some(id) = id.filter(|&id| id as usize >= n) {
            return Err(meta.key_error(key, format!("token id {id} is outside the vocabulary of {n} tokens")));
        }
    }
    for (key, len) in
        [("tokenizer.ggml.token_type", t.token_type.as_ref().map(Vec::len)), ("tokenizer.ggml.scores", t.scores.as_ref().map(Vec::len))]
    {
        if let Some(len) = len.filter(|&l| l != n) {
            return Err(meta.key_error(key, format!("{len} entries for {n} tokens")));
        }
    }
    let (tokens, model, mut pipeline) = match t.model.as_str() {
        "gpt2" => byte_level(meta)?,
        "llama" if meta.architecture.norm_plus_one() => {
            return Err(meta.key_error(
                "tokenizer.ggml.model",
                "Gemma's SentencePiece vocabulary is not rebuilt yet (llama and gpt2 vocabularies of other architectures are)",
            ))
        }
        "llama" => sentencepiece(meta)?,
        other => return Err(meta.key_error("tokenizer.ggml.model", format!("{other:?} is not supported (supported: gpt2, llama)"))),
    };
    let name = |id: Option<u32>| id.map(|i| t.tokens[i as usize].clone());
    let (bos, eos, unk, pad) = (name(t.bos), name(t.eos), name(t.unk), name(t.pad));
    let add_bos = t.add_bos.unwrap_or(t.model == "llama") && bos.is_some();
    let add_eos = t.add_eos.unwrap_or(false) && eos.is_some();
    pipeline.insert("added_tokens".into(), added_tokens(meta, &tokens, &model, [&bos, &eos, &unk, &pad]));
    pipeline.insert(
        "post_processor".into(),
        post_processor(t.bos.zip(bos.clone()).filter(|_| add_bos), t.eos.zip(eos.clone()).filter(|_| add_eos)),
    );
    pipeline.insert("model".into(), Json::Object(model));
    let tokenizer_json = order(pipeline);
    let text = tokenizer_json.to_string();
    let tokenizer = text
        .parse::<tokenizers::Tokenizer>()
        .map_err(|e| meta.key_error("tokenizer.ggml.tokens", format!("the rebuilt tokenizer does not load: {e}")))?;
    let tokenizer_config = json!({
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "bos_token": bos,
        "eos_token": eos,
        "unk_token": unk,
        "pad_token": pad,
        "clean_up_tokenization_spaces": false,
        "model_max_length": meta.context_length,
        "tokenizer_class": "TokenizersBackend",
    });
    Ok(Rebuilt { tokenizer_json, tokenizer_config, chat_template: t.chat_template.clone(), tokenizer })
}

/// The keys of a `tokenizer.json` in the order the `tokenizers` library writes them.
fn order(mut parts: Map<String, Json>) -> Json {
    let mut out = Map::new();
    out.insert("version".into(), json!("1.0"));
    out.insert("truncation".into(), Json::Null);
    out.insert("padding".into(), Json::Null);
    for key in ["added_tokens", "normalizer", "pre_tokenizer", "post_processor", "decoder", "model"] {
        out.insert(key.into(), parts.remove(key).unwrap_or(Json::Null));
    }
    Json::Object(out)
}

type Parts = (Vec<String>, Map<String, Json>, Map<String, Json>);

/// Byte-level BPE (`GPT2Tokenizer`).
fn byte_level(meta: &GgufMetadata) -> Result<Parts, GgufError> {
    let t = &meta.tokenizer;
    let spelling = bytes_to_unicode();
    let alphabet: HashSet<char> = spelling.iter().copied().collect();
    let tokens: Vec<String> = t
        .tokens
        .iter()
        .map(
            |tok| {
                if tok.chars().all(|c| alphabet.contains(&c)) {
                    tok.clone()
                } else {
                    tok.bytes().map(|b| spelling[b as usize]).collect()
                }
            },
        )
        .collect();
    let merges =
        t.merges.as_ref().ok_or_else(|| meta.key_error("tokenizer.ggml.merges", "missing (a gpt2 vocabulary needs its merges)"))?;
    let merges = split_merges(meta, merges)?;
    let mut model = bpe(&tokens, merges);
    model.insert("unk_token".into(), Json::Null);
    model.insert("continuing_subword_prefix".into(), json!(""));
    model.insert("end_of_word_suffix".into(), json!(""));
    model.insert("fuse_unk".into(), json!(false));
    model.insert("byte_fallback".into(), json!(false));
    let byte_level =
        |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let pre = match t.pre.as_deref().and_then(split_regex) {
        Some(regex) => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
            byte_level(false),
        ]}),
        None => byte_level(true),
    };
    let mut p = Map::new();
    p.insert("normalizer".into(), Json::Null);
    p.insert("pre_tokenizer".into(), pre);
    p.insert("decoder".into(), json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}));
    Ok((tokens, model, p))
}

/// SentencePiece as BPE with byte fallback (`LlamaTokenizer`).
fn sentencepiece(meta: &GgufMetadata) -> Result<Parts, GgufError> {
    let t = &meta.tokenizer;
    let merges = match (&t.merges, &t.scores) {
        (Some(m), _) => split_merges(meta, m)?,
        (None, Some(scores)) => merges_from_scores(&t.tokens, scores),
        (None, None) => return Err(meta.key_error("tokenizer.ggml.scores", "missing, and no tokenizer.ggml.merges either")),
    };
    let mut model = bpe(&t.tokens, merges);
    model.insert("unk_token".into(), Json::Null);
    model.insert("continuing_subword_prefix".into(), Json::Null);
    model.insert("end_of_word_suffix".into(), Json::Null);
    model.insert("fuse_unk".into(), json!(true));
    model.insert("byte_fallback".into(), json!(true));
    let mut p = Map::new();
    if meta.architecture == Architecture::Phi3 {
        // Phi-3: the prefix space comes from a normalizer, not from Metaspace.
        p.insert(
            "normalizer".into(),
            json!({"type": "Sequence", "normalizers": [
                {"type": "Prepend", "prepend": "\u{2581}"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"},
            ]}),
        );
        p.insert("pre_tokenizer".into(), Json::Null);
    } else {
        p.insert("normalizer".into(), Json::Null);
        p.insert(
            "pre_tokenizer".into(),
            json!({"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "first", "split": false}),
        );
    }
    p.insert(
        "decoder".into(),
        json!({"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0},
        ]}),
    );
    Ok((t.tokens.clone(), model, p))
}

fn split_merges(meta: &GgufMetadata, merges: &[String]) -> Result<Vec<(String, String)>, GgufError> {
    merges
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut parts = m.split(' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(l), Some(r), None) if !l.is_empty() && !r.is_empty() => Ok((l.to_string(), r.to_string())),
                _ => Err(meta.key_error("tokenizer.ggml.merges", format!("entry {i} {m:?} is not two tokens separated by a space"))),
            }
        })
        .collect()
}

fn bpe(tokens: &[String], merges: Vec<(String, String)>) -> Map<String, Json> {
    let mut vocab = Map::new();
    for (i, t) in tokens.iter().enumerate() {
        vocab.insert(t.clone(), json!(i));
    }
    let mut m = Map::new();
    m.insert("type".into(), json!("BPE"));
    m.insert("dropout".into(), Json::Null);
    m.insert("ignore_merges".into(), json!(false));
    m.insert("vocab".into(), Json::Object(vocab));
    m.insert("merges".into(), Json::Array(merges.into_iter().map(|(l, r)| json!([l, r])).collect()));
    m
}

/// Control tokens and the named special tokens as special, user-defined ones as plain.
fn added_tokens(meta: &GgufMetadata, tokens: &[String], model: &Map<String, Json>, named: [&Option<String>; 4]) -> Json {
    let t = &meta.tokenizer;
    let types = t.token_type.as_deref().unwrap_or(&[]);
    let byte_level = t.model == "gpt2";
    let alphabet: HashSet<char> = bytes_to_unicode().into_iter().collect();
    let named: HashSet<&str> = named.into_iter().flatten().map(String::as_str).collect();
    let vocab = model.get("vocab").and_then(Json::as_object);
    let mut out = Vec::new();
    for (id, tok) in tokens.iter().enumerate() {
        let ty = types.get(id).copied().unwrap_or(1);
        let control = ty == CONTROL && (!byte_level || tok.chars().all(|c| alphabet.contains(&c)));
        let special = control || named.contains(tok.as_str());
        let user = ty == USER_DEFINED && vocab.is_some_and(|v| v.contains_key(tok));
        if special || user {
            out.push(json!({"id": id, "content": tok, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": special}));
        }
    }
    Json::Array(out)
}

/// transformers' `update_post_processor`: `[BOS] $A [EOS]`, and for pairs `[BOS] $B:1 [EOS]` after.
fn post_processor(bos: Option<(u32, String)>, eos: Option<(u32, String)>) -> Json {
    let special = |tok: &str, type_id: u32| json!({"SpecialToken": {"id": tok, "type_id": type_id}});
    let seq = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
    let part = |name: &str, type_id: u32| {
        let mut v = Vec::new();
        v.extend(bos.iter().map(|(_, b)| special(b, type_id)));
        v.push(seq(name, type_id));
        v.extend(eos.iter().map(|(_, e)| special(e, type_id)));
        v
    };
    let single = part("A", 0);
    let mut pair = single.clone();
    pair.extend(part("B", 1));
    let mut specials = Map::new();
    for (id, tok) in bos.iter().chain(eos.iter()) {
        specials.insert(tok.clone(), json!({"id": tok, "ids": [id], "tokens": [tok]}));
    }
    json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_gpt2s() {
        let t = bytes_to_unicode();
        assert_eq!((t[b'!' as usize], t[b' ' as usize], t[b'\n' as usize], t[0]), ('!', 'Ġ', 'Ċ', 'Ā'));
        assert_eq!(t.iter().collect::<HashSet<_>>().len(), 256);
    }

    #[test]
    fn merges_come_best_score_first() {
        let toks = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let tokens = toks(&["a", "b", "c", "ab", "abc", "bc"]);
        let merges = merges_from_scores(&tokens, &[0.0, 0.0, 0.0, -1.0, -3.0, -2.0]);
        let pairs: Vec<(&str, &str)> = merges.iter().map(|(l, r)| (l.as_str(), r.as_str())).collect();
        assert_eq!(pairs, [("a", "b"), ("b", "c"), ("ab", "c"), ("a", "bc")]);
    }
}
