//! Row-wise CPU kernels: GEMV, norms, RoPE, activations, cross-entropy, AdamW.

use super::simd::vectorize;
use crate::backend::{Activation, AdamStep, CrossEntropyTargets, Norm, NormArgs, RopeArgs};
use rayon::prelude::*;

/// `y[n] (+)= w[n,k] · x[k]`: the decode path, where the weight read dominates. Rows are split
/// across threads; each dot product runs over 8 independent lanes so it vectorises.
pub fn gemv(y: &mut [f32], x: &[f32], w: &[f32], k: usize, accumulate: bool) {
    y.par_chunks_mut(64).enumerate().for_each(|(ci, ys)| {
        for (r, yo) in ys.iter_mut().enumerate() {
            let row = &w[(ci * 64 + r) * k..(ci * 64 + r + 1) * k];
            let mut acc = [0f32; 8];
            let chunks = k / 8;
            for c in 0..chunks {
                for l in 0..8 {
                    acc[l] += row[c * 8 + l] * x[c * 8 + l];
                }
            }
            let mut s: f32 = acc.iter().sum();
            for c in chunks * 8..k {
                s += row[c] * x[c];
            }
            *yo = if accumulate { *yo + s } else { s };
        }
    });
}

/// Rows of `x` are `a.d` wide; how many is the slices' business (the caller cuts them to
/// `a.rows`).
pub fn norm_fwd(
    out: &mut [f32],
    stats: &mut [f32],
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    a: NormArgs,
) {
    let NormArgs { d, kind, eps, .. } = a;
    out.par_chunks_mut(d)
        .zip(stats.par_chunks_mut(2))
        .zip(x.par_chunks(d))
        .for_each(|((o, st), xr)| {
            vectorize(
                #[inline(always)]
                || {
                    let mean = if kind == Norm::Layer {
                        xr.iter().map(|&v| v as f64).sum::<f64>() / d as f64
                    } else {
                        0.0
                    };
                    let var = xr.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
                    let rstd = 1.0 / (var + eps as f64).sqrt();
                    st[0] = mean as f32;
                    st[1] = rstd as f32;
                    for i in 0..d {
                        let xh = ((xr[i] as f64 - mean) * rstd) as f32;
                        o[i] = match kind {
                            Norm::Rms => xh * w[i],
                            Norm::RmsPlusOne => xh * (1.0 + w[i]),
                            Norm::Layer => xh * w[i] + b.map_or(0.0, |b| b[i]),
                        };
                    }
                },
            )
        });
}

pub fn norm_bwd(
    dx: &mut [f32],
    dy: &[f32],
    x: &[f32],
    stats: &[f32],
    w: &[f32],
    a: NormArgs,
    accumulate: bool,
) {
    let NormArgs { d, kind, .. } = a;
    dx.par_chunks_mut(d)
        .zip(dy.par_chunks(d))
        .zip(x.par_chunks(d).zip(stats.par_chunks(2)))
        .for_each(|((dxr, dyr), (xr, st))| {
            vectorize(
                #[inline(always)]
                || {
                    let (mean, rstd) = (st[0] as f64, st[1] as f64);
                    let g = |i: usize| match kind {
                        Norm::RmsPlusOne => 1.0 + w[i] as f64,
                        _ => w[i] as f64,
                    };
                    // dxh = dy ⊙ g; for RMS: dx = r·dxh − x̂·r·mean(dxh ⊙ x̂); LayerNorm also subtracts mean(dxh).
                    let mut m1 = 0f64;
                    let mut m2 = 0f64;
                    for i in 0..d {
                        let xh = (xr[i] as f64 - mean) * rstd;
                        let dxh = dyr[i] as f64 * g(i);
                        m1 += dxh;
                        m2 += dxh * xh;
                    }
                    m1 /= d as f64;
                    m2 /= d as f64;
                    if kind != Norm::Layer {
                        m1 = 0.0;
                    }
                    for i in 0..d {
                        let xh = (xr[i] as f64 - mean) * rstd;
                        let dxh = dyr[i] as f64 * g(i);
                        let v = (rstd * (dxh - m1 - xh * m2)) as f32;
                        dxr[i] = if accumulate { dxr[i] + v } else { v };
                    }
                },
            )
        });
}

pub fn rope(x: &mut [f32], pos: &[u32], a: RopeArgs, inv_freq: &[f32], inverse: bool) {
    let RopeArgs {
        heads,
        head_dim,
        rot_dim,
    } = a;
    let half = rot_dim / 2;
    let width = heads * head_dim;
    x.par_chunks_mut(width)
        .zip(pos.par_iter())
        .for_each(|(row, &p)| {
            // The angles once per row, then each head as two contiguous runs (vectorises; the
            // per-element arithmetic is unchanged).
            let mut cs = vec![(0f32, 0f32); half];
            for (c, &f) in cs.iter_mut().zip(inv_freq) {
                let ang = p as f32 * f;
                let (s, co) = (ang.sin(), ang.cos());
                *c = (co, if inverse { -s } else { s });
            }
            for head in row.chunks_exact_mut(head_dim) {
                let (a, b) = head[..rot_dim].split_at_mut(half);
                for ((x1, x2), &(c, s)) in a.iter_mut().zip(b.iter_mut()).zip(cs.iter()) {
                    let (v1, v2) = (*x1, *x2);
                    *x1 = v1 * c - v2 * s;
                    *x2 = v2 * c + v1 * s;
                }
            }
        });
}

