//! AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization") with f32 moment
//! estimates, equal to `torch.optim.AdamW` (single-tensor path), and global gradient-norm
//! clipping equal to `torch.nn.utils.clip_grad_norm_`.
//!
//! Weight decay applies only to tensors of rank >= 2 (matrices, embeddings); norms and biases
//! (rank 1) are not decayed, as in nanoGPT and most HF recipes. [`AdamW::decay_counts`] gives the
//! counts to print.
//!
//! Each parameter's update is one pass over its f32 data (parameter, gradient, both moments;
//! parameters of other dtypes are updated in f32 and stored back in theirs),
//! element by element in torch's order, so a run is bit-for-bit deterministic and only the new
//! tensors are allocated.
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//! use sft_train::optim::{clip_grad_norm, AdamW, AdamWConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let w = Var::new(&[[1f32, 2.], [3., 4.]], &Device::Cpu)?;
//! let b = Var::new(&[0.5f32, -0.5], &Device::Cpu)?;
//! let config = AdamWConfig { weight_decay: 0.1, ..AdamWConfig::default() };
//! let mut opt = AdamW::new(vec![("w".into(), w), ("b".into(), b)], config)?;
//! assert_eq!(opt.decay_counts(), (1, 1));
//! let mut grads = vec![
//!     Tensor::new(&[[1f32, 1.], [1., 1.]], &Device::Cpu)?,
//!     Tensor::new(&[1f32, 1.], &Device::Cpu)?,
//! ];
//! let norm = clip_grad_norm(&mut grads, 1.0)?;
//! assert!((norm - 6f64.sqrt()).abs() < 1e-6);
//! opt.step(&grads, 1e-3)?;
//! assert_eq!(opt.steps_taken(), 1);
//! # Ok(())
//! # }
//! ```

use std::collections::{HashMap, HashSet};

use std::sync::Mutex;

use candle_core::{CpuStorage, DType, Device, InplaceOp2, Layout, Shape, Tensor, Var};
use rayon::prelude::*;
use sft_model::kernels::wide;

/// Errors from the optimizer, gradient clipping and optimizer-state loading.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OptimError {
    /// A tensor operation failed; `name` is the parameter (or `gradient {i}`) it was for.
    #[error("optimizer: tensor op on {name:?} failed: {source}")]
    Tensor {
        /// The parameter or gradient the op worked on.
        name: String,
        /// The candle error.
        #[source]
        source: candle_core::Error,
    },
    /// `step` got a different number of gradients than there are parameters.
    #[error("optimizer: got {got} gradients for {expected} parameters; pass one gradient per parameter, in params() order")]
    GradCount {
        /// Number of parameters.
        expected: usize,
        /// Number of gradients passed.
        got: usize,
    },
    /// A gradient's shape differs from its parameter's.
    #[error(
        "optimizer: gradient for {name:?} has shape {got:?}, the parameter has shape {expected:?}; gradients must be in params() order"
    )]
    GradShape {
        /// The parameter's name.
        name: String,
        /// The parameter's shape.
        expected: Shape,
        /// The gradient's shape.
        got: Shape,
    },
    /// Two parameters have the same name.
    #[error("optimizer: parameter name {name:?} appears twice; every parameter needs a unique name")]
    DuplicateName {
        /// The repeated name.
        name: String,
    },
    /// A parameter is not a floating-point tensor.
    #[error("optimizer: parameter {name:?} has dtype {dtype:?}; only floating-point tensors can be trained")]
    NotFloat {
        /// The parameter's name.
        name: String,
        /// Its dtype.
        dtype: DType,
    },
    /// A parameter lives off the CPU (the optimizer runs on the CPU).
    #[error("optimizer: parameter {name:?} is not on the CPU")]
    NotCpu {
        /// The parameter's name.
        name: String,
    },
    /// A configuration value or argument is out of range.
    #[error("optimizer: invalid {what} = {value}; expected {expected}")]
    Invalid {
        /// Which value (`beta1`, `lr`, `max_norm`, ...).
        what: &'static str,
        /// The value given.
        value: f64,
        /// The accepted range, in words.
        expected: &'static str,
    },
    /// The saved state lacks a tensor that a parameter needs.
    #[error("optimizer state: missing tensor {name:?}; was the checkpoint saved for a different set of trainable parameters?")]
    MissingState {
        /// The missing key (`{param}.exp_avg`, `{param}.exp_avg_sq` or [`STEP_KEY`]).
        name: String,
    },
    /// A saved state tensor's shape differs from its parameter's.
    #[error("optimizer state: tensor {name:?} has shape {got:?}, expected {expected:?}; was the checkpoint saved for a different model?")]
    StateShape {
        /// The state key.
        name: String,
        /// The parameter's shape.
        expected: Shape,
        /// The saved tensor's shape.
        got: Shape,
    },
    /// The saved state has a tensor that matches no parameter.
    #[error(
        "optimizer state: tensor {name:?} matches no parameter; was the checkpoint saved for a different set of trainable parameters?"
    )]
    UnexpectedState {
        /// The unknown key.
        name: String,
    },
    /// The saved step count is not a single non-negative integer.
    #[error("optimizer state: {what}")]
    BadStep {
        /// What is wrong with it.
        what: String,
    },
}

