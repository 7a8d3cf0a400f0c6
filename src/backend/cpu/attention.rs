//! Segment attention on the CPU, blocked. Each task takes a block of query rows of one group,
//! gathers the key rows any of them may see (for a causal block, those up to its last position),
//! and runs per head S = QKᵀ, the masked softmax and O = PV as small serial GEMMs. The backward
//! recomputes P from the saved log-sum-exp, as a flash-attention backward does, and each task
//! returns the dK/dV of its keys for a serial sum, so tasks never write the same element.
//!
//! Blocks of one or two rows (decoding) take a dot-product path instead: there a GEMM call's
//! setup costs more than the work, and gathering the cached keys would copy the whole cache.

use super::gemm::{sgemm_serial, Mat};
use super::ops::exp_f32 as exp;
use super::transpose;
use crate::backend::{AttnArgs, AttnGroup, AttnPlan, AttnSaved, MaskKind};
use rayon::prelude::*;
use std::ops::Range;

/// Blocks with fewer query rows take the dot-product path.
const GEMM_MIN_ROWS: usize = 3;

fn visible(mask: MaskKind, qp: u32, kp: u32) -> bool {
    match mask {
        MaskKind::Causal => kp <= qp,
        MaskKind::Full => true,
        MaskKind::AntiCausal => kp >= qp,
    }
}

/// A block of query rows of one group.
struct Block {
    group: usize,
    rows: Range<usize>,
}

/// The groups' query ranges cut into blocks, sorted by first row. Blocks are sized so that each
/// thread gets several (load balance across unequal groups) but each still amortises its GEMMs.
fn blocks(plan: &AttnPlan) -> Vec<Block> {
    let total: usize = plan.groups.iter().map(|g| g.q.len()).sum();
    let per = (total / (4 * rayon::current_num_threads())).clamp(8, 64);
    let mut v: Vec<Block> = plan
        .groups
        .iter()
        .enumerate()
        .flat_map(|(gi, g)| {
            let len = g.q.len();
            let n = len.div_ceil(per).max(1);
            // Even blocks: a group of 70 rows becomes 3 × 23-24, not 64 + 6.
            (0..n).map(move |b| Block {
                group: gi,
                rows: g.q.start + b * len / n..g.q.start + (b + 1) * len / n,
            })
        })
        .filter(|b| !b.rows.is_empty())
        .collect();
    v.sort_by_key(|b| b.rows.start);
    v
}

/// Disjoint mutable row slices of `buf` (rows of `width`), one per block; blocks are sorted and
/// disjoint.
fn split_rows<'a>(buf: &'a mut [f32], width: usize, blocks: &[Block]) -> Vec<&'a mut [f32]> {
    let mut rest = buf;
    let mut at = 0;
    let mut out = Vec::with_capacity(blocks.len());
    for b in blocks {
        let (_, tail) = std::mem::take(&mut rest).split_at_mut((b.rows.start - at) * width);
        let (mine, tail) = tail.split_at_mut(b.rows.len() * width);
        out.push(mine);
        rest = tail;
        at = b.rows.end;
    }
    out
}

/// The key rows, in group order, that at least one query row of the block sees.
fn block_keys(g: &AttnGroup, plan: &AttnPlan, rows: &Range<usize>) -> Vec<usize> {
    let qp = &plan.q_pos[rows.clone()];
    let (lo, hi) = (
        qp.iter().copied().min().unwrap_or(0),
        qp.iter().copied().max().unwrap_or(0),
    );
    g.kv.iter()
        .flat_map(|r| r.clone())
        .filter(|&j| {
            let kp = plan.k_pos[j];
            match g.mask {
                MaskKind::Causal => kp <= hi,
                MaskKind::Full => true,
                MaskKind::AntiCausal => kp >= lo,
            }
        })
        .collect()
}

/// The block's keys gathered into dense `[keys, width]` K and V.
fn gather(src: &[f32], keys: &[usize], width: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(keys.len() * width);
    for &j in keys {
        out.extend_from_slice(&src[j * width..(j + 1) * width]);
    }
    out
}

