//! LoRA: a frozen linear layer plus a trainable low-rank update, `y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ`, with
//! `s = alpha / r` (or `alpha / √r` with rsLoRA), in PEFT's file format: `adapter_config.json`
//! ([`PeftConfig`], read and written by [`peft`]) and `adapter_model.safetensors` with names
//! like `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` ([`peft_names`]).
//!
//! DoRA (`use_dora`) adds a trainable magnitude per output row, saved as
//! `base_model.model.<module>.lora_magnitude_vector` ([`peft_magnitude_name`]): the layer is
//! `y = m/‖W + s·B·A‖ ∘ (x·Wᵀ + s·(x·Aᵀ)·Bᵀ) + b` (see `ops::dora`).
//!
//! `modules_to_save` ([`SavedModule`]) trains the embedding and/or the output layer whole next
//! to the adapters, as PEFT's `ModulesToSaveWrapper` does: each listed module is a trainable copy
//! (with tied embeddings the two copies are separate, PEFT's default), saved in the adapter file
//! under PEFT's names (`base_model.model.model.embed_tokens.weight`,
//! `base_model.model.lm_head.weight`), with as many rows as the vocabulary has after tokens were
//! added ([`resize_rows`]).

mod peft;

pub use peft::{PeftConfig, ADAPTER_CONFIG, ADAPTER_WEIGHTS};

use candle_core::Tensor;
use regex::Regex;

use crate::rng::SplitMix;

/// Which linear modules carry adapters.
#[derive(Debug, Clone)]
pub enum Targets {
    /// Every linear layer of the decoder layers (PEFT's `all-linear`; never the output layer).
    AllLinear,
    /// Modules whose name equals one of these or ends with `.` + one of them (`q_proj`, ...).
    Names(Vec<String>),
    /// Modules whose full name matches this regular expression (PEFT's string form).
    Pattern(Regex),
}

impl Targets {
    /// Whether the module with this HF name (e.g. `model.layers.0.self_attn.q_proj`) is a target.
    pub fn matches(&self, module: &str) -> bool {
        match self {
            Targets::AllLinear => module != "lm_head",
            Targets::Names(names) => names.iter().any(|n| module == n || module.ends_with(&format!(".{n}"))),
            Targets::Pattern(re) => re.is_match(module),
        }
    }
}

/// A validated LoRA setup.
#[derive(Debug, Clone)]
pub struct LoraSettings {
    /// Rank.
    pub r: usize,
    /// Alpha.
    pub alpha: f64,
    /// Scale by `alpha / √r` instead of `alpha / r`.
    pub use_rslora: bool,
    /// Dropout on the adapter's input while training.
    pub dropout: f64,
    /// Which modules.
    pub targets: Targets,
    /// DoRA: a trainable magnitude vector per adapted module.
    pub use_dora: bool,
    /// Modules trained whole and saved with the adapter (PEFT's `modules_to_save`).
    pub modules_to_save: Vec<SavedModule>,
}

/// A module PEFT's `modules_to_save` may name that sft can train whole: the two vocabulary
/// layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SavedModule {
    /// `model.embed_tokens`.
    EmbedTokens,
    /// `lm_head`.
    LmHead,
}

impl SavedModule {
    /// Both, in load order.
    pub const ALL: [SavedModule; 2] = [SavedModule::EmbedTokens, SavedModule::LmHead];

    /// The module of a `modules_to_save` entry (PEFT matches the name's last part, or the full
    /// name); `None` for any other module.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "embed_tokens" | "model.embed_tokens" => Some(SavedModule::EmbedTokens),
            "lm_head" => Some(SavedModule::LmHead),
            _ => None,
        }
    }

    /// The name PEFT lists in `modules_to_save`.
    pub fn name(self) -> &'static str {
        match self {
            SavedModule::EmbedTokens => "embed_tokens",
            SavedModule::LmHead => "lm_head",
        }
    }

    /// The module's HF weight name.
    pub fn hf_weight(self) -> &'static str {
        match self {
            SavedModule::EmbedTokens => "model.embed_tokens.weight",
            SavedModule::LmHead => "lm_head.weight",
        }
    }

    /// The name of its tensor in PEFT's adapter file.
    pub fn peft_weight(self) -> String {
        format!("base_model.model.{}", self.hf_weight())
    }

    /// The extra copies PEFT's `save_embedding_layers="auto"` also writes when the vocabulary
    /// was resized (`<module>.modules_to_save.weight`, `<module>.original_module.weight`): read
    /// past, never written.
    pub fn peft_extra_copies(self) -> [String; 2] {
        let module = self.hf_weight().trim_end_matches(".weight");
        [format!("base_model.model.{module}.modules_to_save.weight"), format!("base_model.model.{module}.original_module.weight")]
    }
}

/// `weight` `[rows, d]` grown to `rows_after` rows, the new ones the mean of the old rows:
/// transformers' `resize_token_embeddings` (`mean_resizing=True`) without the noise it adds
/// (it samples from a normal with that mean and 1e-9 times the rows' covariance, about 3e-5
/// standard deviations from the mean; its fallback is the plain mean, which sft always takes,
/// so a resize is deterministic). Fewer or equal rows: the weight as it is.
pub fn resize_rows(weight: &Tensor, rows_after: usize) -> candle_core::Result<Tensor> {
    let (rows, d) = weight.dims2()?;
    if rows_after <= rows {
        return Ok(weight.clone());
    }
    let data = weight.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let mut mean = vec![0f64; d];
    for row in data.chunks(d) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += f64::from(v);
        }
    }
    let mean: Vec<f32> = mean.iter().map(|m| (m / rows.max(1) as f64) as f32).collect();
    let added = Tensor::from_vec(mean.repeat(rows_after - rows), (rows_after - rows, d), weight.device())?;
    Tensor::cat(&[&weight.to_dtype(candle_core::DType::F32)?, &added], 0)
}

