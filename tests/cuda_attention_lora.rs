//! CUDA matmuls (cuBLAS and the segment-GEMM fallback, the decode GEMV), segment-aware LoRA and
//! the segment flash attention against the CPU reference, same rules as cuda_ops.rs (1e-5
//! relative; 1e-4 for attention and for gradients summed over many rows with atomics).
#![cfg(feature = "cuda")]

mod cuda_common;

use bitune_rt::backend::cpu::Cpu;
use bitune_rt::backend::cuda::CudaBackend;
use bitune_rt::backend::{
    AttnArgs, AttnDims, AttnGroup, AttnPlan, AttnSaved, Backend, CrossEntropyTargets, HostWeight,
    LoraArgs, LoraSeg, MaskKind,
};
use bitune_rt::bitune::plan::{pack, Seq, METHODS};
use bitune_rt::rng::Rng;
use cuda_common::*;

#[test]
fn matmul_fwd_and_matmul_bwd_x_on_every_path() {
    let Some(g) = gpu() else { return };
    let paths = [Some(g.clone()), CudaBackend::open(0, false).ok()];
    let (c, mut r) = (Cpu, Rng::new(2));
    for be in paths.iter().flatten() {
        // One-row products take the decode GEMV: k = 576 (SmolLM2's width) and 1002 make each
        // lane stride over several 16-byte chunks or scalars, as real shapes do.
        for (m, k, n) in [
            (1, 48, 40),
            (1, 50, 33),
            (1, 576, 40),
            (1, 1002, 9),
            (7, 48, 40),
            (130, 96, 72),
            (64, 64, 64),
        ] {
            let (x, w, b) = (
                rand(&mut r, m * k, 1.0),
                rand(&mut r, n * k, 1.0),
                rand(&mut r, n, 1.0),
            );
            let wc = c.upload_weight(HostWeight::dense(w.clone(), n, k));
            let wg = be.upload_weight(HostWeight::dense(w.clone(), n, k));
            for (acc, bias) in [(false, false), (false, true), (true, false)] {
                let y0 = rand(&mut r, m * n, 1.0);
                let mut want = y0.clone();
                let mut got = if acc { be.upload(&y0) } else { nan(be, m * n) };
                let (bc, bg) = (b.clone(), be.upload(&b));
                c.matmul_fwd(&mut want, &x, &wc, bias.then_some(&bc), m, acc);
                be.matmul_fwd(&mut got, &be.upload(&x), &wg, bias.then_some(&bg), m, acc);
                close(
                    &format!("matmul_fwd {m}x{k}x{n} {}", be.name()),
                    &be.download(&got),
                    &want,
                    1e-5,
                );
                let dy = rand(&mut r, m * n, 1.0);
                let dx0 = rand(&mut r, m * k, 1.0);
                let mut want = dx0.clone();
                let mut got = if acc { be.upload(&dx0) } else { nan(be, m * k) };
                c.matmul_bwd_x(&mut want, &dy, &wc, m, acc);
                be.matmul_bwd_x(&mut got, &be.upload(&dy), &wg, m, acc);
                close(
                    &format!("matmul_bwd_x {m}x{k}x{n} {}", be.name()),
                    &be.download(&got),
                    &want,
                    1e-5,
                );
            }
        }
    }
}

