//! `KMin`, `ArgKMin`, `KMinArgKMin`: the `k` smallest values of each component in increasing
//! order, their indices, or both.
//!
//! State: per component, the sorted list of the `k` smallest values so far and their indices
//! (`[component][rank]`; empty slots hold `+inf` and index `-1` and sort last). The order is the
//! minimum order of [`super::select::before`].
//!
//! # IEEE semantics
//!
//! That of [`super::select`]: `NaN` terms come first (in index order), then `-inf`, the finite
//! values, `+inf`. A `+inf` term fills a slot with its own index, so only a row with fewer
//! than `k` terms has slots of index `-1`. The gradient goes to the selected terms.

use std::fmt::Write;

use super::select::{FILTER, Outputs, before};
use super::{CudaCode, Family, GradRule, OutputSpec, ReductionKind, StateSpec, Tile, cuda_store};
use crate::backend::cpu::isa::Arch;
use crate::error::{Result, invalid};
use crate::math::Real;

/// Inserts `(v, j)` into the sorted list `(vals, idx)` of the `k` smallest terms seen so far
/// (empty slots have index -1 and sort last). Equal values keep the earlier index first.
#[inline]
pub(crate) fn kmin_insert(vals: &mut [f64], idx: &mut [i64], v: f64, j: i64) {
    let k = vals.len();
    let last = k - 1;
    if idx[last] >= 0 && !before(false, v, vals[last]) {
        return;
    }
    let mut p = last;
    while p > 0 && (idx[p - 1] < 0 || before(false, v, vals[p - 1])) {
        vals[p] = vals[p - 1];
        idx[p] = idx[p - 1];
        p -= 1;
    }
    vals[p] = v;
    idx[p] = j;
}

/// [`kmin_insert`] in C (it calls `lk_before` of [`super::select::CUDA`]).
const CUDA: &str = r"// Inserts (v, j) into the sorted K smallest (empty slots have index -1 and sort last); equal
// values keep the earlier index first. Unrolled with constant indices so the lists stay in
// registers.
template <int K>
__device__ __forceinline__ void lk_kmin_insert(double* vals, long long* idx, double v, long long j) {
    if (idx[K - 1] >= 0 && !lk_before<false>(v, vals[K - 1])) return;
    bool placed = false;
#pragma unroll
    for (int p = K - 1; p > 0; --p) {
        if (!placed) {
            if (idx[p - 1] < 0 || lk_before<false>(v, vals[p - 1])) {
                vals[p] = vals[p - 1];
                idx[p] = idx[p - 1];
            } else {
                vals[p] = v;
                idx[p] = j;
                placed = true;
            }
        }
    }
    if (!placed) { vals[0] = v; idx[0] = j; }
}
";

/// The family of the `K*` reductions.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KSelect {
    /// Number of values kept.
    k: usize,
    /// What is returned.
    outputs: Outputs,
}

impl KSelect {
    /// The member of the family that computes `kind` (one of the three kinds of this file).
    #[inline(always)]
    pub(crate) fn of(kind: ReductionKind) -> KSelect {
        let (k, outputs) = match kind {
            ReductionKind::KMin(k) => (k, Outputs::Values),
            ReductionKind::ArgKMin(k) => (k, Outputs::Indices),
            ReductionKind::KMinArgKMin(k) => (k, Outputs::Both),
            _ => unreachable!("{kind:?} is not a K* reduction"),
        };
        KSelect { k, outputs }
    }
}

