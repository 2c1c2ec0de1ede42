//! Prompts from where users write them: one user message (with an optional system message), a
//! JSON file holding one conversation to continue, or a JSONL file of conversations, each
//! optionally with the answer `"expected"` (for scoring).

use std::path::Path;

use serde_json::{Map, Value};
use sft_data::conversation::{Conversation, Message, RowRef};
use sft_data::data::reader::read_rows;
use sft_data::data::{openai, DataError};

use crate::InferError;

/// One prompt and, when scoring, the answer expected.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    /// The conversation to answer.
    pub conversation: Conversation,
    /// The expected answer.
    pub expected: Option<String>,
}

/// A conversation of one user message, after a system message when given; `source` names it.
pub fn single(source: &str, system: Option<&str>, user: &str) -> Conversation {
    let mut messages: Vec<Message> = system.iter().map(|s| Message::text("system", s)).collect();
    messages.push(Message::text("user", user));
    Conversation {
        source: RowRef { file: source.into(), row: 1 },
        messages,
        tools: None,
        documents: None,
        shape: sft_data::conversation::Shape::Chat,
    }
}

/// The conversation of a JSON file: a list of `{"role", "content"}` messages, or an object with
/// `"messages"` (and `"tools"`).
pub fn read_messages(path: &Path) -> Result<Conversation, InferError> {
    let file = path.display().to_string();
    let bad = |message: String| InferError::File { path: file.clone(), message };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let value: Value = serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let row = match value {
        Value::Array(list) => Map::from_iter([("messages".to_string(), Value::Array(list))]),
        Value::Object(row) => row,
        _ => return Err(bad("expected a list of messages or an object with \"messages\"".into())),
    };
    let source = RowRef { file, row: 1 };
    openai::convert(&row, &source, "messages").map_err(|error| DataError::Row { at: source, error }.into())
}

/// Every row of a JSONL (or JSON, Parquet) file: `{"messages": [...]}`, optionally with
/// `"expected"`.
pub fn read_prompts(path: &Path) -> Result<Vec<Prompt>, InferError> {
    let name = path.to_string_lossy();
    let mut out = vec![];
    for row in read_rows(&name)?.rows {
        let row = row?;
        let conversation =
            openai::convert(&row.value, &row.source, "messages").map_err(|error| DataError::Row { at: row.source.clone(), error })?;
        let expected = match row.value.get("expected") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(InferError::File { path: row.source.to_string(), message: "\"expected\" must be a string".into() }),
        };
        out.push(Prompt { conversation, expected });
    }
    Ok(out)
}
