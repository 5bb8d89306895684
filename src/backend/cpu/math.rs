//! TEMPORARY stand-in (std scalar functions) until the vectorised math module lands.
#![allow(missing_docs)]
pub const SIN_COS_ACCURATE_LIMIT_F32: f32 = 1e30;
pub const SIN_COS_ACCURATE_LIMIT_F64: f64 = 1e300;
#[inline(always)]
pub fn fma_f32<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}
#[inline(always)]
pub fn fma_f64<const FMA: bool>(a: f64, b: f64, c: f64) -> f64 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}
#[inline(always)]
pub fn exp_f32<const FMA: bool>(x: f32) -> f32 {
    x.exp()
}
#[inline(always)]
pub fn exp_f64<const FMA: bool>(x: f64) -> f64 {
    x.exp()
}
#[inline(always)]
pub fn ln_f32<const FMA: bool>(x: f32) -> f32 {
    x.ln()
}
#[inline(always)]
pub fn ln_f64<const FMA: bool>(x: f64) -> f64 {
    x.ln()
}
#[inline(always)]
pub fn sin_f32<const FMA: bool>(x: f32) -> f32 {
    x.sin()
}
#[inline(always)]
pub fn sin_f64<const FMA: bool>(x: f64) -> f64 {
    x.sin()
}
#[inline(always)]
pub fn cos_f32<const FMA: bool>(x: f32) -> f32 {
    x.cos()
}
#[inline(always)]
pub fn cos_f64<const FMA: bool>(x: f64) -> f64 {
    x.cos()
}
