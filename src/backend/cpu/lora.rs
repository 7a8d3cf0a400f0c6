//! LoRA's add for one row, `y += B·(s·A·x)`: a decoding step, where each of the seven linears of
//! every layer pays it once per token, and every row of a prompt or a training batch (rows split
//! across threads by the caller).
//!
//! Reading A and B is the real cost, and B's shape makes the obvious loop slow: B is `[n, r]`
//! with a small rank, so a dot product per output spends more on its horizontal sum than on its
//! r multiplies. The AVX-512 kernel instead reduces 16 outputs at once through a transposing
//! tree of shuffles, and stores them as one vector.

use rayon::prelude::*;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Ranks up to this keep `s·A·x` on the stack.
const STACK_RANK: usize = 256;

/// `y[n] += B[n, r] · (s · A[r, k] · x[k])`, with `r = a.len() / x.len()`, on the calling
/// thread: splitting the products across two threads measured slower in the decode profile
/// (the hand-offs cost more than the microsecond each product takes).
pub fn add_row(y: &mut [f32], x: &[f32], a: &[f32], b: &[f32], s: f32) {
    let (n, k) = (y.len(), x.len());
    let r = a.len() / k;
    assert!(
        a.len() == r * k && b.len() == n * r,
        "lora row: A or B is not [r, k] / [n, r]"
    );
    let mut stack = [0f32; STACK_RANK];
    let mut heap = Vec::new();
    let xa: &mut [f32] = if r <= STACK_RANK {
        &mut stack[..r]
    } else {
        heap.resize(r, 0.0);
        &mut heap
    };
    project(xa, x, a, s);
    expand(y, xa, b);
}

/// `xa[c] = s · A[c] · x` for the rows of `a` (as many as `xa` has).
fn project(xa: &mut [f32], x: &[f32], a: &[f32], s: f32) {
    #[cfg(target_arch = "x86_64")]
    if super::tiles::available() {
        // SAFETY: AVX-512F was detected; `a` holds `xa.len()` rows of `x.len()` (checked by
        // `add_row`, which cut both).
        unsafe { avx512::project(xa, x, a, s) };
        return;
    }
    let dot = super::quant::dot;
    for (o, ac) in xa.iter_mut().zip(a.chunks_exact(x.len())) {
        *o = dot(x, ac) * s;
    }
}

/// `y += B · xa` for the rows of `b` (as many as `y` has).
fn expand(y: &mut [f32], xa: &[f32], b: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::tiles::available() {
        // SAFETY: AVX-512F was detected; `b` holds `y.len()` rows of `xa.len()`.
        unsafe { avx512::expand(y, xa, b) };
        return;
    }
    let dot = super::quant::dot;
    for (yi, bi) in y.iter_mut().zip(b.chunks_exact(xa.len())) {
        *yi += dot(xa, bi);
    }
}

/// Least rows of a backward task: enough that the rank-`rows` updates of dA and dB reuse each
/// accumulator many times, few enough that a batch still splits across every thread.
const BWD_ROWS: usize = 16;
/// Most backward tasks, each holding its own dA and dB until they are summed.
const BWD_TASKS: usize = 32;

