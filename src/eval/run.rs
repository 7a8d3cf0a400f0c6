//! The evaluation loops: scoring multiple-choice items and generating for GSM8K-style and
//! exact-match items, with per-item metrics, the per-example log and the summary.

use super::gsm8k;
use super::report::{group_json, Log, Metrics};
use super::tasks::{GenItem, Kind, McItem};
use super::{EvalOptions, Items, LmScorer, Loaded};
use anyhow::{bail, Result};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

pub(crate) fn evaluate(opts: &EvalOptions, l: &Loaded, scorer: &mut dyn LmScorer) -> Result<Value> {
    let task = opts.task.as_str();
    let mut log = Log::create(opts.log.as_deref())?;
    let mut results = Map::new();
    let mut n_samples = Map::new();
    match (&l.items, l.kind) {
        (Items::Mc(items), Kind::Mc { norm }) => {
            let groups = score_mc(task, items, norm, scorer, &mut log)?;
            let n: usize = groups.values().map(Metrics::n).sum();
            if let Some(whole) = groups.get(&None).filter(|_| groups.len() == 1) {
                results.insert(task.into(), whole.to_json(task));
            } else {
                // MMLU: the group entry first, then one `mmlu_<subject>` entry per subject.
                let subs: Vec<&Metrics> = groups.values().collect();
                results.insert(task.into(), group_json(&subs, task));
                for (g, m) in &groups {
                    let name = format!("{task}_{}", g.as_deref().unwrap_or("unknown"));
                    results.insert(name.clone(), m.to_json(&format!(" - {name}")));
                    n_samples.insert(name, json!({"original": m.n(), "effective": m.n()}));
                }
            }
            n_samples.insert(task.into(), json!({"original": l.original, "effective": n}));
        }
        (Items::Gen(items), Kind::Gsm8k | Kind::Exact) => {
            let m = generate(task, items, l.kind, scorer, &mut log)?;
            results.insert(task.into(), m.to_json(task));
            n_samples.insert(
                task.into(),
                json!({"original": l.original, "effective": m.n()}),
            );
        }
        _ => bail!("internal: task {task} loaded items of the wrong kind"),
    }
    log.finish()?;
    Ok(json!({"results": results, "n-samples": n_samples}))
}

/// Index of the largest value; the first one on ties, as `np.argmax`.
pub fn argmax(xs: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best
}

/// lm-eval's `acc` and `acc_norm` predictions. `acc_norm` divides each summed log-likelihood by
/// the character length of the choice text as `doc_to_choice` returns it, i.e. WITHOUT the
/// leading target delimiter " " (task.py: `completion_len = [float(len(i)) for i in choices]`);
/// Python's `len` counts code points, hence `chars()`.
pub fn predictions(choices: &[String], logprobs: &[f64]) -> (usize, usize) {
    let normed: Vec<f64> = choices
        .iter()
        .zip(logprobs)
        .map(|(c, lp)| lp / c.chars().count() as f64)
        .collect();
    (argmax(logprobs), argmax(&normed))
}

