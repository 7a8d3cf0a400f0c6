//! Safetensors reading (one file, or the shards of a folder through
//! `model.safetensors.index.json`, memory-mapped, f32/f16/bf16 widened to f32) and atomic f32
//! writing. What a tensor becomes (the model's host tensors, an adapter, optimizer moments) is
//! the caller's business: this module hands out names, shapes, dtypes and bytes.

use anyhow::{anyhow, bail, Context, Result};
pub use safetensors::Dtype;
use safetensors::SafeTensors;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Widens one tensor's little-endian bytes to f32; `name` and `file` only feed the error.
pub fn widen(name: &str, file: &Path, dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>> {
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

/// Calls `f(name, shape, dtype, bytes)` for every tensor of one safetensors file.
pub fn for_each_tensor(
    path: &Path,
    mut f: impl FnMut(String, &[usize], Dtype, &[u8]) -> Result<()>,
) -> Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: the map is read-only and lives only inside this function; the file is not
    // expected to be modified while a checkpoint is being loaded (as with any mmap loader).
    let mmap = unsafe { memmap2::Mmap::map(&file) }
        .with_context(|| format!("mapping {}", path.display()))?;
    let st = SafeTensors::deserialize(&mmap)
        .map_err(|e| anyhow!("{}: not a valid safetensors file ({e})", path.display()))?;
    for (name, view) in st.tensors() {
        f(name, view.shape(), view.dtype(), view.data())?;
    }
    Ok(())
}

/// The safetensors files of a checkpoint folder.
pub struct FolderFiles {
    /// The files to read, in order.
    pub files: Vec<PathBuf>,
    /// The sharded index when there is one, with every tensor name it lists: a reader must
    /// find each of them in the shards.
    pub index: Option<(PathBuf, Vec<String>)>,
    /// What error messages should name as the source: the single file, else the folder.
    pub source: String,
}

/// Lists a checkpoint folder's tensors files: `model.safetensors`, or the shards listed by
/// `model.safetensors.index.json`, or else every `*.safetensors` in it.
pub fn folder_files(dir: &Path) -> Result<FolderFiles> {
    let index = dir.join("model.safetensors.index.json");
    let single = dir.join("model.safetensors");
    let source = dir.display().to_string();
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
        Ok(FolderFiles {
            files: shards.into_iter().map(|s| dir.join(s)).collect(),
            index: Some((index.clone(), wm.keys().cloned().collect())),
            source,
        })
    } else if single.exists() {
        Ok(FolderFiles {
            source: single.display().to_string(),
            files: vec![single],
            index: None,
        })
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
        Ok(FolderFiles {
            files: any,
            index: None,
            source,
        })
    }
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
    super::atomic::write_atomic(path, &data)
}
