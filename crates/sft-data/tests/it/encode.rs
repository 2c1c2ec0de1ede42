//! The encode stage on real tokenizers: every masking strategy, the EOS/BOS rules, both
//! truncation policies, per-message weight/train, exclusions, and the agreement of marker-based
//! masking with prefix-rendered assistant spans.

use std::path::PathBuf;

use serde_json::{Map, Value};
use sft_data::conversation::{Conversation, Message, RowRef};
use sft_data::encode::{
    encode_all, AppendEos, EncodeError, EncodeOptions, Encoded, Encoder, Example, ExcludeReason, Markers, Masking, Outcome, Truncation,
    IGNORE_INDEX,
};
use sft_data::template::{Renderer, TemplateChoice};
use sft_data::tokens::TextTokenizer;

use crate::common::assets;

struct Setup {
    renderer: Renderer,
    tokenizer: TextTokenizer,
}

/// `template`: a built-in name or a template file path.
fn setup(tokenizer: &str, template: &str, map_eos_token: bool) -> Setup {
    let dir = assets().join("tokenizers").join(tokenizer);
    let choice = TemplateChoice { template: Some(template.into()), map_eos_token, ..Default::default() };
    Setup { renderer: Renderer::new(Some(&dir), &choice, Map::new()).unwrap(), tokenizer: TextTokenizer::from_dir(&dir).unwrap() }
}

impl Setup {
    fn id(&self, token: &str) -> u32 {
        self.tokenizer.token_to_id(token).unwrap()
    }

    fn ids(&self, text: &str) -> Vec<u32> {
        self.tokenizer.encode(text, &[]).unwrap().input_ids
    }

    fn all(&self, convs: &[Conversation], options: &EncodeOptions) -> Result<Encoded, EncodeError> {
        encode_all(convs, options, &self.renderer, &self.tokenizer)
    }

    fn one(&self, conv: &Conversation, options: &EncodeOptions) -> Outcome {
        Encoder::new(&self.renderer, &self.tokenizer, options).unwrap().encode(conv).unwrap()
    }

    fn example(&self, conv: &Conversation, options: &EncodeOptions) -> Example {
        match self.one(conv, options) {
            Outcome::Example(row) => row.example,
            Outcome::Excluded(ex) => panic!("{ex}"),
        }
    }

    fn excluded(&self, conv: &Conversation, options: &EncodeOptions) -> ExcludeReason {
        match self.one(conv, options) {
            Outcome::Excluded(ex) => ex.reason,
            Outcome::Example(row) => panic!("expected an exclusion, got {:?}", row.example),
        }
    }
}

fn conv_at(row: usize, messages: Vec<Message>) -> Conversation {
    Conversation {
        source: RowRef { file: "enc.jsonl".into(), row },
        messages,
        tools: None,
        documents: None,
        shape: sft_data::conversation::Shape::Chat,
    }
}

fn conv(turns: &[(&str, &str)]) -> Conversation {
    conv_at(1, turns.iter().map(|(r, c)| Message::text(r, c)).collect())
}

fn with(mut m: Message, key: &str, v: Value) -> Message {
    m.fields.insert(key.into(), v);
    m
}

/// System + three exchanges, no reasoning.
fn dialogue() -> Conversation {
    conv(&[
        ("system", "You are terse."),
        ("user", "Capital of France?"),
        ("assistant", "Paris."),
        ("user", "And of Italy?"),
        ("assistant", "Rome, since 1871."),
        ("user", "Thanks!"),
        ("assistant", "You're welcome."),
    ])
}

/// The maximal runs of trained label values.
fn runs(e: &Example) -> Vec<Vec<u32>> {
    let mut out: Vec<Vec<u32>> = Vec::new();
    let mut open = false;
    for &l in &e.labels {
        match (l == IGNORE_INDEX, open) {
            (true, _) => open = false,
            (false, true) => out.last_mut().unwrap().push(l as u32),
            (false, false) => {
                out.push(vec![l as u32]);
                open = true;
            }
        }
    }
    out
}

fn labels_consistent(e: &Example) {
    assert_eq!(e.input_ids.len(), e.labels.len());
    for (&id, &l) in e.input_ids.iter().zip(&e.labels) {
        assert!(l == IGNORE_INDEX || l as u32 == id);
    }
}

fn temp_template(name: &str, source: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sft-encode-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, source).unwrap();
    path
}

