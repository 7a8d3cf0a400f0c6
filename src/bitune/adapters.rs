//! The method's side of the transformer's adapter interface ([`Adapters`]): the parameter table
//! answers which adapter op each linear applies on which rows, and the kv-mix runs with
//! `α = |θ| / (|θ| + θ_init)` read from θ on the device, its dα/dθ chain rule accumulated there
//! too (the backend's `kv_mix_fwd_theta` / `kv_mix_bwd_theta`), so no layer sends α or dα through
//! the host (docs/ARCHITECTURE.md, "Segments and plans").

use super::params::ParamTable;
use super::peft::{is_feedforward, Peft};
use crate::backend::{Backend, KvMix, LoraSeg, Theta};
use crate::model::transformer::{Adapters, LayerMix, LinearAdapter, Packed, VecSeg};
use crate::model::weights::{Linear, Target, ALL_TARGETS};
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
///
/// A dense table by (set, layer, target), so a decoding step finds a linear's pack by indexing:
/// the step runs 7 linears a layer between reads of megabytes of weights, and a hash lookup and a
/// segment list per linear, on cold cache lines and on the one thread that dispatches, cost the
/// default model about 2% of its decoding time (`bench`, against a hash map by A's offset).
pub struct LoraPacks<B: Backend> {
    /// `[set][layer][target]` (targets in [`ALL_TARGETS`] order): the adapter and its pack, or
    /// `None` where the table has no low-rank adapter there.
    slots: Vec<Option<PackSlot<B>>>,
    num_layers: usize,
}

/// One low-rank adapter and its decoding form: `None` where the backend decodes through
/// `lora_fwd`.
struct PackSlot<B: Backend> {
    seg: LoraSeg,
    pack: OnceLock<Option<B::LoraPack>>,
}

impl<B: Backend> LoraPacks<B> {
    /// A slot for every low-rank adapter of `table`, none built yet. DoRA's and IA3's adapters
    /// decode through their vector forms, so only LoRA tables get slots.
    pub fn new(table: &ParamTable) -> Self {
        let (sets, layers) = (table.num_sets, table.num_layers);
        let mut slots: Vec<Option<PackSlot<B>>> = Vec::new();
        slots.resize_with(sets * layers * ALL_TARGETS.len(), || None);
        if table.peft == Peft::Lora {
            let scale_bits = table.lora.scale().to_bits();
            for set in 0..sets {
                for layer in 0..layers {
                    for t in ALL_TARGETS {
                        if let Some((a_off, b_off)) = table.lora(set, layer, t) {
                            slots[slot_index(layers, set, layer, t)] = Some(PackSlot {
                                seg: LoraSeg {
                                    rows: 0..1,
                                    a_off,
                                    b_off,
                                    rank: table.lora.rank,
                                    scale_bits,
                                },
                                pack: OnceLock::new(),
                            });
                        }
                    }
                }
            }
        }
        LoraPacks {
            slots,
            num_layers: layers,
        }
    }
}

fn slot_index(layers: usize, set: usize, layer: usize, t: Target) -> usize {
    (set * layers + layer) * ALL_TARGETS.len() + t as usize
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

    fn decode_pack(
        &self,
        be: &B,
        l: &Linear<B>,
        p: &Packed,
        layer: usize,
        t: Target,
    ) -> Option<&B::LoraPack> {
        let packs = self.packs?;
        let set = match p.adapter_rows.as_slice() {
            [(rows, set)] if *rows == (0..1) => *set,
            _ => return None,
        };
        if layer >= packs.num_layers {
            return None;
        }
        let at = slot_index(packs.num_layers, set, layer, t);
        let slot = packs.slots.get(at)?.as_ref()?;
        slot.pack
            .get_or_init(|| be.lora_pack(&l.w, self.params, &slot.seg, l.in_dim, l.out_dim))
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
