//! `bench`: its arguments, their conversion into a [`BenchJob`], and the printed table or JSON.

use super::device::Device;
use crate::jobs::bench::BenchJob;
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// cpu, cuda or cuda:N
    #[arg(long, default_value = "cpu")]
    pub device: Device,
    #[arg(long, default_value_t = 50)]
    pub prompt: usize,
    #[arg(long, default_value_t = 200)]
    pub answer: usize,
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Also time train steps of Bitune and of the LoRA baseline (loss, gradients, clip, AdamW),
    /// the two in turn
    #[arg(long)]
    pub train: bool,
    /// Time only the train steps (implies --train): for profiling the training path
    #[arg(long)]
    pub train_only: bool,
    /// Time every CPU backend op; adds a "profile" table (per phase, per op) to the JSON
    #[arg(long)]
    pub profile: bool,
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print the JSON report on stdout instead of the table (for scripts)
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON report to this file
    #[arg(long)]
    pub out: Option<PathBuf>,
}

impl From<&BenchArgs> for BenchJob {
    fn from(a: &BenchArgs) -> Self {
        BenchJob {
            model: a.model.clone(),
            device: a.device,
            prompt: a.prompt,
            answer: a.answer,
            repeat: a.repeat,
            train: a.train,
            train_only: a.train_only,
            profile: a.profile,
            threads: a.threads,
            out: a.out.clone(),
        }
    }
}

pub fn run(a: BenchArgs) -> Result<()> {
    let report = crate::jobs::bench::run(&BenchJob::from(&a))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", super::bench_table::table(&report));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::parsed_without_options;

    /// The library's defaults are the command line's.
    #[test]
    fn defaults_match_the_command_line() {
        let a: BenchArgs = parsed_without_options();
        assert_eq!(BenchJob::from(&a), BenchJob::default());
    }
}
