//! Format names and `--format auto` detection from a file's first row.
//!
//! Detection looks at the first readable row's keys, in this order:
//! 1. `messages` → openai (or sharegpt when its entries use the ShareGPT role key, e.g. `from`);
//! 2. the ShareGPT column (`conversations` by default) → sharegpt (or openai when its entries use
//!    `role`/`content`, as many Hub datasets do);
//! 3. `instruction` and `output` → alpaca;
//! 4. `prompt` and `completion` → prompt_completion (TRL's; strings or message lists);
//! 5. `text` → text (plain text, for continued pre-training).
//!
//! Anything else is an error listing the keys found.

use serde_json::{Map, Value};

use super::sharegpt::ShareGptOptions;

/// A row format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// `instruction` / `input` / `output` rows (see [`alpaca`](super::alpaca)).
    Alpaca,
    /// `conversations: [{from, value}]` rows (see [`sharegpt`](super::sharegpt)).
    ShareGpt,
    /// `messages: [{role, content}]` rows (see [`openai`](super::openai)).
    OpenAi,
    /// `prompt` / `completion` rows (see [`prompt_completion`](super::prompt_completion)).
    PromptCompletion,
    /// `text` rows (see [`text`](super::text)).
    Text,
}

impl Format {
    /// Every format, in the order they are listed to users.
    pub const ALL: [Format; 5] = [Format::Alpaca, Format::ShareGpt, Format::OpenAi, Format::PromptCompletion, Format::Text];

    /// The canonical name: `alpaca`, `sharegpt`, `openai`, `prompt_completion` or `text`.
    pub fn name(self) -> &'static str {
        match self {
            Format::Alpaca => "alpaca",
            Format::ShareGpt => "sharegpt",
            Format::OpenAi => "openai",
            Format::PromptCompletion => "prompt_completion",
            Format::Text => "text",
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The format a user asks for (`format:` of a dataset, `--format`): detected from the first
/// row (`auto`, the default) or one of the formats, named in any case; `messages` and `chatml`
/// are aliases of `openai`, `prompt-completion` of `prompt_completion`, and `completion`
/// (Axolotl's name for raw text) of `text`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(into = "&'static str")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[cfg_attr(feature = "clap", value(rename_all = "lower"))]
pub enum DataFormat {
    /// Detected from the file's first readable row.
    #[default]
    Auto,
    /// Alpaca rows.
    Alpaca,
    /// ShareGPT rows.
    ShareGpt,
    /// OpenAI `messages` rows.
    #[cfg_attr(feature = "clap", value(alias = "messages", alias = "chatml"))]
    OpenAi,
    /// TRL prompt/completion rows.
    #[cfg_attr(feature = "clap", value(name = "prompt_completion", alias = "prompt-completion"))]
    PromptCompletion,
    /// Plain `text` rows.
    #[cfg_attr(feature = "clap", value(alias = "completion"))]
    Text,
}

impl DataFormat {
    /// Parses a name in any case.
    pub fn from_name(name: &str) -> Result<Self, String> {
        match name.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(DataFormat::Auto),
            "alpaca" => Ok(DataFormat::Alpaca),
            "sharegpt" => Ok(DataFormat::ShareGpt),
            "openai" | "messages" | "chatml" => Ok(DataFormat::OpenAi),
            "prompt_completion" | "prompt-completion" => Ok(DataFormat::PromptCompletion),
            "text" | "completion" => Ok(DataFormat::Text),
            _ => Err(format!(
                "unknown data format {name:?}; expected one of auto, alpaca, sharegpt, openai (aliases: messages, chatml), prompt_completion, text (alias: completion)"
            )),
        }
    }
}

/// Read from a string as it is being deserialized, so that an unknown name is reported at its
/// key (`datasets[0].format`).
impl<'de> serde::Deserialize<'de> for DataFormat {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Name;
        impl serde::de::Visitor<'_> for Name {
            type Value = DataFormat;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a data format name")
            }
            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<DataFormat, E> {
                DataFormat::from_name(name).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Name)
    }
}

impl From<DataFormat> for &'static str {
    fn from(f: DataFormat) -> Self {
        f.format().map_or("auto", Format::name)
    }
}

impl DataFormat {
    /// The format, or `None` to detect it.
    pub fn format(self) -> Option<Format> {
        match self {
            DataFormat::Auto => None,
            DataFormat::Alpaca => Some(Format::Alpaca),
            DataFormat::ShareGpt => Some(Format::ShareGpt),
            DataFormat::OpenAi => Some(Format::OpenAi),
            DataFormat::PromptCompletion => Some(Format::PromptCompletion),
            DataFormat::Text => Some(Format::Text),
        }
    }
}

/// A format plus the column its message list lives in, decided once per file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Plan {
    Alpaca,
    /// The options with `messages_key` set to the column actually used.
    ShareGpt {
        opts: ShareGptOptions,
    },
    OpenAi {
        column: String,
    },
    PromptCompletion,
    Text,
}

impl Plan {
    pub(crate) fn format(&self) -> Format {
        match self {
            Plan::Alpaca => Format::Alpaca,
            Plan::ShareGpt { .. } => Format::ShareGpt,
            Plan::OpenAi { .. } => Format::OpenAi,
            Plan::PromptCompletion => Format::PromptCompletion,
            Plan::Text => Format::Text,
        }
    }

