//! A layer kind's RoPE parameters resolved as transformers' `modeling_rope_utils.py` computes
//! them: the inverse frequencies of `default`, `linear`, `llama3`, `yarn`, `dynamic` (NTK) and
//! `longrope`, the `attention_scaling` YaRN and LongRoPE multiply cos and sin by, and, for
//! `dynamic` and `longrope`, how the frequencies change with the sequence's length.
//!
//! Lengths: transformers' `dynamic_rope_update` picks the frequencies of a forward pass from
//! `max(position_ids) + 1`. [`Rope::inv_freq_at`] takes that length; the model passes the
//! batch's longest sequence (its largest position + 1; packed rows count per segment, padding
//! not at all) for a training forward, and the sequence's length so far for a cached decoding
//! step (see `model/decode.rs`). Each forward is computed from its own length, as a freshly
//! loaded transformers model computes it: transformers' dynamic RoPE also keeps the
//! frequencies of the longest length it has seen for later forwards between
//! `max_position_embeddings` and that length, which is history, not configuration.

use std::borrow::Cow;

use serde_json::{Map, Value};

use super::{Ctx, Family};
use crate::ModelError;

/// Rotary embedding of one kind of layer.
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    /// `inv_freq[i]` for `i < rotary_dim / 2`, after any scaling: the frequencies of every
    /// sequence when `length` is [`LengthScaling::Fixed`], else of a sequence too short for
    /// the length rule to apply.
    pub inv_freq: Vec<f32>,
    /// cos and sin are multiplied by this (YaRN's and LongRoPE's attention factor; 1 otherwise).
    pub attention_scaling: f32,
    /// How the frequencies depend on the sequence's length.
    pub length: LengthScaling,
}

/// How a RoPE's frequencies depend on the length of the sequence.
#[derive(Debug, Clone, PartialEq)]
pub enum LengthScaling {
    /// The same at every length.
    Fixed,
    /// Dynamic NTK: a sequence of `len > max_position_embeddings` tokens rotates with base
    /// `theta · (factor · len / max_position_embeddings − (factor − 1))^(d / (d − 2))`.
    DynamicNtk {
        /// The configured base.
        theta: f64,
        /// `factor`.
        factor: f64,
        /// `max_position_embeddings`: up to it the base is unchanged.
        max_position_embeddings: usize,
    },
    /// LongRoPE: a sequence longer than `original_max_position_embeddings` tokens uses
    /// `long_inv_freq` (built from `long_factor`; `inv_freq` from `short_factor`).
    LongRope {
        /// The length up to which the short factors apply.
        original_max_position_embeddings: usize,
        /// The frequencies of longer sequences.
        long_inv_freq: Vec<f32>,
    },
}

impl Rope {
    /// The frequencies for a sequence of `len` tokens (transformers' `max(position_ids) + 1`).
    pub fn inv_freq_at(&self, len: usize) -> Cow<'_, [f32]> {
        match &self.length {
            LengthScaling::DynamicNtk { theta, factor, max_position_embeddings: max } if len > *max => {
                Cow::Owned(dynamic_ntk(*theta, *factor, *max, len, 2 * self.inv_freq.len()))
            }
            LengthScaling::LongRope { original_max_position_embeddings, long_inv_freq } if len > *original_max_position_embeddings => {
                Cow::Borrowed(long_inv_freq)
            }
            _ => Cow::Borrowed(&self.inv_freq),
        }
    }
}

/// What the RoPE of one layer kind is resolved from.
pub(super) struct RopeSource<'a> {
    /// The key errors name (`rope_parameters`, `rope_parameters.full_attention`, `rope_scaling`).
    pub key: &'a str,
    /// Its parameters (`rope_theta` included).
    pub params: &'a Map<String, Value>,
    /// The architecture.
    pub family: Family,
    /// Features of a head.
    pub head_dim: usize,
    /// Top-level `rope_theta`, used when `params` has none.
    pub rope_theta: Option<f64>,
    /// Top-level `partial_rotary_factor`, used when `params` has none.
    pub partial_rotary_factor: Option<f64>,
    /// Top-level `max_position_embeddings`.
    pub max_position_embeddings: Option<usize>,
    /// Top-level `original_max_position_embeddings` (Phi-3 keeps it there).
    pub original_max_position_embeddings: Option<usize>,
}

