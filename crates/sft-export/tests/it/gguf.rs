//! GGUF export read back with candle's GGUF reader: metadata, tensor names and shapes,
//! values (exact for f32, within each block format's error for the quantized ones), the llama
//! Q/K permutation undone, LoRA GGUFs, and the bad-input cases (issue 23).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use sft_data::template::{Renderer, TemplateSettings};
use sft_export::gguf::{self, GgufError, ModelSource, OutType};
use sft_model::config::HfConfig;
use sft_model::lora::{LoraSettings, PeftConfig, Targets, ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use sft_model::model::{Model, Trainable};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A fresh scratch directory under target/.
fn scratch(name: &str) -> PathBuf {
    let dir = root().join("target/export-tests").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A random model of `family` (256 wide, so k-quant blocks fit) with the quickstart tokenizer.
fn tiny(name: &str, family: &str, extra: &str) -> PathBuf {
    let dir = scratch(name).join("model");
    std::fs::create_dir_all(&dir).expect("model dir");
    let mut config: serde_json::Value = serde_json::from_str(&format!(
        r#"{{"model_type": "{family}", "vocab_size": 832, "hidden_size": 256, "intermediate_size": 512,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "eos_token_id": 2,
            "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "initializer_range": 0.05}}"#
    ))
    .expect("base config");
    let extra: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&format!("{{{}}}", extra.trim_start_matches(','))).expect("extra keys");
    config.as_object_mut().expect("object").extend(extra);
    let config = config.to_string();
    std::fs::write(dir.join("config.json"), &config).expect("config");
    let raw: HfConfig = serde_json::from_str(&config).expect("config json");
    let resolved = raw.resolve(&dir.join("config.json")).expect("valid config");
    let model = Model::init(resolved, 7, &dir).expect("init");
    model.save_weights(&dir).expect("save");
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(root().join("examples/quickstart/tokenizer").join(f), dir.join(f)).expect("tokenizer");
    }
    dir
}

fn renderer(dir: &Path) -> Renderer {
    Renderer::new(Some(dir), &TemplateSettings::default().choice().expect("choice"), Default::default()).expect("renderer")
}

fn export(dir: &Path, adapter: Option<&Path>, outtype: OutType, out: &Path) -> Result<gguf::Exported, GgufError> {
    let r = renderer(dir);
    let src = ModelSource { model_dir: dir, adapter, tokenizer_dir: dir, renderer: &r, name: "tiny".into() };
    gguf::export_model(&src, outtype, out, false)
}

struct Read {
    content: Content,
    file: std::fs::File,
}

impl Read {
    fn open(path: &Path) -> Self {
        let mut file = std::fs::File::open(path).expect("open gguf");
        let content = Content::read(&mut file).expect("candle reads it");
        Read { content, file }
    }
    fn meta(&self, key: &str) -> &Value {
        self.content.metadata.get(key).unwrap_or_else(|| panic!("no {key}"))
    }
    fn u32(&self, key: &str) -> u32 {
        self.meta(key).to_u32().expect("u32")
    }
    fn string(&self, key: &str) -> String {
        self.meta(key).to_string().expect("string").clone()
    }
    fn dtype(&self, name: &str) -> GgmlDType {
        self.content.tensor_infos[name].ggml_dtype
    }
    fn tensor(&mut self, name: &str) -> Tensor {
        self.content.tensor(&mut self.file, name, &Device::Cpu).and_then(|q| q.dequantize(&Device::Cpu)).expect("tensor")
    }
}

/// The model's weights under HF names.
fn weights(dir: &Path) -> HashMap<String, Tensor> {
    let model = Model::load(dir, &Trainable::Full).expect("load");
    model.params().iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect()
}

