//! A seeded synthetic instruction suite: short texts in vocabulary a 135M model knows, each with a
//! verifiable answer, in the shapes of the paper's tasks.
//!
//! * `mc`: "Which of these is a fruit?" with four choices, in the ARC/CSQA template shape.
//! * `arith`: one- or two-step word problems with a GSM8K-style rationale ending `#### N`.
//! * `lookup`: a list of "Name: attribute" facts, THEN the question about one of them, so a model
//!   that reads the prompt bidirectionally can know what to attend to while encoding the facts.
//! * `reverse`: reverse a short list of words.
//!
//! Train and test cannot overlap: every example has a canonical key, and a hash of that key
//! alone decides the split it belongs to; each split also draws from its own seed stream.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;

pub const FAMILIES: &[&str] = &["mc", "arith", "lookup", "reverse"];

/// Seed of [`bundled_train_set`]; changing it changes every default training run.
pub const BUNDLED_SEED: u64 = 240_514_862;
pub const BUNDLED_N: usize = 400;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

impl std::str::FromStr for Split {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "train" => Ok(Split::Train),
            "test" => Ok(Split::Test),
            _ => bail!("unknown split {s:?} (train or test)"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SynthExample {
    pub instruction: String,
    pub response: String,
    /// Multiple-choice families: the candidates, scored as `" " + choice`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choices: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gold: Option<usize>,
    /// The short answer (`arith`: the number after `####`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
}

/// splitmix64: a whole generator in one u64, so the suite does not depend on any RNG crate (or
/// on the training RNG, whose changes must not change the data).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in lo..=hi (the modulo bias is irrelevant at these sizes).
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.range(0, xs.len() - 1)]
    }
    /// `k` distinct elements in random order.
    fn sample<T: Clone>(&mut self, xs: &[T], k: usize) -> Vec<T> {
        let mut idx: Vec<usize> = (0..xs.len()).collect();
        for i in 0..k {
            let j = self.range(i, idx.len() - 1);
            idx.swap(i, j);
        }
        idx[..k].iter().map(|&i| xs[i].clone()).collect()
    }
}

/// FNV-1a, fixed forever: it decides which split an example belongs to.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// One key in eight is a test key.
pub fn split_of(key: &str) -> Split {
    if fnv1a(key).is_multiple_of(8) {
        Split::Test
    } else {
        Split::Train
    }
}

/// `n` distinct examples of `task` (a family, or `mixed` for all families in turn).
pub fn synth(task: &str, n: usize, seed: u64, split: Split) -> Result<Vec<SynthExample>> {
    if task == "mixed" {
        let per = n.div_ceil(FAMILIES.len());
        let sets: Vec<Vec<SynthExample>> = FAMILIES
            .iter()
            .map(|f| synth(f, per, seed, split))
            .collect::<Result<_>>()?;
        let mut out = Vec::with_capacity(n);
        for i in 0..per {
            out.extend(sets.iter().filter_map(|s| s.get(i).cloned()));
        }
        out.truncate(n);
        return Ok(out);
    }
    let Some(fam) = FAMILIES.iter().position(|f| *f == task) else {
        bail!(
            "unknown synthetic family {task:?}; known: {}, mixed",
            FAMILIES.join(", ")
        );
    };
    let stream = (fam as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03)
        ^ if split == Split::Test { 0x5EED_7E57 } else { 0 };
    let mut rng = SplitMix(seed ^ stream);
    let (mut out, mut seen) = (Vec::with_capacity(n), HashSet::new());
    let max_draws = 1000 * n + 10_000;
    for _ in 0..max_draws {
        if out.len() == n {
            break;
        }
        let (key, ex) = generate(fam, &mut rng);
        if split_of(&key) == split && seen.insert(key) {
            out.push(ex);
        }
    }
    if out.len() < n {
        bail!(
            "synthetic {task}: only {} distinct {split:?} examples found, {n} asked",
            out.len()
        );
    }
    Ok(out)
}

fn generate(fam: usize, rng: &mut SplitMix) -> (String, SynthExample) {
    match fam {
        0 => gen_mc(rng),
        1 => gen_arith(rng),
        2 => gen_lookup(rng),
        _ => gen_reverse(rng),
    }
}

