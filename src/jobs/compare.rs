//! `compare`: trains several methods (default `lora,bitune`) with the same budget and seeds on one
//! task, evaluates every run through `crate::eval::run_eval`, and reports mean ± sample std over
//! the seeds per method and metric, as the paper's Table 1 does (JSON + markdown in `--out`).
//!
//! Every run starts from the same loaded model and the same tokenized training set; a run differs
//! from another of the same method only by its seed, which sets the adapter initialisation and
//! the data order (`train::run::batch_at`). The synthetic training and evaluation data are drawn
//! from fixed seeds, so every run sees the same examples.

use super::train::{check, init_state, opt_config, TrainJob};
use crate::backend::device::Device;
use crate::backend::Backend;
use crate::bitune::engine::{empty_trainable, Engine};
use crate::bitune::plan::Method;
use crate::bitune::step::Trainable;
use crate::data::examples::{read_jsonl, tokenize, Pair};
use crate::data::synth::{synth, Split, BUNDLED_N, BUNDLED_SEED};
use crate::eval::{known_tasks, run_eval, EvalOptions};
use crate::model::load::{resolve_model, Model};
use crate::train::run::{train, TrainConfig};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The untrained model as a row of the table (evaluated once: it has no seed).
pub const BASE: &str = "base";

/// A comparison: methods × seeds trained with one budget on one task, each evaluated, with the
/// command line's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct CompareJob {
    /// Checkpoint folder or .gguf; `None`: SmolLM2-135M-Instruct.
    pub model: Option<PathBuf>,
    /// Comma-separated methods (train's method names), plus [`BASE`] for the untrained model.
    pub methods: String,
    /// Number of seeds per method: `first_seed`, `first_seed + 1`, ...
    pub seeds: u64,
    /// The first seed.
    pub first_seed: u64,
    /// Training data: synthetic:NAME (a family's train split) or synthetic:mix (all families).
    pub train_task: String,
    /// Synthetic training examples to draw.
    pub train_n: usize,
    /// JSONL training data with instruction/response fields, instead of `train_task`.
    pub data: Option<PathBuf>,
    /// The instruction's field in `data`.
    pub instruction_field: String,
    /// The response's field in `data`.
    pub response_field: String,
    /// Comma-separated evaluation tasks: `synthetic:NAME`, or `TASK=DATA` for the real tasks.
    pub eval_tasks: String,
    /// Evaluate only the first N items of each task.
    pub limit: Option<usize>,
    /// Optimizer updates per run.
    pub steps: u64,
    /// Peak learning rate, for every method.
    pub lr: f32,
    /// Examples per micro-batch.
    pub batch: usize,
    /// Micro-batches accumulated per update.
    pub accum: usize,
    /// LoRA rank.
    pub rank: usize,
    /// LoRA alpha.
    pub alpha: f32,
    /// Comma-separated module names; `None`: all attention and MLP linears.
    pub targets: Option<String>,
    /// θ's initial value.
    pub theta_init: f32,
    /// Global gradient-norm clip; 0 turns it off.
    pub clip: f32,
    /// Examples longer than this many tokens are skipped.
    pub max_len: usize,
    /// Receives compare.json, compare.md and runs/<method>-seed<S>/.
    pub out: PathBuf,
    /// CPU threads; `None`: all cores.
    pub threads: Option<usize>,
    /// The device every run trains and evaluates on.
    pub device: Device,
}

impl Default for CompareJob {
    fn default() -> Self {
        CompareJob {
            model: None,
            methods: "lora,bitune".into(),
            seeds: 3,
            first_seed: 42,
            train_task: "synthetic:mix".into(),
            train_n: BUNDLED_N,
            data: None,
            instruction_field: "instruction".into(),
            response_field: "response".into(),
            eval_tasks: "synthetic:mc,synthetic:lookup".into(),
            limit: None,
            steps: 30,
            lr: 1e-3,
            batch: 4,
            accum: 1,
            rank: 8,
            alpha: 1.0,
            targets: None,
            theta_init: 0.01,
            clip: 1.0,
            max_len: 512,
            out: PathBuf::from("runs/compare"),
            threads: None,
            device: Device::Cpu,
        }
    }
}

/// One evaluation task: its name and, for the real data sets, the file to read.
struct EvalTask {
    name: String,
    data: Option<PathBuf>,
}

