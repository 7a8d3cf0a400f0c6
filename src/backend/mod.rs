//! The narrow device interface the model is written against, and the plan types its ops take.
//!
//! Conventions, for every op:
//! - argument order: outputs, inputs, weights, sizes;
//! - buffers are row-major `[rows, width]` f32 (a device may store weights narrower);
//! - **gradient convention**: parameter gradients accumulate (`+=`, into the flat gradient
//!   buffer); activation gradients overwrite (`=`) unless the op takes `accumulate: bool` because
//!   the tensor has two consumers (the residual stream, the K/V rows read by several segments).

pub mod colops;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod device;
pub mod scalar;
pub mod weight;

use std::ops::Range;
pub use weight::HostWeight;

/// Which keys a query may see, decided by token positions (so one rule serves packed segments,
/// prefix caches and decoding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaskKind {
    /// key position <= query position
    Causal,
    /// every key
    Full,
    /// key position >= query position (the anti-causal ablation)
    AntiCausal,
}

/// One attention group: a contiguous range of query rows that reads the union of some key rows
/// under one mask. A packed batch is a list of groups (cu_seqlens-style, no padding).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttnGroup {
    pub q: Range<usize>,
    pub kv: Vec<Range<usize>>,
    pub mask: MaskKind,
}

#[derive(Clone, Debug, Default)]
pub struct AttnPlan {
    pub groups: Vec<AttnGroup>,
    /// Position of each query row.
    pub q_pos: Vec<u32>,
    /// Position of each key row.
    pub k_pos: Vec<u32>,
}

#[derive(Clone, Copy, Debug)]
pub struct AttnDims {
    pub q_heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
}

/// What the attention ops take besides tensors: the plan of groups and positions, and the head
/// layout.
#[derive(Clone, Copy, Debug)]
pub struct AttnArgs<'a> {
    pub plan: &'a AttnPlan,
    pub dims: AttnDims,
}

/// The forward's tensors that [`Backend::attention_bwd`] reads: its inputs, its output and the
/// log-sum-exp of each (query row, head).
#[derive(Debug)]
pub struct AttnSaved<'a, T: ?Sized> {
    pub q: &'a T,
    pub k: &'a T,
    pub v: &'a T,
    pub out: &'a T,
    pub lse: &'a T,
}

// By hand: derive would require `T: Copy`, but only the references are copied.
impl<T: ?Sized> Clone for AttnSaved<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T: ?Sized> Copy for AttnSaved<'_, T> {}

/// Where [`Backend::copy_rows`] reads and writes: rows `src_row..src_row+rows` of the source
/// onto rows `dst_row..dst_row+rows` of the destination, rows of `width`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowCopy {
    pub dst_row: usize,
    pub src_row: usize,
    pub rows: usize,
    pub width: usize,
}

/// Sizes and flavour of a normalisation over `rows` rows of `d` ([`Backend::norm_fwd`],
/// [`Backend::norm_bwd`]); the backward reads the statistics saved by the forward, not `eps`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NormArgs {
    pub rows: usize,
    pub d: usize,
    pub kind: Norm,
    pub eps: f32,
}

/// Head layout of a [`Backend::rope`]: the first `rot_dim` channels of each of `heads` heads of
/// `head_dim` are rotated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RopeArgs {
    pub heads: usize,
    pub head_dim: usize,
    pub rot_dim: usize,
}

/// The three row spans of a kv-mix in one K (or V) buffer, rows of `width`: `n` rows at `mix`
/// are written from the `n` rows at `c` (causal pass) and at `b` (bidirectional pass).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvMix {
    pub mix: usize,
    pub c: usize,
    pub b: usize,
    pub n: usize,
    pub width: usize,
}

/// Where θ of a kv-mix lives in the flat parameter buffer (`off`), and the θ_init of
/// `α = |θ| / (|θ| + θ_init)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Theta {
    pub off: usize,
    pub init: f32,
}

/// The segments of a LoRA product and its sizes: x is `[*, k]`, y `[*, n]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoraArgs<'a> {
    pub segs: &'a [LoraSeg],
    pub k: usize,
    pub n: usize,
}

/// What [`Backend::cross_entropy`] scores each row of logits against: its target token and
/// its weight in the loss.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CrossEntropyTargets<'a> {
    pub tokens: &'a [u32],
    pub weights: &'a [f32],
}

