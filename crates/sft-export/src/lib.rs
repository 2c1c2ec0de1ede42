//! sft-export: models out to where users run them. [`ollama`] writes the `Modelfile` that
//! `ollama create` reads: the chat template in Ollama's Go template language, checked to render
//! what our Jinja template renders, the stop tokens, and the default system prompt.
#![deny(missing_docs)]

pub mod ollama;
