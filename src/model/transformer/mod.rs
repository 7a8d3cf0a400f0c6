//! The transformer over a packed token stream, forward and hand-written backward, generic over
//! the backend.
//!
//! Row layout of the key/value buffer of every layer ("K_ext"): the `T` token rows of the batch,
//! then `mix_rows` rows that the kv-mix writes (the mixed prompt prefix), then `past` rows copied
//! from a KV cache. Attention groups address key rows in that space.

mod adapters;
mod backward;
mod forward;
mod peft;

pub use adapters::{Adapters, LayerMix, LinearAdapter, VecSeg};
pub use backward::backward;
pub use forward::{forward, forward_append};

use crate::backend::{AttnPlan, Backend};
use std::ops::Range;

/// The kv-mix of a packed batch: mix rows `[T, T+n)` = (1-α)·rows `[c, c+n)` + α·rows `[b, b+n)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MixPlan {
    pub c: usize,
    pub b: usize,
    pub n: usize,
}

/// Everything one forward needs to know about the packed stream.
#[derive(Clone, Debug, Default)]
pub struct Packed {
    pub tokens: Vec<u32>,
    pub pos: Vec<u32>,
    /// Which adapter set each row range uses (rows not listed use the base model only).
    pub adapter_rows: Vec<(Range<usize>, usize)>,
    pub attn: AttnPlan,
    pub mix: Option<MixPlan>,
    /// Number of cache rows appended after the mix rows.
    pub past: usize,
    /// Rows whose logits are computed (the LM head runs on these only).
    pub logit_rows: Vec<usize>,
}

impl Packed {
    pub fn rows(&self) -> usize {
        self.tokens.len()
    }
    pub fn mix_rows(&self) -> usize {
        self.mix.as_ref().map_or(0, |m| m.n)
    }
    pub fn kv_rows(&self) -> usize {
        self.rows() + self.mix_rows() + self.past
    }
}

/// A per-layer KV cache: `rows` entries of `[kv_dim]` with their positions.
pub struct KvCache<B: Backend> {
    pub k: Vec<B::Buf>,
    pub v: Vec<B::Buf>,
    pub pos: Vec<u32>,
}

impl<B: Backend> KvCache<B> {
    pub fn rows(&self) -> usize {
        self.pos.len()
    }

    /// Room for `rows` more rows of `width` keys/values in every layer, taken before decoding
    /// them: a cache appended one token at a time otherwise moves whole at each growth (on the
    /// CPU, the first decoded token then copied the prompt's keys and values of every layer).
    pub fn reserve_rows(&mut self, be: &B, rows: usize, width: usize) {
        for buf in self.k.iter_mut().chain(self.v.iter_mut()) {
            be.reserve(buf, rows * width);
        }
    }
}

/// Activations one layer keeps for the backward.
pub struct LayerActs<B: Backend> {
    pub x: B::Buf,
    pub h: B::Buf,
    pub stats1: B::Buf,
    pub q: B::Buf,
    pub k: B::Buf,
    pub v: B::Buf,
    pub attn: B::Buf,
    pub lse: B::Buf,
    pub x_mid: B::Buf,
    pub h2: B::Buf,
    pub stats2: B::Buf,
    pub gate: B::Buf,
    pub up: B::Buf,
    pub act: B::Buf,
}

/// What the backward needs from the forward.
pub struct Saved<B: Backend> {
    /// Per-layer activations (empty unless the forward was asked to save them).
    pub acts: Vec<LayerActs<B>>,
    /// Final-norm input and stats at the logit rows.
    pub final_x: B::Buf,
    pub final_stats: B::Buf,
}

pub struct ForwardOut<B: Backend> {
    /// `[logit_rows, vocab]`
    pub logits: B::Buf,
    pub saved: Saved<B>,
    /// Per-layer (K_ext, V_ext) when asked to keep them (cache building): the rows this pass
    /// computed (the fresh rows, then the mixed ones), without the cache rows it read.
    pub kv: Vec<(B::Buf, B::Buf)>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Mode {
    pub save_acts: bool,
    pub keep_kv: bool,
}