/// A LoRA update applied to a contiguous row range: `y[rows] += scale · (x[rows] Aᵀ) Bᵀ`, with A
/// `[rank, in]` and B `[out, rank]` stored at offsets of the flat parameter buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoraSeg {
    pub rows: Range<usize>,
    pub a_off: usize,
    pub b_off: usize,
    pub rank: usize,
    pub scale_bits: u32,
}

impl LoraSeg {
    pub fn scale(&self) -> f32 {
        f32::from_bits(self.scale_bits)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Silu,
    GeluTanh,
    Gelu,
}

/// Normalisation flavours: RMSNorm with `w`, RMSNorm with `1 + w` (Gemma), LayerNorm with bias.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Norm {
    Rms,
    RmsPlusOne,
    Layer,
}

/// AdamW hyperparameters for one step (HF variant: eps added to the uncorrected √v, bias
/// correction folded into the step size).
#[derive(Clone, Copy, Debug)]
pub struct AdamStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// 1-based step count
    pub t: u64,
}

/// Runs `f` on a worker of rayon's global pool (directly when already on one). The CPU kernels
/// split their work with rayon; called from a thread outside the pool, each of the hundreds of
/// parallel ops in a forward pass is a cross-thread hand-off and wake-up, which cost decoding
/// (one token: ~500 small ops) as much as its matmuls.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        rayon::scope(|_| f())
    }
}

/// Device memory a backend has handed out (bytes), for reports (`bench --device cuda`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    pub in_use_bytes: u64,
    pub peak_bytes: u64,
    /// Allocations made so far.
    pub allocations: u64,
}

pub trait Backend: Send + Sync {
    type Buf: Send + Sync;
    /// A frozen matrix (a linear layer's weight, the embedding table) held the way this backend
    /// reads it fastest; built once, at load, by [`Backend::upload_weight`].
    type Weight: Send + Sync;
    /// One linear's low-rank adapter in the form this backend's decoding reads (see
    /// [`Backend::lora_pack`]).
    type LoraPack: Send + Sync;

    fn name(&self) -> String;
    /// Waits until every queued op has finished (timing an asynchronous device); a no-op on the
    /// CPU, whose ops finish before they return.
    fn synchronize(&self) {}
    /// Device memory in use and at its peak, where the backend tracks it.
    fn memory(&self) -> Option<MemoryStats> {
        None
    }
    /// A copy of `buf`, made where the buffer lives.
    fn duplicate(&self, buf: &Self::Buf) -> Self::Buf {
        let n = self.len(buf);
        let mut d = self.zeros(n);
        let all = RowCopy {
            dst_row: 0,
            src_row: 0,
            rows: 1,
            width: n,
        };
        self.copy_rows(&mut d, buf, all, false);
        d
    }
    fn zeros(&self, n: usize) -> Self::Buf;
    fn upload(&self, data: &[f32]) -> Self::Buf;
    fn download(&self, buf: &Self::Buf) -> Vec<f32>;
    fn len(&self, buf: &Self::Buf) -> usize;
    fn fill(&self, buf: &mut Self::Buf, value: f32);
    /// Takes a frozen weight into this backend's form.
    fn upload_weight(&self, w: HostWeight) -> Self::Weight;
    /// A weight's f32 values, row-major `[n, k]`, on the host.
    fn download_weight(&self, w: &Self::Weight) -> Vec<f32>;
    /// A weight's `(n, k)`: rows (output features), columns (input features).
    fn weight_shape(&self, w: &Self::Weight) -> (usize, usize);
    /// Bytes of `w` that one [`Backend::matmul_fwd`] over `rows` rows of `x` reads: the size of
    /// the form this backend's product reads at that row count (a compact form for decoding's
    /// few rows where the backend holds one, else f32). Divided by the memory bandwidth, it is the
    /// floor under a decoding step, where reading the weights is the whole cost.
    fn weight_bytes_read(&self, w: &Self::Weight, rows: usize) -> u64;
    /// Bytes of `table` that [`Backend::embedding_fwd`] of `rows` ids reads: `rows` f32 rows of
    /// the table, the form every backend gathers from.
    fn embedding_bytes_read(&self, table: &Self::Weight, rows: usize) -> u64 {
        let (_, k) = self.weight_shape(table);
        (rows * k * std::mem::size_of::<f32>()) as u64
    }
    /// Copies `buf[off..off+n]` to the host (small reads: θ, a row of logits).
    fn download_range(&self, buf: &Self::Buf, off: usize, n: usize) -> Vec<f32>;
    /// `buf[off..off+len] += vals` from the host.
    fn add_host(&self, buf: &mut Self::Buf, off: usize, vals: &[f32]);

