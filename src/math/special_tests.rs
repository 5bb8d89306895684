//! Accuracy and special-value tests of the functions in `special.rs`, with
//! the method of the parent module's tests: f32 functions against the `f64`
//! function of `std` (`libm::erf` for `erf`) at the same argument, on
//! strided sweeps over f32 bit patterns (about 300 000 points per range in
//! debug builds, every 31st or 97th pattern in release, `MATH_TEST_STRIDE`
//! overrides; the `#[ignore]`d `special_f32_exhaustive` checks every
//! pattern); f64 functions against
//! std/libm on 10^6 random arguments plus edge cases. Every test runs both
//! instantiations (`FMA = false`, and `true` when the CPU has FMA).

use super::super::SIN_COS_ACCURATE_LIMIT_F32;
use super::*;
use crate::math::tests::{
    Rng, Worst, assert_ulp, err_f32, err_f64, key, same_f32, same_f64, sin_cos_f64_inputs, unkey,
    variants,
};

// Bounds asserted (measured maxima in the module doc).
const ULP_ATAN_F32: f64 = 1.5;
const ULP_ATAN2_F32: f64 = 2.0;
const ULP_TAN_F32: f64 = 2.0;
const ULP_TANH_F32: f64 = 2.0;
const ULP_ASIN_F32: f64 = 1.5;
const ULP_ACOS_F32: f64 = 1.5;
const ULP_SINH_F32: f64 = 2.0;
const ULP_COSH_F32: f64 = 2.0;
const ULP_LOG1P_F32: f64 = 1.5;
const ULP_EXPM1_F32: f64 = 1.5;
const ULP_ERF_F32: f64 = 1.5;
/// Absolute bound, scaled by max(1, |x|), where tan misses its ulp bound
/// (for tan itself near its zeros, for 1/tan near its poles).
const ABS_TAN_F32: f64 = 1e-14;
const ULP_ATAN_F64: f64 = 2.0;
const ULP_ATAN2_F64: f64 = 2.5;
const ULP_TAN_F64: f64 = 3.0;
const ULP_TANH_F64: f64 = 2.5;
const ULP_ASIN_F64: f64 = 2.0;
const ULP_ACOS_F64: f64 = 2.0;
const ULP_SINH_F64: f64 = 2.5;
const ULP_COSH_F64: f64 = 2.5;
const ULP_LOG1P_F64: f64 = 2.0;
const ULP_EXPM1_F64: f64 = 2.0;
const ULP_ERF_F64: f64 = 2.0;
const ABS_TAN_F64: f64 = 1e-29;

/// [`variants!`] for the two-argument `atan2`.
macro_rules! variants2 {
    ($f:ident, $t:ty) => {{
        let mut v: Vec<(&'static str, Box<dyn Fn($t, $t) -> $t>)> =
            vec![("portable", Box::new(|y, x| $f::<false>(y, x)))];
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        {
            #[target_feature(enable = "fma")]
            unsafe fn fused(y: $t, x: $t) -> $t {
                $f::<true>(y, x)
            }
            if std::arch::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU has FMA, checked just above.
                v.push(("fma", Box::new(|y, x| unsafe { fused(y, x) })));
            }
        }
        #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
        v.push(("fma", Box::new(|y, x| $f::<true>(y, x))));
        v
    }};
}

/// Stride of a sweep over [lo, hi]: `MATH_TEST_STRIDE` if set; else about
/// 300 000 points per range in debug builds (each test must stay within
/// seconds there), `release` in release builds.
fn stride_for(lo: f32, hi: f32, release: u32) -> u32 {
    if let Some(s) = std::env::var("MATH_TEST_STRIDE")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return s;
    }
    if cfg!(debug_assertions) {
        ((key(hi) - key(lo)) / 300_000).max(1) as u32
    } else {
        release
    }
}

/// Calls `visit` on every `stride`-th f32 in [lo, hi] (plus hi itself).
fn for_each_f32(lo: f32, hi: f32, stride: u32, mut visit: impl FnMut(f32)) {
    let (a, b) = (key(lo), key(hi));
    let mut k = a;
    loop {
        visit(unkey(k));
        if k == b {
            break;
        }
        k = (k + stride as i64).min(b);
    }
}

/// Sweeps every `stride`-th f32 in [lo, hi].
fn sweep_f32(
    f: &dyn Fn(f32) -> f32,
    reference: fn(f64) -> f64,
    lo: f32,
    hi: f32,
    stride: u32,
    ulp_bound: f64,
) -> Worst {
    let mut w = Worst::default();
    for_each_f32(lo, hi, stride, |x| {
        w.add(x as f64, err_f32(f(x), reference(x as f64)), ulp_bound)
    });
    w
}

