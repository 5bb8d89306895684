//! Scalar math below every other layer: the compute types ([`Real`]) and branchless scalar
//! `exp`, `ln`, `sin` and `cos` that vectorise. The formula layer's op table and the CPU backend
//! both build on this module; it imports nothing from the crate.
//!
//! # Design
//!
//! Every function here is plain scalar Rust with no branches, no table
//! look-ups, no float <-> int conversions and no calls: special cases are
//! handled with selects (`if c { a } else { b }` on values, which LLVM lowers
//! to blends or min/max), rounding uses the "magic number" trick and powers
//! of two are assembled from integer bits. All functions are
//! `#[inline(always)]`, so when one is called in a loop over a slice inside a
//! function compiled with `#[target_feature(enable = "avx512f,avx2,fma")]`
//! (or `"avx2,fma"`, or the SSE2 baseline) it is inlined into that context
//! and LLVM auto-vectorises the loop at the full width of that ISA. This lets
//! the backend write each kernel once and obtain AVX-512, AVX2 and SSE2
//! versions from runtime dispatch, without hand-written intrinsics.
//!
//! Fused multiply-add is selected by the const generic `FMA`: `true` uses
//! `mul_add`, which is a single instruction inside an FMA-enabled context;
//! `false` uses `a * b + c`, because on a baseline x86_64 build `mul_add`
//! becomes a call to libm's software `fma`, which is both slow and a
//! vectorisation barrier. Callers instantiate `FMA = true` only inside
//! functions compiled with the `fma` target feature. Results of the two
//! instantiations may differ in the last bit; both meet the accuracy bounds
//! below.
//!
//! # Accuracy
//!
//! Measured by the tests below: f32 functions against the `f64` std
//! function at the same argument (a sweep over f32 bit patterns, also run
//! exhaustively), f64 functions against `std` (10^6 random arguments plus
//! edge cases), for both `FMA` instantiations:
//!
//! | function | max error |
//! | --- | --- |
//! | [`exp_f32`] | 1.01 ulp (exhaustive), subnormal results included |
//! | [`ln_f32`] | 0.83 ulp (exhaustive), subnormal arguments included |
//! | [`sin_f32`], [`cos_f32`] | 2 ulp where \|result\| >= 1.3e-4 (1.53 ulp for \|x\| <= 7); else 3.8e-15 * max(1, \|x\|) absolute (exhaustive) |
//! | [`exp_f64`], [`ln_f64`] | 1 ulp from `std` |
//! | [`sin_f64`], [`cos_f64`] | 2 ulp from `std`; within about 1e-15 * \|x\| of a zero, 4.4e-31 * max(1, \|x\|) absolute |
//!
//! The absolute bounds for `sin`/`cos` reflect the Cody-Waite reduction,
//! whose error is absolute and so exceeds an ulp of a result that is very
//! close to zero. The tests assert slightly looser bounds than measured
//! (1.5 ulp for f32 `exp`/`ln`, 2 ulp for f32 `sin`/`cos` with 1e-14 *
//! max(1, |x|) absolute, 2 and 3 ulp from `std` for f64 `exp`/`ln` and
//! `sin`/`cos` with 1e-29 * max(1, |x|) absolute).
//!
//! `sin`/`cos` are accurate only for `|x| <=`
//! [`SIN_COS_ACCURATE_LIMIT_F32`] / [`SIN_COS_ACCURATE_LIMIT_F64`]; beyond
//! that the result is unspecified (it can be far from the true value, or
//! NaN) and callers must recompute those elements with `std`'s `sin`/`cos`.
//!
//! The functions assume the default floating-point environment; with
//! flush-to-zero or denormals-are-zero enabled, subnormal inputs and results
//! are flushed like in any other arithmetic.

// Coefficients keep the digits printed in their sources (Cephes) so they can
// be checked against them; the compiler rounds them to the nearest float.
#![allow(clippy::excessive_precision)]

