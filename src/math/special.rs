//! Branchless, vectorisable scalar `atan`, `atan2`, `tan`, `tanh`, `asin`,
//! `acos`, `sinh`, `cosh`, `log1p`, `expm1`, `erf`, `floor` and `round` for
//! `f32` and `f64`.
//!
//! # Design
//!
//! The rules of the parent module ([`super`]) apply unchanged: plain scalar
//! Rust, `#[inline(always)]`, no branches (every special case and every
//! range split is a select between values that are all computed), no table
//! look-ups, no calls (`sqrt`, `abs` and division are single instructions),
//! no float <-> int conversions (integers live in float bits: the "magic
//! number" rounding of [`super::exp_f32`]), and the const generic `FMA`
//! choosing fused or plain multiply-adds. Inlined into a loop inside a
//! `#[target_feature(enable = "avx2,fma")]` (or AVX-512, or SSE2) function,
//! each of them auto-vectorises.
//!
//! Range splits are computed on both sides and selected, so a function
//! costs the sum of its paths: `erf` evaluates its small-argument
//! polynomial and its `exp`-based tail for every element, `asin`/`acos` both
//! the direct and the `sqrt`-reduced form, and so on.
//!
//! Algorithms (fdlibm/Cephes structure; polynomial coefficients are our own
//! fits unless stated, see the comments on each constant):
//!
//! - `atan(x)`, `atan2(y, x)`: one division gives the ratio `t = n / d <= 1`
//!   of the smaller to the larger magnitude (`1/|x|` for `atan(|x| > 1)`);
//!   f32 then evaluates a polynomial on `[0, 1]`, f64 reduces further to
//!   `|t| <= tan(pi/8)` with `(n - d) / (n + d)`. The octant offset
//!   `k pi/4` is added with a two-part `pi/4`.
//! - `tan`: the Cody-Waite reduction of `sin`/`cos`, then `tan(r)` as
//!   `r + r^3 P(r^2)` or, in odd quadrants, `-cot(r) = -(r cot r) / r`
//!   with its own polynomial (one division either way).
//! - `tanh`: polynomial below 0.625, `1 - 2 / (e^{2|x|} + 1)` above.
//! - `sinh`/`cosh`: `e^|x| / 2 +- 1 / (4 (e^|x| / 2))` with an `exp` that
//!   computes `e^x / 2` directly (so it overflows only where the result
//!   does); `sinh` uses a polynomial below 1.
//! - `asin`/`acos`: polynomial in `x^2` below 0.5, else the same polynomial
//!   at `s = sqrt((1 - |x|) / 2)` with fdlibm's correction for the rounding
//!   of the square root.
//! - `log1p`: the `ln` of [`super::ln_f32`] at `u = 1 + x`, plus the exact
//!   rounding error `c` of `1 + x` as `c / u`.
//! - `expm1`: the reduction of `exp`; `2^n (1 + p) - 1` is summed as
//!   `(2^n - 1) + 2^n r + 2^n (p - r)` with a Fast2Sum of the first two
//!   terms, so there is no cancellation near 0.
//! - `erf`: `x P(x^2)` below 1, `1 - e^{-x^2} R(x)` above (`R` our fit of
//!   `erfc(x) e^{x^2}` for `f32`, Cephes' rational function for `f64`).
//! - `floor`/`round`: the magic-number rounding below `2^23`/`2^52`
//!   (above it every float is an integer and is returned unchanged).
//!
//! # Accuracy
//!
//! Measured by the tests in `special_tests.rs`, max ulp over both `FMA`
//! instantiations: `f32` functions against the `f64` function of `std`
//! (`libm::erf` for `erf`) at the same argument, in a release build on every
//! 7th `f32` bit pattern of the whole domain plus every 7th in denser
//! ranges where the function has structure (about 10^9 arguments per
//! function; `atan2` on 2*10^6 random pairs); `f64` functions against
//! `std`/`libm` (themselves within 1 ulp) on 10^6 random arguments plus edge
//! cases, so their true error is at most about one more ulp. The exhaustive
//! `f32` sweep (`cargo test --release special_f32_exhaustive -- --ignored`)
//! takes about half an hour on one core and has not been run to completion.
//!
//! | function | f32, `FMA = false` | f32, `FMA = true` | f64 vs std, `FMA = false` | f64 vs std, `FMA = true` | bound asserted (f32 / f64 vs std) |
//! | --- | --- | --- | --- | --- | --- |
//! | `atan` | 1.37 | 1.20 | 2 | 2 | 1.5 / 2 |
//! | `atan2` | 1.47 | 1.47 | 2 | 2 | 2 / 2.5 |
//! | `tan` | 1.67 | 1.82 | 2 | 2 | 2 / 3 (note 1) |
//! | `tanh` | 1.33 | 1.33 | 2 | 2 | 2 / 2.5 |
//! | `asin` | 0.64 | 0.61 | 1 | 1 | 1.5 / 2 |
//! | `acos` | 0.90 | 0.89 | 1 | 1 | 1.5 / 2 |
//! | `sinh` | 1.62 | 1.62 | 2 | 2 | 2 / 2.5 |
//! | `cosh` | 1.44 | 1.47 | 2 | 2 | 2 / 2.5 |
//! | `log1p` | 0.84 | 0.85 | 1 | 1 | 1.5 / 2 |
//! | `expm1` | 1.18 | 1.18 | 2 | 2 | 1.5 / 2 |
//! | `erf` | 1.30 | 1.03 | 1 | 1 | 1.5 / 2 |
//! | `floor`, `round` | exact | exact | exact | exact | bit-exact vs std |
//!
//! Note 1: `tan` in ulp where `1e-3 <= |tan x| < 1e3`; elsewhere every argument
//! is within the ulp bound or, near the zeros of `tan` (`x` close to
//! `k pi`), within an absolute error of 1e-14 * max(1, |x|) (f32,
//! measured 4.4e-15) / 1e-29 * max(1, |x|) (f64, measured 4.4e-31), and
//! near its poles `1 / tan(x)` is within that absolute bound.
//!
//! `floor` and `round` are exact. The test bounds are slightly looser than
//! the measured values.
//!
//! `tan` is accurate only for `|x| <=`
//! [`SIN_COS_ACCURATE_LIMIT_F32`](super::SIN_COS_ACCURATE_LIMIT_F32) /
//! [`SIN_COS_ACCURATE_LIMIT_F64`](super::SIN_COS_ACCURATE_LIMIT_F64), like
//! `sin`/`cos`: beyond, the result is unspecified and callers recompute
//! those elements with `std`'s `tan`.
//!
//! Special values follow C: NaN in gives NaN out; `atan(+-inf) = +-pi/2`;
//! `atan2` handles signed zeros and infinities like C's (`atan2(+-0, -0) =
//! +-pi`, `atan2(+-inf, -inf) = +-3pi/4`, ...); `tan(+-inf)`, `asin`/`acos`
//! outside `[-1, 1]` and `log1p(x < -1)` are NaN; `log1p(-1) = -inf`;
//! `tanh(+-inf) = +-1`, `erf(+-inf) = +-1` with `|erf| <= 1` and `|tanh| <= 1`
//! everywhere; `sinh`, `cosh`, `expm1` overflow to infinity where the result
//! does; `expm1(-inf) = -1`; odd functions keep the sign of zero; subnormal
//! arguments are handled (odd functions return them essentially unchanged).