fn on(name: &str) -> impl FnOnce(candle_core::Error) -> OptimError + '_ {
    move |source| OptimError::Tensor { name: name.to_string(), source }
}

/// The scalars of one AdamW step, in f32 as the update runs.
#[derive(Clone, Copy)]
struct Coefficients {
    /// `1 − lr·wd` (applied to decayed parameters).
    decay: f32,
    /// `1 − β1`.
    beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    /// `1 / √(1 − β2ᵗ)`.
    inv_bc2_sqrt: f32,
    eps: f32,
    /// `−lr / (1 − β1ᵗ)`.
    step: f32,
}

impl Coefficients {
    /// One pass over a parameter, in place, element by element in torch's order:
    /// p ← p·(1 − lr·wd); m ← m + (g − m)(1 − β1); v ← v·β2 + g²(1 − β2);
    /// p ← p − step·m / (√v / √(1 − β2ᵗ) + ε).
    ///
    /// Compiled for AVX-512 where the CPU has it: at the SSE2 baseline the loop ran one element
    /// at a time (scalar square roots and divisions), 0.29 s of a full fine-tuning step of 135M
    /// parameters against 0.10 s vectorised. Both round each operation the same way, so the
    /// result is the same to the bit.
    fn update(&self, p: &mut [f32], g: &[f32], (m, v): (&mut [f32], &mut [f32]), decay: bool) {
        const CHUNK: usize = 1 << 14;
        let one = |p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]| {
            for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m).zip(v) {
                let p0 = if decay { *p * self.decay } else { *p };
                *m += (g - *m) * self.beta1;
                *v = *v * self.beta2 + g * g * self.one_minus_beta2;
                let denom = v.sqrt() * self.inv_bc2_sqrt + self.eps;
                *p = p0 + (*m / denom) * self.step;
            }
        };
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
            .for_each(|((p, g), (m, v))| wide(|| one(p, g, m, v)));
    }
}

/// One parameter's update as an in-place op on the parameter (its gradient the other input).
struct InPlace<'a> {
    k: Coefficients,
    decay: bool,
    moments: Mutex<(&'a mut [f32], &'a mut [f32])>,
}

impl InplaceOp2 for InPlace<'_> {
    fn name(&self) -> &'static str {
        "adamw"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<()> {
        let (Some((p0, p1)), Some((g0, g1))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            candle_core::bail!("AdamW: expects contiguous tensors");
        };
        let (CpuStorage::F32(p), CpuStorage::F32(g)) = (s1, s2) else {
            candle_core::bail!("AdamW: expects f32 tensors");
        };
        let mut moments = self.moments.lock().map_err(|_| candle_core::Error::Msg("AdamW: poisoned lock".into()))?;
        let (m, v) = &mut *moments;
        self.k.update(&mut p[p0..p1], &g[g0..g1], (m, v), self.decay);
        Ok(())
    }
}

