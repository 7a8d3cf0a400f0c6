//! Checkpoints and the transformer itself.

pub mod chat;
pub mod config;
pub mod gguf;
pub mod gguf_tokenizer;
pub mod load;
pub mod safetensors_io;
pub mod tensors;
pub mod transformer;
pub mod weights;
