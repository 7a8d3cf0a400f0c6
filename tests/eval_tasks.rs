//! The multiple-choice tasks on hand-written fixtures, with a scripted scorer in place of the model:
//! byte-exact prompts, gold mapping, acc/acc_norm, MMLU weighting, summary shape, bad input.

use bitune_rt::eval::scripted::ScriptedScorer;
use bitune_rt::eval::{run_eval, EvalOptions};
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;

fn fixture(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/eval")
        .join(p)
}

fn opts(task: &str, data: &str) -> EvalOptions {
    EvalOptions {
        task: task.into(),
        data: Some(fixture(data)),
        ..Default::default()
    }
}

/// Log-probabilities by continuation; anything not listed scores -30.
fn table(entries: &[(&str, f64)]) -> ScriptedScorer {
    let t: HashMap<String, f64> = entries.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    ScriptedScorer::new(move |_, c| *t.get(c).unwrap_or(&-30.0), |_| String::new())
}

fn metric(s: &Value, task: &str, m: &str) -> f64 {
    s["results"][task][m]
        .as_f64()
        .unwrap_or_else(|| panic!("no {m} for {task} in {s}"))
}

fn first_call(task: &str, data: &str) -> (String, Vec<String>) {
    let mut sc = table(&[]);
    run_eval(&opts(task, data), &mut sc).unwrap();
    sc.scored[0].clone()
}

#[test]
fn prompts_are_byte_exact() {
    let (p, c) = first_call("piqa", "piqa.jsonl");
    assert_eq!(p, "Question: How do I keep bread fresh longer?\n\nChoices:\nStore it in a sealed bag in a cool, dry place.\nStore it in a sealed bag next to the oven.\n\nAnswer:");
    assert_eq!(
        c,
        [
            " Store it in a sealed bag in a cool, dry place.",
            " Store it in a sealed bag next to the oven."
        ]
    );

    let (p, c) = first_call("arc", "arc.jsonl");
    assert_eq!(p, "Question: Which gas do plants take in from the air to make food?\n\nChoices:\noxygen\ncarbon dioxide\nnitrogen\nhelium\n\nAnswer:");
    assert_eq!(c, [" oxygen", " carbon dioxide", " nitrogen", " helium"]);

    let (p, c) = first_call("csqa", "csqa.jsonl");
    assert_eq!(p, "Question: Where would you put a plate after washing it?\n\nChoices:\ncupboard\ntable\nrestaurant\noven\nfloor\n\nAnswer:");
    assert_eq!(c, [" cupboard", " table", " restaurant", " oven", " floor"]);

    let (p, c) = first_call("siqa", "siqa.jsonl");
    assert_eq!(p, "Question: Given the context, answer correctly the question.\nContext: Tracy forgot her umbrella and walked home in the rain.\nQuestion: How would Tracy feel afterwards?\n\nChoices:\n(0) wet and cold\n(1) proud of herself\n(2) very dry\n\nAnswer:");
    assert_eq!(c, [" (0)", " (1)", " (2)"]);

    // MMLU: question stripped, "(i). " labels, no subject header.
    let (p, c) = first_call("mmlu", "mmlu");
    assert_eq!(p, "Question: What is 2 + 2 in the integers modulo 3?\n(0). 0\n(1). 1\n(2). 2\n(3). 4\n\nAnswer:");
    assert_eq!(c, [" (0)", " (1)", " (2)", " (3)"]);
}