// Coefficients keep all the digits printed by the fitting script.
#![allow(clippy::excessive_precision)]

use super::{MAGIC_F32, MAGIC_F64, fma_f32, fma_f64};
use std::f32::consts as c32;
use std::f64::consts as c64;

#[cfg(test)]
#[path = "special_tests.rs"]
mod special_tests;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Horner evaluation of `c[0] x^(N-1) + ... + c[N-1]`.
#[inline(always)]
fn horner_f32<const FMA: bool, const N: usize>(c: &[f32; N], x: f32) -> f32 {
    let mut p = c[0];
    for &k in &c[1..] {
        p = fma_f32::<FMA>(p, x, k);
    }
    p
}

/// Horner evaluation of `c[0] x^(N-1) + ... + c[N-1]`.
#[inline(always)]
fn horner_f64<const FMA: bool, const N: usize>(c: &[f64; N], x: f64) -> f64 {
    let mut p = c[0];
    for &k in &c[1..] {
        p = fma_f64::<FMA>(p, x, k);
    }
    p
}

/// `|mag|` with the sign bit of `sign`.
#[inline(always)]
fn copysign_f32(mag: f32, sign: f32) -> f32 {
    f32::from_bits((mag.to_bits() & 0x7fff_ffff) | (sign.to_bits() & 0x8000_0000))
}

/// `|mag|` with the sign bit of `sign`.
#[inline(always)]
fn copysign_f64(mag: f64, sign: f64) -> f64 {
    const SIGN: u64 = 0x8000_0000_0000_0000;
    f64::from_bits((mag.to_bits() & !SIGN) | (sign.to_bits() & SIGN))
}

/// `(s, e)` with `s = a + b` rounded and `a + b = s + e` exactly (Knuth's
/// TwoSum; no condition on the magnitudes).
#[inline(always)]
fn two_sum_f32(a: f32, b: f32) -> (f32, f32) {
    let s = a + b;
    let bb = s - a;
    (s, (a - (s - bb)) + (b - bb))
}

/// f64 counterpart of [`two_sum_f32`].
#[inline(always)]
fn two_sum_f64(a: f64, b: f64) -> (f64, f64) {
    let s = a + b;
    let bb = s - a;
    (s, (a - (s - bb)) + (b - bb))
}

// pi/2 = PIO2_HI + PIO2_LO (PIO2_HI the nearest float); pi/4 and pi are
// exact halvings/doublings.
const PIO2_HI_F32: f32 = 1.5707963705062866;
const PIO2_LO_F32: f32 = -4.371138828673793e-08;
const PIO2_HI_F64: f64 = c64::FRAC_PI_2;
const PIO2_LO_F64: f64 = 6.123233995736766e-17;
// pi/4 = PIO4_HI + PIO4_LO with PIO4_HI of 21 (f32) / 50 (f64) significant
// bits, so k * PIO4_HI is exact for k = 0..4.
const PIO4_HI_F32: f32 = 0.785398006439209;
const PIO4_LO_F32: f32 = 1.5695823663008923e-07;
const PIO4_HI_F64: f64 = c64::FRAC_PI_4; // 50 significant bits
const PIO4_LO_F64: f64 = 3.061616997868383e-17;
const TAN_PI_8_F64: f64 = 0.41421356237309503;

// ---------------------------------------------------------------------------
// floor / round
// ---------------------------------------------------------------------------

/// 2^23: every f32 of at least this magnitude is an integer.
const INT_LIMIT_F32: f32 = 8_388_608.0;
/// 2^52: every f64 of at least this magnitude is an integer.
const INT_LIMIT_F64: f64 = 4_503_599_627_370_496.0;

/// `floor(x)` for `f32`, exact for every float.
///
/// `floor(-0.0) = -0.0`; infinities and NaN pass through.
#[inline(always)]
pub fn floor_f32(x: f32) -> f32 {
    let a = x.abs();
    // For a < 2^23, (a + 2^23) - 2^23 rounds a to the nearest integer
    // (ties to even); with x's sign that is round-to-nearest(x), -0 kept.
    let r = copysign_f32((a + INT_LIMIT_F32) - INT_LIMIT_F32, x);
    let f = if r > x { r - 1.0 } else { r };
    if a < INT_LIMIT_F32 { f } else { x }
}

/// `floor(x)` for `f64`, exact for every float.
///
/// `floor(-0.0) = -0.0`; infinities and NaN pass through.
#[inline(always)]
pub fn floor_f64(x: f64) -> f64 {
    let a = x.abs();
    let r = copysign_f64((a + INT_LIMIT_F64) - INT_LIMIT_F64, x);
    let f = if r > x { r - 1.0 } else { r };
    if a < INT_LIMIT_F64 { f } else { x }
}

/// `round(x)` for `f32` like C's `round`: the nearest integer, halves away
/// from zero; exact for every float.
///
/// The sign of zero is kept (`round(-0.3) = -0.0`); infinities and NaN pass
/// through.
#[inline(always)]
pub fn round_f32(x: f32) -> f32 {
    let a = x.abs();
    let r = (a + INT_LIMIT_F32) - INT_LIMIT_F32;
    // trunc(a), then up when the (exact) fraction is at least one half.
    let t = if r > a { r - 1.0 } else { r };
    let t = if a - t >= 0.5 { t + 1.0 } else { t };
    if a < INT_LIMIT_F32 {
        copysign_f32(t, x)
    } else {
        x
    }
}

/// `round(x)` for `f64` like C's `round`: the nearest integer, halves away
/// from zero; exact for every float.
///
/// The sign of zero is kept (`round(-0.3) = -0.0`); infinities and NaN pass
/// through.
#[inline(always)]
pub fn round_f64(x: f64) -> f64 {
    let a = x.abs();
    let r = (a + INT_LIMIT_F64) - INT_LIMIT_F64;
    let t = if r > a { r - 1.0 } else { r };
    let t = if a - t >= 0.5 { t + 1.0 } else { t };
    if a < INT_LIMIT_F64 {
        copysign_f64(t, x)
    } else {
        x
    }
}

// ---------------------------------------------------------------------------
// atan / atan2
// ---------------------------------------------------------------------------

