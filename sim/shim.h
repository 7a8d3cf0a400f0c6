// Force-included (g++ -include sim/shim.h) when kernels/*.cu are compiled as host C++ for the
// CUDA simulator: CUDA's qualifiers, built-in variables, vector types, device math, atomics,
// barriers and warp collectives, on top of sim/runtime.h. The kernels themselves stay as they
// are; what needs a different host body (dynamic shared memory, tensor-core and async-copy
// instructions) is a wrapper in kernels/common.cuh with an `#ifdef BITUNE_SIM` branch.
#pragma once
#define BITUNE_SIM 1

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <type_traits>

#include "runtime.h"

// ---- qualifiers -----------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
// One block runs at a time on an OS thread, so per-thread statics are per-block shared memory.
#define __shared__ static thread_local
#define __constant__ static
#define __align__(n) __attribute__((aligned(n)))
#define __restrict__ __restrict

// ---- built-in variables -----------------------------------------------------------------------------
using uint3 = ::sim::Dim3;
struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
    dim3(const ::sim::Dim3& d) : x(d.x), y(d.y), z(d.z) {}
};
#define threadIdx (::sim::tl_fiber->tid)
#define blockIdx (::sim::tl_block->idx)
#define blockDim (::sim::tl_block->dim)
#define gridDim (::sim::tl_block->grid)
#define warpSize 32

// ---- vector types (CUDA's sizes and alignments) -----------------------------------------------------
#define SIM_VEC2(T, N, A)                 \
    struct __attribute__((aligned(A))) N { \
        T x, y;                           \
    };                                    \
    inline N make_##N(T x, T y) { return N{x, y}; }
#define SIM_VEC4(T, N, A)                 \
    struct __attribute__((aligned(A))) N { \
        T x, y, z, w;                     \
    };                                    \
    inline N make_##N(T x, T y, T z, T w) { return N{x, y, z, w}; }
SIM_VEC2(float, float2, 8)
SIM_VEC4(float, float4, 16)
SIM_VEC2(int, int2, 8)
SIM_VEC4(int, int4, 16)
SIM_VEC2(unsigned, uint2, 8)
SIM_VEC4(unsigned, uint4, 16)
SIM_VEC2(double, double2, 16)
#undef SIM_VEC2
#undef SIM_VEC4

// ---- loads, math, bit tricks ----------------------------------------------------------------------
template <class T>
inline T __ldg(const T* p) {
    return *p;
}
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}
inline int __float_as_int(float f) {
    int i;
    std::memcpy(&i, &f, 4);
    return i;
}
inline float __uint_as_float(unsigned i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}
inline unsigned __float_as_uint(float f) {
    unsigned i;
    std::memcpy(&i, &f, 4);
    return i;
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(unsigned x) { return x ? __builtin_clz(x) : 32; }
inline int __ffs(unsigned x) { return __builtin_ffs((int)x); }
// CUDA's global min/max overloads.
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }

