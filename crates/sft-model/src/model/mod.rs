//! The decoder: token embedding → layers → final norm → output layer, over whole sequences
//! (training and evaluation). The loss is the cross-entropy of every target token (next-token
//! labels other than -100 within the same packed row), summed; [`Loss::mean`] divides by their
//! count, as transformers' causal-LM loss does.

mod adapters;
mod batch;
mod decode;
mod greedy;
mod kv_cache;
mod layer;
mod logprobs;
mod params;
mod recompute;

use std::path::Path;
use std::sync::{Arc, OnceLock};

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

pub use batch::{Batch, Sequence, IGNORE};
pub use decode::{DecodeRow, Next};
pub use params::Trainable;

use crate::config::{ModelConfig, Rope};
use crate::error::TensorContext;
use crate::lora::{Dropout, LoraSettings};
use crate::ops::{linear_cross_entropy, rms_norm, CrossEntropy, RopeTable};
use crate::quant::{BaseFormat, QuantWeight};
use crate::rng::SplitMix;
use crate::weights::Weights;
use crate::ModelError;
pub use greedy::argmax;
use greedy::GreedyScreen;
pub use kv_cache::KvCache;
use layer::{Context, Layer};
pub use logprobs::{log_softmax, top_n, TokenLogprobs};
use params::{BaseSource, Builder};
use recompute::{Pending, Recompute};

/// A loaded decoder model.
pub struct Model {
    config: Arc<ModelConfig>,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    /// `None` when tied to the embedding (always f32).
    lm_head: Option<Tensor>,
    /// The output layer in bf16 (bf16 base formats): read by decoding, and by the loss under
    /// `bf16: true` ([`BaseFormat::Bf16Matmul`]).
    head_bf16: Option<Arc<QuantWeight>>,
    /// Greedy decoding's bf16 screen of the f32 output layer, made on first use (`None` when
    /// the exact argmax cannot be screened this way).
    greedy: Arc<OnceLock<Option<GreedyScreen>>>,
    params: Vec<(String, Var)>,
    lora: Option<LoraSettings>,
    /// Linear weights held in a compact format, and their bytes.
    quantized: (usize, usize),
    /// Gradient checkpointing: layers keep only their inputs and run again in the backward pass.
    checkpointing: bool,
    /// Each layer's trainable parameters (for checkpointing).
    layer_params: Vec<Vec<Tensor>>,
}

/// How a model is loaded besides what trains.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// How the frozen linear weights are held.
    pub format: BaseFormat,
    /// Grow the vocabulary to at least this many rows (tokens were added): new embedding and
    /// output rows are the mean of the old ones, as transformers' `resize_token_embeddings`.
    pub vocab_size: Option<usize>,
    /// Take the embedding and output layer from this PEFT adapter's `modules_to_save` weights
    /// (full models: `Model::merged`).
    pub saved_modules: Option<std::path::PathBuf>,
}

/// A summed loss and how many target tokens it covers.
pub struct Loss {
    /// Σ cross-entropy over the targets (a scalar tensor, differentiable).
    pub sum: Tensor,
    /// Number of targets.
    pub tokens: usize,
    /// Parameter gradients of this forward pass's checkpointed layers, filled while it
    /// backpropagates. Each loss has its own, so passes may run side by side.
    pending: Pending,
}

impl Loss {
    /// The mean over targets (0 when there are none).
    pub fn mean(&self) -> candle_core::Result<Tensor> {
        self.sum.affine(1.0 / self.tokens.max(1) as f64, 0.0)
    }

    /// Backpropagates `scale · sum`: the gradients of every parameter, including those computed
    /// inside checkpointed layers.
    pub fn backward(&self, scale: f64) -> Result<GradStore, ModelError> {
        let mut store = self.sum.affine(scale, 0.0).and_then(|l| l.backward()).during(|| "backward".into())?;
        let pending = std::mem::take(
            &mut *self.pending.lock().map_err(|_| ModelError::Batch("gradient checkpointing: a backward pass panicked".into()))?,
        );
        for (param, grad) in pending {
            let sum = match store.remove(&param) {
                Some(prev) => (prev + grad).during(|| "adding recomputed gradients".into())?,
                None => grad,
            };
            store.insert(&param, sum);
        }
        Ok(store)
    }
}

