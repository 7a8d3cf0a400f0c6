//! A low-rank adapter in the form decoding reads it ([`LoraPack`]): 8-bit integer dots, for a
//! weight read against 8-bit activations, its add fused into that weight's matmul over the output
//! rows.
//!
//! A decoding step reads every weight once, so an adapter costs its bytes, and on two threads the
//! few kilobytes each linear adds are read at memory latency, not bandwidth. In f32, rank-8
//! adapters on the seven linears of the default model are 9.8 MB a token against 96 MB of Q4_1
//! weights, and added on one thread after each product they made decoding 11% slower than the
//! base model (`bench`, the states decoding in turn). In 8 bits they are 2.5 MB.
//!
//! Both halves are integer dot products (`vpdpbusd`), as the weights' own:
//! - `s·A·x` reads the activations the product already quantised ([`Q8Rows`]), A's codes stored
//!   `a + 128` (u8) in pairs of blocks of 32 like Q8_0's, with a scale a block; the offset comes
//!   back out through the blocks' sums, which the quantiser keeps anyway.
//! - `B·xa`: B's codes are stored `b + 128` with a scale per rank, which goes into `xa` before
//!   its r values are quantised to 8 bits; each tile of 16 outputs is then one integer dot per
//!   four ranks and one multiply. A scale per rank rather than per output row keeps B at r bytes
//!   a row where row scales made it r + 2 (a fifth more at rank 8), and a trained B's columns,
//!   unlike its rows of r values, are long enough that their largest sits a few of their typical
//!   sizes out, as the 32-value blocks of A and of the weights do.
//!
//! In cache, a rank-8 projection over 576 inputs takes 0.27 µs and the add to 192 outputs 60 ns;
//! in a decoding step both wait on memory for the pack's bytes, which is most of what the adapter
//! still costs over the base model, so each chunk asks for its B rows before it streams its
//! weight rows, and the chunk that projects asks for A before projecting. A's scales are f16
//! relative to their largest. The matmul's first chunk projects before its rows while the others
//! stream theirs, and every chunk adds its own rows' `B·xa`
//! ([`super::quant::Quant::matmul`]).
//!
//! The 8-bit adapter moves the default model's decoding logits about as much as 8-bit
//! activations already do (`tests/adapter_decode.rs`).

use super::quant::{Lines, Q8Rows};
use half::f16;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Outputs per tile of the 8-bit B; the matmul's chunks of output rows start on a multiple.
pub const BT_BLOCK: usize = 16;

/// One linear's adapter `y += s·B·A·x` (A `[r, k]`, B `[n, r]`) in 8 bits, in one buffer of four
/// sections, each starting on a cache line (the first three are what projecting reads):
/// - A: `a` `[r, np·64]` u8 codes `q + 128`, blocks of 32 paired (an odd last block paired with
///   codes 128, zero), and `ad` `[r, np·2]` f16 block scales relative to `a_max`.
/// - B: `bs` `[rq]` f32 rank scales (zero past `r`), and `bt` `[n_pad / 16, rq / 4, 16, 4]` u8
///   codes `q + 128`: byte `e` of lane `l` of quad `g` of tile `t` is `B[16t + l, 4g + e]` (rq
///   the rank rounded up to 4, codes 128 past `r` and `n`).
///
/// The buffers are cut one after another from huge pages ([`Lines`]), and decoding builds the
/// packs in the order it reads them: one linear's pack ends where the next one's starts.
pub struct LoraPack {
    r: usize,
    rq: usize,
    k: usize,
    n: usize,
    /// Pairs of blocks of 32 in a row of A.
    np: usize,
    scale: f32,
    a_max: f32,
    /// B's largest rank scale (zero: B is all zero).
    b_max: f32,
    buf: Lines,
    /// Where `ad`, `bs` and `bt` start in `buf` (`a` at 0).
    at: [usize; 3],
}