fn parse_eval_tasks(spec: &str) -> Result<Vec<EvalTask>> {
    let known = known_tasks();
    let mut out = Vec::new();
    for t in spec.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let (name, data) = match t.split_once('=') {
            Some((n, d)) => (n.to_string(), Some(PathBuf::from(d))),
            None => (t.to_string(), None),
        };
        if !known.contains(&name) {
            bail!(
                "--eval-tasks: unknown task {name:?}; known: {}",
                known.join(", ")
            );
        }
        if data.is_none() && !name.starts_with("synthetic:") {
            bail!("--eval-tasks: {name} needs its data set, as {name}=PATH");
        }
        out.push(EvalTask { name, data });
    }
    if out.is_empty() {
        bail!("--eval-tasks is empty");
    }
    Ok(out)
}

fn parse_methods(spec: &str) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for m in spec.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        if m != BASE {
            Method::parse(m)?;
        }
        if out.iter().any(|x| x == m) {
            bail!("--methods names {m} twice");
        }
        out.push(m.to_string());
    }
    if out.is_empty() {
        bail!("--methods is empty");
    }
    Ok(out)
}

/// The training pairs: a synthetic train split (drawn from the bundled set's seed, so every run
/// and every invocation trains on the same examples) or a JSONL file.
fn training_pairs(a: &CompareJob) -> Result<(String, Vec<Pair>)> {
    if let Some(p) = &a.data {
        let pairs = read_jsonl(p, &a.instruction_field, &a.response_field)?;
        return Ok((p.display().to_string(), pairs));
    }
    let Some(name) = a.train_task.strip_prefix("synthetic:") else {
        bail!("--train-task must be synthetic:NAME or synthetic:mix (or give --data FILE.jsonl)");
    };
    let family = if name == "mix" { "mixed" } else { name };
    let pairs = synth(family, a.train_n, BUNDLED_SEED, Split::Train)?
        .into_iter()
        .map(|e| Pair {
            instruction: e.instruction,
            response: e.response,
        })
        .collect();
    Ok((a.train_task.clone(), pairs))
}

/// `train`'s settings for one run: every setting compare does not set keeps `train`'s own
/// default (and settings added to `train` later do too).
fn train_job(a: &CompareJob, method: &str, seed: u64, out: &Path) -> Result<TrainJob> {
    let t = TrainJob {
        method: Method::parse(method)?,
        seed,
        out: Some(out.to_path_buf()),
        steps: a.steps,
        lr: a.lr,
        batch: a.batch,
        accum: a.accum,
        rank: a.rank,
        alpha: a.alpha,
        theta_init: a.theta_init,
        clip: a.clip,
        max_len: a.max_len,
        // Only the final adapter is kept: compare's runs are not meant to be resumed.
        save_every: 0,
        no_samples: true,
        targets: a.targets.clone(),
        ..TrainJob::default()
    };
    check(&t)?;
    Ok(t)
}

/// The metric that stands for a task in the average column: accuracy for multiple choice,
/// strict-match exact match for GSM8K-style generation, exact match otherwise.
fn primary(metrics: &[String]) -> Option<&String> {
    ["acc,none", "exact_match,strict-match", "exact_match,none"]
        .iter()
        .find_map(|p| metrics.iter().find(|m| m == p))
        .or(metrics.first())
}

/// The metric values of `task` in a `run_eval` summary (its own entry; stderr and alias left out).
fn task_metrics(summary: &Value, task: &str) -> Vec<(String, f64)> {
    summary["results"][task]
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| *k != "alias" && !k.contains("_stderr"))
                .filter_map(|(k, v)| v.as_f64().map(|x| (k.clone(), x)))
                .collect()
        })
        .unwrap_or_default()
}

pub fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// Sample standard deviation (n − 1), as reported over seeds; undefined for a single value.
pub fn sample_std(xs: &[f64]) -> Option<f64> {
    if xs.len() < 2 {
        return None;
    }
    let m = mean(xs);
    Some((xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (xs.len() - 1) as f64).sqrt())
}

fn stat(values: &[f64]) -> Value {
    json!({"values": values, "mean": num(mean(values)), "std": sample_std(values).map(num)})
}

