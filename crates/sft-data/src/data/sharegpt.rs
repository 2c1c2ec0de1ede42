//! ShareGPT rows: `{"conversations": [{"from", "value"}, ...], "system"?, "tools"?}`, with
//! LLaMA-Factory's role names.
//!
//! Default role map (`from` → role): `human`→user, `gpt`→assistant, `system`→system,
//! `tool`→tool, `observation`→tool, `function_call`→assistant with tool calls, and `user`,
//! `assistant` as themselves. A `function_call` value is JSON `{"name", "arguments"}` or a list
//! of them (a string holding JSON, or the JSON itself); it becomes OpenAI-style
//! `tool_calls: [{"type": "function", "function": {"name", "arguments"}}]` with content `""`.
//!
//! Row-level `system` (a non-empty string) becomes a leading system message; `tools` is a list
//! or a string holding a JSON list. Keys other than the role and content keys are kept on each
//! message. Column, role key, content key and extra role names are set in [`ShareGptOptions`].
//! Messages are numbered from 1 in errors.

use serde_json::{Map, Value};

use super::error::{kind, RowError};
use super::openai;
use crate::conversation::{drop_null_keys, Conversation, Message, RowRef, Shape, ROLES};

/// The role-map target meaning "an assistant message whose value holds tool calls".
pub const FUNCTION_CALL: &str = "function_call";

/// The built-in role map, checked after [`ShareGptOptions::roles`].
pub const DEFAULT_ROLE_MAP: &[(&str, &str)] = &[
    ("human", "user"),
    ("gpt", "assistant"),
    ("system", "system"),
    ("tool", "tool"),
    ("function_call", FUNCTION_CALL),
    ("observation", "tool"),
    ("user", "user"),
    ("assistant", "assistant"),
];

/// Where ShareGPT rows keep their parts, and extra role names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareGptOptions {
    /// The column holding the message list (default `conversations`).
    pub messages_key: String,
    /// The key naming a message's speaker (default `from`).
    pub role_key: String,
    /// The key holding a message's text (default `value`).
    pub content_key: String,
    /// Extra `(from-value, role)` entries, checked before [`DEFAULT_ROLE_MAP`]. A role is one of
    /// [`ROLES`] or [`FUNCTION_CALL`].
    pub roles: Vec<(String, String)>,
}

impl Default for ShareGptOptions {
    fn default() -> Self {
        ShareGptOptions { messages_key: "conversations".into(), role_key: "from".into(), content_key: "value".into(), roles: Vec::new() }
    }
}