/// `xa = s·A·x` times B's rank scales, quantised for [`LoraPack::expand`]: codes `xq` (rank
/// padded to a multiple of 4 with zeros) four to a word, the integer sums' start `−128·Σ xq`
/// (B's codes are offset), and the factor the integer sums take back to f32 (`d_xa`).
#[derive(Clone, Debug, PartialEq)]
pub struct Projected {
    words: Vec<i32>,
    init: i32,
    mult: f32,
}

/// `v` in 8 bits per block of `block` values: codes `round(v/d)` and scales `d = amax/127`.
fn int8_blocks(v: &[f32], block: usize) -> (Vec<i8>, Vec<f32>) {
    let mut codes = Vec::with_capacity(v.len());
    let mut scales = Vec::with_capacity(v.len().div_ceil(block));
    for blk in v.chunks(block) {
        let d = blk.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0;
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        scales.push(d);
        codes.extend(
            blk.iter()
                .map(|x| (x * inv).round().clamp(-127.0, 127.0) as i8),
        );
    }
    (codes, scales)
}

/// Scales as f16 fractions of their largest (returned), so none falls below f16's normal range
/// unless it is that small beside the largest.
fn relative_scales(d: &[f32]) -> (Vec<f16>, f32) {
    let max = d.iter().fold(0f32, |m, &x| m.max(x));
    let inv = if max > 0.0 { 1.0 / max } else { 0.0 };
    (d.iter().map(|&x| f16::from_f32(x * inv)).collect(), max)
}

fn offset_code(q: i8) -> u8 {
    (q as i16 + 128) as u8
}

impl LoraPack {
    /// The pack of A (`[r, k]`, `k` a multiple of 32) and B (`[n, r]`) with scale `s`.
    pub fn new(a: &[f32], b: &[f32], k: usize, n: usize, s: f32) -> Self {
        let r = a.len() / k;
        assert!(
            a.len() == r * k && b.len() == n * r && r > 0 && k.is_multiple_of(32),
            "lora pack: A or B is not [r, {k}] / [{n}, r] with k whole blocks of 32"
        );
        let (nb, rq) = (k / 32, r.next_multiple_of(4));
        let np = nb.div_ceil(2);
        let (aq, ads) = int8_blocks(a, 32);
        let mut a8 = vec![128u8; r * np * 64];
        let mut ad = vec![0f32; r * np * 2];
        for c in 0..r {
            for (i, &q) in aq[c * k..(c + 1) * k].iter().enumerate() {
                a8[c * np * 64 + i] = offset_code(q);
            }
            ad[c * np * 2..c * np * 2 + nb].copy_from_slice(&ads[c * nb..(c + 1) * nb]);
        }
        let (ad, a_max) = relative_scales(&ad);
        let n_pad = n.next_multiple_of(BT_BLOCK);
        // Rank c's column of B in 8 bits with one scale: B's transpose is r rows of n.
        let bt_cols: Vec<f32> = (0..r * n).map(|e| b[(e % n) * r + e / n]).collect();
        let (bq, mut bs) = int8_blocks(&bt_cols, n);
        bs.resize(rq, 0.0);
        let mut bt = vec![128u8; n_pad * rq];
        for (c, col) in bq.chunks_exact(n).enumerate() {
            for (j, &q) in col.iter().enumerate() {
                let (t, l) = (j / BT_BLOCK, j % BT_BLOCK);
                bt[((t * rq / 4 + c / 4) * BT_BLOCK + l) * 4 + c % 4] = offset_code(q);
            }
        }
        let b_max = bs.iter().fold(0f32, |m, &d| m.max(d));
        let sections =
            [a8.len(), 2 * ad.len(), 4 * bs.len(), bt.len()].map(|l| l.next_multiple_of(64));
        let at = [
            sections[0],
            sections[0] + sections[1],
            sections[0] + sections[1] + sections[2],
        ];
        let mut buf = Lines::zeros(sections.iter().sum());
        buf[..a8.len()].copy_from_slice(&a8);
        buf[at[2]..at[2] + bt.len()].copy_from_slice(&bt);
        for (i, h) in ad.iter().enumerate() {
            buf[at[0] + 2 * i..at[0] + 2 * i + 2].copy_from_slice(&h.to_le_bytes());
        }
        for (i, d) in bs.iter().enumerate() {
            buf[at[1] + 4 * i..at[1] + 4 * i + 4].copy_from_slice(&d.to_le_bytes());
        }
        LoraPack {
            r,
            rq,
            k,
            n,
            np,
            scale: s,
            a_max,
            b_max,
            buf,
            at,
        }
    }

