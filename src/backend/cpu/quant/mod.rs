//! The CPU's forms of a checkpoint's compact weights (ggml Q4_0/Q4_1/Q8_0 blocks, bf16, f16) and
//! the kernels that read them for the few-row matmuls of decoding, where reading the weights is
//! the whole cost. The values are exactly those the f32 copy holds (that copy was dequantized from
//! the same bytes), so decoding through them changes only the order of the additions. `avx2`
//! holds the kernels x86-64 processors run; the portable loop below is their reference and the
//! fallback elsewhere.

#[cfg(target_arch = "x86_64")]
mod avx2;
mod lines;
mod q8act;
#[cfg(target_arch = "x86_64")]
mod vnni;

pub use lines::Lines;
pub use q8act::{Q8Rows, GROUP};
#[cfg(target_arch = "x86_64")]
pub(crate) use vnni::available as vnni_available;

use super::lora_decode::{LoraPack, SharedXa, BT_BLOCK};
use crate::backend::weight::QuantForm;
#[cfg(test)]
use half::{bf16, f16};
use rayon::prelude::*;
use std::sync::atomic::{AtomicU8, Ordering};

/// A compact weight as the CPU kernels read it: a checkpoint's [`QuantForm`], or its Q4 blocks
/// re-laid for SIMD.
#[derive(Clone, Debug, PartialEq)]
pub enum Quant {
    /// ggml blocks of 32: f16 scale + 16 bytes of nibbles, value = (q − 8)·d
    Q4_0(Vec<u8>),
    /// ggml blocks of 32: f16 scale, f16 min, 16 bytes of nibbles, value = q·d + m
    Q4_1(Vec<u8>),
    /// ggml blocks of 32: f16 scale + 32 signed bytes, value = q·d
    Q8_0(Vec<u8>),
    Bf16(Vec<u16>),
    F16(Vec<u16>),
    /// Q4_0/Q4_1 blocks re-laid for SIMD (`for_this_cpu`): f32 scale, f32 min, then the 32
    /// codes as 16 bytes in lane order (see [`lane_nibble`]); value `(q − 8)·d` when `offset8`
    /// (from Q4_0, min 0), else `q·d + m`. The codes and the (exactly widened) scales are the
    /// checkpoint's, so the values are too.
    Q4Lanes {
        data: Vec<u8>,
        offset8: bool,
    },
    /// Q4_0/Q4_1/Q8_0 re-laid for the integer dot kernels (`Quant::q8_dot`), which read them
    /// against 8-bit activations as the formats intend. First every row's u8 codes (Q8_0's each
    /// `q + 128`), row after row, where [`DotFmt::code_at`] puts them: groups of 16 blocks with
    /// a 4-byte word of every block in each 64-byte vector (so an integer dot instruction sums
    /// 16 blocks' words into 16 lanes and a group needs no shuffles), then the last `nb mod 16`
    /// blocks in pairs, a vector's lanes 0-7 for one block and 8-15 for the other, an odd last
    /// block paired with zero codes. Then every row's f16 block scales and, for Q4_1, its f16
    /// block mins. Value `d·(q − offset) + m`, as the checkpoint's. A
    /// product reads two sequential streams, which the hardware prefetcher follows. The codes
    /// start on a cache line, so a row whose codes are a multiple of 64 bytes (Q8_0 always, Q4
    /// at an even block-pair count) keeps every code load on one line; interleaved with its
    /// scales, a Q8_0 row of 576 values was 612 bytes and most of its loads straddled two.
    Q8Dot {
        fmt: DotFmt,
        data: Lines,
    },
}

static INT8_ACTIVATIONS: AtomicU8 = AtomicU8::new(UNSET);
const UNSET: u8 = 2;

/// Whether weights loaded from now on are read against 8-bit activations where the integer dot
/// kernels run (the default, as llama.cpp reads these formats), or against f32 activations, whose
/// products are those of the f32 weights up to rounding (`BITUNE_F32_ACTIVATIONS=1` sets the
/// default to this). Decoding logits move by about 0.25 RMS with 8-bit activations on the default
/// model (llama.cpp: 0.28; `tests/int8_decode.rs`).
pub fn use_int8_activations(on: bool) {
    INT8_ACTIVATIONS.store(on as u8, Ordering::Relaxed);
}

/// Whether this processor runs the integer dot kernels (AVX-512 VNNI).
pub fn int8_dot_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return vnni::available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

fn int8_activations() -> bool {
    match INT8_ACTIVATIONS.load(Ordering::Relaxed) {
        UNSET => {
            let on = std::env::var_os("BITUNE_F32_ACTIVATIONS").is_none_or(|v| v == "0");
            use_int8_activations(on);
            on
        }
        v => v == 1,
    }
}

/// Which ggml format a [`Quant::Q8Dot`] holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DotFmt {
    Q4_0,
    Q4_1,
    Q8_0,
}

