//! The table of trainable state: (name, shape, offset) for every LoRA matrix of every adapter
//! set and the mixing coefficients θ. It drives the flat parameter, gradient and Adam buffers,
//! checkpoint I/O and the C API.

use crate::model::config::ModelConfig;
use crate::model::weights::Target;
use std::collections::HashMap;

/// Adapter set 0 is the causal set C (PEFT's "default"), 1 the bidirectional set B ("prefill").
pub const SET_C: usize = 0;
pub const SET_B: usize = 1;

#[derive(Clone, Debug, PartialEq)]
pub struct LoraSpec {
    pub rank: usize,
    pub alpha: f32,
    pub targets: Vec<Target>,
}

impl LoraSpec {
    pub fn scale(&self) -> f32 {
        self.alpha / self.rank as f32
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    LoraA,
    LoraB,
    ThetaK,
    ThetaV,
}

#[derive(Clone, Debug)]
pub struct Entry {
    /// PEFT's tensor name (for θ: `theta_k` / `theta_v`).
    pub name: String,
    pub set: usize,
    pub layer: usize,
    pub target: Option<Target>,
    pub kind: Kind,
    pub shape: Vec<usize>,
    pub offset: usize,
}

impl Entry {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Clone, Debug)]
pub struct ParamTable {
    pub lora: LoraSpec,
    pub num_sets: usize,
    pub num_layers: usize,
    pub mixing: bool,
    pub entries: Vec<Entry>,
    pub total: usize,
    index: HashMap<(usize, usize, Target), (usize, usize)>,
    theta: Option<(usize, usize)>,
}

pub fn peft_name(cfg: &ModelConfig, layer: usize, t: Target, b: bool) -> String {
    format!(
        "base_model.model.model.layers.{layer}.{}.lora_{}.weight",
        t.module(cfg.arch),
        if b { "B" } else { "A" }
    )
}

impl ParamTable {
    pub fn new(cfg: &ModelConfig, lora: LoraSpec, num_sets: usize, mixing: bool) -> Self {
        let mut entries = Vec::new();
        let mut index = HashMap::new();
        let mut off = 0;
        for set in 0..num_sets {
            for layer in 0..cfg.num_layers {
                for &t in &lora.targets {
                    let (i, o) = t.dims(cfg);
                    let a_off = off;
                    for (kind, shape) in [
                        (Kind::LoraA, vec![lora.rank, i]),
                        (Kind::LoraB, vec![o, lora.rank]),
                    ] {
                        let e = Entry {
                            name: peft_name(cfg, layer, t, kind == Kind::LoraB),
                            set,
                            layer,
                            target: Some(t),
                            kind,
                            shape,
                            offset: off,
                        };
                        off += e.len();
                        entries.push(e);
                    }
                    index.insert((set, layer, t), (a_off, a_off + lora.rank * i));
                }
            }
        }
        let theta = mixing.then(|| {
            let n = cfg.num_layers;
            for (name, kind, o) in [
                ("theta_k", Kind::ThetaK, off),
                ("theta_v", Kind::ThetaV, off + n),
            ] {
                entries.push(Entry {
                    name: name.into(),
                    set: 0,
                    layer: 0,
                    target: None,
                    kind,
                    shape: vec![n],
                    offset: o,
                });
            }
            let t = (off, off + n);
            off += 2 * n;
            t
        });
        ParamTable {
            lora,
            num_sets,
            num_layers: cfg.num_layers,
            mixing,
            entries,
            total: off,
            index,
            theta,
        }
    }

    /// (A offset, B offset) of a LoRA pair, if that set targets that linear.
    pub fn lora(&self, set: usize, layer: usize, t: Target) -> Option<(usize, usize)> {
        self.index.get(&(set, layer, t)).copied()
    }

    /// Offsets of θ_K and θ_V (each `num_layers` long).
    pub fn theta(&self) -> Option<(usize, usize)> {
        self.theta
    }

    pub fn set_entries(&self, set: usize) -> impl Iterator<Item = &Entry> {
        self.entries
            .iter()
            .filter(move |e| e.set == set && matches!(e.kind, Kind::LoraA | Kind::LoraB))
    }
}

/// α = |θ| / (|θ| + θ_init)
pub fn alpha(theta: f32, theta_init: f32) -> f32 {
    theta.abs() / (theta.abs() + theta_init)
}

/// dα/dθ = sign(θ)·θ_init / (θ_init + |θ|)²  (0 at θ = 0, as PyTorch's `abs`).
pub fn dalpha_dtheta(theta: f32, theta_init: f32) -> f32 {
    let s = if theta > 0.0 {
        1.0
    } else if theta < 0.0 {
        -1.0
    } else {
        0.0
    };
    s * theta_init / (theta_init + theta.abs()).powi(2)
}
