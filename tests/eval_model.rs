//! The evaluation harness on a real (tiny) model, against numbers computed independently by
//! `scripts/eval_reference.py` (PyTorch, float64, cross-checked there against Hugging Face +
//! PEFT): for the hand-written PIQA/ARC/CSQA/SIQA/MMLU/GSM8K items of `tests/fixtures/eval/`,
//! with the base model and with the Bitune adapter, every context string, every continuation's
//! token count and summed log-probability (1e-4 relative), every prediction, the GSM8K greedy
//! generations and extractions, and the task metrics. Also `bitune-rt compare` end to end on the
//! same model with a tiny budget.

mod common;

use bitune_rt::backend::cpu::Cpu;
use bitune_rt::bitune::engine::{Engine, PromptMask};
use bitune_rt::eval::{run_eval, EvalOptions};
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

const TASKS: [&str; 6] = ["piqa", "arc", "csqa", "siqa", "mmlu", "gsm8k"];
/// Summed log-probabilities: the reference is float64, the engine float32.
const LOGPROB_RTOL: f64 = 1e-4;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn engine(adapter: Option<&str>) -> Engine<Cpu> {
    let a = adapter.map(|p| root().join(p));
    Engine::load(Cpu, &model_dir("llama"), a.as_deref(), PromptMask::Causal).unwrap()
}

fn read_log(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Compares one multiple-choice item of the harness's log with the reference; returns the
/// mismatches as text so a failing test lists all of them.
fn same(at: &str, what: &str, g: &Value, w: &Value, bad: &mut Vec<String>) {
    if g != w {
        bad.push(format!("{at}: {what}: harness {g}, reference {w}"));
    }
}

fn check_mc_item(at: &str, got: &Value, want: &Value, bad: &mut Vec<String>) {
    same(at, "context", &got["prompt"], &want["context"], bad);
    same(at, "choices", &got["choices"], &want["choices"], bad);
    same(at, "gold", &got["gold"], &want["gold"], bad);
    same(at, "group", &got["group"], &want["group"], bad);
    for (i, (g, w)) in got["scores"]
        .as_array()
        .unwrap()
        .iter()
        .zip(want["scores"].as_array().unwrap())
        .enumerate()
    {
        same(
            at,
            &format!("choice {i} n_tokens"),
            &g["n_tokens"],
            &w["n_tokens"],
            bad,
        );
        same(
            at,
            &format!("choice {i} greedy"),
            &g["greedy"],
            &w["greedy"],
            bad,
        );
        let (lg, lw) = (
            g["logprob"].as_f64().unwrap(),
            w["logprob"].as_f64().unwrap(),
        );
        if (lg - lw).abs() > LOGPROB_RTOL * lw.abs() {
            bad.push(format!(
                "{at}: choice {i} logprob: harness {lg}, reference {lw} (rel {:.2e})",
                (lg - lw).abs() / lw.abs()
            ));
        }
    }
    for k in ["prediction", "acc", "prediction_norm", "acc_norm"] {
        same(at, k, &got[k], &want[k], bad);
    }
}

fn check_gen_item(at: &str, got: &Value, want: &Value, bad: &mut Vec<String>) {
    for (g, w) in [
        ("prompt", "prompt"),
        ("generation", "generation"),
        ("gold", "gold"),
        ("prediction", "prediction"),
        ("exact_match", "exact_match"),
    ] {
        if got[g] != want[w] {
            bad.push(format!(
                "{at}: {g}: harness {}, reference {}",
                got[g], want[w]
            ));
        }
    }
}

/// Runs `task` through `run_eval` on the engine and compares log and summary with the fixture.
fn check_task(e: &mut Engine<Cpu>, task: &str, config: &str, bad: &mut Vec<String>) {
    let want = read_json(
        &fixtures()
            .join("eval_model")
            .join(format!("{task}_{config}.json")),
    );
    let log =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("eval_model-{task}-{config}.jsonl"));
    let opts = EvalOptions {
        task: task.into(),
        data: Some(root().join(want["data"].as_str().unwrap())),
        log: Some(log.clone()),
        ..Default::default()
    };
    let summary = run_eval(&opts, e).unwrap();
    let got = read_log(&log);
    let items = want["items"].as_array().unwrap();
    assert_eq!(got.len(), items.len(), "{task} {config}: item count");
    for (i, (g, w)) in got.iter().zip(items).enumerate() {
        let at = format!("{task} {config} item {i}");
        if task == "gsm8k" {
            check_gen_item(&at, g, w, bad);
        } else {
            check_mc_item(&at, g, w, bad);
        }
    }
    // Metrics: the same entries (MMLU: the group and each subject) with the same metric names
    // and values; stderr and alias are the harness's own additions.
    let results = summary["results"].as_object().unwrap();
    let metrics = want["metrics"].as_object().unwrap();
    let names = |o: &serde_json::Map<String, Value>| {
        let mut v: Vec<String> = o.keys().cloned().collect();
        v.sort();
        v
    };
    assert_eq!(
        names(results),
        names(metrics),
        "{task} {config}: result entries"
    );
    for (entry, m) in metrics {
        let r = results[entry].as_object().unwrap();
        let got_names: Vec<String> = names(r)
            .into_iter()
            .filter(|k| k != "alias" && !k.contains("_stderr"))
            .collect();
        let m = m.as_object().unwrap();
        assert_eq!(got_names, names(m), "{task} {config}: metrics of {entry}");
        for (k, v) in m {
            let (g, w) = (r[k].as_f64().unwrap(), v.as_f64().unwrap());
            if (g - w).abs() > 1e-12 {
                bad.push(format!(
                    "{task} {config}: {entry} {k}: harness {g}, reference {w}"
                ));
            }
        }
    }
}

