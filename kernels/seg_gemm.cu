// A list of small strided GEMMs ("entries") run in a single launch,
// C_e (+)= α_e · A_e[m, k] · B_e[k, n]: the engine of the segment-aware LoRA ops, named for what
// it computes since it serves several ops (docs/ARCHITECTURE.md, "Ops and where each lives").
// The host (src/backend/cuda/lora.rs, on gemm.rs's launcher) turns the segments of both adapter
// sets into entries:
//   lora_fwd: xa = s·x·Aᵀ (one launch), then y += xa·Bᵀ (a second launch);
//   lora_bwd: u = s·dy·B and xa = s·x·Aᵀ (one launch), then dA += uᵀx, dB += dyᵀxa and
//             dx += u·A (one launch; dA/dB split over rows with f32 atomics, since the C and A
//             segments share adapter C and so write the same gradient entries).
// The same kernel is the matmul fallback when cuBLAS cannot be loaded.
//
// Entry descriptor, 16 × i64: m, n, k, a_sel, a_off, a_rs, a_cs, b_sel, b_off, b_rs, b_cs,
// c_sel, c_off, c_rs, alpha (f32 bits), mode. Element (i, j) of operand X is
// buf[X_sel][X_off + i·X_rs + j·X_cs], so transposes are strides. mode: 0 C = αAB,
// 1 C += αAB, 2 atomicAdd (split-K). Work item, 5 × i32: entry, m0, n0, k0, k1.
#include "common.cuh"

#define BM 64
#define BN 64
#define BK 16

__device__ __forceinline__ float* pick(long long s, float* p0, float* p1, float* p2, float* p3,
                                       float* p4, float* p5) {
    switch (s) {
        case 0: return p0;
        case 1: return p1;
        case 2: return p2;
        case 3: return p3;
        case 4: return p4;
        default: return p5;
    }
}

extern "C" __global__ void __launch_bounds__(256)
    seg_gemm(const long long* desc, const int* items, float* p0, float* p1, float* p2, float* p3,
             float* p4, float* p5) {
    // k-major tiles; +4 keeps rows 16-byte aligned for the float4 reads below.
    __shared__ __align__(16) float As[BK][BM + 4];
    __shared__ __align__(16) float Bs[BK][BN + 4];
    const int* it = items + 5 * blockIdx.x;
    const long long* D = desc + 16 * it[0];
    const int m = (int)D[0], n = (int)D[1];
    const int m0 = it[1], n0 = it[2], k0 = it[3], k1 = it[4];
    const float* A = pick(D[3], p0, p1, p2, p3, p4, p5) + D[4];
    const long long a_rs = D[5], a_cs = D[6];
    const float* B = pick(D[7], p0, p1, p2, p3, p4, p5) + D[8];
    const long long b_rs = D[9], b_cs = D[10];
    float* C = pick(D[11], p0, p1, p2, p3, p4, p5) + D[12];
    const long long c_rs = D[13];
    const float alpha = __int_as_float((int)D[14]);
    const int mode = (int)D[15];

    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    // Load mapping: the fast thread index walks the operand's unit-stride dimension so global
    // reads coalesce whichever way the operand is transposed.
    const bool a_k_fast = a_cs == 1, b_n_fast = b_cs == 1 || b_rs != 1;
    float acc[4][4] = {};
    for (int kt = k0; kt < k1; kt += BK) {
        for (int e = tid; e < BM * BK; e += 256) {
            const int mi = a_k_fast ? e / BK : e % BM, kk = a_k_fast ? e % BK : e / BM;
            const int gm = m0 + mi, gk = kt + kk;
            As[kk][mi] = (gm < m && gk < k1) ? A[gm * a_rs + gk * a_cs] : 0.0f;
        }
        for (int e = tid; e < BK * BN; e += 256) {
            const int nj = b_n_fast ? e % BN : e / BK, kk = b_n_fast ? e / BN : e % BK;
            const int gn = n0 + nj, gk = kt + kk;
            Bs[kk][nj] = (gn < n && gk < k1) ? B[gk * b_rs + gn * b_cs] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
            const float4 a = *reinterpret_cast<const float4*>(&As[kk][ty * 4]);
            const float4 b = *reinterpret_cast<const float4*>(&Bs[kk][tx * 4]);
            const float av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] += av[i] * bv[j];
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int gm = m0 + ty * 4 + i;
        if (gm >= m) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int gn = n0 + tx * 4 + j;
            if (gn >= n) continue;
            float* c = C + gm * c_rs + gn;
            const float v = alpha * acc[i][j];
            if (mode == 0) *c = v;
            else if (mode == 1) *c += v;
            else atomicAdd(c, v);
        }
    }
}
