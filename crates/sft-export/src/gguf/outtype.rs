//! Which ggml type each tensor is stored in, per output type: f32/f16/bf16 and q8_0 as
//! `convert_hf_to_gguf.py --outtype` writes them, and q4_k_m as `llama-quantize ... Q4_K_M`
//! mixes it (`llama_tensor_get_type` in llama.cpp's `src/llama-quant.cpp`): Q4_K, with Q6_K
//! for the output layer (and the embedding when it is tied to it) and for the attn_v/attn_qkv
//! and ffn_down tensors of the layers `use_more_bits` picks; a tensor whose rows do not split
//! into 256-value blocks falls back as llama.cpp's `tensor_type_fallback` does.

use candle_core::quantized::GgmlDType;

/// The `--outtype` of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutType {
    /// Everything f32.
    F32,
    /// Matrices f16, vectors f32.
    F16,
    /// Matrices bf16, vectors f32.
    Bf16,
    /// Matrices in 8-bit blocks of 32 (f16 where a row does not split into them), vectors f32.
    Q8_0,
    /// llama.cpp's Q4_K_M mix.
    Q4KM,
}

impl OutType {
    /// All of them, by name.
    pub const ALL: [(&'static str, OutType); 5] =
        [("f32", OutType::F32), ("f16", OutType::F16), ("bf16", OutType::Bf16), ("q8_0", OutType::Q8_0), ("q4_k_m", OutType::Q4KM)];

    /// The output type called `name` (`f32`, `f16`, `bf16`, `q8_0`, `q4_k_m`).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, t)| *t)
    }

    /// llama.cpp's `llama_ftype` (`general.file_type`).
    pub fn file_type(self) -> u32 {
        match self {
            OutType::F32 => 0,
            OutType::F16 => 1,
            OutType::Q8_0 => 7,
            OutType::Q4KM => 15,
            OutType::Bf16 => 32,
        }
    }
}

/// Chooses tensor types in file order, counting attn_v and ffn_down tensors as llama-quantize
/// does (its choice for one depends on how many of its kind came before).
#[derive(Debug)]
pub struct TypePlan {
    outtype: OutType,
    tied: bool,
    n_attn_v: usize,
    n_ffn_down: usize,
    i_attn_v: usize,
    i_ffn_down: usize,
}

impl TypePlan {
    /// A plan for the tensors `names` (in file order).
    pub fn new(outtype: OutType, names: &[&str]) -> Self {
        let count = |f: fn(&str) -> bool| names.iter().filter(|n| f(n)).count();
        TypePlan {
            outtype,
            tied: !names.contains(&"output.weight"),
            n_attn_v: count(is_attn_v),
            n_ffn_down: count(|n| n.contains("ffn_down")),
            i_attn_v: 0,
            i_ffn_down: 0,
        }
    }

    /// The type of the next tensor, `name` with `dims` (`[rows, cols]`, candle order).
    pub fn next(&mut self, name: &str, dims: &[usize]) -> GgmlDType {
        let cols = dims.last().copied().unwrap_or(1);
        if dims.len() < 2 || name.ends_with("_norm.weight") || !name.ends_with("weight") {
            return GgmlDType::F32;
        }
        match self.outtype {
            OutType::Q4KM => fallback(self.q4_k_m(name, cols), cols),
            other => matrix_type(other, cols),
        }
    }

