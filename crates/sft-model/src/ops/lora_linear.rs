//! A LoRA layer in one op: `y = x·Wᵀ + b + s·(drop(x)·Aᵀ)·Bᵀ` with `W` (and `b`) frozen. Built
//! from separate ops, the graph would keep six `[n, out]`-sized intermediates alive per layer
//! until the backward pass and compute a gradient for the frozen `W`; here only `x`, `A` and `B`
//! are kept (the dropout mask is drawn again from its seed) and the backward pass computes
//!
//!   dx = dy·W + s·((dy·B)·A) ∘ mask,   dA = s·(dy·B)ᵀ·drop(x),   dB = s·dyᵀ·(drop(x)·Aᵀ).

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp3, Device, Layout, Result, Shape, Tensor};

use super::frozen_matmul::qmatmul_input_grad;
use super::{cpu_f32, frozen_matmul, qmatmul};
use crate::lora::Dropout;
use crate::quant::QuantWeight;

/// A linear layer's weight `[out, in]`: f32 (a variable under full fine-tuning, or frozen), or
/// frozen in a compact format.
#[derive(Debug, Clone)]
pub enum LinearWeight {
    /// f32.
    Dense(Tensor),
    /// bf16 or NF4.
    Quant(Arc<QuantWeight>),
}

impl LinearWeight {
    /// `x·Wᵀ` treating the weight as frozen (no gradient reaches it).
    fn frozen_apply(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            LinearWeight::Dense(w) => frozen_matmul(x, w),
            LinearWeight::Quant(q) => qmatmul(x, q),
        }
    }
}

/// The layer around the adapter.
#[derive(Debug, Clone)]
pub struct LoraLinear {
    /// The weight, frozen (no gradient reaches it).
    pub weight: LinearWeight,
    /// The frozen bias, if any.
    pub bias: Option<Tensor>,
    /// The factor on the adapter's output.
    pub scaling: f64,
    /// Dropout on the adapter's input and the module's index (which seeds its mask).
    pub dropout: Option<(Dropout, u64)>,
}

/// `x` `[n, in]` through the layer with adapter `a` `[r, in]`, `b` `[out, r]` → `[n, out]`.
pub fn lora_linear(x: &Tensor, a: &Tensor, b: &Tensor, layer: &LoraLinear) -> Result<Tensor> {
    x.contiguous()?.apply_op3(&a.contiguous()?, &b.contiguous()?, layer.clone())
}

impl LoraLinear {
    /// `drop(x)` (a plain tensor; `x` itself when there is no dropout).
    fn dropped(&self, x: &Tensor) -> Result<Tensor> {
        match self.mask(x)? {
            Some(mask) => x * mask,
            None => Ok(x.clone()),
        }
    }

    /// The dropout mask for input `x` (drawn again from its seed on every call).
    fn mask(&self, x: &Tensor) -> Result<Option<Tensor>> {
        match self.dropout {
            Some((d, index)) if d.p > 0.0 => Ok(Some(Tensor::from_vec(d.mask(index, x.elem_count()), x.shape(), x.device())?)),
            _ => Ok(None),
        }
    }
}

fn tensor(storage: &CpuStorage, layout: &Layout, op: &str) -> Result<Tensor> {
    Tensor::from_slice(cpu_f32(storage, layout, op)?, layout.shape(), &Device::Cpu)
}

