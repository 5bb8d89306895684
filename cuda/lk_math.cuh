// lazy-kernels: scalar semantics of the formula ops, shared by the CUDA kernels and the host C++
// check of the code generator. Each function has the semantics of the op table in
// src/formula/ops.rs (NaN handling included), for float and double.
#ifndef LK_MATH_CUH
#define LK_MATH_CUH

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define LK_FN __device__ __forceinline__
#else
#include <math.h>
#define LK_FN static inline
#endif

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
// 2^x on the hardware exp2 unit (MUFU.EX2, results below 2^-126 flushed to 0). f32 kernel sums
// are bound by exponentials: exp(x) = 2^(x log2 e) costs two instructions instead of about
// ten, with a relative error of about 2^-22 (1 + |x|); f64 keeps the accurate exp.
LK_FN float lk_ex2(float x) {
    float r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
}
// sqrt on the MUFU unit (relative error about 2^-23, inputs below 2^-126 flushed to 0): IEEE
// sqrtf would add a fix-up and a slow-path call per pair to the Laplacian and Matern kernels.
LK_FN float lk_sqrt(float x) {
    float r;
    asm("sqrt.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
}
#else
LK_FN float lk_ex2(float x) { return exp2f(x); }
LK_FN float lk_sqrt(float x) { return sqrtf(x); }
#endif
LK_FN float lk_exp(float x) { return lk_ex2(x * 1.44269504088896341f); }
LK_FN double lk_exp(double x) { return exp(x); }
LK_FN float lk_log(float x) { return logf(x); }
LK_FN double lk_log(double x) { return log(x); }
LK_FN double lk_sqrt(double x) { return sqrt(x); }
LK_FN float lk_sin(float x) { return sinf(x); }
LK_FN double lk_sin(double x) { return sin(x); }
LK_FN float lk_cos(float x) { return cosf(x); }
LK_FN double lk_cos(double x) { return cos(x); }
LK_FN float lk_abs(float x) { return fabsf(x); }
LK_FN double lk_abs(double x) { return fabs(x); }

// `y`, unless `x` is NaN (then `x`).
template <typename T> LK_FN T lk_keep_nan(T x, T y) { return x != x ? x : y; }
// 1/sqrt(x), and 0 at x = 0 (KeOps' convention).
template <typename T> LK_FN T lk_rsqrt(T x) { T r = T(1) / lk_sqrt(x); return x == T(0) ? T(0) : r; }
template <typename T> LK_FN T lk_inv(T x) { return T(1) / x; }
template <typename T> LK_FN T lk_sign(T x) {
    T s = x > T(0) ? T(1) : T(0);
    s = x < T(0) ? T(-1) : s;
    return lk_keep_nan(x, s);
}
template <typename T> LK_FN T lk_step(T x) { return lk_keep_nan(x, x >= T(0) ? T(1) : T(0)); }
template <typename T> LK_FN T lk_relu(T x) { return lk_keep_nan(x, x > T(0) ? x : T(0)); }
// x^n by binary exponentiation (the CPU backend's order of products).
template <typename T> LK_FN T lk_powi(T x, int n) {
    unsigned e = n < 0 ? 0u - (unsigned)n : (unsigned)n;
    T base = x, acc = T(1);
    while (e > 0) {
        if (e & 1u) acc = acc * base;
        base = base * base;
        e >>= 1;
    }
    return n < 0 ? T(1) / acc : acc;
}
template <typename T> LK_FN T lk_powf(T a, T b) { return lk_exp(b * lk_log(a)); }
template <typename T> LK_FN T lk_min(T a, T b) { return lk_keep_nan(b, b < a ? b : a); }
template <typename T> LK_FN T lk_max(T a, T b) { return lk_keep_nan(b, b > a ? b : a); }
template <typename T> LK_FN T lk_lt(T a, T b) { return a < b ? T(1) : T(0); }
template <typename T> LK_FN T lk_le(T a, T b) { return a <= b ? T(1) : T(0); }
template <typename T> LK_FN T lk_gt(T a, T b) { return a > b ? T(1) : T(0); }
template <typename T> LK_FN T lk_ge(T a, T b) { return a >= b ? T(1) : T(0); }
template <typename T> LK_FN T lk_eq(T a, T b) { return a == b ? T(1) : T(0); }
template <typename T> LK_FN T lk_ne(T a, T b) { return a != b ? T(1) : T(0); }
template <typename T> LK_FN T lk_clamp(T x, T lo, T hi) {
    T l = x < lo ? lo : x;
    T h = l > hi ? hi : l;
    return lk_keep_nan(x, h);
}
template <typename T> LK_FN T lk_ifelse(T c, T a, T b) { return c >= T(0) ? a : b; }

#endif // LK_MATH_CUH