// ---- atomics (real atomics: blocks may run on several OS threads) -----------------------------------
template <class T>
inline T sim_atomic_float_add(T* p, T v) {
    using U = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
    U* u = reinterpret_cast<U*>(p);
    U old = __atomic_load_n(u, __ATOMIC_RELAXED), want;
    do {
        T f;
        std::memcpy(&f, &old, sizeof f);
        f += v;
        std::memcpy(&want, &f, sizeof f);
    } while (!__atomic_compare_exchange_n(u, &old, want, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    T r;
    std::memcpy(&r, &old, sizeof r);
    return r;
}
inline float atomicAdd(float* p, float v) { return sim_atomic_float_add(p, v); }
inline double atomicAdd(double* p, double v) { return sim_atomic_float_add(p, v); }
inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
    return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}
inline int atomicSub(int* p, int v) { return __atomic_fetch_sub(p, v, __ATOMIC_RELAXED); }
inline unsigned atomicSub(unsigned* p, unsigned v) { return __atomic_fetch_sub(p, v, __ATOMIC_RELAXED); }
template <class T>
inline T atomicExch(T* p, T v) {
    return __atomic_exchange_n(p, v, __ATOMIC_RELAXED);
}
inline float atomicExch(float* p, float v) {
    uint32_t r = __atomic_exchange_n(reinterpret_cast<uint32_t*>(p), __float_as_uint(v), __ATOMIC_RELAXED);
    return __uint_as_float(r);
}
template <class T>
inline T atomicCAS(T* p, T compare, T v) {
    __atomic_compare_exchange_n(p, &compare, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    return compare;
}
template <class T>
inline T atomicMax(T* p, T v) {
    T old = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (old < v && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
    return old;
}
template <class T>
inline T atomicMin(T* p, T v) {
    T old = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (old > v && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
    return old;
}
template <class T>
inline T atomicAnd(T* p, T v) {
    return __atomic_fetch_and(p, v, __ATOMIC_RELAXED);
}
template <class T>
inline T atomicOr(T* p, T v) {
    return __atomic_fetch_or(p, v, __ATOMIC_RELAXED);
}
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

// ---- barriers -----------------------------------------------------------------------------------------
#define __syncthreads() ((void)::sim::barrier(0, 0, __FILE__, __LINE__))
#define __syncthreads_or(p) (::sim::barrier(1, (p) ? 1 : 0, __FILE__, __LINE__))
#define __syncthreads_and(p) (::sim::barrier(2, (p) ? 1 : 0, __FILE__, __LINE__))
#define __syncthreads_count(p) (::sim::barrier(3, (p) ? 1 : 0, __FILE__, __LINE__))
#define __trap() ::sim::trap("__trap()", __FILE__, __LINE__)
#undef assert
#define assert(e) ((e) ? (void)0 : ::sim::trap("assertion failed: " #e, __FILE__, __LINE__))

// ---- warp collectives -----------------------------------------------------------------------------------
namespace sim {

// shfl.sync as the PTX ISA defines it: mode, source operand b, clamp/segment operand c.
enum ShflMode { kIdx, kUp, kDown, kBfly };
template <class T>
struct ShflIn {
    T value;
    int b;
    int c;
    int mode;
};
template <class T>
void shfl_combine(unsigned mask, const void* const* in, void* const* out) {
    for (unsigned lane = 0; lane < 32; ++lane) {
        if (!(mask >> lane & 1u)) continue;
        const ShflIn<T>& me = *static_cast<const ShflIn<T>*>(in[lane]);
        const unsigned segmask = (me.c >> 8) & 0x1f, cval = me.c & 0x1f, bval = (unsigned)me.b;
        const unsigned maxl = (lane & segmask) | (cval & ~segmask), minl = lane & segmask;
        int j;
        bool ok;
        switch (me.mode) {
            case kUp: j = (int)lane - (int)bval; ok = j >= (int)maxl; break;
            case kDown: j = (int)(lane + bval); ok = j <= (int)maxl; break;
            case kBfly: j = (int)(lane ^ bval); ok = j <= (int)maxl; break;
            default: j = (int)(minl | (bval & ~segmask & 0x1f)); ok = j <= (int)maxl; break;
        }
        // A source lane outside the mask is undefined on a GPU; the sim returns the lane's own value.
        if (!ok || j < 0 || j > 31 || !(mask >> j & 1u)) j = (int)lane;
        *static_cast<T*>(out[lane]) = static_cast<const ShflIn<T>*>(in[j])->value;
    }
}
template <class T>
T shfl(unsigned mask, T v, int b, int c, int mode, const char* what, const char* file, int line) {
    static_assert(std::is_trivially_copyable<T>::value, "shuffled values are copied bytewise");
    ShflIn<T> in{v, b, c, mode};
    T out;
    warp_collective(mask, &in, &out, &shfl_combine<T>, what, file, line);
    return out;
}

// Votes: in = the predicate, out = the ballot of the named lanes.
inline void vote_combine(unsigned mask, const void* const* in, void* const* out) {
    unsigned ballot = 0;
    for (unsigned l = 0; l < 32; ++l)
        if ((mask >> l & 1u) && *static_cast<const int*>(in[l])) ballot |= 1u << l;
    for (unsigned l = 0; l < 32; ++l)
        if (mask >> l & 1u) *static_cast<unsigned*>(out[l]) = ballot;
}
inline unsigned vote(unsigned mask, int pred, const char* what, const char* file, int line) {
    unsigned out;
    warp_collective(mask, &pred, &out, &vote_combine, what, file, line);
    return out;
}
inline void syncwarp_combine(unsigned, const void* const*, void* const*) {}

}  // namespace sim

template <class T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32, const char* file = __builtin_FILE(),
                     int line = __builtin_LINE()) {
    return ::sim::shfl(mask, v, src, ((32 - width) << 8) | 0x1f, ::sim::kIdx, "__shfl_sync", file, line);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32, const char* file = __builtin_FILE(),
                        int line = __builtin_LINE()) {
    return ::sim::shfl(mask, v, (int)delta, (32 - width) << 8, ::sim::kUp, "__shfl_up_sync", file, line);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32, const char* file = __builtin_FILE(),
                          int line = __builtin_LINE()) {
    return ::sim::shfl(mask, v, (int)delta, ((32 - width) << 8) | 0x1f, ::sim::kDown, "__shfl_down_sync", file,
                       line);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32, const char* file = __builtin_FILE(),
                         int line = __builtin_LINE()) {
    return ::sim::shfl(mask, v, lane_mask, ((32 - width) << 8) | 0x1f, ::sim::kBfly, "__shfl_xor_sync", file, line);
}
inline unsigned __ballot_sync(unsigned mask, int pred, const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
    return ::sim::vote(mask, pred, "__ballot_sync", file, line);
}
inline int __any_sync(unsigned mask, int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    return ::sim::vote(mask, pred, "__any_sync", file, line) != 0;
}
inline int __all_sync(unsigned mask, int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    return ::sim::vote(mask, pred, "__all_sync", file, line) == mask;
}
inline void __syncwarp(unsigned mask = 0xffffffffu, const char* file = __builtin_FILE(),
                       int line = __builtin_LINE()) {
    ::sim::warp_collective(mask, nullptr, nullptr, &::sim::syncwarp_combine, "__syncwarp", file, line);
}
// The lanes of the caller's warp that exist and have not exited (no divergence model: all of them).
inline unsigned __activemask() {
    const unsigned base = ::sim::tl_fiber->linear / 32 * 32;
    const unsigned n = ::sim::tl_block->dim.x * ::sim::tl_block->dim.y * ::sim::tl_block->dim.z;
    return n - base >= 32 ? 0xffffffffu : (1u << (n - base)) - 1u;
}
inline unsigned __lanemask_lt() { return (1u << ::sim::lane_id()) - 1u; }
