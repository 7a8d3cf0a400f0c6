//! A low-rank adapter in the form decoding reads it ([`LoraPack`]): integer dots, for a weight
//! read against 8-bit activations, its add fused into that weight's matmul over the output rows.
//!
//! A decoding step reads every weight once, so an adapter costs its bytes, and on two threads the
//! few kilobytes each linear adds are read at memory latency, not bandwidth. In f32, rank-8
//! adapters on the seven linears of the default model are 9.8 MB a token against 96 MB of Q4_1
//! weights, and added on one thread after each product they made decoding 11% slower than the
//! base model (`bench`, the states decoding in turn). In 8 bits they are 2.5 MB and cost 4-6%;
//! in 4 bits, 1.4 MB and 2-4%.
//!
//! So the codes are as wide as the weight's ([`CodeBits::for_weight`]): 4 bits on Q4_0/Q4_1,
//! 8 on Q8_0, the adapter then as coarse as the weight it adds to. 4-bit codes move a trained-
//! like update by about a quarter of itself (8-bit: 1.6%), almost all of it B's: an output sums
//! r products where A's errors average over k inputs. The default model's trained Bitune adapter
//! scores the same on the held-out suite either way. `BITUNE_ADAPTER_BITS=8` (or 4) overrides.
//!
//! Both halves are integer dot products (`vpdpbusd`), as the weights' own:
//! - `s·A·x` reads the activations the product already quantised ([`Q8Rows`]). A's codes are
//!   stored offset (`a + 8` in nibbles, `a + 128` in bytes) with a step a block of 32, the
//!   offset taken back out through the blocks' sums, which the quantiser keeps anyway; they are
//!   laid out eight ranks across a vector's lanes, so each lane sums one rank's block and
//!   nothing is reduced across lanes until the end (`project_vnni`).
//! - `B·xa`: B's codes have a scale per rank, which goes into `xa` before its r values are
//!   quantised to 8 bits, and a step per tile of 16 outputs; each tile is then one integer dot
//!   per four ranks and one multiply. A scale per rank rather than per output row keeps B at
//!   r codes a row where row scales added two bytes (a fifth more at rank 8 in 8 bits), and the
//!   tile's step follows the rows' own sizes, which a rank's single scale cannot.
//!
//! Each chunk of the matmul asks for its B rows before it streams its weight rows, and the first
//! chunk asks for A before projecting. Steps are f16 relative to their largest, rounded up, the
//! codes made with the step as stored. The matmul's first chunk projects before its rows while
//! the others stream theirs, and every chunk adds its own rows' `B·xa`
//! ([`super::quant::Quant::matmul`]).

use super::quant::{Lines, Q8Rows};
use half::f16;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU32, Ordering};

/// Outputs per tile of B; the matmul's chunks of output rows start on a multiple.
pub const BT_BLOCK: usize = 16;

/// The largest rank a pack holds (its projection lives on the stack); larger adapters decode
/// through the f32 path.
pub const MAX_RANK: usize = 256;

/// Ranks of A projected together: one per lane of each half of a vector.
const A_GROUP: usize = 8;

/// Where A's code for rank `c` and input `i` is in `a`, and whether it is the high nibble:
/// `[ra / 8, np, V, 16, 4]`, by group of eight ranks, pair of blocks, vector, lane (the rank in
/// the group, plus 8 for the pair's second block), byte. In bytes (`V` 8) vector `w` holds word
/// `w` of the lane's block (its codes `4w..4w + 4`); in nibbles (`V` 4) vector `w` holds word
/// `w` low and word `w + 4` high ([`project_vnni`]).
fn a_code_at(bits: CodeBits, np: usize, c: usize, i: usize) -> (usize, bool) {
    let (blk, w, e) = (i / 32, i % 32 / 4, i % 4);
    let lane = c % A_GROUP + A_GROUP * (blk % 2);
    let (v, high) = match bits {
        CodeBits::Eight => (w, false),
        CodeBits::Four => (w % 4, w >= 4),
    };
    let pair = c / A_GROUP * np + blk / 2;
    ((((pair * bits.a_vectors() + v) * 16 + lane) * 4 + e), high)
}

/// Where A's step for rank `c` and block `blk` is in `ad`: `[ra / 8, np, 16]`, its lane as
/// [`a_code_at`]'s.
fn a_step_at(np: usize, c: usize, blk: usize) -> usize {
    (c / A_GROUP * np + blk / 2) * 16 + c % A_GROUP + A_GROUP * (blk % 2)
}

/// How wide a pack's codes are, and so how many bytes decoding reads of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeBits {
    /// Codes `−7..=7`, stored `q + 8` in nibbles.
    Four,
    /// Codes `−127..=127`, stored `q + 128` in bytes.
    Eight,
}

impl CodeBits {
    /// The width for an adapter on a weight whose own codes are nibbles (Q4_0, Q4_1) or bytes:
    /// as wide as the weight's, unless `BITUNE_ADAPTER_BITS` (4 or 8) says otherwise.
    pub fn for_weight(nibbles: bool) -> Self {
        use std::sync::OnceLock;
        static CHOSEN: OnceLock<Option<CodeBits>> = OnceLock::new();
        let chosen = CHOSEN.get_or_init(|| {
            let v = std::env::var("BITUNE_ADAPTER_BITS").ok()?;
            let bits = Self::parse(&v);
            if bits.is_none() {
                eprintln!(
                    "warning: BITUNE_ADAPTER_BITS={v} is neither 4 nor 8: adapter codes follow \
                     the weights' width"
                );
            }
            bits
        });
        chosen.unwrap_or(if nibbles {
            CodeBits::Four
        } else {
            CodeBits::Eight
        })
    }

    /// `"4"` or `"8"`.
    pub fn parse(v: &str) -> Option<Self> {
        match v.trim() {
            "4" => Some(CodeBits::Four),
            "8" => Some(CodeBits::Eight),
            _ => None,
        }
    }

    /// The largest code: codes are `round(v/d)` in `−max..=max`.
    fn max(self) -> f32 {
        match self {
            CodeBits::Four => 7.0,
            CodeBits::Eight => 127.0,
        }
    }
    /// What stored codes add to the signed ones.
    fn offset(self) -> i32 {
        match self {
            CodeBits::Four => 8,
            CodeBits::Eight => 128,
        }
    }
    /// Ranks a 64-byte vector of B's tile holds for each of its 16 outputs.
    fn tile_ranks(self) -> usize {
        match self {
            CodeBits::Four => 8,
            CodeBits::Eight => 4,
        }
    }
    /// 64-byte vectors of A's codes for a group of eight ranks on a pair of blocks (`V` in
    /// [`a_code_at`]): 512 codes in bytes or nibbles.
    fn a_vectors(self) -> usize {
        match self {
            CodeBits::Four => 4,
            CodeBits::Eight => 8,
        }
    }
    /// Stored form of a code (the buffer's byte for Eight, a nibble for Four).
    fn stored(self, q: i8) -> u8 {
        (q as i16 + self.offset() as i16) as u8
    }
}

