//! Launch wrappers for DoRA's and IA3's per-column kernels (cols.cu): none of them copies
//! anything to the host.

use super::{grid, launch, per_row, CudaBackend, CudaBuf};
use crate::backend::LoraSeg;
use std::ops::Range;

/// `y[r, j] *= v[v_off + j]` for `r` in `rows`.
pub(super) fn mul_cols(
    be: &CudaBackend,
    y: &mut CudaBuf,
    rows: Range<usize>,
    width: usize,
    v: &CudaBuf,
    v_off: usize,
) {
    cols(be, false, y, rows, width, v, v_off)
}

/// `y[r, j] += v[v_off + j]` for `r` in `rows`.
pub(super) fn add_cols(
    be: &CudaBackend,
    y: &mut CudaBuf,
    rows: Range<usize>,
    width: usize,
    v: &CudaBuf,
    v_off: usize,
) {
    cols(be, true, y, rows, width, v, v_off)
}

// The launcher shared by mul_cols and add_cols: its arguments are theirs plus which kernel.
#[allow(clippy::too_many_arguments)]
fn cols(
    be: &CudaBackend,
    add: bool,
    y: &mut CudaBuf,
    rows: Range<usize>,
    width: usize,
    v: &CudaBuf,
    v_off: usize,
) {
    assert!(
        rows.end * width <= y.len() && v_off + width <= v.len(),
        "cuda mul_cols/add_cols: out of range"
    );
    let n = rows.len() * width;
    if n == 0 {
        return;
    }
    let (start, w) = ((rows.start * width) as u64, width as u64);
    let vs = v.data.slice(v_off..v_off + width);
    if add {
        launch!(be, add_cols, grid(n); &mut *y.data, &start, &(n as u64), &w, &vs);
    } else {
        launch!(be, mul_cols, grid(n); &mut *y.data, &start, &(n as u64), &w, &vs);
    }
}

pub(super) fn col_dot(
    be: &CudaBackend,
    out: &mut CudaBuf,
    out_off: usize,
    a: &CudaBuf,
    b: &CudaBuf,
    rows: Range<usize>,
    width: usize,
) {
    assert!(
        out_off + width <= out.len() && rows.end * width <= a.len() && rows.end * width <= b.len(),
        "cuda col_dot: out of range"
    );
    if width == 0 || rows.is_empty() {
        return;
    }
    let mut o = out.data.slice_mut(out_off..out_off + width);
    let (start, r, w) = ((rows.start * width) as u64, rows.len() as u64, width as u64);
    launch!(be, col_dot, grid(width); &mut o, &*a.data, &*b.data, &start, &r, &w);
}

pub(super) fn dora_inv_norm(
    be: &CudaBackend,
    out: &mut CudaBuf,
    w: &CudaBuf,
    params: &CudaBuf,
    seg: &LoraSeg,
    k: usize,
    n: usize,
) {
    let r = seg.rank;
    assert!(
        n * k <= w.len() && seg.a_off + r * k <= params.len() && seg.b_off + n * r <= params.len(),
        "cuda dora_inv_norm: out of range"
    );
    if out.len() < n {
        *out = be.alloc_zeros(n);
    }
    if n == 0 {
        return;
    }
    let a = params.data.slice(seg.a_off..seg.a_off + (r * k).max(1));
    let b = params.data.slice(seg.b_off..seg.b_off + (n * r).max(1));
    launch!(be, dora_inv_norm, per_row(n, 256);
        &mut *out.data, &*w.data, &a, &b, &seg.scale(), &(r as i32), &(k as i32), &(n as i32));
}
