//! A low-rank adapter in the form decoding reads it ([`LoraPack`]): 8-bit, for a weight read
//! against 8-bit activations, its add fused into that weight's matmul over the output rows.
//!
//! A decoding step reads every weight once, so an adapter costs its bytes. In f32, rank-8
//! adapters on the seven linears of the default model are 9.8 MB a token against 96 MB of Q4_1
//! weights, and added on one thread after each product they made decoding 11% slower than the
//! base model (`bench`, the states decoding in turn). In 8 bits they are 2.8 MB: A in blocks of
//! 32 inputs and B in tiles of [`BT_BLOCK`] outputs, each with an f32 scale. The matmul's first
//! chunk makes `s·A·x` (against the f32 activations: quantising them as well would cost more than
//! r dot products) while the other threads stream their rows, then every chunk adds
//! `B[rows]·(s·A·x)` to its own results. The f32 values fused the same way measured no faster
//! than the add after the product, so weights read against f32 activations keep that path.
//!
//! The 8-bit adapter moves the default model's decoding logits about as much as 8-bit
//! activations already do (`tests/adapter_decode.rs`).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Outputs per tile of the 8-bit B; the matmul's chunks of output rows start on a multiple.
pub const BT_BLOCK: usize = 16;

/// One linear's adapter `y += s·B·A·x` (A `[r, k]`, B `[n, r]`) in 8 bits. A: `a` `[r, k]`
/// codes with an f32 scale per block of 32 (`as_`, `[r, k / 32]`). B in tiles of [`BT_BLOCK`]
/// outputs: `bt` `[n_pad / 16, r, 16]` codes (`n_pad` the next multiple of 16, zeros past `n`)
/// and an f32 scale per tile and rank, `bts` `[n_pad / 16, r]`, so a chunk of output rows reads
/// one contiguous span of each (rank-major rows of Bᵀ were eight short streams a chunk, each
/// line a demand miss).
pub struct LoraPack {
    r: usize,
    k: usize,
    n: usize,
    scale: f32,
    a: Vec<i8>,
    as_: Vec<f32>,
    bt: Vec<i8>,
    bts: Vec<f32>,
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

impl LoraPack {
    /// The pack of A (`[r, k]`, `k` a multiple of 32) and B (`[n, r]`) with scale `s`.
    pub fn new(a: &[f32], b: &[f32], k: usize, n: usize, s: f32) -> Self {
        let r = a.len() / k;
        assert!(
            a.len() == r * k && b.len() == n * r && r > 0 && k.is_multiple_of(32),
            "lora pack: A or B is not [r, {k}] / [{n}, r] with k whole blocks of 32"
        );
        let n_pad = n.next_multiple_of(BT_BLOCK);
        // B's tiles: output j of rank c at [j / 16, c, j % 16], zeros past `n`.
        let mut tiles = vec![0f32; r * n_pad];
        for (j, row) in b.chunks_exact(r).enumerate() {
            for (c, &v) in row.iter().enumerate() {
                tiles[(j / BT_BLOCK * r + c) * BT_BLOCK + j % BT_BLOCK] = v;
            }
        }
        let (bt, bts) = int8_blocks(&tiles, BT_BLOCK);
        let (a, as_) = int8_blocks(a, 32);
        LoraPack {
            r,
            k,
            n,
            scale: s,
            a,
            as_,
            bt,
            bts,
        }
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
        (self.a.len() + 4 * self.as_.len() + self.bt.len() + 4 * self.bts.len()) as u64
    }

