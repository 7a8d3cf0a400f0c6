//! Inference over the mixed prompt cache: the dual prefill (both prompt passes, the mix, the sep
//! token), cached causal decoding with set C, and scoring continuations on a shared prefix.

use super::adapters::AdapterState;
use super::plan::{pack, pack_answers, Seq};
use super::step::Trainable;
use crate::backend::{Backend, CrossEntropyTargets, RowCopy};
use crate::model::transformer::{forward, forward_append, KvCache, Mode};
use crate::model::weights::Weights;
use anyhow::{bail, Result};

fn check_ids(ids: &[u32], vocab: usize) -> Result<()> {
    if let Some(&bad) = ids.iter().find(|&&t| t as usize >= vocab) {
        bail!("token id {bad} is outside the model's vocabulary of {vocab}");
    }
    Ok(())
}

/// Prefills `ctx` (P tokens): the prompt passes read `ctx[..P-1]`, the last token opens the
/// answer segment. Returns the cache (`[K_mix ; K_sep]` for Bitune) and the logits at the last
/// token.
pub fn prefill<B: Backend>(
    be: &B,
    w: &Weights<B>,
    tr: &Trainable<B>,
    ctx: &[u32],
) -> Result<(KvCache<B>, Vec<f32>)> {
    if ctx.is_empty() {
        bail!("empty prompt: nothing to prefill");
    }
    check_ids(ctx, w.cfg.vocab_size)?;
    let method = tr.method;
    let segs = method.prompt_segments().len();
    let seq = if segs == 0 {
        Seq {
            prompt: vec![],
            answer: ctx.to_vec(),
            a_pos0: 0,
            targets: vec![],
        }
    } else {
        let n = ctx.len() - 1;
        Seq {
            prompt: ctx[..n].to_vec(),
            answer: vec![ctx[n]],
            a_pos0: n as u32,
            targets: vec![],
        }
    };
    let (mut p, _) = pack(method, std::slice::from_ref(&seq), &[]);
    let t = p.rows();
    p.logit_rows = vec![t - 1];
    let ad = tr.state();
    let out = forward(
        be,
        w,
        &ad,
        &p,
        None,
        Mode {
            save_acts: false,
            keep_kv: true,
        },
    );
    let n = seq.prompt.len();
    // Rows of K_ext that form the cache: the (mixed) prompt keys, then the answer segment's.
    let prompt_rows = match segs {
        0 => 0..0,
        1 => 0..n,
        _ => t..t + n,
    };
    let a_rows = segs * n..t;
    let kvd = w.cfg.kv_dim();
    let rows = prompt_rows.len() + a_rows.len();
    let mut cache = KvCache {
        k: vec![],
        v: vec![],
        pos: vec![],
    };
    for (k, v) in &out.kv {
        let mut ck = be.zeros(rows * kvd);
        let mut cv = be.zeros(rows * kvd);
        be.copy_rows(
            &mut ck,
            k,
            RowCopy {
                dst_row: 0,
                src_row: prompt_rows.start,
                rows: prompt_rows.len(),
                width: kvd,
            },
            false,
        );
        be.copy_rows(
            &mut cv,
            v,
            RowCopy {
                dst_row: 0,
                src_row: prompt_rows.start,
                rows: prompt_rows.len(),
                width: kvd,
            },
            false,
        );
        be.copy_rows(
            &mut ck,
            k,
            RowCopy {
                dst_row: prompt_rows.len(),
                src_row: a_rows.start,
                rows: a_rows.len(),
                width: kvd,
            },
            false,
        );
        be.copy_rows(
            &mut cv,
            v,
            RowCopy {
                dst_row: prompt_rows.len(),
                src_row: a_rows.start,
                rows: a_rows.len(),
                width: kvd,
            },
            false,
        );
        cache.k.push(ck);
        cache.v.push(cv);
    }
    cache.pos = (0..n as u32)
        .chain(seq.a_pos0..seq.a_pos0 + seq.answer.len() as u32)
        .collect();
    Ok((cache, be.download(&out.logits)))
}

