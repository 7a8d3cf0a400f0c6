//! The hand-written backward pass. Base weights are frozen: only activation gradients flow, and
//! LoRA matrices and θ receive parameter gradients (accumulated into the flat gradient buffer).

use super::forward::OpArgs;
use super::{Adapters, LayerMix, LinearAdapter, Packed, Saved};
use crate::backend::{AttnSaved, Backend, LoraArgs};
use crate::model::weights::{Linear, Target, Weights};

/// `dx (+)= dy W` plus the low-rank add's backward of that linear (dA, dB into `grads`); the
/// vector forms in `peft::linear_bwd`.
// The linear's backward (outputs, inputs, weight, rows, accumulate) plus where the adapter is
// looked up.
#[allow(clippy::too_many_arguments)]
fn linear_bwd<B: Backend>(
    be: &B,
    dx: &mut B::Buf,
    grads: &mut B::Buf,
    dy: &B::Buf,
    x: &B::Buf,
    l: &Linear<B>,
    rows: usize,
    ad: &dyn Adapters<B>,
    p: &Packed,
    layer: usize,
    t: Target,
    accumulate: bool,
) {
    let segs = match ad.linear(p, layer, t) {
        LinearAdapter::LowRank(segs) => segs,
        vec_form => {
            let pa = ad.params();
            return super::peft::linear_bwd(
                be, dx, grads, dy, x, l, rows, pa, &vec_form, accumulate,
            );
        }
    };
    be.matmul_bwd_x(dx, dy, &l.w, rows, accumulate);
    if !segs.is_empty() {
        be.lora_bwd(
            dx,
            grads,
            dy,
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

/// Backpropagates `dlogits` (`[logit_rows, vocab]`, already the loss gradient) through the whole
/// model into `grads`: the adapters' gradients, and the mixing coefficients' through
/// [`Adapters::kv_mix_bwd`].
pub fn backward<B: Backend>(
    be: &B,
    w: &Weights<B>,
    ad: &dyn Adapters<B>,
    p: &Packed,
    fwd: &Saved<B>,
    dlogits: &B::Buf,
    grads: &mut B::Buf,
) {
    crate::backend::on_pool(|| backward_on_pool(be, w, ad, p, fwd, dlogits, grads))
}

fn backward_on_pool<B: Backend>(
    be: &B,
    w: &Weights<B>,
    ad: &dyn Adapters<B>,
    p: &Packed,
    fwd: &Saved<B>,
    dlogits: &B::Buf,
    grads: &mut B::Buf,
) {
    let c = &w.cfg;
    let (t, d, inter) = (p.rows(), c.hidden_size, c.intermediate_size);
    let (qd, kvd) = (c.q_dim(), c.kv_dim());
    let kv_rows = p.kv_rows();
    let ops = OpArgs::new(w, p);
    assert_eq!(
        fwd.acts.len(),
        c.num_layers,
        "backward needs the forward's saved activations"
    );

    // LM head and final norm at the logit rows, scattered back into the full stream.
    let r = p.logit_rows.len();
    let mut dhn = be.zeros(r * d);
    be.matmul_bwd_x(&mut dhn, dlogits, w.lm_head_w(), r, false);
    let mut dxr = be.zeros(r * d);
    be.norm_bwd(
        &mut dxr,
        &dhn,
        &fwd.final_x,
        &fwd.final_stats,
        &w.final_norm.w,
        ops.norm(r),
        false,
    );
    let mut dx = be.zeros(t * d);
    be.scatter_add_rows(&mut dx, &dxr, &p.logit_rows, d);

    for (l, blk) in w.blocks.iter().enumerate().rev() {
        let a = &fwd.acts[l];
        // MLP branch.
        let mut da = be.zeros(t * inter);
        linear_bwd(
            be,
            &mut da,
            grads,
            &dx,
            &a.act,
            &blk.down,
            t,
            ad,
            p,
            l,
            Target::Down,
            false,
        );
        let mut dup = be.zeros(t * inter);
        let mut dh2 = be.zeros(t * d);
        match &blk.gate {
            Some(g) => {
                let mut dgate = be.zeros(t * inter);
                be.act_bwd(
                    &mut dgate,
                    Some(&mut dup),
                    &da,
                    &a.gate,
                    Some(&a.up),
                    ops.act,
                );
                linear_bwd(
                    be,
                    &mut dh2,
                    grads,
                    &dgate,
                    &a.h2,
                    g,
                    t,
                    ad,
                    p,
                    l,
                    Target::Gate,
                    false,
                );
                linear_bwd(
                    be,
                    &mut dh2,
                    grads,
                    &dup,
                    &a.h2,
                    &blk.up,
                    t,
                    ad,
                    p,
                    l,
                    Target::Up,
                    true,
                );
            }
            None => {
                be.act_bwd(&mut dup, None, &da, &a.up, None, ops.act);
                linear_bwd(
                    be,
                    &mut dh2,
                    grads,
                    &dup,
                    &a.h2,
                    &blk.up,
                    t,
                    ad,
                    p,
                    l,
                    Target::Up,
                    false,
                );
            }
        }
        // Gradient at the attention block's output residual (x_mid), or at h for Phi.
        let mut dx_mid = dx;
        if let Some(mn) = &blk.mlp_norm {
            be.norm_bwd(
                &mut dx_mid,
                &dh2,
                &a.x_mid,
                &a.stats2,
                &mn.w,
                ops.norm(t),
                true,
            );
        }

        // Attention branch.
        let mut dattn = be.zeros(t * qd);
        linear_bwd(
            be,
            &mut dattn,
            grads,
            &dx_mid,
            &a.attn,
            &blk.o,
            t,
            ad,
            p,
            l,
            Target::O,
            false,
        );
        let mut dq = be.zeros(t * qd);
        let mut dk = be.zeros(kv_rows * kvd);
        let mut dv = be.zeros(kv_rows * kvd);
        be.attention_bwd(
            &mut dq,
            &mut dk,
            &mut dv,
            &dattn,
            AttnSaved {
                q: &a.q,
                k: &a.k,
                v: &a.v,
                out: &a.attn,
                lse: &a.lse,
            },
            ops.attn,
        );
        if let Some(plan) = &p.mix {
            // The method owns the coefficient's chain rule (see `Adapters`).
            let mix = |target| LayerMix {
                plan,
                rows: t,
                width: kvd,
                layer: l,
                target,
            };
            ad.kv_mix_bwd(be, &mix(Target::K), &mut dk, &a.k, grads);
            ad.kv_mix_bwd(be, &mix(Target::V), &mut dv, &a.v, grads);
        }
        be.rope(&mut dq, &p.pos, ops.rope_q, &w.inv_freq, true);
        be.rope(&mut dk, &p.pos, ops.rope_k, &w.inv_freq, true);
        let mut dh = be.zeros(t * d);
        linear_bwd(
            be,
            &mut dh,
            grads,
            &dq,
            &a.h,
            &blk.q,
            t,
            ad,
            p,
            l,
            Target::Q,
            false,
        );
        linear_bwd(
            be,
            &mut dh,
            grads,
            &dk,
            &a.h,
            &blk.k,
            t,
            ad,
            p,
            l,
            Target::K,
            true,
        );
        linear_bwd(
            be,
            &mut dh,
            grads,
            &dv,
            &a.h,
            &blk.v,
            t,
            ad,
            p,
            l,
            Target::V,
            true,
        );
        if blk.mlp_norm.is_none() {
            be.add(&mut dh, &dh2);
        }
        be.norm_bwd(
            &mut dx_mid,
            &dh,
            &a.x,
            &a.stats1,
            &blk.attn_norm.w,
            ops.norm(t),
            true,
        );
        dx = dx_mid;
    }
}
