//! Good data fixtures: one file per format and container, read end to end.
//!
//! The binary fixtures (Parquet files, the invalid-UTF-8 line) are written by
//! `regenerate_binary_fixtures` below:
//! `cargo test -p sft-data --test it -- --ignored regenerate_binary_fixtures`.

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{ArrayRef, ListArray, RecordBatch, StringArray, StructArray};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, Fields};
use serde_json::json;
use sft_data::data::{read_dataset, FileKind, Format, OnBadRow, ReadOptions};

fn fixture(rel: &str) -> String {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests/fixtures/data", rel].iter().collect();
    path.to_string_lossy().into_owned()
}

fn roles(c: &sft_data::conversation::Conversation) -> Vec<&str> {
    c.messages.iter().map(|m| m.role.as_str()).collect()
}

#[test]
fn alpaca_jsonl() {
    let d = read_dataset(&fixture("good/alpaca.jsonl"), &ReadOptions::default()).unwrap();
    assert_eq!((d.format, d.detected, d.file_kind), (Format::Alpaca, true, FileKind::Jsonl));
    assert_eq!(d.conversations.len(), 3);
    assert_eq!(d.conversations[0].messages[0].content_str(), Some("Add the numbers.\n2 3"));
    assert_eq!(d.conversations[1].source.row, 3, "blank line 2 still counts");
    assert_eq!(roles(&d.conversations[1]), ["system", "user", "assistant"]);
    assert_eq!(roles(&d.conversations[2]), ["user", "assistant", "user", "assistant"]);
}

#[test]
fn sharegpt_json_array_with_tool_calls() {
    let d = read_dataset(&fixture("good/sharegpt.json"), &ReadOptions::default()).unwrap();
    assert_eq!((d.format, d.file_kind), (Format::ShareGpt, FileKind::JsonArray));
    let c = &d.conversations[0];
    assert_eq!(roles(c), ["system", "user", "assistant", "tool", "assistant"]);
    assert_eq!(c.messages[2].fields["tool_calls"][0]["function"]["arguments"], json!({"city": "Oslo"}));
    assert_eq!(c.tools.as_ref().unwrap()[0]["function"]["name"], "weather");
    assert_eq!(d.conversations[1].source.row, 2);
}

#[test]
fn openai_jsonl_keeps_fields() {
    let d = read_dataset(&fixture("good/openai.jsonl"), &ReadOptions::default()).unwrap();
    assert_eq!(d.format, Format::OpenAi);
    let first = &d.conversations[0].messages[2];
    assert_eq!(first.fields["reasoning_content"], "2+2=4");
    let second = &d.conversations[1];
    assert!(second.messages[1].fields.get("content").is_none(), "null content is dropped");
    assert_eq!(second.messages[2].fields["tool_call_id"], "c1");
    assert_eq!(second.documents.as_ref().unwrap()[0]["title"], "Doc");
}

#[test]
fn conversations_with_roles_read_as_openai() {
    let d = read_dataset(&fixture("good/hub_conversations.jsonl"), &ReadOptions::default()).unwrap();
    assert_eq!(d.format, Format::OpenAi);
    assert_eq!(roles(&d.conversations[0]), ["user", "assistant"]);
    let opts = ReadOptions { format: Some(Format::OpenAi), ..ReadOptions::default() };
    assert!(!read_dataset(&fixture("good/hub_conversations.jsonl"), &opts).unwrap().detected);
}

#[test]
fn json_extension_with_jsonl_content() {
    let d = read_dataset(&fixture("good/jsonl_named.json"), &ReadOptions::default()).unwrap();
    assert_eq!(d.file_kind, FileKind::Jsonl);
    assert_eq!(d.conversations.len(), 2);
}

#[test]
fn parquet_openai() {
    let d = read_dataset(&fixture("good/openai.parquet"), &ReadOptions::default()).unwrap();
    assert_eq!((d.format, d.file_kind), (Format::OpenAi, FileKind::Parquet));
    assert_eq!(d.conversations.len(), 2);
    assert_eq!(d.conversations[0].tools.as_ref().unwrap()[0]["function"]["name"], "f");
    assert!(d.conversations[1].tools.is_none(), "a null tools cell is dropped");
    let m = &d.conversations[1].messages[1];
    assert_eq!((m.role.as_str(), m.content_str()), ("assistant", Some("Hello!")));
    assert_eq!(d.conversations[1].source.row, 2);
}