pub mod real;
pub use real::Real;
pub mod special;

use std::f32::consts as c32;
use std::f64::consts as c64;

/// Largest `|x|` for which [`sin_f32`] and [`cos_f32`] are accurate.
///
/// The Cody-Waite reduction multiplies the quadrant `q = round(x * 2/pi)` by
/// the leading parts of pi/2 exactly only while `q < 2^13`; past this limit
/// the result is unspecified and callers should fall back to `f32::sin`/`cos`.
pub const SIN_COS_ACCURATE_LIMIT_F32: f32 = 8192.0;

/// Largest `|x|` for which [`sin_f64`] and [`cos_f64`] are accurate.
///
/// The Cody-Waite reduction is exact only while `q = round(x * 2/pi) < 2^30`;
/// past this limit the result is unspecified and callers should fall back to
/// `f64::sin`/`cos`.
pub const SIN_COS_ACCURATE_LIMIT_F64: f64 = 1.0e9;

/// `a * b + c`, fused when `FMA` is true.
///
/// Use `FMA = true` only inside an FMA-enabled context; elsewhere `mul_add`
/// compiles to a (correct but slow) libm call.
#[inline(always)]
pub fn fma_f32<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// `a * b + c`, fused when `FMA` is true.
///
/// Use `FMA = true` only inside an FMA-enabled context; elsewhere `mul_add`
/// compiles to a (correct but slow) libm call.
#[inline(always)]
pub fn fma_f64<const FMA: bool>(a: f64, b: f64, c: f64) -> f64 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

// ---------------------------------------------------------------------------
// Shared constants
// ---------------------------------------------------------------------------

/// 1.5 * 2^23: adding it to |v| < 2^22 rounds v to the nearest integer, and
/// the integer is then readable from the low mantissa bits. Unlike `round()`
/// or `as i32` this vectorises on every x86_64 level.
const MAGIC_F32: f32 = 12_582_912.0;
/// 1.5 * 2^52, the f64 counterpart of [`MAGIC_F32`].
const MAGIC_F64: f64 = 6_755_399_441_055_744.0;

// ---------------------------------------------------------------------------
// exp
// ---------------------------------------------------------------------------

// ln 2 split so that n * LN2_HI is exact for every n that can occur
// (Cephes expf: C1, C2).
const EXP_LN2_HI_F32: f32 = 0.693359375;
const EXP_LN2_LO_F32: f32 = -2.12194440e-4;
// Cephes expf polynomial for (e^r - 1 - r) / r^2 on [-ln2/2, ln2/2],
// highest degree first.
const EXP_P_F32: [f32; 6] = [
    1.9875691500e-4,
    1.3981999507e-3,
    8.3334519073e-3,
    4.1665795894e-2,
    1.6666665459e-1,
    5.0000001201e-1,
];
// Inputs are clamped to this range before the reduction, which keeps n in
// [-150, 128]. At the upper end the result overflows to +inf by itself
// (n = 128, e^r > 1) and at the lower end it rounds to 0 (n = -150), so
// overflow, underflow and ±inf need no extra select; NaN passes the clamps
// and propagates.
const EXP_HI_F32: f32 = 89.0;
const EXP_LO_F32: f32 = -104.0;

