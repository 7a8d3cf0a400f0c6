// Host stand-in for CUDA's <cuda_fp16.h> in the CUDA simulator (see sim/include/cuda_bf16.h).
// The storage types and their conversions, bit-exact with CUDA's: float -> half rounds to nearest
// even (subnormals included, |x| >= 65520 -> infinity, NaN -> the canonical 0x7FFF); half -> float
// is exact, except that NaN becomes the canonical 0x7FFFFFFF as in CUDA's host code. No half
// arithmetic: kernels compute in f32.
#pragma once
#include <cstdint>
#include <cstring>

struct __half_raw {
    unsigned short x;
};

namespace sim_fp16 {
inline unsigned short from_float(float f) {
    unsigned x;
    std::memcpy(&x, &f, 4);
    const unsigned sign = (x >> 16) & 0x8000u, u = x & 0x7fffffffu;
    if (u > 0x7f800000u) return 0x7fffu;                    // NaN
    if (u >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u);  // >= 65520 (and inf): infinity
    if (u >= 0x38800000u) {                                 // >= 2^-14: a normal half
        unsigned h = (u >> 13) - (112u << 10);              // rebias the exponent 127 -> 15
        const unsigned rem = u & 0x1fffu;
        if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry may reach the exponent
        return (unsigned short)(sign | h);
    }
    if (u <= 0x33000000u) return (unsigned short)sign;      // <= 2^-25 (a tie with 0): signed zero
    // Subnormal half: the value in units of 2^-24 is m·2^(e-126), e in [102, 112].
    const unsigned e = u >> 23, m = (u & 0x7fffffu) | 0x800000u, shift = 126u - e;
    unsigned h = m >> shift;
    const unsigned rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (h & 1u))) ++h;
    return (unsigned short)(sign | h);
}
inline float to_float(unsigned short h) {
    const unsigned sign = (unsigned)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    unsigned u;
    if (e == 0x1fu) {
        u = m ? 0x7fffffffu : (sign | 0x7f800000u);
    } else if (e == 0) {
        const float v = (float)m * 0x1p-24f;  // exact: m < 2^10
        std::memcpy(&u, &v, 4);
        u |= sign;
    } else {
        u = sign | ((e + 112u) << 23) | (m << 13);
    }
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
}  // namespace sim_fp16

struct __attribute__((aligned(2))) __half {
    unsigned short __x;
    __half() = default;
    __half(const __half_raw& r) : __x(r.x) {}
    __half(float f) : __x(sim_fp16::from_float(f)) {}
    __half& operator=(const __half_raw& r) {
        __x = r.x;
        return *this;
    }
    operator __half_raw() const { return __half_raw{__x}; }
    operator float() const { return sim_fp16::to_float(__x); }
};

struct __attribute__((aligned(4))) __half2 {
    __half x, y;
};

typedef __half half;
typedef __half2 half2;

inline __half __ushort_as_half(unsigned short u) {
    __half h;
    h.__x = u;
    return h;
}
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline short __half_as_short(__half h) { return (short)h.__x; }
inline __half __short_as_half(short s) { return __ushort_as_half((unsigned short)s); }

inline __half __float2half(float f) { return __ushort_as_half(sim_fp16::from_float(f)); }
inline __half __float2half_rn(float f) { return __ushort_as_half(sim_fp16::from_float(f)); }
inline float __half2float(__half h) { return sim_fp16::to_float(h.__x); }

inline __half2 __halves2half2(__half lo, __half hi) { return __half2{lo, hi}; }
inline __half2 make_half2(__half x, __half y) { return __half2{x, y}; }
inline __half2 __half2half2(__half h) { return __half2{h, h}; }
// .x (the low 16 bits of the 32-bit word) from `lo`, .y (high bits) from `hi`.
inline __half2 __floats2half2_rn(float lo, float hi) { return __half2{__float2half(lo), __float2half(hi)}; }
inline __half2 __float2half2_rn(float f) { return __half2{__float2half(f), __float2half(f)}; }
inline __half __low2half(__half2 h) { return h.x; }
inline __half __high2half(__half2 h) { return h.y; }
inline float __low2float(__half2 h) { return __half2float(h.x); }
inline float __high2float(__half2 h) { return __half2float(h.y); }

#ifdef BITUNE_SIM  // float2 comes from sim/shim.h
inline __half2 __float22half2_rn(float2 f) { return __floats2half2_rn(f.x, f.y); }
inline float2 __half22float2(__half2 h) { return float2{__low2float(h), __high2float(h)}; }
#endif
