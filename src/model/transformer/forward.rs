//! The forward pass: embeddings, blocks (attention over segments with the kv-mix, MLP), final
//! norm and LM head at the requested rows.

use super::{
    Adapters, ForwardOut, KvCache, LayerActs, LayerMix, LinearAdapter, Mode, Packed, Saved,
};
use crate::backend::{
    Activation, AttnArgs, AttnDims, AttnGroup, AttnPlan, Backend, LoraArgs, Norm, NormArgs,
    RopeArgs, RowCopy,
};
use crate::model::weights::{Linear, Target, Weights};
use std::ops::Range;

/// `y = x Wᵀ + b + s·B(A x)` over all `rows` (the vector forms: see `peft::linear_fwd`).
// The linear's forward (output, input, weight, rows) plus where the adapter is looked up.
#[allow(clippy::too_many_arguments)]
pub(super) fn linear<B: Backend>(
    be: &B,
    y: &mut B::Buf,
    x: &B::Buf,
    l: &Linear<B>,
    rows: usize,
    ad: &dyn Adapters<B>,
    p: &Packed,
    layer: usize,
    t: Target,
) {
    // A decoding step: one row, one adapter, read in the form kept for decoding.
    if rows == 1 {
        if let Some(pack) = ad.decode_pack(be, l, p, layer, t) {
            be.matmul_lora_fwd(y, x, &l.w, l.b.as_ref(), pack);
            return;
        }
    }
    let segs = match ad.linear(p, layer, t) {
        LinearAdapter::LowRank(segs) => segs,
        vec_form => return super::peft::linear_fwd(be, y, x, l, rows, ad.params(), &vec_form),
    };
    be.matmul_fwd(y, x, &l.w, l.b.as_ref(), rows, false);
    if !segs.is_empty() {
        be.lora_fwd(
            y,
            x,
            ad.params(),
            LoraArgs {
                segs: &segs,
                k: l.in_dim,
                n: l.out_dim,
            },
        );
    }
}

/// The per-op arguments every layer of a pass shares, derived once from the config and the plan
/// (the forward and the backward read the same ones).
pub(super) struct OpArgs<'a> {
    norm: Norm,
    d: usize,
    eps: f32,
    pub act: Activation,
    pub rope_q: RopeArgs,
    pub rope_k: RopeArgs,
    pub attn: AttnArgs<'a>,
}

impl<'a> OpArgs<'a> {
    pub fn new<B: Backend>(w: &Weights<B>, p: &'a Packed) -> Self {
        let c = &w.cfg;
        let rope_q = RopeArgs {
            heads: c.num_heads,
            head_dim: c.head_dim,
            rot_dim: c.rotary_dim,
        };
        OpArgs {
            norm: w.norm_kind(),
            d: c.hidden_size,
            eps: c.norm_eps,
            act: w.activation(),
            rope_q,
            rope_k: RopeArgs {
                heads: c.num_kv_heads,
                ..rope_q
            },
            attn: AttnArgs {
                plan: &p.attn,
                dims: AttnDims {
                    q_heads: c.num_heads,
                    kv_heads: c.num_kv_heads,
                    head_dim: c.head_dim,
                    scale: 1.0 / (c.head_dim as f32).sqrt(),
                },
            },
        }
    }

    /// The model's norm over `rows` rows of the hidden size.
    pub fn norm(&self, rows: usize) -> NormArgs {
        NormArgs {
            rows,
            d: self.d,
            kind: self.norm,
            eps: self.eps,
        }
    }
}

pub fn forward<B: Backend>(
    be: &B,
    w: &Weights<B>,
    ad: &dyn Adapters<B>,
    p: &Packed,
    cache: Option<&KvCache<B>>,
    mode: Mode,
) -> ForwardOut<B> {
    let past = cache.map_or(Past::None, Past::Read);
    crate::backend::on_pool(|| forward_on_pool(be, w, ad, p, past, mode))
}

/// A decoding forward: appends this pass's K/V rows to `cache` and attends over the cache where
/// it lies, so the past rows are neither copied into a K_ext buffer nor returned to be appended
/// (per token, that copy cost as much as the attention itself). `p` has no kv-mix and reads the
/// whole cache; the caller appends the new positions to `cache.pos`.
pub fn forward_append<B: Backend>(
    be: &B,
    w: &Weights<B>,
    ad: &dyn Adapters<B>,
    p: &Packed,
    cache: &mut KvCache<B>,
) -> ForwardOut<B> {
    assert!(
        p.mix.is_none() && p.past == cache.rows(),
        "forward_append: the pass must read the whole cache and mix nothing"
    );
    let past = Past::Append(cache);
    crate::backend::on_pool(|| forward_on_pool(be, w, ad, p, past, Mode::default()))
}