// Our own fits, as all `*_P_*` polynomials below unless stated: Chebyshev
// interpolation at 50 digits (`mpmath.chebyfit`, near-minimax) of the
// function named, on the interval given (with a 1e-4 margin where the
// reduction can round past its end), coefficients rounded to the type,
// highest degree first. Here atan(t) = t + t^3 P(t^2),
// P(z) = (atan(sqrt z) - sqrt z) / z^1.5 for z in [0, 1] (f32) or
// [0, tan(pi/8)^2] (f64).
// ATAN_P_F32: degree 9 on [0, 1.0], max abs error of the fit 2.47e-9
const ATAN_P_F32: [f32; 10] = [
    0.0014886919393047597,
    -0.009144629760592396,
    0.026305001110062377,
    -0.04896051402709067,
    0.07031914250029966,
    -0.08931826777381315,
    0.11088261628735159,
    -0.1428400379473353,
    0.19999949321141888,
    -0.3333333308107325,
];
// ATAN_P_F64: degree 10 on [1.0e-40, 0.17159003], max abs error of the fit 3.17e-17
const ATAN_P_F64: [f64; 11] = [
    -0.019175404711104935,
    0.03923044778479309,
    -0.050854078345894844,
    0.05858140904866328,
    -0.06664510525508936,
    0.07692183125376892,
    -0.0909090457530649,
    0.11111111015187018,
    -0.14285714284665682,
    0.19999999999995516,
    -0.3333333333333333,
];

/// `atan(n / d)` for `0 <= n <= d` (not both 0): one division, then
/// `t + t^3 P(t^2)` on `[0, 1]`. Returned as `(p, false)`: the f32 version
/// needs no octant offset (see [`atan_reduced_f64`]).
#[inline(always)]
fn atan_reduced_f32<const FMA: bool>(n: f32, d: f32) -> (f32, bool) {
    // A single rounding in t (instead of two for (n - d) / (n + d)) keeps
    // the result within 2 ulp; the price is a longer polynomial, which is
    // cheap in f32.
    let t = n / d;
    let z = t * t;
    let p = horner_f32::<FMA, 10>(&ATAN_P_F32, z);
    (fma_f32::<FMA>(t * z, p, t), false)
}

/// `atan(n / d)` for `0 <= n <= d` (not both 0, `n + d` finite) as
/// `(p, mid)`: the angle is `p + (mid ? pi/4 : 0)`, `|p| <= pi/8`.
#[inline(always)]
fn atan_reduced_f64<const FMA: bool>(n: f64, d: f64) -> (f64, bool) {
    // atan(n/d) = pi/4 + atan((n - d) / (n + d)): |t| <= tan(pi/8) keeps
    // the f64 polynomial short.
    let mid = n > TAN_PI_8_F64 * d;
    let num = if mid { n - d } else { n };
    let den = if mid { n + d } else { d };
    let t = num / den;
    let z = t * t;
    let p = horner_f64::<FMA, 11>(&ATAN_P_F64, z);
    (fma_f64::<FMA>(t * z, p, t), mid)
}

/// `atan(x)` for `f32`, max error 1.5 ulp.
///
/// `atan(+-inf) = +-pi/2`, `atan(+-0) = +-0`, `atan(NaN) = NaN`.
#[inline(always)]
pub fn atan_f32<const FMA: bool>(x: f32) -> f32 {
    let a = x.abs();
    // atan(a) = pi/2 - atan(1/a) for a > 1.
    let swap = a > 1.0;
    let n = if swap { 1.0 } else { a };
    let d = if swap { a } else { 1.0 };
    let (p, mid) = atan_reduced_f32::<FMA>(n, d);
    // atan(a) = k pi/4 ± p.
    let k: f32 = if mid { 1.0 } else { 0.0 };
    let k = if swap { 2.0 - k } else { k };
    let p = if swap { -p } else { p };
    let r = fma_f32::<FMA>(k, PIO4_HI_F32, fma_f32::<FMA>(k, PIO4_LO_F32, p));
    copysign_f32(r, x)
}

/// `atan(x)` for `f64`, within 2 ulp of `std`.
///
/// `atan(+-inf) = +-pi/2`, `atan(+-0) = +-0`, `atan(NaN) = NaN`.
#[inline(always)]
pub fn atan_f64<const FMA: bool>(x: f64) -> f64 {
    let a = x.abs();
    let swap = a > 1.0;
    let n = if swap { 1.0 } else { a };
    let d = if swap { a } else { 1.0 };
    let (p, mid) = atan_reduced_f64::<FMA>(n, d);
    let k: f64 = if mid { 1.0 } else { 0.0 };
    let k = if swap { 2.0 - k } else { k };
    let p = if swap { -p } else { p };
    let r = fma_f64::<FMA>(k, PIO4_HI_F64, fma_f64::<FMA>(k, PIO4_LO_F64, p));
    copysign_f64(r, x)
}

/// `atan2(y, x)` for `f32`: the angle of the point `(x, y)` in
/// `[-pi, pi]`, max error 2 ulp.
///
/// Special values as C's `atan2`: `atan2(+-0, +0) = +-0`,
/// `atan2(+-0, -0) = +-pi`, `atan2(+-inf, +inf) = +-pi/4`,
/// `atan2(+-inf, -inf) = +-3pi/4`, NaN if either argument is NaN.
#[inline(always)]
pub fn atan2_f32<const FMA: bool>(y: f32, x: f32) -> f32 {
    let (ax, ay) = (x.abs(), y.abs());
    let swap = ay > ax;
    let n = if swap { ax } else { ay };
    let d = if swap { ay } else { ax };
    // Both infinite (n <= d): an odd multiple of pi/4, as for n = d = 1.
    let both_inf = n == f32::INFINITY;
    let n = if both_inf { 1.0 } else { n };
    let d = if both_inf { 1.0 } else { d };
    // Both zero: the angle of (±0, ±0) is that of t = 0.
    let d = if d == 0.0 { 1.0 } else { d };
    // Scale so that n + d cannot overflow and the reduction test
    // n > tan(pi/8) d is not rounded in the subnormals.
    let scale: f32 = if d > 8.507_059e37 { 0.25 } else { 1.0 }; // 2^126
    let scale = if d < 9.860_761e-32 {
        1.125_899_9e15
    } else {
        scale
    }; // 2^-103, 2^50
    let (n, d) = (n * scale, d * scale);
    let (p, mid) = atan_reduced_f32::<FMA>(n, d);
    // Angle k pi/4 ± p: k from the octant, sign of p from the reflections.
    let k: f32 = if mid { 1.0 } else { 0.0 };
    let k = if swap { 2.0 - k } else { k };
    let p = if swap { -p } else { p };
    let neg_x = x.to_bits() >> 31 != 0; // includes -0
    let k = if neg_x { 4.0 - k } else { k };
    let p = if neg_x { -p } else { p };
    let r = fma_f32::<FMA>(k, PIO4_HI_F32, fma_f32::<FMA>(k, PIO4_LO_F32, p));
    let r = copysign_f32(r, y);
    if x.is_nan() || y.is_nan() { x + y } else { r }
}

