//! Weights kept in their checkpoint's compact form (ggml Q4_0/Q4_1/Q8_0 blocks, bf16, f16) for
//! the few-row matmuls of decoding, where reading the weights is the whole cost. The values are
//! exactly those the f32 copy holds (that copy was dequantized from the same bytes), so decoding
//! through them changes only the order of the additions.

#[cfg(test)]
use half::{bf16, f16};
use rayon::prelude::*;

#[derive(Clone, Debug, PartialEq)]
pub enum PackedWeight {
    /// ggml blocks of 32: f16 scale + 16 bytes of nibbles, value = (q − 8)·d
    Q4_0(Vec<u8>),
    /// ggml blocks of 32: f16 scale, f16 min, 16 bytes of nibbles, value = q·d + m
    Q4_1(Vec<u8>),
    /// ggml blocks of 32: f16 scale + 32 signed bytes, value = q·d
    Q8_0(Vec<u8>),
    /// Blocks of 32 widened from Q4_0/Q4_1 for speed: f32 scale, f32 min, 32 signed byte codes,
    /// value = q·d + m. The same f32 operations as dequantizing the original block, so the
    /// values are bit-identical; bytes-to-floats is cheaper than nibbles-to-floats.
    Q8M(Vec<u8>),
    Bf16(Vec<u16>),
    F16(Vec<u16>),
}

/// Largest row count served by the packed path; larger matmuls go to the f32 GEMM.
pub const MAX_PACKED_ROWS: usize = 8;

/// IEEE half to f32 by bit manipulation: inlines into the kernels (the `half` crate's call
/// does a runtime feature check per value, which dominated the block loop).
#[inline(always)]
fn f16_le(b: &[u8]) -> f32 {
    let h = u16::from_le_bytes([b[0], b[1]]) as u32;
    let sign = (h & 0x8000) << 16;
    let exp = (h >> 10) & 0x1F;
    let mant = h & 0x3FF;
    let mag = match exp {
        0 => (mant as f32) * f32::from_bits(0x3380_0000), // subnormal: mant · 2^-24
        31 => f32::from_bits(0x7F80_0000 | (mant << 13)),
        _ => f32::from_bits(((exp + 112) << 23) | (mant << 13)),
    };
    f32::from_bits(mag.to_bits() | sign)
}

impl PackedWeight {
    /// Bytes (or u16 elements for bf16/f16) of one row of `cols` values.
    pub fn row_units(&self, cols: usize) -> usize {
        match self {
            PackedWeight::Q4_0(_) => cols / 32 * 18,
            PackedWeight::Q4_1(_) => cols / 32 * 20,
            PackedWeight::Q8M(_) => cols / 32 * 40,
            PackedWeight::Q8_0(_) => cols / 32 * 34,
            PackedWeight::Bf16(_) | PackedWeight::F16(_) => cols,
        }
    }

    /// Re-blocks ggml Q4_0 (`q4_1` false) or Q4_1 bytes as [`PackedWeight::Q8M`].
    pub fn widen_q4(bytes: &[u8], q4_1: bool) -> Self {
        let bsz = if q4_1 { 20 } else { 18 };
        let mut out = Vec::with_capacity(bytes.len() / bsz * 40);
        for blk in bytes.chunks_exact(bsz) {
            let d = f16_le(blk);
            let (m, codes, off) = if q4_1 {
                (f16_le(&blk[2..]), &blk[4..20], 0i16)
            } else {
                (0.0, &blk[2..18], 8)
            };
            out.extend_from_slice(&d.to_le_bytes());
            out.extend_from_slice(&m.to_le_bytes());
            let lo = codes.iter().map(|c| ((c & 0x0F) as i16 - off) as i8 as u8);
            let hi = codes.iter().map(|c| ((c >> 4) as i16 - off) as i8 as u8);
            out.extend(lo.chain(hi));
        }
        PackedWeight::Q8M(out)
    }

