//! Schedules against transformers' get_*_schedule_with_warmup, stepped as the HF Trainer does.

use serde::Deserialize;
use sft_train::schedule::{warmup_from_ratio, Schedule, SchedulerKind};

#[derive(Deserialize)]
struct Case {
    kind: String,
    peak_lr: f64,
    warmup_steps: usize,
    total_steps: usize,
    warmup_ratio: Option<f64>,
    lrs: Vec<f64>,
}

fn cases() -> Vec<Case> {
    serde_json::from_value(crate::parity()["schedules"].clone()).expect("schedules")
}

fn kind(name: &str) -> SchedulerKind {
    match name {
        "constant" => SchedulerKind::Constant,
        "linear" => SchedulerKind::Linear,
        "cosine" => SchedulerKind::Cosine,
        other => panic!("unknown kind {other}"),
    }
}

#[test]
fn lrs_match_transformers() {
    let cases = cases();
    assert!(cases.len() >= 15);
    for case in &cases {
        let s = Schedule { kind: kind(&case.kind), peak_lr: case.peak_lr, warmup_steps: case.warmup_steps, total_steps: case.total_steps };
        assert_eq!(case.lrs.len(), case.total_steps + 1);
        for (step, want) in case.lrs.iter().enumerate() {
            let got = s.lr(step);
            let tol = 1e-12 * want.abs().max(1e-30);
            assert!(
                (got - want).abs() <= tol,
                "{} warmup {} total {} step {step}: got {got:e}, transformers {want:e}",
                case.kind,
                case.warmup_steps,
                case.total_steps
            );
        }
    }
}

#[test]
fn warmup_ratio_matches_training_arguments() {
    let mut seen = 0;
    for case in cases() {
        if let Some(ratio) = case.warmup_ratio {
            assert_eq!(warmup_from_ratio(ratio, case.total_steps), case.warmup_steps);
            seen += 1;
        }
    }
    assert!(seen > 0, "fixture has no warmup-ratio case");
}
