//! The training job: data loading, adapter init or resume, the loop, the before/after report.

use crate::backend::device::Device;
use crate::backend::Backend;
use crate::bitune::adapter_io::{read_meta, AdapterMeta};
use crate::bitune::engine::{empty_trainable, load_adapter, Engine};
use crate::bitune::generate::{generate, GenOptions};
use crate::bitune::params::LoraSpec;
use crate::bitune::peft::Peft;
use crate::bitune::plan::Method;
use crate::bitune::step::Trainable;
use crate::data::examples::{prompt_text, read_jsonl, tokenize, Pair};
use crate::jobs::heldout;
use crate::model::load::{resolve_model, Model};
use crate::model::weights::{Target, ALL_TARGETS};
use crate::train::optim::{OptConfig, OptKind, Schedule};
use crate::train::run::{train, TrainConfig};
use crate::train::run_dir;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// A training run: every setting of `bitune-rt train`, with the command line's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainJob {
    /// Checkpoint folder or .gguf; `None` is the default model (SmolLM2-135M-Instruct).
    pub model: Option<PathBuf>,
    /// JSONL with instruction/response fields; `None` is the bundled synthetic suite.
    pub data: Option<PathBuf>,
    /// The instruction's field in `data`.
    pub instruction_field: String,
    /// The response's field in `data`.
    pub response_field: String,
    /// Output folder: receives the final adapter; checkpoints go to OUT/checkpoints/step-N/.
    /// `None`: [`DEFAULT_OUT`], or `-2`, `-3`, ... when that holds a run already. A folder that
    /// holds another run is refused unless `overwrite`.
    pub out: Option<PathBuf>,
    /// Replace the run in `out` (its checkpoints, metrics and adapter; other files stay).
    pub overwrite: bool,
    /// bitune | lora | naive-bidir | no-mixing | only-causal | shared-weights | anti-causal.
    pub method: Method,
    /// Adapter type of both sets (`None`: LoRA; with `init_adapter`, the folder's).
    pub peft: Option<Peft>,
    /// Optimizer updates.
    pub steps: u64,
    /// Peak learning rate (LoRA and θ alike, as in the paper).
    pub lr: f32,
    /// Examples per micro-batch.
    pub batch: usize,
    /// Micro-batches accumulated per update.
    pub accum: usize,
    /// LoRA rank.
    pub rank: usize,
    /// LoRA alpha (the update is scaled by alpha / rank).
    pub alpha: f32,
    /// Comma-separated module names; `None`: all attention and MLP linears.
    pub targets: Option<String>,
    /// θ's initial value (α starts at 1/2).
    pub theta_init: f32,
    /// Adapter initialisation and data order.
    pub seed: u64,
    /// AdamW or SGD.
    pub optimizer: OptKind,
    /// Learning-rate schedule after the warmup.
    pub lr_schedule: Schedule,
    /// Fraction of `steps` spent warming the learning rate up.
    pub warmup_ratio: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
    /// Global gradient-norm clip over LoRA and θ together; 0 turns it off.
    pub clip: f32,
    /// Examples longer than this many tokens are skipped.
    pub max_len: usize,
    /// Checkpoint every N steps (0: only at the end).
    pub save_every: u64,
    /// Start from an adapter folder (its config sets rank, alpha and targets).
    pub init_adapter: Option<PathBuf>,
    /// Continue a run from its latest checkpoint (the run's folder or a step folder).
    pub resume: Option<PathBuf>,
    /// CPU threads; `None`: all cores.
    pub threads: Option<usize>,
    /// The device the run trains on.
    pub device: Device,
    /// No before/after report (held-out table and sample answers).
    pub no_samples: bool,
    /// Held-out items per family in the before/after table (bundled suite only).
    pub eval_n: usize,
}

impl Default for TrainJob {
    fn default() -> Self {
        TrainJob {
            model: None,
            data: None,
            instruction_field: "instruction".into(),
            response_field: "response".into(),
            out: None,
            overwrite: false,
            method: Method::Bitune,
            peft: None,
            steps: 100,
            lr: 3e-3,
            batch: 4,
            accum: 1,
            rank: 8,
            alpha: 1.0,
            targets: None,
            theta_init: 0.01,
            seed: 42,
            optimizer: OptKind::AdamW,
            lr_schedule: Schedule::Linear,
            warmup_ratio: 0.1,
            weight_decay: 0.0,
            clip: 1.0,
            max_len: 512,
            save_every: 25,
            init_adapter: None,
            resume: None,
            threads: None,
            device: Device::Cpu,
            no_samples: false,
            eval_n: 40,
        }
    }
}

/// What a run reports before and after training: on the bundled suite, the held-out table; on
/// `data`, the greedy answer to the first instruction. "Before" is the base model.
pub enum Report {
    None,
    /// The held-out table, before and after (also written to `eval.json` in the adapter folder).
    Table {
        before: heldout::Report,
        after: heldout::Report,
    },
    /// The first instruction's answer, before and after.
    Sample {
        before: String,
        after: String,
    },
}

