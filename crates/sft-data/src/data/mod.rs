//! Data files → [`Conversation`]s: readers with row numbers, then one normalizer per format.
//!
//! The pipeline for one file is [`read_rows`] (JSONL, JSON array or Parquet, detected from the
//! bytes; `-` is stdin) → [`drop_null_keys`] on each row → its columns renamed ([`Columns`]) → a format chosen once per file (explicit,
//! or detected from the first readable row: see [`detect`](mod@detect)) → [`alpaca::convert`],
//! [`sharegpt::convert`] or [`openai::convert`].
//!
//! Every error names `file:row:` (1-based JSONL line, or 1-based row in a JSON array / Parquet
//! file) and messages are numbered from 1 in every format.
//!
//! ```no_run
//! use sft_data::data::{read_dataset, ReadOptions};
//! let dataset = read_dataset("data/train.jsonl", &ReadOptions::default())?;
//! println!("{} {} conversations", dataset.format, dataset.conversations.len());
//! # Ok::<(), sft_data::data::DataError>(())
//! ```

pub mod alpaca;
pub mod columns;
pub mod detect;
pub mod error;
pub mod openai;
pub mod prompt_completion;
pub mod reader;
pub mod sharegpt;
pub mod text;

use rayon::prelude::*;
use serde_json::{Map, Value};

use crate::conversation::{drop_null_keys, Conversation, RowRef};
use detect::Plan;

pub use columns::Columns;
pub use detect::{DataFormat, Format};
pub use error::{DataError, RowError};
pub use reader::{read_rows, FileKind, RawRow, RawRows, RowStream};
pub use sharegpt::ShareGptOptions;

/// What to do with a row that cannot be read or converted (`on_bad_row` / `--on-bad-row`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum OnBadRow {
    /// Stop at the first bad row with its error (the default).
    #[default]
    Fail,
    /// Record the row in [`Dataset::skipped`] and go on.
    Skip,
}

/// How to read a data file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// The row format; `None` detects it from the file's first readable row.
    pub format: Option<Format>,
    /// Column and role names for ShareGPT rows (also used by detection).
    pub sharegpt: ShareGptOptions,
    /// Fail on the first bad row, or skip bad rows.
    pub on_bad_row: OnBadRow,
    /// The file's names for the columns and message keys the formats expect.
    pub columns: Columns,
}

/// The conversations of one file.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// The row format used.
    pub format: Format,
    /// Whether `format` was detected (true) or given (false).
    pub detected: bool,
    /// How the file stores rows.
    pub file_kind: FileKind,
    /// The converted rows, in file order.
    pub conversations: Vec<Conversation>,
    /// Rows skipped under [`OnBadRow::Skip`], with the reason (the error text after `file:row: `).
    pub skipped: Vec<(RowRef, String)>,
}

impl Dataset {
    /// The skipped rows as lines for a summary: `NAME: skipped N bad rows:`, then one
    /// `  file:row: reason` line each; `None` when no row was skipped.
    pub fn skipped_report(&self, name: &str) -> Option<String> {
        if self.skipped.is_empty() {
            return None;
        }
        let mut text = format!("{name}: skipped {} bad rows:", self.skipped.len());
        for (at, reason) in &self.skipped {
            text.push_str(&format!("\n  {at}: {reason}"));
        }
        Some(text)
    }
}

/// Reads and converts every row of `path` (`-` for stdin).
///
/// With [`OnBadRow::Fail`] the first bad row is the error; with [`OnBadRow::Skip`] bad rows go
/// to [`Dataset::skipped`], and it is an error only when no row is left. A file with no rows, a
/// first row matching no format, and file-level problems are always errors.
pub fn read_dataset(path: &str, opts: &ReadOptions) -> Result<Dataset, DataError> {
    opts.sharegpt.validate().map_err(|message| DataError::InvalidOptions { path: path.to_string(), message })?;
    convert_rows(path, read_rows(path)?, opts)
}

/// Converts rows already read (e.g. with [`reader::parse_bytes`]) as [`read_dataset`] does;
/// `path` names them in errors.
pub fn convert_rows(path: &str, raw: RawRows, opts: &ReadOptions) -> Result<Dataset, DataError> {
    let mut converter = RowConverter::new(path, opts)?;
    let conversations = converter.convert(raw.rows)?;
    converter.finish(raw.kind, conversations)
}

