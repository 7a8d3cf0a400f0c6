//! Segment plans: every method and ablation is a list of prompt segments (adapter set, mask) and
//! whether their keys/values are mixed; packing turns examples into one segment-major stream.

use super::params::{SET_B, SET_C};
use crate::backend::{AttnGroup, AttnPlan, MaskKind};
use crate::model::transformer::{MixPlan, Packed};
use anyhow::{bail, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Bitune,
    Lora,
    NaiveBidir,
    NoMixing,
    OnlyCausal,
    SharedWeights,
    AntiCausal,
}

pub const METHODS: [Method; 7] = [
    Method::Bitune,
    Method::Lora,
    Method::NaiveBidir,
    Method::NoMixing,
    Method::OnlyCausal,
    Method::SharedWeights,
    Method::AntiCausal,
];

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Bitune => "bitune",
            Method::Lora => "lora",
            Method::NaiveBidir => "naive-bidir",
            Method::NoMixing => "no-mixing",
            Method::OnlyCausal => "only-causal",
            Method::SharedWeights => "shared-weights",
            Method::AntiCausal => "anti-causal",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match METHODS.iter().find(|m| m.name() == s) {
            Some(m) => Ok(*m),
            None => bail!(
                "unknown method {s:?} (known: {})",
                METHODS.map(|m| m.name()).join(", ")
            ),
        }
    }

    /// The prompt segments: (adapter set, mask) for each pass over the prompt.
    pub fn prompt_segments(self) -> Vec<(usize, MaskKind)> {
        match self {
            Method::Bitune => vec![(SET_C, MaskKind::Causal), (SET_B, MaskKind::Full)],
            Method::OnlyCausal => vec![(SET_C, MaskKind::Causal), (SET_B, MaskKind::Causal)],
            Method::SharedWeights => vec![(SET_C, MaskKind::Causal), (SET_C, MaskKind::Full)],
            Method::AntiCausal => vec![(SET_C, MaskKind::Causal), (SET_B, MaskKind::AntiCausal)],
            Method::NaiveBidir => vec![(SET_C, MaskKind::Full)],
            Method::NoMixing => vec![(SET_B, MaskKind::Full)],
            Method::Lora => vec![],
        }
    }

    /// Two prompt passes whose K/V are mixed with learned θ.
    pub fn mixes(self) -> bool {
        self.prompt_segments().len() == 2
    }

    /// How many adapter sets the method carries (both exist in every ablation, as in the
    /// reference, even where one goes unused).
    pub fn num_sets(self) -> usize {
        if self == Method::Lora {
            1
        } else {
            2
        }
    }
}

/// One sequence of a packed batch: prompt tokens (read by the prompt segments) and the tokens of
/// its answer segment, whose first token sits at position `a_pos0`.
#[derive(Clone, Debug, Default)]
pub struct Seq {
    pub prompt: Vec<u32>,
    pub answer: Vec<u32>,
    pub a_pos0: u32,
    /// (row inside the answer segment, target token, loss weight)
    pub targets: Vec<(usize, u32, f32)>,
}

/// The logit rows' targets and weights, in `Packed::logit_rows` order.
#[derive(Clone, Debug, Default)]
pub struct Targets {
    pub tokens: Vec<u32>,
    pub weights: Vec<f32>,
    /// (sequence index) for each logit row
    pub seq: Vec<usize>,
}

