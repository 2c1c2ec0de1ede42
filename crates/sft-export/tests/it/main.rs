//! Integration tests of sft-export, one module per stage.

mod gguf;
mod ollama;