/// Word lists are space-separated strings: compact to read and to edit.
fn words(list: &'static str) -> Vec<&'static str> {
    list.split(' ').collect()
}

fn example(
    instruction: String,
    response: String,
    mc: Option<(Vec<String>, usize)>,
) -> SynthExample {
    let (choices, gold) = mc.map_or((None, None), |(c, g)| (Some(c), Some(g)));
    SynthExample {
        instruction,
        answer: Some(response.clone()),
        response,
        choices,
        gold,
    }
}

/// Category name (with article) and its members; no word is in two categories.
pub const CATEGORIES: &[(&str, &str)] = &[
    (
        "a fruit",
        "apple banana grape pear peach cherry lemon mango plum melon",
    ),
    (
        "an animal",
        "dog cat horse cow lion tiger rabbit mouse sheep bear",
    ),
    (
        "a colour",
        "red blue green yellow black white pink purple brown gray",
    ),
    (
        "a vehicle",
        "car bus train truck bike boat plane ship taxi van",
    ),
    (
        "a part of the body",
        "hand foot nose ear eye arm leg mouth knee finger",
    ),
    ("a drink", "water milk tea coffee juice soda"),
    (
        "a piece of clothing",
        "shirt hat coat sock shoe dress scarf glove",
    ),
];

fn gen_mc(rng: &mut SplitMix) -> (String, SynthExample) {
    let target = rng.range(0, CATEGORIES.len() - 1);
    let (name, members) = (CATEGORIES[target].0, words(CATEGORIES[target].1));
    let others: Vec<usize> = (0..CATEGORIES.len()).filter(|&c| c != target).collect();
    let mut choices = vec![rng.pick(&members).to_string()];
    for c in rng.sample(&others, 3) {
        choices.push(rng.pick(&words(CATEGORIES[c].1)).to_string());
    }
    let choices = rng.sample(&choices, 4);
    let gold = choices.iter().position(|c| members.contains(&c.as_str()));
    let gold = gold.unwrap_or(0);
    let question = format!("Which of these is {name}?");
    // The key ignores the choice order, so a reshuffled question never crosses splits.
    let mut sorted = choices.clone();
    sorted.sort();
    let key = format!("mc|{question}|{}", sorted.join(","));
    let instruction = format!("{question}\n\nChoices:\n{}", choices.join("\n"));
    let response = choices[gold].clone();
    (key, example(instruction, response, Some((choices, gold))))
}

/// Names, each with its pronoun.
const NAMES: &str = "Tom:He Anna:She Ben:He Lucy:She Sam:He Mia:She Jack:He Emma:She Max:He Lily:She Leo:He Zoe:She";
const ITEMS: &str = "apple pencil book ball cookie card flower stamp sticker egg";

fn name_and_pronoun(entry: &'static str) -> (&'static str, &'static str) {
    entry.split_once(':').unwrap_or((entry, "They"))
}

fn gen_arith(rng: &mut SplitMix) -> (String, SynthExample) {
    let (name, he) = name_and_pronoun(rng.pick(&words(NAMES)));
    let item = rng.pick(&words(ITEMS));
    let (q, rationale, answer) = match rng.range(0, 3) {
        0 => {
            let (a, b) = (rng.range(2, 50), rng.range(2, 50));
            let q = format!("{name} has {a} {item}s. {he} gets {b} more.");
            let q = format!("{q} How many {item}s does {name} have now?");
            (
                q,
                format!("{name} has {a} + {b} = {} {item}s.", a + b),
                a + b,
            )
        }
        1 => {
            let a = rng.range(5, 60);
            let b = rng.range(1, a - 1);
            let q = format!("{name} has {a} {item}s. {he} gives {b} away.");
            let q = format!("{q} How many {item}s does {name} have left?");
            (
                q,
                format!("{name} has {a} - {b} = {} {item}s left.", a - b),
                a - b,
            )
        }
        2 => {
            let (a, b) = (rng.range(2, 9), rng.range(2, 12));
            let q = format!("There are {a} boxes. Each box has {b} {item}s.");
            let q = format!("{q} How many {item}s are there in all?");
            (
                q,
                format!("There are {a} * {b} = {} {item}s.", a * b),
                a * b,
            )
        }
        _ => {
            let (a, b) = (rng.range(2, 30), rng.range(2, 30));
            let (s, c) = (a + b, rng.range(1, a + b - 1));
            let q =
                format!("{name} buys {a} {item}s and then {b} more. {he} gives {c} to a friend.");
            let q = format!("{q} How many {item}s does {name} have now?");
            let r = format!(
                "{name} buys {a} + {b} = {s} {item}s. Then {s} - {c} = {} {item}s are left.",
                s - c
            );
            (q, r, s - c)
        }
    };
    let mut ex = example(q.clone(), format!("{rationale}\n#### {answer}"), None);
    ex.answer = Some(answer.to_string());
    (format!("arith|{q}"), ex)
}

/// (list heading, question with `{}` for the name, values).
const RELATIONS: &[(&str, &str, &str)] = &[
    (
        "Favourite colours",
        "What is {}'s favourite colour?",
        "red blue green yellow pink purple brown white",
    ),
    (
        "Pets",
        "What is {}'s pet?",
        "dog cat rabbit fish bird horse mouse turtle",
    ),
    (
        "Home towns",
        "Which city does {} live in?",
        "Paris London Rome Berlin Madrid Tokyo Cairo Dublin",
    ),
    (
        "Favourite fruits",
        "What is {}'s favourite fruit?",
        "apple banana grape pear peach cherry lemon mango",
    ),
];

fn gen_lookup(rng: &mut SplitMix) -> (String, SynthExample) {
    let (heading, question, values) = rng.pick(RELATIONS);
    let k = rng.range(3, 5);
    let names: Vec<&str> = rng
        .sample(&words(NAMES), k)
        .into_iter()
        .map(|n| name_and_pronoun(n).0)
        .collect();
    let vals: Vec<String> = rng
        .sample(&words(values), k)
        .into_iter()
        .map(String::from)
        .collect();
    let gold = rng.range(0, k - 1);
    let facts: Vec<String> = names
        .iter()
        .zip(&vals)
        .map(|(n, v)| format!("{n}: {v}"))
        .collect();
    let asked = question.replace("{}", names[gold]);
    let instruction = format!("{heading}:\n{}\n{asked}", facts.join("\n"));
    let response = vals[gold].clone();
    (
        format!("lookup|{instruction}"),
        example(instruction, response, Some((vals, gold))),
    )
}

const WORDS: &str = "cat dog sun moon tree book red blue milk bread car ship rain snow hat door fish bird cake star";

fn gen_reverse(rng: &mut SplitMix) -> (String, SynthExample) {
    let k = rng.range(3, 5);
    let list = rng.sample(&words(WORDS), k);
    let reversed: Vec<&str> = list.iter().rev().copied().collect();
    let instruction = format!("Reverse the order of these words: {}", list.join(", "));
    (
        format!("reverse|{instruction}"),
        example(instruction, reversed.join(", "), None),
    )
}

/// The default training set of `bitune-rt train` with no `--data`: all families in turn.
pub fn bundled_train_set() -> Vec<SynthExample> {
    synth("mixed", BUNDLED_N, BUNDLED_SEED, Split::Train)
        .expect("the bundled synthetic set is generable")
}

/// One JSON object per line: `{"instruction", "response"}` plus the MC/answer fields when set.
pub fn write_jsonl(examples: &[SynthExample], w: &mut dyn Write) -> Result<()> {
    for e in examples {
        serde_json::to_writer(&mut *w, e)?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    Ok(())
}

/// `bitune-rt data synth --task NAME --n N --seed S [--split train|test] [--out FILE]`.
pub fn synth_cli(
    task: &str,
    n: usize,
    seed: u64,
    split: Split,
    out: Option<PathBuf>,
) -> Result<()> {
    let examples = synth(task, n, seed, split)?;
    match out {
        Some(p) => {
            let f = std::fs::File::create(&p)
                .with_context(|| format!("cannot create {}", p.display()))?;
            write_jsonl(&examples, &mut std::io::BufWriter::new(f))
        }
        None => write_jsonl(&examples, &mut std::io::stdout().lock()),
    }
}