#[test]
fn lora_fwd_bwd() {
    let Some(g) = gpu() else { return };
    let (c, mut r) = (Cpu, Rng::new(3));
    let (k, n) = (48, 40);
    // Adapter C (rank 8) on rows 0..300 and 600..700 (shared gradients: atomics), adapter B
    // (rank 4) on 300..600, plus an empty segment; 700 rows also exercise split-K chunks.
    let (rc, rb) = (8, 4);
    let (ca, cb) = (0, rc * k);
    let (ba, bb) = (cb + n * rc, cb + n * rc + rb * k);
    let total = bb + n * rb + 5;
    let seg = |rows: std::ops::Range<usize>, a_off, b_off, rank, s: f32| LoraSeg {
        rows,
        a_off,
        b_off,
        rank,
        scale_bits: s.to_bits(),
    };
    let segs = vec![
        seg(0..300, ca, cb, rc, 2.0),
        seg(300..600, ba, bb, rb, 0.5),
        seg(600..700, ca, cb, rc, 2.0),
        seg(700..700, ba, bb, rb, 0.5),
    ];
    let rows = 700;
    let (x, params) = (rand(&mut r, rows * k, 1.0), rand(&mut r, total, 0.5));
    let y0 = rand(&mut r, rows * n, 1.0);
    let (mut want, mut got) = (y0.clone(), g.upload(&y0));
    c.lora_fwd(&mut want, &x, &params, LoraArgs { segs: &segs, k, n });
    let la = LoraArgs { segs: &segs, k, n };
    g.lora_fwd(&mut got, &g.upload(&x), &g.upload(&params), la);
    close("lora_fwd", &g.download(&got), &want, 1e-5);
    let dy = rand(&mut r, rows * n, 1.0);
    let (dx0, g0) = (rand(&mut r, rows * k, 1.0), rand(&mut r, total, 1.0));
    let (mut dx_w, mut gr_w) = (dx0.clone(), g0.clone());
    let (mut dx_g, mut gr_g) = (g.upload(&dx0), g.upload(&g0));
    c.lora_bwd(&mut dx_w, &mut gr_w, &dy, &x, &params, la);
    g.lora_bwd(
        &mut dx_g,
        &mut gr_g,
        &g.upload(&dy),
        &g.upload(&x),
        &g.upload(&params),
        LoraArgs { segs: &segs, k, n },
    );
    close("lora_bwd dx", &g.download(&dx_g), &dx_w, 1e-5);
    close("lora_bwd grads", &g.download(&gr_g), &gr_w, 1e-4);
}

/// Realistic packed plans (every method, with and without cache rows) plus a hand-made one with
/// an uncovered row, an anti-causal group, a group that sees no key and a 3-range group.
fn plans(r: &mut Rng) -> Vec<(String, AttnPlan)> {
    let mut out = vec![];
    for method in METHODS {
        for past in [0usize, 5] {
            let seqs: Vec<Seq> = (0..3)
                .map(|_| {
                    let (np, na) = (1 + r.below(40), 1 + r.below(40));
                    Seq {
                        prompt: vec![1; np],
                        answer: vec![1; na],
                        a_pos0: (np + past) as u32,
                        targets: vec![],
                    }
                })
                .collect();
            let past_pos: Vec<u32> = (0..past as u32).collect();
            let (p, _) = pack(method, &seqs, &past_pos);
            out.push((format!("{method:?} past {past}"), p.attn));
        }
    }
    let q_pos: Vec<u32> = (0..40).map(|i| i % 37).collect();
    let k_pos: Vec<u32> = (0..50).map(|i| (i * 7) % 45).collect();
    let groups = vec![
        AttnGroup {
            q: 0..20,
            kv: vec![0..20, 40..50, 20..25],
            mask: MaskKind::Causal,
        },
        AttnGroup {
            q: 20..35,
            kv: std::iter::once(20..40).collect(),
            mask: MaskKind::AntiCausal,
        },
        AttnGroup {
            q: 35..38,
            kv: vec![],
            mask: MaskKind::Full,
        },
    ]; // row 38, 39: no group
    out.push((
        "hand-made".into(),
        AttnPlan {
            groups,
            q_pos,
            k_pos,
        },
    ));
    out
}

