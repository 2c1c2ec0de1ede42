//! Chat templates rendered exactly as transformers' `apply_chat_template` renders them.
//!
//! A [`ChatTemplate`] is compiled once from Jinja source and renders a [`Conversation`] with
//! the context transformers passes: `messages`, `tools`, `documents`, `add_generation_prompt`,
//! the tokenizer's special tokens as strings, and extra keyword arguments (`enable_thinking`, …).
//! `{% generation %}` blocks (TRL's training templates) are supported: their character spans are
//! returned with the text, which is how assistant-token masks are built.

mod env;
mod prefix;
pub mod pyjson;
mod renderer;
mod source;

use serde_json::{Map, Value as Json};

pub use env::Clock;
use env::{GEN_END, GEN_FILTER, GEN_START};
pub use renderer::{char_ranges, AssistantSpan, Renderer, Spans};
pub use source::{
    builtin_names, config_with_eos, load_template, saved_kwargs, special_tokens, TemplateChoice, TemplateSet, TemplateSettings, BUILTINS,
    TEMPLATE_KWARGS_FILE,
};

use crate::conversation::Conversation;

/// Why a template could not be compiled or rendered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    /// The Jinja source does not parse.
    #[error("chat template {name}: {message}")]
    Syntax {
        /// Where the template came from.
        name: String,
        /// minijinja's description, with line.
        message: String,
    },
    /// Rendering failed: `raise_exception`, an undefined attribute, the fuel limit, …
    #[error("{message}")]
    Render {
        /// What went wrong, as the template reported it.
        message: String,
    },
    /// `continue_final_message` could not find the final message in the rendered text.
    #[error("{0}")]
    ContinueFinalMessage(String),
    /// The template could not be found or read.
    #[error("{0}")]
    Source(String),
}

/// Per-render settings, mirroring `apply_chat_template`'s arguments.
#[derive(Debug, Clone, Default)]
pub struct RenderArgs {
    /// Append the header that starts an assistant turn (inference).
    pub add_generation_prompt: bool,
    /// Leave the final message open so the model continues it (prefill).
    pub continue_final_message: bool,
    /// The special tokens passed into the template context (`bos_token`, `eos_token`, …).
    pub template_vars: Map<String, Json>,
    /// Extra keyword arguments (`enable_thinking`, `date_string`, …); they override
    /// `template_vars` on clashes, as in transformers.
    pub kwargs: Map<String, Json>,
}

/// A rendered conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The text, byte-identical to transformers.
    pub text: String,
    /// `{% generation %}` spans as `[start, end)` offsets in characters (Unicode scalar values,
    /// as Python counts them), in the order the blocks were rendered.
    pub generation_spans: Vec<(usize, usize)>,
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    name: String,
    source: String,
    has_generation: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("name", &self.name).finish()
    }
}

const ROOT: &str = "chat_template";

impl ChatTemplate {
    /// Compiles Jinja `source`; `name` says where it came from (for errors).
    pub fn new(name: &str, source: &str, clock: Clock) -> Result<Self, TemplateError> {
        // jinja2's lexer turns every \r\n and \r of the source into \n before parsing.
        let source = source.replace("\r\n", "\n").replace('\r', "\n");
        let (rewritten, has_generation) = rewrite_generation_tags(&source);
        let mut env = env::environment(clock);
        env.add_template_owned(ROOT, rewritten).map_err(|e| TemplateError::Syntax { name: name.into(), message: describe(&e) })?;
        Ok(ChatTemplate { env, name: name.into(), source, has_generation })
    }

    /// Where this template came from.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The Jinja source as compiled (line ends normalized to `\n`, before `{% generation %}`
    /// rewriting): what a prepared dataset hashes to notice a changed template.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the template marks assistant output with `{% generation %}`.
    pub fn has_generation_tags(&self) -> bool {
        self.has_generation
    }

    /// Renders `conv` like `tokenizer.apply_chat_template(messages, tools=..., documents=...,
    /// tokenize=False, ...)`.
    pub fn render(&self, conv: &Conversation, args: &RenderArgs) -> Result<Rendered, TemplateError> {
        let messages = conv.messages.iter().map(|m| prepare_fields(&m.fields)).collect();
        self.render_prepared(messages, conv.tools.as_ref(), conv.documents.as_ref(), args)
    }

    /// Renders raw message objects (what [`render`](Self::render) does after conversion).
    pub fn render_messages(
        &self,
        messages: &[Json],
        tools: Option<&Json>,
        documents: Option<&Json>,
        args: &RenderArgs,
    ) -> Result<Rendered, TemplateError> {
        self.render_prepared(messages.iter().map(prepare_message).collect(), tools, documents, args)
    }

