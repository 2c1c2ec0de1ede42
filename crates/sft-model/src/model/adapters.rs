//! Several LoRA adapters on one base in memory: [`Model::with_adapter`] makes a second view of
//! a loaded model whose linear layers carry another PEFT adapter. The base tensors are shared,
//! not copied (candle tensors and the bf16/NF4 weights are reference-counted, and the greedy
//! decoding screen of the output layer is shared too), so a view costs only its A and B
//! matrices (and a DoRA adapter's magnitudes and factors). Inference only: the view's adapters
//! are constants. An adapter with `modules_to_save` weights brings its own embedding and output
//! layer (and vocabulary size); the base's stay untouched.

use std::path::Path;

use std::sync::{Arc, OnceLock};

use candle_core::Tensor;

use super::params::AdapterFile;
use super::Model;
use crate::lora::{resize_rows, Dora, Lora, SavedModule};
use crate::ModelError;

impl Model {
    /// This model's base with the PEFT adapter of `dir` on it (replacing any adapter it has):
    /// the base weights are shared with `self`, only the adapter's matrices are new.
    pub fn with_adapter(&self, dir: &Path) -> Result<Model, ModelError> {
        let mut file = AdapterFile::open(dir)?;
        let mut layers = self.layers.clone();
        let mut index = 0u64;
        for layer in &mut layers {
            for (module, linear) in layer.linears_mut() {
                let context = |source| ModelError::Tensor { context: module.clone(), source };
                let (out, inp) = linear.weight.dims().map_err(context)?;
                let lora = file.take(&module, out, inp)?.map(|t| {
                    index += 1;
                    let dora = t.magnitude.map(|magnitude| Dora { magnitude, frozen_scale: None });
                    Lora { a: t.a, b: t.b, scaling: file.settings.scaling(), index: index - 1, dora }
                });
                linear.attach(lora).map_err(context)?;
            }
        }
        let d = self.config.hidden_size;
        let (embed, head) = (file.take_saved(SavedModule::EmbedTokens, d)?, file.take_saved(SavedModule::LmHead, d)?);
        file.finish()?;
        let (mut config, mut head_bf16, mut greedy) = (self.config.clone(), self.head_bf16.clone(), self.greedy.clone());
        let (mut embed_t, mut lm_head) = (self.embed.clone(), self.lm_head.clone());
        if embed.is_some() || head.is_some() {
            let rows = [embed.as_ref(), head.as_ref()].into_iter().flatten().map(|t| t.dims()[0]).max().unwrap_or(self.config.vocab_size);
            let grow = |t: &Tensor, name: &str| {
                resize_rows(t, rows).map_err(|source| ModelError::Tensor { context: format!("{}: growing {name}", dir.display()), source })
            };
            let base_head = self.output_weight().clone();
            embed_t = match embed {
                Some(t) => t,
                None => grow(&self.embed, "embed_tokens")?,
            };
            lm_head = Some(match head {
                Some(t) => t,
                None => grow(&base_head, "lm_head")?,
            });
            let mut c = (*self.config).clone();
            (c.vocab_size, c.tie_word_embeddings) = (rows, false);
            // The output layer is the adapter's: the base's bf16 copy and greedy screen do not apply.
            (config, head_bf16, greedy) = (Arc::new(c), None, Arc::new(OnceLock::new()));
        }
        Ok(Model {
            config,
            embed: embed_t,
            layers,
            norm: self.norm.clone(),
            lm_head,
            head_bf16,
            greedy,
            params: vec![],
            lora: Some(file.settings),
            quantized: self.quantized,
            checkpointing: false,
            layer_params: vec![vec![]; self.layer_params.len()],
        })
    }
}
