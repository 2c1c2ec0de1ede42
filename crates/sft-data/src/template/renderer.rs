//! A [`Renderer`]: a tokenizer's template set plus the context values it always passes (special
//! tokens, extra keyword arguments), and the assistant spans of a rendered conversation.
//!
//! The spans are the `{% generation %}` blocks when the template has them. Otherwise they are
//! found by rendering message prefixes ([`prefix`](super::prefix) has the algorithm), and the
//! boundary of a turn is what the template's generation prompt says it is:
//! - Header: a turn starts where the generation prompt ends, so the prompt never trains (the
//!   model is given it). TRL's training templates sometimes open their block earlier (the `\n`
//!   of Qwen2.5's `<|im_start|>assistant\n`, DeepSeek's `<｜Assistant｜>`, gpt-oss's
//!   `<|start|>assistant`); a header the template writes only once the turn follows (DiffusionGemma's
//!   `<|turn>model\n` after a tool response, where the prompt is empty) trains.
//! - Reasoning the prompt holds: a generation prompt that opens a reasoning block (`<think>\n`,
//!   or the empty `<think>\n\n</think>\n\n` with thinking off) holds it for every turn: the part
//!   the turn has in common with the prompt does not train, the rest of the turn does (an earlier
//!   turn rendered `<think></think>answer` trains from `</think>`).
//! - End of turn: everything the template writes after the turn up to the next message trains
//!   (the end-of-turn token and its newline, Phi-3's final EOS, DiffusionGemma's `<|tool_response>`
//!   after a tool call), except a trailer every render ends with that is not the turn's (the
//!   header Llama 3's original template always writes). A template whose turns end with the next
//!   turn's header (GLM-4's `<|user|>`) gets none: TRL's twin trains that header.
//! - With a generation prompt, the turns are those before it; with the final message left open
//!   (`continue_final_message`), that message runs to the end of the text.
//!
//! `tests/it/render_masks.rs` holds every turn of the render parity fixture to these rules
//! against the TRL twins' `{% generation %}` masks, counting the differences of each kind.

use std::path::Path;

use serde_json::{Map, Value as Json};

use super::prefix::{EmptyRenders, Follow, Prefixes};
use super::{
    context_vars, load_template, special_tokens, ChatTemplate, RenderArgs, Rendered, TemplateChoice, TemplateError, TemplateInput,
    TemplateSet,
};
use crate::conversation::{Conversation, Shape};

/// Renders conversations for one tokenizer and template choice.
#[derive(Debug)]
pub struct Renderer {
    templates: TemplateSet,
    template_vars: Map<String, Json>,
    kwargs: Map<String, Json>,
    /// `template_vars` then `kwargs` as template values, converted once.
    vars: Vec<(String, minijinja::Value)>,
    /// The default template's renders of no messages, for conversations without tools or
    /// documents (prefix rendering compares with them).
    empty: EmptyRenders,
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
    /// With `map_eos_token`, the template's end-of-turn token becomes the `eos_token` the
    /// template and encoding see: a built-in template's own, or, for any other template, the
    /// token it writes right after an assistant message ([`end_of_turn`]).
    pub fn new(tokenizer_dir: Option<&Path>, choice: &TemplateChoice, kwargs: Map<String, Json>) -> Result<Self, TemplateError> {
        let templates = load_template(tokenizer_dir, choice)?;
        let template_vars = match tokenizer_dir {
            Some(dir) => special_tokens(dir)?,
            None => Map::new(),
        };
        let vars = context_vars(&template_vars, &kwargs);
        let mut renderer = Renderer { templates, template_vars, kwargs, vars, empty: EmptyRenders::default() };
        let eos = match (&renderer.templates.eos_override, choice.map_eos_token) {
            (Some(eos), _) => Some(eos.clone()),
            (None, true) => Some(renderer.end_of_turn()?),
            (None, false) => None,
        };
        if let Some(eos) = eos {
            renderer.template_vars.insert("eos_token".into(), Json::String(eos.clone()));
            renderer.vars = context_vars(&renderer.template_vars, &renderer.kwargs);
            renderer.templates.eos_override = Some(eos);
        }
        Ok(renderer)
    }

