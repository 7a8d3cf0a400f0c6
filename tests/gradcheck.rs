//! The hand-written backward against central finite differences: the whole train step of every
//! method on fixture models (directional derivatives along random directions restricted to each
//! parameter group), and single ops on random inputs.

mod common;

use bitune_rt::backend::cpu::Cpu;
use bitune_rt::backend::{
    Activation, AttnArgs, AttnDims, AttnGroup, AttnPlan, AttnSaved, Backend, MaskKind, Norm,
    NormArgs, RopeArgs,
};
use bitune_rt::bitune::params::{Kind, LoraSpec, SET_B, SET_C};
use bitune_rt::bitune::plan::{Example, Method, METHODS};
use bitune_rt::bitune::step::{loss_and_grad, Trainable};
use bitune_rt::model::load::Model;
use bitune_rt::model::weights::ALL_TARGETS;
use bitune_rt::rng::Rng;
use common::*;

fn examples() -> Vec<Example> {
    vec![
        Example {
            ids: vec![1, 40, 77, 81, 73, 90, 105, 66, 82, 81, 2],
            prompt_len: 7,
        },
        Example {
            ids: vec![1, 55, 60, 61, 70, 99, 120, 2],
            prompt_len: 5,
        },
    ]
}

fn trainable(be: &Cpu, m: &Model<Cpu>, method: Method) -> Trainable<Cpu> {
    let targets = ALL_TARGETS
        .into_iter()
        .filter(|t| m.weights.cfg.gated_mlp || *t != bitune_rt::model::weights::Target::Gate)
        .collect();
    let mut tr = Trainable::init(
        be,
        &m.weights,
        method,
        LoraSpec {
            rank: 3,
            alpha: 2.0,
            targets,
        },
        0.01,
        5,
    );
    let mut rng = Rng::new(9);
    for e in tr.table.entries.clone() {
        let s = &mut tr.params[e.offset..e.offset + e.len()];
        match e.kind {
            Kind::LoraB => s.iter_mut().for_each(|v| *v = rng.uniform(-0.3, 0.3)),
            // Away from θ = 0, where |θ| has its kink.
            Kind::ThetaK | Kind::ThetaV => s.iter_mut().for_each(|v| {
                *v = rng.uniform(0.02, 0.04) * if rng.next_f64() < 0.3 { -1.0 } else { 1.0 }
            }),
            _ => {}
        }
    }
    tr
}

/// Picks the parameters one directional derivative perturbs.
type Selector = Box<dyn Fn(&bitune_rt::bitune::params::Entry) -> bool>;

fn loss(be: &Cpu, m: &Model<Cpu>, tr: &Trainable<Cpu>) -> f64 {
    loss_and_grad(be, &m.weights, tr, &examples(), 2, None)
        .unwrap()
        .loss
}

#[test]
fn train_step_gradients_match_finite_differences() {
    let be = Cpu;
    for name in ["llama", "gemma", "phi"] {
        let m = Model::load(&be, &model_dir(name)).unwrap();
        for method in METHODS {
            let mut tr = trainable(&be, &m, method);
            let mut g = vec![0f32; tr.table.total];
            loss_and_grad(&be, &m.weights, &tr, &examples(), 2, Some(&mut g)).unwrap();
            let groups: Vec<(&str, Selector)> = vec![
                ("set C", Box::new(|e| e.set == SET_C && e.target.is_some())),
                ("set B", Box::new(|e| e.set == SET_B && e.target.is_some())),
                ("theta", Box::new(|e| e.target.is_none())),
            ];
            for (gname, sel) in groups {
                let mut rng = Rng::new(11);
                let mut u = vec![0f32; tr.table.total];
                for e in tr.table.entries.iter().filter(|e| sel(e)) {
                    let scale = if e.target.is_none() { 0.2 } else { 1.0 };
                    u[e.offset..e.offset + e.len()]
                        .iter_mut()
                        .for_each(|v| *v = rng.uniform(-1.0, 1.0) * scale);
                }
                if u.iter().all(|&v| v == 0.0) {
                    continue;
                }
                let analytic: f64 = g.iter().zip(&u).map(|(a, b)| *a as f64 * *b as f64).sum();
                // Central differences at ε and 2ε, Richardson-extrapolated: the O(ε²) curvature
                // term cancels, and ε stays large enough that f32 noise in the loss is negligible.
                let base = tr.params.clone();
                let mut central = |eps: f32| {
                    tr.params = base.iter().zip(&u).map(|(p, d)| p + eps * d).collect();
                    let lp = loss(&be, &m, &tr);
                    tr.params = base.iter().zip(&u).map(|(p, d)| p - eps * d).collect();
                    let lm = loss(&be, &m, &tr);
                    (lp - lm) / (2.0 * eps as f64)
                };
                let (d1, d2) = (central(1e-2), central(2e-2));
                tr.params = base;
                let numeric = (4.0 * d1 - d2) / 3.0;
                // f32 forward passes leave ~1e-6 of noise in the loss: an absolute floor of 3e-5
                // on the derivative covers it.
                assert!(
                    (analytic - numeric).abs() < 2e-2 * numeric.abs() + 3e-5,
                    "{name} {} {gname}: analytic {analytic:.6e} vs numeric {numeric:.6e}",
                    method.name()
                );
                // A set the method never reads gets exactly zero gradient.
                let unused = match method {
                    Method::NaiveBidir | Method::SharedWeights => gname == "set B",
                    _ => false,
                };
                if unused {
                    assert_eq!(
                        analytic,
                        0.0,
                        "{name} {}: unused set B got gradient",
                        method.name()
                    );
                } else {
                    assert!(
                        analytic.abs() > 1e-6,
                        "{name} {} {gname}: zero gradient",
                        method.name()
                    );
                }
            }
        }
    }
}

