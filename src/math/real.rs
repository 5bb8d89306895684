//! The compute types (`f32`, `f64`) behind one trait.
//!
//! Formula semantics ([`crate::formula::ops`]) and the tile kernels are written once, generic
//! over [`Real`]; transcendental functions dispatch to the branchless implementations of
//! [`crate::math`], with the FMA choice as a const generic (fast only inside code compiled
//! with FMA enabled, see `backend::cpu::isa`).

use std::fmt::Debug;
use std::ops::{Add, AddAssign, Div, Mul, Neg, Sub};

use super as math;

/// A floating-point compute type of the CPU backend.
pub trait Real:
    Copy
    + Send
    + Sync
    + Debug
    + Default
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + 'static
{
    /// 0.
    const ZERO: Self;
    /// 1.
    const ONE: Self;
    /// +infinity.
    const INFINITY: Self;
    /// -infinity.
    const NEG_INFINITY: Self;
    /// Beyond this magnitude the vectorised sine and cosine lose accuracy; larger arguments
    /// are recomputed with the standard library.
    const TRIG_LIMIT: Self;
    /// Conversion from `f64` (rounding).
    fn from_f64(v: f64) -> Self;
    /// Conversion to `f64` (exact).
    fn to_f64(self) -> f64;
    /// `exp`, vectorisable.
    fn exp<const FMA: bool>(self) -> Self;
    /// Natural logarithm, vectorisable.
    fn ln<const FMA: bool>(self) -> Self;
    /// Sine, vectorisable, accurate for `|x| <= TRIG_LIMIT`.
    fn sin<const FMA: bool>(self) -> Self;
    /// Cosine, vectorisable, accurate for `|x| <= TRIG_LIMIT`.
    fn cos<const FMA: bool>(self) -> Self;
    /// Sine from the standard library (any argument).
    fn sin_std(self) -> Self;
    /// Cosine from the standard library (any argument).
    fn cos_std(self) -> Self;
    /// Square root (a hardware instruction).
    fn sqrt(self) -> Self;
    /// Absolute value.
    fn abs(self) -> Self;
    /// `a * b + c`, fused when `FMA`.
    fn fma<const FMA: bool>(a: Self, b: Self, c: Self) -> Self;
    /// Arctangent, vectorisable.
    fn atan<const FMA: bool>(self) -> Self;
    /// `atan2(self, x)`: the angle of the point `(x, self)`, in `[-pi, pi]`, vectorisable.
    fn atan2<const FMA: bool>(self, x: Self) -> Self;
    /// Tangent, vectorisable, accurate for `|x| <= TRIG_LIMIT`.
    fn tan<const FMA: bool>(self) -> Self;
    /// Tangent from the standard library (any argument).
    fn tan_std(self) -> Self;
    /// Hyperbolic tangent, vectorisable.
    fn tanh<const FMA: bool>(self) -> Self;
    /// Arcsine (`NaN` outside `[-1, 1]`), vectorisable.
    fn asin<const FMA: bool>(self) -> Self;
    /// Arccosine (`NaN` outside `[-1, 1]`), vectorisable.
    fn acos<const FMA: bool>(self) -> Self;
    /// Hyperbolic sine, vectorisable.
    fn sinh<const FMA: bool>(self) -> Self;
    /// Hyperbolic cosine, vectorisable.
    fn cosh<const FMA: bool>(self) -> Self;
    /// `ln(1 + x)`, accurate near 0, vectorisable.
    fn ln_1p<const FMA: bool>(self) -> Self;
    /// `exp(x) - 1`, accurate near 0, vectorisable.
    fn exp_m1<const FMA: bool>(self) -> Self;
    /// The Gauss error function, vectorisable.
    fn erf<const FMA: bool>(self) -> Self;
    /// The largest integer not above `x`, vectorisable.
    fn floor(self) -> Self;
    /// The nearest integer, halves away from zero (C's `round`), vectorisable.
    fn round(self) -> Self;
}

