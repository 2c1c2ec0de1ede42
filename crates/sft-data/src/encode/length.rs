//! Fitting an example into `max_seq_length`: drop the row, or cut the end off.

use super::error::ExcludeReason;

/// What to do with an example longer than `max_seq_length`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Truncation {
    /// Leave the row out (reason [`ExcludeReason::TooLong`]): no half-answers train.
    #[default]
    Drop,
    /// Keep the first `max_seq_length` tokens (TRL's `keep_start`), counting the trained tokens lost.
    Right,
}

impl std::fmt::Display for Truncation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Truncation::Drop => "drop",
            Truncation::Right => "right",
        })
    }
}

/// Fits `ids`/`trained` into `max` tokens. Returns the trained tokens lost when it cut, `None`
/// when the example fit; an exclusion when it is dropped or nothing trained is left.
pub(crate) fn fit(
    ids: &mut Vec<u32>,
    trained: &mut Vec<bool>,
    max: Option<usize>,
    truncation: Truncation,
) -> Result<Option<usize>, ExcludeReason> {
    let Some(max) = max else { return Ok(None) };
    let tokens = ids.len();
    if tokens <= max {
        return Ok(None);
    }
    match truncation {
        Truncation::Drop => Err(ExcludeReason::TooLong { tokens, max }),
        Truncation::Right => {
            let lost = trained[max..].iter().filter(|&&t| t).count();
            ids.truncate(max);
            trained.truncate(max);
            if !trained.contains(&true) {
                return Err(ExcludeReason::TruncatedAway { tokens, max });
            }
            Ok(Some(lost))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_excludes_and_right_cuts_counting_what_trained() {
        let (mut ids, mut trained) = (vec![1, 2, 3, 4, 5], vec![false, true, false, true, true]);
        assert_eq!(fit(&mut ids, &mut trained, Some(5), Truncation::Drop), Ok(None));
        assert_eq!(fit(&mut ids, &mut trained, None, Truncation::Drop), Ok(None));
        assert_eq!(fit(&mut ids, &mut trained, Some(4), Truncation::Drop), Err(ExcludeReason::TooLong { tokens: 5, max: 4 }));
        assert_eq!(ids.len(), 5);
        assert_eq!(fit(&mut ids, &mut trained, Some(3), Truncation::Right), Ok(Some(2)));
        assert_eq!((ids.clone(), trained.clone()), (vec![1, 2, 3], vec![false, true, false]));
        assert_eq!(fit(&mut ids, &mut trained, Some(1), Truncation::Right), Err(ExcludeReason::TruncatedAway { tokens: 3, max: 1 }));
    }

    #[test]
    fn names_parse_as_they_display() {
        let parse = |name: &str| serde_json::from_value::<Truncation>(serde_json::Value::String(name.into())).ok();
        assert_eq!(parse("right"), Some(Truncation::Right));
        assert_eq!(parse("drop").map(|t| t.to_string()).as_deref(), Some("drop"));
        assert_eq!(Truncation::default().to_string(), "drop");
        assert_eq!(parse("left"), None);
    }
}