/// `atan2(y, x)` for `f64`: the angle of the point `(x, y)` in
/// `[-pi, pi]`, within 2.5 ulp of `std`.
///
/// Special values as C's `atan2` (see [`atan2_f32`]).
#[inline(always)]
pub fn atan2_f64<const FMA: bool>(y: f64, x: f64) -> f64 {
    let (ax, ay) = (x.abs(), y.abs());
    let swap = ay > ax;
    let n = if swap { ax } else { ay };
    let d = if swap { ay } else { ax };
    let both_inf = n == f64::INFINITY;
    let n = if both_inf { 1.0 } else { n };
    let d = if both_inf { 1.0 } else { d };
    let d = if d == 0.0 { 1.0 } else { d };
    let scale: f64 = if d > 4.49423283715579e307 { 0.25 } else { 1.0 }; // 2^1022
    let scale = if d < 2.004168360008973e-292 {
        1.8014398509481984e16
    } else {
        scale
    }; // 2^-969, 2^54
    let (n, d) = (n * scale, d * scale);
    let (p, mid) = atan_reduced_f64::<FMA>(n, d);
    let k: f64 = if mid { 1.0 } else { 0.0 };
    let k = if swap { 2.0 - k } else { k };
    let p = if swap { -p } else { p };
    let neg_x = x.to_bits() >> 63 != 0;
    let k = if neg_x { 4.0 - k } else { k };
    let p = if neg_x { -p } else { p };
    let r = fma_f64::<FMA>(k, PIO4_HI_F64, fma_f64::<FMA>(k, PIO4_LO_F64, p));
    let r = copysign_f64(r, y);
    if x.is_nan() || y.is_nan() { x + y } else { r }
}

// ---------------------------------------------------------------------------
// tan
// ---------------------------------------------------------------------------

// tan(r) = r + r^3 P(r^2), P(z) = (tan(sqrt z) - sqrt z) / z^1.5 for z in
// [0, (pi/4)^2].
// TAN_P_F32: degree 6 on [1.0e-40, 0.61691196], max abs error of the fit 8.62e-9
const TAN_P_F32: [f32; 7] = [
    0.003843555981919615,
    0.0011846202049414455,
    0.009962586104526808,
    0.021621002190532864,
    0.05399448062866221,
    0.1333323087216478,
    0.3333333397997821,
];
// TAN_P_F64: degree 14 on [1.0e-40, 0.61691196], max abs error of the fit 6.09e-18
const TAN_P_F64: [f64; 15] = [
    8.485316072701323e-06,
    -1.8323519064364184e-05,
    3.653131664108726e-05,
    -1.1030080532725272e-05,
    5.559954108301084e-05,
    8.997951259028279e-05,
    0.0002412282918388211,
    0.0005895751422742284,
    0.0014559028161905394,
    0.0035921209718821146,
    0.008863236004116282,
    0.02186948851704705,
    0.05396825396865608,
    0.13333333333333,
    0.3333333333333333,
];
// r cot(r) = 1 + z C(z), C(z) = (sqrt z cot sqrt z - 1) / z for z = r^2 in
// [0, (pi/4)^2]: evaluating cot directly (rather than -1 / tan) avoids
// doubling the relative error of a small tan(r).
// COT_P_F32: degree 4 on [0, 0.61691196], max abs error of the fit 4.73e-10
const COT_P_F32: [f32; 5] = [
    -2.5085768671575658e-05,
    -0.0002095724122309536,
    -0.002116864388542647,
    -0.02222218633915927,
    -0.3333333337766212,
];
// COT_P_F64: degree 9 on [0, 0.61691196], max abs error of the fit 5.17e-19
const COT_P_F64: [f64; 10] = [
    -3.140944007587101e-10,
    -2.1311514893836332e-09,
    -2.230396907701201e-08,
    -2.1921962318918262e-07,
    -2.1644152155395462e-06,
    -2.137779733578931e-05,
    -0.00021164021181374563,
    -0.002116402116393728,
    -0.02222222222222238,
    -0.3333333333333333,
];

/// `tan(x)` for `f32`, max error 2 ulp for `|x| <=`
/// [`SIN_COS_ACCURATE_LIMIT_F32`](super::SIN_COS_ACCURATE_LIMIT_F32), except
/// next to the zeros of tangent, where the error is at most
/// 1e-14 * max(1, |x|) absolute, and next to its poles, where `1 / tan(x)`
/// has that accuracy.
///
/// Larger `|x|` give unspecified results; recompute them with `f32::tan`.
/// `tan(+-0) = +-0`, `tan(+-inf) = NaN`, `tan(NaN) = NaN`.
#[inline(always)]
pub fn tan_f32<const FMA: bool>(x: f32) -> f32 {
    // The reduction of sin_f32/cos_f32: x = r + q pi/2, |r| <= pi/4.
    let t = fma_f32::<FMA>(x, c32::FRAC_2_PI, MAGIC_F32);
    let q = t - MAGIC_F32;
    let r1 = fma_f32::<FMA>(-q, super::PIO2_1_F32, x);
    // Unlike sin/cos, tan has a derivative of up to 2 on [-pi/4, pi/4], so
    // the rounding of the last two reduction steps is kept (TwoSum) as
    // r_lo and added back to first order at the end.
    let (r2, e2) = two_sum_f32(r1, -q * super::PIO2_2_F32);
    let (r, e3) = two_sum_f32(r2, -q * super::PIO2_3_F32);
    let r_lo = e2 + e3;
    let z = r * r;
    let p = horner_f32::<FMA, 7>(&TAN_P_F32, z);
    let y = fma_f32::<FMA>(r * z, p, r);
    let c = fma_f32::<FMA>(z, horner_f32::<FMA, 5>(&COT_P_F32, z), 1.0);
    // tan(r + pi/2) = -cot(r) = -(r cot r) / r; the low bit of t is q's.
    // One division serves both quadrant parities.
    let odd = t.to_bits() & 1 != 0;
    let num = if odd { -c } else { y };
    let den = if odd { r } else { 1.0 };
    let v = num / den;
    // d tan(r)/dr = d(-cot r)/dr = 1 + v^2.
    let v = fma_f32::<FMA>(r_lo, fma_f32::<FMA>(v, v, 1.0), v);
    if x == 0.0 { x } else { v }
}