/// `e^x` for `f32`, max error 1.5 ulp (measured 1.01) including subnormal
/// results.
///
/// `exp(-inf) = 0`, `exp(+inf) = +inf`, `exp(NaN) = NaN`; overflows to
/// `+inf` above ~88.72 and underflows (through the subnormals) to 0 below
/// ~-103.97.
#[inline(always)]
pub fn exp_f32<const FMA: bool>(x: f32) -> f32 {
    // Comparisons are false for NaN, so these clamps let NaN through.
    let x = if x > EXP_HI_F32 { EXP_HI_F32 } else { x };
    let x = if x < EXP_LO_F32 { EXP_LO_F32 } else { x };

    // n = round(x / ln 2) as a float, and as integer bits of `t`.
    let t = fma_f32::<FMA>(x, c32::LOG2_E, MAGIC_F32);
    let n = t - MAGIC_F32;
    let r = fma_f32::<FMA>(-n, EXP_LN2_HI_F32, x);
    let r = fma_f32::<FMA>(-n, EXP_LN2_LO_F32, r);

    let mut p = EXP_P_F32[0];
    for &c in &EXP_P_F32[1..] {
        p = fma_f32::<FMA>(p, r, c);
    }
    let y = fma_f32::<FMA>(p, r * r, r) + 1.0;

    // 2^n as 2^n1 * 2^n2 with n1 = floor(n/2), n2 = n - n1: each half stays a
    // normal float for n in [-150, 128], so subnormal results get a single
    // rounding and n = 128 still overflows to inf correctly. u = n + 256 is
    // positive, so a logical shift computes the floor division (an arithmetic
    // shift would cost more on SSE2/AVX2 for the f64 version).
    let u = t.to_bits().wrapping_sub(MAGIC_F32.to_bits() - 256);
    let h = u >> 1;
    let s1 = f32::from_bits(h.wrapping_sub(1) << 23);
    let s2 = f32::from_bits(u.wrapping_sub(h).wrapping_sub(1) << 23);
    y * s1 * s2
}

// ln 2 = EXP_LN2_HI_F64 + EXP_LN2_LO_F64, the high part with 15 significant
// bits so that n * EXP_LN2_HI_F64 is exact for |n| < 2^38 (Cephes exp: C1, C2).
const EXP_LN2_HI_F64: f64 = 6.93145751953125e-1;
const EXP_LN2_LO_F64: f64 = 1.42860682030941723212e-6;
// Near-minimax fit of (e^r - 1 - r) / r^2 on [-ln2/2, ln2/2] (degree 9,
// highest first), our own: Chebyshev interpolation at 50 digits,
// `mpmath.chebyfit(lambda r: (expm1(r) - r) / r**2, [-a, a], 10)` with
// a = 1.0001 * ln(2) / 2, coefficients rounded to f64. With the exact
// leading 1 + r the relative error of the approximation is 1.6e-17
// (0.07 ulp) over the interval.
const EXP_P_F64: [f64; 10] = [
    2.510038549551032e-08,
    2.7620088445409746e-07,
    2.7557268459997064e-06,
    2.4801521295954376e-05,
    0.00019841269863053618,
    0.0013888888917213717,
    0.008333333333330062,
    0.04166666666662413,
    0.16666666666666669,
    0.5000000000000001,
];
// See EXP_HI_F32: n stays in [-1076, 1024]; n = 1024 overflows to +inf and
// n = -1076 rounds to 0.
const EXP_HI_F64: f64 = 710.0;
const EXP_LO_F64: f64 = -746.0;

/// `e^x` for `f64`, within 2 ulp (measured 1) of `std`, subnormal results
/// included.
///
/// `exp(-inf) = 0`, `exp(+inf) = +inf`, `exp(NaN) = NaN`; overflows to
/// `+inf` above ~709.78 and underflows (through the subnormals) to 0 below
/// ~-745.13.
#[inline(always)]
pub fn exp_f64<const FMA: bool>(x: f64) -> f64 {
    let x = if x > EXP_HI_F64 { EXP_HI_F64 } else { x };
    let x = if x < EXP_LO_F64 { EXP_LO_F64 } else { x };

    let t = fma_f64::<FMA>(x, c64::LOG2_E, MAGIC_F64);
    let n = t - MAGIC_F64;
    let r = fma_f64::<FMA>(-n, EXP_LN2_HI_F64, x);
    let r = fma_f64::<FMA>(-n, EXP_LN2_LO_F64, r);

    let mut p = EXP_P_F64[0];
    for &c in &EXP_P_F64[1..] {
        p = fma_f64::<FMA>(p, r, c);
    }
    let y = fma_f64::<FMA>(p, r * r, r) + 1.0;

    // Same split as exp_f32, with u = n + 2048. Only logical 64-bit shifts
    // are used: SSE2 and AVX2 have no 64-bit arithmetic shift.
    let u = t.to_bits().wrapping_sub(MAGIC_F64.to_bits() - 2048);
    let h = u >> 1;
    let s1 = f64::from_bits(h.wrapping_sub(1) << 52);
    let s2 = f64::from_bits(u.wrapping_sub(h).wrapping_sub(1) << 52);
    y * s1 * s2
}

