//! Identities of the method: α = 0 is the causal model, α = 1 with equal adapters is a prefix-LM,
//! a batch of k equals k accumulated singletons, shared-prefix scoring equals the training
//! path's log-likelihoods, and a resumed run equals an uninterrupted one.

mod common;

use bitune_rt::backend::cpu::Cpu;
use bitune_rt::bitune::adapter_io::AdapterMeta;
use bitune_rt::bitune::engine::Engine;
use bitune_rt::bitune::infer::score_continuations;
use bitune_rt::bitune::params::{Kind, LoraSpec, SET_B, SET_C};
use bitune_rt::bitune::plan::{Example, Method};
use bitune_rt::bitune::step::{loss_and_grad, Trainable};
use bitune_rt::model::load::Model;
use bitune_rt::model::weights::ALL_TARGETS;
use bitune_rt::rng::Rng;
use bitune_rt::train::optim::{OptConfig, OptKind, Schedule};
use bitune_rt::train::run::{train, TrainConfig};
use common::*;

fn exs() -> Vec<Example> {
    vec![
        Example {
            ids: vec![1, 40, 77, 81, 73, 90, 105, 66, 82, 81, 2],
            prompt_len: 7,
        },
        Example {
            ids: vec![1, 55, 60, 61, 70, 99, 120, 2],
            prompt_len: 5,
        },
        Example {
            ids: vec![1, 15, 16, 17, 2],
            prompt_len: 3,
        },
    ]
}

/// A trained-looking state: random A and B in both sets.
fn state(be: &Cpu, m: &Model<Cpu>, method: Method, seed: u64) -> Trainable<Cpu> {
    let lora = LoraSpec {
        rank: 2,
        alpha: 4.0,
        targets: ALL_TARGETS.to_vec(),
    };
    let mut tr = Trainable::init(be, &m.weights, method, lora, 0.01, seed);
    let mut rng = Rng::new(seed);
    for e in tr.table.entries.clone() {
        if e.kind == Kind::LoraB {
            tr.params[e.offset..e.offset + e.len()]
                .iter_mut()
                .for_each(|v| *v = rng.uniform(-0.3, 0.3));
        }
    }
    tr
}

fn set_theta(tr: &mut Trainable<Cpu>, v: f32) {
    let (tk, tv) = tr.table.theta().unwrap();
    let n = tr.table.num_layers;
    tr.params[tk..tk + n].fill(v);
    tr.params[tv..tv + n].fill(v);
}

/// Copies set C's values into `dst` (and into set B when `both`).
fn copy_c(src: &Trainable<Cpu>, dst: &mut Trainable<Cpu>, both: bool) {
    for e in &dst.table.entries.clone() {
        if e.kind == Kind::ThetaK || e.kind == Kind::ThetaV || (e.set == SET_B && !both) {
            continue;
        }
        let s = src
            .table
            .entries
            .iter()
            .find(|f| f.set == SET_C && f.name == e.name)
            .unwrap();
        let vals = src.params[s.offset..s.offset + s.len()].to_vec();
        dst.params[e.offset..e.offset + e.len()].copy_from_slice(&vals);
    }
}

fn loss(be: &Cpu, m: &Model<Cpu>, tr: &Trainable<Cpu>, e: &[Example]) -> f64 {
    loss_and_grad(be, &m.weights, tr, e, e.len(), None)
        .unwrap()
        .loss
}

#[test]
fn alpha_zero_is_causal_and_alpha_one_with_equal_adapters_is_prefix_lm() {
    let be = Cpu;
    for name in ["llama", "gemma", "phi"] {
        let m = Model::load(&be, &model_dir(name)).unwrap();
        let c = state(&be, &m, Method::Lora, 3);
        let mut bt = state(&be, &m, Method::Bitune, 4);
        copy_c(&c, &mut bt, false);
        set_theta(&mut bt, 0.0);
        let (a, b) = (loss(&be, &m, &bt, &exs()), loss(&be, &m, &c, &exs()));
        assert!((a - b).abs() < 1e-5 * b, "{name}: α=0 {a} vs causal {b}");
        // α → 1 with B = C: the answer reads the bidirectional prompt of set C = naive bidir.
        copy_c(&c, &mut bt, true);
        set_theta(&mut bt, 1e12);
        let mut naive = state(&be, &m, Method::NaiveBidir, 5);
        copy_c(&c, &mut naive, false);
        let (a, b) = (loss(&be, &m, &bt, &exs()), loss(&be, &m, &naive, &exs()));
        assert!((a - b).abs() < 1e-5 * b, "{name}: α=1 {a} vs prefix-LM {b}");
        assert!(
            (a - loss(&be, &m, &c, &exs())).abs() > 1e-4,
            "{name}: the prefix-LM must differ from causal"
        );
    }
}