impl DotFmt {
    /// What the u8 codes are offset by (Q8_0's signed codes are stored `q + 128`).
    fn offset(self) -> i32 {
        match self {
            DotFmt::Q4_0 => 8,
            DotFmt::Q4_1 => 0,
            DotFmt::Q8_0 => 128,
        }
    }
    /// Writes ggml blocks of this format (rows of `cols` values) into `out`, zeroed and
    /// `rows · row_bytes` long, as [`Quant::Q8Dot`] holds them: every row's codes, then every
    /// row's scales (and mins).
    pub(in crate::backend::cpu) fn relay(self, bytes: &[u8], cols: usize, out: &mut [u8]) {
        let nb = cols / 32;
        let (bsz, has_min) = self.ggml_block();
        let rows = bytes.len() / (nb * bsz).max(1);
        let (code_row, half_row) = (self.code_row(nb), self.half_row(nb));
        let (codes, halves) = out[..rows * self.row_bytes(nb)].split_at_mut(rows * code_row);
        for ((row, out), halves) in bytes
            .chunks_exact(nb * bsz)
            .zip(codes.chunks_exact_mut(code_row))
            .zip(halves.chunks_exact_mut(half_row))
        {
            for (b, blk) in row.chunks_exact(bsz).enumerate() {
                halves[2 * b..2 * b + 2].copy_from_slice(&blk[..2]);
                if has_min {
                    halves[2 * (nb + b)..2 * (nb + b) + 2].copy_from_slice(&blk[2..4]);
                }
                for j in 0..32 {
                    let (at, high) = self.code_at(nb, b, j);
                    if self.nibbles() {
                        let c = &blk[bsz - 16..];
                        let q = if j < 16 { c[j] & 0xF } else { c[j - 16] >> 4 };
                        out[at] |= if high { q << 4 } else { q };
                    } else {
                        out[at] = blk[2 + j] ^ 0x80;
                    }
                }
            }
        }
    }
    /// Whether the codes are nibbles (Q4_0, Q4_1) rather than bytes.
    pub(in crate::backend::cpu) fn nibbles(self) -> bool {
        self != DotFmt::Q8_0
    }
    /// Code bytes of one row of `nb` blocks.
    fn code_row(self, nb: usize) -> usize {
        nb.div_ceil(2) * if self.nibbles() { 32 } else { 64 }
    }
    /// Where code `j` of block `b` sits in a row's codes: the byte, and whether it is that
    /// byte's high nibble. In a whole group of [`GROUP`] blocks, 4-byte word `w` of block `l`
    /// is word `16w + l` of the group's logical vectors ([`Q8Rows::qg`] the same); Q4 folds
    /// logical vectors 4-7 into the high nibbles of 0-3. Past the groups, pairs: Q4 byte `j` of
    /// a 32-byte pair holds code `j` of its even block low, of its odd block high; Q8_0 a
    /// 64-byte pair holds the even block's 32 codes, then the odd one's.
    pub fn code_at(self, nb: usize, b: usize, j: usize) -> (usize, bool) {
        let (g, l, w, i) = (b / GROUP, b % GROUP, j / 4, j % 4);
        if g < nb / GROUP {
            let group_bytes = GROUP * if self.nibbles() { 16 } else { 32 };
            let v = if self.nibbles() { w % 4 } else { w };
            (
                g * group_bytes + (GROUP * v + l) * 4 + i,
                self.nibbles() && w >= 4,
            )
        } else if self.nibbles() {
            (b / 2 * 32 + j, b % 2 == 1)
        } else {
            (b / 2 * 64 + 32 * (b % 2) + j, false)
        }
    }
    /// Bytes of one row's f16 scales and mins.
    fn half_row(self, nb: usize) -> usize {
        let (_, min) = self.ggml_block();
        2 * nb * if min { 2 } else { 1 }
    }
    /// Bytes of one row of `nb` blocks: codes, scales, mins.
    pub(in crate::backend::cpu) fn row_bytes(self, nb: usize) -> usize {
        self.code_row(nb) + self.half_row(nb)
    }
    /// Where row `r`'s scales (then mins) start in `data`, which holds rows of `nb` blocks.
    fn halves_at(self, data_len: usize, nb: usize, r: usize) -> usize {
        let rows = data_len / self.row_bytes(nb);
        rows * self.code_row(nb) + r * self.half_row(nb)
    }
    /// The codes of row `r` in `data`.
    fn codes(self, data: &[u8], nb: usize, r: usize) -> &[u8] {
        &data[r * self.code_row(nb)..(r + 1) * self.code_row(nb)]
    }
    /// The f16 scale (`k` 0) or min (`k` 1) of block `b` of row `r` in `data`.
    fn half(self, data: &[u8], nb: usize, r: usize, k: usize, b: usize) -> f32 {
        f16_le(&data[self.halves_at(data.len(), nb, r) + 2 * (k * nb + b)..])
    }
    /// The ggml block: bytes, and whether it has a min after the scale.
    fn ggml_block(self) -> (usize, bool) {
        match self {
            DotFmt::Q4_0 => (18, false),
            DotFmt::Q4_1 => (20, true),
            DotFmt::Q8_0 => (34, false),
        }
    }
}

