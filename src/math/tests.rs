//! Accuracy and special-value tests of the vectorisable math functions.
//!
//! f32 functions are compared with the `f64` std function evaluated at the
//! same (exactly representable) argument, which is accurate far below one
//! f32 ulp. f64 functions are compared with std (glibc: < 1 ulp), so an
//! error bound `k` vs std means a true error of at most about `k + 1`.
//! Sweeps step through f32 bit patterns with a stride (1009 in debug
//! builds to stay fast, 31 in release; `MATH_TEST_STRIDE` overrides it,
//! e.g. `MATH_TEST_STRIDE=1 cargo test --release` for an exhaustive run).
//! Every test runs both the portable (`FMA = false`) and, when the CPU has
//! FMA, the fused instantiation inside a `#[target_feature]` wrapper.

use super::*;

/// Max ulp error of exp_f32 and ln_f32 (measured: 1.01).
const ULP_F32: f64 = 1.5;
/// Max ulp distance of exp_f64 and ln_f64 from std (measured: 1.0).
const ULP_F64_VS_STD: f64 = 2.0;

/// (name, function) for each instantiation of `$f` the machine can run.
macro_rules! variants {
    ($f:ident, $t:ty) => {{
        let mut v: Vec<(&'static str, Box<dyn Fn($t) -> $t>)> =
            vec![("portable", Box::new(|x| $f::<false>(x)))];
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        {
            #[target_feature(enable = "fma")]
            unsafe fn fused(x: $t) -> $t {
                $f::<true>(x)
            }
            if std::arch::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU has FMA, checked just above.
                v.push(("fma", Box::new(|x| unsafe { fused(x) })));
            }
        }
        #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
        v.push(("fma", Box::new(|x| $f::<true>(x))));
        v
    }};
}
pub(super) use variants;

