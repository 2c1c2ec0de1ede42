//! Raw rows from JSONL, JSON-array and Parquet files (or stdin), each with its 1-based line or
//! row number.
//!
//! The container is detected from the bytes, not the extension (many `.json` files are really
//! JSONL): the `PAR1` magic means Parquet, a first non-whitespace `[` means one JSON array, and
//! anything else is read as JSONL. A UTF-8 byte-order mark is ignored.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};

use arrow::array::RecordBatch;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use rayon::prelude::*;
use serde_json::{Map, Value};

use super::error::{kind, DataError, RowError};
use crate::conversation::RowRef;

/// How a file's rows are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// One JSON object per line; rows are numbered by line (blank lines count).
    Jsonl,
    /// One top-level JSON array; rows are numbered by 1-based element index.
    JsonArray,
    /// Apache Parquet; rows are numbered by 1-based row index.
    Parquet,
}

impl std::fmt::Display for FileKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FileKind::Jsonl => "jsonl",
            FileKind::JsonArray => "json",
            FileKind::Parquet => "parquet",
        })
    }
}

/// One row as read: a JSON object and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct RawRow {
    /// The file and 1-based line/row.
    pub source: RowRef,
    /// The row's keys and values, in source (column) order.
    pub value: Map<String, Value>,
}

/// The rows of one file. Each entry is a row or that row's error (invalid JSON or UTF-8 on a
/// JSONL line, a value that is not an object), so callers can skip bad rows and go on.
#[derive(Debug)]
pub struct RawRows {
    /// How the file stores its rows.
    pub kind: FileKind,
    /// The rows in file order.
    pub rows: Vec<Result<RawRow, DataError>>,
}

/// Reads every row of `path` (`-` means stdin). File-level problems (missing file, a JSON array
/// that does not parse, a corrupt Parquet file) are the outer error.
pub fn read_rows(path: &str) -> Result<RawRows, DataError> {
    let bytes = if path == "-" {
        let mut buf = Vec::new();
        std::io::stdin().lock().read_to_end(&mut buf).map_err(|e| DataError::io(path, e))?;
        buf
    } else {
        std::fs::read(path).map_err(|e| DataError::io(path, e))?
    };
    parse_bytes(path, bytes)
}

/// Reads rows from bytes already in memory; `path` names them in errors.
pub fn parse_bytes(path: &str, bytes: Vec<u8>) -> Result<RawRows, DataError> {
    let kind = sniff(&bytes);
    let rows = match kind {
        FileKind::Parquet => parse_parquet(path, bytes)?,
        FileKind::JsonArray => parse_json_array(path, strip_bom(&bytes))?,
        FileKind::Jsonl => parse_jsonl(path, strip_bom(&bytes)),
    };
    Ok(RawRows { kind, rows })
}

/// A chunk of JSONL holds about this many bytes (lines are never split).
const CHUNK_BYTES: usize = 16 << 20;
/// … and at most this many lines.
const CHUNK_LINES: usize = 8192;

/// The rows of a file a chunk at a time, in file order, so that memory stays bounded however
/// large the file is: JSONL a block of lines at a time (parsed in parallel), Parquet a record
/// batch at a time. A JSON array is one value and is read whole, as is anything from stdin
/// that is not JSONL.
pub struct RowStream {
    path: String,
    kind: FileKind,
    source: Source,
}

enum Source {
    Lines { reader: Box<dyn BufRead + Send>, line_no: usize, first: bool },
    Batches { reader: ParquetRecordBatchReader, rows: usize },
    Whole(Vec<Result<RawRow, DataError>>),
    Done,
}