    fn a(&self) -> &[u8] {
        &self.buf[..self.at[0]]
    }
    fn ad(&self) -> &[u8] {
        &self.buf[self.at[0]..self.at[1]]
    }
    /// B's per-rank scales, `[rq]` (zero past `r`).
    pub(super) fn bs(&self, c: usize) -> f32 {
        let o = self.at[1] + 4 * c;
        f32::from_le_bytes([
            self.buf[o],
            self.buf[o + 1],
            self.buf[o + 2],
            self.buf[o + 3],
        ])
    }
    fn bt(&self) -> &[u8] {
        &self.buf[self.at[2]..]
    }
    /// f16 scale `i` of a section of them.
    fn scale_at(section: &[u8], i: usize) -> f32 {
        f16::from_le_bytes([section[2 * i], section[2 * i + 1]]).to_f32()
    }

    /// Asks for A and its scales in L2: the chunk that projects reads them next, and a few
    /// dozen lines in flight at once arrive sooner than the hardware prefetcher ramps up to them.
    pub fn prefetch_a(&self) {
        prefetch_l2(&self.buf[..self.at[2]]);
    }

    /// Asks for the B rows `r0..r1` in L2, so they arrive while the chunk streams its weights
    /// and [`LoraPack::expand`] finds them there.
    pub fn prefetch_b(&self, r0: usize, r1: usize) {
        let tile = self.rq / 4 * 64;
        prefetch_l2(&self.bt()[r0 / BT_BLOCK * tile..r1.div_ceil(BT_BLOCK) * tile]);
    }

    /// Output features.
    pub fn n(&self) -> usize {
        self.n
    }
    /// Input features.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Bytes a decoding step reads of this pack.
    pub fn bytes(&self) -> u64 {
        self.buf.len() as u64
    }

    /// `s·A·x` for the first row of `x8` (the activations quantised for the product, `k`
    /// values), quantised for [`LoraPack::expand`]; `None` when it adds nothing (`xa` or B all
    /// zero, as B starts in training).
    pub fn project(&self, x8: &Q8Rows) -> Option<Projected> {
        assert!(
            x8.nb == self.k / 32,
            "lora pack: activations of {} values for A of {}",
            x8.nb * 32,
            self.k
        );
        if self.b_max == 0.0 {
            return None;
        }
        let mut xa = vec![0f32; self.rq];
        #[cfg(target_arch = "x86_64")]
        if super::quant::vnni_available() {
            // SAFETY: AVX-512 F/BW/VL/VNNI were detected; `a` holds `r` rows of `np` pairs and
            // `ad` their `2·np` scales; `x8`'s first row holds `nb` blocks whose codes are padded
            // to whole pairs and whose per-block arrays to a multiple of 16 (`Q8Rows`), at least
            // the `2·np` blocks read.
            unsafe { project_vnni(&mut xa[..self.r], self, x8) };
        } else {
            self.project_portable(&mut xa[..self.r], x8);
        }
        #[cfg(not(target_arch = "x86_64"))]
        self.project_portable(&mut xa[..self.r], x8);
        let mult = self.scale * self.a_max;
        if xa.iter().any(|v| !v.is_finite()) {
            // Overflowed activations poison the outputs, as they do the product's.
            return Some(Projected {
                words: vec![0; self.rq / 4],
                init: 0,
                mult: f32::NAN,
            });
        }
        // B's rank scales go into xa, so each output row is one integer dot and one multiply.
        for (c, v) in xa.iter_mut().enumerate() {
            *v *= mult * self.bs(c);
        }
        let amax = xa.iter().fold(0f32, |m, v| m.max(v.abs()));
        if amax == 0.0 {
            return None;
        }
        let d = amax / 127.0;
        let codes: Vec<i8> = xa.iter().map(|v| (v / d).round_ties_even() as i8).collect();
        Some(Projected {
            words: codes
                .chunks_exact(4)
                .map(|w| i32::from_le_bytes([w[0] as u8, w[1] as u8, w[2] as u8, w[3] as u8]))
                .collect(),
            init: -128 * codes.iter().map(|&c| c as i32).sum::<i32>(),
            mult: d,
        })
    }