/// Scores every item, keeping per-group metrics (one `None` group except for MMLU subjects).
fn score_mc(
    task: &str,
    items: &[McItem],
    norm: bool,
    scorer: &mut dyn LmScorer,
    log: &mut Log,
) -> Result<BTreeMap<Option<String>, Metrics>> {
    let mut groups: BTreeMap<Option<String>, Metrics> = BTreeMap::new();
    let bar = progress(items.len(), task);
    for (doc_id, it) in items.iter().enumerate() {
        let conts: Vec<String> = it.choices.iter().map(|c| format!(" {c}")).collect();
        let scores = scorer.score_choices(&it.prompt, &conts)?;
        if scores.len() != conts.len() {
            bail!(
                "scorer returned {} scores for {} choices (item {doc_id})",
                scores.len(),
                conts.len()
            );
        }
        let lps: Vec<f64> = scores.iter().map(|s| s.logprob).collect();
        let (pred, pred_norm) = predictions(&it.choices, &lps);
        let acc = f64::from(u8::from(pred == it.gold));
        let acc_norm = f64::from(u8::from(pred_norm == it.gold));
        let m = groups.entry(it.group.clone()).or_default();
        m.push("acc,none", acc);
        let mut rec = json!({
            "doc_id": doc_id, "task": task, "group": it.group, "prompt": it.prompt,
            "choices": it.choices, "gold": it.gold,
            "scores": scores.iter().map(|s| json!({"logprob": s.logprob, "greedy": s.greedy, "n_tokens": s.n_tokens})).collect::<Vec<_>>(),
            "prediction": pred, "acc": acc,
        });
        if norm {
            m.push("acc_norm,none", acc_norm);
            rec["prediction_norm"] = json!(pred_norm);
            rec["acc_norm"] = json!(acc_norm);
        }
        log.write(&rec)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(groups)
}

/// Stop strings for every generation task: GSM8K's list (the scorer adds the tokenizer's EOS).
fn stops() -> Vec<String> {
    gsm8k::STOPS.iter().map(|s| s.to_string()).collect()
}

/// Short answers (synthetic exact-match families) need few tokens.
const EXACT_MAX_NEW: usize = 48;

fn generate(
    task: &str,
    items: &[GenItem],
    kind: Kind,
    scorer: &mut dyn LmScorer,
    log: &mut Log,
) -> Result<Metrics> {
    let mut m = Metrics::default();
    let stops = stops();
    let max_new = if kind == Kind::Gsm8k {
        gsm8k::MAX_NEW
    } else {
        EXACT_MAX_NEW
    };
    let bar = progress(items.len(), task);
    for (doc_id, it) in items.iter().enumerate() {
        let raw = scorer.generate_until(&it.prompt, max_new, &stops)?;
        let generation = gsm8k::cut_at_stops(&raw, &stops);
        let mut rec = json!({"doc_id": doc_id, "task": task, "prompt": it.prompt, "generation": generation, "gold": it.target});
        if kind == Kind::Gsm8k {
            let (strict, flexible) = (
                gsm8k::strict_match(&generation),
                gsm8k::flexible_extract(&generation),
            );
            let (em_s, em_f) = (
                gsm8k::exact_match(&strict, &it.target),
                gsm8k::exact_match(&flexible, &it.target),
            );
            m.push("exact_match,strict-match", em_s);
            m.push("exact_match,flexible-extract", em_f);
            rec["prediction"] = json!({"strict-match": strict, "flexible-extract": flexible});
            rec["exact_match"] = json!({"strict-match": em_s, "flexible-extract": em_f});
        } else {
            let pred = first_line(&generation);
            let em = f64::from(u8::from(simple_norm(&pred) == simple_norm(&it.target)));
            m.push("exact_match,none", em);
            rec["prediction"] = json!(pred);
            rec["exact_match"] = json!(em);
        }
        log.write(&rec)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(m)
}

/// The answer of a one-line response: the first non-empty line, trimmed.
pub fn first_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .to_string()
}

/// Exact match up to case, surrounding space and one trailing full stop.
pub fn simple_norm(s: &str) -> String {
    let t = s.trim();
    t.strip_suffix('.').unwrap_or(t).trim().to_lowercase()
}

/// A progress bar on stderr; indicatif draws nothing when stderr is not a terminal.
fn progress(n: usize, task: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(n as u64);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} [{elapsed} < {eta}]")
    {
        bar.set_style(style);
    }
    bar.set_message(task.to_string());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acc_norm_divides_by_choice_chars_without_the_space() {
        // -6 over "abc" (3) = -2 beats -5 over "a" (1) = -5, while acc prefers the -5.
        let choices = vec!["a".to_string(), "abc".to_string()];
        assert_eq!(predictions(&choices, &[-5.0, -6.0]), (0, 1));
        // Code points, not bytes: "é" is one character.
        let choices = vec!["éé".to_string(), "abc".to_string()];
        assert_eq!(predictions(&choices, &[-4.0, -4.5]), (0, 1)); // bytes would give (0, 0)
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1);
    }

    #[test]
    fn exact_match_helpers() {
        assert_eq!(first_line("\n  sun, cat, red \nmore"), "sun, cat, red");
        assert_eq!(simple_norm(" Sun, cat. "), "sun, cat");
    }
}
