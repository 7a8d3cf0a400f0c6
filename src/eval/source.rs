//! Reading a data set from disk in its Hugging Face published form: a `.jsonl` file, a `.parquet`
//! file (with the `parquet` feature), or a folder of them (MMLU ships one folder per subject).
//! Every row keeps its file and 1-based row number so that errors can point at it.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// One raw row, or the reason it could not be read (kept so `skip_bad_rows` can count it).
pub struct Row {
    pub file: PathBuf,
    pub row: usize,
    pub value: Result<Value>,
}

impl Row {
    /// `file:row` prefix used by every per-row error.
    pub fn at(&self) -> String {
        format!("{}:{}", self.file.display(), self.row)
    }
}

/// Reads every row of `path`. In a folder, only files whose name contains `split` are read when
/// there are any (published folders hold train/validation/test side by side), and a sub-folder
/// named `all` is ignored when it has siblings (MMLU's `all/` repeats every subject).
pub fn read_rows(path: &Path, split: &str) -> Result<Vec<Row>> {
    if !path.exists() {
        bail!("{}: no such file or folder", path.display());
    }
    let files = if path.is_dir() {
        let mut all = Vec::new();
        collect(path, &mut all)?;
        all.sort();
        let in_split: Vec<PathBuf> = all
            .iter()
            .filter(|f| file_name(f).contains(split))
            .cloned()
            .collect();
        let files = if in_split.is_empty() { all } else { in_split };
        if files.is_empty() {
            bail!("{}: folder has no .jsonl or .parquet files", path.display());
        }
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut rows = Vec::new();
    for f in files {
        rows.extend(read_file(&f)?);
    }
    Ok(rows)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut subdirs = Vec::new();
    for entry in
        std::fs::read_dir(dir).with_context(|| format!("reading folder {}", dir.display()))?
    {
        let p = entry?.path();
        if p.is_dir() {
            subdirs.push(p);
        } else if is_data_file(&p) {
            out.push(p);
        }
    }
    let skip_all = subdirs.len() > 1;
    for d in subdirs {
        if !(skip_all && file_name(&d) == "all") {
            collect(&d, out)?;
        }
    }
    Ok(())
}

fn is_data_file(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("jsonl" | "json" | "parquet")
    )
}

fn read_file(path: &Path) -> Result<Vec<Row>> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("parquet") => read_parquet(path),
        Some("jsonl" | "json") => read_jsonl(path),
        _ => bail!(
            "{}: unsupported file type (expected .jsonl or .parquet)",
            path.display()
        ),
    }
}

/// JSON Lines; blank lines are not rows but still count for the line numbers.
pub fn read_jsonl(path: &Path) -> Result<Vec<Row>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| Row {
            file: path.to_path_buf(),
            row: i + 1,
            value: serde_json::from_str(l).map_err(|e| anyhow::anyhow!("malformed JSON: {e}")),
        })
        .collect())
}

#[cfg(feature = "parquet")]
fn read_parquet(path: &Path) -> Result<Vec<Row>> {
    use parquet::file::reader::SerializedFileReader;
    let file =
        std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let reader = SerializedFileReader::new(file)
        .with_context(|| format!("{}: not a Parquet file", path.display()))?;
    // The row API turns nested columns (ARC's `choices: {text: [..], label: [..]}`) into the same
    // JSON shape the data set has in JSONL, so both go through one parser.
    Ok(reader
        .into_iter()
        .enumerate()
        .map(|(i, r)| Row {
            file: path.to_path_buf(),
            row: i + 1,
            value: r
                .map(|row| row.to_json_value())
                .map_err(|e| anyhow::anyhow!("unreadable Parquet row: {e}")),
        })
        .collect())
}

#[cfg(not(feature = "parquet"))]
fn read_parquet(path: &Path) -> Result<Vec<Row>> {
    bail!(
        "{}: this build reads Parquet only with `--features parquet`; rebuild with it, or convert the file to JSONL",
        path.display()
    )
}
