// lazy-kernels: the fixed part of every generated reduction kernel (device code; the two f16
// conversions also have host fallbacks, for the host emulation of whole modules).
//
// Storage types and conversions (f16 and bf16 are computed in f32), and the reduction state
// operations of src/reduction.rs: the same states (f64 values, i64 indices), the same
// accumulate/combine rules and the same NaN and tie rules as the CPU backend, so that both
// backends return the same numbers.
#ifndef LK_REDUCE_CUH
#define LK_REDUCE_CUH

typedef unsigned short lk_f16;  // IEEE binary16, as bits
typedef unsigned short lk_bf16; // bfloat16, as bits
struct lk_f16_t { lk_f16 bits; };
struct lk_bf16_t { lk_bf16 bits; };

#if !defined(__CUDACC__) && !defined(__CUDACC_RTC__)
#include <math.h>
// Host fallbacks of the two f16 conversions the device does with `cvt` (for the host emulation
// of whole modules, tests/cuda_emulation_tests.rs, whose shim defines the CUDA builtins).
static inline float lk_host_f16_to_f32(unsigned short h) {
    const unsigned sign = (unsigned)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) { // zero or subnormal: m * 2^-24, exact in float
        const float f = (float)m * 5.9604644775390625e-8f;
        return sign ? -f : f;
    }
    // Rebias the exponent (15 -> 127); all ones stays all ones (inf, NaN with its payload).
    return __uint_as_float(sign | ((e == 0x1fu ? 0xffu : e + 112u) << 23) | (m << 13));
}
// Round to nearest even, as cvt.rn.f16.f32 (NaN becomes the canonical 0x7fff).
static inline unsigned short lk_host_f32_to_f16(float f) {
    const unsigned u = __float_as_uint(f), a = u & 0x7fffffffu;
    const unsigned short sign = (unsigned short)((u >> 16) & 0x8000u);
    if (a > 0x7f800000u) return 0x7fffu;
    if (a >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u); // 65520 and up: inf
    if (a < 0x38800000u) { // below 2^-14: a subnormal (or 0, or 0x400 after rounding up)
        return (unsigned short)(sign | (unsigned)nearbyintf(fabsf(f) * 16777216.0f));
    }
    unsigned r = a - 0x38000000u; // the exponent rebiased (127 -> 15), 13 bits too many
    r += 0xfffu + ((r >> 13) & 1u);
    return (unsigned short)(sign | (r >> 13));
}
#endif

__device__ __forceinline__ float lk_load(const float* p) { return *p; }
__device__ __forceinline__ double lk_load(const double* p) { return *p; }
__device__ __forceinline__ float lk_load(const lk_f16_t* p) {
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(p->bits));
    return f;
#else
    return lk_host_f16_to_f32(p->bits);
#endif
}
__device__ __forceinline__ float lk_load(const lk_bf16_t* p) {
    return __uint_as_float(((unsigned)p->bits) << 16);
}

__device__ __forceinline__ void lk_store(float* p, double v) { *p = (float)v; }
__device__ __forceinline__ void lk_store(double* p, double v) { *p = v; }
__device__ __forceinline__ void lk_store(lk_f16_t* p, double v) {
    float f = (float)v;
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    p->bits = h;
#else
    p->bits = lk_host_f32_to_f16(f);
#endif
}
__device__ __forceinline__ void lk_store(lk_bf16_t* p, double v) {
    unsigned u = __float_as_uint((float)v);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        p->bits = (unsigned short)((u >> 16) | 0x40u); // quiet NaN
    } else {
        u += 0x7fffu + ((u >> 16) & 1u); // round to nearest even
        p->bits = (unsigned short)(u >> 16);
    }
}

__device__ __forceinline__ double lk_inf() { return __longlong_as_double(0x7ff0000000000000LL); }
__device__ __forceinline__ float lk_inf_f() { return __int_as_float(0x7f800000); }
template <typename T> __device__ __forceinline__ T lk_neg_inf();
template <> __device__ __forceinline__ float lk_neg_inf<float>() { return -lk_inf_f(); }
template <> __device__ __forceinline__ double lk_neg_inf<double>() { return -lk_inf(); }
// A quiet NaN of the compute type.
template <typename T> __device__ __forceinline__ T lk_nan();
template <> __device__ __forceinline__ float lk_nan<float>() { return __int_as_float(0x7fffffff); }
template <> __device__ __forceinline__ double lk_nan<double>() { return __longlong_as_double(0x7ff8000000000000LL); }

#endif // LK_REDUCE_CUH
