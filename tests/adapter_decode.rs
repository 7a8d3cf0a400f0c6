//! Decoding with a LoRA or Bitune adapter on the default model (Q4_1 layers read against 8-bit
//! activations) reads the adapter's integer decoding form (4-bit codes, as the weights', unless
//! `BITUNE_ADAPTER_BITS` says otherwise), fused into each linear's product. It must
//! decode what the trained f32 adapter does (the path every forward of more rows runs): logits
//! no further from the f32 adapter's than 8-bit activations already move them, the adapter's
//! effect there, and the same greedy tokens. Bitune's two adapter sets hold different values, so
//! a step that read the other set's forms would fail all three.

mod common;

use bitune_rt::backend::cpu::Cpu;
use bitune_rt::bitune::engine::{empty_trainable, Engine};
use bitune_rt::bitune::infer::decode_step;
use bitune_rt::bitune::params::{Kind, LoraSpec};
use bitune_rt::bitune::plan::Method;
use bitune_rt::bitune::step::Trainable;
use bitune_rt::model::load::Model;
use bitune_rt::model::weights::ALL_TARGETS;
use bitune_rt::rng::Rng;
use common::*;

fn rms(a: &[f32], b: &[f32]) -> f64 {
    let sq: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    (sq / a.len() as f64).sqrt()
}

#[test]
fn packed_adapters_decode_what_the_f32_ones_do() {
    let Some(path) = default_model() else { return };
    for method in [Method::Lora, Method::Bitune] {
        packed_adapter_decodes(&path, method);
    }
}

fn packed_adapter_decodes(path: &std::path::Path, method: Method) {
    let be = Cpu;
    let model = Model::load(&be, path).unwrap();
    let lora = LoraSpec {
        rank: 8,
        alpha: 16.0,
        targets: ALL_TARGETS.to_vec(),
    };
    let mut tr = Trainable::init(&be, &model.weights, method, lora, 0.01, 3);
    // B as training leaves it: no longer zero.
    let mut rng = Rng::new(4);
    for e in tr.table.entries.clone() {
        if e.kind == Kind::LoraB {
            tr.params[e.offset..e.offset + e.len()]
                .iter_mut()
                .for_each(|v| *v = rng.uniform(-0.02, 0.02));
        }
    }
    let base = empty_trainable(&be, &model, Method::CAUSAL_LM);
    let e = Engine::new(be, model, tr);
    let w = &e.model.weights;
    let ids = e.model.encode("The capital of France is", true).unwrap();
    // Three copies of the adapter's cache of the prompt, decoded on with the kept packed forms
    // (what `Engine::decode` runs), with the f32 adapter, and with no adapter.
    let (mut packed, logits) = e.prefill(&ids).unwrap();
    let mut f32c = e.prefill(&ids).unwrap().0;
    let mut basec = e.prefill(&ids).unwrap().0;
    let mut next = bitune_rt::bitune::sample::argmax(&logits);
    let steps = 24;
    let (mut off, mut moved, mut applied, mut agree) = (0f64, 0f64, 0f64, 0usize);
    for _ in 0..steps {
        let a = e.decode(&mut packed, next).unwrap();
        let f = decode_step(&e.be, w, &e.tr().state(), &mut f32c, next).unwrap();
        let b = decode_step(&e.be, w, &base.state(), &mut basec, next).unwrap();
        off += rms(&a, &f) / steps as f64;
        moved += rms(&f, &b) / steps as f64;
        applied += rms(&a, &b) / steps as f64;
        let (ta, tf) = (
            bitune_rt::bitune::sample::argmax(&a),
            bitune_rt::bitune::sample::argmax(&f),
        );
        agree += (ta == tf) as usize;
        // Every cache takes the f32 adapter's token, so each step compares the same context.
        next = tf;
    }
    eprintln!(
        "{}: logits rms, mean over {steps} steps: packed vs f32 adapter {off:.4}; f32 adapter vs base \
         model {moved:.4}; packed adapter vs base model {applied:.4}; greedy tokens agree \
         {agree}/{steps}",
        method.name()
    );
    // 8-bit activations alone move these logits 0.25 rms from f32 ones (tests/int8_decode.rs).
    assert!(
        off <= 0.25,
        "{}: packed adapter logits {off} rms off the f32 adapter's",
        method.name()
    );
    // The packs apply the adapter: without its add they would be the base model's.
    assert!(
        applied >= 0.5 * moved && moved > 0.1,
        "{}: the packed adapter moved the logits {applied} rms from the base model's, the f32 one \
         {moved}",
        method.name()
    );
    assert!(
        agree >= steps - 2,
        "{}: greedy tokens agree {agree}/{steps}",
        method.name()
    );
}
