//! The encode settings as users write them: one struct that is both the flags of `sft prepare`
//! and `sft eval` (with the `clap` feature) and keys of a training config (serde, flattened into
//! it), checked once by [`EncodeSettings::resolve`] into [`EncodeOptions`].

use serde::{Deserialize, Serialize};

use super::{AppendEos, EncodeOptions, Markers, Masking, MaskingStrategy, Truncation};

/// A setting that does not hold: the key (snake_case, as in a config file) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct SettingError {
    /// The config key (`--` plus the key in kebab-case as a flag).
    pub key: &'static str,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl SettingError {
    /// The key as a command-line flag: `--max-seq-length`.
    pub fn flag(&self) -> String {
        flag(self.key)
    }

    /// The error as the flags' user reads it: `--key: message`, with the settings the message
    /// names written as flags too.
    pub fn for_flags(&self) -> String {
        let names = serde_json::to_value(EncodeSettings::default()).ok();
        let keys = names.as_ref().and_then(|v| v.as_object()).map(|m| m.keys().cloned().collect::<Vec<_>>()).unwrap_or_default();
        let message = keys.iter().fold(self.message.clone(), |m, key| m.replace(key.as_str(), &flag(key)));
        format!("{}: {message}", self.flag())
    }
}

/// `max_seq_length` as a flag: `--max-seq-length`.
fn flag(key: &str) -> String {
    format!("--{}", key.replace('_', "-"))
}

/// How conversations become training examples, unchecked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct EncodeSettings {
    /// Which tokens train: assistant (every assistant turn), last (the last one), all, or
    /// markers (text after the response part until the instruction part).
    #[cfg_attr(feature = "clap", arg(long, value_enum, default_value_t))]
    pub masking: MaskingStrategy,
    /// With masking markers: the text that starts a user turn, e.g. "<|im_start|>user\n".
    #[cfg_attr(feature = "clap", arg(long))]
    pub instruction_part: Option<String>,
    /// With masking markers: the text that starts an assistant turn, e.g. "<|im_start|>assistant\n".
    #[cfg_attr(feature = "clap", arg(long))]
    pub response_part: Option<String>,
    /// When to append the EOS: auto (unless the trained turn already ends with it), always, never.
    #[cfg_attr(feature = "clap", arg(long, value_enum, default_value_t))]
    pub append_eos: AppendEos,
    /// The longest example in tokens (and, with packing, the length of a sequence); no limit
    /// when unset (training's default is 1024).
    #[cfg_attr(feature = "clap", arg(long))]
    pub max_seq_length: Option<usize>,
    /// What to do with a longer example: drop it, or cut it on the right.
    #[cfg_attr(feature = "clap", arg(long, value_enum, default_value_t))]
    pub truncation: Truncation,
}

impl EncodeSettings {
    /// Checks the settings: markers go with `masking: markers` and only with it, and a length
    /// limit is at least 1.
    pub fn resolve(&self) -> Result<EncodeOptions, SettingError> {
        let err = |key, message: &str| SettingError { key, message: message.into() };
        let masking = match (self.masking, &self.instruction_part, &self.response_part) {
            (MaskingStrategy::Assistant, ..) => Masking::Assistant,
            (MaskingStrategy::Last, ..) => Masking::Last,
            (MaskingStrategy::All, ..) => Masking::All,
            (MaskingStrategy::Markers, Some(i), Some(r)) if !i.is_empty() && !r.is_empty() => {
                Masking::Markers(Markers { instruction_part: i.clone(), response_part: r.clone() })
            }
            (MaskingStrategy::Markers, ..) => {
                return Err(err(
                    "masking",
                    "markers needs instruction_part and response_part (e.g. \"<|im_start|>user\\n\" and \"<|im_start|>assistant\\n\")",
                ))
            }
        };
        if !matches!(masking, Masking::Markers(_)) {
            for (key, part) in [("instruction_part", &self.instruction_part), ("response_part", &self.response_part)] {
                if part.is_some() {
                    return Err(err(key, "applies only with masking markers"));
                }
            }
        }
        if self.max_seq_length == Some(0) {
            return Err(err("max_seq_length", "must be at least 1"));
        }
        Ok(EncodeOptions { masking, append_eos: self.append_eos, max_seq_length: self.max_seq_length, truncation: self.truncation })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_need_both_parts_and_only_go_with_marker_masking() {
        let markers = EncodeSettings {
            masking: MaskingStrategy::Markers,
            instruction_part: Some("<u>".into()),
            response_part: Some("<a>".into()),
            ..EncodeSettings::default()
        };
        let resolved = markers.resolve().unwrap();
        assert_eq!(resolved.masking, Masking::Markers(Markers { instruction_part: "<u>".into(), response_part: "<a>".into() }));
        let half = EncodeSettings { response_part: None, ..markers.clone() };
        assert_eq!(half.resolve().unwrap_err().key, "masking");
        let stray = EncodeSettings { masking: MaskingStrategy::Last, ..markers };
        let e = stray.resolve().unwrap_err();
        assert_eq!((e.key, e.flag().as_str()), ("instruction_part", "--instruction-part"));
        assert_eq!(e.for_flags(), "--instruction-part: applies only with --masking markers");
        let e = half.resolve().unwrap_err();
        assert!(e.for_flags().starts_with("--masking: markers needs --instruction-part and --response-part"), "{}", e.for_flags());
        let zero = EncodeSettings { max_seq_length: Some(0), ..EncodeSettings::default() };
        assert_eq!(zero.resolve().unwrap_err().to_string(), "max_seq_length: must be at least 1");
        assert_eq!(EncodeSettings::default().resolve().unwrap(), EncodeOptions::default());
    }
}
