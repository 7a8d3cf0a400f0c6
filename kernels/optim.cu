// Optimizer steps on flat f32 buffers and the sum of squares for global grad-norm clipping.
#include "common.cuh"

// HF AdamW: eps added to the uncorrected √v; bias correction folded into `step` (host, f64);
// decoupled weight decay p -= lr·wd·p after the update, as the CPU reference orders it.
extern "C" __global__ void adamw(float* p, const float* g, float* m, float* v,
                                 unsigned long long n, float beta1, float beta2, float eps,
                                 float step, float decay) {
    GRID_STRIDE(i, n) {
        const float gi = g[i];
        const float mi = beta1 * m[i] + (1.0f - beta1) * gi;
        const float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        float pi = p[i] - step * mi / (sqrtf(vi) + eps);
        if (decay > 0.0f) pi -= decay * pi;
        p[i] = pi;
    }
}

// p -= lr·g
extern "C" __global__ void sgd(float* p, const float* g, unsigned long long n, float lr) {
    GRID_STRIDE(i, n) p[i] -= lr * g[i];
}

// acc[0] += Σ x² in f64 (block partials, one f64 atomic per block).
extern "C" __global__ void sum_sq(const float* x, unsigned long long n, double* acc) {
    __shared__ double scratch[32];
    double s = 0.0;
    GRID_STRIDE(i, n) {
        const double v = x[i];
        s += v * v;
    }
    s = block_sum_d(s, scratch);
    if (threadIdx.x == 0) atomicAdd(acc, s);
}
