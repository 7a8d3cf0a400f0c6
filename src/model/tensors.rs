//! Host tensors keyed by their Hugging Face names: what every checkpoint loader produces and the
//! model builder consumes.

use crate::backend::weight::{HostWeight, QuantForm};
use crate::io::safetensors::{self, Dtype};
use anyhow::{anyhow, bail, Result};
use std::collections::HashMap;
use std::path::Path;

/// A dense row-major f32 tensor on the host (checkpoints in f16/bf16/quantized formats are widened
/// on load).
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
    /// The checkpoint's compact form of the same values, when it had one (decode matmuls).
    pub quant: Option<QuantForm>,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        HostTensor {
            shape,
            data,
            quant: None,
        }
    }
}

/// All tensors of a checkpoint, with the file they came from for error messages.
#[derive(Default, Debug)]
pub struct TensorMap {
    pub source: String,
    pub map: HashMap<String, HostTensor>,
}

impl TensorMap {
    pub fn new(source: impl Into<String>) -> Self {
        TensorMap {
            source: source.into(),
            map: HashMap::new(),
        }
    }

    pub fn insert(&mut self, name: impl Into<String>, t: HostTensor) {
        self.map.insert(name.into(), t);
    }

    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// Removes and returns a tensor, checking its shape; the error names the file and tensor.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let t = self
            .map
            .remove(name)
            .ok_or_else(|| anyhow!("{}: missing tensor `{name}`", self.source))?;
        if t.shape != shape {
            bail!(
                "{}: tensor `{name}` has shape {:?}, the config implies {:?}",
                self.source,
                t.shape,
                shape
            );
        }
        Ok(t.data)
    }

    /// Like [`TensorMap::take`] for a matrix `[n, k]`, keeping the compact form when it fits.
    pub fn take_weight(&mut self, name: &str, n: usize, k: usize) -> Result<HostWeight> {
        let quant = self.map.get_mut(name).and_then(|t| t.quant.take());
        let data = self.take(name, &[n, k])?;
        Ok(HostWeight::new(data, n, k, quant))
    }

    pub fn take_opt(&mut self, name: &str, shape: &[usize]) -> Result<Option<Vec<f32>>> {
        if self.contains(name) {
            self.take(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// Reads every tensor of one safetensors file into `out`.
pub fn read_file_into(path: &Path, out: &mut TensorMap) -> Result<()> {
    safetensors::for_each_tensor(path, |name, shape, dtype, bytes| {
        let data = safetensors::widen(&name, path, dtype, bytes)?;
        let mut t = HostTensor::new(shape.to_vec(), data);
        // bf16/f16 checkpoints keep their exact 16-bit form for the decode matmuls.
        let u16s = || {
            bytes
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect()
        };
        t.quant = match dtype {
            Dtype::BF16 if shape.len() == 2 => Some(QuantForm::Bf16(u16s())),
            Dtype::F16 if shape.len() == 2 => Some(QuantForm::F16(u16s())),
            _ => None,
        };
        out.insert(name, t);
        Ok(())
    })
}

/// Reads a checkpoint folder: `model.safetensors`, or the shards listed by
/// `model.safetensors.index.json`.
pub fn read_folder(dir: &Path) -> Result<TensorMap> {
    let files = safetensors::folder_files(dir)?;
    let mut map = TensorMap::new(dir.display().to_string());
    for f in &files.files {
        read_file_into(f, &mut map)?;
    }
    if let Some((index, listed)) = &files.index {
        for name in listed {
            if !map.contains(name) {
                bail!(
                    "{}: tensor `{name}` is listed but not in its shard",
                    index.display()
                );
            }
        }
    }
    map.source = files.source;
    Ok(map)
}