/// Packs sequences segment-major: every prompt segment's rows for all sequences, then all answer
/// rows. `past_pos` are the positions of cache rows every answer segment also reads.
pub fn pack(method: Method, seqs: &[Seq], past_pos: &[u32]) -> (Packed, Targets) {
    let segs = method.prompt_segments();
    let np: usize = seqs.iter().map(|s| s.prompt.len()).sum();
    let na: usize = seqs.iter().map(|s| s.answer.len()).sum();
    let t = segs.len() * np + na;
    let mix_n = if method.mixes() { np } else { 0 };
    let mut p = Packed {
        past: past_pos.len(),
        mix: method.mixes().then_some(MixPlan { c: 0, b: np, n: np }),
        ..Default::default()
    };
    let mut q_pos = Vec::with_capacity(t);
    let mut k_pos = Vec::with_capacity(t + mix_n + past_pos.len());
    let mut groups = Vec::new();
    for (si, &(set, mask)) in segs.iter().enumerate() {
        let base = si * np;
        p.adapter_rows.push((base..base + np, set));
        let mut off = base;
        for s in seqs {
            p.tokens.extend_from_slice(&s.prompt);
            let n = s.prompt.len();
            q_pos.extend(0..n as u32);
            groups.push(AttnGroup {
                q: off..off + n,
                kv: std::iter::once(off..off + n).collect(),
                mask,
            });
            off += n;
        }
    }
    let a_base = segs.len() * np;
    p.adapter_rows.push((a_base..a_base + na, SET_C));
    let past_rows = t + mix_n..t + mix_n + past_pos.len();
    let (mut a_off, mut pr_off) = (a_base, 0);
    let mut tg = Targets::default();
    for (si, s) in seqs.iter().enumerate() {
        let m = s.answer.len();
        let n = s.prompt.len();
        p.tokens.extend_from_slice(&s.answer);
        q_pos.extend((0..m as u32).map(|i| s.a_pos0 + i));
        let mut kv = Vec::new();
        if !past_rows.is_empty() {
            kv.push(past_rows.clone());
        }
        match segs.len() {
            0 => {}
            1 => kv.push(pr_off..pr_off + n),
            _ => kv.push(t + pr_off..t + pr_off + n),
        }
        kv.push(a_off..a_off + m);
        groups.push(AttnGroup {
            q: a_off..a_off + m,
            kv,
            mask: MaskKind::Causal,
        });
        for &(row, tok, w) in &s.targets {
            p.logit_rows.push(a_off + row);
            tg.tokens.push(tok);
            tg.weights.push(w);
            tg.seq.push(si);
        }
        a_off += m;
        pr_off += n;
    }
    k_pos.extend_from_slice(&q_pos);
    if method.mixes() {
        k_pos.extend_from_slice(&q_pos[..np]);
    }
    k_pos.extend_from_slice(past_pos);
    p.pos = q_pos.clone();
    p.attn = AttnPlan {
        groups,
        q_pos,
        k_pos,
    };
    (p, tg)
}

/// A training example: the full token sequence and the prompt length P (BOS included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    pub ids: Vec<u32>,
    pub prompt_len: usize,
}

/// The sequence a method trains on for one example, with loss weight `1/(answer tokens)/batch`
/// so the batch loss is the mean over examples of each example's token-mean answer loss.
pub fn train_seq(method: Method, ex: &Example, batch: usize) -> Seq {
    let (ids, pl) = (&ex.ids, ex.prompt_len);
    let m = ids.len() - pl;
    let w = 1.0 / m as f32 / batch as f32;
    if method.prompt_segments().is_empty() {
        Seq {
            prompt: vec![],
            answer: ids[..ids.len() - 1].to_vec(),
            a_pos0: 0,
            targets: (0..m).map(|i| (pl - 1 + i, ids[pl + i], w)).collect(),
        }
    } else {
        Seq {
            prompt: ids[..pl - 1].to_vec(),
            answer: ids[pl - 1..ids.len() - 1].to_vec(),
            a_pos0: (pl - 1) as u32,
            targets: (0..m).map(|i| (i, ids[pl + i], w)).collect(),
        }
    }
}

/// One sequence at positions 0.. under one mask, with logits at every row (the base model's
/// plain forward; used by `score`'s reference path and the tests).
pub fn single_sequence(ids: &[u32], mask: MaskKind, set: Option<usize>) -> Packed {
    let n = ids.len();
    let pos: Vec<u32> = (0..n as u32).collect();
    Packed {
        tokens: ids.to_vec(),
        pos: pos.clone(),
        adapter_rows: set.map(|s| vec![(0..n, s)]).unwrap_or_default(),
        attn: AttnPlan {
            groups: vec![AttnGroup {
                q: 0..n,
                kv: std::iter::once(0..n).collect(),
                mask,
            }],
            q_pos: pos.clone(),
            k_pos: pos,
        },
        mix: None,
        past: 0,
        logit_rows: (0..n).collect(),
    }
}