/// Where value `i` (0..32) of a block sits in [`Quant::Q4Lanes`]' 16 code bytes: 32-bit
/// word `w`, nibble `n`. Value `8j + l` is nibble `2j` of word `l` for `l < 4`, nibble `2j + 1`
/// of word `l − 4` otherwise, so one 128-bit load broadcast to both halves of a 256-bit
/// register, shifted per lane by `8j` (low half) or `8j + 4` (high half) and masked, gives
/// values `8j..8j+8` in order with shifts and ands instead of byte shuffles (see `avx2`).
pub fn lane_nibble(i: usize) -> (usize, usize) {
    let (j, l) = (i / 8, i % 8);
    if l < 4 {
        (l, 2 * j)
    } else {
        (l - 4, 2 * j + 1)
    }
}

fn q4lanes_code(blk: &[u8], i: usize) -> u8 {
    let (w, n) = lane_nibble(i);
    let word = u32::from_le_bytes(blk[8 + 4 * w..12 + 4 * w].try_into().expect("4 bytes"));
    ((word >> (4 * n)) & 0xF) as u8
}

/// Largest row count served by the compact kernels; larger matmuls go to the f32 GEMM.
pub const MAX_QUANT_ROWS: usize = 8;

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

impl Quant {
    /// A checkpoint's compact form of a weight of `cols` columns, as this processor reads it
    /// fastest (see [`Quant::for_this_cpu`]).
    pub fn for_cpu(q: QuantForm, cols: usize) -> Self {
        match q {
            QuantForm::Q4_0(v) => Quant::Q4_0(v),
            QuantForm::Q4_1(v) => Quant::Q4_1(v),
            QuantForm::Q8_0(v) => Quant::Q8_0(v),
            QuantForm::Bf16(v) => Quant::Bf16(v),
            QuantForm::F16(v) => Quant::F16(v),
        }
        .for_this_cpu(cols)
    }

    /// Bytes (or u16 elements for bf16/f16) of one row of `cols` values.
    pub fn row_units(&self, cols: usize) -> usize {
        let nb = cols / 32;
        match self {
            Quant::Q4_0(_) => nb * 18,
            Quant::Q4_1(_) => nb * 20,
            Quant::Q8_0(_) => nb * 34,
            Quant::Q4Lanes { .. } => nb * 24,
            Quant::Q8Dot { fmt, .. } => fmt.row_bytes(nb),
            Quant::Bf16(_) | Quant::F16(_) => cols,
        }
    }

    /// Bytes a product reads of a `[rows, cols]` matrix in this form (a u16 element is two).
    pub fn bytes(&self, rows: usize, cols: usize) -> u64 {
        let unit = match self {
            Quant::Bf16(_) | Quant::F16(_) => 2,
            _ => 1,
        };
        (rows * self.row_units(cols) * unit) as u64
    }

    /// The form this processor's kernels read fastest: Q4_0/Q4_1/Q8_0 become [`Quant::Q8Dot`]
    /// where the AVX-512 VNNI kernels run, Q4_0/Q4_1 [`Quant::Q4Lanes`] where only the AVX2
    /// ones do; everything else is kept.
    pub fn for_this_cpu(self, cols: usize) -> Self {
        #[cfg(target_arch = "x86_64")]
        if vnni::available() && int8_activations() && cols.is_multiple_of(32) {
            return match self {
                Quant::Q4_0(v) => Self::q8_dot(&v, DotFmt::Q4_0, cols),
                Quant::Q4_1(v) => Self::q8_dot(&v, DotFmt::Q4_1, cols),
                Quant::Q8_0(v) => Self::q8_dot(&v, DotFmt::Q8_0, cols),
                other => other,
            };
        }
        #[cfg(target_arch = "x86_64")]
        if avx2::available() {
            return match self {
                Quant::Q4_0(v) => Self::q4_lanes(&v, false),
                Quant::Q4_1(v) => Self::q4_lanes(&v, true),
                other => other,
            };
        }
        self
    }

    /// Re-lays ggml Q4_0 (`q4_1` false) or Q4_1 blocks as [`Quant::Q4Lanes`].
    pub fn q4_lanes(bytes: &[u8], q4_1: bool) -> Self {
        let bsz = if q4_1 { 20 } else { 18 };
        let mut data = Vec::with_capacity(bytes.len() / bsz * 24);
        for blk in bytes.chunks_exact(bsz) {
            let d = f16_le(blk);
            let (m, codes) = if q4_1 {
                (f16_le(&blk[2..]), &blk[4..20])
            } else {
                (0.0, &blk[2..18])
            };
            data.extend_from_slice(&d.to_le_bytes());
            data.extend_from_slice(&m.to_le_bytes());
            let mut words = [0u32; 4];
            for i in 0..32 {
                let q = if i < 16 {
                    codes[i] & 0xF
                } else {
                    codes[i - 16] >> 4
                };
                let (w, n) = lane_nibble(i);
                words[w] |= (q as u32) << (4 * n);
            }
            words
                .iter()
                .for_each(|w| data.extend_from_slice(&w.to_le_bytes()));
        }
        Quant::Q4Lanes {
            data,
            offset8: !q4_1,
        }
    }

    /// Re-lays ggml blocks of `fmt` (rows of `cols` values) as [`Quant::Q8Dot`].
    pub fn q8_dot(bytes: &[u8], fmt: DotFmt, cols: usize) -> Self {
        let nb = cols / 32;
        let rows = bytes.len() / (nb * fmt.ggml_block().0).max(1);
        let mut data = Lines::zeros(rows * fmt.row_bytes(nb));
        fmt.relay(bytes, cols, &mut data);
        Quant::Q8Dot { fmt, data }
    }

