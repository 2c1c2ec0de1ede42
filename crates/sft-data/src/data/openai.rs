//! OpenAI / TRL "messages" rows: `{"messages": [{"role", "content", ...}], "tools"?, "documents"?}`.
//!
//! Each message keeps every key verbatim in [`Message::fields`], in source order (`tool_calls`,
//! `tool_call_id`, `name`, `reasoning_content`, `weight`, `train`, …), so the chat template sees
//! exactly what the file had (minus `null`s). Rules:
//! - `role` is a string from [`ROLES`];
//! - `content` is a string or a list of part objects (`{"type": "text", "text": ...}`); it may be
//!   absent only on an assistant message that has `tool_calls` (a list);
//! - row-level `tools` is a list, or a string holding a JSON list (as in many Hub datasets); an
//!   empty string means no tools. `documents` is kept as is.
//!
//! Messages are numbered from 1 in errors.

use serde_json::{Map, Value};

use super::error::{kind, RowError};
use crate::conversation::{drop_null_keys, Conversation, Message, RowRef, Shape, ROLES};

/// Converts one row (nulls already dropped) whose message list is under `column` (normally
/// `messages`; auto-detection may pick a ShareGPT-named column holding role/content entries).
pub fn convert(row: &Map<String, Value>, at: &RowRef, column: &str) -> Result<Conversation, RowError> {
    let list = match row.get(column) {
        None => {
            return Err(RowError::MissingKey {
                key: column.into(),
                hint: "openai rows need a \"messages\" list of {\"role\", \"content\"} objects",
            })
        }
        Some(Value::Array(list)) => list,
        Some(other) => {
            return Err(RowError::WrongType {
                what: format!("\"{column}\""),
                expected: "a list of {\"role\", \"content\"} objects",
                found: kind(other),
            })
        }
    };
    let mut messages = Vec::with_capacity(list.len());
    for (i, entry) in list.iter().enumerate() {
        messages.push(message(i + 1, entry)?);
    }
    if messages.is_empty() {
        return Err(RowError::EmptyConversation);
    }
    Ok(Conversation {
        source: at.clone(),
        messages,
        tools: tools(row.get("tools"))?,
        documents: row.get("documents").cloned(),
        shape: Shape::Chat,
    })
}

pub(crate) fn message(number: usize, entry: &Value) -> Result<Message, RowError> {
    let bad = |problem: String| RowError::BadMessage { message: number, problem };
    let Value::Object(fields) = entry else {
        return Err(bad(format!("is {}; expected an object with \"role\" and \"content\"", kind(entry))));
    };
    let fields = &drop_null_keys(fields);
    let role = match fields.get("role") {
        Some(Value::String(role)) => role,
        Some(other) => return Err(bad(format!("\"role\" is {}; expected a string", kind(other)))),
        None => return Err(bad("has no \"role\" key; every message needs one".into())),
    };
    if !ROLES.contains(&role.as_str()) {
        return Err(RowError::UnknownRole {
            message: number,
            role: role.clone(),
            expected: ROLES.join(", "),
            hint: "roles are lowercase chat roles",
        });
    }
    match fields.get("tool_calls") {
        None | Some(Value::Array(_)) => {}
        Some(other) => return Err(bad(format!("\"tool_calls\" is {}; expected a list", kind(other)))),
    }
    match fields.get("content") {
        Some(Value::String(_)) => {}
        Some(Value::Array(parts)) => {
            if let Some((i, part)) = parts.iter().enumerate().find(|(_, p)| !p.is_object()) {
                return Err(bad(format!(
                    "content part {} is {}; expected an object such as {{\"type\": \"text\", \"text\": \"...\"}}",
                    i + 1,
                    kind(part)
                )));
            }
        }
        Some(other) => return Err(bad(format!("\"content\" is {}; expected a string or a list of parts", kind(other)))),
        None if role == "assistant" && fields.contains_key("tool_calls") => {}
        None => return Err(bad("has no \"content\"; only an assistant message with \"tool_calls\" may leave it out".into())),
    }
    Ok(Message { role: role.clone(), fields: fields.clone() })
}

