//! Ollama's `Modelfile` for an exported GGUF: `FROM` the file, `TEMPLATE` in Go's
//! `text/template` as Ollama runs it, `SYSTEM` for a template's default system prompt, and a
//! `PARAMETER stop` for every end-of-turn token.
//!
//! Ollama renders a chat with the template's `.Messages` (consecutive messages of one role
//! merged, system messages included) and then lets the model continue, so a template here
//! renders every message and then the assistant header: what our Jinja template renders with
//! `add_generation_prompt` for a conversation that ends in a user message. llama.cpp puts the
//! BOS in front of the prompt itself (`tokenizer.ggml.add_bos_token`), so a template whose Jinja
//! form writes the BOS first leaves it out here ([`GoTemplate::bos_first`]).
//!
//! The Go templates are written by hand per template family (Ollama's language has no
//! filters, so nothing could translate Jinja mechanically); every built-in has one, and a
//! model's own template gets the one of the built-in it renders like. Where a template does what
//! Ollama's language cannot (Jinja's `trim`, tool definitions as Python's `json.dumps` writes
//! them), [`Modelfile::warnings`] says so; a template of no known family gets no `TEMPLATE` and
//! a warning, never a wrong one.

use sft_data::conversation::{Conversation, Message, RowRef};
use sft_data::template::{Renderer, TemplateChoice, TemplateError, BUILTINS};

/// A chat template in Ollama's Go template language.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoTemplate {
    /// The built-in family it is written for.
    pub family: &'static str,
    /// The template source.
    pub source: String,
    /// The Jinja form writes the BOS first; this one leaves it to llama.cpp.
    pub bos_first: bool,
    /// The template's default system prompt, if it has one.
    pub default_system: Option<&'static str>,
    /// The Jinja form trims message content (Ollama's language cannot).
    pub trims: bool,
}

/// What a family writes besides its messages.
struct Family {
    name: &'static str,
    bos_first: bool,
    default_system: Option<&'static str>,
    trims: bool,
    /// The template source for this BOS and EOS text.
    source: fn(bos: &str, eos: &str) -> String,
}

const QWEN_SYSTEM: &str = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";
const VICUNA_SYSTEM: &str =
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.";
const ALPACA_SYSTEM: &str = "Below is an instruction that describes a task. Write a response that appropriately completes the request.";

/// Go statements that read a leading system message into `$sys` (and `$has`), so templates can
/// place it as the Jinja forms do (they all take only `messages[0]` as the system prompt).
const READ_SYSTEM: &str = r#"{{ $has := false }}{{ range $i, $m := .Messages }}{{ if and (eq $i 0) (eq .Role "system") }}{{ $sys = .Content }}{{ $has = true }}{{ end }}{{ end }}"#;

/// `{{ $sys := "<text>" }}` with `text` as a Go string literal.
fn system_var(text: &str) -> String {
    format!("{{{{ $sys := {} }}}}", serde_json::Value::String(text.into()))
}

