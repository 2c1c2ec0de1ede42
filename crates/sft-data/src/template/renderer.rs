//! A [`Renderer`]: a tokenizer's template set plus the context values it always passes (special
//! tokens, extra keyword arguments), and the assistant spans of a rendered conversation.

use std::path::Path;

use serde_json::{Map, Value as Json};

use super::{load_template, special_tokens, RenderArgs, Rendered, TemplateChoice, TemplateError, TemplateSet};
use crate::conversation::Conversation;

/// Renders conversations for one tokenizer and template choice.
#[derive(Debug)]
pub struct Renderer {
    templates: TemplateSet,
    template_vars: Map<String, Json>,
    kwargs: Map<String, Json>,
}

/// Character spans (`[start, end)`) of the assistant turns in a rendered text.
pub type Spans = Vec<(usize, usize)>;

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
        Ok(Renderer { templates, template_vars, kwargs })
    }

    /// The templates in use.
    pub fn templates(&self) -> &TemplateSet {
        &self.templates
    }

    /// The special-token variables passed to the template.
    pub fn template_vars(&self) -> &Map<String, Json> {
        &self.template_vars
    }

    fn args(&self, add_generation_prompt: bool, continue_final_message: bool) -> RenderArgs {
        RenderArgs {
            add_generation_prompt,
            continue_final_message,
            template_vars: self.template_vars.clone(),
            kwargs: self.kwargs.clone(),
        }
    }

    /// Renders `conv` like `apply_chat_template(..., tokenize=False)`.
    pub fn render(&self, conv: &Conversation, add_generation_prompt: bool, continue_final_message: bool) -> Result<Rendered, TemplateError> {
        let template = self.templates.select(conv.tools.is_some());
        template.render(conv, &self.args(add_generation_prompt, continue_final_message))
    }

    /// The assistant spans of `rendered` (the render of `conv` without a generation prompt):
    /// the `{% generation %}` spans when the template has them; otherwise found by rendering
    /// message prefixes: an assistant turn starts where the render of the messages before it
    /// with `add_generation_prompt=true` ends, and ends (trailing whitespace excluded) where the
    /// render of the messages up to it ends. A template that renders earlier turns differently
    /// once later turns follow (one that drops past reasoning, say) cannot be split this way,
    /// and gets an error that says so.
    pub fn assistant_spans(&self, conv: &Conversation, rendered: &Rendered) -> Result<Spans, TemplateError> {
        let template = self.templates.select(conv.tools.is_some());
        if template.has_generation_tags() {
            return Ok(rendered.generation_spans.clone());
        }
        let full = &rendered.text;
        let mut spans = Vec::new();
        for (i, message) in conv.messages.iter().enumerate() {
            if !message.is_assistant() {
                continue;
            }
            let prefix_of = |n: usize, agp: bool| -> Result<String, TemplateError> {
                let part = Conversation { messages: conv.messages[..n].to_vec(), ..conv.clone() };
                Ok(template.render(&part, &self.args(agp, false))?.text)
            };
            let before = prefix_of(i, true)?;
            let through = prefix_of(i + 1, false)?;
            if !full.starts_with(&before) || !full.starts_with(through.trim_end()) || through.len() < before.len() {
                return Err(TemplateError::Render {
                    message: format!(
                        "cannot locate assistant message {} by prefix rendering: template {} renders it differently \
                         once later messages follow; use a template with {{% generation %}} tags (e.g. TRL's \
                         *_training.jinja) or marker-based masking",
                        i + 1,
                        template.name()
                    ),
                });
            }
            let start = before.chars().count();
            let end = through.trim_end().chars().count().max(start);
            spans.push((start, end));
        }
        Ok(spans)
    }
}
