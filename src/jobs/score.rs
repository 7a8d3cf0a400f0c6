//! The scoring job: lm-evaluation-harness log-likelihood requests, each distinct context
//! prefilled once.

use super::generate::ModelSpec;
use crate::backend::Backend;
use crate::bitune::engine::Engine;
use anyhow::{anyhow, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// Reads `{"context": …, "continuation": …}` requests, one per line of a JSONL file.
pub fn read_requests(path: &Path) -> Result<Vec<(String, String)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), i + 1);
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}: malformed JSON", at()))?;
        let get = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_str())
                .map(String::from)
                .ok_or_else(|| anyhow!("{}: missing string field `{k}`", at()))
        };
        out.push((get("context")?, get("continuation")?));
    }
    if out.is_empty() {
        anyhow::bail!("{}: no requests", path.display());
    }
    Ok(out)
}

/// lm-eval's split: trailing spaces of the context move to the continuation; the continuation's
/// tokens are those of `context+continuation` beyond the context's own tokenization.
pub fn split_tokens<B: Backend>(
    e: &Engine<B>,
    context: &str,
    continuation: &str,
) -> Result<(Vec<u32>, Vec<u32>)> {
    let trimmed = context.trim_end_matches(' ');
    let moved = &context[trimmed.len()..];
    let cont = format!("{moved}{continuation}");
    let whole = e.model.encode(&format!("{trimmed}{cont}"), true)?;
    let ctx = e.model.encode(trimmed, true)?;
    if ctx.is_empty() {
        anyhow::bail!("empty context {context:?}: nothing to condition on");
    }
    let n = ctx.len().min(whole.len());
    let cont_ids = whole[n..].to_vec();
    if cont_ids.is_empty() {
        anyhow::bail!("continuation {continuation:?} adds no tokens after its context");
    }
    Ok((whole[..n].to_vec(), cont_ids))
}

/// One request's result: the continuation's tokens, their log-probabilities, and whether
/// greedy decoding would have produced them all.
pub struct Scored {
    pub tokens: Vec<u32>,
    pub logprobs: Vec<f64>,
    pub greedy: bool,
}

/// Scores requests, grouping those with the same context into one prefill.
pub fn score_all<B: Backend>(e: &Engine<B>, reqs: &[(String, String)]) -> Result<Vec<Scored>> {
    let mut groups: BTreeMap<Vec<u32>, Vec<(usize, Vec<u32>)>> = BTreeMap::new();
    for (i, (c, x)) in reqs.iter().enumerate() {
        let (ctx, cont) = split_tokens(e, c, x).with_context(|| format!("request {}", i + 1))?;
        groups.entry(ctx).or_default().push((i, cont));
    }
    let mut out: Vec<Option<Scored>> = (0..reqs.len()).map(|_| None).collect();
    for (ctx, items) in groups {
        let conts: Vec<Vec<u32>> = items.iter().map(|(_, c)| c.clone()).collect();
        let res = e.score(&ctx, &conts)?;
        for ((i, cont), (lp, greedy)) in items.into_iter().zip(res) {
            out[i] = Some(Scored {
                tokens: cont,
                logprobs: lp,
                greedy,
            });
        }
    }
    Ok(out
        .into_iter()
        .map(|s| s.expect("every request scored"))
        .collect())
}

/// Scoring requests: the model and the (context, continuation) pairs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScoreJob {
    /// The model to score with.
    pub model: ModelSpec,
    /// (context, continuation) pairs, in the order the results come back.
    pub requests: Vec<(String, String)>,
}

/// Scores every request of the job, in order.
pub fn run(job: &ScoreJob) -> Result<Vec<Scored>> {
    crate::on_device!(job.model.device, |be| score_all(
        &job.model.engine(be)?,
        &job.requests
    ))
}