    /// `s·A·x` for one row `x` of `k` values.
    pub fn project(&self, x: &[f32]) -> Vec<f32> {
        let (k, s) = (self.k, self.scale);
        let x = &x[..k];
        let mut xa = vec![0f32; self.r];
        #[cfg(target_arch = "x86_64")]
        if super::tiles::available() {
            // SAFETY: AVX-512F was detected; `a` is `[r, k]` and `as_` `[r, k / 32]` with `k` a
            // multiple of 32 (`new` asserted it), and `x` holds `k` values.
            unsafe { project_int8(&mut xa, x, &self.a, &self.as_, s) };
            return xa;
        }
        for (c, o) in xa.iter_mut().enumerate() {
            let blocks = self.a[c * k..(c + 1) * k]
                .chunks_exact(32)
                .zip(x.chunks_exact(32))
                .zip(&self.as_[c * k / 32..]);
            *o = s * blocks
                .map(|((q, v), d)| d * q.iter().zip(v).map(|(&q, v)| q as f32 * v).sum::<f32>())
                .sum::<f32>();
        }
        xa
    }

    /// `out[j − r0] += Σ_c B[j, c]·xa[c]` for the output rows `j` in `r0..r0 + out.len()`; `r0`
    /// is a multiple of [`BT_BLOCK`].
    pub fn expand(&self, out: &mut [f32], xa: &[f32], r0: usize) {
        let (r, len) = (self.r, out.len());
        assert!(
            r0.is_multiple_of(BT_BLOCK) && r0 + len <= self.n && xa.len() == r,
            "lora pack: rows {r0}..{} of {}",
            r0 + len,
            self.n
        );
        #[cfg(target_arch = "x86_64")]
        if super::tiles::available() {
            // SAFETY: AVX-512F was detected; `bt` holds `n_pad / 16` whole tiles of `r` 16-byte
            // rows and `bts` `r` scales a tile, `n_pad` at or past `r0 + len`, and `r0` is a
            // multiple of 16: every tile the loop reads is whole; `out` is read and written only
            // in its own `len` lanes.
            unsafe { expand_int8(out, xa, &self.bt, &self.bts, r0) };
            return;
        }
        for (i, o) in out.iter_mut().enumerate() {
            let (t, l) = ((r0 + i) / BT_BLOCK, (r0 + i) % BT_BLOCK);
            *o += (0..r)
                .map(|c| self.bt[(t * r + c) * BT_BLOCK + l] as f32 * self.bts[t * r + c] * xa[c])
                .sum::<f32>();
        }
    }

    /// A as the pack holds it, `[r, k]`: the codes times their scales.
    #[cfg(test)]
    pub fn a_values(&self) -> Vec<f32> {
        let s = &self.as_;
        self.a
            .iter()
            .enumerate()
            .map(|(e, &q)| q as f32 * s[e / 32])
            .collect()
    }

    /// B as the pack holds it, `[n, r]`: the codes times their scales.
    #[cfg(test)]
    pub fn b_values(&self) -> Vec<f32> {
        let r = self.r;
        (0..self.n * r)
            .map(|e| {
                let (t, l, c) = (e / r / BT_BLOCK, e / r % BT_BLOCK, e % r);
                self.bt[(t * r + c) * BT_BLOCK + l] as f32 * self.bts[t * r + c]
            })
            .collect()
    }
}

/// [`LoraPack::project`] of the 8-bit form: per block of 32, two vectors of codes times x, then
/// the block's scale.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn project_int8(xa: &mut [f32], x: &[f32], a: &[i8], as_: &[f32], s: f32) {
    let k = x.len();
    for (c, o) in xa.iter_mut().enumerate() {
        let (row, ds) = (a.as_ptr().add(c * k), &as_[c * k / 32..]);
        let mut acc = _mm512_setzero_ps();
        for (b, &d) in ds[..k / 32].iter().enumerate() {
            let lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                row.add(32 * b).cast(),
            )));
            let hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                row.add(32 * b + 16).cast(),
            )));
            let xs = x.as_ptr().add(32 * b);
            let blk = _mm512_fmadd_ps(
                hi,
                _mm512_loadu_ps(xs.add(16)),
                _mm512_mul_ps(lo, _mm512_loadu_ps(xs)),
            );
            acc = _mm512_fmadd_ps(blk, _mm512_set1_ps(d), acc);
        }
        *o = s * _mm512_reduce_add_ps(acc);
    }
}