    /// Whether this weight can serve a `[rows, cols]` matrix.
    pub fn fits(&self, rows: usize, cols: usize) -> bool {
        let (blocked, len) = match self {
            Quant::Q4_0(v) | Quant::Q4_1(v) | Quant::Q8_0(v) | Quant::Q4Lanes { data: v, .. } => {
                (true, v.len())
            }
            Quant::Q8Dot { data, .. } => (true, data.len()),
            Quant::Bf16(v) | Quant::F16(v) => (false, v.len()),
        };
        (!blocked || cols.is_multiple_of(32)) && len == rows * self.row_units(cols)
    }

    /// `y[m, rows] (+)= x[m, cols] · Wᵀ` for a few rows of `x` (at most [`MAX_QUANT_ROWS`]):
    /// every weight block is decoded once and dotted with every input row. With `lora` (one
    /// row, not accumulating), also `+ s·B·A·x`: each chunk of output rows adds its part of the
    /// adapter once its results are in, `s·A·x` made by the first chunk to start.
    // The product's operands and shape, plus the adapter fused into its pass.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul(
        &self,
        y: &mut [f32],
        x: &[f32],
        m: usize,
        rows: usize,
        cols: usize,
        accumulate: bool,
        lora: Option<&LoraPack>,
    ) {
        assert!(
            m <= MAX_QUANT_ROWS,
            "quant matmul serves at most {MAX_QUANT_ROWS} rows"
        );
        assert!(
            self.fits(rows, cols),
            "quant weight is not [{rows}, {cols}]"
        );
        assert!(
            x.len() >= m * cols && y.len() >= m * rows,
            "quant matmul: short buffers"
        );
        assert!(
            lora.is_none_or(|p| m == 1 && !accumulate && p.n() == rows && p.k() == cols),
            "a fused adapter serves one row of a product it writes, of its own shape"
        );
        // About four chunks per thread (the small K/V projections too), at least 16 rows each,
        // starting where a block of the 8-bit adapter's B does.
        let chunk = rows
            .div_ceil(4 * rayon::current_num_threads())
            .next_multiple_of(BT_BLOCK)
            .max(16);
        // Only a fused product has a projection to share (a base one skips the 300-byte clear).
        let shared = lora.map(|_| SharedXa::default());
        // Per-block sums of x for the min term of Q4_1 in lane layout (see `avx2`).
        let xsum: Vec<f32> = match self {
            Quant::Q4Lanes { offset8: false, .. } if cols.is_multiple_of(32) => x[..m * cols]
                .chunks_exact(32)
                .map(|c| c.iter().sum())
                .collect(),
            _ => vec![],
        };
        // The activations in 8 bits, once for every chunk, where the integer kernels read them.
        let q8 = match self {
            Quant::Q8Dot { fmt, .. } => Some(Q8Rows::quantize(x, m, cols, fmt.offset())),
            _ => None,
        };
        let q8 = q8.as_ref();
        let part = |(c, out): (usize, &mut [f32])| {
            let r0 = c * chunk;
            let r1 = r0 + out.len() / m;
            let fused = lora.zip(shared.as_ref());
            if let Some((p, shared)) = fused {
                // The chunk's B rows are needed after its weight rows: asked for now, they are
                // there by then.
                p.prefetch_b(r0, r1);
                // The first chunk makes `s·A·x` before its rows, while the other threads
                // stream theirs: nobody waits on it later. Rayon's calling thread runs chunk 0
                // before it splits off the rest, so it is the first to start; a flag taken by
                // whichever chunk starts first cost a cache line passed between the cores on
                // every chunk.
                if c == 0 {
                    p.prefetch_a();
                    let x8 = q8.expect("a fused adapter is read with quantised activations");
                    shared.fill(|xa| p.project_into(x8, xa));
                }
            }
            rows_dispatch(self, r0, r1, cols, x, &xsum, q8, m, out);
            if let Some((p, shared)) = fused {
                if let Some(xa) = shared.wait() {
                    p.expand(out, xa, r0);
                }
            }
        };
        if m == 1 && !accumulate {
            // One input row: y is `[rows]`, so each chunk writes its own slice directly.
            y[..rows].par_chunks_mut(chunk).enumerate().for_each(part);
            return;
        }
        // Weight-row major `[rows, m]`, then added or copied into y's `[m, rows]`.
        let mut t = vec![0f32; rows * m];
        t.par_chunks_mut(chunk * m).enumerate().for_each(part);
        for (r, v) in t.chunks_exact(m).enumerate() {
            for (i, &v) in v.iter().enumerate() {
                let dst = &mut y[i * rows + r];
                *dst = if accumulate { *dst + v } else { v };
            }
        }
    }
}

