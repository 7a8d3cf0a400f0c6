//! The training loop: deterministic data order, gradient accumulation, clipping, AdamW/SGD,
//! checkpoints with exact resume, metrics, progress and charts.

use super::checkpoint::{self, TrainerState};
use super::optim::{OptConfig, Optimizer};
use crate::backend::Backend;
use crate::bitune::adapter_io::{self, AdapterMeta};
use crate::bitune::peft::Peft;
use crate::bitune::plan::{Example, Method};
use crate::bitune::step::{loss_and_grad, Trainable};
use crate::model::load::Model;
use crate::rng::Rng;
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub struct TrainConfig {
    pub out: PathBuf,
    pub steps: u64,
    pub batch: usize,
    pub accum: usize,
    pub seed: u64,
    pub save_every: u64,
    pub opt: OptConfig,
    pub progress: bool,
    pub base_model: String,
}

/// The examples of micro-batch `k` (0-based, counting all micro-batches of the run): epoch `e`
/// visits a permutation seeded by (seed, e), so the order is a pure function of the cursor and a
/// resumed run sees exactly the examples an uninterrupted one would.
pub fn batch_at(n: usize, seed: u64, cursor: u64, size: usize) -> Vec<usize> {
    let mut out = Vec::with_capacity(size);
    let mut perm_epoch = u64::MAX;
    let mut perm: Vec<usize> = Vec::new();
    for c in cursor..cursor + size as u64 {
        let epoch = c / n as u64;
        if epoch != perm_epoch {
            perm = (0..n).collect();
            Rng::new(seed.wrapping_mul(0x1000_0000_01B3) ^ epoch).shuffle(&mut perm);
            perm_epoch = epoch;
        }
        out.push(perm[(c % n as u64) as usize]);
    }
    out
}

pub struct TrainResult {
    pub losses: Vec<(u64, f64)>,
    pub final_dir: PathBuf,
}

fn fingerprint(
    tr_cfg: &TrainConfig,
    tr_method: Method,
    n_params: usize,
    n_examples: usize,
) -> String {
    format!(
        "method={} params={} examples={} batch={} accum={} seed={} steps={} lr={} clip={}",
        tr_method.name(),
        n_params,
        n_examples,
        tr_cfg.batch,
        tr_cfg.accum,
        tr_cfg.seed,
        tr_cfg.steps,
        tr_cfg.opt.lr,
        tr_cfg.opt.clip
    )
}

