//! `Backend` for `CudaBackend`: every method delegates to a checked launch wrapper in `ops.rs`,
//! `gemm.rs` or `attention.rs`.

use super::{CudaBackend, CudaBuf, CudaWeight};
use crate::backend::{
    Activation, AdamStep, AttnDims, AttnPlan, Backend, HostWeight, LoraSeg, MemoryStats, Norm,
};

impl Backend for CudaBackend {
    type Buf = CudaBuf;
    type Weight = CudaWeight;

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
        self.copy_rows_k(&mut d, 0, buf, 0, 1, buf.len(), false);
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
        self.fill_buf(buf, value)
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
        self.argmax_k(buf, n)
    }
    fn add_host(&self, buf: &mut CudaBuf, off: usize, vals: &[f32]) {
        let v = self.upload(vals);
        self.add_at(buf, off, &v, vals.len())
    }

    fn copy_rows(
        &self,
        dst: &mut CudaBuf,
        dst_row: usize,
        src: &CudaBuf,
        src_row: usize,
        rows: usize,
        width: usize,
        accumulate: bool,
    ) {
        self.copy_rows_k(dst, dst_row, src, src_row, rows, width, accumulate)
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
            let mut grown = self.alloc_with_capacity(dst.len(), cap_rows * width);
            self.copy_rows_k(&mut grown, 0, dst, 0, have, width, false);
            *dst = grown;
        }
        dst.set_len(need);
        self.copy_rows_k(dst, have, src, src_row, rows, width, false);
    }
    fn gather_rows(&self, out: &mut CudaBuf, src: &CudaBuf, idx: &[usize], width: usize) {
        self.gather(out, src, idx, width)
    }
    fn scatter_add_rows(&self, out: &mut CudaBuf, src: &CudaBuf, idx: &[usize], width: usize) {
        self.scatter_add(out, src, idx, width)
    }
    fn add(&self, y: &mut CudaBuf, x: &CudaBuf) {
        assert_eq!(y.len(), x.len(), "cuda add: length mismatch");
        let n = y.len();
        self.add_at(y, 0, x, n)
    }

    fn embedding_fwd(
        &self,
        out: &mut CudaBuf,
        ids: &[u32],
        table: &CudaWeight,
        dim: usize,
        scale: f32,
    ) {
        self.embedding(out, ids, &table.f32, dim, scale)
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
    fn lora_fwd(
        &self,
        y: &mut CudaBuf,
        x: &CudaBuf,
        params: &CudaBuf,
        segs: &[LoraSeg],
        k: usize,
        n: usize,
    ) {
        self.lora_f(y, x, params, segs, k, n)
    }
    fn lora_bwd(
        &self,
        dx: &mut CudaBuf,
        grads: &mut CudaBuf,
        dy: &CudaBuf,
        x: &CudaBuf,
        params: &CudaBuf,
        segs: &[LoraSeg],
        k: usize,
        n: usize,
    ) {
        self.lora_b(dx, grads, dy, x, params, segs, k, n)
    }

    fn norm_fwd(
        &self,
        out: &mut CudaBuf,
        stats: &mut CudaBuf,
        x: &CudaBuf,
        w: &CudaBuf,
        b: Option<&CudaBuf>,
        rows: usize,
        d: usize,
        kind: Norm,
        eps: f32,
    ) {
        self.norm_f(out, stats, x, w, b, rows, d, kind, eps)
    }
    fn norm_bwd(
        &self,
        dx: &mut CudaBuf,
        dy: &CudaBuf,
        x: &CudaBuf,
        stats: &CudaBuf,
        w: &CudaBuf,
        rows: usize,
        d: usize,
        kind: Norm,
        accumulate: bool,
    ) {
        self.norm_b(dx, dy, x, stats, w, rows, d, kind, accumulate)
    }

    fn rope(
        &self,
        x: &mut CudaBuf,
        pos: &[u32],
        heads: usize,
        head_dim: usize,
        rot_dim: usize,
        inv_freq: &[f32],
        inverse: bool,
    ) {
        self.rope_k(x, pos, heads, head_dim, rot_dim, inv_freq, inverse)
    }

    fn attention_fwd(
        &self,
        out: &mut CudaBuf,
        lse: &mut CudaBuf,
        q: &CudaBuf,
        k: &CudaBuf,
        v: &CudaBuf,
        plan: &AttnPlan,
        dims: AttnDims,
    ) {
        self.attn_fwd(out, lse, q, k, v, plan, dims)
    }
    fn attention_bwd(
        &self,
        dq: &mut CudaBuf,
        dk: &mut CudaBuf,
        dv: &mut CudaBuf,
        dout: &CudaBuf,
        q: &CudaBuf,
        k: &CudaBuf,
        v: &CudaBuf,
        out: &CudaBuf,
        lse: &CudaBuf,
        plan: &AttnPlan,
        dims: AttnDims,
    ) {
        self.attn_bwd(dq, dk, dv, dout, q, k, v, out, lse, plan, dims)
    }

    fn kv_mix_fwd(
        &self,
        buf: &mut CudaBuf,
        mix: usize,
        c: usize,
        b: usize,
        n: usize,
        width: usize,
        alpha: f32,
    ) {
        self.mix_fwd(buf, mix, c, b, n, width, alpha)
    }
    fn kv_mix_bwd(
        &self,
        dbuf: &mut CudaBuf,
        buf: &CudaBuf,
        mix: usize,
        c: usize,
        b: usize,
        n: usize,
        width: usize,
        alpha: f32,
    ) -> f64 {
        self.mix_bwd(dbuf, buf, mix, c, b, n, width, alpha)
    }

    fn kv_mix_fwd_theta(
        &self,
        buf: &mut CudaBuf,
        mix: usize,
        c: usize,
        b: usize,
        n: usize,
        width: usize,
        params: &CudaBuf,
        theta: usize,
        theta_init: f32,
    ) {
        self.mix_fwd_theta(buf, mix, c, b, n, width, params, theta, theta_init)
    }
    fn kv_mix_bwd_theta(
        &self,
        dbuf: &mut CudaBuf,
        buf: &CudaBuf,
        mix: usize,
        c: usize,
        b: usize,
        n: usize,
        width: usize,
        params: &CudaBuf,
        theta: usize,
        theta_init: f32,
        grads: &mut CudaBuf,
    ) {
        self.mix_bwd_theta(
            dbuf, buf, mix, c, b, n, width, params, theta, theta_init, grads,
        )
    }
    fn mul_cols(
        &self,
        y: &mut CudaBuf,
        rows: std::ops::Range<usize>,
        width: usize,
        v: &CudaBuf,
        v_off: usize,
    ) {
        self.cols_k(false, y, rows, width, v, v_off)
    }
    fn add_cols(
        &self,
        y: &mut CudaBuf,
        rows: std::ops::Range<usize>,
        width: usize,
        v: &CudaBuf,
        v_off: usize,
    ) {
        self.cols_k(true, y, rows, width, v, v_off)
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
        self.col_dot_k(out, out_off, a, b, rows, width)
    }
    fn dora_inv_norm(&self, out: &mut CudaBuf, w: &CudaWeight, params: &CudaBuf, seg: &LoraSeg) {
        self.dora_inv_norm_k(out, &w.f32, params, seg, w.k, w.n)
    }

    fn act_fwd(&self, out: &mut CudaBuf, gate: &CudaBuf, up: Option<&CudaBuf>, act: Activation) {
        self.act_f(out, gate, up, act)
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
        self.act_b(dgate, dup, dout, gate, up, act)
    }

    fn cross_entropy(
        &self,
        logits: &mut CudaBuf,
        targets: &[u32],
        weights: &[f32],
        vocab: usize,
        grad: bool,
        logprobs: &mut [f64],
        greedy: &mut [bool],
    ) -> f64 {
        self.xent(logits, targets, weights, vocab, grad, logprobs, greedy)
    }

    fn sum_sq(&self, x: &CudaBuf) -> f64 {
        self.sum_squares(x)
    }
    fn scale(&self, x: &mut CudaBuf, s: f32) {
        self.scale_buf(x, s)
    }
    fn adamw(&self, p: &mut CudaBuf, g: &CudaBuf, m: &mut CudaBuf, v: &mut CudaBuf, h: AdamStep) {
        self.adamw_k(p, g, m, v, h)
    }
    fn sgd(&self, p: &mut CudaBuf, g: &CudaBuf, lr: f32) {
        self.sgd_k(p, g, lr)
    }
}