impl RowStream {
    /// Opens `path` (`-` means stdin) and decides how it stores rows (see the module docs).
    pub fn open(path: &str) -> Result<Self, DataError> {
        let io = |e| DataError::io(path, e);
        let mut reader: Box<dyn BufRead + Send> = if path == "-" {
            Box::new(BufReader::with_capacity(1 << 20, std::io::stdin()))
        } else {
            Box::new(BufReader::with_capacity(1 << 20, File::open(path).map_err(io)?))
        };
        let kind = sniff(reader.fill_buf().map_err(io)?);
        let source = match (kind, path) {
            (FileKind::Jsonl, _) => Source::Lines { reader, line_no: 0, first: true },
            (FileKind::Parquet, p) if p != "-" => {
                let file = File::open(path).map_err(io)?;
                let fail = |e: parquet::errors::ParquetError| parquet_error(path, e.to_string());
                let reader = guard_parquet(path, || ParquetRecordBatchReaderBuilder::try_new(file).and_then(|b| b.build()).map_err(fail))?;
                Source::Batches { reader, rows: 0 }
            }
            _ => {
                let mut bytes = Vec::new();
                reader.read_to_end(&mut bytes).map_err(io)?;
                Source::Whole(parse_bytes(path, bytes)?.rows)
            }
        };
        Ok(RowStream { path: path.to_string(), kind, source })
    }

    /// How the file stores its rows.
    pub fn kind(&self) -> FileKind {
        self.kind
    }

    /// The next rows (each a row or that row's error, as in [`RawRows`]), `None` at the end.
    pub fn next_chunk(&mut self) -> Result<Option<Vec<Result<RawRow, DataError>>>, DataError> {
        let path = self.path.as_str();
        match &mut self.source {
            Source::Lines { reader, line_no, first } => {
                let mut buf = Vec::new();
                let mut lines: Vec<(usize, std::ops::Range<usize>)> = Vec::new();
                while buf.len() < CHUNK_BYTES && lines.len() < CHUNK_LINES {
                    let start = buf.len();
                    if reader.read_until(b'\n', &mut buf).map_err(|e| DataError::io(path, e))? == 0 {
                        break;
                    }
                    *line_no += 1;
                    let mut from = start;
                    if std::mem::take(first) && buf[start..].starts_with(b"\xEF\xBB\xBF") {
                        from += 3;
                    }
                    let end = if buf.last() == Some(&b'\n') { buf.len() - 1 } else { buf.len() };
                    if !buf[from..end].iter().all(u8::is_ascii_whitespace) {
                        lines.push((*line_no, from..end));
                    }
                }
                if lines.is_empty() {
                    self.source = Source::Done;
                    return Ok(None);
                }
                Ok(Some(lines.into_par_iter().map(|(n, range)| parse_line(path, n, &buf[range])).collect()))
            }
            Source::Batches { reader, rows } => {
                let next = guard_parquet(path, || reader.next().transpose().map_err(|e| parquet_error(path, e.to_string())))?;
                let Some(batch) = next else {
                    self.source = Source::Done;
                    return Ok(None);
                };
                let values = batch_to_json(&batch).map_err(|m| parquet_error(path, m))?;
                let first = *rows;
                *rows += values.len();
                Ok(Some(values.into_iter().enumerate().map(|(i, v)| object(path, first + i + 1, v)).collect()))
            }
            Source::Whole(rows) => {
                let rows = std::mem::take(rows);
                self.source = Source::Done;
                Ok(Some(rows))
            }
            Source::Done => Ok(None),
        }
    }
}

/// Decides how `bytes` store rows (see the module docs).
pub fn sniff(bytes: &[u8]) -> FileKind {
    if bytes.starts_with(b"PAR1") {
        return FileKind::Parquet;
    }
    match strip_bom(bytes).iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => FileKind::JsonArray,
        _ => FileKind::Jsonl,
    }
}

fn strip_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes)
}

fn row_ref(path: &str, row: usize) -> RowRef {
    RowRef { file: path.to_string(), row }
}

fn object(path: &str, row: usize, value: Value) -> Result<RawRow, DataError> {
    match value {
        Value::Object(value) => Ok(RawRow { source: row_ref(path, row), value }),
        other => Err(DataError::Row { at: row_ref(path, row), error: RowError::NotAnObject { found: kind(&other) } }),
    }
}

