//! `y = x·Wᵀ (+ r)` for a trainable f32 weight (full fine-tuning), with the residual stream `r`
//! added inside the op. Composed as a matmul and an add, the graph keeps the product `x·Wᵀ` alive
//! until the backward pass only because the add holds it, though no gradient needs it: per
//! layer that is the attention and MLP outputs (2 × tokens × hidden floats). Here only `x`, `W`
//! and the sum are kept, and the backward pass is
//!
//!   dx = dy·W,   dW = dyᵀ·x,   dr = dy
//!
//! (`dx` only when `x` needs it: the first layer's input may be a constant).

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Device, Layout, Result, Shape, Tensor};

use super::frozen_matmul::{dense_forward, dense_input_grad};
use super::{cpu_f32, linear_dims, with_f32s};
use crate::kernels::gemm::{product, Mat};

/// `x` `[n, in]` times `weight` `[out, in]` transposed, plus `residual` `[n, out]` if given.
pub fn linear(x: &Tensor, weight: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
    let (x, weight) = (x.contiguous()?, weight.contiguous()?);
    match residual {
        Some(r) => x.apply_op3(&weight, &r.contiguous()?, Linear),
        None => x.apply_op2(&weight, Linear),
    }
}

struct Linear;

impl Linear {
    fn forward(
        &self,
        x: (&CpuStorage, &Layout),
        w: (&CpuStorage, &Layout),
        residual: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, _, out) = linear_dims("linear", x.1, w.1)?;
        let mut y = dense_forward(cpu_f32(x.0, x.1, "linear")?, n, cpu_f32(w.0, w.1, "linear")?, out);
        if let Some((s, l)) = residual {
            if l.dims() != [n, out] {
                candle_core::bail!("linear: residual {:?} does not fit the output [{n}, {out}]", l.dims());
            }
            y.iter_mut().zip(cpu_f32(s, l, "linear")?).for_each(|(y, r)| *y += r);
        }
        Ok((CpuStorage::F32(y), Shape::from((n, out))))
    }

    /// (dx if `x` needs it, dW).
    fn backward(&self, x: &Tensor, weight: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Tensor)> {
        let (n, inp) = x.dims2()?;
        let out = weight.dim(0)?;
        let x_tracked = x.track_op();
        with_f32s([grad, weight, x], "linear", |[g, w, x]| {
            let dx = match x_tracked {
                true => Some(Tensor::from_vec(dense_input_grad(g, n, w, inp), (n, inp), &Device::Cpu)?),
                false => None,
            };
            let dw = product((out, inp, n), Mat::rows(g, out).t(), Mat::rows(x, inp), 1.0);
            Ok((dx, Tensor::from_vec(dw, (out, inp), &Device::Cpu)?))
        })
    }
}

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "sft-linear"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        self.forward((s1, l1), (s2, l2), None)
    }

    fn bwd(&self, x: &Tensor, weight: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = self.backward(x, weight, grad)?;
        Ok((dx, Some(dw)))
    }
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "sft-linear-residual"
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
        self.forward((s1, l1), (s2, l2), Some((s3, l3)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _r: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = self.backward(x, weight, grad)?;
        Ok((dx, Some(dw), Some(grad.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{check, random, weighted_sum};
    use candle_core::Var;

    #[test]
    fn equals_the_composed_product_and_sum_and_their_gradients() -> Result<()> {
        let [x, w, r] = [random(&[6, 5], 1)?, random(&[4, 5], 2)?, random(&[6, 4], 3)?].map(|t| Var::from_tensor(&t).expect("var"));
        for residual in [None, Some(r.as_tensor())] {
            let ours = linear(x.as_tensor(), w.as_tensor(), residual)?;
            let mut theirs = x.as_tensor().matmul(&w.as_tensor().t()?)?;
            if let Some(r) = residual {
                theirs = (theirs + r)?;
            }
            assert!((&ours - &theirs)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-5);
            let (g1, g2) = (weighted_sum(&ours, 4)?.backward()?, weighted_sum(&theirs, 4)?.backward()?);
            for v in [&x, &w, &r].into_iter().take(if residual.is_some() { 3 } else { 2 }) {
                let (a, b) = (g1.get(v.as_tensor()).expect("ours"), g2.get(v.as_tensor()).expect("theirs"));
                assert!((a - b)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-5);
            }
        }
        Ok(())
    }

    #[test]
    fn a_constant_input_gets_no_gradient() -> Result<()> {
        let w = Var::from_tensor(&random(&[4, 5], 2)?)?;
        let x = random(&[6, 5], 1)?;
        let grads = weighted_sum(&linear(&x, w.as_tensor(), None)?, 4)?.backward()?;
        assert!(grads.get(&x).is_none() && grads.get(w.as_tensor()).is_some());
        Ok(())
    }

    #[test]
    fn gradient_check() -> Result<()> {
        let inputs = [random(&[3, 5], 1)?, random(&[4, 5], 2)?, random(&[3, 4], 3)?];
        check(&inputs, |t| weighted_sum(&linear(&t[0], &t[1], Some(&t[2]))?, 7), 2e-2)?;
        check(&inputs[..2], |t| weighted_sum(&linear(&t[0], &t[1], None)?, 7), 2e-2)
    }
}