const SUPPORTED: &str = "default, linear, llama3, dynamic, yarn, longrope";

/// Reads the parameters of one RoPE, naming `key.<name>` in errors.
struct Params<'a> {
    cx: &'a Ctx<'a>,
    src: &'a RopeSource<'a>,
    rope_type: String,
}

impl Params<'_> {
    fn err(&self, name: &str, message: impl Into<String>) -> ModelError {
        self.cx.err(&format!("{}.{name}", self.src.key), message)
    }

    fn num(&self, name: &str) -> Result<Option<f64>, ModelError> {
        match self.src.params.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_f64().filter(|x| x.is_finite()).map(Some).ok_or_else(|| self.err(name, "expected a number")),
        }
    }

    fn need(&self, name: &str) -> Result<f64, ModelError> {
        self.num(name)?.ok_or_else(|| self.err(name, format!("missing (needed by rope_type {})", self.rope_type)))
    }

    fn positive(&self, name: &str, v: f64) -> Result<f64, ModelError> {
        if v > 0.0 {
            Ok(v)
        } else {
            Err(self.err(name, format!("must be positive, got {v}")))
        }
    }

    /// `factor` as transformers reads it for yarn and longrope; null (or absent, for longrope)
    /// means `max_position_embeddings / original_max_position_embeddings`.
    fn factor_or_ratio(&self, original: usize) -> Result<f64, ModelError> {
        match self.num("factor")? {
            Some(f) => self.positive("factor", f),
            None => match self.src.max_position_embeddings {
                Some(max) => Ok(max as f64 / original as f64),
                None => Err(self.err("factor", "null, and max_position_embeddings is missing to compute it from")),
            },
        }
    }

    /// The pretraining length of llama3, yarn and longrope: Phi-3's top-level key (4096 when
    /// absent) over the parameters' own, else the parameters', else `max_position_embeddings`.
    fn original_max(&self) -> Result<usize, ModelError> {
        let name = "original_max_position_embeddings";
        let from_params = match self.num(name)? {
            Some(v) if v >= 1.0 && v.fract() == 0.0 => Some(v as usize),
            Some(v) => return Err(self.err(name, format!("must be a positive integer, got {v}"))),
            None => None,
        };
        let v = match self.src.family {
            Family::Phi3 => self.src.original_max_position_embeddings.or(Some(4096)),
            _ => from_params.or(self.src.max_position_embeddings),
        };
        v.ok_or_else(|| self.err(name, format!("missing (needed by rope_type {}), and so is max_position_embeddings", self.rope_type)))
    }

    /// A list of `n` positive numbers (LongRoPE's factors).
    fn factors(&self, name: &str, n: usize) -> Result<Vec<f32>, ModelError> {
        let list = match self.src.params.get(name) {
            None | Some(Value::Null) => return Err(self.err(name, format!("missing (needed by rope_type {})", self.rope_type))),
            Some(Value::Array(a)) => a,
            Some(_) => return Err(self.err(name, "expected a list of numbers")),
        };
        if list.len() != n {
            return Err(self.err(name, format!("{} entries; expected {n} (one per rotated pair: rotary dim {} / 2)", list.len(), 2 * n)));
        }
        list.iter()
            .enumerate()
            .map(|(i, v)| match v.as_f64() {
                Some(x) if x > 0.0 && x.is_finite() => Ok(x as f32),
                _ => Err(self.err(name, format!("entry {i} ({v}) must be a positive number"))),
            })
            .collect()
    }
}

