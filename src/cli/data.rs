//! `data`: dataset utilities (the synthetic instruction suite).

use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Subcommand, Debug)]
pub enum DataCmd {
    /// Write seeded synthetic instruction data with verifiable answers as JSONL
    Synth {
        /// Family name (see `crate::data::synth`)
        #[arg(long)]
        task: String,
        #[arg(long, default_value_t = 100)]
        n: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// train | test (the splits never overlap)
        #[arg(long, default_value = "train")]
        split: String,
        /// Output file (default: stdout)
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

pub fn run(cmd: DataCmd) -> Result<()> {
    match cmd {
        DataCmd::Synth {
            task,
            n,
            seed,
            split,
            out,
        } => {
            let split = match split.as_str() {
                "train" => crate::data::synth::Split::Train,
                "test" => crate::data::synth::Split::Test,
                other => anyhow::bail!("--split {other:?}: expected train or test"),
            };
            crate::data::synth::synth_cli(&task, n, seed, split, out)
        }
    }
}
