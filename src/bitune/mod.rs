//! The method: segment plans, trainable state (adapters and θ), the train step, adapter folders,
//! and inference over the mixed prompt cache.

pub mod adapter_io;
pub mod adapters;
pub mod engine;
pub mod generate;
pub mod infer;
pub mod params;
pub mod peft;
pub mod plan;
pub mod sample;
pub mod step;
