//! The jobs behind the CLI subcommands (kept in the library so tests and the C API reach them).

pub mod bench;
pub mod bench_table;
pub mod compare;
pub mod compare_stats;
pub mod data;
pub mod device;
pub mod eval;
pub mod heldout;
pub mod score;
pub mod train;

use anyhow::Result;

/// Sets the CPU thread count once (rayon's global pool).
pub fn set_threads(n: Option<usize>) -> Result<()> {
    if let Some(n) = n {
        if n == 0 {
            anyhow::bail!("--threads must be at least 1");
        }
        // A second call (tests, the C API) finds the pool built already: that is fine.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
    }
    Ok(())
}
