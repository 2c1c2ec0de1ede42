//! Adafactor (Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory
//! Cost"), equal to `transformers.optimization.Adafactor` with the arguments the HF `Trainer`
//! passes for `optim: adafactor`: `scale_parameter=False`, `relative_step=False`,
//! `warmup_init=False`, the learning rate from the schedule, `beta1=None` (no first moment),
//! `clip_threshold` 1.0, `decay_rate` -0.8, `eps` (1e-30, 1e-3) (the second is unused without
//! `scale_parameter`).
//!
//! A tensor of rank >= 2 (`[..., rows, cols]`) keeps factored second moments: one mean per row
//! (`exp_avg_sq_row`, shape `[..., rows]`) and one per column (`exp_avg_sq_col`, shape
//! `[..., cols]`); a rank-1 tensor keeps a full `exp_avg_sq`. Per step `t`, with
//! `β2ₜ = 1 − t^decay_rate` and `G = g² + eps₁`:
//!
//! - factored: `row ← β2ₜ·row + (1 − β2ₜ)·mean_cols(G)`, `col ← β2ₜ·col + (1 − β2ₜ)·mean_rows(G)`,
//!   `u = g / √(row / mean(row)) / √col`; otherwise `v ← β2ₜ·v + (1 − β2ₜ)·G`, `u = g / √v`;
//! - `u ← lr · u / max(1, rms(u) / clip_threshold)`;
//! - `p ← p − lr·wd·p` (rank >= 2 tensors, as the `Trainer`'s parameter groups), then `p ← p − u`.

use std::collections::HashMap;

use candle_core::{Shape, Tensor, Var};
use rayon::prelude::*;

use super::{saved, update_param, OptimError, Params, StateReader};

/// Adafactor's hyper-parameters other than the learning rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdafactorConfig {
    /// Added to the squared gradient (transformers' `eps[0]`).
    pub eps: f64,
    /// The update's RMS is clipped to this.
    pub clip_threshold: f64,
    /// The exponent of the second-moment decay, `β2ₜ = 1 − t^decay_rate`.
    pub decay_rate: f64,
    /// Weight decay (`p ← p − lr·wd·p`), rank >= 2 tensors only.
    pub weight_decay: f64,
}

impl Default for AdafactorConfig {
    /// transformers' defaults: eps 1e-30, clip_threshold 1.0, decay_rate -0.8, no weight decay.
    fn default() -> Self {
        Self { eps: 1e-30, clip_threshold: 1.0, decay_rate: -0.8, weight_decay: 0.0 }
    }
}

impl AdafactorConfig {
    fn validate(&self) -> Result<(), OptimError> {
        let check = |what, value: f64, ok: bool, expected| if ok { Ok(()) } else { Err(OptimError::Invalid { what, value, expected }) };
        check("eps", self.eps, self.eps.is_finite() && self.eps >= 0.0, "a finite value >= 0")?;
        check("clip_threshold", self.clip_threshold, self.clip_threshold > 0.0 && self.clip_threshold.is_finite(), "a value > 0")?;
        check("decay_rate", self.decay_rate, self.decay_rate < 0.0 && self.decay_rate.is_finite(), "a value < 0")?;
        let wd = self.weight_decay;
        check("weight_decay", wd, wd.is_finite() && wd >= 0.0, "a finite value >= 0")
    }
}

/// One parameter's second-moment estimate.
#[derive(Debug, Clone)]
enum Moment {
    /// Rank >= 2 as `[batch, rows, cols]`: one value per row and per column of each matrix.
    Factored { rows: usize, cols: usize, row: Vec<f32>, col: Vec<f32> },
    /// Rank < 2: one value per element.
    Full(Vec<f32>),
}

impl Moment {
    fn zeros(shape: &Shape) -> Self {
        match shape.dims() {
            [batch @ .., rows, cols] => {
                let batch: usize = batch.iter().product();
                Moment::Factored { rows: *rows, cols: *cols, row: vec![0.0; batch * rows], col: vec![0.0; batch * cols] }
            }
            _ => Moment::Full(vec![0.0; shape.elem_count()]),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Moment::Factored { row, col, .. } => 4 * (row.len() + col.len()),
            Moment::Full(v) => 4 * v.len(),
        }
    }
}

/// The shapes of a factored moment: the parameter's without its last dimension (rows), and
/// without its second-to-last (columns).
fn factored_shapes(shape: &Shape) -> Option<(Shape, Shape)> {
    let dims = shape.dims();
    let n = dims.len();
    (n >= 2).then(|| (Shape::from(&dims[..n - 1]), Shape::from([&dims[..n - 2], &dims[n - 1..]].concat())))
}

