//! Q4_K blocks quantized as llama.cpp quantizes them (`quantize_row_q4_K_ref` and
//! `make_qkx2_quants` in ggml's `ggml-quants.c`, what llama-quantize runs without an importance
//! matrix).
//!
//! Written here because candle's `BlockQ4K::from_float` follows an older llama.cpp
//! (`make_qkx1_quants`: 5 tries of a plain min/max fit), which gives other blocks and a larger
//! error than llama.cpp's weighted search over 21 scales; the bytes go into candle's `QTensor`
//! (the block layout is ggml's) and are written by candle's GGUF writer.
//! `tests/fixtures/gguf_export/check_llamacpp.py` compares them with llama.cpp's own.

use std::borrow::Cow;

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{Device, Tensor};
use half::f16;

const QK_K: usize = 256;
/// Bytes of one block: d, dmin (f16), 12 bytes of 6-bit scales and mins, 128 of 4-bit values.
const BLOCK_BYTES: usize = 144;

/// ggml's `nearest_int`: round half to even through the float mantissa.
fn nearest_int(v: f32) -> i32 {
    let bits = (v + 12_582_912.0f32).to_bits() as i32;
    (bits & 0x007f_ffff) - 0x0040_0000
}

/// `make_qkx2_quants(32, 15, x, weights, L, &min, Laux, -1, 0.1, 20, false)`: the scale and
/// (negated) minimum of one group of 32, with its 4-bit levels in `l`.
fn make_qkx2_quants(x: &[f32; 32], weights: &[f32; 32], l: &mut [u8]) -> (f32, f32) {
    const NMAX: i32 = 15;
    let (rmin, rdelta, nstep) = (-1.0f32, 0.1f32, 20);
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..32 {
        min = if x[i] < min { x[i] } else { min };
        max = if x[i] > max { x[i] } else { max };
        sum_w += weights[i];
        sum_x += weights[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l[..32].fill(0);
        return (0.0, -min);
    }
    let mut iscale = NMAX as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..32 {
        let q = nearest_int(iscale * (x[i] - min)).clamp(0, NMAX);
        l[i] = q as u8;
        let diff = scale * l[i] as f32 + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    let mut laux = [0u8; 32];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + NMAX as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..32 {
            let q = nearest_int(iscale * (x[i] - min)).clamp(0, NMAX);
            laux[i] = q as u8;
            let (w, lf) = (weights[i], q as f32);
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..32 {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * (diff * diff);
            }
            if cur_error < best_error {
                l[..32].copy_from_slice(&laux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// ggml's `get_scale_min_k4`.
fn scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// One block of 256 values.
fn block(x: &[f32], out: &mut [u8]) {
    let mut l = [0u8; QK_K];
    let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..8 {
        let group: &[f32; 32] = x[32 * j..32 * j + 32].try_into().unwrap_or(&[0.0; 32]);
        let sum_x2: f32 = group.iter().fold(0.0, |s, v| s + v * v);
        let av_x = (sum_x2 / 32.0).sqrt();
        let weights: [f32; 32] = std::array::from_fn(|i| av_x + group[i].abs());
        (scales[j], mins[j]) = make_qkx2_quants(group, &weights, &mut l[32 * j..]);
        max_scale = max_scale.max(scales[j]);
        max_min = max_min.max(mins[j]);
    }
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut sc = [0u8; 12];
    for j in 0..8 {
        // C converts the int to uint8_t before MIN(63, ·): keep the low byte, as it does.
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            sc[j] = ls;
            sc[j + 4] = lm;
        } else {
            sc[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            sc[j - 4] |= (ls >> 4) << 6;
            sc[j] |= (lm >> 4) << 6;
        }
    }
    let d = f16::from_f32(max_scale / 63.0);
    let dmin = f16::from_f32(max_min / 63.0);
    for j in 0..8 {
        let (s, m) = scale_min(j, &sc);
        let dj = d.to_f32() * s as f32;
        if dj == 0.0 {
            continue;
        }
        let dm = dmin.to_f32() * m as f32;
        for i in 0..32 {
            l[32 * j + i] = nearest_int((x[32 * j + i] + dm) / dj).clamp(0, 15) as u8;
        }
    }
    out[0..2].copy_from_slice(&d.to_le_bytes());
    out[2..4].copy_from_slice(&dmin.to_le_bytes());
    out[4..16].copy_from_slice(&sc);
    let qs = &mut out[16..BLOCK_BYTES];
    for (chunk, j) in (0..QK_K).step_by(64).enumerate() {
        for i in 0..32 {
            qs[chunk * 32 + i] = l[j + i] | (l[j + i + 32] << 4);
        }
    }
}

/// `t` (`[rows, cols]`, `cols` a multiple of 256) as a Q4_K tensor.
pub fn quantize(t: &Tensor) -> candle_core::Result<QTensor> {
    let x = t.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
    let cols = *t.dims().last().unwrap_or(&0);
    if cols == 0 || !cols.is_multiple_of(QK_K) {
        candle_core::bail!("rows of {cols} values do not split into Q4_K blocks of {QK_K}");
    }
    let mut bytes = vec![0u8; x.len() / QK_K * BLOCK_BYTES];
    for (xs, out) in x.chunks_exact(QK_K).zip(bytes.chunks_exact_mut(BLOCK_BYTES)) {
        block(xs, out);
    }
    let storage = QStorage::from_data(Cow::Owned(bytes), &Device::Cpu, GgmlDType::Q4K)?;
    QTensor::new(storage, t.shape())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even_like_ggml() {
        assert_eq!([nearest_int(0.5), nearest_int(1.5), nearest_int(2.5), nearest_int(-0.5), nearest_int(-1.6)], [0, 2, 2, 0, -2]);
    }

    #[test]
    fn blocks_dequantize_close_to_the_input_and_closer_than_candles_older_search() -> candle_core::Result<()> {
        let t = Tensor::randn(0f32, 1.0, (8, 512), &Device::Cpu)?;
        let ours = quantize(&t)?.dequantize(&Device::Cpu)?;
        let candle = QTensor::quantize(&t, GgmlDType::Q4K)?.dequantize(&Device::Cpu)?;
        let err = |d: &Tensor| -> candle_core::Result<f32> { (d - &t)?.sqr()?.mean_all()?.to_scalar::<f32>() };
        let (e_ours, e_candle) = (err(&ours)?, err(&candle)?);
        assert!(e_ours < 0.01, "{e_ours}");
        assert!(e_ours < e_candle, "ours {e_ours} vs candle's {e_candle}");
        Ok(())
    }
}
