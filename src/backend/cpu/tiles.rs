//! The f32 GEMMs of the frozen weights on AVX-512 processors: `x·Wᵀ` (prefill, training forward)
//! and `dy·W` (training backward), register-tiled by hand.
//!
//! Why not the `gemm` crate here: it packs both operands on every call, and at these shapes
//! (a few hundred rows against 576–1536-wide weights) the packing and its blocking heuristics cost
//! about half the time (95 GFLOP/s in the model against 130+ in isolation, 2 cores). Frozen
//! weights never change, so `x·Wᵀ` reads W from panels laid out once at load ([`Panels`]), and
//! `dy·W` reads W's rows directly: a 32-column strip of W is already what the kernel wants. The
//! activations are never copied.
//!
//! One kernel serves both: a tile of up to [`MR`] rows × 32 columns of C lives in 2·MR zmm
//! accumulators across the whole reduction; each step loads 32 values of B and broadcasts one
//! value of A per row. That is 2·MR FMAs per 2 loads + MR broadcasts, FMA-bound at MR = 12.

use rayon::prelude::*;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Rows of C per tile (24 accumulators + 2 B vectors + a broadcast: 27 of 32 zmm registers).
pub const MR: usize = 12;
/// Columns of C per tile: two zmm vectors.
pub const NR: usize = 32;
/// Reduction block of `matmul_nn`: a 32-column strip of KC rows of b is 64 KiB.
const KC: usize = 512;

/// Whether this processor runs the kernels (AVX-512F, checked once).
pub fn available() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        let has = is_x86_feature_detected!("avx512f");
        #[cfg(not(target_arch = "x86_64"))]
        let has = false;
        // BITUNE_NO_AVX512 forces the portable path (to compare or to test it).
        std::env::var_os("BITUNE_NO_AVX512").is_none() && has
    })
}

/// W `[n, k]` re-laid for `x·Wᵀ`: panel p holds rows `[32p, 32p+32)` of W transposed, `[k][32]`,
/// zero-padded past row n, so the kernel reads 32 output columns of one reduction step as two
/// contiguous vectors.
pub struct Panels {
    data: Vec<f32>,
    pub n: usize,
    pub k: usize,
}

impl Panels {
    pub fn pack(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "panels: weight is not [n, k]");
        let np = n.div_ceil(NR);
        let mut data = vec![0f32; np * k * NR];
        data.par_chunks_mut(k * NR)
            .enumerate()
            .for_each(|(p, panel)| {
                for r in 0..NR.min(n - p * NR) {
                    let row = &w[(p * NR + r) * k..(p * NR + r + 1) * k];
                    for (kk, &x) in row.iter().enumerate() {
                        panel[kk * NR + r] = x;
                    }
                }
            });
        Panels { data, n, k }
    }
}

/// A raw output pointer shared by tasks that write disjoint tiles of it.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: every use writes only the tile its task owns (disjoint row/column ranges, see the
// callers), and the buffer outlives the parallel loop that uses it.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The pointer `off` elements in. A method (not the field) so that closures capture the
    /// whole `Send` wrapper rather than the raw pointer inside it.
    fn at(self, off: usize) -> *mut f32 {
        self.0.wrapping_add(off)
    }
}

