//! sft-gguf integration tests: one module per stage, against fixtures made by transformers'
//! own GGUF loader (tests/fixtures/gguf/, each with its generator).

mod bad;
mod common;
mod dequant;
mod smollm2;
mod tiny;