    /// The first index of the largest of `buf[..n]` (greedy decoding): a device finds it where
    /// the logits are and returns one integer instead of the logits.
    fn argmax(&self, buf: &Self::Buf, n: usize) -> u32 {
        scalar::argmax(&self.download_range(buf, 0, n))
    }
    /// `dst[dst_row..dst_row+rows] (+)= src[src_row..src_row+rows]`, rows of `width`.
    fn copy_rows(&self, dst: &mut Self::Buf, src: &Self::Buf, at: RowCopy, accumulate: bool);
    /// Makes room in `buf` for `extra` more values, so that appending them moves nothing (a KV
    /// cache about to grow by the rows of a known number of decoded tokens). The default, for
    /// buffers that cannot hold spare room, does nothing.
    fn reserve(&self, _buf: &mut Self::Buf, _extra: usize) {}
    /// Appends `src[src_row..src_row+rows]` (rows of `width`) to the end of `dst`. The default
    /// reallocates; backends whose buffers can grow in place amortise it (a KV cache grows by
    /// one row per decoded token).
    fn append_rows(
        &self,
        dst: &mut Self::Buf,
        src: &Self::Buf,
        src_row: usize,
        rows: usize,
        width: usize,
    ) {
        let have = self.len(dst) / width;
        let mut grown = self.zeros((have + rows) * width);
        let old = RowCopy {
            dst_row: 0,
            src_row: 0,
            rows: have,
            width,
        };
        self.copy_rows(&mut grown, dst, old, false);
        let new = RowCopy {
            dst_row: have,
            src_row,
            rows,
            width,
        };
        self.copy_rows(&mut grown, src, new, false);
        *dst = grown;
    }
    /// `out[i] = src[idx[i]]`, rows of `width`.
    fn gather_rows(&self, out: &mut Self::Buf, src: &Self::Buf, idx: &[usize], width: usize);
    /// `out[idx[i]] += src[i]`, rows of `width`.
    fn scatter_add_rows(&self, out: &mut Self::Buf, src: &Self::Buf, idx: &[usize], width: usize);
    /// `y += x`
    fn add(&self, y: &mut Self::Buf, x: &Self::Buf);

    fn embedding_fwd(
        &self,
        out: &mut Self::Buf,
        ids: &[u32],
        table: &Self::Weight,
        dim: usize,
        scale: f32,
    );

    /// `y[m,n] (+)= x[m,k] · Wᵀ (+ bias)` with `W` `[n, k]` a frozen weight. How the weight is
    /// read (a compact form, a backend-specific layout, plain f32) is the backend's choice, made
    /// per call from `m`; every choice gives the same product up to the order of the additions.
    fn matmul_fwd(
        &self,
        y: &mut Self::Buf,
        x: &Self::Buf,
        w: &Self::Weight,
        bias: Option<&Self::Buf>,
        m: usize,
        accumulate: bool,
    );
    /// `dx[m,k] (+)= dy[m,n] · W` with `W` `[n, k]` a frozen weight.
    fn matmul_bwd_x(
        &self,
        dx: &mut Self::Buf,
        dy: &Self::Buf,
        w: &Self::Weight,
        m: usize,
        accumulate: bool,
    );
    /// The decoding form of the adapter of `seg` (A and B read from `params`) on `w` (`[n, k]`),
    /// for [`Backend::matmul_lora_fwd`]: built once per adapter state, then read by every
    /// decoding step. `None` (the default) where this backend decodes through `lora_fwd`.
    fn lora_pack(
        &self,
        _w: &Self::Weight,
        _params: &Self::Buf,
        _seg: &LoraSeg,
        _k: usize,
        _n: usize,
    ) -> Option<Self::LoraPack> {
        None
    }
    /// `y[1, n] = x[1, k] · Wᵀ (+ bias) + s·B·A·x` for one row, through a pack that
    /// [`Backend::lora_pack`] built on `w`: the frozen product and the adapter in one pass.
    fn matmul_lora_fwd(
        &self,
        y: &mut Self::Buf,
        x: &Self::Buf,
        w: &Self::Weight,
        bias: Option<&Self::Buf>,
        pack: &Self::LoraPack,
    );
    /// Segment-aware LoRA: for each segment, `y[rows] += s·(x[rows] Aᵀ) Bᵀ` (x is `[*, k]`, y `[*, n]`).
    fn lora_fwd(&self, y: &mut Self::Buf, x: &Self::Buf, params: &Self::Buf, a: LoraArgs);
    /// LoRA backward: `dx[rows] += s·(dy Bᵀᵀ…)`: dx += s·(dy B) A, dA += s·(dy B)ᵀ x, dB += s·dyᵀ (x Aᵀ).
    fn lora_bwd(
        &self,
        dx: &mut Self::Buf,
        grads: &mut Self::Buf,
        dy: &Self::Buf,
        x: &Self::Buf,
        params: &Self::Buf,
        a: LoraArgs,
    );