    /// The token the default template writes right after an assistant message: the text after
    /// the message's content in a render of one user and one assistant message, when it starts
    /// with a token written like a special one (`<|im_end|>`, `<end_of_turn>`, `</s>`, `[/INST]`).
    pub fn end_of_turn(&self) -> Result<String, TemplateError> {
        const ANSWER: &str = "\u{E001}answer\u{E001}";
        let probe = Conversation {
            source: crate::conversation::RowRef { file: "map_eos_token".into(), row: 1 },
            messages: vec![
                crate::conversation::Message::text("user", "\u{E000}question"),
                crate::conversation::Message::text("assistant", ANSWER),
            ],
            tools: None,
            documents: None,
            shape: Shape::Chat,
        };
        let template = &self.templates.default;
        let unknown = |why: &str| {
            TemplateError::Source(format!(
            "map_eos_token: cannot tell the end-of-turn token of template {} ({why}); choose a built-in template ({}) or leave map_eos_token off",
            template.name(),
            super::builtin_names()
        ))
        };
        let text =
            template.render_input(&TemplateInput::of(&probe, template), 2, false, &self.vars).map_err(|e| unknown(&e.to_string()))?.text;
        let after =
            text.find(ANSWER).map(|at| &text[at + ANSWER.len()..]).ok_or_else(|| unknown("it does not render the answer as given"))?;
        special_token_prefix(after)
            .map(str::to_string)
            .ok_or_else(|| unknown(&format!("it writes {:?} after an answer", after.chars().take(20).collect::<String>())))
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
        if let Shape::Plain { prompt, completion } = &conv.shape {
            return Ok(Rendered { text: format!("{prompt}{completion}"), generation_spans: vec![] });
        }
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
        self.render_with_spans_for(conv, false, false)
    }

    /// [`render`](Self::render) with these flags, and the assistant spans of that render (the
    /// inner error): with a generation prompt, the turns before it; with the final message left
    /// open, that message runs to the end of the text.
    pub fn render_with_spans_for(
        &self,
        conv: &Conversation,
        add_generation_prompt: bool,
        continue_final_message: bool,
    ) -> Result<(Rendered, Result<Spans, TemplateError>), TemplateError> {
        if !add_generation_prompt && !continue_final_message && conv.shape != Shape::Chat {
            let rendered = self.render(conv, false, false)?;
            let span = self.completion_span(conv, &rendered);
            return Ok((rendered, span.map(|s| vec![s])));
        }
        let template = self.templates.select(conv.tools.is_some());
        let input = TemplateInput::of(conv, template);
        let (rendered, follow) = match (continue_final_message, add_generation_prompt) {
            (true, _) => (self.render(conv, add_generation_prompt, true)?, Follow::Open),
            (false, agp) => {
                let rendered = template.render_input(&input, conv.messages.len(), agp, &self.vars)?;
                (rendered, if agp { Follow::Prompt } else { Follow::Nothing })
            }
        };
        let spans = self.spans(template, conv, &input, &rendered, follow);
        Ok((rendered, spans))
    }

    /// The assistant spans of `rendered`, the render of `conv` without a generation prompt: the
    /// `{% generation %}` spans when the template has them, else found by prefix rendering (the
    /// module doc says where each turn starts and ends). A turn that cannot be located is an
    /// error that says so.
    pub fn assistant_spans(&self, conv: &Conversation, rendered: &Rendered) -> Result<Spans, TemplateError> {
        if conv.shape != Shape::Chat {
            return self.completion_span(conv, rendered).map(|s| vec![s]);
        }
        let template = self.templates.select(conv.tools.is_some());
        if template.has_generation_tags() {
            return Ok(generation_spans(conv, rendered));
        }
        self.spans(template, conv, &TemplateInput::of(conv, template), rendered, Follow::Nothing)
    }

    /// The completion of a prompt/completion or text row in `rendered` (its render): a plain
    /// row's text after its prompt; for a conversational row, what follows the render of its
    /// prompt messages with a generation prompt, as far as the two renders agree (TRL's
    /// completion mask, which starts where the tokenized prompt and prompt + completion first
    /// differ). A chat has no completion: its span is empty.
    pub fn completion_span(&self, conv: &Conversation, rendered: &Rendered) -> Result<AssistantSpan, TemplateError> {
        let end = rendered.text.chars().count();
        let start = match &conv.shape {
            Shape::Chat => end,
            Shape::Plain { prompt, .. } => prompt.chars().count(),
            Shape::Completion { from } => {
                let prompt = Conversation {
                    source: conv.source.clone(),
                    messages: conv.messages[..*from].to_vec(),
                    tools: conv.tools.clone(),
                    documents: conv.documents.clone(),
                    shape: Shape::Chat,
                };
                let prompt = self.render(&prompt, true, false)?;
                prompt.text.chars().zip(rendered.text.chars()).take_while(|(a, b)| a == b).count()
            }
        };
        Ok(AssistantSpan { message: None, start, end })
    }

