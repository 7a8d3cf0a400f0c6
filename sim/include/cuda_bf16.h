// Host stand-in for CUDA's <cuda_bf16.h> in the CUDA simulator (kernels/*.cu compiled as host C++
// with sim/shim.h force-included; build/sim.rs puts sim/include on the include path). Only what
// the kernels use: the storage types, their conversions to and from float (bit-exact with CUDA:
// round-to-nearest-even, NaN -> the canonical 0x7FFF, overflow -> infinity), raw-bit casts and
// packing into __nv_bfloat162. No bf16 arithmetic: kernels compute in f32. Anything added here
// must exist with the same meaning in CUDA's header, which nvcc uses for the same source.
#pragma once
#include <cstdint>
#include <cstring>

struct __nv_bfloat16_raw {
    unsigned short x;
};

namespace sim_bf16 {
inline unsigned f32_bits(float f) {
    unsigned u;
    std::memcpy(&u, &f, 4);
    return u;
}
inline float bits_f32(unsigned u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
// float -> bf16 bits, round to nearest even (cvt.rn.bf16.f32).
inline unsigned short from_float(float f) {
    const unsigned u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;  // NaN: canonical, as CUDA returns
    // Adding 0x7FFF plus the kept part's lowest bit rounds half-way cases to even; a carry
    // out of the mantissa bumps the exponent (up to infinity), which is the right answer.
    return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
inline float to_float(unsigned short h) { return bits_f32((unsigned)h << 16); }
}  // namespace sim_bf16

struct __attribute__((aligned(2))) __nv_bfloat16 {
    unsigned short __x;
    __nv_bfloat16() = default;
    __nv_bfloat16(const __nv_bfloat16_raw& r) : __x(r.x) {}
    __nv_bfloat16(float f) : __x(sim_bf16::from_float(f)) {}
    __nv_bfloat16& operator=(const __nv_bfloat16_raw& r) {
        __x = r.x;
        return *this;
    }
    operator __nv_bfloat16_raw() const { return __nv_bfloat16_raw{__x}; }
    operator float() const { return sim_bf16::to_float(__x); }
};

struct __attribute__((aligned(4))) __nv_bfloat162 {
    __nv_bfloat16 x, y;
};

typedef __nv_bfloat16 nv_bfloat16;
typedef __nv_bfloat162 nv_bfloat162;

inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) {
    __nv_bfloat16 h;
    h.__x = u;
    return h;
}
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
inline short __bfloat16_as_short(__nv_bfloat16 h) { return (short)h.__x; }
inline __nv_bfloat16 __short_as_bfloat16(short s) { return __ushort_as_bfloat16((unsigned short)s); }

inline __nv_bfloat16 __float2bfloat16(float f) { return __ushort_as_bfloat16(sim_bf16::from_float(f)); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __ushort_as_bfloat16(sim_bf16::from_float(f)); }
inline float __bfloat162float(__nv_bfloat16 h) { return sim_bf16::to_float(h.__x); }

inline __nv_bfloat162 __halves2bfloat162(__nv_bfloat16 lo, __nv_bfloat16 hi) { return __nv_bfloat162{lo, hi}; }
inline __nv_bfloat162 make_bfloat162(__nv_bfloat16 x, __nv_bfloat16 y) { return __nv_bfloat162{x, y}; }
inline __nv_bfloat162 __bfloat162bfloat162(__nv_bfloat16 h) { return __nv_bfloat162{h, h}; }
// .x (the low 16 bits of the 32-bit word) from `lo`, .y (high bits) from `hi`.
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
    return __nv_bfloat162{__float2bfloat16(lo), __float2bfloat16(hi)};
}
inline __nv_bfloat162 __float2bfloat162_rn(float f) {
    return __nv_bfloat162{__float2bfloat16(f), __float2bfloat16(f)};
}
inline __nv_bfloat16 __low2bfloat16(__nv_bfloat162 h) { return h.x; }
inline __nv_bfloat16 __high2bfloat16(__nv_bfloat162 h) { return h.y; }
inline float __low2float(__nv_bfloat162 h) { return __bfloat162float(h.x); }
inline float __high2float(__nv_bfloat162 h) { return __bfloat162float(h.y); }

#ifdef BITUNE_SIM  // float2 comes from sim/shim.h
inline __nv_bfloat162 __float22bfloat162_rn(float2 f) { return __floats2bfloat162_rn(f.x, f.y); }
inline float2 __bfloat1622float2(__nv_bfloat162 h) { return float2{__low2float(h), __high2float(h)}; }
#endif