/// Resolves one layer kind's RoPE.
pub(super) fn resolve(cx: &Ctx<'_>, src: &RopeSource<'_>) -> Result<Rope, ModelError> {
    let rope_type = match src.params.get("rope_type").or_else(|| src.params.get("type")) {
        None | Some(Value::Null) => "default".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(cx.err(&format!("{}.rope_type", src.key), "expected a string")),
    };
    // transformers' Phi3Config reads the early Phi-3 names as longrope.
    let rope_type = match (src.family, rope_type.as_str()) {
        (Family::Phi3, "su" | "yarn") => "longrope".to_string(),
        _ => rope_type,
    };
    let p = Params { cx, src, rope_type };
    let theta = p.positive("rope_theta", p.num("rope_theta")?.or(src.rope_theta).unwrap_or(10_000.0))?;
    let partial = p.num("partial_rotary_factor")?.or(src.partial_rotary_factor).unwrap_or(1.0);
    if !(partial > 0.0 && partial <= 1.0) {
        return Err(cx.err("partial_rotary_factor", "must be in (0, 1]"));
    }
    let rotary_dim = ((src.head_dim as f64 * partial) as usize) & !1;
    let mut rope = Rope { inv_freq: default_inv_freq(theta, rotary_dim), attention_scaling: 1.0, length: LengthScaling::Fixed };
    match p.rope_type.as_str() {
        "default" => {}
        "linear" => {
            let f = p.positive("factor", p.need("factor")?)? as f32;
            rope.inv_freq.iter_mut().for_each(|v| *v /= f);
        }
        "llama3" => llama3_scaling(
            &mut rope.inv_freq,
            p.need("factor")?,
            p.need("low_freq_factor")?,
            p.need("high_freq_factor")?,
            p.original_max()? as f64,
        ),
        "yarn" => yarn(&p, theta, rotary_dim, &mut rope)?,
        "dynamic" => {
            let factor = p.positive("factor", p.need("factor")?)?;
            let max =
                src.max_position_embeddings.ok_or_else(|| cx.err("max_position_embeddings", "missing (needed by rope_type dynamic)"))?;
            if rotary_dim <= 2 {
                return Err(
                    cx.err("partial_rotary_factor", format!("rope_type dynamic needs more than 2 rotated features, got {rotary_dim}"))
                );
            }
            rope.length = LengthScaling::DynamicNtk { theta, factor, max_position_embeddings: max };
        }
        "longrope" => longrope(&p, theta, rotary_dim, &mut rope)?,
        other => return Err(p.err("rope_type", format!("{other:?} is not supported (supported: {SUPPORTED})"))),
    }
    let long = match &rope.length {
        LengthScaling::LongRope { long_inv_freq, .. } => long_inv_freq.as_slice(),
        _ => &[],
    };
    if !rope.attention_scaling.is_finite() || rope.inv_freq.iter().chain(long).any(|f| !f.is_finite()) {
        return Err(p.err("rope_type", format!("the parameters of rope_type {} give non-finite frequencies or scaling", p.rope_type)));
    }
    Ok(rope)
}

/// transformers' default: `1 / theta^(arange(0, dim, 2) / dim)`, in f32.
fn default_inv_freq(theta: f64, rotary_dim: usize) -> Vec<f32> {
    (0..rotary_dim / 2).map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / rotary_dim as f32)).collect()
}

/// Dynamic NTK's frequencies for a sequence of `len > max` tokens, in f32 as transformers
/// computes them (`len` is a tensor there, so the new base is an f32 tensor too).
fn dynamic_ntk(theta: f64, factor: f64, max: usize, len: usize, dim: usize) -> Vec<f32> {
    let grown = (factor as f32 * len as f32 / max as f32) - (factor - 1.0) as f32;
    let base = theta as f32 * grown.powf((dim as f64 / (dim - 2) as f64) as f32);
    (0..dim / 2).map(|i| 1.0 / base.powf((2 * i) as f32 / dim as f32)).collect()
}