fn stride() -> u32 {
    std::env::var("MATH_TEST_STRIDE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) { 1009 } else { 31 })
}

/// Small xorshift64* generator: deterministic, no dependency.
pub(super) struct Rng(pub(super) u64);
impl Rng {
    pub(super) fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [0, 1).
    pub(super) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    pub(super) fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
    /// Random sign, magnitude log-uniform in [lo, hi].
    pub(super) fn log_uniform(&mut self, lo: f64, hi: f64) -> f64 {
        let m = (lo.ln() + (hi.ln() - lo.ln()) * self.unit()).exp();
        if self.next_u64() & 1 == 0 { m } else { -m }
    }
}

/// 2^k for k in [-1074, 1023], exactly (`powi` underflows to 0 for the
/// subnormal powers).
pub(super) fn pow2(k: i32) -> f64 {
    if k >= -1022 {
        f64::from_bits(((k + 1023) as u64) << 52)
    } else {
        f64::from_bits(1u64 << (k + 1074))
    }
}

/// Binary exponent of a finite, nonzero f64.
pub(super) fn exponent(a: f64) -> i32 {
    ((a.abs().to_bits() >> 52) & 0x7ff) as i32 - 1023
}

/// One f32 ulp at the magnitude of `r` (subnormal spacing below
/// MIN_POSITIVE).
pub(super) fn ulp_f32_at(r: f64) -> f64 {
    pow2(exponent(r).max(-126) - 23)
}

/// One f64 ulp at the magnitude of `r`.
pub(super) fn ulp_f64_at(r: f64) -> f64 {
    if r.abs() < f64::MIN_POSITIVE {
        return pow2(-1074);
    }
    pow2(exponent(r) - 52)
}

/// (ulp error, absolute error) of f32 `y` against the f64 reference `r`;
/// infinite when exactly one side is NaN or infinite.
pub(super) fn err_f32(y: f32, r: f64) -> (f64, f64) {
    let r32 = r as f32;
    if y.is_nan() || r32.is_nan() || y.is_infinite() || r32.is_infinite() {
        let same = (y.is_nan() && r32.is_nan()) || y == r32;
        return if same {
            (0.0, 0.0)
        } else {
            (f64::INFINITY, f64::INFINITY)
        };
    }
    let d = (y as f64 - r).abs();
    (d / ulp_f32_at(r), d)
}

pub(super) fn err_f64(y: f64, r: f64) -> (f64, f64) {
    if y.is_nan() || r.is_nan() || y.is_infinite() || r.is_infinite() {
        let same = (y.is_nan() && r.is_nan()) || y == r;
        return if same {
            (0.0, 0.0)
        } else {
            (f64::INFINITY, f64::INFINITY)
        };
    }
    let d = (y - r).abs();
    (d / ulp_f64_at(r), d)
}

/// Maps f32 to an integer that is monotone in the float's value.
pub(super) fn key(x: f32) -> i64 {
    let b = x.to_bits();
    if b >> 31 == 1 {
        -((b & 0x7fff_ffff) as i64)
    } else {
        b as i64
    }
}

pub(super) fn unkey(k: i64) -> f32 {
    if k < 0 {
        -f32::from_bits((-k) as u32)
    } else {
        f32::from_bits(k as u32)
    }
}

/// Worst case found by a sweep.
#[derive(Debug, Default)]
pub(super) struct Worst {
    pub(super) ulp: f64,
    pub(super) ulp_at: f64,
    /// Largest absolute error among points that miss the ulp bound.
    pub(super) abs_outside: f64,
    pub(super) abs_outside_at: f64,
    pub(super) count: u64,
}

impl Worst {
    pub(super) fn add(&mut self, x: f64, (ulp, abs): (f64, f64), ulp_bound: f64) {
        self.count += 1;
        if ulp > self.ulp || ulp.is_nan() {
            self.ulp = ulp;
            self.ulp_at = x;
        }
        let misses = ulp.is_nan() || ulp > ulp_bound;
        if misses && (abs.is_nan() || abs > self.abs_outside) {
            self.abs_outside = abs;
            self.abs_outside_at = x;
        }
    }
}

/// Sweeps every `stride`-th f32 in [lo, hi] (plus hi itself).
fn sweep_f32(
    f: &dyn Fn(f32) -> f32,
    reference: fn(f64) -> f64,
    lo: f32,
    hi: f32,
    stride: u32,
    ulp_bound: f64,
) -> Worst {
    let mut w = Worst::default();
    let (a, b) = (key(lo), key(hi));
    let mut k = a;
    loop {
        let x = unkey(k);
        w.add(x as f64, err_f32(f(x), reference(x as f64)), ulp_bound);
        if k == b {
            break;
        }
        k = (k + stride as i64).min(b);
    }
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

pub(super) fn assert_ulp(name: &str, variant: &str, w: &Worst, bound: f64) {
    println!("{name} [{variant}]: {w:?}");
    assert!(
        w.ulp <= bound,
        "{name} [{variant}]: {} ulp at x = {:e} (bound {bound})",
        w.ulp,
        w.ulp_at
    );
}

/// Points that miss `ulp_bound` must still be within `abs_bound`.
fn assert_ulp_or_abs(name: &str, variant: &str, w: &Worst, ulp_bound: f64, abs_bound: f64) {
    println!("{name} [{variant}]: {w:?}");
    assert!(
        w.abs_outside <= abs_bound,
        "{name} [{variant}]: absolute error {:e} at x = {:e} where the ulp error \
         exceeds {ulp_bound} (bound {abs_bound:e})",
        w.abs_outside,
        w.abs_outside_at
    );
}

pub(super) fn same_f32(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

pub(super) fn same_f64(a: f64, b: f64) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

// ----------------------------------------------------------------- exp

#[test]
fn exp_f32_sweep() {
    let s = stride();
    for (v, f) in variants!(exp_f32, f32) {
        // Normal results: the whole range the brief asks for.
        let w = sweep_f32(&*f, f64::exp, -87.3, 88.7, s, ULP_F32);
        assert_ulp("exp_f32", v, &w, ULP_F32);
        // Overflow, underflow and subnormal results, densely.
        let w = sweep_f32(&*f, f64::exp, 88.0, 89.5, s.min(3), ULP_F32);
        assert_ulp("exp_f32 overflow", v, &w, ULP_F32);
        let w = sweep_f32(&*f, f64::exp, -105.0, -87.0, s.min(29), ULP_F32);
        assert_ulp("exp_f32 subnormal", v, &w, ULP_F32);
    }
}

#[test]
fn exp_f32_special() {
    for (v, f) in variants!(exp_f32, f32) {
        let cases: [(f32, f32); 10] = [
            (0.0, 1.0),
            (-0.0, 1.0),
            (f32::INFINITY, f32::INFINITY),
            (f32::NEG_INFINITY, 0.0),
            (f32::NAN, f32::NAN),
            (f32::MAX, f32::INFINITY),
            (-f32::MAX, 0.0),
            (f32::from_bits(1), 1.0),
            (1e-30, 1.0),
            (-1e-30, 1.0),
        ];
        for (x, want) in cases {
            assert!(same_f32(f(x), want), "exp_f32 [{v}]({x:e}) = {:e}", f(x));
        }
        // Last finite / first overflowing argument and the smallest
        // subnormal result.
        let last = 88.722_83_f32;
        assert!(f(last).is_finite() && f(f32::from_bits(last.to_bits() + 1)).is_infinite());
        assert_eq!(f(-103.28).to_bits(), 1, "exp_f32 [{v}](-103.28)");
        assert_eq!(f(-104.0), 0.0);
    }
}

#[test]
fn exp_f64_random() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut xs: Vec<f64> = (0..600_000).map(|_| rng.uniform(-746.0, 710.0)).collect();
    xs.extend((0..300_000).map(|_| rng.log_uniform(1e-20, 746.0)));
    xs.extend((0..50_000).map(|_| rng.uniform(709.0, 710.0)));
    xs.extend((0..50_000).map(|_| rng.uniform(-746.0, -707.0)));
    for (v, f) in variants!(exp_f64, f64) {
        let w = check_f64(&*f, f64::exp, &xs, ULP_F64_VS_STD);
        assert_ulp("exp_f64", v, &w, ULP_F64_VS_STD);
    }
}

#[test]
fn exp_f64_special() {
    for (v, f) in variants!(exp_f64, f64) {
        let cases: [(f64, f64); 10] = [
            (0.0, 1.0),
            (-0.0, 1.0),
            (f64::INFINITY, f64::INFINITY),
            (f64::NEG_INFINITY, 0.0),
            (f64::NAN, f64::NAN),
            (f64::MAX, f64::INFINITY),
            (-f64::MAX, 0.0),
            (f64::from_bits(1), 1.0),
            (1e-300, 1.0),
            (-1e-300, 1.0),
        ];
        for (x, want) in cases {
            assert!(same_f64(f(x), want), "exp_f64 [{v}]({x:e}) = {:e}", f(x));
        }
        let last = f64::MAX.ln();
        assert!(f(last).is_finite() && f(f64::from_bits(last.to_bits() + 1)).is_infinite());
        assert_eq!(f(-745.13).to_bits(), 1);
        assert_eq!(f(-745.14), 0.0);
        // Subnormal results are accurate too.
        for x in [-708.5, -720.0, -740.0, -744.9] {
            let (u, _) = err_f64(f(x), x.exp());
            assert!(u <= ULP_F64_VS_STD, "exp_f64 [{v}]({x}) off by {u} ulp");
        }
    }
}

// ------------------------------------------------------------------ ln

#[test]
fn ln_f32_sweep() {
    let s = stride();
    for (v, f) in variants!(ln_f32, f32) {
        // All positive finite floats, subnormals included.
        let w = sweep_f32(&*f, f64::ln, f32::from_bits(1), f32::MAX, s, ULP_F32);
        assert_ulp("ln_f32", v, &w, ULP_F32);
        // Dense around 1, where the result is small.
        let w = sweep_f32(&*f, f64::ln, 0.7, 1.5, s.min(17), ULP_F32);
        assert_ulp("ln_f32 near 1", v, &w, ULP_F32);
    }
}

#[test]
fn ln_f32_special() {
    for (v, f) in variants!(ln_f32, f32) {
        let cases: [(f32, f32); 8] = [
            (0.0, f32::NEG_INFINITY),
            (-0.0, f32::NEG_INFINITY),
            (-1.0, f32::NAN),
            (-f32::from_bits(1), f32::NAN),
            (f32::NEG_INFINITY, f32::NAN),
            (f32::INFINITY, f32::INFINITY),
            (f32::NAN, f32::NAN),
            (1.0, 0.0),
        ];
        for (x, want) in cases {
            assert!(same_f32(f(x), want), "ln_f32 [{v}]({x:e}) = {:e}", f(x));
        }
        for x in [f32::from_bits(1), f32::MIN_POSITIVE, f32::MAX, f32::EPSILON] {
            let (u, _) = err_f32(f(x), (x as f64).ln());
            assert!(u <= ULP_F32, "ln_f32 [{v}]({x:e}) off by {u} ulp");
        }
    }
}

#[test]
fn ln_f64_random() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    // Random bit patterns cover every binade, subnormals included.
    let mut xs: Vec<f64> = (0..700_000)
        .map(|_| f64::from_bits(rng.next_u64() % f64::MAX.to_bits() + 1))
        .collect();
    xs.extend((0..300_000).map(|_| rng.uniform(0.5, 2.0)));
    for (v, f) in variants!(ln_f64, f64) {
        let w = check_f64(&*f, f64::ln, &xs, ULP_F64_VS_STD);
        assert_ulp("ln_f64", v, &w, ULP_F64_VS_STD);
    }
}

#[test]
fn ln_f64_special() {
    for (v, f) in variants!(ln_f64, f64) {
        let cases: [(f64, f64); 8] = [
            (0.0, f64::NEG_INFINITY),
            (-0.0, f64::NEG_INFINITY),
            (-1.0, f64::NAN),
            (-f64::from_bits(1), f64::NAN),
            (f64::NEG_INFINITY, f64::NAN),
            (f64::INFINITY, f64::INFINITY),
            (f64::NAN, f64::NAN),
            (1.0, 0.0),
        ];
        for (x, want) in cases {
            assert!(same_f64(f(x), want), "ln_f64 [{v}]({x:e}) = {:e}", f(x));
        }
        for x in [
            f64::from_bits(1),
            f64::MIN_POSITIVE,
            f64::MAX,
            f64::EPSILON,
            1.0 + f64::EPSILON,
        ] {
            let (u, _) = err_f64(f(x), x.ln());
            assert!(u <= ULP_F64_VS_STD, "ln_f64 [{v}]({x:e}) off by {u} ulp");
        }
    }
}

// ------------------------------------------------------------- sin/cos

/// sin/cos: ulp bounds, and the bound on |error| / max(1, |x|) that
/// applies instead where the ulp bound is missed (only within about
/// 1e-4 (f32) or 1e-13 (f64) of a zero of the function).
const ULP_SIN_COS_F32: f64 = 2.0;
const ABS_BOUND_F32: f64 = 1e-14;
const ULP_SIN_COS_F64_VS_STD: f64 = 3.0;
const ABS_BOUND_F64: f64 = 1e-29;

fn sweep_sin_cos_f32(
    f: &dyn Fn(f32) -> f32,
    reference: impl Fn(f64) -> (f64, f64),
    lo: f32,
    hi: f32,
    stride: u32,
) -> Worst {
    let mut w = Worst::default();
    let (a, b) = (key(lo), key(hi));
    let mut k = a;
    loop {
        let x = unkey(k);
        let (r, scale) = reference(x as f64);
        let (u, abs) = err_f32(f(x), r);
        w.add(x as f64, (u, abs / scale), ULP_SIN_COS_F32);
        if k == b {
            break;
        }
        k = (k + stride as i64).min(b);
    }
    w
}

#[test]
fn sin_cos_f32_sweep() {
    let s = stride();
    let lim = SIN_COS_ACCURATE_LIMIT_F32;
    for (name, fs, reference) in [
        (
            "sin_f32",
            variants!(sin_f32, f32),
            f64::sin as fn(f64) -> f64,
        ),
        (
            "cos_f32",
            variants!(cos_f32, f32),
            f64::cos as fn(f64) -> f64,
        ),
    ] {
        // The absolute error is scaled by max(1, |x|), as in the f64 test.
        let scaled = move |x: f64| (reference(x), x.abs().max(1.0));
        for (v, f) in fs {
            let w = sweep_sin_cos_f32(&*f, scaled, -lim, lim, s);
            assert_ulp_or_abs(name, v, &w, ULP_SIN_COS_F32, ABS_BOUND_F32);
            // Denser on the first periods (the full sweep above spends
            // most of its points on tiny arguments).
            let w = sweep_sin_cos_f32(&*f, scaled, 0.5, 7.0, s.min(41));
            assert_ulp_or_abs(name, v, &w, ULP_SIN_COS_F32, ABS_BOUND_F32);
        }
    }
}

#[test]
fn sin_cos_f32_special() {
    for (v, f) in variants!(sin_f32, f32) {
        for (x, want) in [
            (0.0, 0.0),
            (-0.0, -0.0),
            (f32::INFINITY, f32::NAN),
            (f32::NEG_INFINITY, f32::NAN),
            (f32::NAN, f32::NAN),
            (f32::from_bits(1), f32::from_bits(1)),
            (-f32::from_bits(1), -f32::from_bits(1)),
            (1e-20, 1e-20),
        ] {
            assert!(same_f32(f(x), want), "sin_f32 [{v}]({x:e}) = {:e}", f(x));
        }
    }
    for (v, f) in variants!(cos_f32, f32) {
        for (x, want) in [
            (0.0, 1.0),
            (-0.0, 1.0),
            (f32::INFINITY, f32::NAN),
            (f32::NEG_INFINITY, f32::NAN),
            (f32::NAN, f32::NAN),
            (f32::from_bits(1), 1.0),
        ] {
            assert!(same_f32(f(x), want), "cos_f32 [{v}]({x:e}) = {:e}", f(x));
        }
    }
}

/// Uniform, log-uniform and near-multiples-of-pi/2 arguments within the
/// accurate range.
pub(super) fn sin_cos_f64_inputs() -> Vec<f64> {
    let lim = SIN_COS_ACCURATE_LIMIT_F64;
    let mut rng = Rng(0xd1b5_4a32_d192_ed03);
    let mut xs: Vec<f64> = (0..300_000).map(|_| rng.uniform(-lim, lim)).collect();
    xs.extend((0..300_000).map(|_| rng.log_uniform(1e-300, lim)));
    xs.extend((0..200_000).map(|_| rng.uniform(-10.0, 10.0)));
    // Close to, and as close as f64 gets to, zeros and extrema.
    xs.extend((0..100_000).map(|_| {
        let k = (rng.log_uniform(1.0, lim / 1.6)).round();
        k * std::f64::consts::FRAC_PI_2 + rng.uniform(-1e-6, 1e-6) * k.abs()
    }));
    xs.extend(
        (0..100_000)
            .map(|_| (rng.log_uniform(1.0, lim / 1.6)).round() * std::f64::consts::FRAC_PI_2),
    );
    xs
}

#[test]
fn sin_cos_f64_random() {
    let xs = sin_cos_f64_inputs();
    for (name, fs, reference) in [
        (
            "sin_f64",
            variants!(sin_f64, f64),
            f64::sin as fn(f64) -> f64,
        ),
        (
            "cos_f64",
            variants!(cos_f64, f64),
            f64::cos as fn(f64) -> f64,
        ),
    ] {
        for (v, f) in fs {
            let mut w = Worst::default();
            for &x in &xs {
                let (u, abs) = err_f64(f(x), reference(x));
                // Scale the absolute error so one bound covers all |x|.
                w.add(x, (u, abs / x.abs().max(1.0)), ULP_SIN_COS_F64_VS_STD);
            }
            assert_ulp_or_abs(name, v, &w, ULP_SIN_COS_F64_VS_STD, ABS_BOUND_F64);
        }
    }
}

#[test]
fn sin_cos_f64_special() {
    for (v, f) in variants!(sin_f64, f64) {
        for (x, want) in [
            (0.0, 0.0),
            (-0.0, -0.0),
            (f64::INFINITY, f64::NAN),
            (f64::NEG_INFINITY, f64::NAN),
            (f64::NAN, f64::NAN),
            (f64::from_bits(1), f64::from_bits(1)),
            (-f64::from_bits(1), -f64::from_bits(1)),
            (1e-200, 1e-200),
        ] {
            assert!(same_f64(f(x), want), "sin_f64 [{v}]({x:e}) = {:e}", f(x));
        }
    }
    for (v, f) in variants!(cos_f64, f64) {
        for (x, want) in [
            (0.0, 1.0),
            (-0.0, 1.0),
            (f64::INFINITY, f64::NAN),
            (f64::NEG_INFINITY, f64::NAN),
            (f64::NAN, f64::NAN),
            (f64::from_bits(1), 1.0),
        ] {
            assert!(same_f64(f(x), want), "cos_f64 [{v}]({x:e}) = {:e}", f(x));
        }
    }
}
