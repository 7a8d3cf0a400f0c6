//! Every CUDA row-wise op against the CPU reference (DESIGN §5, layer 5): fresh random inputs,
//! outputs poisoned with NaN before each run (so an element the kernel forgets to write fails), f32
//! tolerances (1e-5 relative). Accumulating outputs start from the same random values on both
//! sides. Without a GPU every test prints "SKIP: …" and passes. Matmul, LoRA and attention are in
//! cuda_attention_lora.rs, whole-model checks in cuda_model.rs.
#![cfg(feature = "cuda")]

mod cuda_common;

use bitune_rt::backend::cpu::Cpu;
use bitune_rt::backend::{
    Activation, AdamStep, Backend, CrossEntropyTargets, HostWeight, KvMix, Norm, NormArgs,
    RopeArgs, RowCopy, Theta,
};
use bitune_rt::rng::Rng;
use cuda_common::*;

#[test]
fn row_ops() {
    let Some(g) = gpu() else { return };
    let (c, mut r) = (Cpu, Rng::new(1));
    let (w, rows) = (37, 20);
    let src = rand(&mut r, rows * w, 2.0);
    for acc in [false, true] {
        let init = rand(&mut r, rows * w, 1.0);
        let (mut want, mut got) = (init.clone(), g.upload(&init));
        let rc = RowCopy {
            dst_row: 3,
            src_row: 9,
            rows: 7,
            width: w,
        };
        c.copy_rows(&mut want, &src, rc, acc);
        g.copy_rows(&mut got, &g.upload(&src), rc, acc);
        close("copy_rows", &g.download(&got), &want, 1e-6);
    }
    let idx = [4, 0, 19, 4, 7];
    let mut want = vec![0f32; idx.len() * w];
    let mut got = nan(&g, idx.len() * w);
    c.gather_rows(&mut want, &src, &idx, w);
    g.gather_rows(&mut got, &g.upload(&src), &idx, w);
    close("gather_rows", &g.download(&got), &want, 0.0);
    let small = rand(&mut r, idx.len() * w, 1.0);
    let (mut want, mut got) = (src.clone(), g.upload(&src));
    c.scatter_add_rows(&mut want, &small, &idx, w);
    g.scatter_add_rows(&mut got, &g.upload(&small), &idx, w);
    close("scatter_add_rows", &g.download(&got), &want, 1e-6);
    let (mut want, mut got) = (src.clone(), g.upload(&src));
    c.add(&mut want, &src);
    g.add(&mut got, &g.upload(&src));
    c.scale(&mut want, -0.7);
    g.scale(&mut got, -0.7);
    c.add_host(&mut want, 5, &small[..9]);
    g.add_host(&mut got, 5, &small[..9]);
    close("add/scale/add_host", &g.download(&got), &want, 1e-6);
    assert_eq!(g.download_range(&got, 11, 6), want[11..17].to_vec());
    // Room reserved ahead keeps the values and takes the appended rows without moving them.
    let mut want = src[..3 * w].to_vec();
    let mut got = g.upload(&want);
    c.reserve(&mut want, 10 * w);
    g.reserve(&mut got, 10 * w);
    assert!(want.capacity() >= 13 * w && got.capacity() >= 13 * w);
    let at = want.as_ptr();
    for (s, n) in [(9, 2), (0, 5)] {
        c.append_rows(&mut want, &src, s, n, w);
        g.append_rows(&mut got, &g.upload(&src), s, n, w);
    }
    assert_eq!(
        want.as_ptr(),
        at,
        "the CPU cache moved though room was reserved"
    );
    assert!(got.capacity() >= 13 * w && g.len(&got) == 10 * w);
    close("reserve/append_rows", &g.download(&got), &want, 0.0);
    let mut got = g.upload(&want);
    g.fill(&mut got, 2.5);
    assert!(g.download(&got).iter().all(|&v| v == 2.5));
    assert!(g.download(&g.zeros(0)).is_empty() && g.len(&g.upload(&[])) == 0);
    let ids = [3u32, 0, 19, 3];
    let mut want = vec![0f32; ids.len() * w];
    let mut got = nan(&g, ids.len() * w);
    let table = HostWeight::dense(src.clone(), src.len() / w, w);
    c.embedding_fwd(&mut want, &ids, &c.upload_weight(table.clone()), w, 1.5);
    g.embedding_fwd(&mut got, &ids, &g.upload_weight(table), w, 1.5);
    close("embedding_fwd", &g.download(&got), &want, 1e-6);
}

