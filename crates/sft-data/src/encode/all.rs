//! Encoding a whole data set: rows in parallel (rayon), results in input order, and the counts
//! a run reports.

use rayon::prelude::*;

use super::error::{EncodeError, ExcludeReason, Excluded};
use super::{EncodeOptions, Encoder, Example, Outcome};
use crate::conversation::Conversation;
use crate::template::Renderer;
use crate::tokens::TextTokenizer;

/// Every row's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// The examples, in input order.
    pub examples: Vec<Example>,
    /// The rows left out, in input order.
    pub excluded: Vec<Excluded>,
    /// The counts.
    pub stats: EncodeStats,
}

/// What encoding did, for the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncodeStats {
    /// Rows in.
    pub rows: usize,
    /// Examples out.
    pub examples: usize,
    /// Tokens over all examples.
    pub tokens: usize,
    /// Trained positions over all examples.
    pub trained_tokens: usize,
    /// Examples cut by truncation `right`.
    pub truncated_rows: usize,
    /// Trained tokens those cuts removed.
    pub trained_tokens_lost: usize,
    /// Rows left out for exceeding `max_seq_length` (truncation `drop`).
    pub dropped: usize,
    /// Examples where no trained position holds the EOS: the model never learns to stop.
    pub eos_never_trained: usize,
}

impl EncodeStats {
    /// A warning when some examples never train the EOS, with counts and the fix.
    pub fn eos_warning(&self) -> Option<String> {
        (self.eos_never_trained > 0).then(|| {
            format!(
                "{} of {} examples never train the EOS token, so the model may not learn to stop; \
                 set append_eos auto or always, or map the EOS to the template's end-of-turn token",
                self.eos_never_trained, self.examples
            )
        })
    }
}

/// Encodes `conversations` in parallel, keeping input order. Errors on the first (in input
/// order) row error, and when every row is excluded (naming how many for which reason).
pub fn encode_all(
    conversations: &[Conversation],
    options: &EncodeOptions,
    renderer: &Renderer,
    tokenizer: &TextTokenizer,
) -> Result<Encoded, EncodeError> {
    let encoder = Encoder::new(renderer, tokenizer, options)?;
    let outcomes: Vec<Result<Outcome, EncodeError>> = conversations.par_iter().map(|c| encoder.encode(c)).collect();
    let mut stats = EncodeStats { rows: conversations.len(), ..Default::default() };
    let (mut examples, mut excluded) = (Vec::new(), Vec::new());
    for outcome in outcomes {
        match outcome? {
            Outcome::Example(row) => {
                stats.examples += 1;
                stats.tokens += row.example.input_ids.len();
                stats.trained_tokens += row.example.trained_tokens();
                if let Some(lost) = row.trained_tokens_lost {
                    stats.truncated_rows += 1;
                    stats.trained_tokens_lost += lost;
                }
                stats.eos_never_trained += usize::from(!row.eos_trained);
                examples.push(row.example);
            }
            Outcome::Excluded(ex) => {
                stats.dropped += usize::from(matches!(ex.reason, ExcludeReason::TooLong { .. }));
                excluded.push(ex);
            }
        }
    }
    if examples.is_empty() {
        return Err(EncodeError::NothingLeft { rows: conversations.len(), summary: summarize(&excluded) });
    }
    Ok(Encoded { examples, excluded, stats })
}

/// `3 longer than max_seq_length (first d.jsonl:4: ...), 1 no trained token (...)`, by first
/// occurrence; `no rows` when there are none.
pub(crate) fn summarize(excluded: &[Excluded]) -> String {
    let mut groups: Vec<(&'static str, usize, &Excluded)> = Vec::new();
    for ex in excluded {
        match groups.iter_mut().find(|(kind, _, _)| *kind == ex.reason.kind()) {
            Some(group) => group.1 += 1,
            None => groups.push((ex.reason.kind(), 1, ex)),
        }
    }
    if groups.is_empty() {
        return "no rows".into();
    }
    groups.iter().map(|(kind, n, first)| format!("{n} {kind} (first {first})")).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversation::RowRef;

    fn ex(row: usize, reason: ExcludeReason) -> Excluded {
        Excluded { source: RowRef { file: "d.jsonl".into(), row }, reason }
    }

    #[test]
    fn summary_counts_reasons_in_first_seen_order() {
        let s = summarize(&[
            ex(2, ExcludeReason::TooLong { tokens: 9, max: 4 }),
            ex(3, ExcludeReason::NoTrainedTokens),
            ex(5, ExcludeReason::TooLong { tokens: 7, max: 4 }),
        ]);
        assert!(s.starts_with("2 longer than max_seq_length (truncation drop) (first d.jsonl:2: excluded: 9 tokens"), "{s}");
        assert!(s.contains("; 1 no trained token (first d.jsonl:3"), "{s}");
        assert_eq!(summarize(&[]), "no rows");
    }

    #[test]
    fn the_eos_warning_appears_only_when_needed() {
        assert_eq!(EncodeStats::default().eos_warning(), None);
        let w = EncodeStats { examples: 5, eos_never_trained: 2, ..Default::default() }.eos_warning().unwrap();
        assert!(w.starts_with("2 of 5 examples never train the EOS"), "{w}");
    }
}
