// Tensor-core and asynchronous-copy instructions for the bf16 kernels (flash attention, FA2-style
// tiling), as __device__ wrappers: inline PTX on the GPU, and in the CUDA simulator (BITUNE_SIM)
// host bodies that follow the PTX ISA's definitions exactly, so that a kernel with a wrong
// fragment index, a misaligned row or a missing cp.async wait fails in the simulator as it would
// on a GPU (docs/ARCHITECTURE.md, "CUDA without a GPU"). Included at the end of common.cuh.
//
// All of these need sm_80 or newer (cp.async, bf16 mma); ldmatrix and mma are warp-wide
// (.sync.aligned): all 32 lanes of the warp must execute the same call with the same arguments'
// meaning, which the simulator enforces (a missing lane is reported, never hangs).
//
// Fragment layouts (PTX ISA 9.7.14.5.8, "Matrix Fragments for mma.m16n8k16 with floating point
// type"; groupID g = lane >> 2, threadID_in_group t = lane % 4; element 0 of a 32-bit register
// is its low 16 bits):
//   A (16x16, row-major), uint32_t a[4] = {a0a1, a2a3, a4a5, a6a7}:
//     a[0] = A[g][2t, 2t+1]   a[1] = A[g+8][2t, 2t+1]   a[2] = A[g][2t+8, 2t+9]   a[3] = A[g+8][2t+8, 2t+9]
//   B (16x8, K x N, "col": pairs run along K), uint32_t b[2] = {b0b1, b2b3}:
//     b[0] = B[2t, 2t+1][g]   b[1] = B[2t+8, 2t+9][g]
//   C, D (16x8 f32), float c[4]:
//     c[0], c[1] = C[g][2t, 2t+1]   c[2], c[3] = C[g+8][2t, 2t+1]
// Consequences kernels use: ldmatrix_x4 with lane l addressing row (l % 16), column 8·(l / 16)
// of a row-major A tile yields a[0..3]; ldmatrix_x2_trans with lane l (< 16) addressing row l of a
// row-major K x N tile (B[k][n], n0..n0+7) yields b[0..1], and ldmatrix_x2 (no .trans) with lane
// l addressing row (l % 8), column 8·((l / 8) % 2) of an N x K tile (B transposed, e.g. K in
// attention's Q·Kᵀ) yields b[0..1]. The D fragments of two adjacent n8 tiles, packed with
// pack_bf16x2, are the A fragment of the m16k16 tile they form: a = {pack(d0[0], d0[1]),
// pack(d0[2], d0[3]), pack(d1[0], d1[1]), pack(d1[2], d1[3])} (FA2's P·V without shared memory).
#pragma once

#include <cstdint>
#include <cstring>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

// Two floats as one 32-bit register of two bf16 / f16 (round to nearest even): `lo` in the low
// half (element 0 of a fragment register), `hi` in the high half.
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    uint32_t u;
    memcpy(&u, &v, 4);
    return u;
}
__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
    const __half2 v = __floats2half2_rn(lo, hi);
    uint32_t u;
    memcpy(&u, &v, 4);
    return u;
}

#ifndef BITUNE_SIM
// ================================ GPU: inline PTX =====================================

__device__ __forceinline__ unsigned smem_u32(const void* p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// D = A·B + C, bf16 inputs, f32 accumulate. `d` may alias `c` (in-place accumulation).
__device__ __forceinline__ void mma_m16n8k16_bf16(float d[4], const uint32_t a[4], const uint32_t b[2],
                                                  const float c[4]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
          "f"(c[2]), "f"(c[3]));
}

// The same with f16 inputs.
__device__ __forceinline__ void mma_m16n8k16_f16(float d[4], const uint32_t a[4], const uint32_t b[2],
                                                 const float c[4]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
          "f"(c[2]), "f"(c[3]));
}

