//! The evaluation tasks: one parser per data set turning a raw row (its Hugging Face fields) into a
//! prompt plus choices/gold or a generation target, with the paper's prompt templates byte for byte.

use anyhow::{anyhow, bail, Result};
use serde_json::Value;

/// A multiple-choice item: the context, the choice texts (each scored as `" " + choice`), the
/// gold index, and for MMLU the subject it is aggregated under.
#[derive(Clone, Debug, PartialEq)]
pub struct McItem {
    pub prompt: String,
    pub choices: Vec<String>,
    pub gold: usize,
    pub group: Option<String>,
}

/// A generation item: the prompt and the reference (GSM8K: the full rationale ending `#### N`).
#[derive(Clone, Debug, PartialEq)]
pub struct GenItem {
    pub prompt: String,
    pub target: String,
}

/// How a task is scored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Log-likelihood ranking; `norm` adds lm-eval's `acc_norm` (PIQA, ARC, CSQA define it).
    Mc { norm: bool },
    /// GSM8K's greedy generation with strict-match and flexible-extract exact match.
    Gsm8k,
    /// Greedy generation, exact match of the first line against a short answer.
    Exact,
}

/// The real data sets: (name, split read from a folder, scoring).
pub const REAL_TASKS: &[(&str, &str, Kind)] = &[
    ("piqa", "validation", Kind::Mc { norm: true }),
    ("arc", "test", Kind::Mc { norm: true }),
    ("csqa", "validation", Kind::Mc { norm: true }),
    ("siqa", "validation", Kind::Mc { norm: false }),
    ("mmlu", "test", Kind::Mc { norm: false }),
    ("gsm8k", "test", Kind::Gsm8k),
];

/// The shared `Question: …\n\nAnswer:` frame (training and eval use the same one).
pub fn question_prompt(body: &str) -> String {
    format!("Question: {body}\n\nAnswer:")
}

/// ARC/CSQA/PIQA shape: the choice texts one per line, without labels.
fn choices_prompt(question: &str, choices: &[String]) -> String {
    question_prompt(&format!("{question}\n\nChoices:\n{}", choices.join("\n")))
}

pub fn parse_mc(task: &str, v: &Value) -> Result<McItem> {
    let item = match task {
        "piqa" => {
            let choices = vec![s(v, "sol1")?, s(v, "sol2")?];
            McItem {
                prompt: choices_prompt(&s(v, "goal")?, &choices),
                gold: int(v, "label")?,
                choices,
                group: None,
            }
        }
        "arc" | "csqa" => {
            let c = v
                .get("choices")
                .ok_or_else(|| anyhow!("missing field `choices`"))?;
            let (texts, labels) = (strs(c, "text")?, strs(c, "label")?);
            if texts.len() != labels.len() || texts.is_empty() {
                bail!(
                    "`choices` has {} texts and {} labels",
                    texts.len(),
                    labels.len()
                );
            }
            // The gold index is the answer key's position among the labels, so "1".."4" and
            // "A".."E" keys both work (ARC mixes them).
            let key = s(v, "answerKey")?;
            let gold = labels
                .iter()
                .position(|l| *l == key)
                .ok_or_else(|| anyhow!("answerKey {key:?} is not one of the labels {labels:?}"))?;
            McItem {
                prompt: choices_prompt(&s(v, "question")?, &texts),
                choices: texts,
                gold,
                group: None,
            }
        }
        "siqa" => {
            let body = format!(
                "Given the context, answer correctly the question.\nContext: {}\nQuestion: {}\n\nChoices:\n(0) {}\n(1) {}\n(2) {}",
                s(v, "context")?,
                s(v, "question")?,
                s(v, "answerA")?,
                s(v, "answerB")?,
                s(v, "answerC")?
            );
            // The label is the string "1".."3"; the scored choices are the printed indices.
            let label = int(v, "label")?;
            if !(1..=3).contains(&label) {
                bail!("label {label} is not 1, 2 or 3");
            }
            McItem {
                prompt: question_prompt(&body),
                choices: idx_choices(3),
                gold: label - 1,
                group: None,
            }
        }
        "mmlu" => {
            let opts = strs(v, "choices")?;
            if opts.len() != 4 {
                bail!("`choices` has {} entries, expected 4", opts.len());
            }
            let mut body = s(v, "question")?.trim().to_string();
            for (i, c) in opts.iter().enumerate() {
                body.push_str(&format!("\n({i}). {c}"));
            }
            let group = Some(s(v, "subject")?);
            McItem {
                prompt: format!("Question: {body}\n\nAnswer:"),
                choices: idx_choices(4),
                gold: int(v, "answer")?,
                group,
            }
        }
        _ => bail!("{task} is not a multiple-choice task"),
    };
    if item.gold >= item.choices.len() {
        bail!(
            "gold index {} is out of range for {} choices",
            item.gold,
            item.choices.len()
        );
    }
    Ok(item)
}

pub fn parse_gsm8k(v: &Value) -> Result<GenItem> {
    Ok(GenItem {
        prompt: question_prompt(&s(v, "question")?),
        target: s(v, "answer")?,
    })
}

fn idx_choices(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("({i})")).collect()
}

fn s(v: &Value, f: &str) -> Result<String> {
    match v.get(f) {
        Some(Value::String(x)) => Ok(x.clone()),
        Some(other) => bail!("field `{f}` is not a string: {other}"),
        None => bail!("missing field `{f}`"),
    }
}

fn strs(v: &Value, f: &str) -> Result<Vec<String>> {
    let a = v.get(f).ok_or_else(|| anyhow!("missing field `{f}`"))?;
    let a = a
        .as_array()
        .ok_or_else(|| anyhow!("field `{f}` is not a list"))?;
    a.iter()
        .map(|x| {
            x.as_str()
                .map(String::from)
                .ok_or_else(|| anyhow!("field `{f}` has a non-string entry {x}"))
        })
        .collect()
}

/// A non-negative integer given as a JSON number or a numeric string (SIQA's labels are strings).
fn int(v: &Value, f: &str) -> Result<usize> {
    let bad = || anyhow!("field `{f}` is not a non-negative integer: {}", v[f]);
    match v.get(f) {
        Some(Value::Number(n)) => n.as_u64().map(|n| n as usize).ok_or_else(bad),
        Some(Value::String(x)) => x.trim().parse().map_err(|_| bad()),
        Some(_) => Err(bad()),
        None => bail!("missing field `{f}`"),
    }
}
