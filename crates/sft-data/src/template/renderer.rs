//! A [`Renderer`]: a tokenizer's template set plus the context values it always passes (special
//! tokens, extra keyword arguments), and the assistant spans of a rendered conversation.

use std::borrow::Cow;
use std::path::Path;

use serde_json::{Map, Value as Json};

use super::{
    context_vars, load_template, special_tokens, ChatTemplate, RenderArgs, Rendered, TemplateChoice, TemplateError, TemplateInput,
    TemplateSet,
};
use crate::conversation::Conversation;

/// Renders conversations for one tokenizer and template choice.
#[derive(Debug)]
pub struct Renderer {
    templates: TemplateSet,
    template_vars: Map<String, Json>,
    kwargs: Map<String, Json>,
    /// `template_vars` then `kwargs` as template values, converted once.
    vars: Vec<(String, minijinja::Value)>,
}

/// One assistant turn in a rendered text: its character span `[start, end)` and, when known,
/// the index of the message it renders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssistantSpan {
    /// Index into the conversation's messages; `None` when a template's `{% generation %}`
    /// blocks do not pair one-to-one with its assistant messages.
    pub message: Option<usize>,
    /// First character.
    pub start: usize,
    /// One past the last character.
    pub end: usize,
}

/// The assistant turns of a rendered text, in order.
pub type Spans = Vec<AssistantSpan>;

/// The `(start, end)` pairs of `spans` (what token masking needs).
pub fn char_ranges(spans: &[AssistantSpan]) -> Vec<(usize, usize)> {
    spans.iter().map(|s| (s.start, s.end)).collect()
}

impl Renderer {
    /// Loads the template for `tokenizer_dir` (or the one `choice` names) and the tokenizer's
    /// special tokens. `kwargs` are extra template variables (`enable_thinking`, …).
    pub fn new(tokenizer_dir: Option<&Path>, choice: &TemplateChoice, kwargs: Map<String, Json>) -> Result<Self, TemplateError> {
        let templates = load_template(tokenizer_dir, choice)?;
        let mut template_vars = match tokenizer_dir {
            Some(dir) => special_tokens(dir)?,
            None => Map::new(),
        };
        if let Some(eos) = &templates.eos_override {
            template_vars.insert("eos_token".into(), Json::String(eos.clone()));
        }
        let vars = context_vars(&template_vars, &kwargs);
        Ok(Renderer { templates, template_vars, kwargs, vars })
    }

    /// The templates in use.
    pub fn templates(&self) -> &TemplateSet {
        &self.templates
    }

    /// The extra keyword arguments passed to the template.
    pub fn kwargs(&self) -> &Map<String, Json> {
        &self.kwargs
    }

    /// The special-token variables passed to the template.
    pub fn template_vars(&self) -> &Map<String, Json> {
        &self.template_vars
    }

    fn args(&self, add_generation_prompt: bool, continue_final_message: bool) -> RenderArgs {
        RenderArgs { add_generation_prompt, continue_final_message, template_vars: self.template_vars.clone(), kwargs: self.kwargs.clone() }
    }

    /// Renders `conv` like `apply_chat_template(..., tokenize=False)`.
    pub fn render(
        &self,
        conv: &Conversation,
        add_generation_prompt: bool,
        continue_final_message: bool,
    ) -> Result<Rendered, TemplateError> {
        let template = self.templates.select(conv.tools.is_some());
        if continue_final_message {
            return template.render(conv, &self.args(add_generation_prompt, continue_final_message));
        }
        let input = TemplateInput::of(conv, template);
        template.render_input(&input, conv.messages.len(), add_generation_prompt, &self.vars)
    }

    /// [`render`](Self::render) without a generation prompt, and the
    /// [`assistant_spans`](Self::assistant_spans) of that render (the inner error), converting
    /// the conversation for the template once and reusing the render as the last prefix.
    pub fn render_with_spans(&self, conv: &Conversation) -> Result<(Rendered, Result<Spans, TemplateError>), TemplateError> {
        let template = self.templates.select(conv.tools.is_some());
        let input = TemplateInput::of(conv, template);
        let rendered = template.render_input(&input, conv.messages.len(), false, &self.vars)?;
        let spans = self.spans(template, conv, &input, &rendered, true);
        Ok((rendered, spans))
    }

