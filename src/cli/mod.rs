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

/// A subcommand's arguments as a command line without options parses them: the tests that hold
/// each job's `Default` to the CLI's defaults start from this.
#[cfg(test)]
pub(crate) fn parsed_without_options<A: clap::Args + clap::FromArgMatches>() -> A {
    let cmd = A::augment_args(clap::Command::new("test").no_binary_name(true));
    let no_args: [&str; 0] = [];
    A::from_arg_matches(&cmd.get_matches_from(no_args)).expect("defaults parse")
}
