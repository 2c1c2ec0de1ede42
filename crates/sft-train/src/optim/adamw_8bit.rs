//! 8-bit AdamW (Dettmers et al., "8-bit Optimizers via Block-wise Quantization"), equal to
//! bitsandbytes' `AdamW8bit` as the HF `Trainer` builds it for `optim: adamw_8bit`
//! (`bnb.optim.AdamW(optim_bits=8)`: block-wise, `min_8bit_size` 4096, no percentile clipping).
//!
//! A parameter of at least [`MIN_8BIT_SIZE`] elements keeps both moments as 8-bit codes in
//! blocks of [`BLOCK_SIZE`] elements, each block with its f32 absolute maximum: the first moment
//! in bitsandbytes' signed dynamic map, the second in its unsigned one ([`dynamic_map`]), so
//! the state takes 2 bytes per element plus 8 per block instead of AdamW's 8 per element.
//! Smaller tensors (norms, biases, small adapters) keep f32 moments, as bitsandbytes does. The
//! parameters themselves stay f32.
//!
//! Each step, per block (bitsandbytes 0.50's `optimizer_update_8bit_blockwise`): dequantize
//! the moments (`code[q]·absmax`), update them in f32 with the gradient
//! (`m ← β1·m + (1 − β1)·g`, `v ← β2·v + (1 − β2)·g²`), update the parameter from the f32
//! moments (`p ← p·(1 − lr·wd)`, then `p ← p − lr/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + ε)`),
//! then re-quantize: the block's new absmax, and each value divided by it to its nearest code
//! (a tie to the lower). That is the documented algorithm and the CUDA kernel's rounding;
//! bitsandbytes' CPU kernel finds the code with an approximate range search, so a value near
//! the midpoint of two codes may take the other one there. The f32 moments of small tensors update as bitsandbytes' 32-bit
//! kernel: `p ← p·(1 − lr·wd) − lr·√(1 − β2ᵗ)/(1 − β1ᵗ) · m / (√v + ε·√(1 − β2ᵗ))`.

use std::collections::HashMap;

use candle_core::{Shape, Tensor, Var};
use rayon::prelude::*;

use super::{saved, update_param, AdamWConfig, OptimError, Params, StateReader};

/// Elements per quantization block (bitsandbytes' block size for 8-bit optimizer states).
pub const BLOCK_SIZE: usize = 256;

/// Tensors with fewer elements keep f32 moments (bitsandbytes' `min_8bit_size`).
pub const MIN_8BIT_SIZE: usize = 4096;

/// bitsandbytes' `create_dynamic_map(signed)` (7 exponent bits, 8 bits in all): 256 sorted
/// f32 values in [-1, 1] (signed) or [0, 1] (unsigned), dense near zero. For each decade
/// `10^(i−6)`, `i` in 0..7, the midpoints of `torch.linspace(0.1, 1, n)` (n = 2^i + 1 signed,
/// 2^(i+1) + 1 unsigned) scaled by it (and negated, signed), then 0 and 1.
pub fn dynamic_map(signed: bool) -> [f32; 256] {
    const DECADES: [f64; 7] = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0];
    let mut data = Vec::with_capacity(256);
    for (i, decade) in DECADES.iter().enumerate() {
        let n = if signed { (1 << i) + 1 } else { (1 << (i + 1)) + 1 };
        let bounds = linspace(0.1, 1.0, n);
        let scale = *decade as f32;
        for pair in bounds.windows(2) {
            let mean = (pair[0] + pair[1]) / 2.0;
            data.push(scale * mean);
            if signed {
                data.push(-scale * mean);
            }
        }
    }
    data.extend([0.0, 1.0]);
    data.resize(256, 0.0);
    data.sort_by(f32::total_cmp);
    let mut map = [0f32; 256];
    map.copy_from_slice(&data);
    map
}

/// `torch.linspace(start, end, n, dtype=float32)` on the CPU: the first half counts up from
/// `start`, the second down from `end`, each value `start + step·i` rounded once.
fn linspace(start: f32, end: f32, n: usize) -> Vec<f32> {
    let step = (end - start) / (n - 1) as f32;
    (0..n)
        .map(|i| match i < n / 2 {
            true => (f64::from(start) + f64::from(step) * i as f64) as f32,
            false => (f64::from(end) - f64::from(step) * (n - i - 1) as f64) as f32,
        })
        .collect()
}

