//! A `train` process killed with SIGKILL mid-run leaves only complete checkpoints, and resuming
//! from them reproduces the uninterrupted run's loss trajectory exactly.

mod common;

use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

fn train_cmd(out: &std::path::Path, data: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bitune-rt"));
    c.args([
        "train",
        "--no-samples",
        "--threads",
        "1",
        "--steps",
        "40",
        "--save-every",
        "2",
        "--batch",
        "2",
    ])
    .args(["--rank", "2", "--lr", "1e-2", "--max-len", "64"])
    .arg("--model")
    .arg(model_dir("llama"))
    .arg("--data")
    .arg(data)
    .arg("--out")
    .arg(out);
    c
}

fn losses(out: &std::path::Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap())
        })
        .collect()
}

#[test]
fn sigkill_then_resume_equals_uninterrupted() {
    let tmp = std::env::temp_dir().join(format!("bitune-kill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let data = tmp.join("data.jsonl");
    let rows: Vec<String> = (0..12)
        .map(|i| {
            format!(
                "{{\"instruction\":\"the cat sat {i}\",\"response\":\"on the mat {}\"}}",
                i * 7
            )
        })
        .collect();
    std::fs::write(&data, rows.join("\n")).unwrap();

    let full = tmp.join("full");
    assert!(train_cmd(&full, &data).status().unwrap().success());
    let want = losses(&full);
    assert_eq!(want.len(), 40);

    // Kill the second run as soon as it has written a few checkpoints.
    let cut = tmp.join("cut");
    let mut child = train_cmd(&cut, &data).spawn().unwrap();
    let t0 = Instant::now();
    while !cut.join("checkpoints").join("step-6").exists()
        && t0.elapsed() < Duration::from_secs(120)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Only complete checkpoints: every step folder has all its files and loads.
    for e in std::fs::read_dir(cut.join("checkpoints"))
        .unwrap()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".tmp") {
            continue; // an unfinished write, never renamed into place: ignored by --resume
        }
        for f in [
            "trainer_state.json",
            "optimizer.safetensors",
            "adapter_model.safetensors",
            "bitune.safetensors",
        ] {
            assert!(e.path().join(f).exists(), "{name} lacks {f}");
        }
    }
    let mut resume = train_cmd(&cut, &data);
    resume.arg("--resume").arg(&cut);
    assert!(resume.status().unwrap().success());
    assert_eq!(losses(&cut), want, "resumed trajectory differs");
    std::fs::remove_dir_all(&tmp).unwrap();
}