/// Which (row, key) pairs of the block the mask admits, or None when it admits all of them.
fn block_mask(
    g: &AttnGroup,
    plan: &AttnPlan,
    rows: &Range<usize>,
    keys: &[usize],
) -> Option<Vec<bool>> {
    let m: Vec<bool> = rows
        .clone()
        .flat_map(|i| {
            keys.iter()
                .map(move |&j| visible(g.mask, plan.q_pos[i], plan.k_pos[j]))
        })
        .collect();
    (!m.iter().all(|&b| b)).then_some(m)
}

/// Row `r` of the strided `[.., width]` matrix `m`, columns `[c, c + hd)`.
fn head(m: &[f32], r: usize, width: usize, c: usize, hd: usize) -> &[f32] {
    &m[r * width + c..r * width + c + hd]
}

/// Scores to probabilities in place, one row: masked entries become 0; returns the log-sum-exp
/// (−∞ when nothing is visible).
#[inline(always)]
fn softmax_row(s: &mut [f32], mask: Option<&[bool]>, scale: f32) -> f32 {
    let (mx, sum) = softmax_parts(s, mask, scale);
    if mx == f32::NEG_INFINITY {
        return mx;
    }
    let inv = 1.0 / sum;
    s.iter_mut().for_each(|x| *x *= inv);
    mx + sum.ln()
}

/// Scores to `exp(x − max)` in place, one row (masked entries 0), and the max and the sum of
/// those: a softmax not yet divided by its sum, which a decoding row's key chunks are merged
/// from. Nothing visible: all 0, max −∞, sum 0.
#[inline(always)]
fn softmax_parts(s: &mut [f32], mask: Option<&[bool]>, scale: f32) -> (f32, f32) {
    // Branch-free passes with lane-wise maxima and sums, so each vectorises.
    match mask {
        Some(m) => s
            .iter_mut()
            .zip(m)
            .for_each(|(x, &v)| *x = if v { *x * scale } else { f32::NEG_INFINITY }),
        None => s.iter_mut().for_each(|x| *x *= scale),
    }
    let mut lanes = [f32::NEG_INFINITY; 16];
    let mut chunks = s.chunks_exact(16);
    for c in &mut chunks {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l = if x > *l { x } else { *l };
        }
    }
    let mx = chunks
        .remainder()
        .iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    if mx == f32::NEG_INFINITY {
        s.fill(0.0);
        return (mx, 0.0);
    }
    let mut sums = [0f32; 16];
    let mut chunks = s.chunks_exact_mut(16);
    for c in &mut chunks {
        for (l, x) in sums.iter_mut().zip(c.iter_mut()) {
            let e = exp(*x - mx);
            *x = if *x == f32::NEG_INFINITY { 0.0 } else { e };
            *l += *x;
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for x in chunks.into_remainder() {
        *x = if *x == f32::NEG_INFINITY {
            0.0
        } else {
            exp(*x - mx)
        };
        sum += *x;
    }
    (mx, sum)
}

pub fn attention_fwd(
    out: &mut [f32],
    lse: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    a: AttnArgs,
) {
    let (plan, d) = (a.plan, a.dims);
    let (hq, hkv, hd) = (d.q_heads, d.kv_heads, d.head_dim);
    let (qw, kw) = (hq * hd, hkv * hd);
    let per_kv = hq / hkv;
    // Rows outside every group read nothing.
    out.fill(0.0);
    lse.fill(f32::NEG_INFINITY);
    let blocks = blocks(plan);
    let outs = split_rows(out, qw, &blocks);
    let lses = split_rows(lse, hq, &blocks);
    blocks
        .par_iter()
        .zip(outs)
        .zip(lses)
        .for_each(|((b, ob), lb)| {
            let g = &plan.groups[b.group];
            let keys = block_keys(g, plan, &b.rows);
            if keys.is_empty() {
                return;
            }
            let mask = block_mask(g, plan, &b.rows, &keys);
            let (nb, nk) = (b.rows.len(), keys.len());
            let r0 = b.rows.start;
            if nb < GEMM_MIN_ROWS {
                // A decoding block is the whole call.
                for (i, (orow, lrow)) in ob.chunks_mut(qw).zip(lb.chunks_mut(hq)).enumerate() {
                    let mrow = mask.as_ref().map(|m| &m[i * nk..(i + 1) * nk]);
                    let row = Row {
                        q: &q[(r0 + i) * qw..(r0 + i + 1) * qw],
                        k,
                        v,
                        keys: &keys,
                        mask: mrow,
                        kw,
                        hd,
                        scale: d.scale,
                    };
                    row.check();
                    row.decode(orow, lrow, hq, per_kv);
                }
                return;
            }
            let mut s = vec![0f32; nb * nk];
            let (kt, vb) = (gather_t(k, &keys, hkv, hd), gather(v, &keys, kw));
            for h in 0..hq {
                let kh = h / per_kv;
                let qh = &q[r0 * qw + h * hd..];
                mm(
                    nb,
                    hd,
                    nk,
                    qh,
                    qw,
                    &kt[kh * hd * nk..],
                    nk,
                    &mut s,
                    nk,
                    false,
                );
                super::simd::vectorize(
                    #[inline(always)]
                    || {
                        for i in 0..nb {
                            let mrow = mask.as_ref().map(|m| &m[i * nk..(i + 1) * nk]);
                            lb[i * hq + h] =
                                softmax_row(&mut s[i * nk..(i + 1) * nk], mrow, d.scale);
                        }
                    },
                );
                mm(
                    nb,
                    nk,
                    hd,
                    &s,
                    nk,
                    &vb[kh * hd..],
                    kw,
                    &mut ob[h * hd..],
                    qw,
                    false,
                );
            }
        });
}

/// Fewest keys in a decoding row's chunk (but a shorter row's only one).
const MIN_CHUNK: usize = 128;

/// One query row of a decoding block against its visible keys.
struct Row<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    keys: &'a [usize],
    mask: Option<&'a [bool]>,
    kw: usize,
    hd: usize,
    scale: f32,
}