/// The keys and values of every layer for the tokens generated from so far (held outside the
/// model, one per sequence).
#[derive(Debug, Clone, Default)]
pub struct Cache {
    layers: Vec<KvCache>,
    tokens: usize,
}

impl Cache {
    /// How many tokens it holds.
    pub fn tokens(&self) -> usize {
        self.tokens
    }
}

/// A token-weighted loss over many sequences.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Evaluation {
    /// Σ cross-entropy over every target.
    pub loss_sum: f64,
    /// Number of targets.
    pub tokens: usize,
}

impl Evaluation {
    /// Mean loss per target token.
    pub fn loss(&self) -> f64 {
        self.loss_sum / self.tokens.max(1) as f64
    }

    /// `exp(loss)`.
    pub fn perplexity(&self) -> f64 {
        self.loss().exp()
    }
}

impl Model {
    /// Loads `dir` (config.json + model.safetensors or shards) with `trainable` deciding what
    /// becomes a variable.
    pub fn load(dir: &Path, trainable: &Trainable) -> Result<Self, ModelError> {
        Self::load_as(dir, trainable, BaseFormat::F32)
    }

    /// [`Model::load`] with the frozen linear weights held in `format` (bf16 or 4-bit NF4;
    /// embeddings, norms and the output layer stay f32).
    pub fn load_as(dir: &Path, trainable: &Trainable, format: BaseFormat) -> Result<Self, ModelError> {
        Self::load_with(dir, trainable, &LoadOptions { format, ..LoadOptions::default() })
    }

    /// [`Model::load_as`] with the vocabulary grown or taken from an adapter as `opts` says (an
    /// adapter with `modules_to_save` weights sets the vocabulary by itself).
    pub fn load_with(dir: &Path, trainable: &Trainable, opts: &LoadOptions) -> Result<Self, ModelError> {
        let config = ModelConfig::from_dir(dir)?;
        let base = BaseSource::Files(Weights::open(dir, "model.safetensors")?);
        let mut b = Builder::new(base, trainable, opts.format)?;
        if let Some(adapter) = &opts.saved_modules {
            b = b.with_saved_modules(adapter)?;
        }
        Self::build(config, b, opts.vocab_size)
    }

    /// A new model with random weights as transformers initialises one (N(0,
    /// `initializer_range`) matrices, identity norms, zero biases), every weight trainable;
    /// `dir` names it in messages.
    pub fn init(config: ModelConfig, seed: u64, dir: &Path) -> Result<Self, ModelError> {
        let norm_value = 1.0 - config.norm_offset;
        let std = config.initializer_range;
        let base = BaseSource::Random { rng: SplitMix(seed), std, norm_value, dir: dir.to_path_buf() };
        Self::build(config, Builder::new(base, &Trainable::Full, BaseFormat::F32)?, None)
    }

    /// Writes every parameter as `dir/model.safetensors` (f32; requires full training, so that
    /// all weights are parameters).
    pub fn save_weights(&self, dir: &Path) -> Result<(), ModelError> {
        self.save_weights_as(dir, &crate::weights::write::SaveOptions::default()).map(|_| ())
    }

    /// Writes every parameter into `dir` in the element type and shards `opts` say, as
    /// transformers' `save_pretrained` lays them out (requires full training, as
    /// [`Model::save_weights`]); returns the files written.
    pub fn save_weights_as(&self, dir: &Path, opts: &crate::weights::write::SaveOptions) -> Result<Vec<std::path::PathBuf>, ModelError> {
        let tensors: Vec<(String, Tensor)> = self.params.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
        crate::weights::write::save(dir, &tensors, opts)
    }