/// The scalars of one step, in f32 as the update runs. The moving averages and the decay
/// are fused multiply-adds, as torch's `add_(x, alpha=a)`.
#[derive(Clone, Copy)]
struct Coefficients {
    beta2t: f32,
    one_minus_beta2t: f32,
    eps: f32,
    clip_threshold: f64,
    lr: f32,
    /// `−lr·wd` for decayed tensors, else 0.
    decay: f32,
}

impl Coefficients {
    /// Row and column means of `g² + eps` over one `rows × cols` matrix folded into the
    /// moments, then the unscaled update `g / √(row / mean(row)) / √col` written into `u`.
    fn factored(&self, g: &[f32], (rows, cols): (usize, usize), row: &mut [f32], col: &mut [f32], u: &mut [f32]) {
        let sq = |g: f32| g * g + self.eps;
        let mut col_sum = vec![0f64; cols];
        for r in 0..rows {
            let line = &g[r * cols..(r + 1) * cols];
            let mut row_sum = 0f64;
            for (c, &x) in line.iter().enumerate() {
                let s = f64::from(sq(x));
                row_sum += s;
                col_sum[c] += s;
            }
            row[r] = ((row_sum / cols as f64) as f32).mul_add(self.one_minus_beta2t, row[r] * self.beta2t);
        }
        for (c, sum) in col.iter_mut().zip(&col_sum) {
            *c = ((sum / rows as f64) as f32).mul_add(self.one_minus_beta2t, *c * self.beta2t);
        }
        let row_mean = (row.iter().map(|&x| f64::from(x)).sum::<f64>() / rows as f64) as f32;
        let c_factor: Vec<f32> = col.iter().map(|&c| 1.0 / c.sqrt()).collect();
        u.par_chunks_mut(cols).zip(g.par_chunks(cols)).zip(row.par_iter()).for_each(|((u, g), &r)| {
            let r_factor = 1.0 / (r / row_mean).sqrt();
            for ((u, &g), &c) in u.iter_mut().zip(g).zip(&c_factor) {
                *u = (r_factor * c) * g;
            }
        });
    }

    /// The full second moment updated and the unscaled update `g / √v` written into `u`.
    fn full(&self, g: &[f32], v: &mut [f32], u: &mut [f32]) {
        for ((u, &g), v) in u.iter_mut().zip(g).zip(v) {
            *v = (g * g + self.eps).mul_add(self.one_minus_beta2t, *v * self.beta2t);
            *u = (1.0 / v.sqrt()) * g;
        }
    }

    /// Clips `u` to RMS `clip_threshold`, scales it by lr, decays `p` and subtracts `u`.
    fn apply(&self, p: &mut [f32], u: &[f32]) {
        let sum_sq: f64 = u.par_iter().map(|&x| f64::from(x) * f64::from(x)).sum();
        let rms = (sum_sq.sqrt() / (u.len().max(1) as f64).sqrt()) as f32;
        let divisor = (rms / self.clip_threshold as f32).max(1.0);
        p.par_iter_mut().zip(u.par_iter()).for_each(|(p, &u)| {
            let u = (u / divisor) * self.lr;
            let p0 = if self.decay != 0.0 { p.mul_add(self.decay, *p) } else { *p };
            *p = p0 - u;
        });
    }
}

/// Adafactor over a fixed, named list of parameters.
#[derive(Debug)]
pub struct Adafactor {
    pub(super) params: Params,
    moments: Vec<Moment>,
    config: AdafactorConfig,
}

impl Adafactor {
    /// params: (name, Var) in a fixed order; the moments start at zero.
    pub fn new(params: Vec<(String, Var)>, config: AdafactorConfig) -> Result<Self, OptimError> {
        config.validate()?;
        let params = Params::new(params)?;
        let moments = params.list.iter().map(|(_, v)| Moment::zeros(v.shape())).collect();
        Ok(Self { params, moments, config })
    }

    /// Bytes of the (factored) second moments, f32.
    pub fn state_bytes(&self) -> usize {
        self.moments.iter().map(Moment::bytes).sum()
    }

