//! The CPU model against Hugging Face `transformers`: logits (causal and bidirectional), greedy
//! continuations and lm-eval-style scores recorded by `scripts/make_fixtures.py`.

mod common;

use bitune_rt::backend::cpu::Cpu;
use bitune_rt::backend::MaskKind;
use bitune_rt::bitune::engine::{Engine, PromptMask};
use bitune_rt::bitune::plan::single_sequence;
use bitune_rt::model::transformer::{forward, Mode};
use common::*;

const MODELS: [&str; 7] = [
    "llama",
    "llama3",
    "mistral",
    "qwen2",
    "gemma",
    "phi",
    "llama_bf16",
];

fn engine(name: &str) -> Engine<Cpu> {
    Engine::load(Cpu, &model_dir(name), None, PromptMask::Causal).unwrap()
}

#[test]
fn logits_match_transformers_causal_and_bidirectional() {
    for name in MODELS {
        let e = engine(name);
        let w = &e.model.weights;
        let reference = read_json(&model_dir(name).join("reference.json"));
        for pr in reference["prompts"].as_array().unwrap() {
            let ids = u32s(&pr["ids"]);
            let enc = e.model.encode(pr["text"].as_str().unwrap(), true).unwrap();
            assert_eq!(enc, ids, "{name}: tokenizer ids");
            for (mask, key) in [
                (MaskKind::Causal, "causal_logits"),
                (MaskKind::Full, "bidir_logits"),
            ] {
                let p = single_sequence(&ids, mask, None);
                let out = forward(&e.be, w, &e.tr().state(), &p, None, Mode::default());
                let want: Vec<f32> = pr[key].as_array().unwrap().iter().flat_map(f32s).collect();
                let err = rel_err(&out.logits, &want);
                assert!(err < 1e-4, "{name} {key}: relative error {err}");
            }
        }
    }
}

#[test]
fn cached_greedy_decoding_matches_transformers_and_recomputation() {
    for name in MODELS {
        let e = engine(name);
        let reference = read_json(&model_dir(name).join("reference.json"));
        for pr in reference["prompts"].as_array().unwrap() {
            let ids = u32s(&pr["ids"]);
            let want = u32s(&pr["greedy"]);
            let (mut cache, mut logits) = e.prefill(&ids).unwrap();
            let mut got = vec![];
            let mut all = ids.clone();
            for _ in 0..want.len() {
                let next = argmax(&logits);
                got.push(next);
                all.push(next);
                // Full recomputation of the same sequence gives the same next-token logits.
                let p = single_sequence(&all, MaskKind::Causal, None);
                let full = forward(
                    &e.be,
                    &e.model.weights,
                    &e.tr().state(),
                    &p,
                    None,
                    Mode::default(),
                );
                let v = e.model.weights.cfg.vocab_size;
                logits = e.decode(&mut cache, next).unwrap();
                let last = &full.logits[(all.len() - 1) * v..];
                assert!(
                    rel_err(&logits, last) < 1e-4,
                    "{name}: cached vs recomputed logits"
                );
            }
            assert_eq!(got, want, "{name}: greedy continuation");
        }
    }
}

#[test]
fn scores_match_lm_eval_reference() {
    for name in MODELS {
        let e = engine(name);
        let reference = read_json(&model_dir(name).join("reference.json"));
        for s in reference["score"].as_array().unwrap() {
            let ctx = u32s(&s["context_ids"]);
            let cont = u32s(&s["continuation_ids"]);
            let r = e.score(&ctx, std::slice::from_ref(&cont)).unwrap();
            let want = f32s(&s["logprobs"]);
            let got: Vec<f32> = r[0].0.iter().map(|&x| x as f32).collect();
            assert!(
                rel_err(&got, &want) < 1e-4,
                "{name}: logprobs {got:?} vs {want:?}"
            );
            assert_eq!(
                r[0].1,
                s["greedy"].as_bool().unwrap(),
                "{name}: greedy flag"
            );
        }
    }
}

pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}
