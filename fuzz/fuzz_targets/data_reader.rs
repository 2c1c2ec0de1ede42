//! Bytes of a data file (JSONL, JSON array or Parquet, sniffed as `sft` does) → rows →
//! conversations, under both bad-row policies. Any input must give rows or an error, never a
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sft_data::data::{convert_rows, reader::parse_bytes, OnBadRow, ReadOptions};

fuzz_target!(|data: &[u8]| {
    let Ok(rows) = parse_bytes("fuzz.jsonl", data.to_vec()) else { return };
    let skip = ReadOptions { on_bad_row: OnBadRow::Skip, ..ReadOptions::default() };
    if let Ok(dataset) = convert_rows("fuzz.jsonl", rows, &skip) {
        let _ = dataset.skipped_report("fuzz.jsonl");
    }
    if let Ok(rows) = parse_bytes("fuzz.jsonl", data.to_vec()) {
        let _ = convert_rows("fuzz.jsonl", rows, &ReadOptions::default());
    }
});