// ---------------------------------------------------------------------------
// ln
// ---------------------------------------------------------------------------

// Cephes logf polynomial: log(1+f) = f - f^2/2 + f^3 P(f) for
// 1 + f in [sqrt(1/2), sqrt(2)), highest degree first.
const LN_P_F32: [f32; 9] = [
    7.0376836292e-2,
    -1.1514610310e-1,
    1.1676998740e-1,
    -1.2420140846e-1,
    1.4249322787e-1,
    -1.6668057665e-1,
    2.0000714765e-1,
    -2.4999993993e-1,
    3.3333331174e-1,
];
// ln 2 = LN_LN2_HI + LN_LN2_LO with e * LN_LN2_HI exact (Cephes logf/log).
const LN_LN2_HI_F32: f32 = 0.693359375;
const LN_LN2_LO_F32: f32 = -2.12194440e-4;

/// `ln(x)` for `f32`, max error 1.5 ulp (measured 0.81), subnormal inputs
/// included.
///
/// `ln(+-0) = -inf`, `ln(x < 0) = NaN`, `ln(+inf) = +inf`, `ln(NaN) = NaN`.
#[inline(always)]
pub fn ln_f32<const FMA: bool>(x: f32) -> f32 {
    // Subnormals have no implicit leading bit: scale them into the normal
    // range first and compensate in the exponent.
    let tiny = x < f32::MIN_POSITIVE;
    let xs = if tiny { x * 8_388_608.0 } else { x }; // 2^23
    let e_adj: f32 = if tiny { 23.0 } else { 0.0 };

    // Adding bits(1.0) - bits(sqrt(1/2)) carries into the exponent field
    // exactly when the mantissa is >= sqrt(2), so re-adding bits(sqrt(1/2))
    // to the low bits yields m in [sqrt(1/2), sqrt(2)) without a compare.
    const SQRT_HALF_BITS: u32 = 0x3f35_04f3;
    let b = xs.to_bits().wrapping_add(1.0f32.to_bits() - SQRT_HALF_BITS);
    let m = f32::from_bits((b & 0x007f_ffff).wrapping_add(SQRT_HALF_BITS));
    // Exponent to float without an int -> float conversion: place it in the
    // mantissa of 2^23 and subtract. (b >> 23 also picks up the sign bit for
    // negative inputs; those are overridden below.)
    let e = f32::from_bits(0x4b00_0000 | (b >> 23)) - (8_388_608.0 + 127.0) - e_adj;

    let f = m - 1.0; // exact (Sterbenz)
    let z = f * f;
    let mut p = LN_P_F32[0];
    for &c in &LN_P_F32[1..] {
        p = fma_f32::<FMA>(p, f, c);
    }
    let y = p * f * z;
    let y = fma_f32::<FMA>(e, LN_LN2_LO_F32, y);
    let y = fma_f32::<FMA>(-0.5, z, y);
    let r = fma_f32::<FMA>(e, LN_LN2_HI_F32, f + y);

    let r = if x == 0.0 { f32::NEG_INFINITY } else { r };
    let r = if x < 0.0 { f32::NAN } else { r };
    // +inf and NaN map to themselves.
    if x < f32::INFINITY { r } else { x }
}