/// `tan(x)` for `f64`, within 3 ulp of `std` for `|x| <=`
/// [`SIN_COS_ACCURATE_LIMIT_F64`](super::SIN_COS_ACCURATE_LIMIT_F64), except
/// next to the zeros of tangent, where the error is at most
/// 1e-29 * max(1, |x|) absolute, and next to its poles, where `1 / tan(x)`
/// has that accuracy.
///
/// Larger `|x|` give unspecified results; recompute them with `f64::tan`.
/// `tan(+-0) = +-0`, `tan(+-inf) = NaN`, `tan(NaN) = NaN`.
#[inline(always)]
pub fn tan_f64<const FMA: bool>(x: f64) -> f64 {
    let t = fma_f64::<FMA>(x, c64::FRAC_2_PI, MAGIC_F64);
    let q = t - MAGIC_F64;
    let r1 = fma_f64::<FMA>(-q, super::PIO2_1_F64, x);
    // Unlike sin/cos, tan has a derivative of up to 2 on [-pi/4, pi/4], so
    // the rounding of the last two reduction steps is kept (TwoSum) as
    // r_lo and added back to first order at the end.
    let (r2, e2) = two_sum_f64(r1, -q * super::PIO2_2_F64);
    let (r, e3) = two_sum_f64(r2, -q * super::PIO2_3_F64);
    let r_lo = e2 + e3;
    let z = r * r;
    let p = horner_f64::<FMA, 15>(&TAN_P_F64, z);
    let y = fma_f64::<FMA>(r * z, p, r);
    let c = fma_f64::<FMA>(z, horner_f64::<FMA, 10>(&COT_P_F64, z), 1.0);
    // tan(r + pi/2) = -cot(r) = -(r cot r) / r; the low bit of t is q's.
    // One division serves both quadrant parities.
    let odd = t.to_bits() & 1 != 0;
    let num = if odd { -c } else { y };
    let den = if odd { r } else { 1.0 };
    let v = num / den;
    // d tan(r)/dr = d(-cot r)/dr = 1 + v^2.
    let v = fma_f64::<FMA>(r_lo, fma_f64::<FMA>(v, v, 1.0), v);
    if x == 0.0 { x } else { v }
}

// ---------------------------------------------------------------------------
// exp variants: e^x / 2 (sinh, cosh)
// ---------------------------------------------------------------------------

/// `e^x / 2` for `f32`: [`super::exp_f32`] with the power of two lowered by
/// one, so it overflows only above ~89.4 (clamped at 90 to keep the
/// exponent arithmetic in range; NaN propagates).
#[inline(always)]
fn exp_half_f32<const FMA: bool>(x: f32) -> f32 {
    let x = if x > 90.0 { 90.0 } else { x };
    let x = if x < -104.0 { -104.0 } else { x };
    let t = fma_f32::<FMA>(x, c32::LOG2_E, MAGIC_F32);
    let n = t - MAGIC_F32;
    let r = fma_f32::<FMA>(-n, super::EXP_LN2_HI_F32, x);
    let r = fma_f32::<FMA>(-n, super::EXP_LN2_LO_F32, r);
    let p = horner_f32::<FMA, 6>(&super::EXP_P_F32, r);
    let y = fma_f32::<FMA>(p, r * r, r) + 1.0;
    // u = (n - 1) + 256: see exp_f32.
    let u = t.to_bits().wrapping_sub(MAGIC_F32.to_bits() - 255);
    let h = u >> 1;
    let s1 = f32::from_bits(h.wrapping_sub(1) << 23);
    let s2 = f32::from_bits(u.wrapping_sub(h).wrapping_sub(1) << 23);
    y * s1 * s2
}

/// `e^x / 2` for `f64` (see [`exp_half_f32`]; clamped at 711).
#[inline(always)]
fn exp_half_f64<const FMA: bool>(x: f64) -> f64 {
    let x = if x > 711.0 { 711.0 } else { x };
    let x = if x < -746.0 { -746.0 } else { x };
    let t = fma_f64::<FMA>(x, c64::LOG2_E, MAGIC_F64);
    let n = t - MAGIC_F64;
    let r = fma_f64::<FMA>(-n, super::EXP_LN2_HI_F64, x);
    let r = fma_f64::<FMA>(-n, super::EXP_LN2_LO_F64, r);
    let p = horner_f64::<FMA, 10>(&super::EXP_P_F64, r);
    let y = fma_f64::<FMA>(p, r * r, r) + 1.0;
    let u = t.to_bits().wrapping_sub(MAGIC_F64.to_bits() - 2047);
    let h = u >> 1;
    let s1 = f64::from_bits(h.wrapping_sub(1) << 52);
    let s2 = f64::from_bits(u.wrapping_sub(h).wrapping_sub(1) << 52);
    y * s1 * s2
}

// ---------------------------------------------------------------------------
// sinh / cosh / tanh
// ---------------------------------------------------------------------------

// sinh(x) = x + x^3 P(x^2), P(z) = (sinh(sqrt z) - sqrt z) / z^1.5 for z in
// [0, 1].
// SINH_P_F32: degree 3 on [1.0e-40, 1.0], max abs error of the fit 2.0e-10
const SINH_P_F32: [f32; 4] = [
    2.8062802582276946e-06,
    0.00019838101968683888,
    0.00833333967591706,
    0.16666666646842135,
];
// SINH_P_F64: degree 6 on [1.0e-40, 1.0], max abs error of the fit 3.48e-19
const SINH_P_F64: [f64; 7] = [
    7.746178593018827e-13,
    1.6057679623801638e-10,
    2.5052117695907823e-08,
    2.7557319191381816e-06,
    0.00019841269841324198,
    0.008333333333333299,
    0.16666666666666666,
];

/// `sinh(x)` for `f32`, max error 2 ulp.
///
/// Overflows to `+-inf` above ~89.4 in magnitude; `sinh(+-0) = +-0`.
#[inline(always)]
pub fn sinh_f32<const FMA: bool>(x: f32) -> f32 {
    let a = x.abs();
    let z = a * a;
    let small = fma_f32::<FMA>(a * z, horner_f32::<FMA, 4>(&SINH_P_F32, z), a);
    let h = exp_half_f32::<FMA>(a);
    let large = h - 0.25 / h;
    copysign_f32(if a < 1.0 { small } else { large }, x)
}

/// `sinh(x)` for `f64`, within 2.5 ulp of `std`.
///
/// Overflows to `+-inf` above ~710.5 in magnitude; `sinh(+-0) = +-0`.
#[inline(always)]
pub fn sinh_f64<const FMA: bool>(x: f64) -> f64 {
    let a = x.abs();
    let z = a * a;
    let small = fma_f64::<FMA>(a * z, horner_f64::<FMA, 7>(&SINH_P_F64, z), a);
    let h = exp_half_f64::<FMA>(a);
    let large = h - 0.25 / h;
    copysign_f64(if a < 1.0 { small } else { large }, x)
}

/// `cosh(x)` for `f32`, max error 2 ulp.
///
/// Overflows to `+inf` above ~89.4 in magnitude.
#[inline(always)]
pub fn cosh_f32<const FMA: bool>(x: f32) -> f32 {
    let h = exp_half_f32::<FMA>(x.abs());
    h + 0.25 / h
}

/// `cosh(x)` for `f64`, within 2.5 ulp of `std`.
///
/// Overflows to `+inf` above ~710.5 in magnitude.
#[inline(always)]
pub fn cosh_f64<const FMA: bool>(x: f64) -> f64 {
    let h = exp_half_f64::<FMA>(x.abs());
    h + 0.25 / h
}

