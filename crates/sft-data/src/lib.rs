//! sft-data: everything before the model. Training data in the shapes people have (Alpaca,
//! ShareGPT, OpenAI messages; JSONL, JSON, Parquet) becomes a [`conversation::Conversation`];
//! a [`template::ChatTemplate`] renders it exactly as transformers' `apply_chat_template` does;
//! [`tokens`] turns the text into token ids and the assistant-token mask; [`encode`] makes
//! training examples (labels with -100 where no loss applies, EOS/BOS rules, truncation);
//! [`pack`] bin-packs them into fixed-length sequences; [`prepared`] stores them on disk for
//! training.
#![deny(missing_docs)]

pub mod conversation;
pub mod data;
pub mod encode;
pub mod pack;
pub mod prepared;
pub mod template;
pub mod tokens;