    /// [`assistant_spans`](Self::assistant_spans) with the template input at hand, for `rendered`
    /// followed by `follow`.
    fn spans(
        &self,
        template: &ChatTemplate,
        conv: &Conversation,
        input: &TemplateInput,
        rendered: &Rendered,
        follow: Follow,
    ) -> Result<Spans, TemplateError> {
        if template.has_generation_tags() {
            return Ok(generation_spans(conv, rendered));
        }
        let own = EmptyRenders::default();
        let shared = conv.tools.is_none() && conv.documents.is_none();
        let empty = if shared { &self.empty } else { &own };
        let prefixes = Prefixes { template, input, vars: &self.vars, full: &rendered.text, follow, empty };
        let spans = prefixes.spans(conv)?;
        Ok(spans.into_iter().map(|(message, start, end)| AssistantSpan { message: Some(message), start, end }).collect())
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

/// The special-looking token `text` starts with: `<…>` or `[…]` without whitespace, at most 48
/// characters (`<|im_end|>`, `<end_of_turn>`, `</s>`, `[/INST]`).
fn special_token_prefix(text: &str) -> Option<&str> {
    let close = match text.chars().next()? {
        '<' => '>',
        '[' => ']',
        _ => return None,
    };
    let end = text.char_indices().skip(1).take(48).find(|(_, c)| *c == close || c.is_whitespace() || *c == '<' || *c == '[')?;
    (end.1 == close && end.0 > 1).then(|| &text[..end.0 + 1])
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
            shape: Shape::Chat,
        }
    }

    fn spans_text(r: &Renderer, c: &Conversation) -> Result<Vec<String>, TemplateError> {
        let rendered = r.render(c, false, false)?;
        let chars: Vec<char> = rendered.text.chars().collect();
        Ok(r.assistant_spans(c, &rendered)?.iter().map(|s| chars[s.start..s.end].iter().collect()).collect())
    }

    /// The text of each span of `c` rendered with these flags.
    fn spans_for(r: &Renderer, c: &Conversation, agp: bool, cfm: bool) -> Vec<String> {
        let (rendered, spans) = r.render_with_spans_for(c, agp, cfm).unwrap();
        let chars: Vec<char> = rendered.text.chars().collect();
        spans.unwrap().iter().map(|s| chars[s.start..s.end].iter().collect()).collect()
    }