// tanh(x) = x + x^3 P(x^2), P(z) = (tanh(sqrt z) - sqrt z) / z^1.5 for z in
// [0, 0.625^2].
// TANH_P_F32: degree 5 on [1.0e-40, 0.390625], max abs error of the fit 1.6e-9
const TANH_P_F32: [f32; 6] = [
    0.002292744816178142,
    -0.008343945515839153,
    0.02176891865102821,
    -0.053959259577204544,
    0.1333330355691574,
    -0.3333333317214036,
];
// TANH_P_F64: degree 11 on [1.0e-40, 0.390625], max abs error of the fit 3.94e-18
const TANH_P_F64: [f64; 12] = [
    6.485163482793113e-06,
    -3.12011014257974e-05,
    9.257116129556769e-05,
    -0.0002375906496055562,
    0.0005896606577757043,
    -0.0014557754120478055,
    0.0035921217511549622,
    -0.008863235103240878,
    0.021869488519008305,
    -0.05396825396789699,
    0.13333333333333042,
    -0.3333333333333333,
];

/// `tanh(x)` for `f32`, max error 2 ulp.
///
/// `tanh(+-inf) = +-1`, `tanh(+-0) = +-0`; `|tanh(x)| <= 1`.
#[inline(always)]
pub fn tanh_f32<const FMA: bool>(x: f32) -> f32 {
    let a = x.abs();
    let z = a * a;
    let small = fma_f32::<FMA>(a * z, horner_f32::<FMA, 6>(&TANH_P_F32, z), a);
    // 1 - 2 / (e^{2a} + 1); e^{2a} = inf gives exactly 1.
    let e = super::exp_f32::<FMA>(2.0 * a);
    let large = 1.0 - 2.0 / (e + 1.0);
    copysign_f32(if a < 0.625 { small } else { large }, x)
}

/// `tanh(x)` for `f64`, within 2.5 ulp of `std`.
///
/// `tanh(+-inf) = +-1`, `tanh(+-0) = +-0`; `|tanh(x)| <= 1`.
#[inline(always)]
pub fn tanh_f64<const FMA: bool>(x: f64) -> f64 {
    let a = x.abs();
    let z = a * a;
    let small = fma_f64::<FMA>(a * z, horner_f64::<FMA, 12>(&TANH_P_F64, z), a);
    let e = super::exp_f64::<FMA>(2.0 * a);
    let large = 1.0 - 2.0 / (e + 1.0);
    copysign_f64(if a < 0.625 { small } else { large }, x)
}

// ---------------------------------------------------------------------------
// asin / acos
// ---------------------------------------------------------------------------

// asin(x) = x + x^3 P(x^2), P(z) = (asin(sqrt z) - sqrt z) / z^1.5 for z in
// [0, 0.25].
// ASIN_P_F32: degree 5 on [1.0e-40, 0.25], max abs error of the fit 4.17e-9
const ASIN_P_F32: [f32; 6] = [
    0.03369084720283012,
    0.017149238357677253,
    0.03110066273549457,
    0.04459940152851218,
    0.07500094543497424,
    0.16666666337430908,
];
// ASIN_P_F64: degree 12 on [1.0e-40, 0.25], max abs error of the fit 1.5e-17
const ASIN_P_F64: [f64; 13] = [
    0.028757851367421566,
    -0.014851887071247204,
    0.01740087944269402,
    0.005457506718640358,
    0.01032281435018578,
    0.011479177415184906,
    0.013971212973552933,
    0.017352392720869973,
    0.02237217294214989,
    0.030381944138531247,
    0.04464285714635543,
    0.07499999999998433,
    0.16666666666666669,
];

/// Shared part of asin/acos for `f32`: with `a = |x|`, returns
/// `(small, hi, lo)`: `small = asin(a)` (valid for `a <= 0.5`) and
/// `asin(s) = hi + lo` for `s = sqrt((1 - a) / 2)` (valid for
/// `0.5 < a <= 1`; NaN for `a > 1`), where `hi` has 12 significant bits.
#[inline(always)]
fn asin_parts_f32<const FMA: bool>(a: f32) -> (f32, f32, f32) {
    let zb = 0.5 - 0.5 * a; // exact for a >= 0.5
    let big = a > 0.5;
    let z = if big { zb } else { a * a };
    let p = horner_f32::<FMA, 6>(&ASIN_P_F32, z);
    let small = fma_f32::<FMA>(a * z, p, a);
    // fdlibm: s = hi + c with hi = s truncated to 12 bits (so hi^2 is exact
    // and zb - hi^2 is exact by Sterbenz), c = (zb - hi^2) / (s + hi).
    let s = zb.sqrt();
    let hi = f32::from_bits(s.to_bits() & 0xffff_f000);
    let c = (zb - hi * hi) / (s + hi);
    let c = if zb == 0.0 { 0.0 } else { c };
    let lo = fma_f32::<FMA>(s * z, p, c);
    (small, hi, lo)
}

/// f64 counterpart of [`asin_parts_f32`] (`hi` with 21 significant bits).
#[inline(always)]
fn asin_parts_f64<const FMA: bool>(a: f64) -> (f64, f64, f64) {
    let zb = 0.5 - 0.5 * a;
    let big = a > 0.5;
    let z = if big { zb } else { a * a };
    let p = horner_f64::<FMA, 13>(&ASIN_P_F64, z);
    let small = fma_f64::<FMA>(a * z, p, a);
    let s = zb.sqrt();
    let hi = f64::from_bits(s.to_bits() & 0xffff_ffff_0000_0000);
    let c = (zb - hi * hi) / (s + hi);
    let c = if zb == 0.0 { 0.0 } else { c };
    let lo = fma_f64::<FMA>(s * z, p, c);
    (small, hi, lo)
}

/// `asin(x)` for `f32`, max error 1.5 ulp.
///
/// NaN outside `[-1, 1]`; `asin(+-0) = +-0`.
#[inline(always)]
pub fn asin_f32<const FMA: bool>(x: f32) -> f32 {
    let a = x.abs();
    let (small, hi, lo) = asin_parts_f32::<FMA>(a);
    // asin(a) = pi/2 - 2 asin(s) = (pio2_hi - 2 hi) - (2 lo - pio2_lo).
    let big = (PIO2_HI_F32 - 2.0 * hi) - (2.0 * lo - PIO2_LO_F32);
    let r = if a > 0.5 { big } else { small };
    copysign_f32(r, x)
}

/// `asin(x)` for `f64`, within 2 ulp of `std`.
///
/// NaN outside `[-1, 1]`; `asin(+-0) = +-0`.
#[inline(always)]
pub fn asin_f64<const FMA: bool>(x: f64) -> f64 {
    let a = x.abs();
    let (small, hi, lo) = asin_parts_f64::<FMA>(a);
    let big = (PIO2_HI_F64 - 2.0 * hi) - (2.0 * lo - PIO2_LO_F64);
    let r = if a > 0.5 { big } else { small };
    copysign_f64(r, x)
}