/// Runs the AVX-512 VNNI (for [`Quant::Q8Dot`], on `q8`, the quantised `x`) or AVX2 kernel for
/// this format and `m` when the processor has it, else the portable loop. `out` is `[r1 − r0, m]`
/// (weight-row major).
// The signature of the per-format kernels it picks among (weight rows, activations and their
// block sums, output), which the kernels take as plain slices for their `target_feature` bodies.
#[allow(clippy::too_many_arguments)]
fn rows_dispatch(
    w: &Quant,
    r0: usize,
    r1: usize,
    cols: usize,
    x: &[f32],
    xsum: &[f32],
    q8: Option<&Q8Rows>,
    m: usize,
    out: &mut [f32],
) {
    if let Quant::Q8Dot { fmt, data } = w {
        let a = q8.expect("Q8Dot is read with quantised activations");
        #[cfg(target_arch = "x86_64")]
        if vnni::available() {
            use vnni::rows;
            type Kernel = unsafe fn(&[u8], usize, usize, &Q8Rows, &mut [f32]);
            fn pick<const NIB: bool, const MIN: bool, const OFF: bool>(m: usize) -> Kernel {
                match m {
                    1 => rows::<NIB, MIN, OFF, 1>,
                    2 => rows::<NIB, MIN, OFF, 2>,
                    3 => rows::<NIB, MIN, OFF, 3>,
                    4 => rows::<NIB, MIN, OFF, 4>,
                    5 => rows::<NIB, MIN, OFF, 5>,
                    6 => rows::<NIB, MIN, OFF, 6>,
                    7 => rows::<NIB, MIN, OFF, 7>,
                    _ => rows::<NIB, MIN, OFF, 8>,
                }
            }
            let kernel = match fmt {
                DotFmt::Q4_0 => pick::<true, false, true>(m),
                DotFmt::Q4_1 => pick::<true, true, false>(m),
                DotFmt::Q8_0 => pick::<false, false, true>(m),
            };
            // SAFETY: `available()` checked AVX-512 F/BW/VL/VNNI; `matmul` asserted that the
            // weight `fits` `[rows, cols]` (rows of `fmt.row_bytes`), so rows `r0..r1` lie
            // inside it; `a` quantised the `m` rows of `x`; `out` is `(r1 − r0)·m`; `pick`
            // chose the kernel for exactly `m` rows and this format.
            unsafe { kernel(data, r0, r1, a, out) };
            return;
        }
        return q8_dot_portable(*fmt, data, r0, r1, a, m, out);
    }
    #[cfg(target_arch = "x86_64")]
    if avx2::available() && cols.is_multiple_of(32) {
        use avx2::{rows, Bf16, Q4Lanes, F16, Q8_0};
        type Kernel = unsafe fn(&[u8], usize, usize, usize, &[f32], &[f32], &mut [f32]);
        fn pick<F: avx2::Block>(m: usize) -> Kernel {
            match m {
                1 => rows::<F, 1>,
                2 => rows::<F, 2>,
                3 => rows::<F, 3>,
                4 => rows::<F, 4>,
                5 => rows::<F, 5>,
                6 => rows::<F, 6>,
                7 => rows::<F, 7>,
                _ => rows::<F, 8>,
            }
        }
        fn bytes(v: &[u16]) -> &[u8] {
            // SAFETY: u8 has no alignment or validity requirement, and the byte slice covers
            // exactly the u16 slice's memory for the same lifetime. x86-64 is little-endian,
            // the byte order the kernels read.
            unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), v.len() * 2) }
        }
        let (kernel, data): (Kernel, &[u8]) = match w {
            // `for_this_cpu` re-lays ggml Q4 blocks wherever this kernel set runs.
            Quant::Q4_0(_) | Quant::Q4_1(_) => {
                return rows_kernel(w, r0, r1, cols, x, m, out);
            }
            Quant::Q8_0(v) => (pick::<Q8_0>(m), v),
            Quant::Bf16(v) => (pick::<Bf16>(m), bytes(v)),
            Quant::F16(v) => (pick::<F16>(m), bytes(v)),
            Quant::Q4Lanes {
                data,
                offset8: true,
            } => (pick::<Q4Lanes<true>>(m), data),
            Quant::Q4Lanes {
                data,
                offset8: false,
            } => (pick::<Q4Lanes<false>>(m), data),
            Quant::Q8Dot { .. } => unreachable!("read above"),
        };
        // SAFETY: `available()` checked AVX2/FMA/F16C; `matmul` asserted that the weight is
        // `[rows, cols]` (so rows `r0..r1` lie inside it), that `x` holds `m` rows of `cols`,
        // sized `out` `(r1 − r0)·m` and, for the one format with a min (Q4_1 lanes), `xsum`
        // `m·cols/32`; `pick` chose the kernel for exactly `m` rows.
        unsafe { kernel(data, r0, r1, cols, x, xsum, out) };
        return;
    }
    rows_kernel(w, r0, r1, cols, x, m, out)
}

