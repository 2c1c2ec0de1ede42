//! The `optim` values besides adamw_torch against their references (fixture written by
//! tests/fixtures/train/gen_optimizers.py): `sgd` against torch.optim.SGD, `adafactor` against
//! transformers' Adafactor, `adamw_8bit` against bitsandbytes' 8-bit AdamW; their state bytes,
//! and resume equal to an uninterrupted run for each.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use serde::Deserialize;
use sft_train::optim::{dynamic_map, AdamWConfig, OptimError, OptimKind, Optimizer, BLOCK_SIZE, MIN_8BIT_SIZE, STEP_KEY};

#[derive(Deserialize)]
struct Meta {
    weight_decay: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    params: Vec<ParamMeta>,
    steps: usize,
    recorded_steps: Vec<usize>,
    optimizers: HashMap<String, OptimMeta>,
}

#[derive(Deserialize)]
struct ParamMeta {
    name: String,
}

#[derive(Deserialize)]
struct OptimMeta {
    lrs: Vec<f64>,
    state_bytes: usize,
}

struct Fixture {
    meta: Meta,
    tensors: HashMap<String, Tensor>,
}

fn fixture() -> Fixture {
    let text = std::fs::read_to_string(crate::fixture("optimizers.json")).expect("optimizers.json (run gen_optimizers.py)");
    let meta = serde_json::from_str(&text).expect("optimizers.json");
    let tensors = candle_core::safetensors::load(crate::fixture("optimizers.safetensors"), &Device::Cpu).expect("optimizers.safetensors");
    Fixture { meta, tensors }
}

impl Fixture {
    fn tensor(&self, key: &str) -> &Tensor {
        self.tensors.get(key).unwrap_or_else(|| panic!("fixture lacks {key}"))
    }

    fn fresh_params(&self) -> Vec<(String, Var)> {
        self.meta
            .params
            .iter()
            .map(|p| (p.name.clone(), Var::from_tensor(&self.tensor(&format!("initial.{}", p.name)).copy().unwrap()).unwrap()))
            .collect()
    }

    fn grads(&self, k: usize) -> Vec<Tensor> {
        self.meta.params.iter().map(|p| self.tensor(&format!("grad.{k}.{}", p.name)).clone()).collect()
    }

    fn config(&self) -> AdamWConfig {
        let m = &self.meta;
        AdamWConfig { beta1: m.beta1, beta2: m.beta2, eps: m.eps, weight_decay: m.weight_decay }
    }

    fn optimizer(&self, kind: OptimKind) -> Optimizer {
        Optimizer::new(kind, self.fresh_params(), self.config()).unwrap()
    }
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap()
}

/// Largest |ours − theirs| over the largest |theirs|.
fn relative_error(ours: &[f32], theirs: &[f32]) -> f32 {
    assert_eq!(ours.len(), theirs.len());
    let max_theirs = theirs.iter().fold(0f32, |m, x| m.max(x.abs()));
    ours.iter().zip(theirs).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / max_theirs
}

/// Steps `kind` through the fixture's gradients and learning rates, checking every recorded
/// step's parameters within `tolerance(step)` (relative to each tensor's largest value).
fn run_fixture(fx: &Fixture, kind: OptimKind, tolerance: impl Fn(usize) -> f32) -> Optimizer {
    let name = kind.name();
    let mut opt = fx.optimizer(kind);
    let lrs = &fx.meta.optimizers[name].lrs;
    assert_eq!(lrs.len(), fx.meta.steps);
    assert!(lrs.windows(2).all(|w| w[1] < w[0]), "the lr changes every step: {lrs:?}");
    for (k, &lr) in lrs.iter().enumerate() {
        opt.step(&fx.grads(k), lr).unwrap();
        if !fx.meta.recorded_steps.contains(&k) {
            continue;
        }
        for (param, var) in opt.params() {
            let theirs = values(fx.tensor(&format!("{name}.param.{k}.{param}")));
            let err = relative_error(&values(var.as_tensor()), &theirs);
            let tolerance = tolerance(k);
            assert!(err <= tolerance, "{name} step {k} {param}: relative error {err:e} > {tolerance:e}");
        }
    }
    assert_eq!(opt.state_bytes(), fx.meta.optimizers[name].state_bytes, "{name}: state bytes as the reference's state tensors");
    opt
}

#[test]
fn sgd_matches_torch() {
    let fx = fixture();
    let opt = run_fixture(&fx, OptimKind::Sgd, |_| 1e-6);
    assert_eq!(opt.decay_counts(), (4, 1));
    assert_eq!(opt.state().len(), 1, "SGD without momentum keeps only the step count");
}

