//! Segment attention on the CPU: exact softmax per (query row, head), over the key rows of the
//! query's group that its mask admits. The backward recomputes probabilities from the saved
//! log-sum-exp, as a flash-attention backward does.

use super::ops::exp_f32 as exp;
use crate::backend::{AttnDims, AttnGroup, AttnPlan, MaskKind};
use rayon::prelude::*;

fn visible(mask: MaskKind, qp: u32, kp: u32) -> bool {
    match mask {
        MaskKind::Causal => kp <= qp,
        MaskKind::Full => true,
        MaskKind::AntiCausal => kp >= qp,
    }
}

/// The keys a query row sees, in order.
fn keys_for(g: &AttnGroup, plan: &AttnPlan, qrow: usize) -> Vec<usize> {
    let qp = plan.q_pos[qrow];
    g.kv.iter()
        .flat_map(|r| r.clone())
        .filter(|&j| visible(g.mask, qp, plan.k_pos[j]))
        .collect()
}

fn row_groups(plan: &AttnPlan, rows: usize) -> Vec<Option<usize>> {
    let mut map = vec![None; rows];
    for (gi, g) in plan.groups.iter().enumerate() {
        for r in g.q.clone() {
            map[r] = Some(gi);
        }
    }
    map
}

/// Eight partial sums, so it vectorises (a single running sum cannot be reordered).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    crate::model::packed::dot(a, b)
}

pub fn forward(
    out: &mut [f32],
    lse: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    plan: &AttnPlan,
    d: AttnDims,
) {
    let (hq, hkv, hd) = (d.q_heads, d.kv_heads, d.head_dim);
    let qw = hq * hd;
    let kw = hkv * hd;
    let rows = q.len() / qw;
    let groups = row_groups(plan, rows);
    out.par_chunks_mut(qw)
        .zip(lse.par_chunks_mut(hq))
        .enumerate()
        .for_each(|(i, (orow, lrow))| {
            let Some(gi) = groups[i] else {
                orow.fill(0.0);
                lrow.fill(f32::NEG_INFINITY);
                return;
            };
            let keys = keys_for(&plan.groups[gi], plan, i);
            let mut s = vec![0f32; keys.len()];
            for h in 0..hq {
                let kh = h / (hq / hkv);
                let qv = &q[i * qw + h * hd..i * qw + (h + 1) * hd];
                let mut mx = f32::NEG_INFINITY;
                for (sj, &j) in s.iter_mut().zip(&keys) {
                    *sj = dot(qv, &k[j * kw + kh * hd..j * kw + (kh + 1) * hd]) * d.scale;
                    mx = mx.max(*sj);
                }
                let o = &mut orow[h * hd..(h + 1) * hd];
                o.fill(0.0);
                if keys.is_empty() {
                    lrow[h] = f32::NEG_INFINITY;
                    continue;
                }
                let mut sum = 0f32;
                for sj in s.iter_mut() {
                    *sj = exp(*sj - mx);
                    sum += *sj;
                }
                for (sj, &j) in s.iter().zip(&keys) {
                    let p = sj / sum;
                    let vv = &v[j * kw + kh * hd..j * kw + (kh + 1) * hd];
                    o.iter_mut().zip(vv).for_each(|(a, b)| *a += p * b);
                }
                lrow[h] = mx + sum.ln();
            }
        });
}

#[allow(clippy::too_many_arguments)]
pub fn backward(
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    dout: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    plan: &AttnPlan,
    d: AttnDims,
) {
    let (hq, hkv, hd) = (d.q_heads, d.kv_heads, d.head_dim);
    let qw = hq * hd;
    let kw = hkv * hd;
    let rows = q.len() / qw;
    let groups = row_groups(plan, rows);
    let per_kv = hq / hkv;
    dq.fill(0.0);
    // Parallel over kv heads: each thread owns the dK/dV columns of its head (and the dQ columns
    // of the query heads that read it), so no two threads write the same element.
    let dk_cols: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = (0..hkv)
        .into_par_iter()
        .map(|kh| {
            let mut dkh = vec![0f32; dk.len() / hkv];
            let mut dvh = vec![0f32; dv.len() / hkv];
            let mut dqh = vec![0f32; rows * per_kv * hd];
            for (i, g) in groups.iter().enumerate() {
                let Some(gi) = *g else { continue };
                let keys = keys_for(&plan.groups[gi], plan, i);
                for hh in 0..per_kv {
                    let h = kh * per_kv + hh;
                    let qv = &q[i * qw + h * hd..i * qw + (h + 1) * hd];
                    let dov = &dout[i * qw + h * hd..i * qw + (h + 1) * hd];
                    let ov = &out[i * qw + h * hd..i * qw + (h + 1) * hd];
                    let l = lse[i * hq + h];
                    let dsum = dot(dov, ov);
                    let dqv = &mut dqh[(i * per_kv + hh) * hd..(i * per_kv + hh + 1) * hd];
                    for &j in &keys {
                        let kv_ = &k[j * kw + kh * hd..j * kw + (kh + 1) * hd];
                        let vv = &v[j * kw + kh * hd..j * kw + (kh + 1) * hd];
                        let p = exp(dot(qv, kv_) * d.scale - l);
                        let dp = dot(dov, vv);
                        let ds = p * (dp - dsum) * d.scale;
                        dqv.iter_mut().zip(kv_).for_each(|(a, b)| *a += ds * b);
                        let dkr = &mut dkh[j * hd..(j + 1) * hd];
                        dkr.iter_mut().zip(qv).for_each(|(a, b)| *a += ds * b);
                        let dvr = &mut dvh[j * hd..(j + 1) * hd];
                        dvr.iter_mut().zip(dov).for_each(|(a, b)| *a += p * b);
                    }
                }
            }
            (dkh, dvh, dqh)
        })
        .collect();
    for (kh, (dkh, dvh, dqh)) in dk_cols.into_iter().enumerate() {
        for j in 0..dk.len() / kw {
            for c in 0..hd {
                dk[j * kw + kh * hd + c] += dkh[j * hd + c];
                dv[j * kw + kh * hd + c] += dvh[j * hd + c];
            }
        }
        for i in 0..rows {
            for hh in 0..per_kv {
                let h = kh * per_kv + hh;
                let src = &dqh[(i * per_kv + hh) * hd..(i * per_kv + hh + 1) * hd];
                dq[i * qw + h * hd..i * qw + (h + 1) * hd].copy_from_slice(src);
            }
        }
    }
}
