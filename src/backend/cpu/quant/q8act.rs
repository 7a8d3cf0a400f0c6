//! Activations quantised to 8 bits per block of 32, the form the integer dot kernels of
//! [`super::Quant::Q8Dot`] read.

/// Blocks a group of the integer dot layout holds, one per 32-bit lane of a 512-bit vector.
pub const GROUP: usize = 16;

/// Rows of activations quantised per block of 32: `dₓ = amax/127`, `qₓ = round(x/dₓ)` (ties to
/// even), as ggml's Q8_0. Every array is padded with zeros so the kernels read whole vectors:
/// `q` to an even number of blocks (the weights pair blocks), the per-block arrays to 16.
pub struct Q8Rows {
    pub nb: usize,
    /// `[m, q_stride]` i8 codes.
    pub q: Vec<i8>,
    /// `[m, g_stride]`: the codes of every whole group of [`GROUP`] blocks again, as the weights'
    /// groups hold theirs ([`super::DotFmt::code_at`]): 4-byte word `w` of block `l` of a group
    /// at word `16w + l`, so a vector of 16 words holds a word of every block.
    pub qg: Vec<i8>,
    /// `[m, s_stride]`: per block, its integer sum's starting value `−o·Σ qₓ`: a weight format
    /// whose u8 codes are offset by `o` (`d·(q − o)`) takes the offset back inside the exact
    /// integer sum, before anything is rounded.
    pub init: Vec<i32>,
    /// `[m, s_stride]` scales `dₓ`.
    pub d: Vec<f32>,
    /// `[m, s_stride]` `dₓ·Σ qₓ` per block: the sum of the block as quantised, which Q4_1's min
    /// multiplies. Not the exact `Σ x`: with it the error of a block's dot is `Σ wⱼ·eⱼ` (e the
    /// quantisation errors), where the exact sum leaves `Σ (wⱼ − m)·eⱼ`, about twice as large
    /// since `m` is the block's minimum (it put top-5 logits of the default model 0.3-1.1 off
    /// transformers' where llama.cpp, which does this, is 0.03-0.4 off).
    pub sq: Vec<f32>,
}

impl Q8Rows {
    pub fn q_stride(&self) -> usize {
        self.nb.next_multiple_of(2) * 32
    }
    pub fn s_stride(&self) -> usize {
        self.nb.next_multiple_of(16)
    }
    pub fn g_stride(&self) -> usize {
        self.nb / GROUP * GROUP * 32
    }

    /// Block `b` of row `i`'s scale, and what its code sum `isum` gives: the integer sum's start
    /// for codes offset by `offset`, and the block sum as quantised.
    pub(super) fn put_block(&mut self, i: usize, b: usize, d: f32, isum: i32, offset: i32) {
        let s = i * self.s_stride() + b;
        self.d[s] = d;
        self.sq[s] = d * isum as f32;
        self.init[s] = -offset * isum;
    }

    /// Copies the codes of every whole group of row `i` from `q` into `qg`.
    pub(super) fn group_row(&mut self, i: usize) {
        let (qs, gs) = (self.q_stride(), self.g_stride());
        let (src, dst) = (&self.q[i * qs..], &mut self.qg[i * gs..(i + 1) * gs]);
        for (g, dst) in dst.chunks_exact_mut(GROUP * 32).enumerate() {
            for (l, blk) in src[g * GROUP * 32..(g + 1) * GROUP * 32]
                .chunks_exact(32)
                .enumerate()
            {
                for (w, word) in blk.chunks_exact(4).enumerate() {
                    dst[(GROUP * w + l) * 4..(GROUP * w + l) * 4 + 4].copy_from_slice(word);
                }
            }
        }
    }

    pub(super) fn zeroed(m: usize, cols: usize) -> Self {
        let nb = cols / 32;
        let (qs, ss) = (nb.next_multiple_of(2) * 32, nb.next_multiple_of(16));
        Q8Rows {
            nb,
            q: vec![0; m * qs],
            qg: vec![0; m * (nb / GROUP * GROUP * 32)],
            init: vec![0; m * ss],
            d: vec![0.0; m * ss],
            sq: vec![0.0; m * ss],
        }
    }

    /// The portable quantisation (the reference of [`Q8Rows::quantize`]'s AVX-512 one).
    pub fn quantize_portable(x: &[f32], m: usize, cols: usize, offset: i32) -> Self {
        let mut a = Self::zeroed(m, cols);
        let qs = a.q_stride();
        for i in 0..m {
            for b in 0..a.nb {
                let xb = &x[i * cols + b * 32..i * cols + b * 32 + 32];
                let amax = xb.iter().fold(0f32, |s, v| s.max(v.abs()));
                let (d, id) = scales(amax);
                let mut isum = 0i32;
                for (j, &v) in xb.iter().enumerate() {
                    let q = (v * id).round_ties_even() as i32;
                    a.q[i * qs + b * 32 + j] = q as i8;
                    isum += q;
                }
                a.put_block(i, b, d, isum, offset);
            }
            a.group_row(i);
        }
        a
    }

    /// `m` rows of `cols` (a multiple of 32) values, quantised for weights whose codes are
    /// offset by `offset`.
    pub fn quantize(x: &[f32], m: usize, cols: usize, offset: i32) -> Self {
        assert!(x.len() >= m * cols && cols.is_multiple_of(32));
        #[cfg(target_arch = "x86_64")]
        if super::vnni::available() {
            let mut a = Self::zeroed(m, cols);
            // SAFETY: `available()` checked AVX-512 F/BW/VL/VNNI; `a` was sized for `m` rows of
            // `cols` and `x` holds them (asserted).
            unsafe { super::vnni::quantize_avx512(x, m, cols, offset, &mut a) };
            return a;
        }
        Self::quantize_portable(x, m, cols, offset)
    }
}

/// The block scale and its reciprocal; an all-zero block has both 0 (its codes are 0).
#[inline(always)]
pub(super) fn scales(amax: f32) -> (f32, f32) {
    if amax > 0.0 {
        (amax / 127.0, 127.0 / amax)
    } else {
        (0.0, 0.0)
    }
}
