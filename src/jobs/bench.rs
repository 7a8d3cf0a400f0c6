//! `bench`: prefill (dual vs causal-only), decode and end-to-end latency, and train-step time
//! (Bitune vs the LoRA baseline). On the CPU, also the decode floor: the bytes of frozen weights a
//! decoded token reads over the memory bandwidth a STREAM copy measures, and the share of it each
//! decode row reaches. Progress goes to stderr while it runs; the result is the JSON
//! report with device, commit and date (the CLI prints it, or its table).

use super::{git_commit, now_utc};
use crate::backend::device::Device;
use crate::backend::Backend;
use crate::bitune::engine::{empty_trainable, Adapted, Engine};
use crate::bitune::params::LoraSpec;
use crate::bitune::plan::{Example, Method};
use crate::bitune::step::{loss_and_grad, Trainable};
use crate::model::load::{resolve_model, Model};
use crate::model::weights::{Weights, ALL_TARGETS};
use crate::rng::Rng;
use crate::train::optim::{OptConfig, Optimizer};
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

/// Size of the last-level cache from sysfs (the largest `size` under cpu0's cache indices), if
/// the system reports one.
fn llc_bytes() -> Option<usize> {
    let dir = std::fs::read_dir("/sys/devices/system/cpu/cpu0/cache").ok()?;
    dir.filter_map(|e| {
        let s = std::fs::read_to_string(e.ok()?.path().join("size")).ok()?;
        let s = s.trim();
        let (num, mult) = match s.strip_suffix('K') {
            Some(n) => (n, 1 << 10),
            None => match s.strip_suffix('M') {
                Some(n) => (n, 1 << 20),
                None => (s, 1),
            },
        };
        num.parse::<usize>().ok().map(|v| v * mult)
    })
    .max()
}

/// Memory bandwidth as STREAM's copy measures it, in GB/s: `c[i] = a[i]` over f64 arrays of
/// `bytes` each, split across the rayon pool the bench runs on, best of `reps` timed passes after
/// an untimed one; each pass counts the bytes read and the bytes written.
fn stream_copy_gbs(bytes: usize, reps: usize) -> f64 {
    use rayon::prelude::*;
    let n = bytes / std::mem::size_of::<f64>();
    // Chunks several times the thread count, so a slow thread does not leave the others idle.
    let chunk = n.div_ceil(rayon::current_num_threads() * 8).max(1);
    let mut a = vec![0.0f64; n];
    let mut c = vec![0.0f64; n];
    // First touch on the pool, as STREAM initialises: pages are mapped before any timing.
    a.par_chunks_mut(chunk)
        .enumerate()
        .for_each(|(j, s)| s.iter_mut().for_each(|v| *v = j as f64 + 1.0));
    c.par_chunks_mut(chunk).for_each(|s| s.fill(0.0));
    let pass = |c: &mut [f64]| {
        let t = Instant::now();
        c.par_chunks_mut(chunk)
            .zip(a.par_chunks(chunk))
            .for_each(|(d, s)| d.copy_from_slice(s));
        t.elapsed().as_secs_f64()
    };
    pass(&mut c);
    let best = (0..reps)
        .map(|_| pass(&mut c))
        .fold(f64::INFINITY, f64::min);
    assert_eq!(c[n - 1], a[n - 1], "the copy copied");
    2.0 * (n * std::mem::size_of::<f64>()) as f64 / best / 1e9
}

