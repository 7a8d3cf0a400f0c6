//! LoRA's add for one row, `y += B·(s·A·x)`: a decoding step, where each of the seven linears of
//! every layer pays it once per token, and every row of a prompt or a training batch (rows split
//! across threads by the caller).
//!
//! Reading A and B is the real cost, and B's shape makes the obvious loop slow: B is `[n, r]`
//! with a small rank, so a dot product per output spends more on its horizontal sum than on its
//! r multiplies. The AVX-512 kernel instead reduces 16 outputs at once through a transposing
//! tree of shuffles, and stores them as one vector.

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
