//! Integration tests of sft-model, one module per stage.

mod common;
mod generate;
mod parity;
mod checkpointing;
mod backprop;