#[test]
fn norm_fwd_bwd() {
    let Some(g) = gpu() else { return };
    let (c, mut r) = (Cpu, Rng::new(4));
    for d in [48, 576, 1000] {
        for kind in [Norm::Rms, Norm::RmsPlusOne, Norm::Layer] {
            let rows = 17;
            let (x, w, b) = (
                rand(&mut r, rows * d, 2.0),
                rand(&mut r, d, 1.0),
                rand(&mut r, d, 1.0),
            );
            let bias = (kind == Norm::Layer).then_some(&b);
            let (mut o_w, mut s_w) = (vec![0f32; rows * d], vec![0f32; rows * 2]);
            let (mut o_g, mut s_g) = (nan(&g, rows * d), nan(&g, rows * 2));
            let na = NormArgs {
                rows,
                d,
                kind,
                eps: 1e-5,
            };
            c.norm_fwd(&mut o_w, &mut s_w, &x, &w, bias, na);
            let bg = g.upload(&b);
            g.norm_fwd(
                &mut o_g,
                &mut s_g,
                &g.upload(&x),
                &g.upload(&w),
                bias.map(|_| &bg),
                na,
            );
            close(
                &format!("norm_fwd {kind:?} {d}"),
                &g.download(&o_g),
                &o_w,
                1e-5,
            );
            close(
                &format!("norm stats {kind:?} {d}"),
                &g.download(&s_g),
                &s_w,
                1e-5,
            );
            for acc in [false, true] {
                let (dy, dx0) = (rand(&mut r, rows * d, 1.0), rand(&mut r, rows * d, 1.0));
                let mut want = dx0.clone();
                let mut got = if acc {
                    g.upload(&dx0)
                } else {
                    nan(&g, rows * d)
                };
                let na = NormArgs {
                    rows,
                    d,
                    kind,
                    eps: 1e-5,
                };
                c.norm_bwd(&mut want, &dy, &x, &s_w, &w, na, acc);
                g.norm_bwd(
                    &mut got,
                    &g.upload(&dy),
                    &g.upload(&x),
                    &g.upload(&s_w),
                    &g.upload(&w),
                    na,
                    acc,
                );
                close(
                    &format!("norm_bwd {kind:?} {d}"),
                    &g.download(&got),
                    &want,
                    1e-5,
                );
            }
        }
    }
}

#[test]
fn rope_partial_and_inverse() {
    let Some(g) = gpu() else { return };
    let (c, mut r) = (Cpu, Rng::new(5));
    let (heads, hd) = (3, 16);
    for rot in [16, 8] {
        let inv: Vec<f32> = (0..rot / 2)
            .map(|i| 10000f32.powf(-((2 * i) as f32) / rot as f32))
            .collect();
        // 10 rows but 7 positions: the trailing (mix/cache) rows must stay untouched.
        let x = rand(&mut r, 10 * heads * hd, 1.0);
        let pos = [0u32, 1, 5, 77, 1000, 4095, 3];
        for inverse in [false, true] {
            let (mut want, mut got) = (x.clone(), g.upload(&x));
            let ra = RopeArgs {
                heads,
                head_dim: hd,
                rot_dim: rot,
            };
            c.rope(&mut want, &pos, ra, &inv, inverse);
            g.rope(&mut got, &pos, ra, &inv, inverse);
            close(
                &format!("rope rot {rot} inverse {inverse}"),
                &g.download(&got),
                &want,
                1e-5,
            );
        }
    }
}