impl Row<'_> {
    /// The whole decoding row: `o` (`[q heads, hd]`) and `lse` (`[q heads]`). The parallel work
    /// is every head over a chunk of the keys, so each thread reads whole K and V rows, a
    /// contiguous run of memory, once (reading by head read a head's columns of every row, a
    /// strided pattern that reached a third of the bandwidth); the chunks' unnormalised
    /// softmaxes are then merged by their maxima and sums.
    fn decode(&self, o: &mut [f32], lse: &mut [f32], heads: usize, per_kv: usize) {
        let (hd, nk) = (self.hd, self.keys.len());
        // Chunks of whole blocks of 16 keys (the kernel's score tree), sized by the key count
        // alone so that the logits do not depend on the thread count: two at 250 keys.
        let len = nk.div_ceil(16).max(MIN_CHUNK).next_multiple_of(16);
        let chunks = nk.div_ceil(len).max(1);
        // Per chunk, per head: hd output sums, then the chunk's max and sum.
        let part = hd + 2;
        let mut parts = vec![0f32; chunks * heads * part];
        parts
            .par_chunks_mut(heads * part)
            .enumerate()
            .for_each_init(
                || vec![0f32; len],
                |s, (c, p)| {
                    let ks = (c * len).min(nk)..((c + 1) * len).min(nk);
                    let sub = Row {
                        keys: &self.keys[ks.clone()],
                        mask: self.mask.map(|m| &m[ks.clone()]),
                        ..*self
                    };
                    for (h, p) in p.chunks_exact_mut(part).enumerate() {
                        let (po, ml) = p.split_at_mut(hd);
                        let (m, l) = super::simd::vectorize(
                            #[inline(always)]
                            || sub.head(po, &mut s[..ks.len()], h, (h / per_kv) * hd),
                        );
                        (ml[0], ml[1]) = (m, l);
                    }
                },
            );
        for h in 0..heads {
            let at = |c: usize| (c * heads + h) * part;
            let mx = (0..chunks).fold(f32::NEG_INFINITY, |a, c| a.max(parts[at(c) + hd]));
            let oh = &mut o[h * hd..(h + 1) * hd];
            oh.fill(0.0);
            if mx == f32::NEG_INFINITY {
                lse[h] = mx;
                continue;
            }
            let mut sum = 0f32;
            for c in 0..chunks {
                let (m, l) = (parts[at(c) + hd], parts[at(c) + hd + 1]);
                if m == f32::NEG_INFINITY {
                    continue;
                }
                let w = exp(m - mx);
                sum += w * l;
                for (a, &v) in oh.iter_mut().zip(&parts[at(c)..at(c) + hd]) {
                    *a += w * v;
                }
            }
            let inv = 1.0 / sum;
            oh.iter_mut().for_each(|a| *a *= inv);
            lse[h] = mx + sum.ln();
        }
    }

    /// Every key row inside K and V, checked once so that a kernel may read them unchecked.
    fn check(&self) {
        let end = self.keys.iter().max().map_or(0, |&j| (j + 1) * self.kw);
        assert!(
            end <= self.k.len() && end <= self.v.len(),
            "attention: a key row past K or V"
        );
    }

    /// Head `h` (reading kv columns from `kc`) into `o`, with `s` the scores' scratch: `o` gets
    /// `Σ exp(sⱼ − max)·vⱼ` over the keys, not yet divided by the returned sum; returns the max
    /// and that sum ([`softmax_parts`]).
    #[inline(always)]
    fn head(&self, o: &mut [f32], s: &mut [f32], h: usize, kc: usize) -> (f32, f32) {
        #[cfg(target_arch = "x86_64")]
        if super::tiles::available() {
            let f = match self.hd {
                16 => avx512::head::<1>,
                32 => avx512::head::<2>,
                64 => avx512::head::<4>,
                80 => avx512::head::<5>,
                96 => avx512::head::<6>,
                128 => avx512::head::<8>,
                _ => return self.head_portable(o, s, h, kc),
            };
            assert!(
                o.len() == self.hd
                    && s.len() == self.keys.len()
                    && kc + self.hd <= self.kw
                    && (h + 1) * self.hd <= self.q.len()
            );
            // SAFETY: AVX-512F was detected; `check` put every key row inside K and V, and the
            // assert above every other read and write inside its slice.
            return unsafe { f(self, o, s, h, kc) };
        }
        self.head_portable(o, s, h, kc)
    }

    #[inline(always)]
    fn head_portable(&self, o: &mut [f32], s: &mut [f32], h: usize, kc: usize) -> (f32, f32) {
        let (hd, kw) = (self.hd, self.kw);
        let qv = &self.q[h * hd..(h + 1) * hd];
        for (x, &j) in s.iter_mut().zip(self.keys) {
            *x = dot(qv, &self.k[j * kw + kc..j * kw + kc + hd]);
        }
        let parts = softmax_parts(s, self.mask, self.scale);
        o.fill(0.0);
        for (&p, &j) in s.iter().zip(self.keys) {
            let vv = &self.v[j * kw + kc..j * kw + kc + hd];
            o.iter_mut().zip(vv).for_each(|(a, b)| *a += p * b);
        }
        parts
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::super::simd::tree::sum16;
    use super::{softmax_parts, Row};
    use std::arch::x86_64::*;

    /// [`Row::head`] for a head dim of 16·N: the query head stays in N registers, the scores
    /// come 16 keys at a time out of the reduction tree, and P·V keeps the N output vectors in
    /// registers across the keys.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn head<const N: usize>(
        row: &Row,
        o: &mut [f32],
        s: &mut [f32],
        h: usize,
        kc: usize,
    ) -> (f32, f32) {
        let kw = row.kw;
        let qp = row.q.as_ptr().add(h * 16 * N);
        let q: [__m512; N] = std::array::from_fn(|c| _mm512_loadu_ps(qp.add(16 * c)));
        let score = |j: usize| {
            let kp = row.k.as_ptr().add(j * kw + kc);
            let mut acc = _mm512_mul_ps(q[0], _mm512_loadu_ps(kp));
            for (c, &qc) in q.iter().enumerate().skip(1) {
                acc = _mm512_fmadd_ps(qc, _mm512_loadu_ps(kp.add(16 * c)), acc);
            }
            acc
        };
        let (keys, sp) = (row.keys, s.as_mut_ptr());
        let full = keys.len() / 16 * 16;
        for b in (0..full).step_by(16) {
            let v = std::array::from_fn(|l| score(keys[b + l]));
            _mm512_storeu_ps(sp.add(b), sum16(v));
        }
        for (jj, &j) in keys.iter().enumerate().skip(full) {
            s[jj] = _mm512_reduce_add_ps(score(j));
        }
        let parts = softmax_parts(s, row.mask, row.scale);
        let op = o.as_mut_ptr();
        let mut acc = [_mm512_setzero_ps(); N];
        for (&p, &j) in s.iter().zip(keys) {
            let (pv, vp) = (_mm512_set1_ps(p), row.v.as_ptr().add(j * kw + kc));
            for (c, a) in acc.iter_mut().enumerate() {
                // A multiply then an add, rounded as the portable loop rounds.
                *a = _mm512_add_ps(*a, _mm512_mul_ps(pv, _mm512_loadu_ps(vp.add(16 * c))));
            }
        }
        for (c, a) in acc.iter().enumerate() {
            _mm512_storeu_ps(op.add(16 * c), *a);
        }
        parts
    }
}

