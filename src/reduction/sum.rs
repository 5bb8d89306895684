//! `Sum`: `sum_j F`, a Kahan (Neumaier) compensated sum per component.
//!
//! State: the `dim` sums, then their `dim` compensations.
//!
//! # IEEE semantics
//!
//! The result is that of the exact sum in IEEE arithmetic, as a dense `sum` gives it: a row
//! with `+inf` terms (and no `-inf` nor `NaN`) sums to `+inf`, with `-inf` terms to `-inf`,
//! with both to `NaN`; a `NaN` term gives `NaN`; a sum that overflows is `+-inf`. Subnormal
//! terms are added like any other (no flush to zero). The compensation would break this: once
//! the running sum is infinite, Neumaier's correction `(s - t) + v` is `inf - inf = NaN`, and
//! the final `sum + comp` would be `NaN` in every row holding an infinity. An infinite or `NaN`
//! sum absorbs every later term, so the value of a state is the sum alone whenever that is
//! not finite: [`kahan_total`] (and `lk_kahan_total`, its C twin, in every CUDA kernel's
//! finalisation) returns it, and `sum + comp` otherwise. The rule costs nothing per term (a
//! branch in `lk_kahan_add`, run per tile, cost the CUDA Gaussian kernels a register over the
//! SASS budget). Every Sum path of the CPU backend (the family's tiles and the fused products
//! of `backend/cpu/exec.rs`) and of the CUDA kernels ends in `Sum::finalize` or its C code, so
//! none needs a rule of its own.
//!
//! Within a tile the CPU and CUDA backends add the terms in the compute type before the `f64`
//! state, so in `f32` a tile whose partial sum exceeds `f32::MAX` is `+-inf` even when later
//! terms would bring the total back into range (as a dense `f32` sum in any order would be).
//!
//! The gradient with respect to every term is the incoming gradient `G_i`, whatever the term's
//! value (infinite and `NaN` terms included): `d (sum_j F_ij) / d F_ij = 1`.

use std::fmt::Write;

use super::{CudaCode, Family, GradRule, OutputSpec, StateSpec, Tile, cuda_store};
use crate::backend::cpu::isa::Arch;
use crate::error::Result;
use crate::math::Real;

/// The family of [`super::ReductionKind::Sum`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sum;

/// Adds `v` to a Kahan (Neumaier) compensated sum held in `(sum, comp)`.
///
/// Once the sum is infinite or `NaN` the compensation may become `NaN` (`inf - inf`); the sum
/// then stays infinite or `NaN` (those values absorb every later term), and [`kahan_total`]
/// returns it without the compensation (see the [module documentation](self)).
#[inline]
pub(crate) fn kahan_add(sum: &mut f64, comp: &mut f64, v: f64) {
    let t = *sum + v;
    if sum.abs() >= v.abs() {
        *comp += (*sum - t) + v;
    } else {
        *comp += (v - t) + *sum;
    }
    *sum = t;
}

/// The value of a compensated sum: `sum + comp`, or `sum` itself when it is infinite or `NaN`
/// (the IEEE sum; the compensation is meaningless there, and may be `NaN`).
#[inline]
pub(crate) fn kahan_total(sum: f64, comp: f64) -> f64 {
    if sum.is_finite() { sum + comp } else { sum }
}

/// [`kahan_add`] and [`kahan_total`] in C.
const CUDA: &str = r"// Neumaier-compensated sum in (s, c).
__device__ __forceinline__ void lk_kahan_add(double& s, double& c, double v) {
    double t = s + v;
    if (fabs(s) >= fabs(v)) c += (s - t) + v; else c += (v - t) + s;
    s = t;
}
// Its value: s + c, or s when s is infinite or NaN (then c may be NaN: inf - inf).
__device__ __forceinline__ double lk_kahan_total(double s, double c) {
    return fabs(s) < lk_inf() ? s + c : s;
}
";

impl Family for Sum {
    fn name(&self) -> &'static str {
        "Sum"
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

    fn init(&self, _dim: usize, vals: &mut [f64], _idx: &mut [i64]) {
        vals.fill(0.0);
    }

    fn accumulate(&self, vals: &mut [f64], _idx: &mut [i64], f: &[f64], _j: i64) {
        let dim = f.len();
        for (c, &v) in f.iter().enumerate() {
            let (s, comp) = vals.split_at_mut(dim);
            kahan_add(&mut s[c], &mut comp[c], v);
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
        let (s, comp) = vals.split_at_mut(dim);
        for c in 0..dim {
            kahan_add(&mut s[c], &mut comp[c], vals2[c]);
            comp[c] += vals2[dim + c];
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
            out_vals[c] = kahan_total(vals[c], vals[dim + c]);
        }
    }

    /// The tile's sum of each component in the compute type (vectorised), added to the state.
    #[inline(always)]
    unsafe fn accumulate_tile<T: Real, A: Arch, const FMA: bool>(
        &self,
        tile: Tile<'_, T>,
        vals: &mut [f64],
        _idx: &mut [i64],
    ) {
        let (sums, comps) = vals.split_at_mut(tile.dim);
        for c in 0..tile.dim {
            // SAFETY: forwarded from the caller.
            let part = unsafe { A::sum(tile.root.slice(c, tile.valid)) };
            kahan_add(&mut sums[c], &mut comps[c], part.to_f64());
        }
    }

    fn cuda_helpers(&self) -> &'static str {
        CUDA
    }

    fn cuda_code(&self, f: usize, _tc: &str, nv: usize) -> CudaCode {
        let mut k = CudaCode::default();
        k.tile_vars.push(("tp", f));
        for c in 0..f {
            let _ = writeln!(k.init, "sv[{c}] = 0.0; sv[{}] = 0.0;", f + c);
            let _ = writeln!(k.tile_init, "tp[{c}] = 0;");
            let _ = writeln!(k.term, "tp[{c}] += f[{c}];");
            let _ = writeln!(
                k.tile_end,
                "lk_kahan_add(sv[{c}], sv[{}], (double)tp[{c}]);",
                f + c
            );
            let _ = writeln!(
                k.combine,
                "lk_kahan_add(sv[{c}], sv[{0}], sv2[{c}]); sv[{0}] += sv2[{0}];",
                f + c
            );
            k.finalize += &cuda_store(nv, c, format!("lk_kahan_total(sv[{c}], sv[{}])", f + c));
        }
        k
    }

    /// The adjoint of `F_ij` is `G_i`.
    fn grad_rule(&self) -> GradRule {
        GradRule::TermWise {
            adjoint: |_, g, _| Ok(g.clone()),
            uses_output: false,
        }
    }
}
