//! A fast path for byte-level BPE tokenizers (Qwen 2/2.5/3, Llama 3, Mistral Nemo, …) that gives
//! the same ids and offsets as the tokenizers crate's pipeline, several times faster: the
//! crate tracks alignments through every stage of a `NormalizedString`, which costs more than
//! the merges themselves.
//!
//! Only `tokenizer.json` files of the shape below take it; anything else, and any text that NFC
//! would change, goes through the tokenizers crate:
//! - normalizer: none or NFC;
//! - pre-tokenizer: `Split` by a regex ending in `\s+(?!\S)|\s+` (`Isolated`) then `ByteLevel`
//!   without a prefix space, or a lone `ByteLevel` with its GPT-2 regex;
//! - model: BPE without dropout, subword prefix/suffix or byte fallback;
//! - post-processor: none, `ByteLevel` without offset trimming, `TemplateProcessing`;
//! - added tokens without `lstrip`, `rstrip` or `single_word`; no truncation or padding.

mod bpe;
mod config;
mod split;

use ahash::AHashMap;

use bpe::BytePairs;
use config::HfTokenizerFile;
use split::{AddedTokens, Part, PieceSplitter};

/// Token ids with `[start, end)` character offsets, as `encode_char_offsets` gives them.
pub(super) struct Tokens {
    pub ids: Vec<u32>,
    pub offsets: Vec<(usize, usize)>,
}

/// The fast byte-level BPE pipeline of one tokenizer.
pub(super) struct ByteLevelBpe {
    nfc: bool,
    added: AddedTokens,
    splitter: PieceSplitter,
    model: BytePairs,
    /// Added tokens by string (the vocabulary's are looked up through the tokenizers crate:
    /// a map of 150k owned strings costs more to build than the rest of loading).
    added_ids: AHashMap<String, u32>,
    adds_special_tokens: bool,
}

impl ByteLevelBpe {
    /// `None` when `json` (a `tokenizer.json`) is not of the supported shape.
    pub(super) fn from_json(json: &str) -> Option<Self> {
        let plan = serde_json::from_str::<HfTokenizerFile>(json).ok()?.into_plan()?;
        let model = BytePairs::new(&plan.vocab, &plan.merges, plan.ignore_merges)?;
        let added_ids = plan.added_raw.iter().chain(&plan.added_normalized).cloned().collect();
        Some(ByteLevelBpe {
            nfc: plan.nfc,
            added: AddedTokens::new(plan.added_raw, plan.added_normalized)?,
            splitter: PieceSplitter::new(&plan.pattern)?,
            model,
            added_ids,
            adds_special_tokens: plan.adds_special_tokens,
        })
    }

    /// The id of an added token (they win over the vocabulary, as in the tokenizers crate).
    pub(super) fn added_token_id(&self, token: &str) -> Option<u32> {
        self.added_ids.get(token).copied()
    }

    /// Whether the post-processor may add special tokens around a text.
    pub(super) fn adds_special_tokens(&self) -> bool {
        self.adds_special_tokens
    }

    /// Encodes `text` without special tokens; `None` when it needs the full pipeline.
    pub(super) fn encode(&self, text: &str) -> Option<Tokens> {
        let mut ids = Vec::with_capacity(text.len() / 3);
        let mut offsets = Vec::with_capacity(text.len() / 3);
        for part in self.added.split(text) {
            match part {
                Part::Added(id, start, end) => {
                    ids.push(id);
                    offsets.push((start, end));
                }
                Part::Text(start, end) => {
                    let segment = &text[start..end];
                    if self.nfc && !segment.is_ascii() && !unicode_normalization_alignments::is_nfc(segment) {
                        return None;
                    }
                    let complete = self.splitter.split(segment, |a, b| {
                        let from = ids.len();
                        self.model.encode(&segment.as_bytes()[a..b], &mut ids);
                        let mut at = start + a;
                        for &id in &ids[from..] {
                            let len = self.model.token_len(id);
                            offsets.push((at, at + len));
                            at += len;
                        }
                    });
                    if !complete {
                        return None;
                    }
                }
            }
        }
        if !text.is_ascii() {
            chars_from_bytes(text, &mut offsets);
        }
        Some(Tokens { ids, offsets })
    }
}

/// Turns byte offsets (in order, non-empty, not overlapping) into character offsets; a range
/// that starts or ends inside a character covers all of it, as tokens that split a character
/// into its bytes do in the tokenizers crate.
fn chars_from_bytes(text: &str, offsets: &mut [(usize, usize)]) {
    let bytes = text.as_bytes();
    // `starts` = how many characters start in bytes[..at].
    let (mut at, mut starts) = (0usize, 0usize);
    let mut count_to = |to: usize| {
        let to = to.min(bytes.len());
        if to > at {
            starts += bytes[at..to].iter().filter(|&&b| (b as i8) >= -0x40).count();
            at = to;
        }
        starts
    };
    for (start, end) in offsets.iter_mut() {
        let s = count_to(*start + 1) - 1;
        let e = count_to(*end);
        *start = s;
        *end = e;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_characters_count_whole() {
        // "é" is 2 bytes, "中" 3: tokens [a][é first byte][é second byte + 中][b]
        let text = "aé中b";
        let mut offsets = vec![(0, 1), (1, 2), (2, 6), (6, 7)];
        chars_from_bytes(text, &mut offsets);
        assert_eq!(offsets, vec![(0, 1), (1, 2), (1, 3), (3, 4)]);
    }
}
