//! Which tokens train: the masking strategies (torchtune's train_on_assistant / train_on_last /
//! train_on_all, Unsloth's `train_on_responses_only` markers) and the per-message override
//! (`"weight": 0` or `"train": false` on an assistant message, as axolotl reads them).

use serde_json::Value;

use super::error::{EncodeError, Skip};
use crate::conversation::Conversation;
use crate::template::AssistantSpan;

/// Which tokens of a rendered conversation train.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Masking {
    /// Every assistant turn, end-of-turn token included (the spans of
    /// [`Renderer::assistant_spans`](crate::template::Renderer::assistant_spans)).
    #[default]
    Assistant,
    /// Only the last assistant turn.
    Last,
    /// Every token.
    All,
    /// From the end of each response marker to the start of the next instruction marker.
    Markers(Markers),
}

/// The markers of [`Masking::Markers`] (Unsloth's `instruction_part` / `response_part`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Markers {
    /// Text that opens a user turn, e.g. `<|im_start|>user\n`.
    pub instruction_part: String,
    /// Text that opens an assistant turn, e.g. `<|im_start|>assistant\n`.
    pub response_part: String,
}

/// A masking strategy by name, as flags and config files give it; [`Masking::Markers`] gets its
/// markers from `instruction_part` / `response_part` (see
/// [`EncodeSettings`](super::EncodeSettings)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum MaskingStrategy {
    /// [`Masking::Assistant`].
    #[default]
    Assistant,
    /// [`Masking::Last`].
    Last,
    /// [`Masking::All`].
    All,
    /// [`Masking::Markers`].
    Markers,
}

impl Masking {
    /// The strategy's name (`assistant`, `last`, `all` or `markers`).
    pub fn name(&self) -> &'static str {
        match self {
            Masking::Assistant => "assistant",
            Masking::Last => "last",
            Masking::All => "all",
            Masking::Markers(_) => "markers",
        }
    }
}

impl std::fmt::Display for Masking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether message `index` of `conv` may train by its own fields: `None` when it has neither
/// `weight` nor `train`; `weight` must be 0 or 1 (or a bool), `train` a bool.
pub(crate) fn message_trains(conv: &Conversation, index: usize) -> Result<Option<bool>, EncodeError> {
    let fields = &conv.messages[index].fields;
    let bad = |detail: String| EncodeError::Message { row: conv.source.clone(), message: index + 1, detail };
    let weight = match fields.get("weight") {
        None => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(Value::Number(n)) if n.as_f64() == Some(0.0) => Some(false),
        Some(Value::Number(n)) if n.as_f64() == Some(1.0) => Some(true),
        Some(other) => return Err(bad(format!("weight is {other}; expected 0 (do not train) or 1 (train)"))),
    };
    let train = match fields.get("train") {
        None => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(other) => return Err(bad(format!("train is {other}; expected true or false"))),
    };
    Ok(match (weight, train) {
        (None, None) => None,
        (w, t) => Some(w.unwrap_or(true) && t.unwrap_or(true)),
    })
}

