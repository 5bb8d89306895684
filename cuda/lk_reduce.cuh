// lazy-kernels: the fixed part of every generated reduction kernel (device code only).
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

__device__ __forceinline__ float lk_load(const float* p) { return *p; }
__device__ __forceinline__ double lk_load(const double* p) { return *p; }
__device__ __forceinline__ float lk_load(const lk_f16_t* p) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(p->bits));
    return f;
}
__device__ __forceinline__ float lk_load(const lk_bf16_t* p) {
    return __uint_as_float(((unsigned)p->bits) << 16);
}

__device__ __forceinline__ void lk_store(float* p, double v) { *p = (float)v; }
__device__ __forceinline__ void lk_store(double* p, double v) { *p = v; }
__device__ __forceinline__ void lk_store(lk_f16_t* p, double v) {
    float f = (float)v;
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    p->bits = h;
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

#endif // LK_REDUCE_CUH
