//! Parity with transformers' `apply_chat_template`: every case in
//! `tests/fixtures/render/render_parity.json` (written by `gen_render_fixtures.py` with
//! transformers 5.24.0 over 72 TRL templates and 8 tokenizer templates) must render to the same
//! bytes, the same token ids, the same assistant mask and generation spans, or fail where
//! transformers raised. Needs `scripts/fetch-assets.sh` to have fetched the real tokenizers.

use std::collections::BTreeMap;
use std::path::Path;

use crate::common::{assets, conversations_by_id, fixture, frozen_time, root};

use serde_json::{Map, Value};
use sft_data::template::{special_tokens, ChatTemplate, Clock, RenderArgs};
use sft_data::tokens::TextTokenizer;

fn template_source(assets: &Path, name: &str) -> String {
    if let Some(file) = name.strip_prefix("trl/") {
        return std::fs::read_to_string(assets.join("trl_chat_templates").join(file)).expect("trl template");
    }
    let tok = name.strip_prefix("tokenizer/").expect("template kind");
    let dir = assets.join("tokenizers").join(tok);
    if let Ok(s) = std::fs::read_to_string(dir.join("chat_template.jinja")) {
        return s;
    }
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap()).unwrap();
    cfg["chat_template"].as_str().expect("tokenizer has a template").to_string()
}

#[test]
fn special_tokens_match_transformers_special_tokens_map() {
    let fx = fixture("render/render_parity.json");
    let assets = assets();
    for (name, info) in fx["tokenizers"].as_object().unwrap() {
        let ours = special_tokens(&assets.join("tokenizers").join(name)).unwrap();
        let theirs = info["template_vars"].as_object().unwrap();
        assert_eq!(&ours, theirs, "template variables for tokenizer {name}");
    }
}

#[test]
fn every_case_matches_transformers() {
    let fx = fixture("render/render_parity.json");
    let assets = assets();
    let frozen = frozen_time(&fx);
    let convs = conversations_by_id(&fx);
    let mut templates: BTreeMap<String, Result<ChatTemplate, String>> = BTreeMap::new();
    let mut tokenizers: BTreeMap<String, (TextTokenizer, Map<String, Value>)> = BTreeMap::new();
    let mut failures: Vec<String> = Vec::new();
    let (mut texts, mut ids, mut masks, mut errors) = (0, 0, 0, 0);
    let cases = fx["cases"].as_array().unwrap();
    for case in cases {
        let tname = case["template"].as_str().unwrap();
        let tok = case["tokenizer"].as_str().unwrap();
        let conv = convs[case["conversation"].as_str().unwrap()];
        let agp = case["add_generation_prompt"].as_bool().unwrap();
        let label = format!("{tname} × {} (agp={agp})", conv["id"].as_str().unwrap());
        let template = templates
            .entry(tname.to_string())
            .or_insert_with(|| ChatTemplate::new(tname, &template_source(&assets, tname), Clock::Fixed(frozen)).map_err(|e| e.to_string()));
        let (tokenizer, vars) = tokenizers.entry(tok.to_string()).or_insert_with(|| {
            let dir = assets.join("tokenizers").join(tok);
            (TextTokenizer::from_dir(&dir).unwrap(), special_tokens(&dir).unwrap())
        });
        let args = RenderArgs {
            add_generation_prompt: agp,
            continue_final_message: conv["continue_final_message"].as_bool().unwrap_or(false),
            template_vars: vars.clone(),
            kwargs: conv.get("kwargs").and_then(Value::as_object).cloned().unwrap_or_default(),
        };
        let ours = template.as_ref().map_err(Clone::clone).and_then(|t| {
            let messages = conv["messages"].as_array().unwrap();
            t.render_messages(messages, conv.get("tools").filter(|v| !v.is_null()), conv.get("documents").filter(|v| !v.is_null()), &args)
                .map_err(|e| e.to_string())
        });
        match (&ours, case["text"].as_str()) {
            (Err(_), None) => {
                errors += 1;
                continue;
            }
            (Ok(r), None) => {
                failures.push(format!("{label}: transformers raised {:?} but we rendered {:?}", case["error"], r.text));
                continue;
            }
            (Err(e), Some(_)) => {
                failures.push(format!("{label}: we failed: {e}"));
                continue;
            }
            (Ok(r), Some(want)) if r.text != want => {
                let at = r.text.chars().zip(want.chars()).take_while(|(a, b)| a == b).count();
                let ctx = |s: &str| s.chars().skip(at.saturating_sub(30)).take(80).collect::<String>();
                failures.push(format!("{label}: text differs at char {at}:\n   ours: {:?}\n   want: {:?}", ctx(&r.text), ctx(want)));
                continue;
            }
            (Ok(_), Some(_)) => texts += 1,
        }
        let rendered = ours.unwrap();
        if let Some(want) = case["generation_spans"].as_array() {
            let want: Vec<(usize, usize)> =
                want.iter().map(|s| (s[0].as_u64().unwrap() as usize, s[1].as_u64().unwrap() as usize)).collect();
            if rendered.generation_spans != want {
                failures.push(format!("{label}: generation spans {:?}, want {want:?}", rendered.generation_spans));
            }
        }
        if let Some(want_ids) = case["input_ids"].as_array() {
            let t = tokenizer.encode(&rendered.text, &rendered.generation_spans).unwrap();
            let want_ids: Vec<u32> = want_ids.iter().map(|v| v.as_u64().unwrap() as u32).collect();
            if t.input_ids != want_ids {
                failures.push(format!("{label}: input_ids differ ({} vs {} tokens)", t.input_ids.len(), want_ids.len()));
            } else {
                ids += 1;
            }
            if let Some(want_mask) = case["assistant_mask"].as_array() {
                let want_mask: Vec<u8> = want_mask.iter().map(|v| v.as_u64().unwrap() as u8).collect();
                if t.assistant_mask != want_mask {
                    failures.push(format!("{label}: assistant_mask differs"));
                } else {
                    masks += 1;
                }
            }
        }
    }
    eprintln!(
        "render parity: {} cases: {texts} texts equal, {ids} input_ids equal, {masks} assistant masks equal, {errors} errors where transformers raised; {} failures",
        cases.len(),
        failures.len()
    );
    let report = root().join("target/render_parity_failures.txt");
    let _ = std::fs::write(&report, failures.join("\n"));
    for f in failures.iter().take(40) {
        eprintln!("- {f}");
    }
    assert!(failures.is_empty(), "{} of {} cases differ from transformers", failures.len(), cases.len());
}
