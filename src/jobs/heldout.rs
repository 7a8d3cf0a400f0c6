//! `train`'s before/after report: accuracy per family of the bundled synthetic suite on its
//! held-out (test) split, for the base model ("before") and the trained adapter ("after"), plus a
//! few held-out questions with their gold answers and both models' answers.
//!
//! The items are the ones `bitune-rt eval --task synthetic:FAMILY --limit N` scores, with the
//! same metrics (log-likelihood ranking for `mc`/`lookup`; strict `#### N` match for `arith`;
//! first-line exact match for `reverse`). Generation is capped at [`MAX_NEW`] tokens rather than
//! GSM8K's 256: the suite's answers are under 40 tokens, and a rambling base model would otherwise
//! spend most of the few minutes `train` is meant to take.

use crate::data::synth::{synth, Split, SynthExample, FAMILIES};
use crate::eval::gsm8k;
use crate::eval::run::{first_line, predictions, simple_norm};
use crate::eval::synthetic::EVAL_SEED;
use crate::eval::tasks::question_prompt;
use crate::eval::LmScorer;
use anyhow::{Context, Result};
use serde_json::{json, Value};

/// Generation cap for the generation families and the sample answers.
pub const MAX_NEW: usize = 48;

/// One family's score: items right out of items asked.
#[derive(Clone, Debug, PartialEq)]
pub struct FamilyScore {
    pub family: String,
    pub metric: &'static str,
    pub correct: usize,
    pub n: usize,
}

impl FamilyScore {
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.n.max(1) as f64
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub families: Vec<FamilyScore>,
    /// The model's answer to each sample question as printed: its first line, quoted, and
    /// when that is empty, what the model wrote instead (an empty answer alone reads as broken).
    pub answers: Vec<String>,
}

impl Report {
    /// The mean of the families' accuracies (each family weighs the same).
    pub fn mean(&self) -> f64 {
        self.families.iter().map(FamilyScore::accuracy).sum::<f64>()
            / self.families.len().max(1) as f64
    }
}

/// The held-out items of `family` that the report scores.
pub fn items(family: &str, n: usize) -> Result<Vec<SynthExample>> {
    synth(family, n, EVAL_SEED, Split::Test)
}

/// The sample questions: the first held-out item of `lookup`, `mc` and `arith`.
pub fn samples() -> Result<Vec<SynthExample>> {
    ["lookup", "mc", "arith"]
        .iter()
        .map(|f| {
            items(f, 1)?
                .pop()
                .with_context(|| format!("no held-out {f} item"))
        })
        .collect()
}

fn stops() -> Vec<String> {
    gsm8k::STOPS.iter().map(|s| s.to_string()).collect()
}

/// Whether the model gets one item right, by its family's metric.
fn correct(family: &str, ex: &SynthExample, scorer: &mut dyn LmScorer) -> Result<bool> {
    let prompt = question_prompt(&ex.instruction);
    match (&ex.choices, ex.gold) {
        (Some(choices), Some(gold)) => {
            let conts: Vec<String> = choices.iter().map(|c| format!(" {c}")).collect();
            let lps: Vec<f64> = scorer
                .score_choices(&prompt, &conts)?
                .iter()
                .map(|s| s.logprob)
                .collect();
            Ok(predictions(choices, &lps).0 == gold)
        }
        _ => {
            let stops = stops();
            let raw = scorer.generate_until(&prompt, MAX_NEW, &stops)?;
            let text = gsm8k::cut_at_stops(&raw, &stops);
            Ok(if family == "arith" {
                let want = ex.answer.clone().unwrap_or_default();
                gsm8k::exact_match(&gsm8k::strict_match(&text), &want) > 0.5
            } else {
                let want = ex.answer.as_deref().unwrap_or(&ex.response);
                simple_norm(&first_line(&text)) == simple_norm(want)
            })
        }
    }
}

/// Scores `n` held-out items of every family and answers the sample questions.
pub fn evaluate(scorer: &mut dyn LmScorer, n: usize, label: &str) -> Result<Report> {
    let bar = indicatif::ProgressBar::new((n * FAMILIES.len()) as u64);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} [{elapsed} < {eta}]")
    {
        bar.set_style(style);
    }
    bar.set_message(format!("held-out eval ({label})"));
    let mut families = Vec::new();
    for &family in FAMILIES {
        let mut right = 0;
        for ex in items(family, n)? {
            right += usize::from(correct(family, &ex, scorer)?);
            bar.inc(1);
        }
        families.push(FamilyScore {
            family: family.to_string(),
            metric: match family {
                "mc" | "lookup" => "acc",
                "arith" => "#### N match",
                _ => "exact match",
            },
            correct: right,
            n,
        });
    }
    bar.finish_and_clear();
    let stops = stops();
    let answers = samples()?
        .iter()
        .map(|ex| {
            let raw = scorer.generate_until(&question_prompt(&ex.instruction), MAX_NEW, &stops)?;
            Ok(shown(&raw, &first_line(&gsm8k::cut_at_stops(&raw, &stops))))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Report { families, answers })
}

/// An answer as the table prints it.
pub(crate) fn shown(raw: &str, answer: &str) -> String {
    if !answer.is_empty() {
        return format!("{answer:?}");
    }
    let head: String = raw.chars().take(40).collect();
    if head.trim().is_empty() {
        "\"\" (it ended the answer at once)".into()
    } else {
        format!("\"\" (it went on with {head:?}, cut at a stop string)")
    }
}

/// The report as JSON (the run folder's `eval.json`).
pub fn to_json(before: &Report, after: &Report, n: usize) -> Value {
    let fam = |r: &Report| {
        r.families
            .iter()
            .map(|f| {
                json!({"family": f.family, "metric": f.metric, "correct": f.correct, "n": f.n,
                       "accuracy": f.accuracy()})
            })
            .collect::<Vec<_>>()
    };
    json!({
        "split": "synthetic suite, test split",
        "seed": EVAL_SEED,
        "items_per_family": n,
        "before": {"model": "base (no adapter)", "families": fam(before), "mean": before.mean(),
                   "sample_answers": before.answers},
        "after": {"model": "trained adapter", "families": fam(after), "mean": after.mean(),
                  "sample_answers": after.answers},
    })
}