#[cfg(target_arch = "x86_64")]
/// `C[i][j] (+)= Σ_kk A[i·lda + kk] · B[kk·ldb + j]` for `i < R`, `j < ncols ≤ 32`, `kk < kdim`.
///
/// # Safety
/// AVX-512F is present; A addresses `R` rows of `kdim` values at stride `lda`; B addresses `kdim`
/// rows of `ncols` values at stride `ldb` (columns past `ncols` are never read); C addresses `R`
/// rows of `ncols` values at stride `ldc`, not aliasing A or B.
#[target_feature(enable = "avx512f")]
// A micro-kernel's operands as raw pointers with their strides: a struct would be built and read
// back in the innermost loop of every product, for no gain in clarity at its two call sites.
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const R: usize>(
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    kdim: usize,
    c: *mut f32,
    ldc: usize,
    ncols: usize,
    accumulate: bool,
) {
    let m0: __mmask16 = if ncols >= 16 {
        0xffff
    } else {
        (1u32 << ncols) as u16 - 1
    };
    let m1: __mmask16 = if ncols >= 32 {
        0xffff
    } else if ncols <= 16 {
        0
    } else {
        (1u32 << (ncols - 16)) as u16 - 1
    };
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    let mut bp = b;
    let mut ap = a;
    for _ in 0..kdim {
        let b0 = _mm512_maskz_loadu_ps(m0, bp);
        let b1 = _mm512_maskz_loadu_ps(m1, bp.add(16));
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let x = _mm512_set1_ps(*ap.add(r * lda));
            acc_r[0] = _mm512_fmadd_ps(x, b0, acc_r[0]);
            acc_r[1] = _mm512_fmadd_ps(x, b1, acc_r[1]);
        }
        bp = bp.add(ldb);
        ap = ap.add(1);
    }
    for (r, acc_r) in acc.iter().enumerate() {
        let cp = c.add(r * ldc);
        let (mut v0, mut v1) = (acc_r[0], acc_r[1]);
        if accumulate {
            v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, cp));
            v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, cp.add(16)));
        }
        _mm512_mask_storeu_ps(cp, m0, v0);
        _mm512_mask_storeu_ps(cp.add(16), m1, v1);
    }
}

#[cfg(target_arch = "x86_64")]
/// [`tile`] for `rows ≤ MR` rows.
///
/// # Safety
/// As [`tile`], with R = `rows`.
// `tile`'s arguments plus the row count it dispatches on.
#[allow(clippy::too_many_arguments)]
unsafe fn tile_rows(
    rows: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    kdim: usize,
    c: *mut f32,
    ldc: usize,
    ncols: usize,
    accumulate: bool,
) {
    macro_rules! go {
        ($($r:literal)*) => {
            match rows {
                $($r => tile::<$r>(a, lda, b, ldb, kdim, c, ldc, ncols, accumulate),)*
                _ => unreachable!("tile rows {rows} > MR"),
            }
        };
    }
    go!(1 2 3 4 5 6 7 8 9 10 11 12)
}

/// Never called: [`available`] is false off x86-64, and the matmuls check it first.
#[cfg(not(target_arch = "x86_64"))]
// The x86-64 `tile_rows` signature.
#[allow(clippy::too_many_arguments)]
unsafe fn tile_rows(
    _: usize,
    _: *const f32,
    _: usize,
    _: *const f32,
    _: usize,
    _: usize,
    _: *mut f32,
    _: usize,
    _: usize,
    _: bool,
) {
    unreachable!("tiles: AVX-512 kernel off x86-64")
}

/// How to cut an `m × ncol_tiles` output into parallel tasks: column-tile chunks first (each
/// task then reads only its part of B), row chunks (whole tiles of MR rows) when there are too
/// few column tiles to keep every thread busy.
fn split(m: usize, k: usize, col_tiles: usize) -> (usize, usize) {
    let threads = rayon::current_num_threads();
    // Below ~2^20 multiply-adds (tens of microseconds) a split costs more than it saves.
    let want = if m * k * col_tiles * NR < 1 << 20 {
        1
    } else {
        4 * threads
    };
    let col_chunks = col_tiles.min(want).max(1);
    let row_tiles = m.div_ceil(MR);
    let row_chunks = want.div_ceil(col_chunks).min(row_tiles).max(1);
    (col_chunks, row_chunks)
}

/// The row tiles of `rows` as (first row, rows), as even as possible: 50 rows run as 5 × 10,
/// not 4 × 12 + 2, whose last tile would do two rows of work for nearly the loads of twelve.
fn row_tiles(rows: std::ops::Range<usize>) -> impl Iterator<Item = (usize, usize)> {
    let (s, len) = (rows.start, rows.len());
    let t = len.div_ceil(MR);
    (0..t).map(move |i| (s + i * len / t, (i + 1) * len / t - i * len / t))
}