    /// Whether this weight can serve a `[rows, cols]` matrix.
    pub fn fits(&self, rows: usize, cols: usize) -> bool {
        let blocked = matches!(
            self,
            PackedWeight::Q4_0(_)
                | PackedWeight::Q4_1(_)
                | PackedWeight::Q8_0(_)
                | PackedWeight::Q8M(_)
        );
        let len = match self {
            PackedWeight::Q4_0(v)
            | PackedWeight::Q4_1(v)
            | PackedWeight::Q8_0(v)
            | PackedWeight::Q8M(v) => v.len(),
            PackedWeight::Bf16(v) | PackedWeight::F16(v) => v.len(),
        };
        (!blocked || cols.is_multiple_of(32)) && len == rows * self.row_units(cols)
    }

    /// Reorders rows: row `i` of the result is row `src_of(i)` of `self`.
    pub fn permute_rows(&self, rows: usize, cols: usize, src_of: impl Fn(usize) -> usize) -> Self {
        let u = self.row_units(cols);
        fn perm<T: Copy>(v: &[T], rows: usize, u: usize, f: &dyn Fn(usize) -> usize) -> Vec<T> {
            (0..rows)
                .flat_map(|i| v[f(i) * u..(f(i) + 1) * u].iter().copied())
                .collect()
        }
        match self {
            PackedWeight::Q4_0(v) => PackedWeight::Q4_0(perm(v, rows, u, &src_of)),
            PackedWeight::Q4_1(v) => PackedWeight::Q4_1(perm(v, rows, u, &src_of)),
            PackedWeight::Q8M(v) => PackedWeight::Q8M(perm(v, rows, u, &src_of)),
            PackedWeight::Q8_0(v) => PackedWeight::Q8_0(perm(v, rows, u, &src_of)),
            PackedWeight::Bf16(v) => PackedWeight::Bf16(perm(v, rows, u, &src_of)),
            PackedWeight::F16(v) => PackedWeight::F16(perm(v, rows, u, &src_of)),
        }
    }

