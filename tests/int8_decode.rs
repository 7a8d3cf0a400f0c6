//! Decoding the default model (Q4_1 layers, Q8_0 head) with 8-bit activations, as the formats
//! intend and llama.cpp reads them, stays as close to transformers as llama.cpp does on the same
//! file (recorded by scripts/make_llama_cpp_fixture.py). The reference is this runtime's own
//! f32-activation path, which `tests/default_model.rs` holds to transformers (top-5 logits within
//! 2e-3, greedy continuations equal).

mod common;

use bitune_rt::backend::cpu::quant::use_int8_activations;
use bitune_rt::backend::cpu::Cpu;
use bitune_rt::bitune::engine::{Engine, PromptMask};
use common::*;
use std::path::Path;

/// Logits at the prompt's last position, then teacher-forced along the recorded continuation.
fn logits_along(e: &Engine<Cpu>, ids: &[u32], cont: &[u32]) -> Vec<Vec<f32>> {
    let (mut cache, mut logits) = e.prefill(ids).unwrap();
    let mut all = vec![];
    for &t in cont {
        all.push(std::mem::take(&mut logits));
        logits = e.decode(&mut cache, t).unwrap();
    }
    all
}

fn load(path: &Path, int8: bool) -> Engine<Cpu> {
    use_int8_activations(int8);
    Engine::load(Cpu, path, None, PromptMask::Causal).unwrap()
}

#[test]
fn int8_decoding_is_as_close_to_transformers_as_llama_cpp() {
    let Some(path) = default_model() else { return };
    let (q8, f32) = (load(&path, true), load(&path, false));
    let r = read_json(&fixtures().join("smollm2_reference.json"));
    let ll = read_json(&fixtures().join("smollm2_llama_cpp.json"));
    let (mut sq, mut n, mut max_abs, mut agree, mut positions) = (0f64, 0usize, 0f32, 0, 0);
    let mut moved = false;
    for p in r["prompts"].as_array().unwrap() {
        let (ids, cont) = (u32s(&p["ids"]), u32s(&p["greedy"]));
        let (a, b) = (
            logits_along(&q8, &ids, &cont),
            logits_along(&f32, &ids, &cont),
        );
        for (a, b) in a.iter().zip(&b) {
            for (x, y) in a.iter().zip(b) {
                sq += ((x - y) as f64).powi(2);
                max_abs = max_abs.max((x - y).abs());
                moved |= x != y;
            }
            n += a.len();
            agree += (argmax(a) == argmax(b)) as usize;
            positions += 1;
        }
    }
    let rms = (sq / n as f64).sqrt();
    let agree = agree as f64 / positions as f64;
    eprintln!("8-bit activations vs f32: rms {rms:.4}, max {max_abs:.3}, argmax agree {agree:.3}");
    assert_eq!(positions as u64, ll["positions"].as_u64().unwrap());
    let f = |k: &str| ll[k].as_f64().unwrap();
    assert!(rms <= 1.1 * f("rms"), "rms {rms} vs llama.cpp {}", f("rms"));
    assert!(
        max_abs as f64 <= 1.1 * f("max_abs"),
        "max {max_abs} vs llama.cpp {}",
        f("max_abs")
    );
    assert!(
        agree >= f("argmax_agree") - 0.05,
        "argmax agreement {agree}"
    );
    // Where the processor has no AVX-512 VNNI both engines read f32 activations.
    if bitune_rt::backend::cpu::quant::int8_dot_available() {
        assert!(
            moved,
            "8-bit activations changed nothing: the integer kernels did not run"
        );
    } else {
        eprintln!("note: no AVX-512 VNNI here; both engines read f32 activations");
    }
}

fn argmax(v: &[f32]) -> usize {
    bitune_rt::bitune::sample::argmax(v) as usize
}
