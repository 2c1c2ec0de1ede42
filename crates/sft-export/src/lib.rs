//! sft-export: models out to where users run them. [`gguf`] writes the GGUF file llama.cpp
//! and Ollama load (a model, with an adapter merged or as a LoRA GGUF of its own) with the
//! tokenizer, chat template and EOS it was trained with; [`ollama`] writes the `Modelfile` that
//! `ollama create` reads: the chat template in Ollama's Go template language, checked to render
//! what our Jinja template renders, the stop tokens, and the default system prompt.
#![deny(missing_docs)]

pub mod gguf;
pub mod ollama;
