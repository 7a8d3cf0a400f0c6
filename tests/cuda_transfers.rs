//! What crosses between host and device: the simulator counts every device-to-host copy
//! (`sim::counters`), and a decode step or a train step may make only the copies listed here.
//! Also: cached decoding on the device equals recomputation, across the KV cache's growth.
#![cfg(feature = "cuda")]

mod cuda_common;

use bitune_rt::backend::cpu::Cpu;
use bitune_rt::backend::cuda::{sim, CudaBackend};
use bitune_rt::backend::Backend;
use bitune_rt::bitune::engine::{Engine, PromptMask};
use bitune_rt::bitune::params::LoraSpec;
use bitune_rt::bitune::peft::Peft;
use bitune_rt::bitune::plan::{Example, Method};
use bitune_rt::bitune::step::{loss_and_grad, Trainable};
use bitune_rt::model::weights::ALL_TARGETS;
use std::path::PathBuf;

fn fixture(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// The counters are the process's: every test here holds this lock, so no other test's copies
/// land between a test's two readings.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

const LLAMA: &str = "tests/fixtures/models/llama";
const ADAPTER: &str = "tests/fixtures/bitune/llama/init";

fn engines(adapter: Option<&str>) -> Option<(Engine<Cpu>, Engine<CudaBackend>)> {
    let g = cuda_common::gpu()?;
    let a = adapter.map(fixture);
    let load = |be| Engine::load(be, &fixture(LLAMA), a.as_deref(), PromptMask::Causal);
    let c = Engine::load(Cpu, &fixture(LLAMA), a.as_deref(), PromptMask::Causal).unwrap();
    Some((c, load(g).unwrap()))
}

/// One decoding step with a Bitune adapter copies exactly one thing to the host: the logits the
/// caller samples from (no α, no θ, no KV cache round trip), and allocates no new buffer.
#[test]
fn decode_step_copies_only_the_logits() {
    let _g = serial();
    if !sim::requested() {
        return; // the counters are the simulator's
    }
    let (_, e) = engines(Some(ADAPTER)).unwrap();
    let prompt: Vec<u32> = (0..12).map(|i| 40 + 7 * i).collect();
    let (mut cache, _) = e.prefill(&prompt).unwrap();
    e.decode(&mut cache, 49).unwrap(); // the first step fills the pool
    let layers = e.model.weights.cfg.num_layers as u64;
    // The first decoded row moved the cache into an allocation with spare rows.
    let cap = cache.k[0].capacity();
    let addr = e.be.device_addr(&cache.k[0]);
    let kvd = e.model.weights.cfg.kv_dim();
    assert!(cap >= 64 * kvd, "cache capacity {cap} < 64 rows of {kvd}");
    for step in 0..3 {
        e.be.synchronize().unwrap();
        let before = sim::counters().unwrap();
        let allocs = e.be.memory_stats().allocations;
        e.decode(&mut cache, 50 + step).unwrap();
        let d = sim::counters().unwrap() - before;
        assert_eq!(
            d.dtoh_copies, 1,
            "decode step {step}: {d:?} (one device-to-host copy expected: the logits)"
        );
        // Every buffer of a step comes from the pool (the cache grows in place, intermediates
        // have the sizes of the step before) except the K and V rows a layer attends over, which
        // hold the cache rows and so grow by one row per step: at most 2 per layer.
        assert_eq!(
            cache.k[0].capacity(),
            cap,
            "decode step {step}: the cache moved"
        );
        let moved = e.be.device_addr(&cache.k[0]) != addr;
        assert!(!moved, "decode step {step}: the cache was copied elsewhere");
        let fresh = e.be.memory_stats().allocations - allocs;
        assert!(
            fresh <= 2 * layers,
            "decode step {step}: {fresh} new device buffers ({layers} layers)"
        );
    }
}

/// A greedy decoding step (what `generate --temperature 0` runs) copies one integer to the
/// host, the token, and picks the token the CPU's logits pick.
#[test]
fn greedy_decode_step_copies_only_the_token() {
    let _g = serial();
    if !sim::requested() {
        return;
    }
    let (c, e) = engines(Some(ADAPTER)).unwrap();
    let prompt: Vec<u32> = (0..12).map(|i| 40 + 7 * i).collect();
    let (mut kc, _) = c.prefill(&prompt).unwrap();
    let (mut kg, _) = e.prefill(&prompt).unwrap();
    let mut tok = 50;
    for step in 0..4 {
        e.be.synchronize().unwrap();
        let before = sim::counters().unwrap();
        let got = e.decode_greedy(&mut kg, tok).unwrap();
        let d = sim::counters().unwrap() - before;
        assert_eq!(d.dtoh_copies, 1, "greedy step {step}: {d:?}");
        let want = bitune_rt::bitune::sample::argmax(&c.decode(&mut kc, tok).unwrap());
        assert_eq!(got, want, "greedy step {step}");
        tok = got;
    }
}

/// One Bitune train step (forward, loss, backward) copies to the host only the cross-entropy's
/// results: the per-row loss statistics with the loss, and the greedy flags (2 copies). α, θ, dθ
/// and the kv-mix sums stay on the device; so do DoRA's norms and IA3's vectors.
#[test]
fn train_step_copies_only_the_loss() {
    let _g = serial();
    if !sim::requested() {
        return;
    }
    let (be, model, tr) = engines(Some(ADAPTER)).unwrap().1.into_parts();
    let ex = Example {
        ids: (0..20).map(|i| 30 + 5 * i).collect(),
        prompt_len: 12,
    };
    let w = &model.weights;
    let lora = LoraSpec {
        rank: 2,
        alpha: 1.0,
        targets: ALL_TARGETS.to_vec(),
    };
    let mut states = vec![("bitune adapter", tr)];
    for peft in [Peft::Dora, Peft::Ia3] {
        let tr = Trainable::init_with(&be, w, Method::Bitune, lora.clone(), peft, 0.01, 3);
        states.push((peft.name(), tr));
    }
    for (name, tr) in &states {
        let mut g = be.zeros(tr.table.total);
        be.synchronize().unwrap();
        let before = sim::counters().unwrap();
        let out = loss_and_grad(&be, w, tr, std::slice::from_ref(&ex), 1, Some(&mut g));
        out.unwrap();
        be.synchronize().unwrap();
        let d = sim::counters().unwrap() - before;
        assert_eq!(
            d.dtoh_copies, 2,
            "{name} train step: {d:?}; allowed: the loss (2 copies)"
        );
    }
}

/// Decoding from the cache, one token at a time past the cache's first capacity (64 rows),
/// gives the logits a fresh prefill of the whole sequence gives (base model, causal), and a
/// Bitune adapter's decode gives the CPU's logits step for step.
#[test]
fn cached_decoding_equals_recomputation_across_cache_growth() {
    let _g = serial();
    let Some((_, e)) = engines(None) else {
        return;
    };
    let prompt: Vec<u32> = (0..60).map(|i| 20 + (i * 13) % 170).collect();
    let (mut cache, _) = e.prefill(&prompt).unwrap();
    let mut seq = prompt.clone();
    for step in 0..8u32 {
        let tok = 33 + 3 * step;
        let cached = e.decode(&mut cache, tok).unwrap();
        seq.push(tok);
        let (_, fresh) = e.prefill(&seq).unwrap();
        cuda_common::close(&format!("step {step}"), &cached, &fresh, 1e-4);
    }
    assert_eq!(cache.rows(), 68);

    let (c, g) = engines(Some(ADAPTER)).unwrap();
    let prompt: Vec<u32> = (0..10).map(|i| 50 + 9 * i).collect();
    let (mut kc, _) = c.prefill(&prompt).unwrap();
    let (mut kg, _) = g.prefill(&prompt).unwrap();
    for step in 0..70u32 {
        let tok = 40 + step % 150;
        let want = c.decode(&mut kc, tok).unwrap();
        let got = g.decode(&mut kg, tok).unwrap();
        cuda_common::close(&format!("bitune step {step}"), &got, &want, 1e-4);
    }
}
