//! Cross-entropy through the output layer without the logits matrix: `Σ_rows lse(h·Wᵀ) −
//! (h·Wᵀ)[target]` computed a few rows at a time, so a 150k-entry vocabulary never holds more than
//! one chunk of logits. The backward pass recomputes each chunk's logits from the saved
//! log-sum-exp and returns `dh` (and `dW` when the weight trains).
//!
//! Gemma 2's final soft-capping (`cap · tanh(z / cap)`) is applied to each chunk's logits.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, D};

use super::amx::PackedB;
use super::frozen_matmul::{packed_forward, packed_input_grad, packed_matmul, qmatmul_input_grad};
use super::{exp, qmatmul};
use crate::quant::QuantWeight;

/// Logit elements per chunk (32 MiB of f32).
const CHUNK_ELEMENTS: usize = 8 << 20;

/// Options of [`linear_cross_entropy`].
#[derive(Debug, Clone, Default)]
pub struct CrossEntropy {
    /// Gemma 2's `final_logit_softcapping`.
    pub softcap: Option<f64>,
    /// The frozen output layer in bf16 ([`crate::quant::BaseFormat::Bf16Matmul`]): logits and the
    /// hidden gradient are then bf16 products (`bf16: true`); the weight gets no gradient.
    pub bf16_weight: Option<Arc<QuantWeight>>,
}

/// The summed cross-entropy of `hidden` rows `[n, d]` through `weight` `[vocab, d]` against
/// `targets` (one per row): a scalar. Differentiable in both inputs.
pub fn linear_cross_entropy(hidden: &Tensor, weight: &Tensor, targets: &[u32], opts: CrossEntropy) -> Result<Tensor> {
    let (n, _) = hidden.dims2()?;
    if n != targets.len() {
        candle_core::bail!("cross-entropy: {n} rows but {} targets", targets.len());
    }
    let vocab = weight.dim(0)?;
    if let Some(&bad) = targets.iter().find(|&&t| t as usize >= vocab) {
        candle_core::bail!("cross-entropy: target id {bad} is outside the vocabulary of {vocab}");
    }
    if let Some(q) = &opts.bf16_weight {
        if weight.track_op() || q.dims() != weight.dims2()? {
            candle_core::bail!("cross-entropy: the bf16 output layer {:?} must be a copy of the frozen weight {:?}", q.dims(), weight.dims());
        }
    }
    let op = LinearCrossEntropy { targets: Arc::new(targets.to_vec()), softcap: opts.softcap, bf16_weight: opts.bf16_weight, lse: Vec::new(), sum: 0.0 };
    let op = op.forward(&hidden.detach(), &weight.detach())?;
    if !hidden.track_op() && !weight.track_op() {
        return Tensor::new(op.sum, hidden.device());
    }
    hidden.apply_op2(weight, op)
}

struct LinearCrossEntropy {
    targets: Arc<Vec<u32>>,
    softcap: Option<f64>,
    bf16_weight: Option<Arc<QuantWeight>>,
    /// Each row's log-sum-exp, saved by the forward pass.
    lse: Vec<f32>,
    /// The forward result.
    sum: f32,
}

impl LinearCrossEntropy {
    fn chunk_rows(&self, vocab: usize) -> usize {
        (CHUNK_ELEMENTS / vocab.max(1)).max(1)
    }

    /// The (capped) logits of rows `start..start+len`.
    /// `packed`: the bf16 output layer packed once for all chunks (with AMX).
    fn logits(&self, hidden: &Tensor, weight: &Tensor, start: usize, len: usize, packed: Option<&PackedB>) -> Result<Tensor> {
        let rows = hidden.narrow(0, start, len)?;
        let z = match (packed, &self.bf16_weight) {
            (Some(p), _) => packed_matmul(&rows, p)?,
            (None, Some(q)) => qmatmul(&rows, q)?,
            (None, None) => rows.matmul(&weight.t()?)?,
        };
        match self.softcap {
            Some(cap) => (z / cap)?.tanh()? * cap,
            None => Ok(z),
        }
    }

