//! `x·Wᵀ` with a frozen weight: the backward pass returns the gradient of `x` only (`dx = dy·W`).
//! candle's matmul backward always computes the weight's gradient too, even for a constant
//! weight; under LoRA that is a third of a training step's FLOPs spent on a result thrown away.
//!
//! [`frozen_matmul`] takes an f32 weight; [`qmatmul`] a compact one (bf16 or NF4,
//! [`QuantWeight`]), dequantized to f32 a tile of rows at a time (at most [`TILE_FLOATS`] floats
//! live at once) in both passes, so LoRA adapters before a quantized layer still learn. A few rows
//! (decoding) skip the tiles and dot each weight row straight from its compact form.

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Device, Layout, Result, Shape, Tensor};

use super::{amx, cpu_f32, linear_dims, matvec_rows, MATVEC_MAX_ROWS};
use crate::quant::QuantWeight;

/// Most f32 values of a dequantized tile (16 MiB).
const TILE_FLOATS: usize = 1 << 22;

/// `x` `[n, in]` times the frozen f32 `weight` `[out, in]` transposed → `[n, out]`; no gradient
/// reaches `weight`.
pub fn frozen_matmul(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&weight.contiguous()?, FrozenMatMul)
}

struct FrozenMatMul;

impl CustomOp2 for FrozenMatMul {
    fn name(&self) -> &'static str {
        "sft-frozen-matmul"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, inp, out) = linear_dims("frozen_matmul", l1, l2)?;
        let y = s1.matmul(s2, (1, n, out, inp), l1, &l2.transpose(0, 1)?)?;
        Ok((y, Shape::from((n, out))))
    }

    fn bwd(&self, _x: &Tensor, weight: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.matmul(weight)?), None))
    }
}

/// `x` `[n, in]` times the quantized `[out, in]` weight transposed → `[n, out]`.
pub fn qmatmul(x: &Tensor, weight: &Arc<QuantWeight>) -> Result<Tensor> {
    x.contiguous()?.apply_op1(QMatMul(weight.clone()))
}

struct QMatMul(Arc<QuantWeight>);

/// A [`BaseFormat::Bf16Matmul`](crate::quant::BaseFormat) weight `[out, in]` packed for bf16
/// tile products `x·Wᵀ`; `None` for other formats or without AMX.
pub(crate) fn packed_forward(weight: &QuantWeight) -> Option<amx::PackedB> {
    let w = weight.bf16_matmul().filter(|_| amx::available())?;
    let (out, inp) = weight.dims();
    Some(amx::PackedB::new(out, inp, |o, i| w[o * inp + i]))
}

/// As [`packed_forward`], for input gradients `dy·W`.
pub(crate) fn packed_input_grad(weight: &QuantWeight) -> Option<amx::PackedB> {
    let w = weight.bf16_matmul().filter(|_| amx::available())?;
    let (out, inp) = weight.dims();
    Some(amx::PackedB::new(inp, out, |i, o| w[o * inp + i]))
}

/// `x` `[n, k]` times a packed `[cols, k]` operand transposed → `[n, cols]`, in bf16 with f32 sums.
pub(crate) fn packed_matmul(x: &Tensor, packed: &amx::PackedB) -> Result<Tensor> {
    let n = x.dim(0)?;
    let data = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    if data.len() != n * packed.k() {
        candle_core::bail!("bf16 matmul: x {:?} does not fit a packed operand of width {}", x.dims(), packed.k());
    }
    Tensor::from_vec(amx::matmul_packed(&data, n, packed), (n, packed.n()), x.device())
}

/// `dy·W` for `dy` `[n, out]` and the quantized `[out, in]` weight, a tile of rows at a time.
pub(crate) fn qmatmul_input_grad(grad: &Tensor, weight: &Arc<QuantWeight>) -> Result<Tensor> {
    if let Some(packed) = packed_input_grad(weight) {
        return packed_matmul(grad, &packed);
    }
    let op = QMatMul(weight.clone());
    let mut dx = Tensor::zeros((grad.dim(0)?, weight.dims().1), grad.dtype(), grad.device())?;
    for tile in op.tiles() {
        let (first, w) = tile?;
        dx = (dx + grad.narrow(1, first, w.dim(0)?)?.matmul(&w)?)?;
    }
    Ok(dx)
}

impl QMatMul {
    /// Row ranges of the weight, each at most [`TILE_FLOATS`] values, dequantized as tensors.
    fn tiles(&self) -> impl Iterator<Item = Result<(usize, Tensor)>> + '_ {
        let (out, inp) = self.0.dims();
        let rows = (TILE_FLOATS / inp.max(1)).max(1);
        (0..out).step_by(rows).map(move |first| {
            let n = rows.min(out - first);
            let mut w = vec![0f32; n * inp];
            self.0.dequantize_rows(first, &mut w);
            Ok((first, Tensor::from_vec(w, (n, inp), &Device::Cpu)?))
        })
    }
}