/// The index of the code nearest to `x` (codes sorted; a tie goes to the lower index).
fn nearest(code: &[f32; 256], x: f32) -> u8 {
    let mut i = code.partition_point(|&c| c <= x).saturating_sub(1);
    if i < 255 && (x - code[i + 1]).abs() < (x - code[i]).abs() {
        i += 1;
    }
    i as u8
}

/// Quantizes one block: its absmax, and each value over it to the nearest code.
fn quantize(code: &[f32; 256], values: &[f32], out: &mut [u8]) -> f32 {
    let absmax = values.iter().fold(0f32, |m, x| m.max(x.abs()));
    for (q, &x) in out.iter_mut().zip(values) {
        *q = nearest(code, if absmax > 0.0 { x / absmax } else { 0.0 });
    }
    absmax
}

/// One parameter's moments.
#[derive(Debug, Clone)]
enum Moments {
    /// f32 moments (fewer than [`MIN_8BIT_SIZE`] elements).
    Full { m: Vec<f32>, v: Vec<f32> },
    /// 8-bit codes with one absmax per block of [`BLOCK_SIZE`].
    Blockwise { m: Vec<u8>, v: Vec<u8>, absmax_m: Vec<f32>, absmax_v: Vec<f32> },
}

impl Moments {
    fn zeros(n: usize) -> Self {
        match n < MIN_8BIT_SIZE {
            true => Moments::Full { m: vec![0.0; n], v: vec![0.0; n] },
            false => {
                let blocks = n.div_ceil(BLOCK_SIZE);
                Moments::Blockwise { m: vec![0; n], v: vec![0; n], absmax_m: vec![0.0; blocks], absmax_v: vec![0.0; blocks] }
            }
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Moments::Full { m, v } => 4 * (m.len() + v.len()),
            Moments::Blockwise { m, v, absmax_m, absmax_v } => m.len() + v.len() + 4 * (absmax_m.len() + absmax_v.len()),
        }
    }
}

/// The scalars of one step, in f32 as the update runs.
#[derive(Clone, Copy)]
struct Coefficients {
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    /// `1 − lr·wd`, or 1 for tensors not decayed.
    decay: f32,
    /// `√(1 − β2ᵗ)`.
    correction2: f32,
    eps: f32,
    /// 8-bit path: `−lr / (1 − β1ᵗ)`.
    step: f32,
    /// 32-bit path: `−lr·√(1 − β2ᵗ) / (1 − β1ᵗ)` and `ε·√(1 − β2ᵗ)`.
    step_32: f32,
    eps_32: f32,
}

impl Coefficients {
    /// The moments' f32 update: `m ← β1·m + (1 − β1)·g`, `v ← β2·v + (1 − β2)·g²`.
    fn moments(&self, g: f32, m: &mut f32, v: &mut f32) {
        *m = g.mul_add(self.one_minus_beta1, *m * self.beta1);
        *v = *v * self.beta2 + self.one_minus_beta2 * g * g;
    }

    /// bitsandbytes' 32-bit kernel over a whole (small) tensor.
    fn full(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m).zip(v) {
            self.moments(g, m, v);
            let update = *m / (v.sqrt() + self.eps_32);
            *p = update.mul_add(self.step_32, *p * self.decay);
        }
    }

    /// One block of the 8-bit kernel: dequantize, update in f32, step the parameter,
    /// re-quantize (its codes and absmax in place).
    fn block(&self, maps: &Maps, p: &mut [f32], g: &[f32], (qm, am): (&mut [u8], &mut f32), (qv, av): (&mut [u8], &mut f32)) {
        let n = p.len();
        let (mut m, mut v) = ([0f32; BLOCK_SIZE], [0f32; BLOCK_SIZE]);
        let moments = m[..n].iter_mut().zip(qm.iter()).zip(v[..n].iter_mut().zip(qv.iter()));
        for ((p, &g), ((m, &cm), (v, &cv))) in p.iter_mut().zip(g).zip(moments) {
            *m = maps.signed[usize::from(cm)] * *am;
            *v = maps.unsigned[usize::from(cv)] * *av;
            self.moments(g, m, v);
            let denom = v.sqrt() / self.correction2 + self.eps;
            *p = (*p * self.decay) + self.step * (*m / denom);
        }
        *am = quantize(&maps.signed, &m[..n], qm);
        *av = quantize(&maps.unsigned, &v[..n], qv);
    }
}

