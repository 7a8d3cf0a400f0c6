//! Checkpoints and the transformer itself.

pub mod chat;
pub mod config;
pub mod gguf;
pub mod load;
pub mod tensors;
pub mod transformer;
pub mod weights;