macro_rules! impl_real {
    (
        $t:ty, $exp:ident, $ln:ident, $sin:ident, $cos:ident, $fma:ident, $limit:expr,
        special: $atan:ident, $atan2:ident, $tan:ident, $tanh:ident, $asin:ident, $acos:ident,
        $sinh:ident, $cosh:ident, $log1p:ident, $expm1:ident, $erf:ident, $floor:ident,
        $round:ident
    ) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const INFINITY: Self = <$t>::INFINITY;
            const NEG_INFINITY: Self = <$t>::NEG_INFINITY;
            const TRIG_LIMIT: Self = $limit;
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn exp<const FMA: bool>(self) -> Self {
                math::$exp::<FMA>(self)
            }
            #[inline(always)]
            fn ln<const FMA: bool>(self) -> Self {
                math::$ln::<FMA>(self)
            }
            #[inline(always)]
            fn sin<const FMA: bool>(self) -> Self {
                math::$sin::<FMA>(self)
            }
            #[inline(always)]
            fn cos<const FMA: bool>(self) -> Self {
                math::$cos::<FMA>(self)
            }
            #[inline(always)]
            fn sin_std(self) -> Self {
                <$t>::sin(self)
            }
            #[inline(always)]
            fn cos_std(self) -> Self {
                <$t>::cos(self)
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            #[inline(always)]
            fn fma<const FMA: bool>(a: Self, b: Self, c: Self) -> Self {
                math::$fma::<FMA>(a, b, c)
            }
            #[inline(always)]
            fn atan<const FMA: bool>(self) -> Self {
                math::special::$atan::<FMA>(self)
            }
            #[inline(always)]
            fn atan2<const FMA: bool>(self, x: Self) -> Self {
                math::special::$atan2::<FMA>(self, x)
            }
            #[inline(always)]
            fn tan<const FMA: bool>(self) -> Self {
                math::special::$tan::<FMA>(self)
            }
            #[inline(always)]
            fn tan_std(self) -> Self {
                <$t>::tan(self)
            }
            #[inline(always)]
            fn tanh<const FMA: bool>(self) -> Self {
                math::special::$tanh::<FMA>(self)
            }
            #[inline(always)]
            fn asin<const FMA: bool>(self) -> Self {
                math::special::$asin::<FMA>(self)
            }
            #[inline(always)]
            fn acos<const FMA: bool>(self) -> Self {
                math::special::$acos::<FMA>(self)
            }
            #[inline(always)]
            fn sinh<const FMA: bool>(self) -> Self {
                math::special::$sinh::<FMA>(self)
            }
            #[inline(always)]
            fn cosh<const FMA: bool>(self) -> Self {
                math::special::$cosh::<FMA>(self)
            }
            #[inline(always)]
            fn ln_1p<const FMA: bool>(self) -> Self {
                math::special::$log1p::<FMA>(self)
            }
            #[inline(always)]
            fn exp_m1<const FMA: bool>(self) -> Self {
                math::special::$expm1::<FMA>(self)
            }
            #[inline(always)]
            fn erf<const FMA: bool>(self) -> Self {
                math::special::$erf::<FMA>(self)
            }
            #[inline(always)]
            fn floor(self) -> Self {
                math::special::$floor(self)
            }
            #[inline(always)]
            fn round(self) -> Self {
                math::special::$round(self)
            }
        }
    };
}

impl_real!(
    f32,
    exp_f32,
    ln_f32,
    sin_f32,
    cos_f32,
    fma_f32,
    math::SIN_COS_ACCURATE_LIMIT_F32,
    special: atan_f32,
    atan2_f32,
    tan_f32,
    tanh_f32,
    asin_f32,
    acos_f32,
    sinh_f32,
    cosh_f32,
    log1p_f32,
    expm1_f32,
    erf_f32,
    floor_f32,
    round_f32
);
impl_real!(
    f64,
    exp_f64,
    ln_f64,
    sin_f64,
    cos_f64,
    fma_f64,
    math::SIN_COS_ACCURATE_LIMIT_F64,
    special: atan_f64,
    atan2_f64,
    tan_f64,
    tanh_f64,
    asin_f64,
    acos_f64,
    sinh_f64,
    cosh_f64,
    log1p_f64,
    expm1_f64,
    erf_f64,
    floor_f64,
    round_f64
);