/// Runs `f(rows, col_tiles)` over the task grid in parallel.
fn grid(
    m: usize,
    k: usize,
    col_tiles: usize,
    f: impl Fn(std::ops::Range<usize>, std::ops::Range<usize>) + Sync,
) {
    let (cc, rc) = split(m, k, col_tiles);
    let row_tiles = m.div_ceil(MR);
    (0..cc * rc).into_par_iter().for_each(|t| {
        let (ci, ri) = (t % cc, t / cc);
        let cols = ci * col_tiles / cc..(ci + 1) * col_tiles / cc;
        let rows = (ri * row_tiles / rc * MR).min(m)..((ri + 1) * row_tiles / rc * MR).min(m);
        f(rows, cols)
    });
}

/// Every tile of the output rows `rows` × column tiles `cols`, reduction blocks outermost: for
/// each block of KC steps and each column tile, `b_block(p, k0, kc, ncols)` gives the B rows to
/// read (pointer, row stride), which every row tile then passes over while they sit in L1.
///
/// # Safety
/// AVX-512F is present. A holds the rows `rows` of `k` values at stride `lda`; `out` the same rows
/// of the column tiles' columns at stride `ldc`, written by no one else meanwhile; the pointer
/// `b_block` returns addresses `kc` rows of `ncols` values at its stride.
// The micro-kernel's operands and strides, the tile ranges, and the closure that supplies B.
#[allow(clippy::too_many_arguments)]
unsafe fn sweep(
    a: *const f32,
    lda: usize,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    k: usize,
    n: usize,
    out: Out,
    ldc: usize,
    accumulate: bool,
    mut b_block: impl FnMut(usize, usize, usize, usize) -> (*const f32, usize),
) {
    for k0 in (0..k).step_by(KC) {
        let kc = KC.min(k - k0);
        for p in cols.clone() {
            let ncols = NR.min(n - p * NR);
            let (b, ldb) = b_block(p, k0, kc, ncols);
            for (i0, r) in row_tiles(rows.clone()) {
                tile_rows(
                    r,
                    a.add(i0 * lda + k0),
                    lda,
                    b,
                    ldb,
                    kc,
                    out.at(i0 * ldc + p * NR),
                    ldc,
                    ncols,
                    accumulate || k0 > 0,
                )
            }
        }
    }
}

/// `y[m, n] (+)= x[m, k] · Wᵀ` with W as panels.
pub fn matmul_nt(y: &mut [f32], x: &[f32], w: &Panels, m: usize, accumulate: bool) {
    let (n, k) = (w.n, w.k);
    assert!(available(), "tiles: no AVX-512F");
    assert!(
        x.len() >= m * k && y.len() >= m * n,
        "tiles: operand too short"
    );
    if m == 0 || n == 0 {
        return;
    }
    let out = Out(y.as_mut_ptr());
    grid(m, k, n.div_ceil(NR), |rows, cols| {
        // SAFETY: AVX-512F checked above; x holds m rows of k values and y m rows of n; grid
        // gives this task its own rows × column tiles; a panel block is kc rows of 32 inside the
        // panel (KC·128 bytes, which stays in L1 across the row tiles).
        unsafe {
            sweep(
                x.as_ptr(),
                k,
                rows,
                cols,
                k,
                n,
                out,
                n,
                accumulate,
                |p, k0, _, _| (w.data[(p * k + k0) * NR..].as_ptr(), NR),
            )
        }
    });
}

/// `c[m, n] (+)= a[m, k] · b[k, n]`, all row-major (here: dx = dy · W).
pub fn matmul_nn(
    c: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    assert!(available(), "tiles: no AVX-512F");
    assert!(
        a.len() >= m * k && b.len() >= k * n && c.len() >= m * n,
        "tiles: operand too short"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return;
    }
    let out = Out(c.as_mut_ptr());
    grid(m, k, n.div_ceil(NR), |rows, cols| {
        // The strip of b a column tile reads in one reduction block, made contiguous once for
        // all the row tiles: b's rows are n apart, which the hardware prefetchers do not follow,
        // and a 32-column strip of a tall b (the LM head's 49152 rows) would leave L2 between
        // one row tile and the next.
        let mut strip = vec![0f32; KC.min(k) * NR];
        // SAFETY: AVX-512F checked above; a holds m rows of k values and c m rows of n; grid
        // gives this task its own rows × column tiles; the strip holds kc rows of 32.
        unsafe {
            sweep(
                a.as_ptr(),
                k,
                rows,
                cols,
                k,
                n,
                out,
                n,
                accumulate,
                |p, k0, kc, ncols| {
                    for (kk, dst) in strip.chunks_exact_mut(NR).take(kc).enumerate() {
                        dst[..ncols].copy_from_slice(&b[(k0 + kk) * n + p * NR..][..ncols]);
                    }
                    (strip.as_ptr(), NR)
                },
            )
        }
    });
}

