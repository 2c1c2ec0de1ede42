//! A GGUF file's metadata: [`GgufMetadata`] mirrors the keys llama.cpp writes
//! (`general.*`, `<arch>.*`, `tokenizer.ggml.*`, `tokenizer.chat_template`; ggml's
//! `docs/gguf.md`), read once with errors naming the key, and [`GgufMetadata::hf_config`] turns
//! it into the `config.json` transformers' GGUF loader builds for the same file
//! (`transformers/integrations/gguf/gguf_config_mapping.py` and `ggml.py`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Value;
use serde_json::{json, Map, Value as Json};

use crate::GgufError;

/// Architectures (`general.architecture`) this crate converts, with their `model_type`.
const ARCHITECTURES: &[(&str, &str, &str)] = &[
    ("llama", "llama", "LlamaForCausalLM"),
    ("mistral", "mistral", "MistralForCausalLM"),
    ("qwen2", "qwen2", "Qwen2ForCausalLM"),
    ("qwen3", "qwen3", "Qwen3ForCausalLM"),
    ("phi3", "phi3", "Phi3ForCausalLM"),
    ("gemma", "gemma", "GemmaForCausalLM"),
    ("gemma2", "gemma2", "Gemma2ForCausalLM"),
    ("gemma3", "gemma3_text", "Gemma3ForCausalLM"),
];

/// The model architecture a file describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// `llama` (also Mistral and SmolLM2 files llama.cpp converts as llama): Q/K rows permuted.
    Llama,
    /// `mistral`.
    Mistral,
    /// `qwen2`.
    Qwen2,
    /// `qwen3`.
    Qwen3,
    /// `phi3`: fused qkv and gate/up projections.
    Phi3,
    /// `gemma`: norms stored as `1 + weight`.
    Gemma,
    /// `gemma2`.
    Gemma2,
    /// `gemma3`.
    Gemma3,
}

impl Architecture {
    /// The GGUF name (the `<arch>.` key prefix).
    pub fn gguf_name(self) -> &'static str {
        ARCHITECTURES[self as usize].0
    }

    /// transformers' `model_type`.
    pub fn model_type(self) -> &'static str {
        ARCHITECTURES[self as usize].1
    }

    /// Whether llama.cpp stores this architecture's RMSNorm weights as `1 + weight`.
    pub fn norm_plus_one(self) -> bool {
        matches!(self, Architecture::Gemma | Architecture::Gemma2 | Architecture::Gemma3)
    }

    fn parse(name: &str) -> Option<Self> {
        use Architecture::*;
        [Llama, Mistral, Qwen2, Qwen3, Phi3, Gemma, Gemma2, Gemma3].into_iter().find(|a| a.gguf_name() == name)
    }
}

