//! The table of trainable state: (name, shape, offset) for every adapter tensor of every adapter
//! set (LoRA A/B, DoRA magnitudes or IA3 vectors, see [`super::peft`]) and the mixing
//! coefficients θ. It drives the flat parameter, gradient and Adam buffers, checkpoint I/O and
//! the C API. Names and shapes are the ones PEFT saves, so a set's entries are its PEFT file.

use super::peft::{is_feedforward, Peft};
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
    /// DoRA's magnitude `m` `[out]` (PEFT: `….lora_magnitude_vector`).
    Magnitude,
    /// IA3's vector `l`: `[out, 1]` scaling the output, or `[1, in]` scaling the input of a
    /// feed-forward module (PEFT: `….ia3_l`).
    Ia3,
    ThetaK,
    ThetaV,
}

impl Kind {
    /// Whether the entry belongs to an adapter set (everything but θ).
    pub fn is_adapter(self) -> bool {
        !matches!(self, Kind::ThetaK | Kind::ThetaV)
    }
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
    /// Targets (all methods); rank and alpha (LoRA and DoRA only).
    pub lora: LoraSpec,
    pub peft: Peft,
    pub num_sets: usize,
    pub num_layers: usize,
    pub mixing: bool,
    pub entries: Vec<Entry>,
    pub total: usize,
    index: HashMap<(usize, usize, Target), (usize, usize)>,
    /// Offset of the DoRA magnitude or the IA3 vector of (set, layer, target).
    vec_index: HashMap<(usize, usize, Target), usize>,
    theta: Option<(usize, usize)>,
}

pub fn peft_name(cfg: &ModelConfig, layer: usize, t: Target, b: bool) -> String {
    format!(
        "base_model.model.model.layers.{layer}.{}.lora_{}.weight",
        t.module(cfg.arch),
        if b { "B" } else { "A" }
    )
}

/// PEFT's saved name of a DoRA magnitude or an IA3 vector (no `.weight` suffix in either).
fn vec_name(cfg: &ModelConfig, layer: usize, t: Target, kind: Kind) -> String {
    let leaf = if kind == Kind::Magnitude {
        "lora_magnitude_vector"
    } else {
        "ia3_l"
    };
    format!(
        "base_model.model.model.layers.{layer}.{}.{leaf}",
        t.module(cfg.arch)
    )
}

/// The entries of one target linear: (kind, shape) in layout order.
fn target_entries(
    peft: Peft,
    lora: &LoraSpec,
    t: Target,
    i: usize,
    o: usize,
) -> Vec<(Kind, Vec<usize>)> {
    let ab = [
        (Kind::LoraA, vec![lora.rank, i]),
        (Kind::LoraB, vec![o, lora.rank]),
    ];
    match peft {
        Peft::Lora => ab.to_vec(),
        Peft::Dora => [ab.to_vec(), vec![(Kind::Magnitude, vec![o])]].concat(),
        Peft::Ia3 if is_feedforward(t) => vec![(Kind::Ia3, vec![1, i])],
        Peft::Ia3 => vec![(Kind::Ia3, vec![o, 1])],
    }
}

impl ParamTable {
    /// A LoRA table.
    pub fn new(cfg: &ModelConfig, lora: LoraSpec, num_sets: usize, mixing: bool) -> Self {
        Self::with_peft(cfg, lora, Peft::Lora, num_sets, mixing)
    }

    /// Layout: per set, per layer, per target its entries (A, B; A, B, m; or l), then θ_K, θ_V.
    /// LoRA's layout is the same as before DoRA and IA3 existed.
    pub fn with_peft(
        cfg: &ModelConfig,
        lora: LoraSpec,
        peft: Peft,
        num_sets: usize,
        mixing: bool,
    ) -> Self {
        let mut entries = Vec::new();
        let mut index = HashMap::new();
        let mut vec_index = HashMap::new();
        let mut off = 0;
        for set in 0..num_sets {
            for layer in 0..cfg.num_layers {
                for &t in &lora.targets {
                    let (i, o) = t.dims(cfg);
                    let key = (set, layer, t);
                    for (kind, shape) in target_entries(peft, &lora, t, i, o) {
                        let name = match kind {
                            Kind::LoraA | Kind::LoraB => {
                                peft_name(cfg, layer, t, kind == Kind::LoraB)
                            }
                            _ => vec_name(cfg, layer, t, kind),
                        };
                        match kind {
                            Kind::LoraA => {
                                index.insert(key, (off, off + lora.rank * i));
                            }
                            Kind::Magnitude | Kind::Ia3 => {
                                vec_index.insert(key, off);
                            }
                            _ => {}
                        }
                        let e = Entry {
                            name,
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
            peft,
            num_sets,
            num_layers: cfg.num_layers,
            mixing,
            entries,
            total: off,
            index,
            vec_index,
            theta,
        }
    }

    /// (A offset, B offset) of a LoRA pair, if that set targets that linear.
    pub fn lora(&self, set: usize, layer: usize, t: Target) -> Option<(usize, usize)> {
        self.index.get(&(set, layer, t)).copied()
    }

    /// Offset of the DoRA magnitude (`[out]`) of a target linear of a set, if any.
    pub fn magnitude(&self, set: usize, layer: usize, t: Target) -> Option<usize> {
        (self.peft == Peft::Dora)
            .then(|| self.vec_index.get(&(set, layer, t)).copied())
            .flatten()
    }

    /// Offset of the IA3 vector of a target linear of a set, if any (length `in` for a
    /// feed-forward module, else `out`).
    pub fn ia3(&self, set: usize, layer: usize, t: Target) -> Option<usize> {
        (self.peft == Peft::Ia3)
            .then(|| self.vec_index.get(&(set, layer, t)).copied())
            .flatten()
    }

    /// Offsets of θ_K and θ_V (each `num_layers` long).
    pub fn theta(&self) -> Option<(usize, usize)> {
        self.theta
    }

    pub fn set_entries(&self, set: usize) -> impl Iterator<Item = &Entry> {
        self.entries
            .iter()
            .filter(move |e| e.set == set && e.kind.is_adapter())
    }
}

/// The kv-mix coefficient and its derivative are defined with the op they parameterise.
pub use crate::backend::scalar::{alpha, dalpha_dtheta};