/// [`LoraPack::expand`] of the 8-bit form: 16 outputs a vector, one multiply-add per rank.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn expand_int8(out: &mut [f32], xa: &[f32], bt: &[i8], bts: &[f32], r0: usize) {
    let r = xa.len();
    let mut i = 0;
    while i < out.len() {
        let t = (r0 + i) / BT_BLOCK;
        let lanes = (out.len() - i).min(16);
        let mask = if lanes == 16 {
            0xffff
        } else {
            ((1u32 << lanes) - 1) as __mmask16
        };
        let mut acc = _mm512_setzero_ps();
        for c in 0..r {
            let codes = _mm_loadu_si128(bt.as_ptr().add((t * r + c) * BT_BLOCK).cast());
            let v = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(codes));
            let w = _mm512_set1_ps(xa[c] * bts[t * r + c]);
            acc = _mm512_fmadd_ps(v, w, acc);
        }
        let o = out.as_mut_ptr().add(i);
        let y = _mm512_maskz_loadu_ps(mask, o);
        _mm512_mask_storeu_ps(o, mask, _mm512_add_ps(y, acc));
        i += 16;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The pack's `s·A·x` and `B·xa` against an f64 reference from the values it holds (the
    /// codes times their scales, each within half a step of the trained value). Ranges start on
    /// every tile the matmul's chunks can, with and without a ragged end.
    #[test]
    fn packs_add_what_they_hold() {
        let mut rng = Rng::new(11);
        for (k, n, r) in [
            (64, 40, 8),
            (96, 33, 4),
            (576, 192, 16),
            (576, 1536, 8),
            (1536, 576, 8),
        ] {
            let a: Vec<f32> = (0..r * k).map(|_| rng.uniform(-1.0, 1.0)).collect();
            let b: Vec<f32> = (0..n * r).map(|_| rng.uniform(-0.1, 0.1)).collect();
            let x: Vec<f32> = (0..k).map(|_| rng.uniform(-2.0, 2.0)).collect();
            let s = 0.5;
            {
                let p = LoraPack::new(&a, &b, k, n, s);
                let bq = p.b_values();
                for (j, (&q, &t)) in bq.iter().zip(&b).enumerate() {
                    // Half a step of a scale of at most 0.1/127 (B's range), plus rounding.
                    assert!((q - t).abs() <= 0.1 / 127.0 * 0.51, "B[{j}]: {q} vs {t}");
                }
                // A within half a step of its block's largest value (at most 1/127).
                let aq = p.a_values();
                for (e, (&q, &t)) in aq.iter().zip(&a).enumerate() {
                    assert!((q - t).abs() <= 0.51 / 127.0, "A[{e}]: {q} vs {t}");
                }
                let xa = p.project(&x);
                for c in 0..r {
                    let want: f64 = (0..k)
                        .map(|i| aq[c * k + i] as f64 * x[i] as f64)
                        .sum::<f64>()
                        * s as f64;
                    assert!(
                        (xa[c] as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "k={k} xa[{c}]: {} vs {want}",
                        xa[c]
                    );
                }
                for r0 in (0..n).step_by(BT_BLOCK) {
                    for end in [n, (r0 + BT_BLOCK).min(n), (r0 + 5).min(n)] {
                        let base: Vec<f32> = (r0..end).map(|_| rng.uniform(-1.0, 1.0)).collect();
                        let mut out = base.clone();
                        p.expand(&mut out, &xa, r0);
                        for (i, (&o, &y0)) in out.iter().zip(&base).enumerate() {
                            let j = r0 + i;
                            let want = y0 as f64
                                + (0..r)
                                    .map(|c| bq[j * r + c] as f64 * xa[c] as f64)
                                    .sum::<f64>();
                            assert!(
                                (o as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()),
                                "n={n} out[{j}] from {r0}..{end}: {o} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}
