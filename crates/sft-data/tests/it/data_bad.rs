//! The bad-input corpus: every file under `tests/fixtures/data/bad/` must give an error (never a
//! panic) whose message names the file and the bad row. Binary files there are written by
//! `regenerate_binary_fixtures` in `data_good.rs`.

use std::path::PathBuf;

use sft_data::data::{read_dataset, DataError, ReadOptions};

fn bad_dir() -> PathBuf {
    [env!("CARGO_MANIFEST_DIR"), "tests/fixtures/data/bad"].iter().collect()
}

/// `(file, row it must name (None for file-level errors), text the message must contain)`.
const CASES: &[(&str, Option<usize>, &str)] = &[
    ("invalid_json_line.jsonl", Some(3), "invalid JSON"),
    ("invalid_utf8_line.jsonl", Some(2), "not valid UTF-8"),
    ("not_object_line.jsonl", Some(2), "row is an array, not a JSON object"),
    ("array_bad_element.json", Some(3), "row is a string, not a JSON object"),
    ("array_syntax_error.json", Some(4), "invalid JSON"),
    ("alpaca_missing_output.jsonl", Some(3), "missing key \"output\""),
    ("alpaca_wrong_type.jsonl", Some(1), "\"instruction\" is a number; expected a string"),
    ("alpaca_bad_history.jsonl", Some(2), "\"history\" entry 1 is an array"),
    ("sharegpt_unknown_role.jsonl", Some(2), "message 3 has role \"gpt2\"; expected one of human, gpt"),
    ("sharegpt_bad_function_call.jsonl", Some(1), "message 2: function_call value is not valid JSON"),
    ("sharegpt_value_not_string.jsonl", Some(2), "message 1: \"value\" is an array"),
    ("sharegpt_bad_tools.json", Some(1), "\"tools\" is a string that is not valid JSON"),
    ("openai_unknown_role.jsonl", Some(1), "message 2 has role \"Assistant\""),
    ("openai_missing_content.jsonl", Some(2), "message 2: has no \"content\""),
    ("openai_content_number.json", Some(2), "\"content\" is a number"),
    ("empty_conversation.jsonl", Some(3), "conversation has no messages"),
    ("null_messages.jsonl", Some(2), "missing key \"messages\""),
    ("unknown_format.jsonl", Some(1), "cannot detect the data format from keys [body, id]"),
    ("pretty_object.json", Some(1), "invalid JSON"),
    ("empty.jsonl", None, "no rows"),
    ("truncated.parquet", None, "cannot read Parquet"),
    ("parquet_bad_row.parquet", Some(2), "missing key \"messages\""),
];

fn read(name: &str) -> DataError {
    let path = bad_dir().join(name);
    match read_dataset(&path.to_string_lossy(), &ReadOptions::default()) {
        Ok(d) => panic!("{name}: expected an error, read {} conversations", d.conversations.len()),
        Err(e) => e,
    }
}

#[test]
fn every_bad_file_names_file_and_row() {
    let mut failures = Vec::new();
    for &(name, row, text) in CASES {
        let message = read(name).to_string();
        let at = match row {
            Some(row) => format!("{name}:{row}:"),
            None => format!("{name}: "),
        };
        if !message.contains(&at) || !message.contains(text) {
            failures.push(format!("{name}: wanted {at:?} and {text:?} in\n    {message}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn row_errors_carry_the_row() {
    for &(name, row, _) in CASES {
        if let DataError::Row { at, .. } = read(name) {
            assert_eq!(Some(at.row), row, "{name}");
            assert!(at.file.ends_with(name), "{name}");
        }
    }
}

#[test]
fn json_array_errors_give_line_and_column() {
    let e = read("array_syntax_error.json");
    assert!(matches!(e, DataError::InvalidJson { line: 4, column: 23, .. }), "{e}");
}

#[test]
fn corpus_and_cases_match() {
    let mut on_disk: Vec<String> =
        std::fs::read_dir(bad_dir()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    on_disk.sort();
    let mut listed: Vec<String> = CASES.iter().map(|(n, _, _)| n.to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed, "every file in bad/ needs a CASES entry and vice versa");
}

#[test]
fn missing_file_names_the_path() {
    let e = read("does_not_exist.jsonl");
    assert!(matches!(e, DataError::NotFound { .. }));
    assert!(e.to_string().contains("does_not_exist.jsonl: no such file"), "{e}");
}
