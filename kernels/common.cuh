// Shared device helpers for the kernels in this folder (included, never compiled alone).
// Everything is f32 in memory; reductions that the CPU reference does in f64 are done in f64
// here too, so results agree to ~1e-6 rather than to the f32 summation-order noise of ~1e-5.
#pragma once

#define FULL_MASK 0xffffffffu

// A kernel's dynamic shared memory (the launch's shared_mem_bytes) as `type name[]`. In the CUDA
// simulator (BITUNE_SIM, see docs/ARCHITECTURE.md) it is a pointer to exactly that many bytes with
// guard pages around them.
#ifdef BITUNE_SIM
#define DYNAMIC_SMEM(type, name) type* name = reinterpret_cast<type*>(::sim::tl_block->dyn_smem)
#else
#define DYNAMIC_SMEM(type, name) extern __shared__ __align__(16) type name[]
#endif

// Grid-stride loop over [0, n): kernels are launched with a capped grid and cover any n.
#define GRID_STRIDE(i, n)                                                            \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (size_t)(n); \
         i += (size_t)gridDim.x * blockDim.x)

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ double warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

// Block-wide sum, result broadcast to every thread. `scratch` holds >= 32 doubles; the leading
// __syncthreads makes back-to-back calls with the same scratch safe.
__device__ __forceinline__ double block_sum_d(double v, double* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int nwarps = (blockDim.x + 31) >> 5;
    v = warp_sum_d(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nwarps ? scratch[lane] : 0.0;
    return warp_sum_d(v);
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int nwarps = (blockDim.x + 31) >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nwarps ? scratch[lane] : -INFINITY;
    return warp_max(v);
}

#include "mma.cuh"
