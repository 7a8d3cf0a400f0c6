//! The vector forms of [`LinearAdapter`] (rescaled low-rank add, input or output column scale)
//! on one linear over the packed stream, forward and backward. Like the low-rank add, each range
//! acts on its own rows, so every adapter set runs in one pass; rows no range covers get the base
//! linear.

use super::{LinearAdapter, VecSeg};
use crate::backend::{Backend, LoraArgs, LoraSeg, RowCopy};
use crate::model::weights::Linear;

fn lora_segs(segs: &[VecSeg]) -> Vec<LoraSeg> {
    segs.iter().filter_map(|s| s.lora.clone()).collect()
}

/// Per set among `segs`: (its magnitude's offset, 1/n, m/n), the vectors `[out]`, with
/// `n = ‖W + s·B A‖` per row; a set's prompt and answer rows share one computation.
type Factors<B> = Vec<(usize, <B as Backend>::Buf, <B as Backend>::Buf)>;

fn dora_factors<B: Backend>(be: &B, l: &Linear<B>, params: &B::Buf, segs: &[VecSeg]) -> Factors<B> {
    let n = l.out_dim;
    let mut out: Factors<B> = Vec::new();
    for s in segs {
        if out.iter().any(|d| d.0 == s.vec_off) {
            continue;
        }
        let mut inv = be.zeros(n);
        be.dora_inv_norm(&mut inv, &l.w, params, s.lora.as_ref().unwrap());
        let mut g = be.zeros(n);
        be.copy_rows(
            &mut g,
            params,
            RowCopy {
                dst_row: 0,
                src_row: s.vec_off,
                rows: n,
                width: 1,
            },
            false,
        );
        be.mul_cols(&mut g, 0..1, n, &inv, 0);
        out.push((s.vec_off, inv, g));
    }
    out
}

fn factor<'a, B: Backend>(f: &'a Factors<B>, s: &VecSeg) -> (&'a B::Buf, &'a B::Buf) {
    let d = f.iter().find(|d| d.0 == s.vec_off).unwrap();
    (&d.1, &d.2)
}

/// `y = x Wᵀ + b` adapted by a vector form of `ad` on its rows.
pub(super) fn linear_fwd<B: Backend>(
    be: &B,
    y: &mut B::Buf,
    x: &B::Buf,
    l: &Linear<B>,
    rows: usize,
    params: &B::Buf,
    ad: &LinearAdapter,
) {
    let (k, n) = (l.in_dim, l.out_dim);
    let segs = ad.vec_segs();
    if segs.is_empty() {
        be.matmul_fwd(y, x, &l.w, l.b.as_ref(), rows, false);
        return;
    }
    match ad {
        LinearAdapter::Rescaled(_) => {
            // y = (m/n)⊙(W x + s·B A x) + b: the bias is added after the scaling.
            be.matmul_fwd(y, x, &l.w, None, rows, false);
            be.lora_fwd(
                y,
                x,
                params,
                LoraArgs {
                    segs: &lora_segs(segs),
                    k,
                    n,
                },
            );
            let f = dora_factors(be, l, params, segs);
            for s in segs {
                be.mul_cols(y, s.rows.clone(), n, factor::<B>(&f, s).1, 0);
            }
            if let Some(b) = &l.b {
                be.add_cols(y, 0..rows, n, b, 0);
            }
        }
        LinearAdapter::ScaleInput(_) => {
            // y = W (l⊙x) + b
            let mut xs = be.zeros(rows * k);
            be.copy_rows(
                &mut xs,
                x,
                RowCopy {
                    dst_row: 0,
                    src_row: 0,
                    rows,
                    width: k,
                },
                false,
            );
            for s in segs {
                be.mul_cols(&mut xs, s.rows.clone(), k, params, s.vec_off);
            }
            be.matmul_fwd(y, &xs, &l.w, l.b.as_ref(), rows, false);
        }
        LinearAdapter::ScaleOutput(_) => {
            // y = l⊙(W x + b)
            be.matmul_fwd(y, x, &l.w, l.b.as_ref(), rows, false);
            for s in segs {
                be.mul_cols(y, s.rows.clone(), n, params, s.vec_off);
            }
        }
        LinearAdapter::LowRank(_) => unreachable!("the low-rank add runs through lora_fwd"),
    }
}

