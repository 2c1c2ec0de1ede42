//! Tokenizing rendered text like transformers (`add_special_tokens=False` after templating),
//! and the assistant-token mask from character spans (`return_assistant_tokens_mask`).

use std::path::Path;

use tokenizers::Tokenizer;

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

/// A Hugging Face fast tokenizer read from `tokenizer.json`.
pub struct TextTokenizer {
    inner: Tokenizer,
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
        let inner = Tokenizer::from_file(&path)
            .map_err(|e| TokenError::Load { path: path.display().to_string(), message: e.to_string() })?;
        Ok(TextTokenizer { inner })
    }

    /// Encodes `text` without adding special tokens, and marks every token that overlaps one
    /// of `spans` (character offsets, in order), as transformers 5 builds
    /// `assistant_masks`: a token straddling a span edge counts; an empty span marks nothing.
    pub fn encode(&self, text: &str, spans: &[(usize, usize)]) -> Result<TokenizedText, TokenError> {
        let enc = self.inner.encode_char_offsets(text, false).map_err(|e| TokenError::Encode(e.to_string()))?;
        let input_ids = enc.get_ids().to_vec();
        let mut assistant_mask = vec![0u8; input_ids.len()];
        let mut span = 0;
        for (mask, &(start, end)) in assistant_mask.iter_mut().zip(enc.get_offsets()) {
            while span < spans.len() && start >= spans[span].1 {
                span += 1;
            }
            if span == spans.len() {
                break;
            }
            if end > spans[span].0 {
                *mask = 1;
            }
        }
        Ok(TokenizedText { input_ids, assistant_mask })
    }

    /// The ids the tokenizer's post-processor puts before a text when special tokens are added
    /// (`<|begin_of_text|>` for Llama 3.1, `<bos>` for Gemma), found by encoding `"a"` with and
    /// without special tokens; empty when it adds none in front (Llama 3, Qwen).
    pub fn leading_special_ids(&self) -> Result<Vec<u32>, TokenError> {
        let ids = |special: bool| -> Result<Vec<u32>, TokenError> {
            Ok(self.inner.encode("a", special).map_err(|e| TokenError::Encode(e.to_string()))?.get_ids().to_vec())
        };
        let (plain, with) = (ids(false)?, ids(true)?);
        if plain.is_empty() {
            return Ok(Vec::new());
        }
        Ok(with.windows(plain.len()).position(|w| w == plain.as_slice()).map(|p| with[..p].to_vec()).unwrap_or_default())
    }

    /// The id of a token string, if the vocabulary has it.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Text of `ids` (special tokens left out when `skip_special`), as transformers' `decode`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenError> {
        self.inner.decode(ids, skip_special).map_err(|e| TokenError::Encode(e.to_string()))
    }
}
