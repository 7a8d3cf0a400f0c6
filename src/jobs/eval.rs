//! The evaluation job: the zero-shot protocol of `crate::eval`, scored through an engine (dual prefill when
//! the adapter is Bitune).

use crate::backend::device::Device;
use crate::backend::Backend;
use crate::bitune::engine::{Engine, PromptMask};
use crate::bitune::generate::{generate, GenOptions};
use crate::eval::{run_eval, ChoiceScore, EvalOptions, LmScorer};
use anyhow::Result;
use std::path::PathBuf;

/// A zero-shot evaluation: the model (and adapter) and the task options.
#[derive(Clone, Debug, Default)]
pub struct EvalJob {
    /// Checkpoint folder or .gguf; `None`: SmolLM2-135M-Instruct.
    pub model: Option<PathBuf>,
    /// Adapter folder written by `train` (or PEFT); `None`: the base model.
    pub adapter: Option<PathBuf>,
    /// The task, its data, and where the summary and log go.
    pub eval: EvalOptions,
    /// CPU threads; `None`: all cores.
    pub threads: Option<usize>,
    /// The device the model runs on.
    pub device: Device,
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

/// Runs the evaluation; returns the summary (also written to `eval.out` when set).
pub fn run(job: &EvalJob) -> Result<serde_json::Value> {
    crate::on_device!(job.device, |be| run_on(be, job))
}

fn run_on<B: Backend>(be: B, job: &EvalJob) -> Result<serde_json::Value> {
    super::set_threads(job.threads)?;
    let path = crate::model::load::resolve_model(job.model.as_deref())?;
    let mut e = Engine::load(be, &path, job.adapter.as_deref(), PromptMask::Causal)?;
    run_eval(&job.eval, &mut e)
}
