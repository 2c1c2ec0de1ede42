//! sft-infer: a trained model put to use. [`Inference`] holds a model with the tokenizer, chat
//! template and stop tokens it was trained with, loaded from a model directory, a model and an
//! adapter, or a training checkpoint ([`load`]); it renders a conversation into the prompt
//! training saw, decodes greedily or sampled ([`sampling`]) with a KV cache, stops at the
//! end-of-turn tokens or stop strings and streams the text as it grows ([`generate`]). Prompts
//! come from files ([`prompts`]) and answers can be scored against expected ones ([`score`]).
//! `sft generate`, `sft chat` and the quickstart are thin shells over it.
//!
//! ```no_run
//! use sft_data::conversation::{Conversation, Message, RowRef};
//! use sft_infer::{GenerateParams, Inference, LoadOptions};
//! let inference = Inference::load(&LoadOptions::new("outputs/checkpoint-100".into()))?;
//! let conversation = Conversation {
//!     source: RowRef { file: "example".into(), row: 1 },
//!     messages: vec![Message::text("user", "Hello!")],
//!     tools: None,
//!     documents: None,
//!     shape: sft_data::conversation::Shape::Chat,
//! };
//! let answer = inference.answer(&conversation, &GenerateParams::default(), |piece| print!("{piece}"))?;
//! println!("\n{} tokens, {:?}", answer.ids.len(), answer.finish);
//! # Ok::<(), sft_infer::InferError>(())
//! ```
#![deny(missing_docs)]

mod error;
pub mod generate;
pub mod load;
pub mod prompts;
pub mod sampling;
pub mod score;

pub use error::InferError;
pub use generate::{Decoder, Finish, GenerateParams, Generation, Step};
pub use load::{Inference, LoadOptions};
pub use sampling::Sampling;
pub use score::Score;
