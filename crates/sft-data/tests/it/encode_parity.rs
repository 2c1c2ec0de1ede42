//! Parity of the encode stage with a Python reference: every case in
//! `tests/fixtures/encode/encode_parity.json` (written by `gen_encode_fixtures.py` with
//! transformers 5.24.0) must, with default [`EncodeOptions`] (masking `assistant`, append_eos
//! `auto`), give the same input ids and labels, or be excluded where the reference excluded it.
//! Prefix-masked cases use tokenizers' own templates, generation-masked ones TRL's
//! `*_training.jinja`. Needs `scripts/fetch-assets.sh` to have fetched the real tokenizers.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};
use sft_data::conversation::RowRef;
use sft_data::data::{convert_row, Format, ShareGptOptions};
use sft_data::encode::{EncodeOptions, Encoder, Outcome};
use sft_data::template::{Clock, Renderer, TemplateChoice};
use sft_data::tokens::TextTokenizer;

use crate::common::{assets, conversations_by_id, fixture, frozen_time};

fn ids<T: serde::de::DeserializeOwned>(v: &Value) -> Vec<T> {
    serde_json::from_value(v.clone()).expect("a list of integers")
}

/// The first position where two sequences differ, with a few items from there on each side.
fn first_difference<T: PartialEq + std::fmt::Debug>(ours: &[T], theirs: &[T]) -> String {
    let at = ours.iter().zip(theirs).position(|(a, b)| a != b).unwrap_or(ours.len().min(theirs.len()));
    let end = |v: &[T]| (at + 6).min(v.len());
    format!(
        "lengths {} vs {}, first difference at {at}: ours {:?} theirs {:?}",
        ours.len(),
        theirs.len(),
        &ours[at..end(ours)],
        &theirs[at..end(theirs)]
    )
}

#[test]
fn encode_parity_with_python_reference() {
    let fx = fixture("encode/encode_parity.json");
    let assets = assets();
    let frozen = frozen_time(&fx);
    let convs = conversations_by_id(&fx);
    let mut setups: BTreeMap<(String, String), (Renderer, TextTokenizer)> = BTreeMap::new();
    let options = EncodeOptions::default();
    let cases = fx["cases"].as_array().unwrap();
    let (mut compared, mut excluded) = (0, 0);
    let mut failures: Vec<String> = Vec::new();
    for (n, case) in cases.iter().enumerate() {
        let tname = case["template"].as_str().unwrap();
        let tok = case["tokenizer"].as_str().unwrap();
        let cid = case["conversation"].as_str().unwrap();
        let label = format!("{tname} × {tok} × {cid}");
        let (renderer, tokenizer) = setups.entry((tname.to_string(), tok.to_string())).or_insert_with(|| {
            let dir = assets.join("tokenizers").join(tok);
            let template = match tname.strip_prefix("trl/") {
                Some(file) => Some(assets.join("trl_chat_templates").join(file).to_string_lossy().into_owned()),
                None => {
                    assert_eq!(tname, format!("tokenizer/{tok}"), "a tokenizer template goes with its own tokenizer");
                    None
                }
            };
            let choice = TemplateChoice { template, clock: Clock::Fixed(frozen), ..Default::default() };
            (Renderer::new(Some(&dir), &choice, Map::new()).unwrap(), TextTokenizer::from_dir(&dir).unwrap())
        });
        let conv = convs[cid];
        let row = json!({ "messages": conv["messages"], "tools": conv["tools"], "documents": conv["documents"] });
        let at = RowRef { file: "encode_parity.json".into(), row: n + 1 };
        let conversation = match convert_row(row, &at, Format::OpenAi, &ShareGptOptions::default()) {
            Ok(c) => c,
            Err(e) => {
                failures.push(format!("{label}: row conversion failed: {e}"));
                continue;
            }
        };
        let encoder = Encoder::new(renderer, tokenizer, &options).unwrap();
        let expect_excluded = case["excluded"].as_bool().unwrap();
        match (encoder.encode(&conversation), expect_excluded) {
            (Err(e), _) => failures.push(format!("{label}: encode error: {e}")),
            (Ok(Outcome::Excluded(_)), true) => excluded += 1,
            (Ok(Outcome::Excluded(ex)), false) => failures.push(format!("{label}: excluded here ({ex}), not in Python")),
            (Ok(Outcome::Example(row)), true) => failures.push(format!(
                "{label}: Python excluded it ({}), sft made {} tokens ({} trained)",
                case.get("error").and_then(Value::as_str).unwrap_or("no trained token"),
                row.example.input_ids.len(),
                row.example.trained_tokens()
            )),
            (Ok(Outcome::Example(row)), false) => {
                compared += 1;
                let (want_ids, want_labels) = (ids::<u32>(&case["input_ids"]), ids::<i32>(&case["labels"]));
                if row.example.input_ids != want_ids {
                    failures.push(format!("{label}: input_ids: {}", first_difference(&row.example.input_ids, &want_ids)));
                } else if row.example.labels != want_labels {
                    failures.push(format!("{label}: labels: {}", first_difference(&row.example.labels, &want_labels)));
                }
            }
        }
    }
    println!("encode parity: {} cases, {compared} compared, {excluded} excluded, {} mismatches", cases.len(), failures.len());
    assert!(failures.is_empty(), "{} of {} cases differ from the Python reference:\n{}", failures.len(), cases.len(), failures.join("\n"));
}