/// `acos(x)` for `f32`, max error 1.5 ulp.
///
/// NaN outside `[-1, 1]`; `acos(1) = 0`, `acos(-1) = pi`.
#[inline(always)]
pub fn acos_f32<const FMA: bool>(x: f32) -> f32 {
    let a = x.abs();
    let (small, hi, lo) = asin_parts_f32::<FMA>(a);
    // |x| <= 0.5: pi/2 - asin(x).
    let mid = PIO2_HI_F32 - (copysign_f32(small, x) - PIO2_LO_F32);
    // x > 0.5: 2 asin(s); x < -0.5: pi - 2 asin(s).
    let pos = 2.0 * (hi + lo);
    let neg = (2.0 * PIO2_HI_F32 - 2.0 * hi) - (2.0 * lo - 2.0 * PIO2_LO_F32);
    let r = if x > 0.5 { pos } else { mid };
    if x < -0.5 { neg } else { r }
}

/// `acos(x)` for `f64`, within 2 ulp of `std`.
///
/// NaN outside `[-1, 1]`; `acos(1) = 0`, `acos(-1) = pi`.
#[inline(always)]
pub fn acos_f64<const FMA: bool>(x: f64) -> f64 {
    let a = x.abs();
    let (small, hi, lo) = asin_parts_f64::<FMA>(a);
    let mid = PIO2_HI_F64 - (copysign_f64(small, x) - PIO2_LO_F64);
    let pos = 2.0 * (hi + lo);
    let neg = (2.0 * PIO2_HI_F64 - 2.0 * hi) - (2.0 * lo - 2.0 * PIO2_LO_F64);
    let r = if x > 0.5 { pos } else { mid };
    if x < -0.5 { neg } else { r }
}

// ---------------------------------------------------------------------------
// log1p
// ---------------------------------------------------------------------------

/// `ln(1 + x)` for `f32`, max error 1.5 ulp, accurate near 0.
///
/// `log1p(-1) = -inf`, NaN below -1, `log1p(+inf) = +inf`,
/// `log1p(+-0) = +-0`.
#[inline(always)]
pub fn log1p_f32<const FMA: bool>(x: f32) -> f32 {
    let u = 1.0 + x;
    // The rounding error of 1 + x, exactly (Fast2Sum for |x| <= 1,
    // Sterbenz above; u >= 2^-24 is never subnormal).
    let c = x - (u - 1.0);
    // ln(u) as in ln_f32 (see there), plus ln(1 + x) - ln(u) ~= c / u.
    const SQRT_HALF_BITS: u32 = 0x3f35_04f3;
    let b = u.to_bits().wrapping_add(1.0f32.to_bits() - SQRT_HALF_BITS);
    let m = f32::from_bits((b & 0x007f_ffff).wrapping_add(SQRT_HALF_BITS));
    let e = f32::from_bits(0x4b00_0000 | (b >> 23)) - (8_388_608.0 + 127.0);
    let f = m - 1.0;
    let z = f * f;
    let p = horner_f32::<FMA, 9>(&super::LN_P_F32, f);
    let y = p * f * z;
    let y = fma_f32::<FMA>(e, super::LN_LN2_LO_F32, y + c / u);
    let y = fma_f32::<FMA>(-0.5, z, y);
    let r = fma_f32::<FMA>(e, super::LN_LN2_HI_F32, f + y);

    let r = if u == 0.0 { f32::NEG_INFINITY } else { r };
    let r = if x < -1.0 { f32::NAN } else { r };
    let r = if x == f32::INFINITY { x } else { r };
    // ±0 (and NaN) map to themselves.
    if x == 0.0 || x.is_nan() { x } else { r }
}

/// `ln(1 + x)` for `f64`, within 2 ulp of `std`, accurate
/// near 0.
///
/// `log1p(-1) = -inf`, NaN below -1, `log1p(+inf) = +inf`,
/// `log1p(+-0) = +-0`.
#[inline(always)]
pub fn log1p_f64<const FMA: bool>(x: f64) -> f64 {
    let u = 1.0 + x;
    let c = x - (u - 1.0);
    const SQRT_HALF_BITS: u64 = 0x3fe6_a09e_667f_3bcd;
    let b = u.to_bits().wrapping_add(1.0f64.to_bits() - SQRT_HALF_BITS);
    let m = f64::from_bits((b & 0x000f_ffff_ffff_ffff).wrapping_add(SQRT_HALF_BITS));
    let e = f64::from_bits(0x4330_0000_0000_0000 | (b >> 52)) - (4_503_599_627_370_496.0 + 1023.0);
    let f = m - 1.0;
    let z = f * f;
    let p = horner_f64::<FMA, 6>(&super::LN_P_F64, f);
    let mut q = f + super::LN_Q_F64[0];
    for &k in &super::LN_Q_F64[1..] {
        q = fma_f64::<FMA>(q, f, k);
    }
    let y = f * (z * p / q);
    let y = fma_f64::<FMA>(e, super::LN_LN2_LO_F64, y + c / u);
    let y = fma_f64::<FMA>(-0.5, z, y);
    let r = fma_f64::<FMA>(e, super::LN_LN2_HI_F64, f + y);

    let r = if u == 0.0 { f64::NEG_INFINITY } else { r };
    let r = if x < -1.0 { f64::NAN } else { r };
    let r = if x == f64::INFINITY { x } else { r };
    if x == 0.0 || x.is_nan() { x } else { r }
}

// ---------------------------------------------------------------------------
// expm1
// ---------------------------------------------------------------------------

/// `e^x - 1` for `f32`, max error 1.5 ulp, accurate near 0.
///
/// `expm1(-inf) = -1`, overflows to `+inf` above ~88.72,
/// `expm1(+-0) = +-0`.
#[inline(always)]
pub fn expm1_f32<const FMA: bool>(x: f32) -> f32 {
    // Below -18 the result rounds to -1; 89 overflows. NaN passes.
    let xc = if x > 89.0 { 89.0 } else { x };
    let xc = if xc < -18.0 { -18.0 } else { xc };
    let t = fma_f32::<FMA>(xc, c32::LOG2_E, MAGIC_F32);
    let n = t - MAGIC_F32;
    let r = fma_f32::<FMA>(-n, super::EXP_LN2_HI_F32, xc);
    let r = fma_f32::<FMA>(-n, super::EXP_LN2_LO_F32, r);
    let p = horner_f32::<FMA, 6>(&super::EXP_P_F32, r);
    let tail = p * (r * r); // e^r - 1 = r + tail
    // s = 2^n for n in [-26, 127]; n = 128 uses 2^127 and doubles the end.
    let top = n > 127.5;
    let ni = t.to_bits().wrapping_sub(MAGIC_F32.to_bits());
    let ni = if top { ni.wrapping_sub(1) } else { ni };
    let s = f32::from_bits(ni.wrapping_add(127) << 23);
    // 2^n (1 + r + tail) - 1 = (s - 1) + s r + s tail; s - 1 and s r are
    // exact and |s - 1| >= |s r| unless s = 1 (then s - 1 = 0), so Fast2Sum
    // gives their sum exactly as hi + err.
    let a = s - 1.0;
    let b = s * r;
    let hi = a + b;
    let err = b - (hi - a);
    let v = hi + fma_f32::<FMA>(s, tail, err);
    let v = if top { 2.0 * v } else { v };
    if x == 0.0 { x } else { v }
}

