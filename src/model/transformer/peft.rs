//! DoRA and IA3 on one target linear over the packed stream, forward and backward. Like LoRA,
//! each adapter set acts on its own row ranges (`Packed::adapter_rows`), so both sets run in one
//! pass; rows no set covers get the base linear. The forms are in [`crate::bitune::peft`].

use super::{AdapterState, Packed};
use crate::backend::{Backend, LoraArgs, LoraSeg, RowCopy};
use crate::bitune::peft::{is_feedforward, Peft};
use crate::model::weights::{Linear, Target};
use std::ops::Range;

/// A row range and the offset of its set's vector (DoRA magnitude or IA3 `l`), with the set's
/// LoRA pair for DoRA.
struct Seg {
    rows: Range<usize>,
    vec_off: usize,
    lora: Option<LoraSeg>,
}

fn segs<B: Backend>(ad: &AdapterState<B>, p: &Packed, layer: usize, t: Target) -> Vec<Seg> {
    let tb = ad.table;
    let scale_bits = tb.lora.scale().to_bits();
    p.adapter_rows
        .iter()
        .filter_map(|(rows, set)| match tb.peft {
            Peft::Dora => {
                let (a_off, b_off) = tb.lora(*set, layer, t)?;
                Some(Seg {
                    rows: rows.clone(),
                    vec_off: tb.magnitude(*set, layer, t)?,
                    lora: Some(LoraSeg {
                        rows: rows.clone(),
                        a_off,
                        b_off,
                        rank: tb.lora.rank,
                        scale_bits,
                    }),
                })
            }
            Peft::Ia3 => Some(Seg {
                rows: rows.clone(),
                vec_off: tb.ia3(*set, layer, t)?,
                lora: None,
            }),
            Peft::Lora => None,
        })
        .filter(|s| !s.rows.is_empty())
        .collect()
}

fn lora_segs(segs: &[Seg]) -> Vec<LoraSeg> {
    segs.iter().filter_map(|s| s.lora.clone()).collect()
}

/// Per set among `segs`: (its magnitude's offset, 1/n, m/n), the vectors `[out]`, with
/// `n = ‖W + s·B A‖` per row; a set's prompt and answer rows share one computation.
type Factors<B> = Vec<(usize, <B as Backend>::Buf, <B as Backend>::Buf)>;