const FAMILIES: &[Family] = &[
    Family {
        name: "chatml",
        bos_first: false,
        default_system: None,
        trims: false,
        source: |_, _| "{{ range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n".into(),
    },
    Family {
        name: "llama-3",
        bos_first: true,
        default_system: None,
        trims: true,
        source: |_, _| {
            "{{ range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n".into()
        },
    },
    Family {
        name: "llama-2",
        bos_first: true,
        default_system: None,
        trims: true,
        source: |bos, eos| {
            format!(
                r#"{sys}{READ_SYSTEM}{{{{ $first := true }}}}{{{{ range $i, $m := .Messages }}}}{{{{ if and (eq $i 0) (eq .Role "system") }}}}{{{{ else if eq .Role "user" }}}}{{{{ if not $first }}}}{bos}{{{{ end }}}}[INST] {{{{ if and $first $has }}}}<<SYS>>
{{{{ $sys }}}}
<</SYS>>

{{{{ end }}}}{{{{ .Content }}}} [/INST]{{{{ $first = false }}}}{{{{ else }}}} {{{{ .Content }}}} {eos}{{{{ end }}}}{{{{ end }}}}"#,
                sys = system_var("")
            )
        },
    },
    Family {
        name: "mistral",
        bos_first: true,
        default_system: None,
        trims: false,
        source: |_, eos| {
            format!(
                r#"{sys}{READ_SYSTEM}{{{{ $first := true }}}}{{{{ range $i, $m := .Messages }}}}{{{{ if and (eq $i 0) (eq .Role "system") }}}}{{{{ else if eq .Role "user" }}}}[INST] {{{{ if and $first $has }}}}{{{{ $sys }}}}

{{{{ end }}}}{{{{ .Content }}}} [/INST]{{{{ $first = false }}}}{{{{ else }}}}{{{{ .Content }}}}{eos}{{{{ end }}}}{{{{ end }}}}"#,
                sys = system_var("")
            )
        },
    },
    Family {
        name: "gemma",
        bos_first: true,
        default_system: None,
        trims: true,
        source: |_, _| {
            format!(
                r#"{sys}{READ_SYSTEM}{{{{ $first := true }}}}{{{{ range $i, $m := .Messages }}}}{{{{ if and (eq $i 0) (eq .Role "system") }}}}{{{{ else }}}}<start_of_turn>{{{{ if eq .Role "assistant" }}}}model{{{{ else }}}}{{{{ .Role }}}}{{{{ end }}}}
{{{{ if and $first $has }}}}{{{{ $sys }}}}

{{{{ end }}}}{{{{ .Content }}}}<end_of_turn>
{{{{ $first = false }}}}{{{{ end }}}}{{{{ end }}}}<start_of_turn>model
"#,
                sys = system_var("")
            )
        },
    },
    Family {
        name: "phi-3",
        bos_first: false,
        default_system: None,
        trims: false,
        source: |_, _| "{{ range .Messages }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}<|assistant|>\n".into(),
    },
    Family {
        name: "qwen-2.5",
        bos_first: false,
        default_system: Some(QWEN_SYSTEM),
        trims: false,
        source: |_, _| {
            format!(
                r#"{sys}{READ_SYSTEM}<|im_start|>system
{{{{ $sys }}}}<|im_end|>
{{{{ range $i, $m := .Messages }}}}{{{{ if not (and (eq $i 0) (eq .Role "system")) }}}}<|im_start|>{{{{ .Role }}}}
{{{{ .Content }}}}<|im_end|>
{{{{ end }}}}{{{{ end }}}}<|im_start|>assistant
"#,
                sys = system_var(QWEN_SYSTEM)
            )
        },
    },
    Family {
        name: "zephyr",
        bos_first: false,
        default_system: None,
        trims: false,
        source: |_, eos| format!("{{{{ range .Messages }}}}<|{{{{ .Role }}}}|>\n{{{{ .Content }}}}{eos}\n{{{{ end }}}}<|assistant|>\n"),
    },
    Family {
        name: "vicuna",
        bos_first: false,
        default_system: Some(VICUNA_SYSTEM),
        trims: false,
        source: |_, eos| {
            format!(
                r#"{sys}{READ_SYSTEM}{{{{ $sys }}}}{{{{ range $i, $m := .Messages }}}}{{{{ if not (and (eq $i 0) (eq .Role "system")) }}}}{{{{ if eq .Role "user" }}}} USER: {{{{ .Content }}}}{{{{ else }}}} ASSISTANT: {{{{ .Content }}}}{eos}{{{{ end }}}}{{{{ end }}}}{{{{ end }}}} ASSISTANT:"#,
                sys = system_var(VICUNA_SYSTEM)
            )
        },
    },
    Family {
        name: "alpaca",
        bos_first: false,
        default_system: Some(ALPACA_SYSTEM),
        trims: false,
        source: |_, eos| {
            format!(
                r#"{sys}{READ_SYSTEM}{{{{ $sys }}}}

{{{{ range $i, $m := .Messages }}}}{{{{ if not (and (eq $i 0) (eq .Role "system")) }}}}{{{{ if eq .Role "user" }}}}### Instruction:
{{{{ .Content }}}}

{{{{ else }}}}### Response:
{{{{ .Content }}}}{eos}

{{{{ end }}}}{{{{ end }}}}{{{{ end }}}}### Response:
"#,
                sys = system_var(ALPACA_SYSTEM)
            )
        },
    },
];

/// The end-of-turn token of each family (what Ollama should stop at besides the EOS).
fn end_of_turn(family: &str) -> Option<&'static str> {
    BUILTINS.iter().find(|b| b.name == family).map(|b| b.end_of_turn)
}

/// The names of the families a Go template exists for (every built-in).
pub fn families() -> Vec<&'static str> {
    FAMILIES.iter().map(|f| f.name).collect()
}

/// The Go template of `family` with these BOS and EOS texts.
pub fn go_template(family: &str, bos: &str, eos: &str) -> Option<GoTemplate> {
    FAMILIES.iter().find(|f| f.name == family).map(|f| GoTemplate {
        family: f.name,
        source: (f.source)(bos, eos),
        bos_first: f.bos_first,
        default_system: f.default_system,
        trims: f.trims,
    })
}

