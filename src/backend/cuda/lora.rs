//! Segment-aware LoRA on `seg_gemm`: every segment of both adapter sets becomes entries of one
//! launch per stage (forward: 2 launches, backward: 2 launches), whatever the number of segments.

use super::gemm::{Entry, Mode, Op, Slot};
use super::{CudaBackend, CudaBuf};
use crate::backend::{LoraArgs, LoraSeg};

/// Checks LoRA segments against the buffers; returns the per-segment offsets of a
/// `[rows, rank]` scratch buffer and its total length.
fn lora_layout(
    segs: &[LoraSeg],
    x_rows: usize,
    y_rows: usize,
    params: usize,
    k: usize,
    n: usize,
) -> (Vec<usize>, usize) {
    let mut offs = vec![];
    let mut total = 0;
    for (i, s) in segs.iter().enumerate() {
        assert!(
            s.rows.end <= x_rows && s.rows.end <= y_rows,
            "cuda lora: rows out of range"
        );
        assert!(
            s.a_off + s.rank * k <= params && s.b_off + n * s.rank <= params,
            "cuda lora: params"
        );
        for t in &segs[..i] {
            let disjoint =
                s.rows.end <= t.rows.start || t.rows.end <= s.rows.start || s.rows.is_empty();
            assert!(disjoint, "cuda lora: overlapping segments");
        }
        offs.push(total);
        total += s.rows.len() * s.rank;
    }
    (offs, total)
}

/// For each segment, `y[rows] += s·(x[rows] Aᵀ) Bᵀ`. Slots: x, y, params, xa.
pub(super) fn lora_fwd(
    be: &CudaBackend,
    y: &mut CudaBuf,
    x: &CudaBuf,
    params: &CudaBuf,
    a: LoraArgs,
) {
    let LoraArgs { segs, k, n } = a;
    let (offs, total) = lora_layout(
        segs,
        x.len() / k.max(1),
        y.len() / n.max(1),
        params.len(),
        k,
        n,
    );
    if total == 0 {
        return;
    }
    let mut xa = be.alloc_zeros(total);
    let stage1: Vec<Entry> = segs
        .iter()
        .zip(&offs)
        .map(|(s, &o)| Entry {
            m: s.rows.len(),
            n: s.rank,
            k,
            a: Op(0, s.rows.start * k, k, 1),
            b: Op(2, s.a_off, 1, k),
            c: (3, o, s.rank),
            alpha: s.scale(),
            mode: Mode::Set,
        })
        .collect();
    be.seg_gemm(
        &stage1,
        vec![Slot::R(x), Slot::W(y), Slot::R(params), Slot::W(&mut xa)],
    );
    let stage2: Vec<Entry> = segs
        .iter()
        .zip(&offs)
        .map(|(s, &o)| Entry {
            m: s.rows.len(),
            n,
            k: s.rank,
            a: Op(3, o, s.rank, 1),
            b: Op(2, s.b_off, 1, s.rank),
            c: (1, s.rows.start * n, n),
            alpha: 1.0,
            mode: Mode::Add,
        })
        .collect();
    be.seg_gemm(
        &stage2,
        vec![Slot::R(x), Slot::W(y), Slot::R(params), Slot::W(&mut xa)],
    );
}

/// dx += s·(dy B) A, dA += s·(dy B)ᵀ x, dB += s·dyᵀ (x Aᵀ). Slots: x, dy, params, tmp,
/// grads, dx; tmp holds u = s·dy·B, then xa = s·x·Aᵀ.
pub(super) fn lora_bwd(
    be: &CudaBackend,
    dx: &mut CudaBuf,
    grads: &mut CudaBuf,
    dy: &CudaBuf,
    x: &CudaBuf,
    params: &CudaBuf,
    a: LoraArgs,
) {
    let LoraArgs { segs, k, n } = a;
    let rows = (x.len() / k.max(1)).min(dx.len() / k.max(1));
    let (offs, total) = lora_layout(segs, rows, dy.len() / n.max(1), params.len(), k, n);
    assert!(
        grads.len() >= params.len(),
        "cuda lora_bwd: grads shorter than params"
    );
    if total == 0 {
        return;
    }
    let mut tmp = be.alloc_zeros(2 * total);
    let mut stage1 = vec![];
    let mut stage2 = vec![];
    for (s, &u) in segs.iter().zip(&offs) {
        let (r, st, xa, sc) = (s.rank, s.rows.start, total + u, s.scale());
        let rows = s.rows.len();
        stage1.push(Entry {
            m: rows,
            n: r,
            k: n,
            a: Op(1, st * n, n, 1),
            b: Op(2, s.b_off, r, 1),
            c: (3, u, r),
            alpha: sc,
            mode: Mode::Set,
        });
        stage1.push(Entry {
            m: rows,
            n: r,
            k,
            a: Op(0, st * k, k, 1),
            b: Op(2, s.a_off, 1, k),
            c: (3, xa, r),
            alpha: sc,
            mode: Mode::Set,
        });
        // dA[r,k] += uᵀ·x, dB[n,r] += dyᵀ·xa (sums over rows: split-K atomics), dx += u·A.
        stage2.push(Entry {
            m: r,
            n: k,
            k: rows,
            a: Op(3, u, 1, r),
            b: Op(0, st * k, k, 1),
            c: (4, s.a_off, k),
            alpha: 1.0,
            mode: Mode::Atomic,
        });
        stage2.push(Entry {
            m: n,
            n: r,
            k: rows,
            a: Op(1, st * n, 1, n),
            b: Op(3, xa, r, 1),
            c: (4, s.b_off, r),
            alpha: 1.0,
            mode: Mode::Atomic,
        });
        stage2.push(Entry {
            m: rows,
            n: k,
            k: r,
            a: Op(3, u, r, 1),
            b: Op(2, s.a_off, k, 1),
            c: (5, st * k, k),
            alpha: 1.0,
            mode: Mode::Add,
        });
    }
    be.seg_gemm(
        &stage1,
        vec![Slot::R(x), Slot::R(dy), Slot::R(params), Slot::W(&mut tmp)],
    );
    be.seg_gemm(
        &stage2,
        vec![
            Slot::R(x),
            Slot::R(dy),
            Slot::R(params),
            Slot::R(&tmp),
            Slot::W(grads),
            Slot::W(dx),
        ],
    );
}
