//! TRL's dataset types that are not chats (issue 27), against TRL itself: every row of
//! `tests/fixtures/encode/trl_shapes.json` (written by `gen_trl_shapes.py` through TRL 1.16's
//! `SFTTrainer._prepare_dataset`) read as sft's `text` or `prompt_completion` format and encoded
//! with the default options (masking `assistant`, append_eos `auto`) gives TRL's input ids, and
//! its labels at every position that is a target. Position 0 never is one (the loss predicts
//! token i from those before it), and there TRL labels a BOS with its id where sft leaves it
//! untrained, so labels are compared from position 1.

use serde_json::Value;
use sft_data::conversation::{RowRef, Shape};
use sft_data::data::{convert_row, Format, ShareGptOptions};
use sft_data::encode::{EncodeOptions, Encoder, Outcome};
use sft_data::template::{Clock, Renderer, TemplateChoice};
use sft_data::tokens::TextTokenizer;

use crate::common::{assets, fixture, frozen_time};

fn ints<T: serde::de::DeserializeOwned>(v: &Value) -> Vec<T> {
    serde_json::from_value(v.clone()).expect("a list of integers")
}

#[test]
fn text_and_prompt_completion_rows_encode_as_trl_prepares_them() {
    let fx = fixture("encode/trl_shapes.json");
    let cases = fx["cases"].as_array().expect("cases");
    let choice = TemplateChoice { clock: Clock::Fixed(frozen_time(&fx)), ..Default::default() };
    let mut shapes = [0usize; 3];
    for (n, case) in cases.iter().enumerate() {
        let name = case["tokenizer"].as_str().expect("tokenizer");
        let dir = assets().join("tokenizers").join(name);
        let renderer = Renderer::new(Some(&dir), &choice, Default::default()).expect("renderer");
        let tokenizer = TextTokenizer::from_dir(&dir).expect("tokenizer");
        let format = match case["format"].as_str() {
            Some("text") => Format::Text,
            _ => Format::PromptCompletion,
        };
        let at = RowRef { file: "trl_shapes.json".into(), row: n + 1 };
        let conv = convert_row(case["row"].clone(), &at, format, &ShareGptOptions::default()).expect("row");
        shapes[match conv.shape {
            Shape::Plain { ref prompt, .. } if prompt.is_empty() => 0,
            Shape::Plain { .. } => 1,
            _ => 2,
        }] += 1;
        let encoder = Encoder::new(&renderer, &tokenizer, &EncodeOptions::default()).expect("encoder");
        let Outcome::Example(row) = encoder.encode(&conv).expect("encode") else { panic!("{name} case {n}: excluded") };
        let (ids, labels): (Vec<u32>, Vec<i32>) = (ints(&case["input_ids"]), ints(&case["labels"]));
        assert_eq!(row.example.input_ids, ids, "{name} case {n} {}: input ids", case["row"]);
        assert_eq!(row.example.labels[1..], labels[1..], "{name} case {n} {}: labels", case["row"]);
    }
    assert_eq!(shapes, [4, 6, 4], "text, plain prompt/completion and conversational rows");
}