const SQRT_2_OVER_PI: f32 = 0.797_884_6;

/// erf with |error| < 1.2e-7 (Numerical Recipes' erfc Chebyshev fit), in f64.
pub fn erf(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 {
        1.0 - r
    } else {
        r - 1.0
    }
}

/// e^x in f32 to about 1 ulp (Cephes' range reduction and degree-6 polynomial), written with
/// plain arithmetic so loops over it vectorise; libm's `expf` is a call per element and was a
/// fifth of a prefill. Saturates at e^88 (SiLU's x/(1+e^-x) then rounds to the same −0) and
/// flushes below e^-87.3; NaN stays NaN.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5·2^23 rounds to the nearest integer with SSE2's plain add.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[inline(always)]
fn act(a: Activation, x: f32) -> f32 {
    match a {
        Activation::Silu => x / (1.0 + exp_f32(-x)),
        Activation::GeluTanh => {
            0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh())
        }
        Activation::Gelu => {
            (0.5 * x as f64 * (1.0 + erf(x as f64 / std::f64::consts::SQRT_2))) as f32
        }
    }
}

#[inline(always)]
fn act_grad(a: Activation, x: f32) -> f32 {
    match a {
        Activation::Silu => {
            let s = 1.0 / (1.0 + exp_f32(-x));
            s * (1.0 + x * (1.0 - s))
        }
        Activation::GeluTanh => {
            let u = SQRT_2_OVER_PI * (x + 0.044715 * x * x * x);
            let t = u.tanh();
            0.5 * (1.0 + t)
                + 0.5 * x * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * x * x)
        }
        Activation::Gelu => {
            let xd = x as f64;
            let cdf = 0.5 * (1.0 + erf(xd / std::f64::consts::SQRT_2));
            let pdf = (-0.5 * xd * xd).exp() / (2.0 * std::f64::consts::PI).sqrt();
            (cdf + xd * pdf) as f32
        }
    }
}

/// Elementwise ops split no finer than this: a decoding step's vectors (a few thousand values)
/// then run on the calling worker instead of paying a task hand-off for microseconds of work.
pub const MIN_SPLIT: usize = 1 << 14;

pub fn act_fwd(out: &mut [f32], gate: &[f32], up: Option<&[f32]>, a: Activation) {
    // One loop per activation, so each inner loop is straight-line arithmetic that vectorises.
    match a {
        Activation::Silu => act_fwd_with(
            out,
            gate,
            up,
            #[inline(always)]
            |x| act(Activation::Silu, x),
        ),
        Activation::GeluTanh => act_fwd_with(
            out,
            gate,
            up,
            #[inline(always)]
            |x| act(Activation::GeluTanh, x),
        ),
        Activation::Gelu => act_fwd_with(
            out,
            gate,
            up,
            #[inline(always)]
            |x| act(Activation::Gelu, x),
        ),
    }
}

fn act_fwd_with(
    out: &mut [f32],
    gate: &[f32],
    up: Option<&[f32]>,
    act: impl Fn(f32) -> f32 + Sync,
) {
    match up {
        // Chunks with a plain inner loop, which the compiler vectorises.
        Some(u) => out
            .par_chunks_mut(MIN_SPLIT)
            .zip(gate.par_chunks(MIN_SPLIT).zip(u.par_chunks(MIN_SPLIT)))
            .for_each(|(o, (g, u))| {
                vectorize(
                    #[inline(always)]
                    || {
                        for (o, (&g, &u)) in o.iter_mut().zip(g.iter().zip(u)) {
                            *o = act(g) * u;
                        }
                    },
                )
            }),
        None => out
            .par_chunks_mut(MIN_SPLIT)
            .zip(gate.par_chunks(MIN_SPLIT))
            .for_each(|(o, g)| {
                vectorize(
                    #[inline(always)]
                    || {
                        for (o, &g) in o.iter_mut().zip(g) {
                            *o = act(g);
                        }
                    },
                )
            }),
    }
}

pub fn act_bwd(
    dgate: &mut [f32],
    dup: Option<&mut [f32]>,
    dout: &[f32],
    gate: &[f32],
    up: Option<&[f32]>,
    a: Activation,
) {
    // One loop per activation (as in the forward), and SiLU's sigmoid computed once for both
    // the value and the derivative.
    match a {
        Activation::Silu => act_bwd_with(
            dgate,
            dup,
            dout,
            gate,
            up,
            #[inline(always)]
            |x| {
                let s = 1.0 / (1.0 + exp_f32(-x));
                (x * s, s * (1.0 + x * (1.0 - s)))
            },
        ),
        Activation::GeluTanh => act_bwd_with(
            dgate,
            dup,
            dout,
            gate,
            up,
            #[inline(always)]
            |x| {
                (
                    act(Activation::GeluTanh, x),
                    act_grad(Activation::GeluTanh, x),
                )
            },
        ),
        Activation::Gelu => act_bwd_with(
            dgate,
            dup,
            dout,
            gate,
            up,
            #[inline(always)]
            |x| (act(Activation::Gelu, x), act_grad(Activation::Gelu, x)),
        ),
    }
}