    /// Renders messages already through [`prepare_message`].
    fn render_prepared(
        &self,
        mut messages: Vec<Json>,
        tools: Option<&Json>,
        documents: Option<&Json>,
        args: &RenderArgs,
    ) -> Result<Rendered, TemplateError> {
        if args.add_generation_prompt && args.continue_final_message {
            return Err(TemplateError::ContinueFinalMessage(
                "continue_final_message and add_generation_prompt are not compatible. Use continue_final_message \
                 when you want the model to continue the final message, and add_generation_prompt when you want \
                 to add a header that will prompt it to start a new assistant message instead."
                    .into(),
            ));
        }
        let final_text = if args.continue_final_message { Some(self.tag_final_message(&mut messages)?) } else { None };
        let input = TemplateInput::new(&messages, tools, documents, self.has_generation);
        let vars = context_vars(&args.template_vars, &args.kwargs);
        let Rendered { mut text, generation_spans: mut spans } =
            self.render_input(&input, input.messages.len(), args.add_generation_prompt, &vars)?;
        if let Some(final_text) = final_text {
            let chars = cut_at_continue_tag(&text, &final_text)?;
            text = text.chars().take(chars).collect();
            for span in &mut spans {
                span.0 = span.0.min(chars);
                span.1 = span.1.min(chars);
            }
        }
        Ok(Rendered { text, generation_spans: spans })
    }

    /// Renders the first `n` messages of `input` with the context variables `vars` (later
    /// ones win on a clash, as `apply_chat_template`'s keyword arguments do).
    pub(crate) fn render_input(
        &self,
        input: &TemplateInput,
        n: usize,
        add_generation_prompt: bool,
        vars: &[(String, minijinja::Value)],
    ) -> Result<Rendered, TemplateError> {
        if input.has_sentinel {
            return Err(TemplateError::Render {
                message: "a message contains U+FDD0 or U+FDD1, which sft reserves for {% generation %} spans".into(),
            });
        }
        let messages = minijinja::Value::from(input.messages[..n.min(input.messages.len())].to_vec());
        let fixed = [
            ("messages", messages),
            ("tools", input.tools.clone()),
            ("documents", input.documents.clone()),
            ("add_generation_prompt", minijinja::Value::from(add_generation_prompt)),
        ];
        let ctx: std::collections::BTreeMap<&str, minijinja::Value> =
            fixed.into_iter().chain(vars.iter().map(|(k, v)| (k.as_str(), v.clone()))).collect();
        let template = self.env.get_template(ROOT).map_err(|e| TemplateError::Render { message: describe(&e) })?;
        let raw = template.render(ctx).map_err(|e| TemplateError::Render { message: describe(&e) })?;
        let (text, generation_spans) = if self.has_generation { extract_spans(&raw) } else { (raw, Vec::new()) };
        Ok(Rendered { text, generation_spans })
    }
}

/// A conversation's messages, tools and documents as template values, converted once so that
/// its prefixes render without converting them again.
pub(crate) struct TemplateInput {
    messages: Vec<minijinja::Value>,
    tools: minijinja::Value,
    documents: minijinja::Value,
    /// Whether a message holds a generation sentinel (refused by templates that use them).
    has_sentinel: bool,
}

impl TemplateInput {
    /// Converts messages already through [`prepare_message`].
    fn new(messages: &[Json], tools: Option<&Json>, documents: Option<&Json>, has_generation: bool) -> Self {
        let value = |v: Option<&Json>| v.map_or(minijinja::Value::from(()), to_value);
        TemplateInput {
            messages: messages.iter().map(to_value).collect(),
            tools: value(tools),
            documents: value(documents),
            has_sentinel: has_generation && messages.iter().any(has_sentinel),
        }
    }

    /// The input for `conv` as `template` sees it.
    pub(crate) fn of(conv: &Conversation, template: &ChatTemplate) -> Self {
        let messages: Vec<Json> = conv.messages.iter().map(|m| prepare_fields(&m.fields)).collect();
        TemplateInput::new(&messages, conv.tools.as_ref(), conv.documents.as_ref(), template.has_generation)
    }

    /// How many messages it holds.
    pub(crate) fn len(&self) -> usize {
        self.messages.len()
    }

    /// The same input without message `i`.
    pub(crate) fn without(&self, i: usize) -> Self {
        let mut messages = self.messages.clone();
        if i < messages.len() {
            messages.remove(i);
        }
        TemplateInput { messages, tools: self.tools.clone(), documents: self.documents.clone(), has_sentinel: self.has_sentinel }
    }
}

/// The context variables beside the messages: special tokens, then keyword arguments.
pub(crate) fn context_vars(template_vars: &Map<String, Json>, kwargs: &Map<String, Json>) -> Vec<(String, minijinja::Value)> {
    template_vars.iter().chain(kwargs).map(|(k, v)| (k.clone(), to_value(v))).collect()
}