#[test]
fn attention_fwd_bwd() {
    let Some(g) = gpu() else { return };
    let (c, mut r) = (Cpu, Rng::new(10));
    for (hq, hkv, hd) in [
        (4, 2, 8),
        (3, 1, 12),
        (2, 1, 64),
        (4, 4, 80),
        (6, 2, 128),
        (2, 2, 256),
    ] {
        for (name, plan) in plans(&mut r) {
            let (rows, k_rows) = (plan.q_pos.len(), plan.k_pos.len());
            let d = AttnDims {
                q_heads: hq,
                kv_heads: hkv,
                head_dim: hd,
                scale: 1.0 / (hd as f32).sqrt(),
            };
            let what = format!("{name} hq {hq} hkv {hkv} hd {hd}");
            let (q, k, v) = (
                rand(&mut r, rows * hq * hd, 1.0),
                rand(&mut r, k_rows * hkv * hd, 1.0),
                rand(&mut r, k_rows * hkv * hd, 1.0),
            );
            let (qg, kg, vg) = (g.upload(&q), g.upload(&k), g.upload(&v));
            let (mut o_w, mut l_w) = (vec![0f32; q.len()], vec![0f32; rows * hq]);
            let (mut o_g, mut l_g) = (nan(&g, q.len()), nan(&g, rows * hq));
            let aa = AttnArgs {
                plan: &plan,
                dims: d,
            };
            c.attention_fwd(&mut o_w, &mut l_w, &q, &k, &v, aa);
            g.attention_fwd(&mut o_g, &mut l_g, &qg, &kg, &vg, aa);
            close(
                &format!("attention out {what}"),
                &g.download(&o_g),
                &o_w,
                1e-4,
            );
            close(
                &format!("attention lse {what}"),
                &g.download(&l_g),
                &l_w,
                1e-4,
            );
            let dout = rand(&mut r, q.len(), 1.0);
            let (dk0, dv0) = (rand(&mut r, k.len(), 1.0), rand(&mut r, k.len(), 1.0));
            let (mut dq_w, mut dk_w, mut dv_w) = (vec![0f32; q.len()], dk0.clone(), dv0.clone());
            let (mut dq_g, mut dk_g, mut dv_g) = (nan(&g, q.len()), g.upload(&dk0), g.upload(&dv0));
            let aa = AttnArgs {
                plan: &plan,
                dims: d,
            };
            c.attention_bwd(
                &mut dq_w,
                &mut dk_w,
                &mut dv_w,
                &dout,
                AttnSaved {
                    q: &q,
                    k: &k,
                    v: &v,
                    out: &o_w,
                    lse: &l_w,
                },
                aa,
            );
            g.attention_bwd(
                &mut dq_g,
                &mut dk_g,
                &mut dv_g,
                &g.upload(&dout),
                AttnSaved {
                    q: &qg,
                    k: &kg,
                    v: &vg,
                    out: &o_g,
                    lse: &l_g,
                },
                aa,
            );
            close(
                &format!("attention dq {what}"),
                &g.download(&dq_g),
                &dq_w,
                1e-4,
            );
            close(
                &format!("attention dk {what}"),
                &g.download(&dk_g),
                &dk_w,
                1e-4,
            );
            close(
                &format!("attention dv {what}"),
                &g.download(&dv_g),
                &dv_w,
                1e-4,
            );
        }
    }
}

/// Milliseconds per call of `f` (after a warm-up call), the GPU drained before reading the clock.
fn time_ms(g: &CudaBackend, reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    g.synchronize().unwrap();
    let t = std::time::Instant::now();
    for _ in 0..reps {
        f();
    }
    g.synchronize().unwrap();
    t.elapsed().as_secs_f64() * 1e3 / reps as f64
}