/// `c (+)= a · b` on row-major strided operands, on the calling thread.
// The BLAS gemm signature (three operands with their row strides, the sizes, accumulate), which
// it forwards to either of two gemm kernels unchanged.
#[allow(clippy::too_many_arguments)]
fn mm(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    if super::tiles::available() {
        super::tiles::gemm_serial(m, k, n, a, lda, b, ldb, c, ldc, accumulate);
    } else {
        let (a, b) = (view(a, lda, 1), view(b, ldb, 1));
        sgemm_serial(m, n, k, a, b, c, ldc, accumulate);
    }
}

/// The block's keys gathered transposed, per kv head: `[kv_heads][head_dim][keys]`.
fn gather_t(src: &[f32], keys: &[usize], kv_heads: usize, hd: usize) -> Vec<f32> {
    let (nk, kw) = (keys.len(), kv_heads * hd);
    let mut out = vec![0f32; kw * nk];
    for (jj, &j) in keys.iter().enumerate() {
        for (c, &x) in src[j * kw..(j + 1) * kw].iter().enumerate() {
            out[c * nk + jj] = x;
        }
    }
    out
}

fn view(data: &[f32], rs: usize, cs: usize) -> Mat<'_> {
    Mat { data, rs, cs }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    super::quant::dot(a, b)
}