fn to_value(v: &Json) -> minijinja::Value {
    minijinja::Value::from(minijinja::value::Serde(v))
}

/// minijinja's error on one line: what went wrong (a `raise_exception` message as is), the
/// template line, and the cause chain.
fn describe(err: &minijinja::Error) -> String {
    let kind = err.kind();
    let mut msg = match err.detail() {
        Some(detail) if kind == minijinja::ErrorKind::InvalidOperation => detail.to_string(),
        Some(detail) => format!("{kind}: {detail}"),
        None => kind.to_string(),
    };
    if let Some(line) = err.line() {
        msg.push_str(&format!(" (template line {line})"));
    }
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        msg.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    msg
}

/// minijinja has no custom tags: rename `{% generation %}` / `{% endgeneration %}` (keeping
/// whitespace-control markers, so trimming is unchanged) to a filter block whose filter wraps
/// the body in sentinel characters.
fn rewrite_generation_tags(source: &str) -> (String, bool) {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    let mut found = false;
    while let Some(pos) = rest.find("{%") {
        out.push_str(&rest[..pos]);
        let tag = &rest[pos..];
        let inner_start = 2 + tag[2..].starts_with(['-', '+']) as usize;
        let after_ws = tag[inner_start..].trim_start();
        let word_len = after_ws.find(|c: char| !c.is_ascii_alphanumeric() && c != '_').unwrap_or(after_ws.len());
        let word = &after_ws[..word_len];
        let replacement = match word {
            "generation" => Some(format!("filter {GEN_FILTER}")),
            "endgeneration" => Some("endfilter".to_string()),
            _ => None,
        };
        let close = after_ws[word_len..].trim_start();
        let closes = close.starts_with("%}") || close.starts_with("-%}") || close.starts_with("+%}");
        match replacement {
            Some(rep) if closes => {
                found = true;
                let word_at = tag.len() - after_ws.len();
                out.push_str(&tag[..word_at]);
                out.push_str(&rep);
                rest = &tag[word_at + word_len..];
            }
            _ => {
                out.push_str("{%");
                rest = &tag[2..];
            }
        }
    }
    out.push_str(rest);
    (out, found)
}

/// Whether a string anywhere in `value` holds a generation sentinel.
fn has_sentinel(value: &Json) -> bool {
    match value {
        Json::String(s) => s.contains([GEN_START, GEN_END]),
        Json::Array(items) => items.iter().any(has_sentinel),
        Json::Object(map) => map.values().any(has_sentinel),
        _ => false,
    }
}

/// Removes the generation sentinels from `raw`, returning the text and the spans in characters.
fn extract_spans(raw: &str) -> (String, Vec<(usize, usize)>) {
    let mut text = String::with_capacity(raw.len());
    let mut spans = Vec::new();
    let mut open: Vec<usize> = Vec::new();
    let mut chars = 0usize;
    for c in raw.chars() {
        match c {
            GEN_START => open.push(chars),
            GEN_END => {
                if let Some(start) = open.pop() {
                    // Nested blocks: transformers records the inner span first, then the outer.
                    spans.push((start, chars));
                }
            }
            c => {
                text.push(c);
                chars += 1;
            }
        }
    }
    (text, spans)
}

/// What transformers appends to the final message before rendering with
/// `continue_final_message`, to find where that message ends in the output.
const CONTINUE_TAG: &str = "CONTINUE_FINAL_MESSAGE_TAG ";

/// What transformers does to each message before templating: keys whose value is `null` are
/// dropped, and reasoning given as `reasoning_content`, `thinking` or `reasoning` is aliased:
/// the first one set fills `thinking` (when absent, placed first) and `reasoning_content`.
fn prepare_message(message: &Json) -> Json {
    match message {
        Json::Object(fields) => prepare_fields(fields),
        other => other.clone(),
    }
}

/// [`prepare_message`] for a message's fields.
fn prepare_fields(fields: &Map<String, Json>) -> Json {
    let fields: Map<String, Json> = fields.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), v.clone())).collect();
    let reasoning = ["reasoning_content", "thinking", "reasoning"].iter().find_map(|k| fields.get(*k)).cloned();
    let Some(reasoning) = reasoning else { return Json::Object(fields) };
    let mut out = Map::new();
    if !fields.contains_key("thinking") {
        out.insert("thinking".into(), reasoning.clone());
    }
    out.extend(fields);
    // Python's `{**message, "reasoning_content": r}` keeps an existing key's position.
    out.insert("reasoning_content".into(), reasoning);
    Json::Object(out)
}

