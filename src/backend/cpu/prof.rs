//! Wall time per CPU backend operation, for `bench --profile`: which op a change must attack is
//! a measurement, not a guess. Off by default; when off, a scope costs one relaxed atomic load.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

static ON: AtomicBool = AtomicBool::new(false);
static TABLE: Mutex<Vec<(&'static str, f64, u64)>> = Mutex::new(Vec::new());

pub fn enable(on: bool) {
    ON.store(on, Ordering::Relaxed);
}

/// The totals so far (name, seconds, calls), largest first; clears them.
pub fn take() -> Vec<(&'static str, f64, u64)> {
    let mut t = std::mem::take(&mut *TABLE.lock().unwrap_or_else(|e| e.into_inner()));
    t.sort_by(|a, b| b.1.total_cmp(&a.1));
    t
}

/// Times the enclosing block under `name` when profiling is on.
pub struct Scope(Option<(&'static str, Instant)>);

pub fn scope(name: &'static str) -> Scope {
    Scope(ON.load(Ordering::Relaxed).then(|| (name, Instant::now())))
}

impl Drop for Scope {
    fn drop(&mut self) {
        if let Some((name, t0)) = self.0 {
            let dt = t0.elapsed().as_secs_f64();
            let mut t = TABLE.lock().unwrap_or_else(|e| e.into_inner());
            match t.iter_mut().find(|e| e.0 == name) {
                Some(e) => {
                    e.1 += dt;
                    e.2 += 1;
                }
                None => t.push((name, dt, 1)),
            }
        }
    }
}
