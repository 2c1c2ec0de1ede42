//! Integration tests of sft-model, one module per stage.

mod added_tokens;
mod backprop;
mod checkpointing;
mod common;
mod dora;
mod kv_cache;
mod parity;
mod rope;
