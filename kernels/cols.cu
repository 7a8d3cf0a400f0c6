// Per-column vector ops of DoRA and IA3 (the CPU reference is src/backend/colops.rs): scaling or
// shifting the columns of a row range by a vector, the per-column dot product that is such a
// scale's gradient, and DoRA's inverted weight-row norms. Offsets are element offsets.
#include "common.cuh"

// y[start + i] *= v[i % width] for i in [0, n) (n = rows · width)
extern "C" __global__ void mul_cols(float* y, unsigned long long start, unsigned long long n,
                                    unsigned long long width, const float* v) {
    GRID_STRIDE(i, n) y[start + i] *= v[i % width];
}

// y[start + i] += v[i % width]
extern "C" __global__ void add_cols(float* y, unsigned long long start, unsigned long long n,
                                    unsigned long long width, const float* v) {
    GRID_STRIDE(i, n) y[start + i] += v[i % width];
}

// out[j] += Σ_{r < rows} a[start + r·width + j]·b[start + r·width + j], summed in f64 (a sum over
// every token, as on the CPU). One thread per column: neighbouring threads read neighbouring
// columns of a row, so the loads coalesce.
extern "C" __global__ void col_dot(float* out, const float* a, const float* b,
                                   unsigned long long start, unsigned long long rows,
                                   unsigned long long width) {
    GRID_STRIDE(j, width) {
        double s = 0.0;
        for (unsigned long long r = 0; r < rows; ++r) {
            const size_t at = start + r * width + j;
            s += (double)a[at] * (double)b[at];
        }
        out[j] += (float)s;
    }
}

// out[j] = 1 / ‖W_j + scale·(B A)_j‖₂ for the n rows of w ([n, k]); a is [rank, k], b [n, rank].
// One block per row (looping over rows past the grid); the update is formed in f32 as the CPU's
// GEMM does, its squares summed in f64.
extern "C" __global__ void dora_inv_norm(float* out, const float* w, const float* a,
                                         const float* b, float scale, int rank, int k, int n) {
    __shared__ double scratch[32];
    for (int j = blockIdx.x; j < n; j += gridDim.x) {
        double part = 0.0;
        for (int col = threadIdx.x; col < k; col += blockDim.x) {
            float ba = 0.0f;
            for (int r = 0; r < rank; ++r) ba += (b[(size_t)j * rank + r] * scale) * a[(size_t)r * k + col];
            const float x = w[(size_t)j * k + col] + ba;
            part += (double)x * (double)x;
        }
        const double sum = block_sum_d(part, scratch);
        if (threadIdx.x == 0) out[j] = 1.0f / (float)sqrt(sum);
    }
}
