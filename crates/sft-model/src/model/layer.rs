//! One decoder layer: pre-norm attention (grouped-query, RoPE, optional q/k norms, windows and
//! soft-capping) and a gated MLP, each added back to the residual stream; Gemma 2/3 also norm
//! each block's output.

use std::sync::Arc;

use candle_core::{Result, Tensor};

use super::kv_cache::{attend_rows, AttentionShape, KvCache};
use super::params::Builder;
use crate::config::ModelConfig;
use crate::error::TensorContext;
use crate::lora::{Dropout, Lora};
use crate::ops::{
    attention, dora_linear, dora_weight_norm, frozen_matmul, glu, linear, lora_linear, matvec, qmatmul, rms_norm, rope, AttentionSpec,
    DoraWeights, LinearWeight, LoraLinear, RopeTable, MATVEC_MAX_ROWS,
};
use crate::ModelError;

/// A linear layer `x·Wᵀ + b`, optionally with a LoRA (or DoRA) adapter.
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    pub weight: LinearWeight,
    pub bias: Option<Tensor>,
    pub lora: Option<Lora>,
}

impl Linear {
    pub fn load(b: &mut Builder, name: String, out: usize, inp: usize, bias: bool) -> std::result::Result<Self, ModelError> {
        let weight = b.linear_weight(&format!("{name}.weight"), out, inp)?;
        let bias = if bias { Some(b.weight(&format!("{name}.bias"), &[out])?) } else { None };
        let lora = b.lora(&name, &weight)?;
        let mut linear = Self { weight, bias, lora: None };
        linear.attach(lora).during(|| format!("attaching the adapter of {name}"))?;
        Ok(linear)
    }

    /// Puts `lora` on the layer; a DoRA adapter that does not train gets its factor
    /// `m/‖W + s·B·A‖` computed here, once.
    pub fn attach(&mut self, lora: Option<Lora>) -> Result<()> {
        self.lora = match lora {
            Some(mut l) if !l.trains() => {
                if let Some(d) = &mut l.dora {
                    let norm = dora_weight_norm(&self.weight, &l.a, &l.b, l.scaling)?;
                    d.frozen_scale = Some(d.magnitude.div(&norm)?);
                }
                Some(l)
            }
            other => other,
        };
        Ok(())
    }

    /// `x` is `[n, in]`; `dropout` applies to the adapter's input while training.
    pub fn forward(&self, x: &Tensor, dropout: Option<Dropout>) -> Result<Tensor> {
        let frozen = match &self.weight {
            LinearWeight::Dense(w) => !w.track_op(),
            LinearWeight::Quant(_) => true,
        };
        let dropped = dropout.is_some_and(|d| d.p > 0.0);
        let fused = |l: &Lora| frozen && (l.trains() || (dropped && l.dora.is_some()));
        if let Some(l) = self.lora.as_ref().filter(|l| fused(l)) {
            // Training an adapter: one op that keeps only x, A and B for the backward pass (and,
            // for DoRA, the product the magnitude's gradient needs).
            let layer = LoraLinear {
                weight: self.weight.clone(),
                bias: self.bias.clone(),
                scaling: l.scaling,
                dropout: dropout.map(|d| (d, l.index)),
            };
            return match &l.dora {
                Some(d) => {
                    let norm = dora_weight_norm(&self.weight, &l.a, &l.b, l.scaling)?;
                    dora_linear(x, DoraWeights { a: &l.a, b: &l.b, magnitude: &d.magnitude, norm: &norm }, &layer)
                }
                None => lora_linear(x, &l.a, &l.b, &layer),
            };
        }
        let mut y = match &self.weight {
            LinearWeight::Dense(w) => project(x, w)?,
            LinearWeight::Quant(q) => qmatmul(x, q)?,
        };
        if let Some((l, Some(d))) = self.lora.as_ref().map(|l| (l, l.dora.as_ref())) {
            // A frozen DoRA adapter without dropout: (x·Wᵀ + s·(x·Aᵀ)·Bᵀ) ∘ m/‖W + s·B·A‖ + b.
            let scale =
                d.frozen_scale.as_ref().ok_or_else(|| candle_core::Error::Msg("a DoRA adapter attached without its factor".into()))?;
            y = (y + l.forward(x, None)?)?.broadcast_mul(scale)?;
            return match &self.bias {
                Some(b) => y.broadcast_add(b),
                None => Ok(y),
            };
        }
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        if let Some(l) = &self.lora {
            y = (y + l.forward(x, dropout)?)?;
        }
        Ok(y)
    }

