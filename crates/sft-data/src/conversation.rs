//! The normalized conversation every data format becomes: what a chat template renders.

use serde_json::{Map, Value};

/// Where a conversation came from: the file and its 1-based line (JSONL) or row (JSON array,
/// Parquet). Every error about a row carries one of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowRef {
    /// The data file as the user named it (`-` for stdin).
    pub file: String,
    /// 1-based line number in a JSONL file, or 1-based row index in a JSON array / Parquet file.
    pub row: usize,
}

impl std::fmt::Display for RowRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.row)
    }
}

/// The roles a normalized message may have. Formats map their own names (ShareGPT's `human`,
/// `gpt`, `function_call`, `observation`) onto these.
pub const ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool", "ipython", "function"];

/// One message. `fields` holds every key as the chat template will see it, in source order,
/// `role` and `content` included; keys whose value was `null` are dropped (as TRL does).
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// One of [`ROLES`].
    pub role: String,
    /// All keys the template sees: `role`, `content` (a string or a list of parts), and any
    /// others the source had (`tool_calls`, `reasoning_content`, `name`, `weight`, …).
    pub fields: Map<String, Value>,
}

impl Message {
    /// A message with just a role and string content.
    pub fn text(role: &str, content: &str) -> Self {
        let mut fields = Map::new();
        fields.insert("role".into(), Value::String(role.into()));
        fields.insert("content".into(), Value::String(content.into()));
        Message { role: role.into(), fields }
    }

    /// The content when it is a plain string.
    pub fn content_str(&self) -> Option<&str> {
        self.fields.get("content").and_then(Value::as_str)
    }

    /// Whether this message is said by the model (the turns that train by default).
    pub fn is_assistant(&self) -> bool {
        self.role == "assistant"
    }
}

/// One training or inference example: an ordered list of messages plus row-level extras.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    /// Where this row was read from.
    pub source: RowRef,
    /// The messages in order.
    pub messages: Vec<Message>,
    /// Tool (function) schemas offered to the model, as the template's `tools` variable.
    pub tools: Option<Value>,
    /// Retrieved documents, as the template's `documents` variable.
    pub documents: Option<Value>,
    /// A chat, a conversational prompt/completion, or a row that is not a chat.
    pub shape: Shape,
}

impl Conversation {
    /// A chat of `messages` read at `source`, without tools or documents.
    pub fn chat(source: RowRef, messages: Vec<Message>) -> Self {
        Conversation { source, messages, tools: None, documents: None, shape: Shape::Chat }
    }
}

/// What kind of row a conversation is: it decides what the chat template renders and what
/// trains (TRL's dataset types: conversational or standard, language modeling or
/// prompt/completion).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Shape {
    /// A chat (`messages`): the template renders the messages and the masking strategy picks the
    /// trained turns.
    #[default]
    Chat,
    /// A conversational prompt/completion row: `messages` are the prompt's then the completion's,
    /// which starts at message `from`; what the template writes after the prompt (rendered with
    /// a generation prompt) trains, as TRL's completion mask has it.
    Completion {
        /// The index of the completion's first message.
        from: usize,
    },
    /// Not a chat (a `text` row, or a prompt/completion of strings): the prompt then the
    /// completion, as they are, without a template; the completion trains (all of a `text` row,
    /// whose prompt is empty). `messages` is empty.
    Plain {
        /// Text that does not train.
        prompt: String,
        /// Text that trains.
        completion: String,
    },
}

/// Drops the keys whose value is `null` from one object, as transformers does to each message
/// (and TRL to each row) before templating: a column missing in a row behaves like an absent
/// key. Nested values are kept as they are (`{"x": null}` inside tool arguments still renders).
pub fn drop_null_keys(map: &Map<String, Value>) -> Map<String, Value> {
    map.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), v.clone())).collect()
}