#[test]
fn adafactor_matches_transformers() {
    let fx = fixture();
    let opt = run_fixture(&fx, OptimKind::Adafactor, |_| 1e-6);
    let state = opt.state();
    let mut keys = 0;
    for (param, _) in opt.params() {
        for key in ["exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_sq"] {
            let Some(theirs) = fx.tensors.get(&format!("adafactor.state.{param}.{key}")) else { continue };
            let ours = &state[&format!("{param}.{key}")];
            assert_eq!(ours.dims(), theirs.dims(), "{param}.{key}");
            let err = relative_error(&values(ours), &values(theirs));
            assert!(err <= 1e-6, "{param}.{key}: relative error {err:e}");
            keys += 1;
        }
    }
    // Four factored tensors (row and column each) and one vector.
    assert_eq!(keys, 4 * 2 + 1);
    assert_eq!(state.len(), keys + 1);
}

/// bitsandbytes' CPU kernel finds each value's code with an approximate range search (its
/// `BinSearch` `Direct2`), so a value near the midpoint of two codes can take the other one;
/// ours is the exact nearest code. The first step runs on f32 moments and agrees to 1e-6; after
/// that the moments differ by such flips: a few in a hundred codes, each by at most 1.5 code
/// steps (2% of its block's absmax), and the parameters by up to 1e-3 after four steps.
#[test]
fn adamw_8bit_matches_bitsandbytes() {
    let fx = fixture();
    let signed = values(fx.tensor("adamw_8bit.qmap.signed"));
    let unsigned = values(fx.tensor("adamw_8bit.qmap.unsigned"));
    assert_eq!(dynamic_map(true).as_slice(), signed.as_slice(), "signed dynamic map");
    assert_eq!(dynamic_map(false).as_slice(), unsigned.as_slice(), "unsigned dynamic map");
    let opt = run_fixture(&fx, OptimKind::AdamW8bit, |k| if k == 0 { 1e-6 } else { 1e-3 });
    let Optimizer::AdamW8bit(inner) = &opt else { panic!("adamw_8bit") };
    let state = opt.state();
    let mut quantized_tensors = 0;
    for (i, (param, var)) in opt.params().iter().enumerate() {
        let theirs = |key: &str| fx.tensor(&format!("adamw_8bit.state.{param}.{key}"));
        let quantized = var.elem_count() >= MIN_8BIT_SIZE;
        assert_eq!(state[&format!("{param}.state1")].dtype(), if quantized { DType::U8 } else { DType::F32 }, "{param}");
        if !quantized {
            for key in ["state1", "state2"] {
                let err = relative_error(&values(&state[&format!("{param}.{key}")]), &values(theirs(key)));
                assert!(err <= 1e-3, "{param}.{key}: relative error {err:e}");
            }
            continue;
        }
        quantized_tensors += 1;
        let (m, v) = inner.moments_f32(i).unwrap();
        for (key, ours, map, absmax_key) in [("state1", m, &signed, "absmax1"), ("state2", v, &unsigned, "absmax2")] {
            let (codes, absmax) = (theirs(key).flatten_all().unwrap().to_vec1::<u8>().unwrap(), values(theirs(absmax_key)));
            let block_err = relative_error(&values(&state[&format!("{param}.{absmax_key}")]), &absmax);
            assert!(block_err <= 1e-3, "{param}.{key}: absmax relative error {block_err:e}");
            let ours_codes = state[&format!("{param}.{key}")].flatten_all().unwrap().to_vec1::<u8>().unwrap();
            let flipped = ours_codes.iter().zip(&codes).filter(|(a, b)| a != b).count();
            assert!(flipped * 50 <= codes.len(), "{param}.{key}: {flipped} of {} codes differ", codes.len());
            for (j, (&c, ours)) in codes.iter().zip(&ours).enumerate() {
                let a = absmax[j / BLOCK_SIZE];
                let theirs = map[usize::from(c)] * a;
                assert!((ours - theirs).abs() <= 0.02 * a, "{param}.{key}[{j}]: {ours} vs bitsandbytes' {theirs} (block absmax {a})");
            }
        }
    }
    assert_eq!(quantized_tensors, 1, "the fixture's big tensor is 8-bit");
}