// ldmatrix: `row` is this lane's row address in shared memory (16 bytes, 16-byte aligned); lanes
// 8m..8m+7 give the rows of matrix m (x1: lanes 0-7 used, x2: 0-15, x4: all). Register m of
// lane l gets matrix m's row l/4, elements 2(l%4) (low half) and 2(l%4)+1; .trans gives column
// l/4, elements (rows) 2(l%4) and 2(l%4)+1 instead.
__device__ __forceinline__ void ldmatrix_x1(uint32_t r[1], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(smem_u32(row)));
}
__device__ __forceinline__ void ldmatrix_x2(uint32_t r[2], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(smem_u32(row)));
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(row)));
}
__device__ __forceinline__ void ldmatrix_x1_trans(uint32_t r[1], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n"
                 : "=r"(r[0])
                 : "r"(smem_u32(row)));
}
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t r[2], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(smem_u32(row)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(row)));
}

// cp.async: copies `bytes` from global `src` to shared `dst` (both aligned to the size) in the
// background; the data is there only after the cp_async_wait that covers its group, and for
// other threads after a barrier following that wait. 16 bytes bypass L1 (.cg); 4 and 8 go
// through it (.ca, the only form for those sizes). The _zfill forms read `src_bytes` (0 ≤ … ≤
// size) bytes and write zeros for the rest (tail tiles: src_bytes 0 reads nothing).
__device__ __forceinline__ void cp_async_4(void* dst, const void* src) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(smem_u32(dst)), "l"(__cvta_generic_to_global(src))
                 : "memory");
}
__device__ __forceinline__ void cp_async_8(void* dst, const void* src) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(smem_u32(dst)), "l"(__cvta_generic_to_global(src))
                 : "memory");
}
__device__ __forceinline__ void cp_async_16(void* dst, const void* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_u32(dst)),
                 "l"(__cvta_generic_to_global(src))
                 : "memory");
}
__device__ __forceinline__ void cp_async_4_zfill(void* dst, const void* src, unsigned src_bytes) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_u32(dst)),
                 "l"(__cvta_generic_to_global(src)), "r"(src_bytes)
                 : "memory");
}
__device__ __forceinline__ void cp_async_8_zfill(void* dst, const void* src, unsigned src_bytes) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(smem_u32(dst)),
                 "l"(__cvta_generic_to_global(src)), "r"(src_bytes)
                 : "memory");
}
__device__ __forceinline__ void cp_async_16_zfill(void* dst, const void* src, unsigned src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)),
                 "l"(__cvta_generic_to_global(src)), "r"(src_bytes)
                 : "memory");
}
// Closes the group of this thread's cp.async issued since the last commit (possibly empty).
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most N of this thread's committed groups, the newest, are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    static_assert(N >= 0, "cp.async.wait_group takes a non-negative count");
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
// Commits, then waits for all of this thread's cp.async.
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

#else
// ================================ simulator: host bodies ================================
#include <cstdarg>
#include <cstdio>
#include <deque>
#include <vector>