    /// Widens row `r` into `out` (`cols` values), scalar: the reference the kernel is tested
    /// against.
    #[cfg(test)]
    fn row_into(&self, r: usize, cols: usize, out: &mut [f32]) {
        let u = self.row_units(cols);
        match self {
            PackedWeight::Q8M(v) => {
                for (blk, o) in v[r * u..(r + 1) * u]
                    .chunks_exact(40)
                    .zip(out.chunks_exact_mut(32))
                {
                    let d = f32::from_le_bytes([blk[0], blk[1], blk[2], blk[3]]);
                    let m = f32::from_le_bytes([blk[4], blk[5], blk[6], blk[7]]);
                    for (oi, &q) in o.iter_mut().zip(&blk[8..40]) {
                        *oi = (q as i8) as f32 * d + m;
                    }
                }
            }
            PackedWeight::Bf16(v) => {
                for (o, &b) in out.iter_mut().zip(&v[r * u..(r + 1) * u]) {
                    *o = bf16::from_bits(b).to_f32();
                }
            }
            PackedWeight::F16(v) => {
                for (o, &b) in out.iter_mut().zip(&v[r * u..(r + 1) * u]) {
                    *o = f16::from_bits(b).to_f32();
                }
            }
            PackedWeight::Q8_0(v) => {
                for (blk, o) in v[r * u..(r + 1) * u]
                    .chunks_exact(34)
                    .zip(out.chunks_exact_mut(32))
                {
                    let d = f16_le(blk);
                    for (oi, &q) in o.iter_mut().zip(&blk[2..34]) {
                        *oi = (q as i8) as f32 * d;
                    }
                }
            }
            PackedWeight::Q4_0(v) => {
                for (blk, o) in v[r * u..(r + 1) * u]
                    .chunks_exact(18)
                    .zip(out.chunks_exact_mut(32))
                {
                    let d = f16_le(blk);
                    let (lo, hi) = o.split_at_mut(16);
                    for ((l, h), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(&blk[2..18]) {
                        *l = ((q & 0x0F) as f32 - 8.0) * d;
                        *h = ((q >> 4) as f32 - 8.0) * d;
                    }
                }
            }
            PackedWeight::Q4_1(v) => {
                for (blk, o) in v[r * u..(r + 1) * u]
                    .chunks_exact(20)
                    .zip(out.chunks_exact_mut(32))
                {
                    let (d, m) = (f16_le(blk), f16_le(&blk[2..]));
                    let (lo, hi) = o.split_at_mut(16);
                    for ((l, h), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(&blk[4..20]) {
                        *l = (q & 0x0F) as f32 * d + m;
                        *h = (q >> 4) as f32 * d + m;
                    }
                }
            }
        }
    }

    /// `y[m, rows] (+)= x[m, cols] · Wᵀ` for a few rows of `x`: every weight row is widened
    /// once into an L1-resident buffer and dotted with every input row.
    pub fn matmul(
        &self,
        y: &mut [f32],
        x: &[f32],
        m: usize,
        rows: usize,
        cols: usize,
        accumulate: bool,
    ) {
        const CHUNK: usize = 64;
        let xsum: Vec<f32> = vec![];
        let results: Vec<(usize, Vec<f32>)> = (0..rows.div_ceil(CHUNK))
            .into_par_iter()
            .map(|c| {
                let r0 = c * CHUNK;
                let r1 = (r0 + CHUNK).min(rows);
                let mut out = vec![0f32; (r1 - r0) * m];
                rows_dispatch(self, r0, r1, cols, x, &xsum, m, &mut out);
                (r0, out)
            })
            .collect();
        for (r0, out) in results {
            for (j, chunk) in out.chunks(m).enumerate() {
                for (i, &v) in chunk.iter().enumerate() {
                    let dst = &mut y[i * rows + r0 + j];
                    *dst = if accumulate { *dst + v } else { v };
                }
            }
        }
    }
}

/// Runs [`rows_kernel`] compiled for AVX2+FMA when the processor has them (the default x86-64
/// target is SSE2 only, which leaves this memory-bound loop compute-bound).
#[allow(clippy::too_many_arguments)]
fn rows_dispatch(
    w: &PackedWeight,
    r0: usize,
    r1: usize,
    cols: usize,
    x: &[f32],
    xsum: &[f32],
    m: usize,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the function only differs from `rows_kernel` in the instructions the
            // compiler may use, and the check above proves the processor has them.
            unsafe { rows_avx2(w, r0, r1, cols, x, xsum, m, out) };
            return;
        }
    }
    rows_kernel(w, r0, r1, cols, x, xsum, m, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_avx2(
    w: &PackedWeight,
    r0: usize,
    r1: usize,
    cols: usize,
    x: &[f32],
    xsum: &[f32],
    m: usize,
    out: &mut [f32],
) {
    rows_kernel(w, r0, r1, cols, x, xsum, m, out)
}

/// Widens row `r` of `w` into `out`: per block a scale (and min) and 16 or 32 integer codes,
/// written with fixed-size arrays so the conversion vectorises.
#[inline(always)]
fn widen_row(w: &PackedWeight, r: usize, cols: usize, out: &mut [f32]) {
    let u = w.row_units(cols);
    match w {
        PackedWeight::Q4_1(v) => {
            for (blk, o) in v[r * u..(r + 1) * u]
                .chunks_exact(20)
                .zip(out.chunks_exact_mut(32))
            {
                let (d, mn) = (f16_le(blk), f16_le(&blk[2..]));
                let c: &[u8; 16] = blk[4..20].try_into().expect("16 code bytes");
                let o: &mut [f32; 32] = o.try_into().expect("a block of 32");
                for j in 0..16 {
                    o[j] = (c[j] & 0x0F) as f32 * d + mn;
                    o[j + 16] = (c[j] >> 4) as f32 * d + mn;
                }
            }
        }
        PackedWeight::Q4_0(v) => {
            for (blk, o) in v[r * u..(r + 1) * u]
                .chunks_exact(18)
                .zip(out.chunks_exact_mut(32))
            {
                let d = f16_le(blk);
                let c: &[u8; 16] = blk[2..18].try_into().expect("16 code bytes");
                let o: &mut [f32; 32] = o.try_into().expect("a block of 32");
                for j in 0..16 {
                    o[j] = ((c[j] & 0x0F) as f32 - 8.0) * d;
                    o[j + 16] = ((c[j] >> 4) as f32 - 8.0) * d;
                }
            }
        }
        PackedWeight::Q8_0(v) => {
            for (blk, o) in v[r * u..(r + 1) * u]
                .chunks_exact(34)
                .zip(out.chunks_exact_mut(32))
            {
                let d = f16_le(blk);
                let c: &[u8; 32] = blk[2..34].try_into().expect("32 code bytes");
                let o: &mut [f32; 32] = o.try_into().expect("a block of 32");
                for j in 0..32 {
                    o[j] = (c[j] as i8) as f32 * d;
                }
            }
        }
        PackedWeight::Q8M(v) => {
            for (blk, o) in v[r * u..(r + 1) * u]
                .chunks_exact(40)
                .zip(out.chunks_exact_mut(32))
            {
                let d = f32::from_le_bytes([blk[0], blk[1], blk[2], blk[3]]);
                let m = f32::from_le_bytes([blk[4], blk[5], blk[6], blk[7]]);
                let c: &[u8; 32] = blk[8..40].try_into().expect("32 code bytes");
                let o: &mut [f32; 32] = o.try_into().expect("a block of 32");
                for j in 0..32 {
                    o[j] = (c[j] as i8) as f32 * d + m;
                }
            }
        }
        PackedWeight::Bf16(v) => {
            for (o, &bits) in out.iter_mut().zip(&v[r * u..(r + 1) * u]) {
                *o = f32::from_bits((bits as u32) << 16);
            }
        }
        PackedWeight::F16(v) => {
            for (o, &bits) in out.iter_mut().zip(&v[r * u..(r + 1) * u]) {
                *o = f16_le(&bits.to_le_bytes());
            }
        }
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn rows_kernel(
    w: &PackedWeight,
    r0: usize,
    r1: usize,
    cols: usize,
    x: &[f32],
    _xsum: &[f32],
    m: usize,
    out: &mut [f32],
) {
    let mut wrow = vec![0f32; cols];
    for r in r0..r1 {
        widen_row(w, r, cols, &mut wrow);
        for i in 0..m {
            out[(r - r0) * m + i] = dot(&wrow, &x[i * cols..(i + 1) * cols]);
        }
    }
}

/// A dot product over 8 independent lanes, so it vectorises.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ar.iter().zip(br) {
        s += x * y;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_matmul_equals_widened_f32() {
        let (rows, cols, m) = (5, 64, 3);
        let mut rng = crate::rng::Rng::new(4);
        let bytes = |n: usize, rng: &mut crate::rng::Rng| -> Vec<u8> {
            (0..n).map(|_| rng.below(256) as u8).collect()
        };
        // Scales as small finite f16 values so every format decodes to ordinary numbers.
        let mut q41 = bytes(rows * cols / 32 * 20, &mut rng);
        for blk in q41.chunks_exact_mut(20) {
            blk[..2].copy_from_slice(&f16::from_f32(0.01).to_le_bytes());
            blk[2..4].copy_from_slice(&f16::from_f32(-0.05).to_le_bytes());
        }
        let bf: Vec<u16> = (0..rows * cols)
            .map(|_| bf16::from_f32(rng.uniform(-1.0, 1.0)).to_bits())
            .collect();
        let x: Vec<f32> = (0..m * cols).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let q8m = PackedWeight::widen_q4(&q41, true);
        let (mut a, mut b) = (vec![0f32; cols], vec![0f32; cols]);
        let q41p = PackedWeight::Q4_1(q41.clone());
        for r in 0..rows {
            q41p.row_into(r, cols, &mut a);
            q8m.row_into(r, cols, &mut b);
            assert_eq!(a, b, "Q8M re-blocking must keep every value bit for bit");
        }
        for p in [PackedWeight::Q4_1(q41), q8m, PackedWeight::Bf16(bf)] {
            assert!(p.fits(rows, cols));
            let mut w = vec![0f32; rows * cols];
            for r in 0..rows {
                p.row_into(r, cols, &mut w[r * cols..(r + 1) * cols]);
            }
            let mut y = vec![0f32; m * rows];
            p.matmul(&mut y, &x, m, rows, cols, false);
            for i in 0..m {
                for r in 0..rows {
                    let want: f32 = (0..cols).map(|c| w[r * cols + c] * x[i * cols + c]).sum();
                    assert!((y[i * rows + r] - want).abs() < 1e-4 * want.abs().max(1.0));
                }
            }
        }
    }
}