/// The two code maps.
#[derive(Debug)]
struct Maps {
    signed: [f32; 256],
    unsigned: [f32; 256],
}

/// 8-bit AdamW over a fixed, named list of parameters.
#[derive(Debug)]
pub struct AdamW8bit {
    pub(super) params: Params,
    moments: Vec<Moments>,
    maps: Box<Maps>,
    config: AdamWConfig,
}

impl AdamW8bit {
    /// params: (name, Var) in a fixed order; the moments start at zero. `config` as
    /// [`super::AdamW`]'s (weight decay on rank >= 2 tensors only).
    pub fn new(params: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self, OptimError> {
        config.validate()?;
        let params = Params::new(params)?;
        let moments = params.list.iter().map(|(_, v)| Moments::zeros(v.elem_count())).collect();
        let maps = Box::new(Maps { signed: dynamic_map(true), unsigned: dynamic_map(false) });
        Ok(Self { params, moments, maps, config })
    }

    /// Bytes of the moments: codes and absmaxes of the 8-bit tensors, f32 of the others.
    pub fn state_bytes(&self) -> usize {
        self.moments.iter().map(Moments::bytes).sum()
    }

    /// The moments of parameter `i` dequantized to f32 (`m`, `v`), as the next step starts
    /// from them.
    pub fn moments_f32(&self, i: usize) -> Option<(Vec<f32>, Vec<f32>)> {
        Some(match self.moments.get(i)? {
            Moments::Full { m, v } => (m.clone(), v.clone()),
            Moments::Blockwise { m, v, absmax_m, absmax_v } => {
                let deq = |q: &[u8], absmax: &[f32], map: &[f32; 256]| {
                    q.iter().enumerate().map(|(j, &c)| map[usize::from(c)] * absmax[j / BLOCK_SIZE]).collect()
                };
                (deq(m, absmax_m, &self.maps.signed), deq(v, absmax_v, &self.maps.unsigned))
            }
        })
    }

    /// One update at learning rate `lr` (see the module docs).
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<(), OptimError> {
        let next_step = self.params.check(grads, lr)?;
        let t = (self.params.step + 1) as f64;
        let c = self.config;
        let correction1 = 1.0 - c.beta1.powf(t);
        let correction2 = (1.0 - c.beta2.powf(t)).sqrt();
        let maps = &*self.maps;
        for (i, ((name, var), grad)) in self.params.list.iter().zip(grads).enumerate() {
            let decayed = self.params.decay[i] && c.weight_decay > 0.0;
            let k = Coefficients {
                beta1: c.beta1 as f32,
                one_minus_beta1: (1.0 - c.beta1) as f32,
                beta2: c.beta2 as f32,
                one_minus_beta2: (1.0 - c.beta2) as f32,
                decay: if decayed { (1.0 - lr * c.weight_decay) as f32 } else { 1.0 },
                correction2: correction2 as f32,
                eps: c.eps as f32,
                step: (-lr / correction1) as f32,
                step_32: (-lr * correction2 / correction1) as f32,
                eps_32: (c.eps * correction2) as f32,
            };
            let moments = &mut self.moments[i];
            update_param(name, var, grad, |p, g| match &mut *moments {
                Moments::Full { m, v } => k.full(p, g, m, v),
                Moments::Blockwise { m, v, absmax_m, absmax_v } => {
                    p.par_chunks_mut(BLOCK_SIZE)
                        .zip(g.par_chunks(BLOCK_SIZE))
                        .zip(m.par_chunks_mut(BLOCK_SIZE).zip(absmax_m.par_iter_mut()))
                        .zip(v.par_chunks_mut(BLOCK_SIZE).zip(absmax_v.par_iter_mut()))
                        .with_min_len(16)
                        .for_each(|(((p, g), m), v)| k.block(maps, p, g, m, v));
                }
            })?;
        }
        self.params.advance(next_step);
        Ok(())
    }

    /// State for checkpoints, bitsandbytes' names: `"{name}.state1"` and `"{name}.state2"`
    /// (the first and second moments: u8 codes for 8-bit tensors, f32 for small ones, the
    /// parameter's shape), `"{name}.absmax1"` and `"{name}.absmax2"` (f32, one per block, 8-bit
    /// tensors only), and the step count under [`super::STEP_KEY`].
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut tensors = self.params.state_with_step(4 * self.moments.len());
        for ((name, var), moments) in self.params.list.iter().zip(&self.moments) {
            let mut put = |suffix: &str, t: Option<Tensor>| {
                if let Some(t) = t {
                    tensors.insert(format!("{name}.{suffix}"), t);
                }
            };
            match moments {
                Moments::Full { m, v } => {
                    put("state1", saved(m, var.shape()));
                    put("state2", saved(v, var.shape()));
                }
                Moments::Blockwise { m, v, absmax_m, absmax_v } => {
                    put("state1", saved(m, var.shape()));
                    put("state2", saved(v, var.shape()));
                    put("absmax1", saved(absmax_m, absmax_m.len()));
                    put("absmax2", saved(absmax_v, absmax_v.len()));
                }
            }
        }
        tensors
    }