#[test]
fn adamw_8bit_state_is_about_a_quarter_of_adamw_s() {
    let fx = fixture();
    let torch = fx.meta.optimizers["adamw_torch"].state_bytes;
    let eight = fx.optimizer(OptimKind::AdamW8bit).state_bytes();
    assert_eq!(fx.optimizer(OptimKind::AdamWTorch).state_bytes(), torch, "AdamW: as torch.optim.AdamW's state");
    let ratio = torch as f64 / eight as f64;
    // 8 bytes per element against 2 + 8 per 256-element block (3.94×), the small tensors at 8.
    assert!(ratio > 3.8, "adamw_torch {torch} bytes vs adamw_8bit {eight}: {ratio:.2}×");
    let big = Var::zeros((1024, 1024), DType::F32, &Device::Cpu).unwrap();
    let one = |kind| Optimizer::new(kind, vec![("w".into(), big.clone())], AdamWConfig::default()).unwrap().state_bytes();
    let ratio = one(OptimKind::AdamWTorch) as f64 / one(OptimKind::AdamW8bit) as f64;
    assert!((ratio - 8.0 / (2.0 + 8.0 / 256.0)).abs() < 1e-9, "{ratio}");
    assert_eq!(one(OptimKind::Adafactor), 4 * 2048);
    assert_eq!(one(OptimKind::Sgd), 0);
}

/// Steps 0..6 straight, and 0..3, a state round trip (through a safetensors file, as a
/// checkpoint), then 3..6 on a new optimizer: parameters and state equal to the bit.
#[test]
fn every_optimizer_resumes_exactly() {
    let fx = fixture();
    let dir = std::env::temp_dir().join(format!("sft-optimizers-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for kind in [OptimKind::AdamWTorch, OptimKind::AdamW8bit, OptimKind::Sgd, OptimKind::Adafactor] {
        let run = |opt: &mut Optimizer, steps: std::ops::Range<usize>| {
            for k in steps {
                opt.step(&fx.grads(k % fx.meta.steps), 1e-2 / (k + 1) as f64).unwrap();
            }
        };
        let mut straight = fx.optimizer(kind);
        run(&mut straight, 0..6);
        let mut first = fx.optimizer(kind);
        run(&mut first, 0..3);
        let file = dir.join(format!("{}.safetensors", kind.name()));
        candle_core::safetensors::save(&first.state(), &file).unwrap();
        let params: Vec<(String, Var)> =
            first.params().iter().map(|(n, v)| (n.clone(), Var::from_tensor(&v.as_tensor().copy().unwrap()).unwrap())).collect();
        drop(first);
        let mut resumed = Optimizer::new(kind, params, fx.config()).unwrap();
        resumed.load_state(&candle_core::safetensors::load(&file, &Device::Cpu).unwrap()).unwrap();
        assert_eq!(resumed.steps_taken(), 3);
        run(&mut resumed, 3..6);
        for ((name, a), (_, b)) in straight.params().iter().zip(resumed.params()) {
            assert!(values(a.as_tensor()) == values(b.as_tensor()), "{}: {name} differs after resume", kind.name());
        }
        let (sa, sb) = (straight.state(), resumed.state());
        assert_eq!(sa.len(), sb.len());
        for (key, t) in &sa {
            let bits = |t: &Tensor| t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
            assert!(bits(t) == bits(&sb[key]), "{}: {key} differs after resume", kind.name());
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_state_of_another_optimizer_is_refused_naming_the_tensor() {
    let fx = fixture();
    let adamw = fx.optimizer(OptimKind::AdamWTorch).state();
    for kind in [OptimKind::AdamW8bit, OptimKind::Sgd, OptimKind::Adafactor] {
        let mut opt = fx.optimizer(kind);
        let err = opt.load_state(&adamw).unwrap_err();
        assert!(matches!(err, OptimError::MissingState { .. } | OptimError::UnexpectedState { .. }), "{}: {err}", kind.name());
        assert!(err.to_string().contains("another optim"), "{err}");
        assert_eq!(opt.steps_taken(), 0);
    }
    // 8-bit codes must come back as u8.
    let mut opt = fx.optimizer(OptimKind::AdamW8bit);
    let mut state = opt.state();
    let codes = state["big.state1"].to_dtype(DType::F32).unwrap();
    state.insert("big.state1".into(), codes);
    let err = opt.load_state(&state).unwrap_err();
    assert!(matches!(&err, OptimError::StateDType { name, .. } if name == "big.state1"), "{err}");
    state.remove(STEP_KEY);
    assert!(matches!(opt.load_state(&state), Err(OptimError::MissingState { .. })));
}
