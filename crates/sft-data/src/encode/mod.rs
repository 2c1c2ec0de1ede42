//! The encode stage: a [`Conversation`] becomes a training [`Example`] with Hugging Face
//! conventions (`labels` equal `input_ids` where the loss applies, [`IGNORE_INDEX`] elsewhere;
//! no shift). One row goes through, in order:
//!
//! 1. render with the chat template (no generation prompt);
//! 2. pick the trained character ranges by the [`Masking`] strategy and per-message
//!    `weight` / `train` fields (for prompt/completion and text rows, under `assistant` and
//!    `last`: the completion, see [`Shape`]);
//! 3. tokenize without special tokens, a token training when it overlaps a trained range;
//! 4. prepend the post-processor's BOS when the text has none, append the EOS by [`AppendEos`]
//!    (`auto` on a plain row: unless it ends with the EOS, as TRL does);
//! 5. fit `max_seq_length` by [`Truncation`].
//!
//! A row that ends with no trained token is [`Excluded`] with a reason, not an error;
//! [`encode_all`] encodes many rows in parallel and counts what happened.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::path::Path;
//! use sft_data::encode::{encode_all, EncodeOptions};
//! use sft_data::template::{Renderer, TemplateChoice};
//! use sft_data::tokens::TextTokenizer;
//! let dir = Path::new("assets/tokenizers/qwen2_5");
//! let renderer = Renderer::new(Some(dir), &TemplateChoice::default(), Default::default())?;
//! let tokenizer = TextTokenizer::from_dir(dir)?;
//! # let conversations = vec![];
//! let encoded = encode_all(&conversations, &EncodeOptions::default(), &renderer, &tokenizer)?;
//! println!("{} examples, {} trained tokens", encoded.stats.examples, encoded.stats.trained_tokens);
//! # Ok(()) }
//! ```

mod all;
mod eos;
mod error;
mod length;
mod markers;
mod mask;
mod settings;

pub use all::{encode_all, EncodeStats, Encoded, Tally};
pub use eos::AppendEos;
pub use error::{EncodeError, ExcludeReason, Excluded};
pub use length::Truncation;
pub use mask::{Markers, Masking, MaskingStrategy};
pub use settings::{EncodeSettings, SettingError};

use eos::SpecialIds;
use error::Skip;

use crate::conversation::{Conversation, RowRef, Shape};
use crate::template::{char_ranges, Renderer, TemplateError};
use crate::tokens::TextTokenizer;

/// The label of a position the loss ignores (PyTorch's `CrossEntropyLoss` default).
pub const IGNORE_INDEX: i32 = -100;

/// How conversations become examples.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncodeOptions {
    /// Which tokens train.
    pub masking: Masking,
    /// When to append the EOS.
    pub append_eos: AppendEos,
    /// The longest example, in tokens; `None` for no limit.
    pub max_seq_length: Option<usize>,
    /// What to do with a longer one.
    pub truncation: Truncation,
}

/// One training example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// The row it came from.
    pub source: RowRef,
    /// Token ids.
    pub input_ids: Vec<u32>,
    /// `input_ids[i]` where position `i` trains, [`IGNORE_INDEX`] elsewhere (not shifted).
    pub labels: Vec<i32>,
}

impl Example {
    /// How many positions train.
    pub fn trained_tokens(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()
    }
}

/// One encoded row and what happened on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedRow {
    /// The example.
    pub example: Example,
    /// With truncation `right`: how many trained tokens were cut, when the row was cut.
    pub trained_tokens_lost: Option<usize>,
    /// Whether some trained position holds the EOS.
    pub eos_trained: bool,
}

/// What one row became.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A training example.
    Example(EncodedRow),
    /// Nothing to train on.
    Excluded(Excluded),
}

/// Encodes rows for one renderer, tokenizer and set of options.
#[derive(Debug)]
pub struct Encoder<'a> {
    renderer: &'a Renderer,
    tokenizer: &'a TextTokenizer,
    options: EncodeOptions,
    special: SpecialIds,
}

