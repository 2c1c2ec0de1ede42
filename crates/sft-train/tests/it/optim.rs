//! AdamW and gradient clipping against torch.optim.AdamW and clip_grad_norm_, plus resume.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use serde::Deserialize;
use sft_train::optim::{clip_grad_norm, AdamW, AdamWConfig, OptimError, STEP_KEY};
use sft_train::schedule::{Schedule, SchedulerKind};

#[derive(Deserialize)]
struct Fixture {
    lr_peak: f64,
    warmup_steps: usize,
    total_steps: usize,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    max_norm: f64,
    params: Vec<Param>,
    steps: Vec<Step>,
}

#[derive(Deserialize)]
struct Param {
    name: String,
    shape: Vec<usize>,
    initial: Vec<f32>,
}

#[derive(Deserialize)]
struct Step {
    lr: f64,
    clip_norm: f64,
    clipped: bool,
    grads: HashMap<String, Vec<f32>>,
    params_after: HashMap<String, Vec<f32>>,
}

fn fixture() -> Fixture {
    serde_json::from_value(crate::parity()["adamw"].clone()).expect("adamw")
}

fn fresh_params(fx: &Fixture) -> Vec<(String, Var)> {
    fx.params
        .iter()
        .map(|p| {
            let t = Tensor::from_slice(&p.initial, p.shape.as_slice(), &Device::Cpu).unwrap();
            (p.name.clone(), Var::from_tensor(&t).unwrap())
        })
        .collect()
}

fn config(fx: &Fixture) -> AdamWConfig {
    AdamWConfig { beta1: fx.beta1, beta2: fx.beta2, eps: fx.eps, weight_decay: fx.weight_decay }
}

fn grads(fx: &Fixture, step: &Step) -> Vec<Tensor> {
    fx.params.iter().map(|p| Tensor::from_slice(&step.grads[&p.name], p.shape.as_slice(), &Device::Cpu).unwrap()).collect()
}

