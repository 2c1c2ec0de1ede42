//! Reading the parts of `tokenizer.json` the byte-level fast path needs, and deciding whether
//! the file is of a shape it reproduces exactly; anything else is left to the tokenizers crate.

use std::borrow::Cow;

use ahash::AHashMap;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

/// The regex of the tokenizers crate's `ByteLevel` pre-tokenizer with `use_regex: true` (GPT-2's).
const GPT2_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// The serde mirror of the fields read from `tokenizer.json` (the rest is ignored). Strings
/// borrow from the file's text where they can: 300k small allocations cost more than parsing.
#[derive(Deserialize)]
pub(super) struct HfTokenizerFile<'a> {
    #[serde(default)]
    added_tokens: Vec<HfAddedToken>,
    #[serde(default)]
    normalizer: Option<Value>,
    #[serde(default)]
    pre_tokenizer: Option<Value>,
    #[serde(default)]
    post_processor: Option<Value>,
    #[serde(default)]
    truncation: Option<Value>,
    #[serde(default)]
    padding: Option<Value>,
    #[serde(borrow)]
    model: HfBpeModel<'a>,
}

#[derive(Deserialize)]
struct HfAddedToken {
    id: u32,
    content: String,
    #[serde(default)]
    single_word: bool,
    #[serde(default)]
    lstrip: bool,
    #[serde(default)]
    rstrip: bool,
    #[serde(default)]
    normalized: bool,
}

#[derive(Deserialize)]
struct HfBpeModel<'a> {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    dropout: Option<f32>,
    #[serde(default)]
    continuing_subword_prefix: Option<String>,
    #[serde(default)]
    end_of_word_suffix: Option<String>,
    #[serde(default)]
    byte_fallback: bool,
    #[serde(default)]
    ignore_merges: bool,
    #[serde(borrow)]
    vocab: AHashMap<Text<'a>, u32>,
    #[serde(borrow)]
    merges: Vec<HfMerge<'a>>,
}

/// A merge as stored: `"a b"` (older files) or `["a", "b"]`.
enum HfMerge<'a> {
    Joined(Cow<'a, str>),
    Pair(Cow<'a, str>, Cow<'a, str>),
}

/// Reads either form without buffering (serde's `untagged` costs more than the whole parse).
impl<'de: 'a, 'a> Deserialize<'de> for HfMerge<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MergeVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for MergeVisitor<'a> {
            type Value = HfMerge<'a>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a merge: \"a b\" or [\"a\", \"b\"]")
            }

            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<HfMerge<'a>, E> {
                Ok(HfMerge::Joined(Cow::Borrowed(v)))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<HfMerge<'a>, E> {
                Ok(HfMerge::Joined(Cow::Owned(v.to_string())))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<HfMerge<'a>, A::Error> {
                let a: Text<'a> = seq.next_element()?.ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let b: Text<'a> = seq.next_element()?.ok_or_else(|| de::Error::invalid_length(1, &self))?;
                if seq.next_element::<de::IgnoredAny>()?.is_some() {
                    return Err(de::Error::invalid_length(3, &self));
                }
                Ok(HfMerge::Pair(a.0, b.0))
            }
        }
        deserializer.deserialize_any(MergeVisitor(std::marker::PhantomData))
    }
}

/// A string borrowed from the input when it has no escapes (serde copies a `Cow<str>` that is
/// not a field of its own, such as a map key).
#[derive(Deserialize, PartialEq, Eq, Hash)]
pub(super) struct Text<'a>(#[serde(borrow)] pub Cow<'a, str>);

