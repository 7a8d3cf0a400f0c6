//! The CPU reference backend: f32 everywhere, rayon across rows, `gemm` for matmuls. Simple
//! enough to trust; every device kernel is tested against it.

mod attention;
pub mod gemm;
mod lora;
pub mod lora_decode;
mod ops;
pub mod prof;
pub mod quant;
pub mod simd;
pub mod tiles;
pub mod weight;

use super::{
    Activation, AdamStep, AttnArgs, AttnSaved, Backend, CrossEntropyTargets, HostWeight, KvMix,
    LoraArgs, LoraSeg, NormArgs, RopeArgs, RowCopy,
};
use gemm::{rm, sgemm};
use rayon::prelude::*;
use std::ops::Range;
pub use weight::CpuWeight;

#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

/// `c[m,n] (+)= a[m,k] · b[k,n]`, all dense row-major: the AVX-512 tiles where present, else
/// the `gemm` crate.
fn mm(c: &mut [f32], a: &[f32], b: &[f32], m: usize, k: usize, n: usize, accumulate: bool) {
    if tiles::available() {
        tiles::matmul_nn(c, a, b, m, k, n, accumulate);
    } else {
        sgemm(m, n, k, rm(a, k), rm(b, n), c, n, accumulate);
    }
}

/// The transpose of a row-major `[rows, cols]` matrix.
fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; rows * cols];
    for (i, row) in x[..rows * cols].chunks_exact(cols).enumerate() {
        for (j, &v) in row.iter().enumerate() {
            t[j * rows + i] = v;
        }
    }
    t
}