impl LoraSettings {
    /// The factor on the low-rank update.
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }
}

/// One module's adapter.
#[derive(Debug, Clone)]
pub struct Lora {
    /// `[r, in]`.
    pub a: Tensor,
    /// `[out, r]`.
    pub b: Tensor,
    /// The factor on `x·Aᵀ·Bᵀ`.
    pub scaling: f64,
    /// The module's number in load order (it seeds the module's dropout mask).
    pub index: u64,
    /// DoRA's magnitudes, when the adapter is a DoRA adapter.
    pub dora: Option<Dora>,
}

/// A DoRA module's magnitude vector `m` `[out]` and, for an adapter that does not train, its
/// factor `m/‖W + s·B·A‖` computed once (decoding would otherwise recompute the norms of the
/// whole weight for every token).
#[derive(Debug, Clone)]
pub struct Dora {
    /// `m`, one per output row.
    pub magnitude: Tensor,
    /// `m/‖W + s·B·A‖`, set when A, B and m are constants.
    pub frozen_scale: Option<Tensor>,
}

/// Dropout on the adapters' input for one forward pass: probability `p`; the masks are a pure
/// function of `seed` and the module, so a resumed run draws the same ones.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dropout {
    /// Probability of zeroing an input element.
    pub p: f64,
    /// Seed of this forward pass's masks.
    pub seed: u64,
}

impl Dropout {
    /// The mask of module `index` over `n` input elements: 0 with probability `p`, otherwise
    /// 1/(1−p).
    pub fn mask(&self, index: u64, n: usize) -> Vec<f32> {
        let mut rng = SplitMix(self.seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let keep = (1.0 / (1.0 - self.p)) as f32;
        (0..n).map(|_| if rng.next_f64() < self.p { 0.0 } else { keep }).collect()
    }
}

impl Lora {
    /// Whether any of the adapter's tensors is trainable.
    pub fn trains(&self) -> bool {
        self.a.track_op() || self.b.track_op() || self.dora.as_ref().is_some_and(|d| d.magnitude.track_op())
    }

    /// The update `s · (drop(x)·Aᵀ)·Bᵀ` for `x` of shape `[n, in]` (PEFT's order).
    pub fn forward(&self, x: &Tensor, dropout: Option<Dropout>) -> candle_core::Result<Tensor> {
        let x = match dropout {
            Some(d) if d.p > 0.0 => (x * Tensor::from_vec(d.mask(self.index, x.elem_count()), x.shape(), x.device())?)?,
            _ => x.clone(),
        };
        x.matmul(&self.a.t()?)?.matmul(&self.b.t()?)? * self.scaling
    }
}

/// PEFT's saved names of a module's A and B matrices.
pub fn peft_names(module: &str) -> (String, String) {
    (format!("base_model.model.{module}.lora_A.weight"), format!("base_model.model.{module}.lora_B.weight"))
}

/// PEFT's saved name of a module's DoRA magnitude vector (no `.weight`, as PEFT 0.21 writes it).
pub fn peft_magnitude_name(module: &str) -> String {
    format!("base_model.model.{module}.lora_magnitude_vector")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resized_rows_are_the_mean_of_the_old_ones() -> candle_core::Result<()> {
        let w = Tensor::new(&[[1f32, 2.0], [3.0, -4.0]], &candle_core::Device::Cpu)?;
        let r = resize_rows(&w, 4)?.to_vec2::<f32>()?;
        assert_eq!(r, vec![vec![1.0, 2.0], vec![3.0, -4.0], vec![2.0, -1.0], vec![2.0, -1.0]]);
        assert_eq!(resize_rows(&w, 2)?.dims(), &[2, 2]);
        assert_eq!(SavedModule::parse("model.embed_tokens"), Some(SavedModule::EmbedTokens));
        assert_eq!(SavedModule::LmHead.peft_weight(), "base_model.model.lm_head.weight");
        assert_eq!(SavedModule::parse("q_proj"), None);
        Ok(())
    }

    #[test]
    fn dropout_masks_are_seeded_and_scaled() -> candle_core::Result<()> {
        let dev = candle_core::Device::Cpu;
        let lora = Lora {
            a: Tensor::eye(3, candle_core::DType::F32, &dev)?,
            b: Tensor::eye(3, candle_core::DType::F32, &dev)?,
            scaling: 1.0,
            index: 4,
            dora: None,
        };
        let x = Tensor::ones((50, 3), candle_core::DType::F32, &dev)?;
        let d = Some(Dropout { p: 0.5, seed: 9 });
        let a = lora.forward(&x, d)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(a, lora.forward(&x, d)?.flatten_all()?.to_vec1::<f32>()?);
        assert!(a.iter().all(|&v| v == 0.0 || v == 2.0));
        let kept = a.iter().filter(|&&v| v == 2.0).count();
        assert!((40..110).contains(&kept), "{kept} of 150 kept");
        assert_eq!(lora.forward(&x, None)?.sum_all()?.to_scalar::<f32>()?, 150.0);
        Ok(())
    }
}