impl ShareGptOptions {
    /// Checks that every extra role-map entry targets a known role; the error says which.
    pub fn validate(&self) -> Result<(), String> {
        for (from, to) in &self.roles {
            if to != FUNCTION_CALL && !ROLES.contains(&to.as_str()) {
                return Err(format!(
                    "ShareGPT role map sends \"{from}\" to \"{to}\"; the target must be one of {}, {FUNCTION_CALL}",
                    ROLES.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// The normalized role (or [`FUNCTION_CALL`]) for a `from` value.
    pub fn map_role(&self, from: &str) -> Option<&str> {
        let extra = self.roles.iter().find(|(f, _)| f == from).map(|(_, t)| t.as_str());
        extra.or_else(|| DEFAULT_ROLE_MAP.iter().find(|(f, _)| *f == from).map(|(_, t)| *t))
    }

    fn accepted(&self) -> String {
        let mut names: Vec<&str> = DEFAULT_ROLE_MAP.iter().map(|(f, _)| *f).collect();
        for (from, _) in &self.roles {
            if !names.contains(&from.as_str()) {
                names.push(from);
            }
        }
        names.join(", ")
    }
}

/// Converts one ShareGPT row (nulls already dropped) to a conversation.
pub fn convert(row: &Map<String, Value>, at: &RowRef, opts: &ShareGptOptions) -> Result<Conversation, RowError> {
    let key = &opts.messages_key;
    let list = match row.get(key) {
        Some(Value::Array(list)) => list,
        Some(other) => {
            return Err(RowError::WrongType {
                what: format!("\"{key}\""),
                expected: "a list of {\"from\", \"value\"} objects",
                found: kind(other),
            })
        }
        None => return Err(RowError::MissingKey { key: key.clone(), hint: "sharegpt rows need a list of {\"from\", \"value\"} messages" }),
    };
    let mut messages = Vec::with_capacity(list.len() + 1);
    for (i, entry) in list.iter().enumerate() {
        messages.push(message(i + 1, entry, opts)?);
    }
    if messages.is_empty() {
        return Err(RowError::EmptyConversation);
    }
    match row.get("system") {
        None => {}
        Some(Value::String(system)) if system.is_empty() => {}
        Some(Value::String(system)) => match messages.first() {
            Some(first) if first.role == "system" => {
                if first.content_str() != Some(system.as_str()) {
                    return Err(RowError::BadMessage {
                        message: 1,
                        problem: "is a system message and the row also has a different \"system\"; keep one".into(),
                    });
                }
            }
            _ => messages.insert(0, Message::text("system", system)),
        },
        Some(other) => return Err(RowError::WrongType { what: "\"system\"".into(), expected: "a string", found: kind(other) }),
    }
    Ok(Conversation {
        source: at.clone(),
        messages,
        tools: openai::tools(row.get("tools"))?,
        documents: row.get("documents").cloned(),
        shape: Shape::Chat,
    })
}

fn message(number: usize, entry: &Value, opts: &ShareGptOptions) -> Result<Message, RowError> {
    let bad = |problem: String| RowError::BadMessage { message: number, problem };
    let (role_key, content_key) = (&opts.role_key, &opts.content_key);
    let Value::Object(source) = entry else {
        return Err(bad(format!("is {}; expected an object with \"{role_key}\" and \"{content_key}\"", kind(entry))));
    };
    let source = &drop_null_keys(source);
    let from = match source.get(role_key) {
        Some(Value::String(from)) => from,
        Some(other) => return Err(bad(format!("\"{role_key}\" is {}; expected a string", kind(other)))),
        None if source.contains_key("role") => {
            return Err(bad(format!("has no \"{role_key}\" key but has \"role\"; these are openai-style messages, read them as openai")))
        }
        None => return Err(bad(format!("has no \"{role_key}\" key; every message needs one"))),
    };
    let Some(target) = opts.map_role(from) else {
        return Err(RowError::UnknownRole {
            message: number,
            role: from.clone(),
            expected: opts.accepted(),
            hint: "add it to the ShareGPT role map",
        });
    };
    let Some(value) = source.get(content_key) else {
        return Err(bad(format!("has no \"{content_key}\" key; every message needs one")));
    };
    let mut fields = Map::new();
    if target == FUNCTION_CALL {
        fields.insert("role".into(), "assistant".into());
        fields.insert("content".into(), "".into());
        fields.insert("tool_calls".into(), tool_calls(value).map_err(bad)?);
    } else {
        let Value::String(text) = value else {
            return Err(bad(format!("\"{content_key}\" is {}; expected a string", kind(value))));
        };
        fields.insert("role".into(), target.into());
        fields.insert("content".into(), text.clone().into());
    }
    for (k, v) in source {
        if k != role_key && k != content_key && !fields.contains_key(k) {
            fields.insert(k.clone(), v.clone());
        }
    }
    let role = if target == FUNCTION_CALL { "assistant" } else { target };
    Ok(Message { role: role.into(), fields })
}

/// Parses a `function_call` value into OpenAI-style `tool_calls`.
fn tool_calls(value: &Value) -> Result<Value, String> {
    const WANT: &str = "expected JSON {\"name\": ..., \"arguments\": ...} or a list of them";
    let parsed;
    let value = match value {
        Value::String(text) => {
            parsed = serde_json::from_str::<Value>(text).map_err(|e| format!("function_call value is not valid JSON ({e}); {WANT}"))?;
            &parsed
        }
        other => other,
    };
    let calls: Vec<&Value> = match value {
        Value::Array(items) => items.iter().collect(),
        single => vec![single],
    };
    if calls.is_empty() {
        return Err(format!("function_call value is an empty list; {WANT}"));
    }
    let mut out = Vec::with_capacity(calls.len());
    for call in calls {
        match (call.get("name"), call.get("arguments")) {
            (Some(Value::String(name)), Some(arguments)) => out.push(serde_json::json!({
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            })),
            _ => return Err(format!("function_call value holds {}; {WANT}", describe(call))),
        }
    }
    Ok(Value::Array(out))
}

fn describe(call: &Value) -> String {
    match call {
        Value::Object(map) => {
            let keys: Vec<&str> = map.keys().map(String::as_str).collect();
            format!("an object with keys [{}]", keys.join(", "))
        }
        other => kind(other).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run_with(row: Value, opts: &ShareGptOptions) -> Result<Conversation, RowError> {
        let at = RowRef { file: "s.jsonl".into(), row: 17 };
        convert(row.as_object().unwrap(), &at, opts)
    }

    fn run(row: Value) -> Result<Conversation, RowError> {
        run_with(row, &ShareGptOptions::default())
    }

    fn roles(c: &Conversation) -> Vec<&str> {
        c.messages.iter().map(|m| m.role.as_str()).collect()
    }

    #[test]
    fn maps_default_roles_and_system() {
        let c = run(json!({"system": "sys", "conversations": [
            {"from": "human", "value": "q"}, {"from": "gpt", "value": "a", "weight": 1},
            {"from": "observation", "value": "obs"}, {"from": "user", "value": "u"},
        ]}))
        .unwrap();
        assert_eq!(roles(&c), ["system", "user", "assistant", "tool", "user"]);
        assert_eq!(c.messages[0].content_str(), Some("sys"));
        let keys: Vec<_> = c.messages[2].fields.keys().map(String::as_str).collect();
        assert_eq!(keys, ["role", "content", "weight"]);
    }

    #[test]
    fn function_call_becomes_tool_calls() {
        let c = run(json!({"tools": "[]", "conversations": [
            {"from": "human", "value": "w?"},
            {"from": "function_call", "value": "{\"name\": \"weather\", \"arguments\": {\"city\": \"Oslo\"}}"},
            {"from": "observation", "value": "rain"},
            {"from": "function_call", "value": [{"name": "a", "arguments": "{}"}, {"name": "b", "arguments": {}}]},
        ]}))
        .unwrap();
        let m = &c.messages[1];
        assert_eq!(m.role, "assistant");
        assert_eq!(m.content_str(), Some(""));
        assert_eq!(m.fields["tool_calls"], json!([{"type": "function", "function": {"name": "weather", "arguments": {"city": "Oslo"}}}]));
        assert_eq!(c.messages[3].fields["tool_calls"].as_array().unwrap().len(), 2);
        assert_eq!(c.tools, Some(json!([])));
        let e = run(json!({"conversations": [{"from": "function_call", "value": "get_weather(Oslo)"}]}));
        assert!(e.unwrap_err().to_string().starts_with("message 1: function_call value is not valid JSON"));
        let e = run(json!({"conversations": [{"from": "function_call", "value": "{\"fn\": 1}"}]}));
        assert!(e.unwrap_err().to_string().contains("an object with keys [fn]"));
    }

    #[test]
    fn unknown_role_says_how_to_fix() {
        let e = run(json!({"conversations": [
            {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}, {"from": "gpt2", "value": "b"},
        ]}))
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "message 3 has role \"gpt2\"; expected one of human, gpt, system, tool, function_call, \
             observation, user, assistant (add it to the ShareGPT role map)"
        );
    }

    #[test]
    fn custom_keys_and_roles() {
        let opts = ShareGptOptions {
            messages_key: "dialog".into(),
            role_key: "speaker".into(),
            content_key: "text".into(),
            roles: vec![("bot".into(), "assistant".into()), ("human".into(), "system".into())],
        };
        assert!(opts.validate().is_ok());
        let c = run_with(json!({"dialog": [{"speaker": "human", "text": "s"}, {"speaker": "bot", "text": "b"}]}), &opts).unwrap();
        assert_eq!(roles(&c), ["system", "assistant"]);
        let bad = ShareGptOptions { roles: vec![("x".into(), "robot".into())], ..ShareGptOptions::default() };
        assert!(bad.validate().unwrap_err().contains("sends \"x\" to \"robot\""));
    }

    #[test]
    fn message_errors() {
        let e = run(json!({"conversations": [{"role": "user", "content": "q"}]})).unwrap_err();
        assert!(e.to_string().contains("read them as openai"), "{e}");
        let e = run(json!({"conversations": [{"from": "human", "value": 3}]})).unwrap_err();
        assert_eq!(e.to_string(), "message 1: \"value\" is a number; expected a string");
        let e = run(json!({"conversations": [{"from": "human"}]})).unwrap_err();
        assert!(e.to_string().starts_with("message 1: has no \"value\" key"));
        assert_eq!(run(json!({"conversations": []})).unwrap_err(), RowError::EmptyConversation);
        let e = run(json!({"system": "a", "conversations": [{"from": "system", "value": "b"}]})).unwrap_err();
        assert!(e.to_string().contains("keep one"));
        let same = run(json!({"system": "a", "conversations": [{"from": "system", "value": "a"}]})).unwrap();
        assert_eq!(same.messages.len(), 1);
    }
}