fn check_config(adapter: Option<&str>, config: &str) {
    let mut e = engine(adapter);
    let mut bad = Vec::new();
    for task in TASKS {
        check_task(&mut e, task, config, &mut bad);
    }
    assert!(
        bad.is_empty(),
        "{} mismatches:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

#[test]
fn base_model_matches_the_pytorch_reference() {
    check_config(None, "base");
}

#[test]
fn bitune_adapter_matches_the_pytorch_reference() {
    let want = read_json(&fixtures().join("eval_model").join("arc_bitune.json"));
    let adapter = want["adapter"].as_str().unwrap().to_string();
    check_config(Some(&adapter), "bitune");
}

/// The fixtures score something: the adapter changes every log-likelihood (so the Bitune test
/// is not the base test twice), and each continuation has at least one token.
#[test]
fn fixtures_are_informative() {
    for task in TASKS.iter().filter(|t| **t != "gsm8k") {
        let read = |c: &str| {
            read_json(
                &fixtures()
                    .join("eval_model")
                    .join(format!("{task}_{c}.json")),
            )
        };
        let (base, bit) = (read("base"), read("bitune"));
        for (a, b) in base["items"]
            .as_array()
            .unwrap()
            .iter()
            .zip(bit["items"].as_array().unwrap())
        {
            for (x, y) in a["scores"]
                .as_array()
                .unwrap()
                .iter()
                .zip(b["scores"].as_array().unwrap())
            {
                assert!(x["n_tokens"].as_u64().unwrap() >= 1);
                assert!(
                    (x["logprob"].as_f64().unwrap() - y["logprob"].as_f64().unwrap()).abs() > 1e-3
                );
            }
        }
    }
}

/// `compare` end to end with a tiny budget: 2 methods × 2 seeds × 3 steps, one synthetic task.
/// Checks the table's shape, that every cell holds the per-run values `run_eval` wrote, and that
/// mean and sample std (n − 1) over the seeds are computed right, here from scratch.
#[test]
fn compare_tabulates_mean_and_sample_std_over_seeds() {
    use bitune_rt::cli::compare::CompareArgs;
    use bitune_rt::jobs::compare::{run as compare, CompareJob};
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: CompareArgs,
    }
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("compare-tiny");
    let _ = std::fs::remove_dir_all(&out);
    let model = model_dir("llama");
    let argv = [
        "compare",
        "--model",
        model.to_str().unwrap(),
        "--methods",
        "lora,bitune",
        "--seeds",
        "2",
        "--steps",
        "3",
        "--batch",
        "2",
        "--rank",
        "4",
        "--train-task",
        "synthetic:mix",
        "--train-n",
        "16",
        "--eval-tasks",
        "synthetic:mc",
        "--limit",
        "8",
        "--out",
        out.to_str().unwrap(),
    ];
    let r = compare(&CompareJob::from(&Cli::parse_from(argv).a)).unwrap();

    assert_eq!(r["seeds"], serde_json::json!([42, 43]));
    let runs = r["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 4);
    let cols: Vec<&str> = r["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["label"].as_str().unwrap())
        .collect();
    assert_eq!(cols, ["synthetic:mc acc", "synthetic:mc acc_norm"]);
    let table = r["table"].as_array().unwrap();
    assert_eq!(table.len(), 2);
    for (row, method) in table.iter().zip(["lora", "bitune"]) {
        assert_eq!(row["method"], method);
        assert_eq!(row["runs"], 2);
        let mine: Vec<&Value> = runs.iter().filter(|r| r["method"] == method).collect();
        assert_eq!(
            mine.iter()
                .map(|r| r["seed"].as_u64().unwrap())
                .collect::<Vec<_>>(),
            [42, 43]
        );
        for (cell, metric) in row["cells"]
            .as_array()
            .unwrap()
            .iter()
            .zip(["acc,none", "acc_norm,none"])
        {
            // Each value is what `run_eval` wrote for that run (8 items: a multiple of 1/8).
            let vals: Vec<f64> = mine
                .iter()
                .map(|run| {
                    let f = Path::new(run["dir"].as_str().unwrap()).join("eval/synthetic-mc.json");
                    let s = read_json(&f);
                    assert_eq!(s["n-samples"]["synthetic:mc"]["effective"], 8);
                    s["results"]["synthetic:mc"][metric].as_f64().unwrap()
                })
                .collect();
            let got: Vec<f64> = cell["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            assert_eq!(got, vals, "{method} {metric}");
            let (a, b) = (vals[0], vals[1]);
            let m = (a + b) / 2.0;
            // Sample std of two values: |a − b| / √2.
            let sd = (a - b).abs() / 2f64.sqrt();
            assert!((cell["mean"].as_f64().unwrap() - m).abs() < 1e-12);
            assert!((cell["std"].as_f64().unwrap() - sd).abs() < 1e-12);
        }
        // avg: per run the mean over tasks' primary metric (one task: its acc), then over seeds.
        let accs = &row["cells"][0]["values"];
        assert_eq!(row["avg"]["values"], *accs);
        let losses: Vec<f64> = mine
            .iter()
            .map(|r| r["final_loss"].as_f64().unwrap())
            .collect();
        assert!(losses.iter().all(|l| l.is_finite() && *l > 0.0));
        assert_ne!(
            losses[0], losses[1],
            "{method}: the seeds must give different runs"
        );
        let m = (losses[0] + losses[1]) / 2.0;
        assert!((row["final_loss"]["mean"].as_f64().unwrap() - m).abs() < 1e-12);
        let sd = (losses[0] - losses[1]).abs() / 2f64.sqrt();
        assert!((row["final_loss"]["std"].as_f64().unwrap() - sd).abs() < 1e-12);
        for run in &mine {
            let d = Path::new(run["dir"].as_str().unwrap());
            assert!(d.join("adapter_model.safetensors").exists());
            assert_eq!(d.join("bitune.safetensors").exists(), method == "bitune");
        }
    }
    // The paired test over items: with one task, the mean per-item difference (items averaged
    // over seeds) equals the difference of the methods' mean accuracies.
    let p = &r["paired"][0];
    assert_eq!(
        (p["a"].as_str(), p["b"].as_str()),
        (Some("lora"), Some("bitune"))
    );
    let t = &p["tasks"]["synthetic:mc"];
    assert_eq!(t["n_items"], 8);
    let want = table[1]["cells"][0]["mean"].as_f64().unwrap()
        - table[0]["cells"][0]["mean"].as_f64().unwrap();
    assert!((t["diff"].as_f64().unwrap() - want).abs() < 1e-12, "{t}");
    assert_eq!(p["all"], *t, "one task: all items are that task's");

    // The files: the same report as JSON, and a markdown table in the paper's Table 1 shape:
    // a header, a rule and a row per method (method, runs, one column per task, avg, final
    // loss); then the paired-test table (header, rule, task row and all-tasks row).
    assert_eq!(read_json(&out.join("compare.json"))["table"], r["table"]);
    let md = std::fs::read_to_string(out.join("compare.md")).unwrap();
    let rows: Vec<&str> = md.lines().filter(|l| l.starts_with('|')).collect();
    assert_eq!(rows.len(), 8, "{md}");
    for l in &rows[..4] {
        assert_eq!(l.matches('|').count(), 6, "{l}");
    }
    assert_eq!(
        rows[0],
        "| method | runs | synthetic:mc acc | avg | final loss |"
    );
    assert!(rows[2].starts_with("| lora | 2 | ") && rows[3].starts_with("| bitune | 2 | "));
    assert!(rows[2].contains(" ± "), "{md}");
    assert!(
        rows[6].starts_with("| bitune − lora | synthetic:mc | 8 | "),
        "{md}"
    );
    assert!(
        rows[7].starts_with("| bitune − lora | all tasks | 8 | "),
        "{md}"
    );

    // Deterministic: the same command gives the same numbers.
    let again = compare(&CompareJob::from(&Cli::parse_from(argv).a)).unwrap();
    assert_eq!(again["table"], r["table"]);
}
