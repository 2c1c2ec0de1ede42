//! TRL's prompt/completion rows: `{"prompt": ..., "completion": ...}`, in TRL's two kinds.
//!
//! - Standard: both strings. The row is [`Shape::Plain`]: the prompt then the completion as
//!   they are, no chat template; the completion trains (TRL's `completion_only_loss`), with the
//!   EOS appended unless the completion ends with it.
//! - Conversational: both lists of `{"role", "content", ...}` messages (each checked as an
//!   OpenAI message, numbered from 1 across prompt then completion). The row is
//!   [`Shape::Completion`]: the template renders prompt + completion, and what it writes after
//!   the prompt rendered with a generation prompt trains. Row-level `tools` is read as in
//!   OpenAI rows.
//!
//! Mixing a string with a list is an error saying so.

use serde_json::{Map, Value};

use super::error::{kind, RowError};
use super::openai;
use crate::conversation::{Conversation, RowRef, Shape};

const HINT: &str =
    "prompt/completion rows need \"prompt\" and \"completion\", both strings or both lists of {\"role\", \"content\"} messages";

/// Converts one row (nulls already dropped).
pub fn convert(row: &Map<String, Value>, at: &RowRef) -> Result<Conversation, RowError> {
    let get = |key: &str| row.get(key).ok_or_else(|| RowError::MissingKey { key: key.into(), hint: HINT });
    let (prompt, completion) = (get("prompt")?, get("completion")?);
    let shape_error = |what: &str, found: &Value| RowError::WrongType {
        what: format!("\"{what}\""),
        expected: "a string or a list of messages, the same kind as the other of prompt and completion",
        found: kind(found),
    };
    match (prompt, completion) {
        (Value::String(p), Value::String(c)) => Ok(Conversation {
            source: at.clone(),
            messages: vec![],
            tools: None,
            documents: None,
            shape: Shape::Plain { prompt: p.clone(), completion: c.clone() },
        }),
        (Value::Array(p), Value::Array(c)) => {
            if c.is_empty() {
                return Err(RowError::WrongType {
                    what: "\"completion\"".into(),
                    expected: "at least one message",
                    found: "an empty list",
                });
            }
            let messages = p.iter().chain(c).enumerate().map(|(i, m)| openai::message(i + 1, m)).collect::<Result<Vec<_>, _>>()?;
            Ok(Conversation {
                source: at.clone(),
                messages,
                tools: openai::tools(row.get("tools"))?,
                documents: row.get("documents").cloned(),
                shape: Shape::Completion { from: p.len() },
            })
        }
        (Value::String(_) | Value::Array(_), other) => Err(shape_error("completion", other)),
        (other, _) => Err(shape_error("prompt", other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(row: Value) -> Result<Conversation, RowError> {
        convert(row.as_object().unwrap(), &RowRef { file: "p.jsonl".into(), row: 2 })
    }

    #[test]
    fn strings_are_plain_and_lists_are_a_completion_after_the_prompt() {
        let c = run(json!({"prompt": "2+2=", "completion": "4"})).unwrap();
        assert_eq!(c.shape, Shape::Plain { prompt: "2+2=".into(), completion: "4".into() });
        assert!(c.messages.is_empty());
        let c = run(json!({
            "prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
            "completion": [{"role": "assistant", "content": "a"}],
        }))
        .unwrap();
        assert_eq!(c.shape, Shape::Completion { from: 2 });
        assert_eq!(c.messages.iter().map(|m| m.role.as_str()).collect::<Vec<_>>(), ["system", "user", "assistant"]);
    }

    #[test]
    fn mixed_or_missing_parts_are_named() {
        let e = run(json!({"prompt": "q", "completion": [{"role": "assistant", "content": "a"}]})).unwrap_err().to_string();
        assert!(e.starts_with("\"completion\" is an array; expected a string or a list of messages"), "{e}");
        let e = run(json!({"prompt": 3, "completion": "a"})).unwrap_err().to_string();
        assert!(e.starts_with("\"prompt\" is a number"), "{e}");
        let e = run(json!({"prompt": "q"})).unwrap_err().to_string();
        assert!(e.starts_with("missing key \"completion\""), "{e}");
        let e = run(json!({"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "bot", "content": "a"}]}));
        assert!(e.unwrap_err().to_string().starts_with("message 2 has role \"bot\""));
    }
}