fn num(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// An f32 setting as the number it was typed as (0.001, not 0.0010000000474974513).
fn num32(x: f32) -> Value {
    num(x.to_string().parse().unwrap_or(f64::NAN))
}

use super::compare_stats as stats;
use super::{git_commit, now_utc};

/// Evaluates the trainable state on every task; the model is lent to an engine and returned.
fn evaluate<B: Backend + Clone>(
    be: &B,
    model: Model<B>,
    tr: Trainable<B>,
    tasks: &[EvalTask],
    limit: Option<usize>,
    dir: &Path,
) -> Result<(Model<B>, Value)> {
    let eval_dir = dir.join("eval");
    std::fs::create_dir_all(&eval_dir)
        .with_context(|| format!("creating {}", eval_dir.display()))?;
    let mut e = Engine::new(be.clone(), model, tr);
    let mut out = serde_json::Map::new();
    for t in tasks {
        let file = t.name.replace(':', "-");
        let opts = EvalOptions {
            task: t.name.clone(),
            data: t.data.clone(),
            limit,
            out: Some(eval_dir.join(format!("{file}.json"))),
            log: Some(eval_dir.join(format!("{file}.jsonl"))),
            skip_bad_rows: false,
        };
        let summary = run_eval(&opts, &mut e).with_context(|| format!("evaluating {}", t.name))?;
        let m: serde_json::Map<String, Value> = task_metrics(&summary, &t.name)
            .into_iter()
            .map(|(k, v)| (k, num(v)))
            .collect();
        out.insert(t.name.clone(), Value::Object(m));
    }
    Ok((e.model, Value::Object(out)))
}

/// Trains and evaluates every (method, seed), then aggregates; returns what compare.json holds.
pub fn run(a: &CompareJob) -> Result<Value> {
    crate::on_device!(a.device, |be| compare_on(be, a))
}

fn compare_on<B: Backend + Clone>(be: B, a: &CompareJob) -> Result<Value> {
    let t_all = Instant::now();
    let methods = parse_methods(&a.methods)?;
    let tasks = parse_eval_tasks(&a.eval_tasks)?;
    if a.seeds == 0 {
        bail!("--seeds must be at least 1");
    }
    let seeds: Vec<u64> = (0..a.seeds).map(|i| a.first_seed + i).collect();
    // Validate the budget once, before anything is loaded or trained.
    train_job(a, "lora", seeds[0], &a.out)?;
    super::set_threads(a.threads)?;
    let path = resolve_model(a.model.as_deref())?;
    let mut model = Model::load(&be, &path)?;
    let cfg = &model.weights.cfg;
    let eos = *cfg
        .eos_token_ids
        .first()
        .context("the model config names no EOS token")?;
    let (train_source, pairs) = training_pairs(a)?;
    let tok = tokenize(&model.tokenizer, &pairs, eos, a.max_len)?;
    eprintln!(
        "compare: {} on {train_source} ({} examples, {} longer than {} tokens skipped); seeds {seeds:?}; eval {}",
        methods.join(", "),
        tok.examples.len(),
        tok.too_long,
        a.max_len,
        tasks.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ")
    );
    // Every (method, seed) to run, in order; `base` has no seed and is evaluated once.
    let plan: Vec<(String, Option<u64>)> = methods
        .iter()
        .flat_map(|m| {
            if m == BASE {
                vec![(m.clone(), None)]
            } else {
                seeds.iter().map(|&s| (m.clone(), Some(s))).collect()
            }
        })
        .collect();
    let mut runs: Vec<Value> = Vec::new();
    let mut done: Vec<(String, f64)> = Vec::new();
    for (k, (method, seed)) in plan.iter().enumerate() {
        let t_run = Instant::now();
        let tag = format!(
            "[{}/{}] {method}{}",
            k + 1,
            plan.len(),
            seed.map_or(String::new(), |s| format!(" seed {s}"))
        );
        let Some(seed) = *seed else {
            let dir = a.out.join("runs").join(BASE);
            eprintln!("{tag}: evaluating the untrained model");
            let tr = empty_trainable(&be, &model, Method::CAUSAL_LM);
            let (m, metrics) = evaluate(&be, model, tr, &tasks, a.limit, &dir)?;
            model = m;
            runs.push(
                json!({"method": BASE, "seed": null, "final_loss": null, "train_s": 0.0,
                "eval_s": t_run.elapsed().as_secs_f64(), "metrics": metrics, "dir": dir}),
            );
            done.push((BASE.into(), t_run.elapsed().as_secs_f64()));
            progress_line(&tag, &done, &plan[k + 1..], t_all);
            continue;
        };
        let dir = a.out.join("runs").join(format!("{method}-seed{seed}"));
        let ta = train_job(a, method, seed, &dir)?;
        let (mut tr, meta) = init_state(&be, &model, &ta)?;
        let tc = TrainConfig {
            out: dir.clone(),
            steps: ta.steps,
            batch: ta.batch,
            accum: ta.accum,
            seed,
            save_every: ta.save_every,
            opt: opt_config(&ta),
            progress: true,
            base_model: path.display().to_string(),
        };
        eprintln!("{tag}: training {} steps", ta.steps);
        let t0 = Instant::now();
        let res = train(&be, &model, &mut tr, &meta, &tok.examples, &tc, None)?;
        let train_s = t0.elapsed().as_secs_f64();
        let final_loss = res.losses.last().map_or(f64::NAN, |l| l.1);
        eprintln!("{tag}: final loss {final_loss:.4} ({train_s:.0} s); evaluating");
        let t1 = Instant::now();
        let (m, metrics) = evaluate(&be, model, tr, &tasks, a.limit, &dir)?;
        model = m;
        runs.push(
            json!({"method": method, "seed": seed, "final_loss": num(final_loss),
            "train_s": train_s, "eval_s": t1.elapsed().as_secs_f64(), "metrics": metrics,
            "dir": dir}),
        );
        done.push((method.clone(), t_run.elapsed().as_secs_f64()));
        progress_line(&tag, &done, &plan[k + 1..], t_all);
    }
    let columns = columns(&runs, &tasks);
    let table = aggregate(&methods, &runs, &columns);
    let paired = paired_tests(&methods, &runs, &tasks, &columns)?;
    let report = json!({
        "date": now_utc(),
        "commit": git_commit(),
        "model": path.display().to_string(),
        "device": be.name(),
        "train": {
            "data": train_source, "examples": tok.examples.len(), "skipped_too_long": tok.too_long,
            "steps": a.steps, "lr": num32(a.lr), "batch": a.batch, "accum": a.accum, "rank": a.rank,
            "alpha": num32(a.alpha), "targets": a.targets, "theta_init": num32(a.theta_init),
            "max_len": a.max_len,
            "clip": num32(a.clip),
            "optimizer": "train's defaults (AdamW, linear schedule, warmup 0.1)",
        },
        "eval": {
            "tasks": tasks.iter().map(|t| json!({"task": t.name, "data": t.data})).collect::<Vec<_>>(),
            "limit": a.limit,
        },
        "methods": methods,
        "seeds": seeds,
        "columns": columns.iter().map(|c| json!({"task": c.task, "metric": c.metric, "label": c.label()})).collect::<Vec<_>>(),
        "table": table,
        "paired": paired,
        "runs": runs,
        "total_s": t_all.elapsed().as_secs_f64(),
    });
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let json_path = a.out.join("compare.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    let md_path = a.out.join("compare.md");
    std::fs::write(&md_path, markdown(&report))
        .with_context(|| format!("writing {}", md_path.display()))?;
    Ok(report)
}

/// One line after each run: its time, the elapsed total and the ETA of the runs left.
fn progress_line(tag: &str, done: &[(String, f64)], left: &[(String, Option<u64>)], t0: Instant) {
    let left: Vec<String> = left.iter().map(|r| r.0.clone()).collect();
    let eta = stats::eta(done, &left).map_or("unknown".into(), stats::human);
    eprintln!(
        "{tag}: done in {}; elapsed {}; {} run(s) left, ETA {eta}",
        stats::human(done.last().map_or(0.0, |d| d.1)),
        stats::human(t0.elapsed().as_secs_f64()),
        left.len()
    );
}

/// Paired tests over items of every later method against every earlier one (`b − a`), per task
/// on its primary metric and over all tasks' items together.
fn paired_tests(
    methods: &[String],
    runs: &[Value],
    tasks: &[EvalTask],
    columns: &[Column],
) -> Result<Vec<Value>> {
    // Per method and task: the per-item scores averaged over the method's runs.
    let per_item = |method: &str, task: &EvalTask| -> Result<Vec<f64>> {
        let metrics: Vec<String> = columns
            .iter()
            .filter(|c| c.task == task.name)
            .map(|c| c.metric.clone())
            .collect();
        let metric = primary(&metrics).context("a task without metrics")?;
        let file = format!("{}.jsonl", task.name.replace(':', "-"));
        let scores = runs
            .iter()
            .filter(|r| r["method"] == method)
            .map(|r| {
                let dir = PathBuf::from(r["dir"].as_str().unwrap_or_default());
                stats::item_scores(&dir.join("eval").join(&file), metric)
            })
            .collect::<Result<Vec<_>>>()?;
        stats::mean_over_runs(&scores)
    };
    let mut out = Vec::new();
    for (i, a) in methods.iter().enumerate() {
        for b in &methods[i + 1..] {
            let (mut all_a, mut all_b) = (Vec::new(), Vec::new());
            let mut per_task = serde_json::Map::new();
            for t in tasks {
                let (xa, xb) = (per_item(a, t)?, per_item(b, t)?);
                per_task.insert(t.name.clone(), stats::paired(&xa, &xb)?.to_json());
                all_a.extend(xa);
                all_b.extend(xb);
            }
            out.push(json!({"a": a, "b": b, "tasks": per_task,
                            "all": stats::paired(&all_a, &all_b)?.to_json()}));
        }
    }
    Ok(out)
}

/// A column of the table: one metric of one task.
struct Column {
    task: String,
    metric: String,
}

impl Column {
    fn label(&self) -> String {
        format!(
            "{} {}",
            self.task,
            self.metric.strip_suffix(",none").unwrap_or(&self.metric)
        )
    }
}

/// Every metric the tasks reported, in task order (a task's metrics are the same for every run).
fn columns(runs: &[Value], tasks: &[EvalTask]) -> Vec<Column> {
    let Some(first) = runs.first() else {
        return vec![];
    };
    tasks
        .iter()
        .flat_map(|t| {
            first["metrics"][&t.name]
                .as_object()
                .map(|o| o.keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default()
                .into_iter()
                .map(|metric| Column {
                    task: t.name.clone(),
                    metric,
                })
        })
        .collect()
}

/// Per method: each column's values over the seeds with mean and sample std, the average over the
/// tasks' primary metrics (per run, then over seeds), and the final training loss.
fn aggregate(methods: &[String], runs: &[Value], columns: &[Column]) -> Vec<Value> {
    let get = |r: &Value, c: &Column| {
        r["metrics"][&c.task][&c.metric]
            .as_f64()
            .unwrap_or(f64::NAN)
    };
    methods
        .iter()
        .map(|m| {
            let mine: Vec<&Value> = runs.iter().filter(|r| r["method"] == m.as_str()).collect();
            let cells: Vec<Value> = columns
                .iter()
                .map(|c| {
                    let vals: Vec<f64> = mine.iter().map(|r| get(r, c)).collect();
                    let mut s = stat(&vals);
                    s["label"] = json!(c.label());
                    s
                })
                .collect();
            let avg: Vec<f64> = mine
                .iter()
                .map(|r| {
                    let per_task: Vec<f64> = r["metrics"]
                        .as_object()
                        .into_iter()
                        .flat_map(|o| o.iter())
                        .filter_map(|(task, tm)| {
                            let names: Vec<String> = tm.as_object()?.keys().cloned().collect();
                            let p = primary(&names)?;
                            r["metrics"][task][p].as_f64()
                        })
                        .collect();
                    mean(&per_task)
                })
                .collect();
            let losses: Vec<f64> = mine
                .iter()
                .filter_map(|r| r["final_loss"].as_f64())
                .collect();
            json!({
                "method": m,
                "runs": mine.len(),
                "seeds": mine.iter().map(|r| r["seed"].clone()).collect::<Vec<_>>(),
                "cells": cells,
                "avg": stat(&avg),
                "final_loss": if losses.is_empty() { Value::Null } else { stat(&losses) },
            })
        })
        .collect()
}

/// `mean ± std` in percent (one decimal), as the paper prints accuracies; the mean alone when
/// there is a single run.
fn pct(s: &Value) -> String {
    match (s["mean"].as_f64(), s["std"].as_f64()) {
        (Some(m), Some(sd)) => format!("{:.1} ± {:.1}", 100.0 * m, 100.0 * sd),
        (Some(m), None) => format!("{:.1}", 100.0 * m),
        _ => "–".into(),
    }
}

fn loss_cell(s: &Value) -> String {
    match (s["mean"].as_f64(), s["std"].as_f64()) {
        (Some(m), Some(sd)) => format!("{m:.4} ± {sd:.4}"),
        (Some(m), None) => format!("{m:.4}"),
        _ => "–".into(),
    }
}

/// The report as markdown: a short header with the setup, then the table.
pub fn markdown(r: &Value) -> String {
    let mut s = String::new();
    let t = &r["train"];
    let _ = writeln!(
        s,
        "# compare: {}\n",
        r["methods"].as_array().map_or(String::new(), |m| {
            m.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" vs ")
        })
    );
    let _ = writeln!(
        s,
        "model `{}`, {}, commit `{}`, {}; total {:.0} s\n",
        r["model"].as_str().unwrap_or(""),
        r["device"].as_str().unwrap_or(""),
        r["commit"].as_str().unwrap_or(""),
        r["date"].as_str().unwrap_or(""),
        r["total_s"].as_f64().unwrap_or(f64::NAN)
    );
    let _ = writeln!(
        s,
        "train: {} ({} examples), {} steps, lr {}, batch {} × accum {}, rank {}, alpha {}, θ_init {}, max len {}; seeds {}",
        t["data"].as_str().unwrap_or(""),
        t["examples"],
        t["steps"],
        t["lr"],
        t["batch"],
        t["accum"],
        t["rank"],
        t["alpha"],
        t["theta_init"],
        t["max_len"],
        r["seeds"]
    );
    let _ = writeln!(
        s,
        "eval: {} (limit {}); cells are mean ± sample std over seeds, in %\n",
        r["eval"]["tasks"].as_array().map_or(String::new(), |ts| ts
            .iter()
            .filter_map(|t| t["task"].as_str())
            .collect::<Vec<_>>()
            .join(", ")),
        r["eval"]["limit"]
    );
    // The paper's Table 1 shape: one column per task (its primary metric; the others stay in
    // the JSON), methods as rows.
    let cols: Vec<(usize, String)> = r["columns"]
        .as_array()
        .map(|cs| {
            let metrics_of = |task: &Value| -> Vec<String> {
                cs.iter()
                    .filter(|c| c["task"] == *task)
                    .filter_map(|c| c["metric"].as_str().map(String::from))
                    .collect()
            };
            cs.iter()
                .enumerate()
                .filter(|(_, c)| {
                    primary(&metrics_of(&c["task"])).map(String::as_str) == c["metric"].as_str()
                })
                .filter_map(|(i, c)| c["label"].as_str().map(|l| (i, l.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let labels: Vec<&str> = cols.iter().map(|c| c.1.as_str()).collect();
    let _ = writeln!(
        s,
        "| method | runs | {} | avg | final loss |",
        labels.join(" | ")
    );
    let _ = writeln!(s, "|---|---|{}---|---|", "---|".repeat(labels.len()));
    for row in r["table"].as_array().into_iter().flatten() {
        let cells: Vec<String> = cols.iter().map(|c| pct(&row["cells"][c.0])).collect();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            row["method"].as_str().unwrap_or(""),
            row["runs"],
            cells.join(" | "),
            pct(&row["avg"]),
            loss_cell(&row["final_loss"])
        );
    }
    let paired = r["paired"].as_array().into_iter().flatten();
    let mut lines = Vec::new();
    for p in paired {
        let name = format!(
            "{} − {}",
            p["b"].as_str().unwrap_or(""),
            p["a"].as_str().unwrap_or("")
        );
        let tasks = p["tasks"].as_object().into_iter().flatten();
        for (task, t) in tasks.chain([(&"all tasks".to_string(), &p["all"])]) {
            lines.push(format!("| {name} | {task} | {}", paired_cells(t)));
        }
    }
    if !lines.is_empty() {
        let _ = writeln!(
            s,
            "\nPaired test over items (per item: the mean over seeds; normal approximation), in \
             percentage points. \"detectable\" is the difference this test finds with 80% power \
             at p < 0.05.\n"
        );
        let _ = writeln!(
            s,
            "| difference | task | items | Δ | 95% CI | p | detectable |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|");
        for l in lines {
            let _ = writeln!(s, "{l}");
        }
    }
    s
}

fn paired_cells(t: &Value) -> String {
    let f = |k: &str| t[k].as_f64().unwrap_or(f64::NAN);
    let ci = |i: usize| t["ci95"][i].as_f64().unwrap_or(f64::NAN);
    format!(
        "{} | {:+.1} | [{:+.1}, {:+.1}] | {} | {:.1} |",
        t["n_items"],
        100.0 * f("diff"),
        100.0 * ci(0),
        100.0 * ci(1),
        match f("p") {
            p if p < 1e-4 => "< 0.0001".to_string(),
            p => format!("{p:.4}"),
        },
        100.0 * f("mde80")
    )
}
