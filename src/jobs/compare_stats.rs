//! `compare`'s statistics beyond mean ± std over seeds: a paired test over evaluation items
//! between two methods, and the ETA of the runs still to go.
//!
//! The paired test is the one that has the power a seed-level std lacks: both methods answer the
//! same items, so per item `d = (mean over seeds of B's score) − (mean over seeds of A's)`, and
//! `mean(d) / (sd(d)/√n)` is approximately normal for the hundreds of items used here. The report
//! also gives the smallest difference the test would detect with 80% power at α = 0.05
//! (`2.80 · se`), so a null result says how large a difference it rules out.

use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::path::Path;

/// The per-item value of a task's primary metric in an eval log (`eval/<task>.jsonl`), by doc_id.
pub fn item_scores(log: &Path, metric: &str) -> Result<Vec<f64>> {
    let text =
        std::fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    let (key, sub) = match metric.split_once(',') {
        Some((k, "none")) => (k, None),
        Some((k, s)) => (k, Some(s)),
        None => (metric, None),
    };
    let mut rows: Vec<(u64, f64)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("{} line {}: not JSON", log.display(), i + 1))?;
        let field = &v[key];
        let x = match sub {
            Some(s) => field[s].as_f64(),
            None => field.as_f64(),
        };
        let (Some(id), Some(x)) = (v["doc_id"].as_u64(), x) else {
            anyhow::bail!("{} line {}: no doc_id or {metric}", log.display(), i + 1);
        };
        rows.push((id, x));
    }
    rows.sort_by_key(|r| r.0);
    Ok(rows.into_iter().map(|r| r.1).collect())
}

/// Per item, the mean over runs (seeds) of the item's score; all runs must have the same items.
pub fn mean_over_runs(runs: &[Vec<f64>]) -> Result<Vec<f64>> {
    let n = runs.first().map_or(0, Vec::len);
    if runs.iter().any(|r| r.len() != n) {
        anyhow::bail!("runs evaluated different numbers of items");
    }
    Ok((0..n)
        .map(|i| runs.iter().map(|r| r[i]).sum::<f64>() / runs.len() as f64)
        .collect())
}