    fn targets(&self, start: usize, len: usize, device: &candle_core::Device) -> Result<Tensor> {
        Tensor::from_slice(&self.targets[start..start + len], (len, 1), device)
    }

    fn forward(mut self, hidden: &Tensor, weight: &Tensor) -> Result<Self> {
        let (n, _) = hidden.dims2()?;
        let step = self.chunk_rows(weight.dim(0)?);
        let mut sum = 0f64;
        let packed = self.bf16_weight.as_deref().and_then(packed_forward);
        for start in (0..n).step_by(step) {
            let len = step.min(n - start);
            let z = self.logits(hidden, weight, start, len, packed.as_ref())?;
            let max = z.max_keepdim(D::Minus1)?;
            let lse = (exp(&z.broadcast_sub(&max)?)?.sum_keepdim(D::Minus1)?.log()? + max)?;
            let picked = z.gather(&self.targets(start, len, hidden.device())?, D::Minus1)?;
            let lse = lse.flatten_all()?.to_vec1::<f32>()?;
            let picked = picked.flatten_all()?.to_vec1::<f32>()?;
            sum += lse.iter().zip(&picked).map(|(l, p)| (l - p) as f64).sum::<f64>();
            self.lse.extend(lse);
        }
        self.sum = sum as f32;
        Ok(self)
    }
}

