//! Gradient checkpointing: each decoder layer runs as one custom op that keeps only its input.
//! The forward pass computes the layer and lets its intermediate tensors go; the backward pass
//! runs the layer again on the saved input and backpropagates through that copy. The input's
//! gradient goes back through the op; the layer's own parameters' gradients are not inputs of
//! the op, so they are collected in a [`Pending`] list that [`super::Loss::backward`] adds to the
//! gradient store. Memory: one layer's activations at a time instead of all layers'; compute: one
//! more forward pass per layer.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, Device, Layout, Result, Shape, Tensor, Var};

use super::layer::{Context, Layer};
use crate::config::ModelConfig;

/// Parameter gradients computed inside recomputed layers, waiting to join the gradient store.
pub(crate) type Pending = Arc<Mutex<Vec<(Tensor, Tensor)>>>;

/// What one checkpointed layer needs to run again.
pub(crate) struct Recompute {
    pub layer: Layer,
    pub cfg: Arc<ModelConfig>,
    pub cx: Arc<Context>,
    /// The layer's trainable parameters.
    pub params: Vec<Tensor>,
    pub pending: Pending,
}

impl Recompute {
    /// The layer applied to `h`, keeping only `h` for the backward pass.
    pub fn forward(self, h: &Tensor) -> Result<Tensor> {
        h.contiguous()?.apply_op1(self)
    }

    fn run(&self, h: &Tensor) -> Result<Tensor> {
        self.layer.forward(h, &self.cfg, &self.cx, None)
    }
}

impl CustomOp1 for Recompute {
    fn name(&self) -> &'static str {
        "sft-checkpointed-layer"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let h = match layout.contiguous_offsets() {
            Some((start, end)) => Tensor::from_slice(&storage.as_slice::<f32>()?[start..end], layout.shape(), &Device::Cpu)?,
            None => candle_core::bail!("checkpointed layer: expects a contiguous input"),
        };
        let out = self.run(&h)?.detach();
        Ok((CpuStorage::F32(out.flatten_all()?.to_vec1::<f32>()?), layout.shape().clone()))
    }

    fn bwd(&self, h: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let input = Var::from_tensor(&h.detach())?;
        let out = self.run(input.as_tensor())?;
        let grads = (out * grad.detach())?.sum_all()?.backward()?;
        let mut pending =
            self.pending.lock().map_err(|_| candle_core::Error::Msg("gradient checkpointing: a backward pass panicked".into()))?;
        for p in &self.params {
            if let Some(g) = grads.get(p) {
                pending.push((p.clone(), g.clone()));
            }
        }
        Ok(grads.get(input.as_tensor()).cloned())
    }
}