    /// [`LoraPack::project`]'s sums before the scale: per rank, `Σ_b ad[b]·(dₓ·T_b − 128·sqₓ)`
    /// with `T_b` block b's integer dot of the offset codes, in which `128·Σ qₓ` comes back out.
    fn project_portable(&self, xa: &mut [f32], x8: &Q8Rows) {
        let nb = self.k / 32;
        for (c, o) in xa.iter_mut().enumerate() {
            let row = &self.a()[c * self.np * 64..];
            *o = (0..nb)
                .map(|b| {
                    let t: i32 = row[b * 32..b * 32 + 32]
                        .iter()
                        .zip(&x8.q[b * 32..b * 32 + 32])
                        .map(|(&w, &q)| w as i32 * q as i32)
                        .sum();
                    let d = Self::scale_at(self.ad(), c * self.np * 2 + b);
                    d * (x8.d[b] * t as f32 - 128.0 * x8.sq[b])
                })
                .sum();
        }
    }

    /// `out[j − r0] += Σ_c B[j, c]·xa[c]` for the output rows `j` in `r0..r0 + out.len()`; `r0`
    /// is a multiple of [`BT_BLOCK`].
    pub fn expand(&self, out: &mut [f32], xa: &Projected, r0: usize) {
        let len = out.len();
        assert!(
            r0.is_multiple_of(BT_BLOCK) && r0 + len <= self.n && xa.words.len() == self.rq / 4,
            "lora pack: rows {r0}..{} of {}",
            r0 + len,
            self.n
        );
        #[cfg(target_arch = "x86_64")]
        if super::quant::vnni_available() {
            // SAFETY: AVX-512 F/BW/VL/VNNI were detected; `bt` holds `n_pad / 16` whole tiles of
            // `rq / 4` 64-byte quads, `n_pad` at or past `r0 + len`, and
            // `r0` is a multiple of 16: every tile the loop reads is whole; `out` is read and
            // written only in its own `len` lanes.
            unsafe { expand_vnni(out, xa, self.bt(), self.rq / 4, r0) };
            return;
        }
        self.expand_portable(out, xa, r0);
    }

    fn expand_portable(&self, out: &mut [f32], xa: &Projected, r0: usize) {
        let quads = self.rq / 4;
        for (i, o) in out.iter_mut().enumerate() {
            let (t, l) = ((r0 + i) / BT_BLOCK, (r0 + i) % BT_BLOCK);
            let mut acc = xa.init;
            for (g, w) in xa.words.iter().enumerate() {
                let codes = &self.bt()[((t * quads + g) * BT_BLOCK + l) * 4..][..4];
                for (e, &xq) in w.to_le_bytes().iter().enumerate() {
                    acc += codes[e] as i32 * xq as i8 as i32;
                }
            }
            *o += acc as f32 * xa.mult;
        }
    }

    /// The values `xa`'s codes stand for, `xq·d_xa`: `s·A·x` times B's rank scales (rank padded
    /// to 4).
    #[cfg(test)]
    pub fn xa_values(&self, xa: &Projected) -> Vec<f32> {
        xa.words
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .map(|c| c as i8 as f32 * xa.mult)
            .collect()
    }

