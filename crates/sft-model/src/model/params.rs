//! Building a model's tensors: base weights from the model directory (trainable variables for
//! full fine-tuning, constants otherwise) and LoRA adapters (read from a PEFT directory, or
//! initialised as PEFT does: A Kaiming-uniform, B zeros).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Device, Tensor, Var};

use crate::config::ModelConfig;
use crate::error::TensorContext;
use crate::lora::{peft_magnitude_name, peft_names, resize_rows, Dora, Lora, LoraSettings, SavedModule};
use crate::ops::{dora_weight_norm, LinearWeight};
use crate::quant::{BaseFormat, QuantWeight};
use crate::rng::SplitMix;
use crate::weights::Weights;
use crate::ModelError;

/// What trains.
#[derive(Debug, Clone)]
pub enum Trainable {
    /// Nothing (evaluation, generation).
    Frozen,
    /// Every base weight (full fine-tuning).
    Full,
    /// New LoRA adapters on the targeted modules; the base stays frozen. `seed` fixes A's init.
    NewLora {
        /// Rank, alpha, targets.
        settings: LoraSettings,
        /// Seed of A's initialisation.
        seed: u64,
    },
    /// A PEFT adapter directory; `train` makes its matrices trainable (resuming).
    Adapter {
        /// The directory (adapter_config.json, adapter_model.safetensors).
        dir: PathBuf,
        /// Whether A and B train.
        train: bool,
    },
}

enum AdapterSource {
    None,
    Init { settings: LoraSettings, rng: SplitMix },
    File { file: Box<AdapterFile>, train: bool },
}

/// A PEFT adapter directory being attached to a model's linear modules, one module at a time:
/// which modules take an A/B pair, and the check at the end that every tensor of the file found
/// its module. Shared by loading (`Builder`) and by adapter views on a loaded base
/// (`Model::with_adapter`).
pub(crate) struct AdapterFile {
    pub settings: LoraSettings,
    weights: Weights,
    used: BTreeSet<String>,
}

impl AdapterFile {
    pub fn open(dir: &Path) -> Result<Self, ModelError> {
        Ok(Self {
            settings: LoraSettings::from_adapter_dir(dir)?,
            weights: Weights::open(dir, crate::lora::ADAPTER_WEIGHTS)?,
            used: BTreeSet::new(),
        })
    }

    /// The A `[r, inp]`, B `[out, r]` and, for DoRA, magnitude `[out]` of linear module `module`
    /// when it is a target or the file holds its pair (PEFT names).
    pub fn take(&mut self, module: &str, out: usize, inp: usize) -> Result<Option<AdapterTensors>, ModelError> {
        let (a_name, b_name) = peft_names(module);
        if !self.settings.targets.matches(module) && !self.weights.has(&a_name) {
            return Ok(None);
        }
        let r = self.settings.r;
        let (a, b) = (self.weights.get(&a_name, &[r, inp])?, self.weights.get(&b_name, &[out, r])?);
        self.used.insert(a_name);
        self.used.insert(b_name);
        let magnitude = match self.settings.use_dora {
            true => {
                let name = peft_magnitude_name(module);
                let m = self.weights.get(&name, &[out])?;
                self.used.insert(name);
                Some(m)
            }
            false => None,
        };
        Ok(Some(AdapterTensors { a, b, magnitude }))
    }