/// The vocabulary keys (`tokenizer.ggml.*`, `tokenizer.chat_template`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GgufTokenizer {
    /// `tokenizer.ggml.model`: `gpt2` (byte-level BPE) or `llama` (SentencePiece).
    pub model: String,
    /// `tokenizer.ggml.pre`: which pre-tokenizer regex the BPE merges were learnt with.
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.scores`.
    pub scores: Option<Vec<f32>>,
    /// `tokenizer.ggml.token_type` (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte).
    pub token_type: Option<Vec<i32>>,
    /// `tokenizer.ggml.merges`: `"left right"`.
    pub merges: Option<Vec<String>>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unk: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub pad: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos: Option<bool>,
    /// `tokenizer.ggml.add_eos_token`.
    pub add_eos: Option<bool>,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
}

/// The metadata keys a model directory is built from.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufMetadata {
    /// The file (for errors).
    pub path: PathBuf,
    /// `general.architecture`.
    pub architecture: Architecture,
    /// `general.name`.
    pub name: Option<String>,
    /// `<arch>.context_length`.
    pub context_length: Option<u64>,
    /// `<arch>.embedding_length`.
    pub embedding_length: u64,
    /// `<arch>.block_count`.
    pub block_count: u64,
    /// `<arch>.feed_forward_length`.
    pub feed_forward_length: u64,
    /// `<arch>.attention.head_count`.
    pub head_count: u64,
    /// `<arch>.attention.head_count_kv`.
    pub head_count_kv: Option<u64>,
    /// `<arch>.attention.key_length` (the head width where it is not embedding / heads).
    pub key_length: Option<u64>,
    /// `<arch>.rope.dimension_count`.
    pub rope_dimension_count: Option<u64>,
    /// `<arch>.rope.freq_base`.
    pub rope_freq_base: Option<f64>,
    /// `<arch>.attention.layer_norm_rms_epsilon`.
    pub rms_norm_eps: Option<f64>,
    /// `<arch>.attention.sliding_window`.
    pub sliding_window: Option<u64>,
    /// `<arch>.attn_logit_softcapping`.
    pub attn_logit_softcapping: Option<f64>,
    /// `<arch>.final_logit_softcapping`.
    pub final_logit_softcapping: Option<f64>,
    /// `<arch>.vocab_size`.
    pub vocab_size: Option<u64>,
    /// The vocabulary.
    pub tokenizer: GgufTokenizer,
}

/// Typed reads of one file's metadata map, errors naming the key.
struct Keys<'a> {
    map: &'a HashMap<String, Value>,
    path: &'a Path,
}

impl Keys<'_> {
    fn err(&self, key: &str, message: impl Into<String>) -> GgufError {
        GgufError::Key { path: self.path.into(), key: key.into(), message: message.into() }
    }

    fn uint(&self, key: &str) -> Result<Option<u64>, GgufError> {
        let v = match self.map.get(key) {
            None => return Ok(None),
            Some(v) => v,
        };
        let n = match v {
            Value::U8(n) => Some(u64::from(*n)),
            Value::U16(n) => Some(u64::from(*n)),
            Value::U32(n) => Some(u64::from(*n)),
            Value::U64(n) => Some(*n),
            Value::I8(n) => u64::try_from(*n).ok(),
            Value::I16(n) => u64::try_from(*n).ok(),
            Value::I32(n) => u64::try_from(*n).ok(),
            Value::I64(n) => u64::try_from(*n).ok(),
            _ => None,
        };
        n.map(Some).ok_or_else(|| self.err(key, format!("expected a non-negative integer, found {v:?}")))
    }

    fn need(&self, key: &str) -> Result<u64, GgufError> {
        self.uint(key)?.ok_or_else(|| self.err(key, "missing (required)"))
    }

    fn id(&self, key: &str) -> Result<Option<u32>, GgufError> {
        self.uint(key)?.map(|n| u32::try_from(n).map_err(|_| self.err(key, format!("token id {n} out of range")))).transpose()
    }

    fn float(&self, key: &str) -> Result<Option<f64>, GgufError> {
        match self.map.get(key) {
            None => Ok(None),
            Some(Value::F32(x)) => Ok(Some(f64::from(*x))),
            Some(Value::F64(x)) => Ok(Some(*x)),
            Some(_) => self.uint(key).map(|n| n.map(|n| n as f64)),
        }
    }

    fn boolean(&self, key: &str) -> Result<Option<bool>, GgufError> {
        match self.map.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.err(key, format!("expected a bool, found {v:?}"))),
        }
    }

    fn string(&self, key: &str) -> Result<Option<String>, GgufError> {
        match self.map.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(self.err(key, format!("expected a string, found a {:?}", v.value_type()))),
        }
    }

    fn array(&self, key: &str) -> Result<Option<&Vec<Value>>, GgufError> {
        match self.map.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => Ok(Some(items)),
            Some(v) => Err(self.err(key, format!("expected an array, found a {:?}", v.value_type()))),
        }
    }

    fn strings(&self, key: &str) -> Result<Option<Vec<String>>, GgufError> {
        let Some(items) = self.array(key)? else { return Ok(None) };
        let one = |(i, v): (usize, &Value)| match v {
            Value::String(s) => Ok(s.clone()),
            _ => Err(self.err(key, format!("element {i} is not a string"))),
        };
        items.iter().enumerate().map(one).collect::<Result<_, _>>().map(Some)
    }

    fn numbers<T>(&self, key: &str, convert: impl Fn(&Value) -> Option<T>) -> Result<Option<Vec<T>>, GgufError> {
        let Some(items) = self.array(key)? else { return Ok(None) };
        let one = |(i, v): (usize, &Value)| convert(v).ok_or_else(|| self.err(key, format!("element {i} is not a number")));
        items.iter().enumerate().map(one).collect::<Result<_, _>>().map(Some)
    }
}

impl GgufMetadata {
    /// Reads the keys from a file's metadata map; `path` names the file in errors.
    pub fn read(map: &HashMap<String, Value>, path: &Path) -> Result<Self, GgufError> {
        let k = Keys { map, path };
        let arch_name = k.string("general.architecture")?.ok_or_else(|| k.err("general.architecture", "missing (required)"))?;
        let architecture = Architecture::parse(&arch_name).ok_or_else(|| GgufError::UnsupportedArchitecture {
            path: path.into(),
            architecture: arch_name.clone(),
            supported: ARCHITECTURES.iter().map(|a| a.0).collect::<Vec<_>>().join(", "),
        })?;
        let a = |key: &str| format!("{arch_name}.{key}");
        Ok(Self {
            path: path.into(),
            architecture,
            name: k.string("general.name")?,
            context_length: k.uint(&a("context_length"))?,
            embedding_length: k.need(&a("embedding_length"))?,
            block_count: k.need(&a("block_count"))?,
            feed_forward_length: k.need(&a("feed_forward_length"))?,
            head_count: k.need(&a("attention.head_count"))?,
            head_count_kv: k.uint(&a("attention.head_count_kv"))?,
            key_length: k.uint(&a("attention.key_length"))?,
            rope_dimension_count: k.uint(&a("rope.dimension_count"))?,
            rope_freq_base: k.float(&a("rope.freq_base"))?,
            rms_norm_eps: k.float(&a("attention.layer_norm_rms_epsilon"))?,
            sliding_window: k.uint(&a("attention.sliding_window"))?,
            attn_logit_softcapping: k.float(&a("attn_logit_softcapping"))?,
            final_logit_softcapping: k.float(&a("final_logit_softcapping"))?,
            vocab_size: k.uint(&a("vocab_size"))?,
            tokenizer: read_tokenizer(&k)?,
        })
    }

    /// The error for key `key` of this file.
    pub fn key_error(&self, key: &str, message: impl Into<String>) -> GgufError {
        GgufError::Key { path: self.path.clone(), key: key.into(), message: message.into() }
    }

    /// The GGUF key `<arch>.<suffix>`.
    pub fn arch_key(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.architecture.gguf_name())
    }

    /// The head width: `key_length`, else (llama's) `rope.dimension_count`, else embedding / heads.
    pub fn head_dim(&self) -> Option<u64> {
        self.key_length
            .or(match self.architecture {
                Architecture::Llama | Architecture::Mistral => self.rope_dimension_count,
                _ => None,
            })
            .or_else(|| {
                (self.head_count > 0 && self.embedding_length.is_multiple_of(self.head_count))
                    .then(|| self.embedding_length / self.head_count)
            })
    }

    /// The `config.json` transformers' GGUF loader builds for this file; `tied` when the file
    /// has no `output.weight`.
    pub fn hf_config(&self, tied: bool) -> Json {
        use Architecture::*;
        let t = &self.tokenizer;
        // transformers: a llama file whose name says Mistral is a Mistral model.
        let model_type = match self.architecture {
            Llama if self.name.as_deref().is_some_and(|n| n.to_lowercase().contains("mistral")) => "mistral",
            other => other.model_type(),
        };
        let class = ARCHITECTURES.iter().find(|a| a.1 == model_type).map(|a| a.2).unwrap_or("LlamaForCausalLM");
        let vocab = self.vocab_size.unwrap_or(t.tokens.len() as u64);
        let mut c = Map::new();
        c.insert("architectures".into(), json!([class]));
        c.insert("model_type".into(), json!(model_type));
        c.insert("vocab_size".into(), json!(vocab));
        c.insert("hidden_size".into(), json!(self.embedding_length));
        c.insert("intermediate_size".into(), json!(self.feed_forward_length));
        c.insert("num_hidden_layers".into(), json!(self.block_count));
        c.insert("num_attention_heads".into(), json!(self.head_count));
        c.insert("num_key_value_heads".into(), json!(self.head_count_kv.unwrap_or(self.head_count)));
        if let Some(d) = self.head_dim() {
            c.insert("head_dim".into(), json!(d));
        }
        if let Some(n) = self.context_length {
            c.insert("max_position_embeddings".into(), json!(n));
        }
        // f32 in the file, as transformers reads it (9.999999747378752e-06).
        c.insert("rms_norm_eps".into(), json!(self.rms_norm_eps.unwrap_or(1e-6)));
        c.insert("rope_parameters".into(), json!({"rope_type": "default", "rope_theta": self.rope_freq_base.unwrap_or(10_000.0)}));
        c.insert("tie_word_embeddings".into(), json!(tied));
        c.insert("hidden_act".into(), json!(if self.architecture.norm_plus_one() { "gelu_pytorch_tanh" } else { "silu" }));
        if self.architecture.norm_plus_one() {
            c.insert("hidden_activation".into(), json!("gelu_pytorch_tanh"));
        }
        if matches!(self.architecture, Gemma2 | Gemma3) {
            c.insert("query_pre_attn_scalar".into(), json!(self.head_dim().unwrap_or(256)));
            for (key, v) in
                [("attn_logit_softcapping", self.attn_logit_softcapping), ("final_logit_softcapping", self.final_logit_softcapping)]
            {
                c.insert(key.into(), json!(v));
            }
        }
        if let Some(w) = self.sliding_window {
            c.insert("sliding_window".into(), json!(w));
        }
        for (key, id) in [("bos_token_id", t.bos), ("eos_token_id", t.eos), ("pad_token_id", t.pad)] {
            c.insert(key.into(), json!(id));
        }
        c.insert("torch_dtype".into(), json!("float32"));
        Json::Object(c)
    }

    /// `generation_config.json`: the BOS, EOS and padding ids.
    pub fn generation_config(&self) -> Json {
        let t = &self.tokenizer;
        json!({"bos_token_id": t.bos, "eos_token_id": t.eos, "pad_token_id": t.pad})
    }
}

fn read_tokenizer(k: &Keys<'_>) -> Result<GgufTokenizer, GgufError> {
    let int = |v: &Value| match v {
        Value::I32(n) => Some(*n),
        Value::U32(n) => i32::try_from(*n).ok(),
        Value::I8(n) => Some(i32::from(*n)),
        Value::U8(n) => Some(i32::from(*n)),
        _ => None,
    };
    let float = |v: &Value| match v {
        Value::F32(x) => Some(*x),
        Value::F64(x) => Some(*x as f32),
        _ => None,
    };
    Ok(GgufTokenizer {
        model: k.string("tokenizer.ggml.model")?.ok_or_else(|| k.err("tokenizer.ggml.model", "missing (required)"))?,
        pre: k.string("tokenizer.ggml.pre")?,
        tokens: k.strings("tokenizer.ggml.tokens")?.ok_or_else(|| k.err("tokenizer.ggml.tokens", "missing (required)"))?,
        scores: k.numbers("tokenizer.ggml.scores", float)?,
        token_type: k.numbers("tokenizer.ggml.token_type", int)?,
        merges: k.strings("tokenizer.ggml.merges")?,
        bos: k.id("tokenizer.ggml.bos_token_id")?,
        eos: k.id("tokenizer.ggml.eos_token_id")?,
        unk: k.id("tokenizer.ggml.unknown_token_id")?,
        pad: k.id("tokenizer.ggml.padding_token_id")?,
        add_bos: k.boolean("tokenizer.ggml.add_bos_token")?,
        add_eos: k.boolean("tokenizer.ggml.add_eos_token")?,
        chat_template: k.string("tokenizer.chat_template")?,
    })
}