/// Kernel timings at SmolLM2-135M shapes (9/3 heads, head_dim 64, d 576, inter 1536, vocab
/// 49152) on one layer of a Bitune batch of 8 examples (prompt 100, answer 60 tokens): no model
/// file needed. Run by scripts/gpu-check.sh (`--ignored`); prints `TIMING` lines.
#[test]
#[ignore]
fn timings_smollm2_shapes() {
    let Some(g) = gpu() else { return };
    let mut r = Rng::new(20);
    let seqs: Vec<Seq> = (0..8)
        .map(|_| Seq {
            prompt: vec![1; 100],
            answer: vec![1; 60],
            a_pos0: 100,
            targets: vec![],
        })
        .collect();
    let (p, _) = pack(bitune_rt::bitune::plan::Method::Bitune, &seqs, &[]);
    let (t, kr) = (p.rows(), p.kv_rows());
    let (hq, hkv, hd, d, inter, vocab) = (9, 3, 64, 576, 1536, 49152);
    let dims = AttnDims {
        q_heads: hq,
        kv_heads: hkv,
        head_dim: hd,
        scale: 0.125,
    };
    let q = g.upload(&rand(&mut r, t * hq * hd, 1.0));
    let (k, v) = (
        g.upload(&rand(&mut r, kr * hkv * hd, 1.0)),
        g.upload(&rand(&mut r, kr * hkv * hd, 1.0)),
    );
    let (mut o, mut lse) = (g.zeros(t * hq * hd), g.zeros(t * hq));
    let ms = time_ms(&g, 10, || {
        g.attention_fwd(
            &mut o,
            &mut lse,
            &q,
            &k,
            &v,
            AttnArgs {
                plan: &p.attn,
                dims,
            },
        )
    });
    println!("TIMING attention_fwd T={t} kv={kr} {ms:.3} ms");
    let (mut dq, mut dk, mut dv) = (
        g.zeros(t * hq * hd),
        g.zeros(kr * hkv * hd),
        g.zeros(kr * hkv * hd),
    );
    let dout = g.upload(&rand(&mut r, t * hq * hd, 1.0));
    let ms = time_ms(&g, 10, || {
        g.attention_bwd(
            &mut dq,
            &mut dk,
            &mut dv,
            &dout,
            AttnSaved {
                q: &q,
                k: &k,
                v: &v,
                out: &o,
                lse: &lse,
            },
            AttnArgs {
                plan: &p.attn,
                dims,
            },
        )
    });
    println!("TIMING attention_bwd T={t} {ms:.3} ms");
    let x = g.upload(&rand(&mut r, t * d, 1.0));
    let w = g.upload_weight(HostWeight::dense(rand(&mut r, inter * d, 0.05), inter, d));
    let mut y = g.zeros(t * inter);
    let ms = time_ms(&g, 10, || g.matmul_fwd(&mut y, &x, &w, None, t, false));
    println!(
        "TIMING matmul_fwd {t}x{d}x{inter} {ms:.3} ms ({:.1} TFLOP/s)",
        2.0 * (t * d * inter) as f64 / ms / 1e9
    );
    let (rank, a_n) = (8, 2 * (8 * d + d * 8));
    let params = g.upload(&rand(&mut r, a_n, 0.1));
    let segs: Vec<LoraSeg> = p
        .adapter_rows
        .iter()
        .map(|(rows, set)| LoraSeg {
            rows: rows.clone(),
            a_off: set * (2 * rank * d),
            b_off: set * (2 * rank * d) + rank * d,
            rank,
            scale_bits: 2.0f32.to_bits(),
        })
        .collect();
    let mut yd = g.zeros(t * d);
    let ms = time_ms(&g, 10, || {
        g.lora_fwd(
            &mut yd,
            &x,
            &params,
            LoraArgs {
                segs: &segs,
                k: d,
                n: d,
            },
        )
    });
    println!(
        "TIMING lora_fwd {} segs rank {rank} {t}x{d} {ms:.3} ms",
        segs.len()
    );
    let (mut dx, mut grads) = (g.zeros(t * d), g.zeros(a_n));
    let ms = time_ms(&g, 10, || {
        g.lora_bwd(
            &mut dx,
            &mut grads,
            &yd,
            &x,
            &params,
            LoraArgs {
                segs: &segs,
                k: d,
                n: d,
            },
        )
    });
    println!("TIMING lora_bwd {ms:.3} ms");
    let xv = g.upload(&rand(&mut r, d, 1.0));
    let wv = g.upload_weight(HostWeight::dense(rand(&mut r, vocab * d, 0.05), vocab, d));
    let mut yv = g.zeros(vocab);
    let ms = time_ms(&g, 20, || g.matmul_fwd(&mut yv, &xv, &wv, None, 1, false));
    println!(
        "TIMING gemv 1x{d}x{vocab} {ms:.3} ms ({:.0} GB/s)",
        (vocab * d * 4) as f64 / ms / 1e6
    );
    let rows = 480;
    let mut logits = g.upload(&rand(&mut r, rows * vocab, 4.0));
    let tg: Vec<u32> = (0..rows).map(|_| r.below(vocab) as u32).collect();
    let wt = vec![1.0 / rows as f32; rows];
    let (mut lp, mut gr) = (vec![0f64; rows], vec![false; rows]);
    let ms = time_ms(&g, 5, || {
        g.cross_entropy(
            &mut logits,
            CrossEntropyTargets {
                tokens: &tg,
                weights: &wt,
            },
            vocab,
            false,
            &mut lp,
            &mut gr,
        );
    });
    println!("TIMING cross_entropy {rows}x{vocab} {ms:.3} ms");
}
