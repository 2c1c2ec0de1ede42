//! sft-gguf: a GGUF file (llama.cpp, Ollama) as a model. [`import`] writes the Hugging Face
//! directory the file stands for, which every other crate then loads like any model directory:
//!
//! - `config.json` from the file's metadata ([`metadata`]: a typed mirror of the GGUF keys, then
//!   one conversion per architecture, as transformers' own GGUF loader makes it);
//! - `model.safetensors`: every tensor dequantized through candle's `quantized` module, renamed
//!   to transformers' names, with llama.cpp's Q/K row permutation undone ([`tensors`]);
//! - `tokenizer.json`, `tokenizer_config.json` and `chat_template.jinja` rebuilt from
//!   `tokenizer.ggml.*` and `tokenizer.chat_template` ([`tokenizer`]);
//! - `generation_config.json` with the BOS, EOS and padding ids.
//!
//! GGUF key and tensor names appear only in this crate. A file is checked against its own
//! length before candle reads it ([`file`]), so a truncated or hostile file is an error naming
//! the file and the key or tensor, never a panic or a huge allocation. [`cached`] converts a
//! file once into a cache directory and reuses it.
//!
//! ```no_run
//! let summary = sft_gguf::import(std::path::Path::new("model.Q4_1.gguf"), std::path::Path::new("model-hf"))?;
//! println!("{} tensors, {}", summary.tensors, summary.architecture);
//! # Ok::<(), sft_gguf::GgufError>(())
//! ```
#![deny(missing_docs)]

mod cache;
mod error;
pub mod file;
mod import;
pub mod metadata;
pub mod tensors;
pub mod tokenizer;

pub use cache::{cache_root, cached};
pub use error::GgufError;
pub use import::{import, ImportSummary};