    /// The whole weight `[rows, d]` of `module` when the file holds it (a `modules_to_save`
    /// entry; its rows are the vocabulary the adapter was trained with). PEFT's extra copies of
    /// it are read past. A module the config lists that the file lacks is an error.
    pub fn take_saved(&mut self, module: SavedModule, d: usize) -> Result<Option<Tensor>, ModelError> {
        for extra in module.peft_extra_copies() {
            if self.weights.has(&extra) {
                self.used.insert(extra);
            }
        }
        let name = module.peft_weight();
        let Some(shape) = self.weights.shape(&name) else {
            if self.settings.modules_to_save.contains(&module) {
                return Err(ModelError::MissingTensor { dir: self.weights.dir().into(), name });
            }
            return Ok(None);
        };
        let rows = match shape.as_slice() {
            [rows, cols] if *cols == d => *rows,
            _ => {
                let message = format!("shape {shape:?}, expected [vocabulary, {d}] (a modules_to_save weight of another model?)");
                return Err(ModelError::BadTensor { dir: self.weights.dir().into(), name, message });
            }
        };
        let t = self.weights.get(&name, &[rows, d])?;
        self.used.insert(name);
        Ok(Some(t))
    }

    /// Fails when the file holds tensors no module took (it belongs to another model), or when
    /// no module took any.
    pub fn finish(&self) -> Result<(), ModelError> {
        if let Some(extra) = self.weights.names().iter().find(|n| !self.used.contains(*n)) {
            return Err(ModelError::BadTensor {
                dir: self.weights.dir().into(),
                name: extra.clone(),
                message:
                    "no module of the model takes it (an adapter for another model, or LoRA on lm_head/embed_tokens, which is not supported; modules_to_save is)"
                        .into(),
            });
        }
        if self.used.is_empty() {
            return Err(ModelError::Config {
                path: self.weights.dir().join(crate::lora::ADAPTER_CONFIG),
                key: "target_modules".into(),
                message: "no module of the model is a target".into(),
            });
        }
        Ok(())
    }
}

/// One module's tensors from an adapter file.
pub(crate) struct AdapterTensors {
    pub a: Tensor,
    pub b: Tensor,
    /// DoRA's magnitude vector.
    pub magnitude: Option<Tensor>,
}

/// Where base weights come from.
pub(crate) enum BaseSource {
    /// A model directory's safetensors.
    Files(Weights),
    /// Random, as transformers initialises a new model: N(0, std) for matrices, norms at their
    /// identity (1, or 0 with Gemma's `1 + w`), zero biases.
    Random { rng: SplitMix, std: f64, norm_value: f32, dir: PathBuf },
}

impl BaseSource {
    fn dir(&self) -> &Path {
        match self {
            BaseSource::Files(w) => w.dir(),
            BaseSource::Random { dir, .. } => dir,
        }
    }

    fn get(&mut self, name: &str, shape: &[usize]) -> Result<Tensor, ModelError> {
        let (rng, std, norm_value, dir) = match self {
            BaseSource::Files(w) => return w.get(name, shape),
            BaseSource::Random { rng, std, norm_value, dir } => (rng, *std, *norm_value, dir),
        };
        let n: usize = shape.iter().product();
        let data: Vec<f32> = if name.ends_with("norm.weight") {
            vec![norm_value; n]
        } else if name.ends_with(".bias") {
            vec![0.0; n]
        } else {
            (0..n).map(|_| (rng.next_normal() * std) as f32).collect()
        };
        Tensor::from_vec(data, shape, &Device::Cpu).map_err(|e| ModelError::BadTensor {
            dir: dir.clone(),
            name: name.into(),
            message: e.to_string(),
        })
    }
}

/// Collects tensors and trainable variables while the layers load.
pub(crate) struct Builder {
    base: BaseSource,
    full: bool,
    format: BaseFormat,
    /// Weights held in a compact (non-f32) format, and their bytes.
    pub quantized: (usize, usize),
    adapter: AdapterSource,
    /// Trainable parameters in load order, under their HF / PEFT names.
    pub params: Vec<(String, Var)>,
    lora_count: u64,
    /// Whole vocabulary layers to take instead of the base's (`Model::merged`: the adapter's
    /// `modules_to_save` weights, folded into a full model).
    saved_from: Option<AdapterFile>,
}

