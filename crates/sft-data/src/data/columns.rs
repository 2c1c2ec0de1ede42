//! Column mapping: a file whose columns or message keys have other names is read without
//! rewriting it. [`Columns`] maps the name a format expects to the name the file uses, as
//! LLaMA-Factory's `dataset_info.json` `columns` (and its `tags` for message keys) do; each row
//! is renamed before its format is detected or converted, so the mapping works for every format.
//!
//! Row-level names: `messages` (openai), `conversations` (sharegpt), `instruction`, `input`,
//! `output`, `system`, `history` (alpaca), `prompt`, `completion` (prompt_completion), `text`,
//! `tools`, `documents`. Message-level names, renamed inside every message of the `messages`,
//! `conversations`, `prompt` and `completion` lists: `role`, `content` (openai), `from`,
//! `value` (sharegpt). `{messages: conversation, role: from, content: value}` reads rows
//! `{"conversation": [{"from": "user", "value": "hi"}, ...]}` as openai rows. A mapped column
//! replaces a column of the expected name in the same row.

use serde_json::{Map, Value};

/// Names of row columns a mapping may set.
pub const ROW_COLUMNS: &[&str] = &[
    "messages",
    "conversations",
    "instruction",
    "input",
    "output",
    "system",
    "history",
    "prompt",
    "completion",
    "text",
    "tools",
    "documents",
];
/// Names of message keys a mapping may set.
pub const MESSAGE_KEYS: &[&str] = &["role", "content", "from", "value"];
/// The row columns that hold message lists.
const MESSAGE_LISTS: &[&str] = &["messages", "conversations", "prompt", "completion"];

/// Renames from a file's names to the expected ones, checked by [`Columns::new`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Columns {
    /// `(expected, file's)` row columns.
    row: Vec<(String, String)>,
    /// `(expected, file's)` message keys.
    message: Vec<(String, String)>,
}

impl Columns {
    /// A mapping from `(expected name, file's name)` pairs; an expected name that is not one of
    /// [`ROW_COLUMNS`] or [`MESSAGE_KEYS`] is an error naming it and the accepted names.
    pub fn new<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self, String> {
        let mut columns = Columns::default();
        for (expected, file) in pairs {
            let pair = (expected.to_string(), file.to_string());
            if ROW_COLUMNS.contains(&expected) {
                columns.row.push(pair);
            } else if MESSAGE_KEYS.contains(&expected) {
                columns.message.push(pair);
            } else {
                return Err(format!(
                    "{expected:?} is not a column sft reads; map one of {} (row columns) or {} (message keys)",
                    ROW_COLUMNS.join(", "),
                    MESSAGE_KEYS.join(", ")
                ));
            }
        }
        Ok(columns)
    }

    /// Whether nothing is renamed.
    pub fn is_empty(&self) -> bool {
        self.row.is_empty() && self.message.is_empty()
    }

    /// `row` with the file's names replaced by the expected ones.
    pub fn apply(&self, mut row: Map<String, Value>) -> Map<String, Value> {
        for (expected, file) in &self.row {
            if let Some(v) = row.remove(file) {
                row.insert(expected.clone(), v);
            }
        }
        if self.message.is_empty() {
            return row;
        }
        for list in MESSAGE_LISTS {
            if let Some(Value::Array(messages)) = row.get_mut(*list) {
                for m in messages.iter_mut().filter_map(Value::as_object_mut) {
                    for (expected, file) in &self.message {
                        if let Some(v) = m.remove(file) {
                            m.insert(expected.clone(), v);
                        }
                    }
                }
            }
        }
        row
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renames_row_columns_and_message_keys() {
        let columns = Columns::new([("messages", "conversation"), ("role", "from"), ("content", "value")]).unwrap();
        let row = json!({"conversation": [{"from": "user", "value": "hi"}], "id": 3});
        let out = columns.apply(row.as_object().unwrap().clone());
        assert_eq!(Value::Object(out), json!({"messages": [{"role": "user", "content": "hi"}], "id": 3}));
        let columns = Columns::new([("text", "body")]).unwrap();
        let out = columns.apply(json!({"body": "b", "text": "old"}).as_object().unwrap().clone());
        assert_eq!(Value::Object(out), json!({"text": "b"}), "the mapped column replaces one of the expected name");
        assert!(Columns::default().is_empty());
    }

    #[test]
    fn an_unknown_expected_name_is_an_error_listing_the_names() {
        let e = Columns::new([("answer", "output")]).unwrap_err();
        assert!(e.starts_with("\"answer\" is not a column sft reads; map one of messages, conversations"), "{e}");
    }
}
