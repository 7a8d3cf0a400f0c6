//! The synthetic suite: determinism, disjoint splits, answers that check out, and each family
//! evaluated through the harness (a perfect scripted model must score 1).

use bitune_rt::data::synth::{
    bundled_train_set, synth, synth_cli, Split, SynthExample, CATEGORIES, FAMILIES,
};
use bitune_rt::eval::scripted::ScriptedScorer;
use bitune_rt::eval::synthetic::EVAL_SEED;
use bitune_rt::eval::{run_eval, EvalOptions};
use regex::Regex;
use std::collections::HashSet;

fn instructions(v: &[SynthExample]) -> HashSet<String> {
    v.iter().map(|e| e.instruction.clone()).collect()
}

#[test]
fn deterministic_per_seed() {
    for f in FAMILIES.iter().chain(&["mixed"]) {
        let a = synth(f, 40, 7, Split::Train).unwrap();
        assert_eq!(a, synth(f, 40, 7, Split::Train).unwrap(), "{f}");
        assert_ne!(a, synth(f, 40, 8, Split::Train).unwrap(), "{f}");
        assert_eq!(instructions(&a).len(), 40, "{f}: duplicates within a split");
    }
    // A prefix of a larger draw is the smaller draw.
    assert_eq!(
        synth("arith", 10, 3, Split::Test).unwrap(),
        synth("arith", 30, 3, Split::Test).unwrap()[..10]
    );
}

#[test]
fn train_and_test_never_overlap() {
    for f in FAMILIES {
        let train = instructions(&synth(f, 3000, 1, Split::Train).unwrap());
        for seed in [1, 2, EVAL_SEED] {
            let test = synth(f, 400, seed, Split::Test).unwrap();
            assert!(
                test.iter().all(|e| !train.contains(&e.instruction)),
                "{f} seed {seed}"
            );
        }
    }
    // mc: not even the same question with its choices reordered.
    let key = |e: &SynthExample| {
        let mut c = e.choices.clone().unwrap();
        c.sort();
        (e.instruction.lines().next().unwrap().to_string(), c)
    };
    let train: HashSet<_> = synth("mc", 3000, 5, Split::Train)
        .unwrap()
        .iter()
        .map(key)
        .collect();
    assert!(synth("mc", 400, 5, Split::Test)
        .unwrap()
        .iter()
        .all(|e| !train.contains(&key(e))));
    // The default training set never contains what `synthetic:*` evaluates.
    let bundled = instructions(&bundled_train_set());
    for f in FAMILIES {
        assert!(synth(f, 200, EVAL_SEED, Split::Test)
            .unwrap()
            .iter()
            .all(|e| !bundled.contains(&e.instruction)));
    }
}

#[test]
fn mc_answers_check_out() {
    for e in synth("mc", 300, 11, Split::Test).unwrap() {
        let choices = e.choices.clone().unwrap();
        let gold = e.gold.unwrap();
        let asked = e.instruction.lines().next().unwrap();
        let (_, members) = CATEGORIES
            .iter()
            .find(|(n, _)| asked == format!("Which of these is {n}?"))
            .expect(asked);
        let members: Vec<&str> = members.split(' ').collect();
        let hits: Vec<usize> = (0..4)
            .filter(|&i| members.contains(&choices[i].as_str()))
            .collect();
        assert_eq!(hits, [gold], "{e:?}");
        assert_eq!(e.response, choices[gold]);
        assert!(e
            .instruction
            .ends_with(&format!("\n\nChoices:\n{}", choices.join("\n"))));
    }
    // No word is in two categories, so exactly one choice can be right.
    let mut all = HashSet::new();
    for (_, m) in CATEGORIES {
        for w in m.split(' ') {
            assert!(all.insert(w), "{w} is in two categories");
        }
    }
}

#[test]
fn arith_answers_check_out() {
    let eq = Regex::new(r"(\d+) ([-+*]) (\d+) = (\d+)").unwrap();
    for e in synth("arith", 400, 12, Split::Train).unwrap() {
        let (rationale, n) = e.response.rsplit_once("\n#### ").expect(&e.response);
        let mut last = None;
        for (i, c) in eq.captures_iter(rationale).enumerate() {
            let (a, b, r): (i64, i64, i64) = (
                c[1].parse().unwrap(),
                c[3].parse().unwrap(),
                c[4].parse().unwrap(),
            );
            let want = match &c[2] {
                "+" => a + b,
                "-" => a - b,
                _ => a * b,
            };
            assert_eq!(r, want, "{}", e.response);
            assert!(r >= 0);
            if i == 0 {
                assert!(
                    e.instruction.contains(&c[1]) && e.instruction.contains(&c[3]),
                    "{e:?}"
                );
            }
            last = Some(r);
        }
        assert_eq!(
            last.map(|r| r.to_string()).as_deref(),
            Some(n),
            "{}",
            e.response
        );
        assert_eq!(e.answer.as_deref(), Some(n));
    }
}

