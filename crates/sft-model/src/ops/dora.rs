//! DoRA, weight-decomposed LoRA (Liu et al. 2024, arXiv:2402.09353), as PEFT 0.21 computes it:
//! the adapted weight `W + s·B·A` is split into its direction and a trainable magnitude `m`, one
//! per output row,
//!
//!   y = g ∘ (x·Wᵀ + s·(x·Aᵀ)·Bᵀ) + b,   g = m / ‖W + s·B·A‖,
//!
//! the norm taken over each row (the input dim). PEFT detaches the norm from the graph (the
//! paper's section 4.3), so no gradient reaches A or B through it: it is an input here
//! ([`dora_weight_norm`] computes it, as a constant). With dropout on the adapter's input PEFT
//! runs the base product twice, `x·Wᵀ + b + (g − 1)∘(drop(x)·Wᵀ) + g∘s·(drop(x)·Aᵀ)·Bᵀ`, which
//! is computed here as `(x − drop(x))·Wᵀ + g∘(drop(x)·Wᵀ + s·(drop(x)·Aᵀ)·Bᵀ) + b`.
//!
//! The products run in the LoRA op ([`lora_linear`], without bias or dropout); the factor `g`
//! and the magnitude's gradient `dm = Σₙ dy∘z / ‖…‖` come from candle's broadcasting ops, which
//! keep the `[n, out]` product `z` for it.

use candle_core::{Device, Result, Tensor};

use super::lora_linear::{lora_linear, LinearWeight, LoraLinear};
use super::{frozen_matmul, qmatmul, with_f32, with_f32s};
use crate::kernels::gemm::{gemm, Dst, Mat};

/// Most f32 values of the adapted weight held at once while its norms are taken (16 MiB).
const NORM_TILE_FLOATS: usize = 1 << 22;

/// A DoRA module's tensors: `a` `[r, in]`, `b` `[out, r]`, the magnitude `[out]` and the weight
/// norm `[out]` from [`dora_weight_norm`] (a constant).
#[derive(Debug, Clone, Copy)]
pub struct DoraWeights<'a> {
    /// LoRA's A.
    pub a: &'a Tensor,
    /// LoRA's B.
    pub b: &'a Tensor,
    /// `m`.
    pub magnitude: &'a Tensor,
    /// `‖W + s·B·A‖` per output row.
    pub norm: &'a Tensor,
}

/// `x` `[n, in]` through the DoRA layer → `[n, out]`: the weight (and bias) of `layer` frozen,
/// its scaling and dropout applied as PEFT applies them.
pub fn dora_linear(x: &Tensor, w: DoraWeights<'_>, layer: &LoraLinear) -> Result<Tensor> {
    let g = w.magnitude.div(w.norm)?;
    let inner = LoraLinear { weight: layer.weight.clone(), bias: None, scaling: layer.scaling, dropout: None };
    let y = match layer.dropout {
        Some((d, index)) if d.p > 0.0 => {
            let mask = Tensor::from_vec(d.mask(index, x.elem_count()), x.shape(), x.device())?;
            let dropped = (x * mask)?;
            let rest = match &layer.weight {
                LinearWeight::Dense(weight) => frozen_matmul(&(x - &dropped)?, weight)?,
                LinearWeight::Quant(q) => qmatmul(&(x - &dropped)?, q)?,
            };
            (lora_linear(&dropped, w.a, w.b, &inner)?.broadcast_mul(&g)? + rest)?
        }
        _ => lora_linear(x, w.a, w.b, &inner)?.broadcast_mul(&g)?,
    };
    match &layer.bias {
        Some(bias) => y.broadcast_add(bias),
        None => Ok(y),
    }
}

