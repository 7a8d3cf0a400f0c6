// Probe kernels for the CUDA simulator's own tests (tests/cuda_sim.rs): each exercises one
// primitive (ids in 3-D grids, barriers and their reductions, every shuffle, votes, atomics,
// static and dynamic shared memory) against a scalar reference on the host, and the `planted_*`
// kernels carry the failures a GPU would hang or fault on, which the simulator must report.
// They are ordinary CUDA, compiled by nvcc like every kernel; the backend never launches them.
#include "common.cuh"

// Every thread writes its built-in ids: 12 u32 per thread, in linear thread order per block.
extern "C" __global__ void probe_ids(unsigned* out) {
    const unsigned block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    const unsigned per_block = blockDim.x * blockDim.y * blockDim.z;
    const unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    unsigned* o = out + 12 * ((size_t)block * per_block + t);
    o[0] = threadIdx.x, o[1] = threadIdx.y, o[2] = threadIdx.z;
    o[3] = blockIdx.x, o[4] = blockIdx.y, o[5] = blockIdx.z;
    o[6] = blockDim.x, o[7] = blockDim.y, o[8] = blockDim.z;
    o[9] = gridDim.x, o[10] = gridDim.y, o[11] = gridDim.z;
}

// Shared memory and barriers: each block reverses its slice of `in` through static shared memory
// (needs the barrier), rotates it through dynamic shared memory, then records the three barrier
// reductions of the predicate (value > threshold). blockDim.x ≤ 256; dynamic smem = blockDim.x
// floats.
extern "C" __global__ void probe_barrier(float* out, int* reductions, const float* in, float threshold) {
    __shared__ float rev[256];
    DYNAMIC_SMEM(float, dyn);
    const int n = blockDim.x, t = threadIdx.x;
    const float x = in[blockIdx.x * n + t];
    rev[n - 1 - t] = x;
    __syncthreads();
    dyn[(t + 1) % n] = rev[t];
    __syncthreads();
    out[blockIdx.x * n + t] = dyn[t];
    const int pred = x > threshold;
    const int any = __syncthreads_or(pred);
    const int all = __syncthreads_and(pred);
    const int count = __syncthreads_count(pred);
    if (t == 0) {
        reductions[3 * blockIdx.x] = any;
        reductions[3 * blockIdx.x + 1] = all;
        reductions[3 * blockIdx.x + 2] = count;
    }
}

// Every shuffle with the given operand and width: 4 floats per thread (idx, up, down, xor).
extern "C" __global__ void probe_shfl(float* out, const float* in, int operand, int width) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    const float v = in[t];
    float* o = out + 4 * t;
    o[0] = __shfl_sync(FULL_MASK, v, operand, width);
    o[1] = __shfl_up_sync(FULL_MASK, v, (unsigned)operand, width);
    o[2] = __shfl_down_sync(FULL_MASK, v, (unsigned)operand, width);
    o[3] = __shfl_xor_sync(FULL_MASK, v, operand, width);
}

// Shuffles and votes over the even lanes only (a partial mask), plus a double shuffle.
extern "C" __global__ void probe_partial(float* out, unsigned* votes, double* dout, const float* in) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    const int lane = threadIdx.x & 31;
    const double d = (double)in[t] * 3.0;
    dout[t] = __shfl_xor_sync(FULL_MASK, d, 1);
    if (lane % 2 == 0) {
        const unsigned even = 0x55555555u;
        out[t] = __shfl_xor_sync(even, in[t], 2);
        const int pred = in[t] > 0.0f;
        const unsigned ballot = __ballot_sync(even, pred);
        const int any = __any_sync(even, pred), all = __all_sync(even, pred);
        __syncwarp(even);
        if (lane == 0) {
            const int w = t / 32;
            votes[3 * w] = ballot;
            votes[3 * w + 1] = (unsigned)any;
            votes[3 * w + 2] = (unsigned)all;
        }
    } else {
        out[t] = -1.0f;
    }
}