    /// The plan for an explicitly chosen format, taking column names from `row` where needed.
    pub(crate) fn explicit(format: Format, row: &Map<String, Value>, opts: &ShareGptOptions) -> Plan {
        match format {
            Format::Alpaca => Plan::Alpaca,
            Format::ShareGpt => Plan::ShareGpt { opts: opts.clone() },
            Format::OpenAi => {
                let fallback = &opts.messages_key;
                let column = if !row.contains_key("messages") && row.contains_key(fallback) { fallback.clone() } else { "messages".into() };
                Plan::OpenAi { column }
            }
            Format::PromptCompletion => Plan::PromptCompletion,
            Format::Text => Plan::Text,
        }
    }

    /// Detects the plan from one row's keys (see the module docs).
    pub(crate) fn detect(row: &Map<String, Value>, opts: &ShareGptOptions) -> Option<Plan> {
        let sharegpt_style = |column: &str| {
            let first = row.get(column).and_then(Value::as_array).and_then(|l| l.first());
            first.is_some_and(|m| m.get(&opts.role_key).is_some() && m.get("role").is_none())
        };
        let openai_style = |column: &str| {
            let first = row.get(column).and_then(Value::as_array).and_then(|l| l.first());
            first.is_some_and(|m| m.get("role").is_some() && m.get(&opts.role_key).is_none())
        };
        if row.contains_key("messages") {
            return Some(if sharegpt_style("messages") {
                Plan::ShareGpt { opts: ShareGptOptions { messages_key: "messages".into(), ..opts.clone() } }
            } else {
                Plan::OpenAi { column: "messages".into() }
            });
        }
        let column = &opts.messages_key;
        if row.contains_key(column) {
            return Some(if openai_style(column) {
                Plan::OpenAi { column: column.clone() }
            } else {
                Plan::ShareGpt { opts: opts.clone() }
            });
        }
        if row.contains_key("instruction") && row.contains_key("output") {
            return Some(Plan::Alpaca);
        }
        if row.contains_key("prompt") && row.contains_key("completion") {
            return Some(Plan::PromptCompletion);
        }
        if row.contains_key("text") {
            return Some(Plan::Text);
        }
        None
    }
}

/// The format `--format auto` picks for a row, or `None` when its keys match no format.
pub fn detect(row: &Map<String, Value>, sharegpt: &ShareGptOptions) -> Option<Format> {
    Plan::detect(row, sharegpt).map(|plan| plan.format())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plan(row: Value) -> Option<Plan> {
        Plan::detect(row.as_object().unwrap(), &ShareGptOptions::default())
    }

    fn sharegpt(column: &str) -> Option<Plan> {
        Some(Plan::ShareGpt { opts: ShareGptOptions { messages_key: column.into(), ..Default::default() } })
    }

    #[test]
    fn names_round_trip() {
        let parse = |name: &str| serde_json::from_value::<DataFormat>(json!(name)).ok();
        for f in Format::ALL {
            assert_eq!(parse(f.name()).and_then(DataFormat::format), Some(f));
        }
        assert_eq!(parse("ChatML"), Some(DataFormat::OpenAi));
        assert_eq!(parse("ShareGPT"), Some(DataFormat::ShareGpt));
        assert_eq!(parse("messages"), Some(DataFormat::OpenAi));
        assert_eq!(parse("auto"), Some(DataFormat::Auto));
        assert_eq!(parse("auto").and_then(DataFormat::format), None);
        assert_eq!(parse("prompt-completion"), Some(DataFormat::PromptCompletion));
        assert_eq!(parse("completion"), Some(DataFormat::Text));
        assert_eq!(parse("csv"), None);
    }

    #[test]
    fn detects_by_keys() {
        let msgs = json!({"messages": [{"role": "user", "content": "x"}]});
        assert_eq!(plan(msgs), Some(Plan::OpenAi { column: "messages".into() }));
        let conv = json!({"conversations": [{"from": "human", "value": "x"}]});
        assert_eq!(plan(conv), sharegpt("conversations"));
        let conv_roles = json!({"conversations": [{"role": "user", "content": "x"}]});
        assert_eq!(plan(conv_roles), Some(Plan::OpenAi { column: "conversations".into() }));
        let msgs_from = json!({"messages": [{"from": "human", "value": "x"}]});
        assert_eq!(plan(msgs_from), sharegpt("messages"));
        assert_eq!(plan(json!({"instruction": "a", "output": "b"})), Some(Plan::Alpaca));
        assert_eq!(plan(json!({"instruction": "a"})), None);
        assert_eq!(plan(json!({"text": "a"})), Some(Plan::Text));
        assert_eq!(plan(json!({"prompt": "a", "completion": "b", "text": "c"})), Some(Plan::PromptCompletion));
        assert_eq!(plan(json!({"prompt": "a"})), None);
    }

    #[test]
    fn explicit_openai_falls_back_to_sharegpt_column() {
        let opts = ShareGptOptions::default();
        let row = json!({"conversations": []});
        let p = Plan::explicit(Format::OpenAi, row.as_object().unwrap(), &opts);
        assert_eq!(p, Plan::OpenAi { column: "conversations".into() });
        let p = Plan::explicit(Format::OpenAi, json!({}).as_object().unwrap(), &opts);
        assert_eq!(p, Plan::OpenAi { column: "messages".into() });
    }
}
