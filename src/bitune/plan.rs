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
    /// A plain causal LM: one causal segment over prompt and answer. It is the LoRA baseline's
    /// layout; with no adapters it reads the base model (`bench`'s and `generate`'s base rows,
    /// the untrained reference of `compare`).
    pub const CAUSAL_LM: Method = Method::Lora;

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
    pack_segments(&method.prompt_segments(), seqs, past_pos)
}

/// Packs answer segments only (with adapter set C), whatever the method: a decoding step or
/// continuations scored on a cache, whose prompt is already in the cache rows at `past_pos`.
pub fn pack_answers(seqs: &[Seq], past_pos: &[u32]) -> (Packed, Targets) {
    pack_segments(&[], seqs, past_pos)
}

/// [`pack`] over the prompt segments `segs`; two segments are mixed.
fn pack_segments(segs: &[(usize, MaskKind)], seqs: &[Seq], past_pos: &[u32]) -> (Packed, Targets) {
    let mixes = segs.len() == 2;
    let np: usize = seqs.iter().map(|s| s.prompt.len()).sum();
    let na: usize = seqs.iter().map(|s| s.answer.len()).sum();
    let t = segs.len() * np + na;
    let mix_n = if mixes { np } else { 0 };
    let mut p = Packed {
        past: past_pos.len(),
        mix: mixes.then_some(MixPlan { c: 0, b: np, n: np }),
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
    if mixes {
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

#[cfg(test)]
mod tests {
    //! Expected layouts written by hand from docs/ARCHITECTURE.md, "Segments and plans": rows
    //! segment-major (C, then B, then A), mixed prompt rows after the `T` token rows, cache rows
    //! after those.

    use super::*;
    use crate::backend::MaskKind::{AntiCausal, Causal, Full};
    use std::ops::Range;

    fn group(q: Range<usize>, kv: &[Range<usize>], mask: MaskKind) -> AttnGroup {
        AttnGroup {
            q,
            kv: kv.to_vec(),
            mask,
        }
    }

    /// A segment's group that reads only its own rows.
    fn own(q: Range<usize>, mask: MaskKind) -> AttnGroup {
        AttnGroup {
            kv: std::iter::once(q.clone()).collect(),
            q,
            mask,
        }
    }

    /// Two sequences: prompts of 2 and 1 tokens, answers of 2 and 3 tokens.
    fn two_prompted() -> Vec<Seq> {
        vec![
            Seq {
                prompt: vec![10, 11],
                answer: vec![12, 13],
                a_pos0: 2,
                targets: vec![(0, 13, 0.5), (1, 14, 0.5)],
            },
            Seq {
                prompt: vec![20],
                answer: vec![21, 22, 23],
                a_pos0: 1,
                targets: vec![(2, 24, 1.0)],
            },
        ]
    }

    fn check_targets_of_two_prompted(tg: &Targets) {
        assert_eq!(tg.tokens, [13, 14, 24]);
        assert_eq!(tg.weights, [0.5, 0.5, 1.0]);
        assert_eq!(tg.seq, [0, 0, 1]);
    }

    /// Every two-pass method: C rows 0..3, B rows 3..6, A rows 6..11, mixed rows 11..14.
    #[test]
    fn two_prompt_segments_are_packed_segment_major_and_mixed() {
        let cases = [
            (Method::Bitune, SET_B, Full),
            (Method::OnlyCausal, SET_B, Causal),
            (Method::SharedWeights, SET_C, Full),
            (Method::AntiCausal, SET_B, AntiCausal),
        ];
        for (method, set2, mask2) in cases {
            let (p, tg) = pack(method, &two_prompted(), &[]);
            let m = method.name();
            assert_eq!(
                p.tokens,
                [10, 11, 20, 10, 11, 20, 12, 13, 21, 22, 23],
                "{m}"
            );
            assert_eq!(p.pos, [0, 1, 0, 0, 1, 0, 2, 3, 1, 2, 3], "{m}");
            assert_eq!(
                p.adapter_rows,
                [(0..3, SET_C), (3..6, set2), (6..11, SET_C)],
                "{m}"
            );
            assert_eq!(p.mix, Some(MixPlan { c: 0, b: 3, n: 3 }), "{m}");
            assert_eq!(p.past, 0, "{m}");
            assert_eq!((p.rows(), p.mix_rows(), p.kv_rows()), (11, 3, 14), "{m}");
            assert_eq!(
                p.attn.groups,
                [
                    own(0..2, Causal),
                    own(2..3, Causal),
                    own(3..5, mask2),
                    own(5..6, mask2),
                    // The answers read their sequence's mixed prompt rows, then their own.
                    group(6..8, &[11..13, 6..8], Causal),
                    group(8..11, &[13..14, 8..11], Causal),
                ],
                "{m}"
            );
            assert_eq!(p.attn.q_pos, p.pos, "{m}");
            assert_eq!(
                p.attn.k_pos,
                [0, 1, 0, 0, 1, 0, 2, 3, 1, 2, 3, 0, 1, 0],
                "{m}"
            );
            assert_eq!(p.logit_rows, [6, 7, 10], "{m}");
            check_targets_of_two_prompted(&tg);
        }
    }

    /// One prompt pass, unmixed: prompt rows 0..3, answer rows 3..8 reading the prompt rows.
    #[test]
    fn one_prompt_segment_is_read_by_the_answers_directly() {
        for (method, set) in [(Method::NaiveBidir, SET_C), (Method::NoMixing, SET_B)] {
            let (p, tg) = pack(method, &two_prompted(), &[]);
            let m = method.name();
            assert_eq!(p.tokens, [10, 11, 20, 12, 13, 21, 22, 23], "{m}");
            assert_eq!(p.pos, [0, 1, 0, 2, 3, 1, 2, 3], "{m}");
            assert_eq!(p.adapter_rows, [(0..3, set), (3..8, SET_C)], "{m}");
            assert_eq!(p.mix, None, "{m}");
            assert_eq!((p.rows(), p.mix_rows(), p.kv_rows()), (8, 0, 8), "{m}");
            assert_eq!(
                p.attn.groups,
                [
                    own(0..2, Full),
                    own(2..3, Full),
                    group(3..5, &[0..2, 3..5], Causal),
                    group(5..8, &[2..3, 5..8], Causal),
                ],
                "{m}"
            );
            assert_eq!(p.attn.q_pos, p.pos, "{m}");
            assert_eq!(p.attn.k_pos, p.pos, "{m}");
            assert_eq!(p.logit_rows, [3, 4, 7], "{m}");
            check_targets_of_two_prompted(&tg);
        }
    }

    /// The LoRA baseline: one causal segment per sequence, all with set C.
    #[test]
    fn the_lora_baseline_is_one_causal_segment_per_sequence() {
        let seqs = [
            Seq {
                prompt: vec![],
                answer: vec![1, 2, 3],
                a_pos0: 0,
                targets: vec![(1, 3, 0.5), (2, 4, 0.5)],
            },
            Seq {
                prompt: vec![],
                answer: vec![5, 6],
                a_pos0: 0,
                targets: vec![(0, 6, 1.0)],
            },
        ];
        let (p, tg) = pack(Method::Lora, &seqs, &[]);
        assert_eq!(p.tokens, [1, 2, 3, 5, 6]);
        assert_eq!(p.pos, [0, 1, 2, 0, 1]);
        assert_eq!(p.adapter_rows, [(0..5, SET_C)]);
        assert_eq!(p.mix, None);
        assert_eq!((p.rows(), p.mix_rows(), p.kv_rows()), (5, 0, 5));
        assert_eq!(p.attn.groups, [own(0..3, Causal), own(3..5, Causal)]);
        assert_eq!(p.attn.q_pos, p.pos);
        assert_eq!(p.attn.k_pos, p.pos);
        assert_eq!(p.logit_rows, [1, 2, 3]);
        assert_eq!(tg.tokens, [3, 4, 6]);
        assert_eq!(tg.weights, [0.5, 0.5, 1.0]);
        assert_eq!(tg.seq, [0, 0, 1]);
    }

    /// Continuations scored on a cache of 3 rows: every answer reads the cache rows first.
    #[test]
    fn answers_on_a_prefix_cache_read_the_cache_rows() {
        let seqs = [
            Seq {
                prompt: vec![],
                answer: vec![7, 8],
                a_pos0: 3,
                targets: vec![(0, 8, 1.0), (1, 9, 1.0)],
            },
            Seq {
                prompt: vec![],
                answer: vec![5],
                a_pos0: 3,
                targets: vec![(0, 6, 1.0)],
            },
        ];
        let (p, tg) = pack_answers(&seqs, &[0, 1, 2]);
        assert_eq!(p.tokens, [7, 8, 5]);
        assert_eq!(p.pos, [3, 4, 3]);
        assert_eq!(p.adapter_rows, [(0..3, SET_C)]);
        assert_eq!(p.mix, None);
        assert_eq!(p.past, 3);
        assert_eq!((p.rows(), p.mix_rows(), p.kv_rows()), (3, 0, 6));
        assert_eq!(
            p.attn.groups,
            [
                group(0..2, &[3..6, 0..2], Causal),
                group(2..3, &[3..6, 2..3], Causal),
            ]
        );
        assert_eq!(p.attn.q_pos, [3, 4, 3]);
        assert_eq!(p.attn.k_pos, [3, 4, 3, 0, 1, 2]);
        assert_eq!(p.logit_rows, [0, 1, 2]);
        assert_eq!(tg.tokens, [8, 9, 6]);
        assert_eq!(tg.weights, [1.0, 1.0, 1.0]);
        assert_eq!(tg.seq, [0, 0, 1]);
    }

    /// Bitune over a cache: token rows 0..6, mixed rows 6..8, the cache row 8; the answer reads
    /// the cache, then the mixed prompt, then itself.
    #[test]
    fn a_mixed_plan_puts_the_cache_rows_after_the_mixed_rows() {
        let seqs = [Seq {
            prompt: vec![1, 2],
            answer: vec![3, 4],
            a_pos0: 2,
            targets: vec![(1, 5, 1.0)],
        }];
        let (p, tg) = pack(Method::Bitune, &seqs, &[9]);
        assert_eq!(p.tokens, [1, 2, 1, 2, 3, 4]);
        assert_eq!(p.pos, [0, 1, 0, 1, 2, 3]);
        assert_eq!(
            p.adapter_rows,
            [(0..2, SET_C), (2..4, SET_B), (4..6, SET_C)]
        );
        assert_eq!(p.mix, Some(MixPlan { c: 0, b: 2, n: 2 }));
        assert_eq!(p.past, 1);
        assert_eq!((p.rows(), p.mix_rows(), p.kv_rows()), (6, 2, 9));
        assert_eq!(
            p.attn.groups,
            [
                own(0..2, Causal),
                own(2..4, Full),
                group(4..6, &[8..9, 6..8, 4..6], Causal),
            ]
        );
        assert_eq!(p.attn.k_pos, [0, 1, 0, 1, 2, 3, 0, 1, 9]);
        assert_eq!(p.logit_rows, [5]);
        assert_eq!(tg.tokens, [5]);
        assert_eq!(tg.seq, [0]);
    }
}
