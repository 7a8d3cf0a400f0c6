//! A run's folder: `--resume DIR` continues in DIR, a folder holding another run is refused
//! (unless `--overwrite`), and the default `--out` never clobbers the previous default run.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bitune-runfolder-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn data(dir: &Path) -> PathBuf {
    let p = dir.join("data.jsonl");
    let rows: Vec<String> = (0..8)
        .map(|i| {
            format!(
                "{{\"instruction\":\"count {i}\",\"response\":\"to {}\"}}",
                i * 3
            )
        })
        .collect();
    std::fs::write(&p, rows.join("\n")).unwrap();
    p
}

/// `train` on the tiny llama fixture, run in `cwd` (where the default `runs/bitune` goes).
fn train(cwd: &Path, data: &Path, extra: &[&str]) -> Output {
    let every = if extra.contains(&"--save-every") {
        &[][..]
    } else {
        &["--save-every", "2"][..]
    };
    Command::new(env!("CARGO_BIN_EXE_bitune-rt"))
        .current_dir(cwd)
        .args(["train", "--no-samples", "--threads", "1", "--steps", "6"])
        .args(every)
        .args(["--batch", "2", "--rank", "2"])
        .args(["--max-len", "64"])
        .arg("--model")
        .arg(model_dir("llama"))
        .arg("--data")
        .arg(data)
        .args(extra)
        .output()
        .unwrap()
}

fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "train failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn losses(out: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap())
        })
        .collect()
}

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn steps(out: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// What a kill after the step-2 checkpoint leaves: later checkpoints, the final adapter and the
/// charts are gone (metrics past step 2 are dropped by the resume itself).
fn cut_after_step_2(run: &Path) {
    for s in ["step-4", "step-6"] {
        std::fs::remove_dir_all(run.join("checkpoints").join(s)).unwrap();
    }
    for f in [
        "adapter_model.safetensors",
        "adapter_config.json",
        "bitune.safetensors",
        "bitune_config.json",
        "loss.png",
    ] {
        std::fs::remove_file(run.join(f)).unwrap();
    }
    std::fs::remove_dir_all(run.join("bidirectional")).unwrap();
}

#[test]
fn resume_continues_in_the_run_folder() {
    let t = tmp("resume");
    let d = data(&t);
    ok(&train(&t, &d, &["--out", "full"]));
    let want = losses(&t.join("full"));
    assert_eq!(want.len(), 6);

    ok(&train(&t, &d, &["--out", "k"]));
    cut_after_step_2(&t.join("k"));
    // No --out: the run continues in k, not in the default folder.
    ok(&train(&t, &d, &["--resume", "k"]));
    assert!(
        !t.join("runs").exists(),
        "the resumed run wrote to runs/ instead of k"
    );
    let k = t.join("k");
    assert_eq!(losses(&k), want, "metrics are not the whole run, once each");
    for f in ["adapter_model.safetensors", "bitune.safetensors"] {
        assert_eq!(
            bytes(&k.join(f)),
            bytes(&t.join("full").join(f)),
            "{f} differs"
        );
    }
    assert!(k.join("loss.png").exists());
    assert_eq!(steps(&k), ["step-2", "step-4", "step-6"]);

    // --out elsewhere: a new folder with the whole run's metrics; k is left as it was.
    cut_after_step_2(&k);
    let before = losses(&k);
    ok(&train(&t, &d, &["--resume", "k", "--out", "k2"]));
    assert_eq!(losses(&t.join("k2")), want);
    assert_eq!(losses(&k), before);
    assert_eq!(
        bytes(&t.join("k2").join("adapter_model.safetensors")),
        bytes(&t.join("full").join("adapter_model.safetensors"))
    );
    std::fs::remove_dir_all(&t).unwrap();
}

#[test]
fn a_folder_holding_another_run_is_refused_unless_overwrite() {
    let t = tmp("occupied");
    let d = data(&t);
    let same = t.join("same");
    ok(&train(&t, &d, &["--out", "same", "--lr", "1e-2"]));
    std::fs::write(same.join("notes.txt"), "mine").unwrap();
    let adapter = bytes(&same.join("adapter_model.safetensors"));
    let metrics = bytes(&same.join("metrics.jsonl"));

    let o = train(
        &t,
        &d,
        &["--out", "same", "--lr", "5e-3", "--save-every", "3"],
    );
    assert!(!o.status.success(), "a second run mixed into the folder");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--resume") && err.contains("--overwrite") && err.contains("same"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(bytes(&same.join("adapter_model.safetensors")), adapter);
    assert_eq!(bytes(&same.join("metrics.jsonl")), metrics);
    assert_eq!(steps(&same), ["step-2", "step-4", "step-6"]);

    // --overwrite replaces the run: only the new run's checkpoints, the user's file kept.
    let o = train(
        &t,
        &d,
        &[
            "--out",
            "same",
            "--lr",
            "5e-3",
            "--save-every",
            "3",
            "--overwrite",
        ],
    );
    ok(&o);
    assert_eq!(steps(&same), ["step-3", "step-6"]);
    assert_ne!(bytes(&same.join("adapter_model.safetensors")), adapter);
    assert_eq!(losses(&same).len(), 6);
    assert_eq!(
        std::fs::read_to_string(same.join("notes.txt")).unwrap(),
        "mine"
    );
    std::fs::remove_dir_all(&t).unwrap();
}

#[test]
fn the_default_folder_is_never_clobbered() {
    let t = tmp("default");
    let d = data(&t);
    ok(&train(&t, &d, &[]));
    let first = t.join("runs").join("bitune");
    let adapter = bytes(&first.join("adapter_model.safetensors"));
    let o = train(&t, &d, &["--lr", "5e-3"]);
    ok(&o);
    let second = t.join("runs").join("bitune-2");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("bitune-2"),
        "the new folder is not named"
    );
    assert_eq!(bytes(&first.join("adapter_model.safetensors")), adapter);
    assert_eq!(losses(&second).len(), 6);
    assert_ne!(bytes(&second.join("adapter_model.safetensors")), adapter);
    std::fs::remove_dir_all(&t).unwrap();
}
