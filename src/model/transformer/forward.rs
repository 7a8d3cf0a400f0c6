//! The forward pass: embeddings, blocks (attention over segments with the kv-mix, MLP), final
//! norm and LM head at the requested rows.

use super::{
    Adapters, ForwardOut, KvCache, LayerActs, LayerMix, LinearAdapter, Mode, Packed, Saved,
};
use crate::backend::{
    Activation, AttnArgs, AttnDims, Backend, LoraArgs, Norm, NormArgs, RopeArgs, RowCopy,
};
use crate::model::weights::{Linear, Target, Weights};

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
    crate::backend::on_pool(|| forward_on_pool(be, w, ad, p, cache, mode))
}

fn forward_on_pool<B: Backend>(
    be: &B,
    w: &Weights<B>,
    ad: &dyn Adapters<B>,
    p: &Packed,
    cache: Option<&KvCache<B>>,
    mode: Mode,
) -> ForwardOut<B> {
    let c = &w.cfg;
    let (t, d, inter) = (p.rows(), c.hidden_size, c.intermediate_size);
    let (qd, kvd) = (c.q_dim(), c.kv_dim());
    let kv_rows = p.kv_rows();
    let ops = OpArgs::new(w, p);

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
        if let Some(cache) = cache {
            let past = RowCopy {
                dst_row: t + p.mix_rows(),
                src_row: 0,
                rows: p.past,
                width: kvd,
            };
            be.copy_rows(&mut k, &cache.k[l], past, false);
            be.copy_rows(&mut v, &cache.v[l], past, false);
        }
        let mut attn = be.zeros(t * qd);
        let mut lse = be.zeros(t * c.num_heads);
        be.attention_fwd(&mut attn, &mut lse, &q, &k, &v, ops.attn);
        let mut o = be.zeros(t * d);
        linear(be, &mut o, &attn, &blk.o, t, ad, p, l, Target::O);

        // MLP: on the attention output (sequential) or on the same normed input (Phi, parallel).
        let x_mid = if c.parallel_block {
            x_copy(be, &x)
        } else {
            let mut xm = x_copy(be, &x);
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
        let mut x_out = x_copy(be, &x_mid);
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