// Cephes log: log(1+f) = f - f^2/2 + f^3 P(f)/Q(f) for 1 + f in
// [sqrt(1/2), sqrt(2)); P highest degree first, Q monic (leading 1 omitted).
const LN_P_F64: [f64; 6] = [
    1.01875663804580931796e-4,
    4.97494994976747001425e-1,
    4.70579119878881725854e0,
    1.44989225341610930846e1,
    1.79368678507819816313e1,
    7.70838733755885391666e0,
];
const LN_Q_F64: [f64; 5] = [
    1.12873587189167450590e1,
    4.52279145837532221105e1,
    8.29875266912776603211e1,
    7.11544750618563894466e1,
    2.31251620126765340583e1,
];
const LN_LN2_HI_F64: f64 = 0.693359375;
const LN_LN2_LO_F64: f64 = -2.121944400546905827679e-4;

/// `ln(x)` for `f64`, within 2 ulp (measured 1) of `std`, subnormal inputs
/// included.
///
/// `ln(+-0) = -inf`, `ln(x < 0) = NaN`, `ln(+inf) = +inf`, `ln(NaN) = NaN`.
#[inline(always)]
pub fn ln_f64<const FMA: bool>(x: f64) -> f64 {
    let tiny = x < f64::MIN_POSITIVE;
    let xs = if tiny { x * 4_503_599_627_370_496.0 } else { x }; // 2^52
    let e_adj: f64 = if tiny { 52.0 } else { 0.0 };

    // See ln_f32. The exponent-to-float trick matters more here: there is no
    // packed i64 -> f64 conversion below AVX-512DQ.
    const SQRT_HALF_BITS: u64 = 0x3fe6_a09e_667f_3bcd;
    let b = xs.to_bits().wrapping_add(1.0f64.to_bits() - SQRT_HALF_BITS);
    let m = f64::from_bits((b & 0x000f_ffff_ffff_ffff).wrapping_add(SQRT_HALF_BITS));
    let e = f64::from_bits(0x4330_0000_0000_0000 | (b >> 52))
        - (4_503_599_627_370_496.0 + 1023.0)
        - e_adj;

    let f = m - 1.0;
    let z = f * f;
    let mut p = LN_P_F64[0];
    for &c in &LN_P_F64[1..] {
        p = fma_f64::<FMA>(p, f, c);
    }
    let mut q = f + LN_Q_F64[0];
    for &c in &LN_Q_F64[1..] {
        q = fma_f64::<FMA>(q, f, c);
    }
    let y = f * (z * p / q);
    let y = fma_f64::<FMA>(e, LN_LN2_LO_F64, y);
    let y = fma_f64::<FMA>(-0.5, z, y);
    let r = fma_f64::<FMA>(e, LN_LN2_HI_F64, f + y);

    let r = if x == 0.0 { f64::NEG_INFINITY } else { r };
    let r = if x < 0.0 { f64::NAN } else { r };
    if x < f64::INFINITY { r } else { x }
}

// ---------------------------------------------------------------------------
// sin / cos
// ---------------------------------------------------------------------------

// pi/2 in three parts: Cephes sinf's DP1..DP3 (a split of pi/4) doubled,
// which is exact. PIO2_1 has 8 and PIO2_2 11 significant bits, so q * PIO2_1
// and q * PIO2_2 are exact for q < 2^13.
const PIO2_1_F32: f32 = 2.0 * 0.78515625;
const PIO2_2_F32: f32 = 2.0 * 2.4187564849853515625e-4;
const PIO2_3_F32: f32 = 2.0 * 3.77489497744594108e-8;
// Cephes sinf: sin(r) = r + r^3 S(r^2) on [-pi/4, pi/4], highest first.
const SIN_P_F32: [f32; 3] = [-1.9515295891e-4, 8.3321608736e-3, -1.6666654611e-1];
// Cephes cosf: cos(r) = 1 - r^2/2 + r^4 C(r^2), highest first.
const COS_P_F32: [f32; 3] = [
    2.443315711809948e-5,
    -1.388731625493765e-3,
    4.166664568298827e-2,
];

