//! GGUF checkpoints (llama.cpp's single-file format): header, metadata, tensor infos and data over
//! a memory map; tensors are dequantized to f32 and renamed/reshaped to their Hugging Face form, and
//! the tokenizer is rebuilt from the metadata, so a `.gguf` file alone is a complete model.
//!
//! One file per role, each importing only those before it: `format` (header, metadata, tensor
//! directory), `dequant` (ggml blocks to f32), `config` (metadata to [`ModelConfig`]), `mapping`
//! (GGUF tensors to Hugging Face names and layouts), `tokenizer` (the tokenizer from metadata).

mod config;
mod dequant;
mod format;
mod mapping;
pub mod tokenizer;

pub use format::{GgmlType, GgufFile, MetaValue, TensorInfo};
pub use mapping::{permute_qk_rows, unpermute_qk_rows};

use crate::model::config::ModelConfig;
use crate::model::tensors::TensorMap;
use anyhow::{anyhow, Context, Result};
use std::path::Path;

/// A complete model read from one GGUF file.
pub struct GgufModel {
    pub config: ModelConfig,
    /// Tensors under their Hugging Face names and shapes, as f32.
    pub tensors: TensorMap,
    pub tokenizer: tokenizers::Tokenizer,
    /// The Jinja chat template (`tokenizer.chat_template`), if the file has one.
    pub chat_template: Option<String>,
}

/// Reads a whole model: config, tensors (f32, Hugging Face names and shapes), tokenizer and chat
/// template.
pub fn load_gguf(path: &Path) -> Result<GgufModel> {
    let file = GgufFile::open(path)?;
    let arch_name = file
        .get_str("general.architecture")?
        .ok_or_else(|| anyhow!("{}: missing metadata key `general.architecture`", file.path))?;
    let spec = config::arch_spec(arch_name, &file.path)?;
    let config = config::build_config(&file, spec)?;
    // The tokenizer (tens of thousands of tokens and merges) builds while tensors dequantize.
    let (tensors, tokenizer) = rayon::join(
        || mapping::load_tensors(&file, spec, &config),
        || {
            tokenizer::tokenizer_from_metadata(&file.metadata)
                .with_context(|| format!("{}: building the tokenizer from its metadata", file.path))
        },
    );
    let chat_template = file.get_str("tokenizer.chat_template")?.map(str::to_string);
    Ok(GgufModel {
        config,
        tensors: tensors?,
        tokenizer: tokenizer?,
        chat_template,
    })
}
