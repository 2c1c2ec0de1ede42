//! Llama-family decoder models for fine-tuning, written against candle's autograd.
//!
//! A model is read from a Hugging Face directory (`config.json` + safetensors, sharded or not;
//! f32/bf16/f16 weights are computed in f32), keeps transformers' tensor names, and runs the
//! whole sequence forward for training. The pieces:
//! - [`config`]: `config.json` mirrored ([`config::HfConfig`]) and resolved once
//!   ([`config::ModelConfig`]): Llama, SmolLM2, Mistral, Qwen2, Qwen3, Phi-3, Gemma, Gemma 2
//!   and Gemma 3, with linear, Llama 3, YaRN, dynamic NTK and LongRoPE scaling of RoPE;
//! - [`ops`]: fused RMSNorm, RoPE, softmax, gated activations and the chunked cross-entropy, each
//!   with a written-out backward and a finite-difference check;
//! - [`lora`]: LoRA layers and PEFT adapter directories;
//! - [`model`]: the decoder, its [`model::Batch`] (packed rows attend only within themselves)
//!   and the masked loss.
//!
//! ```no_run
//! # fn main() -> Result<(), sft_model::ModelError> {
//! use sft_model::model::{Batch, Model, Trainable};
//! let model = Model::load("path/to/model".as_ref(), &Trainable::Frozen)?;
//! let batch = Batch::new(&[sft_model::model::Sequence::single(&[1, 2, 3], &[-100, 2, 3])], 0)?;
//! let loss = model.loss(&batch)?;
//! println!("loss over {} target tokens: {}", loss.tokens, loss.sum);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod config;
mod error;
pub mod kernels;
pub mod lora;
pub mod model;
pub mod ops;
pub mod quant;
pub mod rng;
pub mod runtime;
pub mod weights;

pub use error::ModelError;
