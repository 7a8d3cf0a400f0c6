//! The import rules the source layout keeps (docs/ARCHITECTURE.md, "Layers"): the backend knows
//! no model, the model knows no method, nothing below the jobs knows a job, and only `main` knows
//! the CLI. A rule broken in any `src/` file fails here with the file, line and path that broke it.

use std::path::{Path, PathBuf};

/// (directory under `src/`, top-level modules it must not reach)
const RULES: &[(&str, &[&str])] = &[
    ("model", &["bitune", "train", "cli", "eval", "jobs"]),
    ("bitune", &["train", "cli", "eval", "jobs"]),
    (
        "backend",
        &["model", "bitune", "train", "cli", "eval", "jobs"],
    ),
    (
        "io",
        &["model", "bitune", "backend", "train", "cli", "eval", "jobs"],
    ),
    ("data", &["train", "cli", "eval", "jobs"]),
    ("train", &["cli", "eval", "jobs"]),
    ("eval", &["cli", "train", "jobs"]),
    ("jobs", &["cli"]),
    ("ffi", &["cli"]),
];

#[test]
fn layers_import_only_downwards() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut broken = Vec::new();
    for (dir, forbidden) in RULES {
        for file in rust_files(&src.join(dir)) {
            let text = std::fs::read_to_string(&file).unwrap();
            let module = module_path(&src, &file);
            for (line, target) in reached_modules(&text, &module) {
                if forbidden.contains(&target.as_str()) {
                    let rel = file.strip_prefix(&src).unwrap().display().to_string();
                    broken.push(format!(
                        "src/{rel}:{line}: src/{dir} reaches crate::{target}"
                    ));
                }
            }
        }
    }
    assert!(broken.is_empty(), "layering broken:\n{}", broken.join("\n"));
}

#[test]
fn the_scanner_sees_every_form_of_path() {
    let m = |s: &str| vec!["model".to_string(), s.to_string()];
    let src = "use crate::backend::Backend;\n\
               use crate::{rng::Rng, train::atomic};\n\
               // use crate::cli::x; (a comment is not an import)\n\
               fn f() { crate::eval::run(); let s = \"crate::jobs\"; let q = '\"'; }\n\
               use super::super::bitune::peft;\n\
               use super::weights::Target;\n\
               /* crate::cli */ pub(crate) fn g() {}\n";
    let got = reached_modules(src, &m("transformer"));
    assert_eq!(
        got,
        vec![
            (1, "backend".to_string()),
            (2, "rng".to_string()),
            (2, "train".to_string()),
            (4, "eval".to_string()),
            (5, "bitune".to_string()),
            (6, "model".to_string()),
        ]
    );
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// The module path of a file: `src/model/transformer/mod.rs` → `[model, transformer]`.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// Each `(line, top-level module)` a file's paths reach: `crate::x::…`, every item of a
/// `crate::{x::…, y::…}` group, and `super::` chains resolved against the file's module.
fn reached_modules(text: &str, module: &[String]) -> Vec<(usize, String)> {
    let code = strip_comments_and_strings(text);
    let mut out = Vec::new();
    for (i, line) in code.lines().enumerate() {
        let mut rest = line;
        while let Some(at) = find_path_start(rest) {
            let tail = &rest[at..];
            let (targets, used) = resolve(tail, module);
            for t in targets {
                out.push((i + 1, t));
            }
            rest = &tail[used.max(1)..];
        }
    }
    out
}

/// Where the next `crate::` or `super::` path starts (not inside an identifier such as `$crate`).
fn find_path_start(s: &str) -> Option<usize> {
    let mut best: Option<usize> = None;
    for key in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(p) = s[from..].find(key) {
            let at = from + p;
            let prev = s[..at].chars().next_back();
            if !prev.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
                best = Some(best.map_or(at, |b| b.min(at)));
                break;
            }
            from = at + key.len();
        }
    }
    best
}

/// The top-level modules one path reaches, and how many bytes of `s` it spans.
fn resolve(s: &str, module: &[String]) -> (Vec<String>, usize) {
    let mut base: Vec<String> = Vec::new();
    let mut pos = 0;
    if s.starts_with("crate::") {
        pos = "crate::".len();
    } else {
        base = module.to_vec();
        while s[pos..].starts_with("super::") {
            base.pop();
            pos += "super::".len();
        }
    }
    let rest = &s[pos..];
    if let Some(group) = rest.strip_prefix('{') {
        let end = matching_brace(group);
        let items = &group[..end];
        let mut targets = Vec::new();
        for item in split_top_level(items) {
            let first = first_segment(item.trim());
            if !first.is_empty() && first != "self" {
                targets.push(top(&base, first));
            } else if first == "self" {
                targets.extend(base.first().cloned());
            }
        }
        return (targets, pos + 1 + end);
    }
    let first = first_segment(rest);
    if first.is_empty() {
        return (Vec::new(), pos);
    }
    (vec![top(&base, first)], pos + first.len())
}

fn top(base: &[String], first: &str) -> String {
    base.first().cloned().unwrap_or_else(|| first.to_string())
}

fn first_segment(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

fn matching_brace(s: &str) -> usize {
    let mut depth = 1;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
    }
    s.len()
}

fn split_top_level(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// The text with comments and string/char literal contents blanked (newlines kept), so that
/// only code is scanned and line numbers still match.
fn strip_comments_and_strings(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if b[i] == b'\n' {
                        out.push('\n');
                    }
                    i += 1;
                }
            }
        } else if b[i] == b'\'' && char_literal_len(&b[i..]) > 0 {
            i += char_literal_len(&b[i..]);
            out.push_str("' '");
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                } else if b[i] == b'\n' {
                    out.push('\n');
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else {
            let c = text[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// The length of a char literal starting at `b[0] == '\''` (`'x'`, `'\n'`, `'\u{..}'`), or 0
/// for a lifetime.
fn char_literal_len(b: &[u8]) -> usize {
    if b.len() > 1 && b[1] == b'\\' {
        return b
            .iter()
            .skip(2)
            .position(|&c| c == b'\'')
            .map_or(0, |p| p + 3);
    }
    let s = std::str::from_utf8(&b[1..b.len().min(6)])
        .unwrap_or_else(|e| std::str::from_utf8(&b[1..1 + e.valid_up_to()]).unwrap());
    match s.chars().next() {
        Some(c) if s[c.len_utf8()..].starts_with('\'') => 2 + c.len_utf8(),
        _ => 0,
    }
}
