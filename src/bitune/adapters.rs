//! The method's side of the transformer's adapter interface ([`Adapters`]): the parameter table
//! answers which adapter op each linear applies on which rows, and the kv-mix runs with
//! `α = |θ| / (|θ| + θ_init)` read from θ on the device, its dα/dθ chain rule accumulated there
//! too (the backend's `kv_mix_fwd_theta` / `kv_mix_bwd_theta`), so no layer sends α or dα through
//! the host (docs/ARCHITECTURE.md, "Segments and plans").

use super::params::{Kind, ParamTable};
use super::peft::{is_feedforward, Peft};
use crate::backend::{Backend, KvMix, LoraSeg, Theta};
use crate::model::transformer::{Adapters, LayerMix, LinearAdapter, Packed, VecSeg};
use crate::model::weights::{Linear, Target};
use std::collections::HashMap;
use std::sync::OnceLock;

/// Adapters and mixing for a forward: the flat parameter buffer, its table, θ_init, and where
/// decoding keeps its forms of the low-rank adapters.
pub struct AdapterState<'a, B: Backend> {
    pub params: &'a B::Buf,
    pub table: &'a ParamTable,
    /// θ_init of α = |θ| / (|θ| + θ_init).
    pub theta_init: f32,
    pub packs: Option<&'a LoraPacks<B>>,
}

/// The decoding forms ([`Backend::lora_pack`]) of a parameter buffer's low-rank adapters, each
/// built on its first decoding step. They copy the buffer's values, so they belong with a buffer
/// that no longer changes: [`super::engine::Adapted`] keeps the two together.
pub struct LoraPacks<B: Backend> {
    /// By A's offset: the pack, or `None` where the backend decodes through `lora_fwd`.
    by_a: HashMap<usize, OnceLock<Option<B::LoraPack>>>,
}

impl<B: Backend> LoraPacks<B> {
    /// A slot for every low-rank adapter of `table`, none built yet.
    pub fn new(table: &ParamTable) -> Self {
        LoraPacks {
            by_a: table
                .entries
                .iter()
                .filter(|e| e.kind == Kind::LoraA)
                .map(|e| (e.offset, OnceLock::new()))
                .collect(),
        }
    }
}

impl<B: Backend> AdapterState<'_, B> {
    /// The θ that mixes `m`'s target in `m`'s layer: its offset and θ_init.
    fn theta(&self, m: &LayerMix) -> Theta {
        let (tk, tv) = self.table.theta().expect("a plan that mixes has θ");
        let base = if m.target == Target::K { tk } else { tv };
        Theta {
            off: base + m.layer,
            init: self.theta_init,
        }
    }
}

/// The backend's row ranges of one layer's mix.
fn kv_mix(m: &LayerMix) -> KvMix {
    KvMix {
        mix: m.rows,
        c: m.plan.c,
        b: m.plan.b,
        n: m.plan.n,
        width: m.width,
    }
}

impl<B: Backend> Adapters<B> for AdapterState<'_, B> {
    fn params(&self) -> &B::Buf {
        self.params
    }

    /// LoRA is the low-rank add, DoRA the rescaled one, IA3 scales a feed-forward module's input
    /// and any other module's output (the forms are in [`super::peft`]).
    fn linear(&self, p: &Packed, layer: usize, t: Target) -> LinearAdapter {
        let tb = self.table;
        let scale_bits = tb.lora.scale().to_bits();
        let lora = |set: usize, rows: &std::ops::Range<usize>| {
            tb.lora(set, layer, t).map(|(a_off, b_off)| LoraSeg {
                rows: rows.clone(),
                a_off,
                b_off,
                rank: tb.lora.rank,
                scale_bits,
            })
        };
        let vec_segs = |vec_off: &dyn Fn(usize) -> Option<usize>, with_lora: bool| {
            p.adapter_rows
                .iter()
                .filter(|(rows, _)| !rows.is_empty())
                .filter_map(|(rows, set)| {
                    Some(VecSeg {
                        rows: rows.clone(),
                        vec_off: vec_off(*set)?,
                        lora: if with_lora {
                            Some(lora(*set, rows)?)
                        } else {
                            None
                        },
                    })
                })
                .collect()
        };
        match tb.peft {
            Peft::Lora => LinearAdapter::LowRank(
                p.adapter_rows
                    .iter()
                    .filter_map(|(rows, set)| lora(*set, rows))
                    .collect(),
            ),
            Peft::Dora => {
                LinearAdapter::Rescaled(vec_segs(&|set| tb.magnitude(set, layer, t), true))
            }
            Peft::Ia3 => {
                let segs = vec_segs(&|set| tb.ia3(set, layer, t), false);
                if is_feedforward(t) {
                    LinearAdapter::ScaleInput(segs)
                } else {
                    LinearAdapter::ScaleOutput(segs)
                }
            }
        }
    }

    fn lora_pack(&self, be: &B, l: &Linear<B>, seg: &LoraSeg) -> Option<&B::LoraPack> {
        self.packs?
            .by_a
            .get(&seg.a_off)?
            .get_or_init(|| be.lora_pack(&l.w, self.params, seg, l.in_dim, l.out_dim))
            .as_ref()
    }

    fn kv_mix_fwd(&self, be: &B, m: &LayerMix, buf: &mut B::Buf) {
        be.kv_mix_fwd_theta(buf, kv_mix(m), self.params, self.theta(m));
    }

    fn kv_mix_bwd(
        &self,
        be: &B,
        m: &LayerMix,
        dbuf: &mut B::Buf,
        buf: &B::Buf,
        grads: &mut B::Buf,
    ) {
        be.kv_mix_bwd_theta(dbuf, buf, kv_mix(m), self.params, self.theta(m), grads);
    }
}