    /// The assistant spans of `rendered` (the render of `conv` without a generation prompt):
    /// the `{% generation %}` spans when the template has them; otherwise found by rendering
    /// message prefixes: an assistant turn starts where the render of the messages before it
    /// with `add_generation_prompt=true` ends, and ends where the render of the messages up to it
    /// ends (so the end-of-turn token and the newline after it train, as in TRL's training
    /// templates and Unsloth's `train_on_responses_only`). A template that renders an earlier
    /// turn differently once later turns follow (Qwen3 drops past reasoning) gets that turn's
    /// text as the full render has it (see [`end_once_followed`](Self::end_once_followed)); a
    /// turn that cannot be separated either way is an error that says so.
    pub fn assistant_spans(&self, conv: &Conversation, rendered: &Rendered) -> Result<Spans, TemplateError> {
        let template = self.templates.select(conv.tools.is_some());
        if template.has_generation_tags() {
            return Ok(generation_spans(conv, rendered));
        }
        self.spans(template, conv, &TemplateInput::of(conv, template), rendered, false)
    }

    /// [`assistant_spans`](Self::assistant_spans) with the template input at hand; `plain` when
    /// `rendered` is the render of all messages without a generation prompt (the last prefix).
    fn spans(
        &self,
        template: &ChatTemplate,
        conv: &Conversation,
        input: &TemplateInput,
        rendered: &Rendered,
        plain: bool,
    ) -> Result<Spans, TemplateError> {
        if template.has_generation_tags() {
            return Ok(generation_spans(conv, rendered));
        }
        let full = &rendered.text;
        let mut spans = Vec::new();
        for (i, message) in conv.messages.iter().enumerate() {
            if !message.is_assistant() {
                continue;
            }
            let prefix_of = |n: usize, agp: bool| -> Result<Cow<'_, str>, TemplateError> {
                if plain && !agp && n == conv.messages.len() {
                    return Ok(Cow::Borrowed(full.as_str()));
                }
                Ok(Cow::Owned(template.render_input(input, n, agp, &self.vars)?.text))
            };
            let before = prefix_of(i, true)?;
            let through = prefix_of(i + 1, false)?;
            let end = if full.starts_with(before.as_ref()) && full.starts_with(through.as_ref()) && through.len() >= before.len() {
                Some(through.len())
            } else if full.starts_with(before.as_ref()) {
                self.end_once_followed(template, input, i, full, before.len())
            } else {
                None
            };
            let Some(end) = end else {
                return Err(TemplateError::Render {
                    message: format!(
                        "cannot locate assistant message {} by prefix rendering: template {} renders it, or what comes \
                         before it, differently in a prefix than in the whole conversation; use a template with {{% generation %}} tags (e.g. \
                         TRL's *_training.jinja) or marker-based masking",
                        i + 1,
                        template.name()
                    ),
                });
            };
            let start = before.chars().count();
            let end = start + full[before.len()..end].chars().count();
            spans.push(AssistantSpan { message: Some(i), start, end });
        }
        Ok(spans)
    }

    /// Where assistant message `i` ends in `full` (a byte offset) when the template renders it
    /// differently as the last message than once later messages follow (Qwen3 drops the
    /// reasoning of earlier turns): the shortest render of messages `..k` (k > i + 1) that is a
    /// prefix of `full`, less the text that messages `i+1..k` add when rendered without
    /// message `i` in between. `None` when no such k separates the turn.
    fn end_once_followed(&self, template: &ChatTemplate, input: &TemplateInput, i: usize, full: &str, start: usize) -> Option<usize> {
        let n = input.len();
        let base = template.render_input(input, i, false, &self.vars).ok()?.text;
        let skipped = input.without(i);
        for k in i + 2..=n {
            // A render that fails tries the next k, as the Python reference does.
            let with = match k == n {
                true => Cow::Borrowed(full),
                false => match template.render_input(input, k, false, &self.vars) {
                    Ok(r) => Cow::Owned(r.text),
                    Err(_) => continue,
                },
            };
            if !full.starts_with(with.as_ref()) {
                continue;
            }
            let Ok(without) = template.render_input(&skipped, k - 1, false, &self.vars) else { continue };
            let Some(after) = without.text.strip_prefix(base.as_str()) else { continue };
            if with.ends_with(after) && with.len() - after.len() >= start {
                return Some(with.len() - after.len());
            }
        }
        None
    }
}

