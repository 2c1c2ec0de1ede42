//! Several LoRA adapters on one base in memory: [`Model::with_adapter`] makes a second view of
//! a loaded model whose linear layers carry another PEFT adapter. The base tensors are shared,
//! not copied (candle tensors and the bf16/NF4 weights are reference-counted, and the greedy
//! decoding screen of the output layer is shared too), so a view costs only its A and B
//! matrices (and a DoRA adapter's magnitudes and factors). Inference only: the view's adapters
//! are constants.

use std::path::Path;

use super::params::AdapterFile;
use super::Model;
use crate::lora::{Dora, Lora};
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
        file.finish()?;
        Ok(Model {
            config: self.config.clone(),
            embed: self.embed.clone(),
            layers,
            norm: self.norm.clone(),
            lm_head: self.lm_head.clone(),
            head_bf16: self.head_bf16.clone(),
            greedy: self.greedy.clone(),
            params: vec![],
            lora: Some(file.settings),
            quantized: self.quantized,
            checkpointing: false,
            layer_params: vec![vec![]; self.layer_params.len()],
        })
    }
}
