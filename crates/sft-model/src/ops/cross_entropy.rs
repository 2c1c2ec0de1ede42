//! Cross-entropy through the output layer without the logits matrix: `Σ_rows lse(h·Wᵀ) −
//! (h·Wᵀ)[target]` computed a few rows at a time, so a 150k-entry vocabulary never holds more than
//! one chunk of logits. The backward pass recomputes each chunk's logits from the saved
//! log-sum-exp and returns `dh` (and `dW` when the weight trains).
//!
//! Gemma 2's final soft-capping (`cap · tanh(z / cap)`) is applied to each chunk's logits.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::frozen_matmul::{dense_forward, dense_input_grad, packed_forward, packed_input_grad, quant_forward, quant_input_grad};
use super::with_f32s;
use crate::kernels::amx::{self, PackedB};
use crate::kernels::exp_shifted_in_place;
use crate::kernels::gemm::{gemm, Dst, Mat};
use crate::kernels::lanes::{self, wide};
use crate::quant::QuantWeight;

/// Most logit elements per chunk: just under 32 MiB of f32, glibc's largest mmap threshold, so
/// that the chunk buffers are reused rather than mapped afresh. Every chunk multiplies by the
/// whole output layer, and the matrix product lays that layer out anew each time (in f32, the
/// gemm crate packs it; ~4.6% of a LoRA step with 16 MiB chunks, 4 per sequence of the bench),
/// so chunks are as large as this allows.
const CHUNK_ELEMENTS: usize = (8 << 20) - (1 << 12);

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
    chunked(hidden, weight, targets, opts, CHUNK_ELEMENTS)
}

/// [`linear_cross_entropy`] with `chunk` logit elements per chunk.
fn chunked(hidden: &Tensor, weight: &Tensor, targets: &[u32], opts: CrossEntropy, chunk: usize) -> Result<Tensor> {
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
            candle_core::bail!(
                "cross-entropy: the bf16 output layer {:?} must be a copy of the frozen weight {:?}",
                q.dims(),
                weight.dims()
            );
        }
    }
    let rows = (chunk / vocab.max(1)).max(1);
    let op = LinearCrossEntropy {
        targets: Arc::new(targets.to_vec()),
        softcap: opts.softcap,
        bf16_weight: opts.bf16_weight,
        rows,
        lse: Vec::new(),
        sum: 0.0,
    };
    let op = op.forward(hidden, weight)?;
    if !hidden.track_op() && !weight.track_op() {
        return Tensor::new(op.sum, hidden.device());
    }
    hidden.apply_op2(weight, op)
}

struct LinearCrossEntropy {
    targets: Arc<Vec<u32>>,
    softcap: Option<f64>,
    bf16_weight: Option<Arc<QuantWeight>>,
    /// Rows per chunk.
    rows: usize,
    /// Each row's log-sum-exp, saved by the forward pass.
    lse: Vec<f32>,
    /// The forward result.
    sum: f32,
}