/// One JSON object per line; lines parse in parallel (rayon), rows stay in file order.
fn parse_jsonl(path: &str, bytes: &[u8]) -> Vec<Result<RawRow, DataError>> {
    let lines: Vec<(usize, &[u8])> = bytes
        .split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
        .map(|(index, line)| (index + 1, line))
        .collect();
    lines.into_par_iter().map(|(line_no, line)| parse_line(path, line_no, line)).collect()
}

fn parse_line(path: &str, line_no: usize, line: &[u8]) -> Result<RawRow, DataError> {
    let bad = |error| DataError::Row { at: row_ref(path, line_no), error };
    let text = std::str::from_utf8(line).map_err(|e| bad(RowError::InvalidUtf8 { column: e.valid_up_to() + 1 }))?;
    match serde_json::from_str::<Value>(text) {
        Ok(value) => object(path, line_no, value),
        Err(e) => {
            let mut message = format!("{} at column {}", json_message(&e), e.column());
            if e.is_eof() {
                message.push_str(" (the line ends mid-value: a truncated row, or one object pretty-printed over several lines?)");
            }
            Err(bad(RowError::InvalidJson { message }))
        }
    }
}

fn parse_json_array(path: &str, bytes: &[u8]) -> Result<Vec<Result<RawRow, DataError>>, DataError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| DataError::InvalidJson {
        path: path.to_string(),
        line: e.line(),
        column: e.column(),
        message: json_message(&e),
    })?;
    let Value::Array(items) = value else {
        // sniff() saw `[`, so serde_json either parsed an array or failed above.
        return Err(DataError::InvalidJson {
            path: path.to_string(),
            line: 1,
            column: 1,
            message: format!("top level is {}, not an array", kind(&value)),
        });
    };
    Ok(items.into_iter().enumerate().map(|(i, item)| object(path, i + 1, item)).collect())
}

/// serde_json's message without its trailing "at line L column C" (we print the position).
fn json_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    text.strip_suffix(&suffix).map(str::to_string).unwrap_or(text)
}

/// The parquet crate panics on some malformed files (fuzzing found a division by zero in its
/// byte-array reader), so a panic while decoding is caught and reported as a corrupt file.
fn parse_parquet(path: &str, bytes: Vec<u8>) -> Result<Vec<Result<RawRow, DataError>>, DataError> {
    guard_parquet(path, || decode_parquet(path, bytes))
}

/// Runs a step of the Parquet decoder, turning a panic inside it (malformed files can trigger
/// them) into an error naming the file.
fn guard_parquet<T>(path: &str, step: impl FnOnce() -> Result<T, DataError>) -> Result<T, DataError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(step)).unwrap_or_else(|panic| {
        let why = panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned());
        Err(DataError::Parquet {
            path: path.to_string(),
            message: format!("the decoder failed ({})", why.unwrap_or_else(|| "a panic".into())),
        })
    })
}

fn parquet_error(path: &str, message: String) -> DataError {
    DataError::Parquet { path: path.to_string(), message: message.strip_prefix("Parquet error: ").map(str::to_string).unwrap_or(message) }
}

fn decode_parquet(path: &str, bytes: Vec<u8>) -> Result<Vec<Result<RawRow, DataError>>, DataError> {
    let fail = |message: String| parquet_error(path, message);
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
        .and_then(|builder| builder.build())
        .map_err(|e| fail(e.to_string()))?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| fail(e.to_string()))?;
        for value in batch_to_json(&batch).map_err(fail)? {
            let row = rows.len() + 1;
            rows.push(object(path, row, value));
        }
    }
    Ok(rows)
}

