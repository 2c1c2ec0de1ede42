//! Compact storage of frozen base weights: bf16 (half the bytes, for decoding) and 4-bit NF4 as in
//! QLoRA (blocks of 64 weights share an absmax scale; each weight is the index of the nearest of
//! 16 NormalFloat levels; with double quantization the scales themselves are stored as 8-bit
//! codes in blocks of 256 around their mean). Weights are dequantized to f32 on the fly, a tile of
//! rows at a time, so only the compact form stays resident.

use rayon::prelude::*;

/// The 16 NF4 levels (QLoRA, Dettmers et al. 2023, appendix E; as bitsandbytes ships them).
pub const NF4_LEVELS: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// Weights per NF4 scale.
pub const NF4_BLOCK: usize = 64;
/// Scales per second-level scale (double quantization).
pub const SCALE_BLOCK: usize = 256;

/// How frozen base weights of linear layers are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BaseFormat {
    /// f32, exact.
    #[default]
    F32,
    /// bfloat16 (rounded to nearest even), computed in f32.
    Bf16,
    /// bfloat16 weights multiplied by inputs rounded to bf16, summed in f32, on AMX tiles where
    /// the CPU has them (`bf16: true` training); [`BaseFormat::Bf16`] elsewhere and for a few rows.
    Bf16Matmul,
    /// 4-bit NormalFloat; `double_quant` also quantizes the block scales to 8 bits.
    Nf4 {
        /// Quantize the scales too (QLoRA's double quantization).
        double_quant: bool,
    },
}

/// A frozen `[rows, cols]` weight in a compact format.
#[derive(Debug, Clone)]
pub struct QuantWeight {
    rows: usize,
    cols: usize,
    data: Packed,
    /// Products of many rows in bf16 ([`BaseFormat::Bf16Matmul`]).
    bf16_matmul: bool,
    /// The weight laid out for those products, made on first use and kept.
    pub(crate) tiles: crate::ops::Tiles,
}

#[derive(Debug, Clone)]
enum Packed {
    Bf16(Vec<u16>),
    Nf4 { codes: Vec<u8>, scales: Scales },
}

/// NF4 block scales: plain f32, or 8-bit codes around their mean with one f32 step per
/// [`SCALE_BLOCK`] scales.
#[derive(Debug, Clone)]
enum Scales {
    Plain(Vec<f32>),
    Double { codes: Vec<i8>, steps: Vec<f32>, mean: f32 },
}

impl Scales {
    fn get(&self, block: usize) -> f32 {
        match self {
            Scales::Plain(s) => s[block],
            Scales::Double { codes, steps, mean } => mean + codes[block] as f32 * steps[block / SCALE_BLOCK],
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Scales::Plain(s) => 4 * s.len(),
            Scales::Double { codes, steps, .. } => codes.len() + 4 * steps.len() + 4,
        }
    }

    fn quantize(absmax: Vec<f32>) -> Scales {
        let mean = absmax.iter().map(|&a| a as f64).sum::<f64>() as f32 / absmax.len().max(1) as f32;
        let steps: Vec<f32> = absmax.chunks(SCALE_BLOCK).map(|c| c.iter().map(|a| (a - mean).abs()).fold(0f32, f32::max) / 127.0).collect();
        let codes = absmax
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let step = steps[i / SCALE_BLOCK];
                if step > 0.0 {
                    ((a - mean) / step).round().clamp(-127.0, 127.0) as i8
                } else {
                    0
                }
            })
            .collect();
        Scales::Double { codes, steps, mean }
    }
}

/// The index of the NF4 level nearest to `x` (in [-1, 1]); ties go to the lower level.
pub fn nf4_index(x: f32) -> u8 {
    let mut best = 0;
    for (i, level) in NF4_LEVELS.iter().enumerate() {
        if (x - level).abs() < (x - NF4_LEVELS[best]).abs() {
            best = i;
        }
    }
    best as u8
}

/// f32 → bf16 bits, rounding to nearest even (NaN stays NaN).
pub fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

