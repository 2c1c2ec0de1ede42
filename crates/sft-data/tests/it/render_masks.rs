//! Assistant masks on every case of `tests/fixtures/render/render_parity.json` (issue 21):
//! `sft render --tokenize` finds a mask for every row transformers renders, prefix rendering
//! finds the spans the Python reference (`tests/fixtures/prefix_spans.py`) finds, and on a
//! template TRL ships with a `*_training.jinja` twin that renders the same text, the mask of the
//! plain template equals transformers' `{% generation %}` mask of the twin except at the turn
//! boundaries `sft_data::template`'s renderer documents (counted per kind and bounded).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value};
use sft_data::conversation::{drop_null_keys, Conversation, Message, RowRef};
use sft_data::template::{char_ranges, Clock, Renderer, Spans, TemplateChoice};
use sft_data::tokens::TextTokenizer;

use crate::common::{assets, conversations_by_id, fixture, frozen_time};

/// The fixture's conversation as sft reads it (null keys dropped, as transformers does).
fn conversation(c: &Value) -> Conversation {
    let messages = c["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let fields = drop_null_keys(m.as_object().unwrap());
            Message { role: fields["role"].as_str().unwrap().to_string(), fields }
        })
        .collect();
    let present = |k: &str| c.get(k).filter(|v| !v.is_null()).cloned();
    Conversation {
        source: RowRef { file: c["id"].as_str().unwrap().into(), row: 1 },
        messages,
        tools: present("tools"),
        documents: present("documents"),
        shape: sft_data::conversation::Shape::Chat,
    }
}

/// Renderers, tokenizers and conversations for the fixture's cases.
struct Cases {
    fx: Value,
    renderers: BTreeMap<String, Renderer>,
    tokenizers: BTreeMap<String, TextTokenizer>,
}

/// One case rendered by sft: the text and the spans (or why there are none).
struct Ours {
    text: String,
    spans: Result<Spans, String>,
}

impl Cases {
    fn load() -> Self {
        Cases { fx: fixture("render/render_parity.json"), renderers: BTreeMap::new(), tokenizers: BTreeMap::new() }
    }

    /// Renders `case` as `sft render --tokenize` does, with its flags.
    fn render(&mut self, case: &Value) -> Ours {
        let assets = assets();
        let frozen = frozen_time(&self.fx);
        let c = conversations_by_id(&self.fx)[case["conversation"].as_str().unwrap()];
        let (template, tok) = (case["template"].as_str().unwrap(), case["tokenizer"].as_str().unwrap());
        let kwargs = c["kwargs"].as_object().cloned().unwrap_or_default();
        let key = format!("{template}|{tok}|{}", Value::Object(kwargs.clone()));
        let r = self.renderers.entry(key).or_insert_with(|| renderer(&assets, template, tok, &kwargs, frozen));
        let agp = case["add_generation_prompt"].as_bool().unwrap();
        let cfm = c["continue_final_message"].as_bool().unwrap_or(false);
        let (rendered, spans) = r.render_with_spans_for(&conversation(c), agp, cfm).unwrap();
        Ours { text: rendered.text, spans: spans.map_err(|e| e.to_string()) }
    }

    fn tokenizer(&mut self, name: &str) -> &TextTokenizer {
        self.tokenizers.entry(name.to_string()).or_insert_with(|| TextTokenizer::from_dir(&assets().join("tokenizers").join(name)).unwrap())
    }
}

/// A renderer for a fixture template (`trl/<file>` or `tokenizer/<name>`) with a tokenizer's
/// special tokens, the frozen clock and a conversation's keyword arguments.
fn renderer(assets: &Path, template: &str, tokenizer: &str, kwargs: &Map<String, Value>, frozen: chrono::NaiveDateTime) -> Renderer {
    let path = template.strip_prefix("trl/").map(|f| assets.join("trl_chat_templates").join(f).display().to_string());
    let choice = TemplateChoice { template: path, clock: Clock::Fixed(frozen), ..Default::default() };
    Renderer::new(Some(&assets.join("tokenizers").join(tokenizer)), &choice, kwargs.clone()).unwrap()
}

