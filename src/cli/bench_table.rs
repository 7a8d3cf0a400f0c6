//! `bench`'s table for people: base, LoRA and Bitune as rows; prefill, decode, its overhead over
//! the base model's (paired by round), the share of the decode floor reached, end-to-end and the
//! end-to-end overhead over LoRA as columns, then the
//! floor itself; the train-step rows with `--train`. Built from
//! the JSON report alone, so what a person reads and what a machine reads cannot disagree.

use serde_json::Value;
use std::fmt::Write as _;

/// The rows in order: JSON key and the name printed.
const ROWS: &[(&str, &str)] = &[("base", "base"), ("lora", "LoRA"), ("bitune", "Bitune")];

fn over(x: f64, reference: Option<f64>) -> String {
    match reference {
        Some(r) if r > 0.0 => format!("{:+.1} %", 100.0 * (x / r - 1.0)),
        _ => "–".into(),
    }
}

pub fn table(r: &Value) -> String {
    let mut s = String::new();
    let res = &r["results"];
    let _ = writeln!(
        s,
        "bitune-rt bench on {}, commit {}: prompt {} tokens, answer {} tokens, median of {}\n",
        r["device"].as_str().unwrap_or("?"),
        r["commit"].as_str().unwrap_or("?"),
        r["prompt"],
        r["answer"],
        r["repeat"]
    );
    let lora_e2e = res["lora"]["end_to_end_s"].as_f64();
    let inference: Vec<_> = ROWS.iter().filter(|(k, _)| res[*k].is_object()).collect();
    if !inference.is_empty() {
        let _ = writeln!(
            s,
            "| model  | prefill ms | decode ms/token | decode over base | share of floor | end-to-end s | overhead over LoRA |"
        );
        let _ = writeln!(
            s,
            "|--------|-----------:|----------------:|-----------------:|---------------:|-------------:|-------------------:|"
        );
        for (key, name) in inference {
            let x = &res[*key];
            let f = |k: &str| x[k].as_f64().unwrap_or(f64::NAN);
            let e2e = f("end_to_end_s");
            let share = x["decode_floor_share"]
                .as_f64()
                .map_or("–".into(), |v| format!("{:.1} %", 100.0 * v));
            let vs_base = match (*key, x["decode_over_base"].as_f64()) {
                ("base", _) | (_, None) => "–".into(),
                (_, Some(v)) => over(v, Some(1.0)),
            };
            let _ = writeln!(
                s,
                "| {name:<6} | {:>10.1} | {:>15.2} | {vs_base:>16} | {share:>14} | {:>12.2} | {:>18} |",
                f("prefill_ms"),
                f("decode_ms_per_tok"),
                e2e,
                if *key == "lora" {
                    "–".into()
                } else {
                    over(e2e, lora_e2e)
                }
            );
        }
    }
    if let (Some(bytes), Some(g), Some(f)) = (
        r["decode_weight_bytes"].as_f64(),
        r["bandwidth_gbs"].as_f64(),
        r["decode_floor_ms_per_tok"].as_f64(),
    ) {
        let _ = writeln!(
            s,
            "\ndecode floor: {:.1} MB of weights per token / {g:.1} GB/s (STREAM copy) = {f:.2} ms/token",
            bytes / 1e6
        );
    }
    let t = &res["train"];
    if let (Some(l), Some(b)) = (t["lora_step_s"].as_f64(), t["bitune_step_s"].as_f64()) {
        if !s.ends_with("\n\n") {
            s.push('\n');
        }
        let ideal = t["ideal_ratio"].as_f64().unwrap_or(f64::NAN);
        let _ = writeln!(
            s,
            "| train step ({}+{} tokens) | s | overhead over LoRA |",
            r["prompt"], r["answer"]
        );
        let _ = writeln!(s, "|--------|------:|-------------------:|");
        let _ = writeln!(s, "| LoRA   | {l:>5.3} | {:>18} |", "–");
        let _ = writeln!(s, "| Bitune | {b:>5.3} | {:>18} |", over(b, Some(l)));
        let _ = writeln!(
            s,
            "\n(the ideal Bitune overhead for these lengths, from the extra prompt pass alone, is {:+.1} %)",
            100.0 * (ideal - 1.0)
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rows_columns_and_overheads() {
        let row = |p: f64, d: f64, e: f64| {
            json!({"prefill_ms": p, "decode_ms_per_tok": d, "end_to_end_s": e,
            "decode_floor_share": 8.0 / d, "decode_over_base": d / 16.0 + 0.01})
        };
        let r = json!({"device": "cpu: x (2 threads)", "commit": "abc", "prompt": 50,
            "answer": 200, "repeat": 3, "decode_weight_bytes": 80e6, "bandwidth_gbs": 10.0,
            "decode_floor_ms_per_tok": 8.0, "results": {
                "base": row(100.0, 16.0, 3.3), "lora": row(110.0, 17.0, 4.0),
                "bitune": row(200.0, 17.5, 5.0),
                "train": {"lora_step_s": 1.0, "bitune_step_s": 1.5, "ideal_ratio": 1.2}}});
        let t = table(&r);
        let lines: Vec<&str> = t.lines().filter(|l| l.starts_with('|')).collect();
        assert_eq!(lines.len(), 9, "{t}");
        assert!(
            lines[2].starts_with("| base ") && lines[2].ends_with("-17.5 % |"),
            "{t}"
        );
        // 8 ms of floor under 16 ms/token measured: half.
        assert!(lines[2].contains("|         50.0 % |"), "{t}");
        // The paired ratio as reported (not the ratio of the medians): 17/16 + 0.01 = 1.0725.
        assert!(lines[2].contains(" 16.00 |                – |"), "{t}");
        assert!(lines[3].contains(" 17.00 |           +7.3 % |"), "{t}");
        assert!(lines[4].contains("|         45.7 % |"), "{t}");
        assert!(
            t.contains("decode floor: 80.0 MB of weights per token / 10.0 GB/s (STREAM copy) = 8.00 ms/token"),
            "{t}"
        );
        assert!(
            lines[3].starts_with("| LoRA ") && lines[3].ends_with("– |"),
            "{t}"
        );
        assert!(
            lines[4].contains("200.0") && lines[4].ends_with("+25.0 % |"),
            "{t}"
        );
        assert!(lines[8].starts_with("| Bitune | 1.500 |") && lines[8].ends_with("+50.0 % |"));
        assert!(t.contains("is +20.0 %"), "{t}");
        // Without --train there are no train rows; with --train-only no inference rows.
        let mut r2 = r.clone();
        r2["results"].as_object_mut().unwrap().remove("train");
        assert_eq!(table(&r2).lines().filter(|l| l.starts_with('|')).count(), 5);
        // A device without a measured bandwidth: null floor fields, a dash, no floor line.
        let mut r4 = r2.clone();
        r4["bandwidth_gbs"] = json!(null);
        r4["results"]["base"]["decode_floor_share"] = json!(null);
        let t4 = table(&r4);
        assert!(
            t4.lines().nth(4).unwrap().contains("|              – |"),
            "{t4}"
        );
        assert!(!t4.contains("decode floor"), "{t4}");
        let r3 = json!({"results": {"train": r["results"]["train"].clone()}});
        assert_eq!(table(&r3).lines().filter(|l| l.starts_with('|')).count(), 4);
    }
}