    /// `residual + forward(x)` (just `forward(x)` without one); a trainable f32 weight without
    /// bias or adapter adds it inside its op, so the product itself is never kept for the
    /// backward pass.
    pub fn forward_add(&self, x: &Tensor, dropout: Option<Dropout>, residual: Option<&Tensor>) -> Result<Tensor> {
        match (residual, &self.weight, &self.bias, &self.lora) {
            (Some(r), LinearWeight::Dense(w), None, None) if w.track_op() => linear(x, w, Some(r)),
            (Some(r), ..) => r + self.forward(x, dropout)?,
            (None, ..) => self.forward(x, dropout),
        }
    }
}

/// `x·Wᵀ` by the cheapest route: a trainable weight through the linear op (both gradients); a
/// frozen one with a gradient to `x` only; a few rows through which no gradient flows
/// (decoding) through the bandwidth-bound matrix-vector kernel.
pub(crate) fn project(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    match (x.track_op(), weight.track_op()) {
        (_, true) => linear(x, weight, None),
        (true, false) => frozen_matmul(x, weight),
        (false, false) if x.dims2()?.0 <= MATVEC_MAX_ROWS => matvec(x, weight),
        (false, false) => x.matmul(&weight.t()?),
    }
}

/// Per-forward inputs shared by every layer.
#[derive(Debug)]
pub(crate) struct Context {
    pub batch: usize,
    pub seq: usize,
    /// First key position of every token, one list per distinct window (`None` = causal only).
    pub starts: Vec<(Option<usize>, Arc<Vec<u32>>)>,
    /// RoPE tables per layer (layers of one kind share theirs).
    pub ropes: Vec<Arc<RopeTable>>,
    /// LoRA dropout of this forward pass (training only).
    pub dropout: Option<Dropout>,
}

impl Context {
    fn starts(&self, window: Option<usize>) -> Result<&Arc<Vec<u32>>> {
        self.starts
            .iter()
            .find(|(w, _)| *w == window)
            .map(|(_, s)| s)
            .ok_or_else(|| candle_core::Error::Msg(format!("no attention ranges for window {window:?}")))
    }
}

#[derive(Debug, Clone)]
enum Projections {
    Separate {
        q: Linear,
        k: Linear,
        v: Linear,
    },
    /// Phi-3's `qkv_proj`: queries, then keys, then values.
    Fused(Linear),
}

#[derive(Debug, Clone)]
struct Attention {
    proj: Projections,
    o: Linear,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
}

#[derive(Debug, Clone)]
enum Mlp {
    Separate {
        gate: Linear,
        up: Linear,
        down: Linear,
    },
    /// Phi-3's `gate_up_proj`: gate, then up.
    Fused {
        gate_up: Linear,
        down: Linear,
    },
}

/// One decoder layer.
#[derive(Debug, Clone)]
pub(crate) struct Layer {
    index: usize,
    input_norm: Tensor,
    /// Gemma 2/3: norm of the attention output.
    post_attention_norm: Option<Tensor>,
    /// Pre-MLP norm (Llama's `post_attention_layernorm`, Gemma 2's `pre_feedforward_layernorm`).
    mlp_norm: Tensor,
    /// Gemma 2/3: norm of the MLP output.
    post_mlp_norm: Option<Tensor>,
    attn: Attention,
    mlp: Mlp,
}