fn label(case: &Value) -> String {
    format!("{} × {} (agp={})", case["template"].as_str().unwrap(), case["conversation"].as_str().unwrap(), case["add_generation_prompt"])
}

fn pairs(spans: &Value) -> Vec<(usize, usize)> {
    spans.as_array().unwrap().iter().map(|s| (s[0].as_u64().unwrap() as usize, s[1].as_u64().unwrap() as usize)).collect()
}

#[test]
fn every_case_transformers_renders_gets_the_mask_the_reference_finds() {
    let mut cases = Cases::load();
    let all = cases.fx["cases"].as_array().unwrap().clone();
    let mut refused: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut differ = Vec::new();
    let (mut masked, mut checked) = (0, 0);
    for case in all.iter().filter(|c| !c["text"].is_null()) {
        let ours = cases.render(case);
        assert_eq!(ours.text, case["text"].as_str().unwrap(), "{}", label(case));
        let spans = match ours.spans {
            Ok(s) => s,
            Err(e) => {
                refused.entry(case["template"].as_str().unwrap()).or_default().push(format!("{}: {e}", label(case)));
                continue;
            }
        };
        masked += 1;
        // Templates without {% generation %} carry the reference's spans (null where it found none).
        let Some(want) = case.get("prefix_spans") else { continue };
        assert!(!want.is_null(), "{}: the Python reference finds no spans", label(case));
        checked += 1;
        if char_ranges(&spans) != pairs(want) {
            differ.push(format!("{}: spans {:?}, reference {want}", label(case), char_ranges(&spans)));
        }
    }
    let total: usize = refused.values().map(Vec::len).sum();
    eprintln!("masks: {masked} cases masked ({checked} by prefix rendering, against the reference), {total} refused");
    for (t, rows) in &refused {
        eprintln!("  {t}: {} refused, e.g. {}", rows.len(), rows[0]);
    }
    assert_eq!(total, 0, "{total} cases transformers renders get no mask");
    assert!(checked > 1200, "only {checked} cases carry reference spans");
    assert!(differ.is_empty(), "{} cases differ from the reference:\n{}", differ.len(), differ.join("\n"));
}

/// Where a differing character run `[a, b)` of two span sets sits: at the start of a turn (a span
/// of either side starts at `a` or `b`) or at its end.
fn boundary(a: usize, b: usize, ours: &[(usize, usize)], twin: &[(usize, usize)]) -> Option<&'static str> {
    let all = || ours.iter().chain(twin).filter(|(s, e)| e > s);
    if all().any(|&(s, _)| s == a || s == b) {
        Some("start")
    } else if all().any(|&(_, e)| e == a || e == b) {
        Some("end")
    } else {
        None
    }
}

/// The runs `[a, b)` of characters one span set covers and the other does not, with the side
/// that covers them.
fn differing_runs(len: usize, ours: &[(usize, usize)], twin: &[(usize, usize)]) -> Vec<(usize, usize, bool)> {
    let cover = |spans: &[(usize, usize)]| {
        let mut c = vec![false; len];
        spans.iter().for_each(|&(s, e)| c[s..e].iter_mut().for_each(|x| *x = true));
        c
    };
    let (o, t) = (cover(ours), cover(twin));
    let mut runs = Vec::new();
    let mut k = 0;
    while k < len {
        if o[k] == t[k] {
            k += 1;
            continue;
        }
        let j = (k..len).find(|&j| o[j] == t[j] || o[j] != o[k]).unwrap_or(len);
        runs.push((k, j, o[k]));
        k = j;
    }
    runs
}

/// At most this many characters, and tokens, differ at one turn boundary.
const BOUNDARY_CHARS: usize = 24;
const BOUNDARY_TOKENS: usize = 8;

