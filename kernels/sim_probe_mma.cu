// Probe kernels for the tensor-core and async-copy wrappers of kernels/mma.cuh and for the bf16 /
// f16 conversions (tests/cuda_sim_mma.rs): mma.m16n8k16 with fragments built by the PTX ISA's
// formulas and with fragments loaded by ldmatrix, every ldmatrix form on scattered rows, a
// cp.async pipeline of four groups, the reads a missing wait makes (poison on the simulator), and
// the conversions whose simulator versions (sim/include) must match the GPU's cvt bit for bit.
// The `planted_*` kernels carry the misuses the simulator must report. Ordinary CUDA for sm_80+,
// compiled by nvcc like every kernel; the backend never launches them.
#include "common.cuh"
#include "mma.cuh"

// Two consecutive elements of row r of a row-major u16 matrix as one register (low: column c).
__device__ __forceinline__ uint32_t row_pair(const uint16_t* m, int cols, int r, int c) {
    return (uint32_t)m[r * cols + c] | (uint32_t)m[r * cols + c + 1] << 16;
}
// Elements (r, c) and (r+1, c) as one register (low: row r).
__device__ __forceinline__ uint32_t col_pair(const uint16_t* m, int cols, int r, int c) {
    return (uint32_t)m[r * cols + c] | (uint32_t)m[(r + 1) * cols + c] << 16;
}

// One warp per tile: D = A·B + C with A 16 x K (row-major), B K x 8 (row-major), C and D 16 x 8
// (row-major f32), K = 16·ksteps, accumulated in place over the k-steps. Fragments straight from
// global memory by the PTX ISA formulas (groupID g, threadID_in_group t). Tile i's operands at
// a + 16Ki, b + 8Ki, c + 128i; f16 != 0: f16 inputs, else bf16.
extern "C" __global__ void probe_mma_direct(float* d, const uint16_t* a, const uint16_t* b, const float* c,
                                            int ksteps, int f16, int tiles) {
    const int tile = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (tile >= tiles) return;  // the whole warp
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3, K = 16 * ksteps;
    const uint16_t* A = a + (size_t)tile * 16 * K;
    const uint16_t* B = b + (size_t)tile * K * 8;
    float acc[4];
    for (int i = 0; i < 4; ++i) acc[i] = c[tile * 128 + (g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)];
    for (int s = 0; s < ksteps; ++s) {
        const int k = 16 * s + 2 * t;
        const uint32_t fa[4] = {row_pair(A, K, g, k), row_pair(A, K, g + 8, k), row_pair(A, K, g, k + 8),
                                row_pair(A, K, g + 8, k + 8)};
        const uint32_t fb[2] = {col_pair(B, 8, k, g), col_pair(B, 8, k + 8, g)};
        if (f16)
            mma_m16n8k16_f16(acc, fa, fb, acc);
        else
            mma_m16n8k16_bf16(acc, fa, fb, acc);
    }
    for (int i = 0; i < 4; ++i) d[tile * 128 + (g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)] = acc[i];
}

// The same product with K = 16, operands staged in shared memory and loaded by ldmatrix: A (in
// dynamic shared memory, rows padded to 24 elements) by x4; B twice, by x2.trans from its K x N
// rows and by x2 from a transposed N x K copy (rows padded to 24). d: [tile][2][16][8], the
// results of the two B paths. At most 4 warps; dynamic shared memory 768 bytes per warp.
extern "C" __global__ void probe_mma_ldmatrix(float* d, const uint16_t* a, const uint16_t* b, const float* c,
                                              int f16, int tiles) {
    DYNAMIC_SMEM(uint16_t, dyn);
    __shared__ __align__(16) uint16_t sb[4][16][8];
    __shared__ __align__(16) uint16_t sbt[4][8][24];
    const int w = threadIdx.x / 32, tile = blockIdx.x * (blockDim.x / 32) + w;
    if (tile >= tiles) return;
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    uint16_t* sa = dyn + w * 16 * 24;
    for (int i = lane; i < 256; i += 32) sa[(i / 16) * 24 + i % 16] = a[tile * 256 + i];
    for (int i = lane; i < 128; i += 32) {
        sb[w][i / 8][i % 8] = b[tile * 128 + i];
        sbt[w][i % 8][i / 8] = b[tile * 128 + i];
    }
    __syncwarp();
    uint32_t fa[4], fb[2], fbt[2];
    ldmatrix_x4(fa, sa + (lane % 16) * 24 + (lane / 16) * 8);
    ldmatrix_x2_trans(fb, &sb[w][lane % 16][0]);
    ldmatrix_x2(fbt, &sbt[w][lane % 8][((lane / 8) % 2) * 8]);
    float cf[4], d0[4], d1[4];
    for (int i = 0; i < 4; ++i) cf[i] = c[tile * 128 + (g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)];
    if (f16) {
        mma_m16n8k16_f16(d0, fa, fb, cf);
        mma_m16n8k16_f16(d1, fa, fbt, cf);
    } else {
        mma_m16n8k16_bf16(d0, fa, fb, cf);
        mma_m16n8k16_bf16(d1, fa, fbt, cf);
    }
    for (int i = 0; i < 4; ++i) {
        const int e = (g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1);
        d[tile * 256 + e] = d0[i];
        d[tile * 256 + 128 + e] = d1[i];
    }
}

