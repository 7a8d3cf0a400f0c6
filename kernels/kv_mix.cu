// Bitune's fp32 key/value mix and its backward (DESIGN §1). All offsets are element offsets
// into one [kv_rows, width] buffer: the mix rows, the causal (C) rows and the bidirectional (B)
// rows are disjoint row spans of the same K (or V) buffer; the host checks that.
#include "common.cuh"

// buf[mix + i] = (1-α)·buf[c + i] + α·buf[b + i]
extern "C" __global__ void kv_mix_fwd(float* buf, unsigned long long mix, unsigned long long c,
                                      unsigned long long b, unsigned long long n, float alpha) {
    GRID_STRIDE(i, n) buf[mix + i] = (1.0f - alpha) * buf[c + i] + alpha * buf[b + i];
}

// dbuf[c + i] += (1-α)·g, dbuf[b + i] += α·g with g = dbuf[mix + i]; and
// acc[0] += Σ (buf[b + i] − buf[c + i])·g in f64 (block partials, one f64 atomic per block).
extern "C" __global__ void kv_mix_bwd(float* dbuf, const float* buf, unsigned long long mix,
                                      unsigned long long c, unsigned long long b,
                                      unsigned long long n, float alpha, double* acc) {
    __shared__ double scratch[32];
    double part = 0.0;
    GRID_STRIDE(i, n) {
        const float g = dbuf[mix + i];
        // The f32 difference first, as the CPU reference does, then the f64 product.
        part += (double)((buf[b + i] - buf[c + i]) * g);
        dbuf[c + i] += (1.0f - alpha) * g;
        dbuf[b + i] += alpha * g;
    }
    part = block_sum_d(part, scratch);
    if (threadIdx.x == 0) atomicAdd(acc, part);
}

// The same two kernels with α = |θ| / (|θ| + θ_init) computed on the device from θ (a pointer
// to the layer's θ_K or θ_V inside the parameter buffer), so θ never travels to the host.
__device__ __forceinline__ float mix_alpha(float theta, float theta_init) {
    const float a = fabsf(theta);
    return a / (a + theta_init);
}

extern "C" __global__ void kv_mix_fwd_theta(float* buf, unsigned long long mix, unsigned long long c,
                                            unsigned long long b, unsigned long long n,
                                            const float* theta, float theta_init) {
    const float alpha = mix_alpha(theta[0], theta_init);
    GRID_STRIDE(i, n) buf[mix + i] = (1.0f - alpha) * buf[c + i] + alpha * buf[b + i];
}

extern "C" __global__ void kv_mix_bwd_theta(float* dbuf, const float* buf, unsigned long long mix,
                                            unsigned long long c, unsigned long long b,
                                            unsigned long long n, const float* theta,
                                            float theta_init, double* acc) {
    __shared__ double scratch[32];
    const float alpha = mix_alpha(theta[0], theta_init);
    double part = 0.0;
    GRID_STRIDE(i, n) {
        const float g = dbuf[mix + i];
        part += (double)((buf[b + i] - buf[c + i]) * g);
        dbuf[c + i] += (1.0f - alpha) * g;
        dbuf[b + i] += alpha * g;
    }
    part = block_sum_d(part, scratch);
    if (threadIdx.x == 0) atomicAdd(acc, part);
}

// grad[0] += dα/dθ · acc[0], dα/dθ = sign(θ)·θ_init / (θ_init + |θ|)² in f32 as on the CPU (one
// thread; queued after kv_mix_bwd_theta has summed acc).
extern "C" __global__ void kv_mix_bwd_theta_grad(float* grad, const float* theta, float theta_init,
                                         const double* acc) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    const float th = theta[0];
    const float s = th > 0.0f ? 1.0f : (th < 0.0f ? -1.0f : 0.0f);
    const float d = theta_init + fabsf(th);
    const float da = s * theta_init / (d * d);
    grad[0] += (float)((double)da * acc[0]);
}
