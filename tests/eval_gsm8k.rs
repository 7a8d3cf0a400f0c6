//! GSM8K through the harness with scripted generations: prompt, generation settings, stop-string
//! cutting, both filters and the per-example log.

use bitune_rt::eval::scripted::ScriptedScorer;
use bitune_rt::eval::{run_eval, EvalOptions};
use serde_json::Value;
use std::path::PathBuf;

fn fixture(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/eval")
        .join(p)
}

fn scripted() -> ScriptedScorer {
    ScriptedScorer::new(
        |_, _| 0.0,
        |prompt| {
            if prompt.contains("Tom has 3 bags") {
                // Right, with a stop string the scorer failed to cut: the harness cuts it.
                " Tom has 3 * 4 = 12 apples.\n#### 12\n\nQuestion: How many #### 99".into()
            } else if prompt.contains("A pen costs") {
                // Right number but no "####": only flexible-extract finds it ("$21." → "21").
                " 3 pens cost $6, so the total is $21.".into()
            } else {
                " 1200 - 450 = 740\n#### 740".into()
            }
        },
    )
}

#[test]
fn gsm8k_strict_and_flexible() {
    let log = std::env::temp_dir().join(format!("bitune_eval_gsm8k_{}.jsonl", std::process::id()));
    let o = EvalOptions {
        task: "gsm8k".into(),
        data: Some(fixture("gsm8k.jsonl")),
        log: Some(log.clone()),
        ..Default::default()
    };
    let mut sc = scripted();
    let s = run_eval(&o, &mut sc).unwrap();
    let r = &s["results"]["gsm8k"];
    assert!(
        (r["exact_match,strict-match"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-12,
        "{s}"
    );
    assert!(
        (r["exact_match,flexible-extract"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-12,
        "{s}"
    );
    assert!(r["exact_match_stderr,strict-match"].as_f64().unwrap() > 0.0);
    assert_eq!(s["n-samples"]["gsm8k"]["effective"], 3);

    let (prompt, max_new, stops) = &sc.generated[0];
    assert_eq!(prompt, "Question: Tom has 3 bags with 4 apples in each bag. How many apples does Tom have?\n\nAnswer:");
    assert_eq!(*max_new, 256);
    assert_eq!(
        stops,
        &["Question:", "</s>", "<|im_end|>", "<|end_of_text|>"]
    );

    let lines: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    std::fs::remove_file(&log).ok();
    assert_eq!(
        lines[0]["generation"],
        " Tom has 3 * 4 = 12 apples.\n#### 12\n\n"
    );
    assert_eq!(lines[0]["prediction"]["strict-match"], "12");
    assert_eq!(lines[1]["prediction"]["strict-match"], "[invalid]");
    assert_eq!(lines[1]["prediction"]["flexible-extract"], "$21.");
    assert_eq!(lines[1]["exact_match"]["flexible-extract"], 1.0);
    assert_eq!(lines[2]["exact_match"]["strict-match"], 0.0);
    assert!(lines[2]["gold"].as_str().unwrap().ends_with("#### 750"));
}