impl ChatTemplate {
    /// transformers' `continue_final_message`, first half: append [`CONTINUE_TAG`] to the final
    /// message's text (its last text block, for block lists). Returns the original text.
    fn tag_final_message(&self, messages: &mut [Json]) -> Result<String, TemplateError> {
        let err = |m: &str| TemplateError::ContinueFinalMessage(m.to_string());
        let Some(last) = messages.last_mut() else {
            return Err(err("continue_final_message is set but the conversation is empty!"));
        };
        let Some(content) = last.get_mut("content") else {
            return Err(err("continue_final_message is set but the final message has no \"content\" to continue!"));
        };
        if !self.source.contains("content") {
            return Err(err("continue_final_message is set to \"content\" but this is not an accepted field in the chat_template"));
        }
        let text = match content {
            Json::String(s) => s,
            Json::Array(blocks) => blocks
                .iter_mut()
                .rev()
                .find_map(|b| b.get_mut("text"))
                .and_then(|t| match t {
                    Json::String(s) => Some(s),
                    _ => None,
                })
                .ok_or_else(|| err("continue_final_message is set but we could not find any text to continue in the final message!"))?,
            _ => return Err(err("continue_final_message is set but the final message's content is not text")),
        };
        let original = text.clone();
        text.push_str(CONTINUE_TAG);
        Ok(original)
    }
}

/// transformers' `continue_final_message`, second half: cut the rendered text where the tag
/// starts (then strip trailing whitespace if the template trimmed the tag's space). Returns the
/// cut position in characters.
fn cut_at_continue_tag(text: &str, final_text: &str) -> Result<usize, TemplateError> {
    let tag = CONTINUE_TAG.trim();
    if !text.contains(py_strip(final_text)) || !text.contains(tag) {
        return Err(TemplateError::ContinueFinalMessage(
            "continue_final_message is set but the final message does not appear in the chat after applying the \
             chat template! This can happen if the chat template deletes portions of the final message. Please \
             verify the chat template and final message in your chat to ensure they are compatible."
                .into(),
        ));
    }
    let loc = text.rfind(tag).unwrap_or(0);
    let head = if text[loc..].starts_with(CONTINUE_TAG) { &text[..loc] } else { text[..loc].trim_end_matches(is_py_space) };
    Ok(head.chars().count())
}

/// Python's `str.strip()` (Unicode whitespace).
fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// `str.isspace()` for one character: Unicode White_Space plus the ASCII separators 0x1c-0x1f.
pub(crate) fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_generation_tags_keeping_whitespace_control() {
        let (s, found) = rewrite_generation_tags("a{%- generation -%}b{% endgeneration %}{% if x %}{% endif %}");
        assert!(found);
        assert_eq!(s, format!("a{{%- filter {GEN_FILTER} -%}}b{{% endfilter %}}{{% if x %}}{{% endif %}}"));
        let (s, found) = rewrite_generation_tags("{% generations %}{{ '{%' }}");
        assert!(!found);
        assert_eq!(s, "{% generations %}{{ '{%' }}");
    }

    #[test]
    fn generation_spans_are_in_characters() {
        let t = ChatTemplate::new(
            "t",
            "{% for m in messages %}{{ m.role }}: {% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}{% else %}{{ m.content }}{% endif %}\n{% endfor %}",
            Clock::System,
        )
        .unwrap();
        let msgs =
            vec![serde_json::json!({"role": "user", "content": "héllo"}), serde_json::json!({"role": "assistant", "content": "wörld"})];
        let r = t.render_messages(&msgs, None, None, &RenderArgs::default()).unwrap();
        // trim_blocks eats the newline after `{% endif %}`, as in jinja2.
        assert_eq!(r.text, "user: hélloassistant: wörld");
        assert_eq!(r.generation_spans, vec![(22, 27)]);
    }

    #[test]
    fn looping_template_ends_with_an_error() {
        let t = ChatTemplate::new("loop", "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}", Clock::System)
            .unwrap();
        let err = t.render_messages(&[], None, None, &RenderArgs::default()).unwrap_err();
        assert!(err.to_string().contains("fuel"), "{err}");
    }

    #[test]
    fn raise_exception_message_is_kept() {
        let t = ChatTemplate::new("r", "{{ raise_exception('Only user and assistant roles are supported!') }}", Clock::System).unwrap();
        let err = t.render_messages(&[], None, None, &RenderArgs::default()).unwrap_err();
        assert!(err.to_string().contains("Only user and assistant roles are supported!"), "{err}");
    }

    #[test]
    fn continue_final_message_cuts_after_the_content() {
        let t = ChatTemplate::new("c", "{% for m in messages %}<{{ m.role }}>{{ m.content }}</s>{% endfor %}", Clock::System).unwrap();
        let msgs = vec![
            serde_json::json!({"role": "user", "content": "hi"}),
            serde_json::json!({"role": "assistant", "content": "The answer is "}),
        ];
        let args = RenderArgs { continue_final_message: true, ..Default::default() };
        let r = t.render_messages(&msgs, None, None, &args).unwrap();
        assert_eq!(r.text, "<user>hi</s><assistant>The answer is ");
    }
}
