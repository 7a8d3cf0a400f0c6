//! Parquet input (HF's published form): with `--features parquet` the pyarrow-written ARC file
//! must give exactly the requests and results of the same rows as JSONL; without the feature the
//! error must say how to get it.

use bitune_rt::eval::scripted::ScriptedScorer;
use bitune_rt::eval::{run_eval, EvalOptions};
use std::path::PathBuf;

fn fixture(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/eval")
        .join(p)
}

fn scorer() -> ScriptedScorer {
    // Depends on both context and continuation, so any mismatch in either shows.
    ScriptedScorer::new(
        |ctx, c| -(((ctx.len() * 7 + c.len() * 13) % 17) as f64),
        |_| String::new(),
    )
}

#[cfg(feature = "parquet")]
#[test]
fn parquet_rows_equal_jsonl_rows() {
    let run = |f: &str| {
        let mut sc = scorer();
        let o = EvalOptions {
            task: "arc".into(),
            data: Some(fixture(f)),
            ..Default::default()
        };
        let s = run_eval(&o, &mut sc).unwrap();
        (s["results"].clone(), sc.scored)
    };
    let (rp, sp) = run("arc-test.parquet");
    let (rj, sj) = run("arc.jsonl");
    assert_eq!(sp.len(), 4);
    assert_eq!(sp, sj);
    assert_eq!(rp, rj);
}

#[cfg(not(feature = "parquet"))]
#[test]
fn parquet_without_the_feature_says_how() {
    let o = EvalOptions {
        task: "arc".into(),
        data: Some(fixture("arc-test.parquet")),
        ..Default::default()
    };
    let e = format!("{:#}", run_eval(&o, &mut scorer()).unwrap_err());
    assert!(
        e.contains("arc-test.parquet") && e.contains("--features parquet"),
        "{e}"
    );
}