/// The standard normal CDF (Abramowitz & Stegun 7.1.26 for erf; |error| < 1.5e-7).
pub fn normal_cdf(z: f64) -> f64 {
    let x = z.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-x * x).exp();
    if z >= 0.0 {
        0.5 * (1.0 + erf)
    } else {
        0.5 * (1.0 - erf)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Paired {
    pub n: usize,
    /// mean(b − a)
    pub diff: f64,
    pub se: f64,
    /// Two-sided p value (normal approximation).
    pub p: f64,
}

impl Paired {
    pub fn ci95(&self) -> (f64, f64) {
        (self.diff - 1.96 * self.se, self.diff + 1.96 * self.se)
    }
    /// The smallest true difference detected with 80% power at two-sided α = 0.05.
    pub fn mde80(&self) -> f64 {
        (1.96 + 0.84) * self.se
    }
    pub fn to_json(&self) -> Value {
        let (lo, hi) = self.ci95();
        json!({"n_items": self.n, "diff": self.diff, "se": self.se, "ci95": [lo, hi],
               "p": self.p, "mde80": self.mde80()})
    }
}

/// The paired test of `b − a` over items.
pub fn paired(a: &[f64], b: &[f64]) -> Result<Paired> {
    if a.len() != b.len() || a.len() < 2 {
        anyhow::bail!(
            "a paired test needs the same items, at least 2 ({} vs {})",
            a.len(),
            b.len()
        );
    }
    let d: Vec<f64> = b.iter().zip(a).map(|(x, y)| x - y).collect();
    let n = d.len() as f64;
    let mean = d.iter().sum::<f64>() / n;
    let var = d.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
    let se = (var / n).sqrt();
    let p = if se > 0.0 {
        2.0 * (1.0 - normal_cdf((mean / se).abs()))
    } else if mean == 0.0 {
        1.0
    } else {
        0.0
    };
    Ok(Paired {
        n: d.len(),
        diff: mean,
        se,
        p,
    })
}

/// Seconds left, from the mean duration of the finished runs of each method (a method not seen
/// yet is assumed to cost the mean of the trained runs seen so far).
pub fn eta(done: &[(String, f64)], left: &[String]) -> Option<f64> {
    let mean_of = |m: Option<&str>| {
        let v: Vec<f64> = done
            .iter()
            .filter(|d| m.map_or(d.0 != super::compare::BASE, |m| d.0 == m))
            .map(|d| d.1)
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    left.iter()
        .map(|m| mean_of(Some(m)).or_else(|| mean_of(None)))
        .sum()
}

/// `1 h 02 min`, `12 min 05 s`, `40 s`.
pub fn human(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {:02} s", s / 60, s % 60),
        _ => format!("{} h {:02} min", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_cdf_matches_tables() {
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_cdf(1.96) - 0.975_002).abs() < 1e-5);
        assert!((normal_cdf(-1.0) - 0.158_655).abs() < 1e-5);
    }

    #[test]
    fn paired_test_of_known_differences() {
        // b right on 6 of 10 items where a is wrong, never the reverse.
        let a = vec![0.0; 10];
        let b: Vec<f64> = (0..10).map(|i| f64::from(u8::from(i < 6))).collect();
        let p = paired(&a, &b).unwrap();
        assert!((p.diff - 0.6).abs() < 1e-12);
        // sd of d = sqrt(0.6·0.4·10/9); se = sd/√10
        let se = (0.24f64 * 10.0 / 9.0 / 10.0).sqrt();
        assert!((p.se - se).abs() < 1e-12);
        assert!(p.p < 0.001, "{p:?}");
        assert!((p.mde80() - 2.8 * se).abs() < 1e-12);
        // Swapping the methods flips the sign only.
        let q = paired(&b, &a).unwrap();
        assert!((q.diff + 0.6).abs() < 1e-12 && (q.p - p.p).abs() < 1e-12);
        // No difference: p = 1.
        assert_eq!(paired(&a, &a).unwrap().p, 1.0);
        assert!(paired(&a, &b[..9]).is_err());
    }

    #[test]
    fn scores_are_read_by_doc_id_and_averaged_over_seeds() {
        let dir = std::env::temp_dir().join(format!("bitune-cstats-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("t.jsonl");
        std::fs::write(
            &log,
            "{\"doc_id\":1,\"acc\":0.0,\"exact_match\":{\"strict-match\":1.0}}\n\
             {\"doc_id\":0,\"acc\":1.0,\"exact_match\":{\"strict-match\":0.0}}\n",
        )
        .unwrap();
        assert_eq!(item_scores(&log, "acc,none").unwrap(), vec![1.0, 0.0]);
        assert_eq!(
            item_scores(&log, "exact_match,strict-match").unwrap(),
            vec![0.0, 1.0]
        );
        assert!(item_scores(&log, "acc_norm,none").is_err());
        let m = mean_over_runs(&[vec![1.0, 0.0], vec![0.0, 0.0]]).unwrap();
        assert_eq!(m, vec![0.5, 0.0]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn eta_uses_each_methods_own_run_time() {
        let done = vec![
            ("base".to_string(), 5.0),
            ("lora".to_string(), 100.0),
            ("lora".to_string(), 120.0),
        ];
        // Two more lora runs at 110 s each; bitune not seen yet: the mean trained run, 110 s.
        let left = vec!["lora".into(), "lora".into(), "bitune".into()];
        assert_eq!(eta(&done, &left), Some(330.0));
        assert_eq!(eta(&[], &left), None);
        assert_eq!(human(3725.0), "1 h 02 min");
        assert_eq!(human(65.0), "1 min 05 s");
    }
}