/// One linear's adapter `y += s·B·A·x` (A `[r, k]`, B `[n, r]`) in [`CodeBits`] codes, in one
/// buffer of five sections, each starting on a cache line (the first three are what projecting
/// reads):
/// - A, blocks of 32 with an f16 step each, relative to `a_max`: `a` `[ra / 8, np, V, 16, 4]`
///   codes and `ad` `[ra / 8, np, 16]` their steps (`ra` the rank rounded up to 8, `np` the
///   pairs of blocks as the activations pair them, an odd last block paired with zero codes and
///   steps): by group of eight ranks, pair, vector, lane, byte, where lane `l` is rank
///   `8g + l % 8` on the pair's block `l / 8` (`a_code_at`, `a_step_at`).
/// - B: `bs` `[rq]` f32 rank scales, each rank's largest |B| (zero past `r`); `ts` `[n_pad / 16]`
///   tile steps, relative to the rank scales, f16 values held as f32 (the kernel multiplies
///   with them, and an f16 was a conversion per tile for two bytes a 16-row tile); and `bt`
///   `[n_pad / 16, rq / tr, 16, 4]` codes: `B[16t + l, c] ≈ code·ts[t]·bs[c]`. Byte `e` of lane `l` of vector `g` of tile `t` holds, in
///   bytes, rank `4g + e`; in nibbles, rank `8g + e` low and `8g + 4 + e` high (`tr` the
///   [`CodeBits::tile_ranks`], rq the rank rounded up to it, zero codes past `r` and `n`).
///
/// The buffers are cut one after another from huge pages ([`Lines`]), and decoding builds the
/// packs in the order it reads them: one linear's pack ends where the next one's starts.
pub struct LoraPack {
    bits: CodeBits,
    /// Bytes of A's codes (and, for Four, its scales and mins).
    a_len: usize,
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
    /// Where `ad`, `bs`, `ts` and `bt` start in `buf` (`a` at 0).
    at: [usize; 4],
}

/// `xa = s·A·x` times B's rank scales, quantised for [`LoraPack::expand`]: codes `xq` (rank
/// padded with zeros) four to a word, the integer sums' start `−o·Σ xq` (B's codes are offset by
/// `o`), and the factor the integer sums take back to f32 (`d_xa`), before the tile's step.
#[derive(Clone, Debug, PartialEq)]
#[repr(C)]
pub struct Projected {
    init: i32,
    mult: f32,
    len: usize,
    words: [i32; MAX_RANK / 4],
}

impl Default for Projected {
    fn default() -> Self {
        Projected {
            init: 0,
            mult: 0.0,
            len: 0,
            words: [0; MAX_RANK / 4],
        }
    }
}

impl Projected {
    /// The codes, four to a word.
    fn words(&self) -> &[i32] {
        &self.words[..self.len]
    }
}

/// `s·A·x` as a matmul's first chunk makes it for the others ([`LoraPack::project_into`]),
/// made in place next to the flag that says it is there: at rank 32 and under the flag, the
/// factors and the codes share one cache line, the one line the other core then fetches. (In a
/// `OnceLock`, the value and its state fell on different lines, and went there by copy.)
#[repr(C, align(64))]
pub struct SharedXa {
    /// [`SharedXa::EMPTY`], [`SharedXa::FILLING`], [`SharedXa::NONE`] or [`SharedXa::READY`].
    state: AtomicU32,
    xa: UnsafeCell<Projected>,
}

// SAFETY: `xa` is written only by the one caller of `fill` that moved `state` from EMPTY to
// FILLING, before it publishes NONE or READY with Release; it is read only through `wait`,
// after an Acquire load saw one of those, and never written again. So no write races a read.
unsafe impl Sync for SharedXa {}

impl Default for SharedXa {
    fn default() -> Self {
        SharedXa {
            state: AtomicU32::new(Self::EMPTY),
            xa: UnsafeCell::new(Projected::default()),
        }
    }
}

impl SharedXa {
    const EMPTY: u32 = 0;
    const FILLING: u32 = 1;
    const NONE: u32 = 2;
    const READY: u32 = 3;

