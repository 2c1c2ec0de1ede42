//! Encoding a whole data set: rows in parallel (rayon), results in input order, and the counts
//! a run reports.

use std::collections::BTreeMap;

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
    /// Rows left out, by reason ([`ExcludeReason::kind`]).
    pub excluded: BTreeMap<&'static str, usize>,
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
    let mut tally = Tally::default();
    let mut examples = Vec::new();
    for outcome in encoder.encode_many(conversations) {
        examples.extend(tally.add(outcome?));
    }
    let (stats, excluded) = tally.finish()?;
    Ok(Encoded { examples, excluded, stats })
}

impl Encoder<'_> {
    /// Encodes `conversations` in parallel; the outcomes in input order.
    pub fn encode_many(&self, conversations: &[Conversation]) -> Vec<Result<Outcome, EncodeError>> {
        conversations.par_iter().map(|c| self.encode(c)).collect()
    }
}

/// Counts outcomes in input order, keeping the excluded rows (all of them, or the first few
/// so that memory stays bounded on a huge file): what [`encode_all`] reports, for callers that
/// encode a chunk at a time.
#[derive(Debug)]
pub struct Tally {
    stats: EncodeStats,
    excluded: Vec<Excluded>,
    keep: usize,
    /// The first excluded row, always kept for the error when nothing is left.
    first_of_kind: Vec<Excluded>,
}

impl Default for Tally {
    fn default() -> Self {
        Tally::keeping(usize::MAX)
    }
}

impl Tally {
    /// A tally that keeps the first `keep` excluded rows (and counts all of them).
    pub fn keeping(keep: usize) -> Self {
        Tally { stats: EncodeStats::default(), excluded: Vec::new(), keep, first_of_kind: Vec::new() }
    }

    /// Counts one row's outcome; its example, if it has one.
    pub fn add(&mut self, outcome: Outcome) -> Option<Example> {
        let stats = &mut self.stats;
        stats.rows += 1;
        match outcome {
            Outcome::Example(row) => {
                stats.examples += 1;
                stats.tokens += row.example.input_ids.len();
                stats.trained_tokens += row.example.trained_tokens();
                if let Some(lost) = row.trained_tokens_lost {
                    stats.truncated_rows += 1;
                    stats.trained_tokens_lost += lost;
                }
                stats.eos_never_trained += usize::from(!row.eos_trained);
                Some(row.example)
            }
            Outcome::Excluded(ex) => {
                stats.dropped += usize::from(matches!(ex.reason, ExcludeReason::TooLong { .. }));
                let seen = stats.excluded.entry(ex.reason.kind()).or_insert(0);
                *seen += 1;
                if *seen == 1 && self.excluded.len() >= self.keep {
                    self.first_of_kind.push(ex.clone());
                }
                if self.excluded.len() < self.keep {
                    self.excluded.push(ex);
                }
                None
            }
        }
    }

    /// The counts and the excluded rows kept; an error when no example was kept.
    pub fn finish(self) -> Result<(EncodeStats, Vec<Excluded>), EncodeError> {
        if self.stats.examples == 0 {
            return Err(EncodeError::NothingLeft {
                rows: self.stats.rows,
                summary: summarize(&self.stats, &self.excluded, &self.first_of_kind),
            });
        }
        Ok((self.stats, self.excluded))
    }
}

/// `3 longer than max_seq_length (first d.jsonl:4: ...), 1 no trained token (...)`, by first
/// occurrence (found in `kept`, else in `firsts`); `no rows` when there are none.
pub(crate) fn summarize(stats: &EncodeStats, kept: &[Excluded], firsts: &[Excluded]) -> String {
    let mut groups: Vec<(&'static str, &Excluded)> = Vec::new();
    for ex in kept.iter().chain(firsts) {
        if !groups.iter().any(|(kind, _)| *kind == ex.reason.kind()) {
            groups.push((ex.reason.kind(), ex));
        }
    }
    if groups.is_empty() {
        return "no rows".into();
    }
    groups
        .iter()
        .map(|(kind, first)| format!("{} {kind} (first {first})", stats.excluded.get(kind).copied().unwrap_or(0)))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversation::RowRef;

    fn ex(row: usize, reason: ExcludeReason) -> Excluded {
        Excluded { source: RowRef { file: "d.jsonl".into(), row }, reason }
    }

    #[test]
    fn summary_counts_reasons_in_first_seen_order_keeping_one_row() {
        let mut tally = Tally::keeping(1);
        for e in [
            ex(2, ExcludeReason::TooLong { tokens: 9, max: 4 }),
            ex(3, ExcludeReason::NoTrainedTokens),
            ex(5, ExcludeReason::TooLong { tokens: 7, max: 4 }),
        ] {
            tally.add(Outcome::Excluded(e));
        }
        let s = tally.finish().unwrap_err().to_string();
        // Only one row is kept, but every reason still names its first row and all are counted.
        assert!(
            s.contains("all 3 rows were excluded (2 longer than max_seq_length (truncation drop) (first d.jsonl:2: excluded: 9 tokens"),
            "{s}"
        );
        assert!(s.contains("; 1 no trained token (first d.jsonl:3"), "{s}");
        assert_eq!(summarize(&EncodeStats::default(), &[], &[]), "no rows");
    }

    #[test]
    fn the_eos_warning_appears_only_when_needed() {
        assert_eq!(EncodeStats::default().eos_warning(), None);
        let w = EncodeStats { examples: 5, eos_never_trained: 2, ..Default::default() }.eos_warning().unwrap();
        assert!(w.starts_with("2 of 5 examples never train the EOS"), "{w}");
    }
}
