//! sft-data's integration tests, one module per stage: data readers (good files and the
//! bad-input corpus), template parity with transformers, built-in templates, the encode and pack stages, building prepared datasets a chunk at a time, the tokenizer fast path.

mod build;
mod builtin_templates;
mod common;
mod data_bad;
mod data_good;
mod encode;
mod encode_parity;
mod pack;
mod render_masks;
mod render_parity;
mod tokens;
mod trl_shapes;
