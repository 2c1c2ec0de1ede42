//! Integration tests of sft-infer, one module per stage.

mod common;
mod generate;
mod stream;
