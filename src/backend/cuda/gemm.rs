//! Matmuls: base weights through cuBLAS (sgemm, row-major via the transposed problem), the
//! batch-1 decode GEMV kernel, and `seg_gemm` (kernels/seg_gemm.cu), a list of small strided GEMMs in
//! one launch: the engine of the segment-aware LoRA (lora.rs) and the matmul fallback when
//! cuBLAS is unavailable.

use super::{launch, CudaBackend, CudaBuf};
use crate::backend::{Backend, HostWeight};
use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
use cudarc::cublas::{Gemm, GemmConfig};
use cudarc::driver::{LaunchConfig, PushKernelArg};

/// A frozen weight `[n, k]` on the device: its f32 values, uploaded once at load. The checkpoint's
/// compact form is not kept yet; the bf16 and quantised forms planned for this backend (see
/// "Precision per device" in docs/ARCHITECTURE.md) become further fields here, chosen among by
/// [`CudaBackend::matmul_fwd_k`] as the CPU backend chooses among its forms, without the
/// `Backend` trait changing.
pub struct CudaWeight {
    pub(super) f32: CudaBuf,
    pub(super) n: usize,
    pub(super) k: usize,
}

/// Tile sizes of kernels/seg_gemm.cu (BM, BN) and the K chunk of split-K (atomic) entries.
const TILE_M: usize = 64;
const TILE_N: usize = 64;
const SPLIT_K: usize = 256;

/// Operand `(buffer slot, offset, row stride, column stride)`: element (i, j) is
/// `slot[off + i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub(super) struct Op(pub i64, pub usize, pub usize, pub usize);

#[derive(Clone, Copy, PartialEq)]
pub(super) enum Mode {
    Set = 0,
    Add = 1,
    Atomic = 2,
}

/// `C[m, n] (op)= α · A[m, k] · B[k, n]`; C is `(slot, offset, row stride)`.
pub(super) struct Entry {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: Op,
    pub b: Op,
    pub c: (i64, usize, usize),
    pub alpha: f32,
    pub mode: Mode,
}

/// A buffer slot of a seg_gemm launch (kernel parameters p0..p5).
pub(super) enum Slot<'a> {
    R(&'a CudaBuf),
    W(&'a mut CudaBuf),
}

impl Slot<'_> {
    fn len(&self) -> usize {
        match self {
            Slot::R(b) => b.len(),
            Slot::W(b) => b.len(),
        }
    }
}

/// Last element an operand view touches, +1.
fn span(rows: usize, cols: usize, o: Op) -> usize {
    o.1 + (rows - 1) * o.2 + (cols - 1) * o.3 + 1
}

impl CudaBackend {
    #[track_caller]
    pub(super) fn upload_weight_k(&self, w: HostWeight) -> CudaWeight {
        CudaWeight {
            f32: Backend::upload(self, &w.values),
            n: w.n,
            k: w.k,
        }
    }

