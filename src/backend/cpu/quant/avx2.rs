//! AVX2/FMA/F16C kernels for the compact-weight decode matmul, reading the checkpoint's blocks directly.
//!
//! A block of 32 weights is `q·d + m` (integer codes q, per-block scale d and, for Q4_1, min m),
//! so its dot with x factors as `d·Σ q·x + m·Σ x`: the codes become floats in registers (exact),
//! the scale is applied once per block instead of once per weight, and `Σ x` per block is
//! computed once per call. The products are then rounded differently from the f32 copy's
//! (`round(q·d) + m` per weight), which moves results by float rounding only; a single weight
//! read back through a one-hot x comes out bit for bit as the f32 copy holds it. The compiler did
//! not vectorise the scalar widening loop (it stayed one `vcvtsi2ss`/`vmulss`/`vaddss` per
//! weight), and a widened 8-bit copy doubled the bytes read; here Q4 codes stay 4 bits in memory,
//! re-laid at load (`Quant::for_this_cpu`) so that unpacking them needs no byte shuffles.

use std::arch::x86_64::*;

/// One weight format: how many bytes hold a block of 32 values, and how to read one.
pub(super) trait Block {
    const BYTES: usize;
    /// Whether the block has a scale (`decode`'s second value) and a min (its third).
    const SCALED: bool;
    const HAS_MIN: bool;
    /// The 32 codes as f32 (exact), the broadcast scale and the min.
    ///
    /// # Safety
    /// `p` points at `Self::BYTES` readable bytes; the processor has AVX2, FMA and F16C.
    unsafe fn decode(p: *const u8) -> ([__m256; 4], __m256, f32);
}

/// The f16 at `p`, widened (exactly) to f32 and broadcast. Reads 4 bytes, which a Q8_0 block
/// (34 bytes) always holds.
#[inline(always)]
unsafe fn f16_scale(p: *const u8) -> __m256 {
    let h = _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(p as *const i32)));
    _mm256_broadcastss_ps(h)
}

/// Sixteen signed bytes to two vectors of eight f32.
#[inline(always)]
unsafe fn i8x16_to_f32(b: __m128i) -> (__m256, __m256) {
    (
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)),
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128::<8>(b))),
    )
}

pub(super) struct Q8_0;
impl Block for Q8_0 {
    const BYTES: usize = 34;
    const SCALED: bool = true;
    const HAS_MIN: bool = false;
    #[inline(always)]
    unsafe fn decode(p: *const u8) -> ([__m256; 4], __m256, f32) {
        let d = f16_scale(p);
        let (a, b) = i8x16_to_f32(_mm_loadu_si128(p.add(2) as *const __m128i));
        let (c, e) = i8x16_to_f32(_mm_loadu_si128(p.add(18) as *const __m128i));
        ([a, b, c, e], d, 0.0)
    }
}

/// [`super::Quant::Q4Lanes`]: f32 scale and min, codes in lane order, so a block is one
/// broadcast load and, per 8 values, a variable shift, a mask and a conversion: no byte
/// shuffles, which all compete for one execution port (they bounded a ggml-layout kernel at
/// 10 G weights/s against 16 G here).
pub(super) struct Q4Lanes<const OFFSET8: bool>;
impl<const OFFSET8: bool> Block for Q4Lanes<OFFSET8> {
    const BYTES: usize = 24;
    const SCALED: bool = true;
    const HAS_MIN: bool = !OFFSET8;
    #[inline(always)]
    unsafe fn decode(p: *const u8) -> ([__m256; 4], __m256, f32) {
        let d = _mm256_broadcast_ss(&*(p as *const f32));
        let m = std::ptr::read_unaligned(p.add(4) as *const f32);
        let c = _mm256_broadcastsi128_si256(_mm_loadu_si128(p.add(8) as *const __m128i));
        let mask = _mm256_set1_epi32(0xF);
        let f = |j: i32| {
            let sh = _mm256_setr_epi32(
                8 * j,
                8 * j,
                8 * j,
                8 * j,
                8 * j + 4,
                8 * j + 4,
                8 * j + 4,
                8 * j + 4,
            );
            let q = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(c, sh), mask));
            if OFFSET8 {
                // q − 8 is exact in f32, so the block is d·Σ (q − 8)·x as Q4_0 defines it.
                _mm256_sub_ps(q, _mm256_set1_ps(8.0))
            } else {
                q
            }
        };
        ([f(0), f(1), f(2), f(3)], d, m)
    }
}