pub fn train<B: Backend>(
    be: &B,
    model: &Model<B>,
    tr: &mut Trainable<B>,
    meta: &AdapterMeta,
    data: &[Example],
    cfg: &TrainConfig,
    resume: Option<&Path>,
) -> Result<TrainResult> {
    if data.is_empty() {
        bail!("no usable training example");
    }
    let w = &model.weights;
    let n_params = tr.table.total;
    let mut fp = fingerprint(cfg, tr.method, n_params, data.len());
    if tr.table.peft != Peft::Lora {
        // Appended only for DoRA/IA3, so LoRA checkpoints from before keep resuming.
        fp += &format!(" peft={}", tr.table.peft.name());
    }
    let mut opt = Optimizer::new(be, cfg.opt, n_params);
    let mut state = TrainerState {
        step: 0,
        cursor: 0,
        fingerprint: fp.clone(),
        losses: vec![],
        alphas: vec![],
    };
    if let Some(dir) = resume {
        let step_dir = checkpoint::latest(dir)?;
        let (rtr, _) = crate::bitune::engine::load_adapter(be, model, &step_dir)?;
        let r = checkpoint::load(&step_dir, n_params)?;
        if r.state.fingerprint != fp {
            bail!(
                "{}: the checkpoint was made with different settings:\n  checkpoint: {}\n  now:        {fp}",
                step_dir.display(),
                r.state.fingerprint
            );
        }
        tr.params = rtr.params;
        opt.m = be.upload(&r.m);
        opt.v = be.upload(&r.v);
        opt.step = r.state.step;
        state = r.state;
        eprintln!("resumed from {} (step {})", step_dir.display(), state.step);
    }
    std::fs::create_dir_all(&cfg.out).with_context(|| format!("creating {}", cfg.out.display()))?;
    let metrics_path = cfg.out.join("metrics.jsonl");
    let mut metrics = open_metrics(&metrics_path, state.step)?;
    let bar = progress_bar(cfg);
    let save_adapter = |dir: &Path, tr: &Trainable<B>| {
        adapter_io::save(
            dir,
            &w.cfg,
            meta,
            &tr.table,
            &be.download(&tr.params),
            &cfg.base_model,
        )
    };
    let mut last_ckpt: Option<PathBuf> = None;
    let per_update = cfg.batch * cfg.accum;
    while state.step < cfg.steps {
        let t0 = Instant::now();
        let mut grads = be.zeros(n_params);
        let (mut loss, mut tokens) = (0f64, 0usize);
        for _ in 0..cfg.accum {
            let idx = batch_at(data.len(), cfg.seed, state.cursor, cfg.batch);
            state.cursor += cfg.batch as u64;
            let exs: Vec<Example> = idx.iter().map(|&i| data[i].clone()).collect();
            let out = loss_and_grad(be, w, tr, &exs, per_update, Some(&mut grads))?;
            loss += out.loss;
            tokens += out.tokens;
        }
        if !loss.is_finite() || !be.sum_sq(&grads).is_finite() {
            let kept = last_ckpt
                .as_ref()
                .map_or("none yet".to_string(), |p| p.display().to_string());
            bail!(
                "non-finite loss or gradient at step {}: stopped; last good checkpoint: {kept}",
                state.step + 1
            );
        }
        let (gnorm, lr) = opt.update(be, &mut tr.params, &mut grads);
        state.step += 1;
        let alphas = tr.alphas(be);
        let (ak, av): (Vec<f32>, Vec<f32>) = alphas.iter().cloned().unzip();
        state.losses.push((state.step, loss));
        if !ak.is_empty() {
            state.alphas.push((state.step, ak.clone(), av.clone()));
        }
        let dt = t0.elapsed().as_secs_f64();
        let mean = |v: &[f32]| {
            if v.is_empty() {
                f32::NAN
            } else {
                v.iter().sum::<f32>() / v.len() as f32
            }
        };
        let rec = serde_json::json!({"step": state.step, "loss": loss, "lr": lr, "grad_norm": gnorm,
            "tokens_per_s": tokens as f64 / dt, "step_s": dt, "alpha_k": ak, "alpha_v": av});
        writeln!(metrics, "{rec}")?;
        metrics.flush()?;
        if let Some(b) = &bar {
            b.set_position(state.step);
            b.set_message(format!(
                "loss {loss:.4} lr {lr:.2e} {:.0} tok/s α_K {:.3} α_V {:.3}",
                tokens as f64 / dt,
                mean(&ak),
                mean(&av)
            ));
        }
        if (cfg.save_every > 0 && state.step.is_multiple_of(cfg.save_every))
            || state.step == cfg.steps
        {
            let (m, v) = (be.download(&opt.m), be.download(&opt.v));
            last_ckpt = Some(checkpoint::save(&cfg.out, &state, &m, &v, |d| {
                save_adapter(d, tr)
            })?);
        }
    }
    if let Some(b) = &bar {
        b.finish();
    }
    save_adapter(&cfg.out, tr)?;
    write_charts(&cfg.out, &state);
    Ok(TrainResult {
        losses: state.losses,
        final_dir: cfg.out.clone(),
    })
}

/// Opens the metrics log, dropping lines past `step` (a resumed run rewrites what follows).
fn open_metrics(path: &Path, step: u64) -> Result<std::fs::File> {
    let kept: Vec<String> = std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                .is_some_and(|s| s <= step)
        })
        .map(String::from)
        .collect();
    let mut text = kept.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    crate::io::atomic::write_atomic_str(path, &text)?;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

fn progress_bar(cfg: &TrainConfig) -> Option<indicatif::ProgressBar> {
    if !cfg.progress {
        return None;
    }
    let b = indicatif::ProgressBar::new(cfg.steps);
    let style =
        indicatif::ProgressStyle::with_template("{bar:30} step {pos}/{len} {msg} ETA {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    b.set_style(style);
    Some(b)
}

fn write_charts(out: &Path, state: &TrainerState) {
    let loss = out.join("loss.png");
    if let Err(e) = super::charts::loss_chart(&loss, "training loss", &state.losses) {
        eprintln!("warning: could not draw {}: {e:#}", loss.display());
    }
    if !state.alphas.is_empty() {
        let steps: Vec<u64> = state.alphas.iter().map(|a| a.0).collect();
        let ak: Vec<Vec<f32>> = state.alphas.iter().map(|a| a.1.clone()).collect();
        let av: Vec<Vec<f32>> = state.alphas.iter().map(|a| a.2.clone()).collect();
        let path = out.join("alpha.png");
        if let Err(e) = super::charts::alpha_chart(&path, &steps, &ak, &av) {
            eprintln!("warning: could not draw {}: {e:#}", path.display());
        }
    }
}
