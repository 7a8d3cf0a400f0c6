//! `train`: arguments, data loading, adapter init or resume, the loop, before/after samples.

use crate::backend::Backend;
use crate::bitune::adapter_io::{read_meta, AdapterMeta};
use crate::bitune::engine::{empty_trainable, load_adapter, Engine};
use crate::bitune::generate::{generate, GenOptions};
use crate::bitune::params::LoraSpec;
use crate::bitune::peft::Peft;
use crate::bitune::plan::Method;
use crate::bitune::step::Trainable;
use crate::cli::heldout;
use crate::data::examples::{prompt_text, read_jsonl, tokenize, Pair};
use crate::model::load::{resolve_model, Model};
use crate::model::weights::{Target, ALL_TARGETS};
use crate::train::optim::{OptConfig, OptKind, Schedule};
use crate::train::run::{train, TrainConfig};
use crate::train::run_dir;
use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OptArg {
    Adamw,
    Sgd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SchedArg {
    Linear,
    Constant,
}

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Checkpoint folder or .gguf (default: SmolLM2-135M-Instruct)
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// JSONL with instruction/response fields (default: the bundled synthetic suite)
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[arg(long, default_value = "instruction")]
    pub instruction_field: String,
    #[arg(long, default_value = "response")]
    pub response_field: String,
    /// Output folder: receives the final adapter; checkpoints go to OUT/checkpoints/step-N/.
    /// Default: runs/bitune, or runs/bitune-2, -3, ... when that holds a run already. A folder
    /// that holds another run is refused unless --overwrite is given
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replace the run in --out (its checkpoints, metrics and adapter; other files stay)
    #[arg(long)]
    pub overwrite: bool,
    /// bitune | lora | naive-bidir | no-mixing | only-causal | shared-weights | anti-causal
    #[arg(long, default_value = "bitune")]
    pub method: String,
    /// Adapter type of both sets (default lora; with --init-adapter, the folder's)
    #[arg(long, value_enum)]
    pub peft: Option<Peft>,
    /// Optimizer updates. The default (100 × batch 4 = one pass over the bundled suite) is
    /// what it takes, at the default --lr, for Bitune to beat the base model on every family of
    /// the held-out table; about 3 minutes on 2 idle cores with the evaluation
    #[arg(long, default_value_t = 100)]
    pub steps: u64,
    /// Peak learning rate (LoRA and θ alike, as in the paper). The default 3e-3 is the top of the
    /// paper's grid {1e-4, 3e-4, 1e-3, 3e-3}, above its task LR 1e-3 (compare's default): with
    /// the global-norm clip, θ's gradient (×25 at init) dominates the norm and scales the
    /// adapters' gradients down to Adam's eps, so they move slower than the LR says; in a
    /// 100-step budget 1e-3 leaves Bitune near the base model
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f32,
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    #[arg(long, default_value_t = 1)]
    pub accum: usize,
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    #[arg(long, default_value_t = 1.0)]
    pub alpha: f32,
    /// Comma-separated module names (default: all attention and MLP linears)
    #[arg(long)]
    pub targets: Option<String>,
    #[arg(long, default_value_t = 0.01)]
    pub theta_init: f32,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[arg(long, value_enum, default_value_t = OptArg::Adamw)]
    pub optimizer: OptArg,
    #[arg(long, value_enum, default_value_t = SchedArg::Linear)]
    pub lr_schedule: SchedArg,
    #[arg(long, default_value_t = 0.1)]
    pub warmup_ratio: f32,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f32,
    /// Global gradient-norm clip, over LoRA and θ together, as the paper's code does (the paper
    /// does not mention it). 0 turns it off [departs from the paper's code]: θ's gradient then no
    /// longer scales the adapters' down, and Bitune learns about as fast as LoRA
    #[arg(long, default_value_t = 1.0)]
    pub clip: f32,
    #[arg(long, default_value_t = 512)]
    pub max_len: usize,
    /// Checkpoint every N steps (0: only at the end); a checkpoint of the default model is ~60 MB
    #[arg(long, default_value_t = 25)]
    pub save_every: u64,
    /// Start from an adapter folder (its config sets rank, alpha and targets)
    #[arg(long)]
    pub init_adapter: Option<PathBuf>,
    /// Continue a run from its latest checkpoint (the run's folder or a step folder) with the
    /// same settings; the run continues in its folder unless --out names another
    #[arg(long)]
    pub resume: Option<PathBuf>,
    #[arg(long)]
    pub threads: Option<usize>,
    /// cpu, cuda or cuda:N (adapters and checkpoints are the same files on either)
    #[arg(long, default_value = "cpu")]
    pub device: super::device::Device,
    /// No before/after report (held-out table and sample answers)
    #[arg(long)]
    pub no_samples: bool,
    /// Held-out items per family in the before/after table (bundled suite only)
    #[arg(long, default_value_t = 40)]
    pub eval_n: usize,
}