// Atomics from every thread of every block: f32 and f64 adds of small integers (exact in any
// order), u32 add, i32 max and min, CAS-counted increments.
extern "C" __global__ void probe_atomics(float* f, double* d, unsigned* u, int* mx, int* mn,
                                         unsigned* cas, const int* vals) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    const int v = vals[t];
    atomicAdd(f, (float)v);
    atomicAdd(d, (double)v * 0.5);
    atomicAdd(u, (unsigned)(v & 7));
    atomicMax(mx, v);
    atomicMin(mn, v);
    unsigned old = *cas, seen;
    do {
        seen = old;
        old = atomicCAS(cas, seen, seen + 1u);
    } while (old != seen);
}

// f32 atomic adds of arbitrary values: the result depends on the order the adds land in.
extern "C" __global__ void probe_fsum(float* acc, const float* vals) {
    atomicAdd(acc, vals[blockIdx.x * blockDim.x + threadIdx.x]);
}

// Warp and block reductions of common.cuh over rows (one block per row).
extern "C" __global__ void probe_reduce(double* sums, float* maxes, const float* x, int width) {
    __shared__ double scratch[32];
    __shared__ float fscratch[32];
    const float* r = x + (size_t)blockIdx.x * width;
    double s = 0.0;
    float m = -INFINITY;
    for (int i = threadIdx.x; i < width; i += blockDim.x) {
        s += r[i];
        m = fmaxf(m, r[i]);
    }
    s = block_sum_d(s, scratch);
    m = block_max(m, fscratch);
    if (threadIdx.x == 0) {
        sums[blockIdx.x] = s;
        maxes[blockIdx.x] = m;
    }
}

// ---- planted failures: a GPU would hang or fault; the simulator must name kernel, block, thread.
// All take (out, n) so that one launcher serves them; n is unused where the failure needs none.

// Only the first warp reaches the barrier; the others exit.
extern "C" __global__ void planted_barrier_exit(float* out, int n) {
    if (threadIdx.x < 32) {
        __syncthreads();
        out[threadIdx.x] = 1.0f;
    }
}

// Odd and even threads wait at two different barriers.
extern "C" __global__ void planted_barrier_split(float* out, int n) {
    if (threadIdx.x & 1) {
        __syncthreads();
        out[threadIdx.x] = 1.0f;
    } else {
        __syncthreads();
        out[threadIdx.x] = 2.0f;
    }
}

// Lane 5 skips a full-mask shuffle that names it.
extern "C" __global__ void planted_shfl_missing_lane(float* out, int n) {
    if (threadIdx.x % 32 != 5) out[threadIdx.x] = __shfl_sync(FULL_MASK, (float)threadIdx.x, 0);
}

// The last thread of the last block writes one element past the end of `out` (n elements).
extern "C" __global__ void planted_oob_global(float* out, int n) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    out[t] = 1.0f;
    if (t == n - 1) out[t + 1] = 2.0f;
}

// Thread 7 of block 1 reads one float past the dynamic shared memory (n floats).
extern "C" __global__ void planted_oob_shared(float* out, int n) {
    DYNAMIC_SMEM(float, dyn);
    for (int i = threadIdx.x; i < n; i += blockDim.x) dyn[i] = (float)i;
    __syncthreads();
    const int extra = blockIdx.x == 1 && threadIdx.x == 7;
    out[blockIdx.x * blockDim.x + threadIdx.x] = dyn[threadIdx.x + extra * n];
}

// Thread 3 of block 2 writes one element past a static __shared__ array.
extern "C" __global__ void planted_oob_static_shared(float* out, int n) {
    __shared__ float buf[64];
    const int extra = blockIdx.x == 2 && threadIdx.x == 3;
    buf[threadIdx.x + extra * 64] = (float)n;
    __syncthreads();
    out[blockIdx.x * blockDim.x + threadIdx.x] = buf[threadIdx.x];
}

// Launched with more threads than its bounds allow.
extern "C" __global__ void __launch_bounds__(128) planted_bounded(float* out) { out[threadIdx.x] = 1.0f; }