namespace sim {
namespace tc {

constexpr unsigned kFull = 0xffffffffu;

// Traps with a formatted message (trap copies it before the fiber is abandoned).
[[noreturn]] inline void failf(const char* file, int line, const char* fmt, ...)
    __attribute__((format(printf, 3, 4)));
[[noreturn]] inline void failf(const char* file, int line, const char* fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    ::sim::trap(msg, file, line);
}

// A shared-memory operand of `bytes` bytes at `p`: aligned to `align`, not device memory, and
// not running past the end of the block's dynamic shared memory when it starts inside it.
inline void check_shared(const void* p, size_t bytes, size_t align, const char* what, const char* file,
                         int line) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    if (a % align)
        failf(file, line, "%s: shared-memory address %p is not %zu-byte aligned (lane %u)", what, p, align,
              ::sim::lane_id());
    if (::sim::in_allocation(p, 1))
        failf(file, line, "%s: address %p (lane %u) is device memory, not shared memory: %s", what, p,
              ::sim::lane_id(), ::sim::describe_address(p).c_str());
    const Block* b = ::sim::tl_block;
    if (b && b->dyn_smem) {
        const uintptr_t lo = reinterpret_cast<uintptr_t>(b->dyn_smem), hi = lo + b->dyn_smem_bytes;
        if (a >= lo && a < hi + 4096 && a + bytes > hi)
            failf(file, line, "%s: %zu bytes at offset %zu (lane %u) run past the end of the %zu bytes of dynamic "
                  "shared memory", what, bytes, (size_t)(a - lo), ::sim::lane_id(), b->dyn_smem_bytes);
    }
}

// ---- mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32 ----
struct MmaIn {
    uint32_t a[4];
    uint32_t b[2];
    float c[4];
};
struct MmaOut {
    float d[4];
};

inline float bf16_bits_to_float(uint32_t h) { return sim_bf16::to_float((unsigned short)h); }
inline float f16_bits_to_float(uint32_t h) { return sim_fp16::to_float((unsigned short)h); }

// Rebuilds A, B, C from the 32 lanes' fragments (layouts at the top of this file), computes
// D = A·B + C and hands each lane its D fragment. Products of bf16 (or f16) values are exact in
// f32; the sum of the 16 products and C is formed in f64 and rounded to f32 once — at least as
// accurate as the tensor core's f32 accumulation, whose internal order the PTX ISA leaves open.
template <float (*Elem)(uint32_t)>
void mma_m16n8k16_combine(unsigned, const void* const* in, void* const* out) {
    float A[16][16], B[16][8], C[16][8];
    for (unsigned lane = 0; lane < 32; ++lane) {
        const MmaIn& f = *static_cast<const MmaIn*>(in[lane]);
        const unsigned g = lane >> 2, t = lane & 3;
        for (unsigned i = 0; i < 8; ++i) {  // a_i: register i/2, half i%2
            const unsigned row = g + 8 * ((i >> 1) & 1), col = 2 * t + (i & 1) + 8 * (i >> 2);
            A[row][col] = Elem(f.a[i >> 1] >> (16 * (i & 1)) & 0xffffu);
        }
        for (unsigned i = 0; i < 4; ++i) {  // b_i: register i/2, half i%2
            const unsigned row = 2 * t + (i & 1) + 8 * (i >> 1), col = g;
            B[row][col] = Elem(f.b[i >> 1] >> (16 * (i & 1)) & 0xffffu);
        }
        for (unsigned i = 0; i < 4; ++i) C[g + 8 * (i >> 1)][2 * t + (i & 1)] = f.c[i];
    }
    float D[16][8];
    for (unsigned r = 0; r < 16; ++r)
        for (unsigned c = 0; c < 8; ++c) {
            double acc = C[r][c];
            for (unsigned k = 0; k < 16; ++k) acc += (double)A[r][k] * (double)B[k][c];
            D[r][c] = (float)acc;
        }
    for (unsigned lane = 0; lane < 32; ++lane) {
        MmaOut& o = *static_cast<MmaOut*>(out[lane]);
        const unsigned g = lane >> 2, t = lane & 3;
        for (unsigned i = 0; i < 4; ++i) o.d[i] = D[g + 8 * (i >> 1)][2 * t + (i & 1)];
    }
}

template <float (*Elem)(uint32_t)>
inline void mma_m16n8k16(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4], const char* what,
                         const char* file, int line) {
    MmaIn in;  // copied first: `d` may alias `c`
    std::memcpy(in.a, a, sizeof in.a);
    std::memcpy(in.b, b, sizeof in.b);
    std::memcpy(in.c, c, sizeof in.c);
    MmaOut o;
    ::sim::warp_collective(kFull, &in, &o, &mma_m16n8k16_combine<Elem>, what, file, line);
    std::memcpy(d, o.d, sizeof o.d);
}

// ---- ldmatrix.sync.aligned.m8n8.x{1,2,4}{.trans}.shared.b16 ----
template <unsigned N, bool Trans>
void ldmatrix_combine(unsigned, const void* const* in, void* const* out) {
    uint16_t M[4][8][8];  // [matrix][row][element], row r of matrix m from lane 8m+r's address
    for (unsigned m = 0; m < N; ++m)
        for (unsigned r = 0; r < 8; ++r)
            std::memcpy(M[m][r], *static_cast<const unsigned char* const*>(in[8 * m + r]), 16);
    for (unsigned lane = 0; lane < 32; ++lane) {
        uint32_t* o = static_cast<uint32_t*>(out[lane]);
        const unsigned g = lane >> 2, t = lane & 3;
        for (unsigned m = 0; m < N; ++m) {
            const uint32_t lo = Trans ? M[m][2 * t][g] : M[m][g][2 * t];
            const uint32_t hi = Trans ? M[m][2 * t + 1][g] : M[m][g][2 * t + 1];
            o[m] = lo | hi << 16;
        }
    }
}

