//! Fused ops with their own backward pass. candle's fused kernels (rms_norm, rope, softmax)
//! have no backward: a graph through them silently loses its gradient. Each op here is a candle
//! custom op whose `bwd` is written out, and each has a finite-difference gradient check.
//!
//! The kernels run on the CPU in f32 over contiguous inputs (callers make them contiguous).

mod attention;
mod cross_entropy;
mod dora;
mod frozen_matmul;
mod glu;
mod linear;
mod lora_linear;
mod matvec;
mod rms_norm;
mod rope;
mod softmax;

pub use attention::{attention, AttentionSpec};
pub use cross_entropy::{linear_cross_entropy, CrossEntropy};
pub use dora::{dora_linear, dora_weight_norm, DoraWeights};
pub(crate) use frozen_matmul::Tiles;
pub use frozen_matmul::{frozen_matmul, qmatmul};
pub use glu::{glu, Activation};
pub use linear::linear;
pub use lora_linear::{lora_linear, LinearWeight, LoraLinear};
pub use matvec::{matvec, MATVEC_MAX_ROWS};
pub use rms_norm::rms_norm;
pub use rope::{rope, RopeTable};
pub use softmax::softmax_last_dim;

use candle_core::{CpuStorage, Layout, Result, Storage, Tensor};

/// The f32 data of a contiguous CPU storage.
fn cpu_f32<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    let data = storage.as_slice::<f32>().map_err(|_| candle_core::Error::Msg(format!("{op}: expects f32 input")))?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => Err(candle_core::Error::Msg(format!("{op}: expects a contiguous input"))),
    }
}

/// `(n, in, out)` of `x` `[n, in]` times `weight` `[out, in]` transposed; an error naming `op`
/// when the shapes are not of that form.
fn linear_dims(op: &str, x: &Layout, weight: &Layout) -> Result<(usize, usize, usize)> {
    match (x.dims(), weight.dims()) {
        (&[n, inp], &[out, w_in]) if inp == w_in => Ok((n, inp, out)),
        (&[_, _], &[_, _]) => candle_core::bail!("{op}: x {:?} does not fit weight {:?}", x.dims(), weight.dims()),
        (xd, wd) => candle_core::bail!("{op}: expects x [n, in] and weight [out, in], got {xd:?} and {wd:?}"),
    }
}

/// The state an op keeps from its forward pass for its backward pass, locked.
fn lock<'a, T>(state: &'a std::sync::Mutex<T>, op: &str) -> Result<std::sync::MutexGuard<'a, T>> {
    state.lock().map_err(|_| candle_core::Error::Msg(format!("{op}: poisoned lock")))
}

/// Runs `f` over a tensor's f32 data (made contiguous first; CPU only).
fn with_f32<R>(t: &Tensor, op: &str, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    with_f32s([t], op, |[x]| f(x))
}

/// Runs `f` over several tensors' f32 data at once (each made contiguous first; CPU only),
/// without copying it.
fn with_f32s<const N: usize, R>(ts: [&Tensor; N], op: &str, f: impl FnOnce([&[f32]; N]) -> Result<R>) -> Result<R> {
    let ts = ts.map(|t| t.contiguous());
    let mut owned = Vec::with_capacity(N);
    for t in ts {
        owned.push(t?);
    }
    let held: Vec<_> = owned.iter().map(|t| t.storage_and_layout()).collect();
    let mut slices = Vec::with_capacity(N);
    for (storage, layout) in &held {
        match &**storage {
            Storage::Cpu(cpu) => slices.push(cpu_f32(cpu, layout, op)?),
            _ => candle_core::bail!("{op}: only the CPU is supported"),
        }
    }
    match <[&[f32]; N]>::try_from(slices) {
        Ok(slices) => f(slices),
        Err(_) => candle_core::bail!("{op}: expected {N} inputs"),
    }
}

/// Finite-difference gradient checks shared by the op tests.
#[cfg(test)]
pub(crate) mod gradcheck {
    use candle_core::{Device, Result, Tensor, Var};

    /// A deterministic pseudo-random f32 tensor in [-1, 1) (no rand dependency).
    pub fn random(shape: &[usize], seed: u64) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let data: Vec<f32> = (0..n)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect();
        Tensor::from_vec(data, shape, &Device::Cpu)
    }

    /// Checks the analytic gradients of `loss(inputs)` (a scalar) against central differences
    /// in f64 arithmetic over f32 evaluations, for every element of every input.
    pub fn check(inputs: &[Tensor], loss: impl Fn(&[Tensor]) -> Result<Tensor>, tol: f64) -> Result<()> {
        let vars: Vec<Var> = inputs.iter().map(Var::from_tensor).collect::<Result<_>>()?;
        let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let grads = loss(&tensors)?.backward()?;
        let eps = 1e-2f64;
        for (i, var) in vars.iter().enumerate() {
            let analytic =
                grads.get(var.as_tensor()).unwrap_or_else(|| panic!("input {i} received no gradient")).flatten_all()?.to_vec1::<f32>()?;
            let base = inputs[i].flatten_all()?.to_vec1::<f32>()?;
            for j in 0..base.len() {
                let eval = |delta: f64| -> Result<f64> {
                    let mut data = base.clone();
                    data[j] = (data[j] as f64 + delta) as f32;
                    let mut probe: Vec<Tensor> = inputs.to_vec();
                    probe[i] = Tensor::from_vec(data, inputs[i].shape(), &Device::Cpu)?;
                    let f64_inputs: Vec<Tensor> = probe;
                    Ok(loss(&f64_inputs)?.to_scalar::<f32>()? as f64)
                };
                let numeric = (eval(eps)? - eval(-eps)?) / (2.0 * eps);
                let got = analytic[j] as f64;
                let err = (got - numeric).abs();
                assert!(err <= tol * (1.0 + numeric.abs()), "input {i} element {j}: analytic {got} vs numeric {numeric} (error {err})");
            }
        }
        Ok(())
    }

    /// A loss that weighs every output element differently, so no gradient cancels out.
    pub fn weighted_sum(t: &Tensor, seed: u64) -> Result<Tensor> {
        let w = random(t.dims(), seed)?;
        (t * w)?.sum_all()
    }
}