impl std::borrow::Borrow<str> for Text<'_> {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// What the fast path is built from, checked to be of the supported shape.
pub(super) struct Plan<'a> {
    /// Apply NFC first (`normalizer: NFC`); otherwise no normalizer.
    pub nfc: bool,
    /// The pre-tokenizer's split regex (onig syntax, as in the file).
    pub pattern: String,
    /// Added tokens matched on the raw text: (content, id).
    pub added_raw: Vec<(String, u32)>,
    /// Added tokens matched on the normalized text: (content, id).
    pub added_normalized: Vec<(String, u32)>,
    /// The model's vocabulary.
    pub vocab: AHashMap<Text<'a>, u32>,
    /// Whether the post-processor may add special tokens (then only the tokenizers crate
    /// knows which).
    pub adds_special_tokens: bool,
    /// Merges in rank order, as vocabulary strings.
    pub merges: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    /// Whether a piece found whole in the vocabulary skips the merges.
    pub ignore_merges: bool,
}

impl<'a> HfTokenizerFile<'a> {
    /// The plan when every stage is one the fast path reproduces; `None` otherwise.
    pub(super) fn into_plan(self) -> Option<Plan<'a>> {
        if self.truncation.is_some() || self.padding.is_some() {
            return None;
        }
        let nfc = match self.normalizer.as_ref().map(kind) {
            None => false,
            Some(Some("NFC")) => true,
            Some(_) => return None,
        };
        let pattern = split_pattern(self.pre_tokenizer.as_ref()?)?;
        if !self.post_processor.as_ref().is_none_or(keeps_offsets) {
            return None;
        }
        let m = self.model;
        let plain = |s: &Option<String>| s.as_deref().is_none_or(str::is_empty);
        if m.kind.as_deref().is_some_and(|k| k != "BPE")
            || m.dropout.is_some_and(|d| d != 0.0)
            || !plain(&m.continuing_subword_prefix)
            || !plain(&m.end_of_word_suffix)
            || m.byte_fallback
        {
            return None;
        }
        let (mut added_raw, mut added_normalized) = (Vec::new(), Vec::new());
        let mut seen = std::collections::HashSet::new();
        for t in self.added_tokens {
            if t.single_word || t.lstrip || t.rstrip || t.content.is_empty() || !seen.insert(t.content.clone()) {
                return None;
            }
            match t.normalized {
                // Matched against the normalized text, so the normalized content must be itself.
                true if nfc && !unicode_normalization_alignments::is_nfc(&t.content) => return None,
                true => added_normalized.push((t.content, t.id)),
                false => added_raw.push((t.content, t.id)),
            }
        }
        let mut merges = Vec::with_capacity(m.merges.len());
        for merge in m.merges {
            merges.push(match merge {
                HfMerge::Pair(a, b) => (a, b),
                HfMerge::Joined(Cow::Borrowed(s)) => {
                    let (a, b) = split_merge(s)?;
                    (Cow::Borrowed(a), Cow::Borrowed(b))
                }
                HfMerge::Joined(Cow::Owned(s)) => {
                    let (a, b) = split_merge(&s)?;
                    (Cow::Owned(a.to_string()), Cow::Owned(b.to_string()))
                }
            });
        }
        let adds_special_tokens = self.post_processor.as_ref().is_some_and(adds_special_tokens);
        Some(Plan {
            nfc,
            pattern,
            added_raw,
            added_normalized,
            vocab: m.vocab,
            adds_special_tokens,
            merges,
            ignore_merges: m.ignore_merges,
        })
    }
}

/// `"a b"` → `("a", "b")`; `None` unless there is exactly one space.
fn split_merge(s: &str) -> Option<(&str, &str)> {
    let (a, b) = s.split_once(' ')?;
    (!b.contains(' ')).then_some((a, b))
}

fn kind(v: &Value) -> Option<&str> {
    v.get("type").and_then(Value::as_str)
}