template <unsigned N, bool Trans>
inline void ldmatrix(uint32_t* r, const void* row, const char* what, const char* file, int line) {
    // Only lanes 0 .. 8N-1 supply row addresses; the others' are ignored, as on sm_80+.
    if (::sim::lane_id() < 8 * N) check_shared(row, 16, 16, what, file, line);
    const unsigned char* in = static_cast<const unsigned char*>(row);
    uint32_t o[4];
    ::sim::warp_collective(kFull, &in, o, &ldmatrix_combine<N, Trans>, what, file, line);
    for (unsigned m = 0; m < N; ++m) r[m] = o[m];
}

// ---- cp.async: per-thread pending copies in Fiber::user ----
// PTX ISA 9.7.9.25 ("Asynchronous copy"; cp.async, cp.async.commit_group, cp.async.wait_group /
// wait_all): changing the source or reading the destination before the copy completes is
// undefined, and the writes become visible to the issuing thread only at the wait that covers
// the copy's group. So at issue the source is read (snapshot) and the destination is filled with
// 0xFF bytes (NaN): a read not ordered after the covering wait (and, for other threads, a
// barrier after it) sees poison. A commit closes the open group, possibly empty; wait_group N
// lands, in order, every committed group but the newest N; copies never committed are landed
// only by wait_all (= commit + wait_group 0). Two copies of one group to overlapping bytes are
// reported (no order within a group). Copies still pending when the block ends are dropped (the
// runtime frees Fiber::user).
struct CpAsyncCopy {
    unsigned char* dst;
    unsigned size, src_bytes;
    unsigned char data[16];
};
struct CpAsyncState {
    std::vector<CpAsyncCopy> open;                 // issued since the last commit
    std::deque<std::vector<CpAsyncCopy>> groups;   // committed, oldest first
};
inline void cp_async_free(void* p) { delete static_cast<CpAsyncState*>(p); }

inline CpAsyncState& cp_async_state() {
    Fiber* f = ::sim::tl_fiber;
    if (!f->user) {
        f->user = new CpAsyncState();
        f->user_free = &cp_async_free;
    } else if (f->user_free != &cp_async_free) {
        failf(__FILE__, __LINE__, "cp.async: Fiber::user holds another instruction's state");
    }
    return *static_cast<CpAsyncState*>(f->user);
}

inline void cp_async(void* dst, const void* src, unsigned size, unsigned src_bytes, const char* what,
                     const char* file, int line) {
    if (src_bytes > size)
        failf(file, line, "%s: src-size %u exceeds the copy size %u", what, src_bytes, size);
    check_shared(dst, size, size, what, file, line);
    if (src_bytes > 0) {
        if (reinterpret_cast<uintptr_t>(src) % size)
            failf(file, line, "%s: global source address %p is not %u-byte aligned", what, src, size);
        if (!::sim::in_allocation(src, src_bytes))
            failf(file, line, "%s: the %u source bytes at %p are not inside one device allocation: %s", what,
                  src_bytes, src, ::sim::describe_address(src).c_str());
    }
    CpAsyncState& s = cp_async_state();
    const uintptr_t d = reinterpret_cast<uintptr_t>(dst);
    for (const CpAsyncCopy& o : s.open)  // the PTX ISA leaves such copies unordered
        if (d < reinterpret_cast<uintptr_t>(o.dst) + o.size && reinterpret_cast<uintptr_t>(o.dst) < d + size)
            failf(file, line, "%s: destination %p overlaps an earlier cp.async of the same group (to %p): undefined "
                  "order", what, dst, static_cast<void*>(o.dst));
    CpAsyncCopy c;
    c.dst = static_cast<unsigned char*>(dst);
    c.size = size;
    c.src_bytes = src_bytes;
    if (src_bytes) std::memcpy(c.data, src, src_bytes);
    std::memset(dst, 0xff, size);
    s.open.push_back(c);
}

inline void cp_async_land(const std::vector<CpAsyncCopy>& group) {
    for (const CpAsyncCopy& c : group) {
        std::memcpy(c.dst, c.data, c.src_bytes);
        std::memset(c.dst + c.src_bytes, 0, c.size - c.src_bytes);
    }
}