    fn build(mut config: ModelConfig, mut b: Builder, vocab_size: Option<usize>) -> Result<Self, ModelError> {
        let format = b.format();
        let (embed, head, v) = b.embedding(&config, vocab_size)?;
        config.vocab_size = v;
        let d = config.hidden_size;
        let layers = (0..config.layers.len()).map(|i| Layer::load(&mut b, &config, i)).collect::<Result<Vec<_>, _>>()?;
        let norm = b.weight("model.norm.weight", &[d])?;
        let lm_head = b.output_layer(head)?;
        config.tie_word_embeddings = lm_head.is_none();
        b.finish()?;
        // bf16 decoding also reads the output layer in bf16, and so does the loss under bf16:
        // true (a copy; the f32 one stays for the embedding and everything else).
        let head_bf16 = match format {
            BaseFormat::Bf16 | BaseFormat::Bf16Matmul => {
                let w = lm_head.as_ref().unwrap_or(&embed);
                let data = w.flatten_all().and_then(|t| t.to_vec1::<f32>()).during(|| "reading the output layer".into())?;
                QuantWeight::new(&data, v, d, format).map(Arc::new)
            }
            _ => None,
        };
        let lora = b.lora_settings().cloned();
        let layer_params = (0..layers.len())
            .map(|i| {
                let prefix = format!("model.layers.{i}.");
                b.params.iter().filter(|(n, _)| n.contains(&prefix)).map(|(_, v)| v.as_tensor().clone()).collect()
            })
            .collect();
        Ok(Self {
            config: Arc::new(config),
            embed,
            layers,
            norm,
            lm_head,
            head_bf16,
            greedy: Arc::new(OnceLock::new()),
            params: b.params,
            lora,
            quantized: b.quantized,
            checkpointing: false,
            layer_params,
        })
    }

    /// Turns gradient checkpointing on or off (training: less memory, one more forward pass).
    pub fn set_gradient_checkpointing(&mut self, on: bool) {
        self.checkpointing = on;
    }

    /// The resolved configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Trainable parameters in load order, under HF names (full fine-tuning) or PEFT names (LoRA).
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// How many linear weights are held in bf16 or NF4, and their bytes ((0, 0) when all are f32).
    pub fn quantized(&self) -> (usize, usize) {
        self.quantized
    }

    /// Sets the keys of a `config.json` (the base's, copied) that describe this model's
    /// vocabulary layers where they differ: `vocab_size` (tokens were added) and
    /// `tie_word_embeddings: false` (a tied base whose output layer `modules_to_save` trained
    /// apart from the embedding).
    pub fn update_hf_config(&self, config: &mut serde_json::Map<String, serde_json::Value>) {
        let v = self.config.vocab_size;
        if config.get("vocab_size").and_then(serde_json::Value::as_u64) != Some(v as u64) {
            config.insert("vocab_size".into(), v.into());
        }
        if self.lm_head.is_some() && config.get("tie_word_embeddings").and_then(serde_json::Value::as_bool) != Some(false) {
            config.insert("tie_word_embeddings".into(), false.into());
        }
    }

    /// The LoRA settings when adapters are attached.
    pub fn lora(&self) -> Option<&LoraSettings> {
        self.lora.as_ref()
    }

