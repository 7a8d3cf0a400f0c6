//! Every command with `--device cuda` against the same command with `--device cpu`, on the tiny
//! fixture models: the binary is run twice and its outputs and files compared (greedy generate
//! token for token, score and eval log-probabilities, a train run's losses and final adapter for
//! Bitune and LoRA, a checkpoint resumed across devices, compare, bench), plus the errors a
//! device can raise (out of device memory) and the C example on "cuda". On the simulator in CI
//! (BITUNE_CUDA_SIM=1, inherited by the child processes) and on a GPU wherever one is present.
#![cfg(feature = "cuda")]

mod cuda_common;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const LLAMA: &str = "tests/fixtures/models/llama";
const GEMMA: &str = "tests/fixtures/models/gemma";
const ADAPTER: &str = "tests/fixtures/bitune/llama/init";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The device under test, or None (the test skips) where `cuda_common::gpu` says so.
fn have_cuda() -> bool {
    cuda_common::gpu().is_some()
}

fn cmd(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bitune-rt"));
    c.args(args).current_dir(root());
    c
}

fn run(args: &[&str]) -> Output {
    let out = cmd(args).output().expect("running bitune-rt");
    assert!(
        out.status.success(),
        "bitune-rt {} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `args` on the CPU and on CUDA (the device flag appended), stdout of each.
fn both(args: &[&str]) -> (String, String) {
    let on = |d: &str| {
        let mut a = args.to_vec();
        a.extend(["--device", d]);
        String::from_utf8(run(&a).stdout).unwrap()
    };
    (on("cpu"), on("cuda"))
}

fn tmp(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cuda_cli-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Numbers within `tol` relative to max(|want|, 1); everything else equal; keys in `skip`
/// (timings, device names) ignored at any depth.
#[track_caller]
fn same_json(what: &str, got: &Value, want: &Value, tol: f64, skip: &[&str]) {
    match (got, want) {
        (Value::Number(g), Value::Number(w)) => {
            let (g, w) = (g.as_f64().unwrap(), w.as_f64().unwrap());
            assert!(
                (g - w).abs() <= tol * w.abs().max(1.0),
                "{what}: cuda {g} vs cpu {w}"
            );
        }
        (Value::Array(g), Value::Array(w)) => {
            assert_eq!(g.len(), w.len(), "{what}: length");
            for (i, (g, w)) in g.iter().zip(w).enumerate() {
                same_json(&format!("{what}[{i}]"), g, w, tol, skip);
            }
        }
        (Value::Object(g), Value::Object(w)) => {
            let keys = |m: &serde_json::Map<String, Value>| {
                m.keys()
                    .filter(|k| !skip.contains(&k.as_str()))
                    .cloned()
                    .collect::<Vec<_>>()
            };
            assert_eq!(keys(g), keys(w), "{what}: keys");
            for k in keys(w) {
                same_json(&format!("{what}.{k}"), &g[&k], &w[&k], tol, skip);
            }
        }
        _ => assert_eq!(got, want, "{what}"),
    }
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The f32 tensors of an adapter folder's safetensors files (and its `bidirectional/` set's),
/// by file and name.
fn adapter_tensors(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let mut all = vec![];
    for sub in ["", "bidirectional"] {
        let Ok(rd) = std::fs::read_dir(dir.join(sub)) else {
            continue;
        };
        for entry in rd {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "safetensors") {
                let mut m = bitune_rt::model::tensors::TensorMap::new(p.display().to_string());
                bitune_rt::model::tensors::read_file_into(&p, &mut m).unwrap();
                let file = p.file_name().unwrap().to_string_lossy().into_owned();
                for (k, t) in m.map {
                    all.push((format!("{sub}/{file}:{k}"), t.data));
                }
            }
        }
    }
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

#[track_caller]
fn same_adapter(got: &Path, want: &Path, tol: f32) {
    let (g, w) = (adapter_tensors(got), adapter_tensors(want));
    assert!(!w.is_empty(), "{}: no tensors", want.display());
    assert_eq!(g.len(), w.len(), "adapter tensor count");
    for ((gn, gv), (wn, wv)) in g.iter().zip(&w) {
        assert_eq!(gn, wn, "tensor names");
        cuda_common::close(gn, gv, wv, tol);
    }
}

#[test]
fn generate_greedy_matches_cpu_token_for_token() {
    if !have_cuda() {
        return;
    }
    for (model, adapter) in [(LLAMA, Some(ADAPTER)), (GEMMA, None)] {
        let mut a = vec![
            "generate",
            "--model",
            model,
            "--prompt",
            "Question: what is 7 times 6?\nAnswer:",
            "--max-new",
            "12",
            "--threads",
            "1",
        ];
        if let Some(ad) = adapter {
            a.extend(["--adapter", ad]);
        }
        let (cpu, cuda) = both(&a);
        assert!(!cpu.trim().is_empty(), "{model}: nothing generated");
        assert_eq!(cuda, cpu, "{model}: greedy text differs");
    }
}

#[test]
fn score_logprobs_match_cpu() {
    if !have_cuda() {
        return;
    }
    let dir = tmp("score");
    let reqs = dir.join("reqs.jsonl");
    std::fs::write(
        &reqs,
        "{\"context\":\"The capital of France is\",\"continuation\":\" Paris\"}\n\
         {\"context\":\"The capital of France is\",\"continuation\":\" a big city\"}\n\
         {\"context\":\"2 + 2 =\",\"continuation\":\" 4\"}\n",
    )
    .unwrap();
    let r = reqs.display().to_string();
    let a = [
        "score",
        "--model",
        LLAMA,
        "--adapter",
        ADAPTER,
        "--requests",
        &r,
    ];
    let (cpu, cuda) = both(&a);
    let (c, g) = (json_lines(&cpu), json_lines(&cuda));
    assert_eq!(c.len(), 3);
    same_json("score", &Value::from(g), &Value::from(c), 1e-4, &[]);
}

#[test]
fn eval_logprobs_and_metrics_match_cpu() {
    if !have_cuda() {
        return;
    }
    let dir = tmp("eval");
    let mut logs = vec![];
    let mut outs = vec![];
    for d in ["cpu", "cuda"] {
        let log = dir.join(format!("{d}.jsonl"));
        let l = log.display().to_string();
        let out = run(&[
            "eval",
            "--model",
            LLAMA,
            "--adapter",
            ADAPTER,
            "--task",
            "synthetic:mc",
            "--limit",
            "4",
            "--log",
            &l,
            "--device",
            d,
        ]);
        outs.push(serde_json::from_slice::<Value>(&out.stdout).unwrap());
        logs.push(json_lines(&std::fs::read_to_string(&log).unwrap()));
    }
    assert_eq!(logs[1].len(), 4);
    same_json(
        "eval log",
        &Value::from(logs[1].clone()),
        &Value::from(logs[0].clone()),
        1e-4,
        &[],
    );
    same_json("eval summary", &outs[1], &outs[0], 1e-9, &[]);
}

fn train_args<'a>(method: &'a str, out: &'a str, steps: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--model",
        LLAMA,
        "--method",
        method,
        "--out",
        out,
        "--steps",
        steps,
        "--save-every",
        "2",
        "--batch",
        "2",
        "--rank",
        "2",
        "--lr",
        "1e-2",
        "--max-len",
        "64",
        "--threads",
        "1",
        // The held-out before/after report, kept small: each item is a greedy generation.
        "--eval-n",
        "2",
    ]
}

/// Losses, α and gradient norms per step (timings dropped).
fn metrics(dir: &Path) -> Value {
    Value::from(json_lines(
        &std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap(),
    ))
}

const TIMINGS: &[&str] = &["step_s", "tokens_per_s"];

#[test]
fn train_losses_and_adapter_match_cpu_for_bitune_lora_dora_ia3() {
    if !have_cuda() {
        return;
    }
    for (method, peft) in [
        ("bitune", "lora"),
        ("lora", "lora"),
        ("bitune", "dora"),
        ("bitune", "ia3"),
    ] {
        let what = format!("{method} {peft}");
        let dir = tmp(&format!("train-{method}-{peft}"));
        let (c, g) = (dir.join("cpu"), dir.join("cuda"));
        let (cs, gs) = (c.display().to_string(), g.display().to_string());
        let mut a = train_args(method, &cs, "3");
        a.extend(["--peft", peft, "--device", "cpu"]);
        run(&a);
        let mut a = train_args(method, &gs, "3");
        a.extend(["--peft", peft, "--device", "cuda"]);
        let out = run(&a);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("before: base model"),
            "{what}: no before/after table"
        );
        same_json(&what, &metrics(&g), &metrics(&c), 1e-4, TIMINGS);
        same_adapter(&g, &c, 1e-4);
        for f in ["loss.png", "checkpoints/step-2/trainer_state.json"] {
            assert!(g.join(f).exists(), "{what}: cuda run lacks {f}");
        }
    }
}

