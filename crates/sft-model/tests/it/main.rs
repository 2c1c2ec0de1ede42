//! Integration tests of sft-model, one module per stage.

mod backprop;
mod checkpointing;
mod common;
mod dora;
mod kv_cache;
mod parity;
mod rope;