#[test]
fn batch_of_k_equals_k_accumulated_singletons() {
    let be = Cpu;
    let m = Model::load(&be, &model_dir("qwen2")).unwrap();
    for method in [Method::Bitune, Method::Lora, Method::NoMixing] {
        let tr = state(&be, &m, method, 7);
        let mut gb = vec![0f32; tr.table.total];
        let lb = loss_and_grad(&be, &m.weights, &tr, &exs(), 3, Some(&mut gb))
            .unwrap()
            .loss;
        let mut ga = vec![0f32; tr.table.total];
        let mut la = 0.0;
        for e in exs() {
            la += loss_and_grad(&be, &m.weights, &tr, &[e], 3, Some(&mut ga))
                .unwrap()
                .loss;
        }
        assert!(
            (la - lb).abs() < 1e-5 * lb,
            "{}: loss {la} vs {lb}",
            method.name()
        );
        assert!(
            rel_err(&ga, &gb) < 1e-4,
            "{}: gradients {}",
            method.name(),
            rel_err(&ga, &gb)
        );
    }
}

#[test]
fn shared_prefix_scoring_equals_the_training_path() {
    let be = Cpu;
    let m = Model::load(&be, &model_dir("gemma")).unwrap();
    for method in [
        Method::Bitune,
        Method::NaiveBidir,
        Method::Lora,
        Method::AntiCausal,
    ] {
        let tr = state(&be, &m, method, 9);
        let ctx = vec![1u32, 40, 77, 81, 73, 90];
        let conts = vec![vec![105u32, 66, 82], vec![12u32], vec![105u32, 67, 3, 4]];
        let shared = score_continuations(&be, &m.weights, &tr, &ctx, &conts).unwrap();
        for (c, (lp, _)) in conts.iter().zip(&shared) {
            let alone =
                score_continuations(&be, &m.weights, &tr, &ctx, std::slice::from_ref(c)).unwrap();
            let a: Vec<f32> = lp.iter().map(|&x| x as f32).collect();
            let b: Vec<f32> = alone[0].0.iter().map(|&x| x as f32).collect();
            assert!(rel_err(&a, &b) < 1e-5, "{}: shared vs alone", method.name());
            // The training path (one packed forward, no cache) gives the same mean NLL.
            let ids: Vec<u32> = ctx.iter().chain(c).cloned().collect();
            let l = loss(
                &be,
                &m,
                &tr,
                &[Example {
                    ids,
                    prompt_len: ctx.len(),
                }],
            );
            let sum: f64 = lp.iter().sum();
            assert!(
                (l + sum / c.len() as f64).abs() < 1e-5 * l,
                "{}: cache {sum} vs train {l}",
                method.name()
            );
        }
    }
}

#[test]
fn resumed_training_equals_uninterrupted() {
    let be = Cpu;
    let m = Model::load(&be, &model_dir("llama")).unwrap();
    let tmp = std::env::temp_dir().join(format!("bitune-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let data: Vec<Example> = (0..5)
        .map(|i| Example {
            ids: vec![1, 30 + i, 31, 32 + i, 33, 34, 40 + i, 2],
            prompt_len: 4 + (i as usize % 2),
        })
        .collect();
    let lora = LoraSpec {
        rank: 2,
        alpha: 1.0,
        targets: ALL_TARGETS.to_vec(),
    };
    let meta = AdapterMeta {
        method: Method::Bitune,
        lora: lora.clone(),
        peft: bitune_rt::bitune::peft::Peft::Lora,
        theta_init: 0.01,
    };
    let cfg = |out: std::path::PathBuf| TrainConfig {
        out,
        steps: 4,
        batch: 2,
        accum: 2,
        seed: 3,
        save_every: 2,
        opt: OptConfig {
            kind: OptKind::AdamW,
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-6,
            weight_decay: 0.0,
            clip: 1.0,
            schedule: Schedule::Linear,
            warmup_steps: 1,
            total_steps: 4,
        },
        progress: false,
        base_model: "fixture".into(),
    };
    let full_dir = tmp.join("full");
    let mut tr = Trainable::init(&be, &m.weights, Method::Bitune, lora.clone(), 0.01, 1);
    let full = train(&be, &m, &mut tr, &meta, &data, &cfg(full_dir.clone()), None).unwrap();
    // "Interrupt" after step 2: a run folder holding only the step-2 checkpoint.
    let cut = tmp.join("cut");
    std::fs::create_dir_all(cut.join("checkpoints")).unwrap();
    std::fs::rename(
        full_dir.join("checkpoints/step-2"),
        cut.join("checkpoints/step-2"),
    )
    .unwrap();
    let mut tr2 = Trainable::init(&be, &m.weights, Method::Bitune, lora, 0.01, 99);
    let resumed = train(
        &be,
        &m,
        &mut tr2,
        &meta,
        &data,
        &cfg(cut.clone()),
        Some(&cut),
    )
    .unwrap();
    assert_eq!(full.losses, resumed.losses, "loss trajectory after resume");
    assert_eq!(tr.params, tr2.params, "final parameters after resume");
    // The final adapter folder loads back to the same parameters.
    let e = Engine::new(be, m, tr2);
    let (back, _) = bitune_rt::bitune::engine::load_adapter(&e.be, &e.model, &cut).unwrap();
    assert_eq!(back.params, e.tr().params);
    std::fs::remove_dir_all(&tmp).unwrap();
}
