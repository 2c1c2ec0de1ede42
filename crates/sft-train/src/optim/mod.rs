//! The optimizers the config's `optim` key names (transformers' `TrainingArguments.optim`
//! values), one file each behind one closed enum, [`Optimizer`]:
//!
//! - `adamw_torch` (the default): [`AdamW`], equal to `torch.optim.AdamW`;
//! - `adamw_8bit`: [`AdamW8bit`], bitsandbytes' `AdamW8bit` (block-wise 8-bit moments);
//! - `sgd`: [`Sgd`], `torch.optim.SGD` without momentum;
//! - `adafactor`: [`Adafactor`], `transformers.optimization.Adafactor` as the HF `Trainer` builds
//!   it (a fixed learning rate from the schedule, factored second moments).
//!
//! and global gradient-norm clipping equal to `torch.nn.utils.clip_grad_norm_`
//! ([`clip_grad_norm`]).
//!
//! Every optimizer takes `(name, Var)` pairs in a fixed order and one gradient per parameter
//! in that order; weight decay applies only to tensors of rank >= 2 (matrices, embeddings),
//! never to norms and biases, as in nanoGPT and the HF `Trainer`'s parameter groups. `state()`
//! is a map of named tensors for a checkpoint and `load_state()` restores it exactly, so a
//! resumed run continues bit for bit. `state_bytes()` is the memory its moment estimates take.

mod adafactor;
mod adamw;
mod adamw_8bit;
mod sgd;

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use candle_core::{CpuStorage, DType, Device, InplaceOp2, Layout, Shape, Tensor, Var};

pub use adafactor::{Adafactor, AdafactorConfig};
pub use adamw::{AdamW, AdamWConfig};
pub use adamw_8bit::{dynamic_map, AdamW8bit, BLOCK_SIZE, MIN_8BIT_SIZE};
pub use sgd::Sgd;

/// Errors from the optimizers, gradient clipping and optimizer-state loading.
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
    #[error(
        "optimizer state: missing tensor {name:?}; was the checkpoint saved for a different set of trainable parameters, or with another optim?"
    )]
    MissingState {
        /// The missing key (`{param}.exp_avg`, ... or [`STEP_KEY`]).
        name: String,
    },
    /// A saved state tensor's shape differs from the one its parameter needs.
    #[error("optimizer state: tensor {name:?} has shape {got:?}, expected {expected:?}; was the checkpoint saved for a different model?")]
    StateShape {
        /// The state key.
        name: String,
        /// The shape the parameter needs.
        expected: Shape,
        /// The saved tensor's shape.
        got: Shape,
    },
    /// A saved state tensor has the wrong dtype (8-bit codes must be saved as u8).
    #[error("optimizer state: tensor {name:?} has dtype {got:?}, expected {expected:?}")]
    StateDType {
        /// The state key.
        name: String,
        /// The dtype it needs.
        expected: DType,
        /// The saved tensor's dtype.
        got: DType,
    },
    /// The saved state has a tensor that matches no parameter.
    #[error(
        "optimizer state: tensor {name:?} matches no parameter; was the checkpoint saved for a different set of trainable parameters, or with another optim?"
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

/// Which optimizer trains (the `optim` key; transformers' `OptimizerNames` values).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub enum OptimKind {
    /// `torch.optim.AdamW` ([`AdamW`]).
    #[default]
    #[serde(rename = "adamw_torch")]
    AdamWTorch,
    /// bitsandbytes' 8-bit AdamW ([`AdamW8bit`]).
    #[serde(rename = "adamw_8bit")]
    AdamW8bit,
    /// `torch.optim.SGD`, no momentum ([`Sgd`]).
    #[serde(rename = "sgd")]
    Sgd,
    /// transformers' Adafactor with a scheduled learning rate ([`Adafactor`]).
    #[serde(rename = "adafactor")]
    Adafactor,
}

impl OptimKind {
    /// The config value.
    pub fn name(self) -> &'static str {
        match self {
            OptimKind::AdamWTorch => "adamw_torch",
            OptimKind::AdamW8bit => "adamw_8bit",
            OptimKind::Sgd => "sgd",
            OptimKind::Adafactor => "adafactor",
        }
    }
}