fn values(var: &Var) -> Vec<f32> {
    var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn adamw_matches_torch() {
    let fx = fixture();
    let schedule =
        Schedule { kind: SchedulerKind::Linear, peak_lr: fx.lr_peak, warmup_steps: fx.warmup_steps, total_steps: fx.total_steps };
    let mut opt = AdamW::new(fresh_params(&fx), config(&fx)).unwrap();
    assert_eq!(opt.decay_counts(), (2, 1));
    let (mut clipped, mut unclipped) = (0, 0);
    for (k, step) in fx.steps.iter().enumerate() {
        let lr = schedule.lr(k);
        assert!((lr - step.lr).abs() <= 1e-12 * step.lr.abs(), "step {k}: lr {lr} vs {}", step.lr);
        let mut g = grads(&fx, step);
        let norm = clip_grad_norm(&mut g, fx.max_norm).unwrap();
        assert!((norm - step.clip_norm).abs() <= 1e-6 * step.clip_norm, "step {k}: norm {norm} vs torch {}", step.clip_norm);
        if step.clipped {
            clipped += 1
        } else {
            unclipped += 1
        }
        opt.step(&g, lr).unwrap();
        for (name, var) in opt.params() {
            let (got, want) = (values(var), &step.params_after[name]);
            let max_theirs = want.iter().fold(0f32, |m, x| m.max(x.abs()));
            let max_diff = got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(max_diff <= 1e-6 * max_theirs, "step {k} {name}: max |diff| {max_diff:e} > 1e-6 * {max_theirs}");
        }
    }
    assert!(clipped > 0 && unclipped > 0, "fixture must clip some steps and not others");
    assert_eq!(opt.steps_taken(), fx.steps.len() as u64);
}

/// Runs `steps` updates of the fixture's gradients (cycled) at a fixed lr.
fn run(opt: &mut AdamW, fx: &Fixture, steps: std::ops::Range<usize>) {
    for k in steps {
        let mut g = grads(fx, &fx.steps[k % fx.steps.len()]);
        clip_grad_norm(&mut g, fx.max_norm).unwrap();
        opt.step(&g, 1e-2 / (k + 1) as f64).unwrap();
    }
}

#[test]
fn resume_equals_uninterrupted() {
    let fx = fixture();
    let mut straight = AdamW::new(fresh_params(&fx), config(&fx)).unwrap();
    run(&mut straight, &fx, 0..6);

    let mut first = AdamW::new(fresh_params(&fx), config(&fx)).unwrap();
    run(&mut first, &fx, 0..3);
    let state = first.state();
    assert_eq!(state.len(), 2 * 3 + 1);
    assert_eq!(state[STEP_KEY].to_vec1::<i64>().unwrap(), [3]);
    let params: Vec<(String, Var)> =
        first.params().iter().map(|(n, v)| (n.clone(), Var::from_tensor(&v.as_tensor().copy().unwrap()).unwrap())).collect();
    drop(first);
    let mut resumed = AdamW::new(params, config(&fx)).unwrap();
    resumed.load_state(&state).unwrap();
    run(&mut resumed, &fx, 3..6);

    assert_eq!(resumed.steps_taken(), 6);
    for ((name, a), (_, b)) in straight.params().iter().zip(resumed.params()) {
        assert!(values(a) == values(b), "{name} differs after resume");
    }
    let (sa, sb) = (straight.state(), resumed.state());
    for (key, t) in &sa {
        let values = |t: &Tensor| t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
        assert!(values(t) == values(&sb[key]), "{key} differs after resume");
    }
}

#[test]
fn deterministic_run_to_run() {
    let fx = fixture();
    let mut a = AdamW::new(fresh_params(&fx), config(&fx)).unwrap();
    let mut b = AdamW::new(fresh_params(&fx), config(&fx)).unwrap();
    run(&mut a, &fx, 0..5);
    run(&mut b, &fx, 0..5);
    for ((_, x), (_, y)) in a.params().iter().zip(b.params()) {
        assert!(values(x) == values(y));
    }
}

#[test]
fn bf16_params_keep_their_dtype() {
    let t = Tensor::new(&[[1f32, 2.], [3., 4.]], &Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap();
    let w = Var::from_tensor(&t).unwrap();
    let mut opt = AdamW::new(vec![("w".into(), w.clone())], AdamWConfig::default()).unwrap();
    let g = Tensor::ones((2, 2), DType::BF16, &Device::Cpu).unwrap();
    opt.step(&[g], 0.5).unwrap();
    assert_eq!(w.dtype(), DType::BF16);
    assert_eq!(opt.state()["w.exp_avg"].dtype(), DType::F32);
    let got = w.as_tensor().to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    assert_eq!(got.to_vec1::<f32>().unwrap(), [0.5, 1.5, 2.5, 3.5]);
}

fn two_params() -> AdamW {
    let w = Var::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
    let b = Var::zeros(3, DType::F32, &Device::Cpu).unwrap();
    AdamW::new(vec![("w".into(), w), ("b".into(), b)], AdamWConfig::default()).unwrap()
}

#[test]
fn wrong_gradients_are_rejected_before_any_change() {
    let mut opt = two_params();
    let err = opt.step(&[Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap()], 1e-3);
    assert!(matches!(err, Err(OptimError::GradCount { expected: 2, got: 1 })), "{err:?}");
    let g = [Tensor::ones((2, 3), DType::F32, &Device::Cpu).unwrap(), Tensor::ones((2, 3), DType::F32, &Device::Cpu).unwrap()];
    let err = opt.step(&g, 1e-3).unwrap_err();
    assert!(err.to_string().contains("\"b\""), "{err}");
    assert!(matches!(err, OptimError::GradShape { .. }));
    assert_eq!(opt.steps_taken(), 0);
    assert_eq!(values(&opt.params()[0].1), [0.0; 6]);
    let err = opt.step(&g[..1], f64::NAN).unwrap_err();
    assert!(err.to_string().contains("lr"), "{err}");
}

#[test]
fn duplicate_and_integer_params_are_rejected() {
    let v = Var::zeros(2, DType::F32, &Device::Cpu).unwrap();
    let err = AdamW::new(vec![("a".into(), v.clone()), ("a".into(), v)], AdamWConfig::default());
    assert!(matches!(err, Err(OptimError::DuplicateName { ref name }) if name == "a"));
    let i = Var::zeros(2, DType::U32, &Device::Cpu).unwrap();
    let err = AdamW::new(vec![("ids".into(), i)], AdamWConfig::default()).unwrap_err();
    assert!(err.to_string().contains("ids"), "{err}");
}

#[test]
fn load_state_names_the_bad_tensor() {
    let mut opt = two_params();
    let good = opt.state();

    let mut missing = good.clone();
    missing.remove("b.exp_avg_sq");
    let err = opt.load_state(&missing).unwrap_err();
    assert!(matches!(&err, OptimError::MissingState { name } if name == "b.exp_avg_sq"), "{err}");
    assert!(err.to_string().contains("b.exp_avg_sq"));

    let mut misshaped = good.clone();
    misshaped.insert("w.exp_avg".into(), Tensor::zeros((3, 2), DType::F32, &Device::Cpu).unwrap());
    let err = opt.load_state(&misshaped).unwrap_err();
    assert!(matches!(&err, OptimError::StateShape { name, .. } if name == "w.exp_avg"), "{err}");

    let mut extra = good.clone();
    extra.insert("x.exp_avg".into(), Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap());
    let err = opt.load_state(&extra).unwrap_err();
    assert!(matches!(&err, OptimError::UnexpectedState { name } if name == "x.exp_avg"), "{err}");

    let mut no_step = good.clone();
    no_step.remove(STEP_KEY);
    let err = opt.load_state(&no_step).unwrap_err();
    assert!(matches!(&err, OptimError::MissingState { name } if name == "step"), "{err}");

    let mut bad_step = good.clone();
    bad_step.insert(STEP_KEY.into(), Tensor::new(&[1.5f32], &Device::Cpu).unwrap());
    assert!(matches!(opt.load_state(&bad_step), Err(OptimError::BadStep { .. })));

    // A step saved as another integer or float dtype is accepted.
    let mut f32_step = good.clone();
    f32_step.insert(STEP_KEY.into(), Tensor::new(&[7f32], &Device::Cpu).unwrap());
    opt.load_state(&f32_step).unwrap();
    assert_eq!(opt.steps_taken(), 7);

    opt.load_state(&good).unwrap();
    assert_eq!(opt.steps_taken(), 0);
}

#[test]
fn clip_rejects_bad_max_norm_and_skips_non_finite() {
    let mut g = vec![Tensor::new(&[3f32, 4.], &Device::Cpu).unwrap()];
    assert!(clip_grad_norm(&mut g, -1.0).is_err());
    let norm = clip_grad_norm(&mut g, 1.0).unwrap();
    assert!((norm - 5.0).abs() < 1e-9);
    let got = g[0].to_vec1::<f32>().unwrap();
    assert!((got[0] - 0.6).abs() < 1e-6 && (got[1] - 0.8).abs() < 1e-6, "{got:?}");
    let mut g = vec![Tensor::new(&[f32::NAN, 1.], &Device::Cpu).unwrap()];
    assert!(clip_grad_norm(&mut g, 1.0).unwrap().is_nan());
    assert_eq!(g[0].to_vec1::<f32>().unwrap()[1], 1.0);
}