/// The output layer decided with the embedding ([`Builder::embedding`]), read (the base's own)
/// and made a parameter (or not) in its place in load order by [`Builder::output_layer`], so a
/// random model draws its weights in the same order whatever the vocabulary layers are.
pub(crate) struct PendingHead {
    head: Option<(Head, bool)>,
}

/// Where the output layer comes from.
enum Head {
    /// A tensor already at hand (the adapter's, or the tied embedding's copy).
    Ready(Tensor),
    /// The base's `lm_head.weight` `[vocab, d]`, grown to `rows`.
    Base { vocab: usize, d: usize, rows: usize },
}

fn var(t: Tensor, dir: &Path, name: &str) -> Result<Var, ModelError> {
    Var::from_tensor(&t).map_err(|e| ModelError::BadTensor { dir: dir.into(), name: name.into(), message: e.to_string() })
}

impl Builder {
    pub fn new(base: BaseSource, trainable: &Trainable, format: BaseFormat) -> Result<Self, ModelError> {
        let adapter = match trainable {
            Trainable::Frozen | Trainable::Full => AdapterSource::None,
            Trainable::NewLora { settings, seed } => AdapterSource::Init { settings: settings.clone(), rng: SplitMix(*seed) },
            Trainable::Adapter { dir, train } => AdapterSource::File { file: Box::new(AdapterFile::open(dir)?), train: *train },
        };
        let full = matches!(trainable, Trainable::Full);
        if full && format != BaseFormat::F32 {
            return Err(ModelError::Config {
                path: base.dir().join("config.json"),
                key: "load_in_4bit".into(),
                message: format!("base weights as {format:?} are frozen: full fine-tuning needs f32 (use LoRA)"),
            });
        }
        Ok(Self { base, full, format, quantized: (0, 0), adapter, params: vec![], lora_count: 0, saved_from: None })
    }

    /// How frozen linear weights are held.
    pub fn format(&self) -> BaseFormat {
        self.format
    }

    /// Takes the vocabulary layers an adapter saved whole from `dir` (for a full model).
    pub fn with_saved_modules(mut self, dir: &Path) -> Result<Self, ModelError> {
        self.saved_from = Some(AdapterFile::open(dir)?);
        Ok(self)
    }

    /// The adapter file whole vocabulary layers come from, if any.
    fn saved_source(&mut self) -> Option<&mut AdapterFile> {
        match (&mut self.saved_from, &mut self.adapter) {
            (Some(file), _) => Some(file),
            (None, AdapterSource::File { file, .. }) => Some(file),
            _ => None,
        }
    }

