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
