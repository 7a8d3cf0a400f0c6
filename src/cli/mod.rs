//! The command line: each subcommand's arguments (clap structs), their conversion into the
//! config of a job in [`crate::jobs`], and the printing of what the job returns.

pub mod bench;
pub mod bench_table;
pub mod compare;
pub mod data;
pub mod device;
pub mod eval;
pub mod heldout;
pub mod score;
pub mod train;

pub use crate::jobs::set_threads;
