//! The generation job: text after a prompt, streamed piece by piece to the caller.

use crate::backend::device::Device;
use crate::backend::Backend;
use crate::bitune::engine::{Engine, PromptMask};
use crate::bitune::generate::{generate, GenOptions, GenStats};
use crate::model::load::resolve_model;
use anyhow::{bail, Result};
use std::path::PathBuf;

/// The model an inference job runs: checkpoint, adapter, how the base model reads the prompt,
/// device and threads (shared by [`GenerateJob`] and `score`).
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    /// Hugging Face checkpoint folder or .gguf file; `None`: SmolLM2-135M-Instruct.
    pub model: Option<PathBuf>,
    /// Adapter folder written by `train` (or PEFT).
    pub adapter: Option<PathBuf>,
    /// How the base model reads the prompt (no adapter).
    pub prompt_mask: PromptMask,
    /// The device the model runs on.
    pub device: Device,
    /// CPU threads; `None`: all cores.
    pub threads: Option<usize>,
}

impl Default for ModelSpec {
    fn default() -> Self {
        ModelSpec {
            model: None,
            adapter: None,
            prompt_mask: PromptMask::Causal,
            device: Device::Cpu,
            threads: None,
        }
    }
}

impl ModelSpec {
    /// Loads the engine this spec names on the backend `be`.
    pub fn engine<B: Backend>(&self, be: B) -> Result<Engine<B>> {
        super::set_threads(self.threads)?;
        let path = resolve_model(self.model.as_deref())?;
        Engine::load(be, &path, self.adapter.as_deref(), self.prompt_mask)
    }
}

/// A generation: the prompt and how to sample, with the command line's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateJob {
    /// The model to run.
    pub model: ModelSpec,
    /// The prompt text.
    pub prompt: String,
    /// Tokens to generate at most.
    pub max_new: usize,
    /// Sampling temperature; 0 is greedy.
    pub temperature: f32,
    /// Nucleus sampling mass, in (0, 1].
    pub top_p: f32,
    /// Sampling seed.
    pub seed: u64,
    /// Wrap the prompt in the model's chat template.
    pub chat: bool,
}

impl Default for GenerateJob {
    fn default() -> Self {
        GenerateJob {
            model: ModelSpec::default(),
            prompt: String::new(),
            max_new: 128,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            chat: false,
        }
    }
}

/// Runs a generation, handing each decoded piece to `on_piece` as it comes; returns the timing.
pub fn run(job: &GenerateJob, on_piece: impl FnMut(&str)) -> Result<GenStats> {
    if !(0.0..=1.0).contains(&job.top_p) || job.top_p == 0.0 || job.temperature < 0.0 {
        bail!("--top-p must be in (0, 1] and --temperature >= 0");
    }
    crate::on_device!(job.model.device, |be| run_on(be, job, on_piece))
}

fn run_on<B: Backend>(be: B, job: &GenerateJob, on_piece: impl FnMut(&str)) -> Result<GenStats> {
    let e = job.model.engine(be)?;
    let text = if job.chat {
        crate::model::chat::apply_chat_template(e.model.chat_template.as_deref(), &job.prompt)?
    } else {
        job.prompt.clone()
    };
    let ids = e.model.encode(&text, !job.chat)?;
    if ids.is_empty() {
        bail!("the prompt is empty after tokenization: nothing to generate from");
    }
    let o = GenOptions {
        max_new: job.max_new,
        temperature: job.temperature,
        top_p: job.top_p,
        seed: job.seed,
        stops: vec![],
    };
    Ok(generate(&e, &ids, &o, on_piece)?.stats)
}
