//! Training data: instruction/response JSONL, templates and tokenization.

pub mod examples;
pub mod synth;
