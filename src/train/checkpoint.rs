//! Checkpoints: `DIR/checkpoints/step-N/` holds the adapter folder, the Adam moments and the
//! trainer state. A checkpoint is written into `step-N.tmp/` and renamed into place, so a kill at
//! any moment leaves either the complete folder or none.

use crate::io::atomic::write_atomic_str;
use crate::io::safetensors::write_f32;
use crate::model::tensors::{read_file_into, TensorMap};
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    /// Optimizer updates done.
    pub step: u64,
    /// Examples consumed (the data order is a function of the seed and this cursor).
    pub cursor: u64,
    /// A fingerprint of the settings that must not change across a resume.
    pub fingerprint: String,
    /// (step, loss) of every update so far, for the charts.
    pub losses: Vec<(u64, f64)>,
    /// (step, α_K per layer, α_V per layer) samples.
    pub alphas: Vec<(u64, Vec<f32>, Vec<f32>)>,
}

pub fn checkpoints_dir(out: &Path) -> PathBuf {
    out.join("checkpoints")
}

/// Writes a complete checkpoint folder atomically; `write_adapter` fills the adapter files.
pub fn save(
    out: &Path,
    state: &TrainerState,
    m: &[f32],
    v: &[f32],
    write_adapter: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let dir = checkpoints_dir(out);
    let final_dir = dir.join(format!("step-{}", state.step));
    let tmp = dir.join(format!("step-{}.tmp", state.step));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)
            .with_context(|| format!("removing stale {}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    write_adapter(&tmp)?;
    write_f32(
        &tmp.join("optimizer.safetensors"),
        &[
            ("exp_avg".into(), vec![m.len()], m.to_vec()),
            ("exp_avg_sq".into(), vec![v.len()], v.to_vec()),
        ],
    )?;
    write_atomic_str(
        &tmp.join("trainer_state.json"),
        &serde_json::to_string(state)?,
    )?;
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir)?;
    }
    std::fs::rename(&tmp, &final_dir)
        .with_context(|| format!("renaming {} into place", tmp.display()))?;
    Ok(final_dir)
}

/// The newest complete checkpoint under `out` (or `out` itself if it is a step folder).
pub fn latest(out: &Path) -> Result<PathBuf> {
    if out.join("trainer_state.json").exists() {
        return Ok(out.to_path_buf());
    }
    let dir = checkpoints_dir(out);
    let mut best: Option<(u64, PathBuf)> = None;
    let rd = std::fs::read_dir(&dir)
        .with_context(|| format!("no checkpoints to resume in {}", dir.display()))?;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(n) = name
            .strip_prefix("step-")
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        if e.path().join("trainer_state.json").exists() && best.as_ref().is_none_or(|b| n > b.0) {
            best = Some((n, e.path()));
        }
    }
    best.map(|b| b.1)
        .ok_or_else(|| anyhow!("no complete checkpoint in {}", dir.display()))
}

pub struct Restored {
    pub state: TrainerState,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
}

pub fn load(step_dir: &Path, n_params: usize) -> Result<Restored> {
    let sp = step_dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&sp).with_context(|| format!("reading {}", sp.display()))?;
    let state: TrainerState = serde_json::from_str(&text)
        .with_context(|| format!("{}: corrupt trainer state", sp.display()))?;
    let op = step_dir.join("optimizer.safetensors");
    let mut map = TensorMap::new(op.display().to_string());
    read_file_into(&op, &mut map)?;
    let m = map.take("exp_avg", &[n_params])?;
    let v = map.take("exp_avg_sq", &[n_params])?;
    if m.iter().chain(&v).any(|x| !x.is_finite()) {
        bail!("{}: non-finite optimizer state", op.display());
    }
    Ok(Restored { state, m, v })
}
