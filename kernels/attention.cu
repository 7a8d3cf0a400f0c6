// Segment ("dual-mask") flash attention, forward and backward, f32 with f32 online-softmax
// statistics. One launch covers every group of a packed batch: a group is a query row range that
// reads up to any number of key row ranges under one mask (causal / full / anti-causal, decided
// by token positions exactly like src/backend/cpu/attention.rs). GQA: q head h reads kv head
// h / (hq / hkv). head_dim ≤ 256.
//
// Plan: one i32 array uploaded per call (src/backend/cuda/attention.rs builds it):
//   [0, 5·G)            groups: q_start, q_end, mask (0 causal, 1 full, 2 anti), r_off, r_cnt
//   ranges_off ..       key ranges: start, end (r_off/r_cnt index these pairs)
//   items_off ..        work items: forward / dQ: (group, q0); dK/dV: (group, k0, k1)
//   qpos_off, kpos_off  the u32 positions of the query rows and key rows
//
// Scheme: a block is NW warps; in the forward and dQ kernels each warp owns one query row and
// its 32 lanes own the 32 keys of the current key tile (scores) and then head_dim/32 output
// channels each (P·V). The dK/dV kernel mirrors it: each warp owns one key row, lanes own the
// queries of a query tile, and partial dK/dV are added with f32 atomics (GQA heads and groups
// that share key rows both add into the same rows; dk/dv accumulate by contract anyway).
// Tiles that no (query, key) pair of the block can see are skipped whole (__syncthreads_or).
#include "common.cuh"

#define NW 8    // warps per block
#define KT 32   // tile length (one key or query per lane)
#define MAXC 8  // channels per lane: head_dim ≤ 32·MAXC
// 4 resident blocks per SM caps registers at 64: without it ptxas picks 48 for sm_80 and spills.
#define MIN_BLOCKS 4

__device__ __forceinline__ bool visible(int mask, unsigned qp, unsigned kp) {
    return mask == 0 ? kp <= qp : (mask == 1 ? true : kp >= qp);
}

// Loads `n` rows of one head (`hd` channels starting at column `col`) into shared rows of stride
// `stride`; an odd stride makes lane-per-row reads bank-conflict free.
__device__ __forceinline__ void load_rows(float* dst, int stride, const float* src, int row0,
                                          int n, size_t width, int col, int hd) {
    for (int e = threadIdx.x; e < n * hd; e += blockDim.x) {
        const int r = e / hd, d = e - r * hd;
        dst[r * stride + d] = src[(size_t)(row0 + r) * width + col + d];
    }
}

extern "C" __global__ void __launch_bounds__(NW * 32, MIN_BLOCKS)
    attention_fwd(float* out, float* lse, const float* q, const float* k, const float* v,
                  const int* plan, int ranges_off, int items_off, int qpos_off, int kpos_off,
                  int hq, int hkv, int hd, float scale) {
    DYNAMIC_SMEM(float, smem);
    const int ks = hd | 1;
    float* Ks = smem;             // [KT][ks]
    float* Vs = Ks + KT * ks;     // [KT][hd]
    float* Qs = Vs + KT * hd;     // [NW][hd]
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int* item = plan + items_off + 2 * blockIdx.x;
    const int* G = plan + 5 * item[0];
    const int q_end = G[1], mask = G[2], r_off = G[3], r_cnt = G[4];
    const unsigned* q_pos = reinterpret_cast<const unsigned*>(plan + qpos_off);
    const unsigned* k_pos = reinterpret_cast<const unsigned*>(plan + kpos_off);
    const int h = blockIdx.y, kh = h / (hq / hkv);
    const size_t qw = (size_t)hq * hd, kw = (size_t)hkv * hd;
    const int row = item[1] + warp;
    const bool active = row < q_end;
    const unsigned qp = active ? q_pos[row] : 0u;
    float* qs = Qs + warp * hd;
    for (int d = lane; d < hd; d += 32) qs[d] = active ? q[row * qw + h * hd + d] : 0.0f;

    float acc[MAXC];
#pragma unroll
    for (int c = 0; c < MAXC; ++c) acc[c] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    for (int r = 0; r < r_cnt; ++r) {
        const int* R = plan + ranges_off + 2 * (r_off + r);
        const int k_beg = R[0], k_end = R[1];
        for (int t0 = k_beg; t0 < k_end; t0 += KT) {
            const int j = t0 + lane;
            const bool vis = active && j < k_end && visible(mask, qp, k_pos[j]);
            // Block-uniform skip; also the barrier that frees Ks/Vs of the previous tile.
            if (!__syncthreads_or(vis)) continue;
            const int nk = min(KT, k_end - t0);
            load_rows(Ks, ks, k, t0, nk, kw, kh * hd, hd);
            load_rows(Vs, hd, v, t0, nk, kw, kh * hd, hd);
            __syncthreads();
            float s = -INFINITY;
            if (vis) {
                const float* kr = Ks + lane * ks;
                float dot = 0.0f;
                for (int d = 0; d < hd; ++d) dot += qs[d] * kr[d];
                s = dot * scale;
            }
            const float mt = warp_max(s);
            if (mt == -INFINITY) continue;  // warp-uniform: this row sees none of the tile
            const float mn = fmaxf(m, mt);
            const float corr = expf(m - mn);  // 0 on the first visible tile (m = −∞)
            const float p = vis ? expf(s - mn) : 0.0f;
            l = l * corr + warp_sum(p);
#pragma unroll
            for (int c = 0; c < MAXC; ++c) acc[c] *= corr;
            for (int jj = 0; jj < nk; ++jj) {
                const float pj = __shfl_sync(FULL_MASK, p, jj);
                const float* vr = Vs + jj * hd;
#pragma unroll
                for (int c = 0; c < MAXC; ++c) {
                    const int d = lane + 32 * c;
                    if (d < hd) acc[c] += pj * vr[d];
                }
            }
            m = mn;
        }
    }
    if (!active) return;
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;  // no visible key: zeros and lse = −∞
#pragma unroll
    for (int c = 0; c < MAXC; ++c) {
        const int d = lane + 32 * c;
        if (d < hd) out[row * qw + h * hd + d] = acc[c] * inv;
    }
    if (lane == 0) lse[(size_t)row * hq + h] = l > 0.0f ? m + logf(l) : -INFINITY;
}