#[test]
fn lookup_answer_is_in_the_material_before_the_question() {
    for e in synth("lookup", 300, 13, Split::Test).unwrap() {
        let lines: Vec<&str> = e.instruction.lines().collect();
        let question = lines.last().unwrap();
        let facts = &lines[1..lines.len() - 1];
        let name = facts
            .iter()
            .map(|f| f.split(": ").next().unwrap())
            .find(|n| question.contains(n));
        let name = name.expect(question);
        assert!(
            facts.contains(&format!("{name}: {}", e.response).as_str()),
            "{e:?}"
        );
        let values: Vec<String> = facts
            .iter()
            .map(|f| f.split(": ").nth(1).unwrap().to_string())
            .collect();
        assert_eq!(e.choices.as_ref(), Some(&values));
        assert_eq!(values[e.gold.unwrap()], e.response);
        assert_eq!(
            values.iter().collect::<HashSet<_>>().len(),
            values.len(),
            "ambiguous answer"
        );
        assert!(question.ends_with('?') && (3..=5).contains(&facts.len()));
    }
}

#[test]
fn reverse_answers_check_out() {
    for e in synth("reverse", 200, 14, Split::Test).unwrap() {
        let words: Vec<&str> = e
            .instruction
            .split(": ")
            .nth(1)
            .unwrap()
            .split(", ")
            .collect();
        let rev: Vec<&str> = words.iter().rev().copied().collect();
        assert_eq!(e.response, rev.join(", "));
        assert_eq!(e.answer.as_deref(), Some(e.response.as_str()));
    }
}

#[test]
fn bundled_set_mixes_all_families() {
    let b = bundled_train_set();
    assert_eq!(b.len(), 400);
    assert_eq!(b, bundled_train_set());
    assert_eq!(
        b.iter().filter(|e| e.response.contains("\n#### ")).count(),
        100
    );
    assert_eq!(
        b.iter()
            .filter(|e| e.instruction.starts_with("Reverse"))
            .count(),
        100
    );
    assert_eq!(
        b.iter()
            .filter(|e| e.instruction.contains("\n\nChoices:\n"))
            .count(),
        100
    );
}

/// A scripted model that knows every answer: the synthetic tasks must then score 1.
fn oracle(examples: Vec<SynthExample>) -> ScriptedScorer {
    let ex2 = examples.clone();
    let find = |p: &str, ex: &[SynthExample]| {
        ex.iter()
            .find(|e| p == format!("Question: {}\n\nAnswer:", e.instruction))
            .cloned()
    };
    ScriptedScorer::new(
        move |ctx, c| {
            if find(ctx, &examples).is_some_and(|e| c == format!(" {}", e.response)) {
                -1.0
            } else {
                -20.0
            }
        },
        move |p| format!(" {}", find(p, &ex2).map(|e| e.response).unwrap_or_default()),
    )
}

#[test]
fn each_family_evaluates_through_the_harness() {
    let dir = std::env::temp_dir().join(format!("bitune_synth_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (f, metric) in [
        ("mc", "acc,none"),
        ("lookup", "acc_norm,none"),
        ("arith", "exact_match,strict-match"),
        ("reverse", "exact_match,none"),
    ] {
        // Generated in memory (test split, EVAL_SEED) ...
        let o = EvalOptions {
            task: format!("synthetic:{f}"),
            limit: Some(25),
            ..Default::default()
        };
        let mut sc = oracle(synth(f, 25, EVAL_SEED, Split::Test).unwrap());
        let s = run_eval(&o, &mut sc).unwrap();
        assert_eq!(s["results"][&o.task][metric], 1.0, "{f}: {s}");
        assert_eq!(s["n-samples"][&o.task]["effective"], 25);
        // ... and read back from the JSONL that `data synth` writes.
        let path = dir.join(format!("{f}.jsonl"));
        synth_cli(f, 12, 99, Split::Test, Some(path.clone())).unwrap();
        let rows: Vec<SynthExample> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(rows, synth(f, 12, 99, Split::Test).unwrap());
        let o = EvalOptions {
            task: format!("synthetic:{f}"),
            data: Some(path),
            ..Default::default()
        };
        let s = run_eval(&o, &mut oracle(rows)).unwrap();
        assert_eq!(s["results"][&o.task][metric], 1.0, "{f}: {s}");
    }
    // MC rows carry choices/gold; generation rows do not.
    let text = std::fs::read_to_string(dir.join("mc.jsonl")).unwrap();
    assert!(text
        .lines()
        .all(|l| l.contains("\"choices\"") && l.contains("\"gold\"")));
    let text = std::fs::read_to_string(dir.join("reverse.jsonl")).unwrap();
    assert!(text.lines().all(|l| !l.contains("\"choices\"")));
    // A synthetic file without the fields its family needs is a bad row.
    std::fs::write(
        dir.join("bad.jsonl"),
        "{\"instruction\": \"x\", \"response\": \"y\"}\n",
    )
    .unwrap();
    let o = EvalOptions {
        task: "synthetic:mc".into(),
        data: Some(dir.join("bad.jsonl")),
        ..Default::default()
    };
    let e = format!("{:#}", run_eval(&o, &mut oracle(vec![])).unwrap_err());
    assert!(e.contains("bad.jsonl:1:") && e.contains("choices"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}