/// `e^x - 1` for `f64`, within 2 ulp of `std`, accurate near 0.
///
/// `expm1(-inf) = -1`, overflows to `+inf` above ~709.78,
/// `expm1(+-0) = +-0`.
#[inline(always)]
pub fn expm1_f64<const FMA: bool>(x: f64) -> f64 {
    // Below -40 the result rounds to -1; 710 overflows.
    let xc = if x > 710.0 { 710.0 } else { x };
    let xc = if xc < -40.0 { -40.0 } else { xc };
    let t = fma_f64::<FMA>(xc, c64::LOG2_E, MAGIC_F64);
    let n = t - MAGIC_F64;
    let r = fma_f64::<FMA>(-n, super::EXP_LN2_HI_F64, xc);
    let r = fma_f64::<FMA>(-n, super::EXP_LN2_LO_F64, r);
    let p = horner_f64::<FMA, 10>(&super::EXP_P_F64, r);
    let tail = p * (r * r);
    let top = n > 1023.5;
    let ni = t.to_bits().wrapping_sub(MAGIC_F64.to_bits());
    let ni = if top { ni.wrapping_sub(1) } else { ni };
    let s = f64::from_bits(ni.wrapping_add(1023) << 52);
    let a = s - 1.0;
    let b = s * r;
    let hi = a + b;
    let err = b - (hi - a);
    let v = hi + fma_f64::<FMA>(s, tail, err);
    let v = if top { 2.0 * v } else { v };
    if x == 0.0 { x } else { v }
}

// ---------------------------------------------------------------------------
// erf
// ---------------------------------------------------------------------------

// erf(x) = x + x P(x^2), P(z) = erf(sqrt z) / sqrt z - 1 for z in [0, 1]
// (fitted with the - 1 included, then 1 subtracted from the constant term
// exactly).
// ERF_P_F32: degree 6 on [1.0e-40, 1.0], max abs error of the fit 1.24e-9
const ERF_P_F32: [f32; 7] = [
    7.875875062685488e-05,
    -0.000801686428716587,
    0.005189087423433974,
    -0.026854212010626412,
    0.11283594715160218,
    -0.37612626666720334,
    0.1283791658483509,
];
// ERF_P_F64: degree 12 on [1.0e-40, 1.0], max abs error of the fit 1.3e-19
const ERF_P_F64: [f64; 13] = [
    5.957176147748911e-11,
    -1.1372848856791674e-09,
    1.4659775274047436e-08,
    -1.6350312701054695e-07,
    1.6461000484121368e-06,
    -1.4925595266831182e-05,
    0.0001205533111164271,
    -0.000854832698083379,
    0.0052239776248180145,
    -0.026866170645076792,
    0.11283791670954879,
    -0.3761263890318375,
    0.1283791670955126,
];
// erf(x) = 1 - e^{-x^2} R(x - 2.5) for x in [1, 4], R(u) = erfc(u + 2.5)
// e^{(u + 2.5)^2} for u in [-1.5, 1.5] (our fit, as above).
// ERFC_R_F32: degree 11 on [-1.5, 1.5], max abs error of the fit 9.58e-9
const ERFC_R_F32: [f32; 12] = [
    -4.123142820307557e-07,
    1.6698367593278667e-06,
    -3.834632179188718e-06,
    1.4364682373340648e-05,
    -5.932730341120816e-05,
    0.00021295046917599458,
    -0.0007333448751368135,
    0.0024659996342782436,
    -0.008001617248247285,
    0.024938198914209786,
    -0.07434734529148741,
    0.21080635774313639,
];
// Cephes ndtr.c: erfc(x) = e^{-x^2} P(x) / Q(x) for x in [1, 8], highest
// degree first, Q monic (leading 1 omitted).
const ERFC_P_F64: [f64; 9] = [
    2.46196981473530512524E-10,
    5.64189564831068821977E-1,
    7.46321056442269912687E0,
    4.86371970985681366614E1,
    1.96520832956077098242E2,
    5.26445194995477358631E2,
    9.34528527171957607540E2,
    1.02755188689515710272E3,
    5.57535335369399327526E2,
];
const ERFC_Q_F64: [f64; 8] = [
    1.32281951154744992508E1,
    8.67072140885989742329E1,
    3.54937778887819891062E2,
    9.75708501743205489753E2,
    1.82390916687909736289E3,
    2.24633760818710981792E3,
    1.65666309194161350182E3,
    5.57535340817727675546E2,
];

/// The Gauss error function for `f32`, max error 1.5 ulp.
///
/// Odd, `|erf(x)| <= 1`, `erf(+-inf) = +-1` (reached from `|x| ~= 3.92`).
#[inline(always)]
pub fn erf_f32<const FMA: bool>(x: f32) -> f32 {
    // erf(4) rounds to 1; NaN passes the clamp.
    let a = x.abs();
    let a = if a > 4.0 { 4.0 } else { a };
    let z = a * a;
    // a + a (P - 1): the exact a dominates, which halves the error
    // just below the binade boundary 0.5.
    let small = fma_f32::<FMA>(a, horner_f32::<FMA, 7>(&ERF_P_F32, z), a);
    let rr = horner_f32::<FMA, 12>(&ERFC_R_F32, a - 2.5);
    let large = 1.0 - super::exp_f32::<FMA>(-z) * rr;
    let r = if a < 1.0 { small } else { large };
    copysign_f32(r, x)
}

/// The Gauss error function for `f64`, within 2 ulp of
/// `libm::erf`.
///
/// Odd, `|erf(x)| <= 1`, `erf(+-inf) = +-1` (reached from `|x| ~= 5.92`).
#[inline(always)]
pub fn erf_f64<const FMA: bool>(x: f64) -> f64 {
    let a = x.abs();
    let a = if a > 6.0 { 6.0 } else { a };
    let z = a * a;
    // a + a (P - 1): the exact a dominates, which halves the error
    // just below the binade boundary 0.5.
    let small = fma_f64::<FMA>(a, horner_f64::<FMA, 13>(&ERF_P_F64, z), a);
    let p = horner_f64::<FMA, 9>(&ERFC_P_F64, a);
    let mut q = a + ERFC_Q_F64[0];
    for &k in &ERFC_Q_F64[1..] {
        q = fma_f64::<FMA>(q, a, k);
    }
    let large = 1.0 - super::exp_f64::<FMA>(-z) * (p / q);
    let r = if a < 1.0 { small } else { large };
    copysign_f64(r, x)
}
