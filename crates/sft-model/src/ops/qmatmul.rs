//! `x·Wᵀ` with a frozen compact weight (bf16 or NF4, [`QuantWeight`]). The weight is dequantized
//! to f32 a tile of rows at a time (at most [`TILE_FLOATS`] floats live at once), both in the
//! forward pass and in the backward pass, which returns the gradient of `x` only (the weight is
//! frozen): `dx = dy·W`. LoRA adapters before a quantized layer therefore still learn. A few rows
//! (decoding) skip the tiles and dot each weight row straight from its compact form.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{cpu_f32, MATVEC_MAX_ROWS};
use crate::quant::QuantWeight;

/// Most f32 values of a dequantized tile (16 MiB).
const TILE_FLOATS: usize = 1 << 22;

/// `x` `[n, in]` times the quantized `[out, in]` weight transposed → `[n, out]`.
pub fn qmatmul(x: &Tensor, weight: &Arc<QuantWeight>) -> Result<Tensor> {
    x.contiguous()?.apply_op1(QMatMul(weight.clone()))
}

struct QMatMul(Arc<QuantWeight>);

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
            let yt: Vec<f32> = (0..out).into_par_iter().flat_map_iter(|o| (0..n).map(move |r| (o, r))).map(|(o, r)| self.0.dot_row(o, &x[r * inp..(r + 1) * inp])).collect();
            let y = (0..n * out).map(|i| yt[(i % out) * n + i / out]).collect();
            return Ok((CpuStorage::F32(y), Shape::from((n, out))));
        }
        let xt = Tensor::from_slice(x, (n, inp), &Device::Cpu)?;
        let parts = self.tiles().map(|tile| tile.and_then(|(_, w)| xt.matmul(&w.t()?))).collect::<Result<Vec<_>>>()?;
        let y = Tensor::cat(&parts, 1)?.flatten_all()?.to_vec1::<f32>()?;
        Ok((CpuStorage::F32(y), Shape::from((n, out))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let mut dx = Tensor::zeros(x.shape(), x.dtype(), x.device())?;
        for tile in self.tiles() {
            let (first, w) = tile?;
            dx = (dx + grad.narrow(1, first, w.dim(0)?)?.matmul(&w)?)?;
        }
        Ok(Some(dx))
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
    fn gradient_check() -> Result<()> {
        let (q, _) = quantized(6, 70, BaseFormat::Nf4 { double_quant: true })?;
        check(&[random(&[9, 70], 1)?], |t| weighted_sum(&qmatmul(&t[0], &q)?, 2), 2e-2)
    }
}
