//! `Backend` for `CudaBackend`: every method delegates to the checked launch wrapper of the same
//! name in its family's file (`ops.rs`, `rowwise.rs`, `cols.rs`, `lora.rs`, `attention.rs`,
//! `gemm.rs`), which launches the kernel of that name (docs/ARCHITECTURE.md, "The backend seam").

use super::{attention, cols, lora, ops, rowwise, CudaBackend, CudaBuf, CudaWeight};
use crate::backend::{
    Activation, AdamStep, AttnArgs, AttnSaved, Backend, CrossEntropyTargets, HostWeight, KvMix,
    LoraArgs, LoraSeg, MemoryStats, NormArgs, RopeArgs, RowCopy, Theta,
};

impl Backend for CudaBackend {
    type Buf = CudaBuf;
    type Weight = CudaWeight;
    type LoraPack = std::convert::Infallible;

    fn name(&self) -> String {
        self.name.clone()
    }
    fn synchronize(&self) {
        CudaBackend::synchronize(self).unwrap_or_else(|e| self.fail("synchronizing", e))
    }
    fn memory(&self) -> Option<MemoryStats> {
        Some(self.memory_stats())
    }
    fn duplicate(&self, buf: &CudaBuf) -> CudaBuf {
        let mut d = self.alloc_zeros(buf.len());
        let all = RowCopy {
            dst_row: 0,
            src_row: 0,
            rows: 1,
            width: buf.len(),
        };
        ops::copy_rows(self, &mut d, buf, all, false);
        d
    }
    #[track_caller]
    fn zeros(&self, n: usize) -> CudaBuf {
        self.alloc_zeros(n)
    }
    #[track_caller]
    fn upload_weight(&self, w: HostWeight) -> CudaWeight {
        self.upload_weight_k(w)
    }
    fn download_weight(&self, w: &CudaWeight) -> Vec<f32> {
        self.download(&w.f32)
    }
    fn weight_shape(&self, w: &CudaWeight) -> (usize, usize) {
        (w.n, w.k)
    }
    fn weight_bytes_read(&self, w: &CudaWeight, _rows: usize) -> u64 {
        // Every product reads the f32 device buffer (the only form CudaWeight holds).
        (w.n * w.k * std::mem::size_of::<f32>()) as u64
    }
    #[track_caller]
    fn upload(&self, data: &[f32]) -> CudaBuf {
        if data.is_empty() {
            return self.alloc_zeros(0);
        }
        let mut b = self.alloc_zeros(data.len());
        self.stream
            .memcpy_htod(data, &mut *b.data)
            .unwrap_or_else(|e| self.fail(&format!("uploading {} f32", data.len()), e));
        b
    }
    fn download(&self, buf: &CudaBuf) -> Vec<f32> {
        self.download_small(&*buf.data, buf.len())
    }
    fn len(&self, buf: &CudaBuf) -> usize {
        buf.len()
    }
    fn fill(&self, buf: &mut CudaBuf, value: f32) {
        ops::fill(self, buf, value)
    }
    fn download_range(&self, buf: &CudaBuf, off: usize, n: usize) -> Vec<f32> {
        assert!(off + n <= buf.len(), "cuda download_range: out of range");
        if n == 0 {
            return vec![];
        }
        let mut out = vec![0f32; n];
        self.stream
            .memcpy_dtoh(&buf.data.slice(off..off + n), &mut out)
            .and_then(|_| self.stream.synchronize())
            .unwrap_or_else(|e| self.fail(&format!("downloading {n} f32"), e));
        out
    }
    fn argmax(&self, buf: &CudaBuf, n: usize) -> u32 {
        ops::argmax(self, buf, n)
    }
    fn add_host(&self, buf: &mut CudaBuf, off: usize, vals: &[f32]) {
        let v = self.upload(vals);
        ops::add(self, buf, off, &v, vals.len())
    }