    /// A as the pack holds it, `[r, k]`: the codes times their scales.
    #[cfg(test)]
    pub fn a_values(&self) -> Vec<f32> {
        let (k, np) = (self.k, self.np);
        (0..self.r * k)
            .map(|e| {
                let (c, i) = (e / k, e % k);
                let q = self.a()[c * np * 64 + i] as i32 - 128;
                q as f32 * Self::scale_at(self.ad(), c * np * 2 + i / 32) * self.a_max
            })
            .collect()
    }

    /// B's codes as the pack holds them, `[n, r]`.
    #[cfg(test)]
    pub fn b_codes(&self) -> Vec<i32> {
        let (r, quads) = (self.r, self.rq / 4);
        (0..self.n * r)
            .map(|e| {
                let (j, c) = (e / r, e % r);
                let (t, l) = (j / BT_BLOCK, j % BT_BLOCK);
                self.bt()[((t * quads + c / 4) * BT_BLOCK + l) * 4 + c % 4] as i32 - 128
            })
            .collect()
    }

    /// B as the pack holds it, `[n, r]`: the codes times their rank's scale.
    #[cfg(test)]
    pub fn b_values(&self) -> Vec<f32> {
        let r = self.r;
        let codes = self.b_codes();
        (0..self.n * r)
            .map(|e| codes[e] as f32 * self.bs(e % r))
            .collect()
    }
}

/// [`LoraPack::project_portable`] with 64 codes a dot instruction: lanes 0-7 of a pair's sums are
/// its first block, 8-15 its second, so the activations' `dₓ` and `16·sqₓ` (summed over 8 lanes,
/// `128·sqₓ`) and A's scales are laid that way per pair. Eight ranks at a time share each pair of
/// activation blocks, their sums independent chains.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn project_vnni(xa: &mut [f32], p: &LoraPack, x8: &Q8Rows) {
    const RANKS: usize = 8;
    let np = p.np;
    let halves = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    let pair_of = |v: __m128| _mm512_permutexvar_ps(halves, _mm512_castps128_ps512(v));
    let sixteen = _mm512_set1_ps(16.0);
    let (a, ad) = (p.a().as_ptr(), p.ad().as_ptr());
    for c0 in (0..xa.len()).step_by(RANKS) {
        let ranks = (xa.len() - c0).min(RANKS);
        let mut acc = [_mm512_setzero_ps(); RANKS];
        for q in 0..np {
            let dx = pair_of(_mm_castpd_ps(_mm_load_sd(x8.d.as_ptr().add(2 * q).cast())));
            let sq = pair_of(_mm_castpd_ps(_mm_load_sd(x8.sq.as_ptr().add(2 * q).cast())));
            let sq16 = _mm512_mul_ps(sq, sixteen);
            let xq = _mm512_loadu_si512(x8.q.as_ptr().add(q * 64).cast());
            for (i, acc) in acc[..ranks].iter_mut().enumerate() {
                let c = c0 + i;
                let w = _mm512_loadu_si512(a.add((c * np + q) * 64).cast());
                let t = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, xq);
                let v = _mm512_fmsub_ps(_mm512_cvtepi32_ps(t), dx, sq16);
                let two = ad.add((c * np + q) * 4).cast::<i32>().read_unaligned();
                let da = pair_of(_mm_cvtph_ps(_mm_cvtsi32_si128(two)));
                *acc = _mm512_fmadd_ps(v, da, *acc);
            }
        }
        for (i, acc) in acc[..ranks].iter().enumerate() {
            xa[c0 + i] = _mm512_reduce_add_ps(*acc);
        }
    }
}