/// The integer dot of [`Quant::Q8Dot`] weight rows `r0..r1` with quantised activations, as the
/// VNNI kernel computes it (up to the order of its f32 additions): the reference it is tested
/// against, and the loop where it does not run.
fn q8_dot_portable(
    fmt: DotFmt,
    data: &[u8],
    r0: usize,
    r1: usize,
    a: &Q8Rows,
    m: usize,
    out: &mut [f32],
) {
    let nb = a.nb;
    let (qs, ss) = (a.q_stride(), a.s_stride());
    for r in r0..r1 {
        let row = fmt.codes(data, nb, r);
        for i in 0..m {
            let (mut acc, mut macc) = (0f32, 0f32);
            for b in 0..nb {
                let dw = fmt.half(data, nb, r, 0, b);
                // Formats without an offset take none: `a` may serve another weight's.
                let mut isum = if fmt.offset() == 0 {
                    0
                } else {
                    a.init[i * ss + b]
                };
                for j in 0..32 {
                    let q = dot_code(fmt, nb, row, b, j) as i32;
                    isum += q * a.q[i * qs + b * 32 + j] as i32;
                }
                acc += dw * a.d[i * ss + b] * isum as f32;
                if fmt == DotFmt::Q4_1 {
                    macc += fmt.half(data, nb, r, 1, b) * a.sq[i * ss + b];
                }
            }
            out[(r - r0) * m + i] = acc + macc;
        }
    }
}

/// The u8 code of value `j` of block `b` in the codes of a [`Quant::Q8Dot`] row of `nb` blocks.
#[inline(always)]
fn dot_code(fmt: DotFmt, nb: usize, row: &[u8], b: usize, j: usize) -> u8 {
    match fmt.code_at(nb, b, j) {
        (at, false) if fmt.nibbles() => row[at] & 0xF,
        (at, true) => row[at] >> 4,
        (at, false) => row[at],
    }
}