/// Llama 3.1's frequency-dependent RoPE scaling: long wavelengths divided by `factor`, short
/// ones kept, those between interpolated.
pub(super) fn llama3_scaling(inv_freq: &mut [f32], factor: f64, low: f64, high: f64, original: f64) {
    let low_wavelen = original / low;
    let high_wavelen = original / high;
    for f in inv_freq.iter_mut() {
        let freq = *f as f64;
        let wavelen = 2.0 * std::f64::consts::PI / freq;
        let scaled = if wavelen > low_wavelen { freq / factor } else { freq };
        *f = if wavelen < high_wavelen || wavelen > low_wavelen {
            scaled as f32
        } else {
            let smooth = (original / wavelen - low) / (high - low);
            ((1.0 - smooth) * scaled / factor + smooth * scaled) as f32
        };
    }
}

/// YaRN's `0.1 · mscale · ln(scale) + 1` (1 for `scale <= 1`).
fn yarn_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * mscale * scale.ln() + 1.0
    }
}

/// YaRN (`_compute_yarn_parameters`): frequencies that rotate fewer than `beta_slow` times
/// over the original context are interpolated (divided by `factor`), those over `beta_fast`
/// kept, a linear ramp between; cos and sin scaled by the attention factor.
fn yarn(p: &Params<'_>, theta: f64, dim: usize, rope: &mut Rope) -> Result<(), ModelError> {
    // transformers requires the key (`rope_parameters["factor"]`), null allowed.
    if !p.src.params.contains_key("factor") {
        return Err(p.err("factor", "missing (needed by rope_type yarn)"));
    }
    let original = p.original_max()?;
    let factor = p.factor_or_ratio(original)?;
    let attention = match p.num("attention_factor")? {
        Some(a) => p.positive("attention_factor", a)?,
        None => match (p.num("mscale")?, p.num("mscale_all_dim")?) {
            (Some(m), Some(all)) if m != 0.0 && all != 0.0 => yarn_mscale(factor, m) / yarn_mscale(factor, all),
            _ => yarn_mscale(factor, 1.0),
        },
    };
    // transformers: `get("beta_fast") or 32`, so 0 means the default too.
    let beta = |name: &str, default: f64| -> Result<f64, ModelError> {
        match p.num(name)? {
            None | Some(0.0) => Ok(default),
            Some(b) => p.positive(name, b),
        }
    };
    let (beta_fast, beta_slow) = (beta("beta_fast", 32.0)?, beta("beta_slow", 1.0)?);
    let truncate = match p.src.params.get("truncate") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(p.err("truncate", "expected true or false")),
    };
    if theta == 1.0 {
        return Err(p.err("rope_theta", "must not be 1 for rope_type yarn (its correction range divides by ln theta)"));
    }
    // Correction range, in f64 like transformers' Python floats.
    let correction_dim =
        |rotations: f64| (dim as f64 * (original as f64 / (rotations * 2.0 * std::f64::consts::PI)).ln()) / (2.0 * theta.ln());
    let (mut low, mut high) = (correction_dim(beta_fast), correction_dim(beta_slow));
    if truncate {
        (low, high) = (low.floor(), high.ceil());
    }
    let (low, mut high) = (low.max(0.0), high.min(dim as f64 - 1.0));
    if low == high {
        high += 0.001;
    }
    for (i, f) in rope.inv_freq.iter_mut().enumerate() {
        // Elementwise in f32, as the torch tensors are.
        let pos_freq = (theta as f32).powf((2 * i) as f32 / dim as f32);
        let extrapolation = 1.0 / pos_freq;
        let interpolation = 1.0 / (factor as f32 * pos_freq);
        let ramp = ((i as f32 - low as f32) / (high - low) as f32).clamp(0.0, 1.0);
        let keep = 1.0 - ramp;
        *f = interpolation * (1.0 - keep) + extrapolation * keep;
    }
    rope.attention_scaling = attention as f32;
    Ok(())
}