/// A `Modelfile` for `ollama create`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Modelfile {
    /// The GGUF file, relative to the Modelfile.
    pub from: String,
    /// The chat template, when the model's template is of a known family.
    pub template: Option<GoTemplate>,
    /// Texts that end an answer: the end-of-turn token and the EOS.
    pub stop: Vec<String>,
    /// What the user should know: limits of the template, or why there is none.
    pub warnings: Vec<String>,
}

impl Modelfile {
    /// The Modelfile for a model whose chat template and special tokens `renderer` holds (a
    /// checkpoint's: its template, with the EOS `map_eos_token` chose), exported as `from`.
    pub fn for_model(renderer: &Renderer, from: &str, tokenizer_dir: Option<&std::path::Path>) -> Result<Self, TemplateError> {
        let vars = renderer.template_vars();
        let token = |key: &str| vars.get(key).and_then(|v| v.as_str()).unwrap_or_default().to_string();
        let (bos, eos) = (token("bos_token"), token("eos_token"));
        let mut warnings = vec![];
        let family = family_of(renderer, tokenizer_dir)?;
        let template = family.and_then(|f| go_template(f, &bos, &eos));
        match &template {
            None => warnings.push(format!(
                "chat template {} renders like none of the built-in templates ({}); the Modelfile has no TEMPLATE, so write one by hand (Ollama would otherwise guess one)",
                renderer.templates().default.name(),
                families().join(", ")
            )),
            Some(t) if t.trims => warnings.push(format!(
                "the {} template trims message content and Ollama's template language cannot: a message with leading or trailing whitespace renders differently in Ollama",
                t.family
            )),
            Some(_) => {}
        }
        if template.is_some() {
            warnings.push("tool definitions and calls are not rendered by the Ollama template".into());
        }
        let mut stop: Vec<String> = family.and_then(end_of_turn).map(str::to_string).into_iter().collect();
        if !eos.is_empty() && !stop.contains(&eos) {
            stop.push(eos);
        }
        Ok(Modelfile { from: from.to_string(), template, stop, warnings })
    }

    /// The file's text.
    pub fn text(&self) -> String {
        let mut out = format!("# Made by sft export.\nFROM {}\n", self.from);
        if let Some(t) = &self.template {
            out.push_str(&format!("TEMPLATE \"\"\"{}\"\"\"\n", t.source));
            if let Some(system) = t.default_system {
                out.push_str(&format!("SYSTEM \"\"\"{system}\"\"\"\n"));
            }
        }
        for s in &self.stop {
            out.push_str(&format!("PARAMETER stop {}\n", serde_json::Value::String(s.clone())));
        }
        out
    }
}

/// The built-in family `renderer`'s template is: the built-in it names, or the one that renders
/// the same text on probe conversations (system prompt or none, one turn or three).
pub fn family_of(renderer: &Renderer, tokenizer_dir: Option<&std::path::Path>) -> Result<Option<&'static str>, TemplateError> {
    let name = renderer.templates().default.name();
    if let Some(f) = FAMILIES.iter().find(|f| f.name == name) {
        return Ok(Some(f.name));
    }
    let probes = probes();
    let ours: Vec<Option<String>> = probes.iter().map(|c| renderer.render(c, true, false).ok().map(|r| r.text)).collect();
    if ours.iter().all(Option::is_none) {
        return Ok(None);
    }
    for family in FAMILIES {
        let choice = TemplateChoice { template: Some(family.name.into()), ..TemplateChoice::default() };
        let builtin = Renderer::new(tokenizer_dir, &choice, renderer.kwargs().clone())?;
        let theirs: Vec<Option<String>> = probes.iter().map(|c| builtin.render(c, true, false).ok().map(|r| r.text)).collect();
        if theirs == ours {
            return Ok(Some(family.name));
        }
    }
    Ok(None)
}

/// Conversations a template family is recognised by.
fn probes() -> Vec<Conversation> {
    let conv = |turns: &[(&str, &str)]| Conversation {
        source: RowRef { file: "ollama probe".into(), row: 1 },
        messages: turns.iter().map(|(role, text)| Message::text(role, text)).collect(),
        tools: None,
        documents: None,
        shape: sft_data::conversation::Shape::Chat,
    };
    vec![
        conv(&[("user", "Hi there")]),
        conv(&[("system", "Be brief."), ("user", "Hi there")]),
        conv(&[("user", "One?"), ("assistant", "Two."), ("user", "Three?")]),
        conv(&[("system", "Be brief."), ("user", "One?"), ("assistant", "Two."), ("user", "Three?")]),
    ]
}