    /// The embedding `[rows, d]`, and the output layer to come: the base's, grown to `rows`
    /// (at least; more when the adapter saved more) with new rows at the old rows' mean
    /// ([`resize_rows`]), or the adapter's `modules_to_save` weights. With tied embeddings the
    /// output layer stays the embedding unless a module of `modules_to_save` is involved: then
    /// each is a tensor of its own (PEFT trains separate copies). Returns the final row count.
    pub fn embedding(&mut self, config: &ModelConfig, rows: Option<usize>) -> Result<(Tensor, PendingHead, usize), ModelError> {
        let (v, d) = (config.vocab_size, config.hidden_size);
        let listed = self.lora_settings().map(|s| s.modules_to_save.clone()).unwrap_or_default();
        let (saved_embed, saved_head) = match self.saved_source() {
            Some(file) => (file.take_saved(SavedModule::EmbedTokens, d)?, file.take_saved(SavedModule::LmHead, d)?),
            None => (None, None),
        };
        let rows = [Some(v), rows, saved_embed.as_ref().map(|t| t.dims()[0]), saved_head.as_ref().map(|t| t.dims()[0])]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(v);
        let dir = self.base.dir().to_path_buf();
        let resize = |t: Tensor, name: &str| {
            resize_rows(&t, rows).map_err(|e| ModelError::BadTensor { dir: dir.clone(), name: name.into(), message: e.to_string() })
        };
        let base_embed = self.base.get(SavedModule::EmbedTokens.hf_weight(), &[v, d])?;
        let separate = !config.tie_word_embeddings || !listed.is_empty() || saved_embed.is_some() || saved_head.is_some();
        let head = match (separate, saved_head) {
            (false, _) => None,
            (true, Some(t)) => Some(Head::Ready(t)),
            (true, None) if config.tie_word_embeddings => Some(Head::Ready(resize(base_embed.clone(), SavedModule::LmHead.hf_weight())?)),
            (true, None) => Some(Head::Base { vocab: v, d, rows }),
        };
        let embed = match saved_embed {
            Some(t) => t,
            None => resize(base_embed, SavedModule::EmbedTokens.hf_weight())?,
        };
        let ready = match &head {
            Some(Head::Ready(t)) => Some(t),
            _ => None,
        };
        for (t, module) in [(Some(&embed), SavedModule::EmbedTokens), (ready, SavedModule::LmHead)] {
            if let Some(t) = t.filter(|t| t.dims()[0] != rows) {
                let message = format!("{} rows, but the vocabulary has {rows}", t.dims()[0]);
                return Err(ModelError::BadTensor { dir: self.base.dir().into(), name: module.peft_weight(), message });
            }
        }
        let trains = |module: SavedModule| match &self.adapter {
            AdapterSource::None => false,
            AdapterSource::Init { settings, .. } => settings.modules_to_save.contains(&module),
            AdapterSource::File { file, train } => {
                *train && (file.settings.modules_to_save.contains(&module) || file.used.contains(&module.peft_weight()))
            }
        };
        let (embed_trains, head_trains) = (trains(SavedModule::EmbedTokens), trains(SavedModule::LmHead));
        let embed = self.vocab_param(embed, SavedModule::EmbedTokens, embed_trains)?;
        Ok((embed, PendingHead { head: head.map(|t| (t, head_trains)) }, rows))
    }

    /// The output layer of [`Builder::embedding`], a parameter where it trains; `None` when it is
    /// the embedding.
    pub fn output_layer(&mut self, pending: PendingHead) -> Result<Option<Tensor>, ModelError> {
        let Some((head, trains)) = pending.head else { return Ok(None) };
        let name = SavedModule::LmHead.hf_weight();
        let t = match head {
            Head::Ready(t) => t,
            Head::Base { vocab, d, rows } => {
                let base = self.base.get(name, &[vocab, d])?;
                resize_rows(&base, rows).map_err(|e| ModelError::BadTensor {
                    dir: self.base.dir().into(),
                    name: name.into(),
                    message: e.to_string(),
                })?
            }
        };
        self.vocab_param(t, SavedModule::LmHead, trains).map(Some)
    }

    /// A vocabulary layer: a variable under its HF name (full fine-tuning) or PEFT name (a
    /// trained `modules_to_save` entry), else a constant.
    fn vocab_param(&mut self, t: Tensor, module: SavedModule, trains: bool) -> Result<Tensor, ModelError> {
        let name = match (self.full, trains) {
            (true, _) => module.hf_weight().to_string(),
            (false, true) => module.peft_weight(),
            (false, false) => return Ok(t),
        };
        let v = var(t, self.base.dir(), &name)?;
        let t = v.as_tensor().clone();
        self.params.push((name, v));
        Ok(t)
    }

    /// The LoRA settings in use, if any.
    pub fn lora_settings(&self) -> Option<&LoraSettings> {
        match &self.adapter {
            AdapterSource::None => None,
            AdapterSource::Init { settings, .. } => Some(settings),
            AdapterSource::File { file, .. } => Some(&file.settings),
        }
    }

    /// A base weight; a variable under full fine-tuning.
    pub fn weight(&mut self, name: &str, shape: &[usize]) -> Result<Tensor, ModelError> {
        let t = self.base.get(name, shape)?;
        if !self.full {
            return Ok(t);
        }
        let v = var(t, self.base.dir(), name)?;
        let t = v.as_tensor().clone();
        self.params.push((name.to_string(), v));
        Ok(t)
    }