inline void cp_async_commit() {
    CpAsyncState& s = cp_async_state();
    s.groups.push_back(std::move(s.open));
    s.open.clear();
}

inline void cp_async_wait(unsigned n) {
    CpAsyncState& s = cp_async_state();
    while (s.groups.size() > n) {
        cp_async_land(s.groups.front());
        s.groups.pop_front();
    }
}

}  // namespace tc
}  // namespace sim

inline void mma_m16n8k16_bf16(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4],
                              const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    ::sim::tc::mma_m16n8k16<&::sim::tc::bf16_bits_to_float>(
        d, a, b, c, "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32", file, line);
}
inline void mma_m16n8k16_f16(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4],
                             const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    ::sim::tc::mma_m16n8k16<&::sim::tc::f16_bits_to_float>(
        d, a, b, c, "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32", file, line);
}

inline void ldmatrix_x1(uint32_t r[1], const void* row, const char* file = __builtin_FILE(),
                        int line = __builtin_LINE()) {
    ::sim::tc::ldmatrix<1, false>(r, row, "ldmatrix.sync.aligned.m8n8.x1.shared.b16", file, line);
}
inline void ldmatrix_x2(uint32_t r[2], const void* row, const char* file = __builtin_FILE(),
                        int line = __builtin_LINE()) {
    ::sim::tc::ldmatrix<2, false>(r, row, "ldmatrix.sync.aligned.m8n8.x2.shared.b16", file, line);
}
inline void ldmatrix_x4(uint32_t r[4], const void* row, const char* file = __builtin_FILE(),
                        int line = __builtin_LINE()) {
    ::sim::tc::ldmatrix<4, false>(r, row, "ldmatrix.sync.aligned.m8n8.x4.shared.b16", file, line);
}
inline void ldmatrix_x1_trans(uint32_t r[1], const void* row, const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
    ::sim::tc::ldmatrix<1, true>(r, row, "ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16", file, line);
}
inline void ldmatrix_x2_trans(uint32_t r[2], const void* row, const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
    ::sim::tc::ldmatrix<2, true>(r, row, "ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16", file, line);
}
inline void ldmatrix_x4_trans(uint32_t r[4], const void* row, const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
    ::sim::tc::ldmatrix<4, true>(r, row, "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16", file, line);
}

inline void cp_async_4(void* dst, const void* src, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    ::sim::tc::cp_async(dst, src, 4, 4, "cp.async.ca.shared.global (4 bytes)", file, line);
}
inline void cp_async_8(void* dst, const void* src, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    ::sim::tc::cp_async(dst, src, 8, 8, "cp.async.ca.shared.global (8 bytes)", file, line);
}
inline void cp_async_16(void* dst, const void* src, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    ::sim::tc::cp_async(dst, src, 16, 16, "cp.async.cg.shared.global (16 bytes)", file, line);
}
inline void cp_async_4_zfill(void* dst, const void* src, unsigned src_bytes, const char* file = __builtin_FILE(),
                             int line = __builtin_LINE()) {
    ::sim::tc::cp_async(dst, src, 4, src_bytes, "cp.async.ca.shared.global (4 bytes, src-size)", file, line);
}
inline void cp_async_8_zfill(void* dst, const void* src, unsigned src_bytes, const char* file = __builtin_FILE(),
                             int line = __builtin_LINE()) {
    ::sim::tc::cp_async(dst, src, 8, src_bytes, "cp.async.ca.shared.global (8 bytes, src-size)", file, line);
}
inline void cp_async_16_zfill(void* dst, const void* src, unsigned src_bytes, const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
    ::sim::tc::cp_async(dst, src, 16, src_bytes, "cp.async.cg.shared.global (16 bytes, src-size)", file, line);
}
inline void cp_async_commit() { ::sim::tc::cp_async_commit(); }
template <int N>
inline void cp_async_wait() {
    static_assert(N >= 0, "cp.async.wait_group takes a non-negative count");
    ::sim::tc::cp_async_wait((unsigned)N);
}
inline void cp_async_wait_all() {
    ::sim::tc::cp_async_commit();
    ::sim::tc::cp_async_wait(0);
}

#endif  // BITUNE_SIM