/// Converts a file's rows chunk by chunk (see [`reader::RowStream`]), as [`read_dataset`] does
/// all at once: the format is chosen from the first readable row, bad rows fail or are
/// skipped by [`ReadOptions::on_bad_row`].
pub struct RowConverter<'a> {
    path: &'a str,
    opts: &'a ReadOptions,
    plan: Option<Plan>,
    rows: usize,
    converted: usize,
    skipped: Vec<(RowRef, String)>,
    first_error: Option<String>,
}

impl<'a> RowConverter<'a> {
    /// A converter for the rows of `path`; errors when `opts` are invalid.
    pub fn new(path: &'a str, opts: &'a ReadOptions) -> Result<Self, DataError> {
        opts.sharegpt.validate().map_err(|message| DataError::InvalidOptions { path: path.to_string(), message })?;
        Ok(RowConverter { path, opts, plan: None, rows: 0, converted: 0, skipped: Vec::new(), first_error: None })
    }

    /// Converts the next rows, in order (in parallel once the format is known).
    pub fn convert(&mut self, rows: Vec<Result<RawRow, DataError>>) -> Result<Vec<Conversation>, DataError> {
        self.rows += rows.len();
        let mut out = Vec::with_capacity(rows.len());
        let mut rows = rows.into_iter();
        // Up to the first readable row, one at a time: it decides the format.
        while self.plan.is_none() {
            let Some(row) = rows.next() else { return Ok(out) };
            let result = row.and_then(|raw| {
                let value = self.opts.columns.apply(drop_null_keys(&raw.value));
                let plan = match self.opts.format {
                    Some(format) => Plan::explicit(format, &value, &self.opts.sharegpt),
                    None => Plan::detect(&value, &self.opts.sharegpt).ok_or_else(|| DataError::UnknownFormat {
                        at: raw.source.clone(),
                        keys: value.keys().cloned().collect(),
                        sharegpt_key: self.opts.sharegpt.messages_key.clone(),
                    })?,
                };
                let plan = self.plan.insert(plan);
                convert(plan, &value, &raw.source).map_err(|error| DataError::Row { at: raw.source, error })
            });
            self.keep(result, &mut out)?;
        }
        let Some(plan) = &self.plan else { return Ok(out) };
        let columns = &self.opts.columns;
        let results: Vec<Result<Conversation, DataError>> = rows
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|row| {
                row.and_then(|raw| {
                    let value = columns.apply(drop_null_keys(&raw.value));
                    convert(plan, &value, &raw.source).map_err(|error| DataError::Row { at: raw.source, error })
                })
            })
            .collect();
        for result in results {
            self.keep(result, &mut out)?;
        }
        Ok(out)
    }

    /// Keeps a converted row, or fails / records the skip for a bad one.
    fn keep(&mut self, result: Result<Conversation, DataError>, out: &mut Vec<Conversation>) -> Result<(), DataError> {
        match result {
            Ok(conversation) => {
                self.converted += 1;
                out.push(conversation);
            }
            Err(DataError::Row { at, error }) if self.opts.on_bad_row == OnBadRow::Skip => {
                let text = error.to_string();
                if self.first_error.is_none() {
                    self.first_error = Some(DataError::Row { at: at.clone(), error }.to_string());
                }
                self.skipped.push((at, text));
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Ends the file: a [`Dataset`] holding `conversations` (those kept, or none when they were
    /// streamed elsewhere). Errors when the file had no rows or no row could be converted.
    pub fn finish(self, kind: FileKind, conversations: Vec<Conversation>) -> Result<Dataset, DataError> {
        if self.rows == 0 {
            return Err(DataError::NoRows { path: self.path.to_string() });
        }
        let Some(plan) = self.plan.filter(|_| self.converted > 0) else {
            return Err(DataError::AllRowsBad {
                path: self.path.to_string(),
                skipped: self.skipped.len(),
                first: self.first_error.unwrap_or_default(),
            });
        };
        Ok(Dataset { format: plan.format(), detected: self.opts.format.is_none(), file_kind: kind, conversations, skipped: self.skipped })
    }
}

/// Converts one raw row in a known format (nulls are dropped first). For a single row outside
/// a file, e.g. one given on the command line.
pub fn convert_row(row: Value, at: &RowRef, format: Format, sharegpt: &ShareGptOptions) -> Result<Conversation, DataError> {
    let bad = |error| DataError::Row { at: at.clone(), error };
    let row = match row {
        Value::Object(row) => drop_null_keys(&row),
        other => return Err(bad(RowError::NotAnObject { found: error::kind(&other) })),
    };
    let plan = Plan::explicit(format, &row, sharegpt);
    convert(&plan, &row, at).map_err(bad)
}

fn convert(plan: &Plan, row: &Map<String, Value>, at: &RowRef) -> Result<Conversation, RowError> {
    match plan {
        Plan::Alpaca => alpaca::convert(row, at),
        Plan::OpenAi { column } => openai::convert(row, at, column),
        Plan::ShareGpt { opts } => sharegpt::convert(row, at, opts),
        Plan::PromptCompletion => prompt_completion::convert(row, at),
        Plan::Text => text::convert(row, at),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str, opts: &ReadOptions) -> Result<Dataset, DataError> {
        convert_rows("t.jsonl", reader::parse_bytes("t.jsonl", text.as_bytes().to_vec())?, opts)
    }

    const MIXED: &str = "{\"instruction\": \"a\", \"output\": \"b\"}\n\
                         {\"instruction\": \"a\"}\n\
                         not json\n\
                         {\"instruction\": \"c\", \"output\": \"d\", \"input\": null}\n";

    #[test]
    fn fail_stops_at_first_bad_row() {
        let e = read(MIXED, &ReadOptions::default()).unwrap_err().to_string();
        assert!(e.starts_with("t.jsonl:2: missing key \"instruction\"") || e.starts_with("t.jsonl:2: missing key \"output\""), "{e}");
    }

    #[test]
    fn skip_goes_on() {
        let opts = ReadOptions { on_bad_row: OnBadRow::Skip, ..ReadOptions::default() };
        let d = read(MIXED, &opts).unwrap();
        assert_eq!((d.format, d.detected), (Format::Alpaca, true));
        assert_eq!(d.conversations.iter().map(|c| c.source.row).collect::<Vec<_>>(), [1, 4]);
        assert_eq!(d.skipped.iter().map(|(r, _)| r.row).collect::<Vec<_>>(), [2, 3]);
        assert!(d.skipped[1].1.starts_with("invalid JSON"), "{}", d.skipped[1].1);
        let report = d.skipped_report("t.jsonl").unwrap();
        assert!(report.starts_with("t.jsonl: skipped 2 bad rows:\n  t.jsonl:2: missing key"), "{report}");
        assert!(report.contains("\n  t.jsonl:3: invalid JSON"), "{report}");
    }

    #[test]
    fn detection_uses_first_readable_row() {
        let opts = ReadOptions { on_bad_row: OnBadRow::Skip, ..ReadOptions::default() };
        let d = read("oops\n{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}\n", &opts).unwrap();
        assert_eq!(d.format, Format::OpenAi);
        let e = read("{\"prompt\": \"x\"}\n", &opts).unwrap_err();
        assert!(matches!(e, DataError::UnknownFormat { .. }), "{e}");
    }

    #[test]
    fn explicit_format_is_not_detected() {
        let opts = ReadOptions { format: Some(Format::ShareGpt), ..ReadOptions::default() };
        let e = read("{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}\n", &opts).unwrap_err();
        assert!(e.to_string().starts_with("t.jsonl:1: missing key \"conversations\""), "{e}");
    }

    #[test]
    fn invalid_role_map_is_an_options_error() {
        let sharegpt = ShareGptOptions { roles: vec![("bot".into(), "robot".into())], ..ShareGptOptions::default() };
        let e = read("{}\n", &ReadOptions { sharegpt, ..ReadOptions::default() }).unwrap_err();
        assert!(matches!(e, DataError::InvalidOptions { .. }), "{e}");
    }

    #[test]
    fn convert_one_row() {
        let at = RowRef { file: "<arg>".into(), row: 1 };
        let row = serde_json::json!({"conversations": [{"from": "human", "value": "hi"}]});
        let c = convert_row(row, &at, Format::ShareGpt, &ShareGptOptions::default()).unwrap();
        assert_eq!(c.messages[0].role, "user");
        let e = convert_row(serde_json::json!([1]), &at, Format::OpenAi, &ShareGptOptions::default()).unwrap_err();
        assert_eq!(e.to_string().split(';').next(), Some("<arg>:1: row is an array, not a JSON object"));
    }

    #[test]
    fn on_bad_row_parses() {
        assert_eq!(serde_json::from_str::<OnBadRow>("\"skip\"").ok(), Some(OnBadRow::Skip));
        assert!(serde_json::from_str::<OnBadRow>("\"ignore\"").is_err());
    }
}