/// Widens row `r` of `w` into `out`: per block a scale (and min) and 16 or 32 integer codes,
/// written with fixed-size arrays so the conversion vectorises.
#[inline(always)]
fn widen_row(w: &Quant, r: usize, cols: usize, out: &mut [f32]) {
    let u = w.row_units(cols);
    match w {
        Quant::Q4_1(v) => {
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
        Quant::Q4_0(v) => {
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
        Quant::Q4Lanes { data, offset8 } => {
            for (blk, o) in data[r * u..(r + 1) * u]
                .chunks_exact(24)
                .zip(out.chunks_exact_mut(32))
            {
                let d = f32::from_le_bytes(blk[..4].try_into().expect("f32 scale"));
                let m = f32::from_le_bytes(blk[4..8].try_into().expect("f32 min"));
                for (i, oi) in o.iter_mut().enumerate() {
                    let q = q4lanes_code(blk, i) as f32;
                    *oi = if *offset8 { (q - 8.0) * d } else { q * d + m };
                }
            }
        }
        Quant::Q8_0(v) => {
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
        Quant::Q8Dot { fmt, data } => {
            let nb = cols / 32;
            let row = fmt.codes(data, nb, r);
            for (b, o) in out.chunks_exact_mut(32).enumerate() {
                let dw = fmt.half(data, nb, r, 0, b);
                for (j, oj) in o.iter_mut().enumerate() {
                    let q = dot_code(*fmt, nb, row, b, j) as i32;
                    *oj = match fmt {
                        DotFmt::Q4_1 => q as f32 * dw + fmt.half(data, nb, r, 1, b),
                        _ => (q - fmt.offset()) as f32 * dw,
                    };
                }
            }
        }
        Quant::Bf16(v) => {
            for (o, &bits) in out.iter_mut().zip(&v[r * u..(r + 1) * u]) {
                *o = f32::from_bits((bits as u32) << 16);
            }
        }
        Quant::F16(v) => {
            for (o, &bits) in out.iter_mut().zip(&v[r * u..(r + 1) * u]) {
                *o = f16_le(&bits.to_le_bytes());
            }
        }
    }
}

/// The portable kernel: widen each weight row into an L1-resident buffer, then dot it with every
/// input row.
fn rows_kernel(w: &Quant, r0: usize, r1: usize, cols: usize, x: &[f32], m: usize, out: &mut [f32]) {
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
    use crate::rng::Rng;

    /// Random blocks of `bsz` bytes whose scale (and min) are `scales`, cycled: ordinary,
    /// negative and subnormal f16 values, so the f16 widening is exercised on all of them.
    fn blocks(n: usize, bsz: usize, with_min: bool, rng: &mut Rng) -> Vec<u8> {
        let scales = [0.01f32, -0.037, 3.0e-6, 1.5];
        let mut v: Vec<u8> = (0..n * bsz).map(|_| rng.below(256) as u8).collect();
        for (i, blk) in v.chunks_exact_mut(bsz).enumerate() {
            let d = f16::from_f32(scales[i % 4]);
            blk[..2].copy_from_slice(&d.to_le_bytes());
            if with_min {
                let m = f16::from_f32(-scales[(i + 1) % 4] * 4.0);
                blk[2..4].copy_from_slice(&m.to_le_bytes());
            }
        }
        v
    }

    fn formats(rows: usize, cols: usize, rng: &mut Rng) -> Vec<Quant> {
        let nb = rows * cols / 32;
        let halves = |rng: &mut Rng, f: fn(f32) -> u16| -> Vec<u16> {
            (0..rows * cols)
                .map(|_| f(rng.uniform(-2.0, 2.0)))
                .collect()
        };
        let (q40, q41) = (blocks(nb, 18, false, rng), blocks(nb, 20, true, rng));
        let q80 = blocks(nb, 34, false, rng);
        vec![
            Quant::q4_lanes(&q40, false),
            Quant::q4_lanes(&q41, true),
            Quant::q8_dot(&q40, DotFmt::Q4_0, cols),
            Quant::q8_dot(&q41, DotFmt::Q4_1, cols),
            Quant::q8_dot(&q80, DotFmt::Q8_0, cols),
            Quant::Q4_0(q40),
            Quant::Q4_1(q41),
            Quant::Q8_0(q80),
            Quant::Bf16(halves(rng, |x| bf16::from_f32(x).to_bits())),
            Quant::F16(halves(rng, |x| f16::from_f32(x).to_bits())),
        ]
    }

    fn name(p: &Quant) -> &'static str {
        match p {
            Quant::Q4_0(_) => "Q4_0",
            Quant::Q4_1(_) => "Q4_1",
            Quant::Q8_0(_) => "Q8_0",
            Quant::Bf16(_) => "bf16",
            Quant::F16(_) => "f16",
            Quant::Q4Lanes { offset8: true, .. } => "Q4_0 lanes",
            Quant::Q4Lanes { offset8: false, .. } => "Q4_1 lanes",
            Quant::Q8Dot { fmt, .. } => match fmt {
                DotFmt::Q4_0 => "Q4_0 for the integer dot",
                DotFmt::Q4_1 => "Q4_1 for the integer dot",
                DotFmt::Q8_0 => "Q8_0 for the integer dot",
            },
        }
    }

    fn widened(p: &Quant, rows: usize, cols: usize) -> Vec<f32> {
        let mut w = vec![0f32; rows * cols];
        for r in 0..rows {
            widen_row(p, r, cols, &mut w[r * cols..(r + 1) * cols]);
        }
        w
    }

    /// Dotting with one-hot rows reads single weights back: the kernels (AVX-512 VNNI or AVX2
    /// where this processor has them, else the portable loops) decode every value like the
    /// scalar reference, for every row count the dispatch distinguishes. The f32 kernels return
    /// it bit for bit. The integer dot reads `x` in 8 bits: a one-hot `127/128` quantises
    /// exactly (scale 2⁻⁷, code 127), so it returns `127/128·w` up to the rounding of its
    /// per-lane products, thousands of times finer than one code step of any weight.
    #[test]
    fn kernels_decode_every_weight_exactly() {
        let (rows, cols) = (70, 32 * 17);
        let mut rng = Rng::new(4);
        for p in formats(rows, cols, &mut rng) {
            let hot = if matches!(p, Quant::Q8Dot { .. }) {
                127.0 / 128.0
            } else {
                1.0
            };
            let w = widened(&p, rows, cols);
            for m in 1..=MAX_QUANT_ROWS {
                for c0 in (0..cols).step_by(m) {
                    let mut x = vec![0f32; m * cols];
                    let picked: Vec<usize> = (0..m).map(|i| (c0 + i) % cols).collect();
                    for (i, &c) in picked.iter().enumerate() {
                        x[i * cols + c] = hot;
                    }
                    let mut y = vec![f32::NAN; m * rows];
                    p.matmul(&mut y, &x, m, rows, cols, false, None);
                    for (i, &c) in picked.iter().enumerate() {
                        for r in 0..rows {
                            let (got, w) = (y[i * rows + r], w[r * cols + c]);
                            if let Quant::Q8Dot { fmt, data } = &p {
                                // The offset `−o·127`, the codes' products and Q4_1's min term
                                // are rounded apart: a few ulps of `((o + 16)·d + |m|)·x`.
                                let (nb, b) = (cols / 32, c / 32);
                                let half = |k| fmt.half(data, nb, r, k, b).abs() as f64;
                                let min = if *fmt == DotFmt::Q4_1 { half(1) } else { 0.0 };
                                let scale = (fmt.offset() + 16) as f64 * half(0) + min;
                                let want = hot as f64 * w as f64;
                                let tol = 2f64.powi(-21) * scale * hot as f64;
                                let ok = (got as f64 - want).abs() <= tol;
                                assert!(ok, "{} m={m} r={r} c={c}: {got} vs {want}", name(&p));
                            } else {
                                // `==`: a sum starting at +0 turns a −0 weight into +0.
                                assert_eq!(got, w, "{} m={m} r={r} c={c}", name(&p));
                            }
                        }
                    }
                }
            }
        }
    }

    /// How far quantising `x` to 8 bits per block of 32 can move `w·x`: each value by at most
    /// half its block's step `amax/127`.
    fn q8_error_bound(w: &[f32], x: &[f32]) -> f64 {
        w.chunks(32)
            .zip(x.chunks(32))
            .map(|(wb, xb)| {
                let amax = xb.iter().fold(0f32, |s, v| s.max(v.abs())) as f64;
                let step = amax / 127.0;
                wb.iter().map(|&v| v.abs() as f64).sum::<f64>() * step * 0.5
            })
            .sum::<f64>()
            * 1.001
    }

    /// The integer dot kernels against their portable loop (the same integer sums, f32 additions
    /// in another order), and the AVX-512 quantisation of x against the portable one (bit for
    /// bit): odd block counts (a pair padded with zeros), more than one window of 16 blocks,
    /// every row count, accumulating or not. Where VNNI does not run both sides are the
    /// portable loops, and the check is that of `quant_matmul_equals_widened_f32`.
    #[test]
    fn integer_dot_kernels_equal_their_portable_loop() {
        let mut rng = Rng::new(9);
        for (rows, cols) in [(37, 96), (21, 32 * 19), (19, 32 * 48)] {
            let nb = rows * cols / 32;
            let q40 = blocks(nb, 18, false, &mut rng);
            let q41 = blocks(nb, 20, true, &mut rng);
            let q80 = blocks(nb, 34, false, &mut rng);
            for (bytes, fmt) in [
                (q40, DotFmt::Q4_0),
                (q41, DotFmt::Q4_1),
                (q80, DotFmt::Q8_0),
            ] {
                let p = Quant::q8_dot(&bytes, fmt, cols);
                assert!(p.fits(rows, cols) && !p.fits(rows, cols + 32));
                let Quant::Q8Dot { data, .. } = &p else {
                    unreachable!()
                };
                for m in 1..=MAX_QUANT_ROWS {
                    let mut x: Vec<f32> = (0..m * cols).map(|_| rng.uniform(-1.0, 1.0)).collect();
                    // An all-zero block: scale 0, codes 0.
                    x[32..64].iter_mut().for_each(|v| *v = 0.0);
                    let a = Q8Rows::quantize(&x, m, cols, fmt.offset());
                    let b = Q8Rows::quantize_portable(&x, m, cols, fmt.offset());
                    let parts =
                        |a: &Q8Rows| (a.q.clone(), a.d.clone(), a.init.clone(), a.sq.clone());
                    assert_eq!(parts(&a), parts(&b), "quantised x");
                    let y0: Vec<f32> = (0..m * rows).map(|_| rng.uniform(-1.0, 1.0)).collect();
                    let mut want = vec![0f32; rows * m];
                    q8_dot_portable(fmt, data, 0, rows, &b, m, &mut want);
                    for accumulate in [false, true] {
                        let mut y = y0.clone();
                        p.matmul(&mut y, &x, m, rows, cols, accumulate, None);
                        for i in 0..m {
                            for r in 0..rows {
                                let base = if accumulate { y0[i * rows + r] } else { 0.0 };
                                let want = want[r * m + i] + base;
                                let got = y[i * rows + r];
                                let tol = 1e-5 * (cols as f32).sqrt() * want.abs().max(1.0);
                                assert!(
                                    (got - want).abs() <= tol,
                                    "{fmt:?} {rows}x{cols} m={m} acc={accumulate} r={r}: {got} vs {want}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// The re-laid forms (Q4 lanes, the integer dot's pairs) hold every value of the ggml blocks.
    #[test]
    fn relaid_forms_keep_every_value() {
        let (rows, cols) = (3, 64);
        let mut rng = Rng::new(6);
        let f = formats(rows, cols, &mut rng);
        let mut seen = [false; 32];
        for i in 0..32 {
            let (w, n) = lane_nibble(i);
            assert!(w < 4 && n < 8 && !std::mem::replace(&mut seen[w * 8 + n], true));
        }
        for (lanes, orig) in [(0, 5), (1, 6), (2, 5), (3, 6), (4, 7)].map(|(a, b)| (&f[a], &f[b])) {
            assert_eq!(
                widened(lanes, rows, cols),
                widened(orig, rows, cols),
                "{}",
                name(lanes)
            );
            assert!(lanes.fits(rows, cols));
        }
    }

    #[test]
    fn quant_matmul_equals_widened_f32() {
        let (rows, cols) = (70, 32 * 17);
        let mut rng = Rng::new(5);
        for p in formats(rows, cols, &mut rng) {
            assert!(p.fits(rows, cols) && !p.fits(rows + 1, cols));
            let w = widened(&p, rows, cols);
            for m in 1..=MAX_QUANT_ROWS {
                let x: Vec<f32> = (0..m * cols).map(|_| rng.uniform(-1.0, 1.0)).collect();
                let y0: Vec<f32> = (0..m * rows).map(|_| rng.uniform(-1.0, 1.0)).collect();
                for accumulate in [false, true] {
                    let mut y = y0.clone();
                    p.matmul(&mut y, &x, m, rows, cols, accumulate, None);
                    let mut portable = vec![0f32; rows * m];
                    rows_kernel(&p, 0, rows, cols, &x, m, &mut portable);
                    for i in 0..m {
                        for r in 0..rows {
                            let dot: f64 = (0..cols)
                                .map(|c| w[r * cols + c] as f64 * x[i * cols + c] as f64)
                                .sum();
                            let want = dot
                                + if accumulate {
                                    y0[i * rows + r] as f64
                                } else {
                                    0.0
                                };
                            let mut tol = 1e-5 * (cols as f64).sqrt() * want.abs().max(1.0);
                            if matches!(p, Quant::Q8Dot { .. }) {
                                tol += q8_error_bound(
                                    &w[r * cols..(r + 1) * cols],
                                    &x[i * cols..(i + 1) * cols],
                                );
                            }
                            let got = y[i * rows + r] as f64;
                            assert!(
                                (got - want).abs() < tol,
                                "{} m={m}: {got} vs {want}",
                                name(&p)
                            );
                            let port = portable[r * m + i] as f64;
                            assert!((port - dot).abs() < tol, "portable {port} vs {dot}");
                        }
                    }
                }
            }
        }
    }
}