// dQ (overwritten) and D = rowsum(dO ⊙ O) per (row, head), which the dK/dV kernel reads.
extern "C" __global__ void __launch_bounds__(NW * 32, MIN_BLOCKS)
    attention_bwd_dq(float* dq, float* dsum, const float* dout, const float* q, const float* k,
                     const float* v, const float* out, const float* lse, const int* plan,
                     int ranges_off, int items_off, int qpos_off, int kpos_off, int hq, int hkv,
                     int hd, float scale) {
    DYNAMIC_SMEM(float, smem);
    const int ks = hd | 1;
    float* Ks = smem;              // [KT][ks]
    float* Vs = Ks + KT * ks;      // [KT][ks]
    float* Qs = Vs + KT * ks;      // [NW][hd]
    float* dOs = Qs + NW * hd;     // [NW][hd]
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int* item = plan + items_off + 2 * blockIdx.x;
    const int* G = plan + 5 * item[0];
    const int q_end = G[1], mask = G[2], r_off = G[3], r_cnt = G[4];
    const unsigned* q_pos = reinterpret_cast<const unsigned*>(plan + qpos_off);
    const unsigned* k_pos = reinterpret_cast<const unsigned*>(plan + kpos_off);
    const int h = blockIdx.y, kh = h / (hq / hkv);
    const size_t qw = (size_t)hq * hd, kw = (size_t)hkv * hd;
    const int row = item[1] + warp;
    const bool active = row < q_end;
    const unsigned qp = active ? q_pos[row] : 0u;
    float* qs = Qs + warp * hd;
    float* dos = dOs + warp * hd;
    float dd = 0.0f;
    for (int d = lane; d < hd; d += 32) {
        const size_t off = row * qw + h * hd + d;
        qs[d] = active ? q[off] : 0.0f;
        dos[d] = active ? dout[off] : 0.0f;
        dd += active ? dout[off] * out[off] : 0.0f;
    }
    const float D = warp_sum(dd);
    const float L = active ? lse[(size_t)row * hq + h] : 0.0f;

    float acc[MAXC];
#pragma unroll
    for (int c = 0; c < MAXC; ++c) acc[c] = 0.0f;
    for (int r = 0; r < r_cnt; ++r) {
        const int* R = plan + ranges_off + 2 * (r_off + r);
        const int k_beg = R[0], k_end = R[1];
        for (int t0 = k_beg; t0 < k_end; t0 += KT) {
            const int j = t0 + lane;
            const bool vis = active && j < k_end && visible(mask, qp, k_pos[j]);
            if (!__syncthreads_or(vis)) continue;
            const int nk = min(KT, k_end - t0);
            load_rows(Ks, ks, k, t0, nk, kw, kh * hd, hd);
            load_rows(Vs, ks, v, t0, nk, kw, kh * hd, hd);
            __syncthreads();
            if (!__any_sync(FULL_MASK, vis)) continue;
            float ds = 0.0f;
            if (vis) {
                const float* kr = Ks + lane * ks;
                const float* vr = Vs + lane * ks;
                float s = 0.0f, dp = 0.0f;
                for (int d = 0; d < hd; ++d) {
                    s += qs[d] * kr[d];
                    dp += dos[d] * vr[d];
                }
                const float p = expf(s * scale - L);
                ds = p * (dp - D) * scale;
            }
            for (int jj = 0; jj < nk; ++jj) {
                const float dj = __shfl_sync(FULL_MASK, ds, jj);
                const float* kr = Ks + jj * ks;
#pragma unroll
                for (int c = 0; c < MAXC; ++c) {
                    const int d = lane + 32 * c;
                    if (d < hd) acc[c] += dj * kr[d];
                }
            }
        }
    }
    if (!active) return;
#pragma unroll
    for (int c = 0; c < MAXC; ++c) {
        const int d = lane + 32 * c;
        if (d < hd) dq[row * qw + h * hd + d] = acc[c];
    }
    if (lane == 0) dsum[(size_t)row * hq + h] = D;
}