/// One of the optimizers, chosen by [`OptimKind`].
#[derive(Debug)]
pub enum Optimizer {
    /// `adamw_torch`.
    AdamW(AdamW),
    /// `adamw_8bit`.
    AdamW8bit(AdamW8bit),
    /// `sgd`.
    Sgd(Sgd),
    /// `adafactor`.
    Adafactor(Adafactor),
}

/// Calls the same method on whichever optimizer `$self` holds.
macro_rules! each {
    ($self:expr, $o:ident => $call:expr) => {
        match $self {
            Optimizer::AdamW($o) => $call,
            Optimizer::AdamW8bit($o) => $call,
            Optimizer::Sgd($o) => $call,
            Optimizer::Adafactor($o) => $call,
        }
    };
}

impl Optimizer {
    /// A new optimizer of `kind` over `params`. `adam` holds the AdamW hyper-parameters; SGD
    /// and Adafactor take only its `weight_decay` (the HF `Trainer` passes them no betas or
    /// epsilon either).
    pub fn new(kind: OptimKind, params: Vec<(String, Var)>, adam: AdamWConfig) -> Result<Self, OptimError> {
        Ok(match kind {
            OptimKind::AdamWTorch => Optimizer::AdamW(AdamW::new(params, adam)?),
            OptimKind::AdamW8bit => Optimizer::AdamW8bit(AdamW8bit::new(params, adam)?),
            OptimKind::Sgd => Optimizer::Sgd(Sgd::new(params, adam.weight_decay)?),
            OptimKind::Adafactor => {
                let config = AdafactorConfig { weight_decay: adam.weight_decay, ..AdafactorConfig::default() };
                Optimizer::Adafactor(Adafactor::new(params, config)?)
            }
        })
    }

    /// Which optimizer this is.
    pub fn kind(&self) -> OptimKind {
        match self {
            Optimizer::AdamW(_) => OptimKind::AdamWTorch,
            Optimizer::AdamW8bit(_) => OptimKind::AdamW8bit,
            Optimizer::Sgd(_) => OptimKind::Sgd,
            Optimizer::Adafactor(_) => OptimKind::Adafactor,
        }
    }

    /// The parameters and step count every optimizer keeps alike.
    fn common(&self) -> &Params {
        each!(self, o => &o.params)
    }

    /// The parameters, in the order gradients must be given.
    pub fn params(&self) -> &[(String, Var)] {
        &self.common().list
    }

    /// Counts of (decayed, not decayed) tensors, to print.
    pub fn decay_counts(&self) -> (usize, usize) {
        self.common().decay_counts()
    }

    /// Number of steps taken so far.
    pub fn steps_taken(&self) -> u64 {
        self.common().step
    }

    /// Bytes of optimizer state (the moment estimates; the step count is not counted).
    pub fn state_bytes(&self) -> usize {
        each!(self, o => o.state_bytes())
    }

    /// One update with gradients aligned with params() order at learning rate `lr`.
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<(), OptimError> {
        each!(self, o => o.step(grads, lr))
    }

    /// The state, for a checkpoint.
    pub fn state(&self) -> HashMap<String, Tensor> {
        each!(self, o => o.state())
    }

    /// Restores a state saved by [`Optimizer::state`] of the same kind; nothing changes unless
    /// the whole state is valid.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<(), OptimError> {
        each!(self, o => o.load_state(state))
    }
}

/// Key of the step count in every optimizer's state: a 1-element i64 tensor.
pub const STEP_KEY: &str = "step";

fn step_tensor(step: u64) -> Result<Tensor, OptimError> {
    let value = i64::try_from(step).map_err(|_| OptimError::BadStep { what: format!("step {step} is too large") })?;
    Tensor::new(&[value], &Device::Cpu).map_err(on(STEP_KEY))
}

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