/// LoRA's backward over the rows of `x` (`[rows, k]`) and `dy` (`[rows, n]`), with `A` `[r, k]`,
/// `B` `[n, r]` and scale `s`: `dx += s·(dy·B)·A`, `dA += s·(dy·B)ᵀ·x`, `dB += s·dyᵀ·(x·Aᵀ)`.
/// Blocks of rows run on rayon, each summing its share of dA and dB apart; the shares are then
/// added in block order, and the blocks depend on the row count alone, so the sums are the same
/// whatever the threads did (training is reproducible). Two skinny GEMMs per product, with
/// operands transposed every call, spent 10% of a Bitune train step here.
#[allow(clippy::too_many_arguments)]
pub fn bwd_rows(
    dx: &mut [f32],
    ga: &mut [f32],
    gb: &mut [f32],
    dy: &[f32],
    x: &[f32],
    a: &[f32],
    b: &[f32],
    s: f32,
    k: usize,
    n: usize,
) {
    let r = a.len() / k;
    let rows = x.len() / k;
    assert!(
        a.len() == r * k
            && b.len() == n * r
            && ga.len() == r * k
            && gb.len() == n * r
            && x.len() == rows * k
            && dx.len() == rows * k
            && dy.len() == rows * n,
        "lora backward: operand shapes disagree"
    );
    // Bᵀ `[r, n]`, so each u = s·dy·B is r dot products along rows.
    let bt = super::transpose(b, n, r);
    let block = rows.div_ceil(BWD_TASKS).max(BWD_ROWS);
    let shares: Vec<(Vec<f32>, Vec<f32>)> = dx
        .par_chunks_mut(block * k)
        .zip(x.par_chunks(block * k))
        .zip(dy.par_chunks(block * n))
        .map(|((dxb, xb), dyb)| {
            let (mut pa, mut pbt) = (vec![0f32; r * k], vec![0f32; r * n]);
            let m = xb.len() / k;
            let (mut u, mut xa) = (vec![0f32; m * r], vec![0f32; m * r]);
            for i in 0..m {
                project(&mut u[i * r..(i + 1) * r], &dyb[i * n..(i + 1) * n], &bt, s);
                project(&mut xa[i * r..(i + 1) * r], &xb[i * k..(i + 1) * k], a, s);
            }
            super::simd::vectorize(
                #[inline(always)]
                || {
                    // dx_i += Σ_c u[i, c]·A_c
                    combine(dxb, k, m, r, |i, c| u[i * r + c], a);
                    // dA_c += Σ_i u[i, c]·x_i
                    combine(&mut pa, k, r, m, |c, i| u[i * r + c], xb);
                    // dBᵀ_c += Σ_i xa[i, c]·dy_i
                    combine(&mut pbt, n, r, m, |c, i| xa[i * r + c], dyb);
                },
            );
            (pa, pbt)
        })
        .collect();
    let mut shares = shares.into_iter();
    if let Some((mut pa, mut pbt)) = shares.next() {
        for (a1, b1) in shares {
            pa.iter_mut().zip(&a1).for_each(|(p, q)| *p += q);
            pbt.iter_mut().zip(&b1).for_each(|(p, q)| *p += q);
        }
        ga.iter_mut().zip(&pa).for_each(|(g, p)| *g += p);
        for (j, row) in gb.chunks_exact_mut(r).enumerate() {
            for (c, g) in row.iter_mut().enumerate() {
                *g += pbt[c * n + j];
            }
        }
    }
}

