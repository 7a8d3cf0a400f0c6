//! A model with its adapter state, ready for prefill, decoding and scoring.

use super::adapter_io::{load_params, read_meta, AdapterMeta};
use super::adapters::{AdapterState, LoraPacks};
use super::infer::{decode_step, decode_step_greedy, prefill, score_continuations};
use super::params::{LoraSpec, ParamTable};
use super::plan::Method;
use super::step::Trainable;
use crate::backend::Backend;
use crate::model::load::Model;
use crate::model::transformer::KvCache;
use anyhow::{bail, Context, Result};
use std::path::Path;

/// How the base model (no adapter) reads the prompt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PromptMask {
    Causal,
    Bidirectional,
}

pub struct Engine<B: Backend> {
    pub be: B,
    pub model: Model<B>,
    adapters: Adapted<B>,
}

/// An adapter state with the decoding forms of its low-rank adapters ([`LoraPacks`]), built on
/// the first decoding step from the state's values. The state can be read but not changed while
/// they are kept together, so the forms never outlive the values they were built from.
pub struct Adapted<B: Backend> {
    tr: Trainable<B>,
    packs: LoraPacks<B>,
}

impl<B: Backend> Adapted<B> {
    pub fn new(tr: Trainable<B>) -> Self {
        let packs = LoraPacks::new(&tr.table);
        Adapted { tr, packs }
    }
    pub fn tr(&self) -> &Trainable<B> {
        &self.tr
    }
    /// The state, to change it (its decoding forms are dropped).
    pub fn into_trainable(self) -> Trainable<B> {
        self.tr
    }
    /// The adapters for a forward, decoding steps reading the kept forms.
    pub fn state(&self) -> AdapterState<'_, B> {
        AdapterState {
            packs: Some(&self.packs),
            ..self.tr.state()
        }
    }
}

/// A trainable state with no adapters at all: the base model, read with `method`'s masks.
pub fn empty_trainable<B: Backend>(be: &B, model: &Model<B>, method: Method) -> Trainable<B> {
    let lora = LoraSpec {
        rank: 1,
        alpha: 1.0,
        targets: vec![],
    };
    let table = ParamTable::new(&model.weights.cfg, lora, method.num_sets(), false);
    Trainable {
        method,
        params: be.upload(&[]),
        table,
        theta_init: 0.01,
    }
}

/// Loads an adapter folder onto a model.
pub fn load_adapter<B: Backend>(
    be: &B,
    model: &Model<B>,
    dir: &Path,
) -> Result<(Trainable<B>, AdapterMeta)> {
    let cfg = &model.weights.cfg;
    let meta = read_meta(dir, cfg).with_context(|| format!("loading adapter {}", dir.display()))?;
    let table = ParamTable::with_peft(
        cfg,
        meta.lora.clone(),
        meta.peft,
        meta.method.num_sets(),
        meta.method.mixes(),
    );
    let host = load_params(dir, &table, &meta)
        .with_context(|| format!("loading adapter {}", dir.display()))?;
    let tr = Trainable {
        method: meta.method,
        params: be.upload(&host),
        table,
        theta_init: meta.theta_init,
    };
    Ok((tr, meta))
}

impl<B: Backend> Engine<B> {
    pub fn load(
        be: B,
        model_path: &Path,
        adapter: Option<&Path>,
        mask: PromptMask,
    ) -> Result<Self> {
        let model = Model::load(&be, model_path)?;
        let tr = match adapter {
            Some(dir) => {
                if mask == PromptMask::Bidirectional {
                    bail!(
                        "--prompt-mask applies to the base model; an adapter brings its own method"
                    );
                }
                load_adapter(&be, &model, dir)?.0
            }
            None => {
                let m = if mask == PromptMask::Causal {
                    Method::CAUSAL_LM
                } else {
                    Method::NaiveBidir
                };
                empty_trainable(&be, &model, m)
            }
        };
        Ok(Engine::new(be, model, tr))
    }

    pub fn new(be: B, model: Model<B>, tr: Trainable<B>) -> Self {
        Engine {
            be,
            model,
            adapters: Adapted::new(tr),
        }
    }

    /// The adapter state this engine runs.
    pub fn tr(&self) -> &Trainable<B> {
        self.adapters.tr()
    }

    /// The backend, the model and the adapter state, apart (the state to be changed).
    pub fn into_parts(self) -> (B, Model<B>, Trainable<B>) {
        (self.be, self.model, self.adapters.into_trainable())
    }

    /// Runs `a`'s adapters from now on, and leaves the ones this engine ran in `a` (with the
    /// decoding forms each has built).
    pub fn swap_adapters(&mut self, a: &mut Adapted<B>) {
        std::mem::swap(&mut self.adapters, a);
    }

    pub fn prefill(&self, ctx: &[u32]) -> Result<(KvCache<B>, Vec<f32>)> {
        prefill(&self.be, &self.model.weights, self.tr(), ctx)
    }

    pub fn decode(&self, cache: &mut KvCache<B>, token: u32) -> Result<Vec<f32>> {
        let ad = self.adapters.state();
        decode_step(&self.be, &self.model.weights, &ad, cache, token)
    }

    /// A decoding step that returns the greedy token rather than the logits (see
    /// [`decode_step_greedy`]).
    pub fn decode_greedy(&self, cache: &mut KvCache<B>, token: u32) -> Result<u32> {
        let ad = self.adapters.state();
        decode_step_greedy(&self.be, &self.model.weights, &ad, cache, token)
    }

    pub fn score(&self, ctx: &[u32], conts: &[Vec<u32>]) -> Result<Vec<(Vec<f64>, bool)>> {
        score_continuations(&self.be, &self.model.weights, self.tr(), ctx, conts)
    }
}
