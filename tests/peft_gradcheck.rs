//! The hand-written DoRA and IA3 backward against central finite differences: the whole train
//! step of every method on the llama, gemma and phi fixtures (directional derivatives along
//! random directions restricted to each parameter group, as in tests/gradcheck.rs).

mod common;

use bitune_rt::backend::cpu::Cpu;
use bitune_rt::bitune::params::{Entry, Kind, LoraSpec, SET_B, SET_C};
use bitune_rt::bitune::peft::{dora_row_norms, Peft};
use bitune_rt::bitune::plan::{Example, Method, METHODS};
use bitune_rt::bitune::step::{loss_and_grad, Trainable};
use bitune_rt::model::load::Model;
use bitune_rt::model::weights::{Target, ALL_TARGETS};
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

fn spec(m: &Model<Cpu>) -> LoraSpec {
    LoraSpec {
        rank: 3,
        alpha: 2.0,
        targets: ALL_TARGETS
            .into_iter()
            .filter(|t| m.weights.cfg.gated_mlp || *t != Target::Gate)
            .collect(),
    }
}

/// A trained-looking state: B ≠ 0, magnitudes off ‖W + s·BA‖ (so m/n ≠ 1), IA3 vectors off 1,
/// θ away from its kink at 0.
fn trainable(be: &Cpu, m: &Model<Cpu>, method: Method, peft: Peft) -> Trainable<Cpu> {
    let mut tr = Trainable::init_with(be, &m.weights, method, spec(m), peft, 0.01, 5);
    let mut rng = Rng::new(9);
    for e in tr.table.entries.clone() {
        let s = &mut tr.params[e.offset..e.offset + e.len()];
        match e.kind {
            Kind::LoraB => s.iter_mut().for_each(|v| *v = rng.uniform(-0.3, 0.3)),
            Kind::Magnitude => s.iter_mut().for_each(|v| *v *= rng.uniform(0.7, 1.3)),
            Kind::Ia3 => s.iter_mut().for_each(|v| *v = rng.uniform(0.6, 1.4)),
            Kind::ThetaK | Kind::ThetaV => s.iter_mut().for_each(|v| {
                *v = rng.uniform(0.02, 0.04) * if rng.next_f64() < 0.3 { -1.0 } else { 1.0 }
            }),
            Kind::LoraA => {}
        }
    }
    tr
}

/// The loss at `params` with DoRA's norms held at their values at `base`, the function whose
/// gradient the backward computes (n is detached): scaling m by n(params)/n(base) turns
/// m/n(params) into m/n(base).
fn loss_frozen_norms(
    be: &Cpu,
    m: &Model<Cpu>,
    tr: &Trainable<Cpu>,
    params: &[f32],
    base: &[f32],
) -> f64 {
    let mut p = params.to_vec();
    let tb = &tr.table;
    for e in tb.entries.iter().filter(|e| e.kind == Kind::Magnitude) {
        let t = e.target.unwrap();
        let (a, b) = tb.lora(e.set, e.layer, t).unwrap();
        let (k, n) = t.dims(&m.weights.cfg);
        let r = tb.lora.rank;
        let w = m.weights.blocks[e.layer].linear(t).w.values();
        let norms = |q: &[f32]| {
            dora_row_norms(w, &q[a..a + r * k], &q[b..b + n * r], tb.lora.scale(), k, n)
        };
        let (n0, n1) = (norms(base), norms(&p));
        for (j, v) in p[e.offset..e.offset + n].iter_mut().enumerate() {
            *v *= n1[j] / n0[j];
        }
    }
    let probe = Trainable {
        method: tr.method,
        table: tb.clone(),
        params: p,
        theta_init: tr.theta_init,
    };
    loss_and_grad(be, &m.weights, &probe, &examples(), 2, None)
        .unwrap()
        .loss
}

type Selector = Box<dyn Fn(&Entry) -> bool>;