impl CustomOp2 for LinearCrossEntropy {
    fn name(&self) -> &'static str {
        "sft-linear-cross-entropy"
    }

    /// The loss was computed when the op was built; this only hands it to the graph.
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((CpuStorage::F32(vec![self.sum]), Shape::from(())))
    }

    fn bwd(&self, hidden: &Tensor, weight: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // The weight of a LoRA run is frozen: then its gradient (a vocab × d matmul) is skipped.
        let train_weight = weight.track_op();
        let (hidden, weight) = (hidden.detach(), weight.detach());
        let g = grad.to_dtype(DType::F32)?.to_scalar::<f32>()? as f64;
        let (n, _) = hidden.dims2()?;
        let step = self.chunk_rows(weight.dim(0)?);
        let mut dh = Vec::new();
        let mut dw: Option<Tensor> = None;
        let packed = self.bf16_weight.as_deref().and_then(|q| Some((packed_forward(q)?, packed_input_grad(q)?)));
        for start in (0..n).step_by(step) {
            let len = step.min(n - start);
            let z = self.logits(&hidden, &weight, start, len, packed.as_ref().map(|p| &p.0))?;
            let lse = Tensor::from_slice(&self.lse[start..start + len], (len, 1), hidden.device())?;
            let p = exp(&z.broadcast_sub(&lse)?)?;
            let minus_one = Tensor::full(-1f32, (len, 1), hidden.device())?;
            let mut dz = (p.scatter_add(&self.targets(start, len, hidden.device())?, &minus_one, 1)? * g)?;
            if let Some(cap) = self.softcap {
                // z here is cap·tanh(raw/cap); d/draw = 1 − tanh² = 1 − (z/cap)²
                dz = (dz * (1.0 - (z / cap)?.sqr()?)?)?;
            }
            dh.push(match (&packed, &self.bf16_weight) {
                (Some((_, p)), _) => packed_matmul(&dz, p)?,
                (None, Some(q)) => qmatmul_input_grad(&dz, q)?,
                (None, None) => dz.matmul(&weight)?,
            });
            if train_weight {
                let part = dz.t()?.matmul(&hidden.narrow(0, start, len)?)?;
                dw = Some(match dw {
                    Some(acc) => (acc + part)?,
                    None => part,
                });
            }
        }
        let dh = Tensor::cat(&dh, 0)?;
        Ok((Some(dh), dw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{check, random};

    /// The same loss from the full logits matrix.
    fn full(hidden: &Tensor, weight: &Tensor, targets: &[u32], softcap: Option<f64>) -> Result<Tensor> {
        let mut z = hidden.matmul(&weight.t()?)?;
        if let Some(cap) = softcap {
            z = ((z / cap)?.tanh()? * cap)?;
        }
        let max = z.max_keepdim(1)?;
        let lse = (z.broadcast_sub(&max)?.exp()?.sum_keepdim(1)?.log()? + max)?;
        let t = Tensor::from_slice(targets, (targets.len(), 1), hidden.device())?;
        (lse - z.gather(&t, 1)?)?.sum_all()
    }

    #[test]
    fn forward_matches_full_logits() -> Result<()> {
        let h = (random(&[5, 4], 21)? * 2.0)?;
        let w = (random(&[7, 4], 22)? * 2.0)?;
        let targets = [0, 6, 3, 3, 1];
        for softcap in [None, Some(3.0)] {
            let ours = linear_cross_entropy(&h, &w, &targets, CrossEntropy { softcap, bf16_weight: None })?.to_scalar::<f32>()?;
            let theirs = full(&h, &w, &targets, softcap)?.to_scalar::<f32>()?;
            assert!((ours - theirs).abs() < 1e-5, "{softcap:?}: {ours} vs {theirs}");
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let targets = [2, 0, 4];
        for softcap in [None, Some(2.0)] {
            let h = random(&[3, 4], 23)?;
            let w = random(&[5, 4], 24)?;
            check(&[h, w], |t| linear_cross_entropy(&t[0], &t[1], &targets, CrossEntropy { softcap, bf16_weight: None }), 2e-3)?;
        }
        Ok(())
    }

    #[test]
    fn a_frozen_weight_gets_no_gradient() -> Result<()> {
        let h = candle_core::Var::from_tensor(&random(&[3, 4], 25)?)?;
        let w = random(&[5, 4], 26)?;
        let grads = linear_cross_entropy(&h, &w, &[1, 2, 3], CrossEntropy::default())?.backward()?;
        assert!(grads.get(h.as_tensor()).is_some());
        assert!(grads.get(&w).is_none());
        Ok(())
    }

    #[test]
    fn a_target_outside_the_vocabulary_is_an_error() -> Result<()> {
        let err = linear_cross_entropy(&random(&[1, 4], 1)?, &random(&[5, 4], 2)?, &[5], CrossEntropy::default());
        assert!(err.unwrap_err().to_string().contains("target id 5"));
        Ok(())
    }
    #[test]
    fn a_bf16_output_layer_gives_the_loss_and_hidden_gradient_within_bf16_rounding() -> Result<()> {
        use crate::quant::BaseFormat;
        let (h, w) = (random(&[40, 24], 21)?, random(&[300, 24], 22)?);
        let targets: Vec<u32> = (0..40).map(|i| (i * 7 % 300) as u32).collect();
        let q = Arc::new(QuantWeight::new(&w.flatten_all()?.to_vec1::<f32>()?, 300, 24, BaseFormat::Bf16Matmul).expect("bf16"));
        let hv = candle_core::Var::from_tensor(&h)?;
        let loss = |opts| -> Result<(f32, Vec<f32>)> {
            let l = linear_cross_entropy(hv.as_tensor(), &w, &targets, opts)?;
            let g = l.backward()?.get(hv.as_tensor()).expect("hidden gradient").flatten_all()?.to_vec1::<f32>()?;
            Ok((l.to_scalar::<f32>()?, g))
        };
        let (want, want_g) = loss(CrossEntropy::default())?;
        let (got, got_g) = loss(CrossEntropy { softcap: None, bf16_weight: Some(q.clone()) })?;
        assert!(got != want && (got - want).abs() < 1e-2 * want.abs(), "bf16 loss {got} vs f32 {want}");
        let scale = want_g.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(got_g.iter().zip(&want_g).all(|(a, b)| (a - b).abs() < 2e-2 * scale), "hidden gradients differ");
        // A trainable weight cannot be replaced by a frozen copy.
        let trainable = candle_core::Var::from_tensor(&w)?;
        assert!(linear_cross_entropy(&h, trainable.as_tensor(), &targets, CrossEntropy { softcap: None, bf16_weight: Some(q) }).is_err());
        Ok(())
    }
}
