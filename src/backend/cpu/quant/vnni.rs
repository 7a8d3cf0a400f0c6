//! AVX-512 VNNI kernels for the decode matmul over ggml Q4_0/Q4_1/Q8_0 weights, as those formats
//! intend them to be read: the activations quantised to 8 bits per block of 32 ([`Q8Rows`]), each
//! block's dot an integer sum of u8 × i8 products (`vpdpbusd`, 64 products an instruction), scaled
//! once per block. Against the f32 kernels this does a fifth of the instructions per weight, which
//! is what kept decoding short of the memory bandwidth with two threads.
//!
//! A weight block is `d·(q − o) + m` with u8 codes `q` ([`super::DotFmt`]: o = 8 for Q4_0, 128
//! for Q8_0, whose signed codes are stored `q + 128`; Q4_1 has a min `m`). With activations
//! `x ≈ dₓ·qₓ`, its dot is `d·dₓ·(Σ q·qₓ − o·Σ qₓ) + m·Σ x`: one exact integer sum per block
//! (started at `−o·Σ qₓ`, [`Q8Rows::init`], so the offset never meets a rounding) scaled once,
//! and for the min the block sum of x as quantised (`sq`).

use super::q8act::{scales, Q8Rows, GROUP};
use super::DotFmt;
use std::arch::x86_64::*;

#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn quantize_avx512(
    x: &[f32],
    m: usize,
    cols: usize,
    offset: i32,
    a: &mut Q8Rows,
) {
    let qs = a.q_stride();
    let sign = _mm512_set1_epi32(0x7FFF_FFFF);
    for i in 0..m {
        for b in 0..a.nb {
            let p = x.as_ptr().add(i * cols + b * 32);
            let (v0, v1) = (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)));
            let abs =
                |v: __m512| _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), sign));
            let amax = _mm512_reduce_max_ps(_mm512_max_ps(abs(v0), abs(v1)));
            let (d, id) = scales(amax);
            let idv = _mm512_set1_ps(id);
            // Round to nearest even, as the portable `round_ties_even` (MXCSR's default mode).
            let q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, idv));
            let q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, idv));
            let out = a.q.as_mut_ptr().add(i * qs + b * 32);
            _mm_storeu_si128(out as *mut __m128i, _mm512_cvtepi32_epi8(q0));
            _mm_storeu_si128(out.add(16) as *mut __m128i, _mm512_cvtepi32_epi8(q1));
            let isum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
            a.put_block(i, b, d, isum, offset);
        }
        a.group_row(i);
    }
}

/// `out[(r − r0)·M + i] = Σ_c W[r, c]·x[i, c]` for weight rows `r0..r1` and the `M` quantised
/// activation rows `a`, one weight row at a time: codes and scales each follow row after row,
/// so the product reads two sequential streams (taking four rows at a time, four interleaved
/// streams, halved the throughput of a 49152 × 576 Q8_0 matrix: the prefetcher lost them).
/// `NIB`: the codes are nibbles, two blocks a 32-byte pair (byte j holds code j of the even
/// block low, of the odd block high), else bytes, two blocks a 64-byte pair. `MIN`: Q4_1's min
/// term (`mins`, with `a.sq`); `OFF`: the codes are offset (the integer sums start at `a.init`).
///
/// `data` is [`super::Quant::Q8Dot`]'s: every row's codes (`a.nb` blocks paired as above, an odd
/// last block paired with zeros), then every row's f16 block scales and, when `MIN`, mins.
///
/// # Safety
/// The processor has AVX-512 F/BW/VL/VNNI; `data` holds whole rows, at least `r1`; `a` holds `M`
/// rows; `out.len() >= (r1 − r0)·M`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn rows<const NIB: bool, const MIN: bool, const OFF: bool, const M: usize>(
    data: &[u8],
    r0: usize,
    r1: usize,
    a: &Q8Rows,
    out: &mut [f32],
) {
    let f = fmt::<NIB, MIN>();
    debug_assert!(data.len().is_multiple_of(f.row_bytes(a.nb)));
    debug_assert!(data.len() >= r1 * f.row_bytes(a.nb));
    debug_assert!(a.q.len() >= M * a.q_stride() && out.len() >= (r1 - r0) * M);
    let (h0, half_row) = (f.halves_at(data.len(), a.nb, 0), f.half_row(a.nb));
    for r in r0..r1 {
        let halves = data.as_ptr().add(h0 + r * half_row) as *const i16;
        row::<NIB, MIN, OFF, M>(data, r, halves, a, out.as_mut_ptr().add((r - r0) * M));
    }
}

/// The format a kernel's flags read, whose methods give the row layout.
#[inline(always)]
fn fmt<const NIB: bool, const MIN: bool>() -> DotFmt {
    match (NIB, MIN) {
        (false, _) => DotFmt::Q8_0,
        (true, false) => DotFmt::Q4_0,
        (true, true) => DotFmt::Q4_1,
    }
}