    /// The output layer's weight `[vocab, hidden]` (the embedding when tied).
    pub(crate) fn output_weight(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// The final hidden states `[batch·seq, hidden]` (after the last norm).
    pub fn hidden(&self, batch: &Batch) -> Result<Tensor, ModelError> {
        self.hidden_with(batch, None, &Pending::default())
    }

    /// [`Model::hidden`] while training; checkpointed layers leave their parameter gradients in
    /// `pending` when they backpropagate.
    fn hidden_with(&self, batch: &Batch, dropout_seed: Option<u64>, pending: &Pending) -> Result<Tensor, ModelError> {
        let cfg = &self.config;
        let ids = batch.input_ids.flatten_all().during(|| "reading input ids".into())?;
        let max = ids.max(0).and_then(|m| m.to_scalar::<u32>()).during(|| "reading input ids".into())?;
        if max as usize >= cfg.vocab_size {
            return Err(ModelError::Batch(format!("token id {max} is outside the vocabulary of {}", cfg.vocab_size)));
        }
        let mut cx = self.context(batch).during(|| "building attention ranges".into())?;
        let p = self.lora.as_ref().map_or(0.0, |l| l.dropout);
        cx.dropout = dropout_seed.filter(|_| p > 0.0).map(|seed| Dropout { p, seed });
        let mut h = self.embed.index_select(&ids, 0).during(|| "embedding".into())?;
        if let Some(s) = cfg.embed_scale {
            h = (h * s as f64).during(|| "scaling embeddings".into())?;
        }
        let cx = Arc::new(cx);
        for (i, layer) in self.layers.iter().enumerate() {
            h = if self.checkpointing && h.track_op() {
                let params = self.layer_params[i].clone();
                let op = Recompute { layer: layer.clone(), cfg: self.config.clone(), cx: cx.clone(), params, pending: pending.clone() };
                op.forward(&h)
            } else {
                layer.forward(&h, cfg, &cx, None)
            }
            .during(|| format!("model.layers.{i}"))?;
        }
        rms_norm(&h, &self.norm, cfg.rms_norm_eps, cfg.norm_offset).during(|| "model.norm".into())
    }

    /// Gemma 2's `final_logit_softcapping` (`cap · tanh(z / cap)`) on logits `z`, when set.
    pub(crate) fn final_softcap(&self, z: Tensor) -> candle_core::Result<Tensor> {
        match self.config.final_softcap {
            Some(cap) => (z / cap)?.tanh()? * cap,
            None => Ok(z),
        }
    }

    fn context(&self, batch: &Batch) -> candle_core::Result<Context> {
        let mut starts = vec![];
        // One table per distinct RoPE (Gemma 3's two kinds of layers have two).
        let mut tables: Vec<(&Rope, Arc<RopeTable>)> = vec![];
        let mut ropes = vec![];
        for layer in &self.config.layers {
            if !starts.iter().any(|(w, _)| *w == layer.sliding_window) {
                starts.push((layer.sliding_window, Arc::new(batch.attention_starts(layer.sliding_window))));
            }
            let table = match tables.iter().find(|(r, _)| **r == layer.rope) {
                Some((_, t)) => t.clone(),
                None => {
                    let t = Arc::new(RopeTable::forward(&batch.positions, &layer.rope));
                    tables.push((&layer.rope, t.clone()));
                    t
                }
            };
            ropes.push(table);
        }
        Ok(Context { batch: batch.batch, seq: batch.seq, starts, ropes, dropout: None })
    }

    /// The logits of the last position of a one-row batch, `[vocab]`.
    pub fn last_logits(&self, batch: &Batch) -> Result<Tensor, ModelError> {
        let h = self.hidden(batch)?;
        let n = batch.batch * batch.seq;
        let run = || -> candle_core::Result<Tensor> {
            let last = h.narrow(0, n - 1, 1)?;
            self.final_softcap(last.matmul(&self.output_weight().t()?)?)?.flatten_all()
        };
        run().during(|| "lm_head".into())
    }

    /// Full logits `[batch, seq, vocab]` (tests and generation; training uses [`Model::loss`]).
    pub fn logits(&self, batch: &Batch) -> Result<Tensor, ModelError> {
        let h = self.hidden(batch)?;
        let run = || -> candle_core::Result<Tensor> {
            let z = self.final_softcap(h.matmul(&self.output_weight().t()?)?)?;
            z.reshape((batch.batch, batch.seq, self.config.vocab_size))
        };
        run().during(|| "lm_head".into())
    }

    /// The summed cross-entropy of the batch's targets, computed in chunks (the logits matrix is
    /// never held whole).
    pub fn loss(&self, batch: &Batch) -> Result<Loss, ModelError> {
        self.loss_with(batch, None)
    }

    /// [`Model::loss`] while training: `dropout_seed` draws the LoRA dropout masks (when the
    /// adapters have dropout).
    pub fn loss_with(&self, batch: &Batch, dropout_seed: Option<u64>) -> Result<Loss, ModelError> {
        let pending = Pending::default();
        let h = self.hidden_with(batch, dropout_seed, &pending)?;
        let run = || -> candle_core::Result<Tensor> {
            if batch.targets.is_empty() {
                return Tensor::new(0f32, h.device());
            }
            let rows = Tensor::from_slice(&batch.target_rows, batch.target_rows.len(), h.device())?;
            let picked = h.index_select(&rows, 0)?;
            // bf16: true also takes the frozen output layer's products in bf16.
            let weight = self.output_weight();
            let bf16_weight = self.head_bf16.clone().filter(|q| q.bf16_matmul().is_some() && !weight.track_op());
            linear_cross_entropy(&picked, weight, &batch.targets, CrossEntropy { softcap: self.config.final_softcap, bf16_weight })
        };
        Ok(Loss { sum: run().during(|| "loss".into())?, tokens: batch.targets.len(), pending })
    }

    /// The summed loss of every sequence, one at a time (no gradient is kept).
    pub fn evaluate(&self, sequences: &[Sequence<'_>]) -> Result<Evaluation, ModelError> {
        let mut total = Evaluation::default();
        for (i, s) in sequences.iter().enumerate() {
            let batch = Batch::new(std::slice::from_ref(s), 0)?;
            let loss = self.loss(&batch)?;
            let sum = loss.sum.detach().to_scalar::<f32>().during(|| format!("sequence {i}: reading the loss"))?;
            total.loss_sum += sum as f64;
            total.tokens += loss.tokens;
        }
        Ok(total)
    }
}

impl Model {
    /// The base model of `dir` with the PEFT adapter of `adapter` folded into its weights
    /// (`W + s·B·A` for every adapted module; DoRA: `m/‖W + s·B·A‖ ∘ (W + s·B·A)`, row by row,
    /// as PEFT's `merge_and_unload`): every weight is a parameter, ready for
    /// [`Model::save_weights`].
    pub fn merged(dir: &Path, adapter: &Path) -> Result<Self, ModelError> {
        let opts = LoadOptions { saved_modules: Some(adapter.into()), ..LoadOptions::default() };
        let model = Self::load_with(dir, &Trainable::Full, &opts)?;
        let settings = LoraSettings::from_adapter_dir(adapter)?;
        let weights = Weights::open(adapter, crate::lora::ADAPTER_WEIGHTS)?;
        // The modules_to_save weights were taken whole by the load.
        let mut used: std::collections::BTreeSet<String> =
            crate::lora::SavedModule::ALL.iter().flat_map(|m| std::iter::once(m.peft_weight()).chain(m.peft_extra_copies())).collect();
        for (name, var) in &model.params {
            let Some(module) = name.strip_suffix(".weight") else { continue };
            let (a_name, b_name) = crate::lora::peft_names(module);
            if !weights.has(&a_name) {
                continue;
            }
            let (out, inp) = var.dims2().during(|| format!("{name}: expected a matrix"))?;
            let a = weights.get(&a_name, &[settings.r, inp])?;
            let b = weights.get(&b_name, &[out, settings.r])?;
            let magnitude = match settings.use_dora {
                true => {
                    let m_name = crate::lora::peft_magnitude_name(module);
                    let m = weights.get(&m_name, &[out])?;
                    used.insert(m_name);
                    Some(m)
                }
                false => None,
            };
            let fold = || -> candle_core::Result<Tensor> {
                let adapted = (var.as_tensor() + b.matmul(&a)?.affine(settings.scaling(), 0.0)?)?;
                match &magnitude {
                    Some(m) => {
                        let norm = adapted.sqr()?.sum_keepdim(1)?.sqrt()?;
                        adapted.broadcast_mul(&m.reshape((out, 1))?.div(&norm)?)
                    }
                    None => Ok(adapted),
                }
            };
            let merged = fold().during(|| format!("merging into {name}"))?;
            var.set(&merged).during(|| format!("merging into {name}"))?;
            used.insert(a_name);
            used.insert(b_name);
        }
        if let Some(extra) = weights.names().iter().find(|n| !used.contains(*n)) {
            return Err(ModelError::BadTensor {
                dir: adapter.into(),
                name: extra.clone(),
                message: "no weight of the model takes it (an adapter for another model?)".into(),
            });
        }
        Ok(model)
    }
}