/// Runs `f` over a tensor's f32 data (contiguous, CPU).
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> candle_core::Result<R>) -> candle_core::Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (candle_core::Storage::Cpu(cpu), Some((start, end))) => f(&cpu.as_slice::<f32>()?[start..end]),
        _ => Err(candle_core::Error::Msg("AdamW: expects contiguous f32 tensors on the CPU".into())),
    }
}

/// AdamW hyper-parameters other than the learning rate (which comes with each step).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// Decay rate of the first moment (torch `betas[0]`).
    pub beta1: f64,
    /// Decay rate of the second moment (torch `betas[1]`).
    pub beta2: f64,
    /// Added to the denominator for stability.
    pub eps: f64,
    /// Decoupled weight decay, applied to rank >= 2 tensors only.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// torch's defaults except weight decay: 0.9, 0.999, 1e-8, 0.0 (as the HF Trainer).
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

impl AdamWConfig {
    fn validate(&self) -> Result<(), OptimError> {
        let check = |what, value: f64, ok: bool, expected| {
            if ok {
                Ok(())
            } else {
                Err(OptimError::Invalid { what, value, expected })
            }
        };
        check("beta1", self.beta1, (0.0..1.0).contains(&self.beta1), "0 <= beta1 < 1")?;
        check("beta2", self.beta2, (0.0..1.0).contains(&self.beta2), "0 <= beta2 < 1")?;
        check("eps", self.eps, self.eps.is_finite() && self.eps >= 0.0, "a finite value >= 0")?;
        let wd = self.weight_decay;
        check("weight_decay", wd, wd.is_finite() && wd >= 0.0, "a finite value >= 0")
    }
}

/// Key of the step count in [`AdamW::state`]'s map: a 1-element i64 tensor.
pub const STEP_KEY: &str = "step";

/// Reads the step count saved under [`STEP_KEY`]: one element holding an integer >= 0.
fn read_step(state: &HashMap<String, Tensor>) -> Result<u64, OptimError> {
    let t = state.get(STEP_KEY).ok_or_else(|| OptimError::MissingState { name: STEP_KEY.into() })?;
    if t.elem_count() != 1 {
        return Err(OptimError::BadStep { what: format!("tensor {STEP_KEY:?} has shape {:?}; expected one element", t.shape()) });
    }
    let value = t.flatten_all().and_then(|t| t.to_dtype(DType::F64)).and_then(|t| t.to_vec1::<f64>()).map_err(on(STEP_KEY))?;
    let value = value.first().copied().unwrap_or(f64::NAN);
    if !(value.is_finite() && value >= 0.0 && value.fract() == 0.0 && value < 2f64.powi(63)) {
        return Err(OptimError::BadStep { what: format!("tensor {STEP_KEY:?} holds {value}; expected an integer >= 0") });
    }
    Ok(value as u64)
}

/// AdamW over a fixed, named list of parameters.
#[derive(Debug)]
pub struct AdamW {
    params: Vec<(String, Var)>,
    /// Whether each parameter is decayed (rank >= 2).
    decay: Vec<bool>,
    /// The moments, f32, updated in place.
    exp_avg: Vec<Vec<f32>>,
    exp_avg_sq: Vec<Vec<f32>>,
    config: AdamWConfig,
    step: u64,
    /// `step` as a 1-element i64 CPU tensor, kept in sync so that `state()` cannot fail.
    step_tensor: Tensor,
}

fn step_tensor(step: u64) -> Result<Tensor, OptimError> {
    let value = i64::try_from(step).map_err(|_| OptimError::BadStep { what: format!("step {step} is too large") })?;
    Tensor::new(&[value], &Device::Cpu).map_err(on(STEP_KEY))
}