/// dQ is written; dK and dV are added to.
pub fn attention_bwd(
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    dout: &[f32],
    fwd: AttnSaved<[f32]>,
    a: AttnArgs,
) {
    let AttnSaved { q, k, v, out, lse } = fwd;
    let (plan, d) = (a.plan, a.dims);
    let (hq, hkv, hd) = (d.q_heads, d.kv_heads, d.head_dim);
    let (qw, kw) = (hq * hd, hkv * hd);
    let per_kv = hq / hkv;
    dq.fill(0.0);
    let blocks = blocks(plan);
    let dqs = split_rows(dq, qw, &blocks);
    let partial: Vec<(Vec<usize>, Vec<f32>, Vec<f32>)> = blocks
        .par_iter()
        .zip(dqs)
        .map(|(b, dqb)| {
            let g = &plan.groups[b.group];
            let keys = block_keys(g, plan, &b.rows);
            let (nb, nk) = (b.rows.len(), keys.len());
            let mut dkl = vec![0f32; nk * kw];
            let mut dvl = vec![0f32; nk * kw];
            if nk == 0 {
                return (keys, dkl, dvl);
            }
            let mask = block_mask(g, plan, &b.rows, &keys);
            let r0 = b.rows.start;
            let kb = gather(k, &keys, kw);
            let (kt, vt) = (gather_t(k, &keys, hkv, hd), gather_t(v, &keys, hkv, hd));
            let mut p = vec![0f32; nb * nk];
            let mut ds = vec![0f32; nb * nk];
            for h in 0..hq {
                let kh = h / per_kv;
                let (kc, tc) = (kh * hd, kh * hd * nk);
                let (qh, doh) = (&q[r0 * qw + h * hd..], &dout[r0 * qw + h * hd..]);
                mm(nb, hd, nk, qh, qw, &kt[tc..], nk, &mut p, nk, false);
                mm(nb, hd, nk, doh, qw, &vt[tc..], nk, &mut ds, nk, false);
                super::simd::vectorize(
                    #[inline(always)]
                    || {
                        for i in 0..nb {
                            let l = lse[(r0 + i) * hq + h];
                            let prow = &mut p[i * nk..(i + 1) * nk];
                            let dsrow = &mut ds[i * nk..(i + 1) * nk];
                            if l == f32::NEG_INFINITY {
                                prow.fill(0.0);
                                dsrow.fill(0.0);
                                continue;
                            }
                            let mrow = mask.as_ref().map(|m| &m[i * nk..(i + 1) * nk]);
                            let dsum = dot(
                                head(dout, r0 + i, qw, h * hd, hd),
                                head(out, r0 + i, qw, h * hd, hd),
                            );
                            for (j, (pj, dj)) in prow.iter_mut().zip(dsrow.iter_mut()).enumerate() {
                                *pj = if mrow.is_none_or(|m| m[j]) {
                                    exp(*pj * d.scale - l)
                                } else {
                                    0.0
                                };
                                *dj = *pj * (*dj - dsum) * d.scale;
                            }
                        }
                    },
                );
                // dQ_h = dS K_h; dK_h += dSᵀ Q_h; dV_h += Pᵀ dO_h.
                mm(
                    nb,
                    nk,
                    hd,
                    &ds,
                    nk,
                    &kb[kc..],
                    kw,
                    &mut dqb[h * hd..],
                    qw,
                    false,
                );
                let (dst, pt) = (transpose(&ds, nb, nk), transpose(&p, nb, nk));
                mm(nk, nb, hd, &dst, nb, qh, qw, &mut dkl[kc..], kw, true);
                mm(nk, nb, hd, &pt, nb, doh, qw, &mut dvl[kc..], kw, true);
            }
            (keys, dkl, dvl)
        })
        .collect();
    for (keys, dkl, dvl) in partial {
        for (i, &j) in keys.iter().enumerate() {
            let (src_k, src_v) = (&dkl[i * kw..(i + 1) * kw], &dvl[i * kw..(i + 1) * kw]);
            dk[j * kw..(j + 1) * kw]
                .iter_mut()
                .zip(src_k)
                .for_each(|(a, b)| *a += b);
            dv[j * kw..(j + 1) * kw]
                .iter_mut()
                .zip(src_v)
                .for_each(|(a, b)| *a += b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::AttnDims;
    use crate::rng::Rng;

    /// Attention in f64 by its definition, and its gradients through the same definition.
    #[allow(clippy::type_complexity)]
    fn reference(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        dout: &[f32],
        plan: &AttnPlan,
        d: AttnDims,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let (hq, hkv, hd) = (d.q_heads, d.kv_heads, d.head_dim);
        let (qw, kw) = (hq * hd, hkv * hd);
        let rows = q.len() / qw;
        let mut o = vec![0f64; q.len()];
        let mut lse = vec![f64::NEG_INFINITY; rows * hq];
        let (mut dq, mut dk, mut dv) = (
            vec![0f64; q.len()],
            vec![0f64; k.len()],
            vec![0f64; v.len()],
        );
        for g in &plan.groups {
            for i in g.q.clone() {
                for h in 0..hq {
                    let kh = h / (hq / hkv);
                    let keys: Vec<usize> =
                        g.kv.iter()
                            .flat_map(|r| r.clone())
                            .filter(|&j| visible(g.mask, plan.q_pos[i], plan.k_pos[j]))
                            .collect();
                    if keys.is_empty() {
                        continue;
                    }
                    let qi = |c: usize| q[i * qw + h * hd + c] as f64;
                    let kj = |j: usize, c: usize| k[j * kw + kh * hd + c] as f64;
                    let vj = |j: usize, c: usize| v[j * kw + kh * hd + c] as f64;
                    let s: Vec<f64> = keys
                        .iter()
                        .map(|&j| (0..hd).map(|c| qi(c) * kj(j, c)).sum::<f64>() * d.scale as f64)
                        .collect();
                    let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let sum: f64 = s.iter().map(|x| (x - mx).exp()).sum();
                    lse[i * hq + h] = mx + sum.ln();
                    let p: Vec<f64> = s.iter().map(|x| (x - mx).exp() / sum).collect();
                    for c in 0..hd {
                        o[i * qw + h * hd + c] =
                            keys.iter().zip(&p).map(|(&j, pj)| pj * vj(j, c)).sum();
                    }
                    let doi = |c: usize| dout[i * qw + h * hd + c] as f64;
                    let dsum: f64 = (0..hd).map(|c| doi(c) * o[i * qw + h * hd + c]).sum();
                    for (&j, pj) in keys.iter().zip(&p) {
                        let dp: f64 = (0..hd).map(|c| doi(c) * vj(j, c)).sum();
                        let ds = pj * (dp - dsum) * d.scale as f64;
                        for c in 0..hd {
                            dq[i * qw + h * hd + c] += ds * kj(j, c);
                            dk[j * kw + kh * hd + c] += ds * qi(c);
                            dv[j * kw + kh * hd + c] += pj * doi(c);
                        }
                    }
                }
            }
        }
        (o, lse, dq, dk, dv)
    }

    fn close(name: &str, got: &[f32], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len(), "{name}: length");
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            let ok = if w.is_infinite() {
                g as f64 == w
            } else {
                (g as f64 - w).abs() <= tol * w.abs().max(1.0)
            };
            assert!(ok, "{name}[{i}]: {g} vs {w}");
        }
    }

    /// Decoding rows over many keys, at SmolLM2's head shape (9 query heads sharing 3 kv heads,
    /// head dim 64, the AVX-512 kernel where it runs): the keys are split into chunks whose
    /// softmaxes are merged, including chunks that see no key (a causal row at position 100 of
    /// 300 keys) and rows that see none at all (anti-causal at the end).
    #[test]
    fn decoding_rows_match_the_definition() {
        let (hq, hkv, hd) = (9, 3, 64);
        let d = AttnDims {
            q_heads: hq,
            kv_heads: hkv,
            head_dim: hd,
            scale: 0.125,
        };
        let mut rng = Rng::new(12);
        let nk = 300;
        for (mask, pos) in [
            (MaskKind::Causal, 100u32),
            (MaskKind::Causal, 400),
            (MaskKind::Full, 7),
            (MaskKind::AntiCausal, 250),
            (MaskKind::AntiCausal, 400),
        ] {
            let rows = nk + 1;
            let mut q_pos: Vec<u32> = (0..nk as u32).collect();
            q_pos.push(pos);
            let plan = AttnPlan {
                groups: vec![AttnGroup {
                    q: nk..nk + 1,
                    kv: std::iter::once(0..nk).collect(),
                    mask,
                }],
                k_pos: q_pos.clone(),
                q_pos,
            };
            let rv = |n: usize, rng: &mut Rng| -> Vec<f32> {
                (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect()
            };
            let q = rv(rows * hq * hd, &mut rng);
            let k = rv(rows * hkv * hd, &mut rng);
            let v = rv(rows * hkv * hd, &mut rng);
            let (o_ref, lse_ref, ..) = reference(&q, &k, &v, &q, &plan, d);
            let mut o = vec![f32::NAN; q.len()];
            let mut lse = vec![f32::NAN; rows * hq];
            let a = AttnArgs {
                plan: &plan,
                dims: d,
            };
            attention_fwd(&mut o, &mut lse, &q, &k, &v, a);
            close(&format!("{mask:?} {pos} out"), &o, &o_ref, 1e-5);
            close(&format!("{mask:?} {pos} lse"), &lse, &lse_ref, 1e-5);
        }
    }

    /// A packed batch as Bitune builds it, large enough that blocks take the GEMM path, plus a
    /// decoding-sized group (dot path), a group reading a prefix through two key ranges, rows
    /// outside every group, and a query that sees no key.
    #[test]
    fn blocked_attention_matches_the_definition() {
        let (hq, hkv, hd) = (6, 2, 16);
        let d = AttnDims {
            q_heads: hq,
            kv_heads: hkv,
            head_dim: hd,
            scale: 0.3,
        };
        let mut rng = Rng::new(11);
        for mask in [MaskKind::Causal, MaskKind::Full, MaskKind::AntiCausal] {
            let n = 37;
            let m = 29;
            // Rows: [0, n) causal prompt, [n, 2n) `mask` prompt, [2n, 2n+m) answer reading a
            // prefix (rows [2n+m+1, 3n+m+1)) and itself, row 2n+m in no group, last row decoding
            // alone over the prefix with a position that sees nothing under anti-causal.
            let rows = 2 * n + m + 1 + n + 1;
            let pre = 2 * n + m + 1..3 * n + m + 1;
            let last = rows - 1;
            let mut q_pos: Vec<u32> = (0..n as u32).chain(0..n as u32).collect();
            q_pos.extend(n as u32..(n + m) as u32);
            q_pos.push(0);
            q_pos.extend(0..n as u32);
            q_pos.push(n as u32 + 5);
            let k_pos = q_pos.clone();
            let plan = AttnPlan {
                groups: vec![
                    AttnGroup {
                        q: 0..n,
                        kv: std::iter::once(0..n).collect(),
                        mask: MaskKind::Causal,
                    },
                    AttnGroup {
                        q: n..2 * n,
                        kv: std::iter::once(n..2 * n).collect(),
                        mask,
                    },
                    AttnGroup {
                        q: 2 * n..2 * n + m,
                        kv: vec![
                            pre.start..pre.start + 20,
                            pre.start + 20..pre.end,
                            2 * n..2 * n + m,
                        ],
                        mask: MaskKind::Causal,
                    },
                    AttnGroup {
                        q: last..last + 1,
                        kv: std::iter::once(pre.clone()).collect(),
                        mask,
                    },
                ],
                q_pos,
                k_pos,
            };
            let rv = |n: usize, rng: &mut Rng| -> Vec<f32> {
                (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect()
            };
            let q = rv(rows * hq * hd, &mut rng);
            let k = rv(rows * hkv * hd, &mut rng);
            let v = rv(rows * hkv * hd, &mut rng);
            let dout = rv(rows * hq * hd, &mut rng);
            let (o_ref, lse_ref, dq_ref, dk_ref, dv_ref) = reference(&q, &k, &v, &dout, &plan, d);
            let mut o = vec![f32::NAN; q.len()];
            let mut lse = vec![f32::NAN; rows * hq];
            let a = AttnArgs {
                plan: &plan,
                dims: d,
            };
            attention_fwd(&mut o, &mut lse, &q, &k, &v, a);
            close("out", &o, &o_ref, 1e-5);
            close("lse", &lse, &lse_ref, 1e-5);
            let (mut dq, mut dk, mut dv) = (
                vec![f32::NAN; q.len()],
                vec![1f32; k.len()],
                vec![2f32; v.len()],
            );
            let fwd = AttnSaved {
                q: &q[..],
                k: &k[..],
                v: &v[..],
                out: &o[..],
                lse: &lse[..],
            };
            attention_bwd(&mut dq, &mut dk, &mut dv, &dout, fwd, a);
            let plus = |r: &[f64], c: f64| r.iter().map(|x| x + c).collect::<Vec<_>>();
            close("dq", &dq, &dq_ref, 1e-4);
            close("dk", &dk, &plus(&dk_ref, 1.0), 1e-4);
            close("dv", &dv, &plus(&dv_ref, 2.0), 1e-4);
        }
    }
}
