//! Where a chat template comes from: the tokenizer directory (`chat_template.jinja`, which wins,
//! or `tokenizer_config.json`'s `chat_template`, a string or a list of named templates), a file,
//! or one of the built-in named templates. Also the special tokens a template sees.

use std::path::Path;

use serde_json::{Map, Value as Json};

use super::{ChatTemplate, Clock, TemplateError};

/// A built-in named template.
#[derive(Debug, Clone, Copy)]
pub struct Builtin {
    /// The name users pass to `--chat-template`.
    pub name: &'static str,
    /// Jinja source.
    pub source: &'static str,
    /// The token that closes a turn (what `map_eos_token` makes the EOS).
    pub end_of_turn: &'static str,
}

/// The built-in templates.
pub const BUILTINS: &[Builtin] = &[
    Builtin { name: "chatml", source: include_str!("builtin/chatml.jinja"), end_of_turn: "<|im_end|>" },
    Builtin { name: "llama-3", source: include_str!("builtin/llama-3.jinja"), end_of_turn: "<|eot_id|>" },
    Builtin { name: "llama-2", source: include_str!("builtin/llama-2.jinja"), end_of_turn: "</s>" },
    Builtin { name: "mistral", source: include_str!("builtin/mistral.jinja"), end_of_turn: "</s>" },
    Builtin { name: "gemma", source: include_str!("builtin/gemma.jinja"), end_of_turn: "<end_of_turn>" },
    Builtin { name: "phi-3", source: include_str!("builtin/phi-3.jinja"), end_of_turn: "<|end|>" },
    Builtin { name: "qwen-2.5", source: include_str!("builtin/qwen-2.5.jinja"), end_of_turn: "<|im_end|>" },
    Builtin { name: "zephyr", source: include_str!("builtin/zephyr.jinja"), end_of_turn: "</s>" },
    Builtin { name: "vicuna", source: include_str!("builtin/vicuna.jinja"), end_of_turn: "</s>" },
    Builtin { name: "alpaca", source: include_str!("builtin/alpaca.jinja"), end_of_turn: "</s>" },
];

/// The built-in names, comma-separated (for messages).
pub fn builtin_names() -> String {
    BUILTINS.iter().map(|b| b.name).collect::<Vec<_>>().join(", ")
}

/// The template settings as users write them: flags wherever a template is chosen (with the
/// `clap` feature) and keys of a training config (serde, flattened into it).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct TemplateSettings {
    /// Chat template: a .jinja file, a built-in name (chatml, llama-3, llama-2, mistral, gemma,
    /// phi-3, qwen-2.5, zephyr, vicuna, alpaca) or a name from the tokenizer config's list.
    #[cfg_attr(feature = "clap", arg(long))]
    pub chat_template: Option<String>,
    /// With a built-in template: its end-of-turn token becomes the EOS.
    #[cfg_attr(feature = "clap", arg(long))]
    pub map_eos_token: bool,
    /// Extra template variables (a JSON object as a flag), e.g. '{"enable_thinking": false}'.
    #[cfg_attr(feature = "clap", arg(long, value_parser = json_object))]
    pub template_kwargs: Option<Map<String, Json>>,
    /// Freeze strftime_now at this local time (YYYY-MM-DDTHH:MM:SS), for reproducible renders
    /// (templates such as Llama 3.x print today's date).
    #[cfg_attr(feature = "clap", arg(long))]
    pub now: Option<String>,
}

impl TemplateSettings {
    /// The choice these settings make.
    pub fn choice(&self) -> Result<TemplateChoice, TemplateError> {
        Ok(TemplateChoice { template: self.chat_template.clone(), map_eos_token: self.map_eos_token, clock: self.clock()? })
    }

    /// What `strftime_now` reports: the machine's clock, or the time `now` freezes.
    pub fn clock(&self) -> Result<Clock, TemplateError> {
        match &self.now {
            None => Ok(Clock::System),
            Some(t) => chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S")
                .map(Clock::Fixed)
                .map_err(|_| TemplateError::Source(format!("now {t:?}: expected YYYY-MM-DDTHH:MM:SS"))),
        }
    }

    /// The extra template variables (none when unset).
    pub fn kwargs(&self) -> Map<String, Json> {
        self.template_kwargs.clone().unwrap_or_default()
    }

