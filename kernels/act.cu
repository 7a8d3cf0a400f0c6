// MLP activations, gated (out = act(gate) ⊙ up) and plain (out = act(gate)), forward and
// backward. kind: 0 = SiLU, 1 = GELU (tanh approximation), 2 = GELU (erf, evaluated in f64 as
// the CPU reference does). Matches src/backend/cpu/ops.rs::{act, act_grad}.
#include "common.cuh"

#define SQRT_2_OVER_PI 0.7978846f

__device__ __forceinline__ float act(int kind, float x) {
    if (kind == 0) return x / (1.0f + expf(-x));
    if (kind == 1) return 0.5f * x * (1.0f + tanhf(SQRT_2_OVER_PI * (x + 0.044715f * x * x * x)));
    const double xd = x;
    return (float)(0.5 * xd * (1.0 + erf(xd * 0.70710678118654752440)));
}

__device__ __forceinline__ float act_grad(int kind, float x) {
    if (kind == 0) {
        const float s = 1.0f / (1.0f + expf(-x));
        return s * (1.0f + x * (1.0f - s));
    }
    if (kind == 1) {
        const float t = tanhf(SQRT_2_OVER_PI * (x + 0.044715f * x * x * x));
        return 0.5f * (1.0f + t) +
               0.5f * x * (1.0f - t * t) * SQRT_2_OVER_PI * (1.0f + 3.0f * 0.044715f * x * x);
    }
    const double xd = x;
    const double cdf = 0.5 * (1.0 + erf(xd * 0.70710678118654752440));
    const double pdf = exp(-0.5 * xd * xd) * 0.39894228040143267794;  // 1/sqrt(2π)
    return (float)(cdf + xd * pdf);
}

// up == nullptr: plain activation.
extern "C" __global__ void act_fwd(float* out, const float* gate, const float* up,
                                   unsigned long long n, int kind) {
    GRID_STRIDE(i, n) {
        const float a = act(kind, gate[i]);
        out[i] = up ? a * up[i] : a;
    }
}

// Overwrites dgate (and dup when gated).
extern "C" __global__ void act_bwd(float* dgate, float* dup, const float* dout, const float* gate,
                                   const float* up, unsigned long long n, int kind) {
    GRID_STRIDE(i, n) {
        const float g = gate[i], d = dout[i];
        if (up) {
            dgate[i] = d * up[i] * act_grad(kind, g);
            dup[i] = d * act(kind, g);
        } else {
            dgate[i] = d * act_grad(kind, g);
        }
    }
}