    /// Makes the value with `make` (false: the adapter adds nothing) and publishes it.
    ///
    /// # Panics
    /// When it was filled before: one chunk makes it.
    pub fn fill(&self, make: impl FnOnce(&mut Projected) -> bool) {
        let claimed = self.state.compare_exchange(
            Self::EMPTY,
            Self::FILLING,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        assert!(claimed.is_ok(), "a shared projection is made once");
        // SAFETY: the exchange above made this call the only writer, and no reader looks at
        // `xa` before the Release store below.
        let adds = make(unsafe { &mut *self.xa.get() });
        let state = if adds { Self::READY } else { Self::NONE };
        self.state.store(state, Ordering::Release);
    }

    /// The value once it is made (`None`: the adapter adds nothing). Another chunk makes it
    /// before its own rows, so it is ready or about a microsecond away, and a spin beats
    /// parking the thread.
    pub fn wait(&self) -> Option<&Projected> {
        let mut spins = 0u32;
        loop {
            match self.state.load(Ordering::Acquire) {
                // SAFETY: READY was stored with Release after the last write to `xa`, and
                // nothing writes it again (`fill` runs once).
                Self::READY => return Some(unsafe { &*self.xa.get() }),
                Self::NONE => return None,
                _ => {}
            }
            spins += 1;
            if spins < 1 << 16 {
                std::hint::spin_loop();
            } else {
                // That chunk's thread lost its core (more threads than cores): let it run.
                std::thread::yield_now();
            }
        }
    }
}

/// `v` rounded to the nearest integer, ties to even, for `|v| ≤ 2²²`: adding and taking back
/// 1.5·2²³ leaves no fraction bits, and the default rounding mode rounds ties to even. The same
/// as `f32::round_ties_even`, which without SSE4.1 in the build's baseline is a call into libm
/// (`rintf`) on every rank of every adapted linear of every decoded token.
fn round_even(v: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0;
    (v + SHIFT) - SHIFT
}

/// The f16 at or above `v` (≥ 0), so codes made with it never pass the largest.
fn f16_at_least(v: f32) -> f16 {
    let h = f16::from_f32(v);
    if h.to_f32() < v {
        f16::from_bits(h.to_bits() + 1)
    } else {
        h
    }
}

/// Puts stored code `c` (a byte, or the nibble `high` or not) at byte `i`.
fn put_code(buf: &mut [u8], bits: CodeBits, i: usize, high: bool, c: u8) {
    match bits {
        CodeBits::Eight => buf[i] = c,
        CodeBits::Four if high => buf[i] = (buf[i] & 0x0F) | (c << 4),
        CodeBits::Four => buf[i] = (buf[i] & 0xF0) | c,
    }
}

/// The stored code at byte `i` (its high nibble when `high`), as [`put_code`] put it.
fn code_at(buf: &[u8], bits: CodeBits, i: usize, high: bool) -> i32 {
    let c = match bits {
        CodeBits::Eight => buf[i],
        CodeBits::Four if high => buf[i] >> 4,
        CodeBits::Four => buf[i] & 0x0F,
    };
    c as i32 - bits.offset()
}

impl LoraPack {
    /// The pack of A (`[r, k]`, `k` a multiple of 32) and B (`[n, r]`) with scale `s`.
    pub fn new(a: &[f32], b: &[f32], k: usize, n: usize, s: f32, bits: CodeBits) -> Self {
        let r = a.len() / k;
        assert!(
            a.len() == r * k
                && b.len() == n * r
                && (1..=MAX_RANK).contains(&r)
                && k.is_multiple_of(32),
            "lora pack: A or B is not [r, {k}] / [{n}, r] with r at most {MAX_RANK} and k whole \
             blocks of 32"
        );
        let (nb, rq) = (k / 32, r.next_multiple_of(bits.tile_ranks()));
        let np = nb.div_ceil(2);
        // Zero codes, in every byte (both nibbles).
        let zero = match bits {
            CodeBits::Four => 0x88,
            CodeBits::Eight => 128,
        };
        // A: blocks of 32, each with a step relative to the largest (f16 normal unless that
        // small beside it), the codes made with the step as stored.
        let steps: Vec<f32> = a
            .chunks_exact(32)
            .map(|blk| blk.iter().fold(0f32, |m, x| m.max(x.abs())) / bits.max())
            .collect();
        let a_max = steps.iter().fold(0f32, |m, &d| m.max(d));
        let inv_max = if a_max > 0.0 { 1.0 / a_max } else { 0.0 };
        let rel: Vec<f16> = steps.iter().map(|&d| f16_at_least(d * inv_max)).collect();
        let code = |e: usize| {
            let step = rel[e / 32].to_f32() * a_max;
            let inv = if step > 0.0 { 1.0 / step } else { 0.0 };
            (a[e] * inv).round().clamp(-bits.max(), bits.max()) as i8
        };
        // Codes by group of eight ranks across a vector's lanes, a step a block.
        let ra = r.next_multiple_of(A_GROUP);
        let mut a_codes = vec![zero; ra / A_GROUP * np * bits.a_vectors() * 64];
        let mut ad = vec![f16::ZERO; ra * np * 2];
        for (e, &d) in rel.iter().enumerate() {
            let (c, blk) = (e / nb, e % nb);
            ad[a_step_at(np, c, blk)] = d;
            for i in blk * 32..blk * 32 + 32 {
                let (at, high) = a_code_at(bits, np, c, i);
                put_code(&mut a_codes, bits, at, high, bits.stored(code(c * k + i)));
            }
        }
        let a_len = a_codes.len();
        // B: each rank by its largest, then a step per tile of 16 outputs.
        let n_pad = n.next_multiple_of(BT_BLOCK);
        let mut bs: Vec<f32> = (0..r)
            .map(|c| (0..n).fold(0f32, |m, j| m.max(b[j * r + c].abs())))
            .collect();
        let inv_bs: Vec<f32> = bs
            .iter()
            .map(|&d| if d > 0.0 { 1.0 / d } else { 0.0 })
            .collect();
        let tiles = n_pad / BT_BLOCK;
        let mut ts = vec![f16::ZERO; tiles];
        let mut bt = vec![zero; tiles * (rq / bits.tile_ranks()) * 64];
        for (t, step) in ts.iter_mut().enumerate() {
            let rows = t * BT_BLOCK..((t + 1) * BT_BLOCK).min(n);
            let tmax = rows.clone().fold(0f32, |m, j| {
                (0..r).fold(m, |m, c| m.max(b[j * r + c].abs() * inv_bs[c]))
            });
            *step = f16_at_least(tmax / bits.max());
            let inv = if step.to_f32() > 0.0 {
                1.0 / step.to_f32()
            } else {
                0.0
            };
            for j in rows {
                for c in 0..r {
                    let q = (b[j * r + c] * inv_bs[c] * inv)
                        .round()
                        .clamp(-bits.max(), bits.max()) as i8;
                    let (at, high) = Self::b_at(bits, rq, j, c);
                    put_code(&mut bt, bits, at, high, bits.stored(q));
                }
            }
        }
        bs.resize(rq, 0.0);
        let b_max = bs.iter().fold(0f32, |m, &d| m.max(d));
        let sections = [a_len, 2 * ad.len(), 4 * bs.len(), 4 * ts.len(), bt.len()]
            .map(|l| l.next_multiple_of(64));
        let mut at = [0; 4];
        for i in 0..4 {
            at[i] = sections[..=i].iter().sum();
        }
        let mut buf = Lines::zeros(sections.iter().sum());
        buf[..a_len].copy_from_slice(&a_codes);
        for (i, h) in ad.iter().enumerate() {
            buf[at[0] + 2 * i..at[0] + 2 * i + 2].copy_from_slice(&h.to_le_bytes());
        }
        for (i, d) in bs.iter().enumerate() {
            buf[at[1] + 4 * i..at[1] + 4 * i + 4].copy_from_slice(&d.to_le_bytes());
        }
        for (i, h) in ts.iter().enumerate() {
            buf[at[2] + 4 * i..at[2] + 4 * i + 4].copy_from_slice(&h.to_f32().to_le_bytes());
        }
        buf[at[3]..at[3] + bt.len()].copy_from_slice(&bt);
        LoraPack {
            bits,
            a_len,
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

    /// Where B's code `(j, c)` is in `bt`: the byte, and whether it is the high nibble.
    fn b_at(bits: CodeBits, rq: usize, j: usize, c: usize) -> (usize, bool) {
        let (t, l, tr) = (j / BT_BLOCK, j % BT_BLOCK, bits.tile_ranks());
        let vec = (t * rq / tr + c / tr) * 64;
        (vec + l * 4 + c % 4, c % tr >= 4)
    }

    fn a(&self) -> &[u8] {
        &self.buf[..self.a_len]
    }
    fn ad(&self) -> &[u8] {
        &self.buf[self.at[0]..self.at[1]]
    }
    /// B's per-rank scales, `[rq]` (zero past `r`).
    #[cfg(test)]
    pub(super) fn bs(&self, c: usize) -> f32 {
        let o = self.at[1] + 4 * c;
        f32::from_le_bytes([
            self.buf[o],
            self.buf[o + 1],
            self.buf[o + 2],
            self.buf[o + 3],
        ])
    }
    fn ts(&self) -> &[u8] {
        &self.buf[self.at[2]..self.at[3]]
    }
    fn bt(&self) -> &[u8] {
        &self.buf[self.at[3]..]
    }
    /// f16 scale `i` of a section of them.
    fn scale_at(section: &[u8], i: usize) -> f32 {
        f16::from_le_bytes([section[2 * i], section[2 * i + 1]]).to_f32()
    }
    /// Bytes of one tile of `bt`.
    fn tile_bytes(&self) -> usize {
        self.rq / self.bits.tile_ranks() * 64
    }

    /// Asks for A, its scales and B's rank scales in L2: the chunk that projects reads them
    /// next, and a few dozen lines in flight at once arrive sooner than the hardware prefetcher
    /// ramps up to them.
    pub fn prefetch_a(&self) {
        prefetch_l2(&self.buf[..self.at[2]]);
    }

    /// Asks for the B rows `r0..r1` (codes and tile steps) in L2, so they arrive while the
    /// chunk streams its weights and [`LoraPack::expand`] finds them there.
    pub fn prefetch_b(&self, r0: usize, r1: usize) {
        let (t0, t1) = (r0 / BT_BLOCK, r1.div_ceil(BT_BLOCK));
        prefetch_l2(&self.ts()[4 * t0..4 * t1]);
        prefetch_l2(&self.bt()[t0 * self.tile_bytes()..t1 * self.tile_bytes()]);
    }

    /// Output features.
    pub fn n(&self) -> usize {
        self.n
    }
    /// Input features.
    pub fn k(&self) -> usize {
        self.k
    }
    /// The width of the codes.
    pub fn bits(&self) -> CodeBits {
        self.bits
    }

    /// Bytes a decoding step reads of this pack.
    pub fn bytes(&self) -> u64 {
        self.buf.len() as u64
    }

    /// `s·A·x` for the first row of `x8` (the activations quantised for the product, `k`
    /// values), quantised for [`LoraPack::expand`]; `None` when it adds nothing (`xa` or B all
    /// zero, as B starts in training).
    pub fn project(&self, x8: &Q8Rows) -> Option<Projected> {
        let mut out = Projected::default();
        self.project_into(x8, &mut out).then_some(out)
    }

    /// [`LoraPack::project`] written into `out`, which the matmul's chunks share in place (this
    /// runs for every adapted linear of every decoded token, so nothing is copied or cleared
    /// beyond the rank); false when it adds nothing.
    pub fn project_into(&self, x8: &Q8Rows, out: &mut Projected) -> bool {
        assert!(
            x8.nb == self.k / 32,
            "lora pack: activations of {} values for A of {}",
            x8.nb * 32,
            self.k
        );
        if self.b_max == 0.0 {
            return false;
        }
        // On the stack: this runs for every adapted linear of every decoded token, so rank 32
        // and under (almost every adapter) clears a small buffer, not MAX_RANK's.
        let (mut small, mut large);
        let xa: &mut [f32] = if self.rq <= 32 {
            small = [0f32; 32];
            &mut small[..self.rq]
        } else {
            large = [0f32; MAX_RANK];
            &mut large[..self.rq]
        };
        self.project_raw(&mut xa[..self.r], x8);
        out.len = self.rq / 4;
        let mult = self.scale * self.a_max;
        let bs = &self.buf[self.at[1]..self.at[1] + 4 * self.rq];
        #[cfg(target_arch = "x86_64")]
        if super::quant::vnni_available() {
            // SAFETY: AVX-512 F/BW/VL were detected (with VNNI); `xa` and `bs` hold `rq` values
            // (`bs` as f32 bytes), `rq` a multiple of 4 and at most MAX_RANK, so the codes fill
            // `rq / 4` of `out`'s words.
            return unsafe { quantize_xa_avx512(xa, bs, mult, self.bits.offset(), out) };
        }
        quantize_xa(xa, bs, mult, self.bits.offset(), out)
    }

    /// [`LoraPack::project`]'s sums before the scale, through [`project_vnni`] or the portable
    /// loop.
    fn project_raw(&self, xa: &mut [f32], x8: &Q8Rows) {
        #[cfg(target_arch = "x86_64")]
        if super::quant::vnni_available() {
            // SAFETY: AVX-512 F/BW/VL/VNNI were detected; `a` holds `ra / 8` groups of `np`
            // pairs of 512 (bytes) or 256 (nibbles) bytes and `ad` their 16 steps each, `ra ≥ r`
            // (`xa.len()`); `x8`'s first row holds `nb` blocks whose codes are padded to whole
            // pairs and whose per-block arrays to a multiple of 16 (`Q8Rows`), at least the
            // `2·np` blocks read.
            return unsafe {
                match self.bits {
                    CodeBits::Four => project_vnni::<true>(xa, self, x8),
                    CodeBits::Eight => project_vnni::<false>(xa, self, x8),
                }
            };
        }
        self.project_portable(xa, x8);
    }

    /// A's sums before the scale: per rank, `Σ_b ad[b]·(dₓ·T_b − o·sqₓ)` with `T_b` block b's
    /// integer dot of the stored codes (offset by `o`), in which `o·Σ qₓ` comes back out.
    fn project_portable(&self, xa: &mut [f32], x8: &Q8Rows) {
        let (nb, np, bits) = (self.k / 32, self.np, self.bits);
        let offset = bits.offset();
        for (c, o) in xa.iter_mut().enumerate() {
            *o = (0..nb)
                .map(|b| {
                    let t: i32 = (b * 32..b * 32 + 32)
                        .map(|i| {
                            let (at, high) = a_code_at(bits, np, c, i);
                            (code_at(self.a(), bits, at, high) + offset) * x8.q[i] as i32
                        })
                        .sum();
                    let d = Self::scale_at(self.ad(), a_step_at(np, c, b));
                    d * (x8.d[b] * t as f32 - offset as f32 * x8.sq[b])
                })
                .sum();
        }
    }

    /// `out[j − r0] += Σ_c B[j, c]·xa[c]` for the output rows `j` in `r0..r0 + out.len()`; `r0`
    /// is a multiple of [`BT_BLOCK`].
    pub fn expand(&self, out: &mut [f32], xa: &Projected, r0: usize) {
        let len = out.len();
        assert!(
            r0.is_multiple_of(BT_BLOCK) && r0 + len <= self.n && xa.len == self.rq / 4,
            "lora pack: rows {r0}..{} of {}",
            r0 + len,
            self.n
        );
        #[cfg(target_arch = "x86_64")]
        if super::quant::vnni_available() {
            // SAFETY: AVX-512 F/BW/VL/VNNI were detected; `bt` holds `n_pad / 16` whole tiles of
            // `tile_bytes` and `ts` their steps, `n_pad` at or past `r0 + len`, and `r0` is a
            // multiple of 16: every tile the loop reads is whole; `xa` holds the tile's ranks in
            // words; `out` is read and written only in its own `len` lanes.
            unsafe {
                match (self.bits, xa.len) {
                    (CodeBits::Four, 2) => expand_vnni::<true, 2>(out, xa, self, r0),
                    (CodeBits::Four, 4) => expand_vnni::<true, 4>(out, xa, self, r0),
                    (CodeBits::Four, _) => expand_vnni::<true, 0>(out, xa, self, r0),
                    (CodeBits::Eight, 2) => expand_vnni::<false, 2>(out, xa, self, r0),
                    (CodeBits::Eight, 4) => expand_vnni::<false, 4>(out, xa, self, r0),
                    (CodeBits::Eight, _) => expand_vnni::<false, 0>(out, xa, self, r0),
                }
            };
            return;
        }
        self.expand_portable(out, xa, r0);
    }

    fn expand_portable(&self, out: &mut [f32], xa: &Projected, r0: usize) {
        let codes: Vec<i8> = xa
            .words()
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .map(|c| c as i8)
            .collect();
        for (i, o) in out.iter_mut().enumerate() {
            let j = r0 + i;
            let mut acc = xa.init;
            for (c, &xq) in codes.iter().enumerate() {
                let (at, high) = Self::b_at(self.bits, self.rq, j, c);
                acc += (code_at(self.bt(), self.bits, at, high) + self.bits.offset()) * xq as i32;
            }
            *o += acc as f32 * (xa.mult * self.tile_step(j));
        }
    }

    /// The values `xa`'s codes stand for, `xq·d_xa`: `s·A·x` times B's rank scales (rank padded).
    #[cfg(test)]
    pub fn xa_values(&self, xa: &Projected) -> Vec<f32> {
        xa.words()
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
                let (at, high) = a_code_at(self.bits, np, c, i);
                let q = code_at(self.a(), self.bits, at, high);
                q as f32 * Self::scale_at(self.ad(), a_step_at(np, c, i / 32)) * self.a_max
            })
            .collect()
    }