#[test]
fn arc_acc_and_acc_norm() {
    // Item 1: acc picks "oxygen" (-5), acc_norm picks "carbon dioxide" (-7/14) = gold.
    // Item 2 (numeric labels, key "1"): "the Sun" wins both.
    // Item 3: acc picks "a ruler"; per character WITHOUT the leading space "a balance" wins
    //   (-8.9/9 > -7/7) = gold; with the space it would lose (-8.9/10 < -7/8).
    // Item 4: all -30: acc takes the first (ties), acc_norm the longest; gold is E, both miss.
    let mut sc = table(&[
        (" oxygen", -5.0),
        (" carbon dioxide", -7.0),
        (" nitrogen", -9.0),
        (" helium", -8.0),
        (" the Sun", -1.0),
        (" the Moon", -3.0),
        (" wind", -2.0),
        (" a ruler", -7.0),
        (" a balance", -8.9),
    ]);
    let log = std::env::temp_dir().join(format!("bitune_eval_arc_{}.jsonl", std::process::id()));
    let o = EvalOptions {
        log: Some(log.clone()),
        ..opts("arc", "arc.jsonl")
    };
    let s = run_eval(&o, &mut sc).unwrap();
    assert_eq!(metric(&s, "arc", "acc,none"), 0.25);
    assert_eq!(metric(&s, "arc", "acc_norm,none"), 0.75);
    // Both are [one value of four]: sample std sqrt(.25), over sqrt(4).
    assert!((metric(&s, "arc", "acc_stderr,none") - 0.25).abs() < 1e-12);
    assert!((metric(&s, "arc", "acc_norm_stderr,none") - 0.25).abs() < 1e-12);
    assert_eq!(s["results"]["arc"]["alias"], "arc");
    assert_eq!(s["n-samples"]["arc"]["original"], 4);
    assert_eq!(s["n-samples"]["arc"]["effective"], 4);
    assert_eq!(s["config"]["num_fewshot"], 0);

    let lines: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    std::fs::remove_file(&log).ok();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[1]["gold"], 0); // answerKey "1" among labels "1".."4"
    assert_eq!(lines[2]["gold"], 1); // answerKey "B"
    assert_eq!(lines[3]["gold"], 4);
    assert_eq!(lines[0]["prediction"], 0);
    assert_eq!(lines[0]["prediction_norm"], 1);
    assert_eq!(lines[0]["scores"][1]["logprob"], -7.0);
    assert!(lines[0]["prompt"]
        .as_str()
        .unwrap()
        .ends_with("helium\n\nAnswer:"));
}

#[test]
fn siqa_gold_from_label_string_and_acc_only() {
    // Always pick " (1)": only the item with label "2" is right.
    let mut sc = table(&[(" (1)", -1.0)]);
    let s = run_eval(&opts("siqa", "siqa.jsonl"), &mut sc).unwrap();
    assert!((metric(&s, "siqa", "acc,none") - 1.0 / 3.0).abs() < 1e-12);
    assert!(s["results"]["siqa"].get("acc_norm,none").is_none());
}

#[test]
fn piqa_and_csqa_golds() {
    let mut sc = table(&[
        (" Store it in a sealed bag in a cool, dry place.", -1.0),
        (" sleep", -1.0),
        (" market", -1.0),
    ]);
    let s = run_eval(&opts("piqa", "piqa.jsonl"), &mut sc).unwrap();
    // Item 1 right; item 2 ties (first = gold 0) right; item 3 ties → 0 but gold 1.
    assert!((metric(&s, "piqa", "acc,none") - 2.0 / 3.0).abs() < 1e-12);
    let s = run_eval(&opts("csqa", "csqa.jsonl"), &mut sc).unwrap();
    // Item 1 ties → A = gold; items 2 and 3 picked by the table.
    assert_eq!(metric(&s, "csqa", "acc,none"), 1.0);
}

#[test]
fn mmlu_is_weighted_by_subject_size() {
    // Always " (1)": abstract_algebra 2/2, anatomy 1/3 → weighted 3/5 (the plain mean of the
    // two subjects would be 2/3).
    let mut sc = table(&[(" (1)", -0.5)]);
    let s = run_eval(&opts("mmlu", "mmlu"), &mut sc).unwrap();
    assert!((metric(&s, "mmlu", "acc,none") - 0.6).abs() < 1e-12);
    assert_eq!(metric(&s, "mmlu_abstract_algebra", "acc,none"), 1.0);
    assert!((metric(&s, "mmlu_anatomy", "acc,none") - 1.0 / 3.0).abs() < 1e-12);
    // dev.jsonl and all/ are not read.
    assert_eq!(s["n-samples"]["mmlu"]["effective"], 5);
    assert_eq!(s["n-samples"]["mmlu_anatomy"]["effective"], 3);
    assert!(s["results"]["mmlu"].get("acc_norm,none").is_none());

    // --limit counts per subject, as lm-eval's does for each subtask.
    let o = EvalOptions {
        limit: Some(1),
        ..opts("mmlu", "mmlu")
    };
    let s = run_eval(&o, &mut table(&[(" (1)", -0.5)])).unwrap();
    assert_eq!(s["n-samples"]["mmlu"]["effective"], 2);
    assert_eq!(s["n-samples"]["mmlu"]["original"], 5);
}