    fn copy_rows(&self, dst: &mut CudaBuf, src: &CudaBuf, at: RowCopy, accumulate: bool) {
        ops::copy_rows(self, dst, src, at, accumulate)
    }
    fn reserve(&self, buf: &mut CudaBuf, extra: usize) {
        let need = buf.len() + extra;
        if need > buf.capacity() {
            move_to_capacity(self, buf, need);
        }
    }
    /// Grows `dst` in place while its allocation has room; otherwise moves it once into an
    /// allocation with room for as many rows again (at least 64 rows), so a KV cache growing by
    /// one row per decoded token is copied O(log n) times, not every step.
    fn append_rows(
        &self,
        dst: &mut CudaBuf,
        src: &CudaBuf,
        src_row: usize,
        rows: usize,
        width: usize,
    ) {
        let have = dst.len() / width.max(1);
        let need = (have + rows) * width;
        if need > dst.capacity() {
            let cap_rows = (have + rows).max(2 * have).max(64);
            move_to_capacity(self, dst, cap_rows * width);
        }
        dst.set_len(need);
        let new = RowCopy {
            dst_row: have,
            src_row,
            rows,
            width,
        };
        ops::copy_rows(self, dst, src, new, false);
    }
    fn gather_rows(&self, out: &mut CudaBuf, src: &CudaBuf, idx: &[usize], width: usize) {
        ops::gather_rows(self, out, src, idx, width)
    }
    fn scatter_add_rows(&self, out: &mut CudaBuf, src: &CudaBuf, idx: &[usize], width: usize) {
        ops::scatter_add_rows(self, out, src, idx, width)
    }
    fn add(&self, y: &mut CudaBuf, x: &CudaBuf) {
        assert_eq!(y.len(), x.len(), "cuda add: length mismatch");
        let n = y.len();
        ops::add(self, y, 0, x, n)
    }

    fn embedding_fwd(
        &self,
        out: &mut CudaBuf,
        ids: &[u32],
        table: &CudaWeight,
        dim: usize,
        scale: f32,
    ) {
        ops::embedding_fwd(self, out, ids, &table.f32, dim, scale)
    }

    fn matmul_fwd(
        &self,
        y: &mut CudaBuf,
        x: &CudaBuf,
        w: &CudaWeight,
        bias: Option<&CudaBuf>,
        m: usize,
        accumulate: bool,
    ) {
        self.matmul_fwd_k(y, x, w, bias, m, accumulate)
    }
    fn matmul_bwd_x(
        &self,
        dx: &mut CudaBuf,
        dy: &CudaBuf,
        w: &CudaWeight,
        m: usize,
        accumulate: bool,
    ) {
        self.matmul_bwd_x_k(dx, dy, w, m, accumulate)
    }
    fn matmul_lora_fwd(
        &self,
        _y: &mut CudaBuf,
        _x: &CudaBuf,
        _w: &Self::Weight,
        _bias: Option<&CudaBuf>,
        pack: &Self::LoraPack,
    ) {
        // This backend builds no packs (`lora_pack` is the default `None`): decoding runs the
        // product and `lora_fwd`.
        match *pack {}
    }
    fn lora_fwd(&self, y: &mut CudaBuf, x: &CudaBuf, params: &CudaBuf, a: LoraArgs) {
        lora::lora_fwd(self, y, x, params, a)
    }
    fn lora_bwd(
        &self,
        dx: &mut CudaBuf,
        grads: &mut CudaBuf,
        dy: &CudaBuf,
        x: &CudaBuf,
        params: &CudaBuf,
        a: LoraArgs,
    ) {
        lora::lora_bwd(self, dx, grads, dy, x, params, a)
    }

    fn norm_fwd(
        &self,
        out: &mut CudaBuf,
        stats: &mut CudaBuf,
        x: &CudaBuf,
        w: &CudaBuf,
        b: Option<&CudaBuf>,
        a: NormArgs,
    ) {
        rowwise::norm_fwd(self, out, stats, x, w, b, a)
    }
    fn norm_bwd(
        &self,
        dx: &mut CudaBuf,
        dy: &CudaBuf,
        x: &CudaBuf,
        stats: &CudaBuf,
        w: &CudaBuf,
        a: NormArgs,
        accumulate: bool,
    ) {
        rowwise::norm_bwd(self, dx, dy, x, stats, w, a, accumulate)
    }

    fn rope(&self, x: &mut CudaBuf, pos: &[u32], a: RopeArgs, inv_freq: &[f32], inverse: bool) {
        rowwise::rope(self, x, pos, a, inv_freq, inverse)
    }

    fn attention_fwd(
        &self,
        out: &mut CudaBuf,
        lse: &mut CudaBuf,
        q: &CudaBuf,
        k: &CudaBuf,
        v: &CudaBuf,
        a: AttnArgs,
    ) {
        attention::attention_fwd(self, out, lse, q, k, v, a)
    }
    fn attention_bwd(
        &self,
        dq: &mut CudaBuf,
        dk: &mut CudaBuf,
        dv: &mut CudaBuf,
        dout: &CudaBuf,
        fwd: AttnSaved<CudaBuf>,
        a: AttnArgs,
    ) {
        attention::attention_bwd(self, dq, dk, dv, dout, fwd, a)
    }

