//! Exact-match scoring: answers against the ones expected, as the quickstart and
//! `sft generate --input` report it.

use std::path::Path;

use serde::Serialize;

use crate::prompts::read_prompts;
use crate::{GenerateParams, InferError, Inference};

/// Accuracy over scored prompts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Score {
    /// Prompts with an expected answer.
    pub total: usize,
    /// Answers equal to it (surrounding whitespace ignored).
    pub exact: usize,
    /// Answers containing it.
    pub contains: usize,
}

/// A score as fractions (`--scores FILE`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// Prompts scored.
    pub prompts: usize,
    /// Fraction answered exactly.
    pub exact_match: f64,
    /// Fraction whose answer contains the expected one.
    pub contains: f64,
}

impl Score {
    /// Whether `answer` is `expected` (surrounding whitespace ignored).
    pub fn is_exact(answer: &str, expected: &str) -> bool {
        answer.trim() == expected.trim()
    }

    /// Adds one answer.
    pub fn add(&mut self, answer: &str, expected: &str) {
        self.total += 1;
        self.exact += usize::from(Self::is_exact(answer, expected));
        self.contains += usize::from(answer.contains(expected.trim()));
    }

    /// As fractions.
    pub fn summary(self) -> Summary {
        let fraction = |n: usize| if self.total == 0 { 0.0 } else { n as f64 / self.total as f64 };
        Summary { prompts: self.total, exact_match: fraction(self.exact), contains: fraction(self.contains) }
    }
}

/// Scores every prompt of a JSONL file that has an `"expected"` answer, greedily, at most
/// `max_new_tokens` each.
pub fn score_file(inference: &Inference, path: &Path, max_new_tokens: usize) -> Result<Score, InferError> {
    let params = GenerateParams { max_new_tokens, ..GenerateParams::default() };
    let mut score = Score::default();
    for p in read_prompts(path)? {
        if let Some(expected) = &p.expected {
            let answer = inference.answer(&p.conversation, &params, |_| {})?;
            score.add(&answer.text, expected);
        }
    }
    Ok(score)
}