/// What every optimizer tracks besides its moments: the named parameters, which of them are
/// decayed, and the step count (with its tensor, kept in sync so that `state()` cannot fail).
#[derive(Debug)]
struct Params {
    list: Vec<(String, Var)>,
    /// Whether each parameter is decayed (rank >= 2).
    decay: Vec<bool>,
    step: u64,
    step_tensor: Tensor,
}

impl Params {
    /// Checks the parameters: unique names, floating point, on the CPU.
    fn new(list: Vec<(String, Var)>) -> Result<Self, OptimError> {
        let mut seen = HashSet::new();
        let mut decay = Vec::with_capacity(list.len());
        for (name, var) in &list {
            if !seen.insert(name.as_str()) {
                return Err(OptimError::DuplicateName { name: name.clone() });
            }
            if !var.dtype().is_float() {
                return Err(OptimError::NotFloat { name: name.clone(), dtype: var.dtype() });
            }
            if !var.device().is_cpu() {
                return Err(OptimError::NotCpu { name: name.clone() });
            }
            decay.push(var.rank() >= 2);
        }
        Ok(Self { list, decay, step: 0, step_tensor: step_tensor(0)? })
    }

    fn decay_counts(&self) -> (usize, usize) {
        let decayed = self.decay.iter().filter(|d| **d).count();
        (decayed, self.decay.len() - decayed)
    }

    /// Checks a step's arguments before anything changes; returns the next step's count
    /// tensor, to [`Params::advance`] to once every parameter is updated.
    fn check(&self, grads: &[Tensor], lr: f64) -> Result<Tensor, OptimError> {
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(OptimError::Invalid { what: "lr", value: lr, expected: "a finite value >= 0" });
        }
        if grads.len() != self.list.len() {
            return Err(OptimError::GradCount { expected: self.list.len(), got: grads.len() });
        }
        for ((name, var), grad) in self.list.iter().zip(grads) {
            if grad.shape() != var.shape() {
                return Err(OptimError::GradShape { name: name.clone(), expected: var.shape().clone(), got: grad.shape().clone() });
            }
        }
        step_tensor(self.step + 1)
    }

    /// Sets the step count (a restored state's).
    fn set_step(&mut self, step: u64) -> Result<(), OptimError> {
        self.step_tensor = step_tensor(step)?;
        self.step = step;
        Ok(())
    }

    fn advance(&mut self, next: Tensor) {
        self.step_tensor = next;
        self.step += 1;
    }

    /// A state map holding the step count, to add the moments to.
    fn state_with_step(&self, moments: usize) -> HashMap<String, Tensor> {
        let mut tensors = HashMap::with_capacity(moments + 1);
        tensors.insert(STEP_KEY.into(), self.step_tensor.clone());
        tensors
    }
}

/// Reads a saved state key by key, remembering which keys were used so that [`finish`]
/// can refuse a tensor no parameter needs.
///
/// [`finish`]: StateReader::finish
struct StateReader<'a> {
    state: &'a HashMap<String, Tensor>,
    known: HashSet<String>,
    step: u64,
}

impl<'a> StateReader<'a> {
    fn new(state: &'a HashMap<String, Tensor>) -> Result<Self, OptimError> {
        let step = read_step(state)?;
        Ok(Self { state, known: HashSet::from([STEP_KEY.to_string()]), step })
    }