    /// `y[r, j] *= v[v_off + j]` for `r` in `rows` (`y` is `[*, width]`): DoRA's `m/n` and IA3's
    /// scaling of a segment's rows. The default round-trips through the host.
    fn mul_cols(
        &self,
        y: &mut Self::Buf,
        rows: Range<usize>,
        width: usize,
        v: &Self::Buf,
        v_off: usize,
    ) {
        let (mut h, v) = (self.download(y), self.download_range(v, v_off, width));
        colops::mul_cols(&mut h, rows, width, &v);
        *y = self.upload(&h);
    }
    /// `y[r, j] += v[v_off + j]` for `r` in `rows` (a bias added after DoRA's scaling).
    fn add_cols(
        &self,
        y: &mut Self::Buf,
        rows: Range<usize>,
        width: usize,
        v: &Self::Buf,
        v_off: usize,
    ) {
        let (mut h, v) = (self.download(y), self.download_range(v, v_off, width));
        colops::add_cols(&mut h, rows, width, &v);
        *y = self.upload(&h);
    }
    /// `out[out_off + j] += Σ_{r ∈ rows} a[r, j]·b[r, j]`: the gradient of a per-column scale
    /// (DoRA's magnitude, IA3's vector), accumulated like every parameter gradient.
    fn col_dot(
        &self,
        out: &mut Self::Buf,
        out_off: usize,
        a: &Self::Buf,
        b: &Self::Buf,
        rows: Range<usize>,
        width: usize,
    ) {
        let mut o = vec![0f32; width];
        colops::col_dot(&mut o, &self.download(a), &self.download(b), rows, width);
        self.add_host(out, out_off, &o);
    }
    /// `out[j] = 1 / ‖W_j + s·(B A)_j‖₂` over the `n` rows of `w` (`[n, k]`), with the LoRA pair
    /// and scale of `seg`: DoRA's weight norm (a constant to the backward), inverted.
    fn dora_inv_norm(
        &self,
        out: &mut Self::Buf,
        w: &Self::Weight,
        params: &Self::Buf,
        seg: &LoraSeg,
    ) {
        let (n, k) = self.weight_shape(w);
        let a = self.download_range(params, seg.a_off, seg.rank * k);
        let b = self.download_range(params, seg.b_off, n * seg.rank);
        let norms = colops::dora_row_norms(&self.download_weight(w), &a, &b, seg.scale(), k, n);
        *out = self.upload(&norms.iter().map(|x| 1.0 / x).collect::<Vec<_>>());
    }

    /// Normalises each row of `x` (`[rows, d]`); `stats` receives 2 floats per row (mean, rstd)
    /// for the backward.
    fn norm_fwd(
        &self,
        out: &mut Self::Buf,
        stats: &mut Self::Buf,
        x: &Self::Buf,
        w: &Self::Buf,
        b: Option<&Self::Buf>,
        a: NormArgs,
    );
    /// `dx (+)= ∂norm/∂x · dy` (weights are frozen: no weight gradient).
    // Five buffers (the gradient in and out, the forward's input and statistics, the weight),
    // the sizes and the accumulate flag every activation-gradient op takes: none groups further.
    #[allow(clippy::too_many_arguments)]
    fn norm_bwd(
        &self,
        dx: &mut Self::Buf,
        dy: &Self::Buf,
        x: &Self::Buf,
        stats: &Self::Buf,
        w: &Self::Buf,
        a: NormArgs,
        accumulate: bool,
    );

    /// In-place rotary embedding of the first `rot_dim` channels of every head (HF rotate_half
    /// layout); `inverse` rotates back, which is the backward.
    fn rope(&self, x: &mut Self::Buf, pos: &[u32], a: RopeArgs, inv_freq: &[f32], inverse: bool);