/// bf16 bits → f32.
pub fn from_bf16(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

impl QuantWeight {
    /// Packs a row-major `[rows, cols]` f32 weight; `None` for [`BaseFormat::F32`].
    pub fn new(w: &[f32], rows: usize, cols: usize, format: BaseFormat) -> Option<Self> {
        let data = match format {
            BaseFormat::F32 => return None,
            BaseFormat::Bf16 | BaseFormat::Bf16Matmul => Packed::Bf16(w.par_iter().map(|&x| to_bf16(x)).collect()),
            BaseFormat::Nf4 { double_quant } => {
                let absmax: Vec<f32> = w.par_chunks(NF4_BLOCK).map(|b| b.iter().fold(0f32, |m, x| m.max(x.abs()))).collect();
                let codes: Vec<u8> = w
                    .par_chunks(2)
                    .enumerate()
                    .map(|(i, pair)| {
                        let scale = absmax[2 * i / NF4_BLOCK];
                        let q = |x: f32| if scale > 0.0 { nf4_index(x / scale) } else { 7 };
                        q(pair[0]) | pair.get(1).map_or(7, |&x| q(x)) << 4
                    })
                    .collect();
                let scales = if double_quant { Scales::quantize(absmax) } else { Scales::Plain(absmax) };
                Packed::Nf4 { codes, scales }
            }
        };
        Some(Self { rows, cols, data, bf16_matmul: format == BaseFormat::Bf16Matmul, tiles: Default::default() })
    }

    /// `[rows, cols]`.
    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// The bf16 bits, row-major, when products of many rows are to be taken in bf16
    /// ([`BaseFormat::Bf16Matmul`]).
    pub(crate) fn bf16_matmul(&self) -> Option<&[u16]> {
        match &self.data {
            Packed::Bf16(v) if self.bf16_matmul => Some(v),
            _ => None,
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match &self.data {
            Packed::Bf16(v) => 2 * v.len(),
            Packed::Nf4 { codes, scales } => codes.len() + scales.bytes(),
        }
    }

    /// Writes rows `first..first + out.len() / cols` as f32 into `out`.
    pub fn dequantize_rows(&self, first: usize, out: &mut [f32]) {
        let (start, len) = (first * self.cols, out.len());
        match &self.data {
            Packed::Bf16(v) => out.par_iter_mut().zip(&v[start..start + len]).for_each(|(o, &b)| *o = from_bf16(b)),
            Packed::Nf4 { codes, scales } => out.par_chunks_mut(NF4_BLOCK).enumerate().for_each(|(i, chunk)| {
                let at = start + i * NF4_BLOCK;
                let scale = scales.get(at / NF4_BLOCK);
                for (j, o) in chunk.iter_mut().enumerate() {
                    let k = at + j;
                    *o = NF4_LEVELS[((codes[k / 2] >> (4 * (k % 2))) & 15) as usize] * scale;
                }
            }),
        }
    }

    /// Σ row(r)ᵢ · xᵢ, dequantizing on the fly.
    pub fn dot_row(&self, r: usize, x: &[f32]) -> f32 {
        let start = r * self.cols;
        match &self.data {
            Packed::Bf16(v) => super::kernels::dot(&v[start..start + self.cols], x),
            Packed::Nf4 { codes, scales } => {
                let mut sum = 0f32;
                let mut buf = [0f32; NF4_BLOCK];
                let mut j = 0;
                while j < self.cols {
                    let k0 = start + j;
                    let len = (NF4_BLOCK - k0 % NF4_BLOCK).min(self.cols - j);
                    let scale = scales.get(k0 / NF4_BLOCK);
                    for (t, b) in buf[..len].iter_mut().enumerate() {
                        let k = k0 + t;
                        *b = NF4_LEVELS[((codes[k / 2] >> (4 * (k % 2))) & 15) as usize] * scale;
                    }
                    sum += super::kernels::dot(&buf[..len], &x[j..j + len]);
                    j += len;
                }
                sum
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dense(q: &QuantWeight) -> Vec<f32> {
        let (r, c) = q.dims();
        let mut out = vec![0f32; r * c];
        q.dequantize_rows(0, &mut out);
        out
    }

    #[test]
    fn nf4_round_trips_the_code_book_exactly() {
        // Each block: the 16 levels times a block scale, in shuffled order, 4 times over.
        let mut w = vec![];
        for block in 0..6 {
            let scale = 0.5 + block as f32;
            for k in 0..NF4_BLOCK {
                w.push(NF4_LEVELS[(k * 7 + block) % 16] * scale);
            }
        }
        let q = QuantWeight::new(&w, 6, NF4_BLOCK, BaseFormat::Nf4 { double_quant: false }).unwrap();
        assert_eq!(dense(&q), w);
        assert_eq!(q.bytes(), w.len() / 2 + 4 * 6);
    }

    #[test]
    fn nf4_picks_the_nearest_level_and_bounds_the_error() {
        let w: Vec<f32> = (0..3 * 130).map(|i| ((i * 37 % 101) as f32 / 50.0 - 1.0) * (1.0 + (i % 7) as f32)).collect();
        for double_quant in [false, true] {
            let q = QuantWeight::new(&w, 3, 130, BaseFormat::Nf4 { double_quant }).unwrap();
            let d = dense(&q);
            for (block, (orig, deq)) in w.chunks(NF4_BLOCK).zip(d.chunks(NF4_BLOCK)).enumerate() {
                let absmax = orig.iter().fold(0f32, |m, x| m.max(x.abs()));
                for (x, y) in orig.iter().zip(deq) {
                    let level = NF4_LEVELS[nf4_index(x / absmax) as usize];
                    // The widest gap between neighbouring levels is 0.304 (−1 to −0.696).
                    let tol = if double_quant { 0.16 * absmax + 0.02 } else { 1e-6 };
                    assert!((y - level * absmax).abs() <= tol, "block {block}: {x} → {y}, level {level}");
                }
            }
            // dot_row agrees with the dequantized rows.
            let x: Vec<f32> = (0..130).map(|i| (i as f32 * 0.01).sin()).collect();
            for r in 0..3 {
                let want: f32 = d[r * 130..(r + 1) * 130].iter().zip(&x).map(|(a, b)| a * b).sum();
                assert!((q.dot_row(r, &x) - want).abs() < 1e-4, "row {r}");
            }
        }
    }

    #[test]
    fn double_quantization_shrinks_the_scales() {
        let w: Vec<f32> = (0..64 * 512).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 500.0).collect();
        let plain = QuantWeight::new(&w, 64, 512, BaseFormat::Nf4 { double_quant: false }).unwrap();
        let double = QuantWeight::new(&w, 64, 512, BaseFormat::Nf4 { double_quant: true }).unwrap();
        // 4 bits per weight + 32 bits per 64 → 4.5 bits; double: + 8 bits per 64 → ~4.13 bits.
        assert_eq!(plain.bytes(), w.len() / 2 + 4 * w.len() / 64);
        assert!(double.bytes() < w.len() / 2 + w.len() / 64 + 16);
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(from_bf16(to_bf16(1.0)), 1.0);
        // 1 + 2⁻⁸ is halfway between two bf16 values: rounds to the even one (1.0).
        assert_eq!(from_bf16(to_bf16(1.0 + 1.0 / 256.0)), 1.0);
        assert_eq!(from_bf16(to_bf16(1.0 + 3.0 / 256.0)), 1.0 + 4.0 / 256.0);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        let w = [0.1f32, -2.5, 3.0e-3, 7.0];
        let q = QuantWeight::new(&w, 2, 2, BaseFormat::Bf16).unwrap();
        for (a, b) in dense(&q).iter().zip(&w) {
            assert!((a - b).abs() <= b.abs() / 128.0);
        }
        assert!((q.dot_row(1, &[1.0, 2.0]) - (from_bf16(to_bf16(3.0e-3)) + 14.0)).abs() < 1e-6);
    }
}