    /// The tensor `key`, which must have `shape`.
    fn get(&mut self, key: String, shape: &Shape) -> Result<&'a Tensor, OptimError> {
        let saved = self.state.get(&key).ok_or_else(|| OptimError::MissingState { name: key.clone() })?;
        if saved.shape() != shape {
            return Err(OptimError::StateShape { name: key, expected: shape.clone(), got: saved.shape().clone() });
        }
        self.known.insert(key);
        Ok(saved)
    }

    /// The tensor `key` of `shape` as f32 values (copied; any float dtype is accepted).
    fn f32(&mut self, key: String, shape: &Shape) -> Result<Vec<f32>, OptimError> {
        let saved = self.get(key.clone(), shape)?;
        saved.detach().to_dtype(DType::F32).and_then(|t| t.flatten_all()).and_then(|t| t.to_vec1::<f32>()).map_err(on(&key))
    }

    /// The tensor `key` of `shape` as u8 codes (it must be saved as u8).
    fn u8(&mut self, key: String, shape: &Shape) -> Result<Vec<u8>, OptimError> {
        let saved = self.get(key.clone(), shape)?;
        if saved.dtype() != DType::U8 {
            return Err(OptimError::StateDType { name: key, expected: DType::U8, got: saved.dtype() });
        }
        saved.flatten_all().and_then(|t| t.to_vec1::<u8>()).map_err(on(&key))
    }

    /// Refuses a tensor no parameter asked for; returns the step count.
    fn finish(self) -> Result<u64, OptimError> {
        let mut unknown: Vec<&String> = self.state.keys().filter(|k| !self.known.contains(*k)).collect();
        unknown.sort();
        match unknown.first() {
            Some(name) => Err(OptimError::UnexpectedState { name: name.to_string() }),
            None => Ok(self.step),
        }
    }
}

/// A saved copy of `values` with `shape` (the element count is kept right by the optimizers).
fn saved<T: candle_core::WithDType>(values: &[T], shape: impl Into<Shape>) -> Option<Tensor> {
    Tensor::from_slice(values, shape, &Device::Cpu).ok()
}

/// One parameter's update as an in-place op on the parameter (its gradient the other input).
struct InPlace<F> {
    update: Mutex<F>,
}

impl<F: FnMut(&mut [f32], &[f32])> InplaceOp2 for InPlace<F> {
    fn name(&self) -> &'static str {
        "optimizer-update"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<()> {
        let (Some((p0, p1)), Some((g0, g1))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            candle_core::bail!("optimizer: expects contiguous tensors");
        };
        let (CpuStorage::F32(p), CpuStorage::F32(g)) = (s1, s2) else {
            candle_core::bail!("optimizer: expects f32 tensors");
        };
        let mut update = self.update.lock().map_err(|_| candle_core::Error::Msg("optimizer: poisoned lock".into()))?;
        (*update)(&mut p[p0..p1], &g[g0..g1]);
        Ok(())
    }
}

/// Runs `update(p, g)` over a parameter's values and its gradient's, both f32 and flat
/// (row-major): in place for a contiguous f32 parameter; otherwise on an f32 copy that is
/// stored back in the parameter's dtype.
fn update_param(name: &str, var: &Var, grad: &Tensor, mut update: impl FnMut(&mut [f32], &[f32])) -> Result<(), OptimError> {
    let grad = grad.to_dtype(DType::F32).and_then(|g| g.contiguous()).map_err(on(name))?;
    if var.dtype() == DType::F32 && var.is_contiguous() {
        let op = InPlace { update: Mutex::new(update) };
        return var.as_tensor().inplace_op2(&grad, &op).map_err(on(name));
    }
    let mut p = var.as_tensor().to_dtype(DType::F32).and_then(|p| p.flatten_all()).and_then(|p| p.to_vec1::<f32>()).map_err(on(name))?;
    let (storage, layout) = grad.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (candle_core::Storage::Cpu(cpu), Some((start, end))) => update(&mut p, &cpu.as_slice::<f32>().map_err(on(name))?[start..end]),
        _ => return Err(OptimError::NotCpu { name: name.into() }),
    }
    drop(storage);
    let p = Tensor::from_vec(p, var.shape(), var.device()).and_then(|p| p.to_dtype(var.dtype())).map_err(on(name))?;
    var.set(&p).map_err(on(name))
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
    fn kinds_read_and_write_the_transformers_names() {
        for kind in [OptimKind::AdamWTorch, OptimKind::AdamW8bit, OptimKind::Sgd, OptimKind::Adafactor] {
            let text = serde_yaml::to_string(&kind).unwrap();
            assert_eq!(text.trim(), kind.name());
            assert_eq!(serde_yaml::from_str::<OptimKind>(&text).unwrap(), kind);
        }
        assert_eq!(OptimKind::default(), OptimKind::AdamWTorch);
    }
}
