// RMSNorm (w), RMSNorm (1 + w) (Gemma) and LayerNorm (w, b): one block per row, statistics in
// f64 like the CPU reference. kind: 0 = Rms, 1 = RmsPlusOne, 2 = Layer.
// stats[2·row] = mean (0 for RMS), stats[2·row + 1] = rstd; the backward reads them back.
#include "common.cuh"

// The forward applies the gain in f32 and the backward in f64, as the CPU reference does.
__device__ __forceinline__ float gain(int kind, const float* w, int i) {
    return kind == 1 ? 1.0f + w[i] : w[i];
}
__device__ __forceinline__ double gain_d(int kind, const float* w, int i) {
    return kind == 1 ? 1.0 + (double)w[i] : (double)w[i];
}

extern "C" __global__ void norm_fwd(float* out, float* stats, const float* x, const float* w,
                                    const float* b, int rows, int d, int kind, float eps) {
    __shared__ double scratch[32];
    for (int row = blockIdx.x; row < rows; row += gridDim.x) {
        const float* xr = x + (size_t)row * d;
        float* o = out + (size_t)row * d;
        double mean = 0.0;
        if (kind == 2) {
            double s = 0.0;
            for (int i = threadIdx.x; i < d; i += blockDim.x) s += xr[i];
            mean = block_sum_d(s, scratch) / d;
        }
        double s2 = 0.0;
        for (int i = threadIdx.x; i < d; i += blockDim.x) {
            const double c = (double)xr[i] - mean;
            s2 += c * c;
        }
        const double var = block_sum_d(s2, scratch) / d;
        const double rstd = 1.0 / sqrt(var + (double)eps);
        if (threadIdx.x == 0) {
            stats[2 * row] = (float)mean;
            stats[2 * row + 1] = (float)rstd;
        }
        for (int i = threadIdx.x; i < d; i += blockDim.x) {
            const float xh = (float)(((double)xr[i] - mean) * rstd);
            float v = xh * gain(kind, w, i);
            if (kind == 2 && b) v += b[i];
            o[i] = v;
        }
    }
}

// dx (+)= rstd·(dxh − mean(dxh)·[Layer] − x̂·mean(dxh ⊙ x̂)), dxh = dy ⊙ gain; weights frozen.
extern "C" __global__ void norm_bwd(float* dx, const float* dy, const float* x,
                                    const float* stats, const float* w, int rows, int d, int kind,
                                    int accumulate) {
    __shared__ double scratch[32];
    for (int row = blockIdx.x; row < rows; row += gridDim.x) {
        const float* xr = x + (size_t)row * d;
        const float* dyr = dy + (size_t)row * d;
        float* dxr = dx + (size_t)row * d;
        const double mean = stats[2 * row], rstd = stats[2 * row + 1];
        double m1 = 0.0, m2 = 0.0;
        for (int i = threadIdx.x; i < d; i += blockDim.x) {
            const double xh = ((double)xr[i] - mean) * rstd;
            const double dxh = (double)dyr[i] * gain_d(kind, w, i);
            m1 += dxh;
            m2 += dxh * xh;
        }
        m1 = kind == 2 ? block_sum_d(m1, scratch) / d : 0.0;
        m2 = block_sum_d(m2, scratch) / d;
        for (int i = threadIdx.x; i < d; i += blockDim.x) {
            const double xh = ((double)xr[i] - mean) * rstd;
            const double dxh = (double)dyr[i] * gain_d(kind, w, i);
            const float v = (float)(rstd * (dxh - m1 - xh * m2));
            dxr[i] = accumulate ? dxr[i] + v : v;
        }
    }
}