/// The output layer as one pass multiplies by it: packed bf16 tiles, compact bf16, or f32.
enum Head<'a> {
    Packed(&'a PackedB),
    Compact(&'a QuantWeight),
    Dense(&'a [f32]),
}

impl Head<'_> {
    /// `x` `[n, d]` times the layer transposed → `[n, vocab]`.
    fn logits(&self, x: &[f32], n: usize, vocab: usize) -> Result<Vec<f32>> {
        match self {
            Head::Packed(p) => Ok(amx::matmul_packed(x, n, p)),
            Head::Compact(q) => quant_forward(q, x, n),
            Head::Dense(w) => Ok(dense_forward(x, n, w, vocab)),
        }
    }

    /// `dz` `[n, vocab]` times the layer → `[n, d]`.
    fn input_grad(&self, dz: &[f32], n: usize, d: usize) -> Result<Vec<f32>> {
        match self {
            Head::Packed(p) => Ok(amx::matmul_packed(dz, n, p)),
            Head::Compact(q) => quant_input_grad(q, dz, n),
            Head::Dense(w) => Ok(dense_input_grad(dz, n, w, d)),
        }
    }
}

impl LinearCrossEntropy {
    /// The chunks of rows, as few as `rows` per chunk allows and of nearly equal size: (first
    /// row, rows).
    fn chunks(&self, n: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
        let size = n.div_ceil(n.div_ceil(self.rows).max(1)).max(1);
        (0..n).step_by(size).map(move |start| (start, size.min(n - start)))
    }

    /// Applies the soft cap to a chunk of logits in place.
    fn cap(&self, z: &mut [f32]) {
        if let Some(cap) = self.softcap {
            let cap = cap as f32;
            z.par_chunks_mut(1 << 14).for_each(|c| c.iter_mut().for_each(|x| *x = cap * (*x / cap).tanh()));
        }
    }

    fn forward(mut self, hidden: &Tensor, weight: &Tensor) -> Result<Self> {
        let (n, d) = hidden.dims2()?;
        let vocab = weight.dim(0)?;
        let (mut sum, mut lses) = (0f64, Vec::with_capacity(n));
        with_f32s([hidden, weight], "cross-entropy", |[h, w]| {
            let packed = self.bf16_weight.as_deref().and_then(packed_forward);
            let head = match (packed, self.bf16_weight.as_deref()) {
                (Some(p), _) => Head::Packed(p),
                (None, Some(q)) => Head::Compact(q),
                (None, None) => Head::Dense(w),
            };
            for (start, len) in self.chunks(n) {
                let mut z = head.logits(&h[start * d..(start + len) * d], len, vocab)?;
                self.cap(&mut z);
                let targets = &self.targets[start..start + len];
                // Per row: the target's logit, then the log-sum-exp (z is scratch afterwards).
                let rows: Vec<(f32, f32)> = z
                    .par_chunks_mut(vocab)
                    .zip(targets)
                    .map(|(row, &t)| {
                        let picked = row[t as usize];
                        (lanes::log_sum_exp(row), picked)
                    })
                    .collect();
                sum += rows.iter().map(|(lse, picked)| (lse - picked) as f64).sum::<f64>();
                lses.extend(rows.iter().map(|r| r.0));
            }
            Ok(())
        })?;
        self.sum = sum as f32;
        self.lse = lses;
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
        let g = grad.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        let (n, d) = hidden.dims2()?;
        let vocab = weight.dim(0)?;
        let mut dh = Vec::with_capacity(n * d);
        let mut dw = if train_weight { vec![0f32; vocab * d] } else { Vec::new() };
        with_f32s([hidden, weight], self.name(), |[h, w]| {
            let packed = self.bf16_weight.as_deref().and_then(|q| Some((packed_forward(q)?, packed_input_grad(q)?)));
            let (forward, backward) = match (packed, self.bf16_weight.as_deref()) {
                (Some((f, b)), _) => (Head::Packed(f), Head::Packed(b)),
                (None, Some(q)) => (Head::Compact(q), Head::Compact(q)),
                (None, None) => (Head::Dense(w), Head::Dense(w)),
            };
            for (start, len) in self.chunks(n) {
                let rows = &h[start * d..(start + len) * d];
                let mut z = forward.logits(rows, len, vocab)?;
                self.cap(&mut z);
                let (targets, lse) = (&self.targets[start..start + len], &self.lse[start..start + len]);
                // dz = g·(softmax(z) − onehot(target)), times 1 − (z/cap)² under a soft cap.
                z.par_chunks_mut(vocab).zip(targets.par_iter().zip(lse)).for_each(|(row, (&t, &lse))| {
                    let capped = self.softcap.map(|cap| (cap as f32, row.to_vec()));
                    exp_shifted_in_place(row, lse);
                    row[t as usize] -= 1.0;
                    wide(|| row.iter_mut().for_each(|x| *x *= g));
                    if let Some((cap, z)) = capped {
                        row.iter_mut().zip(z).for_each(|(x, z)| *x *= 1.0 - (z / cap) * (z / cap));
                    }
                });
                dh.extend(backward.input_grad(&z, len, d)?);
                if train_weight {
                    gemm(Dst::rows(&mut dw, d).add().parallel(), (vocab, d, len), Mat::rows(&z, vocab).t(), Mat::rows(rows, d));
                }
            }
            Ok(())
        })?;
        let dh = Tensor::from_vec(dh, (n, d), &Device::Cpu)?;
        let dw = if train_weight { Some(Tensor::from_vec(dw, (vocab, d), &Device::Cpu)?) } else { None };
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
    fn chunks_of_a_few_rows_give_the_same_loss_and_gradients() -> Result<()> {
        let targets = [2, 0, 4, 1, 3, 3, 0];
        for softcap in [None, Some(2.0)] {
            let (h, w) = (candle_core::Var::from_tensor(&random(&[7, 4], 27)?)?, candle_core::Var::from_tensor(&random(&[5, 4], 28)?)?);
            let run = |chunk| -> Result<(f32, Vec<f32>, Vec<f32>)> {
                let l = chunked(h.as_tensor(), w.as_tensor(), &targets, CrossEntropy { softcap, bf16_weight: None }, chunk)?;
                let g = l.backward()?;
                let flat = |v: &candle_core::Var| g.get(v.as_tensor()).expect("gradient").flatten_all()?.to_vec1::<f32>();
                Ok((l.to_scalar::<f32>()?, flat(&h)?, flat(&w)?))
            };
            let (one, three) = (run(1 << 20)?, run(15)?);
            assert!((one.0 - three.0).abs() < 1e-5, "loss {} vs {}", one.0, three.0);
            for (a, b) in one.1.iter().chain(&one.2).zip(three.1.iter().chain(&three.2)) {
                assert!((a - b).abs() < 1e-5, "gradient {a} vs {b}");
            }
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