#[test]
fn kv_mix_fwd_bwd() {
    let Some(g) = gpu() else { return };
    let (c, mut r) = (Cpu, Rng::new(6));
    let (w, rows) = (24, 30);
    let buf = rand(&mut r, rows * w, 1.0);
    let (mut want, mut got) = (buf.clone(), g.upload(&buf));
    let km = KvMix {
        mix: 20,
        c: 0,
        b: 8,
        n: 8,
        width: w,
    };
    c.kv_mix_fwd(&mut want, km, 0.3);
    g.kv_mix_fwd(&mut got, km, 0.3);
    close("kv_mix_fwd", &g.download(&got), &want, 1e-6);
    let d = rand(&mut r, rows * w, 1.0);
    let (mut dw, mut dg) = (d.clone(), g.upload(&d));
    let sw = c.kv_mix_bwd(&mut dw, &want, km, 0.3);
    let sg = g.kv_mix_bwd(&mut dg, &got, km, 0.3);
    close("kv_mix_bwd", &g.download(&dg), &dw, 1e-6);
    assert!(
        (sg - sw).abs() <= 1e-9 * sw.abs().max(1.0),
        "kv_mix_bwd dθ sum: {sg} vs {sw}"
    );
}

#[test]
fn act_fwd_bwd() {
    let Some(g) = gpu() else { return };
    let (c, mut r) = (Cpu, Rng::new(7));
    let n = 1000;
    for act in [Activation::Silu, Activation::GeluTanh, Activation::Gelu] {
        let (gate, up, dout) = (
            rand(&mut r, n, 6.0),
            rand(&mut r, n, 2.0),
            rand(&mut r, n, 1.0),
        );
        for gated in [true, false] {
            let upc = gated.then_some(&up);
            let upg = g.upload(&up);
            let mut want = vec![0f32; n];
            let mut got = nan(&g, n);
            c.act_fwd(&mut want, &gate, upc, act);
            g.act_fwd(&mut got, &g.upload(&gate), gated.then_some(&upg), act);
            close(
                &format!("act_fwd {act:?} {gated}"),
                &g.download(&got),
                &want,
                1e-5,
            );
            let (mut dg_w, mut du_w) = (vec![0f32; n], vec![0f32; n]);
            let (mut dg_g, mut du_g) = (nan(&g, n), nan(&g, n));
            c.act_bwd(
                &mut dg_w,
                gated.then_some(&mut du_w),
                &dout,
                &gate,
                upc,
                act,
            );
            g.act_bwd(
                &mut dg_g,
                gated.then_some(&mut du_g),
                &g.upload(&dout),
                &g.upload(&gate),
                gated.then_some(&upg),
                act,
            );
            close(
                &format!("act_bwd dgate {act:?} {gated}"),
                &g.download(&dg_g),
                &dg_w,
                1e-5,
            );
            if gated {
                close(
                    &format!("act_bwd dup {act:?}"),
                    &g.download(&du_g),
                    &du_w,
                    1e-5,
                );
            }
        }
    }
}