impl CustomOp1 for QMatMul {
    fn name(&self) -> &'static str {
        "sft-qmatmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_f32(storage, layout, self.name())?;
        let (out, inp) = self.0.dims();
        let &[n, x_in] = layout.dims() else {
            candle_core::bail!("qmatmul: expects x [n, in], got {:?}", layout.dims());
        };
        if x_in != inp {
            candle_core::bail!("qmatmul: x {:?} does not fit the weight [{out}, {inp}]", layout.dims());
        }
        if n <= MATVEC_MAX_ROWS {
            let y = matvec_rows(x, n, out, |o, x| self.0.dot_row(o, x));
            return Ok((CpuStorage::F32(y), Shape::from((n, out))));
        }
        if let Some(packed) = packed_forward(&self.0) {
            return Ok((CpuStorage::F32(amx::matmul_packed(x, n, &packed)), Shape::from((n, out))));
        }
        let xt = Tensor::from_slice(x, (n, inp), &Device::Cpu)?;
        let parts = self.tiles().map(|tile| tile.and_then(|(_, w)| xt.matmul(&w.t()?))).collect::<Result<Vec<_>>>()?;
        let y = Tensor::cat(&parts, 1)?.flatten_all()?.to_vec1::<f32>()?;
        Ok((CpuStorage::F32(y), Shape::from((n, out))))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        qmatmul_input_grad(grad, &self.0).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{check, random, weighted_sum};
    use crate::quant::BaseFormat;

    fn quantized(out: usize, inp: usize, format: BaseFormat) -> Result<(Arc<QuantWeight>, Tensor)> {
        let w = random(&[out, inp], 3)?;
        let q = QuantWeight::new(&w.flatten_all()?.to_vec1::<f32>()?, out, inp, format).expect("not f32");
        let mut dense = vec![0f32; out * inp];
        q.dequantize_rows(0, &mut dense);
        Ok((Arc::new(q), Tensor::from_vec(dense, (out, inp), &Device::Cpu)?))
    }

    const FORMATS: [BaseFormat; 3] = [BaseFormat::Bf16, BaseFormat::Nf4 { double_quant: false }, BaseFormat::Nf4 { double_quant: true }];

    #[test]
    fn forward_and_input_gradient_equal_the_dequantized_dense_weight() -> Result<()> {
        for format in FORMATS {
            for n in [1, 3, 20] {
                let (q, dense) = quantized(70, 130, format)?;
                let x = candle_core::Var::from_tensor(&random(&[n, 130], 5)?)?;
                let ours = qmatmul(x.as_tensor(), &q)?;
                let reference = x.as_tensor().matmul(&dense.t()?)?;
                let diff = (&ours - &reference)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(diff < 1e-4, "{format:?} n={n}: forward differs by {diff}");
                let g_ours = weighted_sum(&ours, 9)?.backward()?;
                let g_ref = weighted_sum(&reference, 9)?.backward()?;
                let (a, b) = (g_ours.get(x.as_tensor()).expect("x gradient"), g_ref.get(x.as_tensor()).expect("x gradient"));
                let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(diff < 1e-4, "{format:?} n={n}: input gradient differs by {diff}");
            }
        }
        Ok(())
    }

    #[test]
    fn bf16_products_equal_f32_products_of_the_inputs_rounded_to_bf16() -> Result<()> {
        let round = |t: &Tensor| -> Result<Tensor> {
            let v: Vec<f32> = t.flatten_all()?.to_vec1::<f32>()?.iter().map(|&x| crate::quant::from_bf16(crate::quant::to_bf16(x))).collect();
            Tensor::from_vec(v, t.shape(), &Device::Cpu)
        };
        // Without AMX the products are the f32 ones of Bf16 storage, so the inputs stay unrounded.
        let rounded = |t: &Tensor| if amx::available() { round(t) } else { Ok(t.clone()) };
        for n in [9, 64, 100] {
            let (q, dense) = quantized(70, 130, BaseFormat::Bf16Matmul)?;
            let x = random(&[n, 130], 5)?;
            let diff = (qmatmul(&x, &q)? - rounded(&x)?.matmul(&dense.t()?)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-4, "n={n}: forward differs by {diff}");
            let dy = random(&[n, 70], 6)?;
            let diff = (qmatmul_input_grad(&dy, &q)? - rounded(&dy)?.matmul(&dense)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-4, "n={n}: input gradient differs by {diff}");
        }
        Ok(())
    }

    #[test]
    fn frozen_matmul_gives_the_input_gradient_of_the_matmul_and_none_to_the_weight() -> Result<()> {
        let x = candle_core::Var::from_tensor(&random(&[20, 33], 1)?)?;
        let w = candle_core::Var::from_tensor(&random(&[7, 33], 2)?)?;
        let ours = frozen_matmul(x.as_tensor(), w.as_tensor())?;
        let reference = x.as_tensor().matmul(&w.as_tensor().t()?)?;
        assert!((&ours - &reference)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-5);
        let (g_ours, g_ref) = (weighted_sum(&ours, 4)?.backward()?, weighted_sum(&reference, 4)?.backward()?);
        let (a, b) = (g_ours.get(x.as_tensor()).expect("x gradient"), g_ref.get(x.as_tensor()).expect("x gradient"));
        assert!((a - b)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-5);
        assert!(g_ours.get(w.as_tensor()).is_none(), "the frozen weight gets no gradient");
        check(&[random(&[5, 33], 3)?], |t| weighted_sum(&frozen_matmul(&t[0], w.as_tensor())?, 2), 2e-2)
    }

    #[test]
    fn gradient_check() -> Result<()> {
        let (q, _) = quantized(6, 70, BaseFormat::Nf4 { double_quant: true })?;
        check(&[random(&[9, 70], 1)?], |t| weighted_sum(&qmatmul(&t[0], &q)?, 2), 2e-2)
    }
}
