//! GSM8K answer extraction and scoring, as lm-evaluation-harness's `gsm8k.yaml`:
//! the two regex filters, then `exact_match` with its `regexes_to_ignore` and `ignore_case`.

use regex::Regex;
use std::sync::OnceLock;

/// lm-eval's value when a filter finds nothing; it never equals a normalised number.
pub const INVALID: &str = "[invalid]";

/// Generation settings of the task, as `gsm8k.yaml`; the scorer adds the tokenizer's EOS itself.
pub const MAX_NEW: usize = 256;
pub const STOPS: &[&str] = &["Question:", "</s>", "<|im_end|>", "<|end_of_text|>"];

struct Res {
    strict: Regex,
    flexible: Regex,
    ignore: [Regex; 3],
    trailing_dot: Regex,
}

fn res() -> &'static Res {
    static R: OnceLock<Res> = OnceLock::new();
    R.get_or_init(|| Res {
        strict: Regex::new(r"#### (-?[0-9.,]+)").unwrap(),
        flexible: Regex::new(r"(-?[$0-9.,]{2,})|(-?[0-9]+)").unwrap(),
        // Applied in the YAML's order: ",", "\$", "(?s).*#### " (greedy, so up to the LAST "#### ").
        ignore: [
            Regex::new(",").unwrap(),
            Regex::new(r"\$").unwrap(),
            Regex::new(r"(?s).*#### ").unwrap(),
        ],
        // Python's `\.$` also matches a dot just before a final newline; keep that newline.
        trailing_dot: Regex::new(r"\.(\n?)\z").unwrap(),
    })
}

/// "strict-match": the first `#### (-?[0-9.,]+)`, its group, stripped.
pub fn strict_match(text: &str) -> String {
    match res().strict.captures(text) {
        Some(c) => c[1].trim().to_string(),
        None => INVALID.to_string(),
    }
}

/// "flexible-extract": the LAST match of `(-?[$0-9.,]{2,})|(-?[0-9]+)` (`group_select: -1`),
/// taking whichever alternative matched, stripped.
pub fn flexible_extract(text: &str) -> String {
    match res().flexible.captures_iter(text).last() {
        Some(c) => c
            .get(1)
            .or_else(|| c.get(2))
            .map_or("", |m| m.as_str())
            .trim()
            .to_string(),
        None => INVALID.to_string(),
    }
}

/// `exact_match`'s normalisation, applied to prediction and reference alike: remove commas, `$`,
/// everything up to and including the last `#### `, one trailing `.`, then lowercase.
pub fn normalize(text: &str) -> String {
    let r = res();
    let mut t = text.to_string();
    for re in &r.ignore {
        t = re.replace_all(&t, "").into_owned();
    }
    r.trailing_dot.replace(&t, "$1").to_lowercase()
}

/// 1.0 when the normalised strings are equal (lm-eval scores `[invalid]` the same way: it cannot
/// equal a reference that ends in `#### N`).
pub fn exact_match(prediction: &str, reference: &str) -> f64 {
    f64::from(u8::from(normalize(prediction) == normalize(reference)))
}

/// Cuts `text` at the first occurrence of any stop string, as lm-eval's `generate_until` does
/// (`s.split(term)[0]` for each term), so a scorer that returns the raw text is still scored right.
pub fn cut_at_stops(text: &str, stops: &[String]) -> String {
    let mut t = text;
    for s in stops.iter().filter(|s| !s.is_empty()) {
        if let Some(i) = t.find(s.as_str()) {
            t = &t[..i];
        }
    }
    t.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_takes_the_first_marker() {
        assert_eq!(strict_match("so 3+4=7\n#### 7"), "7");
        assert_eq!(strict_match("#### 1,000. then #### 5"), "1,000.");
        assert_eq!(strict_match("#### -12"), "-12");
        assert_eq!(strict_match("#### 2.50"), "2.50");
        assert_eq!(strict_match("the answer is 7"), INVALID);
        // `####` without the space and number is no match.
        assert_eq!(strict_match("####7"), INVALID);
    }

    #[test]
    fn flexible_takes_the_last_number() {
        assert_eq!(flexible_extract("3 apples and 4 pears make 7"), "7");
        assert_eq!(flexible_extract("It costs $1,000."), "$1,000.");
        assert_eq!(flexible_extract("from 10 down to -3"), "-3");
        assert_eq!(flexible_extract("#### 5\n#### 6"), "6");
        assert_eq!(flexible_extract("pi is 3.14"), "3.14");
        assert_eq!(flexible_extract("no digits here"), INVALID);
        // A lone "$" or "." is too short for the first alternative and has no digit for the second.
        assert_eq!(flexible_extract("pay $ now."), INVALID);
    }

    #[test]
    fn normalisation_matches_lm_eval() {
        assert_eq!(normalize("$1,000."), "1000");
        assert_eq!(
            normalize("Janet sells 16 - 3 - 4 = 9 duck eggs.\n#### 18"),
            "18"
        );
        assert_eq!(normalize("#### 5\nmore\n#### 6"), "6");
        assert_eq!(normalize("-7"), "-7");
        assert_eq!(normalize("2.50"), "2.50");
        assert_eq!(normalize("12.\n"), "12\n");
        assert_eq!(normalize("[INVALID]"), "[invalid]");
        assert_eq!(normalize("1.5."), "1.5");
    }

    #[test]
    fn exact_match_on_both_sides() {
        let reference = "She pays 500 + 500 = $1,000.\n#### 1000";
        assert_eq!(
            exact_match(&strict_match("so #### $1,000."), reference),
            0.0
        ); // strict needs digits right after
        assert_eq!(exact_match(&strict_match("so #### 1,000."), reference), 1.0);
        assert_eq!(
            exact_match(&flexible_extract("it is $1,000."), reference),
            1.0
        );
        assert_eq!(exact_match(&strict_match("#### -4"), "#### -4"), 1.0);
        assert_eq!(exact_match(&strict_match("#### 4"), "#### -4"), 0.0);
        assert_eq!(exact_match(&strict_match("no answer"), reference), 0.0);
        assert_eq!(
            exact_match(&flexible_extract("answer: 0.5"), "x\n#### 0.5"),
            1.0
        );
    }

    #[test]
    fn stops_cut_the_text() {
        let stops: Vec<String> = STOPS.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            cut_at_stops(" 3 + 4 = 7\n#### 7\n\nQuestion: next", &stops),
            " 3 + 4 = 7\n#### 7\n\n"
        );
        assert_eq!(cut_at_stops("a</s>b<|im_end|>c", &stops), "a");
        assert_eq!(cut_at_stops("no stop", &stops), "no stop");
    }
}