fn groups(peft: Peft) -> Vec<(&'static str, Selector)> {
    let mut g: Vec<(&str, Selector)> = vec![("theta", Box::new(|e| !e.kind.is_adapter()))];
    for (name, set) in [("set C", SET_C), ("set B", SET_B)] {
        if peft == Peft::Dora {
            g.push((
                if set == SET_C {
                    "set C A/B"
                } else {
                    "set B A/B"
                },
                Box::new(move |e| e.set == set && matches!(e.kind, Kind::LoraA | Kind::LoraB)),
            ));
            g.push((
                if set == SET_C { "set C m" } else { "set B m" },
                Box::new(move |e| e.set == set && e.kind == Kind::Magnitude),
            ));
        } else {
            g.push((name, Box::new(move |e| e.set == set && e.kind.is_adapter())));
        }
    }
    g
}

#[test]
fn dora_and_ia3_train_step_gradients_match_finite_differences() {
    let be = Cpu;
    for name in ["llama", "gemma", "phi"] {
        let m = Model::load(&be, &model_dir(name)).unwrap();
        for peft in [Peft::Dora, Peft::Ia3] {
            for method in METHODS {
                let what = format!("{name} {} {}", peft.name(), method.name());
                let tr = trainable(&be, &m, method, peft);
                let mut g = vec![0f32; tr.table.total];
                loss_and_grad(&be, &m.weights, &tr, &examples(), 2, Some(&mut g)).unwrap();
                for (gname, sel) in groups(peft) {
                    let mut rng = Rng::new(11);
                    let mut u = vec![0f32; tr.table.total];
                    for e in tr.table.entries.iter().filter(|e| sel(e)) {
                        let scale = if e.kind.is_adapter() { 1.0 } else { 0.2 };
                        u[e.offset..e.offset + e.len()]
                            .iter_mut()
                            .for_each(|v| *v = rng.uniform(-1.0, 1.0) * scale);
                    }
                    if u.iter().all(|&v| v == 0.0) {
                        continue;
                    }
                    let analytic: f64 = g.iter().zip(&u).map(|(a, b)| *a as f64 * *b as f64).sum();
                    // Central differences at ε and 2ε, Richardson-extrapolated (tests/gradcheck.rs).
                    let base = &tr.params;
                    let central = |eps: f32| {
                        let at = |s: f32| -> Vec<f32> {
                            base.iter().zip(&u).map(|(p, d)| p + s * eps * d).collect()
                        };
                        let lp = loss_frozen_norms(&be, &m, &tr, &at(1.0), base);
                        let lm = loss_frozen_norms(&be, &m, &tr, &at(-1.0), base);
                        (lp - lm) / (2.0 * eps as f64)
                    };
                    let numeric = (4.0 * central(1e-2) - central(2e-2)) / 3.0;
                    assert!(
                        (analytic - numeric).abs() < 2e-2 * numeric.abs() + 3e-5,
                        "{what} {gname}: analytic {analytic:.6e} vs numeric {numeric:.6e}"
                    );
                    let unused = matches!(method, Method::NaiveBidir | Method::SharedWeights)
                        && gname.starts_with("set B");
                    if unused {
                        assert_eq!(analytic, 0.0, "{what}: unused set B got gradient");
                    } else {
                        assert!(analytic.abs() > 1e-6, "{what} {gname}: zero gradient");
                    }
                }
            }
        }
    }
}

/// At initialisation DoRA (m = ‖W‖, B = 0) and IA3 (l = 1) are the base model: the same loss
/// as LoRA at its initialisation (B = 0), for every method.
#[test]
fn dora_and_ia3_start_as_the_base_model() {
    let be = Cpu;
    for name in ["llama", "phi"] {
        let m = Model::load(&be, &model_dir(name)).unwrap();
        for method in METHODS {
            let loss = |peft| {
                let tr = Trainable::init_with(&be, &m.weights, method, spec(&m), peft, 0.01, 3);
                loss_and_grad(&be, &m.weights, &tr, &examples(), 2, None)
                    .unwrap()
                    .loss
            };
            let lora = loss(Peft::Lora);
            for peft in [Peft::Dora, Peft::Ia3] {
                let l = loss(peft);
                assert!(
                    (l - lora).abs() < 1e-5 * lora.abs(),
                    "{name} {} {}: {l} vs LoRA {lora}",
                    peft.name(),
                    method.name()
                );
            }
        }
    }
}