/// The trained character ranges for [`Masking::Assistant`] or [`Masking::Last`], from the
/// assistant spans of the rendered text, with the per-message override applied.
pub(crate) fn assistant_ranges(
    masking: &Masking,
    conv: &Conversation,
    spans: &[AssistantSpan],
    template: &str,
) -> Result<Vec<(usize, usize)>, Skip> {
    let assistants = conv.messages.iter().filter(|m| m.is_assistant()).count();
    let unattributed = |needs: &'static str| EncodeError::Attribution {
        row: conv.source.clone(),
        needs,
        template: template.to_string(),
        spans: spans.len(),
        assistants,
    };
    let chosen: &[AssistantSpan] = match masking {
        Masking::Last => {
            let last = spans.len().saturating_sub(1);
            if spans[last..].iter().any(|s| s.message.is_none()) {
                return Err(unattributed("masking last").into());
            }
            &spans[last..]
        }
        _ => spans,
    };
    let mut overrides = Vec::with_capacity(conv.messages.len());
    for i in 0..conv.messages.len() {
        overrides.push(if conv.messages[i].is_assistant() { message_trains(conv, i)? } else { None });
    }
    let any_override = overrides.iter().any(Option::is_some);
    let mut ranges = Vec::with_capacity(chosen.len());
    for span in chosen {
        match span.message {
            Some(i) if overrides.get(i) == Some(&Some(false)) => {}
            None if any_override => return Err(unattributed("weight 0 / train false").into()),
            _ => ranges.push((span.start, span.end)),
        }
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversation::{Message, RowRef};

    fn conv(messages: Vec<Message>) -> Conversation {
        Conversation {
            source: RowRef { file: "t.jsonl".into(), row: 3 },
            messages,
            tools: None,
            documents: None,
            shape: crate::conversation::Shape::Chat,
        }
    }

    fn with(mut m: Message, key: &str, v: Value) -> Message {
        m.fields.insert(key.into(), v);
        m
    }

    fn span(message: Option<usize>, start: usize, end: usize) -> AssistantSpan {
        AssistantSpan { message, start, end }
    }

    #[test]
    fn strategy_names_are_the_masking_names() {
        let parse = |name: &str| serde_json::from_value::<MaskingStrategy>(Value::String(name.into())).ok();
        let resolved = [Masking::Assistant, Masking::Last, Masking::All, Masking::Markers(Markers::default())];
        for m in resolved {
            let strategy = parse(m.name()).unwrap();
            assert_eq!(serde_json::to_value(strategy).unwrap(), Value::String(m.name().into()));
        }
        assert_eq!(parse("assistants"), None);
        assert_eq!(Masking::default(), Masking::Assistant);
    }

    #[test]
    fn weight_and_train_fields_are_read_strictly() {
        let c = conv(vec![
            Message::text("assistant", "a"),
            with(Message::text("assistant", "b"), "weight", Value::from(0)),
            with(Message::text("assistant", "c"), "train", Value::Bool(false)),
            with(Message::text("assistant", "d"), "weight", Value::from(1.0)),
            with(Message::text("assistant", "e"), "weight", Value::from(0.5)),
            with(Message::text("assistant", "f"), "train", Value::from("no")),
        ]);
        assert_eq!(message_trains(&c, 0).unwrap(), None);
        assert_eq!(message_trains(&c, 1).unwrap(), Some(false));
        assert_eq!(message_trains(&c, 2).unwrap(), Some(false));
        assert_eq!(message_trains(&c, 3).unwrap(), Some(true));
        let e = message_trains(&c, 4).unwrap_err().to_string();
        assert!(e.starts_with("t.jsonl:3: message 5: weight is 0.5"), "{e}");
        assert!(message_trains(&c, 5).unwrap_err().to_string().contains("train is \"no\""));
    }

    #[test]
    fn assistant_keeps_all_spans_but_overridden_ones_and_last_keeps_the_final_one() {
        let c = conv(vec![
            Message::text("user", "q"),
            with(Message::text("assistant", "a"), "weight", Value::from(0)),
            Message::text("user", "q"),
            Message::text("assistant", "b"),
        ]);
        let spans = [span(Some(1), 2, 5), span(Some(3), 8, 11)];
        assert_eq!(assistant_ranges(&Masking::Assistant, &c, &spans, "t").unwrap(), vec![(8, 11)]);
        assert_eq!(assistant_ranges(&Masking::Last, &c, &spans, "t").unwrap(), vec![(8, 11)]);
        let plain = conv(vec![Message::text("assistant", "a"), Message::text("assistant", "b")]);
        let spans = [span(Some(0), 2, 5), span(Some(1), 8, 11)];
        assert_eq!(assistant_ranges(&Masking::Assistant, &plain, &spans, "t").unwrap(), vec![(2, 5), (8, 11)]);
        assert_eq!(assistant_ranges(&Masking::Last, &plain, &spans, "t").unwrap(), vec![(8, 11)]);
        assert_eq!(assistant_ranges(&Masking::Last, &plain, &[], "t").unwrap(), vec![]);
    }

    #[test]
    fn unattributed_spans_are_an_error_only_when_attribution_matters() {
        let plain = conv(vec![Message::text("assistant", "a")]);
        let spans = [span(None, 0, 2), span(None, 4, 6)];
        assert_eq!(assistant_ranges(&Masking::Assistant, &plain, &spans, "t").unwrap(), vec![(0, 2), (4, 6)]);
        let Err(Skip::Fail(e)) = assistant_ranges(&Masking::Last, &plain, &spans, "t") else { panic!("expected an error") };
        assert!(e.to_string().starts_with("t.jsonl:3: masking last needs"), "{e}");
        let weighted = conv(vec![with(Message::text("assistant", "a"), "train", Value::Bool(true))]);
        let Err(Skip::Fail(e)) = assistant_ranges(&Masking::Assistant, &weighted, &spans, "t") else { panic!("expected an error") };
        assert!(e.to_string().contains("weight 0 / train false needs"), "{e}");
    }
}