/// What a finished run returns.
pub struct TrainOutcome {
    /// The folder holding the final adapter.
    pub final_dir: PathBuf,
    /// The last logged loss (NaN when none was).
    pub final_loss: f64,
    /// The method's name (as in `--method`).
    pub method: String,
    /// Held-out items per family of the table.
    pub eval_n: usize,
    pub report: Report,
}

pub(crate) fn check(a: &TrainJob) -> Result<()> {
    let bad = |m: &str| bail!("out-of-range hyperparameter: {m}");
    if a.steps == 0 || a.batch == 0 || a.accum == 0 {
        return bad("--steps, --batch and --accum must be at least 1");
    }
    if !(a.lr.is_finite() && a.lr > 0.0 && a.lr < 10.0) {
        return bad("--lr must be in (0, 10)");
    }
    if a.rank == 0 || a.rank > 1024 || !(a.alpha.is_finite() && a.alpha > 0.0) {
        return bad("--rank must be in 1..=1024 and --alpha positive");
    }
    if !(a.theta_init.is_finite() && a.theta_init > 0.0) {
        return bad("--theta-init must be positive");
    }
    if !(0.0..1.0).contains(&a.warmup_ratio) || a.clip < 0.0 || a.weight_decay < 0.0 {
        return bad("--warmup-ratio in [0, 1), --clip >= 0, --weight-decay >= 0");
    }
    if a.max_len < 4 {
        return bad("--max-len must be at least 4");
    }
    Ok(())
}

fn targets(
    spec: Option<&str>,
    arch: crate::model::config::Arch,
    gated: bool,
) -> Result<Vec<Target>> {
    match spec {
        None => Ok(ALL_TARGETS
            .into_iter()
            .filter(|t| gated || *t != Target::Gate)
            .collect()),
        Some(s) => s
            .split(',')
            .map(|n| {
                Target::from_short(n.trim(), arch).ok_or_else(|| {
                    anyhow::anyhow!("--targets: no module {n:?} in a {arch:?} model")
                })
            })
            .collect(),
    }
}

fn load_pairs(a: &TrainJob) -> Result<Vec<Pair>> {
    match &a.data {
        Some(p) => read_jsonl(p, &a.instruction_field, &a.response_field),
        None => Ok(crate::data::synth::bundled_train_set()
            .into_iter()
            .map(|e| Pair {
                instruction: e.instruction,
                response: e.response,
            })
            .collect()),
    }
}

/// The greedy answer to one instruction (the `--data` runs' before/after sample).
fn sample<B: Backend + Clone>(e: &Engine<B>, instruction: &str) -> Result<String> {
    let ids = e.model.encode(&prompt_text(instruction), true)?;
    let o = GenOptions {
        max_new: 40,
        temperature: 0.0,
        top_p: 1.0,
        seed: 0,
        stops: vec!["Question:".into()],
    };
    Ok(generate(e, &ids, &o, |_| {})?.text.trim().to_string())
}

/// The "before" half of [`Report`], measured before training.
enum Before {
    None,
    Table(heldout::Report),
    Sample(String),
}

fn before<B: Backend + Clone>(
    be: &B,
    model: Model<B>,
    a: &TrainJob,
    probe: &str,
) -> Result<(Model<B>, Before)> {
    if a.no_samples {
        return Ok((model, Before::None));
    }
    let tr = empty_trainable(be, &model, Method::CAUSAL_LM);
    let mut e = Engine::new(be.clone(), model, tr);
    let b = if a.data.is_none() && a.eval_n > 0 {
        Before::Table(heldout::evaluate(&mut e, a.eval_n, "base model")?)
    } else {
        Before::Sample(sample(&e, probe)?)
    };
    Ok((e.model, b))
}

fn after<B: Backend + Clone>(
    be: &B,
    model: Model<B>,
    tr: Trainable<B>,
    a: &TrainJob,
    b: Before,
    probe: &str,
    out: &Path,
) -> Result<Report> {
    let method = tr.method.name();
    let mut e = Engine::new(be.clone(), model, tr);
    Ok(match b {
        Before::None => Report::None,
        Before::Sample(before) => Report::Sample {
            before,
            after: sample(&e, probe)?,
        },
        Before::Table(before) => {
            let after = heldout::evaluate(&mut e, a.eval_n, method)?;
            let path = out.join("eval.json");
            let text = serde_json::to_string_pretty(&heldout::to_json(&before, &after, a.eval_n))?;
            crate::io::atomic::write_atomic_str(&path, &(text + "\n"))?;
            Report::Table { before, after }
        }
    })
}

