//! Plain-text rows for continued pre-training: `{"text": "..."}` (TRL's language-modeling rows,
//! Axolotl's `completion` type). The row is [`Shape::Plain`] with an empty prompt: no chat
//! template, every token trains, and the EOS is appended unless the text ends with it (TRL's
//! `add_eos`).

use serde_json::{Map, Value};

use super::error::{kind, RowError};
use crate::conversation::{Conversation, RowRef, Shape};

/// Converts one row (nulls already dropped).
pub fn convert(row: &Map<String, Value>, at: &RowRef) -> Result<Conversation, RowError> {
    match row.get("text") {
        Some(Value::String(text)) => Ok(Conversation {
            source: at.clone(),
            messages: vec![],
            tools: None,
            documents: None,
            shape: Shape::Plain { prompt: String::new(), completion: text.clone() },
        }),
        Some(other) => Err(RowError::WrongType { what: "\"text\"".into(), expected: "a string", found: kind(other) }),
        None => Err(RowError::MissingKey { key: "text".into(), hint: "text rows need a \"text\" string" }),
    }
}