// dK, dV (accumulated with atomics). Item (group, k0, k1): key rows k0..k1 (≤ NW) of one of the
// group's key ranges, against every query row of the group.
extern "C" __global__ void __launch_bounds__(NW * 32, MIN_BLOCKS)
    attention_bwd_dkv(float* dk, float* dv, const float* dout, const float* q, const float* k,
                      const float* v, const float* lse, const float* dsum, const int* plan,
                      int items_off, int qpos_off, int kpos_off, int hq, int hkv, int hd,
                      float scale) {
    DYNAMIC_SMEM(float, smem);
    const int ks = hd | 1;
    float* Qs = smem;              // [KT][ks]
    float* dOs = Qs + KT * ks;     // [KT][ks]
    float* Kw = dOs + KT * ks;     // [NW][hd]
    float* Vw = Kw + NW * hd;      // [NW][hd]
    float* Ls = Vw + NW * hd;      // [KT]
    float* Ds = Ls + KT;           // [KT]
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int* item = plan + items_off + 3 * blockIdx.x;
    const int* G = plan + 5 * item[0];
    const int q_beg = G[0], q_end = G[1], mask = G[2];
    const unsigned* q_pos = reinterpret_cast<const unsigned*>(plan + qpos_off);
    const unsigned* k_pos = reinterpret_cast<const unsigned*>(plan + kpos_off);
    const int h = blockIdx.y, kh = h / (hq / hkv);
    const size_t qw = (size_t)hq * hd, kw = (size_t)hkv * hd;
    const int j = item[1] + warp;
    const bool active = j < item[2];
    const unsigned kp = active ? k_pos[j] : 0u;
    float* kr = Kw + warp * hd;
    float* vr = Vw + warp * hd;
    for (int d = lane; d < hd; d += 32) {
        kr[d] = active ? k[j * kw + kh * hd + d] : 0.0f;
        vr[d] = active ? v[j * kw + kh * hd + d] : 0.0f;
    }

    float gk[MAXC], gv[MAXC];
#pragma unroll
    for (int c = 0; c < MAXC; ++c) gk[c] = gv[c] = 0.0f;
    for (int i0 = q_beg; i0 < q_end; i0 += KT) {
        const int i = i0 + lane;
        const bool vis = active && i < q_end && visible(mask, q_pos[i < q_end ? i : i0], kp);
        if (!__syncthreads_or(vis)) continue;
        const int nq = min(KT, q_end - i0);
        load_rows(Qs, ks, q, i0, nq, qw, h * hd, hd);
        load_rows(dOs, ks, dout, i0, nq, qw, h * hd, hd);
        if (threadIdx.x < nq) {
            Ls[threadIdx.x] = lse[(size_t)(i0 + threadIdx.x) * hq + h];
            Ds[threadIdx.x] = dsum[(size_t)(i0 + threadIdx.x) * hq + h];
        }
        __syncthreads();
        if (!__any_sync(FULL_MASK, vis)) continue;
        float p = 0.0f, ds = 0.0f;
        if (vis) {
            const float* qr = Qs + lane * ks;
            const float* dor = dOs + lane * ks;
            float s = 0.0f, dp = 0.0f;
            for (int d = 0; d < hd; ++d) {
                s += qr[d] * kr[d];
                dp += dor[d] * vr[d];
            }
            p = expf(s * scale - Ls[lane]);
            ds = p * (dp - Ds[lane]) * scale;
        }
        for (int ii = 0; ii < nq; ++ii) {
            const float pi = __shfl_sync(FULL_MASK, p, ii);
            const float di = __shfl_sync(FULL_MASK, ds, ii);
            const float* qr = Qs + ii * ks;
            const float* dor = dOs + ii * ks;
#pragma unroll
            for (int c = 0; c < MAXC; ++c) {
                const int d = lane + 32 * c;
                if (d < hd) {
                    gv[c] += pi * dor[d];
                    gk[c] += di * qr[d];
                }
            }
        }
    }
    if (!active) return;
#pragma unroll
    for (int c = 0; c < MAXC; ++c) {
        const int d = lane + 32 * c;
        if (d < hd) {
            atomicAdd(&dk[j * kw + kh * hd + d], gk[c]);
            atomicAdd(&dv[j * kw + kh * hd + d], gv[c]);
        }
    }
}
