//! `SumSoftMaxWeight`: `sum_j exp(F) G / sum_j exp(F)` for the formula `Concat(F, G)` with `F`
//! of one component.
//!
//! State (`dim + 1` values): the running maximum `m` of `F`, the sum of `exp(F - m)`, then the
//! `dim - 1` sums of `G` weighted by `exp(F - m)`.
//!
//! # IEEE semantics
//!
//! The weights `exp(F_j) / sum_j exp(F_j)` are those of the limit, defined whatever the
//! infinities (a dense `softmax(F) G` computes `inf / inf` or `0 / 0` and returns `NaN`):
//!
//! - a term with `F = -inf` weighs exactly 0: its `G` contributes `0 * G` (0, or `NaN` when
//!   that `G` is infinite or `NaN`, as in a dense product of the weights with `G`);
//! - when some terms have `F = +inf`, they share the weight equally and every other term
//!   weighs 0: the result is the mean of their `G` (the limit as those scores grow together);
//! - a row whose terms all have `F = -inf` (a fully masked row) returns 0 in every output
//!   component, the convention of FlashAttention, rather than `0 / 0 = NaN`;
//! - a `NaN` score gives `NaN` in every output component of its row.
//!
//! The merge of two states rescales each by `exp(m_old - m_new)`, which is `exp(inf - inf) =
//! NaN` when the new maximum is `+inf`: [`scale`] (and `lk_ssmw_merge` in C) takes that factor
//! as 1 when the two maxima are equal, 0 when the old one is `-inf`.
//!
//! Gradients (the rule of `op/backward.rs`, with the weights `s_ij = exp(S_ij - lse_i)`
//! recomputed from the scores' log-sum-exp): a term with `S = -inf` in a row with a finite
//! maximum gets 0 for `S` and `V`; a fully masked row, whose output is the constant 0, gets 0
//! for `S` and `V`; in a row holding a `+inf` score, `s_ij = exp(inf - inf)` is `NaN` for the
//! `+inf` terms (the derivative with respect to an infinite score does not exist, and the
//! limit weights are not recovered from `lse = +inf`), so the gradients of that row are `NaN`
//! for those terms and 0 for the others; a `NaN` score gives `NaN`.

use std::fmt::Write;

use super::{CUDA_NEG_INF, CudaCode, Family, GradRule, OutputSpec, StateSpec, Tile, cuda_store};
use crate::backend::cpu::isa::Arch;
use crate::error::{Result, invalid};
use crate::math::Real;

/// The family of [`super::ReductionKind::SumSoftMaxWeight`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct SoftMax;

/// The factor `exp(old - new)` that rescales weights relative to the maximum `old` to the
/// maximum `new` (`new >= old`, or `NaN`): 0 when `old` is `-inf` (those terms weigh nothing),
/// 1 when the maxima are equal (also when both are `+inf`, where `exp(inf - inf)` would be
/// `NaN`: the `+inf` terms then share the weight equally), `NaN` when `new` is `NaN`.
#[inline]
fn scale(old: f64, new: f64) -> f64 {
    if old == f64::NEG_INFINITY {
        0.0
    } else if old == new {
        1.0
    } else {
        (old - new).exp()
    }
}

/// The merge of two states in C, for the compute type (tiles) and `double` (states).
const CUDA: &str = r"// Merges a SumSoftMaxWeight state (m2, sg2[0..N]) into (m, sg[0..N]): sg holds the sum of
// exp(F - m) and the G sums weighted by it. As `SoftMax::combine` in softmax.rs.
template <int N, typename T>
__device__ __forceinline__ void lk_ssmw_merge(T& m, T* sg, T m2, const T* sg2) {
    const T ninf = lk_neg_inf<T>();
    T nm = (m2 > m || m == ninf || m2 != m2) ? m2 : m;
    // The factors of `scale` (softmax.rs): 0 from -inf, 1 between equal maxima (+inf too).
    T a = m == ninf ? T(0) : m == nm ? T(1) : lk_exp(m - nm);
    T b = m2 == ninf ? T(0) : m2 == nm ? T(1) : lk_exp(m2 - nm);
    m = nm;
#pragma unroll
    for (int c = 0; c < N; ++c) sg[c] = sg[c] * a + sg2[c] * b;
}
";

