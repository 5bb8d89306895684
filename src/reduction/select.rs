//! `Min`, `Max`, `ArgMin`, `ArgMax`, `MinArgMin`, `MaxArgMax`: one family, the minimum or
//! maximum of each component and its index, returning the values, the indices or both.
//!
//! State: the `dim` best values, and their `dim` indices (`-1` while empty).
//!
//! The order of these reductions, and of the `K*` ones ([`super::kselect`]), is here once:
//! [`before`] in Rust and `lk_before` in C ([`CUDA`]).
//!
//! # IEEE semantics
//!
//! Infinities are ordinary values of the order: the minimum of a row holding `-inf` is `-inf`
//! at its first index, the maximum of a row holding `+inf` is `+inf`; a row of `+inf` only has
//! the minimum `+inf` at index 0 (states are told empty by their index, not their value). A
//! `NaN` comes before everything, infinities included: a row with a `NaN` term returns `NaN`
//! and the index of its first `NaN`. Dense Candle's `min`/`max` ignore `NaN` instead. The
//! gradient goes to the selected term only, whatever its value (`G_i` times the formula's
//! derivative at that pair).

use std::fmt::Write;

use super::{CudaCode, Family, GradRule, OutputSpec, ReductionKind, StateSpec, Tile, cuda_store};
use crate::backend::cpu::isa::Arch;
use crate::error::Result;
use crate::math::Real;

/// Terms tested at once by the vectorised filter of the CPU tile loops (min/max and `K*`).
pub(crate) const FILTER: usize = 64;

/// Which outputs a selection returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outputs {
    /// The selected values.
    Values = 0,
    /// Their indices.
    Indices = 1,
    /// Both.
    Both = 2,
}

impl Outputs {
    /// Whether the values are returned.
    pub(crate) fn values(self) -> bool {
        self != Outputs::Indices
    }

    /// Whether the indices are returned.
    pub(crate) fn indices(self) -> bool {
        self != Outputs::Values
    }

    /// The gradient rule of a selection: to the selected terms, none for indices only.
    pub(crate) fn grad_rule(self) -> GradRule {
        if self.values() {
            GradRule::Selected
        } else {
            GradRule::None
        }
    }
}

/// Is `x` a `NaN`?
#[inline(always)]
fn is_nan<T: PartialOrd>(x: T) -> bool {
    x.partial_cmp(&x).is_none()
}

/// Is `a` strictly before `b` in the order of minimum (`max` false) or maximum reductions?
/// A `NaN` comes first (so that it propagates), then the smaller (or larger) value. Equal
/// values are not before each other: a state keeps the earlier index on ties, since terms
/// come in increasing index order and states only take a term that is strictly before.
///
/// The C version is `lk_before` in [`CUDA`].
#[inline(always)]
pub(crate) fn before<T: PartialOrd + Copy>(max: bool, a: T, b: T) -> bool {
    (if max { a > b } else { a < b }) || (is_nan(a) && !is_nan(b))
}

/// Replaces the (value, index) pair of a minimum or maximum state by `(v, j)` when `v` comes
/// [`before`] it or the state is empty; `j` comes after the state's terms, so ties keep the
/// smaller index.
#[inline(always)]
pub(crate) fn take_if_first<T: PartialOrd + Copy>(
    max: bool,
    val: &mut T,
    idx: &mut i64,
    v: T,
    j: i64,
) {
    if before(max, v, *val) || *idx < 0 {
        *val = v;
        *idx = j;
    }
}

/// [`before`] and [`take_if_first`] in C.
pub(crate) const CUDA: &str = r"// Is a strictly before b in the order of minimum (MAX = false) or maximum reductions, NaN first?
template <bool MAX> __device__ __forceinline__ bool lk_before(double a, double b) {
    return (MAX ? a > b : a < b) || (a != a && !(b != b));
}

// Takes (v, j) into a minimum or maximum state when it comes first or the state is empty.
template <bool MAX>
__device__ __forceinline__ void lk_take_if_first(double& val, long long& idx, double v, long long j) {
    if (lk_before<MAX>(v, val) || idx < 0) { val = v; idx = j; }
}
";

/// The family of the minimum and maximum reductions.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Select {
    /// Maximum (else minimum).
    max: bool,
    /// What is returned.
    outputs: Outputs,
}

impl Select {
    /// The member of the family that computes `kind` (one of the six kinds of this file).
    #[inline(always)]
    pub(crate) fn of(kind: ReductionKind) -> Select {
        use Outputs::{Both, Indices, Values};
        let (max, outputs) = match kind {
            ReductionKind::Min => (false, Values),
            ReductionKind::Max => (true, Values),
            ReductionKind::ArgMin => (false, Indices),
            ReductionKind::ArgMax => (true, Indices),
            ReductionKind::MinArgMin => (false, Both),
            ReductionKind::MaxArgMax => (true, Both),
            _ => unreachable!("{kind:?} is not a min/max reduction"),
        };
        Select { max, outputs }
    }
}

