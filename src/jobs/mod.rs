//! The jobs: training, evaluation, comparison, generation and scoring, each a library function
//! over a plain config struct, so a program linking the crate runs them as the command line does.
//! `src/cli` parses arguments into these configs and prints what the jobs return; progress lines
//! go to stderr from here, as a long job must report while it runs.

pub mod bench;
pub mod compare;
pub mod compare_stats;
pub mod eval;
pub mod generate;
pub mod heldout;
pub mod score;
pub mod train;

use anyhow::Result;

/// Sets the CPU thread count once (rayon's global pool); `None` keeps every core.
pub fn set_threads(n: Option<usize>) -> Result<()> {
    if n == Some(0) {
        anyhow::bail!("--threads must be at least 1");
    }
    // A second call (tests, the C API, a job after the command line set it) finds the pool
    // built already: that is fine. The commands run on the pool's threads (`main`), so they
    // get the main thread's stack size rather than rayon's 2 MiB.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(n.unwrap_or(0))
        .stack_size(8 << 20)
        .build_global();
    Ok(())
}

/// The checkout's short commit, for reports (`unknown` outside a git checkout).
pub fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// The current UTC time as ISO 8601, for reports.
pub fn now_utc() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
