//! f32 GEMM through the `gemm` crate's f32 kernels (the CPU matmul engine candle also uses), with
//! strides.

/// A strided matrix view: element (i, j) is at `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

fn span(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * rs + (cols - 1) * cs + 1
    }
}

/// `c[m,n] = (accumulate ? c : 0) + a[m,k] · b[k,n]`; c is dense row-major with row stride `ldc`.
/// Large products split over the rayon pool.
// The BLAS gemm signature (sizes, the two operands, the output with its row stride, accumulate),
// so every gemm entry point of the crate reads alike.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: Mat,
    b: Mat,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    gemm_with(m, n, k, a, b, c, ldc, accumulate, true)
}

/// [`sgemm`] on the calling thread only: for callers that are already one task of a parallel
/// loop, where a nested split would only add scheduling.
// The BLAS gemm signature (sizes, the two operands, the output with its row stride, accumulate),
// so every gemm entry point of the crate reads alike.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_serial(
    m: usize,
    n: usize,
    k: usize,
    a: Mat,
    b: Mat,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    gemm_with(m, n, k, a, b, c, ldc, accumulate, false)
}

// sgemm's arguments plus whether to split over the pool.
#[allow(clippy::too_many_arguments)]
fn gemm_with(
    m: usize,
    n: usize,
    k: usize,
    a: Mat,
    b: Mat,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        a.data.len() >= span(m, k, a.rs, a.cs),
        "gemm: lhs too short"
    );
    assert!(
        b.data.len() >= span(k, n, b.rs, b.cs),
        "gemm: rhs too short"
    );
    assert!(c.len() >= span(m, n, ldc, 1), "gemm: dst too short");
    if k == 0 {
        if !accumulate {
            c.iter_mut().take(span(m, n, ldc, 1)).for_each(|x| *x = 0.0);
        }
        return;
    }
    let work = m * n * k;
    let par = if work < 1 << 16 || !parallel {
        gemm_common::Parallelism::None
    } else {
        gemm_common::Parallelism::Rayon(rayon::current_num_threads())
    };
    // SAFETY: the asserts above check that every element the strided views address lies inside
    // its slice; `c` is borrowed mutably and cannot alias `a` or `b`.
    unsafe {
        gemm_f32::gemm::f32::get_gemm_fn()(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        );
    }
}

/// Row-major `[rows, cols]`.
pub fn rm(data: &[f32], cols: usize) -> Mat<'_> {
    Mat {
        data,
        rs: cols,
        cs: 1,
    }
}

/// The transpose of a row-major `[rows, cols]` matrix, as a `[cols, rows]` view.
pub fn tr(data: &[f32], cols: usize) -> Mat<'_> {
    Mat {
        data,
        rs: 1,
        cs: cols,
    }
}