/// The split regex of `Sequence[Split(Regex, Isolated), ByteLevel(no regex)]` or of a lone
/// `ByteLevel` with its GPT-2 regex, neither adding a prefix space.
fn split_pattern(pre: &Value) -> Option<String> {
    let no_prefix_space = |v: &Value| v.get("add_prefix_space").and_then(Value::as_bool) == Some(false);
    match kind(pre)? {
        "ByteLevel" if no_prefix_space(pre) && pre.get("use_regex").and_then(Value::as_bool).unwrap_or(true) => {
            Some(GPT2_PATTERN.to_string())
        }
        "Sequence" => {
            let [split, byte_level] = pre.get("pretokenizers")?.as_array()?.as_slice() else { return None };
            let isolated = kind(split) == Some("Split")
                && split.get("behavior").and_then(Value::as_str) == Some("Isolated")
                && split.get("invert").and_then(Value::as_bool) == Some(false);
            let plain_bytes = kind(byte_level) == Some("ByteLevel")
                && no_prefix_space(byte_level)
                && byte_level.get("use_regex").and_then(Value::as_bool) == Some(false);
            if !(isolated && plain_bytes) {
                return None;
            }
            split.get("pattern")?.get("Regex")?.as_str().map(str::to_string)
        }
        _ => None,
    }
}

/// Whether a post-processor leaves ids and offsets alone when no special tokens are added.
fn keeps_offsets(post: &Value) -> bool {
    match kind(post) {
        Some("ByteLevel") => post.get("trim_offsets").and_then(Value::as_bool) == Some(false),
        Some("TemplateProcessing") => true,
        Some("Sequence") => post.get("processors").and_then(Value::as_array).is_some_and(|ps| ps.iter().all(keeps_offsets)),
        _ => false,
    }
}

/// Whether a post-processor that [`keeps_offsets`] adds special tokens when asked to.
fn adds_special_tokens(post: &Value) -> bool {
    match kind(post) {
        Some("TemplateProcessing") => true,
        Some("Sequence") => post.get("processors").and_then(Value::as_array).is_some_and(|ps| ps.iter().any(adds_special_tokens)),
        _ => false,
    }
}

/// GPT-2's map from bytes to the printable characters byte-level vocabularies are written in.
pub(super) fn byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut extra = 0u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let printable = matches!(b, 33..=126 | 161..=172 | 174..=255);
        let code = if printable {
            b as u32
        } else {
            extra += 1;
            255 + extra
        };
        *slot = char::from_u32(code).unwrap_or('\0');
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_chars_follow_gpt2() {
        let t = byte_chars();
        assert_eq!(t[b'a' as usize], 'a');
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[0], 'Ā');
        assert_eq!(t[173], '\u{143}');
    }

    #[test]
    fn only_supported_shapes_make_a_plan() {
        let file = |pre: Value, post: Value| -> Option<(String, Vec<(String, String)>)> {
            let json = serde_json::json!({
                "normalizer": null, "pre_tokenizer": pre, "post_processor": post,
                "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]}
            })
            .to_string();
            let plan = serde_json::from_str::<HfTokenizerFile>(&json).ok()?.into_plan()?;
            Some((plan.pattern, plan.merges.into_iter().map(|(a, b)| (a.into_owned(), b.into_owned())).collect()))
        };
        let seq = serde_json::json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "\\p{L}+"}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}]});
        let (pattern, merges) = file(seq.clone(), Value::Null).unwrap();
        assert_eq!(pattern, "\\p{L}+");
        assert_eq!(merges, vec![("a".to_string(), "b".to_string())]);
        let gpt2 = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "use_regex": true});
        assert_eq!(file(gpt2, Value::Null).unwrap().0, GPT2_PATTERN);
        let trims = serde_json::json!({"type": "ByteLevel", "trim_offsets": true});
        assert!(file(seq.clone(), trims).is_none());
        let prefix = serde_json::json!({"type": "ByteLevel", "add_prefix_space": true, "use_regex": true});
        assert!(file(prefix, Value::Null).is_none());
        let metaspace = serde_json::json!({"type": "Metaspace", "replacement": "▁"});
        assert!(file(metaspace, Value::Null).is_none());
    }
}