/// The adapters a run starts from: `--init-adapter`'s, or freshly initialised from the seed
/// (`compare` calls this for each of its runs on one loaded model).
pub(crate) fn init_state<B: Backend>(
    be: &B,
    model: &Model<B>,
    a: &TrainJob,
) -> Result<(Trainable<B>, AdapterMeta)> {
    let cfg = &model.weights.cfg;
    let method = a.method;
    Ok(match &a.init_adapter {
        Some(dir) => {
            let m = read_meta(dir, cfg)?;
            if m.method.num_sets() != method.num_sets() || m.method.mixes() != method.mixes() {
                bail!(
                    "{}: a {} adapter cannot start a {} run",
                    dir.display(),
                    m.method.name(),
                    method.name()
                );
            }
            if a.peft.is_some_and(|p| p != m.peft) {
                bail!(
                    "{}: a {} adapter cannot start a --peft {} run",
                    dir.display(),
                    m.peft.name(),
                    a.peft.unwrap().name()
                );
            }
            let (mut t, m) = load_adapter(be, model, dir)?;
            t.method = method;
            (t, AdapterMeta { method, ..m })
        }
        None => {
            let lora = LoraSpec {
                rank: a.rank,
                alpha: a.alpha,
                targets: targets(a.targets.as_deref(), cfg.arch, cfg.gated_mlp)?,
            };
            let peft = a.peft.unwrap_or_default();
            let meta = AdapterMeta {
                method,
                lora: lora.clone(),
                peft,
                theta_init: a.theta_init,
            };
            let w = &model.weights;
            (
                Trainable::init_with(be, w, method, lora, peft, a.theta_init, a.seed),
                meta,
            )
        }
    })
}

/// The optimizer and schedule of a run's settings (shared with `compare`).
pub(crate) fn opt_config(a: &TrainJob) -> OptConfig {
    let warmup = (a.steps as f32 * a.warmup_ratio).floor() as u64;
    OptConfig {
        kind: a.optimizer,
        lr: a.lr,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-6,
        weight_decay: a.weight_decay,
        clip: a.clip,
        schedule: a.lr_schedule,
        warmup_steps: warmup,
        total_steps: a.steps,
    }
}

/// The default of [`TrainJob::out`]; a fresh run takes `-2`, `-3`, ... when it holds a run.
pub const DEFAULT_OUT: &str = "runs/bitune";

/// Runs a training job: checks the settings, settles the run folder, trains, writes the final
/// adapter and measures the before/after report.
pub fn run(a: &TrainJob) -> Result<TrainOutcome> {
    check(a)?;
    // The folder is settled before the model loads: a clash costs the user nothing.
    let rd = run_dir::resolve(
        a.out.as_deref(),
        a.resume.as_deref(),
        a.overwrite,
        Path::new(DEFAULT_OUT),
    )?;
    crate::on_device!(a.device, |be| run_on(be, a, rd))
}

fn run_on<B: Backend + Clone>(be: B, a: &TrainJob, rd: run_dir::RunDir) -> Result<TrainOutcome> {
    super::set_threads(a.threads)?;
    let path = resolve_model(a.model.as_deref())?;
    let model = Model::load(&be, &path)?;
    let cfg = &model.weights.cfg;
    let (mut tr, meta) = init_state(&be, &model, a)?;
    let method = tr.method;
    let pairs = load_pairs(a)?;
    let eos = *cfg
        .eos_token_ids
        .first()
        .context("the model config names no EOS token")?;
    let tok = tokenize(&model.tokenizer, &pairs, eos, a.max_len)?;
    eprintln!(
        "{}: {} examples ({} skipped as longer than {} tokens); method {} ({}); {} trainable parameters; writing to {}",
        a.data
            .as_ref()
            .map_or("bundled synthetic suite".into(), |p| p
                .display()
                .to_string()),
        tok.examples.len(),
        tok.too_long,
        a.max_len,
        method.name(),
        tr.table.peft.name(),
        tr.table.total,
        rd.out.display()
    );
    let opt = opt_config(a);
    let tc = TrainConfig {
        out: rd.out.clone(),
        steps: a.steps,
        batch: a.batch,
        accum: a.accum,
        seed: a.seed,
        save_every: a.save_every,
        opt,
        progress: true,
        base_model: path.display().to_string(),
    };
    let probe = pairs
        .first()
        .map(|p| p.instruction.clone())
        .unwrap_or_default();
    let (model, b) = before(&be, model, a, &probe)?;
    run_dir::prepare(&rd, a.overwrite)?;
    let res = train(
        &be,
        &model,
        &mut tr,
        &meta,
        &tok.examples,
        &tc,
        rd.resume.as_deref(),
    )?;
    let last = res.losses.last().map_or(f64::NAN, |l| l.1);
    eprintln!(
        "final loss {last:.4}; adapter written to {}",
        res.final_dir.display()
    );
    let method = tr.method.name().to_string();
    let report = after(&be, model, tr, a, b, &probe, &res.final_dir)?;
    Ok(TrainOutcome {
        final_dir: res.final_dir,
        final_loss: last,
        method,
        eval_n: a.eval_n,
        report,
    })
}