#[test]
fn checkpoint_resumes_across_devices() {
    if !have_cuda() {
        return;
    }
    let dir = tmp("resume");
    // An uninterrupted CPU run of 4 steps is the reference.
    let full = dir.join("full");
    let fs = full.display().to_string();
    let mut a = train_args("bitune", &fs, "4");
    a.extend(["--no-samples", "--device", "cpu"]);
    run(&a);
    // Its step-2 checkpoint resumed on CUDA (and the other way) must reach the same end.
    for (from, to) in [("cpu", "cuda"), ("cuda", "cpu")] {
        let half = dir.join(format!("{from}-to-{to}"));
        let hs = half.display().to_string();
        let src = if from == "cpu" {
            full.clone()
        } else {
            // A CUDA run of the same settings, cut back to its step-2 checkpoint.
            let mut a = train_args("bitune", &hs, "4");
            a.extend(["--no-samples", "--device", "cuda"]);
            run(&a);
            half.clone()
        };
        let step2 = src.join("checkpoints/step-2");
        let resumed = dir.join(format!("{from}-to-{to}-resumed"));
        let rs = resumed.display().to_string();
        copy_dir(&step2, &resumed.join("checkpoints/step-2"));
        let mut a = train_args("bitune", &rs, "4");
        a.extend(["--no-samples", "--resume", &rs, "--device", to]);
        let out = run(&a);
        assert!(String::from_utf8_lossy(&out.stderr).contains("resumed from"));
        same_adapter(&resumed, &full, 1e-4);
        let (m_res, m_full) = (metrics(&resumed), metrics(&full));
        let steps = |m: &Value| -> Vec<u64> {
            m.as_array()
                .unwrap()
                .iter()
                .map(|r| r["step"].as_u64().unwrap())
                .collect()
        };
        assert_eq!(steps(&m_res), vec![3, 4], "{from} -> {to}: resumed steps");
        let full_tail = Value::from(m_full.as_array().unwrap()[2..].to_vec());
        same_json(
            &format!("{from} -> {to}"),
            &m_res,
            &full_tail,
            1e-4,
            TIMINGS,
        );
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

#[test]
fn compare_matches_cpu() {
    if !have_cuda() {
        return;
    }
    let dir = tmp("compare");
    let mut reports = vec![];
    for d in ["cpu", "cuda"] {
        let out = dir.join(d);
        let o = out.display().to_string();
        run(&[
            "compare",
            "--model",
            LLAMA,
            "--methods",
            "base,lora,bitune",
            "--seeds",
            "1",
            "--steps",
            "2",
            "--batch",
            "2",
            "--rank",
            "2",
            "--max-len",
            "64",
            "--eval-tasks",
            "synthetic:mc",
            "--limit",
            "3",
            "--threads",
            "1",
            "--out",
            &o,
            "--device",
            d,
        ]);
        let r: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("compare.json")).unwrap())
                .unwrap();
        reports.push(r);
    }
    let skip = &[
        "date", "commit", "device", "train_s", "eval_s", "total_s", "dir",
    ];
    same_json("compare", &reports[1], &reports[0], 1e-4, skip);
    assert!(
        reports[1]["device"].as_str().unwrap().starts_with("cuda:0"),
        "{}",
        reports[1]["device"]
    );
}