fn dora_factors<B: Backend>(
    be: &B,
    l: &Linear<B>,
    ad: &AdapterState<B>,
    segs: &[Seg],
) -> Factors<B> {
    let (k, n) = (l.in_dim, l.out_dim);
    let mut out: Factors<B> = Vec::new();
    for s in segs {
        if out.iter().any(|d| d.0 == s.vec_off) {
            continue;
        }
        let mut inv = be.zeros(n);
        be.dora_inv_norm(&mut inv, &l.w, ad.params, s.lora.as_ref().unwrap(), k, n);
        let mut g = be.zeros(n);
        be.copy_rows(
            &mut g,
            ad.params,
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

fn factor<'a, B: Backend>(f: &'a Factors<B>, s: &Seg) -> (&'a B::Buf, &'a B::Buf) {
    let d = f.iter().find(|d| d.0 == s.vec_off).unwrap();
    (&d.1, &d.2)
}

/// `y = x Wᵀ + b` adapted by DoRA or IA3 on the rows of each set that targets this linear.
#[allow(clippy::too_many_arguments)]
pub(super) fn linear_fwd<B: Backend>(
    be: &B,
    y: &mut B::Buf,
    x: &B::Buf,
    l: &Linear<B>,
    rows: usize,
    ad: &AdapterState<B>,
    p: &Packed,
    layer: usize,
    t: Target,
) {
    let (k, n) = (l.in_dim, l.out_dim);
    let segs = segs(ad, p, layer, t);
    if segs.is_empty() {
        be.matmul_fwd(y, x, &l.w, l.b.as_ref(), rows, k, n, false);
        return;
    }
    match ad.table.peft {
        Peft::Dora => {
            // y = (m/n)⊙(W x + s·B A x) + b: the bias is added after the scaling.
            be.matmul_fwd(y, x, &l.w, None, rows, k, n, false);
            be.lora_fwd(
                y,
                x,
                ad.params,
                LoraArgs {
                    segs: &lora_segs(&segs),
                    k,
                    n,
                },
            );
            let f = dora_factors(be, l, ad, &segs);
            for s in &segs {
                be.mul_cols(y, s.rows.clone(), n, factor::<B>(&f, s).1, 0);
            }
            if let Some(b) = &l.b {
                be.add_cols(y, 0..rows, n, b, 0);
            }
        }
        Peft::Ia3 if is_feedforward(t) => {
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
            for s in &segs {
                be.mul_cols(&mut xs, s.rows.clone(), k, ad.params, s.vec_off);
            }
            be.matmul_fwd(y, &xs, &l.w, l.b.as_ref(), rows, k, n, false);
        }
        Peft::Ia3 => {
            // y = l⊙(W x + b)
            be.matmul_fwd(y, x, &l.w, l.b.as_ref(), rows, k, n, false);
            for s in &segs {
                be.mul_cols(y, s.rows.clone(), n, ad.params, s.vec_off);
            }
        }
        Peft::Lora => unreachable!("LoRA runs through lora_fwd"),
    }
}

/// Backward of [`linear_fwd`]: `dx (+)= ∂y/∂x · dy`; the adapter gradients accumulate into
/// `grads`. The pre-scaling product is recomputed from `x` rather than kept by the forward.
#[allow(clippy::too_many_arguments)]
pub(super) fn linear_bwd<B: Backend>(
    be: &B,
    dx: &mut B::Buf,
    grads: &mut B::Buf,
    dy: &B::Buf,
    x: &B::Buf,
    l: &Linear<B>,
    rows: usize,
    ad: &AdapterState<B>,
    p: &Packed,
    layer: usize,
    t: Target,
    accumulate: bool,
) {
    let (k, n) = (l.in_dim, l.out_dim);
    let segs = segs(ad, p, layer, t);
    if segs.is_empty() {
        be.matmul_bwd_x(dx, dy, &l.w, rows, k, n, accumulate);
        return;
    }
    match ad.table.peft {
        Peft::Dora => {
            // n is detached: dm = Σ_rows dy⊙u/n with u = W x + s·B A x; A, B and x see
            // du = (m/n)⊙dy through the plain linear + LoRA backward.
            let ls = lora_segs(&segs);
            let mut u = be.zeros(rows * n);
            be.matmul_fwd(&mut u, x, &l.w, None, rows, k, n, false);
            be.lora_fwd(&mut u, x, ad.params, LoraArgs { segs: &ls, k, n });
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
            let f = dora_factors(be, l, ad, &segs);
            for s in &segs {
                let (inv, g) = factor::<B>(&f, s);
                be.mul_cols(&mut u, s.rows.clone(), n, inv, 0);
                be.col_dot(grads, s.vec_off, dy, &u, s.rows.clone(), n);
                be.mul_cols(&mut du, s.rows.clone(), n, g, 0);
            }
            be.matmul_bwd_x(dx, &du, &l.w, rows, k, n, accumulate);
            be.lora_bwd(dx, grads, &du, x, ad.params, LoraArgs { segs: &ls, k, n });
        }
        Peft::Ia3 if is_feedforward(t) => {
            // y = W (l⊙x) + b: with g = dy W, dl = Σ_rows g⊙x and dx = l⊙g.
            let mut g = be.zeros(rows * k);
            be.matmul_bwd_x(&mut g, dy, &l.w, rows, k, n, false);
            for s in &segs {
                be.col_dot(grads, s.vec_off, &g, x, s.rows.clone(), k);
                be.mul_cols(&mut g, s.rows.clone(), k, ad.params, s.vec_off);
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
        Peft::Ia3 => {
            // y = l⊙z with z = W x + b: dl = Σ_rows dy⊙z and dx = (l⊙dy) W.
            let mut z = be.zeros(rows * n);
            be.matmul_fwd(&mut z, x, &l.w, l.b.as_ref(), rows, k, n, false);
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
            for s in &segs {
                be.col_dot(grads, s.vec_off, dy, &z, s.rows.clone(), n);
                be.mul_cols(&mut ds, s.rows.clone(), n, ad.params, s.vec_off);
            }
            be.matmul_bwd_x(dx, &ds, &l.w, rows, k, n, accumulate);
        }
        Peft::Lora => unreachable!("LoRA runs through lora_bwd"),
    }
}