impl CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "sft-lora-linear"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, a, b) = (tensor(s1, l1, self.name())?, tensor(s2, l2, self.name())?, tensor(s3, l3, self.name())?);
        let mut y = (self.weight.frozen_apply(&x)? + (self.dropped(&x)?.matmul(&a.t()?)?.matmul(&b.t()?)? * self.scaling)?)?;
        if let Some(bias) = &self.bias {
            y = y.broadcast_add(&bias.detach())?;
        }
        let shape = y.shape().clone();
        Ok((CpuStorage::F32(y.flatten_all()?.to_vec1::<f32>()?), shape))
    }

    fn bwd(&self, x: &Tensor, a: &Tensor, b: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (x, a, b, grad) = (x.detach(), a.detach(), b.detach(), grad.detach());
        let dropped = self.dropped(&x)?;
        let gb = (grad.matmul(&b)? * self.scaling)?; // [n, r]
        let mut dlora = gb.matmul(&a)?; // [n, in], w.r.t. drop(x)
        if let Some(mask) = self.mask(&x)? {
            dlora = (dlora * mask)?;
        }
        let dbase = match &self.weight {
            LinearWeight::Dense(w) => grad.matmul(&w.detach())?,
            LinearWeight::Quant(q) => qmatmul_input_grad(&grad, q)?,
        };
        let da = gb.t()?.matmul(&dropped)?; // [r, in]
        let db = (grad.t()?.matmul(&dropped.matmul(&a.t()?)?)? * self.scaling)?; // [out, r]
        Ok((Some((dbase + dlora)?), Some(da), Some(db)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{check, random, weighted_sum};
    use crate::quant::BaseFormat;
    use candle_core::Var;

    const DROPOUT: (Dropout, u64) = (Dropout { p: 0.3, seed: 11 }, 2);

    /// The same layer from plain ops.
    fn composed(x: &Tensor, a: &Tensor, b: &Tensor, w: &Tensor, layer: &LoraLinear) -> Result<Tensor> {
        let dropped = match layer.dropout {
            Some((d, index)) => (x * Tensor::from_vec(d.mask(index, x.elem_count()), x.shape(), x.device())?)?,
            None => x.clone(),
        };
        let mut y = (x.matmul(&w.t()?)? + (dropped.matmul(&a.t()?)?.matmul(&b.t()?)? * layer.scaling)?)?;
        if let Some(bias) = &layer.bias {
            y = y.broadcast_add(bias)?;
        }
        Ok(y)
    }

    #[test]
    fn equals_the_composed_layer_and_its_gradients() -> Result<()> {
        let w = random(&[9, 12], 4)?;
        let q = QuantWeight::new(&w.flatten_all()?.to_vec1::<f32>()?, 9, 12, BaseFormat::Bf16).expect("bf16");
        let mut wq = vec![0f32; 9 * 12];
        q.dequantize_rows(0, &mut wq);
        let wq = Tensor::from_vec(wq, (9, 12), &Device::Cpu)?;
        let bases = [(LinearWeight::Dense(w.clone()), w.clone()), (LinearWeight::Quant(Arc::new(q)), wq)];
        for (weight, dense) in bases {
            for (bias, dropout) in [(None, None), (Some(random(&[9], 5)?), Some(DROPOUT))] {
                let layer = LoraLinear { weight: weight.clone(), bias, scaling: 1.7, dropout };
                let [x, a, b] = [random(&[5, 12], 1)?, random(&[3, 12], 2)?, random(&[9, 3], 3)?].map(|t| Var::from_tensor(&t).expect("var"));
                let ours = lora_linear(x.as_tensor(), a.as_tensor(), b.as_tensor(), &layer)?;
                let theirs = composed(x.as_tensor(), a.as_tensor(), b.as_tensor(), &dense, &layer)?;
                assert!((&ours - &theirs)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-5);
                let (g1, g2) = (weighted_sum(&ours, 6)?.backward()?, weighted_sum(&theirs, 6)?.backward()?);
                for (name, v) in [("x", &x), ("a", &a), ("b", &b)] {
                    let (p, q) = (g1.get(v.as_tensor()).expect("ours"), g2.get(v.as_tensor()).expect("theirs"));
                    let diff = (p - q)?.abs()?.max_all()?.to_scalar::<f32>()?;
                    assert!(diff < 1e-5, "d{name} differs by {diff}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn gradient_check() -> Result<()> {
        let layer = LoraLinear { weight: LinearWeight::Dense(random(&[4, 6], 4)?), bias: Some(random(&[4], 5)?), scaling: 0.8, dropout: Some(DROPOUT) };
        let inputs = [random(&[3, 6], 1)?, random(&[2, 6], 2)?, random(&[4, 2], 3)?];
        check(&inputs, |t| weighted_sum(&lora_linear(&t[0], &t[1], &t[2], &layer)?, 7), 2e-2)
    }
}
