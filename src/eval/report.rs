//! Aggregation in lm-evaluation-harness's shape: per-item metrics → mean and `mean_stderr`,
//! size-weighted groups (MMLU), and the per-example JSONL log.

use anyhow::{Context, Result};
use serde_json::{json, Map, Value};
use std::io::Write;
use std::path::Path;

/// lm-eval's `mean_stderr`: sample standard deviation (n-1) over sqrt(n); undefined below 2
/// items, where lm-eval prints "N/A" and we write `null`.
pub fn mean_stderr(xs: &[f64]) -> Option<f64> {
    let n = xs.len();
    if n < 2 {
        return None;
    }
    let m = mean(xs);
    let var = xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1) as f64;
    Some((var / n as f64).sqrt())
}

pub fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// Per-item values of each metric of one task (or subtask), in insertion order.
#[derive(Default)]
pub struct Metrics {
    pub names: Vec<String>,
    pub values: Vec<Vec<f64>>,
}

impl Metrics {
    /// Adds one item's value for `name` (`"acc,none"`, `"exact_match,strict-match"`, ...).
    pub fn push(&mut self, name: &str, v: f64) {
        match self.names.iter().position(|n| n == name) {
            Some(i) => self.values[i].push(v),
            None => {
                self.names.push(name.to_string());
                self.values.push(vec![v]);
            }
        }
    }

    pub fn n(&self) -> usize {
        self.values.first().map_or(0, Vec::len)
    }

    /// `{"acc,none": mean, "acc_stderr,none": stderr, ..., "alias": alias}`.
    pub fn to_json(&self, alias: &str) -> Value {
        let mut m = Map::new();
        for (name, vs) in self.names.iter().zip(&self.values) {
            m.insert(name.clone(), num(mean(vs)));
            m.insert(stderr_key(name), mean_stderr(vs).map_or(Value::Null, num));
        }
        m.insert("alias".into(), json!(alias));
        Value::Object(m)
    }
}

/// `acc,none` → `acc_stderr,none`.
pub fn stderr_key(metric: &str) -> String {
    match metric.split_once(',') {
        Some((m, f)) => format!("{m}_stderr,{f}"),
        None => format!("{metric}_stderr"),
    }
}

fn num(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// A group's score as lm-eval 0.4.1 reports MMLU (`weight_by_size=True`): subtask means weighted
/// by subtask size, and the pooled stderr of `lm_eval.api.metrics.pooled_sample_stderr`
/// (null when any subtask's stderr is undefined, as lm-eval's "N/A").
pub fn group_json(subtasks: &[&Metrics], alias: &str) -> Value {
    let mut m = Map::new();
    let Some(first) = subtasks.first() else {
        m.insert("alias".into(), json!(alias));
        return Value::Object(m);
    };
    for (k, name) in first.names.iter().enumerate() {
        let sizes: Vec<f64> = subtasks.iter().map(|t| t.values[k].len() as f64).collect();
        let total: f64 = sizes.iter().sum();
        let means: Vec<f64> = subtasks.iter().map(|t| mean(&t.values[k])).collect();
        let weighted = means.iter().zip(&sizes).map(|(a, s)| a * s).sum::<f64>() / total;
        let stderrs: Option<Vec<f64>> =
            subtasks.iter().map(|t| mean_stderr(&t.values[k])).collect();
        let pooled = stderrs.and_then(|se| {
            let dof = total - sizes.len() as f64;
            let var = se
                .iter()
                .zip(&sizes)
                .map(|(e, s)| (s - 1.0) * e * e * s)
                .sum::<f64>()
                / dof;
            (dof > 0.0).then(|| (var / total).sqrt())
        });
        m.insert(name.clone(), num(weighted));
        m.insert(stderr_key(name), pooled.map_or(Value::Null, num));
    }
    m.insert("alias".into(), json!(alias));
    Value::Object(m)
}

/// Per-example JSONL log; a no-op when no path was given.
pub struct Log(Option<std::io::BufWriter<std::fs::File>>);

impl Log {
    pub fn create(path: Option<&Path>) -> Result<Self> {
        let w = match path {
            Some(p) => {
                let f = std::fs::File::create(p)
                    .with_context(|| format!("cannot create log {}", p.display()))?;
                Some(std::io::BufWriter::new(f))
            }
            None => None,
        };
        Ok(Log(w))
    }

    pub fn write(&mut self, v: &Value) -> Result<()> {
        if let Some(w) = &mut self.0 {
            serde_json::to_writer(&mut *w, v)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    }

    pub fn finish(mut self) -> Result<()> {
        if let Some(w) = &mut self.0 {
            w.flush()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_is_sample_std_over_sqrt_n() {
        // [1,0,1,1]: mean .75, sample var = (3·.0625 + .5625)/3 = .25, stderr = sqrt(.25/4) = .25
        assert!((mean_stderr(&[1.0, 0.0, 1.0, 1.0]).unwrap() - 0.25).abs() < 1e-12);
        assert_eq!(mean_stderr(&[1.0]), None);
    }

    #[test]
    fn group_pooled_stderr_matches_lm_eval_formula() {
        let mut a = Metrics::default();
        let mut b = Metrics::default();
        for v in [1.0, 0.0, 1.0, 1.0] {
            a.push("acc,none", v);
        }
        for v in [0.0, 1.0] {
            b.push("acc,none", v);
        }
        let g = group_json(&[&a, &b], "mmlu");
        assert!((g["acc,none"].as_f64().unwrap() - 4.0 / 6.0).abs() < 1e-12);
        // se_a² = .25²=.0625, se_b² = .5/2=.25: ((3·.0625·4)+(1·.25·2))/(6-2)=.3125; sqrt(.3125/6)
        let want = (0.3125f64 / 6.0).sqrt();
        assert!((g["acc_stderr,none"].as_f64().unwrap() - want).abs() < 1e-12);
    }
}