impl AdamW {
    /// params: (name, candle_core::Var) in a fixed order. Weight decay applies only to tensors of
    /// rank >= 2 (no decay on norms and biases, 1-D).
    ///
    /// The moments start at zero (f32, on each parameter's device). Errors on a repeated name, a
    /// non-float parameter, or a config value out of range.
    pub fn new(params: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self, OptimError> {
        config.validate()?;
        let mut seen = HashSet::new();
        let (mut decay, mut exp_avg) = (Vec::new(), Vec::new());
        for (name, var) in &params {
            if !seen.insert(name.as_str()) {
                return Err(OptimError::DuplicateName { name: name.clone() });
            }
            if !var.dtype().is_float() {
                return Err(OptimError::NotFloat { name: name.clone(), dtype: var.dtype() });
            }
            decay.push(var.rank() >= 2);
            if !var.device().is_cpu() {
                return Err(OptimError::NotCpu { name: name.clone() });
            }
            exp_avg.push(vec![0f32; var.elem_count()]);
        }
        let exp_avg_sq = exp_avg.clone();
        Ok(Self { params, decay, exp_avg, exp_avg_sq, config, step: 0, step_tensor: step_tensor(0)? })
    }

    /// The parameters, in the order gradients must be given.
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// Counts of (decayed, not decayed) tensors, to print.
    pub fn decay_counts(&self) -> (usize, usize) {
        let decayed = self.decay.iter().filter(|d| **d).count();
        (decayed, self.decay.len() - decayed)
    }

    /// Number of steps taken so far (torch's `state["step"]`).
    pub fn steps_taken(&self) -> u64 {
        self.step
    }

    /// One update with gradients aligned with params() order (torch AdamW: decoupled decay
    /// p -= lr*wd*p, then Adam with bias correction; step count t starts at 1).
    ///
    /// Gradients may be of any float dtype and are used in f32. Counts and shapes are checked
    /// before anything changes. `lr` must be finite and >= 0.
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<(), OptimError> {
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(OptimError::Invalid { what: "lr", value: lr, expected: "a finite value >= 0" });
        }
        if grads.len() != self.params.len() {
            return Err(OptimError::GradCount { expected: self.params.len(), got: grads.len() });
        }
        for ((name, var), grad) in self.params.iter().zip(grads) {
            if grad.shape() != var.shape() {
                return Err(OptimError::GradShape { name: name.clone(), expected: var.shape().clone(), got: grad.shape().clone() });
            }
        }
        let next_step = step_tensor(self.step + 1)?;
        let t = (self.step + 1) as f64;
        let c = self.config;
        let bias_correction1 = 1.0 - c.beta1.powf(t);
        let bias_correction2 = 1.0 - c.beta2.powf(t);
        let step_size = lr / bias_correction1;
        let bias_correction2_sqrt = bias_correction2.powf(0.5);
        let k = Coefficients {
            decay: (1.0 - lr * c.weight_decay) as f32,
            beta1: (1.0 - c.beta1) as f32,
            beta2: c.beta2 as f32,
            one_minus_beta2: (1.0 - c.beta2) as f32,
            inv_bc2_sqrt: (1.0 / bias_correction2_sqrt) as f32,
            eps: c.eps as f32,
            step: -step_size as f32,
        };
        for (i, ((name, var), grad)) in self.params.iter().zip(grads).enumerate() {
            let decay = self.decay[i] && c.weight_decay != 0.0;
            let grad = grad.to_dtype(DType::F32).and_then(|g| g.contiguous()).map_err(on(name))?;
            let moments = (self.exp_avg[i].as_mut_slice(), self.exp_avg_sq[i].as_mut_slice());
            if var.dtype() == DType::F32 && var.is_contiguous() {
                // The f32 parameter is updated where it lies.
                let op = InPlace { k, decay, moments: Mutex::new(moments) };
                var.as_tensor().inplace_op2(&grad, &op).map_err(on(name))?;
            } else {
                let mut p = var
                    .as_tensor()
                    .to_dtype(DType::F32)
                    .and_then(|p| p.flatten_all())
                    .and_then(|p| p.to_vec1::<f32>())
                    .map_err(on(name))?;
                with_f32(&grad, |g| {
                    k.update(&mut p, g, moments, decay);
                    Ok(())
                })
                .map_err(on(name))?;
                let p = Tensor::from_vec(p, var.shape(), var.device()).and_then(|p| p.to_dtype(var.dtype())).map_err(on(name))?;
                var.set(&p).map_err(on(name))?;
            }
        }
        self.step_tensor = next_step;
        self.step += 1;
        Ok(())
    }