    /// The extra template variables for the tokenizer in `dir`: those a checkpoint there keeps
    /// ([`saved_kwargs`]), overridden by these settings' own.
    pub fn kwargs_for(&self, dir: Option<&Path>) -> Result<Map<String, Json>, TemplateError> {
        let mut kwargs = match dir {
            Some(dir) => saved_kwargs(dir)?,
            None => Map::new(),
        };
        kwargs.extend(self.kwargs());
        Ok(kwargs)
    }
}

/// A JSON object given on the command line.
#[cfg(feature = "clap")]
fn json_object(text: &str) -> Result<Map<String, Json>, String> {
    match serde_json::from_str(text) {
        Ok(Json::Object(map)) => Ok(map),
        Ok(_) => Err("expected a JSON object like '{\"enable_thinking\": false}'".into()),
        Err(e) => Err(format!("invalid JSON: {e}")),
    }
}

/// What the user asked for.
#[derive(Debug, Clone, Default)]
pub struct TemplateChoice {
    /// `--chat-template`: a file path, a built-in name, or a name from the tokenizer config's
    /// template list. `None`: the tokenizer directory's own template.
    pub template: Option<String>,
    /// Make the template's end-of-turn token the EOS (`eos_token` in the template context).
    pub map_eos_token: bool,
    /// What `strftime_now` reports.
    pub clock: Clock,
}

/// The file a checkpoint keeps its template keyword arguments in (`enable_thinking`, …), so a
/// model is prompted as it was trained.
pub const TEMPLATE_KWARGS_FILE: &str = "template_kwargs.json";

/// The template keyword arguments `dir` keeps ([`TEMPLATE_KWARGS_FILE`]); none when it has
/// no such file.
pub fn saved_kwargs(dir: &Path) -> Result<Map<String, Json>, TemplateError> {
    let path = dir.join(TEMPLATE_KWARGS_FILE);
    if !path.is_file() {
        return Ok(Map::new());
    }
    match serde_json::from_str::<Json>(&read(&path)?) {
        Ok(Json::Object(map)) => Ok(map),
        Ok(_) => Err(TemplateError::Source(format!("{}: expected a JSON object", path.display()))),
        Err(e) => Err(TemplateError::Source(format!("{}: {e}", path.display()))),
    }
}

/// `dir/tokenizer_config.json` with its `eos_token` set to `eos` (the string, or the content of
/// an `AddedToken` object), as `map_eos_token` leaves it; `None` when `dir` has none.
pub fn config_with_eos(dir: &Path, eos: &str) -> Result<Option<Vec<u8>>, TemplateError> {
    let Some(mut config) = read_config(dir)? else { return Ok(None) };
    match config.get_mut("eos_token") {
        Some(Json::Object(token)) => {
            token.insert("content".into(), Json::String(eos.into()));
        }
        _ => {
            config.insert("eos_token".into(), Json::String(eos.into()));
        }
    }
    let bytes = serde_json::to_vec_pretty(&config).map_err(|e| TemplateError::Source(e.to_string()))?;
    Ok(Some(bytes))
}

/// The templates of one tokenizer: the default, and the `tool_use` one transformers picks when
/// a conversation has tools (named-template lists only).
#[derive(Debug)]
pub struct TemplateSet {
    /// Used for every conversation without tools (and with, when there is no `tool_use`).
    pub default: ChatTemplate,
    /// Used for conversations with tools, when the tokenizer config names one.
    pub tool_use: Option<ChatTemplate>,
    /// With `map_eos_token`: the end-of-turn token that replaces the EOS.
    pub eos_override: Option<String>,
}

impl TemplateSet {
    /// The template transformers would pick for a conversation (with or without tools).
    pub fn select(&self, has_tools: bool) -> &ChatTemplate {
        match (&self.tool_use, has_tools) {
            (Some(t), true) => t,
            _ => &self.default,
        }
    }
}

fn read(path: &Path) -> Result<String, TemplateError> {
    std::fs::read_to_string(path).map_err(|e| TemplateError::Source(format!("{}: {e}", path.display())))
}

fn read_config(dir: &Path) -> Result<Option<Map<String, Json>>, TemplateError> {
    let path = dir.join("tokenizer_config.json");
    if !path.is_file() {
        return Ok(None);
    }
    match serde_json::from_str::<Json>(&read(&path)?) {
        Ok(Json::Object(map)) => Ok(Some(map)),
        Ok(_) => Err(TemplateError::Source(format!("{}: expected a JSON object", path.display()))),
        Err(e) => Err(TemplateError::Source(format!("{}:{}:{}: {e}", path.display(), e.line(), e.column()))),
    }
}

