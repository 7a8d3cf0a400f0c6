//! `eval`: the zero-shot protocol of `crate::eval`, scored through an engine (dual prefill when
//! the adapter is Bitune).

use crate::backend::Backend;
use crate::bitune::engine::{Engine, PromptMask};
use crate::bitune::generate::{generate, GenOptions};
use crate::eval::{run_eval, ChoiceScore, EvalOptions, LmScorer};
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
    pub device: super::device::Device,
}

impl<B: Backend> LmScorer for Engine<B> {
    fn score_choices(
        &mut self,
        context: &str,
        continuations: &[String],
    ) -> Result<Vec<ChoiceScore>> {
        let reqs: Vec<(String, String)> = continuations
            .iter()
            .map(|c| (context.to_string(), c.clone()))
            .collect();
        Ok(super::score::score_all(self, &reqs)?
            .into_iter()
            .map(|s| ChoiceScore {
                logprob: s.logprobs.iter().sum(),
                greedy: s.greedy,
                n_tokens: s.tokens.len(),
            })
            .collect())
    }

    fn generate_until(&mut self, prompt: &str, max_new: usize, stops: &[String]) -> Result<String> {
        let ids = self.model.encode(prompt, true)?;
        let o = GenOptions {
            max_new,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stops: stops.to_vec(),
        };
        Ok(generate(self, &ids, &o, |_| {})?.text)
    }
}

pub fn run(a: EvalArgs) -> Result<()> {
    crate::on_device!(a.device, |be| run_on(be, a))
}

fn run_on<B: Backend>(be: B, a: EvalArgs) -> Result<()> {
    super::set_threads(a.threads)?;
    let path = crate::model::load::resolve_model(a.model.as_deref())?;
    let mut e = Engine::load(be, &path, a.adapter.as_deref(), PromptMask::Causal)?;
    let opts = EvalOptions {
        task: a.task,
        data: a.data,
        limit: a.limit,
        out: a.out,
        log: a.log,
        skip_bad_rows: a.skip_bad_rows,
    };
    let summary = run_eval(&opts, &mut e)?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}