    /// State for checkpoints, one map ready for `candle_core::safetensors::save`:
    /// `"{name}.exp_avg"` and `"{name}.exp_avg_sq"` (f32, the parameter's shape, on its device)
    /// for every parameter, plus the step count as a 1-element i64 CPU tensor under
    /// [`STEP_KEY`] (`"step"`).
    ///
    /// The moments are copied, so the map is a snapshot.
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut tensors = HashMap::with_capacity(2 * self.params.len() + 1);
        for (i, (name, var)) in self.params.iter().enumerate() {
            for (suffix, m) in [("exp_avg", &self.exp_avg[i]), ("exp_avg_sq", &self.exp_avg_sq[i])] {
                // The moment has the parameter's element count (kept so by `new` and `load_state`).
                if let Ok(t) = Tensor::from_slice(m, var.shape(), &Device::Cpu) {
                    tensors.insert(format!("{name}.{suffix}"), t);
                }
            }
        }
        tensors.insert(STEP_KEY.into(), self.step_tensor.clone());
        tensors
    }

    /// Restores state saved by state(); errors name the missing/mis-shaped tensor.
    ///
    /// Every parameter needs both moments, the step count must be there, and every other
    /// tensor must belong to a parameter. Tensors are copied (as f32, to the parameter's
    /// device), so the caller's are never aliased. Nothing changes unless the whole state is
    /// valid.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<(), OptimError> {
        let step = read_step(state)?;
        let step_tensor = step_tensor(step)?;
        let mut known = HashSet::with_capacity(2 * self.params.len() + 1);
        known.insert(STEP_KEY.to_string());
        let (mut exp_avg, mut exp_avg_sq) = (Vec::new(), Vec::new());
        for (name, var) in &self.params {
            for (suffix, out) in [("exp_avg", &mut exp_avg), ("exp_avg_sq", &mut exp_avg_sq)] {
                let key = format!("{name}.{suffix}");
                let saved = state.get(&key).ok_or_else(|| OptimError::MissingState { name: key.clone() })?;
                if saved.shape() != var.shape() {
                    return Err(OptimError::StateShape { name: key, expected: var.shape().clone(), got: saved.shape().clone() });
                }
                let t =
                    saved.detach().to_dtype(DType::F32).and_then(|t| t.flatten_all()).and_then(|t| t.to_vec1::<f32>()).map_err(on(&key))?;
                out.push(t);
                known.insert(key);
            }
        }
        let mut unknown: Vec<&String> = state.keys().filter(|k| !known.contains(*k)).collect();
        unknown.sort();
        if let Some(name) = unknown.first() {
            return Err(OptimError::UnexpectedState { name: name.to_string() });
        }
        self.exp_avg = exp_avg;
        self.exp_avg_sq = exp_avg_sq;
        self.step_tensor = step_tensor;
        self.step = step;
        Ok(())
    }
}