/// `chat_template` in tokenizer_config.json: a string, or a list of `{name, template}`.
fn config_templates(dir: &Path, config: &Map<String, Json>) -> Result<Vec<(String, String)>, TemplateError> {
    let where_ = || format!("{}: key chat_template", dir.join("tokenizer_config.json").display());
    match config.get("chat_template") {
        None | Some(Json::Null) => Ok(Vec::new()),
        Some(Json::String(s)) => Ok(vec![("default".into(), s.clone())]),
        Some(Json::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match (item.get("name").and_then(Json::as_str), item.get("template").and_then(Json::as_str)) {
                (Some(n), Some(t)) => Ok((n.to_string(), t.to_string())),
                _ => Err(TemplateError::Source(format!("{}[{i}]: expected {{\"name\": ..., \"template\": ...}}", where_()))),
            })
            .collect(),
        Some(_) => Err(TemplateError::Source(format!("{}: expected a string or a list of named templates", where_()))),
    }
}

/// Loads the template(s) for `tokenizer_dir` as chosen by `choice`.
pub fn load_template(tokenizer_dir: Option<&Path>, choice: &TemplateChoice) -> Result<TemplateSet, TemplateError> {
    let config = match tokenizer_dir {
        Some(dir) => read_config(dir)?,
        None => None,
    };
    let named = match (tokenizer_dir, &config) {
        (Some(dir), Some(cfg)) => config_templates(dir, cfg)?,
        _ => Vec::new(),
    };
    let compile = |name: &str, src: &str| ChatTemplate::new(name, src, choice.clock);
    let mut eos_override = None;
    let mut tool_use = None;
    let default = match choice.template.as_deref() {
        Some(requested) => {
            let path = Path::new(requested);
            if path.is_file() {
                compile(requested, &read(path)?)?
            } else if let Some(b) = BUILTINS.iter().find(|b| b.name == requested) {
                if choice.map_eos_token {
                    eos_override = Some(b.end_of_turn.to_string());
                }
                compile(b.name, b.source)?
            } else if let Some((n, t)) = named.iter().find(|(n, _)| n == requested) {
                compile(n, t)?
            } else {
                return Err(TemplateError::Source(format!(
                    "--chat-template {requested:?}: not a file, not a built-in template ({}){}",
                    builtin_names(),
                    if named.is_empty() { String::new() } else { ", and not a template named in tokenizer_config.json".into() }
                )));
            }
        }
        None => {
            let Some(dir) = tokenizer_dir else {
                return Err(TemplateError::Source(format!(
                    "no chat template: pass --chat-template with a file or a built-in name ({})",
                    builtin_names()
                )));
            };
            let jinja = dir.join("chat_template.jinja");
            if jinja.is_file() {
                compile(&jinja.display().to_string(), &read(&jinja)?)?
            } else if let Some((_, t)) = named.iter().find(|(n, _)| n == "default").or(named.first().filter(|_| named.len() == 1)) {
                if let Some((n, t)) = named.iter().find(|(n, _)| n == "tool_use") {
                    tool_use = Some(compile(&format!("{} ({n})", dir.display()), t)?);
                }
                compile(&dir.join("tokenizer_config.json").display().to_string(), t)?
            } else {
                return Err(TemplateError::Source(format!(
                    "{}: no chat template (no chat_template.jinja, no chat_template in tokenizer_config.json{}); pass --chat-template FILE or a built-in name ({})",
                    dir.display(),
                    if named.is_empty() { String::new() } else { format!(", and none named \"default\" among {}", named.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")) },
                    builtin_names()
                )));
            }
        }
    };
    Ok(TemplateSet { default, tool_use, eos_override })
}

/// The special tokens transformers puts in the template context (`special_tokens_map`), read
/// from tokenizer_config.json: `bos_token`, `eos_token`, `unk_token`, `sep_token`, `pad_token`,
/// `cls_token`, `mask_token` where set, then the model-specific ones (the entries of a dict-form
/// `extra_special_tokens`, and any other `*_token` key holding a token). An `AddedToken` object
/// contributes its `content`. A list-form `additional_special_tokens` is not passed.
pub fn special_tokens(tokenizer_dir: &Path) -> Result<Map<String, Json>, TemplateError> {
    const STANDARD: [&str; 7] = ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"];
    let mut vars = Map::new();
    let Some(config) = read_config(tokenizer_dir)? else { return Ok(vars) };
    let as_token = |v: &Json| match v {
        Json::String(s) => Some(s.clone()),
        Json::Object(obj) => obj.get("content").and_then(Json::as_str).map(str::to_string),
        _ => None,
    };
    for key in STANDARD {
        if let Some(token) = config.get(key).and_then(as_token) {
            vars.insert(key.into(), Json::String(token));
        }
    }
    // A class default transformers fills in although the config does not set it.
    let class = config.get("tokenizer_class").and_then(Json::as_str).unwrap_or_default();
    if class.starts_with("GemmaTokenizer") && !vars.contains_key("mask_token") {
        vars.insert("mask_token".into(), Json::String("<mask>".into()));
    }
    if let Some(Json::Object(extra)) = config.get("extra_special_tokens") {
        for (key, value) in extra {
            if let Some(token) = as_token(value) {
                vars.insert(key.clone(), Json::String(token));
            }
        }
    }
    for (key, value) in &config {
        if key.ends_with("_token") && !vars.contains_key(key) && !STANDARD.contains(&key.as_str()) {
            if let Some(token) = as_token(value) {
                vars.insert(key.clone(), Json::String(token));
            }
        }
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(std::path::PathBuf);
    impl TempDir {
        fn new(tag: &str) -> Self {
            let p = std::env::temp_dir().join(format!("sft-source-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            std::fs::remove_dir_all(&self.0).ok();
        }
    }

    fn render(t: &ChatTemplate) -> String {
        t.render_messages(&[serde_json::json!({"role": "user", "content": "x"})], None, None, &Default::default()).unwrap().text
    }

    #[test]
    fn named_template_list_picks_default_and_tool_use() {
        let dir = TempDir::new("named");
        std::fs::write(
            dir.0.join("tokenizer_config.json"),
            r#"{"chat_template": [{"name": "default", "template": "D"}, {"name": "tool_use", "template": "T"}, {"name": "rag", "template": "R"}],
                "bos_token": {"__type": "AddedToken", "content": "<s>"}, "eos_token": "</s>", "add_bos_token": true, "image_token": "<img>"}"#,
        )
        .unwrap();
        let set = load_template(Some(&dir.0), &TemplateChoice::default()).unwrap();
        assert_eq!(render(set.select(false)), "D");
        assert_eq!(render(set.select(true)), "T");
        let rag = load_template(Some(&dir.0), &TemplateChoice { template: Some("rag".into()), ..Default::default() }).unwrap();
        assert_eq!(render(&rag.default), "R");
        let vars = special_tokens(&dir.0).unwrap();
        assert_eq!(serde_json::Value::Object(vars), serde_json::json!({"bos_token": "<s>", "eos_token": "</s>", "image_token": "<img>"}));
    }

    #[test]
    fn chat_template_jinja_wins_over_the_config() {
        let dir = TempDir::new("jinja");
        std::fs::write(dir.0.join("tokenizer_config.json"), r#"{"chat_template": "config"}"#).unwrap();
        std::fs::write(dir.0.join("chat_template.jinja"), "file").unwrap();
        assert_eq!(render(&load_template(Some(&dir.0), &TemplateChoice::default()).unwrap().default), "file");
    }

    #[test]
    fn missing_template_error_says_what_to_do() {
        let dir = TempDir::new("none");
        std::fs::write(dir.0.join("tokenizer_config.json"), r#"{"eos_token": "</s>"}"#).unwrap();
        let err = load_template(Some(&dir.0), &TemplateChoice::default()).unwrap_err().to_string();
        assert!(err.contains("no chat template") && err.contains("--chat-template") && err.contains("chatml"), "{err}");
    }

    #[test]
    fn map_eos_token_makes_the_end_of_turn_the_eos() {
        let choice = TemplateChoice { template: Some("chatml".into()), map_eos_token: true, ..Default::default() };
        assert_eq!(load_template(None, &choice).unwrap().eos_override.as_deref(), Some("<|im_end|>"));
    }

    #[test]
    fn templates_cannot_read_files_or_recurse_forever() {
        let include = ChatTemplate::new("inc", "{% include '/etc/passwd' %}", Clock::System).unwrap();
        assert!(include.render_messages(&[], None, None, &Default::default()).is_err());
        let deep = ChatTemplate::new("deep", "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", Clock::System).unwrap();
        let err = deep.render_messages(&[], None, None, &Default::default()).unwrap_err().to_string();
        assert!(err.contains("recursion"), "{err}");
    }
}