/// `out[o, l] += Σ_t coef(o, t)·v[t, l]` for `outs` rows of `len` (`v` has `terms` rows): 64
/// columns at a time in a fixed-size accumulator the compiler keeps in registers, so each output
/// is loaded and stored once however many terms it sums.
#[inline(always)]
fn combine(
    out: &mut [f32],
    len: usize,
    outs: usize,
    terms: usize,
    coef: impl Fn(usize, usize) -> f32,
    v: &[f32],
) {
    const W: usize = 64;
    for o in 0..outs {
        let orow = &mut out[o * len..(o + 1) * len];
        let mut l0 = 0;
        while l0 + W <= len {
            let mut acc: [f32; W] = orow[l0..l0 + W].try_into().expect("W columns");
            for t in 0..terms {
                let (w, vr) = (coef(o, t), &v[t * len + l0..t * len + l0 + W]);
                for (a, &x) in acc.iter_mut().zip(vr) {
                    *a += w * x;
                }
            }
            orow[l0..l0 + W].copy_from_slice(&acc);
            l0 += W;
        }
        for t in 0..terms {
            let w = coef(o, t);
            for (a, &x) in orow[l0..].iter_mut().zip(&v[t * len + l0..(t + 1) * len]) {
                *a += w * x;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::super::simd::tree::{finish, finish_halves, halves};
    use super::*;

    /// Lanes `[0, len)` of a vector, `len` capped at 16.
    #[inline(always)]
    fn first(len: usize) -> __mmask16 {
        if len >= 16 {
            0xffff
        } else {
            ((1u32 << len) - 1) as __mmask16
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn dot(x: &[f32], w: &[f32]) -> f32 {
        let (len, xp, wp) = (x.len(), x.as_ptr(), w.as_ptr());
        let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let mut i = 0;
        while i + 32 <= len {
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(xp.add(i)), _mm512_loadu_ps(wp.add(i)), a0);
            let (x1, w1) = (
                _mm512_loadu_ps(xp.add(i + 16)),
                _mm512_loadu_ps(wp.add(i + 16)),
            );
            a1 = _mm512_fmadd_ps(x1, w1, a1);
            i += 32;
        }
        while i < len {
            let m = first(len - i);
            let (xv, wv) = (
                _mm512_maskz_loadu_ps(m, xp.add(i)),
                _mm512_maskz_loadu_ps(m, wp.add(i)),
            );
            a0 = _mm512_fmadd_ps(xv, wv, a0);
            i += 16;
        }
        _mm512_reduce_add_ps(_mm512_add_ps(a0, a1))
    }

    /// 16 outputs `[o, o + 16)` of `B·xa`: rank 4 and 8 load two or four outputs' rows as one
    /// vector and enter the tree at their level; other ranks reduce each row to one vector first.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn block(b: &[f32], xa: &[f32], o: usize) -> __m512 {
        let r = xa.len();
        let bp = b.as_ptr().add(o * r);
        match r {
            4 => {
                let x4 = _mm512_castps128_ps512(_mm_loadu_ps(xa.as_ptr()));
                let x4 = _mm512_shuffle_f32x4::<0>(x4, x4);
                let u = std::array::from_fn(|i| _mm512_mul_ps(_mm512_loadu_ps(bp.add(16 * i)), x4));
                finish(u)
            }
            8 => {
                let x8 = _mm512_castps256_ps512(_mm256_loadu_ps(xa.as_ptr()));
                let x8 = _mm512_shuffle_f32x4::<0b01_00_01_00>(x8, x8);
                let t = std::array::from_fn(|i| _mm512_mul_ps(_mm512_loadu_ps(bp.add(16 * i)), x8));
                finish_halves(t)
            }
            _ => {
                let row = |l: usize| {
                    let (rp, mut acc, mut c) = (bp.add(l * r), _mm512_setzero_ps(), 0);
                    while c < r {
                        let m = first(r - c);
                        let (bv, xv) = (
                            _mm512_maskz_loadu_ps(m, rp.add(c)),
                            _mm512_maskz_loadu_ps(m, xa.as_ptr().add(c)),
                        );
                        acc = _mm512_fmadd_ps(bv, xv, acc);
                        c += 16;
                    }
                    acc
                };
                finish_halves(std::array::from_fn(|i| halves(row(2 * i), row(2 * i + 1))))
            }
        }
    }

    /// [`super::project`].
    #[target_feature(enable = "avx512f")]
    pub unsafe fn project(xa: &mut [f32], x: &[f32], a: &[f32], s: f32) {
        let k = x.len();
        for (c, o) in xa.iter_mut().enumerate() {
            *o = dot(x, &a[c * k..(c + 1) * k]) * s;
        }
    }

    /// [`super::expand`].
    #[target_feature(enable = "avx512f")]
    pub unsafe fn expand(y: &mut [f32], xa: &[f32], b: &[f32]) {
        let (n, r) = (y.len(), xa.len());
        let full = n / 16 * 16;
        for o in (0..full).step_by(16) {
            let yp = y.as_mut_ptr().add(o);
            _mm512_storeu_ps(yp, _mm512_add_ps(_mm512_loadu_ps(yp), block(b, xa, o)));
        }
        for (i, yi) in y.iter_mut().enumerate().skip(full) {
            *yi += dot(xa, &b[i * r..(i + 1) * r]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The backward against its definition in f64, for blocks of rows that leave a partial one
    /// and columns that leave a partial 64-wide chunk.
    #[test]
    fn backward_matches_the_definition() {
        let mut rng = Rng::new(6);
        for &(rows, r, n, k) in &[
            (1, 8, 70, 40),
            (37, 8, 130, 576),
            (50, 3, 64, 64),
            (16, 5, 5, 7),
        ] {
            let rv = |len: usize, rng: &mut Rng| -> Vec<f32> {
                (0..len).map(|_| rng.uniform(-1.0, 1.0)).collect()
            };
            let (x, dy, a, b) = (
                rv(rows * k, &mut rng),
                rv(rows * n, &mut rng),
                rv(r * k, &mut rng),
                rv(n * r, &mut rng),
            );
            let (dx0, ga0, gb0) = (
                rv(rows * k, &mut rng),
                rv(r * k, &mut rng),
                rv(n * r, &mut rng),
            );
            let s = 0.6f64;
            let (mut dx, mut ga, mut gb) = (dx0.clone(), ga0.clone(), gb0.clone());
            bwd_rows(&mut dx, &mut ga, &mut gb, &dy, &x, &a, &b, s as f32, k, n);
            // u = s·dy·B, xa = s·x·Aᵀ, in f64.
            let u = |i: usize, c: usize| {
                s * (0..n)
                    .map(|j| dy[i * n + j] as f64 * b[j * r + c] as f64)
                    .sum::<f64>()
            };
            let xa = |i: usize, c: usize| {
                s * (0..k)
                    .map(|j| x[i * k + j] as f64 * a[c * k + j] as f64)
                    .sum::<f64>()
            };
            let check = |name: &str, got: &[f32], want: Vec<f64>| {
                for (idx, (&g, w)) in got.iter().zip(&want).enumerate() {
                    let tol = 1e-4 * (1.0 + w.abs()) * ((rows + n + k) as f64).sqrt();
                    assert!(
                        (g as f64 - w).abs() <= tol,
                        "{name} {rows}x{r}x{n}x{k} [{idx}]: {g} vs {w}"
                    );
                }
            };
            let want_dx = (0..rows * k)
                .map(|e| {
                    let (i, j) = (e / k, e % k);
                    dx0[e] as f64 + (0..r).map(|c| u(i, c) * a[c * k + j] as f64).sum::<f64>()
                })
                .collect();
            check("dx", &dx, want_dx);
            let want_ga = (0..r * k)
                .map(|e| {
                    let (c, j) = (e / k, e % k);
                    ga0[e] as f64
                        + (0..rows)
                            .map(|i| u(i, c) * x[i * k + j] as f64)
                            .sum::<f64>()
                })
                .collect();
            check("dA", &ga, want_ga);
            let want_gb = (0..n * r)
                .map(|e| {
                    let (j, c) = (e / r, e % r);
                    gb0[e] as f64
                        + (0..rows)
                            .map(|i| dy[i * n + j] as f64 * xa(i, c))
                            .sum::<f64>()
                })
                .collect();
            check("dB", &gb, want_gb);
        }
    }

    /// Every rank path (4, 8, the general one with and without a partial vector, the stack's
    /// limit and past it) against the sum in f64, with output counts that leave a tail.
    #[test]
    fn row_matches_the_definition() {
        let mut rng = Rng::new(5);
        for &(r, n, k) in &[
            (1, 37, 40),
            (4, 64, 576),
            (8, 50, 100),
            (8, 16, 7),
            (12, 33, 64),
            (16, 48, 33),
            (40, 70, 20),
            (300, 20, 17),
        ] {
            let rv = |len: usize, rng: &mut Rng| -> Vec<f32> {
                (0..len).map(|_| rng.uniform(-1.0, 1.0)).collect()
            };
            let (x, a, b, y0) = (
                rv(k, &mut rng),
                rv(r * k, &mut rng),
                rv(n * r, &mut rng),
                rv(n, &mut rng),
            );
            let s = 0.7f32;
            let xa: Vec<f64> = (0..r)
                .map(|c| {
                    (0..k)
                        .map(|j| a[c * k + j] as f64 * x[j] as f64)
                        .sum::<f64>()
                        * s as f64
                })
                .collect();
            let mut y = y0.clone();
            add_row(&mut y, &x, &a, &b, s);
            for i in 0..n {
                let want = y0[i] as f64 + (0..r).map(|c| b[i * r + c] as f64 * xa[c]).sum::<f64>();
                let tol = 1e-4 * (1.0 + want.abs()) * (r as f64).sqrt();
                assert!(
                    (y[i] as f64 - want).abs() <= tol,
                    "r {r} n {n} k {k} [{i}]: {} vs {want}",
                    y[i]
                );
            }
        }
    }
}