/// The `{% generation %}` spans of `rendered`; they pair with assistant messages in order when
/// there is one per message.
fn generation_spans(conv: &Conversation, rendered: &Rendered) -> Spans {
    let assistants: Vec<usize> = conv.messages.iter().enumerate().filter(|(_, m)| m.is_assistant()).map(|(i, _)| i).collect();
    let paired = assistants.len() == rendered.generation_spans.len();
    rendered
        .generation_spans
        .iter()
        .enumerate()
        .map(|(k, &(start, end))| AssistantSpan { message: paired.then(|| assistants[k]), start, end })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversation::{Message, RowRef};

    fn conv(turns: &[(&str, &str)]) -> Conversation {
        Conversation {
            source: RowRef { file: "t.jsonl".into(), row: 1 },
            messages: turns.iter().map(|(r, c)| Message::text(r, c)).collect(),
            tools: None,
            documents: None,
        }
    }

    fn spans_text(r: &Renderer, c: &Conversation) -> Result<Vec<String>, TemplateError> {
        let rendered = r.render(c, false, false)?;
        let chars: Vec<char> = rendered.text.chars().collect();
        Ok(r.assistant_spans(c, &rendered)?.iter().map(|s| chars[s.start..s.end].iter().collect()).collect())
    }

    #[test]
    fn prefix_spans_cover_every_assistant_turn_with_its_end_of_turn() {
        let choice = TemplateChoice { template: Some("chatml".into()), ..Default::default() };
        let r = Renderer::new(None, &choice, Map::new()).unwrap();
        let c = conv(&[("system", "S"), ("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d")]);
        assert_eq!(spans_text(&r, &c).unwrap(), vec!["b<|im_end|>\n", "d<|im_end|>\n"]);
    }

    /// A template file in a fresh temporary directory, and a renderer for it.
    fn file_renderer(name: &str, source: &str) -> (std::path::PathBuf, Renderer) {
        let dir = std::env::temp_dir().join(format!("sft-renderer-test-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.jinja");
        std::fs::write(&path, source).unwrap();
        let choice = TemplateChoice { template: Some(path.display().to_string()), ..Default::default() };
        (dir, Renderer::new(None, &choice, Map::new()).unwrap())
    }

    #[test]
    fn earlier_turns_a_template_rewrites_are_found_as_the_whole_render_has_them() {
        // Like Qwen3: earlier assistant turns lose their reasoning once a later turn follows.
        let (dir, r) = file_renderer(
            "drops",
            "{% for m in messages %}{% if m.role == 'assistant' and not loop.last %}{{ m.content.split('</think>')[-1] }}{% else %}{{ m.content }}{% endif %}|{% endfor %}",
        );
        let c = conv(&[("user", "q"), ("assistant", "<think>r</think>a"), ("user", "q2"), ("assistant", "<think>s</think>b")]);
        assert_eq!(spans_text(&r, &c).unwrap(), vec!["a|", "<think>s</think>b|"]);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_prefix_the_template_refuses_is_passed_over_for_a_longer_one() {
        // Drops earlier reasoning, and refuses a conversation that ends with "q2" unless a
        // generation prompt follows.
        let (dir, r) = file_renderer(
            "refuses",
            "{% if messages[-1].content == 'q2' and not add_generation_prompt %}{{ raise_exception('ends with q2') }}{% endif %}{% for m in messages %}{% if m.role == 'assistant' and not loop.last %}{{ m.content.split('</think>')[-1] }}{% else %}{{ m.content }}{% endif %}|{% endfor %}",
        );
        let c = conv(&[("user", "q"), ("assistant", "<think>r</think>a"), ("user", "q2"), ("assistant", "b")]);
        assert_eq!(spans_text(&r, &c).unwrap(), vec!["a|", "b|"]);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_template_that_rewrites_what_comes_before_a_turn_is_reported() {
        // The message count up front changes every prefix.
        let (dir, r) = file_renderer("counts", "{{ messages|length }}:{% for m in messages %}{{ m.content }}|{% endfor %}");
        let c = conv(&[("user", "q"), ("assistant", "a"), ("user", "q2"), ("assistant", "b")]);
        let err = spans_text(&r, &c).unwrap_err().to_string();
        assert!(err.contains("assistant message 2") && err.contains("generation"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
