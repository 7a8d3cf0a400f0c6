//! The default model (SmolLM2-135M-Instruct, Q4_1 GGUF): greedy continuations and scores equal
//! what `transformers` produces from the same file (recorded by scripts/make_fixtures.py).

mod common;

use bitune_rt::backend::cpu::Cpu;
use bitune_rt::bitune::engine::{Engine, PromptMask};
use bitune_rt::bitune::sample::argmax;
use common::*;

#[test]
fn greedy_and_scores_match_transformers_on_the_default_model() {
    let Some(path) = default_model() else { return };
    // transformers reads f32 activations; 8-bit ones are held to llama.cpp (tests/int8_decode.rs).
    bitune_rt::backend::cpu::quant::use_int8_activations(false);
    let e = Engine::load(Cpu, &path, None, PromptMask::Causal).unwrap();
    let r = read_json(&fixtures().join("smollm2_reference.json"));
    for p in r["prompts"].as_array().unwrap() {
        let ids = u32s(&p["ids"]);
        assert_eq!(
            e.model.encode(p["text"].as_str().unwrap(), true).unwrap(),
            ids,
            "prompt ids"
        );
        let (mut cache, mut logits) = e.prefill(&ids).unwrap();
        let top: Vec<u32> = u32s(&p["top5_ids"]);
        let top_l = f32s(&p["top5_logits"]);
        for (t, l) in top.iter().zip(&top_l) {
            assert!(
                (logits[*t as usize] - l).abs() < 2e-3 * l.abs().max(1.0),
                "top-5 logit of {t}: {} vs {l}",
                logits[*t as usize]
            );
        }
        let want = u32s(&p["greedy"]);
        let mut got = vec![];
        for _ in 0..want.len() {
            let next = argmax(&logits);
            got.push(next);
            logits = e.decode(&mut cache, next).unwrap();
        }
        assert_eq!(got, want, "greedy continuation of {:?}", p["text"]);
    }
    for s in r["score"].as_array().unwrap() {
        let (ctx, cont) = (u32s(&s["context_ids"]), u32s(&s["continuation_ids"]));
        let (c2, x2) = bitune_rt::jobs::score::split_tokens(
            &e,
            s["context"].as_str().unwrap(),
            s["continuation"].as_str().unwrap(),
        )
        .unwrap();
        assert_eq!(
            (c2, x2),
            (ctx.clone(), cont.clone()),
            "lm-eval tokenization"
        );
        let res = e.score(&ctx, &[cont]).unwrap();
        let sum: f64 = res[0].0.iter().sum();
        let want = s["sum"].as_f64().unwrap();
        assert!((sum - want).abs() < 1e-3, "score sum {sum} vs {want}");
        assert_eq!(res[0].1, s["greedy"].as_bool().unwrap());
    }
}