    /// One update at learning rate `lr` (see the module docs).
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<(), OptimError> {
        let next_step = self.params.check(grads, lr)?;
        let t = (self.params.step + 1) as f64;
        let beta2t = 1.0 - t.powf(self.config.decay_rate);
        let c = self.config;
        for (i, ((name, var), grad)) in self.params.list.iter().zip(grads).enumerate() {
            let k = Coefficients {
                beta2t: beta2t as f32,
                one_minus_beta2t: (1.0 - beta2t) as f32,
                eps: c.eps as f32,
                clip_threshold: c.clip_threshold,
                lr: lr as f32,
                decay: if self.params.decay[i] && c.weight_decay != 0.0 { (-c.weight_decay * lr) as f32 } else { 0.0 },
            };
            let moment = &mut self.moments[i];
            update_param(name, var, grad, |p, g| {
                if g.is_empty() {
                    return;
                }
                let mut u = vec![0f32; g.len()];
                match &mut *moment {
                    Moment::Factored { rows, cols, row, col } => {
                        let (rows, cols) = (*rows, *cols);
                        let matrices = g.chunks(rows * cols).zip(u.chunks_mut(rows * cols));
                        for (b, (g, u)) in matrices.enumerate() {
                            let (row, col) = (&mut row[b * rows..(b + 1) * rows], &mut col[b * cols..(b + 1) * cols]);
                            k.factored(g, (rows, cols), row, col, u);
                        }
                    }
                    Moment::Full(v) => k.full(g, v, &mut u),
                }
                k.apply(p, &u);
            })?;
        }
        self.params.advance(next_step);
        Ok(())
    }

    /// State for checkpoints: `"{name}.exp_avg_sq_row"` and `"{name}.exp_avg_sq_col"` for
    /// tensors of rank >= 2, `"{name}.exp_avg_sq"` for the others (f32, transformers' names and
    /// shapes), and the step count under [`super::STEP_KEY`].
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut tensors = self.params.state_with_step(2 * self.moments.len());
        for ((name, var), moment) in self.params.list.iter().zip(&self.moments) {
            match (moment, factored_shapes(var.shape())) {
                (Moment::Factored { row, col, .. }, Some((row_shape, col_shape))) => {
                    for (suffix, values, shape) in [("exp_avg_sq_row", row, row_shape), ("exp_avg_sq_col", col, col_shape)] {
                        if let Some(t) = saved(values, shape) {
                            tensors.insert(format!("{name}.{suffix}"), t);
                        }
                    }
                }
                (Moment::Full(v), _) => {
                    if let Some(t) = saved(v, var.shape()) {
                        tensors.insert(format!("{name}.exp_avg_sq"), t);
                    }
                }
                (Moment::Factored { .. }, None) => {}
            }
        }
        tensors
    }

    /// Restores state saved by state(); nothing changes unless the whole state is valid.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<(), OptimError> {
        let mut reader = StateReader::new(state)?;
        let mut moments = Vec::with_capacity(self.moments.len());
        for ((name, var), old) in self.params.list.iter().zip(&self.moments) {
            moments.push(match (old, factored_shapes(var.shape())) {
                (Moment::Factored { rows, cols, .. }, Some((row_shape, col_shape))) => Moment::Factored {
                    rows: *rows,
                    cols: *cols,
                    row: reader.f32(format!("{name}.exp_avg_sq_row"), &row_shape)?,
                    col: reader.f32(format!("{name}.exp_avg_sq_col"), &col_shape)?,
                },
                _ => Moment::Full(reader.f32(format!("{name}.exp_avg_sq"), var.shape())?),
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
    fn the_first_step_of_a_vector_moves_each_element_by_lr_over_the_clipped_rms() {
        // Step 1: β2ₜ = 0, v = g² (+1e-30), u = sign(g); rms(u) = 1, so p ← p − lr·sign(g).
        let b = Var::new(&[1f32, -2., 0.5], &Device::Cpu).unwrap();
        let mut opt = Adafactor::new(vec![("b".into(), b.clone())], AdafactorConfig::default()).unwrap();
        opt.step(&[Tensor::new(&[3f32, -0.25, 1e-3], &Device::Cpu).unwrap()], 0.1).unwrap();
        let got = b.as_tensor().to_vec1::<f32>().unwrap();
        for (g, want) in got.iter().zip([0.9f32, -1.9, 0.4]) {
            assert!((g - want).abs() < 1e-6, "{got:?}");
        }
        assert_eq!(opt.state_bytes(), 12);
    }

    #[test]
    fn matrices_keep_one_value_per_row_and_column() {
        let w = Var::zeros((2, 3, 5), DType::F32, &Device::Cpu).unwrap();
        let opt = Adafactor::new(vec![("w".into(), w)], AdafactorConfig::default()).unwrap();
        assert_eq!(opt.state_bytes(), 4 * (2 * 3 + 2 * 5));
        let state = opt.state();
        assert_eq!(state["w.exp_avg_sq_row"].dims(), [2, 3]);
        assert_eq!(state["w.exp_avg_sq_col"].dims(), [2, 5]);
    }
}
