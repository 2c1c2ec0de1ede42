//! HF tensor names to llama.cpp's GGUF names, and the layout changes llama.cpp's converter
//! (`convert_hf_to_gguf.py`) makes on the way: the llama architecture's Q/K row permutation
//! (llama.cpp rotates interleaved pairs where transformers rotates halves) and Gemma's
//! `1 + weight` norms stored with the 1 added.

use candle_core::Tensor;
use sft_model::config::Family;

/// What a tensor needs before it is written under its GGUF name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Written as it is.
    AsIs,
    /// Rows regrouped per head from halves to interleaved pairs (`LlamaModel.permute`).
    PermuteHeads(usize),
    /// A Gemma norm: llama.cpp multiplies by the stored weight, transformers by `1 + weight`.
    AddOne,
}

/// The llama.cpp architecture name (`general.architecture`) of a family.
pub fn arch(family: Family) -> &'static str {
    match family {
        Family::Llama | Family::Mistral => "llama",
        Family::Qwen2 => "qwen2",
        Family::Qwen3 => "qwen3",
        Family::Phi3 => "phi3",
        Family::Gemma => "gemma",
        Family::Gemma2 => "gemma2",
        Family::Gemma3 => "gemma3",
    }
}

/// Head counts the Q/K permutation needs.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    /// Query heads.
    pub q: usize,
    /// Key/value heads.
    pub kv: usize,
}

/// The GGUF name of an HF tensor and what it needs first; `None` for a tensor llama.cpp's
/// format has no place for.
pub fn gguf_name(family: Family, heads: Heads, hf: &str) -> Option<(String, Layout)> {
    let gemma = matches!(family, Family::Gemma | Family::Gemma2 | Family::Gemma3);
    let norm = |name: String| Some((name, if gemma { Layout::AddOne } else { Layout::AsIs }));
    match hf {
        "model.embed_tokens.weight" => return Some(("token_embd.weight".into(), Layout::AsIs)),
        "model.norm.weight" => return norm("output_norm.weight".into()),
        "lm_head.weight" => return Some(("output.weight".into(), Layout::AsIs)),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, suffix) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = suffix.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    let sandwich = matches!(family, Family::Gemma2 | Family::Gemma3);
    let permute = matches!(family, Family::Llama | Family::Mistral);
    let (short, layout) = match module {
        "input_layernorm" => ("attn_norm", Layout::AsIs),
        "post_attention_layernorm" if sandwich => ("post_attention_norm", Layout::AsIs),
        "post_attention_layernorm" | "pre_feedforward_layernorm" => ("ffn_norm", Layout::AsIs),
        "post_feedforward_layernorm" => ("post_ffw_norm", Layout::AsIs),
        "self_attn.q_proj" if permute => ("attn_q", Layout::PermuteHeads(heads.q)),
        "self_attn.k_proj" if permute => ("attn_k", Layout::PermuteHeads(heads.kv)),
        "self_attn.q_proj" => ("attn_q", Layout::AsIs),
        "self_attn.k_proj" => ("attn_k", Layout::AsIs),
        "self_attn.v_proj" => ("attn_v", Layout::AsIs),
        "self_attn.o_proj" => ("attn_output", Layout::AsIs),
        "self_attn.qkv_proj" => ("attn_qkv", Layout::AsIs),
        "self_attn.q_norm" => ("attn_q_norm", Layout::AsIs),
        "self_attn.k_norm" => ("attn_k_norm", Layout::AsIs),
        "mlp.gate_proj" => ("ffn_gate", Layout::AsIs),
        "mlp.up_proj" | "mlp.gate_up_proj" => ("ffn_up", Layout::AsIs),
        "mlp.down_proj" => ("ffn_down", Layout::AsIs),
        _ => return None,
    };
    let name = format!("blk.{layer}.{short}.{kind}");
    if short.ends_with("norm") {
        return norm(name);
    }
    Some((name, layout))
}

/// Applies `layout` to a tensor (`[rows, cols]` or a bias `[rows]`).
pub fn apply(layout: Layout, t: &Tensor) -> candle_core::Result<Tensor> {
    match layout {
        Layout::AsIs => Ok(t.clone()),
        Layout::AddOne => t.affine(1.0, 1.0),
        Layout::PermuteHeads(heads) => permute_heads(t, heads),
    }
}

/// `LlamaModel.permute`: `w.reshape(heads, 2, rows / heads / 2, ...).swapaxes(1, 2)`, so that
/// each head's rotated halves `(x_i, x_{i + d/2})` become adjacent rows `(2i, 2i + 1)`.
pub fn permute_heads(t: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let dims = t.dims().to_vec();
    let rows = dims[0];
    if heads == 0 || !rows.is_multiple_of(2 * heads) {
        candle_core::bail!("{rows} rows do not split into {heads} heads of pairs");
    }
    let mut split = vec![heads, 2, rows / heads / 2];
    split.extend_from_slice(&dims[1..]);
    t.reshape(split)?.transpose(1, 2)?.contiguous()?.reshape(dims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    const HEADS: Heads = Heads { q: 4, kv: 2 };

    #[test]
    fn names_follow_llama_cpp() {
        let n = |f, hf| gguf_name(f, HEADS, hf);
        assert_eq!(
            n(Family::Llama, "model.layers.3.self_attn.q_proj.weight"),
            Some(("blk.3.attn_q.weight".into(), Layout::PermuteHeads(4)))
        );
        assert_eq!(
            n(Family::Llama, "model.layers.3.self_attn.k_proj.weight"),
            Some(("blk.3.attn_k.weight".into(), Layout::PermuteHeads(2)))
        );
        assert_eq!(n(Family::Qwen2, "model.layers.0.self_attn.k_proj.bias"), Some(("blk.0.attn_k.bias".into(), Layout::AsIs)));
        assert_eq!(n(Family::Qwen3, "model.layers.1.self_attn.q_norm.weight"), Some(("blk.1.attn_q_norm.weight".into(), Layout::AsIs)));
        assert_eq!(
            n(Family::Gemma2, "model.layers.1.post_attention_layernorm.weight"),
            Some(("blk.1.post_attention_norm.weight".into(), Layout::AddOne))
        );
        assert_eq!(
            n(Family::Gemma, "model.layers.1.post_attention_layernorm.weight"),
            Some(("blk.1.ffn_norm.weight".into(), Layout::AddOne))
        );
        assert_eq!(n(Family::Phi3, "model.layers.0.mlp.gate_up_proj.weight"), Some(("blk.0.ffn_up.weight".into(), Layout::AsIs)));
        assert_eq!(n(Family::Llama, "model.layers.0.self_attn.rotary_emb.inv_freq"), None);
    }

    #[test]
    fn permutation_interleaves_each_heads_halves() {
        // 2 heads of dim 4, one column: rows [h0: 0 1 2 3, h1: 4 5 6 7] -> [0 2 1 3, 4 6 5 7].
        let t = Tensor::arange(0f32, 8.0, &Device::Cpu).and_then(|t| t.reshape((8, 1))).expect("tensor");
        let p = permute_heads(&t, 2).and_then(|p| p.flatten_all()).and_then(|p| p.to_vec1::<f32>()).expect("permute");
        assert_eq!(p, vec![0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
        assert!(permute_heads(&t, 3).is_err());
    }
}
