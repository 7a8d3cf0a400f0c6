//! Launch wrappers for the elementwise and row-movement kernels (rows.cu, kv_mix.cu, act.cu).
//! Each checks the sizes the kernel will index with, then launches.

use super::{grid, launch, CudaBackend, CudaBuf, NULL};
use crate::backend::Activation;

fn act_kind(a: Activation) -> i32 {
    match a {
        Activation::Silu => 0,
        Activation::GeluTanh => 1,
        Activation::Gelu => 2,
    }
}

impl CudaBackend {
    /// The first index of the largest of `buf[..n]`; one integer comes back to the host.
    pub(super) fn argmax_k(&self, buf: &CudaBuf, n: usize) -> u32 {
        assert!(n <= buf.len(), "cuda argmax: out of range");
        if n == 0 {
            return 0;
        }
        let out = self.upload_small(&[0u32]);
        launch!(self, argmax, super::per_row(1, 256); &out, &*buf.data, &(n as u64));
        self.download_small(&out, 1)[0]
    }

    pub(super) fn fill_buf(&self, buf: &mut CudaBuf, value: f32) {
        let n = buf.len();
        if n == 0 {
            return;
        }
        launch!(self, fill, grid(n); &mut *buf.data, &(n as u64), &value);
    }

    pub(super) fn add_at(&self, y: &mut CudaBuf, off: usize, x: &CudaBuf, n: usize) {
        assert!(off + n <= y.len() && n <= x.len(), "cuda add: out of range");
        if n == 0 {
            return;
        }
        launch!(self, add, grid(n); &mut y.data.slice_mut(off..off + n), &*x.data, &(n as u64));
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn copy_rows_k(
        &self,
        dst: &mut CudaBuf,
        dst_row: usize,
        src: &CudaBuf,
        src_row: usize,
        rows: usize,
        width: usize,
        accumulate: bool,
    ) {
        let n = rows * width;
        assert!(
            (dst_row + rows) * width <= dst.len() && (src_row + rows) * width <= src.len(),
            "cuda copy_rows: out of range"
        );
        if n == 0 {
            return;
        }
        let (d0, s0) = ((dst_row * width) as u64, (src_row * width) as u64);
        launch!(self, copy_rows, grid(n);
            &mut *dst.data, &d0, &*src.data, &s0, &(n as u64), &(accumulate as i32));
    }

    fn row_index(&self, idx: &[usize], rows: usize, what: &str) -> cudarc::driver::CudaSlice<i32> {
        let v: Vec<i32> = idx
            .iter()
            .map(|&r| {
                assert!(r < rows, "cuda {what}: row {r} out of {rows}");
                r as i32
            })
            .collect();
        self.upload_small(&v)
    }

    pub(super) fn gather(&self, out: &mut CudaBuf, src: &CudaBuf, idx: &[usize], width: usize) {
        assert!(
            idx.len() * width <= out.len(),
            "cuda gather_rows: out too short"
        );
        if idx.is_empty() || width == 0 {
            return;
        }
        let ix = self.row_index(idx, src.len() / width, "gather_rows");
        launch!(self, gather_rows, grid(idx.len() * width);
            &mut *out.data, &*src.data, &ix, &(idx.len() as i32), &(width as i32));
    }

    pub(super) fn scatter_add(
        &self,
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
        let ix = self.row_index(idx, out.len() / width, "scatter_add_rows");
        launch!(self, scatter_add_rows, grid(idx.len() * width);
            &mut *out.data, &*src.data, &ix, &(idx.len() as i32), &(width as i32));
    }

    pub(super) fn embedding(
        &self,
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
        let ids_d = self.upload_small(ids);
        launch!(self, embedding_fwd, grid(ids.len() * dim);
            &mut *out.data, &ids_d, &(ids.len() as i32), &*table.data, &(dim as i32), &scale);
    }

    /// Checks that the three row spans of a kv-mix are in bounds and pairwise disjoint (each
    /// thread then owns the elements it writes).
    pub(super) fn check_mix(len: usize, mix: usize, c: usize, b: usize, n: usize, width: usize) {
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

    #[allow(clippy::too_many_arguments)]
    pub(super) fn mix_fwd(
        &self,
        buf: &mut CudaBuf,
        mix: usize,
        c: usize,
        b: usize,
        n: usize,
        width: usize,
        alpha: f32,
    ) {
        Self::check_mix(buf.len(), mix, c, b, n, width);
        if n * width == 0 {
            return;
        }
        let (m0, c0, b0) = ((mix * width) as u64, (c * width) as u64, (b * width) as u64);
        launch!(self, kv_mix_fwd, grid(n * width);
            &mut *buf.data, &m0, &c0, &b0, &((n * width) as u64), &alpha);
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn mix_bwd(
        &self,
        dbuf: &mut CudaBuf,
        buf: &CudaBuf,
        mix: usize,
        c: usize,
        b: usize,
        n: usize,
        width: usize,
        alpha: f32,
    ) -> f64 {
        Self::check_mix(dbuf.len().min(buf.len()), mix, c, b, n, width);
        if n * width == 0 {
            return 0.0;
        }
        let acc = self.upload_small(&[0f64]);
        let (m0, c0, b0) = ((mix * width) as u64, (c * width) as u64, (b * width) as u64);
        launch!(self, kv_mix_bwd, grid(n * width);
            &mut *dbuf.data, &*buf.data, &m0, &c0, &b0, &((n * width) as u64), &alpha, &acc);
        self.download_small(&acc, 1)[0]
    }

    pub(super) fn act_f(
        &self,
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
                launch!(self, act_fwd, grid(n); &mut *out.data, &*gate.data, &*u.data, &(n as u64), &k)
            }
            None => {
                launch!(self, act_fwd, grid(n); &mut *out.data, &*gate.data, &NULL, &(n as u64), &k)
            }
        }
    }

    pub(super) fn act_b(
        &self,
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
                launch!(self, act_bwd, grid(n);
                    &mut *dgate.data, &mut *du.data, &*dout.data, &*gate.data, &*u.data, &(n as u64), &k)
            }
            // As on the CPU: without both `dup` and `up` the op is the plain activation's.
            _ => launch!(self, act_bwd, grid(n);
                &mut *dgate.data, &NULL, &*dout.data, &*gate.data, &NULL, &(n as u64), &k),
        }
    }
}