impl Family for Select {
    fn name(&self) -> &'static str {
        [
            ["Min", "ArgMin", "MinArgMin"],
            ["Max", "ArgMax", "MaxArgMax"],
        ][self.max as usize][self.outputs as usize]
    }

    fn output_spec(&self, dim: usize) -> Result<OutputSpec> {
        let n = |on: bool| if on { dim } else { 0 };
        Ok(OutputSpec::new(
            n(self.outputs.values()),
            n(self.outputs.indices()),
            1,
            dim,
        ))
    }

    fn state_spec(&self, dim: usize) -> StateSpec {
        StateSpec {
            vals: dim,
            idx: dim,
        }
    }

    fn init(&self, _dim: usize, vals: &mut [f64], idx: &mut [i64]) {
        vals.fill(if self.max {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        });
        idx.fill(-1);
    }

    fn accumulate(&self, vals: &mut [f64], idx: &mut [i64], f: &[f64], j: i64) {
        for (c, &v) in f.iter().enumerate() {
            take_if_first(self.max, &mut vals[c], &mut idx[c], v, j);
        }
    }

    fn combine(&self, dim: usize, vals: &mut [f64], idx: &mut [i64], vals2: &[f64], idx2: &[i64]) {
        for c in 0..dim {
            if idx2[c] >= 0 {
                take_if_first(self.max, &mut vals[c], &mut idx[c], vals2[c], idx2[c]);
            }
        }
    }

    fn finalize(
        &self,
        dim: usize,
        vals: &[f64],
        idx: &[i64],
        out_vals: &mut [f64],
        out_idx: &mut [i64],
    ) {
        if self.outputs.values() {
            out_vals.copy_from_slice(&vals[..dim]);
        }
        if self.outputs.indices() {
            out_idx.copy_from_slice(&idx[..dim]);
        }
    }

    /// Per component, chunks of [`FILTER`] terms: a vectorised test skips the chunks with no
    /// term before the best so far (most of them), the others go term by term.
    #[inline(always)]
    unsafe fn accumulate_tile<T: Real, A: Arch, const FMA: bool>(
        &self,
        tile: Tile<'_, T>,
        vals: &mut [f64],
        idx: &mut [i64],
    ) {
        let max = self.max;
        for c in 0..tile.dim {
            // SAFETY (both blocks): forwarded from the caller.
            let xs = unsafe { tile.root.slice(c, tile.valid) };
            let mut best = T::from_f64(vals[c]);
            let mut bi = idx[c];
            for (q, chunk) in xs.chunks(FILTER).enumerate() {
                if bi >= 0 && !unsafe { A::any_before(chunk, best, max) } {
                    continue;
                }
                for (l, &v) in chunk.iter().enumerate() {
                    take_if_first(
                        max,
                        &mut best,
                        &mut bi,
                        v,
                        (tile.j0 + q * FILTER + l) as i64,
                    );
                }
            }
            vals[c] = best.to_f64();
            idx[c] = bi;
        }
    }

    fn cuda_helpers(&self) -> &'static str {
        CUDA
    }

    fn cuda_code(&self, f: usize, tc: &str, nv: usize) -> CudaCode {
        let max = self.max;
        let start = if max { super::CUDA_NEG_INF } else { "lk_inf()" };
        // Against the best value so far: `<=` is "not before" in the order of maxima.
        let not_before = if max { "<=" } else { ">=" };
        let mut k = CudaCode::default();
        k.tile_vars.push(("thr", f));
        for c in 0..f {
            let _ = writeln!(k.init, "sv[{c}] = {start}; si[{c}] = -1;");
            let take = format!("lk_take_if_first<{max}>(sv[{c}], si[{c}], (double)f[{c}], j);");
            super::cuda_filtered_take(&mut k, c, c, tc, not_before, &take);
            let _ = writeln!(
                k.combine,
                "if (si2[{c}] >= 0) lk_take_if_first<{max}>(sv[{c}], si[{c}], sv2[{c}], si2[{c}]);"
            );
            if self.outputs.values() {
                k.finalize += &cuda_store(nv, c, format!("sv[{c}]"));
            }
            if self.outputs.indices() {
                let _ = writeln!(k.finalize, "out_idx[(long long)i * {f} + {c}] = si[{c}];");
            }
        }
        k
    }

    fn grad_rule(&self) -> GradRule {
        self.outputs.grad_rule()
    }

    /// `Min` and `Max` run as `MinArgMin` and `MaxArgMax`, to know the selected terms.
    fn forward_for_grad(&self) -> Option<ReductionKind> {
        let both = if self.max {
            ReductionKind::MaxArgMax
        } else {
            ReductionKind::MinArgMin
        };
        (self.outputs == Outputs::Values).then_some(both)
    }
}
