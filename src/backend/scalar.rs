//! Host-side scalar rules that ops and their callers must agree on: the kv-mix coefficient
//! α(θ) and its derivative (the CUDA kernels compute the same on the device), and which index
//! greedy decoding picks. They live with the ops so that the backend needs nothing from the
//! method or the jobs above it.

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

/// The first index of the largest logit (greedy decoding).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}