/// Bytes of frozen weights one decoded token reads: every linear of every block and the LM head
/// as the backend's product over one row reads them (its compact form where it holds one), plus
/// the token's embedding row. Biases, norms and adapters are left out: they are vectors or
/// low-rank, small beside the matrices.
pub fn decode_weight_bytes<B: Backend>(be: &B, w: &Weights<B>) -> u64 {
    let linears: u64 = w
        .blocks
        .iter()
        .flat_map(|b| {
            [&b.q, &b.k, &b.v, &b.o, &b.up, &b.down]
                .into_iter()
                .chain(&b.gate)
        })
        .map(|l| be.weight_bytes_read(&l.w, 1))
        .sum();
    linears + be.weight_bytes_read(w.lm_head_w(), 1) + be.embedding_bytes_read(&w.embed, 1)
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

/// Tokens each state decodes in the timed rounds, at the least, unless that takes longer than
/// [`MAX_EXTRA_DECODE`] (a large model on the CPU). A round's adapter-over-base ratio scatters by
/// about 1.5% (50 tokens) or 0.8% (200) on a shared 2-core machine, so over 600 tokens the median
/// still moved by ±0.5% between runs, a sixth of the 3% budget `decode_over_base` is held to;
/// over 1800, by about ±0.3%.
const MIN_DECODE_TOKENS: usize = 1800;
/// How long the rounds past `--repeat` may run.
const MAX_EXTRA_DECODE: std::time::Duration = std::time::Duration::from_secs(60);

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

    let weight_bytes = decode_weight_bytes(&be, &model.weights);
    let bandwidth_gbs = match a.device {
        // STREAM's rule: arrays at least four times the last-level cache, so no pass is served
        // from it; 256 MiB at the least.
        Device::Cpu if !a.train_only => {
            let bytes = llc_bytes().map_or(0, |c| 4 * c).max(256 << 20);
            let t = Instant::now();
            let gbs = stream_copy_gbs(bytes, 5);
            eprintln!(
                "bench: memory bandwidth {gbs:.1} GB/s (STREAM copy, 2 × {} MiB, {} threads, {:.1} s)",
                bytes >> 20,
                rayon::current_num_threads(),
                t.elapsed().as_secs_f64()
            );
            Some(gbs)
        }
        // A host copy says nothing of device memory, and --train-only decodes nothing: no floor.
        _ => None,
    };
    let floor_ms = bandwidth_gbs.map(|g| weight_bytes as f64 / (g * 1e9) * 1e3);
    let placeholder = empty_trainable(&be, &model, Method::CAUSAL_LM);
    let mut inference: Vec<(&str, Adapted<B>)> = if a.train_only {
        vec![]
    } else {
        vec![
            (
                "base",
                Adapted::new(empty_trainable(&be, &model, Method::CAUSAL_LM)),
            ),
            (
                "lora",
                Adapted::new(bitune_state(&be, &model, Method::Lora, 1)),
            ),
            (
                "bitune",
                Adapted::new(bitune_state(&be, &model, Method::Bitune, 1)),
            ),
        ]
    };
    let kv_dim = model.weights.cfg.kv_dim();
    let mut e = Engine::new(be, model, placeholder);
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
    // At least `repeat` rounds, and more while the states have decoded under
    // `MIN_DECODE_TOKENS` each and the phase is short: a 200:50 run then weighs its ratio over as
    // many tokens as a 50:200 one, where three rounds of 50 tokens swung by a few percent.
    let min_rounds = a.repeat;
    let enough_rounds = a.repeat.max(MIN_DECODE_TOKENS.div_ceil(a.answer));
    let decode_phase = usize::from(!inference.is_empty());
    let phases = inference.len() + decode_phase + usize::from(a.train || a.train_only);
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
    // Greedy decoding as `generate --temperature 0` runs it (argmax where the logits are).
    let decode_answer = |e: &Engine<B>, mut cache, logits0: &[f32]| -> Result<()> {
        let mut next = crate::bitune::sample::argmax(logits0);
        for _ in 0..a.answer {
            next = e.decode_greedy(&mut cache, next)?;
        }
        Ok(())
    };
    // Prefill timed per adapter state; the prefill a decode starts from kept.
    let mut starts = Vec::new();
    for (k, (name, state)) in inference.iter_mut().enumerate() {
        note(
            k + 1,
            format!(
                "{name}: prefill ×{}, then one decode of {} steps",
                a.repeat + 1,
                a.answer
            ),
        );
        e.swap_adapters(state);
        let prefill_s = time(a.repeat, || e.prefill(&ids))?;
        prof(a.profile);
        let (cache0, logits0) = e.prefill(&ids)?;
        prof(false);
        take_profile(&mut profile, &format!("{name}_prefill"));
        // The warm-up, which also builds the decoding forms of the adapters.
        decode_answer(&e, clone_cache(&e.be, &cache0, a.answer, kv_dim), &logits0)?;
        if a.profile {
            // One more decode, profiled apart from the timed ones (the scopes cost a clock read)
            // and from the copy of the cache it starts from.
            let cache = clone_cache(&e.be, &cache0, a.answer, kv_dim);
            prof(true);
            decode_answer(&e, cache, &logits0)?;
            prof(false);
            take_profile(&mut profile, &format!("{name}_decode"));
        }
        e.swap_adapters(state);
        starts.push((prefill_s, cache0, logits0));
    }
    // Decoding timed in rounds of `answer` steps, the states taking turns token by token (the
    // first of each step rotating), so the machine's load drifts alike over all of them: the
    // adapters' overhead over the base model is a few percent, and one state timed a second
    // after another swings by more than that here.
    let n_states = inference.len();
    let mut decode_s = vec![Vec::new(); n_states];
    if n_states > 0 {
        note(
            n_states + 1,
            format!(
                "decode of {} steps, {min_rounds} to {enough_rounds} rounds, the {n_states} \
                 states in turn",
                a.answer
            ),
        );
    }
    let t_decode = Instant::now();
    for round in 0..enough_rounds {
        if round >= min_rounds && t_decode.elapsed() > MAX_EXTRA_DECODE {
            break;
        }
        let mut caches: Vec<_> = starts
            .iter()
            .map(|s| clone_cache(&e.be, &s.1, a.answer, kv_dim))
            .collect();
        let mut next: Vec<u32> = starts
            .iter()
            .map(|s| crate::bitune::sample::argmax(&s.2))
            .collect();
        let mut spent = vec![0f64; n_states];
        for step in 0..a.answer {
            for j in 0..n_states {
                let i = (step + j) % n_states;
                e.swap_adapters(&mut inference[i].1);
                let t = Instant::now();
                next[i] = e.decode_greedy(&mut caches[i], next[i])?;
                e.be.synchronize();
                spent[i] += t.elapsed().as_secs_f64();
                e.swap_adapters(&mut inference[i].1);
            }
        }
        for (d, s) in decode_s.iter_mut().zip(spent) {
            d.push(s);
        }
    }
    for (i, (name, _)) in inference.iter().enumerate() {
        let prefill_s = starts[i].0;
        let dec_s = median(decode_s[i].clone());
        let ms_tok = dec_s * 1e3 / a.answer as f64;
        let mut row = json!({"prefill_ms": prefill_s * 1e3, "prefill_tok_s": a.prompt as f64 / prefill_s,
                   "decode_ms_per_tok": ms_tok, "decode_tok_s": 1e3 / ms_tok,
                   "end_to_end_s": prefill_s + dec_s});
        // Null where no bandwidth was measured: every device reports the same keys.
        row["decode_floor_ms_per_tok"] = json!(floor_ms);
        row["decode_floor_share"] = json!(floor_ms.map(|f| f / ms_tok));
        row["decode_rounds_s"] = json!(decode_s[i]);
        // This state's decode time over the base model's in the same round, median over rounds.
        row["decode_over_base"] = json!(median(
            decode_s[i]
                .iter()
                .zip(&decode_s[0])
                .map(|(t, b)| t / b)
                .collect()
        ));
        results.insert((*name).into(), row);
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
        let methods = [Method::Bitune, Method::Lora];
        note(
            phases,
            format!(
                "train steps ({}+{} tokens), Bitune and LoRA in turn, 1 + {} each",
                a.prompt, a.answer, a.repeat
            ),
        );
        // The whole step the trainer takes and the PyTorch reference times: loss and gradients,
        // global-norm clip, one AdamW update, with the reference's settings.
        let opt_cfg = OptConfig::reference_adamw(0);
        let mut states: Vec<(Trainable<B>, Optimizer<B>)> = methods
            .iter()
            .map(|&method| {
                let tr = bitune_state(&e.be, &e.model, method, 3);
                let opt = Optimizer::new(&e.be, opt_cfg, tr.table.total);
                (tr, opt)
            })
            .collect();
        let step = |(tr, opt): &mut (Trainable<B>, Optimizer<B>)| -> Result<()> {
            let mut g = e.be.zeros(tr.table.total);
            loss_and_grad(
                &e.be,
                &e.model.weights,
                tr,
                std::slice::from_ref(&example),
                1,
                Some(&mut g),
            )?;
            opt.update(&e.be, &mut tr.params, &mut g);
            // The update is queued after the loss came back: wait for it, so a device step is
            // timed whole.
            e.be.synchronize();
            Ok(())
        };
        // One warm-up each (it builds the weights' panels), then the methods take turns, as in
        // the reference's script, so a change of machine load weighs on both alike.
        for st in &mut states {
            step(st)?;
        }
        let mut times = vec![Vec::new(); methods.len()];
        for _ in 0..a.repeat {
            for (st, t) in states.iter_mut().zip(&mut times) {
                let t0 = Instant::now();
                step(st)?;
                t.push(t0.elapsed().as_secs_f64());
            }
        }
        for ((method, st), t) in methods.iter().zip(&mut states).zip(times) {
            if a.profile {
                prof(true);
                step(st)?;
                prof(false);
                take_profile(&mut profile, &format!("{}_train_step", method.name()));
            }
            let name = method.name();
            let least = t.iter().copied().fold(f64::INFINITY, f64::min);
            train.insert(format!("{name}_min_s"), json!(least));
            train.insert(format!("{name}_all_s"), json!(t));
            train.insert(format!("{name}_step_s"), json!(median(t)));
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
    report["decode_weight_bytes"] = json!(weight_bytes);
    report["bandwidth_gbs"] = json!(bandwidth_gbs);
    report["decode_floor_ms_per_tok"] = json!(floor_ms);
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

/// A copy of a cache made on the device (each timed decode starts from the same prefill), with
/// room for the `answer` rows decoding appends, as `generate` makes after its prefill.
fn clone_cache<B: Backend>(
    be: &B,
    c: &crate::model::transformer::KvCache<B>,
    answer: usize,
    kv_dim: usize,
) -> crate::model::transformer::KvCache<B> {
    let mut copy = crate::model::transformer::KvCache {
        k: c.k.iter().map(|b| be.duplicate(b)).collect(),
        v: c.v.iter().map(|b| be.duplicate(b)).collect(),
        pos: c.pos.clone(),
    };
    copy.reserve_rows(be, answer, kv_dim);
    copy
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;

    fn fixture(name: &str) -> Model<Cpu> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models");
        Model::load(&Cpu, &dir.join(name)).unwrap()
    }

    /// The fixture llama (hidden 48, 3 heads of 16, 1 KV head, MLP 72, 2 layers, vocab 200, tied
    /// LM head), counted by hand: per layer q 48·48 + k 48·16 + v 48·16 + o 48·48 + gate, up,
    /// down 3·48·72 = 16 512 values, two layers 33 024; the tied LM head 200·48 = 9 600; the
    /// embedding row 48. f32 checkpoint: 4 bytes each. bf16 checkpoint: the products read the
    /// bf16 form (2 bytes), the embedding gather the f32 row.
    #[test]
    fn decode_weight_bytes_by_hand() {
        let matrices = 2 * (2 * 48 * 48 + 2 * 48 * 16 + 3 * 48 * 72) + 200 * 48;
        assert_eq!(matrices, 42_624);
        let m = fixture("llama");
        assert_eq!(decode_weight_bytes(&Cpu, &m.weights), 4 * (42_624 + 48));
        let m = fixture("llama_bf16");
        assert_eq!(decode_weight_bytes(&Cpu, &m.weights), 2 * 42_624 + 4 * 48);
    }

    /// The copy moves real bytes at a plausible rate: above 0.1 GB/s, below 10 TB/s.
    #[test]
    fn stream_copy_measures_a_rate() {
        let g = stream_copy_gbs(16 << 20, 2);
        assert!(g > 0.1 && g < 1e4, "{g} GB/s");
    }

    #[test]
    fn llc_size_is_read_where_sysfs_has_it() {
        if std::path::Path::new("/sys/devices/system/cpu/cpu0/cache/index0/size").exists() {
            let b = llc_bytes().expect("a cache size");
            assert!(b >= 4 << 10 && b.is_multiple_of(1024), "{b}");
        }
    }
}