impl Backend for Cpu {
    type Buf = Vec<f32>;
    type Weight = CpuWeight;
    type LoraPack = lora_decode::LoraPack;

    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }
    fn zeros(&self, n: usize) -> Vec<f32> {
        let _p = prof::scope("zeros");
        vec![0.0; n]
    }
    fn upload(&self, data: &[f32]) -> Vec<f32> {
        data.to_vec()
    }
    fn download(&self, buf: &Vec<f32>) -> Vec<f32> {
        buf.clone()
    }
    fn len(&self, buf: &Vec<f32>) -> usize {
        buf.len()
    }
    fn fill(&self, buf: &mut Vec<f32>, value: f32) {
        buf.fill(value)
    }
    fn upload_weight(&self, w: HostWeight) -> CpuWeight {
        CpuWeight::new(w)
    }
    fn download_weight(&self, w: &CpuWeight) -> Vec<f32> {
        w.values().to_vec()
    }
    fn weight_shape(&self, w: &CpuWeight) -> (usize, usize) {
        (w.n(), w.k())
    }
    fn weight_bytes_read(&self, w: &CpuWeight, rows: usize) -> u64 {
        w.bytes_read(rows)
    }
    fn download_range(&self, buf: &Vec<f32>, off: usize, n: usize) -> Vec<f32> {
        buf[off..off + n].to_vec()
    }
    fn add_host(&self, buf: &mut Vec<f32>, off: usize, vals: &[f32]) {
        buf[off..off + vals.len()]
            .iter_mut()
            .zip(vals)
            .for_each(|(a, b)| *a += b);
    }

    fn copy_rows(&self, dst: &mut Vec<f32>, src: &Vec<f32>, at: RowCopy, accumulate: bool) {
        let _p = prof::scope("copy_rows");
        let RowCopy {
            dst_row,
            src_row,
            rows,
            width,
        } = at;
        let d = &mut dst[dst_row * width..(dst_row + rows) * width];
        let s = &src[src_row * width..(src_row + rows) * width];
        if accumulate {
            d.iter_mut().zip(s).for_each(|(a, b)| *a += b);
        } else {
            d.copy_from_slice(s);
        }
    }

    fn reserve(&self, buf: &mut Vec<f32>, extra: usize) {
        // A hint: where the room cannot be had, appending grows the buffer as it goes.
        let _ = buf.try_reserve_exact(extra);
    }

    fn append_rows(
        &self,
        dst: &mut Vec<f32>,
        src: &Vec<f32>,
        src_row: usize,
        rows: usize,
        width: usize,
    ) {
        let _p = prof::scope("append_rows");
        dst.extend_from_slice(&src[src_row * width..(src_row + rows) * width]);
    }

    fn gather_rows(&self, out: &mut Vec<f32>, src: &Vec<f32>, idx: &[usize], width: usize) {
        let _p = prof::scope("gather_rows");
        for (i, &r) in idx.iter().enumerate() {
            out[i * width..(i + 1) * width].copy_from_slice(&src[r * width..(r + 1) * width]);
        }
    }

    fn scatter_add_rows(&self, out: &mut Vec<f32>, src: &Vec<f32>, idx: &[usize], width: usize) {
        let _p = prof::scope("scatter_add_rows");
        for (i, &r) in idx.iter().enumerate() {
            let s = &src[i * width..(i + 1) * width];
            out[r * width..(r + 1) * width]
                .iter_mut()
                .zip(s)
                .for_each(|(a, b)| *a += b);
        }
    }

    fn add(&self, y: &mut Vec<f32>, x: &Vec<f32>) {
        let _p = prof::scope("add");
        y.par_iter_mut()
            .zip(x.par_iter())
            .with_min_len(ops::MIN_SPLIT)
            .for_each(|(a, b)| *a += b);
    }

    fn embedding_fwd(
        &self,
        out: &mut Vec<f32>,
        ids: &[u32],
        table: &CpuWeight,
        dim: usize,
        scale: f32,
    ) {
        let _p = prof::scope("embedding_fwd");
        let table = table.values();
        for (i, &t) in ids.iter().enumerate() {
            let src = &table[t as usize * dim..(t as usize + 1) * dim];
            out[i * dim..(i + 1) * dim]
                .iter_mut()
                .zip(src)
                .for_each(|(o, s)| *o = s * scale);
        }
    }

    fn matmul_fwd(
        &self,
        y: &mut Vec<f32>,
        x: &Vec<f32>,
        w: &CpuWeight,
        bias: Option<&Vec<f32>>,
        m: usize,
        accumulate: bool,
    ) {
        // Timed per path inside (a nested scope would count the time twice).
        w.matmul_fwd(y, x, bias.map(|b| &b[..]), m, accumulate)
    }

    fn matmul_bwd_x(
        &self,
        dx: &mut Vec<f32>,
        dy: &Vec<f32>,
        w: &CpuWeight,
        m: usize,
        accumulate: bool,
    ) {
        let _p = prof::scope("matmul_bwd_x");
        let (n, k) = (w.n(), w.k());
        mm(
            &mut dx[..m * k],
            &dy[..m * n],
            w.values(),
            m,
            n,
            k,
            accumulate,
        );
    }

    fn lora_pack(
        &self,
        w: &CpuWeight,
        params: &Vec<f32>,
        seg: &LoraSeg,
        k: usize,
        n: usize,
    ) -> Option<lora_decode::LoraPack> {
        let r = seg.rank;
        let a = &params[seg.a_off..seg.a_off + r * k];
        let b = &params[seg.b_off..seg.b_off + n * r];
        w.lora_pack(a, b, seg.scale())
    }

    fn matmul_lora_fwd(
        &self,
        y: &mut Vec<f32>,
        x: &Vec<f32>,
        w: &CpuWeight,
        bias: Option<&Vec<f32>>,
        pack: &lora_decode::LoraPack,
    ) {
        w.matmul_lora_fwd(y, x, bias.map(|b| &b[..]), pack)
    }

    fn lora_fwd(&self, y: &mut Vec<f32>, x: &Vec<f32>, params: &Vec<f32>, la: LoraArgs) {
        let _p = prof::scope("lora_fwd");
        let LoraArgs { segs, k, n } = la;
        for s in segs {
            let rows = s.rows.len();
            if rows == 0 {
                continue;
            }
            let (r, sc) = (s.rank, s.scale());
            let a = &params[s.a_off..s.a_off + r * k];
            let b = &params[s.b_off..s.b_off + n * r];
            let xs = &x[s.rows.start * k..s.rows.end * k];
            let ys = &mut y[s.rows.start * n..s.rows.end * n];
            // Row by row (a decoding step is one), rows split across threads: A and B stay in
            // each core's caches, and the row kernel beats two skinny GEMMs (rank × k and
            // n × rank operands transposed every call) by about 2x at prompt sizes.
            ys.par_chunks_mut(n)
                .zip(xs.par_chunks(k))
                .with_min_len(4)
                .for_each(|(yr, xr)| lora::add_row(yr, xr, a, b, sc));
        }
    }

    fn lora_bwd(
        &self,
        dx: &mut Vec<f32>,
        grads: &mut Vec<f32>,
        dy: &Vec<f32>,
        x: &Vec<f32>,
        params: &Vec<f32>,
        la: LoraArgs,
    ) {
        let _p = prof::scope("lora_bwd");
        let LoraArgs { segs, k, n } = la;
        for s in segs {
            let rows = s.rows.len();
            if rows == 0 {
                continue;
            }
            let (r, sc) = (s.rank, s.scale());
            let a = &params[s.a_off..s.a_off + r * k];
            let b = &params[s.b_off..s.b_off + n * r];
            let xs = &x[s.rows.start * k..s.rows.end * k];
            let dys = &dy[s.rows.start * n..s.rows.end * n];
            let dxs = &mut dx[s.rows.start * k..s.rows.end * k];
            let [ga, gb] = grads
                .get_disjoint_mut([s.a_off..s.a_off + r * k, s.b_off..s.b_off + n * r])
                .expect("an adapter's A and B gradients are disjoint ranges of the buffer");
            lora::bwd_rows(dxs, ga, gb, dys, xs, a, b, sc, k, n);
        }
    }

    // DoRA/IA3 column ops on the buffers in place (the trait's defaults copy whole buffers).
    fn mul_cols(&self, y: &mut Vec<f32>, rows: Range<usize>, w: usize, v: &Vec<f32>, off: usize) {
        super::colops::mul_cols(y, rows, w, &v[off..off + w])
    }
    fn add_cols(&self, y: &mut Vec<f32>, rows: Range<usize>, w: usize, v: &Vec<f32>, off: usize) {
        super::colops::add_cols(y, rows, w, &v[off..off + w])
    }
    fn col_dot(
        &self,
        out: &mut Vec<f32>,
        off: usize,
        a: &Vec<f32>,
        b: &Vec<f32>,
        rows: Range<usize>,
        w: usize,
    ) {
        super::colops::col_dot(&mut out[off..off + w], a, b, rows, w)
    }
    fn dora_inv_norm(&self, out: &mut Vec<f32>, w: &CpuWeight, params: &Vec<f32>, seg: &LoraSeg) {
        let (n, k) = (w.n(), w.k());
        let a = &params[seg.a_off..seg.a_off + seg.rank * k];
        let b = &params[seg.b_off..seg.b_off + n * seg.rank];
        let norms = super::colops::dora_row_norms(w.values(), a, b, seg.scale(), k, n);
        out.iter_mut().zip(norms).for_each(|(o, x)| *o = 1.0 / x);
    }

    fn norm_fwd(
        &self,
        out: &mut Vec<f32>,
        stats: &mut Vec<f32>,
        x: &Vec<f32>,
        w: &Vec<f32>,
        b: Option<&Vec<f32>>,
        a: NormArgs,
    ) {
        let _p = prof::scope("norm_fwd");
        let (rows, d) = (a.rows, a.d);
        ops::norm_fwd(
            &mut out[..rows * d],
            &mut stats[..rows * 2],
            &x[..rows * d],
            w,
            b.map(|v| &v[..]),
            a,
        )
    }

    fn norm_bwd(
        &self,
        dx: &mut Vec<f32>,
        dy: &Vec<f32>,
        x: &Vec<f32>,
        stats: &Vec<f32>,
        w: &Vec<f32>,
        a: NormArgs,
        accumulate: bool,
    ) {
        let _p = prof::scope("norm_bwd");
        let (rows, d) = (a.rows, a.d);
        ops::norm_bwd(
            &mut dx[..rows * d],
            &dy[..rows * d],
            &x[..rows * d],
            &stats[..rows * 2],
            w,
            a,
            accumulate,
        )
    }

    fn rope(&self, x: &mut Vec<f32>, pos: &[u32], a: RopeArgs, inv_freq: &[f32], inverse: bool) {
        let _p = prof::scope("rope");
        ops::rope(x, pos, a, inv_freq, inverse)
    }

    fn attention_fwd(
        &self,
        out: &mut Vec<f32>,
        lse: &mut Vec<f32>,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        a: AttnArgs,
    ) {
        let _p = prof::scope("attention_fwd");
        attention::attention_fwd(out, lse, q, k, v, a)
    }

    fn attention_bwd(
        &self,
        dq: &mut Vec<f32>,
        dk: &mut Vec<f32>,
        dv: &mut Vec<f32>,
        dout: &Vec<f32>,
        fwd: AttnSaved<Vec<f32>>,
        a: AttnArgs,
    ) {
        let _p = prof::scope("attention_bwd");
        let fwd = AttnSaved::<[f32]> {
            q: fwd.q,
            k: fwd.k,
            v: fwd.v,
            out: fwd.out,
            lse: fwd.lse,
        };
        attention::attention_bwd(dq, dk, dv, dout, fwd, a)
    }

    fn kv_mix_fwd(&self, buf: &mut Vec<f32>, m: KvMix, alpha: f32) {
        let _p = prof::scope("kv_mix_fwd");
        let KvMix {
            mix,
            c,
            b,
            n,
            width,
        } = m;
        for i in 0..n * width {
            let kc = buf[c * width + i];
            let kb = buf[b * width + i];
            buf[mix * width + i] = (1.0 - alpha) * kc + alpha * kb;
        }
    }

    fn kv_mix_bwd(&self, dbuf: &mut Vec<f32>, buf: &Vec<f32>, m: KvMix, alpha: f32) -> f64 {
        let _p = prof::scope("kv_mix_bwd");
        let KvMix {
            mix,
            c,
            b,
            n,
            width,
        } = m;
        let mut dalpha = 0f64;
        for i in 0..n * width {
            let g = dbuf[mix * width + i];
            dalpha += ((buf[b * width + i] - buf[c * width + i]) * g) as f64;
            dbuf[c * width + i] += (1.0 - alpha) * g;
            dbuf[b * width + i] += alpha * g;
        }
        dalpha
    }

    fn act_fwd(&self, out: &mut Vec<f32>, gate: &Vec<f32>, up: Option<&Vec<f32>>, act: Activation) {
        let _p = prof::scope("act_fwd");
        ops::act_fwd(out, gate, up.map(|u| &u[..]), act)
    }

    fn act_bwd(
        &self,
        dgate: &mut Vec<f32>,
        dup: Option<&mut Vec<f32>>,
        dout: &Vec<f32>,
        gate: &Vec<f32>,
        up: Option<&Vec<f32>>,
        act: Activation,
    ) {
        let _p = prof::scope("act_bwd");
        ops::act_bwd(
            dgate,
            dup.map(|u| &mut u[..]),
            dout,
            gate,
            up.map(|u| &u[..]),
            act,
        )
    }

    fn cross_entropy(
        &self,
        logits: &mut Vec<f32>,
        targets: CrossEntropyTargets,
        vocab: usize,
        grad: bool,
        logprobs: &mut [f64],
        greedy: &mut [bool],
    ) -> f64 {
        let _p = prof::scope("cross_entropy");
        ops::cross_entropy(logits, targets, vocab, grad, logprobs, greedy)
    }

    fn sum_sq(&self, x: &Vec<f32>) -> f64 {
        x.par_iter().map(|&v| (v as f64) * (v as f64)).sum()
    }

    fn scale(&self, x: &mut Vec<f32>, s: f32) {
        x.par_iter_mut().for_each(|v| *v *= s)
    }

    fn adamw(
        &self,
        p: &mut Vec<f32>,
        g: &Vec<f32>,
        m: &mut Vec<f32>,
        v: &mut Vec<f32>,
        h: AdamStep,
    ) {
        let _p = prof::scope("adamw");
        ops::adamw(p, g, m, v, h)
    }

    fn sgd(&self, p: &mut Vec<f32>, g: &Vec<f32>, lr: f32) {
        p.par_iter_mut()
            .zip(g.par_iter())
            .for_each(|(a, b)| *a -= lr * b)
    }
}