pub(crate) fn check(a: &TrainArgs) -> Result<()> {
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

fn load_pairs(a: &TrainArgs) -> Result<Vec<Pair>> {
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

/// What `train` reports before and after: on the bundled suite, the held-out table; on `--data`,
/// the answer to the first instruction. "Before" is always the base model without an adapter.
enum Before {
    None,
    Table(heldout::Report),
    Sample(String),
}

fn before<B: Backend + Clone>(
    be: &B,
    model: Model<B>,
    a: &TrainArgs,
    probe: &str,
) -> Result<(Model<B>, Before)> {
    if a.no_samples {
        return Ok((model, Before::None));
    }
    let tr = empty_trainable(be, &model, Method::Lora);
    let mut e = Engine {
        be: be.clone(),
        model,
        tr,
    };
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
    a: &TrainArgs,
    b: Before,
    probe: &str,
    out: &Path,
) -> Result<()> {
    let method = tr.method.name();
    let mut e = Engine {
        be: be.clone(),
        model,
        tr,
    };
    match b {
        Before::None => {}
        Before::Sample(text) => {
            eprintln!("before (base model): {text:?}");
            eprintln!("after ({method}):  {:?}", sample(&e, probe)?);
        }
        Before::Table(before) => {
            let after = heldout::evaluate(&mut e, a.eval_n, method)?;
            println!("{}", heldout::table(&before, &after, method)?);
            let path = out.join("eval.json");
            let text = serde_json::to_string_pretty(&heldout::to_json(&before, &after, a.eval_n))?;
            crate::io::atomic::write_atomic_str(&path, &(text + "\n"))?;
        }
    }
    Ok(())
}

/// The adapters a run starts from: `--init-adapter`'s, or freshly initialised from the seed
/// (`compare` calls this for each of its runs on one loaded model).
pub(crate) fn init_state<B: Backend>(
    be: &B,
    model: &Model<B>,
    a: &TrainArgs,
) -> Result<(Trainable<B>, AdapterMeta)> {
    let cfg = &model.weights.cfg;
    let method = Method::parse(&a.method)?;
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

/// The optimizer and schedule of a run's arguments (shared with `compare`).
pub(crate) fn opt_config(a: &TrainArgs) -> OptConfig {
    let warmup = (a.steps as f32 * a.warmup_ratio).floor() as u64;
    OptConfig {
        kind: if a.optimizer == OptArg::Adamw {
            OptKind::AdamW
        } else {
            OptKind::Sgd
        },
        lr: a.lr,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-6,
        weight_decay: a.weight_decay,
        clip: a.clip,
        schedule: if a.lr_schedule == SchedArg::Linear {
            Schedule::Linear
        } else {
            Schedule::Constant
        },
        warmup_steps: warmup,
        total_steps: a.steps,
    }
}

/// `--out`'s default; a fresh run takes `-2`, `-3`, ... when it holds a run.
pub const DEFAULT_OUT: &str = "runs/bitune";

pub fn run(a: TrainArgs) -> Result<()> {
    check(&a)?;
    // The folder is settled before the model loads: a clash costs the user nothing.
    let rd = run_dir::resolve(
        a.out.as_deref(),
        a.resume.as_deref(),
        a.overwrite,
        Path::new(DEFAULT_OUT),
    )?;
    crate::on_device!(a.device, |be| run_on(be, a, rd))
}

fn run_on<B: Backend + Clone>(be: B, a: TrainArgs, rd: run_dir::RunDir) -> Result<()> {
    crate::cli::set_threads(a.threads)?;
    let path = resolve_model(a.model.as_deref())?;
    let model = Model::load(&be, &path)?;
    let cfg = &model.weights.cfg;
    let (mut tr, meta) = init_state(&be, &model, &a)?;
    let method = tr.method;
    let pairs = load_pairs(&a)?;
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
    let opt = opt_config(&a);
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
    let (model, b) = before(&be, model, &a, &probe)?;
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
    after(&be, model, tr, &a, b, &probe, &res.final_dir)
}
