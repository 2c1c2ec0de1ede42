//! The gated MLP's middle: `act(gate) · up` in one pass (SwiGLU with SiLU, GeGLU with the tanh
//! GELU of Gemma), and its backward.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{cpu_f32, with_f32s};
use crate::kernels::exp_in_place;
use crate::kernels::lanes::wide;

/// The gate's activation (transformers' `hidden_act` / `hidden_activation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x · sigmoid(x)` (`silu`, `swish`).
    Silu,
    /// `0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))` (`gelu_pytorch_tanh`, `gelu_new`).
    GeluTanh,
}

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_C: f32 = 0.044_715;

/// Elements per parallel task.
const CHUNK: usize = 4096;

impl Activation {
    /// The activation of every element of `g` into `a`, and with `da` its derivative.
    fn apply(self, g: &[f32], a: &mut [f32], mut da: Option<&mut [f32]>) {
        match self {
            Activation::Silu => {
                // sigmoid(x) = 1 / (1 + e^-x), the exponentials taken a slice at a time.
                wide(|| a.iter_mut().zip(g).for_each(|(a, &x)| *a = -x));
                exp_in_place(a);
                match da {
                    Some(da) => wide(|| {
                        for ((a, da), &x) in a.iter_mut().zip(da.iter_mut()).zip(g) {
                            let s = 1.0 / (1.0 + *a);
                            *da = s * (1.0 + x * (1.0 - s));
                            *a = x * s;
                        }
                    }),
                    None => wide(|| a.iter_mut().zip(g).for_each(|(a, &x)| *a = x * (1.0 / (1.0 + *a)))),
                }
            }
            Activation::GeluTanh => {
                for (i, (a, &x)) in a.iter_mut().zip(g).enumerate() {
                    let u = SQRT_2_OVER_PI * (x + GELU_C * x * x * x);
                    let t = u.tanh();
                    *a = 0.5 * x * (1.0 + t);
                    if let Some(da) = da.as_deref_mut() {
                        let du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_C * x * x);
                        da[i] = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du;
                    }
                }
            }
        }
    }
}

/// `act(gate) · up`, elementwise; both inputs have the same shape.
pub fn glu(gate: &Tensor, up: &Tensor, act: Activation) -> Result<Tensor> {
    gate.contiguous()?.apply_op2(&up.contiguous()?, Glu(act))
}

struct Glu(Activation);

impl CustomOp2 for Glu {
    fn name(&self) -> &'static str {
        "sft-glu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let gate = cpu_f32(s1, l1, self.name())?;
        let up = cpu_f32(s2, l2, self.name())?;
        if l1.dims() != l2.dims() {
            candle_core::bail!("glu: gate {:?} and up {:?} differ in shape", l1.dims(), l2.dims());
        }
        let mut y = vec![0f32; gate.len()];
        y.par_chunks_mut(CHUNK).zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK))).for_each(|(y, (g, u))| {
            self.0.apply(g, y, None);
            wide(|| y.iter_mut().zip(u).for_each(|(y, u)| *y *= u));
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(&self, gate: &Tensor, up: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dgate, dup): (Vec<f32>, Vec<f32>) = with_f32s([gate, up, grad], self.name(), |[g, u, d]| {
            let (mut dgate, mut dup) = (vec![0f32; g.len()], vec![0f32; g.len()]);
            let outputs = dgate.par_chunks_mut(CHUNK).zip(dup.par_chunks_mut(CHUNK));
            let inputs = g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK).zip(d.par_chunks(CHUNK)));
            outputs.zip(inputs).for_each(|((dgate, dup), (g, (u, d)))| {
                // The activation lands in `dup`, its derivative in `dgate`, then both
                // are scaled in place.
                self.0.apply(g, dup, Some(dgate));
                wide(|| {
                    for ((dg, du), (&u, &d)) in dgate.iter_mut().zip(dup.iter_mut()).zip(u.iter().zip(d)) {
                        *dg *= d * u;
                        *du *= d;
                    }
                });
            });
            Ok((dgate, dup))
        })?;
        Ok((Some(Tensor::from_vec(dgate, gate.shape(), gate.device())?), Some(Tensor::from_vec(dup, up.shape(), up.device())?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{check, random, weighted_sum};

    #[test]
    fn forward_matches_composed_ops() -> Result<()> {
        // Larger than one parallel chunk, and the small case.
        forward_matches_composed_ops_for(&[3, 5000])?;
        forward_matches_composed_ops_for(&[3, 6])
    }

    fn forward_matches_composed_ops_for(shape: &[usize]) -> Result<()> {
        let gate = (random(shape, 13)? * 3.0)?;
        let up = random(shape, 14)?;
        let silu = (gate.silu()? * &up)?;
        let diff = (glu(&gate, &up, Activation::Silu)? - silu)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "silu {diff}");
        let inner = ((&gate + (gate.powf(3.0)? * GELU_C as f64)?)? * SQRT_2_OVER_PI as f64)?;
        let gelu = ((&gate * 0.5)? * (inner.tanh()? + 1.0)?)?;
        let diff = (glu(&gate, &up, Activation::GeluTanh)? - (gelu * &up)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "gelu {diff}");
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        for act in [Activation::Silu, Activation::GeluTanh] {
            let gate = (random(&[2, 5], 15)? * 3.0)?;
            let up = random(&[2, 5], 16)?;
            check(&[gate, up], |t| weighted_sum(&glu(&t[0], &t[1], act)?, 17), 2e-3)?;
        }
        Ok(())
    }
}