fn check_f64(
    f: &dyn Fn(f64) -> f64,
    reference: fn(f64) -> f64,
    xs: &[f64],
    ulp_bound: f64,
) -> Worst {
    let mut w = Worst::default();
    for &x in xs {
        w.add(x, err_f64(f(x), reference(x)), ulp_bound);
    }
    w
}

fn erf_ref(x: f64) -> f64 {
    libm::erf(x)
}

/// The instantiations of one f32 function, as made by [`variants!`].
type Fns32 = Vec<(&'static str, Box<dyn Fn(f32) -> f32>)>;
/// The instantiations of one f64 function, as made by [`variants!`].
type Fns64 = Vec<(&'static str, Box<dyn Fn(f64) -> f64>)>;

/// (argument, expected result) pairs, compared bit for bit.
type Table32 = Vec<(f32, f32)>;
/// (argument, expected result) pairs, compared bit for bit.
type Table64 = Vec<(f64, f64)>;

/// One f32 function: its reference, the sweep ranges and its bound.
type Case32 = (
    &'static str,
    Fns32,
    fn(f64) -> f64,
    &'static [(f32, f32)],
    f64,
);

/// The f32 functions with a plain ulp bound, their sweep ranges (the whole
/// line, then denser where the function has structure) and bounds.
fn cases_f32() -> Vec<Case32> {
    vec![
        (
            "atan_f32",
            variants!(atan_f32, f32),
            f64::atan,
            &[(f32::NEG_INFINITY, f32::INFINITY), (-3.0, 3.0)],
            ULP_ATAN_F32,
        ),
        (
            "tanh_f32",
            variants!(tanh_f32, f32),
            f64::tanh,
            &[(f32::NEG_INFINITY, f32::INFINITY), (-10.0, 10.0)],
            ULP_TANH_F32,
        ),
        (
            "asin_f32",
            variants!(asin_f32, f32),
            f64::asin,
            &[(-1.0, 1.0), (0.25, 1.0)],
            ULP_ASIN_F32,
        ),
        (
            "acos_f32",
            variants!(acos_f32, f32),
            f64::acos,
            &[(-1.0, 1.0), (0.25, 1.0), (-1.0, -0.25)],
            ULP_ACOS_F32,
        ),
        (
            "sinh_f32",
            variants!(sinh_f32, f32),
            f64::sinh,
            &[
                (f32::NEG_INFINITY, f32::INFINITY),
                (-5.0, 5.0),
                (88.0, 90.0),
            ],
            ULP_SINH_F32,
        ),
        (
            "cosh_f32",
            variants!(cosh_f32, f32),
            f64::cosh,
            &[
                (f32::NEG_INFINITY, f32::INFINITY),
                (-5.0, 5.0),
                (88.0, 90.0),
            ],
            ULP_COSH_F32,
        ),
        (
            "log1p_f32",
            variants!(log1p_f32, f32),
            f64::ln_1p,
            &[(-1.0, f32::INFINITY), (-0.9, 2.0)],
            ULP_LOG1P_F32,
        ),
        (
            "expm1_f32",
            variants!(expm1_f32, f32),
            f64::exp_m1,
            &[
                (f32::NEG_INFINITY, f32::INFINITY),
                (-3.0, 3.0),
                (87.0, 89.0),
            ],
            ULP_EXPM1_F32,
        ),
        (
            "erf_f32",
            variants!(erf_f32, f32),
            erf_ref,
            &[(f32::NEG_INFINITY, f32::INFINITY), (-4.5, 4.5)],
            ULP_ERF_F32,
        ),
    ]
}

/// Sweeps `tan`: the ulp bound, or near zeros / poles the absolute bound
/// (scaled by max(1, |x|)) on tan resp. 1/tan. Returns the worst ulp and
/// the worst scaled absolute error where the ulp bound is missed.
fn sweep_tan_f32(f: &dyn Fn(f32) -> f32, lo: f32, hi: f32, stride: u32) -> Worst {
    let mut w = Worst::default();
    let mut regular = Worst::default();
    for_each_f32(lo, hi, stride, |x| {
        let xd = x as f64;
        let (r, y) = (xd.tan(), f(x));
        let (u, abs) = err_f32(y, r);
        if (1e-3..1e3).contains(&r.abs()) {
            regular.add(xd, (u, abs), ULP_TAN_F32);
        }
        let scale = xd.abs().max(1.0);
        // Near a pole compare 1/y with cot x instead.
        let abs = if r.abs() > 1.0 {
            (1.0 / y as f64 - 1.0 / r).abs()
        } else {
            abs
        };
        w.add(xd, (u, abs / scale), ULP_TAN_F32);
    });
    println!("  tan_f32 on [{lo}, {hi}] where 1e-3 <= |tan x| < 1e3: {regular:?}");
    w
}

// ------------------------------------------------------------ f32 sweeps

/// Sweeps case `i` of [`cases_f32`]: the whole domain (stride 31 in
/// release), then the denser ranges (stride 97 in release).
fn sweep_case_f32(i: usize) {
    let (name, fs, reference, ranges, bound) = cases_f32().swap_remove(i);
    for (v, f) in fs {
        for (j, &(lo, hi)) in ranges.iter().enumerate() {
            let st = stride_for(lo, hi, if j == 0 { 31 } else { 97 });
            let w = sweep_f32(&*f, reference, lo, hi, st, bound);
            assert_ulp(name, v, &w, bound);
        }
    }
}

#[test]
fn atan_f32_sweep() {
    sweep_case_f32(0);
}

#[test]
fn tanh_f32_sweep() {
    sweep_case_f32(1);
}

#[test]
fn asin_f32_sweep() {
    sweep_case_f32(2);
}

#[test]
fn acos_f32_sweep() {
    sweep_case_f32(3);
}

#[test]
fn sinh_f32_sweep() {
    sweep_case_f32(4);
}

#[test]
fn cosh_f32_sweep() {
    sweep_case_f32(5);
}

#[test]
fn log1p_f32_sweep() {
    sweep_case_f32(6);
}

#[test]
fn expm1_f32_sweep() {
    sweep_case_f32(7);
}

#[test]
fn erf_f32_sweep() {
    sweep_case_f32(8);
}

#[test]
fn tan_f32_sweep() {
    let lim = SIN_COS_ACCURATE_LIMIT_F32;
    for (v, f) in variants!(tan_f32, f32) {
        for (lo, hi, st) in [(-lim, lim, 31), (-7.0, 7.0, 41)] {
            let w = sweep_tan_f32(&*f, lo, hi, stride_for(lo, hi, st));
            println!("tan_f32 [{v}]: {w:?}");
            assert!(
                w.abs_outside <= ABS_TAN_F32,
                "tan_f32 [{v}]: scaled absolute error {:e} at x = {:e}",
                w.abs_outside,
                w.abs_outside_at
            );
        }
    }
}

/// Every f32 (every one in the domain of asin/acos/log1p, |x| <= the
/// accurate limit for tan). Release build only; takes minutes:
/// `cargo test --release special_f32_exhaustive -- --ignored --nocapture`.
#[test]
#[ignore]
fn special_f32_exhaustive() {
    for (name, fs, reference, ranges, bound) in cases_f32() {
        let (lo, hi) = ranges[0];
        for (v, f) in fs {
            let w = sweep_f32(&*f, reference, lo, hi, 1, bound);
            assert_ulp(name, v, &w, bound);
        }
    }
    let lim = SIN_COS_ACCURATE_LIMIT_F32;
    for (v, f) in variants!(tan_f32, f32) {
        let w = sweep_tan_f32(&*f, -lim, lim, 1);
        println!("tan_f32 [{v}]: {w:?}");
        assert!(w.abs_outside <= ABS_TAN_F32);
    }
    for_each_f32(f32::NEG_INFINITY, f32::INFINITY, 1, check_floor_round_f32);
}

#[test]
fn atan2_f32_random() {
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let n = if cfg!(debug_assertions) {
        200_000
    } else {
        2_000_000
    };
    let pts: Vec<(f32, f32)> = (0..n)
        .map(|i| match i % 4 {
            // Random bit patterns: every magnitude, signs, infinities.
            0 => (
                f32::from_bits(
                    rng.next_u64() as u32 & 0xff80_0000 | 0x7f_ffff & rng.next_u64() as u32,
                ),
                f32::from_bits(rng.next_u64() as u32),
            ),
            1 => (rng.uniform(-1.0, 1.0) as f32, rng.uniform(-1.0, 1.0) as f32),
            2 => (
                rng.log_uniform(1e-30, 1e30) as f32,
                rng.log_uniform(1e-30, 1e30) as f32,
            ),
            _ => {
                // Nearly equal magnitudes (octant boundaries).
                let a = rng.log_uniform(1e-3, 1e3);
                (a as f32, (a * rng.uniform(0.3, 3.0)) as f32)
            }
        })
        .collect();
    for (v, f) in variants2!(atan2_f32, f32) {
        let mut w = Worst::default();
        for &(y, x) in &pts {
            w.add(
                y as f64,
                err_f32(f(y, x), (y as f64).atan2(x as f64)),
                ULP_ATAN2_F32,
            );
        }
        assert_ulp("atan2_f32", v, &w, ULP_ATAN2_F32);
    }
}

// ----------------------------------------------------------- f64 random

/// Random arguments for an f64 function: uniform on each range, plus
/// log-uniform magnitudes in [1e-300, `big`] (both signs).
fn inputs_f64(seed: u64, ranges: &[(f64, f64)], big: f64) -> Vec<f64> {
    let mut rng = Rng(seed);
    let per = 700_000 / ranges.len();
    let mut xs = Vec::with_capacity(1_000_000);
    for &(lo, hi) in ranges {
        xs.extend((0..per).map(|_| rng.uniform(lo, hi)));
    }
    xs.extend((0..300_000).map(|_| rng.log_uniform(1e-300, big)));
    xs
}

/// Checks case `only` of the f64 functions on 10^6 random arguments.
fn random_case_f64(only: usize) {
    type Case64 = (
        &'static str,
        Fns64,
        fn(f64) -> f64,
        Vec<(f64, f64)>,
        f64,
        f64,
    );
    let cases: Vec<Case64> = vec![
        (
            "atan_f64",
            variants!(atan_f64, f64),
            f64::atan,
            vec![(-3.0, 3.0), (-100.0, 100.0)],
            1e300,
            ULP_ATAN_F64,
        ),
        (
            "tanh_f64",
            variants!(tanh_f64, f64),
            f64::tanh,
            vec![(-1.0, 1.0), (-25.0, 25.0)],
            1e300,
            ULP_TANH_F64,
        ),
        (
            "asin_f64",
            variants!(asin_f64, f64),
            f64::asin,
            vec![(-1.0, 1.0), (0.4, 1.0), (-1.0, -0.95)],
            1.0,
            ULP_ASIN_F64,
        ),
        (
            "acos_f64",
            variants!(acos_f64, f64),
            f64::acos,
            vec![(-1.0, 1.0), (0.4, 1.0), (-1.0, -0.4)],
            1.0,
            ULP_ACOS_F64,
        ),
        (
            "sinh_f64",
            variants!(sinh_f64, f64),
            f64::sinh,
            vec![(-3.0, 3.0), (-712.0, 712.0)],
            1e3,
            ULP_SINH_F64,
        ),
        (
            "cosh_f64",
            variants!(cosh_f64, f64),
            f64::cosh,
            vec![(-3.0, 3.0), (-712.0, 712.0)],
            1e3,
            ULP_COSH_F64,
        ),
        (
            "log1p_f64",
            variants!(log1p_f64, f64),
            f64::ln_1p,
            vec![(-1.0, 1.0), (-1.0, 1e6), (-0.3, 0.5)],
            1e300,
            ULP_LOG1P_F64,
        ),
        (
            "expm1_f64",
            variants!(expm1_f64, f64),
            f64::exp_m1,
            vec![(-2.0, 2.0), (-50.0, 711.0), (-0.4, 0.4)],
            1e3,
            ULP_EXPM1_F64,
        ),
        (
            "erf_f64",
            variants!(erf_f64, f64),
            erf_ref,
            vec![(-1.5, 1.5), (-7.0, 7.0)],
            1e3,
            ULP_ERF_F64,
        ),
    ];
    for (i, (name, fs, reference, ranges, big, bound)) in cases.into_iter().enumerate() {
        if i != only {
            continue;
        }
        let mut xs = inputs_f64(0x9e37_79b9_7f4a_7c15 ^ i as u64, &ranges, big);
        // log1p's log-uniform inputs below -1 are NaN either way; keep
        // those in [-1, 0) by folding.
        if name == "log1p_f64" {
            for x in xs.iter_mut() {
                if *x < -1.0 {
                    *x = -1.0 / *x;
                }
            }
        }
        for (v, f) in fs {
            let w = check_f64(&*f, reference, &xs, bound);
            assert_ulp(name, v, &w, bound);
        }
    }
}

#[test]
fn atan_f64_random() {
    random_case_f64(0);
}

#[test]
fn tanh_f64_random() {
    random_case_f64(1);
}

#[test]
fn asin_f64_random() {
    random_case_f64(2);
}

#[test]
fn acos_f64_random() {
    random_case_f64(3);
}

#[test]
fn sinh_f64_random() {
    random_case_f64(4);
}

#[test]
fn cosh_f64_random() {
    random_case_f64(5);
}

#[test]
fn log1p_f64_random() {
    random_case_f64(6);
}

#[test]
fn expm1_f64_random() {
    random_case_f64(7);
}

#[test]
fn erf_f64_random() {
    random_case_f64(8);
}

#[test]
fn tan_f64_random() {
    // The arguments of the sine and cosine tests: near multiples of pi/2 are tan's zeros and
    // poles.
    let xs = sin_cos_f64_inputs();
    for (v, f) in variants!(tan_f64, f64) {
        let mut w = Worst::default();
        // Away from zeros and poles (printed for the doc's table).
        let mut regular = Worst::default();
        for &x in &xs {
            let (r, y) = (x.tan(), f(x));
            let (u, abs) = err_f64(y, r);
            if (1e-3..1e3).contains(&r.abs()) {
                regular.add(x, (u, abs), ULP_TAN_F64);
            }
            let abs = if r.abs() > 1.0 {
                (1.0 / y - 1.0 / r).abs()
            } else {
                abs
            };
            w.add(x, (u, abs / x.abs().max(1.0)), ULP_TAN_F64);
        }
        println!("tan_f64 [{v}]: {w:?}\n  where 1e-3 <= |tan x| < 1e3: {regular:?}");
        assert!(
            w.abs_outside <= ABS_TAN_F64,
            "tan_f64 [{v}]: scaled absolute error {:e} at x = {:e}",
            w.abs_outside,
            w.abs_outside_at
        );
    }
}

#[test]
fn atan2_f64_random() {
    let mut rng = Rng(0x6a09_e667_f3bc_c908);
    let mut pts: Vec<(f64, f64)> = Vec::new();
    for i in 0..1_000_000 {
        pts.push(match i % 4 {
            0 => (
                f64::from_bits(rng.next_u64()),
                f64::from_bits(rng.next_u64()),
            ),
            1 => (rng.uniform(-1.0, 1.0), rng.uniform(-1.0, 1.0)),
            2 => (
                rng.log_uniform(1e-300, 1e300),
                rng.log_uniform(1e-300, 1e300),
            ),
            _ => {
                let a = rng.log_uniform(1e-3, 1e3);
                (a, a * rng.uniform(-3.0, 3.0))
            }
        });
    }
    for (v, f) in variants2!(atan2_f64, f64) {
        let mut w = Worst::default();
        for &(y, x) in &pts {
            w.add(y, err_f64(f(y, x), y.atan2(x)), ULP_ATAN2_F64);
        }
        assert_ulp("atan2_f64", v, &w, ULP_ATAN2_F64);
    }
}

// ------------------------------------------------------- special values

#[test]
fn special_values_f32() {
    use std::f32::consts::{FRAC_PI_2, PI};
    let (inf, nan, tiny) = (f32::INFINITY, f32::NAN, f32::from_bits(1));
    let tables: Vec<(&str, Fns32, Table32)> = vec![
        (
            "atan",
            variants!(atan_f32, f32),
            vec![
                (0.0, 0.0),
                (-0.0, -0.0),
                (inf, FRAC_PI_2),
                (-inf, -FRAC_PI_2),
                (nan, nan),
                (tiny, tiny),
                (-tiny, -tiny),
            ],
        ),
        (
            "tan",
            variants!(tan_f32, f32),
            vec![
                (0.0, 0.0),
                (-0.0, -0.0),
                (inf, nan),
                (-inf, nan),
                (nan, nan),
                (tiny, tiny),
                (-tiny, -tiny),
            ],
        ),
        (
            "tanh",
            variants!(tanh_f32, f32),
            vec![
                (0.0, 0.0),
                (-0.0, -0.0),
                (inf, 1.0),
                (-inf, -1.0),
                (nan, nan),
                (tiny, tiny),
                (-tiny, -tiny),
                (20.0, 1.0),
                (f32::MAX, 1.0),
            ],
        ),
        (
            "asin",
            variants!(asin_f32, f32),
            vec![
                (0.0, 0.0),
                (-0.0, -0.0),
                (1.0, FRAC_PI_2),
                (-1.0, -FRAC_PI_2),
                (1.0000001, nan),
                (-1.0000001, nan),
                (inf, nan),
                (-inf, nan),
                (nan, nan),
                (tiny, tiny),
                (-tiny, -tiny),
            ],
        ),
        (
            "acos",
            variants!(acos_f32, f32),
            vec![
                (0.0, FRAC_PI_2),
                (-0.0, FRAC_PI_2),
                (1.0, 0.0),
                (-1.0, PI),
                (1.0000001, nan),
                (-1.0000001, nan),
                (inf, nan),
                (-inf, nan),
                (nan, nan),
                (tiny, FRAC_PI_2),
            ],
        ),
        (
            "sinh",
            variants!(sinh_f32, f32),
            vec![
                (0.0, 0.0),
                (-0.0, -0.0),
                (inf, inf),
                (-inf, -inf),
                (nan, nan),
                (tiny, tiny),
                (-tiny, -tiny),
                (90.0, inf),
                (-90.0, -inf),
                (f32::MAX, inf),
            ],
        ),
        (
            "cosh",
            variants!(cosh_f32, f32),
            vec![
                (0.0, 1.0),
                (-0.0, 1.0),
                (inf, inf),
                (-inf, inf),
                (nan, nan),
                (tiny, 1.0),
                (90.0, inf),
                (-90.0, inf),
            ],
        ),
        (
            "log1p",
            variants!(log1p_f32, f32),
            vec![
                (0.0, 0.0),
                (-0.0, -0.0),
                (-1.0, -inf),
                (-1.0000001, nan),
                (-inf, nan),
                (inf, inf),
                (nan, nan),
                (tiny, tiny),
                (-tiny, -tiny),
                (f32::MAX, f32::MAX.ln()),
            ],
        ),
        (
            "expm1",
            variants!(expm1_f32, f32),
            vec![
                (0.0, 0.0),
                (-0.0, -0.0),
                (-inf, -1.0),
                (inf, inf),
                (nan, nan),
                (tiny, tiny),
                (-tiny, -tiny),
                (-30.0, -1.0),
                (89.0, inf),
                (f32::MAX, inf),
                (-f32::MAX, -1.0),
            ],
        ),
        (
            "erf",
            variants!(erf_f32, f32),
            vec![
                (0.0, 0.0),
                (-0.0, -0.0),
                (inf, 1.0),
                (-inf, -1.0),
                (nan, nan),
                (4.0, 1.0),
                (-4.0, -1.0),
                (f32::MAX, 1.0),
            ],
        ),
    ];
    for (name, fs, table) in tables {
        for (v, f) in fs {
            for &(x, want) in &table {
                assert!(
                    same_f32(f(x), want),
                    "{name}_f32 [{v}]({x:e}) = {:e}, want {want:e}",
                    f(x)
                );
            }
        }
    }
    // |erf| <= 1 and |tanh| <= 1 everywhere (the sweeps check the rest).
    for (v, f) in variants!(erf_f32, f32) {
        for_each_f32(0.0, 10.0, 9973, |x| assert!(f(x) <= 1.0, "erf [{v}]({x})"));
    }
    // The last finite results of expm1, sinh, cosh.
    for (v, f) in variants!(expm1_f32, f32) {
        let last = 88.722_83_f32;
        assert!(
            f(last).is_finite() && f(f32::from_bits(last.to_bits() + 1)).is_infinite(),
            "expm1 [{v}]"
        );
    }
}

#[test]
fn atan2_special() {
    use std::f32::consts::{FRAC_PI_2, FRAC_PI_4, PI};
    let (inf, nan) = (f32::INFINITY, f32::NAN);
    let cases: &[(f32, f32, f32)] = &[
        (0.0, 0.0, 0.0),
        (-0.0, 0.0, -0.0),
        (0.0, -0.0, PI),
        (-0.0, -0.0, -PI),
        (0.0, -1.0, PI),
        (-0.0, -1.0, -PI),
        (0.0, 1.0, 0.0),
        (-0.0, 1.0, -0.0),
        (1.0, 0.0, FRAC_PI_2),
        (-1.0, -0.0, -FRAC_PI_2),
        (inf, inf, FRAC_PI_4),
        (-inf, inf, -FRAC_PI_4),
        (inf, -inf, 3.0 * FRAC_PI_4),
        (-inf, -inf, -3.0 * FRAC_PI_4),
        (1.0, inf, 0.0),
        (-1.0, inf, -0.0),
        (1.0, -inf, PI),
        (-1.0, -inf, -PI),
        (inf, 1.0, FRAC_PI_2),
        (-inf, -1.0, -FRAC_PI_2),
        (nan, 1.0, nan),
        (1.0, nan, nan),
        (nan, nan, nan),
        (f32::MAX, f32::MAX, FRAC_PI_4),
        (-f32::MAX, -f32::MAX, -3.0 * FRAC_PI_4),
        (f32::from_bits(1), f32::from_bits(1), FRAC_PI_4),
    ];
    for (v, f) in variants2!(atan2_f32, f32) {
        let subnormal = f(f32::from_bits(1), -f32::from_bits(3));
        assert_eq!(
            subnormal,
            1f64.atan2(-3.0) as f32,
            "atan2_f32 [{v}] subnormal"
        );
        for &(y, x, want) in cases {
            let got = f(y, x);
            let ok = same_f32(got, want) || (got - want).abs() <= 2.0 * f32::EPSILON * want.abs();
            assert!(ok, "atan2_f32 [{v}]({y:e}, {x:e}) = {got:e}, want {want:e}");
        }
    }
    for (v, f) in variants2!(atan2_f64, f64) {
        for &(y, x, _) in cases {
            let (y, x) = (y as f64, x as f64);
            let (got, want) = (f(y, x), y.atan2(x));
            let ok = same_f64(got, want) || (got - want).abs() <= 2.0 * f64::EPSILON * want.abs();
            assert!(ok, "atan2_f64 [{v}]({y:e}, {x:e}) = {got:e}, want {want:e}");
        }
        assert!(same_f64(f(f64::MAX, f64::MAX), std::f64::consts::FRAC_PI_4));
        assert!(same_f64(
            f(-5e-324, -5e-324),
            -3.0 * std::f64::consts::FRAC_PI_4
        ));
        assert!(same_f64(f(5e-324, -1.5e-323), 1f64.atan2(-3.0)));
    }
}

#[test]
fn special_values_f64() {
    use std::f64::consts::{FRAC_PI_2, FRAC_PI_4, PI};
    let (inf, nan, tiny) = (f64::INFINITY, f64::NAN, f64::from_bits(1));
    let tables: Vec<(&str, Fns64, Table64)> = vec![
        (
            "atan",
            variants!(atan_f64, f64),
            vec![
                (0.0, 0.0),
                (-0.0, -0.0),
                (inf, FRAC_PI_2),
                (-inf, -FRAC_PI_2),
                (nan, nan),
                (tiny, tiny),
                (-tiny, -tiny),
                (1.0, FRAC_PI_4),
                (-1.0, -FRAC_PI_4),
            ],
        ),
        (
            "tan",
            variants!(tan_f64, f64),
            vec![
                (0.0, 0.0),
                (-0.0, -0.0),
                (inf, nan),
                (-inf, nan),
                (nan, nan),
                (tiny, tiny),
                (-tiny, -tiny),
            ],
        ),
        (
            "tanh",
            variants!(tanh_f64, f64),
            vec![
                (0.0, 0.0),
                (-0.0, -0.0),
                (inf, 1.0),
                (-inf, -1.0),
                (nan, nan),
                (tiny, tiny),
                (-tiny, -tiny),
                (30.0, 1.0),
                (f64::MAX, 1.0),
            ],
        ),
        (
            "asin",
            variants!(asin_f64, f64),
            vec![
                (0.0, 0.0),
                (-0.0, -0.0),
                (1.0, FRAC_PI_2),
                (-1.0, -FRAC_PI_2),
                (1.0 + f64::EPSILON, nan),
                (-1.0 - f64::EPSILON, nan),
                (inf, nan),
                (-inf, nan),
                (nan, nan),
                (tiny, tiny),
                (-tiny, -tiny),
            ],
        ),
        (
            "acos",
            variants!(acos_f64, f64),
            vec![
                (0.0, FRAC_PI_2),
                (-0.0, FRAC_PI_2),
                (1.0, 0.0),
                (-1.0, PI),
                (1.0 + f64::EPSILON, nan),
                (-1.0 - f64::EPSILON, nan),
                (inf, nan),
                (-inf, nan),
                (nan, nan),
                (tiny, FRAC_PI_2),
            ],
        ),
        (
            "sinh",
            variants!(sinh_f64, f64),
            vec![
                (0.0, 0.0),
                (-0.0, -0.0),
                (inf, inf),
                (-inf, -inf),
                (nan, nan),
                (tiny, tiny),
                (-tiny, -tiny),
                (711.0, inf),
                (-711.0, -inf),
                (f64::MAX, inf),
            ],
        ),
        (
            "cosh",
            variants!(cosh_f64, f64),
            vec![
                (0.0, 1.0),
                (-0.0, 1.0),
                (inf, inf),
                (-inf, inf),
                (nan, nan),
                (tiny, 1.0),
                (711.0, inf),
                (-711.0, inf),
            ],
        ),
        (
            "log1p",
            variants!(log1p_f64, f64),
            vec![
                (0.0, 0.0),
                (-0.0, -0.0),
                (-1.0, -inf),
                (-1.0 - f64::EPSILON, nan),
                (-inf, nan),
                (inf, inf),
                (nan, nan),
                (tiny, tiny),
                (-tiny, -tiny),
                (f64::MAX, f64::MAX.ln()),
            ],
        ),
        (
            "expm1",
            variants!(expm1_f64, f64),
            vec![
                (0.0, 0.0),
                (-0.0, -0.0),
                (-inf, -1.0),
                (inf, inf),
                (nan, nan),
                (tiny, tiny),
                (-tiny, -tiny),
                (-50.0, -1.0),
                (710.0, inf),
                (f64::MAX, inf),
                (-f64::MAX, -1.0),
            ],
        ),
        (
            "erf",
            variants!(erf_f64, f64),
            vec![
                (0.0, 0.0),
                (-0.0, -0.0),
                (inf, 1.0),
                (-inf, -1.0),
                (nan, nan),
                (6.0, 1.0),
                (-6.0, -1.0),
                (f64::MAX, 1.0),
            ],
        ),
    ];
    for (name, fs, table) in tables {
        for (v, f) in fs {
            for &(x, want) in &table {
                assert!(
                    same_f64(f(x), want),
                    "{name}_f64 [{v}]({x:e}) = {:e}, want {want:e}",
                    f(x)
                );
            }
        }
    }
    for (v, f) in variants!(expm1_f64, f64) {
        let last = f64::MAX.ln();
        assert!(
            f(last).is_finite() && f(f64::from_bits(last.to_bits() + 1)).is_infinite(),
            "expm1 [{v}]"
        );
    }
    // Subnormal arguments and results of the odd functions.
    for (name, fs) in [
        ("erf", variants!(erf_f64, f64)),
        ("sinh", variants!(sinh_f64, f64)),
    ] {
        for (v, f) in fs {
            for x in [1e-310, -3e-320] {
                let want = if name == "erf" { libm::erf(x) } else { x };
                let (u, _) = err_f64(f(x), want);
                assert!(u <= 1.0, "{name} [{v}]({x:e}) off by {u} ulp");
            }
        }
    }
}

// ----------------------------------------------------------- floor/round

/// Bit-exact against std (whose `round` is C's: halves away from zero).
fn check_floor_round_f32(x: f32) {
    assert!(
        same_f32(floor_f32(x), x.floor()),
        "floor_f32({x:e}) = {:e}",
        floor_f32(x)
    );
    assert!(
        same_f32(round_f32(x), x.round()),
        "round_f32({x:e}) = {:e}",
        round_f32(x)
    );
}

#[test]
fn floor_round_f32() {
    let (inf, ninf) = (f32::INFINITY, f32::NEG_INFINITY);
    for_each_f32(ninf, inf, stride_for(ninf, inf, 31), check_floor_round_f32);
    // Denser on small magnitudes, then the halves, the floats next to
    // them and the edge 2^23 one by one.
    for_each_f32(-8.0, 8.0, stride_for(-8.0, 8.0, 31), check_floor_round_f32);
    let check = check_floor_round_f32;
    for k in -40i32..=40 {
        let h = k as f32 * 0.5;
        for x in [
            h,
            f32::from_bits(h.to_bits() + 1),
            f32::from_bits(h.to_bits().wrapping_sub(1)),
        ] {
            check(x);
        }
    }
    for e in [8_388_608.0f32, 4_194_304.0, 16_777_216.0] {
        for d in -4i32..=4 {
            let x = f32::from_bits((e.to_bits() as i32 + d) as u32);
            check(x);
            check(-x);
        }
    }
    for x in [
        0.0,
        -0.0,
        0.5,
        -0.5,
        0.49999997,
        -0.49999997,
        1.5,
        -1.5,
        2.5,
        -2.5,
        8_388_607.5,
        -8_388_607.5,
        f32::MAX,
        -f32::MAX,
        f32::from_bits(1),
        -f32::from_bits(1),
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
    ] {
        check(x);
    }
}

#[test]
fn floor_round_f64() {
    let mut rng = Rng(0x3c6e_f372_fe94_f82b);
    let check = |x: f64| {
        assert!(
            same_f64(floor_f64(x), x.floor()),
            "floor_f64({x:e}) = {:e}",
            floor_f64(x)
        );
        assert!(
            same_f64(round_f64(x), x.round()),
            "round_f64({x:e}) = {:e}",
            round_f64(x)
        );
    };
    for _ in 0..300_000 {
        check(f64::from_bits(rng.next_u64()));
        check(rng.uniform(-100.0, 100.0));
        check((rng.uniform(-1e6, 1e6)).round() * 0.5);
    }
    for e in [
        4_503_599_627_370_496.0f64,
        2_251_799_813_685_248.0,
        9_007_199_254_740_992.0,
    ] {
        for d in -4i64..=4 {
            let x = f64::from_bits((e.to_bits() as i64 + d) as u64);
            check(x);
            check(-x);
        }
    }
    for x in [
        0.0,
        -0.0,
        0.5,
        -0.5,
        0.49999999999999994,
        -0.49999999999999994,
        2.5,
        -2.5,
        4_503_599_627_370_495.5,
        f64::MAX,
        -f64::MAX,
        f64::from_bits(1),
        -f64::from_bits(1),
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
    ] {
        check(x);
    }
}

/// The odd functions are exactly odd (a check of the sign handling on a
/// sample).
#[test]
fn odd_symmetry() {
    let fs32: Vec<(&str, Fns32)> = vec![
        ("atan", variants!(atan_f32, f32)),
        ("tan", variants!(tan_f32, f32)),
        ("tanh", variants!(tanh_f32, f32)),
        ("asin", variants!(asin_f32, f32)),
        ("sinh", variants!(sinh_f32, f32)),
        ("erf", variants!(erf_f32, f32)),
    ];
    for (name, fs) in fs32 {
        for (v, f) in fs {
            for_each_f32(0.0, 100.0, 100_003, |x| {
                assert!(same_f32(f(-x), -f(x)), "{name} [{v}]({x:e}) not odd");
            });
        }
    }
}