/// [`LoraPack::expand`] with one integer dot per four ranks and 16 outputs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn expand_vnni(out: &mut [f32], xa: &Projected, bt: &[u8], quads: usize, r0: usize) {
    let (init, mult) = (_mm512_set1_epi32(xa.init), _mm512_set1_ps(xa.mult));
    let mut i = 0;
    while i < out.len() {
        let t = (r0 + i) / BT_BLOCK;
        let lanes = (out.len() - i).min(16);
        let mask = if lanes == 16 {
            0xffff
        } else {
            ((1u32 << lanes) - 1) as __mmask16
        };
        let tile = bt.as_ptr().add(t * quads * 64);
        let mut acc = init;
        for (g, &x) in xa.words.iter().enumerate() {
            let w = _mm512_loadu_si512(tile.add(g * 64).cast());
            acc = _mm512_dpbusd_epi32(acc, w, _mm512_set1_epi32(x));
        }
        let o = out.as_mut_ptr().add(i);
        let y = _mm512_maskz_loadu_ps(mask, o);
        let add = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), mult, y);
        _mm512_mask_storeu_ps(o, mask, add);
        i += 16;
    }
}

/// A prefetch into L2 of every cache line `bytes` touch.
fn prefetch_l2(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for off in (0..bytes.len()).step_by(64) {
        // SAFETY: SSE is part of x86_64, the address is inside `bytes`, and a prefetch neither
        // faults nor changes memory.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(bytes.as_ptr().add(off).cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The pack's `s·A·x` against an f64 reference from the values it holds and the activations
    /// as quantised, its 8-bit `xa` within half a step of that, and `B·xa` against an f64
    /// reference from B's codes and `xa`'s. Ranges start on every tile the matmul's chunks can,
    /// with and without a ragged end; ranks that are and are not a multiple of 4, an odd number
    /// of blocks, B's ranks four decades apart in size. The vector and portable kernels are both
    /// checked.
    #[test]
    fn packs_add_what_they_hold() {
        let mut rng = Rng::new(11);
        for (k, n, r) in [
            (64, 40, 8),
            (96, 33, 3),
            (576, 192, 16),
            (576, 1536, 8),
            (1536, 576, 8),
            (160, 50, 6),
        ] {
            let a: Vec<f32> = (0..r * k).map(|_| rng.uniform(-1.0, 1.0)).collect();
            // B's rank columns from 1e-5 to 0.1, as a rank's scale must follow its own column.
            let b: Vec<f32> = (0..n * r)
                .map(|e| rng.uniform(-0.1, 0.1) * 10f32.powi(-((e % r) as i32 % 5)))
                .collect();
            let x: Vec<f32> = (0..k).map(|_| rng.uniform(-2.0, 2.0)).collect();
            let s = 0.5;
            let p = LoraPack::new(&a, &b, k, n, s);
            let bq = p.b_values();
            let col_max: Vec<f32> = (0..r)
                .map(|c| (0..n).fold(0f32, |m, j| m.max(b[j * r + c].abs())))
                .collect();
            for (e, (&q, &t)) in bq.iter().zip(&b).enumerate() {
                // Half a step of the rank's scale.
                let tol = col_max[e % r] / 127.0 * 0.5 * (1.0 + 1e-5);
                assert!((q - t).abs() <= tol, "B[{}, {}]: {q} vs {t}", e / r, e % r);
            }
            let bc = p.b_codes();
            let aq = p.a_values();
            for (e, (&q, &t)) in aq.iter().zip(&a).enumerate() {
                assert!((q - t).abs() <= 0.51 / 127.0 + 1e-3, "A[{e}]: {q} vs {t}");
            }
            for offset in [0, 8, 128] {
                let x8 = Q8Rows::quantize_portable(&x, 1, k, offset);
                let xv: Vec<f64> = (0..k)
                    .map(|i| x8.q[i] as f64 * x8.d[i / 32] as f64)
                    .collect();
                let want: Vec<f64> = (0..r)
                    .map(|c| (0..k).map(|i| aq[c * k + i] as f64 * xv[i]).sum::<f64>() * s as f64)
                    .collect();
                let mut sums = [vec![0f32; r], vec![0f32; r]];
                p.project_portable(&mut sums[0], &x8);
                #[cfg(target_arch = "x86_64")]
                if crate::backend::cpu::quant::vnni_available() {
                    // SAFETY: as in `project`.
                    unsafe { project_vnni(&mut sums[1], &p, &x8) };
                } else {
                    sums[1] = sums[0].clone();
                }
                #[cfg(not(target_arch = "x86_64"))]
                {
                    sums[1] = sums[0].clone();
                }
                for got in &sums {
                    for c in 0..r {
                        let g = got[c] as f64 * (s * p.a_max) as f64;
                        assert!(
                            (g - want[c]).abs() <= 1e-4 * (1.0 + want[c].abs()),
                            "k={k} xa[{c}]: {g} vs {}",
                            want[c]
                        );
                    }
                }
                p.prefetch_a();
                let xa = p.project(&x8).expect("a nonzero adapter projects");
                let xav = p.xa_values(&xa);
                // `xa` carries B's rank scales.
                let want: Vec<f64> = (0..r).map(|c| want[c] * p.bs(c) as f64).collect();
                let amax = want.iter().fold(0f64, |m, v| m.max(v.abs()));
                assert_eq!(xav.len(), p.rq);
                for (c, &got) in xav.iter().enumerate() {
                    let w = want.get(c).copied().unwrap_or(0.0);
                    assert!(
                        (got as f64 - w).abs() <= amax / 127.0 * 0.5 + 1e-4 * amax,
                        "k={k} 8-bit xa[{c}]: {got} vs {w}"
                    );
                }
                for r0 in (0..n).step_by(BT_BLOCK) {
                    for end in [n, (r0 + BT_BLOCK).min(n), (r0 + 5).min(n)] {
                        let base: Vec<f32> = (r0..end).map(|_| rng.uniform(-1.0, 1.0)).collect();
                        let (mut vec_out, mut port_out) = (base.clone(), base.clone());
                        // The matmul asks for a chunk's B rows first: in bounds for any chunk.
                        p.prefetch_b(r0, end);
                        p.expand(&mut vec_out, &xa, r0);
                        p.expand_portable(&mut port_out, &xa, r0);
                        for (i, y0) in base.iter().enumerate() {
                            let j = r0 + i;
                            let add: f64 =
                                (0..r).map(|c| bc[j * r + c] as f64 * xav[c] as f64).sum();
                            let want = *y0 as f64 + add;
                            for (name, got) in [("vector", &vec_out), ("portable", &port_out)] {
                                assert!(
                                    (got[i] as f64 - want).abs() <= 2e-6 * (1.0 + want.abs()),
                                    "{name} n={n} out[{j}] from {r0}..{end}: {} vs {want}",
                                    got[i]
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// An adapter whose B is zero (as training starts it) or whose input is zero adds nothing
    /// and is skipped; one whose input overflowed poisons its outputs rather than vanishing.
    #[test]
    fn zero_and_overflowed_projections() {
        let (k, n, r) = (64, 32, 4);
        let a = vec![0.5f32; r * k];
        let zero_b = LoraPack::new(&a, &vec![0.0; n * r], k, n, 1.0);
        let x8 = Q8Rows::quantize_portable(&vec![1.0; k], 1, k, 0);
        assert!(zero_b.project(&x8).is_none());
        let p = LoraPack::new(&a, &vec![0.1; n * r], k, n, 1.0);
        assert!(p
            .project(&Q8Rows::quantize_portable(&vec![0.0; k], 1, k, 0))
            .is_none());
        let inf = Q8Rows::quantize_portable(&vec![f32::INFINITY; k], 1, k, 0);
        let xa = p.project(&inf).expect("an overflowed projection is kept");
        let mut out = vec![0f32; n];
        p.expand(&mut out, &xa, 0);
        assert!(out.iter().all(|v| v.is_nan()), "{out:?}");
    }
}
