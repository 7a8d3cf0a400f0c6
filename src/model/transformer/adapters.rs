//! The narrow interface between the transformer and the method that trains it.
//!
//! The transformer knows how to run a few adapter ops on a linear (a low-rank add, a rescaled
//! low-rank add, a column scale of the input or of the output) and one mix of key/value rows; it
//! does not know which method it serves, how the method lays out its parameters, or what the
//! mixing coefficient is a function of. A method implements [`Adapters`]: for a layer and a target
//! linear it answers which op applies to which rows of the packed stream at which parameter
//! offsets, and for a layer's kv-mix it runs the mix itself.
//!
//! Why the kv-mix is a callback rather than data (docs/ARCHITECTURE.md, "Segments and plans"):
//! the coefficient is a function of a trainable parameter that lives on the device, and its
//! gradient needs the chain rule through that function. Handing the transformer the coefficient
//! as data would mean reading it (and returning dα) through the host once per layer; letting the
//! method call the backend's fused mix op keeps both on the device at the same cost as before,
//! while the function, its derivative and which parameter feeds which layer stay with the method.

use super::MixPlan;
use crate::backend::{Backend, LoraSeg};
use crate::model::weights::{Linear, Target};
use std::ops::Range;

/// A row range of the packed stream and the offset of its per-feature vector in the parameter
/// buffer (the rescaled form's magnitude `m`, or the column scale `l`), with the LoRA pair that
/// the rescaled form also adds. Ranges are never empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VecSeg {
    pub rows: Range<usize>,
    pub vec_off: usize,
    pub lora: Option<LoraSeg>,
}

/// The adapter op on one linear `y = W x + b`, with the row ranges it applies to (rows no range
/// covers get the base linear). The variant is the op even when no range applies, so a linear
/// keeps one path for every row count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinearAdapter {
    /// `y = W x + b + s·B(A x)`.
    LowRank(Vec<LoraSeg>),
    /// `y = (m/n)⊙(W x + s·B A x) + b`, with `n = ‖W + s·B A‖` per output row, recomputed every
    /// forward and detached (no gradient flows through it).
    Rescaled(Vec<VecSeg>),
    /// `y = W (l⊙x) + b`.
    ScaleInput(Vec<VecSeg>),
    /// `y = l⊙(W x + b)`.
    ScaleOutput(Vec<VecSeg>),
}

impl LinearAdapter {
    /// The ranges of the vector forms (none for the low-rank add).
    pub fn vec_segs(&self) -> &[VecSeg] {
        match self {
            LinearAdapter::LowRank(_) => &[],
            LinearAdapter::Rescaled(s)
            | LinearAdapter::ScaleInput(s)
            | LinearAdapter::ScaleOutput(s) => s,
        }
    }
}

/// One kv-mix of a layer: rows `[rows, rows + plan.n)` of the `target` (K or V) buffer, `width`
/// wide, are `(1-α)·` rows `[plan.c, …)` `+ α·` rows `[plan.b, …)`.
#[derive(Clone, Copy, Debug)]
pub struct LayerMix<'a> {
    pub plan: &'a MixPlan,
    /// The packed stream's token rows (where the mixed rows start).
    pub rows: usize,
    pub width: usize,
    pub layer: usize,
    pub target: Target,
}

/// The trainable adapters and mixing of a forward, as the method lays them out. Offsets index
/// [`Adapters::params`]; parameter gradients go to the same offsets of the gradient buffer.
pub trait Adapters<B: Backend>: Sync {
    /// The flat parameter buffer.
    fn params(&self) -> &B::Buf;
    /// The adapter op of linear `t` of `layer` over the rows of `p`.
    fn linear(&self, p: &super::Packed, layer: usize, t: Target) -> LinearAdapter;
    /// The decoding form ([`Backend::lora_pack`]) of the low-rank adapter on linear `t` of
    /// `layer`, where `p` is one decoding step (one row, one adapter set), this state keeps such
    /// forms and the backend builds one; else `None` (the default), and the forward runs the
    /// product and `lora_fwd`.
    fn decode_pack(
        &self,
        _be: &B,
        _l: &Linear<B>,
        _p: &super::Packed,
        _layer: usize,
        _t: Target,
    ) -> Option<&B::LoraPack> {
        None
    }
    /// Writes the mixed rows of `buf` (after the K/V projection and RoPE).
    fn kv_mix_fwd(&self, be: &B, m: &LayerMix, buf: &mut B::Buf);
    /// Backward of [`Adapters::kv_mix_fwd`]: folds the mixed rows' gradient of `dbuf` into the
    /// rows they were mixed from, and accumulates the coefficient's gradient into `grads`.
    fn kv_mix_bwd(&self, be: &B, m: &LayerMix, dbuf: &mut B::Buf, buf: &B::Buf, grads: &mut B::Buf);
}