impl Family for SoftMax {
    fn name(&self) -> &'static str {
        "SumSoftMaxWeight"
    }

    fn output_spec(&self, dim: usize) -> Result<OutputSpec> {
        if dim < 2 {
            return Err(invalid(
                self.name(),
                format!(
                    "needs Concat(F, G) with a 1-component F and a non-empty G, got {dim} components"
                ),
            ));
        }
        Ok(OutputSpec::new(dim - 1, 0, 1, dim))
    }

    fn state_spec(&self, dim: usize) -> StateSpec {
        StateSpec {
            vals: dim + 1,
            idx: 0,
        }
    }

    fn init(&self, _dim: usize, vals: &mut [f64], _idx: &mut [i64]) {
        vals.fill(0.0);
        vals[0] = f64::NEG_INFINITY;
    }

    fn accumulate(&self, vals: &mut [f64], idx: &mut [i64], f: &[f64], _j: i64) {
        let dim = f.len();
        let mut part = vec![0.0; dim + 1];
        part[0] = f[0];
        part[1] = 1.0;
        part[2..].copy_from_slice(&f[1..]);
        self.combine(dim, vals, idx, &part, &[]);
    }

    fn combine(
        &self,
        dim: usize,
        vals: &mut [f64],
        _idx: &mut [i64],
        vals2: &[f64],
        _idx2: &[i64],
    ) {
        let (m, m2) = (vals[0], vals2[0]);
        let new_m = if m2 > m || m == f64::NEG_INFINITY || m2.is_nan() {
            m2
        } else {
            m
        };
        let (a, b) = (scale(m, new_m), scale(m2, new_m));
        vals[0] = new_m;
        for c in 1..dim + 1 {
            vals[c] = vals[c] * a + vals2[c] * b;
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
        for c in 0..dim - 1 {
            // A fully masked row (no term above -inf) returns 0, not 0 / 0.
            out_vals[c] = if vals[0] == f64::NEG_INFINITY {
                0.0
            } else {
                vals[2 + c] / vals[1]
            };
        }
    }

    /// The tile's maximum of `F`, its weights `exp(F - max)` in `tile.weights`, their sum and
    /// their dot products with `G` (vectorised), merged as one state. Tiles whose maximum is
    /// infinite or `NaN` (rare) go term by term through the `f64` protocol.
    #[inline(always)]
    unsafe fn accumulate_tile<T: Real, A: Arch, const FMA: bool>(
        &self,
        tile: Tile<'_, T>,
        vals: &mut [f64],
        idx: &mut [i64],
    ) {
        let Tile {
            root,
            weights,
            valid,
            j0,
            dim,
        } = tile;
        // SAFETY (every block below): forwarded from the caller.
        let f = unsafe { root.slice(0, valid) };
        let m = unsafe { A::max(f) };
        let mut part = vec![0.0f64; dim + 1];
        if m.partial_cmp(&m).is_none() || m == T::INFINITY {
            // Rare: let the exact f64 protocol handle infinities and NaN term by term.
            let mut st = vec![0.0f64; dim + 1];
            self.init(dim, &mut st, &mut []);
            let mut term = vec![0.0f64; dim];
            for l in 0..valid {
                for (c, t) in term.iter_mut().enumerate() {
                    *t = unsafe { *root.comp(c).add(l) }.to_f64();
                }
                self.accumulate(&mut st, &mut [], &term, (j0 + l) as i64);
            }
            self.combine(dim, vals, idx, &st, &[]);
            return;
        }
        let w = &mut weights[..valid];
        if m == T::NEG_INFINITY {
            // A fully masked tile: every weight is 0, but `0 * G` still reaches the sums (NaN
            // for a NaN or infinite G), as in the term-by-term protocol.
            w.fill(T::ZERO);
        } else {
            for (w, &x) in w.iter_mut().zip(f) {
                *w = (x - m).exp::<FMA>();
            }
        }
        part[0] = m.to_f64();
        part[1] = unsafe { A::sum(w) }.to_f64();
        for c in 1..dim {
            part[c + 1] = unsafe { A::dot(w, root.slice(c, valid)) }.to_f64();
        }
        self.combine(dim, vals, idx, &part, &[]);
    }

    fn cuda_helpers(&self) -> &'static str {
        CUDA
    }

    fn cuda_code(&self, f: usize, tc: &str, nv: usize) -> CudaCode {
        let mut k = CudaCode::default();
        let _ = writeln!(k.init, "sv[0] = {CUDA_NEG_INF};");
        k.tile_vars.extend([("tm", 1), ("tsg", f)]);
        let _ = writeln!(k.tile_init, "tm[0] = lk_neg_inf<{tc}>();");
        for c in 0..f {
            let _ = writeln!(k.init, "sv[{}] = 0.0;", c + 1);
            let _ = writeln!(k.tile_init, "tsg[{c}] = 0;");
        }
        let _ = writeln!(k.term, "{{ {tc} p[{f}]; p[0] = 1;");
        for c in 1..f {
            let _ = writeln!(k.term, "p[{c}] = f[{c}];");
        }
        let _ = writeln!(k.term, "lk_ssmw_merge<{f}, {tc}>(tm[0], tsg, f[0], p); }}");
        let _ = writeln!(k.tile_end, "{{ double p[{f}];");
        for c in 0..f {
            let _ = writeln!(k.tile_end, "p[{c}] = (double)tsg[{c}];");
        }
        let _ = writeln!(
            k.tile_end,
            "lk_ssmw_merge<{f}, double>(sv[0], sv + 1, (double)tm[0], p); }}"
        );
        let _ = writeln!(
            k.combine,
            "lk_ssmw_merge<{f}, double>(sv[0], sv + 1, sv2[0], sv2 + 1);"
        );
        for c in 0..f - 1 {
            let v = format!("sv[0] == {CUDA_NEG_INF} ? 0.0 : sv[{}] / sv[1]", c + 2);
            k.finalize += &cuda_store(nv, c, v);
        }
        k
    }

    fn grad_rule(&self) -> GradRule {
        GradRule::SoftMax
    }
}
