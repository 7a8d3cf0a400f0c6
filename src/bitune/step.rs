//! Trainable state and the loss/gradient of a batch: pack, forward, cross-entropy, backward.

use super::adapters::AdapterState;
use super::params::{alpha, Kind, LoraSpec, ParamTable};
use super::peft::{dora_row_norms, Peft};
use super::plan::{pack, train_seq, Example, Method};
use crate::backend::{Backend, CrossEntropyTargets};
use crate::model::transformer::{backward, forward, Mode};
use crate::model::weights::Weights;
use crate::rng::Rng;
use anyhow::{bail, Result};

/// Adapters (both sets) and θ as one flat buffer described by its table.
pub struct Trainable<B: Backend> {
    pub method: Method,
    pub table: ParamTable,
    pub params: B::Buf,
    pub theta_init: f32,
}

impl<B: Backend> Trainable<B> {
    /// PEFT's LoRA initialisation: A ~ U(-1/√in, 1/√in) (Kaiming-uniform, a=√5), B = 0, θ = θ_init
    /// (so α starts at 0.5). The sets are drawn one after the other from one seeded stream.
    pub fn init(
        be: &B,
        w: &Weights<B>,
        method: Method,
        lora: LoraSpec,
        theta_init: f32,
        seed: u64,
    ) -> Self {
        Self::init_with(be, w, method, lora, Peft::Lora, theta_init, seed)
    }

    /// [`Trainable::init`] for any PEFT method: LoRA's A and B as there (DoRA draws the same
    /// stream), DoRA's magnitude = ‖W + s·B A‖ per row (= ‖W‖ as B = 0, so the adapted layer
    /// starts as the base layer), IA3's vectors = 1.
    pub fn init_with(
        be: &B,
        w: &Weights<B>,
        method: Method,
        lora: LoraSpec,
        peft: Peft,
        theta_init: f32,
        seed: u64,
    ) -> Self {
        let table = ParamTable::with_peft(&w.cfg, lora, peft, method.num_sets(), method.mixes());
        let mut host = vec![0f32; table.total];
        let mut rng = Rng::new(seed);
        let scale = table.lora.scale();
        for e in &table.entries {
            let dst_range = e.offset..e.offset + e.len();
            match e.kind {
                Kind::LoraA => {
                    let bound = 1.0 / (e.shape[1] as f32).sqrt();
                    host[dst_range]
                        .iter_mut()
                        .for_each(|v| *v = rng.uniform(-bound, bound));
                }
                Kind::LoraB => {}
                Kind::Magnitude => {
                    // A and B of this linear precede it in the layout.
                    let t = e.target.unwrap();
                    let (a_off, b_off) = table.lora(e.set, e.layer, t).unwrap();
                    let (k, n) = t.dims(&w.cfg);
                    let r = table.lora.rank;
                    let wt = be.download_weight(&w.blocks[e.layer].linear(t).w);
                    let a = &host[a_off..a_off + r * k];
                    let b = &host[b_off..b_off + n * r];
                    let m = dora_row_norms(&wt, a, b, scale, k, n);
                    host[dst_range].copy_from_slice(&m);
                }
                Kind::Ia3 => host[dst_range].fill(1.0),
                Kind::ThetaK | Kind::ThetaV => host[dst_range].fill(theta_init),
            }
        }
        Trainable {
            method,
            params: be.upload(&host),
            table,
            theta_init,
        }
    }

    /// (α_K, α_V) per layer, or empty when the method does not mix.
    pub fn alphas(&self, be: &B) -> Vec<(f32, f32)> {
        match self.table.theta() {
            Some((tk, tv)) if self.method.mixes() => {
                let n = self.table.num_layers;
                let k = be.download_range(&self.params, tk, n);
                let v = be.download_range(&self.params, tv, n);
                k.iter()
                    .zip(&v)
                    .map(|(&a, &b)| (alpha(a, self.theta_init), alpha(b, self.theta_init)))
                    .collect()
            }
            _ => vec![],
        }
    }

    /// The adapters for one forward (α is computed from θ on the device, by the kv-mix).
    pub fn state(&self) -> AdapterState<'_, B> {
        AdapterState {
            params: &self.params,
            table: &self.table,
            theta_init: self.theta_init,
            packs: None,
        }
    }
}

pub struct StepOut {
    /// Σ over the batch of weighted token losses (= the batch loss when `denom` = batch size).
    pub loss: f64,
    pub tokens: usize,
}

fn check_example(ex: &Example, vocab: usize) -> Result<()> {
    if ex.prompt_len == 0 || ex.prompt_len >= ex.ids.len() {
        bail!(
            "example with {} tokens and prompt length {}: needs at least one prompt and one answer token",
            ex.ids.len(),
            ex.prompt_len
        );
    }
    if let Some(&bad) = ex.ids.iter().find(|&&t| t as usize >= vocab) {
        bail!("token id {bad} is outside the model's vocabulary of {vocab}");
    }
    Ok(())
}

/// Loss of `examples` (each weighted 1/`denom`) and, when `grads` is given, its gradient
/// accumulated into `grads`.
pub fn loss_and_grad<B: Backend>(
    be: &B,
    w: &Weights<B>,
    tr: &Trainable<B>,
    examples: &[Example],
    denom: usize,
    grads: Option<&mut B::Buf>,
) -> Result<StepOut> {
    for ex in examples {
        check_example(ex, w.cfg.vocab_size)?;
    }
    let seqs: Vec<_> = examples
        .iter()
        .map(|e| train_seq(tr.method, e, denom))
        .collect();
    let (p, tg) = pack(tr.method, &seqs, &[]);
    let ad = tr.state();
    let mode = Mode {
        save_acts: grads.is_some(),
        keep_kv: false,
    };
    let fwd = forward(be, w, &ad, &p, None, mode);
    let r = tg.tokens.len();
    let mut lp = vec![0f64; r];
    let mut greedy = vec![false; r];
    let mut dlogits = fwd.logits;
    let grad = grads.is_some();
    let loss = be.cross_entropy(
        &mut dlogits,
        CrossEntropyTargets {
            tokens: &tg.tokens,
            weights: &tg.weights,
        },
        w.cfg.vocab_size,
        grad,
        &mut lp,
        &mut greedy,
    );
    if let Some(g) = grads {
        backward(be, w, &ad, &p, &fwd.saved, &dlogits, g);
    }
    Ok(StepOut {
        loss,
        tokens: p.rows(),
    })
}
