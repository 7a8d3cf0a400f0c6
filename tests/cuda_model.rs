//! Whole-model checks, CUDA against the CPU reference on the fixture models: forward logits
//! (causal, bidirectional and a packed Bitune batch with adapters) and the full Bitune train step
//! (loss and every adapter/θ gradient) for every method. Skips without a GPU.
#![cfg(feature = "cuda")]

mod cuda_common;

use bitune_rt::backend::cpu::Cpu;
use bitune_rt::backend::cuda::CudaBackend;
use bitune_rt::backend::{Backend, MaskKind};
use bitune_rt::bitune::params::{Kind, LoraSpec};
use bitune_rt::bitune::plan::{pack, single_sequence, train_seq, Example, Method, METHODS};
use bitune_rt::bitune::step::{loss_and_grad, Trainable};
use bitune_rt::model::load::Model;
use bitune_rt::model::transformer::{forward, Mode};
use bitune_rt::model::weights::{Target, ALL_TARGETS};
use bitune_rt::rng::Rng;
use cuda_common::*;

/// Fixture models; `BITUNE_FIXTURES` overrides the folder baked in at build time, for binaries
/// run from another checkout (scripts/gpu-check.sh on a GPU machine).
fn model_dir(name: &str) -> std::path::PathBuf {
    std::env::var_os("BITUNE_FIXTURES")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"))
        .join("models")
        .join(name)
}

const MODELS: [&str; 7] = [
    "llama",
    "llama3",
    "mistral",
    "qwen2",
    "gemma",
    "phi",
    "llama_bf16",
];

fn examples(vocab: usize, r: &mut Rng) -> Vec<Example> {
    [(11, 7), (8, 5), (40, 33)]
        .iter()
        .map(|&(len, prompt_len)| Example {
            ids: (0..len).map(|_| r.below(vocab) as u32).collect(),
            prompt_len,
        })
        .collect()
}

/// The same adapters on both backends: PEFT init, then B and θ moved off their initial values
/// (B = 0 would make every A gradient vanish).
fn trainables(
    g: &CudaBackend,
    m: &Model<Cpu>,
    method: Method,
) -> (Trainable<Cpu>, Trainable<CudaBackend>) {
    let targets = ALL_TARGETS
        .into_iter()
        .filter(|t| m.weights.cfg.gated_mlp || *t != Target::Gate)
        .collect();
    let lora = LoraSpec {
        rank: 3,
        alpha: 2.0,
        targets,
    };
    let mut tr = Trainable::init(&Cpu, &m.weights, method, lora, 0.01, 5);
    let mut rng = Rng::new(9);
    for e in tr.table.entries.clone() {
        let s = &mut tr.params[e.offset..e.offset + e.len()];
        match e.kind {
            Kind::LoraB => s.iter_mut().for_each(|v| *v = rng.uniform(-0.3, 0.3)),
            Kind::ThetaK | Kind::ThetaV => s.iter_mut().for_each(|v| *v = rng.uniform(-0.04, 0.04)),
            _ => {}
        }
    }
    let tg = Trainable {
        method,
        table: tr.table.clone(),
        params: g.upload(&tr.params),
        theta_init: tr.theta_init,
    };
    (tr, tg)
}

#[test]
fn forward_logits_match_cpu() {
    let Some(g) = gpu() else { return };
    let mut r = Rng::new(11);
    for name in MODELS {
        let mc = Model::load(&Cpu, &model_dir(name)).unwrap();
        let mg = Model::load(&g, &model_dir(name)).unwrap();
        let vocab = mc.weights.cfg.vocab_size;
        let ids: Vec<u32> = (0..45).map(|_| r.below(vocab) as u32).collect();
        let (tc, tg) = trainables(&g, &mc, Method::Bitune);
        let (sc, sg) = (tc.state(), tg.state());
        for mask in [MaskKind::Causal, MaskKind::Full] {
            let p = single_sequence(&ids, mask, None);
            let want = forward(&Cpu, &mc.weights, &sc, &p, None, Mode::default()).logits;
            let got = forward(&g, &mg.weights, &sg, &p, None, Mode::default()).logits;
            close(
                &format!("{name} {mask:?} logits"),
                &g.download(&got),
                &want,
                1e-4,
            );
        }
        // A packed Bitune batch: both adapter sets, the kv-mix and multi-range answer groups.
        let seqs: Vec<_> = examples(vocab, &mut r)
            .iter()
            .map(|e| train_seq(Method::Bitune, e, 3))
            .collect();
        let (p, _) = pack(Method::Bitune, &seqs, &[]);
        let want = forward(&Cpu, &mc.weights, &sc, &p, None, Mode::default()).logits;
        let got = forward(&g, &mg.weights, &sg, &p, None, Mode::default()).logits;
        close(
            &format!("{name} bitune logits"),
            &g.download(&got),
            &want,
            1e-4,
        );
    }
}

#[test]
fn train_step_loss_and_gradients_match_cpu() {
    let Some(g) = gpu() else { return };
    let mut r = Rng::new(12);
    for name in ["llama", "qwen2", "gemma", "phi"] {
        let mc = Model::load(&Cpu, &model_dir(name)).unwrap();
        let mg = Model::load(&g, &model_dir(name)).unwrap();
        let exs = examples(mc.weights.cfg.vocab_size, &mut r);
        for method in METHODS {
            let (tc, tg) = trainables(&g, &mc, method);
            let mut gc = vec![0f32; tc.table.total];
            let mut gg = g.zeros(tc.table.total);
            let oc = loss_and_grad(&Cpu, &mc.weights, &tc, &exs, 3, Some(&mut gc)).unwrap();
            let og = loss_and_grad(&g, &mg.weights, &tg, &exs, 3, Some(&mut gg)).unwrap();
            let what = format!("{name} {method:?}");
            assert!(
                (og.loss - oc.loss).abs() <= 1e-5 * oc.loss.abs(),
                "{what}: loss {} vs {}",
                og.loss,
                oc.loss
            );
            // Gradients pass through every layer's backward (and atomics): 1e-3 of the largest.
            close(&format!("{what} grads"), &g.download(&gg), &gc, 1e-3);
        }
    }
}
