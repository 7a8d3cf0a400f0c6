//! The training job: optimizer, schedule, checkpoints, the loop.

pub mod charts;
pub mod checkpoint;
pub mod optim;
pub mod run;
pub mod run_dir;
