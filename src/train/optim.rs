//! Optimizers (HF AdamW, SGD), global gradient-norm clipping and the LR schedule.

use crate::backend::{AdamStep, Backend};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptKind {
    AdamW,
    Sgd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    Linear,
    Constant,
}

#[derive(Clone, Copy, Debug)]
pub struct OptConfig {
    pub kind: OptKind,
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Global L2 norm clip (0 = off).
    pub clip: f32,
    pub schedule: Schedule,
    pub warmup_steps: u64,
    pub total_steps: u64,
}

impl OptConfig {
    /// AdamW as the PyTorch reference scripts run it (`bench/torch_bitune_step.py`, the
    /// reference fixtures): constant lr 1e-3, betas (0.9, 0.999), eps 1e-6, no weight decay,
    /// global-norm clip 1.0.
    pub fn reference_adamw(total_steps: u64) -> Self {
        OptConfig {
            kind: OptKind::AdamW,
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-6,
            weight_decay: 0.0,
            clip: 1.0,
            schedule: Schedule::Constant,
            warmup_steps: 0,
            total_steps,
        }
    }

    /// LR multiplier at 0-based scheduler step `s` (HF `get_scheduler("linear")`): s/W during
    /// warmup, then max(0, (T−s)/(T−W)). The scheduler steps after each update, so update #1
    /// uses step 0 (lr 0 when there is warmup).
    pub fn lr_at(&self, s: u64) -> f32 {
        let f = match self.schedule {
            Schedule::Constant => 1.0,
            Schedule::Linear => {
                let (w, t) = (self.warmup_steps, self.total_steps);
                if s < w {
                    s as f64 / w.max(1) as f64
                } else {
                    ((t.saturating_sub(s)) as f64 / (t - w).max(1) as f64).max(0.0)
                }
            }
        };
        (self.lr as f64 * f) as f32
    }
}

/// Optimizer state: Adam moments over the flat parameter buffer and the update count.
pub struct Optimizer<B: Backend> {
    pub cfg: OptConfig,
    pub m: B::Buf,
    pub v: B::Buf,
    pub step: u64,
}

impl<B: Backend> Optimizer<B> {
    pub fn new(be: &B, cfg: OptConfig, n: usize) -> Self {
        Optimizer {
            cfg,
            m: be.zeros(n),
            v: be.zeros(n),
            step: 0,
        }
    }

    /// Clips `grads` to the global norm, applies one update, and returns (norm before clipping,
    /// lr used).
    pub fn update(&mut self, be: &B, params: &mut B::Buf, grads: &mut B::Buf) -> (f64, f32) {
        let norm = be.sum_sq(grads).sqrt();
        if self.cfg.clip > 0.0 {
            let coef = self.cfg.clip as f64 / (norm + 1e-6);
            if coef < 1.0 {
                be.scale(grads, coef as f32);
            }
        }
        let lr = self.cfg.lr_at(self.step);
        self.step += 1;
        match self.cfg.kind {
            OptKind::AdamW => be.adamw(
                params,
                grads,
                &mut self.m,
                &mut self.v,
                AdamStep {
                    lr,
                    beta1: self.cfg.beta1,
                    beta2: self.cfg.beta2,
                    eps: self.cfg.eps,
                    weight_decay: self.cfg.weight_decay,
                    t: self.step,
                },
            ),
            OptKind::Sgd => be.sgd(params, grads, lr),
        }
        (norm, lr)
    }
}
