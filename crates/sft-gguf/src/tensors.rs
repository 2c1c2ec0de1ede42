//! GGUF tensors as transformers' tensors: llama.cpp's names (`blk.N.attn_q.weight`, from
//! `gguf-py/gguf/tensor_mapping.py`) mapped to HF names, and the two value transforms
//! llama.cpp's `convert_hf_to_gguf.py` applies undone: the Q/K row permutation of the llama
//! architecture (`LlamaModel.permute`, which turns HF's rotate-half RoPE layout into ggml's
//! interleaved one) and Gemma's norms stored as `1 + weight`.

use candle_core::{DType, Tensor};

use crate::file::GgufFile;
use crate::metadata::{Architecture, GgufMetadata};
use crate::GgufError;

/// The HF name of GGUF tensor `name` for `arch`, or `None` for a tensor no HF model has.
pub fn hf_name(arch: Architecture, name: &str) -> Option<String> {
    let (stem, kind) = name.rsplit_once('.').filter(|(_, k)| *k == "weight" || *k == "bias")?;
    let top = match stem {
        "token_embd" => Some("model.embed_tokens"),
        "output_norm" => Some("model.norm"),
        "output" => Some("lm_head"),
        _ => None,
    };
    if let Some(top) = top {
        return Some(format!("{top}.{kind}"));
    }
    let rest = stem.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let sandwich = matches!(arch, Architecture::Gemma2 | Architecture::Gemma3);
    let hf = match part {
        "attn_norm" => "input_layernorm",
        "ffn_norm" if sandwich => "pre_feedforward_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "post_attention_norm" if sandwich => "post_attention_layernorm",
        "post_ffw_norm" if sandwich => "post_feedforward_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_qkv" => "self_attn.qkv_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" if arch == Architecture::Phi3 => "mlp.gate_up_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// How a tensor's values are changed on the way to HF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transform {
    None,
    /// Undo `permute(w, n_head, n_head_kv)` with this many heads.
    Unpermute(usize),
    /// `w - 1`.
    MinusOne,
}

fn transform(meta: &GgufMetadata, hf: &str) -> Transform {
    let heads = meta.head_count as usize;
    let kv = meta.head_count_kv.unwrap_or(meta.head_count) as usize;
    if meta.architecture == Architecture::Llama {
        if hf.ends_with("self_attn.q_proj.weight") || hf.ends_with("self_attn.q_proj.bias") {
            return Transform::Unpermute(heads);
        }
        if hf.ends_with("self_attn.k_proj.weight") || hf.ends_with("self_attn.k_proj.bias") {
            return Transform::Unpermute(kv);
        }
    }
    if meta.architecture.norm_plus_one() && hf.ends_with("norm.weight") {
        return Transform::MinusOne;
    }
    Transform::None
}

/// Undoes llama.cpp's `w.reshape(n_head, 2, rows / n_head / 2, ...).swapaxes(1, 2)`: GGUF row
/// `(h, j, k)` is HF row `(h, k, j)`.
pub fn unpermute(w: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
    let dims = w.dims().to_vec();
    let rows = dims[0];
    if n_head == 0 || !rows.is_multiple_of(2 * n_head) {
        candle_core::bail!("{rows} rows do not split into {n_head} heads of pairs");
    }
    let rest: usize = dims[1..].iter().product();
    w.reshape((n_head, rows / n_head / 2, 2, rest))?.transpose(1, 2)?.contiguous()?.reshape(dims)
}

/// Every tensor of `file` under its HF name, values as transformers holds them.
pub fn convert(file: &mut GgufFile, meta: &GgufMetadata) -> Result<Vec<(String, Tensor)>, GgufError> {
    let entries = file.entries().to_vec();
    let mut out = Vec::with_capacity(entries.len());
    let path = file.path().to_path_buf();
    for entry in &entries {
        let bad = |message: String| GgufError::Tensor { path: path.clone(), tensor: entry.name.clone(), message };
        // A tensor no transformers model has (Llama 3's `rope_freqs`, MoE experts) is an error, not dropped.
        let Some(hf) = hf_name(meta.architecture, &entry.name) else {
            return Err(bad(format!("no transformers {} tensor corresponds to it", meta.architecture.model_type())));
        };
        let t = file.tensor(&entry.name)?;
        let t = match transform(meta, &hf) {
            Transform::None => Ok(t),
            Transform::Unpermute(heads) => unpermute(&t, heads),
            Transform::MinusOne => t.to_dtype(DType::F32).and_then(|t| t.affine(1.0, -1.0)),
        }
        .map_err(|e| bad(e.to_string()))?;
        out.push((hf, t));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// llama.cpp's permute, as convert_hf_to_gguf.py writes it.
    fn permute(w: &Tensor, n_head: usize) -> Tensor {
        let dims = w.dims().to_vec();
        w.reshape((n_head, 2, dims[0] / n_head / 2, dims[1])).unwrap().transpose(1, 2).unwrap().contiguous().unwrap().reshape(dims).unwrap()
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        let w = Tensor::arange(0f32, 48.0, &Device::Cpu).unwrap().reshape((12, 4)).unwrap();
        for heads in [1, 2, 3, 6] {
            let back = unpermute(&permute(&w, heads), heads).unwrap();
            assert_eq!(back.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap(), "{heads} heads");
        }
        // Rows [a0 a1 b0 b1] of one head of width 4 are stored interleaved as [a0 b0 a1 b1].
        let row = |t: &Tensor| t.to_vec2::<f32>().unwrap().iter().map(|r| r[0]).collect::<Vec<_>>();
        assert_eq!(row(&permute(&w, 3)), [0., 8., 4., 12., 16., 24., 20., 28., 32., 40., 36., 44.]);
        assert!(unpermute(&w, 5).is_err());
    }

    #[test]
    fn names_map_to_transformers() {
        use Architecture::*;
        assert_eq!(hf_name(Llama, "token_embd.weight").as_deref(), Some("model.embed_tokens.weight"));
        assert_eq!(hf_name(Llama, "blk.12.attn_q.weight").as_deref(), Some("model.layers.12.self_attn.q_proj.weight"));
        assert_eq!(hf_name(Qwen2, "blk.0.attn_k.bias").as_deref(), Some("model.layers.0.self_attn.k_proj.bias"));
        assert_eq!(hf_name(Llama, "blk.0.ffn_norm.weight").as_deref(), Some("model.layers.0.post_attention_layernorm.weight"));
        assert_eq!(hf_name(Gemma2, "blk.0.ffn_norm.weight").as_deref(), Some("model.layers.0.pre_feedforward_layernorm.weight"));
        assert_eq!(hf_name(Gemma3, "blk.1.post_ffw_norm.weight").as_deref(), Some("model.layers.1.post_feedforward_layernorm.weight"));
        assert_eq!(hf_name(Phi3, "blk.0.ffn_up.weight").as_deref(), Some("model.layers.0.mlp.gate_up_proj.weight"));
        assert_eq!(hf_name(Qwen3, "blk.3.attn_q_norm.weight").as_deref(), Some("model.layers.3.self_attn.q_norm.weight"));
        assert_eq!(hf_name(Llama, "output.weight").as_deref(), Some("lm_head.weight"));
        for other in
            ["rope_freqs.weight", "blk.x.attn_q.weight", "blk.0.attn_q", "blk.0.ffn_gate_exps.weight", "blk.0.post_ffw_norm.weight"]
        {
            assert_eq!(hf_name(Llama, other), None, "{other}");
        }
    }
}
