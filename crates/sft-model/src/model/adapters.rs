//! Several LoRA adapters on one base in memory: [`Model::with_adapter`] makes a second view of
//! a loaded model whose linear layers carry another PEFT adapter. The base tensors are shared,
//! not copied (candle tensors and the bf16/NF4 weights are reference-counted, and the greedy
//! decoding screen of the output layer is shared too), so a view costs only its A and B
//! matrices. Inference only: the view's adapters are constants.

use std::collections::BTreeSet;
use std::path::Path;

use super::Model;
use crate::lora::{peft_names, Lora, LoraSettings, ADAPTER_WEIGHTS};
use crate::ops::LinearWeight;
use crate::weights::Weights;
use crate::ModelError;

impl Model {
    /// This model's base with the PEFT adapter of `dir` on it (replacing any adapter it has):
    /// the base weights are shared with `self`, only the adapter's matrices are new.
    pub fn with_adapter(&self, dir: &Path) -> Result<Model, ModelError> {
        let settings = LoraSettings::from_adapter_dir(dir)?;
        let weights = Weights::open(dir, ADAPTER_WEIGHTS)?;
        let mut layers = self.layers.clone();
        let mut used = BTreeSet::new();
        let mut index = 0u64;
        for layer in &mut layers {
            for (module, linear) in layer.linears_mut() {
                let (a_name, b_name) = peft_names(&module);
                linear.lora = None;
                if !settings.targets.matches(&module) && !weights.has(&a_name) {
                    continue;
                }
                let (out, inp) = match &linear.weight {
                    LinearWeight::Dense(w) => w.dims2().map_err(|source| ModelError::Tensor { context: module.clone(), source })?,
                    LinearWeight::Quant(q) => q.dims(),
                };
                let a = weights.get(&a_name, &[settings.r, inp])?;
                let b = weights.get(&b_name, &[out, settings.r])?;
                linear.lora = Some(Lora { a, b, scaling: settings.scaling(), index });
                index += 1;
                used.insert(a_name);
                used.insert(b_name);
            }
        }
        if let Some(extra) = weights.names().iter().find(|n| !used.contains(*n)) {
            return Err(ModelError::BadTensor {
                dir: dir.into(),
                name: extra.clone(),
                message: "no module of the model takes it (an adapter for another model?)".into(),
            });
        }
        if used.is_empty() {
            return Err(ModelError::Config {
                path: dir.join(crate::lora::ADAPTER_CONFIG),
                key: "target_modules".into(),
                message: "no module of the model is a target".into(),
            });
        }
        Ok(Model {
            config: self.config.clone(),
            embed: self.embed.clone(),
            layers,
            norm: self.norm.clone(),
            lm_head: self.lm_head.clone(),
            head_bf16: self.head_bf16.clone(),
            greedy: self.greedy.clone(),
            params: vec![],
            lora: Some(settings),
            quantized: self.quantized,
            checkpointing: false,
            layer_params: vec![vec![]; self.layer_params.len()],
        })
    }
}
