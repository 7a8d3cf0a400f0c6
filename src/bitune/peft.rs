//! The PEFT method of the adapter sets: LoRA, DoRA (PEFT's `use_dora`) or IA3.
//!
//! Exact forms, per target linear `y = W x + b` and per adapter set (PEFT 0.21's layers);
//! the transformer runs them as the ops of `model::transformer::LinearAdapter`:
//! - LoRA: `y = W x + b + s·B(A x)`.
//! - DoRA: `y = W x + b + (m/n − 1)⊙(W x) + (m/n)⊙s·B(A x)` = `(m/n)⊙(W x + s·B A x) + b`, with
//!   `n = ‖W + s·B A‖` per output row, recomputed every forward and *detached* (no gradient flows
//!   through it); the bias stays outside the scaled term, as PEFT subtracts it from the base
//!   result before scaling. `m` starts at `n` (so `m/n = 1` and the layer is the base layer).
//! - IA3: a vector `l` (init 1.0). A feed-forward module (one under `mlp.`) scales its input,
//!   `y = W (l⊙x) + b`; any other module scales its output *including the bias*,
//!   `y = l⊙(W x + b)`, as PEFT multiplies the base layer's result.
//!
//! Each adapter set has its own vectors (the reference's PEFT 0.11 dropped the first set's DoRA
//! magnitudes when adding the second): a magnitude is a per-set table entry.

use crate::model::weights::Target;
use anyhow::{bail, Result};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Peft {
    #[default]
    Lora,
    Dora,
    Ia3,
}

impl Peft {
    pub fn name(self) -> &'static str {
        match self {
            Peft::Lora => "lora",
            Peft::Dora => "dora",
            Peft::Ia3 => "ia3",
        }
    }

    pub fn parse(s: &str) -> Result<Peft> {
        match s {
            "lora" => Ok(Peft::Lora),
            "dora" => Ok(Peft::Dora),
            "ia3" => Ok(Peft::Ia3),
            _ => bail!("unknown PEFT method {s:?} (lora | dora | ia3)"),
        }
    }

    /// Whether the sets carry LoRA matrices A and B (LoRA and DoRA).
    pub fn has_lora(self) -> bool {
        self != Peft::Ia3
    }
}

/// IA3's feed-forward modules: the MLP linears (PEFT's `feedforward_modules`).
pub fn is_feedforward(t: Target) -> bool {
    matches!(t, Target::Gate | Target::Up | Target::Down)
}

/// DoRA's weight norm `‖W + s·B A‖` per output row, on the host (init and tests).
pub use crate::backend::colops::dora_row_norms;
