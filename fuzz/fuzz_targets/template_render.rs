//! A chat template and the conversations it renders: the input is the Jinja source, a NUL
//! byte, then JSONL rows (any format). Compiling and rendering untrusted templates must end in
//! text or an error (fuel and recursion limits included), never a panic, a hang or an abort.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sft_data::data::{convert_rows, reader::parse_bytes, OnBadRow, ReadOptions};
use sft_data::template::{ChatTemplate, Clock, RenderArgs};

/// Rows used when the input has no NUL (template-only inputs).
const DEFAULT_ROWS: &str = r#"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}]}], "tools": [{"type": "function", "function": {"name": "f"}}]}"#;

fuzz_target!(|data: &[u8]| {
    let (source, rows) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, DEFAULT_ROWS.as_bytes()),
    };
    let Ok(source) = std::str::from_utf8(source) else { return };
    let Ok(template) = ChatTemplate::new("fuzz.jinja", source, Clock::System) else { return };
    let Ok(raw) = parse_bytes("fuzz.jsonl", rows.to_vec()) else { return };
    let opts = ReadOptions { on_bad_row: OnBadRow::Skip, ..ReadOptions::default() };
    let Ok(dataset) = convert_rows("fuzz.jsonl", raw, &opts) else { return };
    let mut args = RenderArgs::default();
    args.template_vars.insert("eos_token".into(), "</s>".into());
    for conv in dataset.conversations.iter().take(4) {
        let _ = template.render(conv, &args);
        args.add_generation_prompt = !args.add_generation_prompt;
    }
});
