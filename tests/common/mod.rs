//! Shared helpers for the integration tests: fixture paths, reading references, comparisons.
#![allow(dead_code)]

use serde_json::Value;
use std::path::PathBuf;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
}

pub fn model_dir(name: &str) -> PathBuf {
    fixtures().join("models").join(name)
}

pub fn read_json(path: &std::path::Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

pub fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

pub fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Max |a-b| / (|b| scale), where the scale is max(max|b|, 1e-3): a relative error that does not
/// blow up at entries near zero.
pub fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let scale = b.iter().fold(1e-3f32, |m, &x| m.max(x.abs()));
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
        / scale
}

/// The default model, if `scripts/fetch-model.sh` has put it in place.
pub fn default_model() -> Option<PathBuf> {
    let p = bitune_rt::model::load::default_model_path();
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "SKIP: default model not at {} (run scripts/fetch-model.sh)",
            p.display()
        );
        None
    }
}
