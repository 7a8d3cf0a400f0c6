//! Zero-shot evaluation with the paper's protocol: PIQA, ARC-Challenge, CSQA, SIQA and
//! MMLU by log-likelihood ranking, GSM8K by greedy generation, plus the synthetic suite.
//!
//! The harness never sees the model: it talks to an [`LmScorer`], which the Bitune engine
//! implements (prefilling each context once through both prompt passes and the mix). Integration
//! point for real-model tests: implement `LmScorer` for the engine and call [`run_eval`];
//! [`scripted::ScriptedScorer`] stands in for the model in the harness's own tests.

pub mod gsm8k;
pub mod report;
pub mod run;
pub mod scripted;
pub mod source;
pub mod synthetic;
pub mod tasks;

use anyhow::{bail, Result};
use serde_json::{json, Value};
use std::path::PathBuf;
use tasks::{GenItem, Kind, McItem};

/// The log-likelihood of one continuation given its context.
#[derive(Clone, Debug, PartialEq)]
pub struct ChoiceScore {
    /// Sum of the continuation tokens' log-probabilities (natural log).
    pub logprob: f64,
    /// Whether every continuation token was the argmax (lm-eval's `is_greedy`; logged only).
    pub greedy: bool,
    pub n_tokens: usize,
}

pub trait LmScorer {
    /// Scores every continuation on the shared context (lm-evaluation-harness tokenization: encode
    /// context+continuation and context, continuation tokens = whole[len(context_enc)..]). The
    /// implementation prefills the context once (with Bitune: both prompt passes and the mix).
    fn score_choices(
        &mut self,
        context: &str,
        continuations: &[String],
    ) -> Result<Vec<ChoiceScore>>;
    /// Greedy generation of at most `max_new` tokens, stopping at EOS or when any stop string
    /// appears (text after it cut).
    fn generate_until(&mut self, prompt: &str, max_new: usize, stops: &[String]) -> Result<String>;
}

#[derive(Clone, Debug, Default)]
pub struct EvalOptions {
    /// `piqa`, `arc`, `csqa`, `siqa`, `mmlu`, `gsm8k` or `synthetic:<family>`.
    pub task: String,
    /// The data set on disk (required for the real tasks; the synthetic ones generate their test
    /// split when it is absent).
    pub data: Option<PathBuf>,
    /// Evaluate only the first N items (for MMLU: of each subject, as lm-eval's `--limit`).
    pub limit: Option<usize>,
    /// Where to write the summary JSON (it is also returned).
    pub out: Option<PathBuf>,
    /// Per-example JSONL log.
    pub log: Option<PathBuf>,
    /// Skip rows that cannot be parsed (counted in the summary) instead of failing on the first.
    pub skip_bad_rows: bool,
}

/// Every accepted task name, for `--task` help and the unknown-task error.
pub fn known_tasks() -> Vec<String> {
    let real = tasks::REAL_TASKS.iter().map(|t| t.0.to_string());
    real.chain(
        crate::data::synth::FAMILIES
            .iter()
            .map(|f| format!("synthetic:{f}")),
    )
    .collect()
}

/// A task's loaded items: multiple choice or generation.
pub(crate) enum Items {
    Mc(Vec<McItem>),
    Gen(Vec<GenItem>),
}

/// What loading found: the items (after `limit`), how many there were before it, and the rows
/// skipped with their reasons.
pub(crate) struct Loaded {
    pub kind: Kind,
    pub items: Items,
    pub original: usize,
    pub skipped: Vec<String>,
}

pub fn run_eval(opts: &EvalOptions, scorer: &mut dyn LmScorer) -> Result<Value> {
    let loaded = load(opts)?;
    let mut summary = run::evaluate(opts, &loaded, scorer)?;
    summary["config"] = json!({
        "model": "bitune-rt",
        "task": opts.task,
        "data": opts.data.as_ref().map(|p| p.display().to_string()),
        "limit": opts.limit,
        "num_fewshot": 0,
        "batch_size": 1,
        "skip_bad_rows": opts.skip_bad_rows,
    });
    summary["skipped_rows"] = json!({
        "count": loaded.skipped.len(),
        "first": loaded.skipped.iter().take(20).collect::<Vec<_>>(),
    });
    if let Some(p) = &opts.out {
        let text = serde_json::to_string_pretty(&summary)?;
        std::fs::write(p, text + "\n")
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", p.display()))?;
    }
    Ok(summary)
}

fn load(opts: &EvalOptions) -> Result<Loaded> {
    if let Some(family) = opts.task.strip_prefix("synthetic:") {
        return synthetic::load(family, opts);
    }
    let Some(&(name, split, kind)) = tasks::REAL_TASKS.iter().find(|t| t.0 == opts.task) else {
        bail!(
            "unknown task {:?}; known tasks: {}",
            opts.task,
            known_tasks().join(", ")
        );
    };
    let Some(path) = &opts.data else {
        bail!("task {name} needs --data PATH (its Hugging Face {split} split as .jsonl/.parquet, or a folder of them)");
    };
    let rows = source::read_rows(path, split)?;
    let mut skipped = Vec::new();
    let (original, items) = if kind == Kind::Gsm8k {
        let v = parse_all(&rows, tasks::parse_gsm8k, opts.skip_bad_rows, &mut skipped)?;
        (v.len(), Items::Gen(take(v, opts.limit)))
    } else {
        let v = parse_all(
            &rows,
            |v| tasks::parse_mc(name, v),
            opts.skip_bad_rows,
            &mut skipped,
        )?;
        (v.len(), Items::Mc(limit_mc(v, opts.limit)))
    };
    Ok(Loaded {
        kind,
        items,
        original,
        skipped,
    })
}

/// Parses every row; a bad row is an error naming its file and row number, or with `skip` a
/// recorded reason and no item.
pub(crate) fn parse_all<T>(
    rows: &[source::Row],
    parse: impl Fn(&Value) -> Result<T>,
    skip: bool,
    skipped: &mut Vec<String>,
) -> Result<Vec<T>> {
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let item = match &r.value {
            Ok(v) => parse(v),
            Err(e) => Err(anyhow::anyhow!("{e}")),
        };
        match item {
            Ok(x) => out.push(x),
            Err(e) if skip => skipped.push(format!("{}: {e}", r.at())),
            Err(e) => bail!("{}: {e}", r.at()),
        }
    }
    Ok(out)
}

pub(crate) fn take<T>(mut v: Vec<T>, limit: Option<usize>) -> Vec<T> {
    if let Some(n) = limit {
        v.truncate(n);
    }
    v
}

/// `limit` counts per group (MMLU subject), as lm-eval applies it to each subtask.
pub(crate) fn limit_mc(items: Vec<McItem>, limit: Option<usize>) -> Vec<McItem> {
    let Some(n) = limit else { return items };
    let mut seen: std::collections::HashMap<Option<String>, usize> = Default::default();
    items
        .into_iter()
        .filter(|it| {
            let c = seen.entry(it.group.clone()).or_default();
            *c += 1;
            *c <= n
        })
        .collect()
}