/// LongRoPE (`_compute_longrope_parameters`): `1 / (ext · theta^(2i/d))` with `ext` the short
/// factors up to `original_max_position_embeddings` tokens and the long ones past it; cos and
/// sin scaled by the attention factor `√(1 + ln factor / ln original)`.
fn longrope(p: &Params<'_>, theta: f64, dim: usize, rope: &mut Rope) -> Result<(), ModelError> {
    let short = p.factors("short_factor", dim / 2)?;
    let long = p.factors("long_factor", dim / 2)?;
    let original = p.original_max()?;
    let factor = p.factor_or_ratio(original)?;
    let attention = match p.num("attention_factor")? {
        Some(a) => p.positive("attention_factor", a)?,
        None if factor <= 1.0 => 1.0,
        None => (1.0 + factor.ln() / (original as f64).ln()).sqrt(),
    };
    let scaled =
        |ext: &[f32]| -> Vec<f32> { (0..dim / 2).map(|i| 1.0 / (ext[i] * (theta as f32).powf((2 * i) as f32 / dim as f32))).collect() };
    rope.inv_freq = scaled(&short);
    rope.length = LengthScaling::LongRope { original_max_position_embeddings: original, long_inv_freq: scaled(&long) };
    rope.attention_scaling = attention as f32;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{HfConfig, ModelConfig};

    const BASE: &str = r#""vocab_size": 10, "hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2"#;

    fn resolve(model_type: &str, extra: &str) -> Result<ModelConfig, String> {
        let json = format!(r#"{{"model_type": "{model_type}", {BASE}{extra}}}"#);
        let raw: HfConfig = serde_json::from_str(&json).expect("test json");
        raw.resolve(Path::new("config.json")).map_err(|e| e.to_string())
    }

    fn rope(model_type: &str, extra: &str) -> Rope {
        resolve(model_type, extra).expect("valid").layers[0].rope.clone()
    }

    fn error(model_type: &str, extra: &str) -> String {
        resolve(model_type, extra).expect_err("invalid")
    }

    #[test]
    fn llama3_scaling_keeps_short_and_divides_long_wavelengths() {
        let mut f = vec![1.0f32, 0.1, 0.001];
        llama3_scaling(&mut f, 8.0, 1.0, 4.0, 16.0);
        // wavelengths 6.3, 62.8 and 6283 against 16/4 = 4 and 16/1 = 16: the first is between.
        assert!(f[0] < 1.0 && f[0] > 1.0 / 8.0, "{f:?}");
        assert_eq!(f[1], 0.1 / 8.0);
        assert_eq!(f[2], 0.001 / 8.0);
    }

    /// YaRN with the ramp over the whole range: the first pair kept, the last divided by
    /// factor; the attention factor 0.1·ln(factor) + 1.
    #[test]
    fn yarn_interpolates_low_frequencies_and_scales_attention() {
        let plain = rope("llama", "");
        let r = rope(
            "llama",
            r#", "max_position_embeddings": 4096, "rope_parameters": {"rope_type": "yarn", "factor": 4, "original_max_position_embeddings": 1024}"#,
        );
        assert_eq!(r.length, LengthScaling::Fixed);
        assert!((r.attention_scaling - (0.1 * 4f32.ln() + 1.0)).abs() < 1e-6, "{}", r.attention_scaling);
        assert_eq!(r.inv_freq[0], plain.inv_freq[0]);
        let last = r.inv_freq.len() - 1;
        assert!((r.inv_freq[last] - plain.inv_freq[last] / 4.0).abs() < 1e-9, "{:?}", r.inv_freq);
        // attention_factor given wins; mscale / mscale_all_dim give their ratio.
        let given =
            rope("llama", r#", "max_position_embeddings": 64, "rope_scaling": {"type": "yarn", "factor": 4, "attention_factor": 0.5}"#);
        assert_eq!(given.attention_scaling, 0.5);
        let ratio = rope(
            "llama",
            r#", "max_position_embeddings": 64, "rope_scaling": {"type": "yarn", "factor": 4, "mscale": 2, "mscale_all_dim": 1}"#,
        );
        let want = (0.2 * 4f64.ln() + 1.0) / (0.1 * 4f64.ln() + 1.0);
        assert!((ratio.attention_scaling as f64 - want).abs() < 1e-6);
    }

    #[test]
    fn yarn_factor_null_is_the_context_ratio_and_missing_is_an_error() {
        let r = rope(
            "qwen2",
            r#", "max_position_embeddings": 64, "rope_scaling": {"type": "yarn", "factor": null, "original_max_position_embeddings": 16}"#,
        );
        assert!((r.attention_scaling - (0.1 * 4f32.ln() + 1.0)).abs() < 1e-6);
        let e = error("llama", r#", "rope_parameters": {"rope_type": "yarn", "original_max_position_embeddings": 16}"#);
        assert!(e.contains("config.json: rope_parameters.factor: missing (needed by rope_type yarn)"), "{e}");
        let e = error("llama", r#", "rope_scaling": {"type": "yarn", "factor": null, "original_max_position_embeddings": 16}"#);
        assert!(e.contains("rope_scaling.factor: null, and max_position_embeddings is missing"), "{e}");
        let e = error("llama", r#", "rope_scaling": {"type": "yarn", "factor": 2}"#);
        assert!(
            e.contains(
                "rope_scaling.original_max_position_embeddings: missing (needed by rope_type yarn), and so is max_position_embeddings"
            ),
            "{e}"
        );
        let e = error("llama", r#", "max_position_embeddings": 64, "rope_scaling": {"type": "yarn", "factor": 2, "truncate": "no"}"#);
        assert!(e.contains("rope_scaling.truncate: expected true or false"), "{e}");
        let e = error("llama", r#", "max_position_embeddings": 64, "rope_scaling": {"type": "yarn", "factor": 2, "beta_fast": -3}"#);
        assert!(e.contains("rope_scaling.beta_fast: must be positive"), "{e}");
        let e = error(
            "llama",
            r#", "max_position_embeddings": 64, "rope_scaling": {"type": "yarn", "factor": 2, "original_max_position_embeddings": 10.5}"#,
        );
        assert!(e.contains("rope_scaling.original_max_position_embeddings: must be a positive integer"), "{e}");
        let e = error("llama", r#", "max_position_embeddings": 64, "rope_scaling": {"type": "yarn", "factor": 0}"#);
        assert!(e.contains("rope_scaling.factor: must be positive, got 0"), "{e}");
    }

    #[test]
    fn dynamic_grows_the_base_only_past_max_position_embeddings() {
        let plain = rope("llama", "");
        let r = rope("llama", r#", "max_position_embeddings": 12, "rope_scaling": {"type": "dynamic", "factor": 2}"#);
        assert_eq!(r.inv_freq, plain.inv_freq);
        assert_eq!(r.inv_freq_at(12).as_ref(), plain.inv_freq.as_slice());
        let grown = r.inv_freq_at(16);
        // base · (2·16/12 − 1)^(8/6): every frequency but the first (always 1) is lower.
        let base = 10_000f64 * (2.0 * 16.0 / 12.0 - 1.0f64).powf(8.0 / 6.0);
        for (i, (g, p)) in grown.iter().zip(&plain.inv_freq).enumerate() {
            let want = base.powf(-(2.0 * i as f64) / 8.0);
            assert!((*g as f64 - want).abs() <= 1e-6 * want, "{i}: {g} vs {want}");
            assert!(i == 0 || g < p);
        }
        let e = error("llama", r#", "rope_scaling": {"type": "dynamic"}"#);
        assert!(e.contains("rope_scaling.factor: missing (needed by rope_type dynamic)"), "{e}");
        let e = error("llama", r#", "rope_scaling": {"type": "dynamic", "factor": 2}"#);
        assert!(e.contains("config.json: max_position_embeddings: missing (needed by rope_type dynamic)"), "{e}");
    }

    const FACTORS: &str = r#""short_factor": [1, 2, 3, 4], "long_factor": [2, 4, 8, 16]"#;

    #[test]
    fn longrope_switches_to_long_factors_past_the_original_length() {
        let plain = rope("phi3", "");
        let r = rope(
            "phi3",
            &format!(
                r#", "max_position_embeddings": 64, "original_max_position_embeddings": 16, "rope_scaling": {{"type": "longrope", {FACTORS}}}"#
            ),
        );
        let LengthScaling::LongRope { original_max_position_embeddings, .. } = r.length else { panic!("{:?}", r.length) };
        assert_eq!(original_max_position_embeddings, 16);
        // factor = 64 / 16: √(1 + ln 4 / ln 16) = √1.5.
        assert!((r.attention_scaling - 1.5f32.sqrt()).abs() < 1e-6);
        for (i, p) in plain.inv_freq.iter().enumerate() {
            assert!((r.inv_freq_at(16)[i] - p / (i + 1) as f32).abs() < 1e-7);
            assert!((r.inv_freq_at(17)[i] - p / (2u32 << i) as f32).abs() < 1e-7);
        }
        // Phi-3's early names, and its top-level length (4096 by default) over rope_parameters'.
        for (ty, extra) in [("su", ""), ("yarn", r#", "original_max_position_embeddings": 99"#)] {
            let r = rope("phi3", &format!(r#", "max_position_embeddings": 8192, "rope_scaling": {{"type": "{ty}", {FACTORS}{extra}}}"#));
            assert!(matches!(r.length, LengthScaling::LongRope { original_max_position_embeddings: 4096, .. }), "{ty}: {:?}", r.length);
        }
        // Elsewhere the parameters' own length counts, and an explicit factor gives the scaling.
        let r = rope(
            "llama",
            &format!(
                r#", "rope_parameters": {{"rope_type": "longrope", "original_max_position_embeddings": 16, "factor": 16, {FACTORS}}}"#
            ),
        );
        assert!(matches!(r.length, LengthScaling::LongRope { original_max_position_embeddings: 16, .. }));
        assert!((r.attention_scaling - 2f32.sqrt()).abs() < 1e-6);
    }

    #[test]
    fn longrope_factors_are_checked_against_the_rotary_dim() {
        let e = error(
            "phi3",
            r#", "max_position_embeddings": 64, "rope_scaling": {"type": "longrope", "short_factor": [1, 2, 3], "long_factor": [2, 4, 8, 16]}"#,
        );
        assert!(e.contains("rope_scaling.short_factor: 3 entries; expected 4 (one per rotated pair: rotary dim 8 / 2)"), "{e}");
        // partial_rotary_factor 0.5 rotates 4 features: 2 factors each.
        let e = error("phi3", &format!(r#", "partial_rotary_factor": 0.5, "rope_scaling": {{"type": "longrope", {FACTORS}}}"#));
        assert!(e.contains("rope_scaling.short_factor: 4 entries; expected 2"), "{e}");
        let e = error("phi3", r#", "rope_scaling": {"type": "longrope", "short_factor": [1, 2, 0, 4], "long_factor": [2, 4, 8, 16]}"#);
        assert!(e.contains("rope_scaling.short_factor: entry 2 (0) must be a positive number"), "{e}");
        let e = error("phi3", r#", "rope_parameters": {"rope_type": "longrope", "short_factor": [1, 2, 3, 4]}"#);
        assert!(e.contains("rope_parameters.long_factor: missing (needed by rope_type longrope)"), "{e}");
        let e = error("phi3", r#", "rope_scaling": {"type": "longrope", "short_factor": "1 2 3 4", "long_factor": [2, 4, 8, 16]}"#);
        assert!(e.contains("rope_scaling.short_factor: expected a list of numbers"), "{e}");
        let e = error(
            "phi3",
            &format!(r#", "max_position_embeddings": 64, "rope_scaling": {{"type": "longrope", "attention_factor": -1, {FACTORS}}}"#),
        );
        assert!(e.contains("rope_scaling.attention_factor: must be positive, got -1"), "{e}");
    }

    #[test]
    fn per_layer_kind_parameters_name_their_key() {
        let e = error(
            "gemma3_text",
            r#", "sliding_window": 4, "layer_types": ["full_attention"], "rope_parameters": {"full_attention": {"rope_type": "yarn"}}"#,
        );
        assert!(e.contains("rope_parameters.full_attention.factor: missing (needed by rope_type yarn)"), "{e}");
    }
}