    fn q4_k_m(&mut self, name: &str, cols: usize) -> GgmlDType {
        if name == "output.weight" || (self.tied && name == "token_embd.weight") {
            return if !cols.is_multiple_of(256) { GgmlDType::Q8_0 } else { GgmlDType::Q6K };
        }
        if is_attn_v(name) {
            let more = use_more_bits(self.i_attn_v, self.n_attn_v);
            self.i_attn_v += 1;
            return if more { GgmlDType::Q6K } else { GgmlDType::Q4K };
        }
        if name.contains("ffn_down") {
            let more = use_more_bits(self.i_ffn_down, self.n_ffn_down);
            self.i_ffn_down += 1;
            return if more { GgmlDType::Q6K } else { GgmlDType::Q4K };
        }
        GgmlDType::Q4K
    }
}

/// The type of a matrix with rows of `cols` values in a uniform output type (not q4_k_m):
/// what `convert_hf_to_gguf.py` and `convert_lora_to_gguf.py` write.
pub fn matrix_type(outtype: OutType, cols: usize) -> GgmlDType {
    match outtype {
        OutType::F32 => GgmlDType::F32,
        OutType::F16 => GgmlDType::F16,
        OutType::Bf16 => GgmlDType::BF16,
        OutType::Q8_0 if cols.is_multiple_of(32) => GgmlDType::Q8_0,
        OutType::Q8_0 | OutType::Q4KM => GgmlDType::F16,
    }
}

fn is_attn_v(name: &str) -> bool {
    name.contains("attn_v.weight") || name.contains("attn_qkv.weight")
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers, and every third one
/// between.
fn use_more_bits(i: usize, n: usize) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// llama.cpp's `tensor_type_fallback`: a type whose block does not divide the row length
/// becomes a 32-block type, and F16 when that does not divide it either.
fn fallback(t: GgmlDType, cols: usize) -> GgmlDType {
    if cols.is_multiple_of(t.block_size()) {
        return t;
    }
    let smaller = match t {
        GgmlDType::Q4K => GgmlDType::Q5_0,
        GgmlDType::Q5K => GgmlDType::Q5_1,
        GgmlDType::Q6K => GgmlDType::Q8_0,
        other => other,
    };
    if cols.is_multiple_of(smaller.block_size()) {
        smaller
    } else {
        GgmlDType::F16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(layers: usize, tied: bool) -> Vec<String> {
        let mut v = vec!["token_embd.weight".to_string()];
        for i in 0..layers {
            for t in ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"] {
                v.push(format!("blk.{i}.{t}.weight"));
            }
        }
        v.push("output_norm.weight".into());
        if !tied {
            v.push("output.weight".into());
        }
        v
    }

    #[test]
    fn q4_k_m_mixes_like_llama_quantize() {
        // 30 layers (SmolLM2-135M): use_more_bits picks 0-2, 26-29 and every third between.
        let all = names(30, true);
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let mut plan = TypePlan::new(OutType::Q4KM, &refs);
        let types: Vec<(String, GgmlDType)> =
            all.iter().map(|n| (n.clone(), plan.next(n, if n.contains("norm") { &[576][..] } else { &[576, 1536][..] }))).collect();
        let of = |name: &str| types.iter().find(|(n, _)| n == name).map(|(_, t)| *t).expect("tensor");
        assert_eq!(of("token_embd.weight"), GgmlDType::Q6K, "tied: the output's type");
        assert_eq!(of("blk.0.attn_norm.weight"), GgmlDType::F32);
        let q6: Vec<usize> = (0..30).filter(|i| of(&format!("blk.{i}.ffn_down.weight")) == GgmlDType::Q6K).collect();
        assert_eq!(q6, vec![0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]);
        assert_eq!(of("blk.3.attn_q.weight"), GgmlDType::Q4K);
        assert_eq!(of("blk.5.attn_v.weight"), GgmlDType::Q6K);
    }

    #[test]
    fn rows_that_do_not_split_into_blocks_fall_back() {
        assert_eq!(fallback(GgmlDType::Q4K, 64), GgmlDType::Q5_0);
        assert_eq!(fallback(GgmlDType::Q6K, 64), GgmlDType::Q8_0);
        assert_eq!(fallback(GgmlDType::Q4K, 48), GgmlDType::F16);
        assert_eq!(fallback(GgmlDType::Q4K, 512), GgmlDType::Q4K);
        let mut plan = TypePlan::new(OutType::Q8_0, &["a.weight"]);
        assert_eq!(plan.next("a.weight", &[8, 48]), GgmlDType::F16);
        assert_eq!(OutType::parse("Q4_K_M"), Some(OutType::Q4KM));
    }
}