/// Backward of [`linear_fwd`]: `dx (+)= ∂y/∂x · dy`; the adapter gradients accumulate into
/// `grads`. The pre-scaling product is recomputed from `x` rather than kept by the forward.
// The linear's backward (its outputs, inputs, weight, rows, accumulate) plus the adapter's
// parameters and op: one argument per thing the backward reads or writes.
#[allow(clippy::too_many_arguments)]
pub(super) fn linear_bwd<B: Backend>(
    be: &B,
    dx: &mut B::Buf,
    grads: &mut B::Buf,
    dy: &B::Buf,
    x: &B::Buf,
    l: &Linear<B>,
    rows: usize,
    params: &B::Buf,
    ad: &LinearAdapter,
    accumulate: bool,
) {
    let (k, n) = (l.in_dim, l.out_dim);
    let segs = ad.vec_segs();
    if segs.is_empty() {
        be.matmul_bwd_x(dx, dy, &l.w, rows, accumulate);
        return;
    }
    match ad {
        LinearAdapter::Rescaled(_) => {
            // n is detached: dm = Σ_rows dy⊙u/n with u = W x + s·B A x; A, B and x see
            // du = (m/n)⊙dy through the plain linear + LoRA backward.
            let ls = lora_segs(segs);
            let mut u = be.zeros(rows * n);
            be.matmul_fwd(&mut u, x, &l.w, None, rows, false);
            be.lora_fwd(&mut u, x, params, LoraArgs { segs: &ls, k, n });
            let mut du = be.zeros(rows * n);
            be.copy_rows(
                &mut du,
                dy,
                RowCopy {
                    dst_row: 0,
                    src_row: 0,
                    rows,
                    width: n,
                },
                false,
            );
            let f = dora_factors(be, l, params, segs);
            for s in segs {
                let (inv, g) = factor::<B>(&f, s);
                be.mul_cols(&mut u, s.rows.clone(), n, inv, 0);
                be.col_dot(grads, s.vec_off, dy, &u, s.rows.clone(), n);
                be.mul_cols(&mut du, s.rows.clone(), n, g, 0);
            }
            be.matmul_bwd_x(dx, &du, &l.w, rows, accumulate);
            be.lora_bwd(dx, grads, &du, x, params, LoraArgs { segs: &ls, k, n });
        }
        LinearAdapter::ScaleInput(_) => {
            // y = W (l⊙x) + b: with g = dy W, dl = Σ_rows g⊙x and dx = l⊙g.
            let mut g = be.zeros(rows * k);
            be.matmul_bwd_x(&mut g, dy, &l.w, rows, false);
            for s in segs {
                be.col_dot(grads, s.vec_off, &g, x, s.rows.clone(), k);
                be.mul_cols(&mut g, s.rows.clone(), k, params, s.vec_off);
            }
            be.copy_rows(
                dx,
                &g,
                RowCopy {
                    dst_row: 0,
                    src_row: 0,
                    rows,
                    width: k,
                },
                accumulate,
            );
        }
        LinearAdapter::ScaleOutput(_) => {
            // y = l⊙z with z = W x + b: dl = Σ_rows dy⊙z and dx = (l⊙dy) W.
            let mut z = be.zeros(rows * n);
            be.matmul_fwd(&mut z, x, &l.w, l.b.as_ref(), rows, false);
            let mut ds = be.zeros(rows * n);
            be.copy_rows(
                &mut ds,
                dy,
                RowCopy {
                    dst_row: 0,
                    src_row: 0,
                    rows,
                    width: n,
                },
                false,
            );
            for s in segs {
                be.col_dot(grads, s.vec_off, dy, &z, s.rows.clone(), n);
                be.mul_cols(&mut ds, s.rows.clone(), n, params, s.vec_off);
            }
            be.matmul_bwd_x(dx, &ds, &l.w, rows, accumulate);
        }
        LinearAdapter::LowRank(_) => unreachable!("the low-rank add runs through lora_bwd"),
    }
}
