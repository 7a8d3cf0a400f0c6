//! `bench`: prefill (dual vs causal-only), decode and end-to-end latency, and train-step time
//! (Bitune vs the LoRA baseline). Progress goes to stderr while it runs; the result is the JSON
//! report with device, commit and date (the CLI prints it, or its table).

use super::{git_commit, now_utc};
use crate::backend::device::Device;
use crate::backend::Backend;
use crate::bitune::engine::{empty_trainable, Engine};
use crate::bitune::params::LoraSpec;
use crate::bitune::plan::{Example, Method};
use crate::bitune::step::{loss_and_grad, Trainable};
use crate::model::load::{resolve_model, Model};
use crate::model::weights::ALL_TARGETS;
use crate::rng::Rng;
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

/// A benchmark run, with the command line's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchJob {
    /// Checkpoint folder or .gguf; `None`: SmolLM2-135M-Instruct.
    pub model: Option<PathBuf>,
    /// The device to time.
    pub device: Device,
    /// Prompt tokens (at least 2).
    pub prompt: usize,
    /// Answer tokens (at least 1).
    pub answer: usize,
    /// Timed repetitions; the median is reported.
    pub repeat: usize,
    /// Also time one train step of Bitune and of the LoRA baseline.
    pub train: bool,
    /// Time only the train steps (implies `train`): for profiling the training path.
    pub train_only: bool,
    /// Time every CPU backend op; adds a "profile" table (per phase, per op) to the report.
    pub profile: bool,
    /// CPU threads; `None`: all cores.
    pub threads: Option<usize>,
    /// Also write the JSON report to this file.
    pub out: Option<PathBuf>,
}