/// Where a forward's past key/value rows come from.
enum Past<'a, B: Backend> {
    None,
    /// Copied into K_ext after the pass's own rows.
    Read(&'a KvCache<B>),
    /// The cache itself, with the pass's rows appended: K_ext is `[past ; fresh]`.
    Append(&'a mut KvCache<B>),
}

/// `plan` with K_ext's row order `[fresh (t) ; past]` turned into `[past ; fresh]`. The order of
/// each group's key ranges stays, so every sum runs over the same keys in the same order.
fn past_first(plan: &AttnPlan, t: usize) -> AttnPlan {
    let past = plan.k_pos.len() - t;
    let map = |r: &Range<usize>| -> Vec<Range<usize>> {
        let fresh = r.start.min(t)..r.end.min(t);
        let old = r.start.max(t)..r.end.max(t);
        [
            old.start - t..old.end - t,
            past + fresh.start..past + fresh.end,
        ]
        .into_iter()
        .filter(|r| !r.is_empty())
        .collect()
    };
    AttnPlan {
        groups: plan
            .groups
            .iter()
            .map(|g| AttnGroup {
                q: g.q.clone(),
                kv: g.kv.iter().flat_map(map).collect(),
                mask: g.mask,
            })
            .collect(),
        q_pos: plan.q_pos.clone(),
        k_pos: plan.k_pos[t..]
            .iter()
            .chain(&plan.k_pos[..t])
            .copied()
            .collect(),
    }
}

fn forward_on_pool<B: Backend>(
    be: &B,
    w: &Weights<B>,
    ad: &dyn Adapters<B>,
    p: &Packed,
    mut past: Past<B>,
    mode: Mode,
) -> ForwardOut<B> {
    let c = &w.cfg;
    let (t, d, inter) = (p.rows(), c.hidden_size, c.intermediate_size);
    let (qd, kvd) = (c.q_dim(), c.kv_dim());
    let appending = matches!(past, Past::Append(_));
    // An appending pass holds only its own rows; attention reads the rest from the cache.
    let kv_rows = if appending { t } else { p.kv_rows() };
    let appended_plan = appending.then(|| past_first(&p.attn, t));
    let mut ops = OpArgs::new(w, p);
    if let Some(plan) = &appended_plan {
        ops.attn.plan = plan;
    }

    let mut x = be.zeros(t * d);
    be.embedding_fwd(&mut x, &p.tokens, &w.embed, d, c.embed_scale.unwrap_or(1.0));

    let mut acts = Vec::new();
    let mut kv = Vec::new();
    for (l, blk) in w.blocks.iter().enumerate() {
        // Attention: norm, projections (+LoRA per segment), RoPE, kv-mix, segment attention.
        let mut h = be.zeros(t * d);
        let mut stats1 = be.zeros(t * 2);
        let an = &blk.attn_norm;
        be.norm_fwd(&mut h, &mut stats1, &x, &an.w, an.b.as_ref(), ops.norm(t));
        let mut q = be.zeros(t * qd);
        let mut k = be.zeros(kv_rows * kvd);
        let mut v = be.zeros(kv_rows * kvd);
        linear(be, &mut q, &h, &blk.q, t, ad, p, l, Target::Q);
        linear(be, &mut k, &h, &blk.k, t, ad, p, l, Target::K);
        linear(be, &mut v, &h, &blk.v, t, ad, p, l, Target::V);
        be.rope(&mut q, &p.pos, ops.rope_q, &w.inv_freq, false);
        be.rope(&mut k, &p.pos, ops.rope_k, &w.inv_freq, false);
        if let Some(plan) = &p.mix {
            // The method mixes: it knows what the coefficient is a function of (see `Adapters`).
            let mix = |target| LayerMix {
                plan,
                rows: t,
                width: kvd,
                layer: l,
                target,
            };
            ad.kv_mix_fwd(be, &mix(Target::K), &mut k);
            ad.kv_mix_fwd(be, &mix(Target::V), &mut v);
        }
        let mut attn = be.zeros(t * qd);
        let mut lse = be.zeros(t * c.num_heads);
        match &mut past {
            Past::None => be.attention_fwd(&mut attn, &mut lse, &q, &k, &v, ops.attn),
            Past::Read(cache) => {
                let rows = RowCopy {
                    dst_row: t + p.mix_rows(),
                    src_row: 0,
                    rows: p.past,
                    width: kvd,
                };
                be.copy_rows(&mut k, &cache.k[l], rows, false);
                be.copy_rows(&mut v, &cache.v[l], rows, false);
                be.attention_fwd(&mut attn, &mut lse, &q, &k, &v, ops.attn)
            }
            Past::Append(cache) => {
                be.append_rows(&mut cache.k[l], &k, 0, t, kvd);
                be.append_rows(&mut cache.v[l], &v, 0, t, kvd);
                let (ck, cv) = (&cache.k[l], &cache.v[l]);
                be.attention_fwd(&mut attn, &mut lse, &q, ck, cv, ops.attn)
            }
        }
        let mut o = be.zeros(t * d);
        linear(be, &mut o, &attn, &blk.o, t, ad, p, l, Target::O);

        // MLP: on the attention output (sequential) or on the same normed input (Phi, parallel).
        // Unless the backward keeps x and x_mid, the residual adds go in place, not on copies.
        let keep = mode.save_acts;
        let mut x_mid = if c.parallel_block {
            x_copy(be, &x)
        } else {
            let mut xm = if keep {
                x_copy(be, &x)
            } else {
                std::mem::replace(&mut x, be.zeros(0))
            };
            be.add(&mut xm, &o);
            xm
        };
        let mut stats2 = be.zeros(if c.parallel_block { 0 } else { t * 2 });
        let h2 = match &blk.mlp_norm {
            Some(mn) => {
                let mut h2 = be.zeros(t * d);
                be.norm_fwd(
                    &mut h2,
                    &mut stats2,
                    &x_mid,
                    &mn.w,
                    mn.b.as_ref(),
                    ops.norm(t),
                );
                h2
            }
            None => x_copy(be, &h),
        };
        let mut up = be.zeros(t * inter);
        linear(be, &mut up, &h2, &blk.up, t, ad, p, l, Target::Up);
        let mut a = be.zeros(t * inter);
        let gate = match &blk.gate {
            Some(g) => {
                let mut gate = be.zeros(t * inter);
                linear(be, &mut gate, &h2, g, t, ad, p, l, Target::Gate);
                be.act_fwd(&mut a, &gate, Some(&up), ops.act);
                gate
            }
            None => {
                be.act_fwd(&mut a, &up, None, ops.act);
                be.zeros(0)
            }
        };
        let mut mlp = be.zeros(t * d);
        linear(be, &mut mlp, &a, &blk.down, t, ad, p, l, Target::Down);
        let mut x_out = if keep {
            x_copy(be, &x_mid)
        } else {
            std::mem::replace(&mut x_mid, be.zeros(0))
        };
        if c.parallel_block {
            be.add(&mut x_out, &o);
        }
        be.add(&mut x_out, &mlp);

        if mode.keep_kv {
            let fresh = t + p.mix_rows();
            kv.push((rows_copy(be, &k, fresh, kvd), rows_copy(be, &v, fresh, kvd)));
        }
        if mode.save_acts {
            acts.push(LayerActs {
                x,
                h,
                stats1,
                q,
                k,
                v,
                attn,
                lse,
                x_mid,
                h2,
                stats2,
                gate,
                up,
                act: a,
            });
        }
        x = x_out;
    }

    // Final norm and LM head, only at the rows whose logits are wanted.
    let r = p.logit_rows.len();
    let mut final_x = be.zeros(r * d);
    be.gather_rows(&mut final_x, &x, &p.logit_rows, d);
    let mut hn = be.zeros(r * d);
    let mut final_stats = be.zeros(r * 2);
    let fnorm = &w.final_norm;
    be.norm_fwd(
        &mut hn,
        &mut final_stats,
        &final_x,
        &fnorm.w,
        fnorm.b.as_ref(),
        ops.norm(r),
    );
    let mut logits = be.zeros(r * c.vocab_size);
    let bias = w.lm_head.as_ref().and_then(|l| l.b.as_ref());
    be.matmul_fwd(&mut logits, &hn, w.lm_head_w(), bias, r, false);
    ForwardOut {
        logits,
        saved: Saved {
            acts,
            final_x,
            final_stats,
        },
        kv,
    }
}

/// The first `rows` rows (of `width`) of `x`.
fn rows_copy<B: Backend>(be: &B, x: &B::Buf, rows: usize, width: usize) -> B::Buf {
    let mut y = be.zeros(rows * width);
    be.copy_rows(
        &mut y,
        x,
        RowCopy {
            dst_row: 0,
            src_row: 0,
            rows,
            width,
        },
        false,
    );
    y
}

fn x_copy<B: Backend>(be: &B, x: &B::Buf) -> B::Buf {
    rows_copy(be, x, 1, be.len(x))
}