// Every ldmatrix form on four 8x8 u16 matrices (src: matrix m row r at src[64m + 8r]) staged in
// shared memory with scattered rows: row 8m + r of the four lives at shared row perm[8m + r]
// (48-byte rows), and lane l supplies the address of row l. One warp. out: [form][lane][4] for
// the forms x1, x2, x4, x1.trans, x2.trans, x4.trans; registers a form does not load are left
// untouched.
extern "C" __global__ void probe_ldmatrix(uint32_t* out, const uint16_t* src, const int* perm) {
    __shared__ __align__(16) uint16_t rows[32][24];
    const int lane = threadIdx.x & 31;
    for (int i = lane; i < 256; i += 32) rows[perm[i / 8]][i % 8] = src[i];
    __syncwarp();
    const uint16_t* p = &rows[perm[lane]][0];
    uint32_t r[4];
    uint32_t* o = out + lane * 4;
    ldmatrix_x1(r, p);
    o[0] = r[0];
    ldmatrix_x2(r, p);
    for (int i = 0; i < 2; ++i) o[128 + i] = r[i];
    ldmatrix_x4(r, p);
    for (int i = 0; i < 4; ++i) o[256 + i] = r[i];
    ldmatrix_x1_trans(r, p);
    o[384] = r[0];
    ldmatrix_x2_trans(r, p);
    for (int i = 0; i < 2; ++i) o[512 + i] = r[i];
    ldmatrix_x4_trans(r, p);
    for (int i = 0; i < 4; ++i) o[640 + i] = r[i];
}

// A four-group cp.async pipeline per block: tiles of T = 4·blockDim.x floats, block b's four at
// src + 4Tb. Each thread zeroes its destinations, then copies tile 0 by 16-byte copies, tile 1 by
// 8-byte, tile 2 by 4-byte ones, tile 3 by 16-byte zero-filling copies that read only its first
// `valid` floats; one commit per tile. Then wait_group 3, 2, 1, 0, each followed by a barrier and
// the copy of the tile it completed to out (read by other threads than those that issued it).
// After wait_group 3, tiles 1-3 are still in flight: they go to peek (poison on the simulator,
// unspecified on a GPU), and a barrier keeps those reads before any thread's next wait. Dynamic
// shared memory 4T floats.
extern "C" __global__ void probe_cp_async(float* out, float* peek, const float* src, int valid) {
    DYNAMIC_SMEM(float, sm);
    const int n = blockDim.x, tid = threadIdx.x, T = 4 * n;
    const float* s = src + (size_t)blockIdx.x * 4 * T;
    float* o = out + (size_t)blockIdx.x * 4 * T;
    for (int q = 0; q < 16; ++q) sm[q / 4 * T + 4 * tid + q % 4] = 0.0f;  // a value, not the poison
    cp_async_16(sm + 4 * tid, s + 4 * tid);
    cp_async_commit();
    for (int h = 0; h < 2; ++h) cp_async_8(sm + T + 4 * tid + 2 * h, s + T + 4 * tid + 2 * h);
    cp_async_commit();
    for (int q = 0; q < 4; ++q) cp_async_4(sm + 2 * T + 4 * tid + q, s + 2 * T + 4 * tid + q);
    cp_async_commit();
    const int left = valid - 4 * tid;
    const unsigned bytes = left <= 0 ? 0u : left >= 4 ? 16u : 4u * left;
    // A chunk that reads nothing still gets an address inside the buffer.
    cp_async_16_zfill(sm + 3 * T + 4 * tid, bytes ? s + 3 * T + 4 * tid : s, bytes);
    cp_async_commit();

    cp_async_wait<3>();
    __syncthreads();
    for (int j = tid; j < T; j += n) o[j] = sm[j];
    for (int j = tid; j < 3 * T; j += n) peek[(size_t)blockIdx.x * 3 * T + j] = sm[T + j];
    __syncthreads();  // every thread's peek precedes every thread's next wait
    cp_async_wait<2>();
    __syncthreads();
    for (int j = tid; j < T; j += n) o[T + j] = sm[T + j];
    cp_async_wait<1>();
    __syncthreads();
    for (int j = tid; j < T; j += n) o[2 * T + j] = sm[2 * T + j];
    cp_async_wait<0>();
    __syncthreads();
    for (int j = tid; j < T; j += n) o[3 * T + j] = sm[3 * T + j];
}

