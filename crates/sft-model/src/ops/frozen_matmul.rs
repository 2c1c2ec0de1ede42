//! `x·Wᵀ` with a frozen weight: the backward pass returns the gradient of `x` only (`dx = dy·W`).
//! candle's matmul backward always computes the weight's gradient too, even for a constant
//! weight; under LoRA that is a third of a training step's FLOPs spent on a result thrown away.
//!
//! [`frozen_matmul`] takes an f32 weight; [`qmatmul`] a compact one (bf16 or NF4,
//! [`QuantWeight`]), dequantized to f32 a tile of rows at a time (at most [`TILE_FLOATS`] floats
//! live at once) in both passes, so LoRA adapters before a quantized layer still learn. A few rows
//! (decoding) skip the tiles and dot each weight row straight from its compact form.

use std::sync::{Arc, OnceLock};

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

use super::{cpu_f32, linear_dims, with_f32, with_f32s, MATVEC_MAX_ROWS};
use crate::kernels::gemm::{gemm, product, Dst, Mat};
use crate::kernels::{amx, matvec_rows};
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
        let (n, _, out) = linear_dims("frozen_matmul", l1, l2)?;
        let y = dense_forward(cpu_f32(s1, l1, self.name())?, n, cpu_f32(s2, l2, self.name())?, out);
        Ok((CpuStorage::F32(y), Shape::from((n, out))))
    }

    fn bwd(&self, _x: &Tensor, weight: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, inp) = (grad.dim(0)?, weight.dim(1)?);
        let dx = with_f32s([grad, weight], self.name(), |[g, w]| Ok(dense_input_grad(g, n, w, inp)))?;
        Ok((Some(Tensor::from_vec(dx, (n, inp), grad.device())?), None))
    }
}

/// `x` `[n, in]` times the f32 weight `w` `[out, in]` transposed → `[n, out]`.
pub(crate) fn dense_forward(x: &[f32], n: usize, w: &[f32], out: usize) -> Vec<f32> {
    let inp = w.len() / out.max(1);
    product((n, out, inp), Mat::rows(x, inp), Mat::rows(w, inp).t(), 1.0)
}

/// `dy` `[n, out]` times the f32 weight `w` `[out, in]` → `[n, in]`.
pub(crate) fn dense_input_grad(dy: &[f32], n: usize, w: &[f32], inp: usize) -> Vec<f32> {
    let out = w.len() / inp.max(1);
    product((n, inp, out), Mat::rows(dy, out), Mat::rows(w, inp), 1.0)
}

/// `x` `[n, in]` times the quantized `[out, in]` weight transposed → `[n, out]`.
pub fn qmatmul(x: &Tensor, weight: &Arc<QuantWeight>) -> Result<Tensor> {
    x.contiguous()?.apply_op1(QMatMul(weight.clone()))
}

struct QMatMul(Arc<QuantWeight>);

/// A [`BaseFormat::Bf16Matmul`](crate::quant::BaseFormat) weight packed for bf16 tile
/// products, both ways, each packed on first use and then kept with the weight: packing per
/// product had cost ~12% of a `bf16: true` LoRA step (perf, scripts/bench-train.sh shapes), and
/// the two layouts together take twice the bf16 weight's memory.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tiles {
    forward: OnceLock<Option<amx::PackedB>>,
    input_grad: OnceLock<Option<amx::PackedB>>,
}

/// The weight `[out, in]` packed for `x·Wᵀ`; `None` for other formats or without AMX.
pub(crate) fn packed_forward(weight: &QuantWeight) -> Option<&amx::PackedB> {
    packed(weight, &weight.tiles.forward, amx::PackedB::from_rows)
}

/// As [`packed_forward`], for input gradients `dy·W`.
pub(crate) fn packed_input_grad(weight: &QuantWeight) -> Option<&amx::PackedB> {
    packed(weight, &weight.tiles.input_grad, |w, out, inp| amx::PackedB::from_columns(w, inp, out))
}

