//! Safetensors reading (single file or sharded through `model.safetensors.index.json`,
//! memory-mapped, f32/f16/bf16 widened to f32) and atomic f32 writing.

use super::tensors::{HostTensor, TensorMap};
use crate::backend::weight::QuantForm;
use anyhow::{anyhow, bail, Context, Result};
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn widen(name: &str, file: &Path, dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>> {
    Ok(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => bail!(
            "{}: tensor `{name}` has dtype {other:?}; supported: F32, F16, BF16",
            file.display()
        ),
    })
}

/// Reads every tensor of one safetensors file into `out`.
pub fn read_file_into(path: &Path, out: &mut TensorMap) -> Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: the map is read-only and lives only inside this function; the file is not
    // expected to be modified while a checkpoint is being loaded (as with any mmap loader).
    let mmap = unsafe { memmap2::Mmap::map(&file) }
        .with_context(|| format!("mapping {}", path.display()))?;
    let st = SafeTensors::deserialize(&mmap)
        .map_err(|e| anyhow!("{}: not a valid safetensors file ({e})", path.display()))?;
    for (name, view) in st.tensors() {
        let data = widen(&name, path, view.dtype(), view.data())?;
        let mut t = HostTensor::new(view.shape().to_vec(), data);
        // bf16/f16 checkpoints keep their exact 16-bit form for the decode matmuls.
        let u16s = || {
            view.data()
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect()
        };
        t.quant = match view.dtype() {
            Dtype::BF16 if view.shape().len() == 2 => Some(QuantForm::Bf16(u16s())),
            Dtype::F16 if view.shape().len() == 2 => Some(QuantForm::F16(u16s())),
            _ => None,
        };
        out.insert(name, t);
    }
    Ok(())
}

/// Reads a checkpoint folder: `model.safetensors`, or the shards listed by
/// `model.safetensors.index.json`.
pub fn read_folder(dir: &Path) -> Result<TensorMap> {
    let index = dir.join("model.safetensors.index.json");
    let single = dir.join("model.safetensors");
    let mut map = TensorMap::new(dir.display().to_string());
    if index.exists() {
        let text = std::fs::read_to_string(&index)
            .with_context(|| format!("reading {}", index.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", index.display()))?;
        let wm = v
            .get("weight_map")
            .and_then(|w| w.as_object())
            .ok_or_else(|| anyhow!("{}: no `weight_map` object", index.display()))?;
        let shards: BTreeSet<&str> = wm.values().filter_map(|s| s.as_str()).collect();
        for s in shards {
            read_file_into(&dir.join(s), &mut map)?;
        }
        for name in wm.keys() {
            if !map.contains(name) {
                bail!(
                    "{}: tensor `{name}` is listed but not in its shard",
                    index.display()
                );
            }
        }
    } else if single.exists() {
        read_file_into(&single, &mut map)?;
        map.source = single.display().to_string();
    } else {
        let any: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("reading folder {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        if any.is_empty() {
            bail!(
                "{}: no model.safetensors, index or *.safetensors file",
                dir.display()
            );
        }
        for p in any {
            read_file_into(&p, &mut map)?;
        }
    }
    Ok(map)
}

/// Writes f32 tensors to `path` atomically (a temp file in the same folder, fsync, rename).
pub fn write_f32(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Result<()> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, d)| d.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| {
            Ok((
                n.clone(),
                safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), b)?,
            ))
        })
        .collect::<Result<_, safetensors::SafeTensorError>>()
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let data =
        safetensors::serialize(views, None).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    crate::train::atomic::write_atomic(path, &data)
}
