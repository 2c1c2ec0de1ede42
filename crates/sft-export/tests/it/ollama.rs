//! Every built-in template's Ollama form, rendered by Go's own text/template as Ollama runs it
//! (tests/it/render.go), equals our Jinja render with `add_generation_prompt` on 20
//! conversations, less the BOS llama.cpp puts in front itself. Skipped, with a message, where
//! Go is not installed (CI installs Debian's golang-go).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::json;
use sft_data::conversation::{Conversation, Message, RowRef};
use sft_data::template::{Renderer, TemplateChoice};
use sft_export::ollama::{families, family_of, go_template, Modelfile};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// 20 conversations ending in a user turn: with and without a system prompt, one to four
/// user turns, Unicode, quotes and inner newlines (no surrounding whitespace: see the trim
/// warning).
fn conversations() -> Vec<Vec<(&'static str, String)>> {
    let texts = [
        "Hello!",
        "Was ist 2+2?",
        "Écris «bonjour»\nsur deux lignes.",
        "東京はどこ？",
        "Say \"hi\" & <b>bye</b>",
        "a {{ .Role }} b",
        "🎉 ok",
    ];
    let answers = ["Four.", "Tokyo is in Japan.", "Bonjour\nbonjour", "It's fine.", "{\"a\": 1}"];
    let mut out = vec![];
    for i in 0..20 {
        let mut turns = vec![];
        if i % 2 == 1 {
            turns.push(("system", format!("You are terse, case {i}.")));
        }
        for t in 0..=(i % 4) {
            if t > 0 {
                turns.push(("assistant", answers[(i + t) % answers.len()].to_string()));
            }
            turns.push(("user", texts[(i * 3 + t) % texts.len()].to_string()));
        }
        out.push(turns);
    }
    out
}

fn conversation(turns: &[(&str, String)]) -> Conversation {
    Conversation {
        source: RowRef { file: "ollama".into(), row: 1 },
        messages: turns.iter().map(|(r, c)| Message::text(r, c)).collect(),
        tools: None,
        documents: None,
        shape: sft_data::conversation::Shape::Chat,
    }
}

/// Go's renders of `template` on `cases`, or None without Go.
fn go_render(template: &str, cases: &[Vec<(&str, String)>]) -> Option<Vec<String>> {
    let go = Command::new("go").arg("version").output().ok().filter(|o| o.status.success());
    go.as_ref()?;
    let input = json!({
        "template": template,
        "cases": cases.iter().map(|c| json!({"messages": c.iter().map(|(r, t)| json!({"role": r, "content": t})).collect::<Vec<_>>()})).collect::<Vec<_>>(),
    });
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/render.go");
    let cache = root().join("target/go-cache");
    let mut child = Command::new("go")
        .args(["run", script.to_str().unwrap()])
        .env("GOCACHE", &cache)
        .env("GOFLAGS", "-mod=mod")
        .env("GO111MODULE", "off")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("go run");
    child.stdin.take().unwrap().write_all(input.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "go: {}", String::from_utf8_lossy(&out.stderr));
    Some(serde_json::from_slice::<Vec<String>>(&out.stdout).expect("go output"))
}

#[test]
fn every_builtin_renders_in_go_as_our_jinja_does() {
    let tokenizer = root().join("assets/tokenizers/llama2");
    let cases = conversations();
    let mut failures = vec![];
    let mut checked = 0;
    for family in families() {
        let choice = TemplateChoice { template: Some(family.into()), ..TemplateChoice::default() };
        let renderer = Renderer::new(Some(&tokenizer), &choice, Default::default()).expect("renderer");
        let vars = renderer.template_vars();
        let (bos, eos) = (vars["bos_token"].as_str().unwrap(), vars["eos_token"].as_str().unwrap());
        let go = go_template(family, bos, eos).expect("every built-in has one");
        let Some(rendered) = go_render(&go.source, &cases) else {
            eprintln!("skipped: Go is not installed (apt-get install golang-go), so the Ollama templates were not rendered");
            return;
        };
        for (turns, got) in cases.iter().zip(&rendered) {
            let jinja = renderer.render(&conversation(turns), true, false).expect("jinja").text;
            let want = match go.bos_first {
                true => jinja.strip_prefix(bos).unwrap_or_else(|| panic!("{family}: the Jinja render starts with the BOS")).to_string(),
                false => jinja,
            };
            checked += 1;
            if *got != want {
                failures.push(format!("{family} on {turns:?}:\n  go:    {got:?}\n  jinja: {want:?}"));
            }
        }
    }
    assert_eq!(checked, 20 * families().len());
    assert!(failures.is_empty(), "{} of {checked} renders differ:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn the_modelfile_names_the_template_stop_tokens_and_default_system() {
    let tokenizer = root().join("assets/tokenizers/qwen2_5");
    let choice = TemplateChoice { template: Some("qwen-2.5".into()), ..TemplateChoice::default() };
    let renderer = Renderer::new(Some(&tokenizer), &choice, Default::default()).expect("renderer");
    let file = Modelfile::for_model(&renderer, "./model.gguf", Some(&tokenizer)).expect("modelfile");
    let text = file.text();
    assert!(text.contains("FROM ./model.gguf\nTEMPLATE \"\"\""), "{text}");
    assert!(text.contains("SYSTEM \"\"\"You are Qwen, created by Alibaba Cloud. You are a helpful assistant.\"\"\""), "{text}");
    assert!(text.contains("PARAMETER stop \"<|im_end|>\""), "{text}");
    let stops: Vec<&str> = text.lines().filter(|l| l.starts_with("PARAMETER stop")).collect();
    assert_eq!(stops.len(), file.stop.len());
    // A tokenizer's own template that renders like one of ours gets that family's template.
    for (name, family) in [("qwen2_5", "qwen-2.5"), ("llama3", "llama-3")] {
        let dir = root().join("assets/tokenizers").join(name);
        let own = Renderer::new(Some(&dir), &TemplateChoice::default(), Default::default()).expect("renderer");
        assert_eq!(family_of(&own, Some(&dir)).expect("probe"), Some(family), "{name}");
    }
    // A template of no known family: no TEMPLATE, and a warning saying so.
    let dir = std::env::temp_dir().join(format!("sft-ollama-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("t.jinja"), "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}").unwrap();
    let choice = TemplateChoice { template: Some(dir.join("t.jinja").display().to_string()), ..TemplateChoice::default() };
    let renderer = Renderer::new(Some(&tokenizer), &choice, Default::default()).expect("renderer");
    let file = Modelfile::for_model(&renderer, "./m.gguf", Some(&tokenizer)).expect("modelfile");
    assert!(file.template.is_none());
    assert!(file.warnings[0].contains("renders like none of the built-in templates"), "{:?}", file.warnings);
    assert!(!file.text().contains("TEMPLATE"));
    std::fs::remove_dir_all(&dir).unwrap();
}