pub(super) struct Bf16;
impl Block for Bf16 {
    const BYTES: usize = 64;
    const SCALED: bool = false;
    const HAS_MIN: bool = false;
    #[inline(always)]
    unsafe fn decode(p: *const u8) -> ([__m256; 4], __m256, f32) {
        let f = |o: usize| {
            let h = _mm_loadu_si128(p.add(o) as *const __m128i);
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
        };
        ([f(0), f(16), f(32), f(48)], _mm256_setzero_ps(), 0.0)
    }
}

pub(super) struct F16;
impl Block for F16 {
    const BYTES: usize = 64;
    const SCALED: bool = false;
    const HAS_MIN: bool = false;
    #[inline(always)]
    unsafe fn decode(p: *const u8) -> ([__m256; 4], __m256, f32) {
        let f = |o: usize| _mm256_cvtph_ps(_mm_loadu_si128(p.add(o) as *const __m128i));
        ([f(0), f(16), f(32), f(48)], _mm256_setzero_ps(), 0.0)
    }
}

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// `out[(r − r0)·M + i] = Σ_c W[r, c] · x[i, c]` for rows `r0..r1` of the compact `w` and the
/// `M` rows of `x` (`[M, cols]`, cols a multiple of 32); `xsum[i·nb + b]` is the sum of block `b`
/// of x row `i` (needed only by formats with a min). Each block is decoded once and used for
/// every input row.
///
/// # Safety
/// The processor has AVX2, FMA and F16C; `w` holds at least `r1` rows of `cols / 32` blocks,
/// `x.len() >= M·cols`, `out.len() >= (r1 − r0)·M`, and `xsum.len() >= M·cols/32` when
/// `F::HAS_MIN`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn rows<F: Block, const M: usize>(
    w: &[u8],
    r0: usize,
    r1: usize,
    cols: usize,
    x: &[f32],
    xsum: &[f32],
    out: &mut [f32],
) {
    let nb = cols / 32;
    let row_bytes = nb * F::BYTES;
    debug_assert!(w.len() >= r1 * row_bytes && x.len() >= M * cols);
    debug_assert!(out.len() >= (r1 - r0) * M && (!F::HAS_MIN || xsum.len() >= M * nb));
    let xp = x.as_ptr();
    for r in r0..r1 {
        let wp = w.as_ptr().add(r * row_bytes);
        let mut acc = [_mm256_setzero_ps(); M];
        let mut msum = [0f32; M];
        for b in 0..nb {
            let (q, d, m) = F::decode(wp.add(b * F::BYTES));
            for i in 0..M {
                let xb = xp.add(i * cols + b * 32);
                // Two short chains per block; blocks overlap in the out-of-order window.
                let s0 = _mm256_fmadd_ps(
                    q[1],
                    _mm256_loadu_ps(xb.add(8)),
                    _mm256_mul_ps(q[0], _mm256_loadu_ps(xb)),
                );
                let s1 = _mm256_fmadd_ps(
                    q[3],
                    _mm256_loadu_ps(xb.add(24)),
                    _mm256_mul_ps(q[2], _mm256_loadu_ps(xb.add(16))),
                );
                let s = _mm256_add_ps(s0, s1);
                acc[i] = if F::SCALED {
                    _mm256_fmadd_ps(d, s, acc[i])
                } else {
                    _mm256_add_ps(acc[i], s)
                };
                if F::HAS_MIN {
                    msum[i] = m.mul_add(*xsum.get_unchecked(i * nb + b), msum[i]);
                }
            }
        }
        for i in 0..M {
            out[(r - r0) * M + i] = hsum(acc[i]) + msum[i];
        }
    }
}

/// Whether this processor runs the kernels above.
pub(super) fn available() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    })
}
