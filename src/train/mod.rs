//! The training job: optimizer, schedule, checkpoints, the loop.

pub mod atomic;
pub mod charts;
pub mod optim;
pub mod checkpoint;
pub mod run;
