//! BOS and EOS around an encoded example. The rendered text is tokenized without special
//! tokens (as `apply_chat_template` does), so a BOS comes from the template or, when the
//! template renders none but the tokenizer's post-processor would add one, is prepended once;
//! an EOS is appended (trained) by the [`AppendEos`] policy.

use serde_json::Value;

use super::error::EncodeError;
use crate::template::Renderer;
use crate::tokens::TextTokenizer;

/// When to append the EOS token (trained) to an example.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum AppendEos {
    /// Only when the last run of trained tokens does not already contain the EOS (templates
    /// whose turns end with the EOS, like ChatML with Qwen's `<|im_end|>`, get none).
    #[default]
    Auto,
    /// Unless the very last token already is the EOS.
    Always,
    /// Never.
    Never,
}

impl std::fmt::Display for AppendEos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AppendEos::Auto => "auto",
            AppendEos::Always => "always",
            AppendEos::Never => "never",
        })
    }
}

/// The BOS to prepend and the EOS to append, resolved once per tokenizer and template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SpecialIds {
    /// The token the post-processor puts first, if any.
    pub bos: Option<u32>,
    /// The EOS id: the template's `eos_token` (after `map_eos_token`).
    pub eos: Option<u32>,
}

impl SpecialIds {
    /// Resolves the ids; an EOS is required unless `append` is [`AppendEos::Never`].
    pub fn resolve(renderer: &Renderer, tokenizer: &TextTokenizer, append: AppendEos) -> Result<Self, EncodeError> {
        let bos = tokenizer.leading_special_ids().map_err(|e| EncodeError::Options(e.to_string()))?.first().copied();
        let eos_token = renderer.template_vars().get("eos_token").and_then(Value::as_str);
        let eos = eos_token.and_then(|t| tokenizer.token_to_id(t));
        if eos.is_none() && append != AppendEos::Never {
            return Err(EncodeError::Options(match eos_token {
                None => format!("append_eos {append} needs an eos_token, and the tokenizer config sets none; set append_eos never"),
                Some(t) => format!("append_eos {append}: eos_token {t:?} is not in the vocabulary; set append_eos never"),
            }));
        }
        Ok(SpecialIds { bos, eos })
    }

    /// Prepends the post-processor's BOS (untrained) unless the ids already start with it.
    pub fn add_bos(&self, ids: &mut Vec<u32>, trained: &mut Vec<bool>) {
        if let Some(bos) = self.bos {
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
                trained.insert(0, false);
            }
        }
    }

    /// Appends the EOS (trained) as `policy` says.
    pub fn add_eos(&self, ids: &mut Vec<u32>, trained: &mut Vec<bool>, policy: AppendEos) {
        let Some(eos) = self.eos else { return };
        let append = match policy {
            AppendEos::Never => false,
            AppendEos::Always => ids.last() != Some(&eos),
            AppendEos::Auto => !last_trained_run(trained).is_some_and(|(s, e)| ids[s..e].contains(&eos)),
        };
        if append {
            ids.push(eos);
            trained.push(true);
        }
    }

    /// Whether some trained position holds the EOS.
    pub fn eos_trained(&self, ids: &[u32], trained: &[bool]) -> bool {
        self.eos.is_some_and(|eos| ids.iter().zip(trained).any(|(&id, &t)| t && id == eos))
    }
}

/// The `[start, end)` of the last maximal run of trained positions.
fn last_trained_run(trained: &[bool]) -> Option<(usize, usize)> {
    let end = trained.iter().rposition(|&t| t)? + 1;
    let start = trained[..end].iter().rposition(|&t| !t).map_or(0, |i| i + 1);
    Some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EOS: u32 = 9;

    fn run(policy: AppendEos, ids: &[u32], trained: &[bool]) -> (Vec<u32>, Vec<bool>) {
        let special = SpecialIds { bos: Some(1), eos: Some(EOS) };
        let (mut ids, mut trained) = (ids.to_vec(), trained.to_vec());
        special.add_eos(&mut ids, &mut trained, policy);
        (ids, trained)
    }

    #[test]
    fn auto_looks_at_the_last_trained_run_only() {
        // The EOS closes the last trained run: nothing appended.
        assert_eq!(run(AppendEos::Auto, &[5, EOS, 6], &[false, true, true]).0, vec![5, EOS, 6]);
        // The EOS is only in an earlier run: appended, trained.
        let (ids, trained) = run(AppendEos::Auto, &[EOS, 5, 6], &[true, false, true]);
        assert_eq!((ids, trained), (vec![EOS, 5, 6, EOS], vec![true, false, true, true]));
        // The EOS is untrained: appended.
        assert_eq!(run(AppendEos::Auto, &[5, 6, EOS], &[false, true, false]).0, vec![5, 6, EOS, EOS]);
    }

    #[test]
    fn always_appends_unless_the_last_token_is_eos_and_never_never_does() {
        assert_eq!(run(AppendEos::Always, &[5, EOS, 6], &[true, true, true]).0, vec![5, EOS, 6, EOS]);
        assert_eq!(run(AppendEos::Always, &[5, EOS], &[false, false]).0, vec![5, EOS]);
        assert_eq!(run(AppendEos::Never, &[5, 6], &[true, true]).0, vec![5, 6]);
    }

    #[test]
    fn bos_is_prepended_once() {
        let special = SpecialIds { bos: Some(1), eos: None };
        let (mut ids, mut trained) = (vec![5], vec![true]);
        special.add_bos(&mut ids, &mut trained);
        assert_eq!((ids.clone(), trained.clone()), (vec![1, 5], vec![false, true]));
        special.add_bos(&mut ids, &mut trained);
        assert_eq!(ids, vec![1, 5]);
        assert!(!special.eos_trained(&ids, &trained));
    }

    #[test]
    fn names_parse_as_they_display() {
        for name in ["auto", "always", "never"] {
            let parsed: AppendEos = serde_json::from_value(Value::String(name.into())).unwrap();
            assert_eq!(parsed.to_string(), name);
        }
        assert!(serde_json::from_value::<AppendEos>(Value::String("sometimes".into())).is_err());
    }
}
