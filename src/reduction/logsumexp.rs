//! `LogSumExp`: `log sum_j exp(F)`, computed stably, component by component.
//!
//! State: the `dim` running maxima `m`, then the `dim` sums `s`, the pair holding
//! `s * exp(m)`.
//!
//! # IEEE semantics
//!
//! As `log(sum(exp(F)))` in exact IEEE arithmetic, with no overflow for large finite terms: a
//! row with a `+inf` term is `+inf`; `-inf` terms add nothing (`exp(-inf) = 0`), so a row whose
//! terms are all `-inf` is `-inf` (`log 0`); a `NaN` term gives `NaN` (also beside `+inf`).
//! [`lse_merge`] never subtracts two infinite maxima: equal maxima add their sums, and a
//! `-inf` maximum with a non-`NaN` sum is the empty state.
//!
//! The gradient is `G_i exp(F_ij - out_i)` (the softmax weights): 0 for the finite and `-inf`
//! terms of a row whose output is `+inf`, `NaN` for its `+inf` terms (`exp(inf - inf)`: the
//! derivative with respect to an infinite term does not exist); `NaN` for every term of a row
//! whose terms are all `-inf` (`exp(-inf + inf)`); 0 for a `-inf` term of a row with a finite
//! output. A dense `log(sum(exp(F)))` differentiated by Candle gives the same values.

use std::fmt::Write;

use super::{CUDA_NEG_INF, CudaCode, Family, GradRule, OutputSpec, StateSpec, Tile, cuda_store};
use crate::backend::cpu::isa::Arch;
use crate::error::Result;
use crate::formula::{BinaryOp, Expr, UnaryOp};
use crate::math::Real;

/// The family of [`super::ReductionKind::LogSumExp`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct LogSumExp;

/// Merges `(m2, s2)` into a log-sum-exp state `(m, s)` holding `s * exp(m)`.
#[inline]
pub(crate) fn lse_merge(m: &mut f64, s: &mut f64, m2: f64, s2: f64) {
    if m2 == f64::NEG_INFINITY && !s2.is_nan() {
        return;
    }
    if *m == f64::NEG_INFINITY && !s.is_nan() {
        *m = m2;
        *s = s2;
        return;
    }
    if m2 > *m {
        *s = *s * (*m - m2).exp() + s2;
        *m = m2;
    } else if m2 == *m {
        *s += s2;
    } else {
        // Also the NaN path: a NaN maximum makes the sum NaN.
        *s += s2 * (m2 - *m).exp();
        if m2.is_nan() {
            *m = m2;
        }
    }
}

/// Merges the terms `xs` of one tile, whose maximum is `m`, into the log-sum-exp state
/// `(ms, ss)` (also used by the CPU backend's fused scaled-distance root).
///
/// # Safety
/// The CPU must support the instruction set `A`.
#[inline(always)]
pub(crate) unsafe fn lse_merge_tile<T: Real, A: Arch>(ms: &mut f64, ss: &mut f64, xs: &[T], m: T) {
    let (mf, s) = if m == T::NEG_INFINITY {
        return;
    } else if m == T::INFINITY {
        (f64::INFINITY, 1.0)
    } else if m.partial_cmp(&m).is_none() {
        (f64::NAN, f64::NAN)
    } else {
        // SAFETY: forwarded from the caller.
        (m.to_f64(), unsafe { A::sum_exp(xs, m) }.to_f64())
    };
    lse_merge(ms, ss, mf, s);
}

/// [`lse_merge`] in C, for the compute type (tiles) and `double` (states).
const CUDA: &str = r"// Merges (m2, s2) into the log-sum-exp state (m, s) that holds s * exp(m).
template <typename T> __device__ __forceinline__ void lk_lse_merge(T& m, T& s, T m2, T s2) {
    const T ninf = lk_neg_inf<T>();
    if (m2 == ninf && !(s2 != s2)) return;
    if (m == ninf && !(s != s)) { m = m2; s = s2; return; }
    if (m2 > m) { s = s * lk_exp(m - m2) + s2; m = m2; }
    else if (m2 == m) { s += s2; }
    else { s += s2 * lk_exp(m2 - m); if (m2 != m2) m = m2; }
}
";