    fn kv_mix_fwd(&self, buf: &mut CudaBuf, m: KvMix, alpha: f32) {
        ops::kv_mix_fwd(self, buf, m, alpha)
    }
    fn kv_mix_bwd(&self, dbuf: &mut CudaBuf, buf: &CudaBuf, m: KvMix, alpha: f32) -> f64 {
        ops::kv_mix_bwd(self, dbuf, buf, m, alpha)
    }

    fn kv_mix_fwd_theta(&self, buf: &mut CudaBuf, m: KvMix, params: &CudaBuf, theta: Theta) {
        ops::kv_mix_fwd_theta(self, buf, m, params, theta)
    }
    fn kv_mix_bwd_theta(
        &self,
        dbuf: &mut CudaBuf,
        buf: &CudaBuf,
        m: KvMix,
        params: &CudaBuf,
        theta: Theta,
        grads: &mut CudaBuf,
    ) {
        ops::kv_mix_bwd_theta(self, dbuf, buf, m, params, theta, grads)
    }
    fn mul_cols(
        &self,
        y: &mut CudaBuf,
        rows: std::ops::Range<usize>,
        width: usize,
        v: &CudaBuf,
        v_off: usize,
    ) {
        cols::mul_cols(self, y, rows, width, v, v_off)
    }
    fn add_cols(
        &self,
        y: &mut CudaBuf,
        rows: std::ops::Range<usize>,
        width: usize,
        v: &CudaBuf,
        v_off: usize,
    ) {
        cols::add_cols(self, y, rows, width, v, v_off)
    }
    fn col_dot(
        &self,
        out: &mut CudaBuf,
        out_off: usize,
        a: &CudaBuf,
        b: &CudaBuf,
        rows: std::ops::Range<usize>,
        width: usize,
    ) {
        cols::col_dot(self, out, out_off, a, b, rows, width)
    }
    fn dora_inv_norm(&self, out: &mut CudaBuf, w: &CudaWeight, params: &CudaBuf, seg: &LoraSeg) {
        cols::dora_inv_norm(self, out, &w.f32, params, seg, w.k, w.n)
    }

    fn act_fwd(&self, out: &mut CudaBuf, gate: &CudaBuf, up: Option<&CudaBuf>, act: Activation) {
        ops::act_fwd(self, out, gate, up, act)
    }
    fn act_bwd(
        &self,
        dgate: &mut CudaBuf,
        dup: Option<&mut CudaBuf>,
        dout: &CudaBuf,
        gate: &CudaBuf,
        up: Option<&CudaBuf>,
        act: Activation,
    ) {
        ops::act_bwd(self, dgate, dup, dout, gate, up, act)
    }

    fn cross_entropy(
        &self,
        logits: &mut CudaBuf,
        targets: CrossEntropyTargets,
        vocab: usize,
        grad: bool,
        logprobs: &mut [f64],
        greedy: &mut [bool],
    ) -> f64 {
        rowwise::cross_entropy(self, logits, targets, vocab, grad, logprobs, greedy)
    }

    fn sum_sq(&self, x: &CudaBuf) -> f64 {
        rowwise::sum_sq(self, x)
    }
    fn scale(&self, x: &mut CudaBuf, s: f32) {
        ops::scale(self, x, s)
    }
    fn adamw(&self, p: &mut CudaBuf, g: &CudaBuf, m: &mut CudaBuf, v: &mut CudaBuf, h: AdamStep) {
        rowwise::adamw(self, p, g, m, v, h)
    }
    fn sgd(&self, p: &mut CudaBuf, g: &CudaBuf, lr: f32) {
        rowwise::sgd(self, p, g, lr)
    }
}

/// Moves `buf` into an allocation of `cap` values, its contents and length kept (a KV cache
/// growing past its room, or given room ahead of decoding).
fn move_to_capacity(be: &CudaBackend, buf: &mut CudaBuf, cap: usize) {
    let mut grown = be.alloc_with_capacity(buf.len(), cap);
    if !buf.is_empty() {
        let all = RowCopy {
            dst_row: 0,
            src_row: 0,
            rows: 1,
            width: buf.len(),
        };
        ops::copy_rows(be, &mut grown, buf, all, false);
    }
    *buf = grown;
}
