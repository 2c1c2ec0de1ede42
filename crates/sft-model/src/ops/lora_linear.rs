//! A LoRA layer in one op: `y = x·Wᵀ + b + s·(drop(x)·Aᵀ)·Bᵀ` with `W` (and `b`) frozen. Built
//! from separate ops, the graph would keep six `[n, out]`-sized intermediates alive per layer
//! until the backward pass and compute a gradient for the frozen `W`; here only `x`, `A` and `B`
//! are kept (the dropout mask is drawn again from its seed) and the backward pass computes
//!
//!   dx = dy·W + s·((dy·B)·A) ∘ mask,   dA = s·(dy·B)ᵀ·drop(x),   dB = s·dyᵀ·(drop(x)·Aᵀ).

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Device, Layout, Result, Shape, Tensor};

use super::frozen_matmul::{dense_forward, dense_input_grad, quant_forward, quant_input_grad};
use super::{cpu_f32, lock, with_f32, with_f32s};
use crate::kernels::gemm::{gemm, product, Dst, Mat};
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
    /// `(out, in)`.
    pub fn dims(&self) -> Result<(usize, usize)> {
        match self {
            LinearWeight::Dense(w) => w.dims2(),
            LinearWeight::Quant(q) => Ok(q.dims()),
        }
    }

    /// `x·Wᵀ` for `x` `[n, in]` → `[n, out]`, the weight frozen.
    fn forward(&self, x: &[f32], n: usize, out: usize) -> Result<Vec<f32>> {
        match self {
            LinearWeight::Dense(w) => with_f32(w, "lora_linear", |w| Ok(dense_forward(x, n, w, out))),
            LinearWeight::Quant(q) => quant_forward(q, x, n),
        }
    }

    /// `dy·W` for `dy` `[n, out]` → `[n, in]`.
    fn input_grad(&self, dy: &[f32], n: usize, inp: usize) -> Result<Vec<f32>> {
        match self {
            LinearWeight::Dense(w) => with_f32(w, "lora_linear", |w| Ok(dense_input_grad(dy, n, w, inp))),
            LinearWeight::Quant(q) => quant_input_grad(q, dy, n),
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
    let op = LoraOp { layer: layer.clone(), down: Mutex::new(None) };
    x.contiguous()?.apply_op3(&a.contiguous()?, &b.contiguous()?, op)
}

/// One call of the layer: the forward pass leaves `drop(x)·Aᵀ` (`[n, r]`, small) for the
/// backward pass, which would otherwise read all of `x` again to recompute it.
struct LoraOp {
    layer: LoraLinear,
    down: Mutex<Option<Vec<f32>>>,
}

impl LoraLinear {
    /// The dropout mask of `x` and the dropped `x`, if dropout is on (the mask is drawn again
    /// from its seed in the backward pass).
    fn drop(&self, x: &[f32]) -> Option<(Vec<f32>, Vec<f32>)> {
        let mask = match self.dropout {
            Some((d, index)) if d.p > 0.0 => d.mask(index, x.len()),
            _ => return None,
        };
        let dropped = x.iter().zip(&mask).map(|(x, m)| x * m).collect();
        Some((mask, dropped))
    }
}

/// The dims of one call: `x` `[n, inp]`, `A` `[r, inp]`, `B` `[out, r]`.
#[derive(Clone, Copy)]
struct Dims {
    n: usize,
    inp: usize,
    r: usize,
    out: usize,
}

impl Dims {
    fn new(x: &Layout, a: &Layout, b: &Layout) -> Result<Self> {
        match (x.dims(), a.dims(), b.dims()) {
            (&[n, inp], &[r, a_in], &[out, b_r]) if a_in == inp && b_r == r => Ok(Dims { n, inp, r, out }),
            (x, a, b) => candle_core::bail!("lora_linear: x {x:?}, A {a:?} and B {b:?} do not fit [n, in], [r, in], [out, r]"),
        }
    }

    /// `drop(x)·Aᵀ` → `[n, r]`.
    fn down(&self, x: &[f32], a: &[f32]) -> Vec<f32> {
        product((self.n, self.r, self.inp), Mat::rows(x, self.inp), Mat::rows(a, self.inp).t(), 1.0)
    }
}

fn tensor(data: Vec<f32>, shape: (usize, usize)) -> Result<Tensor> {
    Tensor::from_vec(data, shape, &Device::Cpu)
}

impl CustomOp3 for LoraOp {
    fn name(&self) -> &'static str {
        "sft-lora-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = Dims::new(l1, l2, l3)?;
        let (x, a, b) = (cpu_f32(s1, l1, self.name())?, cpu_f32(s2, l2, self.name())?, cpu_f32(s3, l3, self.name())?);
        let layer = &self.layer;
        let mut y = layer.weight.forward(x, d.n, d.out)?;
        let dropped = layer.drop(x);
        let t = d.down(dropped.as_ref().map_or(x, |(_, xd)| xd), a);
        gemm(
            Dst::rows(&mut y, d.out).add().scaled(layer.scaling as f32).parallel(),
            (d.n, d.out, d.r),
            Mat::rows(&t, d.r),
            Mat::rows(b, d.r).t(),
        );
        *lock(&self.down, "lora_linear")? = Some(t);
        if let Some(bias) = &layer.bias {
            with_f32(bias, self.name(), |bias| {
                y.chunks_exact_mut(d.out).for_each(|row| row.iter_mut().zip(bias).for_each(|(y, b)| *y += b));
                Ok(())
            })?;
        }
        Ok((CpuStorage::F32(y), Shape::from((d.n, d.out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = Dims::new(x.layout(), a.layout(), b.layout())?;
        let (layer, s, x_tracked) = (&self.layer, self.layer.scaling as f32, x.track_op());
        let saved = lock(&self.down, "lora_linear")?.take();
        with_f32s([x, a, b, grad], self.name(), |[x, a, b, g]| {
            let dropped = layer.drop(x);
            let (mask, xd) = match &dropped {
                Some((mask, xd)) => (Some(mask), xd.as_slice()),
                None => (None, x),
            };
            // gb = s·dy·B [n, r]
            let gb = product((d.n, d.r, d.out), Mat::rows(g, d.out), Mat::rows(b, d.r), s);
            // dx (skipped when x is a constant, as the first layer's input can be).
            let dx = match x_tracked {
                true => {
                    let mut dx = layer.weight.input_grad(g, d.n, d.inp)?;
                    match mask {
                        Some(mask) => {
                            let dl = product((d.n, d.inp, d.r), Mat::rows(&gb, d.r), Mat::rows(a, d.inp), 1.0);
                            dx.iter_mut().zip(dl.iter().zip(mask)).for_each(|(dx, (l, m))| *dx += l * m);
                        }
                        None => {
                            gemm(Dst::rows(&mut dx, d.inp).add().parallel(), (d.n, d.inp, d.r), Mat::rows(&gb, d.r), Mat::rows(a, d.inp))
                        }
                    }
                    Some(tensor(dx, (d.n, d.inp))?)
                }
                false => None,
            };
            // dA = gbᵀ·drop(x) [r, in]
            let da = product((d.r, d.inp, d.n), Mat::rows(&gb, d.r).t(), Mat::rows(xd, d.inp), 1.0);
            // dB = s·dyᵀ·(drop(x)·Aᵀ) [out, r]
            let t = match saved {
                Some(t) if t.len() == d.n * d.r => t,
                _ => d.down(xd, a),
            };
            let db = product((d.out, d.r, d.n), Mat::rows(g, d.out).t(), Mat::rows(&t, d.r), s);
            Ok((dx, Some(tensor(da, (d.r, d.inp))?), Some(tensor(db, (d.out, d.r))?)))
        })
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
                let [x, a, b] =
                    [random(&[5, 12], 1)?, random(&[3, 12], 2)?, random(&[9, 3], 3)?].map(|t| Var::from_tensor(&t).expect("var"));
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
        let layer = LoraLinear {
            weight: LinearWeight::Dense(random(&[4, 6], 4)?),
            bias: Some(random(&[4], 5)?),
            scaling: 0.8,
            dropout: Some(DROPOUT),
        };
        let inputs = [random(&[3, 6], 1)?, random(&[2, 6], 2)?, random(&[4, 2], 3)?];
        check(&inputs, |t| weighted_sum(&lora_linear(&t[0], &t[1], &t[2], &layer)?, 7), 2e-2)
    }
}