/// Reduces `x` to `r` in [-pi/4, pi/4] with `x = r + q pi/2`; returns
/// (sin r, cos r, bits whose low two bits are q mod 4).
#[inline(always)]
fn sincos_reduced_f32<const FMA: bool>(x: f32) -> (f32, f32, u32) {
    let t = fma_f32::<FMA>(x, c32::FRAC_2_PI, MAGIC_F32);
    let q = t - MAGIC_F32;
    // inf and NaN become NaN here and propagate to the result.
    let r = fma_f32::<FMA>(-q, PIO2_1_F32, x);
    let r = fma_f32::<FMA>(-q, PIO2_2_F32, r);
    let r = fma_f32::<FMA>(-q, PIO2_3_F32, r);
    let z = r * r;

    let mut s = SIN_P_F32[0];
    for &c in &SIN_P_F32[1..] {
        s = fma_f32::<FMA>(s, z, c);
    }
    let s = fma_f32::<FMA>(r * z, s, r);

    let mut c = COS_P_F32[0];
    for &k in &COS_P_F32[1..] {
        c = fma_f32::<FMA>(c, z, k);
    }
    // 1 - z/2 rounds by up to half an ulp of the result; recover that
    // rounding error ((1 - w) - hz is exact) and add it back with the tail.
    let hz = 0.5 * z;
    let w = 1.0 - hz;
    let c = w + fma_f32::<FMA>(z * z, c, (1.0 - w) - hz);
    // MAGIC_F32's mantissa is 0x400000, so the low bits of t are those of q
    // in two's complement, negative q included.
    (s, c, t.to_bits())
}

/// `sin(x)` for `f32`, accurate to 2 ulp (or, next to the zeros of sine, to
/// 1e-14 * max(1, |x|) absolute) for `|x| <=` [`SIN_COS_ACCURATE_LIMIT_F32`].
///
/// Larger `|x|` give unspecified results; recompute them with `f32::sin`.
/// `sin(+-0) = +-0`, `sin(+-inf) = NaN`, `sin(NaN) = NaN`.
#[inline(always)]
pub fn sin_f32<const FMA: bool>(x: f32) -> f32 {
    let (s, c, q) = sincos_reduced_f32::<FMA>(x);
    // sin(r + q pi/2) = sin r, cos r, -sin r, -cos r for q = 0, 1, 2, 3.
    let v = if q & 1 == 0 { s } else { c };
    let v = f32::from_bits(v.to_bits() ^ ((q & 2) << 30));
    // The polynomial turns -0 into +0 (-0 + +0); keep the sign of zero.
    if x == 0.0 { x } else { v }
}

/// `cos(x)` for `f32`, accurate to 2 ulp (or, next to the zeros of cosine,
/// to 1e-14 * max(1, |x|) absolute) for `|x| <=`
/// [`SIN_COS_ACCURATE_LIMIT_F32`].
///
/// Larger `|x|` give unspecified results; recompute them with `f32::cos`.
/// `cos(+-inf) = NaN`, `cos(NaN) = NaN`.
#[inline(always)]
pub fn cos_f32<const FMA: bool>(x: f32) -> f32 {
    let (s, c, q) = sincos_reduced_f32::<FMA>(x);
    // cos(r + q pi/2) = cos r, -sin r, -cos r, sin r for q = 0, 1, 2, 3.
    let v = if q & 1 == 0 { c } else { s };
    f32::from_bits(v.to_bits() ^ ((q.wrapping_add(1) & 2) << 30))
}