    /// Segment attention forward; `lse` receives the log-sum-exp of each (query row, head).
    fn attention_fwd(
        &self,
        out: &mut Self::Buf,
        lse: &mut Self::Buf,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        a: AttnArgs,
    );
    /// Segment attention backward: dq overwritten, dk/dv accumulated (key rows are shared).
    fn attention_bwd(
        &self,
        dq: &mut Self::Buf,
        dk: &mut Self::Buf,
        dv: &mut Self::Buf,
        dout: &Self::Buf,
        fwd: AttnSaved<Self::Buf>,
        a: AttnArgs,
    );

    /// `buf[mix..mix+n] = (1-α)·buf[c..c+n] + α·buf[b..b+n]` (rows of `width`), in fp32.
    fn kv_mix_fwd(&self, buf: &mut Self::Buf, m: KvMix, alpha: f32);
    /// Folds `dbuf[mix..]` into `dbuf[c..] += (1-α)·dmix`, `dbuf[b..] += α·dmix` and returns
    /// `Σ (K_B − K_C) ⊙ dmix` (the caller multiplies by dα/dθ).
    fn kv_mix_bwd(&self, dbuf: &mut Self::Buf, buf: &Self::Buf, m: KvMix, alpha: f32) -> f64;

    /// [`Backend::kv_mix_fwd`] with `α = |θ| / (|θ| + θ.init)`, θ = `params[θ.off]`, read
    /// where the parameters live (a device keeps θ on the device).
    fn kv_mix_fwd_theta(&self, buf: &mut Self::Buf, m: KvMix, params: &Self::Buf, theta: Theta) {
        let th = self.download_range(params, theta.off, 1)[0];
        let a = scalar::alpha(th, theta.init);
        self.kv_mix_fwd(buf, m, a);
    }
    /// [`Backend::kv_mix_bwd`] with α from θ = `params[θ.off]`, whose gradient
    /// `dα/dθ · Σ (K_B − K_C) ⊙ dmix` it accumulates into `grads[θ.off]` (in f64, then f32).
    fn kv_mix_bwd_theta(
        &self,
        dbuf: &mut Self::Buf,
        buf: &Self::Buf,
        m: KvMix,
        params: &Self::Buf,
        theta: Theta,
        grads: &mut Self::Buf,
    ) {
        let th = self.download_range(params, theta.off, 1)[0];
        let a = scalar::alpha(th, theta.init);
        let s = self.kv_mix_bwd(dbuf, buf, m, a);
        let d = scalar::dalpha_dtheta(th, theta.init) as f64 * s;
        self.add_host(grads, theta.off, &[d as f32]);
    }

    /// `out = act(gate) ⊙ up` (gated) or `out = act(gate)` (`up` = None).
    fn act_fwd(
        &self,
        out: &mut Self::Buf,
        gate: &Self::Buf,
        up: Option<&Self::Buf>,
        act: Activation,
    );
    /// Backward of `act_fwd`: overwrites `dgate` (and `dup`).
    fn act_bwd(
        &self,
        dgate: &mut Self::Buf,
        dup: Option<&mut Self::Buf>,
        dout: &Self::Buf,
        gate: &Self::Buf,
        up: Option<&Self::Buf>,
        act: Activation,
    );

    /// Weighted cross-entropy over rows of logits `[rows, vocab]`: returns Σ wᵢ·(−log pᵢ[tᵢ]) and
    /// overwrites `logits` with its gradient `wᵢ·(softmax − onehot)` when `grad` is set.
    /// `logprobs[i]` receives log pᵢ[tᵢ] and `greedy[i]` whether tᵢ is the argmax.
    fn cross_entropy(
        &self,
        logits: &mut Self::Buf,
        targets: CrossEntropyTargets,
        vocab: usize,
        grad: bool,
        logprobs: &mut [f64],
        greedy: &mut [bool],
    ) -> f64;

    /// Sum of squares of a buffer (global gradient-norm clipping).
    fn sum_sq(&self, x: &Self::Buf) -> f64;
    fn scale(&self, x: &mut Self::Buf, s: f32);
    /// AdamW on a flat buffer.
    fn adamw(
        &self,
        p: &mut Self::Buf,
        g: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        h: AdamStep,
    );
    /// `p -= lr·g`
    fn sgd(&self, p: &mut Self::Buf, g: &Self::Buf, lr: f32);
}
