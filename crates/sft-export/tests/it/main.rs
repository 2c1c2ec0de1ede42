//! Integration tests of sft-export, one module per stage.

mod ollama;
mod gguf;
