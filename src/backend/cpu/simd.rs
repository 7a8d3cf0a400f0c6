//! Runs a closure compiled for the processor's wider vector units when it has them.
//!
//! The crate is built for baseline x86-64 (SSE2), so that one binary runs everywhere; plain
//! loops (softmax, activations, norms) then vectorise 4 lanes wide. [`vectorize`] calls its
//! closure from a function with AVX-512 (or AVX2/FMA) enabled; the closure is inlined there and
//! its loops, with everything `#[inline]` they call, are compiled again for those units. The
//! processor is checked once.

#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, PartialEq)]
enum Level {
    Base,
    Avx2,
    Avx512,
}

#[cfg(target_arch = "x86_64")]
fn level() -> Level {
    static L: std::sync::OnceLock<Level> = std::sync::OnceLock::new();
    *L.get_or_init(|| {
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("fma")
        {
            Level::Avx512
        } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            Level::Avx2
        } else {
            Level::Base
        }
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
unsafe fn with_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// `f()`, compiled for AVX-512 or AVX2/FMA where the processor has them.
#[inline(always)]
pub fn vectorize<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        match level() {
            // SAFETY: the features each wrapper enables were detected on this processor.
            Level::Avx512 => return unsafe { with_avx512(f) },
            Level::Avx2 => return unsafe { with_avx2(f) },
            Level::Base => {}
        }
    }
    f()
}

/// Sums of many short vectors at once on AVX-512: a transposing tree turns 16 vectors into one
/// vector of their 16 horizontal sums in 15 shuffle-add steps, where 16 separate horizontal sums
/// cost four times as many. Products with a short reduction (LoRA's B at a small rank, one
/// query's scores over keys) take their outputs 16 at a time through it.
#[cfg(target_arch = "x86_64")]
pub(crate) mod tree {
    use std::arch::x86_64::*;

    // The reduction tree. Each level adds pairs of vectors after a shuffle that halves how many
    // partial sums each output has and doubles how many outputs a vector holds.

    /// a, b: one output's 16 partials each → 8 partials of a (lanes 0..8), then of b.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub fn halves(a: __m512, b: __m512) -> __m512 {
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b),
            _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b),
        )
    }

    /// a, b: two outputs of 8 partials each → four outputs of 4 partials, one per 128-bit lane.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub fn quarters(a: __m512, b: __m512) -> __m512 {
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b10_00_10_00>(a, b),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b),
        )
    }

    /// a, b: four outputs of 4 partials (one per 128-bit lane j: a's output X_j, b's Y_j) → per
    /// lane j `[X_j, X_j, Y_j, Y_j]` (2 partials each).
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub fn pairs(a: __m512, b: __m512) -> __m512 {
        _mm512_add_ps(
            _mm512_shuffle_ps::<0b01_00_01_00>(a, b),
            _mm512_shuffle_ps::<0b11_10_11_10>(a, b),
        )
    }

    /// a, b from [`pairs`] → per 128-bit lane j `[aX_j, aY_j, bX_j, bY_j]` summed.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub fn sums(a: __m512, b: __m512) -> __m512 {
        _mm512_add_ps(
            _mm512_shuffle_ps::<0b10_00_10_00>(a, b),
            _mm512_shuffle_ps::<0b11_01_11_01>(a, b),
        )
    }

    /// Four vectors as [`quarters`] leaves them (vector i holds outputs 4i..4i+4, one per
    /// 128-bit lane) → the 16 sums in output order.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub fn finish(u: [__m512; 4]) -> __m512 {
        let s = sums(pairs(u[0], u[1]), pairs(u[2], u[3]));
        // Lane 4j + m of s holds output 4m + j.
        let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        _mm512_permutexvar_ps(order, s)
    }

    /// Eight vectors as [`halves`] leaves them (vector i holds outputs 2i, 2i+1) → the 16 sums.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub fn finish_halves(t: [__m512; 8]) -> __m512 {
        finish([
            quarters(t[0], t[1]),
            quarters(t[2], t[3]),
            quarters(t[4], t[5]),
            quarters(t[6], t[7]),
        ])
    }

    /// Lane l: the sum of the lanes of `v[l]`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub fn sum16(v: [__m512; 16]) -> __m512 {
        finish_halves(std::array::from_fn(|i| halves(v[2 * i], v[2 * i + 1])))
    }
}
