//! The built-in named templates render exactly what the real model templates render, on the
//! parity fixture's conversations (those within each built-in's scope), so `--chat-template
//! qwen-2.5` is interchangeable with Qwen2.5's own tokenizer template.

use crate::common::{assets, fixture};

use serde_json::Value;
use sft_data::template::{special_tokens, ChatTemplate, Clock, RenderArgs, BUILTINS};

fn conversations() -> Vec<Value> {
    fixture("render/render_parity.json")["conversations"].as_array().unwrap().clone()
}

fn builtin(name: &str) -> ChatTemplate {
    let b = BUILTINS.iter().find(|b| b.name == name).unwrap();
    ChatTemplate::new(b.name, b.source, Clock::System).unwrap()
}

/// Renders every conversation accepted by `filter` with both templates and both
/// add_generation_prompt values; returns how many renders were compared.
fn compare(ours: &ChatTemplate, reference_src: &str, tokenizer: &str, filter: impl Fn(&Value) -> bool) -> usize {
    compare_agp(ours, reference_src, tokenizer, filter, &[false, true])
}

fn compare_agp(ours: &ChatTemplate, reference_src: &str, tokenizer: &str, filter: impl Fn(&Value) -> bool, agps: &[bool]) -> usize {
    let reference = ChatTemplate::new("reference", reference_src, Clock::System).unwrap();
    let vars = special_tokens(&assets().join("tokenizers").join(tokenizer)).unwrap();
    let mut compared = 0;
    for conv in conversations().iter().filter(|c| filter(c) && c.get("continue_final_message").is_none_or(|v| v == false)) {
        for &agp in agps {
            let args = RenderArgs { add_generation_prompt: agp, template_vars: vars.clone(), ..Default::default() };
            let msgs = conv["messages"].as_array().unwrap();
            let tools = conv.get("tools").filter(|t| !t.is_null());
            let want = reference.render_messages(msgs, tools, None, &args);
            let got = ours.render_messages(msgs, tools, None, &args);
            match (want, got) {
                (Ok(w), Ok(g)) => assert_eq!(g.text, w.text, "{} on {} (agp={agp})", ours.name(), conv["id"]),
                (Err(_), Err(_)) => {}
                (w, g) => panic!("{} on {} (agp={agp}): reference {w:?}, ours {g:?}", ours.name(), conv["id"]),
            }
            compared += 1;
        }
    }
    compared
}

fn plain(conv: &Value) -> bool {
    conv.get("tools").is_none_or(Value::is_null)
        && conv["messages"].as_array().unwrap().iter().all(|m| {
            m["content"].is_string() && matches!(m["role"].as_str(), Some("system" | "user" | "assistant")) && m.get("tool_calls").is_none()
        })
}

fn trl(name: &str) -> String {
    std::fs::read_to_string(assets().join("trl_chat_templates").join(name)).unwrap()
}

fn tokenizer_template(name: &str) -> String {
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(assets().join("tokenizers").join(name).join("tokenizer_config.json")).unwrap())
            .unwrap();
    cfg["chat_template"].as_str().unwrap().to_string()
}

#[test]
fn qwen_2_5_equals_qwen2_5_tokenizer_template_including_tools() {
    let n = compare(&builtin("qwen-2.5"), &tokenizer_template("qwen2_5"), "qwen2_5", |c| {
        c["messages"].as_array().unwrap().iter().all(|m| m["content"].is_string() || m.get("content").is_none())
    });
    assert!(n >= 20, "compared {n}");
}

#[test]
fn llama_3_equals_llama3_tokenizer_template() {
    // The original Llama 3 template appends the assistant header even when
    // add_generation_prompt is false (a bug Meta fixed later); ours adds it only when asked, so
    // compare the prompts that ask for it.
    assert!(compare_agp(&builtin("llama-3"), &tokenizer_template("llama3"), "llama3", plain, &[true]) >= 5);
}

#[test]
fn gemma_equals_gemma3_template_on_text_conversations() {
    assert!(compare(&builtin("gemma"), &trl("gemma3.jinja"), "gemma3", plain) >= 10);
}

#[test]
fn phi_3_equals_trl_phi3_template() {
    assert!(compare(&builtin("phi-3"), &trl("phi3.jinja"), "qwen2_5", plain) >= 10);
}

#[test]
fn every_builtin_renders_a_plain_conversation() {
    let msgs = vec![
        serde_json::json!({"role": "system", "content": "Be brief."}),
        serde_json::json!({"role": "user", "content": "Hi"}),
        serde_json::json!({"role": "assistant", "content": "Hello!"}),
    ];
    let mut args = RenderArgs::default();
    args.template_vars.insert("bos_token".into(), "<s>".into());
    args.template_vars.insert("eos_token".into(), "</s>".into());
    for b in BUILTINS {
        let t = ChatTemplate::new(b.name, b.source, Clock::System).unwrap();
        let r = t.render_messages(&msgs, None, None, &args).unwrap_or_else(|e| panic!("{}: {e}", b.name));
        assert!(r.text.contains("Hello!") && r.text.contains("Hi"), "{}: {}", b.name, r.text);
    }
}