#[test]
fn bench_reports_the_cpu_metrics_plus_device_memory() {
    if !have_cuda() {
        return;
    }
    let bench = |d: &str| -> Value {
        let out = run(&[
            "bench",
            "--model",
            LLAMA,
            "--prompt",
            "8",
            "--answer",
            "4",
            "--repeat",
            "1",
            "--train",
            "--threads",
            "1",
            "--device",
            d,
            "--json",
        ]);
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let (c, g) = (bench("cpu"), bench("cuda"));
    let keys = |v: &Value| -> Vec<String> {
        let mut k = vec![];
        for (phase, m) in v["results"].as_object().unwrap() {
            for name in m.as_object().unwrap().keys() {
                k.push(format!("{phase}.{name}"));
            }
        }
        k
    };
    assert_eq!(keys(&g), keys(&c), "the same metrics on both devices");
    assert!(g["device"].as_str().unwrap().starts_with("cuda:0"));
    let peak = g["device_memory"]["peak_bytes"].as_u64().unwrap();
    assert!(peak > 0, "peak device memory {peak}");
    assert!(c.get("device_memory").is_none());
    for phase in ["base", "lora", "bitune"] {
        let ms = g["results"][phase]["decode_ms_per_tok"].as_f64().unwrap();
        assert!(ms > 0.0, "{phase}: decode time {ms}");
    }
}

#[test]
fn out_of_device_memory_is_a_clear_error_and_a_non_zero_exit() {
    if !bitune_rt::backend::cuda::sim::requested() {
        return; // the device size is the simulator's to choose
    }
    let out = cmd(&[
        "generate",
        "--model",
        LLAMA,
        "--prompt",
        "Hello",
        "--max-new",
        "4",
        "--device",
        "cuda",
    ])
    // The fixture's weights take ~170 KB: the device runs out while they are uploaded.
    .env("BITUNE_CUDA_SIM_MEM", "100000")
    .env("BITUNE_CUDA_SIM_QUIET", "1")
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(
        err.contains("error: CUDA: out of device memory allocating ")
            && err.contains(" f32 (")
            && err.contains(" for src/"),
        "stderr: {err}"
    );
    assert!(!err.contains("panicked"), "a panic reached the user: {err}");
}

#[test]
fn no_cuda_device_is_a_clear_error() {
    if bitune_rt::backend::cuda::sim::requested() || cuda_common::gpu().is_some() {
        return; // only meaningful where no device opens
    }
    let out = cmd(&[
        "generate", "--model", LLAMA, "--prompt", "Hi", "--device", "cuda",
    ])
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(err.contains("--device cuda:0"), "stderr: {err}");
}

#[test]
fn bad_device_names_are_rejected() {
    let out = cmd(&["generate", "--prompt", "x", "--device", "tpu"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("unknown device \"tpu\""), "stderr: {err}");
}

/// The C example linked against the CUDA build of the static library, on "cuda", prints what
/// it prints on "cpu".
#[test]
fn c_example_runs_on_cuda() {
    if !have_cuda() {
        return;
    }
    let lib = staticlib();
    let exe = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cuda_cli-example");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .args(["-std=c99", "-Wall", "-Wextra", "-I"])
        .arg(root().join("ffi"))
        .arg(root().join("ffi/example.c"))
        .arg(&lib)
        .args([
            "-lgcc_s",
            "-lutil",
            "-lrt",
            "-lpthread",
            "-lm",
            "-ldl",
            "-lc",
            "-o",
        ])
        .arg(&exe)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run_c = |d: &str| {
        let o = Command::new(&exe)
            .args([
                LLAMA,
                ADAPTER,
                "Question: what is 7 times 6?\nAnswer:",
                "10",
                d,
            ])
            .current_dir(root())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "example on {d}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    };
    let (c, g) = (run_c("cpu"), run_c("cuda"));
    assert!(!c.trim().is_empty());
    assert_eq!(g, c, "token ids on cuda vs cpu");
}

/// `libbitune_rt.a` of this build (profile and features), from cargo (as tests/ffi does).
fn staticlib() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let profile = match profile_dir.file_name().unwrap().to_str().unwrap() {
        "debug" => "dev",
        p => p,
    };
    let out = Command::new(option_env!("CARGO").unwrap_or("cargo"))
        .args(["build", "--lib", "--message-format=json-render-diagnostics"])
        .args(["--profile", profile, "--features", "cuda", "--target-dir"])
        .arg(profile_dir.parent().unwrap())
        .arg("--manifest-path")
        .arg(root().join("Cargo.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == "bitune_rt")
        .flat_map(|v| v["filenames"].as_array().cloned().unwrap_or_default())
        .filter_map(|f| f.as_str().map(PathBuf::from))
        .find(|f| f.extension().is_some_and(|e| e == "a"))
        .expect("cargo reported no libbitune_rt.a")
}