fn batch_to_json(batch: &RecordBatch) -> Result<Vec<Value>, String> {
    let mut writer = arrow_json::LineDelimitedWriter::new(Vec::new());
    writer.write(batch).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    let buf = writer.into_inner();
    let mut values = Vec::with_capacity(batch.num_rows());
    for line in buf.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        values.push(serde_json::from_slice(line).map_err(|e| e.to_string())?);
    }
    if values.len() != batch.num_rows() {
        return Err(format!("decoded {} rows from a batch of {}", values.len(), batch.num_rows()));
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int64Array, StringArray};
    use std::sync::Arc;

    fn write_parquet(batches: &[RecordBatch]) -> Result<Vec<u8>, String> {
        let schema = match batches.first() {
            Some(b) => b.schema(),
            None => Arc::new(arrow::datatypes::Schema::empty()),
        };
        let mut out = Vec::new();
        let mut writer = parquet::arrow::ArrowWriter::try_new(&mut out, schema, None).map_err(|e| e.to_string())?;
        for batch in batches {
            writer.write(batch).map_err(|e| e.to_string())?;
        }
        writer.close().map_err(|e| e.to_string())?;
        Ok(out)
    }

    fn rows(text: &str) -> Vec<Result<RawRow, DataError>> {
        parse_bytes("t.jsonl", text.as_bytes().to_vec()).unwrap().rows
    }

    #[test]
    fn sniffs_by_content() {
        assert_eq!(sniff(b"PAR1...."), FileKind::Parquet);
        assert_eq!(sniff(b"\n  [ {} ]"), FileKind::JsonArray);
        assert_eq!(sniff(b"\xEF\xBB\xBF[]"), FileKind::JsonArray);
        assert_eq!(sniff(b"{\"a\":1}\n"), FileKind::Jsonl);
        assert_eq!(sniff(b""), FileKind::Jsonl);
    }

    #[test]
    fn jsonl_counts_blank_lines() {
        let rows = rows("{\"a\":1}\n\n  \r\n{\"b\":2}\r\n");
        assert_eq!(rows.len(), 2);
        let second = rows[1].as_ref().unwrap();
        assert_eq!(second.source.row, 4);
        assert_eq!(second.value["b"], 2);
    }

    #[test]
    fn jsonl_bad_lines_are_row_errors() {
        let rows = rows("{\"a\":1}\n{\"a\":\n[1]\n");
        assert!(rows[0].is_ok());
        let e = rows[1].as_ref().unwrap_err().to_string();
        assert!(e.starts_with("t.jsonl:2: invalid JSON"), "{e}");
        let e = rows[2].as_ref().unwrap_err().to_string();
        assert!(e.starts_with("t.jsonl:3: row is an array"), "{e}");
    }

    #[test]
    fn jsonl_invalid_utf8() {
        let got = parse_bytes("u.jsonl", b"{\"a\":1}\n{\"a\":\"\xff\"}\n".to_vec()).unwrap().rows;
        let e = got[1].as_ref().unwrap_err();
        assert!(matches!(e, DataError::Row { error: RowError::InvalidUtf8 { column: 7 }, .. }), "{e}");
    }

    #[test]
    fn json_array_rows_and_errors() {
        let got = parse_bytes("a.json", b"[{\"a\":1}, 2]".to_vec()).unwrap();
        assert_eq!(got.kind, FileKind::JsonArray);
        assert!(got.rows[0].is_ok());
        assert!(got.rows[1].as_ref().unwrap_err().to_string().starts_with("a.json:2: row is a number"));
        let err = parse_bytes("a.json", b"[\n{\"a\":1},\n{\"a\" 2}]".to_vec()).unwrap_err();
        assert!(err.to_string().starts_with("a.json:3:6: invalid JSON"), "{err}");
    }

    /// Issue 9, found by the data_reader fuzz target: this file makes the parquet crate divide
    /// by zero; it must be an error naming the file.
    #[test]
    fn a_parquet_file_that_panics_the_decoder_is_an_error() {
        let bytes = include_bytes!("../../tests/fixtures/data/parquet_panics_decoder.parquet");
        let err = parse_bytes("f.parquet", bytes.to_vec()).unwrap_err().to_string();
        assert!(err.starts_with("f.parquet: cannot read Parquet: the decoder failed") && err.contains("corrupt"), "{err}");
    }

    #[test]
    fn parquet_round_trip_drops_nulls() {
        let text: ArrayRef = Arc::new(StringArray::from(vec![Some("x"), None]));
        let n: ArrayRef = Arc::new(Int64Array::from(vec![1, 2]));
        let batch = RecordBatch::try_from_iter([("text", text), ("n", n)]).unwrap();
        let bytes = write_parquet(&[batch]).unwrap();
        let got = parse_bytes("p.parquet", bytes.clone()).unwrap();
        assert_eq!(got.kind, FileKind::Parquet);
        let rows: Vec<_> = got.rows.into_iter().map(Result::unwrap).collect();
        assert_eq!(rows[0].value, serde_json::json!({"text": "x", "n": 1}).as_object().unwrap().clone());
        assert_eq!(rows[1].value, serde_json::json!({"n": 2}).as_object().unwrap().clone());
        assert_eq!(rows[1].source.row, 2);
        let err = parse_bytes("p.parquet", bytes[..bytes.len() / 2].to_vec()).unwrap_err();
        assert!(err.to_string().starts_with("p.parquet: cannot read Parquet"), "{err}");
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = read_rows("/nonexistent/dir/train.jsonl").unwrap_err();
        assert!(err.to_string().starts_with("/nonexistent/dir/train.jsonl: no such file"), "{err}");
    }

    /// Every chunk of a stream, concatenated.
    fn streamed(path: &str) -> Vec<Result<RawRow, DataError>> {
        let mut stream = RowStream::open(path).unwrap();
        let mut rows = Vec::new();
        while let Some(chunk) = stream.next_chunk().unwrap() {
            rows.extend(chunk);
        }
        rows
    }

    fn same(a: &[Result<RawRow, DataError>], b: &[Result<RawRow, DataError>]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            match (x, y) {
                (Ok(x), Ok(y)) => assert_eq!(x, y),
                (Err(x), Err(y)) => assert_eq!(x.to_string(), y.to_string()),
                _ => panic!("{x:?} vs {y:?}"),
            }
        }
    }

    #[test]
    fn a_stream_reads_the_rows_a_whole_read_does() {
        let dir = std::env::temp_dir().join(format!("sft-stream-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // JSONL over several chunks: a BOM, blank and bad lines, no final newline.
        let mut text = String::from("\u{feff}");
        for i in 0..(2 * CHUNK_LINES + 10) {
            text.push_str(&match i % 500 {
                7 => "\n".to_string(),
                9 => "[1]\n".to_string(),
                _ => format!("{{\"i\": {i}}}\n"),
            });
        }
        text.push_str("{\"last\": true}");
        let jsonl = dir.join("rows.jsonl");
        std::fs::write(&jsonl, &text).unwrap();
        let path = jsonl.to_str().unwrap();
        same(&streamed(path), &read_rows(path).unwrap().rows);
        // Parquet: several record batches.
        let n = 2_500i64;
        let ids: ArrayRef = Arc::new(Int64Array::from((0..n).collect::<Vec<_>>()));
        let text: ArrayRef = Arc::new(StringArray::from((0..n).map(|i| format!("row {i}")).collect::<Vec<_>>()));
        let batch = RecordBatch::try_from_iter([("id", ids), ("text", text)]).unwrap();
        let parquet = dir.join("rows.parquet");
        std::fs::write(&parquet, write_parquet(&[batch]).unwrap()).unwrap();
        let path = parquet.to_str().unwrap();
        let mut stream = RowStream::open(path).unwrap();
        assert_eq!(stream.kind(), FileKind::Parquet);
        assert!(stream.next_chunk().unwrap().unwrap().len() < n as usize, "one batch at a time");
        same(&streamed(path), &read_rows(path).unwrap().rows);
        std::fs::remove_dir_all(&dir).ok();
    }
}