#[test]
fn limit_and_out_file() {
    let out = std::env::temp_dir().join(format!("bitune_eval_out_{}.json", std::process::id()));
    let o = EvalOptions {
        limit: Some(2),
        out: Some(out.clone()),
        ..opts("csqa", "csqa.jsonl")
    };
    let mut sc = table(&[]);
    let s = run_eval(&o, &mut sc).unwrap();
    assert_eq!(sc.scored.len(), 2);
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    std::fs::remove_file(&out).ok();
    assert_eq!(written, s);
    assert_eq!(
        s["n-samples"]["csqa"],
        serde_json::json!({"original": 3, "effective": 2})
    );
}

fn err(task: &str, data: &str) -> String {
    format!(
        "{:#}",
        run_eval(&opts(task, data), &mut table(&[])).unwrap_err()
    )
}

#[test]
fn bad_input_names_file_and_row() {
    let e = err("arc", "bad/arc_bad_key.jsonl");
    assert!(
        e.contains("bad/arc_bad_key.jsonl:2:") && e.contains("\"Z\""),
        "{e}"
    );
    // Row numbers are line numbers: the blank line 2 still counts.
    let e = err("piqa", "bad/piqa_missing.jsonl");
    assert!(
        e.contains("bad/piqa_missing.jsonl:3:") && e.contains("sol2"),
        "{e}"
    );
    let e = err("gsm8k", "bad/malformed.jsonl");
    assert!(
        e.contains("bad/malformed.jsonl:2:") && e.contains("malformed JSON"),
        "{e}"
    );
    let e = err("siqa", "bad/siqa_label.jsonl");
    assert!(
        e.contains("bad/siqa_label.jsonl:1:") && e.contains("label 4"),
        "{e}"
    );
    let e = err("mmlu", "bad/mmlu_answer.jsonl");
    assert!(
        e.contains("bad/mmlu_answer.jsonl:2:") && e.contains("out of range"),
        "{e}"
    );
    let e = err("arc", "nope.jsonl");
    assert!(
        e.contains("nope.jsonl") && e.contains("no such file"),
        "{e}"
    );
    // A PIQA row is not an ARC row.
    let e = err("arc", "piqa.jsonl");
    assert!(e.contains("piqa.jsonl:1:") && e.contains("choices"), "{e}");
}

#[test]
fn bad_rows_can_be_skipped_and_counted() {
    let o = EvalOptions {
        skip_bad_rows: true,
        ..opts("arc", "bad/arc_bad_key.jsonl")
    };
    let mut sc = table(&[(" Mars", -1.0), (" Titan", -1.0)]);
    let s = run_eval(&o, &mut sc).unwrap();
    assert_eq!(s["skipped_rows"]["count"], 1);
    assert!(s["skipped_rows"]["first"][0]
        .as_str()
        .unwrap()
        .contains("arc_bad_key.jsonl:2:"));
    assert_eq!(s["n-samples"]["arc"]["effective"], 2);
    assert_eq!(metric(&s, "arc", "acc,none"), 1.0);
}

#[test]
fn unknown_task_and_missing_data() {
    let e = format!(
        "{:#}",
        run_eval(
            &EvalOptions {
                task: "hellaswag".into(),
                ..Default::default()
            },
            &mut table(&[])
        )
        .unwrap_err()
    );
    for t in [
        "piqa",
        "arc",
        "csqa",
        "siqa",
        "mmlu",
        "gsm8k",
        "synthetic:mc",
        "synthetic:arith",
        "synthetic:lookup",
        "synthetic:reverse",
    ] {
        assert!(e.contains(t), "{e}");
    }
    let e = format!(
        "{:#}",
        run_eval(
            &EvalOptions {
                task: "synthetic:poetry".into(),
                ..Default::default()
            },
            &mut table(&[])
        )
        .unwrap_err()
    );
    assert!(e.contains("known tasks"), "{e}");
    let e = format!(
        "{:#}",
        run_eval(
            &EvalOptions {
                task: "piqa".into(),
                ..Default::default()
            },
            &mut table(&[])
        )
        .unwrap_err()
    );
    assert!(e.contains("--data"), "{e}");
}