// Cephes sin's DP1..DP3 doubled. PIO2_1 has 23 and PIO2_2 21 significant
// bits, so q * PIO2_1 and q * PIO2_2 are exact for q < 2^30.
const PIO2_1_F64: f64 = 2.0 * 7.85398125648498535156e-1;
const PIO2_2_F64: f64 = 2.0 * 3.77489470793079817668e-8;
const PIO2_3_F64: f64 = 2.0 * 2.69515142907905952645e-15;
// Cephes sin: sin(r) = r + r^3 S(r^2), highest first.
const SIN_P_F64: [f64; 6] = [
    1.58962301576546568060e-10,
    -2.50507477628578072866e-8,
    2.75573136213857245213e-6,
    -1.98412698295895385996e-4,
    8.33333333332211858878e-3,
    -1.66666666666666307295e-1,
];
// Cephes cos: cos(r) = 1 - r^2/2 + r^4 C(r^2), highest first.
const COS_P_F64: [f64; 6] = [
    -1.13585365213876817300e-11,
    2.08757008419747316778e-9,
    -2.75573141792967388112e-7,
    2.48015872888517045348e-5,
    -1.38888888888730564116e-3,
    4.16666666666665929218e-2,
];

/// f64 counterpart of [`sincos_reduced_f32`].
#[inline(always)]
fn sincos_reduced_f64<const FMA: bool>(x: f64) -> (f64, f64, u64) {
    let t = fma_f64::<FMA>(x, c64::FRAC_2_PI, MAGIC_F64);
    let q = t - MAGIC_F64;
    let r = fma_f64::<FMA>(-q, PIO2_1_F64, x);
    let r = fma_f64::<FMA>(-q, PIO2_2_F64, r);
    let r = fma_f64::<FMA>(-q, PIO2_3_F64, r);
    let z = r * r;

    let mut s = SIN_P_F64[0];
    for &c in &SIN_P_F64[1..] {
        s = fma_f64::<FMA>(s, z, c);
    }
    let s = fma_f64::<FMA>(r * z, s, r);

    let mut c = COS_P_F64[0];
    for &k in &COS_P_F64[1..] {
        c = fma_f64::<FMA>(c, z, k);
    }
    // 1 - z/2 rounds by up to half an ulp of the result; recover that
    // rounding error ((1 - w) - hz is exact) and add it back with the tail.
    let hz = 0.5 * z;
    let w = 1.0 - hz;
    let c = w + fma_f64::<FMA>(z * z, c, (1.0 - w) - hz);
    (s, c, t.to_bits())
}

/// `sin(x)` for `f64`, within 3 ulp of `std` (or, next to the zeros of sine,
/// 1e-29 * max(1, |x|) absolute) for `|x| <=` [`SIN_COS_ACCURATE_LIMIT_F64`].
///
/// Larger `|x|` give unspecified results; recompute them with `f64::sin`.
/// `sin(+-0) = +-0`, `sin(+-inf) = NaN`, `sin(NaN) = NaN`.
#[inline(always)]
pub fn sin_f64<const FMA: bool>(x: f64) -> f64 {
    let (s, c, q) = sincos_reduced_f64::<FMA>(x);
    let v = if q & 1 == 0 { s } else { c };
    let v = f64::from_bits(v.to_bits() ^ ((q & 2) << 62));
    if x == 0.0 { x } else { v }
}

/// `cos(x)` for `f64`, within 3 ulp of `std` (or, next to the zeros of
/// cosine, 1e-29 * max(1, |x|) absolute) for `|x| <=`
/// [`SIN_COS_ACCURATE_LIMIT_F64`].
///
/// Larger `|x|` give unspecified results; recompute them with `f64::cos`.
/// `cos(+-inf) = NaN`, `cos(NaN) = NaN`.
#[inline(always)]
pub fn cos_f64<const FMA: bool>(x: f64) -> f64 {
    let (s, c, q) = sincos_reduced_f64::<FMA>(x);
    let v = if q & 1 == 0 { c } else { s };
    f64::from_bits(v.to_bits() ^ ((q.wrapping_add(1) & 2) << 62))
}

#[cfg(test)]
mod tests;