impl<'a> Encoder<'a> {
    /// Checks `options` and resolves the BOS and EOS ids.
    pub fn new(renderer: &'a Renderer, tokenizer: &'a TextTokenizer, options: &EncodeOptions) -> Result<Self, EncodeError> {
        if let Masking::Markers(m) = &options.masking {
            if m.instruction_part.is_empty() || m.response_part.is_empty() {
                return Err(EncodeError::Options(
                    "masking markers needs both markers: instruction_part (e.g. \"<|im_start|>user\\n\") and \
                     response_part (e.g. \"<|im_start|>assistant\\n\")"
                        .into(),
                ));
            }
        }
        if options.max_seq_length == Some(0) {
            return Err(EncodeError::Options("max_seq_length must be at least 1".into()));
        }
        let special = SpecialIds::resolve(renderer, tokenizer, options.append_eos)?;
        Ok(Encoder { renderer, tokenizer, options: options.clone(), special })
    }

    /// The options in use.
    pub fn options(&self) -> &EncodeOptions {
        &self.options
    }

    /// Encodes one row: an example, or the reason it has none. Errors are for malformed
    /// `weight` / `train` fields, unattributable spans and tokenizer failures.
    pub fn encode(&self, conv: &Conversation) -> Result<Outcome, EncodeError> {
        match self.encode_row(conv) {
            Ok(row) => Ok(Outcome::Example(row)),
            Err(Skip::Exclude(reason)) => Ok(Outcome::Excluded(Excluded { source: conv.source.clone(), reason })),
            Err(Skip::Fail(e)) => Err(e),
        }
    }

    fn encode_row(&self, conv: &Conversation) -> Result<EncodedRow, Skip> {
        let template_failed = |e: TemplateError| ExcludeReason::Template(e.to_string());
        let (rendered, ranges) = match &self.options.masking {
            Masking::All => (self.renderer.render(conv, false, false).map_err(template_failed)?, Vec::new()),
            Masking::Markers(m) => {
                let rendered = self.renderer.render(conv, false, false).map_err(template_failed)?;
                let ranges = markers::marker_ranges(&rendered.text, m)
                    .ok_or_else(|| ExcludeReason::MarkersNotFound { response_part: m.response_part.clone() })?;
                (rendered, ranges)
            }
            masking @ (Masking::Assistant | Masking::Last) => {
                let (rendered, spans) = self.renderer.render_with_spans(conv).map_err(template_failed)?;
                let spans = spans.map_err(|e| ExcludeReason::Spans(e.to_string()))?;
                let ranges = match conv.shape {
                    // The completion, whole: TRL's completion mask.
                    Shape::Completion { .. } | Shape::Plain { .. } => char_ranges(&spans),
                    Shape::Chat => {
                        let template = self.renderer.templates().select(conv.tools.is_some()).name();
                        mask::assistant_ranges(masking, conv, &spans, template)?
                    }
                };
                (rendered, ranges)
            }
        };
        let tokenized =
            self.tokenizer.encode(&rendered.text, &ranges).map_err(|source| EncodeError::Token { row: conv.source.clone(), source })?;
        let mut ids = tokenized.input_ids;
        let mut trained: Vec<bool> = match self.options.masking {
            Masking::All => vec![true; ids.len()],
            _ => tokenized.assistant_mask.iter().map(|&m| m == 1).collect(),
        };
        if !trained.contains(&true) {
            return Err(ExcludeReason::NoTrainedTokens.into());
        }
        self.special.add_bos(&mut ids, &mut trained);
        let append_eos = match (&conv.shape, self.options.append_eos) {
            // TRL appends the EOS to a text or completion unless it ends with one.
            (Shape::Plain { .. }, AppendEos::Auto) => AppendEos::Always,
            (_, policy) => policy,
        };
        self.special.add_eos(&mut ids, &mut trained, append_eos);
        let trained_tokens_lost = length::fit(&mut ids, &mut trained, self.options.max_seq_length, self.options.truncation)?;
        let eos_trained = self.special.eos_trained(&ids, &trained);
        let labels = ids
            .iter()
            .zip(&trained)
            .map(|(&id, &t)| match t {
                true => i32::try_from(id).map_err(|_| EncodeError::TokenId { row: conv.source.clone(), id }),
                false => Ok(IGNORE_INDEX),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let example = Example { source: conv.source.clone(), input_ids: ids, labels };
        Ok(EncodedRow { example, trained_tokens_lost, eos_trained })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trained_tokens_counts_labels_that_are_not_ignored() {
        let e = Example { source: RowRef { file: "f".into(), row: 1 }, input_ids: vec![1, 2, 3], labels: vec![-100, 2, 3] };
        assert_eq!(e.trained_tokens(), 2);
    }
}
