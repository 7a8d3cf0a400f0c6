//! `synthetic:<family>` tasks: the suite of `data::synth`, read from a JSONL file written by
//! `bitune-rt data synth` or, without `--data`, generated (test split, fixed seed).
//!
//! * `mc`, `lookup`: multiple choice, scored like ARC (`acc` and `acc_norm`); for `lookup` the
//!   candidates are the attribute values listed in the prompt.
//! * `arith`: generation scored like GSM8K (strict-match and flexible-extract on `#### N`).
//! * `reverse`: generation, exact match of the first line against the reversed list.

use super::tasks::{question_prompt, GenItem, Kind, McItem};
use super::{limit_mc, parse_all, source, take, EvalOptions, Items, Loaded};
use crate::data::synth::{synth, Split, SynthExample, FAMILIES};
use anyhow::{anyhow, bail, Result};
use serde_json::Value;

/// Seed of the generated test split, so results are comparable across runs.
pub const EVAL_SEED: u64 = 1234;
/// Items generated when neither `--data` nor `--limit` is given.
pub const DEFAULT_N: usize = 200;

pub(crate) fn load(family: &str, opts: &EvalOptions) -> Result<Loaded> {
    if !FAMILIES.contains(&family) {
        bail!(
            "unknown task {:?}; known tasks: {}",
            opts.task,
            super::known_tasks().join(", ")
        );
    }
    let mut skipped = Vec::new();
    let examples = match &opts.data {
        Some(p) => {
            let rows = source::read_rows(p, "test")?;
            parse_all(
                &rows,
                |v| parse_row(family, v),
                opts.skip_bad_rows,
                &mut skipped,
            )?
        }
        None => synth(
            family,
            opts.limit.unwrap_or(DEFAULT_N),
            EVAL_SEED,
            Split::Test,
        )?,
    };
    let original = examples.len();
    let (kind, items) = match family {
        "mc" | "lookup" => {
            let items = examples.iter().map(to_mc).collect::<Result<Vec<_>>>()?;
            (
                Kind::Mc { norm: true },
                Items::Mc(limit_mc(items, opts.limit)),
            )
        }
        "arith" => (
            Kind::Gsm8k,
            Items::Gen(take(
                examples.iter().map(|e| gen(e, &e.response)).collect(),
                opts.limit,
            )),
        ),
        _ => {
            let items = examples
                .iter()
                .map(|e| gen(e, e.answer.as_deref().unwrap_or(&e.response)))
                .collect();
            (Kind::Exact, Items::Gen(take(items, opts.limit)))
        }
    };
    Ok(Loaded {
        kind,
        items,
        original,
        skipped,
    })
}

/// A JSONL row of the suite, checked for the fields its family is scored with.
fn parse_row(family: &str, v: &Value) -> Result<SynthExample> {
    let e: SynthExample =
        serde_json::from_value(v.clone()).map_err(|e| anyhow!("not a synthetic example: {e}"))?;
    match family {
        "mc" | "lookup" => {
            to_mc(&e)?;
        }
        "arith" if !e.response.contains("#### ") => bail!("`response` has no `#### N` answer"),
        _ => {}
    }
    Ok(e)
}

fn to_mc(e: &SynthExample) -> Result<McItem> {
    let choices = e
        .choices
        .clone()
        .ok_or_else(|| anyhow!("missing field `choices`"))?;
    let gold = e.gold.ok_or_else(|| anyhow!("missing field `gold`"))?;
    if gold >= choices.len() {
        bail!(
            "gold index {gold} is out of range for {} choices",
            choices.len()
        );
    }
    Ok(McItem {
        prompt: question_prompt(&e.instruction),
        choices,
        gold,
        group: None,
    })
}

fn gen(e: &SynthExample, target: &str) -> GenItem {
    GenItem {
        prompt: question_prompt(&e.instruction),
        target: target.to_string(),
    }
}
