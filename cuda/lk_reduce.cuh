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

// Neumaier-compensated sum in (s, c).
__device__ __forceinline__ void lk_kahan_add(double& s, double& c, double v) {
    double t = s + v;
    if (fabs(s) >= fabs(v)) c += (s - t) + v; else c += (v - t) + s;
    s = t;
}

// Merges (m2, s2) into the log-sum-exp state (m, s) that holds s * exp(m).
template <typename T> __device__ __forceinline__ void lk_lse_merge(T& m, T& s, T m2, T s2) {
    const T ninf = lk_neg_inf<T>();
    if (m2 == ninf && !(s2 != s2)) return;
    if (m == ninf && !(s != s)) { m = m2; s = s2; return; }
    if (m2 > m) { s = s * lk_exp(m - m2) + s2; m = m2; }
    else if (m2 == m) { s += s2; }
    else { s += s2 * lk_exp(m2 - m); if (m2 != m2) m = m2; }
}

// Merges a SumSoftMaxWeight state (m2, sg2[0..N]) into (m, sg[0..N]): sg holds the sum of
// exp(F - m) and the G sums weighted by it.
template <int N, typename T>
__device__ __forceinline__ void lk_ssmw_merge(T& m, T* sg, T m2, const T* sg2) {
    const T ninf = lk_neg_inf<T>();
    T nm = (m2 > m || m == ninf || m2 != m2) ? m2 : m;
    T a = m == ninf ? T(0) : lk_exp(m - nm);
    T b = m2 == ninf ? T(0) : lk_exp(m2 - nm);
    m = nm;
#pragma unroll
    for (int c = 0; c < N; ++c) sg[c] = sg[c] * a + sg2[c] * b;
}

// Is a strictly before b in the order of minimum (MAX = false) or maximum reductions, NaN first?
template <bool MAX> __device__ __forceinline__ bool lk_before(double a, double b) {
    return (MAX ? a > b : a < b) || (a != a && !(b != b));
}

// Takes (v, j) into a minimum or maximum state when it comes first or the state is empty.
template <bool MAX>
__device__ __forceinline__ void lk_take_if_first(double& val, long long& idx, double v, long long j) {
    if (lk_before<MAX>(v, val) || idx < 0) { val = v; idx = j; }
}

// Inserts (v, j) into the sorted K smallest (empty slots have index -1 and sort last); equal
// values keep the earlier index first. Unrolled with constant indices so the lists stay in
// registers.
template <int K>
__device__ __forceinline__ void lk_kmin_insert(double* vals, long long* idx, double v, long long j) {
    if (idx[K - 1] >= 0 && !lk_before<false>(v, vals[K - 1])) return;
    bool placed = false;
#pragma unroll
    for (int p = K - 1; p > 0; --p) {
        if (!placed) {
            if (idx[p - 1] < 0 || lk_before<false>(v, vals[p - 1])) {
                vals[p] = vals[p - 1];
                idx[p] = idx[p - 1];
            } else {
                vals[p] = v;
                idx[p] = j;
                placed = true;
            }
        }
    }
    if (!placed) { vals[0] = v; idx[0] = j; }
}

#endif // LK_REDUCE_CUH