/// `‖W + s·B·A‖` of every output row of `weight` `[out, in]` (over the input dim), as PEFT's
/// `get_weight_norm`: a new `[out]` tensor outside the graph. Bf16 and NF4 weights are
/// dequantized, a tile of rows at a time.
pub fn dora_weight_norm(weight: &LinearWeight, a: &Tensor, b: &Tensor, scaling: f64) -> Result<Tensor> {
    let (out, inp) = weight.dims()?;
    let r = a.dim(0)?;
    if a.dims() != [r, inp] || b.dims() != [out, r] {
        candle_core::bail!("dora: A {:?} and B {:?} do not fit the weight [{out}, {inp}]", a.dims(), b.dims());
    }
    let shape = Adapted { out, inp, r, scaling: scaling as f32, tile_floats: NORM_TILE_FLOATS };
    let norms =
        with_f32s([a, b], "dora", |[a, b]| match weight {
            LinearWeight::Dense(w) => with_f32(w, "dora", |w| {
                Ok(shape.row_norms(a, b, |first, rows| rows.copy_from_slice(&w[first * inp..first * inp + rows.len()])))
            }),
            LinearWeight::Quant(q) => Ok(shape.row_norms(a, b, |first, rows| q.dequantize_rows(first, rows))),
        })?;
    Tensor::from_vec(norms, out, &Device::Cpu)
}

/// The dims of `W + s·B·A` and how many of its values a tile holds.
struct Adapted {
    out: usize,
    inp: usize,
    r: usize,
    scaling: f32,
    tile_floats: usize,
}