#[test]
fn plain_template_masks_equal_the_training_twins_but_at_turn_boundaries() {
    let mut cases = Cases::load();
    let all = cases.fx["cases"].as_array().unwrap().clone();
    let by_key: BTreeMap<(String, String, bool), &Value> = all
        .iter()
        .map(|c| {
            (
                (
                    c["template"].as_str().unwrap().into(),
                    c["conversation"].as_str().unwrap().into(),
                    c["add_generation_prompt"].as_bool().unwrap(),
                ),
                c,
            )
        })
        .collect();
    let (mut compared, mut other_text, mut equal, mut turns, mut vs_transformers) = (0, 0, 0, 0, 0);
    let mut kinds: BTreeMap<(&str, &str, String), (usize, usize)> = BTreeMap::new();
    let mut failures = Vec::new();
    for ((template, conv, agp), case) in &by_key {
        let Some(stem) = template.strip_prefix("trl/").and_then(|t| t.strip_suffix(".jinja")).filter(|t| !t.ends_with("_training")) else {
            continue;
        };
        let Some(twin) = by_key.get(&(format!("trl/{stem}_training.jinja"), conv.clone(), *agp)) else { continue };
        if case["text"].is_null() || twin["generation_spans"].is_null() {
            continue;
        }
        if twin["text"] != case["text"] {
            other_text += 1;
            continue;
        }
        compared += 1;
        let ours = cases.render(case);
        let text = ours.text;
        let spans = char_ranges(&ours.spans.unwrap());
        let twin_spans = pairs(&twin["generation_spans"]);
        turns += spans.len();
        let tok = cases.tokenizer(case["tokenizer"].as_str().unwrap());
        let our_mask = tok.encode(&text, &spans).unwrap().assistant_mask;
        // transformers' own token mask where the fixture has it (the tokenizer is the family's).
        let twin_mask: Vec<u8> = match twin["assistant_mask"].as_array() {
            Some(m) => {
                vs_transformers += 1;
                m.iter().map(|v| v.as_u64().unwrap() as u8).collect()
            }
            None => tok.encode(&text, &twin_spans).unwrap().assistant_mask,
        };
        let runs = differing_runs(text.chars().count(), &spans, &twin_spans);
        let run_ranges: Vec<(usize, usize)> = runs.iter().map(|&(a, b, _)| (a, b)).collect();
        let in_runs = tok.encode(&text, &run_ranges).unwrap().assistant_mask;
        let stray = (0..our_mask.len()).filter(|&k| our_mask[k] != twin_mask[k] && in_runs[k] == 0).count();
        if stray > 0 {
            failures.push(format!("{template} × {conv} (agp={agp}): {stray} tokens differ away from any boundary run"));
        }
        if runs.is_empty() && our_mask == twin_mask {
            equal += 1;
        }
        let chars: Vec<char> = text.chars().collect();
        for &(a, b, ours_trains) in &runs {
            let piece: String = chars[a..b].iter().collect();
            let tokens = tok.encode(&text, &[(a, b)]).unwrap().assistant_mask.iter().filter(|&&m| m == 1).count();
            let Some(kind) = boundary(a, b, &spans, &twin_spans) else {
                failures.push(format!("{template} × {conv} (agp={agp}): {piece:?} differs inside a turn"));
                continue;
            };
            if b - a > BOUNDARY_CHARS || tokens > BOUNDARY_TOKENS {
                failures.push(format!("{template} × {conv} (agp={agp}): {piece:?} ({tokens} tokens) at a turn {kind} is too long"));
            }
            let entry = kinds.entry((kind, if ours_trains { "sft trains" } else { "twin trains" }, piece)).or_default();
            entry.0 += 1;
            entry.1 += tokens;
        }
    }
    eprintln!(
        "twins: {compared} cases with the same text ({vs_transformers} against transformers' token mask), {equal} equal; \
         {other_text} cases where the twin renders other text; {turns} turns"
    );
    for ((kind, side, piece), (n, tokens)) in &kinds {
        eprintln!("  turn {kind}, {side} {piece:?}: {n} times, {tokens} tokens");
    }
    assert!(failures.is_empty(), "{} differences are not at a turn boundary:\n{}", failures.len(), failures.join("\n"));
    let runs: usize = kinds.values().map(|(n, _)| n).sum();
    assert!(runs <= 2 * turns, "{runs} boundary runs for {turns} turns");
    assert!(compared > 600 && vs_transformers > 300, "only {compared} twin cases compared ({vs_transformers} against transformers)");
}