fn markers(instruction: &str, response: &str) -> EncodeOptions {
    let m = Markers { instruction_part: instruction.into(), response_part: response.into() };
    EncodeOptions { masking: Masking::Markers(m), ..Default::default() }
}

const CHATML_MARKERS: (&str, &str) = ("<|im_start|>user\n", "<|im_start|>assistant\n");
const LLAMA3_MARKERS: (&str, &str) = ("<|start_header_id|>user<|end_header_id|>\n\n", "<|start_header_id|>assistant<|end_header_id|>\n\n");

#[test]
fn assistant_masking_trains_each_assistant_turn_with_its_end_of_turn() {
    let s = setup("qwen2_5", "chatml", false);
    let e = s.example(&dialogue(), &EncodeOptions::default());
    labels_consistent(&e);
    let want: Vec<Vec<u32>> =
        ["Paris.<|im_end|>\n", "Rome, since 1871.<|im_end|>\n", "You're welcome.<|im_end|>\n"].iter().map(|t| s.ids(t)).collect();
    assert_eq!(runs(&e), want);
    // Qwen's EOS is <|im_end|>, which closes every turn: auto appends nothing.
    assert_eq!(e.input_ids, s.ids(&s.renderer.render(&dialogue(), false, false).unwrap().text));
}

#[test]
fn last_masking_trains_only_the_final_assistant_turn() {
    let s = setup("qwen2_5", "chatml", false);
    let e = s.example(&dialogue(), &EncodeOptions { masking: Masking::Last, ..Default::default() });
    assert_eq!(runs(&e), vec![s.ids("You're welcome.<|im_end|>\n")]);
}

#[test]
fn all_masking_trains_every_token() {
    let s = setup("qwen2_5", "chatml", false);
    let e = s.example(&dialogue(), &EncodeOptions { masking: Masking::All, ..Default::default() });
    assert_eq!(e.labels, e.input_ids.iter().map(|&i| i as i32).collect::<Vec<_>>());
    // A conversation without assistant turns still trains under `all`.
    let user_only = conv(&[("user", "hello")]);
    assert!(matches!(s.one(&user_only, &EncodeOptions { masking: Masking::All, ..Default::default() }), Outcome::Example(_)));
    assert_eq!(s.excluded(&user_only, &EncodeOptions::default()), ExcludeReason::NoTrainedTokens);
}

#[test]
fn weight_zero_and_train_false_turn_a_message_off() {
    let s = setup("qwen2_5", "chatml", false);
    let msgs = |w: Option<(usize, &str, Value)>| {
        let mut c = dialogue();
        if let Some((i, k, v)) = w {
            c.messages[i] = with(c.messages[i].clone(), k, v);
        }
        c
    };
    let opts = EncodeOptions::default();
    let weight0 = s.example(&msgs(Some((2, "weight", Value::from(0)))), &opts);
    assert_eq!(runs(&weight0), vec![s.ids("Rome, since 1871.<|im_end|>\n"), s.ids("You're welcome.<|im_end|>\n")]);
    let train_false = s.example(&msgs(Some((6, "train", Value::Bool(false)))), &opts);
    assert_eq!(runs(&train_false), vec![s.ids("Paris.<|im_end|>\n"), s.ids("Rome, since 1871.<|im_end|>\n")]);
    // weight 1 changes nothing.
    assert_eq!(s.example(&msgs(Some((4, "weight", Value::from(1)))), &opts), s.example(&dialogue(), &opts));
    // `last` with the last turn switched off trains nothing.
    let last = EncodeOptions { masking: Masking::Last, ..Default::default() };
    assert_eq!(s.excluded(&msgs(Some((6, "weight", Value::from(0)))), &last), ExcludeReason::NoTrainedTokens);
    // A weight that is neither 0 nor 1 is an error naming row and message.
    let bad = Encoder::new(&s.renderer, &s.tokenizer, &opts).unwrap().encode(&msgs(Some((4, "weight", Value::from(0.3)))));
    assert!(bad.unwrap_err().to_string().starts_with("enc.jsonl:1: message 5: weight is 0.3"));
}

#[test]
fn markers_agree_with_prefix_spans_on_chatml_and_llama3() {
    for (tok, template, (instruction, response)) in [("qwen2_5", "chatml", CHATML_MARKERS), ("llama3", "llama-3", LLAMA3_MARKERS)] {
        let s = setup(tok, template, false);
        for c in [dialogue(), conv(&[("user", "hi"), ("assistant", "hello")])] {
            let by_spans = s.example(&c, &EncodeOptions::default());
            let by_markers = s.example(&c, &markers(instruction, response));
            assert_eq!(by_markers, by_spans, "{template} with {tok}");
            assert_eq!(runs(&by_spans).len(), c.messages.iter().filter(|m| m.is_assistant()).count());
        }
    }
}