#[test]
fn cross_entropy_fused() {
    let Some(g) = gpu() else { return };
    let (c, mut r) = (Cpu, Rng::new(8));
    let (rows, vocab) = (5, 3001);
    let logits = rand(&mut r, rows * vocab, 8.0);
    let mut targets: Vec<u32> = (0..rows).map(|_| r.below(vocab) as u32).collect();
    // Row 0's target is its argmax, so `greedy` is true somewhere.
    targets[0] = (0..vocab)
        .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
        .unwrap() as u32;
    let weights = rand(&mut r, rows, 1.0);
    for grad in [false, true] {
        let (mut lw, mut gw) = (vec![0f64; rows], vec![false; rows]);
        let (mut lg, mut gg) = (vec![0f64; rows], vec![false; rows]);
        let (mut want, mut got) = (logits.clone(), g.upload(&logits));
        let ce = CrossEntropyTargets {
            tokens: &targets,
            weights: &weights,
        };
        let loss_w = c.cross_entropy(&mut want, ce, vocab, grad, &mut lw, &mut gw);
        let loss_g = g.cross_entropy(&mut got, ce, vocab, grad, &mut lg, &mut gg);
        assert!(
            (loss_g - loss_w).abs() <= 1e-9 * loss_w.abs().max(1.0),
            "loss {loss_g} vs {loss_w}"
        );
        assert!(
            lg.iter()
                .zip(&lw)
                .all(|(a, b)| (a - b).abs() <= 1e-9 * b.abs().max(1.0)),
            "logprobs"
        );
        assert_eq!(gg, gw, "greedy");
        close("cross_entropy grad", &g.download(&got), &want, 1e-5);
    }
}

#[test]
fn adamw_sgd_sum_sq() {
    let Some(g) = gpu() else { return };
    let (c, mut r) = (Cpu, Rng::new(9));
    let x = rand(&mut r, 100_000, 1.0);
    let (a, b) = (c.sum_sq(&x), g.sum_sq(&g.upload(&x)));
    assert!((a - b).abs() <= 1e-9 * a, "sum_sq {b} vs {a}");
    let n = 1000;
    let (p, gr, m, v) = (
        rand(&mut r, n, 1.0),
        rand(&mut r, n, 1.0),
        rand(&mut r, n, 0.1),
        rand(&mut r, n, 0.1)
            .iter()
            .map(|x| x.abs())
            .collect::<Vec<_>>(),
    );
    let h = AdamStep {
        lr: 1e-2,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.1,
        t: 3,
    };
    let (mut pw, mut mw, mut vw) = (p.clone(), m.clone(), v.clone());
    let (mut pg, mut mg, mut vg) = (g.upload(&p), g.upload(&m), g.upload(&v));
    c.adamw(&mut pw, &gr, &mut mw, &mut vw, h);
    g.adamw(&mut pg, &g.upload(&gr), &mut mg, &mut vg, h);
    close("adamw p", &g.download(&pg), &pw, 1e-5);
    close("adamw m", &g.download(&mg), &mw, 1e-6);
    close("adamw v", &g.download(&vg), &vw, 1e-6);
    c.sgd(&mut pw, &gr, 0.1);
    g.sgd(&mut pg, &g.upload(&gr), 0.1);
    close("sgd", &g.download(&pg), &pw, 1e-5);
}

/// The kv-mix that reads θ from the parameter buffer (forward) and accumulates dθ into the
/// gradient buffer (backward), for θ > 0, θ < 0 and θ = 0 (dα/dθ = 0 there).
#[test]
fn kv_mix_fwd_bwd_theta() {
    let Some(g) = gpu() else { return };
    let (c, mut r) = (Cpu, Rng::new(16));
    let (w, rows) = (24, 30);
    for th in [0.013f32, -0.4, 0.0] {
        let params = {
            let mut p = rand(&mut r, 9, 1.0);
            p[5] = th;
            p
        };
        let pg = g.upload(&params);
        let buf = rand(&mut r, rows * w, 1.0);
        let (mut want, mut got) = (buf.clone(), g.upload(&buf));
        let km = KvMix {
            mix: 20,
            c: 0,
            b: 8,
            n: 8,
            width: w,
        };
        let at = Theta { off: 5, init: 0.01 };
        c.kv_mix_fwd_theta(&mut want, km, &params, at);
        g.kv_mix_fwd_theta(&mut got, km, &pg, at);
        close("kv_mix_fwd_theta", &g.download(&got), &want, 1e-6);
        let d = rand(&mut r, rows * w, 1.0);
        let grads = rand(&mut r, 9, 1.0);
        let (mut dw, mut dg) = (d.clone(), g.upload(&d));
        let (mut gw, mut gg) = (grads.clone(), g.upload(&grads));
        c.kv_mix_bwd_theta(&mut dw, &want, km, &params, at, &mut gw);
        g.kv_mix_bwd_theta(&mut dg, &got, km, &pg, at, &mut gg);
        close("kv_mix_bwd_theta dbuf", &g.download(&dg), &dw, 1e-6);
        close("kv_mix_bwd_theta grads", &g.download(&gg), &gw, 1e-6);
        if th != 0.0 {
            assert_ne!(gw[5], grads[5], "θ = {th}: no gradient reached θ");
        }
    }
}

