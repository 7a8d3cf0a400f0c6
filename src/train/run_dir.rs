//! Which folder a `train` run writes to, decided before anything is loaded or trained, so that a
//! run continues in place, never shares a folder with another run, and never loses one.
//!
//! * `--resume DIR` continues in the run folder of DIR (DIR itself, or the run above a
//!   `checkpoints/step-N` folder) unless `--out` names another folder.
//! * A fresh run into a folder that holds another run stops, naming `--resume` and
//!   `--overwrite`; `--overwrite` removes that run's files (and only those) first.
//! * With no `--out`, a fresh run takes the default folder, or `DEFAULT-2`, `DEFAULT-3`, ... when
//!   the default already holds a run.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The files and folders a run writes at the top of its folder: what marks a folder as holding a
/// run, and all that `--overwrite` removes (anything else the user keeps there stays).
const RUN_FILES: &[&str] = &[
    "checkpoints",
    "metrics.jsonl",
    "adapter_config.json",
    "adapter_model.safetensors",
    "bidirectional",
    "bitune.safetensors",
    "bitune_config.json",
    "loss.png",
    "alpha.png",
    "eval.json",
];

/// Where a run writes, and where it resumes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    pub out: PathBuf,
    /// The checkpoint folder or run folder to resume from (as given to `--resume`).
    pub resume: Option<PathBuf>,
    /// The run folder that `resume` belongs to, when it is not `out`: its metrics are copied.
    pub resume_from_other: Option<PathBuf>,
}

/// What in `dir` shows that it holds a run (`None`: empty, missing, or only other files).
pub fn holds_run(dir: &Path) -> Option<String> {
    let found: Vec<&str> = RUN_FILES
        .iter()
        .copied()
        .filter(|f| dir.join(f).exists())
        .collect();
    (!found.is_empty()).then(|| found.join(", "))
}

/// The run folder of a `--resume` argument: a run folder, or a step folder inside one.
fn run_folder_of(resume: &Path) -> PathBuf {
    let is_step = resume.join("trainer_state.json").exists()
        && resume
            .parent()
            .and_then(Path::file_name)
            .is_some_and(|n| n == "checkpoints");
    match resume.parent().and_then(Path::parent) {
        Some(run) if is_step => run.to_path_buf(),
        _ => resume.to_path_buf(),
    }
}

fn same_folder(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

fn occupied(dir: &Path, what: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "--out {}: the folder holds another run ({what}). Continue it with `--resume {}`, \
         write to another --out folder, or replace it with `--overwrite` (deletes that run's \
         checkpoints, metrics and adapter)",
        dir.display(),
        dir.display()
    )
}

/// Decides the run's folder from `--out`, `--resume` and `--overwrite`; `default` is `--out`'s
/// default. Checks only; [`prepare`] then clears what `--overwrite` replaces.
pub fn resolve(
    out: Option<&Path>,
    resume: Option<&Path>,
    overwrite: bool,
    default: &Path,
) -> Result<RunDir> {
    if let Some(r) = resume {
        if overwrite {
            bail!("--overwrite cannot be combined with --resume: a resumed run keeps its folder");
        }
        if !r.exists() {
            bail!("--resume {}: no such folder", r.display());
        }
        let run = run_folder_of(r);
        let out = out.map_or_else(|| run.clone(), Path::to_path_buf);
        if same_folder(&out, &run) {
            return Ok(RunDir {
                out,
                resume: Some(r.to_path_buf()),
                resume_from_other: None,
            });
        }
        if let Some(what) = holds_run(&out) {
            return Err(occupied(&out, &what));
        }
        return Ok(RunDir {
            out,
            resume: Some(r.to_path_buf()),
            resume_from_other: Some(run),
        });
    }
    let out = match out {
        Some(o) => {
            if let (Some(what), false) = (holds_run(o), overwrite) {
                return Err(occupied(o, &what));
            }
            o.to_path_buf()
        }
        None if overwrite => default.to_path_buf(),
        None => fresh_default(default),
    };
    Ok(RunDir {
        out,
        resume: None,
        resume_from_other: None,
    })
}

