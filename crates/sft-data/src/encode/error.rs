//! What can go wrong while encoding: errors that stop the run (bad options, a malformed
//! message, a tokenizer failure), and the reasons a row is left out with a count instead.

use crate::conversation::RowRef;
use crate::tokens::TokenError;

/// Why encoding stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The options cannot work with this tokenizer or template.
    #[error("{0}")]
    Options(String),
    /// A message's `weight` or `train` field is not one the masking understands.
    #[error("{row}: message {message}: {detail}")]
    Message {
        /// The row.
        row: RowRef,
        /// 1-based message index.
        message: usize,
        /// What is wrong and how to fix it.
        detail: String,
    },
    /// The masking needs to know which message each assistant span renders, and the template's
    /// `{% generation %}` blocks do not pair one-to-one with the assistant messages.
    #[error(
        "{row}: {needs} needs to know which assistant message each span renders, but template {template} \
         renders {spans} {{% generation %}} blocks for {assistants} assistant messages; use masking \
         `assistant` without per-message weight/train, or a template with one block per assistant message"
    )]
    Attribution {
        /// The row.
        row: RowRef,
        /// What needed the attribution (`masking last`, `weight 0 / train false`).
        needs: &'static str,
        /// The template's name.
        template: String,
        /// How many generation blocks it rendered.
        spans: usize,
        /// How many assistant messages the row has.
        assistants: usize,
    },
    /// The tokenizer failed on a rendered text.
    #[error("{row}: {source}")]
    Token {
        /// The row.
        row: RowRef,
        /// What the tokenizer said.
        #[source]
        source: TokenError,
    },
    /// A token id does not fit a label (`i32`).
    #[error("{row}: token id {id} does not fit an i32 label")]
    TokenId {
        /// The row.
        row: RowRef,
        /// The id.
        id: u32,
    },
    /// Every row was excluded.
    #[error("no training example left: all {rows} rows were excluded ({summary})")]
    NothingLeft {
        /// How many rows there were.
        rows: usize,
        /// How many were excluded for which reason, with the first row of each.
        summary: String,
    },
}

/// Why a row yields no training example. Excluded rows are counted and reported, not errors.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExcludeReason {
    /// The chat template failed to render the row.
    Template(String),
    /// The assistant turns could not be located in the rendered text.
    Spans(String),
    /// `markers` masking: the response marker never occurs in the rendered text.
    MarkersNotFound {
        /// The marker searched for.
        response_part: String,
    },
    /// No token trains: no assistant turn, or every one has `weight: 0` / `train: false`.
    NoTrainedTokens,
    /// Longer than `max_seq_length` with truncation `drop`.
    TooLong {
        /// The example's length in tokens.
        tokens: usize,
        /// The limit.
        max: usize,
    },
    /// Truncation `right` cut every trained token.
    TruncatedAway {
        /// The example's length before truncation.
        tokens: usize,
        /// The limit.
        max: usize,
    },
}

impl ExcludeReason {
    /// A short name for the kind of reason, used to group counts.
    pub fn kind(&self) -> &'static str {
        match self {
            ExcludeReason::Template(_) => "chat template failed",
            ExcludeReason::Spans(_) => "assistant turns not locatable",
            ExcludeReason::MarkersNotFound { .. } => "response marker not found",
            ExcludeReason::NoTrainedTokens => "no trained token",
            ExcludeReason::TooLong { .. } => "longer than max_seq_length (truncation drop)",
            ExcludeReason::TruncatedAway { .. } => "every trained token past max_seq_length (truncation right)",
        }
    }
}

impl std::fmt::Display for ExcludeReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExcludeReason::Template(m) => write!(f, "the chat template failed: {m}"),
            ExcludeReason::Spans(m) => write!(f, "{m}"),
            ExcludeReason::MarkersNotFound { response_part } => {
                write!(f, "response marker {response_part:?} does not occur in the rendered text (check --response-part)")
            }
            ExcludeReason::NoTrainedTokens => {
                write!(f, "no token trains: no assistant turn, or every one has weight 0 / train false")
            }
            ExcludeReason::TooLong { tokens, max } => {
                write!(f, "{tokens} tokens exceed max_seq_length {max} (truncation drop; use truncation right to keep it cut)")
            }
            ExcludeReason::TruncatedAway { tokens, max } => {
                write!(f, "all trained tokens lie past max_seq_length {max} ({tokens} tokens, truncation right)")
            }
        }
    }
}

/// A row that yields no example, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Excluded {
    /// The row.
    pub source: RowRef,
    /// Why.
    pub reason: ExcludeReason,
}

impl std::fmt::Display for Excluded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: excluded: {}", self.source, self.reason)
    }
}

/// How one row's encoding ends early: left out, or a hard error.
#[derive(Debug)]
pub(crate) enum Skip {
    Exclude(ExcludeReason),
    Fail(EncodeError),
}

impl From<ExcludeReason> for Skip {
    fn from(r: ExcludeReason) -> Self {
        Skip::Exclude(r)
    }
}

impl From<EncodeError> for Skip {
    fn from(e: EncodeError) -> Self {
        Skip::Fail(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_say_what_happened_and_kinds_group_them() {
        let r = ExcludeReason::TooLong { tokens: 12, max: 10 };
        assert!(r.to_string().contains("12 tokens exceed max_seq_length 10"), "{r}");
        assert_eq!(r.kind(), ExcludeReason::TooLong { tokens: 3, max: 1 }.kind());
        assert_ne!(r.kind(), ExcludeReason::NoTrainedTokens.kind());
        let e = Excluded { source: RowRef { file: "d.jsonl".into(), row: 4 }, reason: ExcludeReason::NoTrainedTokens };
        assert!(e.to_string().starts_with("d.jsonl:4: excluded: no token trains"), "{e}");
    }
}
