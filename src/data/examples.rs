//! Instruction data: JSONL rows, the reference code's prompt template, tokenization with the boundary check.

use crate::bitune::plan::Example;
use anyhow::{anyhow, bail, Context, Result};
use std::path::Path;
use tokenizers::Tokenizer;

/// `Question: {instruction}\n\nAnswer:` (the authors' reference template).
pub fn prompt_text(instruction: &str) -> String {
    format!("Question: {instruction}\n\nAnswer:")
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    pub instruction: String,
    pub response: String,
}

/// Reads JSONL rows with the two named fields; errors name the file and line.
pub fn read_jsonl(path: &Path, instr_field: &str, resp_field: &str) -> Result<Vec<Pair>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), i + 1);
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}: malformed JSON", at()))?;
        let get = |f: &str| -> Result<String> {
            v.get(f)
                .and_then(|x| x.as_str())
                .map(String::from)
                .ok_or_else(|| anyhow!("{}: missing string field `{f}`", at()))
        };
        let (instruction, response) = (get(instr_field)?, get(resp_field)?);
        if response.trim().is_empty() {
            bail!("{}: empty `{resp_field}`", at());
        }
        out.push(Pair {
            instruction,
            response,
        });
    }
    Ok(out)
}

/// Tokenizes pairs as the reference does: the prompt alone gives P, the full string
/// `prompt + " " + response + EOS` gives the ids; P must be a prefix boundary of the full
/// tokenization. Over-long examples (> `max_len`) are skipped and counted.
pub struct Tokenized {
    pub examples: Vec<Example>,
    pub too_long: usize,
}

pub fn tokenize(tok: &Tokenizer, pairs: &[Pair], eos: u32, max_len: usize) -> Result<Tokenized> {
    let mut examples = Vec::new();
    let mut too_long = 0;
    for (i, p) in pairs.iter().enumerate() {
        let prompt = prompt_text(&p.instruction);
        let full = format!("{prompt} {}", p.response);
        let pe = tok
            .encode(prompt.as_str(), true)
            .map_err(|e| anyhow!("example {}: {e}", i + 1))?;
        let fe = tok
            .encode(full.as_str(), true)
            .map_err(|e| anyhow!("example {}: {e}", i + 1))?;
        let (pids, mut ids) = (pe.get_ids(), fe.get_ids().to_vec());
        ids.push(eos);
        if ids.len() < pids.len() + 2 || ids[..pids.len()] != *pids {
            bail!(
                "example {}: the prompt's tokens are not a prefix of the full text's (the tokenizer merges across the answer boundary)",
                i + 1
            );
        }
        if ids.len() > max_len {
            too_long += 1;
            continue;
        }
        examples.push(Example {
            prompt_len: pids.len(),
            ids,
        });
    }
    Ok(Tokenized { examples, too_long })
}