    /// Restores state saved by state(); nothing changes unless the whole state is valid.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<(), OptimError> {
        let mut reader = StateReader::new(state)?;
        let mut moments = Vec::with_capacity(self.moments.len());
        for ((name, var), old) in self.params.list.iter().zip(&self.moments) {
            let shape = var.shape();
            moments.push(match old {
                Moments::Full { .. } => {
                    Moments::Full { m: reader.f32(format!("{name}.state1"), shape)?, v: reader.f32(format!("{name}.state2"), shape)? }
                }
                Moments::Blockwise { absmax_m, .. } => {
                    let blocks = Shape::from(absmax_m.len());
                    Moments::Blockwise {
                        m: reader.u8(format!("{name}.state1"), shape)?,
                        v: reader.u8(format!("{name}.state2"), shape)?,
                        absmax_m: reader.f32(format!("{name}.absmax1"), &blocks)?,
                        absmax_v: reader.f32(format!("{name}.absmax2"), &blocks)?,
                    }
                }
            });
        }
        let step = reader.finish()?;
        self.params.set_step(step)?;
        self.moments = moments;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn the_maps_span_the_range_densely_near_zero() {
        let signed = dynamic_map(true);
        let unsigned = dynamic_map(false);
        assert!(signed.windows(2).all(|w| w[0] < w[1]) && unsigned.windows(2).all(|w| w[0] < w[1]));
        assert_eq!((signed[255], unsigned[255], unsigned[0]), (1.0, 1.0, 0.0));
        assert!((signed[0] + 0.99297).abs() < 1e-5, "{}", signed[0]);
        assert!(signed.contains(&0.0));
        assert!(unsigned[1] > 0.0 && unsigned[1] < 1e-6);
    }

    #[test]
    fn nearest_rounds_to_the_closer_code_and_ties_down() {
        let map = dynamic_map(true);
        for (i, pair) in map.windows(2).enumerate() {
            assert_eq!(nearest(&map, pair[0]), i as u8);
            let mid = (pair[0] + pair[1]) / 2.0;
            assert_eq!(nearest(&map, mid + (pair[1] - pair[0]) * 0.01), i as u8 + 1);
        }
        assert_eq!(nearest(&map, -1.0), 0);
        assert_eq!(nearest(&map, 1.0), 255);
    }

    #[test]
    fn large_tensors_take_a_quarter_of_adamw_s_bytes() {
        let w = Var::zeros((64, 256), DType::F32, &Device::Cpu).unwrap();
        let b = Var::zeros(64, DType::F32, &Device::Cpu).unwrap();
        let opt = AdamW8bit::new(vec![("w".into(), w), ("b".into(), b)], AdamWConfig::default()).unwrap();
        // w: 2 codes per element + 2 absmaxes per 256-block; b (< 4096) keeps 2 f32 per element.
        assert_eq!(opt.state_bytes(), 2 * 16384 + 8 * 64 + 8 * 64);
        let state = opt.state();
        assert_eq!(state["w.state1"].dtype(), DType::U8);
        assert_eq!(state["w.absmax1"].dims(), [64]);
        assert_eq!(state["b.state1"].dtype(), DType::F32);
    }
}
