//! `train`: its arguments, their conversion into a [`TrainJob`], and the before/after report.

use super::device::Device;
use super::heldout;
use crate::bitune::peft::Peft;
use crate::bitune::plan::Method;
use crate::jobs::train::{Report, TrainJob};
use crate::train::optim::{OptKind, Schedule};
use anyhow::Result;
use clap::ValueEnum;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OptArg {
    Adamw,
    Sgd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SchedArg {
    Linear,
    Constant,
}

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Checkpoint folder or .gguf (default: SmolLM2-135M-Instruct)
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// JSONL with instruction/response fields (default: the bundled synthetic suite)
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[arg(long, default_value = "instruction")]
    pub instruction_field: String,
    #[arg(long, default_value = "response")]
    pub response_field: String,
    /// Output folder: receives the final adapter; checkpoints go to OUT/checkpoints/step-N/.
    /// Default: runs/bitune, or runs/bitune-2, -3, ... when that holds a run already. A folder
    /// that holds another run is refused unless --overwrite is given
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replace the run in --out (its checkpoints, metrics and adapter; other files stay)
    #[arg(long)]
    pub overwrite: bool,
    /// bitune | lora | naive-bidir | no-mixing | only-causal | shared-weights | anti-causal
    #[arg(long, default_value = "bitune")]
    pub method: String,
    /// Adapter type of both sets (default lora; with --init-adapter, the folder's)
    #[arg(long, value_enum)]
    pub peft: Option<Peft>,
    /// Optimizer updates. The default (100 × batch 4 = one pass over the bundled suite) is
    /// what it takes, at the default --lr, for Bitune to beat the base model on every family of
    /// the held-out table; about 3 minutes on 2 idle cores with the evaluation
    #[arg(long, default_value_t = 100)]
    pub steps: u64,
    /// Peak learning rate (LoRA and θ alike, as in the paper). The default 3e-3 is the top of the
    /// paper's grid {1e-4, 3e-4, 1e-3, 3e-3}, above its task LR 1e-3 (compare's default): with
    /// the global-norm clip, θ's gradient (×25 at init) dominates the norm and scales the
    /// adapters' gradients down to Adam's eps, so they move slower than the LR says; in a
    /// 100-step budget 1e-3 leaves Bitune near the base model
    #[arg(long, default_value_t = 3e-3)]
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
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[arg(long, value_enum, default_value_t = OptArg::Adamw)]
    pub optimizer: OptArg,
    #[arg(long, value_enum, default_value_t = SchedArg::Linear)]
    pub lr_schedule: SchedArg,
    #[arg(long, default_value_t = 0.1)]
    pub warmup_ratio: f32,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f32,
    /// Global gradient-norm clip, over LoRA and θ together, as the paper's code does (the paper
    /// does not mention it). 0 turns it off [departs from the paper's code]: θ's gradient then no
    /// longer scales the adapters' down, and Bitune learns about as fast as LoRA
    #[arg(long, default_value_t = 1.0)]
    pub clip: f32,
    #[arg(long, default_value_t = 512)]
    pub max_len: usize,
    /// Checkpoint every N steps (0: only at the end); a checkpoint of the default model is ~60 MB
    #[arg(long, default_value_t = 25)]
    pub save_every: u64,
    /// Start from an adapter folder (its config sets rank, alpha and targets)
    #[arg(long)]
    pub init_adapter: Option<PathBuf>,
    /// Continue a run from its latest checkpoint (the run's folder or a step folder) with the
    /// same settings; the run continues in its folder unless --out names another
    #[arg(long)]
    pub resume: Option<PathBuf>,
    #[arg(long)]
    pub threads: Option<usize>,
    /// cpu, cuda or cuda:N (adapters and checkpoints are the same files on either)
    #[arg(long, default_value = "cpu")]
    pub device: Device,
    /// No before/after report (held-out table and sample answers)
    #[arg(long)]
    pub no_samples: bool,
    /// Held-out items per family in the before/after table (bundled suite only)
    #[arg(long, default_value_t = 40)]
    pub eval_n: usize,
}

/// Fails on a `--method` that names no method, before any model is loaded.
impl TryFrom<&TrainArgs> for TrainJob {
    type Error = anyhow::Error;

    fn try_from(a: &TrainArgs) -> anyhow::Result<Self> {
        Ok(TrainJob {
            model: a.model.clone(),
            data: a.data.clone(),
            instruction_field: a.instruction_field.clone(),
            response_field: a.response_field.clone(),
            out: a.out.clone(),
            overwrite: a.overwrite,
            method: Method::parse(&a.method)?,
            peft: a.peft,
            steps: a.steps,
            lr: a.lr,
            batch: a.batch,
            accum: a.accum,
            rank: a.rank,
            alpha: a.alpha,
            targets: a.targets.clone(),
            theta_init: a.theta_init,
            seed: a.seed,
            optimizer: match a.optimizer {
                OptArg::Adamw => OptKind::AdamW,
                OptArg::Sgd => OptKind::Sgd,
            },
            lr_schedule: match a.lr_schedule {
                SchedArg::Linear => Schedule::Linear,
                SchedArg::Constant => Schedule::Constant,
            },
            warmup_ratio: a.warmup_ratio,
            weight_decay: a.weight_decay,
            clip: a.clip,
            max_len: a.max_len,
            save_every: a.save_every,
            init_adapter: a.init_adapter.clone(),
            resume: a.resume.clone(),
            threads: a.threads,
            device: a.device,
            no_samples: a.no_samples,
            eval_n: a.eval_n,
        })
    }
}

pub fn run(a: TrainArgs) -> Result<()> {
    let o = crate::jobs::train::run(&TrainJob::try_from(&a)?)?;
    match &o.report {
        Report::None => {}
        Report::Sample { before, after } => {
            eprintln!("before (base model): {before:?}");
            eprintln!("after ({}):  {after:?}", o.method);
        }
        Report::Table { before, after } => {
            println!("{}", heldout::table(before, after, &o.method)?);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::parsed_without_options;

    /// The library's defaults are the command line's: a run configured in code trains as the
    /// same run typed without options.
    #[test]
    fn defaults_match_the_command_line() {
        let a: TrainArgs = parsed_without_options();
        assert_eq!(TrainJob::try_from(&a).unwrap(), TrainJob::default());
    }
}
