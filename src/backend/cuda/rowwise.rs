//! Launch wrappers for the per-row reductions and optimizer steps (norm.cu, rope.cu,
//! cross_entropy.cu, optim.cu). Each checks the sizes the kernel will index with, then launches.

use super::{grid, launch, per_row, CudaBackend, CudaBuf, NULL};
use crate::backend::{AdamStep, CrossEntropyTargets, Norm, NormArgs, RopeArgs};

fn norm_kind(n: Norm) -> i32 {
    match n {
        Norm::Rms => 0,
        Norm::RmsPlusOne => 1,
        Norm::Layer => 2,
    }
}

/// Threads per row for the per-row reductions: enough to cover short rows without idle warps.
fn row_threads(d: usize) -> u32 {
    (d.next_power_of_two() as u32).clamp(32, 256)
}

pub(super) fn norm_fwd(
    be: &CudaBackend,
    out: &mut CudaBuf,
    stats: &mut CudaBuf,
    x: &CudaBuf,
    w: &CudaBuf,
    b: Option<&CudaBuf>,
    a: NormArgs,
) {
    let NormArgs { rows, d, kind, eps } = a;
    assert!(
        out.len() >= rows * d && x.len() >= rows * d && stats.len() >= rows * 2,
        "cuda norm_fwd: sizes"
    );
    assert!(
        w.len() >= d && b.is_none_or(|b| b.len() >= d),
        "cuda norm_fwd: weight sizes"
    );
    if rows * d == 0 {
        return;
    }
    let (r, dd, k) = (rows as i32, d as i32, norm_kind(kind));
    let cfg = per_row(rows, row_threads(d));
    match b {
        Some(b) => launch!(be, norm_fwd, cfg;
            &mut *out.data, &mut *stats.data, &*x.data, &*w.data, &*b.data, &r, &dd, &k, &eps),
        None => launch!(be, norm_fwd, cfg;
            &mut *out.data, &mut *stats.data, &*x.data, &*w.data, &NULL, &r, &dd, &k, &eps),
    }
}

// The trait's norm_bwd arguments (see there) plus the backend.
#[allow(clippy::too_many_arguments)]
pub(super) fn norm_bwd(
    be: &CudaBackend,
    dx: &mut CudaBuf,
    dy: &CudaBuf,
    x: &CudaBuf,
    stats: &CudaBuf,
    w: &CudaBuf,
    a: NormArgs,
    accumulate: bool,
) {
    let NormArgs { rows, d, kind, .. } = a;
    let n = rows * d;
    assert!(
        dx.len() >= n && dy.len() >= n && x.len() >= n,
        "cuda norm_bwd: sizes"
    );
    assert!(
        stats.len() >= rows * 2 && w.len() >= d,
        "cuda norm_bwd: sizes"
    );
    if n == 0 {
        return;
    }
    launch!(be, norm_bwd, per_row(rows, row_threads(d));
        &mut *dx.data, &*dy.data, &*x.data, &*stats.data, &*w.data,
        &(rows as i32), &(d as i32), &norm_kind(kind), &(accumulate as i32));
}

pub(super) fn rope(
    be: &CudaBackend,
    x: &mut CudaBuf,
    pos: &[u32],
    a: RopeArgs,
    inv_freq: &[f32],
    inverse: bool,
) {
    let RopeArgs {
        heads,
        head_dim,
        rot_dim,
    } = a;
    let half = rot_dim / 2;
    let n_freq = half.min(inv_freq.len());
    assert!(rot_dim <= head_dim, "cuda rope: rot_dim > head_dim");
    // As on the CPU, rows beyond the positions (mix and cache rows of K) are left alone.
    let rows = pos.len().min(x.len() / (heads * head_dim).max(1));
    if rows * heads * n_freq == 0 {
        return;
    }
    // Both are the same for Q and K of every layer (the frequencies for the whole run):
    // uploaded once while unchanged.
    let pos_d = be.up_u32.get(be, &pos[..rows]);
    let freq_d = be.up_f32.get(be, &inv_freq[..n_freq]);
    launch!(be, rope, grid(rows * heads * n_freq);
        &mut *x.data, &*pos_d, &(rows as i32), &(heads as i32), &(head_dim as i32),
        &(half as i32), &*freq_d, &(n_freq as i32), &(inverse as i32));
}

pub(super) fn cross_entropy(
    be: &CudaBackend,
    logits: &mut CudaBuf,
    targets: CrossEntropyTargets,
    vocab: usize,
    grad: bool,
    logprobs: &mut [f64],
    greedy: &mut [bool],
) -> f64 {
    let CrossEntropyTargets {
        tokens: targets,
        weights,
    } = targets;
    let rows = targets.len();
    assert!(weights.len() >= rows && logprobs.len() >= rows && greedy.len() >= rows);
    assert!(
        rows * vocab <= logits.len(),
        "cuda cross_entropy: logits too short"
    );
    assert!(
        targets.iter().all(|&t| (t as usize) < vocab),
        "cuda cross_entropy: target out of vocab"
    );
    if rows == 0 {
        return 0.0;
    }
    let t_d = be.upload_small(targets);
    let w_d = be.upload_small(&weights[..rows]);
    let row_out = be.upload_small(&vec![0f64; rows * 2]);
    let g_d = be.upload_small(&vec![0i32; rows]);
    launch!(be, cross_entropy, per_row(rows, 256);
        &mut *logits.data, &t_d, &w_d, &(rows as i32), &(vocab as i32), &(grad as i32),
        &row_out, &g_d);
    let r = be.download_small(&row_out, rows * 2);
    let g = be.download_small(&g_d, rows);
    let mut loss = 0f64;
    for i in 0..rows {
        loss += r[2 * i];
        logprobs[i] = r[2 * i + 1];
        greedy[i] = g[i] != 0;
    }
    loss
}

pub(super) fn sum_sq(be: &CudaBackend, x: &CudaBuf) -> f64 {
    if x.is_empty() {
        return 0.0;
    }
    let acc = be.upload_small(&[0f64]);
    launch!(be, sum_sq, grid(x.len()); &*x.data, &(x.len() as u64), &acc);
    be.download_small(&acc, 1)[0]
}

pub(super) fn adamw(
    be: &CudaBackend,
    p: &mut CudaBuf,
    g: &CudaBuf,
    m: &mut CudaBuf,
    v: &mut CudaBuf,
    h: AdamStep,
) {
    let n = p.len();
    assert!(
        g.len() >= n && m.len() >= n && v.len() >= n,
        "cuda adamw: sizes"
    );
    if n == 0 {
        return;
    }
    // Same f64 bias-correction arithmetic as the CPU reference.
    let bc1 = 1.0 - (h.beta1 as f64).powi(h.t as i32);
    let bc2 = 1.0 - (h.beta2 as f64).powi(h.t as i32);
    let step = (h.lr as f64 * bc2.sqrt() / bc1) as f32;
    let decay = h.lr * h.weight_decay;
    launch!(be, adamw, grid(n);
        &mut *p.data, &*g.data, &mut *m.data, &mut *v.data, &(n as u64),
        &h.beta1, &h.beta2, &h.eps, &step, &decay);
}

pub(super) fn sgd(be: &CudaBackend, p: &mut CudaBuf, g: &CudaBuf, lr: f32) {
    let n = p.len();
    assert!(g.len() >= n, "cuda sgd: sizes");
    if n > 0 {
        launch!(be, sgd, grid(n); &mut *p.data, &*g.data, &(n as u64), &lr);
    }
}