/// llama.cpp's Q/K row order back to transformers': per head, rows (2i, 2i+1) -> (i, i + d/2).
fn unpermute(t: &Tensor, heads: usize) -> Tensor {
    let (rows, cols) = t.dims2().expect("matrix");
    t.reshape((heads, rows / heads / 2, 2, cols))
        .and_then(|t| t.transpose(1, 2))
        .and_then(|t| t.contiguous())
        .and_then(|t| t.reshape((rows, cols)))
        .expect("unpermute")
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).and_then(|d| d.abs()).and_then(|d| d.flatten_all()).and_then(|d| d.max(0)).and_then(|d| d.to_scalar::<f32>()).expect("diff")
}

/// Root-mean-square error relative to the tensor's RMS.
fn rel_rms(a: &Tensor, b: &Tensor) -> f32 {
    let rms = |t: &Tensor| t.sqr().and_then(|t| t.mean_all()).and_then(|t| t.to_scalar::<f32>()).expect("rms").sqrt();
    rms(&(a - b).expect("diff")) / rms(b)
}

#[test]
fn f32_llama_export_has_llama_cpp_names_metadata_and_exact_values() {
    let dir = tiny("f32-llama", "llama", r#", "tie_word_embeddings": false"#);
    let out = dir.with_file_name("model.gguf");
    let exported = export(&dir, None, OutType::F32, &out).expect("export");
    assert_eq!(exported.types.get("F32"), Some(&21), "{:?}", exported.types);
    let mut g = Read::open(&out);
    assert_eq!(g.string("general.architecture"), "llama");
    assert_eq!(g.u32("general.file_type"), 0);
    for (key, v) in [("llama.block_count", 2), ("llama.embedding_length", 256), ("llama.feed_forward_length", 512)] {
        assert_eq!(g.u32(key), v, "{key}");
    }
    assert_eq!((g.u32("llama.attention.head_count"), g.u32("llama.attention.head_count_kv")), (4, 2));
    assert_eq!((g.u32("llama.rope.dimension_count"), g.u32("llama.context_length"), g.u32("llama.vocab_size")), (64, 512, 832));
    assert_eq!(g.meta("llama.attention.layer_norm_rms_epsilon").to_f32().expect("f32"), 1e-5);
    assert_eq!(g.string("tokenizer.ggml.model"), "gpt2");
    let tokens = g.meta("tokenizer.ggml.tokens").to_vec().expect("tokens");
    assert_eq!(tokens.len(), 832, "one per embedding row");
    assert_eq!(tokens[2].to_string().expect("text"), "<|im_end|>");
    assert_eq!(tokens[831].to_string().expect("text"), "[PAD831]");
    let types = g.meta("tokenizer.ggml.token_type").to_vec().expect("types");
    assert_eq!((types[2].to_i32().expect("i32"), types[100].to_i32().expect("i32"), types[831].to_i32().expect("i32")), (3, 1, 5));
    assert_eq!(g.u32("tokenizer.ggml.eos_token_id"), 2);
    assert_eq!(g.u32("tokenizer.ggml.padding_token_id"), 0);
    assert!(!g.meta("tokenizer.ggml.add_bos_token").to_bool().expect("bool"));
    assert!(!g.meta("tokenizer.ggml.merges").to_vec().expect("merges").is_empty());
    let template = std::fs::read_to_string(dir.join("tokenizer_config.json")).expect("config");
    let template: serde_json::Value = serde_json::from_str(&template).expect("json");
    assert_eq!(g.string("tokenizer.chat_template"), template["chat_template"].as_str().expect("template"));

    let hf = weights(&dir);
    let infos: Vec<String> = {
        let mut v: Vec<String> = g.content.tensor_infos.keys().cloned().collect();
        v.sort();
        v
    };
    assert!(infos.contains(&"output.weight".to_string()) && infos.contains(&"blk.1.ffn_down.weight".to_string()), "{infos:?}");
    assert_eq!(g.content.tensor_infos["blk.0.attn_k.weight"].shape.dims(), &[128, 256]);
    for (gguf_name, hf_name, heads) in [
        ("token_embd.weight", "model.embed_tokens.weight", 0),
        ("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight", 4),
        ("blk.1.attn_k.weight", "model.layers.1.self_attn.k_proj.weight", 2),
        ("blk.1.attn_v.weight", "model.layers.1.self_attn.v_proj.weight", 0),
        ("blk.0.ffn_norm.weight", "model.layers.0.post_attention_layernorm.weight", 0),
        ("output.weight", "lm_head.weight", 0),
    ] {
        let t = g.tensor(gguf_name);
        let t = if heads > 0 { unpermute(&t, heads) } else { t };
        assert_eq!(max_diff(&t, &hf[hf_name]), 0.0, "{gguf_name}");
    }
    // Without the permutation undone, Q differs: the layout change is real.
    assert!(max_diff(&g.tensor("blk.0.attn_q.weight"), &hf["model.layers.0.self_attn.q_proj.weight"]) > 0.0);
}

#[test]
fn qwen_families_keep_q_and_k_rows_and_write_their_biases_and_norms() {
    let dir = tiny("f32-qwen3", "qwen3", r#", "head_dim": 64, "rope_theta": 1000000.0"#);
    let out = dir.with_file_name("model.gguf");
    export(&dir, None, OutType::F32, &out).expect("export");
    let mut g = Read::open(&out);
    assert_eq!(g.string("general.architecture"), "qwen3");
    assert_eq!(g.meta("qwen3.rope.freq_base").to_f32().expect("f32"), 1e6);
    assert_eq!(g.u32("qwen3.attention.key_length"), 64);
    assert!(g.content.tensor_infos.contains_key("output.weight"), "not tied");
    let hf = weights(&dir);
    assert_eq!(max_diff(&g.tensor("blk.0.attn_q.weight"), &hf["model.layers.0.self_attn.q_proj.weight"]), 0.0);
    assert_eq!(max_diff(&g.tensor("blk.1.attn_k_norm.weight"), &hf["model.layers.1.self_attn.k_norm.weight"]), 0.0);

    let dir = tiny("f32-qwen2", "qwen2", "");
    let out = dir.with_file_name("model.gguf");
    export(&dir, None, OutType::F32, &out).expect("export");
    let mut g = Read::open(&out);
    assert_eq!(g.string("general.architecture"), "qwen2");
    let hf = weights(&dir);
    assert_eq!(max_diff(&g.tensor("blk.0.attn_v.bias"), &hf["model.layers.0.self_attn.v_proj.bias"]), 0.0);
}

#[test]
fn gemma_norms_are_stored_with_the_one_added_and_llama3_rope_scaling_as_factors() {
    let dir = tiny("f32-gemma2", "gemma2", r#", "head_dim": 64, "sliding_window": 64, "query_pre_attn_scalar": 64"#);
    let out = dir.with_file_name("model.gguf");
    export(&dir, None, OutType::F32, &out).expect("export");
    let mut g = Read::open(&out);
    assert_eq!(g.string("general.architecture"), "gemma2");
    assert_eq!(g.u32("gemma2.attention.sliding_window"), 64);
    let hf = weights(&dir);
    let plus_one = hf["model.layers.0.post_feedforward_layernorm.weight"].affine(1.0, 1.0).expect("add");
    assert_eq!(max_diff(&g.tensor("blk.0.post_ffw_norm.weight"), &plus_one), 0.0);

    let scaling = r#", "rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64}"#;
    let dir = tiny("f32-llama3", "llama", scaling);
    let out = dir.with_file_name("model.gguf");
    export(&dir, None, OutType::F32, &out).expect("export");
    let mut g = Read::open(&out);
    let factors = g.tensor("rope_freqs.weight").to_vec1::<f32>().expect("factors");
    assert_eq!(factors.len(), 32);
    // Short wavelengths kept (1), long ones divided by the factor (8), a smooth ramp between.
    assert_eq!((factors[0], factors[31]), (1.0, 8.0));
    assert!(factors.windows(2).all(|w| w[0] <= w[1]), "{factors:?}");
    // llama.cpp divides the frequencies by them: the result is the config's scaled inv_freq.
    let config = sft_model::config::ModelConfig::from_dir(&dir).expect("config");
    for (i, f) in factors.iter().enumerate() {
        let base = 1.0 / 500000f32.powf((2 * i) as f32 / 64.0);
        let want = config.layers[0].rope.inv_freq[i];
        assert!((base / f - want).abs() <= 1e-6 * want.abs().max(1e-30) + 1e-12, "pair {i}: {} vs {want}", base / f);
    }
}

#[test]
fn quantized_outtypes_follow_llama_cpp_types_and_stay_close() {
    let dir = tiny("quant-llama", "llama", r#", "tie_word_embeddings": true"#);
    let hf = weights(&dir);
    let q_name = "model.layers.0.self_attn.q_proj.weight";
    for (outtype, file_type, q_type, down1, embd, tol) in [
        (OutType::F16, 1, GgmlDType::F16, GgmlDType::F16, GgmlDType::F16, 1e-3),
        (OutType::Bf16, 32, GgmlDType::BF16, GgmlDType::BF16, GgmlDType::BF16, 5e-3),
        (OutType::Q8_0, 7, GgmlDType::Q8_0, GgmlDType::Q8_0, GgmlDType::Q8_0, 1e-2),
        // Two layers: use_more_bits picks layer 1's ffn_down and attn_v (the last eighth), not
        // layer 0's; the tied embedding is the output, in Q6_K.
        (OutType::Q4KM, 15, GgmlDType::Q4K, GgmlDType::Q6K, GgmlDType::Q6K, 0.15),
    ] {
        let out = dir.with_file_name(format!("model-{file_type}.gguf"));
        export(&dir, None, outtype, &out).expect("export");
        let mut g = Read::open(&out);
        assert_eq!(g.u32("general.file_type"), file_type);
        assert_eq!(g.dtype("blk.0.attn_q.weight"), q_type, "{outtype:?}");
        assert_eq!(g.dtype("blk.1.ffn_down.weight"), down1, "{outtype:?}");
        assert_eq!(g.dtype("blk.1.attn_v.weight"), down1, "{outtype:?}");
        assert_eq!(g.dtype("blk.0.ffn_down.weight"), q_type, "{outtype:?}");
        assert_eq!(g.dtype("token_embd.weight"), embd, "{outtype:?}");
        assert_eq!(g.dtype("blk.0.attn_norm.weight"), GgmlDType::F32, "{outtype:?}");
        let q = unpermute(&g.tensor("blk.0.attn_q.weight"), 4);
        let err = rel_rms(&q, &hf[q_name]);
        assert!(err < tol && err > 0.0, "{outtype:?}: relative error {err}");
    }
}

#[test]
fn ffn_rows_that_do_not_fit_a_k_block_fall_back_as_llama_quantize_does() {
    // intermediate 288: ffn_down's rows hold 288 values (not a multiple of 256; a multiple of 32).
    let dir = tiny("quant-fallback", "qwen2", r#", "intermediate_size": 288"#);
    let out = dir.with_file_name("model.gguf");
    let exported = export(&dir, None, OutType::Q4KM, &out).expect("export");
    let g = Read::open(&out);
    assert_eq!(g.dtype("blk.0.ffn_down.weight"), GgmlDType::Q5_0, "Q4_K falls back to Q5_0: {:?}", exported.types);
    assert_eq!(g.dtype("blk.1.ffn_down.weight"), GgmlDType::Q8_0, "Q6_K falls back to Q8_0: {:?}", exported.types);
    assert_eq!(g.dtype("blk.0.ffn_up.weight"), GgmlDType::Q4K, "rows of 256");
}

/// A random PEFT adapter on q_proj and v_proj of `dir`'s model (r = 4, alpha = 8).
fn adapter(dir: &Path, rslora: bool) -> PathBuf {
    let out = dir.with_file_name(if rslora { "adapter-rs" } else { "adapter" });
    std::fs::create_dir_all(&out).expect("adapter dir");
    let config = sft_model::config::ModelConfig::from_dir(dir).expect("config");
    let settings = LoraSettings {
        r: 4,
        alpha: 8.0,
        use_rslora: rslora,
        dropout: 0.0,
        targets: Targets::Names(vec!["q_proj".into(), "v_proj".into()]),
        use_dora: false,
        modules_to_save: vec![],
    };
    std::fs::write(
        out.join(ADAPTER_CONFIG),
        PeftConfig::for_adapter(&settings, vec!["q_proj".into(), "v_proj".into()], dir.display().to_string(), None).to_json(),
    )
    .expect("adapter config");
    let mut tensors = HashMap::new();
    for i in 0..config.layers.len() {
        for (m, rows) in [("q_proj", config.num_heads * config.head_dim), ("v_proj", config.num_kv_heads * config.head_dim)] {
            let module = format!("model.layers.{i}.self_attn.{m}");
            let (a, b) = sft_model::lora::peft_names(&module);
            let seed = (i * 2 + rows) as f64;
            tensors.insert(
                a,
                Tensor::randn(0f32, 0.05, (4, config.hidden_size), &Device::Cpu).and_then(|t| t.affine(1.0, seed * 1e-4)).expect("a"),
            );
            tensors.insert(b, Tensor::randn(0f32, 0.05, (rows, 4), &Device::Cpu).expect("b"));
        }
    }
    candle_core::safetensors::save(&tensors, out.join(ADAPTER_WEIGHTS)).expect("adapter weights");
    out
}

#[test]
fn a_merged_adapter_is_in_the_weights_and_an_adapter_gguf_is_llama_cpps_lora_format() {
    let dir = tiny("lora-llama", "llama", "");
    let adapter_dir = adapter(&dir, false);
    let out = dir.with_file_name("merged.gguf");
    export(&dir, Some(&adapter_dir), OutType::F32, &out).expect("export merged");
    let mut merged = Read::open(&out);
    let expected = Model::merged(&dir, &adapter_dir).expect("merge");
    let want: HashMap<String, Tensor> = expected.params().iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
    let q = unpermute(&merged.tensor("blk.1.attn_q.weight"), 4);
    assert_eq!(max_diff(&q, &want["model.layers.1.self_attn.q_proj.weight"]), 0.0);
    assert!(max_diff(&q, &weights(&dir)["model.layers.1.self_attn.q_proj.weight"]) > 0.0, "the adapter changed it");

    for (rslora, alpha) in [(false, 8.0f32), (true, 16.0)] {
        let adapter_dir = adapter(&dir, rslora);
        let out = dir.with_file_name(format!("lora-{rslora}.gguf"));
        gguf::export_adapter(&dir, &adapter_dir, OutType::F32, &out, false).expect("export adapter");
        let mut g = Read::open(&out);
        assert_eq!(g.string("general.type"), "adapter");
        assert_eq!(g.string("adapter.type"), "lora");
        assert_eq!(g.string("general.architecture"), "llama");
        // llama.cpp scales by alpha / r: rsLoRA's alpha / sqrt(r) is written as alpha * sqrt(r).
        assert_eq!(g.meta("adapter.lora.alpha").to_f32().expect("f32"), alpha);
        assert_eq!(g.content.tensor_infos.len(), 8);
        // ne = [in, r] and [r, out]: candle reads them back as [r, in] and [out, r].
        assert_eq!(g.content.tensor_infos["blk.0.attn_q.weight.lora_a"].shape.dims(), &[4, 256]);
        assert_eq!(g.content.tensor_infos["blk.0.attn_v.weight.lora_b"].shape.dims(), &[128, 4]);
        // B * A with B's rows back in transformers' order is the PEFT delta.
        let adapter_w = candle_core::safetensors::load(adapter_dir.join(ADAPTER_WEIGHTS), &Device::Cpu).expect("adapter");
        let (a_name, b_name) = sft_model::lora::peft_names("model.layers.0.self_attn.q_proj");
        let b = unpermute(&g.tensor("blk.0.attn_q.weight.lora_b"), 4);
        assert_eq!(max_diff(&b, &adapter_w[&b_name]), 0.0);
        assert_eq!(max_diff(&g.tensor("blk.0.attn_q.weight.lora_a"), &adapter_w[&a_name]), 0.0);
    }
}

#[test]
fn bad_inputs_are_refused_without_touching_files() {
    let dir = tiny("bad", "llama", "");
    let out = dir.with_file_name("model.gguf");
    std::fs::write(&out, b"mine").expect("existing");
    let e = export(&dir, None, OutType::F16, &out).expect_err("exists");
    assert!(matches!(e, GgufError::Exists { .. }) && e.to_string().contains("--force"), "{e}");
    assert_eq!(std::fs::read(&out).expect("kept"), b"mine");

    // An adapter for another model fails after loading: no file, no partial file left.
    let other = tiny("bad-other", "llama", r#", "hidden_size": 512"#);
    let wrong = adapter(&other, false);
    let fresh = dir.with_file_name("fresh.gguf");
    let e = export(&dir, Some(&wrong), OutType::F16, &fresh).expect_err("wrong adapter");
    assert!(e.to_string().contains("bad-other"), "{e}");
    let left: Vec<_> =
        std::fs::read_dir(dir.parent().expect("parent")).expect("list").filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    assert!(!left.iter().any(|n| n.to_string_lossy().contains("fresh")), "{left:?}");

    let e = gguf::export_adapter(&dir, &adapter(&dir, false), OutType::Q4KM, &fresh, false).expect_err("q4_k_m adapter");
    assert!(e.to_string().contains("f32, f16, bf16 or q8_0"), "{e}");
    // A DoRA adapter has no llama.cpp LoRA form (its merge does).
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/model");
    let dora = fixtures.join("dora/llama/adapter");
    let e = gguf::export_adapter(&fixtures.join("llama"), &dora, OutType::F32, &fresh, false).expect_err("DoRA adapter");
    assert!(e.to_string().contains("use_dora") && e.to_string().contains("merged"), "{e}");
    assert!(!fresh.exists());

    // A RoPE scaling llama.cpp's keys are not written for is refused, not exported as plain RoPE.
    let yarn = tiny("bad-yarn", "llama", r#", "rope_scaling": {"type": "yarn", "factor": 4.0}"#);
    let e = export(&yarn, None, OutType::F16, &fresh).expect_err("yarn");
    assert!(e.to_string().contains("rope_type \"yarn\": the GGUF export writes only default, linear and llama3"), "{e}");
    assert!(!fresh.exists());

    std::fs::write(dir.join("config.json"), r#"{"model_type": "gpt2", "vocab_size": 832}"#).expect("config");
    let e = export(&dir, None, OutType::F16, &fresh).expect_err("unsupported");
    assert!(e.to_string().contains("\"gpt2\"") && e.to_string().contains("llama, mistral, qwen2, qwen3"), "{e}");
}

/// llama.cpp picks its pre-tokenizer by the hash of the check text's ids: ours (tokenizers
/// crate) must equal the ids transformers gave when llama.cpp recorded the hash.
#[test]
fn real_tokenizers_get_the_pre_tokenizer_llama_cpp_records_for_them() {
    for (dir, vocab_size, pre, model) in [
        ("llama3_2", 128256, "llama-bpe", "gpt2"),
        ("qwen2_5", 151936, "qwen2", "gpt2"),
        ("qwen3", 151936, "qwen2", "gpt2"),
        ("llama2", 32000, "default", "llama"),
    ] {
        let path = root().join("assets/tokenizers").join(dir);
        let specials = gguf::Specials { eos: Some("<|im_end|>".into()), ..Default::default() };
        let v = gguf::vocab::vocab(&path, vocab_size, &specials).expect("vocab");
        let get = |k: &str| v.metadata.iter().find(|(key, _)| key == k).map(|(_, v)| v.to_string().expect("string").clone());
        assert_eq!(get("tokenizer.ggml.pre").as_deref(), Some(pre), "{dir}");
        assert_eq!(get("tokenizer.ggml.model").as_deref(), Some(model), "{dir}");
        assert!(v.warnings.iter().all(|w| !w.contains("pre-tokenizer")), "{dir}: {:?}", v.warnings);
    }
}
