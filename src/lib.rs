//! bitune-rt: Bitune (bidirectional instruction-tuning) for decoder-only LLMs.
//!
//! One packed forward over segments (causal prompt C, bidirectional prompt B, answer A) with a
//! hand-written backward pass, over a narrow [`backend::Backend`] trait whose CPU implementation
//! is the reference every accelerator kernel is tested against.

pub mod backend;
pub mod bitune;
pub mod cli;
pub mod data;
pub mod eval;
pub mod ffi;
pub mod io;
pub mod jobs;
pub mod model;
pub mod rng;
pub mod train;
