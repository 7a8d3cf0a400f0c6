//! Launch wrappers for the elementwise and row-movement kernels (rows.cu, kv_mix.cu, act.cu).
//! Each checks the sizes the kernel will index with, then launches.

use super::{grid, launch, CudaBackend, CudaBuf, NULL};
use crate::backend::{Activation, KvMix, RowCopy, Theta};

fn act_kind(a: Activation) -> i32 {
    match a {
        Activation::Silu => 0,
        Activation::GeluTanh => 1,
        Activation::Gelu => 2,
    }
}

/// The first index of the largest of `buf[..n]`; one integer comes back to the host.
pub(super) fn argmax(be: &CudaBackend, buf: &CudaBuf, n: usize) -> u32 {
    assert!(n <= buf.len(), "cuda argmax: out of range");
    if n == 0 {
        return 0;
    }
    let out = be.upload_small(&[0u32]);
    launch!(be, argmax, super::per_row(1, 256); &out, &*buf.data, &(n as u64));
    be.download_small(&out, 1)[0]
}

pub(super) fn fill(be: &CudaBackend, buf: &mut CudaBuf, value: f32) {
    let n = buf.len();
    if n == 0 {
        return;
    }
    launch!(be, fill, grid(n); &mut *buf.data, &(n as u64), &value);
}

pub(super) fn scale(be: &CudaBackend, x: &mut CudaBuf, s: f32) {
    let n = x.len();
    if n > 0 {
        launch!(be, scale, grid(n); &mut *x.data, &(n as u64), &s);
    }
}

pub(super) fn add(be: &CudaBackend, y: &mut CudaBuf, off: usize, x: &CudaBuf, n: usize) {
    assert!(off + n <= y.len() && n <= x.len(), "cuda add: out of range");
    if n == 0 {
        return;
    }
    launch!(be, add, grid(n); &mut y.data.slice_mut(off..off + n), &*x.data, &(n as u64));
}

pub(super) fn copy_rows(
    be: &CudaBackend,
    dst: &mut CudaBuf,
    src: &CudaBuf,
    at: RowCopy,
    accumulate: bool,
) {
    let RowCopy {
        dst_row,
        src_row,
        rows,
        width,
    } = at;
    let n = rows * width;
    assert!(
        (dst_row + rows) * width <= dst.len() && (src_row + rows) * width <= src.len(),
        "cuda copy_rows: out of range"
    );
    if n == 0 {
        return;
    }
    let (d0, s0) = ((dst_row * width) as u64, (src_row * width) as u64);
    launch!(be, copy_rows, grid(n);
        &mut *dst.data, &d0, &*src.data, &s0, &(n as u64), &(accumulate as i32));
}

fn row_index(
    be: &CudaBackend,
    idx: &[usize],
    rows: usize,
    what: &str,
) -> cudarc::driver::CudaSlice<i32> {
    let v: Vec<i32> = idx
        .iter()
        .map(|&r| {
            assert!(r < rows, "cuda {what}: row {r} out of {rows}");
            r as i32
        })
        .collect();
    be.upload_small(&v)
}

pub(super) fn gather_rows(
    be: &CudaBackend,
    out: &mut CudaBuf,
    src: &CudaBuf,
    idx: &[usize],
    width: usize,
) {
    assert!(
        idx.len() * width <= out.len(),
        "cuda gather_rows: out too short"
    );
    if idx.is_empty() || width == 0 {
        return;
    }
    let ix = row_index(be, idx, src.len() / width, "gather_rows");
    launch!(be, gather_rows, grid(idx.len() * width);
        &mut *out.data, &*src.data, &ix, &(idx.len() as i32), &(width as i32));
}

pub(super) fn scatter_add_rows(
    be: &CudaBackend,
    out: &mut CudaBuf,
    src: &CudaBuf,
    idx: &[usize],
    width: usize,
) {
    assert!(
        idx.len() * width <= src.len(),
        "cuda scatter_add_rows: src too short"
    );
    if idx.is_empty() || width == 0 {
        return;
    }
    let ix = row_index(be, idx, out.len() / width, "scatter_add_rows");
    launch!(be, scatter_add_rows, grid(idx.len() * width);
        &mut *out.data, &*src.data, &ix, &(idx.len() as i32), &(width as i32));
}

pub(super) fn embedding_fwd(
    be: &CudaBackend,
    out: &mut CudaBuf,
    ids: &[u32],
    table: &CudaBuf,
    dim: usize,
    scale: f32,
) {
    let vocab = table.len() / dim.max(1);
    assert!(
        ids.len() * dim <= out.len(),
        "cuda embedding_fwd: out too short"
    );
    assert!(
        ids.iter().all(|&t| (t as usize) < vocab),
        "cuda embedding_fwd: id out of vocab"
    );
    if ids.is_empty() || dim == 0 {
        return;
    }
    let ids_d = be.upload_small(ids);
    launch!(be, embedding_fwd, grid(ids.len() * dim);
        &mut *out.data, &ids_d, &(ids.len() as i32), &*table.data, &(dim as i32), &scale);
}

/// Checks that the three row spans of a kv-mix are in bounds and pairwise disjoint (each
/// thread then owns the elements it writes).
pub(super) fn check_kv_mix(len: usize, m: KvMix) {
    let KvMix {
        mix,
        c,
        b,
        n,
        width,
    } = m;
    let spans = [mix, c, b];
    assert!(
        spans.iter().all(|&s| (s + n) * width <= len),
        "cuda kv_mix: out of range"
    );
    for i in 0..3 {
        for j in i + 1..3 {
            let (a, z) = (spans[i], spans[j]);
            assert!(a + n <= z || z + n <= a, "cuda kv_mix: row spans overlap");
        }
    }
}