/// DoRA's and IA3's column ops on a row range, and DoRA's inverted weight-row norms.
#[test]
fn mul_cols_add_cols_col_dot_dora_inv_norm() {
    let Some(g) = gpu() else { return };
    let (c, mut r) = (Cpu, Rng::new(17));
    let (w, rows) = (33, 21);
    let y = rand(&mut r, rows * w, 2.0);
    let v = rand(&mut r, w + 7, 1.5);
    let vg = g.upload(&v);
    for add in [false, true] {
        let (mut want, mut got) = (y.clone(), g.upload(&y));
        if add {
            c.add_cols(&mut want, 4..17, w, &v, 7);
            g.add_cols(&mut got, 4..17, w, &vg, 7);
        } else {
            c.mul_cols(&mut want, 4..17, w, &v, 7);
            g.mul_cols(&mut got, 4..17, w, &vg, 7);
        }
        close(&format!("cols add={add}"), &g.download(&got), &want, 1e-6);
    }
    let b = rand(&mut r, rows * w, 1.0);
    let out = rand(&mut r, w + 5, 1.0);
    let (mut want, mut got) = (out.clone(), g.upload(&out));
    c.col_dot(&mut want, 5, &y, &b, 3..19, w);
    g.col_dot(&mut got, 5, &g.upload(&y), &g.upload(&b), 3..19, w);
    close("col_dot", &g.download(&got), &want, 1e-5);

    let (k, n, rank) = (29, 13, 3);
    let wt = rand(&mut r, n * k, 1.0);
    let params = rand(&mut r, 4 + rank * k + n * rank, 0.5);
    let seg = bitune_rt::backend::LoraSeg {
        rows: 0..1,
        a_off: 4,
        b_off: 4 + rank * k,
        rank,
        scale_bits: 0.7f32.to_bits(),
    };
    let mut want = vec![0f32; n];
    let mut got = nan(&g, n);
    let (wc, wg) = (
        c.upload_weight(HostWeight::dense(wt.clone(), n, k)),
        g.upload_weight(HostWeight::dense(wt, n, k)),
    );
    c.dora_inv_norm(&mut want, &wc, &params, &seg);
    g.dora_inv_norm(&mut got, &wg, &g.upload(&params), &seg);
    close("dora_inv_norm", &g.download(&got), &want, 1e-5);
}

/// Greedy decoding's argmax on the device: the first maximum, as the host's `sample::argmax`,
/// over lengths below and above the block size, with ties and infinities.
#[test]
fn argmax_first_maximum() {
    let Some(g) = gpu() else { return };
    let mut r = Rng::new(18);
    for n in [1usize, 7, 256, 1000, 49_153] {
        let mut x = rand(&mut r, n, 3.0);
        if n > 10 {
            x[n / 3] = 9.0; // a tie: the first one wins
            x[n - 2] = 9.0;
            x[1] = f32::NEG_INFINITY;
        }
        let want = bitune_rt::bitune::sample::argmax(&x);
        assert_eq!(g.argmax(&g.upload(&x), n), want, "n = {n}");
    }
    let all_neg_inf = vec![f32::NEG_INFINITY; 300];
    assert_eq!(g.argmax(&g.upload(&all_neg_inf), 300), 0);
}
