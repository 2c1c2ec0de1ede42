//! Alpaca rows (`instruction`, `input`, `output`, optional `system` and `history`), as in
//! Stanford Alpaca and LLaMA-Factory's `AlpacaDatasetConverter`.
//!
//! - `history` is `[[user, assistant], ...]`; those turns come before the final one.
//! - The final user turn is `instruction` and `input` joined with `"\n"`, leaving out whichever
//!   is an empty string (LLaMA-Factory's join: `"\n".join([instruction, input])` over the
//!   non-empty ones). So `{"instruction": "Sum", "input": "1 2"}` becomes `"Sum\n1 2"`.
//! - The final assistant turn is `output`.
//! - A non-empty `system` becomes a leading system message; an empty one is ignored.
//!
//! `instruction` and `output` are required strings; `input` and `system` are optional strings.

use serde_json::{Map, Value};

use super::error::{kind, RowError};
use crate::conversation::{Conversation, Message, RowRef, Shape};

const HINT: &str = "alpaca rows need \"instruction\" and \"output\" strings";

/// Converts one Alpaca row (nulls already dropped) to a conversation.
pub fn convert(row: &Map<String, Value>, at: &RowRef) -> Result<Conversation, RowError> {
    let instruction = required_str(row, "instruction")?;
    let output = required_str(row, "output")?;
    let input = optional_str(row, "input")?.unwrap_or("");
    let system = optional_str(row, "system")?.unwrap_or("");

    let mut messages = Vec::new();
    if !system.is_empty() {
        messages.push(Message::text("system", system));
    }
    if let Some(history) = row.get("history") {
        let Value::Array(turns) = history else {
            return Err(wrong("\"history\"".into(), "a list of [user, assistant] pairs", history));
        };
        for (i, turn) in turns.iter().enumerate() {
            let (user, assistant) = pair(turn).ok_or_else(|| wrong(format!("\"history\" entry {}", i + 1), PAIR, turn))?;
            messages.push(Message::text("user", user));
            messages.push(Message::text("assistant", assistant));
        }
    }
    let prompt: Vec<&str> = [instruction, input].into_iter().filter(|s| !s.is_empty()).collect();
    messages.push(Message::text("user", &prompt.join("\n")));
    messages.push(Message::text("assistant", output));
    Ok(Conversation { source: at.clone(), messages, tools: None, documents: None, shape: Shape::Chat })
}

const PAIR: &str = "a [user, assistant] pair of strings";

fn pair(turn: &Value) -> Option<(&str, &str)> {
    match turn.as_array()?.as_slice() {
        [Value::String(user), Value::String(assistant)] => Some((user, assistant)),
        _ => None,
    }
}

fn wrong(what: String, expected: &'static str, found: &Value) -> RowError {
    RowError::WrongType { what, expected, found: kind(found) }
}

fn required_str<'a>(row: &'a Map<String, Value>, key: &str) -> Result<&'a str, RowError> {
    optional_str(row, key)?.ok_or_else(|| RowError::MissingKey { key: key.into(), hint: HINT })
}

fn optional_str<'a>(row: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, RowError> {
    match row.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(wrong(format!("\"{key}\""), "a string", other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(row: Value) -> Result<Conversation, RowError> {
        let at = RowRef { file: "a.jsonl".into(), row: 1 };
        convert(row.as_object().unwrap(), &at)
    }

    fn texts(c: &Conversation) -> Vec<(String, String)> {
        c.messages.iter().map(|m| (m.role.clone(), m.content_str().unwrap().to_string())).collect()
    }

    #[test]
    fn joins_instruction_and_input_with_newline() {
        let c = run(json!({"instruction": "Sum", "input": "1 2", "output": "3"})).unwrap();
        assert_eq!(texts(&c), [("user".into(), "Sum\n1 2".into()), ("assistant".into(), "3".into())]);
        let c = run(json!({"instruction": "Hi", "input": "", "output": "Yo"})).unwrap();
        assert_eq!(c.messages[0].content_str(), Some("Hi"));
        let c = run(json!({"instruction": "", "input": "only input", "output": "ok"})).unwrap();
        assert_eq!(c.messages[0].content_str(), Some("only input"));
    }

    #[test]
    fn system_and_history_come_first() {
        let c = run(json!({
            "instruction": "q2", "output": "a2", "system": "be brief",
            "history": [["q1", "a1"]]
        }))
        .unwrap();
        let roles: Vec<_> = c.messages.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "user", "assistant"]);
        assert_eq!(c.messages[1].content_str(), Some("q1"));
        assert_eq!(c.messages[4].content_str(), Some("a2"));
        assert!(run(json!({"instruction": "q", "output": "a", "system": ""})).unwrap().messages.len() == 2);
    }

    #[test]
    fn errors_name_the_key() {
        let e = run(json!({"instruction": "q"})).unwrap_err();
        assert_eq!(e, RowError::MissingKey { key: "output".into(), hint: HINT });
        let e = run(json!({"instruction": 5, "output": "a"})).unwrap_err().to_string();
        assert_eq!(e, "\"instruction\" is a number; expected a string");
        let e = run(json!({"instruction": "q", "output": "a", "history": [["x", "y"], ["z"]]}));
        assert_eq!(e.unwrap_err().to_string(), "\"history\" entry 2 is an array; expected a [user, assistant] pair of strings");
        let e = run(json!({"instruction": "q", "output": "a", "history": "x"})).unwrap_err();
        assert!(e.to_string().starts_with("\"history\" is a string"));
    }
}