impl Default for BenchJob {
    fn default() -> Self {
        BenchJob {
            model: None,
            device: Device::Cpu,
            prompt: 50,
            answer: 200,
            repeat: 3,
            train: false,
            train_only: false,
            profile: false,
            threads: None,
            out: None,
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time<T>(repeat: usize, mut f: impl FnMut() -> Result<T>) -> Result<f64> {
    f()?; // warm-up
    let mut ts = Vec::new();
    for _ in 0..repeat {
        let t = Instant::now();
        f()?;
        ts.push(t.elapsed().as_secs_f64());
    }
    Ok(median(ts))
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown cpu".into())
}

/// A Bitune adapter as training would leave it: random A, small random B, θ at θ_init.
fn bitune_state<B: Backend>(be: &B, model: &Model<B>, method: Method, seed: u64) -> Trainable<B> {
    let lora = LoraSpec {
        rank: 8,
        alpha: 1.0,
        targets: ALL_TARGETS
            .into_iter()
            .filter(|t| model.weights.cfg.gated_mlp || *t != crate::model::weights::Target::Gate)
            .collect(),
    };
    let mut tr = Trainable::init(be, &model.weights, method, lora, 0.01, seed);
    let mut rng = Rng::new(seed + 1);
    let mut host = be.download(&tr.params);
    for e in tr.table.entries.clone() {
        if e.kind == crate::bitune::params::Kind::LoraB {
            host[e.offset..e.offset + e.len()]
                .iter_mut()
                .for_each(|v| *v = rng.uniform(-0.01, 0.01));
        }
    }
    tr.params = be.upload(&host);
    tr
}

/// Runs the benchmark; returns the JSON report (also written to `out` when set).
pub fn run(a: &BenchJob) -> Result<serde_json::Value> {
    if a.prompt < 2 || a.answer == 0 || a.repeat == 0 {
        bail!("--prompt >= 2, --answer >= 1 and --repeat >= 1");
    }
    crate::on_device!(a.device, |be| run_on(be, a))
}

fn run_on<B: Backend>(be: B, a: &BenchJob) -> Result<serde_json::Value> {
    super::set_threads(a.threads)?;
    let path = resolve_model(a.model.as_deref())?;
    let t_load = Instant::now();
    let model = Model::load(&be, &path)?;
    let load_s = t_load.elapsed().as_secs_f64();
    let vocab = model.weights.cfg.vocab_size as u32;
    let mut rng = Rng::new(7);
    let ids: Vec<u32> = (0..a.prompt)
        .map(|_| 100 + rng.below((vocab - 200) as usize) as u32)
        .collect();

    let causal = empty_trainable(&be, &model, Method::CAUSAL_LM);
    let lora = bitune_state(&be, &model, Method::Lora, 1);
    let bitune = bitune_state(&be, &model, Method::Bitune, 1);
    let mut e = Engine {
        be,
        model,
        tr: causal,
    };
    let mut results = serde_json::Map::new();
    let mut profile = serde_json::Map::new();
    let prof = crate::backend::cpu::prof::enable;
    let take_profile = |profile: &mut serde_json::Map<String, serde_json::Value>, phase: &str| {
        let t = crate::backend::cpu::prof::take();
        if a.profile {
            let total: f64 = t.iter().map(|e| e.1).sum();
            let rows: Vec<_> = t
                .iter()
                .map(|(n, s, c)| json!({"op": n, "ms": s * 1e3, "calls": c, "share": s / total}))
                .collect();
            profile.insert(phase.into(), json!(rows));
        }
    };
    let inference = if a.train_only {
        vec![]
    } else {
        vec![
            ("base", None),
            ("lora", Some(lora)),
            ("bitune", Some(bitune)),
        ]
    };
    let phases = inference.len() + if a.train || a.train_only { 2 } else { 0 };
    let t_all = Instant::now();
    let note = |k: usize, what: String| {
        eprintln!(
            "bench [{k}/{phases}] {what} ({:.0} s elapsed)",
            t_all.elapsed().as_secs_f64()
        );
    };
    eprintln!(
        "bench: {} loaded in {load_s:.1} s; prompt {} tokens, answer {} tokens, median of {}",
        path.display(),
        a.prompt,
        a.answer,
        a.repeat
    );
    for (k, (name, tr)) in inference.into_iter().enumerate() {
        note(
            k + 1,
            format!(
                "{name}: prefill ×{}, then {} decode steps ×{}",
                a.repeat + 1,
                a.answer,
                a.repeat.min(2) + 1
            ),
        );
        let saved = tr.map(|t| std::mem::replace(&mut e.tr, t));
        let prefill_s = time(a.repeat, || e.prefill(&ids))?;
        prof(a.profile);
        let (cache0, logits0) = e.prefill(&ids)?;
        prof(false);
        take_profile(&mut profile, &format!("{name}_prefill"));
        let mut decode_tokens = 0usize;
        let decode_s = time(a.repeat.min(2), || {
            // Greedy decoding as `generate --temperature 0` runs it (argmax where the logits are).
            let mut cache = clone_cache(&e.be, &cache0);
            let mut next = crate::bitune::sample::argmax(&logits0);
            for _ in 0..a.answer {
                next = e.decode_greedy(&mut cache, next)?;
            }
            decode_tokens = a.answer;
            Ok(())
        })?;
        let ms_tok = decode_s * 1e3 / decode_tokens.max(1) as f64;
        results.insert(
            name.into(),
            json!({"prefill_ms": prefill_s * 1e3, "prefill_tok_s": a.prompt as f64 / prefill_s,
                   "decode_ms_per_tok": ms_tok, "decode_tok_s": 1e3 / ms_tok,
                   "end_to_end_s": prefill_s + decode_s}),
        );
        if let Some(s) = saved {
            e.tr = s;
        }
    }
    if a.train || a.train_only {
        let ex: Vec<u32> = (0..a.prompt + a.answer)
            .map(|_| 100 + rng.below((vocab - 200) as usize) as u32)
            .collect();
        let example = Example {
            ids: ex,
            prompt_len: a.prompt,
        };
        let mut train = serde_json::Map::new();
        for (k, method) in [Method::Lora, Method::Bitune].into_iter().enumerate() {
            note(
                phases - 1 + k,
                format!(
                    "{} train step ({}+{} tokens) ×{}",
                    method.name(),
                    a.prompt,
                    a.answer,
                    a.repeat.min(2) + 1
                ),
            );
            let tr = bitune_state(&e.be, &e.model, method, 3);
            let step = || {
                let mut g = e.be.zeros(tr.table.total);
                let out = loss_and_grad(
                    &e.be,
                    &e.model.weights,
                    &tr,
                    std::slice::from_ref(&example),
                    1,
                    Some(&mut g),
                );
                // The backward is queued after the loss came back: wait for it, so a device
                // step is timed whole.
                e.be.synchronize();
                out
            };
            let s = time(a.repeat.min(2), step)?;
            if a.profile {
                prof(true);
                step()?;
                prof(false);
                take_profile(&mut profile, &format!("{}_train_step", method.name()));
            }
            train.insert(format!("{}_step_s", method.name()), json!(s));
        }
        let (n, m) = ((a.prompt - 1) as f64, (a.answer + 1) as f64);
        let ratio = train["bitune_step_s"].as_f64().unwrap_or(0.0)
            / train["lora_step_s"].as_f64().unwrap_or(1.0);
        train.insert("ratio".into(), json!(ratio));
        train.insert("ideal_ratio".into(), json!((2.0 * n + m) / (n + m)));
        results.insert("train".into(), serde_json::Value::Object(train));
    }
    let device = match a.device {
        Device::Cpu => format!(
            "cpu: {} ({} threads)",
            cpu_name(),
            rayon::current_num_threads()
        ),
        _ => e.be.name(),
    };
    let mut report = json!({
        "bench": "bitune-rt", "device": device,
        "commit": git_commit(), "date": now_utc(), "model": path.display().to_string(), "load_s": load_s,
        "prompt": a.prompt, "answer": a.answer, "repeat": a.repeat, "results": results,
    });
    if a.profile {
        report["profile"] = serde_json::Value::Object(profile);
    }
    if let Some(m) = e.be.memory() {
        report["device_memory"] = json!({"peak_bytes": m.peak_bytes, "peak_mib": m.peak_bytes as f64 / (1u64 << 20) as f64,
            "in_use_bytes": m.in_use_bytes, "allocations": m.allocations});
    }
    if let Some(out) = &a.out {
        let text = serde_json::to_string_pretty(&report)?;
        crate::io::atomic::write_atomic_str(out, &text)
            .with_context(|| format!("--out {}", out.display()))?;
        eprintln!("bench: wrote {}", out.display());
    }
    Ok(report)
}

/// A copy of a cache made on the device (each timed decode starts from the same prefill).
fn clone_cache<B: Backend>(
    be: &B,
    c: &crate::model::transformer::KvCache<B>,
) -> crate::model::transformer::KvCache<B> {
    crate::model::transformer::KvCache {
        k: c.k.iter().map(|b| be.duplicate(b)).collect(),
        v: c.v.iter().map(|b| be.duplicate(b)).collect(),
        pos: c.pos.clone(),
    }
}