impl Adapted {
    /// The row norms, with `fill(first, rows)` writing weight rows `first..` into `rows`.
    fn row_norms(&self, a: &[f32], b: &[f32], fill: impl Fn(usize, &mut [f32])) -> Vec<f32> {
        let (out, inp, r) = (self.out, self.inp, self.r);
        let chunk = (self.tile_floats / inp.max(1)).clamp(1, out.max(1));
        let mut tile = vec![0f32; chunk * inp];
        let mut norms = Vec::with_capacity(out);
        for first in (0..out).step_by(chunk) {
            let n = chunk.min(out - first);
            let rows = &mut tile[..n * inp];
            fill(first, rows);
            let b_rows = Mat::rows(&b[first * r..(first + n) * r], r);
            gemm(Dst::rows(rows, inp).add().scaled(self.scaling).parallel(), (n, inp, r), b_rows, Mat::rows(a, inp));
            norms.extend(rows.chunks_exact(inp).map(|row| row.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>().sqrt() as f32));
        }
        norms
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::lora::Dropout;
    use crate::ops::gradcheck::{check, random, weighted_sum};
    use crate::quant::{BaseFormat, QuantWeight};
    use candle_core::Var;

    const DROPOUT: (Dropout, u64) = (Dropout { p: 0.3, seed: 11 }, 2);

    /// PEFT's `DoraLinearVariant.forward` in plain ops (the norm detached as PEFT does).
    fn peft(x: &Tensor, a: &Tensor, b: &Tensor, m: &Tensor, w: &Tensor, layer: &LoraLinear) -> Result<Tensor> {
        let s = layer.scaling;
        let norm = (w + (b.matmul(a)? * s)?)?.sqr()?.sum(1)?.sqrt()?.detach();
        let g = m.div(&norm)?;
        let with_bias = |y: Tensor| match &layer.bias {
            Some(bias) => y.broadcast_add(bias),
            None => Ok(y),
        };
        let result = with_bias(x.matmul(&w.t()?)?)?;
        let (dropped, base) = match layer.dropout {
            Some((d, index)) => {
                let dropped = (x * Tensor::from_vec(d.mask(index, x.elem_count()), x.shape(), x.device())?)?;
                let base = dropped.matmul(&w.t()?)?;
                (dropped, base)
            }
            None => (x.clone(), x.matmul(&w.t()?)?),
        };
        let lora = (dropped.matmul(&a.t()?)?.matmul(&b.t()?)? * s)?;
        result + (base.broadcast_mul(&(&g - 1.0)?)? + lora.broadcast_mul(&g)?)?
    }

    fn bf16(w: &Tensor) -> Result<(LinearWeight, Tensor)> {
        let (out, inp) = w.dims2()?;
        let q = QuantWeight::new(&w.flatten_all()?.to_vec1::<f32>()?, out, inp, BaseFormat::Bf16).expect("bf16");
        let mut wq = vec![0f32; out * inp];
        q.dequantize_rows(0, &mut wq);
        Ok((LinearWeight::Quant(Arc::new(q)), Tensor::from_vec(wq, (out, inp), &Device::Cpu)?))
    }

    #[test]
    fn weight_norms_are_the_adapted_rows_norms() -> Result<()> {
        let (w, a, b) = (random(&[9, 12], 4)?, random(&[3, 12], 2)?, random(&[9, 3], 3)?);
        let want = (&w + (b.matmul(&a)? * 0.7)?)?.sqr()?.sum(1)?.sqrt()?;
        let got = dora_weight_norm(&LinearWeight::Dense(w.clone()), &a, &b, 0.7)?;
        assert!((&got - &want)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-5);
        // Tiles of two rows give the same norms.
        let shape = Adapted { out: 9, inp: 12, r: 3, scaling: 0.7, tile_floats: 24 };
        let (wv, av, bv) = (w.flatten_all()?.to_vec1::<f32>()?, a.flatten_all()?.to_vec1::<f32>()?, b.flatten_all()?.to_vec1::<f32>()?);
        let tiled = shape.row_norms(&av, &bv, |first, rows| rows.copy_from_slice(&wv[first * 12..first * 12 + rows.len()]));
        let untiled = got.to_vec1::<f32>()?;
        assert!(tiled.iter().zip(&untiled).all(|(t, u)| (t - u).abs() < 1e-6), "{tiled:?} vs {untiled:?}");
        // A quantized weight's norms are those of its dequantized values.
        let (q, wq) = bf16(&w)?;
        let want = (&wq + (b.matmul(&a)? * 0.7)?)?.sqr()?.sum(1)?.sqrt()?;
        let got = dora_weight_norm(&q, &a, &b, 0.7)?;
        assert!((&got - &want)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-5);
        Ok(())
    }

    #[test]
    fn equals_peft_and_its_gradients() -> Result<()> {
        let w = random(&[9, 12], 4)?;
        for (weight, dense) in [(LinearWeight::Dense(w.clone()), w.clone()), bf16(&w)?] {
            for (bias, dropout) in [(None, None), (Some(random(&[9], 5)?), Some(DROPOUT))] {
                let layer = LoraLinear { weight: weight.clone(), bias, scaling: 1.7, dropout };
                let [x, a, b, m] = [random(&[5, 12], 1)?, random(&[3, 12], 2)?, random(&[9, 3], 3)?, random(&[9], 6)?]
                    .map(|t| Var::from_tensor(&t).expect("var"));
                let norm = dora_weight_norm(&weight, a.as_tensor(), b.as_tensor(), 1.7)?;
                let dw = DoraWeights { a: a.as_tensor(), b: b.as_tensor(), magnitude: m.as_tensor(), norm: &norm };
                let ours = dora_linear(x.as_tensor(), dw, &layer)?;
                let theirs = peft(x.as_tensor(), a.as_tensor(), b.as_tensor(), m.as_tensor(), &dense, &layer)?;
                assert!((&ours - &theirs)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-5);
                let (g1, g2) = (weighted_sum(&ours, 6)?.backward()?, weighted_sum(&theirs, 6)?.backward()?);
                for (name, v) in [("x", &x), ("a", &a), ("b", &b), ("m", &m)] {
                    let (p, q) = (g1.get(v.as_tensor()).expect("ours"), g2.get(v.as_tensor()).expect("theirs"));
                    let diff = (p - q)?.abs()?.max_all()?.to_scalar::<f32>()?;
                    assert!(diff < 1e-5, "d{name} differs by {diff}");
                }
            }
        }
        Ok(())
    }

    /// Finite differences over x, A, B and m with the weight norm held at its value (PEFT
    /// detaches it, so its change with A and B is no part of the gradient).
    #[test]
    fn gradient_check() -> Result<()> {
        let layer = LoraLinear {
            weight: LinearWeight::Dense(random(&[4, 6], 4)?),
            bias: Some(random(&[4], 5)?),
            scaling: 0.8,
            dropout: Some(DROPOUT),
        };
        let inputs = [random(&[3, 6], 1)?, random(&[2, 6], 2)?, random(&[4, 2], 3)?, (random(&[4], 7)? + 2.0)?];
        let norm = dora_weight_norm(&layer.weight, &inputs[1], &inputs[2], layer.scaling)?;
        for dropout in [None, layer.dropout] {
            let layer = LoraLinear { dropout, ..layer.clone() };
            check(
                &inputs,
                |t| {
                    let w = DoraWeights { a: &t[1], b: &t[2], magnitude: &t[3], norm: &norm };
                    weighted_sum(&dora_linear(&t[0], w, &layer)?, 7)
                },
                2e-2,
            )?;
        }
        Ok(())
    }
}
