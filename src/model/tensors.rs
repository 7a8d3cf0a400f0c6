//! Host tensors keyed by their Hugging Face names: what every checkpoint loader produces and the
//! model builder consumes.

use crate::backend::weight::{HostWeight, QuantForm};
use anyhow::{anyhow, bail, Result};
use std::collections::HashMap;

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