/// `default`, or the first of `default-2`, `default-3`, ... that holds no run.
fn fresh_default(default: &Path) -> PathBuf {
    if holds_run(default).is_none() {
        return default.to_path_buf();
    }
    let name = default
        .file_name()
        .map_or("run".into(), |n| n.to_string_lossy().into_owned());
    (2u64..)
        .map(|i| default.with_file_name(format!("{name}-{i}")))
        .find(|p| holds_run(p).is_none())
        .expect("an unbounded range finds a free name")
}

/// Makes the folder ready: with `--overwrite`, removes the previous run's files; when resuming
/// from another folder, copies that run's metrics so the new folder has the whole run's log.
pub fn prepare(rd: &RunDir, overwrite: bool) -> Result<()> {
    if overwrite {
        for f in RUN_FILES {
            let p = rd.out.join(f);
            let res = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else if p.exists() {
                std::fs::remove_file(&p)
            } else {
                Ok(())
            };
            res.with_context(|| format!("--overwrite: removing {}", p.display()))?;
        }
    }
    if let Some(from) = &rd.resume_from_other {
        let src = from.join("metrics.jsonl");
        if src.exists() {
            std::fs::create_dir_all(&rd.out)
                .with_context(|| format!("creating {}", rd.out.display()))?;
            std::fs::copy(&src, rd.out.join("metrics.jsonl"))
                .with_context(|| format!("copying {}", src.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("bitune-rundir-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn resume_continues_in_the_run_folder() {
        let d = tmp("resume");
        let run = d.join("k");
        let step = run.join("checkpoints").join("step-2");
        std::fs::create_dir_all(&step).unwrap();
        std::fs::write(step.join("trainer_state.json"), "{}").unwrap();
        let rd = resolve(None, Some(&run), false, Path::new("runs/bitune")).unwrap();
        assert_eq!(rd.out, run);
        assert_eq!(rd.resume_from_other, None);
        // A step folder resumes into its run folder too.
        let rd = resolve(None, Some(&step), false, Path::new("runs/bitune")).unwrap();
        assert_eq!(rd.out, run);
        // Another --out: a new folder that receives the metrics.
        let other = d.join("other");
        let rd = resolve(Some(&other), Some(&run), false, Path::new("x")).unwrap();
        assert_eq!(rd.out, other);
        assert_eq!(rd.resume_from_other, Some(run.clone()));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn an_occupied_folder_needs_resume_or_overwrite() {
        let d = tmp("occupied");
        std::fs::write(d.join("metrics.jsonl"), "").unwrap();
        std::fs::write(d.join("notes.txt"), "mine").unwrap();
        let e = resolve(Some(&d), None, false, Path::new("x")).unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("--resume") && msg.contains("--overwrite"),
            "{msg}"
        );
        let rd = resolve(Some(&d), None, true, Path::new("x")).unwrap();
        prepare(&rd, true).unwrap();
        assert!(!d.join("metrics.jsonl").exists());
        assert!(
            d.join("notes.txt").exists(),
            "--overwrite removed a file it did not write"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_default_folder_takes_a_fresh_name() {
        let d = tmp("default");
        let def = d.join("bitune");
        assert_eq!(resolve(None, None, false, &def).unwrap().out, def);
        std::fs::create_dir_all(def.join("checkpoints")).unwrap();
        assert_eq!(
            resolve(None, None, false, &def).unwrap().out,
            d.join("bitune-2")
        );
        std::fs::create_dir_all(d.join("bitune-2")).unwrap();
        std::fs::write(d.join("bitune-2").join("adapter_config.json"), "{}").unwrap();
        assert_eq!(
            resolve(None, None, false, &def).unwrap().out,
            d.join("bitune-3")
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
