//! Per-column vector ops on row-major `[rows, width]` slices, used by DoRA and IA3: scaling the
//! columns of a row range by a vector, adding a vector, and the per-column dot product that is
//! the gradient of such a scale. The CPU backend calls them on its buffers; the trait's default
//! methods call them on downloaded copies.

use super::cpu::gemm::{rm, sgemm};
use rayon::prelude::*;
use std::ops::Range;

/// Rows per rayon task: the ops are memory-bound, so small chunks only add overhead.
const CHUNK_ROWS: usize = 64;

/// `y[r, j] *= v[j]` for `r` in `rows`.
pub fn mul_cols(y: &mut [f32], rows: Range<usize>, width: usize, v: &[f32]) {
    y[rows.start * width..rows.end * width]
        .par_chunks_mut(width * CHUNK_ROWS)
        .for_each(|c| {
            c.chunks_mut(width)
                .for_each(|row| row.iter_mut().zip(v).for_each(|(a, s)| *a *= s))
        });
}

/// `y[r, j] += v[j]` for `r` in `rows`.
pub fn add_cols(y: &mut [f32], rows: Range<usize>, width: usize, v: &[f32]) {
    y[rows.start * width..rows.end * width]
        .par_chunks_mut(width * CHUNK_ROWS)
        .for_each(|c| {
            c.chunks_mut(width)
                .for_each(|row| row.iter_mut().zip(v).for_each(|(a, s)| *a += s))
        });
}

/// `out[j] += Σ_{r ∈ rows} a[r, j]·b[r, j]`, accumulated in f64 (a sum over every token).
pub fn col_dot(out: &mut [f32], a: &[f32], b: &[f32], rows: Range<usize>, width: usize) {
    let span = rows.start * width..rows.end * width;
    let sums = a[span.clone()]
        .par_chunks(width * CHUNK_ROWS)
        .zip(b[span].par_chunks(width * CHUNK_ROWS))
        .map(|(ac, bc)| {
            let mut s = vec![0f64; width];
            for (ar, br) in ac.chunks(width).zip(bc.chunks(width)) {
                for ((sj, x), y) in s.iter_mut().zip(ar).zip(br) {
                    *sj += *x as f64 * *y as f64;
                }
            }
            s
        })
        .reduce(
            || vec![0f64; width],
            |mut x, y| {
                x.iter_mut().zip(&y).for_each(|(p, q)| *p += q);
                x
            },
        );
    out[..width]
        .iter_mut()
        .zip(&sums)
        .for_each(|(o, s)| *o += *s as f32);
}

/// `‖W_j + s·(B A)_j‖₂` for every output row j: DoRA's weight norm. `w` is `[n, k]`, `a`
/// `[r, k]`, `b` `[n, r]` (`r` = 0 gives the plain row norms of `w`).
pub fn dora_row_norms(w: &[f32], a: &[f32], b: &[f32], scale: f32, k: usize, n: usize) -> Vec<f32> {
    let r = a.len().checked_div(k).unwrap_or(0);
    // W + s·B A as one GEMM into a copy of W: [n, r]·[r, k], accumulated.
    let mut full = w[..n * k].to_vec();
    let sb: Vec<f32> = b[..n * r].iter().map(|v| v * scale).collect();
    sgemm(n, k, r, rm(&sb, r), rm(a, k), &mut full, k, true);
    full.par_chunks(k.max(1))
        .map(|row| row.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt() as f32)
        .collect()
}