/// `f(x)` = (act(x), act'(x)).
fn act_bwd_with(
    dgate: &mut [f32],
    dup: Option<&mut [f32]>,
    dout: &[f32],
    gate: &[f32],
    up: Option<&[f32]>,
    f: impl Fn(f32) -> (f32, f32) + Sync,
) {
    let c = MIN_SPLIT;
    match (dup, up) {
        (Some(du), Some(u)) => dgate
            .par_chunks_mut(c)
            .zip(du.par_chunks_mut(c))
            .zip(
                dout.par_chunks(c)
                    .zip(gate.par_chunks(c))
                    .zip(u.par_chunks(c)),
            )
            .for_each(|((dg, du), ((d, g), u))| {
                for i in 0..dg
                    .len()
                    .min(du.len())
                    .min(d.len())
                    .min(g.len())
                    .min(u.len())
                {
                    let (y, dy) = f(g[i]);
                    dg[i] = d[i] * u[i] * dy;
                    du[i] = d[i] * y;
                }
            }),
        _ => dgate
            .par_chunks_mut(c)
            .zip(dout.par_chunks(c).zip(gate.par_chunks(c)))
            .for_each(|(dg, (d, g))| {
                vectorize(
                    #[inline(always)]
                    || {
                        for i in 0..dg.len().min(d.len()).min(g.len()) {
                            dg[i] = d[i] * f(g[i]).1;
                        }
                    },
                )
            }),
    }
}

pub fn cross_entropy(
    logits: &mut [f32],
    targets: CrossEntropyTargets,
    vocab: usize,
    grad: bool,
    logprobs: &mut [f64],
    greedy: &mut [bool],
) -> f64 {
    let per_row: Vec<(f64, f64, bool)> = logits
        .par_chunks_mut(vocab)
        .zip(targets.tokens.par_iter().zip(targets.weights.par_iter()))
        .map(|(row, (&t, &w))| {
            vectorize(
                #[inline(always)]
                || {
                    let mx = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                    let target = row[t as usize];
                    // exp(v - max) in f32 (within 2 ulp, vectorised), summed in f64: libm's f64 exp per
                    // vocabulary entry was most of this op's time. With `grad` the exps stay in the
                    // row, which becomes the gradient; without, the logits are left as they were.
                    let sum: f64 = if grad {
                        row.iter_mut().for_each(|v| *v = exp_f32(*v - mx));
                        row.iter().map(|&e| e as f64).sum()
                    } else {
                        row.iter().map(|&v| exp_f32(v - mx) as f64).sum()
                    };
                    let lse = mx as f64 + sum.ln();
                    let lp = target as f64 - lse;
                    let is_greedy = target >= mx;
                    if grad {
                        let scale = (w as f64 / sum) as f32;
                        row.iter_mut().for_each(|e| *e *= scale);
                        row[t as usize] -= w;
                    }
                    (-lp * w as f64, lp, is_greedy)
                },
            )
        })
        .collect();
    let mut loss = 0f64;
    for (i, (l, lp, g)) in per_row.into_iter().enumerate() {
        loss += l;
        logprobs[i] = lp;
        greedy[i] = g;
    }
    loss
}

pub fn adamw(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: AdamStep) {
    let bc1 = 1.0 - (h.beta1 as f64).powi(h.t as i32);
    let bc2 = 1.0 - (h.beta2 as f64).powi(h.t as i32);
    let step = (h.lr as f64 * bc2.sqrt() / bc1) as f32;
    let decay = h.lr * h.weight_decay;
    p.par_iter_mut()
        .zip(m.par_iter_mut().zip(v.par_iter_mut()))
        .zip(g.par_iter())
        .for_each(|((p, (m, v)), &g)| {
            *m = h.beta1 * *m + (1.0 - h.beta1) * g;
            *v = h.beta2 * *v + (1.0 - h.beta2) * g * g;
            *p -= step * *m / (v.sqrt() + h.eps);
            if decay > 0.0 {
                *p -= decay * *p;
            }
        });
}

#[cfg(test)]
mod exp_tests {
    use super::exp_f32;

    #[test]
    fn exp_f32_is_within_two_ulp_of_f64_exp() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = exp_f32(x) as f64;
            let ulp = (want as f32).abs() * f32::EPSILON;
            assert!(
                (got - want).abs() <= 2.0 * ulp as f64,
                "exp({x}) = {got}, want {want}"
            );
            x += 0.013_7;
        }
        assert!(exp_f32(f32::NAN).is_nan());
        assert_eq!(exp_f32(-1000.0), exp_f32(-87.3));
        assert!(exp_f32(1000.0).is_finite());
        assert_eq!(exp_f32(0.0), 1.0);
    }
}