    /// B's codes as the pack holds them, `[n, r]`.
    #[cfg(test)]
    pub fn b_codes(&self) -> Vec<i32> {
        let r = self.r;
        (0..self.n * r)
            .map(|e| {
                let (at, high) = Self::b_at(self.bits, self.rq, e / r, e % r);
                code_at(self.bt(), self.bits, at, high)
            })
            .collect()
    }

    /// B's step at output `j` and rank `c`: the tile's step times the rank's scale.
    #[cfg(test)]
    pub fn b_step(&self, j: usize, c: usize) -> f32 {
        self.tile_step(j) * self.bs(c)
    }

    /// The tile step of output `j`.
    pub fn tile_step(&self, j: usize) -> f32 {
        let o = 4 * (j / BT_BLOCK);
        let t = &self.ts()[o..o + 4];
        f32::from_le_bytes([t[0], t[1], t[2], t[3]])
    }

    /// B as the pack holds it, `[n, r]`: the codes times their steps.
    #[cfg(test)]
    pub fn b_values(&self) -> Vec<f32> {
        let r = self.r;
        let codes = self.b_codes();
        (0..self.n * r)
            .map(|e| codes[e] as f32 * self.b_step(e / r, e % r))
            .collect()
    }
}

/// [`LoraPack::project_into`]'s last step: `xa`'s sums times `mult` and B's rank scales `bs`
/// (f32 bytes), quantised to 8 bits into `out` (whose `len` is set), the integer sums' start
/// for B's code offset `offset`; false when they are all zero.
fn quantize_xa(xa: &mut [f32], bs: &[u8], mult: f32, offset: i32, out: &mut Projected) -> bool {
    if xa.iter().any(|v| !v.is_finite()) {
        // Overflowed activations poison the outputs, as they do the product's.
        out.init = 0;
        out.mult = f32::NAN;
        return true;
    }
    // B's rank scales go into xa, so each output row is one integer dot and one multiply.
    for (v, b) in xa.iter_mut().zip(bs.chunks_exact(4)) {
        *v *= mult * f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
    let amax = xa.iter().fold(0f32, |m, v| m.max(v.abs()));
    if amax == 0.0 {
        return false;
    }
    let d = amax / 127.0;
    let mut sum = 0;
    for (w, v) in out.words[..out.len].iter_mut().zip(xa.chunks_exact(4)) {
        let q: [i8; 4] = std::array::from_fn(|e| round_even(v[e] / d) as i8);
        sum += q.iter().map(|&c| c as i32).sum::<i32>();
        *w = i32::from_le_bytes(q.map(|c| c as u8));
    }
    out.init = -offset * sum;
    out.mult = d;
    true
}

/// [`quantize_xa`] sixteen ranks a vector, to the same codes: the same products and quotient,
/// rounded to nearest even as [`round_even`] does (MXCSR's default mode).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn quantize_xa_avx512(
    xa: &mut [f32],
    bs: &[u8],
    mult: f32,
    offset: i32,
    out: &mut Projected,
) -> bool {
    let n = xa.len();
    debug_assert!(bs.len() == 4 * n && n.is_multiple_of(4) && n <= MAX_RANK);
    let mask = |c: usize| -> __mmask16 {
        let left = (n - c).min(16);
        ((1u32 << left) - 1) as __mmask16
    };
    let (p, b) = (xa.as_mut_ptr(), bs.as_ptr().cast::<f32>());
    let (multv, zero) = (_mm512_set1_ps(mult), _mm512_setzero_ps());
    let mut amax = zero;
    for c in (0..n).step_by(16) {
        let m = mask(c);
        let v = _mm512_maskz_loadu_ps(m, p.add(c));
        // Finite exactly where v − v is 0 (NaN for infinities and NaNs).
        if _mm512_mask_cmp_ps_mask::<_CMP_EQ_OQ>(m, _mm512_sub_ps(v, v), zero) != m {
            out.init = 0;
            out.mult = f32::NAN;
            return true;
        }
        let s = _mm512_mul_ps(multv, _mm512_maskz_loadu_ps(m, b.add(c)));
        let v = _mm512_mul_ps(v, s);
        _mm512_mask_storeu_ps(p.add(c), m, v);
        amax = _mm512_max_ps(amax, _mm512_abs_ps(v));
    }
    let amax = _mm512_reduce_max_ps(amax);
    if amax == 0.0 {
        return false;
    }
    let d = amax / 127.0;
    let dv = _mm512_set1_ps(d);
    let mut sum = _mm512_setzero_si512();
    let words = out.words.as_mut_ptr().cast::<i8>();
    for c in (0..n).step_by(16) {
        let m = mask(c);
        let q = _mm512_cvtps_epi32(_mm512_div_ps(_mm512_maskz_loadu_ps(m, p.add(c)), dv));
        sum = _mm512_add_epi32(sum, q);
        _mm_mask_storeu_epi8(words.add(c), m, _mm512_cvtepi32_epi8(q));
    }
    out.init = -offset * _mm512_reduce_add_epi32(sum);
    out.mult = d;
    true
}

/// [`LoraPack::project_portable`] a group of eight ranks at a time, laid out so that no sum
/// is reduced across lanes until the end ([`a_code_at`]): lanes 0-7 of a pair's code vectors are
/// the group's ranks on its first block, 8-15 on its second, and each vector holds, per lane,
/// codes `4w..4w + 4` of the lane's block (`FOUR`: word `w` in the low nibbles, `w + 4` in the
/// high ones), dotted with the activations' word `w` of that block broadcast to its half. Eight
/// dots then leave each lane one rank's whole block sum, which the activations' `dₓ`, `o·sqₓ`
/// and A's 16 steps (one 256-bit load) scale in three vector instructions; the two halves add
/// once at the end. (Rank-major rows took a dot, four float instructions and a step load per
/// rank and pair, then a reduction per rank, and projecting was the larger part of what an
/// adapter added to a Q8_0 product.)
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn project_vnni<const FOUR: bool>(xa: &mut [f32], p: &LoraPack, x8: &Q8Rows) {
    let np = p.np;
    let halves = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    let pair_of = |v: __m128| _mm512_permutexvar_ps(halves, _mm512_castps128_ps512(v));
    // Word `w` of the pair's first block in lanes 0-7, of its second in 8-15.
    let words: [__m512i; 8] = std::array::from_fn(|w| {
        let (a, b) = (w as i32, w as i32 + 8);
        _mm512_setr_epi32(a, a, a, a, a, a, a, a, b, b, b, b, b, b, b, b)
    });
    let offset = _mm512_set1_ps(p.bits.offset() as f32);
    let nib = _mm512_set1_epi8(0x0F);
    let pair_bytes = p.bits.a_vectors() * 64;
    let (a, ad) = (p.a().as_ptr(), p.ad().as_ptr());
    for g in 0..xa.len().div_ceil(A_GROUP) {
        let mut acc = _mm512_setzero_ps();
        for q in 0..np {
            let dx = pair_of(_mm_castpd_ps(_mm_load_sd(x8.d.as_ptr().add(2 * q).cast())));
            let sq = pair_of(_mm_castpd_ps(_mm_load_sd(x8.sq.as_ptr().add(2 * q).cast())));
            let xq = _mm512_loadu_si512(x8.q.as_ptr().add(q * 64).cast());
            let codes = a.add((g * np + q) * pair_bytes);
            // Two chains of four dots, so each waits on half as many before it.
            let (mut t0, mut t1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
            if FOUR {
                for v in 0..4 {
                    let c = _mm512_loadu_si512(codes.add(v * 64).cast());
                    let lo = _mm512_and_si512(c, nib);
                    let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(c), nib);
                    t0 = _mm512_dpbusd_epi32(t0, lo, _mm512_permutexvar_epi32(words[v], xq));
                    t1 = _mm512_dpbusd_epi32(t1, hi, _mm512_permutexvar_epi32(words[v + 4], xq));
                }
            } else {
                for w in (0..8).step_by(2) {
                    let c0 = _mm512_loadu_si512(codes.add(w * 64).cast());
                    let c1 = _mm512_loadu_si512(codes.add((w + 1) * 64).cast());
                    t0 = _mm512_dpbusd_epi32(t0, c0, _mm512_permutexvar_epi32(words[w], xq));
                    t1 = _mm512_dpbusd_epi32(t1, c1, _mm512_permutexvar_epi32(words[w + 1], xq));
                }
            }
            let t = _mm512_cvtepi32_ps(_mm512_add_epi32(t0, t1));
            let v = _mm512_fmsub_ps(t, dx, _mm512_mul_ps(sq, offset));
            let da = _mm512_cvtph_ps(_mm256_loadu_si256(ad.add((g * np + q) * 32).cast()));
            acc = _mm512_fmadd_ps(v, da, acc);
        }
        let sum = _mm256_add_ps(
            _mm512_castps512_ps256(acc),
            _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc))),
        );
        let mut out = [0f32; A_GROUP];
        _mm256_storeu_ps(out.as_mut_ptr(), sum);
        let c0 = g * A_GROUP;
        let ranks = (xa.len() - c0).min(A_GROUP);
        xa[c0..c0 + ranks].copy_from_slice(&out[..ranks]);
    }
}