    /// A linear layer's `[out, inp]` weight: f32 (a variable under full fine-tuning), or frozen
    /// in the base format.
    pub fn linear_weight(&mut self, name: &str, out: usize, inp: usize) -> Result<LinearWeight, ModelError> {
        if self.full || self.format == BaseFormat::F32 {
            return Ok(LinearWeight::Dense(self.weight(name, &[out, inp])?));
        }
        let t = self.base.get(name, &[out, inp])?;
        let data = t.flatten_all().and_then(|t| t.to_vec1::<f32>()).during(|| format!("reading {name}"))?;
        Ok(match QuantWeight::new(&data, out, inp, self.format) {
            Some(q) => {
                self.quantized.0 += out * inp;
                self.quantized.1 += q.bytes();
                LinearWeight::Quant(Arc::new(q))
            }
            None => LinearWeight::Dense(t),
        })
    }

    /// The adapter of linear module `module` with weight `weight`, if it is a target. A new
    /// DoRA magnitude is `‖W + s·B·A‖` (PEFT's init; `‖W‖`, B being zero).
    pub fn lora(&mut self, module: &str, weight: &LinearWeight) -> Result<Option<Lora>, ModelError> {
        let wrap = |e: candle_core::Error| ModelError::Tensor { context: format!("initialising the adapter of {module}"), source: e };
        let (out, inp) = weight.dims().map_err(wrap)?;
        let (t, train, scaling) = match &mut self.adapter {
            AdapterSource::None => return Ok(None),
            AdapterSource::Init { settings, rng } => {
                if !settings.targets.matches(module) {
                    return Ok(None);
                }
                let r = settings.r;
                // PEFT: kaiming_uniform_(A, a=√5), i.e. U(−1/√in, 1/√in); B = 0.
                let bound = 1.0 / (inp as f64).sqrt();
                let a: Vec<f32> = (0..r * inp).map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32).collect();
                let a = Tensor::from_vec(a, (r, inp), &Device::Cpu).map_err(wrap)?;
                let b = Tensor::zeros((out, r), candle_core::DType::F32, &Device::Cpu).map_err(wrap)?;
                let magnitude = match settings.use_dora {
                    true => Some(dora_weight_norm(weight, &a, &b, settings.scaling()).map_err(wrap)?),
                    false => None,
                };
                (AdapterTensors { a, b, magnitude }, true, settings.scaling())
            }
            AdapterSource::File { file, train } => match file.take(module, out, inp)? {
                Some(t) => (t, *train, file.settings.scaling()),
                None => return Ok(None),
            },
        };
        let (a_name, b_name) = peft_names(module);
        let (dir, params) = (self.base.dir().to_path_buf(), &mut self.params);
        let mut keep = |name: String, t: Tensor| -> Result<Tensor, ModelError> {
            if !train {
                return Ok(t);
            }
            let v = var(t, &dir, &name)?;
            let t = v.as_tensor().clone();
            params.push((name, v));
            Ok(t)
        };
        let (a, b) = (keep(a_name, t.a)?, keep(b_name, t.b)?);
        let magnitude = t.magnitude.map(|m| keep(peft_magnitude_name(module), m)).transpose()?;
        let dora = magnitude.map(|magnitude| Dora { magnitude, frozen_scale: None });
        let index = self.lora_count;
        self.lora_count += 1;
        Ok(Some(Lora { a, b, scaling, index, dora }))
    }

    /// Fails when the adapter file holds tensors no module used (it belongs to another model).
    pub fn finish(&self) -> Result<(), ModelError> {
        match &self.adapter {
            AdapterSource::File { file, .. } => file.finish(),
            _ => Ok(()),
        }
    }
}