pub(super) fn kv_mix_fwd(be: &CudaBackend, buf: &mut CudaBuf, m: KvMix, alpha: f32) {
    check_kv_mix(buf.len(), m);
    let KvMix {
        mix,
        c,
        b,
        n,
        width,
    } = m;
    if n * width == 0 {
        return;
    }
    let (m0, c0, b0) = ((mix * width) as u64, (c * width) as u64, (b * width) as u64);
    launch!(be, kv_mix_fwd, grid(n * width);
        &mut *buf.data, &m0, &c0, &b0, &((n * width) as u64), &alpha);
}

pub(super) fn kv_mix_bwd(
    be: &CudaBackend,
    dbuf: &mut CudaBuf,
    buf: &CudaBuf,
    m: KvMix,
    alpha: f32,
) -> f64 {
    check_kv_mix(dbuf.len().min(buf.len()), m);
    let KvMix {
        mix,
        c,
        b,
        n,
        width,
    } = m;
    if n * width == 0 {
        return 0.0;
    }
    let acc = be.upload_small(&[0f64]);
    let (m0, c0, b0) = ((mix * width) as u64, (c * width) as u64, (b * width) as u64);
    launch!(be, kv_mix_bwd, grid(n * width);
        &mut *dbuf.data, &*buf.data, &m0, &c0, &b0, &((n * width) as u64), &alpha, &acc);
    be.download_small(&acc, 1)[0]
}

pub(super) fn act_fwd(
    be: &CudaBackend,
    out: &mut CudaBuf,
    gate: &CudaBuf,
    up: Option<&CudaBuf>,
    a: Activation,
) {
    let n = out.len();
    assert!(
        gate.len() >= n && up.is_none_or(|u| u.len() >= n),
        "cuda act_fwd: sizes"
    );
    if n == 0 {
        return;
    }
    let k = act_kind(a);
    match up {
        Some(u) => {
            launch!(be, act_fwd, grid(n); &mut *out.data, &*gate.data, &*u.data, &(n as u64), &k)
        }
        None => {
            launch!(be, act_fwd, grid(n); &mut *out.data, &*gate.data, &NULL, &(n as u64), &k)
        }
    }
}

pub(super) fn act_bwd(
    be: &CudaBackend,
    dgate: &mut CudaBuf,
    dup: Option<&mut CudaBuf>,
    dout: &CudaBuf,
    gate: &CudaBuf,
    up: Option<&CudaBuf>,
    a: Activation,
) {
    let n = dgate.len();
    assert!(dout.len() >= n && gate.len() >= n, "cuda act_bwd: sizes");
    if n == 0 {
        return;
    }
    let k = act_kind(a);
    match (dup, up) {
        (Some(du), Some(u)) => {
            assert!(du.len() >= n && u.len() >= n, "cuda act_bwd: sizes");
            launch!(be, act_bwd, grid(n);
                &mut *dgate.data, &mut *du.data, &*dout.data, &*gate.data, &*u.data, &(n as u64), &k)
        }
        // As on the CPU: without both `dup` and `up` the op is the plain activation's.
        _ => launch!(be, act_bwd, grid(n);
            &mut *dgate.data, &NULL, &*dout.data, &*gate.data, &NULL, &(n as u64), &k),
    }
}

/// Checks a θ offset; returns the 1-element view of θ.
fn theta_view<'a>(params: &'a CudaBuf, theta: usize) -> cudarc::driver::CudaView<'a, f32> {
    assert!(
        theta < params.len(),
        "cuda kv_mix: θ offset {theta} out of range"
    );
    params.data.slice(theta..theta + 1)
}

pub(super) fn kv_mix_fwd_theta(
    be: &CudaBackend,
    buf: &mut CudaBuf,
    m: KvMix,
    params: &CudaBuf,
    theta: Theta,
) {
    check_kv_mix(buf.len(), m);
    let th = theta_view(params, theta.off);
    let (
        KvMix {
            mix,
            c,
            b,
            n,
            width,
        },
        theta_init,
    ) = (m, theta.init);
    if n * width == 0 {
        return;
    }
    let (m0, c0, b0) = ((mix * width) as u64, (c * width) as u64, (b * width) as u64);
    launch!(be, kv_mix_fwd_theta, grid(n * width);
        &mut *buf.data, &m0, &c0, &b0, &((n * width) as u64), &th, &theta_init);
}

pub(super) fn kv_mix_bwd_theta(
    be: &CudaBackend,
    dbuf: &mut CudaBuf,
    buf: &CudaBuf,
    m: KvMix,
    params: &CudaBuf,
    theta: Theta,
    grads: &mut CudaBuf,
) {
    check_kv_mix(dbuf.len().min(buf.len()), m);
    let th = theta_view(params, theta.off);
    let (
        KvMix {
            mix,
            c,
            b,
            n,
            width,
        },
        theta_init,
        theta,
    ) = (m, theta.init, theta.off);
    assert!(theta < grads.len(), "cuda kv_mix: θ gradient out of range");
    if n * width == 0 {
        return;
    }
    let acc = be.upload_small(&[0f64]);
    let (m0, c0, b0) = ((mix * width) as u64, (c * width) as u64, (b * width) as u64);
    launch!(be, kv_mix_bwd_theta, grid(n * width);
        &mut *dbuf.data, &*buf.data, &m0, &c0, &b0, &((n * width) as u64), &th, &theta_init, &acc);
    let mut g = grads.data.slice_mut(theta..theta + 1);
    launch!(be, kv_mix_bwd_theta_grad, grid(1); &mut g, &th, &theta_init, &acc);
}
