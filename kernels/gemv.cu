// Decode GEMV (batch 1): y[n] (+)= w[n, k] · x[k]. One warp per output row; the weight read
// dominates, so each lane streams 16-byte loads when rows are 16-byte aligned (k % 4 == 0;
// device allocations are 256-byte aligned).
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256) matmul_fwd_gemv(float* y, const float* x, const float* w,
                                                       int k, int n, int accumulate) {
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= n) return;
    const float* wr = w + (size_t)row * k;
    float s = 0.0f;
    if ((k & 3) == 0) {
        const float4* w4 = reinterpret_cast<const float4*>(wr);
        const float4* x4 = reinterpret_cast<const float4*>(x);
        for (int i = lane; i < k / 4; i += 32) {
            const float4 a = __ldg(&w4[i]), b = __ldg(&x4[i]);
            s += a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
        }
    } else {
        for (int i = lane; i < k; i += 32) s += __ldg(&wr[i]) * __ldg(&x[i]);
    }
    s = warp_sum(s);
    if (lane == 0) y[row] = accumulate ? y[row] + s : s;
}