    fn dialogue() -> Conversation {
        conv(&[("user", "q"), ("assistant", "x"), ("user", "q2"), ("assistant", "y")])
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

    #[test]
    fn the_part_of_a_reasoning_prompt_a_turn_has_does_not_train() {
        // The generation prompt opens a reasoning block that earlier turns do not have.
        let (dir, r) = file_renderer(
            "think",
            "{% for m in messages %}<{{ m.role }}>{{ m.content }}</s>{% endfor %}{% if add_generation_prompt %}<assistant><think>\n{% endif %}",
        );
        assert_eq!(spans_for(&r, &dialogue(), false, false), vec!["x</s>", "y</s>"]);
        let c = conv(&[("user", "q"), ("assistant", "<think></think>x"), ("user", "q2"), ("assistant", "<think>\nr</think>y")]);
        assert_eq!(spans_for(&r, &c, false, false), vec!["</think>x</s>", "r</think>y</s>"]);
        assert_eq!(spans_for(&r, &c, true, false), vec!["</think>x</s>", "r</think>y</s>"]);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_trailer_the_generation_prompt_replaces_trains_only_at_the_end() {
        // Like Phi-3: an EOS after the last message unless a generation prompt follows.
        let (dir, r) = file_renderer(
            "trailer",
            "{% for m in messages %}<{{ m.role }}>{{ m.content }}<|end|>{% endfor %}{% if add_generation_prompt %}<assistant>{% else %}<|eos|>{% endif %}",
        );
        assert_eq!(spans_for(&r, &dialogue(), false, false), vec!["x<|end|>", "y<|end|><|eos|>"]);
        assert_eq!(spans_for(&r, &dialogue(), true, false), vec!["x<|end|>", "y<|end|>"]);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_generation_prompt_written_unasked_never_trains() {
        // Like Llama 3's original template: the assistant header ends every render.
        let (dir, r) = file_renderer("always", "{% for m in messages %}<{{ m.role }}>{{ m.content }}<|eot|>{% endfor %}<assistant>");
        assert_eq!(spans_for(&r, &dialogue(), false, false), vec!["x<|eot|>", "y<|eot|>"]);
        assert_eq!(spans_for(&r, &dialogue(), true, false), vec!["x<|eot|>", "y<|eot|>"]);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_system_prompt_moved_into_the_last_user_message_is_passed_over() {
        // Like Mistral's templates: the system prompt goes into the last user message only.
        let (dir, r) = file_renderer(
            "moves",
            "{% set sys = messages[0].content if messages[0].role == 'system' else '' %}{% set msgs = messages[1:] if sys else messages %}{% for m in msgs %}{% if m.role == 'user' %}[INST]{% if loop.last and sys %}{{ sys }}\n\n{% endif %}{{ m.content }}[/INST]{% else %}{{ m.content }}</s>{% endif %}{% endfor %}",
        );
        let c = conv(&[("system", "S"), ("user", "q"), ("assistant", "x"), ("user", "q2"), ("assistant", "y")]);
        assert_eq!(spans_for(&r, &c, false, false), vec!["x</s>", "y</s>"]);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_last_turn_rewritten_before_a_generation_prompt_ends_before_it() {
        // Like gpt-oss: the last turn shows its reasoning only when nothing follows it.
        let (dir, r) = file_renderer(
            "rewrites",
            "{% for m in messages %}<{{ m.role }}>{% if m.role == 'assistant' and loop.last and not add_generation_prompt %}[r]{% endif %}{{ m.content }}</s>{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}",
        );
        let c = conv(&[("user", "q"), ("assistant", "x")]);
        assert_eq!(spans_for(&r, &c, false, false), vec!["[r]x</s>"]);
        assert_eq!(spans_for(&r, &c, true, false), vec!["x</s>"]);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_final_message_left_open_runs_to_the_end_of_the_text() {
        let choice = TemplateChoice { template: Some("chatml".into()), ..Default::default() };
        let r = Renderer::new(None, &choice, Map::new()).unwrap();
        let c = conv(&[("user", "q"), ("assistant", "x"), ("user", "q2"), ("assistant", "The answer is ")]);
        assert_eq!(spans_for(&r, &c, false, true), vec!["x<|im_end|>\n", "The answer is "]);
    }

    #[test]
    fn map_eos_token_takes_the_token_a_template_writes_after_an_answer() {
        let mapped = |template: &str| {
            let choice = TemplateChoice { template: Some(template.into()), map_eos_token: true, ..Default::default() };
            Renderer::new(None, &choice, Map::new()).map(|r| r.template_vars().get("eos_token").cloned())
        };
        // Built-ins name theirs.
        assert_eq!(mapped("llama-3").unwrap(), Some(Json::String("<|eot_id|>".into())));
        // Any other template: found in a render.
        let (dir, _) = file_renderer("eot", "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|end|>\n{% endfor %}");
        assert_eq!(mapped(&dir.join("t.jinja").display().to_string()).unwrap(), Some(Json::String("<|end|>".into())));
        std::fs::remove_dir_all(&dir).ok();
        let (dir, _) = file_renderer("plain", "{% for m in messages %}{{ m.role }}: {{ m.content }}\n\n{% endfor %}");
        let e = mapped(&dir.join("t.jinja").display().to_string()).unwrap_err().to_string();
        assert!(e.contains("map_eos_token: cannot tell the end-of-turn token") && e.contains("chatml"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(special_token_prefix("</s>\n"), Some("</s>"));
        assert_eq!(special_token_prefix("[/INST] x"), Some("[/INST]"));
        assert_eq!(special_token_prefix("<end of turn>"), None);
        assert_eq!(special_token_prefix("<>"), None);
    }
}
