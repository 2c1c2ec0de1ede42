//! Typed errors for reading data files: every message starts with `file:row:` (or the path for
//! file-level problems) and ends with what to do about it.
//!
//! Messages are complete on their own: no error here chains a `source()`, so printing with
//! `{}` or anyhow's `{:#}` never repeats text.

use crate::conversation::RowRef;

/// Why a data file could not be read or converted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// The path does not exist.
    #[error("{path}: no such file; check the path (use `-` to read from stdin)")]
    NotFound {
        /// The path as given.
        path: String,
    },
    /// Any other I/O failure while reading the file or stdin.
    #[error("{path}: cannot read: {cause}")]
    Io {
        /// The path as given (`-` for stdin).
        path: String,
        /// The underlying I/O error.
        cause: std::io::Error,
    },
    /// A file starting with `[` is not one valid JSON array.
    #[error(
        "{path}:{line}:{column}: invalid JSON: {message}; a file starting with `[` must be one \
         JSON array of objects (or write one object per line as JSONL)"
    )]
    InvalidJson {
        /// The path as given.
        path: String,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// serde_json's description.
        message: String,
    },
    /// A file starting with the `PAR1` magic could not be decoded.
    #[error("{path}: cannot read Parquet: {message}; the file may be truncated or corrupt, rewrite it")]
    Parquet {
        /// The path as given.
        path: String,
        /// The parquet/arrow error text.
        message: String,
    },
    /// One row is bad; with [`OnBadRow::Skip`](super::OnBadRow::Skip) such rows are skipped.
    #[error("{at}: {error}")]
    Row {
        /// The file and 1-based line/row.
        at: RowRef,
        /// What is wrong with the row.
        error: RowError,
    },
    /// The first row's keys match none of the known formats.
    #[error(
        "{at}: cannot detect the data format from keys [{keys}]; expected \"messages\" (openai), \
         \"{sharegpt_key}\" (sharegpt), \"instruction\" and \"output\" (alpaca), \"prompt\" and \
         \"completion\" (prompt_completion) or \"text\" (text); map the columns (a dataset's \
         columns key) or pass the format explicitly",
        keys = keys.join(", ")
    )]
    UnknownFormat {
        /// The first readable row.
        at: RowRef,
        /// The keys that row has, in source order.
        keys: Vec<String>,
        /// The configured ShareGPT conversations column.
        sharegpt_key: String,
    },
    /// The file holds no rows at all.
    #[error("{path}: no rows; the file is empty")]
    NoRows {
        /// The path as given.
        path: String,
    },
    /// Every row was bad (only with [`OnBadRow::Skip`](super::OnBadRow::Skip)).
    #[error("{path}: all {skipped} rows are bad, nothing left to read; first: {first}")]
    AllRowsBad {
        /// The path as given.
        path: String,
        /// How many rows were skipped.
        skipped: usize,
        /// The first bad row's full error text.
        first: String,
    },
    /// The read options are inconsistent (e.g. a ShareGPT role map target that is not a role).
    #[error("{path}: {message}")]
    InvalidOptions {
        /// The path being read.
        path: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

impl DataError {
    /// The row this error is about, when it is about one row.
    pub fn row(&self) -> Option<&RowRef> {
        match self {
            DataError::Row { at, .. } | DataError::UnknownFormat { at, .. } => Some(at),
            _ => None,
        }
    }

    /// Wraps an I/O error, turning "not found" into [`DataError::NotFound`].
    pub(crate) fn io(path: &str, cause: std::io::Error) -> Self {
        if cause.kind() == std::io::ErrorKind::NotFound {
            DataError::NotFound { path: path.to_string() }
        } else {
            DataError::Io { path: path.to_string(), cause }
        }
    }
}

/// What is wrong with one row. Messages are numbered from 1 (`message 3` is the third entry of
/// the row's message list), in every format.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RowError {
    /// A JSONL line is not valid UTF-8.
    #[error("line is not valid UTF-8 (first bad byte at column {column}); re-encode the file as UTF-8")]
    InvalidUtf8 {
        /// 1-based byte column of the first invalid byte.
        column: usize,
    },
    /// A JSONL line is not valid JSON.
    #[error("invalid JSON: {message}; each line of a JSONL file must hold one complete JSON object")]
    InvalidJson {
        /// serde_json's description.
        message: String,
    },
    /// The row is a JSON value other than an object.
    #[error("row is {found}, not a JSON object; each row must be an object such as {{\"messages\": [...]}}")]
    NotAnObject {
        /// What it is instead (`an array`, `a string`, …).
        found: &'static str,
    },
    /// A required key is absent (or `null`).
    #[error("missing key \"{key}\"; {hint}")]
    MissingKey {
        /// The key.
        key: String,
        /// What the format needs.
        hint: &'static str,
    },
    /// A value has the wrong JSON type.
    #[error("{what} is {found}; expected {expected}")]
    WrongType {
        /// What was looked at, e.g. `"output"` or `"history" entry 2`.
        what: String,
        /// The type wanted.
        expected: &'static str,
        /// The type found.
        found: &'static str,
    },
    /// A message's role is not known.
    #[error("message {message} has role \"{role}\"; expected one of {expected} ({hint})")]
    UnknownRole {
        /// 1-based message number.
        message: usize,
        /// The role as written in the file.
        role: String,
        /// The accepted roles, comma separated.
        expected: String,
        /// How to fix it.
        hint: &'static str,
    },
    /// Some other problem with one message.
    #[error("message {message}: {problem}")]
    BadMessage {
        /// 1-based message number.
        message: usize,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// The row has no messages.
    #[error("conversation has no messages; remove the row or fill it in")]
    EmptyConversation,
}

/// Describes a JSON value's type for error messages (`a string`, `an array`, …).
pub(crate) fn kind(value: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_errors_start_with_file_and_row() {
        let at = RowRef { file: "data/train.jsonl".into(), row: 17 };
        let err = DataError::Row {
            at,
            error: RowError::UnknownRole {
                message: 3,
                role: "gpt2".into(),
                expected: "human, gpt".into(),
                hint: "add it to the ShareGPT role map",
            },
        };
        assert_eq!(
            err.to_string(),
            "data/train.jsonl:17: message 3 has role \"gpt2\"; expected one of human, gpt \
             (add it to the ShareGPT role map)"
        );
        assert_eq!(err.row().map(|r| r.row), Some(17));
    }

    #[test]
    fn not_found_is_its_own_variant() {
        let err = DataError::io("x.jsonl", std::io::Error::from(std::io::ErrorKind::NotFound));
        assert!(matches!(err, DataError::NotFound { .. }));
        assert!(err.to_string().starts_with("x.jsonl: no such file"));
    }

    #[test]
    fn kinds() {
        assert_eq!(kind(&serde_json::json!([1])), "an array");
        assert_eq!(kind(&serde_json::json!(1.5)), "a number");
    }
}
