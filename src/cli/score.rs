//! `score`: prints one JSON line per request of [`crate::jobs::score`].

use crate::jobs::score::{run as score, ScoreJob};
use anyhow::Result;
use serde_json::json;

pub fn run(job: &ScoreJob) -> Result<()> {
    for s in score(job)? {
        let sum: f64 = s.logprobs.iter().sum();
        println!(
            "{}",
            json!({"tokens": s.tokens, "logprobs": s.logprobs, "sum": sum, "greedy": s.greedy})
        );
    }
    Ok(())
}
