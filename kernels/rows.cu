// Data movement and elementwise arithmetic on row-major [rows, width] f32 buffers: embedding
// lookup, row copies/gathers/scatters, residual adds, scaling, bias rows, fills.
// Offsets and counts are in elements (64-bit), so the host passes views as (buffer, offset).
#include "common.cuh"

extern "C" __global__ void fill(float* x, unsigned long long n, float value) {
    GRID_STRIDE(i, n) x[i] = value;
}

// y += x
extern "C" __global__ void add(float* y, const float* x, unsigned long long n) {
    GRID_STRIDE(i, n) y[i] += x[i];
}

// x *= s
extern "C" __global__ void scale(float* x, unsigned long long n, float s) {
    GRID_STRIDE(i, n) x[i] *= s;
}

// y[r, j] += bias[j] for r < rows (the bias of matmul_fwd, after cuBLAS or the GEMV).
extern "C" __global__ void add_bias_rows(float* y, const float* bias, unsigned long long rows,
                                         int n) {
    GRID_STRIDE(i, rows * n) y[i] += bias[i % n];
}

// dst[dst_off + i] (+)= src[src_off + i] for i < n: copy_rows on a contiguous row span.
extern "C" __global__ void copy_rows(float* dst, unsigned long long dst_off, const float* src,
                                     unsigned long long src_off, unsigned long long n,
                                     int accumulate) {
    GRID_STRIDE(i, n) {
        const float v = src[src_off + i];
        if (accumulate) dst[dst_off + i] += v; else dst[dst_off + i] = v;
    }
}

// out[i, :] = src[idx[i], :]
extern "C" __global__ void gather_rows(float* out, const float* src, const int* idx, int nidx,
                                       int width) {
    GRID_STRIDE(e, (size_t)nidx * width) {
        const size_t i = e / width, c = e % width;
        out[e] = src[(size_t)idx[i] * width + c];
    }
}

// out[idx[i], :] += src[i, :]; atomic because an index may repeat (the CPU loop then adds twice).
extern "C" __global__ void scatter_add_rows(float* out, const float* src, const int* idx,
                                            int nidx, int width) {
    GRID_STRIDE(e, (size_t)nidx * width) {
        const size_t i = e / width, c = e % width;
        atomicAdd(&out[(size_t)idx[i] * width + c], src[e]);
    }
}

// out[i, :] = scale * table[ids[i], :]
extern "C" __global__ void embedding_fwd(float* out, const unsigned* ids, int n_ids,
                                         const float* table, int dim, float scale) {
    GRID_STRIDE(e, (size_t)n_ids * dim) {
        const size_t i = e / dim, c = e % dim;
        out[e] = table[(size_t)ids[i] * dim + c] * scale;
    }
}

// out[0] = the first index of the largest of x[0..n), as the host's sample::argmax: greedy
// decoding then reads one integer instead of the logits. One block of 256 threads; each thread
// scans its elements in increasing order (strict >, so its first maximum), then a tree
// reduction keeps the larger value, and on ties the lower index.
extern "C" __global__ void argmax(unsigned int* out, const float* x, unsigned long long n) {
    const unsigned int none = 0xffffffffu;
    __shared__ float sv[256];
    __shared__ unsigned int si[256];
    float bv = 0.0f;
    unsigned int bi = none;
    for (unsigned long long i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = x[i];
        if (bi == none || v > bv) {
            bv = v;
            bi = (unsigned int)i;
        }
    }
    sv[threadIdx.x] = bv;
    si[threadIdx.x] = bi;
    __syncthreads();
    for (unsigned int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            const float v = sv[threadIdx.x + s], w = sv[threadIdx.x];
            const unsigned int i = si[threadIdx.x + s], j = si[threadIdx.x];
            if (i != none && (j == none || v > w || (v == w && i < j))) {
                sv[threadIdx.x] = v;
                si[threadIdx.x] = i;
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) out[0] = si[0] == none ? 0u : si[0];
}