// The reads a wrong pipeline makes. Each thread first writes zeros where its copies will land
// (the simulator's shared memory starts as poison: the zeros show that the poison comes from the
// issue). Tile A (16 bytes per thread): committed but not waited for when read into early[0, T);
// then wait_group 0 and read into out[0, T). Tile B: issued but never committed, so wait_group 0
// does not cover it: read into early[T, 2T); then wait_all (commit + wait 0) and read into
// out[T, 2T). Barriers keep every read before any thread's next wait. On the simulator early is
// all poison (0xFFFFFFFF); on a GPU it is unspecified. One block; dynamic shared memory 2T
// floats, T = 4·blockDim.x.
extern "C" __global__ void probe_cp_async_nowait(float* out, float* early, const float* src) {
    DYNAMIC_SMEM(float, sm);
    const int n = blockDim.x, tid = threadIdx.x, T = 4 * n;
    for (int q = 0; q < 8; ++q) sm[q / 4 * T + 4 * tid + q % 4] = 0.0f;  // a value, not the poison
    cp_async_16(sm + 4 * tid, src + 4 * tid);
    cp_async_commit();
    __syncthreads();
    for (int j = tid; j < T; j += n) early[j] = sm[j];
    __syncthreads();  // every thread's early read precedes every thread's wait
    cp_async_wait<0>();
    __syncthreads();
    for (int j = tid; j < T; j += n) out[j] = sm[j];

    cp_async_16(sm + T + 4 * tid, src + T + 4 * tid);
    cp_async_wait<0>();
    __syncthreads();
    for (int j = tid; j < T; j += n) early[T + j] = sm[T + j];
    __syncthreads();
    cp_async_wait_all();
    __syncthreads();
    for (int j = tid; j < T; j += n) out[T + j] = sm[T + j];
}

// The conversions of cuda_bf16.h / cuda_fp16.h, whose host versions in the simulator must give
// the GPU's cvt results bit for bit: x[i] to bf16 and f16 bits (round to nearest even), pairs
// (x[2i], x[2i+1]) packed by pack_bf16x2 / pack_half2, and bits[i] back to float.
extern "C" __global__ void probe_convert(uint16_t* to_bf16, uint16_t* to_f16, uint32_t* packed_bf16,
                                         uint32_t* packed_f16, const float* x, int n, float* from_bf16,
                                         float* from_f16, const uint16_t* bits, int nbits) {
    GRID_STRIDE(i, n) {
        to_bf16[i] = __bfloat16_as_ushort(__float2bfloat16(x[i]));
        to_f16[i] = __half_as_ushort(__float2half(x[i]));
    }
    GRID_STRIDE(i, n / 2) {
        packed_bf16[i] = pack_bf16x2(x[2 * i], x[2 * i + 1]);
        packed_f16[i] = pack_half2(x[2 * i], x[2 * i + 1]);
    }
    GRID_STRIDE(i, nbits) {
        from_bf16[i] = __bfloat162float(__ushort_as_bfloat16(bits[i]));
        from_f16[i] = __half2float(__ushort_as_half(bits[i]));
    }
}

// ---- planted misuses: undefined on a GPU; the simulator must name kernel, block, thread and the
// instruction. All take (out, n) like kernels/sim_probe.cu's.

// Lane 3 hands ldmatrix a row address 8 bytes off the 16-byte grid.
extern "C" __global__ void planted_ldmatrix_misaligned(float* out, int n) {
    __shared__ __align__(16) uint16_t rows[32][8];
    const int lane = threadIdx.x & 31;
    for (int i = 0; i < 8; ++i) rows[lane][i] = (uint16_t)(lane * 8 + i);
    __syncwarp();
    uint32_t r[4];
    ldmatrix_x4(r, &rows[lane][lane == 3 ? 4 : 0]);
    out[threadIdx.x] = (float)r[0];
}

// Lane 31 of warp 1 skips the mma that names the whole warp.
extern "C" __global__ void planted_mma_missing_lane(float* out, int n) {
    const uint32_t a[4] = {0x3f803f80u, 0, 0, 0}, b[2] = {0x3f803f80u, 0};
    float acc[4] = {0, 0, 0, 0};
    if (threadIdx.x != 63) mma_m16n8k16_bf16(acc, a, b, acc);
    out[threadIdx.x] = acc[0];
}

// Thread 5 of block 1 copies 16 bytes to float n/4·4 of the n (n % 4 == 2) floats of dynamic
// shared memory: 8 of them past its end. The others copy whole 16-byte chunks inside it.
extern "C" __global__ void planted_cp_async_past_smem(float* out, int n) {
    DYNAMIC_SMEM(float, sm);
    const int tid = threadIdx.x;
    const bool planted = blockIdx.x == 1 && tid == 5;
    if (4 * tid + 4 <= n || planted) cp_async_16(planted ? sm + n / 4 * 4 : sm + 4 * tid, out + 4 * tid);
    cp_async_wait_all();
    __syncthreads();
    out[blockIdx.x * blockDim.x + tid] = sm[tid];
}