    pub(super) fn seg_gemm(&self, entries: &[Entry], mut slots: Vec<Slot>) {
        let mut desc: Vec<i64> = Vec::with_capacity(entries.len() * 16);
        let mut items: Vec<i32> = vec![];
        for x in entries {
            if x.m == 0 || x.n == 0 || x.k == 0 {
                continue;
            }
            let ok = span(x.m, x.k, x.a) <= slots[x.a.0 as usize].len()
                && span(x.k, x.n, x.b) <= slots[x.b.0 as usize].len()
                && span(x.m, x.n, Op(x.c.0, x.c.1, x.c.2, 1)) <= slots[x.c.0 as usize].len();
            assert!(ok, "cuda seg_gemm: operand out of range");
            assert!(
                matches!(slots[x.c.0 as usize], Slot::W(_)),
                "seg_gemm: C not writable"
            );
            desc.extend([x.m, x.n, x.k].map(|v| v as i64));
            for o in [x.a, x.b] {
                desc.extend([o.0, o.1 as i64, o.2 as i64, o.3 as i64]);
            }
            desc.extend([x.c.0, x.c.1 as i64, x.c.2 as i64]);
            desc.extend([x.alpha.to_bits() as i64, x.mode as i64]);
            let chunk = if x.mode == Mode::Atomic { SPLIT_K } else { x.k };
            let di = (desc.len() / 16 - 1) as i32;
            for m0 in (0..x.m).step_by(TILE_M) {
                for n0 in (0..x.n).step_by(TILE_N) {
                    for k0 in (0..x.k).step_by(chunk) {
                        let k1 = (k0 + chunk).min(x.k);
                        items.extend([di, m0 as i32, n0 as i32, k0 as i32, k1 as i32]);
                    }
                }
            }
        }
        if items.is_empty() {
            return;
        }
        let desc_d = self.upload_small(&desc);
        let items_d = self.upload_small(&items);
        let cfg = LaunchConfig {
            grid_dim: ((items.len() / 5) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let null = 0u64;
        let n_slots = slots.len();
        let mut b = self.stream.launch_builder(&self.k.seg_gemm);
        b.arg(&desc_d).arg(&items_d);
        for s in slots.iter_mut() {
            match s {
                Slot::R(x) => b.arg(&*x.data),
                Slot::W(x) => b.arg(&mut *x.data),
            };
        }
        for _ in n_slots..6 {
            b.arg(&null);
        }
        // SAFETY: seg_gemm(desc, items, p0..p5) matches these arguments; every operand view of
        // every entry was checked against its buffer's length above, and outputs are in
        // writable slots. Entries with mode Set/Add write disjoint rows (callers' contract:
        // LoRA segments do not overlap), Atomic entries may share outputs.
        if let Err(e) = unsafe { b.launch(cfg) } {
            self.fail("launching kernel seg_gemm", e);
        }
    }

    /// `y[m,n] (+)= x[m,k] · w[n,k]ᵀ (+ bias)`
    pub(super) fn matmul_fwd_k(
        &self,
        y: &mut CudaBuf,
        x: &CudaBuf,
        w: &CudaWeight,
        bias: Option<&CudaBuf>,
        m: usize,
        accumulate: bool,
    ) {
        let (w, n, k) = (&w.f32, w.n, w.k);
        assert!(
            x.len() >= m * k && w.len() >= n * k && y.len() >= m * n,
            "cuda matmul_fwd: sizes"
        );
        assert!(
            bias.is_none_or(|b| b.len() >= n),
            "cuda matmul_fwd: bias size"
        );
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            if !accumulate {
                super::ops::fill(self, y, 0.0); // an empty product (only y[..m·n] is specified)
            }
        } else if m == 1 {
            let cfg = LaunchConfig {
                grid_dim: (n.div_ceil(8) as u32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            launch!(self, matmul_fwd_gemv, cfg;
                &mut *y.data, &*x.data, &*w.data, &(k as i32), &(n as i32), &(accumulate as i32));
        } else if let Some(blas) = &self.blas {
            // Row-major y = x·wᵀ is column-major yᵀ = w·xᵀ: op(A) = wᵀ-as-stored, op(B) = x.
            let cfg = GemmConfig {
                transa: CUBLAS_OP_T,
                transb: CUBLAS_OP_N,
                m: n as i32,
                n: m as i32,
                k: k as i32,
                alpha: 1.0f32,
                lda: k as i32,
                ldb: k as i32,
                beta: if accumulate { 1.0 } else { 0.0 },
                ldc: n as i32,
            };
            // SAFETY: the sizes checked above bound every element cuBLAS reads or writes.
            unsafe { blas.gemm(cfg, &*w.data, &*x.data, &mut *y.data) }
                .unwrap_or_else(|e| self.fail("cuBLAS sgemm", e));
        } else {
            let e = Entry {
                m,
                n,
                k,
                a: Op(0, 0, k, 1),
                b: Op(1, 0, 1, k),
                c: (2, 0, n),
                alpha: 1.0,
                mode: if accumulate { Mode::Add } else { Mode::Set },
            };
            self.seg_gemm(&[e], vec![Slot::R(x), Slot::R(w), Slot::W(y)]);
        }
        if let Some(b) = bias {
            launch!(self, add_bias_rows, super::grid(m * n);
                &mut *y.data, &*b.data, &(m as u64), &(n as i32));
        }
    }

    /// `dx[m,k] (+)= dy[m,n] · w[n,k]`
    pub(super) fn matmul_bwd_x_k(
        &self,
        dx: &mut CudaBuf,
        dy: &CudaBuf,
        w: &CudaWeight,
        m: usize,
        accumulate: bool,
    ) {
        let (w, n, k) = (&w.f32, w.n, w.k);
        assert!(
            dx.len() >= m * k && dy.len() >= m * n && w.len() >= n * k,
            "cuda matmul_bwd_x: sizes"
        );
        if m == 0 || k == 0 {
            return;
        }
        if n == 0 {
            if !accumulate {
                super::ops::fill(self, dx, 0.0);
            }
        } else if let Some(blas) = &self.blas {
            // Column-major dxᵀ[k,m] = w-as-stored[k,n] · dyᵀ[n,m].
            let cfg = GemmConfig {
                transa: CUBLAS_OP_N,
                transb: CUBLAS_OP_N,
                m: k as i32,
                n: m as i32,
                k: n as i32,
                alpha: 1.0f32,
                lda: k as i32,
                ldb: n as i32,
                beta: if accumulate { 1.0 } else { 0.0 },
                ldc: k as i32,
            };
            // SAFETY: the sizes checked above bound every element cuBLAS reads or writes.
            unsafe { blas.gemm(cfg, &*w.data, &*dy.data, &mut *dx.data) }
                .unwrap_or_else(|e| self.fail("cuBLAS sgemm", e));
        } else {
            let e = Entry {
                m,
                n: k,
                k: n,
                a: Op(0, 0, n, 1),
                b: Op(1, 0, k, 1),
                c: (2, 0, k),
                alpha: 1.0,
                mode: if accumulate { Mode::Add } else { Mode::Set },
            };
            self.seg_gemm(&[e], vec![Slot::R(dy), Slot::R(w), Slot::W(dx)]);
        }
    }
}