/// Central differences of `f` along `u` at `x`.
fn fd(f: &dyn Fn(&[f32]) -> f64, x: &[f32], u: &[f32], eps: f32) -> f64 {
    let xp: Vec<f32> = x.iter().zip(u).map(|(a, b)| a + eps * b).collect();
    let xm: Vec<f32> = x.iter().zip(u).map(|(a, b)| a - eps * b).collect();
    (f(&xp) - f(&xm)) / (2.0 * eps as f64)
}

fn rand_vec(rng: &mut Rng, n: usize, s: f32) -> Vec<f32> {
    (0..n).map(|_| rng.uniform(-s, s)).collect()
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

#[test]
fn norm_backward_matches_finite_differences() {
    let be = Cpu;
    let (rows, d) = (3, 7);
    let mut rng = Rng::new(1);
    for kind in [Norm::Rms, Norm::RmsPlusOne, Norm::Layer] {
        let x = rand_vec(&mut rng, rows * d, 2.0);
        let w = rand_vec(&mut rng, d, 1.0);
        let b = rand_vec(&mut rng, d, 1.0);
        let dy = rand_vec(&mut rng, rows * d, 1.0);
        let u = rand_vec(&mut rng, rows * d, 1.0);
        let f = |x: &[f32]| {
            let (mut o, mut st) = (vec![0f32; rows * d], vec![0f32; rows * 2]);
            be.norm_fwd(
                &mut o,
                &mut st,
                &x.to_vec(),
                &w,
                Some(&b),
                NormArgs {
                    rows,
                    d,
                    kind,
                    eps: 1e-5,
                },
            );
            dot(&o, &dy)
        };
        let (mut o, mut st) = (vec![0f32; rows * d], vec![0f32; rows * 2]);
        let na = NormArgs {
            rows,
            d,
            kind,
            eps: 1e-5,
        };
        be.norm_fwd(&mut o, &mut st, &x, &w, Some(&b), na);
        let mut dx = vec![0f32; rows * d];
        be.norm_bwd(&mut dx, &dy, &x, &st, &w, na, false);
        let (a, n) = (dot(&dx, &u), fd(&f, &x, &u, 1e-2));
        assert!(
            (a - n).abs() < 1e-3 * n.abs().max(1.0),
            "{kind:?}: {a} vs {n}"
        );
    }
}

#[test]
fn activation_backward_matches_finite_differences() {
    let be = Cpu;
    let n = 50;
    let mut rng = Rng::new(2);
    for act in [Activation::Silu, Activation::GeluTanh, Activation::Gelu] {
        for gated in [false, true] {
            let g = rand_vec(&mut rng, n, 4.0);
            let up = rand_vec(&mut rng, n, 2.0);
            let dy = rand_vec(&mut rng, n, 1.0);
            let u = rand_vec(&mut rng, n, 1.0);
            let upo = gated.then_some(&up);
            let f = |x: &[f32]| {
                let mut o = vec![0f32; n];
                be.act_fwd(&mut o, &x.to_vec(), upo, act);
                dot(&o, &dy)
            };
            let (mut dg, mut du) = (vec![0f32; n], vec![0f32; n]);
            be.act_bwd(&mut dg, gated.then_some(&mut du), &dy, &g, upo, act);
            let (a, nn) = (dot(&dg, &u), fd(&f, &g, &u, 1e-3));
            assert!(
                (a - nn).abs() < 2e-3 * nn.abs().max(1.0),
                "{act:?} gated={gated}: {a} vs {nn}"
            );
            if gated {
                let fu = |x: &[f32]| {
                    let mut o = vec![0f32; n];
                    be.act_fwd(&mut o, &g, Some(&x.to_vec()), act);
                    dot(&o, &dy)
                };
                let (a, nn) = (dot(&du, &u), fd(&fu, &up, &u, 1e-2));
                assert!(
                    (a - nn).abs() < 1e-3 * nn.abs().max(1.0),
                    "{act:?} up: {a} vs {nn}"
                );
            }
        }
    }
}

#[test]
fn attention_and_rope_backward_match_finite_differences() {
    let be = Cpu;
    let (hq, hkv, hd) = (4, 2, 6);
    let dims = AttnDims {
        q_heads: hq,
        kv_heads: hkv,
        head_dim: hd,
        scale: 0.4,
    };
    let mut rng = Rng::new(3);
    // Two groups: a prompt block under `mask` and an answer block reading a prefix and itself.
    for mask in [MaskKind::Causal, MaskKind::Full, MaskKind::AntiCausal] {
        let (tq, tk) = (7, 9);
        let q_pos: Vec<u32> = vec![0, 1, 2, 3, 4, 5, 6];
        let k_pos: Vec<u32> = vec![0, 1, 2, 3, 4, 5, 6, 0, 1];
        let plan = AttnPlan {
            groups: vec![
                AttnGroup {
                    q: 0..4,
                    kv: std::iter::once(0..4).collect(),
                    mask,
                },
                AttnGroup {
                    q: 4..7,
                    kv: vec![7..9, 4..7],
                    mask: MaskKind::Causal,
                },
            ],
            q_pos: q_pos.clone(),
            k_pos,
        };
        let q = rand_vec(&mut rng, tq * hq * hd, 1.0);
        let k = rand_vec(&mut rng, tk * hkv * hd, 1.0);
        let v = rand_vec(&mut rng, tk * hkv * hd, 1.0);
        let dy = rand_vec(&mut rng, tq * hq * hd, 1.0);
        let inv: Vec<f32> = (0..2).map(|i| 1.0 / 10f32.powf(i as f32 / 2.0)).collect();
        // Loss = <attention(rope(q), rope(k), v), dy> with RoPE on 4 of 6 channels (partial).
        let run = |q: &[f32], k: &[f32], v: &[f32]| {
            let (mut q, mut k) = (q.to_vec(), k.to_vec());
            be.rope(
                &mut q,
                &q_pos,
                RopeArgs {
                    heads: hq,
                    head_dim: hd,
                    rot_dim: 4,
                },
                &inv,
                false,
            );
            be.rope(
                &mut k,
                &[0, 1, 2, 3, 4, 5, 6, 0, 1],
                RopeArgs {
                    heads: hkv,
                    head_dim: hd,
                    rot_dim: 4,
                },
                &inv,
                false,
            );
            let (mut o, mut l) = (vec![0f32; tq * hq * hd], vec![0f32; tq * hq]);
            be.attention_fwd(
                &mut o,
                &mut l,
                &q,
                &k,
                &v.to_vec(),
                AttnArgs { plan: &plan, dims },
            );
            (q, k, o, l)
        };
        let (qr, kr, o, l) = run(&q, &k, &v);
        let (mut dq, mut dk, mut dv) = (
            vec![0f32; q.len()],
            vec![0f32; k.len()],
            vec![0f32; v.len()],
        );
        be.attention_bwd(
            &mut dq,
            &mut dk,
            &mut dv,
            &dy,
            AttnSaved {
                q: &qr,
                k: &kr,
                v: &v,
                out: &o,
                lse: &l,
            },
            AttnArgs { plan: &plan, dims },
        );
        be.rope(
            &mut dq,
            &q_pos,
            RopeArgs {
                heads: hq,
                head_dim: hd,
                rot_dim: 4,
            },
            &inv,
            true,
        );
        be.rope(
            &mut dk,
            &[0, 1, 2, 3, 4, 5, 6, 0, 1],
            RopeArgs {
                heads: hkv,
                head_dim: hd,
                rot_dim: 4,
            },
            &inv,
            true,
        );
        let cases: [(&str, &Vec<f32>, &Vec<f32>, usize); 3] =
            [("q", &q, &dq, 0), ("k", &k, &dk, 1), ("v", &v, &dv, 2)];
        for (nm, x, dx, which) in cases {
            let u = rand_vec(&mut rng, x.len(), 1.0);
            let f = |xx: &[f32]| {
                let o = match which {
                    0 => run(xx, &k, &v).2,
                    1 => run(&q, xx, &v).2,
                    _ => run(&q, &k, xx).2,
                };
                dot(&o, &dy)
            };
            let (a, n) = (dot(dx, &u), fd(&f, x, &u, 1e-2));
            assert!(
                (a - n).abs() < 2e-3 * n.abs().max(1.0),
                "{mask:?} d{nm}: {a} vs {n}"
            );
        }
    }
}
