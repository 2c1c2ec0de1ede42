//! Loading a model for inference together with what it was trained with: the base model (a
//! directory, or the one a checkpoint names) and its adapter, the tokenizer and chat template (a
//! checkpoint's own, with its template keyword arguments and the EOS `map_eos_token` chose), and
//! the token ids generation stops at.

use std::path::Path;

use serde_json::Value;
use sft_data::conversation::Conversation;
use sft_data::template::{Renderer, TemplateSettings};
use sft_data::tokens::TextTokenizer;
use sft_hub::Resolved;
use sft_model::model::{Model, Trainable};
use sft_model::quant::BaseFormat;

use crate::InferError;

/// What to load.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadOptions {
    /// A model directory, hub id, GGUF file or training checkpoint (see sft-hub).
    pub model: String,
    /// A PEFT adapter (a directory or hub id) to apply on `model`.
    pub adapter: Option<String>,
    /// How the base linear weights are held (f32, bf16 or NF4).
    pub format: BaseFormat,
    /// The chat template (the tokenizer's or checkpoint's own when not set) and its variables.
    pub template: TemplateSettings,
}

impl LoadOptions {
    /// `model` as it is: f32 weights, its own template, no separate adapter.
    pub fn new(model: String) -> Self {
        Self { model, adapter: None, format: BaseFormat::F32, template: TemplateSettings::default() }
    }
}

/// Loads the model alone, nothing trainable (for scoring), with where its files are.
pub fn load_model(opts: &LoadOptions) -> Result<(Model, Resolved), InferError> {
    let source = sft_hub::resolve(&opts.model, opts.adapter.as_deref())?;
    let trainable = match &source.adapter {
        Some(dir) => Trainable::Adapter { dir: dir.clone(), train: false },
        None => Trainable::Frozen,
    };
    let model = Model::load_as(&source.base.dir, &trainable, opts.format)?;
    Ok((model, source))
}

/// A model ready for inference, with the tokenizer, template and stop tokens it was trained with.
pub struct Inference {
    /// The model.
    pub model: Model,
    /// Its tokenizer.
    pub tokenizer: TextTokenizer,
    /// Its chat template and the variables the template sees.
    pub renderer: Renderer,
    /// Where its files are.
    pub source: Resolved,
    stop_ids: Vec<u32>,
}

impl Inference {
    /// Loads model, tokenizer and template.
    pub fn load(opts: &LoadOptions) -> Result<Self, InferError> {
        let (model, source) = load_model(opts)?;
        let tokenizer = TextTokenizer::from_dir(&source.tokenizer_dir)?;
        let kwargs = opts.template.kwargs_for(Some(&source.tokenizer_dir))?;
        let renderer = Renderer::new(Some(&source.tokenizer_dir), &opts.template.choice()?, kwargs)?;
        let mut stop_ids = model.config().eos_token_ids.clone();
        for dir in [&source.tokenizer_dir, &source.base.dir] {
            stop_ids.extend(generation_eos(&dir.join("generation_config.json"))?);
        }
        if let Some(id) = renderer.template_vars().get("eos_token").and_then(Value::as_str).and_then(|t| tokenizer.token_to_id(t)) {
            stop_ids.push(id);
        }
        stop_ids.sort_unstable();
        stop_ids.dedup();
        Ok(Inference { model, tokenizer, renderer, source, stop_ids })
    }

    /// The ids generation stops at: the EOS ids of the model config and of its
    /// `generation_config.json` (a checkpoint's and its base's), and the template's EOS token.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// The prompt of `conversation`: rendered with a generation prompt and tokenized as
    /// `apply_chat_template(..., add_generation_prompt=True, tokenize=True)` does.
    pub fn prompt_ids(&self, conversation: &Conversation) -> Result<Vec<u32>, InferError> {
        let rendered = self
            .renderer
            .render(conversation, true, false)
            .map_err(|e| InferError::File { path: conversation.source.to_string(), message: format!("rendering the prompt: {e}") })?;
        Ok(self.tokenizer.encode(&rendered.text, &[])?.input_ids)
    }
}

/// The `eos_token_id` (an id or a list) of a generation_config.json, if there is one.
fn generation_eos(path: &Path) -> Result<Vec<u32>, InferError> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(vec![]) };
    let bad = |message: &str| InferError::File { path: path.display().to_string(), message: message.into() };
    let v: Value = serde_json::from_str(&text).map_err(|e| bad(&format!("invalid JSON: {e}")))?;
    let ids = match v.get("eos_token_id") {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(items)) => items.clone(),
        Some(one) => vec![one.clone()],
    };
    ids.iter().map(|i| i.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| bad("eos_token_id: expected token ids"))).collect()
}