impl Layer {
    pub fn load(b: &mut Builder, cfg: &ModelConfig, index: usize) -> std::result::Result<Self, ModelError> {
        let p = format!("model.layers.{index}");
        let (d, hd) = (cfg.hidden_size, cfg.head_dim);
        let (q_out, kv_out) = (cfg.num_heads * hd, cfg.num_kv_heads * hd);
        let norm = |b: &mut Builder, name: &str, size: usize| b.weight(&format!("{p}.{name}.weight"), &[size]);
        let input_norm = norm(b, "input_layernorm", d)?;
        let (post_attention_norm, mlp_norm, post_mlp_norm) = if cfg.sandwich_norms {
            (
                Some(norm(b, "post_attention_layernorm", d)?),
                norm(b, "pre_feedforward_layernorm", d)?,
                Some(norm(b, "post_feedforward_layernorm", d)?),
            )
        } else {
            (None, norm(b, "post_attention_layernorm", d)?, None)
        };
        let proj = if cfg.fused {
            Projections::Fused(Linear::load(b, format!("{p}.self_attn.qkv_proj"), q_out + 2 * kv_out, d, cfg.qkv_bias)?)
        } else {
            Projections::Separate {
                q: Linear::load(b, format!("{p}.self_attn.q_proj"), q_out, d, cfg.qkv_bias)?,
                k: Linear::load(b, format!("{p}.self_attn.k_proj"), kv_out, d, cfg.qkv_bias)?,
                v: Linear::load(b, format!("{p}.self_attn.v_proj"), kv_out, d, cfg.qkv_bias)?,
            }
        };
        let (q_norm, k_norm) =
            if cfg.qk_norm { (Some(norm(b, "self_attn.q_norm", hd)?), Some(norm(b, "self_attn.k_norm", hd)?)) } else { (None, None) };
        let o = Linear::load(b, format!("{p}.self_attn.o_proj"), d, q_out, cfg.o_bias)?;
        let i = cfg.intermediate_size;
        let mlp = if cfg.fused {
            Mlp::Fused {
                gate_up: Linear::load(b, format!("{p}.mlp.gate_up_proj"), 2 * i, d, cfg.mlp_bias)?,
                down: Linear::load(b, format!("{p}.mlp.down_proj"), d, i, cfg.mlp_bias)?,
            }
        } else {
            Mlp::Separate {
                gate: Linear::load(b, format!("{p}.mlp.gate_proj"), i, d, cfg.mlp_bias)?,
                up: Linear::load(b, format!("{p}.mlp.up_proj"), i, d, cfg.mlp_bias)?,
                down: Linear::load(b, format!("{p}.mlp.down_proj"), d, i, cfg.mlp_bias)?,
            }
        };
        Ok(Self { index, input_norm, post_attention_norm, mlp_norm, post_mlp_norm, attn: Attention { proj, o, q_norm, k_norm }, mlp })
    }

