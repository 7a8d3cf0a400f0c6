//! `eval`: its arguments, their conversion into an [`EvalJob`], and the printed summary.

use super::device::Device;
use crate::eval::EvalOptions;
use crate::jobs::eval::EvalJob;
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// piqa | arc | csqa | siqa | mmlu | gsm8k | synthetic:NAME
    #[arg(long)]
    pub task: String,
    /// Data file (.jsonl/.parquet) or folder (MMLU subjects)
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[arg(long)]
    pub limit: Option<usize>,
    /// JSON summary path (also printed)
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Per-example JSONL log
    #[arg(long)]
    pub log: Option<PathBuf>,
    /// Skip (and count) malformed rows instead of stopping
    #[arg(long)]
    pub skip_bad_rows: bool,
    #[arg(long)]
    pub threads: Option<usize>,
    /// cpu, cuda or cuda:N
    #[arg(long, default_value = "cpu")]
    pub device: Device,
}

impl From<EvalArgs> for EvalJob {
    fn from(a: EvalArgs) -> Self {
        EvalJob {
            model: a.model,
            adapter: a.adapter,
            eval: EvalOptions {
                task: a.task,
                data: a.data,
                limit: a.limit,
                out: a.out,
                log: a.log,
                skip_bad_rows: a.skip_bad_rows,
            },
            threads: a.threads,
            device: a.device,
        }
    }
}

pub fn run(a: EvalArgs) -> Result<()> {
    let summary = crate::jobs::eval::run(&EvalJob::from(a))?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}