/// Global L2 norm of all gradients; if it exceeds max_norm, scales every gradient by
/// max_norm/(norm+1e-6) as torch.nn.utils.clip_grad_norm_ does. Returns the norm before
/// clipping. `max_norm` 0 turns clipping off (the norm is still measured), as transformers'
/// Trainer skips clipping for `max_grad_norm: 0`.
///
/// As torch, the gradients are scaled when `max_norm / (norm + 1e-6) < 1`. Per-tensor sums of
/// squares are computed in f32 and added in f64. Unlike torch, a non-finite norm (NaN or inf
/// in a gradient) leaves the gradients as they are: the caller should skip that step.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64, OptimError> {
    if !(max_norm.is_finite() && max_norm >= 0.0) {
        return Err(OptimError::Invalid { what: "max_norm", value: max_norm, expected: "a finite value >= 0" });
    }
    let mut total_sq = 0f64;
    for (i, g) in grads.iter().enumerate() {
        let sum_sq = g
            .detach()
            .to_dtype(DType::F32)
            .and_then(|g| g.sqr())
            .and_then(|g| g.sum_all())
            .and_then(|s| s.to_scalar::<f32>())
            .map_err(|source| OptimError::Tensor { name: format!("gradient {i}"), source })?;
        total_sq += f64::from(sum_sq);
    }
    let norm = total_sq.sqrt();
    let coef = max_norm / (norm + 1e-6);
    if max_norm > 0.0 && norm.is_finite() && coef < 1.0 {
        for (i, g) in grads.iter_mut().enumerate() {
            *g = g.affine(coef, 0.0).map_err(|source| OptimError::Tensor { name: format!("gradient {i}"), source })?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var(values: &[f32], shape: &[usize]) -> Var {
        let t = Tensor::from_slice(values, shape, &Device::Cpu);
        Var::from_tensor(&t.unwrap()).unwrap()
    }

    #[test]
    fn one_step_matches_hand_computation() {
        // First Adam step: m = 0.1 g, v = 0.001 g^2, bias-corrected m/sqrt(v) = sign(g).
        let p = var(&[1.0, -2.0], &[2]);
        let mut opt = AdamW::new(vec![("b".into(), p.clone())], AdamWConfig::default()).unwrap();
        let g = Tensor::new(&[0.5f32, -4.0], &Device::Cpu).unwrap();
        opt.step(&[g], 0.1).unwrap();
        let got = p.as_tensor().to_vec1::<f32>().unwrap();
        assert!((got[0] - 0.9).abs() < 1e-6, "{got:?}");
        assert!((got[1] + 1.9).abs() < 1e-6, "{got:?}");
    }

    #[test]
    fn decay_only_on_matrices() {
        let w = var(&[1.0; 4], &[2, 2]);
        let b = var(&[1.0; 2], &[2]);
        let config = AdamWConfig { weight_decay: 0.5, ..AdamWConfig::default() };
        let mut opt = AdamW::new(vec![("w".into(), w.clone()), ("b".into(), b.clone())], config).unwrap();
        let grads = [Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap(), Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap()];
        opt.step(&grads, 0.1).unwrap();
        assert_eq!(w.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap(), [0.95; 4]);
        assert_eq!(b.as_tensor().to_vec1::<f32>().unwrap(), [1.0; 2]);
    }

    #[test]
    fn clip_below_max_leaves_grads() {
        let mut grads = vec![Tensor::new(&[0.3f32, 0.4], &Device::Cpu).unwrap()];
        let norm = clip_grad_norm(&mut grads, 1.0).unwrap();
        assert!((norm - 0.5).abs() < 1e-7);
        assert_eq!(grads[0].to_vec1::<f32>().unwrap(), [0.3, 0.4]);
    }

    #[test]
    fn max_norm_zero_turns_clipping_off() {
        let mut grads = vec![Tensor::new(&[3.0f32, 4.0], &Device::Cpu).unwrap()];
        let norm = clip_grad_norm(&mut grads, 0.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-6);
        assert_eq!(grads[0].to_vec1::<f32>().unwrap(), [3.0, 4.0]);
        let norm = clip_grad_norm(&mut grads, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-6);
        let clipped = grads[0].to_vec1::<f32>().unwrap();
        assert!((clipped[0] - 0.6).abs() < 1e-6 && (clipped[1] - 0.8).abs() < 1e-6, "{clipped:?}");
    }

    #[test]
    fn bad_config_is_rejected() {
        let config = AdamWConfig { beta2: 1.0, ..AdamWConfig::default() };
        let err = AdamW::new(vec![], config).unwrap_err();
        assert!(err.to_string().contains("beta2"), "{err}");
    }
}