/// [`LoraPack::expand`] with one integer dot per four ranks and 16 outputs (`FOUR`: a vector
/// holds eight ranks in nibbles, two dots) and one multiply by the tile's step. `W` is the
/// number of code words when the caller knows it (2 or 4: ranks 8 and 16), 0 for any: a loop
/// of known length unrolls, and this runs on every chunk of every adapted linear.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn expand_vnni<const FOUR: bool, const W: usize>(
    out: &mut [f32],
    xa: &Projected,
    p: &LoraPack,
    r0: usize,
) {
    let words = xa.words();
    let w = if W == 0 { words.len() } else { W };
    debug_assert!(w == words.len());
    let (bt, tile_bytes) = (p.bt().as_ptr(), p.tile_bytes());
    let ts = p.ts().as_ptr().cast::<f32>();
    let init = _mm512_set1_epi32(xa.init);
    let mult = _mm512_set1_ps(xa.mult);
    let nib = _mm512_set1_epi8(0x0F);
    let xw = words.as_ptr();
    let tile = |t: usize| {
        let codes = bt.add(t * tile_bytes);
        let mut acc = init;
        if FOUR {
            for g in 0..w / 2 {
                let v = _mm512_loadu_si512(codes.add(g * 64).cast());
                let lo = _mm512_and_si512(v, nib);
                let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), nib);
                acc = _mm512_dpbusd_epi32(acc, lo, _mm512_set1_epi32(*xw.add(2 * g)));
                acc = _mm512_dpbusd_epi32(acc, hi, _mm512_set1_epi32(*xw.add(2 * g + 1)));
            }
        } else {
            for g in 0..w {
                let v = _mm512_loadu_si512(codes.add(g * 64).cast());
                acc = _mm512_dpbusd_epi32(acc, v, _mm512_set1_epi32(*xw.add(g)));
            }
        }
        let step = _mm512_mul_ps(_mm512_set1_ps(ts.add(t).read_unaligned()), mult);
        _mm512_mul_ps(_mm512_cvtepi32_ps(acc), step)
    };
    let t0 = r0 / BT_BLOCK;
    let o = out.as_mut_ptr();
    // Whole tiles with plain loads and stores; the masked ones only for a last, partial tile.
    let full = out.len() / BT_BLOCK;
    for i in 0..full {
        let y = o.add(BT_BLOCK * i);
        _mm512_storeu_ps(y, _mm512_add_ps(_mm512_loadu_ps(y), tile(t0 + i)));
    }
    let rest = out.len() % BT_BLOCK;
    if rest > 0 {
        let mask = ((1u32 << rest) - 1) as __mmask16;
        let y = o.add(BT_BLOCK * full);
        let v = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, y), tile(t0 + full));
        _mm512_mask_storeu_ps(y, mask, v);
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

    /// `round_even` is `round_ties_even` over the codes' range: ties both ways, both signs, and
    /// the values around them.
    #[test]
    fn round_even_is_round_ties_even() {
        for i in -1300..=1300 {
            for dv in [-1e-4f32, 0.0, 1e-4] {
                let v = i as f32 * 0.1 + dv;
                assert_eq!(round_even(v), v.round_ties_even(), "{v}");
            }
        }
        for v in [0.5f32, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5, 127.0] {
            assert_eq!(round_even(v), v.round_ties_even(), "{v}");
        }
    }

    /// The pack's `s·A·x` against an f64 reference from the values it holds and the activations
    /// as quantised, its 8-bit `xa` within half a step of that, and `B·xa` against an f64
    /// reference from B's codes and `xa`'s. Every code within half a step of what it stands
    /// for, each step no larger than its block's (A) or tile's and rank's (B) largest value
    /// needs. Ranges start on every tile the matmul's chunks can, with and without a ragged end;
    /// ranks that are and are not a multiple of 4 and 8, an odd number of blocks, B's ranks four
    /// decades apart in size and its tiles two. Both widths; the vector and portable kernels.
    #[test]
    fn packs_add_what_they_hold() {
        for bits in [CodeBits::Four, CodeBits::Eight] {
            packs_of_width_add_what_they_hold(bits);
        }
    }

    fn packs_of_width_add_what_they_hold(bits: CodeBits) {
        let mut rng = Rng::new(11);
        let max = bits.max();
        for (k, n, r) in [
            (64, 40, 8),
            (96, 33, 3),
            (576, 192, 16),
            (576, 1536, 8),
            (1536, 576, 8),
            (160, 50, 6),
            (64, 20, 12),
            // Past rank 16 the expand kernel loops over any number of code words.
            (128, 70, 24),
            (96, 33, 20),
        ] {
            let a: Vec<f32> = (0..r * k).map(|_| rng.uniform(-1.0, 1.0)).collect();
            // B's rank columns from 1e-5 to 0.1, as a rank's scale must follow its own column,
            // and its tiles a decade apart, as a tile's step must follow its own rows.
            let b: Vec<f32> = (0..n * r)
                .map(|e| {
                    let (j, c) = (e / r, e % r);
                    rng.uniform(-0.1, 0.1)
                        * 10f32.powi(-(c as i32 % 5))
                        * 10f32.powi(-((j / BT_BLOCK) as i32 % 3))
                })
                .collect();
            let x: Vec<f32> = (0..k).map(|_| rng.uniform(-2.0, 2.0)).collect();
            let s = 0.5;
            let p = LoraPack::new(&a, &b, k, n, s, bits);
            assert_eq!(p.bits(), bits);
            let bq = p.b_values();
            let col_max: Vec<f32> = (0..r)
                .map(|c| (0..n).fold(0f32, |m, j| m.max(b[j * r + c].abs())))
                .collect();
            for (e, (&q, &t)) in bq.iter().zip(&b).enumerate() {
                let (j, c) = (e / r, e % r);
                let t0 = j / BT_BLOCK * BT_BLOCK;
                let tile_max = (t0..(t0 + BT_BLOCK).min(n)).fold(0f32, |m, i| {
                    (0..r).fold(m, |m, c| m.max(b[i * r + c].abs() / col_max[c]))
                });
                let step = p.b_step(j, c);
                assert!(
                    step <= tile_max * col_max[c] / max * (1.0 + 1e-3),
                    "{bits:?} B[{j}, {c}]: step {step}, tile's largest {tile_max}"
                );
                assert!(
                    (q - t).abs() <= 0.5 * step * (1.0 + 1e-5),
                    "{bits:?} B[{j}, {c}]: {q} vs {t}"
                );
            }
            let bc = p.b_codes();
            let aq = p.a_values();
            for (e, (&q, &t)) in aq.iter().zip(&a).enumerate() {
                let blk = &a[e / 32 * 32..e / 32 * 32 + 32];
                let bmax = blk.iter().fold(0f32, |m, v| m.max(v.abs()));
                assert!(
                    (q - t).abs() <= 0.5 * bmax / max * (1.0 + 2e-3),
                    "{bits:?} A[{e}]: {q} vs {t}"
                );
            }
            for offset in [0, 8, 128] {
                let x8 = Q8Rows::quantize_portable(&x, 1, k, offset);
                let xv: Vec<f64> = (0..k)
                    .map(|i| x8.q[i] as f64 * x8.d[i / 32] as f64)
                    .collect();
                let want: Vec<f64> = (0..r)
                    .map(|c| (0..k).map(|i| aq[c * k + i] as f64 * xv[i]).sum::<f64>() * s as f64)
                    .collect();
                // Every kernel that projects: the vector one and the portable loop.
                let mut sums = vec![vec![0f32; r]];
                p.project_raw(&mut sums[0], &x8);
                let mut port = vec![0f32; r];
                p.project_portable(&mut port, &x8);
                sums.push(port);
                for got in &sums {
                    for c in 0..r {
                        let g = got[c] as f64 * (s * p.a_max) as f64;
                        assert!(
                            (g - want[c]).abs() <= 1e-4 * (1.0 + want[c].abs()),
                            "{bits:?} k={k} xa[{c}]: {g} vs {}",
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
                        "{bits:?} k={k} 8-bit xa[{c}]: {got} vs {w}"
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
                            let add: f64 = (0..r)
                                .map(|c| bc[j * r + c] as f64 * xav[c] as f64)
                                .sum::<f64>()
                                * p.tile_step(j) as f64;
                            let want = *y0 as f64 + add;
                            for (name, got) in [("vector", &vec_out), ("portable", &port_out)] {
                                assert!(
                                    (got[i] as f64 - want).abs() <= 2e-6 * (1.0 + want.abs()),
                                    "{bits:?} {name} n={n} out[{j}] from {r0}..{end}: {} vs {want}",
                                    got[i]
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// How far each width moves the adapter's update `s·B·A·x` (relative RMS over the outputs,
    /// against f64 from the exact A and B and the activations as quantised), on shapes and value
    /// distributions like a trained adapter's on the default model: A as initialised
    /// (uniform ±1/√k), B heavy-tailed (Student t, 4 degrees of freedom) with ranks of different
    /// sizes, activations with a few channels ten times the rest. About 0.27 and 0.016, the
    /// figures `docs/ARCHITECTURE.md` gives; the bounds hold them with a little room. Most of
    /// the 4-bit figure is B's: an output sums only r products, where A's errors average over
    /// k inputs.
    #[test]
    fn code_widths_keep_the_update() {
        let mut rng = Rng::new(21);
        let mut normal = move || {
            // Box-Muller.
            let (u, v) = (rng.next_f64().max(1e-12), rng.next_f64());
            ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
        };
        let student4 = |normal: &mut dyn FnMut() -> f32| {
            let z = normal();
            let chi: f32 = (0..4).map(|_| normal().powi(2)).sum();
            z / (chi / 4.0).sqrt()
        };
        let mut errs = [0f64; 2];
        let trials = 6;
        for trial in 0..trials {
            let (k, n, r) = [(576, 576, 8), (576, 1536, 8), (1536, 576, 8)][trial % 3];
            let bound = 1.0 / (k as f32).sqrt();
            let a: Vec<f32> = (0..r * k)
                .map(|_| normal().clamp(-1.7, 1.7) * bound)
                .collect();
            let rank_size: Vec<f32> = (0..r).map(|c| 0.01 * 0.7f32.powi(c as i32)).collect();
            let b: Vec<f32> = (0..n * r)
                .map(|e| student4(&mut normal) * rank_size[e % r])
                .collect();
            let x: Vec<f32> = (0..k)
                .map(|i| normal() * if i % 97 == 0 { 10.0 } else { 1.0 })
                .collect();
            let x8 = Q8Rows::quantize_portable(&x, 1, k, 0);
            let xv: Vec<f64> = (0..k)
                .map(|i| x8.q[i] as f64 * x8.d[i / 32] as f64)
                .collect();
            let s = 2.0;
            let ax: Vec<f64> = (0..r)
                .map(|c| (0..k).map(|i| a[c * k + i] as f64 * xv[i]).sum::<f64>() * s)
                .collect();
            let want: Vec<f64> = (0..n)
                .map(|j| (0..r).map(|c| b[j * r + c] as f64 * ax[c]).sum())
                .collect();
            let norm = want.iter().map(|v| v * v).sum::<f64>().sqrt();
            for (w, bits) in [CodeBits::Four, CodeBits::Eight].into_iter().enumerate() {
                let p = LoraPack::new(&a, &b, k, n, s as f32, bits);
                let mut got = vec![0f32; n];
                p.expand(&mut got, &p.project(&x8).expect("nonzero"), 0);
                let e: f64 = got
                    .iter()
                    .zip(&want)
                    .map(|(&g, w)| (g as f64 - w).powi(2))
                    .sum();
                errs[w] += e.sqrt() / norm / trials as f64;
            }
        }
        eprintln!(
            "update moved, relative rms: 4-bit {:.4}, 8-bit {:.4}",
            errs[0], errs[1]
        );
        assert!(errs[0] <= 0.3, "4-bit codes moved the update {}", errs[0]);
        assert!(errs[1] <= 0.02, "8-bit codes moved the update {}", errs[1]);
    }

    /// An adapter whose B is zero (as training starts it) or whose input is zero adds nothing
    /// and is skipped; one whose input overflowed poisons its outputs rather than vanishing.
    #[test]
    fn zero_and_overflowed_projections() {
        for bits in [CodeBits::Four, CodeBits::Eight] {
            let (k, n, r) = (64, 32, 4);
            let a = vec![0.5f32; r * k];
            let zero_b = LoraPack::new(&a, &vec![0.0; n * r], k, n, 1.0, bits);
            let x8 = Q8Rows::quantize_portable(&vec![1.0; k], 1, k, 0);
            assert!(zero_b.project(&x8).is_none());
            let p = LoraPack::new(&a, &vec![0.1; n * r], k, n, 1.0, bits);
            assert!(p
                .project(&Q8Rows::quantize_portable(&vec![0.0; k], 1, k, 0))
                .is_none());
            let inf = Q8Rows::quantize_portable(&vec![f32::INFINITY; k], 1, k, 0);
            let xa = p.project(&inf).expect("an overflowed projection is kept");
            let mut out = vec![0f32; n];
            p.expand(&mut out, &xa, 0);
            assert!(out.iter().all(|v| v.is_nan()), "{bits:?} {out:?}");
        }
    }

    /// The vector quantiser of `xa` makes the scalar one's codes, start and factor exactly, for
    /// every rank count the packs use (1-4 vectors, ragged ends), values up to ties (halves of a
    /// step), zeros, and non-finite sums.
    #[test]
    fn quantize_xa_vector_is_scalar() {
        #[cfg(target_arch = "x86_64")]
        if super::super::quant::vnni_available() {
            let mut rng = Rng::new(5);
            for rq in [4, 8, 12, 16, 20, 24, 32, 36, 64] {
                let bs: Vec<u8> = (0..rq)
                    .flat_map(|_| rng.uniform(0.01, 2.0).to_le_bytes())
                    .collect();
                for case in 0..4 {
                    // Case 1 makes the step 1 (the largest 127, the scales 1): its halves are
                    // ties, which round to even.
                    let (bs, mult) = if case == 1 {
                        (1f32.to_le_bytes().repeat(rq), 1.0)
                    } else {
                        (bs.clone(), 0.7)
                    };
                    let xa: Vec<f32> = (0..rq)
                        .map(|c| match case {
                            0 => rng.uniform(-3.0, 3.0),
                            1 if c == 0 => 127.0,
                            1 => c as f32 - 10.5,
                            2 => 0.0,
                            _ if c == rq / 2 => f32::INFINITY,
                            _ => 1.0,
                        })
                        .collect();
                    let (mut want, mut got) = (Projected::default(), Projected::default());
                    want.len = rq / 4;
                    got.len = rq / 4;
                    let (mut xw, mut xg) = (xa.clone(), xa.clone());
                    let adds = quantize_xa(&mut xw, &bs, mult, 8, &mut want);
                    // SAFETY: AVX-512 was detected; `xg` and `bs` hold `rq` values, `rq` a
                    // multiple of 4 and at most MAX_RANK.
                    let vadds = unsafe { quantize_xa_avx512(&mut xg, &bs, mult, 8, &mut got) };
                    assert_eq!(adds, vadds, "rq {rq} case {case}");
                    assert_eq!(want.words(), got.words(), "rq {rq} case {case}");
                    assert_eq!(want.init, got.init, "rq {rq} case {case}");
                    assert_eq!(
                        want.mult.to_bits(),
                        got.mult.to_bits(),
                        "rq {rq} case {case}"
                    );
                }
            }
        }
    }

    /// `BITUNE_ADAPTER_BITS` takes 4 or 8 and nothing else.
    #[test]
    fn code_widths_parse() {
        assert_eq!(CodeBits::parse("4"), Some(CodeBits::Four));
        assert_eq!(CodeBits::parse(" 8\n"), Some(CodeBits::Eight));
        for bad in ["", "16", "four", "4.0"] {
            assert_eq!(CodeBits::parse(bad), None, "{bad:?}");
        }
    }
}
