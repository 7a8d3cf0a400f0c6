//! Resolving `--model` (a Hugging Face folder or a `.gguf` file, or the default model) into
//! config, tensors and tokenizer.

use super::config::ModelConfig;
use super::tensors::TensorMap;
use super::weights::Weights;
use crate::backend::Backend;
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Where `scripts/fetch-model.sh` puts the default model.
pub fn default_model_path() -> PathBuf {
    let home = std::env::var_os("BITUNE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let h = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("."));
            h.join(".cache").join("bitune-rt")
        });
    home.join("models").join(DEFAULT_MODEL_FILE)
}

pub fn resolve_model(arg: Option<&Path>) -> Result<PathBuf> {
    match arg {
        Some(p) => Ok(p.to_path_buf()),
        None => {
            let p = default_model_path();
            if !p.exists() {
                bail!(
                    "the default model is not at {} yet: run `scripts/fetch-model.sh` once (or pass --model)",
                    p.display()
                );
            }
            Ok(p)
        }
    }
}

/// A checkpoint read from disk, before it is put on a backend.
pub struct Checkpoint {
    pub path: PathBuf,
    pub config: ModelConfig,
    pub tensors: TensorMap,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<String>,
}

pub fn read_checkpoint(path: &Path) -> Result<Checkpoint> {
    if path.is_file() {
        if path.extension().is_some_and(|e| e == "gguf") {
            let g = super::gguf::load_gguf(path)?;
            return checked(Checkpoint {
                path: path.into(),
                config: g.config,
                tensors: g.tensors,
                tokenizer: g.tokenizer,
                chat_template: g.chat_template,
            });
        }
        bail!(
            "{}: not a .gguf file or a checkpoint folder",
            path.display()
        );
    }
    if !path.is_dir() {
        bail!("{}: no such model file or folder", path.display());
    }
    let config = ModelConfig::from_file(&path.join("config.json"))?;
    let tensors = super::tensors::read_folder(path)?;
    let tok_path = path.join("tokenizer.json");
    let tokenizer = Tokenizer::from_file(&tok_path)
        .map_err(|e| anyhow!("{}: cannot load tokenizer ({e})", tok_path.display()))?;
    let chat_template = read_chat_template(path);
    checked(Checkpoint {
        path: path.into(),
        config,
        tensors,
        tokenizer,
        chat_template,
    })
}

fn read_chat_template(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("tokenizer_config.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("chat_template")
        .and_then(|t| t.as_str())
        .map(String::from)
}

fn checked(ck: Checkpoint) -> Result<Checkpoint> {
    let tv = ck.tokenizer.get_vocab_size(true);
    if tv > ck.config.vocab_size {
        bail!(
            "{}: the tokenizer has {tv} tokens but the model's embedding has only {} rows: they do not belong together",
            ck.path.display(),
            ck.config.vocab_size
        );
    }
    Ok(ck)
}

/// A model on a backend, with its tokenizer.
pub struct Model<B: Backend> {
    pub path: PathBuf,
    pub weights: Weights<B>,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<String>,
}

impl<B: Backend> Model<B> {
    pub fn load(be: &B, path: &Path) -> Result<Self> {
        let ck = read_checkpoint(path)?;
        let weights = Weights::from_tensors(be, ck.config, ck.tensors)
            .with_context(|| format!("building the model from {}", path.display()))?;
        Ok(Model {
            path: ck.path,
            weights,
            tokenizer: ck.tokenizer,
            chat_template: ck.chat_template,
        })
    }

    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, add_special)
            .map_err(|e| anyhow!("tokenizing {text:?}: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| anyhow!("decoding tokens: {e}"))
    }

    pub fn is_eos(&self, id: u32) -> bool {
        self.weights.cfg.eos_token_ids.contains(&id)
    }
}
