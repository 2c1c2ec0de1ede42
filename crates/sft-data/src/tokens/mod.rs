//! Tokenizing rendered text like transformers (`add_special_tokens=False` after templating),
//! and the assistant-token mask from character spans (`return_assistant_tokens_mask`).
//!
//! Byte-level BPE tokenizers (Qwen, Llama 3, …) encode through [`bytelevel`](mod@bytelevel), a
//! fast path with the tokenizers crate's exact results; the others, and texts the fast path
//! leaves out, through the tokenizers crate.

pub mod added;
mod bytelevel;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::OnceLock;

use tokenizers::Tokenizer;

use bytelevel::ByteLevelBpe;

/// Why a tokenizer could not be loaded or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// tokenizer.json is missing or invalid.
    #[error("{path}: cannot load tokenizer: {message}")]
    Load {
        /// The file.
        path: String,
        /// What the tokenizers library said.
        message: String,
    },
    /// Encoding failed.
    #[error("tokenizing failed: {0}")]
    Encode(String),
}

/// A Hugging Face fast tokenizer read from `tokenizer.json`. With the fast path, the
/// tokenizers crate's own copy is loaded only when something needs it (a text NFC changes,
/// decoding, a post-processor's special tokens): loading it takes longer than encoding
/// thousands of conversations.
pub struct TextTokenizer {
    path: PathBuf,
    inner: OnceLock<Result<Tokenizer, String>>,
    fast: Option<ByteLevelBpe>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer").finish_non_exhaustive()
    }
}

/// Token ids of a rendered text and, per token, whether it lies in an assistant span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedText {
    /// The ids, no special tokens added.
    pub input_ids: Vec<u32>,
    /// 1 where the token is inside an assistant span, else 0.
    pub assistant_mask: Vec<u8>,
}

impl TextTokenizer {
    /// Loads `dir/tokenizer.json`.
    pub fn from_dir(dir: &Path) -> Result<Self, TokenError> {
        let path = dir.join("tokenizer.json");
        let json =
            std::fs::read_to_string(&path).map_err(|e| TokenError::Load { path: path.display().to_string(), message: e.to_string() })?;
        let tokenizer = TextTokenizer { path, inner: OnceLock::new(), fast: ByteLevelBpe::from_json(&json) };
        if tokenizer.fast.is_none() {
            tokenizer.inner.get_or_init(|| Tokenizer::from_str(&json).map_err(|e| e.to_string()));
            tokenizer.hf()?;
        }
        Ok(tokenizer)
    }

    /// The tokenizers crate's tokenizer, loaded on first use.
    fn hf(&self) -> Result<&Tokenizer, TokenError> {
        let loaded = self.inner.get_or_init(|| {
            let json = std::fs::read_to_string(&self.path).map_err(|e| e.to_string())?;
            Tokenizer::from_str(&json).map_err(|e| e.to_string())
        });
        loaded.as_ref().map_err(|message| TokenError::Load { path: self.path.display().to_string(), message: message.clone() })
    }

    /// Whether encoding takes the byte-level fast path (texts NFC would change excepted).
    pub fn has_fast_path(&self) -> bool {
        self.fast.is_some()
    }

    /// Encodes `text` without adding special tokens, and marks every token that overlaps one
    /// of `spans` (character offsets, in order), as transformers 5 builds
    /// `assistant_masks`: a token straddling a span edge counts; an empty span marks nothing.
    pub fn encode(&self, text: &str, spans: &[(usize, usize)]) -> Result<TokenizedText, TokenError> {
        match self.fast.as_ref().and_then(|f| f.encode(text)) {
            Some(t) => Ok(TokenizedText { assistant_mask: span_mask(&t.offsets, spans), input_ids: t.ids }),
            None => self.encode_reference(text, spans),
        }
    }

    /// [`encode`](Self::encode) through the tokenizers crate alone, never the fast path: what
    /// the fast path is checked against.
    pub fn encode_reference(&self, text: &str, spans: &[(usize, usize)]) -> Result<TokenizedText, TokenError> {
        let enc = self.hf()?.encode_char_offsets(text, false).map_err(|e| TokenError::Encode(e.to_string()))?;
        Ok(TokenizedText { assistant_mask: span_mask(enc.get_offsets(), spans), input_ids: enc.get_ids().to_vec() })
    }

    /// The ids the tokenizer's post-processor puts before a text when special tokens are added
    /// (`<|begin_of_text|>` for Llama 3.1, `<bos>` for Gemma), found by encoding `"a"` with and
    /// without special tokens; empty when it adds none in front (Llama 3, Qwen).
    pub fn leading_special_ids(&self) -> Result<Vec<u32>, TokenError> {
        if self.fast.as_ref().is_some_and(|f| !f.adds_special_tokens()) {
            return Ok(Vec::new());
        }
        let hf = self.hf()?;
        let ids = |special: bool| -> Result<Vec<u32>, TokenError> {
            Ok(hf.encode("a", special).map_err(|e| TokenError::Encode(e.to_string()))?.get_ids().to_vec())
        };
        let (plain, with) = (ids(false)?, ids(true)?);
        if plain.is_empty() {
            return Ok(Vec::new());
        }
        Ok(with.windows(plain.len()).position(|w| w == plain.as_slice()).map(|p| with[..p].to_vec()).unwrap_or_default())
    }

    /// The id of a token string, if the vocabulary has it.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.fast.as_ref().and_then(|f| f.added_token_id(token)).or_else(|| self.hf().ok()?.token_to_id(token))
    }

    /// Text of `ids` (special tokens left out when `skip_special`), as transformers' `decode`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenError> {
        self.hf()?.decode(ids, skip_special).map_err(|e| TokenError::Encode(e.to_string()))
    }
}

/// 1 for each token (by character offsets) that overlaps one of `spans` (in order), else 0.
fn span_mask(offsets: &[(usize, usize)], spans: &[(usize, usize)]) -> Vec<u8> {
    let mut mask = vec![0u8; offsets.len()];
    let mut span = 0;
    for (m, &(start, end)) in mask.iter_mut().zip(offsets) {
        while span < spans.len() && start >= spans[span].1 {
            span += 1;
        }
        if span == spans.len() {
            break;
        }
        if end > spans[span].0 {
            *m = 1;
        }
    }
    mask
}
