//! The held-out before/after table `train` prints (the numbers come from
//! [`crate::jobs::heldout`]).

use crate::eval::run::first_line;
use crate::jobs::heldout::{samples, FamilyScore, Report};
use anyhow::Result;
use std::fmt::Write as _;

fn pct(s: &FamilyScore) -> String {
    format!("{:5.1} % ({}/{})", 100.0 * s.accuracy(), s.correct, s.n)
}

/// The before/after table and the sample questions, as printed by `train`.
pub fn table(before: &Report, after: &Report, method: &str) -> Result<String> {
    let mut s = String::new();
    let n = before.families.first().map_or(0, |f| f.n);
    writeln!(
        s,
        "held-out split of the bundled suite ({n} test items per family, never trained on):\n"
    )?;
    writeln!(
        s,
        "| family  | metric        | before: base model | after: {method:<11} |"
    )?;
    writeln!(
        s,
        "|---------|---------------|--------------------|{}|",
        "-".repeat(20)
    )?;
    for (b, a) in before.families.iter().zip(&after.families) {
        writeln!(
            s,
            "| {:<7} | {:<13} | {:<18} | {:<18} |",
            b.family,
            b.metric,
            pct(b),
            pct(a)
        )?;
    }
    writeln!(
        s,
        "| mean    |               | {:5.1} %            | {:5.1} %            |",
        100.0 * before.mean(),
        100.0 * after.mean()
    )?;
    for ((ex, b), a) in samples()?.iter().zip(&before.answers).zip(&after.answers) {
        writeln!(
            s,
            "\nQuestion: {}",
            ex.instruction.replace('\n', "\n          ")
        )?;
        let gold = first_line(&ex.response);
        writeln!(s, "  gold:   {gold}")?;
        writeln!(s, "  before: {b}")?;
        writeln!(s, "  after:  {a}")?;
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synth::FAMILIES;
    use crate::jobs::heldout::shown;

    #[test]
    fn the_table_shows_both_columns_and_the_gold_answers() {
        let r = |c: usize, ans: &str| Report {
            families: FAMILIES
                .iter()
                .map(|f| FamilyScore {
                    family: f.to_string(),
                    metric: "acc",
                    correct: c,
                    n: 4,
                })
                .collect(),
            answers: vec![shown(ans, ans); 3],
        };
        let (b, a) = (r(1, "nothing"), r(3, "apple"));
        assert_eq!(b.mean(), 0.25);
        assert_eq!(a.mean(), 0.75);
        let t = table(&b, &a, "bitune").unwrap();
        assert!(
            t.contains(" 25.0 % (1/4)") && t.contains(" 75.0 % (3/4)"),
            "{t}"
        );
        let gold = first_line(&samples().unwrap()[1].response);
        assert!(t.contains(&format!("gold:   {gold}")), "{t}");
        assert!(t.contains("before: \"nothing\"") && t.contains("after:  \"apple\""));
        assert_eq!(shown("", ""), "\"\" (it ended the answer at once)");
        assert_eq!(
            shown("\nQuestion: x", ""),
            "\"\" (it went on with \"\\nQuestion: x\", cut at a stop string)"
        );
    }
}
