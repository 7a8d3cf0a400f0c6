//! `compare`: its arguments, their conversion into a [`CompareJob`], and the printed table.

use super::device::Device;
use crate::data::synth::BUNDLED_N;
use crate::jobs::compare::{markdown, CompareJob};
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct CompareArgs {
    /// Checkpoint folder or .gguf (default: SmolLM2-135M-Instruct)
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Comma-separated methods (train's --method names), plus `base` for the untrained model
    #[arg(long, default_value = "lora,bitune")]
    pub methods: String,
    /// Number of seeds per method: --first-seed, --first-seed + 1, ...
    #[arg(long, default_value_t = 3)]
    pub seeds: u64,
    #[arg(long, default_value_t = 42)]
    pub first_seed: u64,
    /// Training data: synthetic:NAME (a family's train split) or synthetic:mix (all families)
    #[arg(long, default_value = "synthetic:mix")]
    pub train_task: String,
    /// Synthetic training examples to draw
    #[arg(long, default_value_t = BUNDLED_N)]
    pub train_n: usize,
    /// JSONL training data with instruction/response fields, instead of --train-task
    #[arg(long, conflicts_with = "train_task")]
    pub data: Option<PathBuf>,
    #[arg(long, default_value = "instruction")]
    pub instruction_field: String,
    #[arg(long, default_value = "response")]
    pub response_field: String,
    /// Comma-separated evaluation tasks: `synthetic:NAME`, or `TASK=DATA` for the real tasks
    /// (e.g. `arc=ARC-Challenge-test.jsonl`)
    #[arg(long, default_value = "synthetic:mc,synthetic:lookup")]
    pub eval_tasks: String,
    /// Evaluate only the first N items of each task
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long, default_value_t = 30)]
    pub steps: u64,
    /// Peak learning rate: the paper's for its task data sets (Table 9), for every method
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f32,
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    #[arg(long, default_value_t = 1)]
    pub accum: usize,
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    #[arg(long, default_value_t = 1.0)]
    pub alpha: f32,
    /// Comma-separated module names (default: all attention and MLP linears)
    #[arg(long)]
    pub targets: Option<String>,
    #[arg(long, default_value_t = 0.01)]
    pub theta_init: f32,
    /// Global gradient-norm clip as in the paper's code; 0 turns it off [departs from the
    /// paper's code] (see train --help)
    #[arg(long, default_value_t = 1.0)]
    pub clip: f32,
    #[arg(long, default_value_t = 512)]
    pub max_len: usize,
    /// Receives compare.json, compare.md and runs/<method>-seed<S>/ (adapter, metrics, eval logs)
    #[arg(long, default_value = "runs/compare")]
    pub out: PathBuf,
    #[arg(long)]
    pub threads: Option<usize>,
    /// cpu, cuda or cuda:N
    #[arg(long, default_value = "cpu")]
    pub device: Device,
}

impl From<&CompareArgs> for CompareJob {
    fn from(a: &CompareArgs) -> Self {
        CompareJob {
            model: a.model.clone(),
            methods: a.methods.clone(),
            seeds: a.seeds,
            first_seed: a.first_seed,
            train_task: a.train_task.clone(),
            train_n: a.train_n,
            data: a.data.clone(),
            instruction_field: a.instruction_field.clone(),
            response_field: a.response_field.clone(),
            eval_tasks: a.eval_tasks.clone(),
            limit: a.limit,
            steps: a.steps,
            lr: a.lr,
            batch: a.batch,
            accum: a.accum,
            rank: a.rank,
            alpha: a.alpha,
            targets: a.targets.clone(),
            theta_init: a.theta_init,
            clip: a.clip,
            max_len: a.max_len,
            out: a.out.clone(),
            threads: a.threads,
            device: a.device,
        }
    }
}

pub fn run(a: CompareArgs) -> Result<()> {
    let report = crate::jobs::compare::run(&CompareJob::from(&a))?;
    println!("{}", markdown(&report));
    eprintln!(
        "wrote {} and {}",
        a.out.join("compare.json").display(),
        a.out.join("compare.md").display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::parsed_without_options;

    /// The library's defaults are the command line's.
    #[test]
    fn defaults_match_the_command_line() {
        let a: CompareArgs = parsed_without_options();
        assert_eq!(CompareJob::from(&a), CompareJob::default());
    }
}