impl Family for LogSumExp {
    fn name(&self) -> &'static str {
        "LogSumExp"
    }

    fn output_spec(&self, dim: usize) -> Result<OutputSpec> {
        Ok(OutputSpec::new(dim, 0, 1, dim))
    }

    fn state_spec(&self, dim: usize) -> StateSpec {
        StateSpec {
            vals: 2 * dim,
            idx: 0,
        }
    }

    fn init(&self, dim: usize, vals: &mut [f64], _idx: &mut [i64]) {
        vals[..dim].fill(f64::NEG_INFINITY);
        vals[dim..].fill(0.0);
    }

    fn accumulate(&self, vals: &mut [f64], _idx: &mut [i64], f: &[f64], _j: i64) {
        let (m, s) = vals.split_at_mut(f.len());
        for (c, &v) in f.iter().enumerate() {
            lse_merge(&mut m[c], &mut s[c], v, 1.0);
        }
    }

    fn combine(
        &self,
        dim: usize,
        vals: &mut [f64],
        _idx: &mut [i64],
        vals2: &[f64],
        _idx2: &[i64],
    ) {
        let (m, s) = vals.split_at_mut(dim);
        for c in 0..dim {
            lse_merge(&mut m[c], &mut s[c], vals2[c], vals2[dim + c]);
        }
    }

    fn finalize(
        &self,
        dim: usize,
        vals: &[f64],
        _idx: &[i64],
        out_vals: &mut [f64],
        _out_idx: &mut [i64],
    ) {
        for c in 0..dim {
            out_vals[c] = vals[c] + vals[dim + c].ln();
            if vals[c] == f64::NEG_INFINITY && !vals[dim + c].is_nan() {
                out_vals[c] = f64::NEG_INFINITY;
            }
        }
    }

    /// Per component: the tile's maximum, then the sum of `exp(x - max)` (vectorised).
    #[inline(always)]
    unsafe fn accumulate_tile<T: Real, A: Arch, const FMA: bool>(
        &self,
        tile: Tile<'_, T>,
        vals: &mut [f64],
        _idx: &mut [i64],
    ) {
        let (ms, ss) = vals.split_at_mut(tile.dim);
        for c in 0..tile.dim {
            // SAFETY: forwarded from the caller.
            let xs = unsafe { tile.root.slice(c, tile.valid) };
            let m = unsafe { A::max(xs) };
            unsafe { lse_merge_tile::<T, A>(&mut ms[c], &mut ss[c], xs, m) };
        }
    }

    fn cuda_helpers(&self) -> &'static str {
        CUDA
    }

    fn cuda_code(&self, f: usize, tc: &str, nv: usize) -> CudaCode {
        let ninf = CUDA_NEG_INF;
        let mut k = CudaCode::default();
        k.tile_vars.extend([("tm", f), ("ts", f), ("tq", f)]);
        for c in 0..f {
            let d = f + c;
            let _ = writeln!(k.init, "sv[{c}] = {ninf}; sv[{d}] = 0.0;");
            let _ = writeln!(
                k.tile_init,
                "tm[{c}] = lk_neg_inf<{tc}>(); tq[{c}] = tm[{c}]; ts[{c}] = 0;"
            );
            // Below the tile's maximum (nearly every term): `ts += exp(f - tm)`, one
            // exponential, no division, no branch. Otherwise (a new maximum, a tie,
            // infinities, NaN: the exponent is not negative) the term has added
            // `exp(min(.., 0)) = 1`, which the rare part takes back (to one rounding of
            // `ts + 1`, `ts` being at most the tile's number of terms) before the general
            // merge. In float the exponent is `f log2(e) - tq` with `tq = tm log2(e)`, one
            // fused multiply-add before the exp2 unit (its rounding of `tm log2(e)` is within
            // an ulp of the result `tm + log(ts)`).
            let (e, exp) = if tc == "float" {
                (
                    format!("fmaf(f[{c}], 1.44269504088896341f, -tq[{c}])"),
                    "lk_ex2(fminf(e, 0.0f))".to_string(),
                )
            } else {
                (
                    format!("f[{c}] - tm[{c}]"),
                    "lk_exp(fmin(e, 0.0))".to_string(),
                )
            };
            let _ = writeln!(
                k.term,
                "{{ const {tc} e = {e}; ts[{c}] += {exp}; rare = rare || !(e < ({tc})0); }}"
            );
            let _ = writeln!(
                k.term_rare,
                "if (!({e} < ({tc})0)) {{ ts[{c}] -= ({tc})1; \
                 lk_lse_merge<{tc}>(tm[{c}], ts[{c}], f[{c}], ({tc})1); \
                 tq[{c}] = tm[{c}] * ({tc})1.44269504088896341; }}"
            );
            let _ = writeln!(
                k.tile_end,
                "lk_lse_merge<double>(sv[{c}], sv[{d}], (double)tm[{c}], (double)ts[{c}]);"
            );
            let _ = writeln!(
                k.combine,
                "lk_lse_merge<double>(sv[{c}], sv[{d}], sv2[{c}], sv2[{d}]);"
            );
            let _ = writeln!(
                k.finalize,
                "{{ double r = sv[{c}] + log(sv[{d}]); \
                 if (sv[{c}] == {ninf} && !(sv[{d}] != sv[{d}])) r = {ninf}; {}}}",
                cuda_store(nv, c, "r").trim_end()
            );
        }
        k
    }

    /// `d lse_i / d F_ij = exp(F_ij - lse_i) <= 1`: the adjoint `G_i exp(F_ij - out_i)` never
    /// overflows.
    fn grad_rule(&self) -> GradRule {
        GradRule::TermWise {
            adjoint: |f, g, out| {
                let out = out.expect("LogSumExp's adjoint reads the output");
                let s = Expr::binary(BinaryOp::Sub, f, out)?;
                Expr::binary(BinaryOp::Mul, g, &Expr::unary(UnaryOp::Exp, &s))
            },
            uses_output: true,
        }
    }
}
