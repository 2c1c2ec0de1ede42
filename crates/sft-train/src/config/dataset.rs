//! One entry of `datasets` (and `eval_dataset`): the file, its format, its names for the columns
//! and ShareGPT speakers, and how much of it the mix takes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sft_data::data::{Columns, DataFormat, ShareGptOptions};

/// One training data file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RawDataset {
    /// JSONL, JSON or Parquet file, or a prepared dataset directory.
    pub path: PathBuf,
    /// auto (default), alpaca, sharegpt, openai, prompt_completion or text.
    pub format: DataFormat,
    /// The file's names for the columns the format expects (`{messages: conversation, role:
    /// from, content: value}`; see [`sft_data::data::columns`]).
    pub columns: BTreeMap<String, String>,
    /// Shuffle the file's rows (from the seed) before `max_samples` and `weight` pick from them.
    pub shuffle: bool,
    /// Use at most this many rows of the file (the first ones, or the first after `shuffle`).
    pub max_samples: Option<usize>,
    /// The file's share of the mixed training set, relative to the other datasets' weights
    /// (set on every dataset or on none; see [`crate::mix`]).
    pub weight: Option<f64>,
    /// ShareGPT speaker names beyond the usual ones, by the role they play, as Axolotl's
    /// `roles`: `{user: [human, prompter], assistant: bot}`.
    pub roles: BTreeMap<String, RoleNames>,
}

/// The file's names for one role: one name or a list.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(untagged)]
pub enum RoleNames {
    /// `assistant: bot`.
    One(String),
    /// `user: [human, prompter]`.
    Many(Vec<String>),
}

impl<'de> Deserialize<'de> for RoleNames {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Names;
        impl<'de> serde::de::Visitor<'de> for Names {
            type Value = RoleNames;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a speaker name or a list of names, like bot or [human, prompter]")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RoleNames, E> {
                Ok(RoleNames::One(v.into()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<RoleNames, A::Error> {
                let mut names = vec![];
                while let Some(name) = seq.next_element::<String>()? {
                    names.push(name);
                }
                Ok(RoleNames::Many(names))
            }
        }
        d.deserialize_any(Names)
    }
}

impl RawDataset {
    /// The column mapping, checked.
    pub fn read_columns(&self) -> Result<Columns, String> {
        Columns::new(self.columns.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }

    /// The ShareGPT reading options `roles` gives, checked (every role one sft knows).
    pub fn sharegpt(&self) -> Result<ShareGptOptions, String> {
        let mut roles = vec![];
        for (role, names) in &self.roles {
            let names = match names {
                RoleNames::One(name) => std::slice::from_ref(name),
                RoleNames::Many(names) => names.as_slice(),
            };
            roles.extend(names.iter().map(|name| (name.clone(), role.clone())));
        }
        let opts = ShareGptOptions { roles, ..ShareGptOptions::default() };
        opts.validate()?;
        Ok(opts)
    }
}