impl Family for KSelect {
    fn name(&self) -> &'static str {
        ["KMin", "ArgKMin", "KMinArgKMin"][self.outputs as usize]
    }

    fn k(&self) -> Option<usize> {
        Some(self.k)
    }

    fn output_spec(&self, dim: usize) -> Result<OutputSpec> {
        let k = self.k;
        if k == 0 {
            return Err(invalid(self.name(), "k must be at least 1"));
        }
        let n = k
            .checked_mul(dim)
            .ok_or_else(|| invalid(self.name(), format!("k = {k} is too large")))?;
        let on = |yes: bool| if yes { n } else { 0 };
        Ok(OutputSpec::new(
            on(self.outputs.values()),
            on(self.outputs.indices()),
            k,
            dim,
        ))
    }

    fn state_spec(&self, dim: usize) -> StateSpec {
        StateSpec {
            vals: self.k * dim,
            idx: self.k * dim,
        }
    }

    fn init(&self, _dim: usize, vals: &mut [f64], idx: &mut [i64]) {
        vals.fill(f64::INFINITY);
        idx.fill(-1);
    }

    fn accumulate(&self, vals: &mut [f64], idx: &mut [i64], f: &[f64], j: i64) {
        let k = self.k;
        for (c, &v) in f.iter().enumerate() {
            kmin_insert(
                &mut vals[c * k..(c + 1) * k],
                &mut idx[c * k..(c + 1) * k],
                v,
                j,
            );
        }
    }

    fn combine(&self, dim: usize, vals: &mut [f64], idx: &mut [i64], vals2: &[f64], idx2: &[i64]) {
        let k = self.k;
        for c in 0..dim {
            let r = c * k..(c + 1) * k;
            for t in r.clone() {
                if idx2[t] < 0 {
                    break;
                }
                kmin_insert(&mut vals[r.clone()], &mut idx[r.clone()], vals2[t], idx2[t]);
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
        let k = self.k;
        for c in 0..dim {
            for r in 0..k {
                if !out_vals.is_empty() {
                    out_vals[r * dim + c] = vals[c * k + r];
                }
                if !out_idx.is_empty() {
                    out_idx[r * dim + c] = idx[c * k + r];
                }
            }
        }
    }

    /// Per component, chunks of [`FILTER`] terms: a vectorised test against the `k`-th value
    /// skips the chunks with no term to insert (most of them), the others go term by term.
    #[inline(always)]
    unsafe fn accumulate_tile<T: Real, A: Arch, const FMA: bool>(
        &self,
        tile: Tile<'_, T>,
        vals: &mut [f64],
        idx: &mut [i64],
    ) {
        let k = self.k;
        for c in 0..tile.dim {
            // SAFETY (both blocks): forwarded from the caller.
            let xs = unsafe { tile.root.slice(c, tile.valid) };
            let (kv, ki) = (&mut vals[c * k..(c + 1) * k], &mut idx[c * k..(c + 1) * k]);
            for (q, chunk) in xs.chunks(FILTER).enumerate() {
                // The k-th value seen so far, in the compute type (exact: it came from it).
                if ki[k - 1] >= 0 && !unsafe { A::any_before(chunk, T::from_f64(kv[k - 1]), false) }
                {
                    continue;
                }
                for (l, &v) in chunk.iter().enumerate() {
                    let v = v.to_f64();
                    let full = ki[k - 1] >= 0;
                    if !full || before(false, v, kv[k - 1]) {
                        kmin_insert(kv, ki, v, (tile.j0 + q * FILTER + l) as i64);
                    }
                }
            }
        }
    }

    fn cuda_helpers(&self) -> &'static str {
        CUDA
    }

    fn cuda_code(&self, f: usize, tc: &str, nv: usize) -> CudaCode {
        let kk = self.k;
        let ni = kk * f;
        let mut k = CudaCode::default();
        k.tile_vars.push(("thr", f));
        for c in 0..f {
            let o = c * kk;
            let _ = writeln!(
                k.init,
                "for (int r = 0; r < {kk}; ++r) {{ sv[{o} + r] = lk_inf(); si[{o} + r] = -1; }}"
            );
            // Against the k-th value: a term not below it (most of them) is not inserted.
            let take = format!("lk_kmin_insert<{kk}>(sv + {o}, si + {o}, (double)f[{c}], j);");
            super::cuda_filtered_take(&mut k, c, o + kk - 1, tc, ">=", &take);
            let _ = writeln!(
                k.combine,
                "for (int t = 0; t < {kk}; ++t) {{ if (si2[{o} + t] < 0) break; \
                 lk_kmin_insert<{kk}>(sv + {o}, si + {o}, sv2[{o} + t], si2[{o} + t]); }}"
            );
            for r in 0..kk {
                let at = r * f + c;
                if self.outputs.values() {
                    k.finalize += &cuda_store(nv, at, format!("sv[{}]", o + r));
                }
                if self.outputs.indices() {
                    let _ = writeln!(
                        k.finalize,
                        "out_idx[(long long)i * {ni} + {at}] = si[{}];",
                        o + r
                    );
                }
            }
        }
        k
    }

    fn grad_rule(&self) -> GradRule {
        self.outputs.grad_rule()
    }

    /// `KMin` runs as `KMinArgKMin`, to know the selected terms.
    fn forward_for_grad(&self) -> Option<ReductionKind> {
        (self.outputs == Outputs::Values).then_some(ReductionKind::KMinArgKMin(self.k))
    }
}