/// Weight row `r` of [`rows`], whose scales (then mins) are at `halves`, written to `out[i]`.
#[inline(always)]
unsafe fn row<const NIB: bool, const MIN: bool, const OFF: bool, const M: usize>(
    data: &[u8],
    r: usize,
    halves: *const i16,
    a: &Q8Rows,
    out: *mut f32,
) {
    let nb = a.nb;
    let f = fmt::<NIB, MIN>();
    let code_row = f.code_row(nb);
    let (qs, ss) = (a.q_stride(), a.s_stride());
    let nib = _mm256_set1_epi8(0x0F);
    // Lanes 0..8 take the scale of a pair's first block, 8..16 of its second.
    let first_idx = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    let two = _mm512_set1_epi32(2);
    // One accumulator per activation row; Q4_1's min term joins it, as every lane is summed in
    // the end anyway.
    let mut acc = [_mm512_setzero_ps(); M];
    // Whole groups: lane l of every vector is block 16g + l, so the integer sums land one block
    // a lane and are scaled by the blocks' scales as loaded. Two integer accumulators per row
    // halve the dependency chain of the dot instructions.
    let gs = a.g_stride();
    let group_bytes = GROUP * if NIB { 16 } else { 32 };
    let ng = nb / GROUP;
    let nib512 = _mm512_set1_epi8(0x0F);
    for g in 0..ng {
        let b0 = g * GROUP;
        let cp = data.as_ptr().add(r * code_row + g * group_bytes);
        // The offset's share, `−o·Σ qₓ` per block, starts the first sum.
        let mut t0: [__m512i; M] = std::array::from_fn(|i| {
            if OFF {
                _mm512_loadu_si512(a.init.as_ptr().add(i * ss + b0) as *const _)
            } else {
                _mm512_setzero_si512()
            }
        });
        let mut t1 = [_mm512_setzero_si512(); M];
        let xg = |i: usize, v: usize| {
            _mm512_loadu_si512(a.qg.as_ptr().add(i * gs + g * GROUP * 32 + v * 64) as *const _)
        };
        if NIB {
            for u in 0..4 {
                let v = _mm512_loadu_si512(cp.add(u * 64) as *const _);
                let lo = _mm512_and_si512(v, nib512);
                let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), nib512);
                for i in 0..M {
                    t0[i] = _mm512_dpbusd_epi32(t0[i], lo, xg(i, u));
                    t1[i] = _mm512_dpbusd_epi32(t1[i], hi, xg(i, u + 4));
                }
            }
        } else {
            for u in 0..4 {
                let w0 = _mm512_loadu_si512(cp.add(2 * u * 64) as *const _);
                let w1 = _mm512_loadu_si512(cp.add((2 * u + 1) * 64) as *const _);
                for i in 0..M {
                    t0[i] = _mm512_dpbusd_epi32(t0[i], w0, xg(i, 2 * u));
                    t1[i] = _mm512_dpbusd_epi32(t1[i], w1, xg(i, 2 * u + 1));
                }
            }
        }
        let half =
            |k: usize| _mm512_cvtph_ps(_mm256_loadu_si256(halves.add(k * nb + b0) as *const _));
        let dw = half(0);
        for i in 0..M {
            let s = i * ss + b0;
            let ds = _mm512_mul_ps(dw, _mm512_loadu_ps(a.d.as_ptr().add(s)));
            let t = _mm512_cvtepi32_ps(_mm512_add_epi32(t0[i], t1[i]));
            acc[i] = _mm512_fmadd_ps(t, ds, acc[i]);
            if MIN {
                let sq = _mm512_loadu_ps(a.sq.as_ptr().add(s));
                acc[i] = _mm512_fmadd_ps(half(1), sq, acc[i]);
            }
        }
    }
    // The last `nb mod 16` blocks, in pairs: one window of at most 15 blocks.
    let b0 = ng * GROUP;
    if b0 < nb {
        let nw = (nb - b0).min(16);
        let mask: __mmask16 = ((1u32 << nw) - 1) as u16;
        let half = |k: usize| {
            let p = halves.add(k * nb + b0);
            _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, p))
        };
        let dw = half(0);
        let mut ds = [_mm512_setzero_ps(); M];
        let mut inits = [_mm512_setzero_si512(); M];
        for i in 0..M {
            let s = i * ss + b0;
            ds[i] = _mm512_mul_ps(dw, _mm512_loadu_ps(a.d.as_ptr().add(s)));
            if OFF {
                inits[i] = _mm512_loadu_si512(a.init.as_ptr().add(s) as *const _);
            }
            if MIN {
                let sq = _mm512_loadu_ps(a.sq.as_ptr().add(s));
                acc[i] = _mm512_fmadd_ps(half(1), sq, acc[i]);
            }
        }
        let mut idx = first_idx;
        for p in 0..nw.div_ceil(2) {
            let pair = b0 / 2 + p;
            let cp = data.as_ptr().add(r * code_row);
            let w = if NIB {
                let v = _mm256_loadu_si256(cp.add(pair * 32) as *const __m256i);
                let lo = _mm256_and_si256(v, nib);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), nib);
                _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
            } else {
                _mm512_loadu_si512(cp.add(pair * 64) as *const _)
            };
            for i in 0..M {
                let xq = _mm512_loadu_si512(a.q.as_ptr().add(i * qs + pair * 64) as *const _);
                // The pair's two starts in lanes 0 and 8 (the lanes `idx` points at them).
                let init = _mm512_maskz_permutexvar_epi32(0x0101, idx, inits[i]);
                let t = _mm512_dpbusd_epi32(init, w, xq);
                let s = _mm512_permutexvar_ps(idx, ds[i]);
                acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), s, acc[i]);
            }
            idx = _mm512_add_epi32(idx, two);
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        *out.add(i) = _mm512_reduce_add_ps(*acc);
    }
}

/// Whether this processor runs the kernels above.
pub(crate) fn available() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
    })
}
