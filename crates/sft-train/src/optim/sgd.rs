//! Plain stochastic gradient descent, equal to `torch.optim.SGD` with the arguments the HF
//! `Trainer` passes for `optim: sgd` (momentum 0, no dampening, not Nesterov); `optim: sgd`.
//!
//! Weight decay is torch's: coupled L2, added to the gradient (`g + wd·p`) before the step,
//! on tensors of rank >= 2 only. Without momentum there are no moments to keep: the state is
//! the step count alone.

use std::collections::HashMap;

use candle_core::{Tensor, Var};
use rayon::prelude::*;

use super::{update_param, OptimError, Params, StateReader};

/// Elements per parallel chunk.
const CHUNK: usize = 1 << 14;

/// SGD over a fixed, named list of parameters.
#[derive(Debug)]
pub struct Sgd {
    pub(super) params: Params,
    weight_decay: f64,
}

impl Sgd {
    /// params: (name, Var) in a fixed order; `weight_decay` (>= 0) applies to rank >= 2 tensors.
    pub fn new(params: Vec<(String, Var)>, weight_decay: f64) -> Result<Self, OptimError> {
        if !(weight_decay.is_finite() && weight_decay >= 0.0) {
            return Err(OptimError::Invalid { what: "weight_decay", value: weight_decay, expected: "a finite value >= 0" });
        }
        Ok(Self { params: Params::new(params)?, weight_decay })
    }

    /// SGD without momentum keeps no per-parameter state.
    pub fn state_bytes(&self) -> usize {
        0
    }

    /// One update, as torch: `d = g + wd·p` (decayed tensors), then `p ← p − lr·d`, in f32.
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<(), OptimError> {
        let next_step = self.params.check(grads, lr)?;
        let neg_lr = -lr as f32;
        for (i, ((name, var), grad)) in self.params.list.iter().zip(grads).enumerate() {
            let wd = if self.params.decay[i] { self.weight_decay as f32 } else { 0.0 };
            update_param(name, var, grad, |p, g| {
                p.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).for_each(|(p, g)| {
                    for (p, &g) in p.iter_mut().zip(g) {
                        let d = if wd != 0.0 { g + wd * *p } else { g };
                        *p += neg_lr * d;
                    }
                })
            })?;
        }
        self.params.advance(next_step);
        Ok(())
    }

    /// The step count under [`super::STEP_KEY`].
    pub fn state(&self) -> HashMap<String, Tensor> {
        self.params.state_with_step(0)
    }

    /// Restores the step count; any other tensor is refused.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<(), OptimError> {
        let step = StateReader::new(state)?.finish()?;
        self.params.set_step(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn a_step_is_p_minus_lr_times_the_decayed_gradient() {
        let w = Var::new(&[[1f32, 2.], [3., 4.]], &Device::Cpu).unwrap();
        let b = Var::new(&[1f32, -1.], &Device::Cpu).unwrap();
        let mut opt = Sgd::new(vec![("w".into(), w.clone()), ("b".into(), b.clone())], 0.5).unwrap();
        let grads = [Tensor::ones((2, 2), candle_core::DType::F32, &Device::Cpu).unwrap(), Tensor::new(&[2f32, 2.], &Device::Cpu).unwrap()];
        opt.step(&grads, 0.1).unwrap();
        // w: p − 0.1·(1 + 0.5·p); b (not decayed): p − 0.1·2.
        let got = w.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (g, p) in got.iter().zip([1f32, 2., 3., 4.]) {
            assert!((g - (p - 0.1 * (1.0 + 0.5 * p))).abs() < 1e-6, "{got:?}");
        }
        let got = b.as_tensor().to_vec1::<f32>().unwrap();
        assert!((got[0] - 0.8).abs() < 1e-6 && (got[1] + 1.2).abs() < 1e-6, "{got:?}");
        assert_eq!(opt.state().len(), 1);
        assert_eq!(opt.state_bytes(), 0);
    }
}
