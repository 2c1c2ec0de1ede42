//! Format names and `--format auto` detection from a file's first row.
//!
//! Detection looks at the first readable row's keys, in this order:
//! 1. `messages` → openai (or sharegpt when its entries use the ShareGPT role key, e.g. `from`);
//! 2. the ShareGPT column (`conversations` by default) → sharegpt (or openai when its entries use
//!    `role`/`content`, as many Hub datasets do);
//! 3. `instruction` and `output` → alpaca.
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
}

impl Format {
    /// Every format, in the order they are listed to users.
    pub const ALL: [Format; 3] = [Format::Alpaca, Format::ShareGpt, Format::OpenAi];

    /// The canonical name: `alpaca`, `sharegpt` or `openai`.
    pub fn name(self) -> &'static str {
        match self {
            Format::Alpaca => "alpaca",
            Format::ShareGpt => "sharegpt",
            Format::OpenAi => "openai",
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown format name given to [`Format::from_str`](std::str::FromStr::from_str).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown data format \"{0}\"; expected one of alpaca, sharegpt, openai (aliases: messages, chatml)")]
pub struct ParseFormatError(pub String);

impl std::str::FromStr for Format {
    type Err = ParseFormatError;

    /// Parses a name case-insensitively; `messages` and `chatml` are aliases of `openai`.
    /// (`auto` is not a format: callers map it to `None`.)
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "alpaca" => Ok(Format::Alpaca),
            "sharegpt" => Ok(Format::ShareGpt),
            "openai" | "messages" | "chatml" => Ok(Format::OpenAi),
            _ => Err(ParseFormatError(s.to_string())),
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
}

impl Plan {
    pub(crate) fn format(&self) -> Format {
        match self {
            Plan::Alpaca => Format::Alpaca,
            Plan::ShareGpt { .. } => Format::ShareGpt,
            Plan::OpenAi { .. } => Format::OpenAi,
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
        for f in Format::ALL {
            assert_eq!(f.name().parse::<Format>(), Ok(f));
        }
        assert_eq!("ChatML".parse::<Format>(), Ok(Format::OpenAi));
        assert_eq!("messages".parse::<Format>(), Ok(Format::OpenAi));
        let e = "auto".parse::<Format>().unwrap_err().to_string();
        assert!(e.starts_with("unknown data format \"auto\""));
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
        assert_eq!(plan(json!({"text": "a"})), None);
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