/// `c (+)= a · b` for `[m, k]`·`[k, n]` with row strides `lda`, `ldb`, `ldc`, on the calling
/// thread: for small products inside an already parallel loop (attention's per-head blocks).
///
/// # Panics
/// When a strided operand is too short for its shape, or without AVX-512F.
// The BLAS gemm signature with explicit row strides (attention multiplies sub-blocks in place).
#[allow(clippy::too_many_arguments)]
pub fn gemm_serial(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    assert!(available(), "tiles: no AVX-512F");
    if m == 0 || n == 0 {
        return;
    }
    let span = |rows: usize, cols: usize, ld: usize| (rows - 1) * ld + cols;
    assert!(
        (k == 0 || (a.len() >= span(m, k, lda) && b.len() >= span(k, n, ldb)))
            && c.len() >= span(m, n, ldc)
            && lda >= k
            && ldb >= n
            && ldc >= n,
        "tiles: strided operand too short"
    );
    if k == 0 {
        if !accumulate {
            c.chunks_mut(ldc).take(m).for_each(|r| r[..n].fill(0.0));
        }
        return;
    }
    // SAFETY: AVX-512F checked above; the asserts bound every row of a, b and c the tiles
    // address; `c` is a unique borrow, so nothing else writes it.
    unsafe {
        sweep(
            a.as_ptr(),
            lda,
            0..m,
            0..n.div_ceil(NR),
            k,
            n,
            Out(c.as_mut_ptr()),
            ldc,
            accumulate,
            |p, k0, _, _| (b.as_ptr().add(k0 * ldb + p * NR), ldb),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn reference(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut c = vec![0f64; m * n];
        for i in 0..m {
            for kk in 0..k {
                for j in 0..n {
                    c[i * n + j] += a[i * k + kk] as f64 * b[kk * n + j] as f64;
                }
            }
        }
        c
    }

    /// Odd shapes: row counts around the tile height, column counts around the panel width
    /// (masked edges), a reduction of one, accumulation into a non-zero C.
    #[test]
    fn tiled_matmuls_match_f64() {
        if !available() {
            eprintln!("no AVX-512F: the tiled kernels are not used on this processor");
            return;
        }
        let mut rng = Rng::new(5);
        for &(m, k, n) in &[
            (1, 1, 1),
            (5, 7, 3),
            (12, 33, 32),
            (13, 64, 47),
            (25, 130, 96),
            (37, 576, 65),
            (200, 96, 200),
        ] {
            let a: Vec<f32> = (0..m * k).map(|_| rng.uniform(-1.0, 1.0)).collect();
            let w: Vec<f32> = (0..n * k).map(|_| rng.uniform(-1.0, 1.0)).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rng.uniform(-1.0, 1.0)).collect();
            let c0: Vec<f32> = (0..m * n).map(|_| rng.uniform(-1.0, 1.0)).collect();
            // x·Wᵀ through panels equals x·B with B = Wᵀ.
            let wt: Vec<f32> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
            for acc in [false, true] {
                let mut y = c0.clone();
                matmul_nt(&mut y, &a, &Panels::pack(&w, n, k), m, acc);
                let mut z = c0.clone();
                matmul_nn(&mut z, &a, &b, m, k, n, acc);
                for (name, got, want) in [
                    ("nt", &y, reference(&a, &wt, m, k, n)),
                    ("nn", &z, reference(&a, &b, m, k, n)),
                ] {
                    for i in 0..m * n {
                        let want = want[i] + if acc { c0[i] as f64 } else { 0.0 };
                        let tol = 1e-5 * (k as f64).sqrt().max(1.0);
                        assert!(
                            (got[i] as f64 - want).abs() <= tol,
                            "{name} {m}x{k}x{n} acc={acc} [{i}]: {} vs {want}",
                            got[i]
                        );
                    }
                }
            }
        }
    }
}