/// What `cell` holds, packed on first use by `pack(bf16 bits, out, in)`.
fn packed<'a>(
    weight: &'a QuantWeight,
    cell: &'a OnceLock<Option<amx::PackedB>>,
    pack: impl FnOnce(&[u16], usize, usize) -> amx::PackedB,
) -> Option<&'a amx::PackedB> {
    let make = || {
        let w = weight.bf16_matmul().filter(|_| amx::available())?;
        let (out, inp) = weight.dims();
        Some(pack(w, out, inp))
    };
    cell.get_or_init(make).as_ref()
}

/// `dy·W` for `dy` `[n, out]` and the quantized `[out, in]` weight.
pub(crate) fn qmatmul_input_grad(grad: &Tensor, weight: &Arc<QuantWeight>) -> Result<Tensor> {
    let n = grad.dim(0)?;
    let dx = with_f32(grad, "qmatmul", |g| quant_input_grad(weight, g, n))?;
    Tensor::from_vec(dx, (n, weight.dims().1), grad.device())
}

/// `x` `[n, in]` times the quantized weight `[out, in]` transposed → `[n, out]`: dotted row by
/// row from the compact form for a few rows, on bf16 tiles where packed, else a dequantized tile
/// of weight rows at a time.
pub(crate) fn quant_forward(weight: &QuantWeight, x: &[f32], n: usize) -> Result<Vec<f32>> {
    let (out, inp) = weight.dims();
    if x.len() != n * inp {
        candle_core::bail!("qmatmul: x [{n}, {}] does not fit the weight [{out}, {inp}]", x.len() / n.max(1));
    }
    if n <= MATVEC_MAX_ROWS {
        return Ok(matvec_rows(x, n, out, |o, x| weight.dot_row(o, x)));
    }
    if let Some(packed) = packed_forward(weight) {
        return Ok(amx::matmul_packed(x, n, packed));
    }
    let mut y = vec![0f32; n * out];
    for (first, rows, w) in tiles(weight) {
        gemm(Dst::rows(&mut y[first..], out).parallel(), (n, rows, inp), Mat::rows(x, inp), Mat::rows(&w, inp).t());
    }
    Ok(y)
}

/// `dy` `[n, out]` times the quantized weight `[out, in]` → `[n, in]`.
pub(crate) fn quant_input_grad(weight: &QuantWeight, dy: &[f32], n: usize) -> Result<Vec<f32>> {
    let (out, inp) = weight.dims();
    if dy.len() != n * out {
        candle_core::bail!("qmatmul: gradient [{n}, {}] does not fit the weight [{out}, {inp}]", dy.len() / n.max(1));
    }
    if let Some(packed) = packed_input_grad(weight) {
        return Ok(amx::matmul_packed(dy, n, packed));
    }
    let mut dx = vec![0f32; n * inp];
    for (first, rows, w) in tiles(weight) {
        gemm(Dst::rows(&mut dx, inp).add().parallel(), (n, inp, rows), Mat::rows(&dy[first..], out), Mat::rows(&w, inp));
    }
    Ok(dx)
}

/// The weight dequantized to f32 a tile of rows at a time: (first row, rows, `[rows, in]`).
fn tiles(weight: &QuantWeight) -> impl Iterator<Item = (usize, usize, Vec<f32>)> + '_ {
    let (out, inp) = weight.dims();
    let rows = (TILE_FLOATS / inp.max(1)).max(1);
    (0..out).step_by(rows).map(move |first| {
        let n = rows.min(out - first);
        let mut w = vec![0f32; n * inp];
        weight.dequantize_rows(first, &mut w);
        (first, n, w)
    })
}

impl CustomOp1 for QMatMul {
    fn name(&self) -> &'static str {
        "sft-qmatmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_f32(storage, layout, self.name())?;
        let &[n, _] = layout.dims() else {
            candle_core::bail!("qmatmul: expects x [n, in], got {:?}", layout.dims());
        };
        Ok((CpuStorage::F32(quant_forward(&self.0, x, n)?), Shape::from((n, self.0.dims().0))))
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
    use candle_core::Device;

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
            let v: Vec<f32> =
                t.flatten_all()?.to_vec1::<f32>()?.iter().map(|&x| crate::quant::from_bf16(crate::quant::to_bf16(x))).collect();
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