/// Row-level `tools`: a list, or a string holding a JSON list; an empty string means none.
pub(crate) fn tools(value: Option<&Value>) -> Result<Option<Value>, RowError> {
    let wrong = |found| RowError::WrongType {
        what: "\"tools\"".into(),
        expected: "a list of tool schemas (or a string holding a JSON list)",
        found,
    };
    match value {
        None => Ok(None),
        Some(list @ Value::Array(_)) => Ok(Some(list.clone())),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(list @ Value::Array(_)) => Ok(Some(list)),
            Ok(other) => Err(wrong(match other {
                Value::Object(_) => "a string holding a JSON object",
                _ => "a string holding JSON that is not a list",
            })),
            Err(_) => Err(wrong("a string that is not valid JSON")),
        },
        Some(other) => Err(wrong(kind(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(row: Value) -> Result<Conversation, RowError> {
        let at = RowRef { file: "o.jsonl".into(), row: 4 };
        convert(row.as_object().unwrap(), &at, "messages")
    }

    #[test]
    fn keeps_every_key_in_order() {
        let c = run(json!({"messages": [
            {"role": "user", "content": "hi", "weight": 0},
            {"content": "", "role": "assistant", "reasoning_content": "hmm", "train": true},
        ]}))
        .unwrap();
        let keys: Vec<_> = c.messages[1].fields.keys().map(String::as_str).collect();
        assert_eq!(keys, ["content", "role", "reasoning_content", "train"]);
        assert_eq!(c.messages[0].fields["weight"], 0);
        assert_eq!(c.source.row, 4);
    }

    #[test]
    fn tool_calls_without_content_only_for_assistant() {
        let call = json!([{"type": "function", "function": {"name": "f", "arguments": {}}}]);
        let c = run(json!({"messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "tool_calls": call},
            {"role": "tool", "content": "1", "tool_call_id": "c1"},
        ]}))
        .unwrap();
        assert!(c.messages[1].fields.get("content").is_none());
        let e = run(json!({"messages": [{"role": "user"}]})).unwrap_err().to_string();
        assert!(e.starts_with("message 1: has no \"content\""), "{e}");
    }

    #[test]
    fn content_parts_must_be_objects() {
        let ok = run(json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]}]}));
        assert!(ok.is_ok());
        let e = run(json!({"messages": [{"role": "user", "content": ["a"]}]})).unwrap_err();
        assert!(e.to_string().starts_with("message 1: content part 1 is a string"), "{e}");
        let e = run(json!({"messages": [{"role": "user", "content": 3}]})).unwrap_err();
        assert!(e.to_string().contains("\"content\" is a number"), "{e}");
    }

    #[test]
    fn unknown_role_lists_roles() {
        let e = run(json!({"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]}));
        let e = e.unwrap_err().to_string();
        assert!(e.starts_with("message 2 has role \"bot\"; expected one of system, developer, user"), "{e}");
    }

    #[test]
    fn tools_and_documents() {
        let c = run(json!({
            "messages": [{"role": "user", "content": "a"}],
            "tools": "[{\"type\": \"function\", \"function\": {\"name\": \"f\"}}]",
            "documents": [{"title": "t", "text": "x"}]
        }))
        .unwrap();
        assert_eq!(c.tools.unwrap()[0]["function"]["name"], "f");
        assert_eq!(c.documents.unwrap()[0]["title"], "t");
        let e = run(json!({"messages": [{"role": "user", "content": "a"}], "tools": "{}"})).unwrap_err();
        assert!(e.to_string().starts_with("\"tools\" is a string holding a JSON object"), "{e}");
        let c = run(json!({"messages": [{"role": "user", "content": "a"}], "tools": ""})).unwrap();
        assert!(c.tools.is_none());
    }

    #[test]
    fn empty_and_missing() {
        assert_eq!(run(json!({"messages": []})).unwrap_err(), RowError::EmptyConversation);
        assert!(matches!(run(json!({"text": "x"})).unwrap_err(), RowError::MissingKey { .. }));
        assert!(run(json!({"messages": {}})).unwrap_err().to_string().starts_with("\"messages\" is an object"));
    }
}