#[test]
fn skip_mode_lists_bad_rows() {
    let opts = ReadOptions { on_bad_row: OnBadRow::Skip, ..ReadOptions::default() };
    let d = read_dataset(&fixture("bad/sharegpt_unknown_role.jsonl"), &opts).unwrap();
    assert_eq!(d.conversations.len(), 1);
    assert_eq!(d.skipped.len(), 1);
    assert_eq!(d.skipped[0].0.row, 2);
    assert!(d.skipped[0].1.starts_with("message 3 has role \"gpt2\""), "{}", d.skipped[0].1);
    let d = read_dataset(&fixture("bad/parquet_bad_row.parquet"), &opts).unwrap();
    assert_eq!(d.skipped.iter().map(|(r, _)| r.row).collect::<Vec<_>>(), [2]);
    let e = read_dataset(&fixture("bad/alpaca_wrong_type.jsonl"), &opts).unwrap_err().to_string();
    assert!(e.contains("all 1 rows are bad"), "{e}");
}

// ---- fixture generation -------------------------------------------------------------------

type Row<'a> = Option<Vec<(&'a str, Option<&'a str>)>>;

/// A `messages: list<struct<role, content>>` column; `None` rows are null lists.
fn messages_column(rows: &[Row]) -> ArrayRef {
    let fields = Fields::from(vec![Field::new("role", DataType::Utf8, false), Field::new("content", DataType::Utf8, true)]);
    let flat: Vec<(&str, Option<&str>)> = rows.iter().flatten().flatten().copied().collect();
    let role: ArrayRef = Arc::new(StringArray::from_iter_values(flat.iter().map(|(r, _)| *r)));
    let content: ArrayRef = Arc::new(StringArray::from(flat.iter().map(|(_, c)| *c).collect::<Vec<_>>()));
    let values = StructArray::new(fields.clone(), vec![role, content], None);
    let offsets = OffsetBuffer::from_lengths(rows.iter().map(|r| r.as_ref().map_or(0, Vec::len)));
    let nulls = NullBuffer::from(rows.iter().map(Option::is_some).collect::<Vec<bool>>());
    let item = Arc::new(Field::new("item", DataType::Struct(fields), true));
    Arc::new(ListArray::new(item, offsets, Arc::new(values), Some(nulls)))
}

fn parquet_bytes(batch: RecordBatch) -> Vec<u8> {
    let mut out = Vec::new();
    let mut writer = parquet::arrow::ArrowWriter::try_new(&mut out, batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    out
}

#[test]
#[ignore = "writes the committed binary fixtures; run by hand after changing them"]
fn regenerate_binary_fixtures() {
    let tools = r#"[{"type": "function", "function": {"name": "f"}}]"#;
    let good = RecordBatch::try_from_iter([
        (
            "messages",
            messages_column(&[
                Some(vec![("system", Some("Use tools.")), ("user", Some("Hi")), ("assistant", Some("Hey."))]),
                Some(vec![("user", Some("Hello")), ("assistant", Some("Hello!"))]),
            ]),
        ),
        ("tools", Arc::new(StringArray::from(vec![Some(tools), None])) as ArrayRef),
    ])
    .unwrap();
    let good = parquet_bytes(good);
    std::fs::write(fixture("good/openai.parquet"), &good).unwrap();
    std::fs::write(fixture("bad/truncated.parquet"), &good[..good.len() * 2 / 3]).unwrap();

    let bad = RecordBatch::try_from_iter([(
        "messages",
        messages_column(&[
            Some(vec![("user", Some("q")), ("assistant", Some("a"))]),
            None,
            Some(vec![("user", Some("q2")), ("assistant", Some("a2"))]),
        ]),
    )])
    .unwrap();
    std::fs::write(fixture("bad/parquet_bad_row.parquet"), parquet_bytes(bad)).unwrap();

    let utf8 = b"{\"messages\": [{\"role\": \"user\", \"content\": \"ok\"}]}\n\
             {\"messages\": [{\"role\": \"user\", \"content\": \"caf\xe9\"}]}\n";
    std::fs::write(fixture("bad/invalid_utf8_line.jsonl"), utf8).unwrap();
}