/// One cached decoding step with set C of `ad` (a [`Trainable::state`], or an
/// [`super::engine::Adapted`] one that keeps decoding forms): appends the token's K/V and
/// returns its logits.
pub fn decode_step<B: Backend>(
    be: &B,
    w: &Weights<B>,
    ad: &AdapterState<'_, B>,
    cache: &mut KvCache<B>,
    token: u32,
) -> Result<Vec<f32>> {
    let logits = decode_logits(be, w, ad, cache, token)?;
    Ok(be.download(&logits))
}

/// [`decode_step`] for greedy decoding: returns the argmax token, found where the logits are
/// (a device copies one integer to the host, not the vocabulary's logits).
pub fn decode_step_greedy<B: Backend>(
    be: &B,
    w: &Weights<B>,
    ad: &AdapterState<'_, B>,
    cache: &mut KvCache<B>,
    token: u32,
) -> Result<u32> {
    let logits = decode_logits(be, w, ad, cache, token)?;
    Ok(be.argmax(&logits, w.cfg.vocab_size))
}

/// The decoding step itself: appends the token's K/V and leaves its logits on the backend.
fn decode_logits<B: Backend>(
    be: &B,
    w: &Weights<B>,
    ad: &AdapterState<'_, B>,
    cache: &mut KvCache<B>,
    token: u32,
) -> Result<B::Buf> {
    check_ids(&[token], w.cfg.vocab_size)?;
    let pos = cache.pos.last().map_or(0, |p| p + 1);
    let seq = Seq {
        prompt: vec![],
        answer: vec![token],
        a_pos0: pos,
        targets: vec![],
    };
    let (mut p, _) = pack_answers(&[seq], &cache.pos);
    p.logit_rows = vec![0];
    let out = forward_append(be, w, ad, &p, cache);
    cache.pos.push(pos);
    Ok(out.logits)
}

/// Log-probabilities of each continuation's tokens after `ctx`, prefilling `ctx` once and
/// scoring all continuations in one batch on the shared cache. Returns per continuation the
/// per-token log-probs and whether every token was the argmax.
pub fn score_continuations<B: Backend>(
    be: &B,
    w: &Weights<B>,
    tr: &Trainable<B>,
    ctx: &[u32],
    conts: &[Vec<u32>],
) -> Result<Vec<(Vec<f64>, bool)>> {
    let (cache, first_logits) = prefill(be, w, tr, ctx)?;
    let vocab = w.cfg.vocab_size;
    let next_pos = cache.pos.last().map_or(0, |p| p + 1);
    let mut seqs = Vec::new();
    for c in conts {
        if c.is_empty() {
            bail!("empty continuation: nothing to score");
        }
        check_ids(c, vocab)?;
        let m = c.len();
        seqs.push(Seq {
            prompt: vec![],
            answer: c[..m - 1].to_vec(),
            a_pos0: next_pos,
            targets: (0..m - 1).map(|i| (i, c[i + 1], 1.0)).collect(),
        });
    }
    // The first token of every continuation is scored by the prefill's last logits.
    let mut results: Vec<(Vec<f64>, bool)> = Vec::with_capacity(conts.len());
    for c in conts {
        let (mut lp, mut g) = ([0f64], [false]);
        let mut l = be.upload(&first_logits);
        let first = CrossEntropyTargets {
            tokens: &[c[0]],
            weights: &[1.0],
        };
        be.cross_entropy(&mut l, first, vocab, false, &mut lp, &mut g);
        results.push((vec![lp[0]], g[0]));
    }
    let (p, tg) = pack_answers(&seqs, &cache.pos);
    if !tg.tokens.is_empty() {
        let ad = tr.state();
        let out = forward(be, w, &ad, &p, Some(&cache), Mode::default());
        let mut logits = out.logits;
        let r = tg.tokens.len();
        let (mut lp, mut g) = (vec![0f64; r], vec![false; r]);
        be.cross_entropy(
            &mut logits,
            CrossEntropyTargets {
                tokens: &tg.tokens,
                weights: &tg.weights,
            },
            vocab,
            false,
            &mut lp,
            &mut g,
        );
        for (i, &s) in tg.seq.iter().enumerate() {
            results[s].0.push(lp[i]);
            results[s].1 &= g[i];
        }
    }
    Ok(results)
}