#[test]
fn markers_and_prefix_spans_agree_where_earlier_turns_drop_reasoning_and_a_missing_marker_excludes_the_row() {
    // Like Qwen3: earlier assistant turns lose their reasoning once a later turn follows.
    let path = temp_template(
        "drops.jinja",
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' and not loop.last %}{{ m.content.split('</think>')[-1] }}{% else %}{{ m.content }}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    );
    let s = setup("qwen2_5", path.to_str().unwrap(), false);
    let c = conv(&[("user", "q"), ("assistant", "<think>r</think>a"), ("user", "q2"), ("assistant", "b")]);
    let e = s.example(&c, &markers(CHATML_MARKERS.0, CHATML_MARKERS.1));
    assert_eq!(runs(&e), vec![s.ids("a<|im_end|>\n"), s.ids("b<|im_end|>\n")]);
    assert_eq!(s.example(&c, &EncodeOptions::default()), e);
    let reason = s.excluded(&c, &markers(CHATML_MARKERS.0, "<|im_start|>model\n"));
    assert_eq!(reason, ExcludeReason::MarkersNotFound { response_part: "<|im_start|>model\n".into() });
}

#[test]
fn eos_auto_appends_only_when_the_turns_do_not_end_with_it() {
    // chatml + Qwen: <|im_end|> is the EOS and closes every turn.
    let qwen = setup("qwen2_5", "chatml", false);
    let eos = qwen.id("<|im_end|>");
    let auto = qwen.example(&dialogue(), &EncodeOptions::default());
    assert_ne!(auto.input_ids.last(), Some(&eos));
    let always = qwen.example(&dialogue(), &EncodeOptions { append_eos: AppendEos::Always, ..Default::default() });
    assert_eq!(always.input_ids.len(), auto.input_ids.len() + 1);
    assert_eq!((always.input_ids.last(), always.labels.last()), (Some(&eos), Some(&(eos as i32))));

    // llama-3 + Llama 3: turns end with <|eot_id|>, the EOS is <|end_of_text|>.
    let llama = setup("llama3", "llama-3", false);
    let end_of_text = llama.id("<|end_of_text|>");
    let auto = llama.example(&dialogue(), &EncodeOptions::default());
    let never = llama.example(&dialogue(), &EncodeOptions { append_eos: AppendEos::Never, ..Default::default() });
    assert_eq!(auto.input_ids[..auto.input_ids.len() - 1], never.input_ids[..]);
    assert_eq!((auto.input_ids.last(), auto.labels.last()), (Some(&end_of_text), Some(&(end_of_text as i32))));
    // Always appends once; a text already ending in the EOS gets none.
    let always = llama.example(&dialogue(), &EncodeOptions { append_eos: AppendEos::Always, ..Default::default() });
    assert_eq!(always, auto);
    // With map_eos_token the EOS is <|eot_id|>: auto appends nothing.
    let mapped = setup("llama3", "llama-3", true);
    assert_eq!(mapped.example(&dialogue(), &EncodeOptions::default()), never);
}

#[test]
fn examples_that_never_train_the_eos_are_counted() {
    let llama = setup("llama3", "llama-3", false);
    let rows = [dialogue(), conv(&[("user", "hi"), ("assistant", "hello")])];
    let never = llama.all(&rows, &EncodeOptions { append_eos: AppendEos::Never, ..Default::default() }).unwrap();
    assert_eq!(never.stats.eos_never_trained, 2);
    assert!(never.stats.eos_warning().unwrap().starts_with("2 of 2 examples never train the EOS"));
    let auto = llama.all(&rows, &EncodeOptions::default()).unwrap();
    assert_eq!((auto.stats.eos_never_trained, auto.stats.eos_warning()), (0, None));
    // Qwen's <|im_end|> trains inside the turns.
    assert_eq!(setup("qwen2_5", "chatml", false).all(&rows, &EncodeOptions::default()).unwrap().stats.eos_never_trained, 0);
}

#[test]
fn bos_appears_exactly_once() {
    let count = |e: &Example, bos: u32| e.input_ids.iter().filter(|&&i| i == bos).count();
    let opts = EncodeOptions::default();
    // llama-3 renders bos_token; Llama 3's post-processor adds none, Llama 3.1's adds one.
    for tok in ["llama3", "llama3_1"] {
        let s = setup(tok, "llama-3", false);
        let bos = s.id("<|begin_of_text|>");
        let e = s.example(&dialogue(), &opts);
        assert_eq!((count(&e, bos), e.input_ids[0], e.labels[0]), (1, bos, IGNORE_INDEX), "{tok}");
    }
    // chatml renders no BOS: Llama 3.1's post-processor would add one, so it is prepended once.
    let s = setup("llama3_1", "chatml", false);
    let bos = s.id("<|begin_of_text|>");
    let e = s.example(&dialogue(), &EncodeOptions { append_eos: AppendEos::Never, ..Default::default() });
    assert_eq!((count(&e, bos), e.input_ids[0], e.labels[0]), (1, bos, IGNORE_INDEX));
    assert_eq!(e.input_ids[1..], s.ids(&s.renderer.render(&dialogue(), false, false).unwrap().text)[..]);
    // Llama 3's post-processor adds none, so neither do we.
    let s = setup("llama3", "chatml", false);
    assert_eq!(count(&s.example(&dialogue(), &opts), s.id("<|begin_of_text|>")), 0);
}

#[test]
fn truncation_drop_excludes_and_right_cuts() {
    let s = setup("qwen2_5", "chatml", false);
    let full = s.example(&dialogue(), &EncodeOptions::default());
    let n = full.input_ids.len();
    let max = n - 3;
    let drop = EncodeOptions { max_seq_length: Some(max), truncation: Truncation::Drop, ..Default::default() };
    assert_eq!(s.excluded(&dialogue(), &drop), ExcludeReason::TooLong { tokens: n, max });
    let fits = EncodeOptions { max_seq_length: Some(n), ..drop.clone() };
    assert_eq!(s.example(&dialogue(), &fits), full);

    let right = EncodeOptions { max_seq_length: Some(max), truncation: Truncation::Right, ..Default::default() };
    let rows = [dialogue(), conv_at(2, vec![Message::text("user", "hi"), Message::text("assistant", "hello")])];
    let out = s.all(&rows, &right).unwrap();
    let cut = &out.examples[0];
    assert_eq!((&cut.input_ids[..], &cut.labels[..]), (&full.input_ids[..max], &full.labels[..max]));
    assert_eq!(out.stats.truncated_rows, 1);
    assert_eq!(out.stats.trained_tokens_lost, full.trained_tokens() - cut.trained_tokens());
    assert_eq!(out.stats.trained_tokens_lost, 3); // "welcome.", <|im_end|>, "\n" all train

    let dropped = s.all(&rows, &drop).unwrap();
    assert_eq!((dropped.stats.dropped, dropped.stats.examples, dropped.excluded[0].source.row), (1, 1, 1));
    // Cutting every trained token excludes the row.
    let tiny = EncodeOptions { max_seq_length: Some(4), truncation: Truncation::Right, ..Default::default() };
    assert!(matches!(s.excluded(&dialogue(), &tiny), ExcludeReason::TruncatedAway { max: 4, .. }));
}

#[test]
fn encode_all_keeps_input_order_and_counts() {
    let s = setup("qwen2_5", "chatml", false);
    let rows: Vec<Conversation> = (1..=40)
        .map(|i| {
            let answer = "word ".repeat(i % 7);
            let mut msgs = vec![Message::text("user", &format!("question {i}")), Message::text("assistant", &answer)];
            if i % 5 == 0 {
                msgs.pop(); // nothing to train
            }
            conv_at(i, msgs)
        })
        .collect();
    let out = s.all(&rows, &EncodeOptions::default()).unwrap();
    let encoder = Encoder::new(&s.renderer, &s.tokenizer, &EncodeOptions::default()).unwrap();
    let sequential: Vec<Example> = rows
        .iter()
        .filter_map(|c| match encoder.encode(c).unwrap() {
            Outcome::Example(r) => Some(r.example),
            Outcome::Excluded(_) => None,
        })
        .collect();
    assert_eq!(out.examples, sequential);
    assert_eq!(out.excluded.iter().map(|e| e.source.row).collect::<Vec<_>>(), vec![5, 10, 15, 20, 25, 30, 35, 40]);
    assert_eq!((out.stats.rows, out.stats.examples), (40, 32));
    assert_eq!(out.stats.tokens, sequential.iter().map(|e| e.input_ids.len()).sum::<usize>());
    assert_eq!(out.stats.trained_tokens, sequential.iter().map(Example::trained_tokens).sum::<usize>());
}

#[test]
fn template_errors_exclude_and_nothing_left_is_an_error_listing_reasons() {
    let path = temp_template(
        "raises.jinja",
        "{% for m in messages %}{% if m.role == 'tool' %}{{ raise_exception('tool turns are not supported') }}{% endif %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}",
    );
    let s = setup("qwen2_5", path.to_str().unwrap(), false);
    let tool = conv_at(1, vec![Message::text("user", "q"), Message::text("tool", "x"), Message::text("assistant", "a")]);
    assert!(
        matches!(s.excluded(&tool, &EncodeOptions::default()), ExcludeReason::Template(m) if m.contains("tool turns are not supported"))
    );
    let rows = [tool, conv_at(2, vec![Message::text("user", "q")]), conv_at(3, vec![Message::text("user", "q")])];
    let err = s.all(&rows, &EncodeOptions::default()).unwrap_err().to_string();
    assert!(err.starts_with("no training example left: all 3 rows were excluded"), "{err}");
    assert!(err.contains("1 chat template failed (first enc.jsonl:1"), "{err}");
    assert!(err.contains("2 no trained token (first enc.jsonl:2"), "{err}");
}

#[test]
fn last_masking_needs_blocks_that_pair_with_messages() {
    // Two generation blocks per assistant message: spans cannot be attributed.
    let path = temp_template(
        "twice.jinja",
        "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}{% generation %}<|im_end|>{% endgeneration %}{% else %}{{ m.content }}{% endif %}{% endfor %}",
    );
    let s = setup("qwen2_5", path.to_str().unwrap(), false);
    let c = conv_at(7, vec![Message::text("user", "q"), Message::text("assistant", "a")]);
    assert!(matches!(s.one(&c, &EncodeOptions::default()), Outcome::Example(_)));
    let err = s.all(&[c], &EncodeOptions { masking: Masking::Last, ..Default::default() }).unwrap_err().to_string();
    assert!(err.starts_with("enc.jsonl:7: masking last needs to know which assistant message"), "{err}");
}

#[test]
fn generation_tags_and_prefix_spans_agree_up_to_where_trl_opens_the_block() {
    let trl = |name: &str| assets().join("trl_chat_templates").join(name).display().to_string();
    let opts = EncodeOptions::default();
    // TRL's llama3 block opens right after the assistant header, as prefix rendering does.
    let tagged = setup("llama3", &trl("llama3_training.jinja"), false);
    assert_eq!(tagged.example(&dialogue(), &opts), setup("llama3", "llama-3", false).example(&dialogue(), &opts));
    // TRL's qwen2_5 block opens before the "\n" that ends `<|im_start|>assistant`: that one
    // token per turn trains with the tags and not with prefix spans; nothing else differs.
    let tagged = setup("qwen2_5", &trl("qwen2_5_training.jinja"), false).example(&dialogue(), &opts);
    let prefix = setup("qwen2_5", "qwen-2.5", false).example(&dialogue(), &opts);
    assert_eq!(tagged.input_ids, prefix.input_ids);
    let newline = setup("qwen2_5", "chatml", false).ids("\n");
    let differ: Vec<usize> = (0..tagged.labels.len()).filter(|&i| tagged.labels[i] != prefix.labels[i]).collect();
    assert_eq!(differ.len(), 3);
    for i in differ {
        assert_eq!(
            (vec![tagged.input_ids[i]], prefix.labels[i], tagged.labels[i] as u32),
            (newline.clone(), IGNORE_INDEX, tagged.input_ids[i])
        );
        assert_ne!(prefix.labels[i + 1], IGNORE_INDEX, "the extra token is the one just before a turn");
    }
}

#[test]
fn bad_options_are_refused_before_any_row() {
    let s = setup("qwen2_5", "chatml", false);
    let empty = EncodeOptions { masking: Masking::Markers(Markers::default()), ..Default::default() };
    assert!(s.all(&[dialogue()], &empty).unwrap_err().to_string().contains("needs both markers"));
    let zero = EncodeOptions { max_seq_length: Some(0), ..Default::default() };
    assert!(s.all(&[dialogue()], &zero).unwrap_err().to_string().contains("max_seq_length must be at least 1"));
}