    /// Every linear module of the layer with its HF name (for attaching adapters to a shared
    /// base, see `adapters.rs`).
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let p = format!("model.layers.{}", self.index);
        let mut out: Vec<(String, &mut Linear)> = vec![];
        match &mut self.attn.proj {
            Projections::Separate { q, k, v } => {
                out.push((format!("{p}.self_attn.q_proj"), q));
                out.push((format!("{p}.self_attn.k_proj"), k));
                out.push((format!("{p}.self_attn.v_proj"), v));
            }
            Projections::Fused(qkv) => out.push((format!("{p}.self_attn.qkv_proj"), qkv)),
        }
        out.push((format!("{p}.self_attn.o_proj"), &mut self.attn.o));
        match &mut self.mlp {
            Mlp::Separate { gate, up, down } => {
                out.push((format!("{p}.mlp.gate_proj"), gate));
                out.push((format!("{p}.mlp.up_proj"), up));
                out.push((format!("{p}.mlp.down_proj"), down));
            }
            Mlp::Fused { gate_up, down } => {
                out.push((format!("{p}.mlp.gate_up_proj"), gate_up));
                out.push((format!("{p}.mlp.down_proj"), down));
            }
        }
        out
    }

    /// `h` is the residual stream `[batch·seq, hidden]`. With `caches` (generation) the layer's
    /// keys and values of earlier tokens are reused and the new ones appended: one cache takes
    /// every row of `h` (one sequence's new tokens), several take one row each (a decoding step
    /// of several sequences).
    pub fn forward(&self, h: &Tensor, cfg: &ModelConfig, cx: &Context, caches: Option<&mut [&mut KvCache]>) -> Result<Tensor> {
        let norm = |x: &Tensor, w: &Tensor| rms_norm(x, w, cfg.rms_norm_eps, cfg.norm_offset);
        // Without a sandwich norm the residual add happens inside the output projection.
        let x = norm(h, &self.input_norm)?;
        let h = match &self.post_attention_norm {
            Some(w) => (h + norm(&self.attention(&x, cfg, cx, caches, None)?, w)?)?,
            None => self.attention(&x, cfg, cx, caches, Some(h))?,
        };
        let x = norm(&h, &self.mlp_norm)?;
        match &self.post_mlp_norm {
            Some(w) => &h + norm(&self.mlp(&x, cfg, cx.dropout, None)?, w)?,
            None => self.mlp(&x, cfg, cx.dropout, Some(&h)),
        }
    }

    fn attention(
        &self,
        x: &Tensor,
        cfg: &ModelConfig,
        cx: &Context,
        caches: Option<&mut [&mut KvCache]>,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, t, hd) = (cx.batch, cx.seq, cfg.head_dim);
        let (nh, nkv) = (cfg.num_heads, cfg.num_kv_heads);
        let (q, k, v) = match &self.attn.proj {
            Projections::Separate { q, k, v } => (q.forward(x, cx.dropout)?, k.forward(x, cx.dropout)?, v.forward(x, cx.dropout)?),
            Projections::Fused(qkv) => {
                let y = qkv.forward(x, cx.dropout)?;
                (y.narrow(1, 0, nh * hd)?, y.narrow(1, nh * hd, nkv * hd)?, y.narrow(1, (nh + nkv) * hd, nkv * hd)?)
            }
        };
        let table = &cx.ropes[self.index];
        // q and k normed per head where the model does (Qwen3); rotated inside the attention op.
        let heads = |x: Tensor, n: usize, norm_w: &Option<Tensor>| -> Result<Tensor> {
            match norm_w {
                Some(w) => rms_norm(&x.reshape((b, t, n, hd))?, w, cfg.rms_norm_eps, cfg.norm_offset),
                None => Ok(x),
            }
        };
        let (q, k) = (heads(q, nh, &self.attn.q_norm)?, heads(k, nkv, &self.attn.k_norm)?);
        if let Some(caches) = caches {
            let shape = AttentionShape {
                heads: nh,
                kv_heads: nkv,
                head_dim: hd,
                scale: cfg.attention_scale as f32,
                softcap: cfg.attn_softcap.map(|c| c as f32),
                window: cfg.layers[self.index].sliding_window,
            };
            let rotated = |x: &Tensor, n: usize| rope(&x.reshape((b, t, n, hd))?, table)?.flatten_all()?.to_vec1::<f32>();
            let out = attend_rows(caches, &rotated(&q, nh)?, &rotated(&k, nkv)?, &v.flatten_all()?.to_vec1::<f32>()?, &shape)?;
            return self.attn.o.forward_add(&Tensor::from_vec(out, (t, nh * hd), x.device())?, cx.dropout, residual);
        }
        let window = cfg.layers[self.index].sliding_window;
        let spec = AttentionSpec {
            batch: b,
            heads: nh,
            kv_heads: nkv,
            head_dim: hd,
            rope: Some(table.clone()),
            scale: cfg.attention_scale as f32,
            softcap: cfg.attn_softcap.map(|c| c as f32),
            first: cx.starts(window)?.clone(),
        };
        self.attn.o.forward_add(&attention(&q, &k, &v, &spec)?, cx.dropout, residual)
    }

    fn mlp(&self, x: &Tensor, cfg: &ModelConfig, d: Option<Dropout>, residual: Option<&Tensor>) -> Result<Tensor> {
        let (g, down) = match &self.mlp {
            Mlp::Separate { gate, up, down } => (glu(&gate.forward(x, d)?, &up.forward(x, d)?, cfg.activation)?, down),
            Mlp::Fused { gate_up, down } => {
                let y = gate_up.forward(x, d)?;
                let i = cfg.intermediate_size;
                (glu(&y.narrow(1, 0, i)?, &y.narrow(1, i, i)?, cfg.activation)?, down)
            }
        };
        down.forward_add(&g, d, residual)
    }
}
