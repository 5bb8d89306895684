//! Reductions: what is computed over the reduced index, with one set of semantics shared by
//! every backend.
//!
//! A reduction keeps, for each output row, a small state of `f64` values and `i64` indices
//! (typed indices: no index ever lives in a float, so they are exact past 2^24). The protocol is
//! [`Reduction::init`], [`Reduction::accumulate`] (one term `j`), [`Reduction::combine`] (two
//! partial states over consecutive ranges of `j`; backends use it to merge vectorised tile
//! partials and, on GPUs, blocks) and [`Reduction::finalize`]. States are in `f64` whatever the
//! input dtype, so `f32` sums over 10^7 terms keep their accuracy: backends sum a tile of
//! terms in the compute type and add the tile's partial sum into the `f64` state with Kahan
//! compensation.

use std::fmt;

use crate::error::{invalid, Result};

/// Which index a reduction runs over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Axis {
    /// Reduce over `i`: one output row per `j`.
    I,
    /// Reduce over `j`: one output row per `i`.
    J,
}

/// What a reduction computes for each output row, over the terms of the reduced index.
///
/// Min/Max-type reductions act on each component of the formula independently; ties are
/// broken towards the smallest index; a `NaN` term wins (so that `NaN` propagates). For the
/// `K*` reductions with `k` larger than the number of terms, the missing slots hold `+inf` and
/// index `-1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReductionKind {
    /// `sum_j F`.
    Sum,
    /// `log sum_j exp(F)`, computed stably (running maximum), component by component.
    LogSumExp,
    /// `sum_j exp(F) G / sum_j exp(F)` for the formula `Concat(F, G)` with `F` of one component.
    SumSoftMaxWeight,
    /// `min_j F`.
    Min,
    /// `max_j F`.
    Max,
    /// `argmin_j F` (integer indices).
    ArgMin,
    /// `argmax_j F` (integer indices).
    ArgMax,
    /// Both `min_j F` and `argmin_j F`.
    MinArgMin,
    /// Both `max_j F` and `argmax_j F`.
    MaxArgMax,
    /// The `k` smallest values, in increasing order.
    KMin(usize),
    /// The indices of the `k` smallest values, in increasing order of the values.
    ArgKMin(usize),
    /// Both the `k` smallest values and their indices.
    KMinArgKMin(usize),
}

/// A reduction: its kind and the axis it reduces over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Reduction {
    /// What is computed.
    pub kind: ReductionKind,
    /// Over which index.
    pub axis: Axis,
}

/// The shape of a reduction's outputs for one row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutputSpec {
    /// Number of value columns (0 when the reduction returns indices only).
    pub values: usize,
    /// Number of index columns (0 when the reduction returns values only).
    pub indices: usize,
    /// `k` for the `K*` reductions, else 1.
    pub k: usize,
    /// Components of the formula the values and indices refer to.
    pub components: usize,
}

/// Sizes of a row's reduction state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateSpec {
    /// Number of `f64` slots.
    pub vals: usize,
    /// Number of `i64` slots.
    pub idx: usize,
}

impl fmt::Display for Reduction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let axis = match self.axis {
            Axis::I => "i",
            Axis::J => "j",
        };
        match self.kind.k() {
            Some(k) => write!(f, "{}(k={k},axis={axis})", self.kind.name()),
            None => write!(f, "{}(axis={axis})", self.kind.name()),
        }
    }
}

/// Is `a` strictly before `b` in the order used by minimum reductions (NaN first)?
#[inline]
fn before_min(a: f64, b: f64) -> bool {
    a < b || (a.is_nan() && !b.is_nan())
}

/// Is `a` strictly before `b` in the order used by maximum reductions (NaN first)?
#[inline]
fn before_max(a: f64, b: f64) -> bool {
    a > b || (a.is_nan() && !b.is_nan())
}

/// Replaces the (value, index) pair of a minimum or maximum state by `(v, j)` when `v` comes
/// first in the reduction's order or the state is empty; `j` comes after the state's terms,
/// so ties keep the smaller index.
#[inline]
fn take_if_first(max: bool, val: &mut f64, idx: &mut i64, v: f64, j: i64) {
    let first = if max {
        before_max(v, *val)
    } else {
        before_min(v, *val)
    };
    if first || *idx < 0 {
        *val = v;
        *idx = j;
    }
}

/// Adds `v` to a Kahan (Neumaier) compensated sum held in `(sum, comp)`.
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

impl ReductionKind {
    /// The name used in printed reductions and cache keys.
    pub fn name(&self) -> &'static str {
        match self {
            ReductionKind::Sum => "Sum",
            ReductionKind::LogSumExp => "LogSumExp",
            ReductionKind::SumSoftMaxWeight => "SumSoftMaxWeight",
            ReductionKind::Min => "Min",
            ReductionKind::Max => "Max",
            ReductionKind::ArgMin => "ArgMin",
            ReductionKind::ArgMax => "ArgMax",
            ReductionKind::MinArgMin => "MinArgMin",
            ReductionKind::MaxArgMax => "MaxArgMax",
            ReductionKind::KMin(_) => "KMin",
            ReductionKind::ArgKMin(_) => "ArgKMin",
            ReductionKind::KMinArgKMin(_) => "KMinArgKMin",
        }
    }

    /// `k` of the `K*` reductions.
    pub fn k(&self) -> Option<usize> {
        match *self {
            ReductionKind::KMin(k) | ReductionKind::ArgKMin(k) | ReductionKind::KMinArgKMin(k) => {
                Some(k)
            }
            ReductionKind::Sum
            | ReductionKind::LogSumExp
            | ReductionKind::SumSoftMaxWeight
            | ReductionKind::Min
            | ReductionKind::Max
            | ReductionKind::ArgMin
            | ReductionKind::ArgMax
            | ReductionKind::MinArgMin
            | ReductionKind::MaxArgMax => None,
        }
    }

    fn is_max(&self) -> bool {
        matches!(
            self,
            ReductionKind::Max | ReductionKind::ArgMax | ReductionKind::MaxArgMax
        )
    }
}

impl Reduction {
    /// A reduction of `kind` over `axis`.
    pub fn new(kind: ReductionKind, axis: Axis) -> Reduction {
        Reduction { kind, axis }
    }

    /// Checks that a formula of `dim` components can be reduced, and returns its outputs.
    pub fn output_spec(&self, dim: usize) -> Result<OutputSpec> {
        let name = self.kind.name();
        let spec = |values, indices, k| OutputSpec {
            values,
            indices,
            k,
            components: dim,
        };
        Ok(match self.kind {
            ReductionKind::Sum
            | ReductionKind::LogSumExp
            | ReductionKind::Min
            | ReductionKind::Max => spec(dim, 0, 1),
            ReductionKind::SumSoftMaxWeight => {
                if dim < 2 {
                    return Err(invalid(
                        name,
                        format!("needs Concat(F, G) with a 1-component F and a non-empty G, got {dim} components"),
                    ));
                }
                OutputSpec {
                    values: dim - 1,
                    indices: 0,
                    k: 1,
                    components: dim,
                }
            }
            ReductionKind::ArgMin | ReductionKind::ArgMax => spec(0, dim, 1),
            ReductionKind::MinArgMin | ReductionKind::MaxArgMax => spec(dim, dim, 1),
            ReductionKind::KMin(k) | ReductionKind::ArgKMin(k) | ReductionKind::KMinArgKMin(k) => {
                if k == 0 {
                    return Err(invalid(name, "k must be at least 1"));
                }
                let n = k
                    .checked_mul(dim)
                    .ok_or_else(|| invalid(name, format!("k = {k} is too large")))?;
                match self.kind {
                    ReductionKind::KMin(_) => spec(n, 0, k),
                    ReductionKind::ArgKMin(_) => spec(0, n, k),
                    _ => spec(n, n, k),
                }
            }
        })
    }

    /// Sizes of the per-row state for a formula of `dim` components.
    pub fn state_spec(&self, dim: usize) -> StateSpec {
        match self.kind {
            ReductionKind::Sum | ReductionKind::LogSumExp => StateSpec {
                vals: 2 * dim,
                idx: 0,
            },
            ReductionKind::SumSoftMaxWeight => StateSpec {
                vals: dim + 1,
                idx: 0,
            },
            ReductionKind::Min
            | ReductionKind::Max
            | ReductionKind::ArgMin
            | ReductionKind::ArgMax
            | ReductionKind::MinArgMin
            | ReductionKind::MaxArgMax => StateSpec {
                vals: dim,
                idx: dim,
            },
            ReductionKind::KMin(k) | ReductionKind::ArgKMin(k) | ReductionKind::KMinArgKMin(k) => {
                StateSpec {
                    vals: k * dim,
                    idx: k * dim,
                }
            }
        }
    }

    /// Writes the neutral state (`dim` formula components).
    pub fn init(&self, dim: usize, vals: &mut [f64], idx: &mut [i64]) {
        match self.kind {
            ReductionKind::Sum => vals.fill(0.0),
            ReductionKind::LogSumExp => {
                vals[..dim].fill(f64::NEG_INFINITY);
                vals[dim..].fill(0.0);
            }
            ReductionKind::SumSoftMaxWeight => {
                vals.fill(0.0);
                vals[0] = f64::NEG_INFINITY;
            }
            ReductionKind::Min
            | ReductionKind::Max
            | ReductionKind::ArgMin
            | ReductionKind::ArgMax
            | ReductionKind::MinArgMin
            | ReductionKind::MaxArgMax => {
                let v = if self.kind.is_max() {
                    f64::NEG_INFINITY
                } else {
                    f64::INFINITY
                };
                vals.fill(v);
                idx.fill(-1);
            }
            ReductionKind::KMin(_) | ReductionKind::ArgKMin(_) | ReductionKind::KMinArgKMin(_) => {
                vals.fill(f64::INFINITY);
                idx.fill(-1);
            }
        }
    }

    /// Accumulates the term `j`, whose formula value is `f` (all components).
    pub fn accumulate(&self, vals: &mut [f64], idx: &mut [i64], f: &[f64], j: i64) {
        let dim = f.len();
        match self.kind {
            ReductionKind::Sum => {
                for (c, &v) in f.iter().enumerate() {
                    let (s, comp) = vals.split_at_mut(dim);
                    kahan_add(&mut s[c], &mut comp[c], v);
                }
            }
            ReductionKind::LogSumExp => {
                let (m, s) = vals.split_at_mut(dim);
                for (c, &v) in f.iter().enumerate() {
                    lse_merge(&mut m[c], &mut s[c], v, 1.0);
                }
            }
            ReductionKind::SumSoftMaxWeight => {
                let mut part = vec![0.0; dim + 1];
                part[0] = f[0];
                part[1] = 1.0;
                part[2..].copy_from_slice(&f[1..]);
                self.combine(dim, vals, idx, &part, &[]);
            }
            ReductionKind::Min
            | ReductionKind::Max
            | ReductionKind::ArgMin
            | ReductionKind::ArgMax
            | ReductionKind::MinArgMin
            | ReductionKind::MaxArgMax => {
                let max = self.kind.is_max();
                for (c, &v) in f.iter().enumerate() {
                    take_if_first(max, &mut vals[c], &mut idx[c], v, j);
                }
            }
            ReductionKind::KMin(k) | ReductionKind::ArgKMin(k) | ReductionKind::KMinArgKMin(k) => {
                for (c, &v) in f.iter().enumerate() {
                    kmin_insert(
                        &mut vals[c * k..(c + 1) * k],
                        &mut idx[c * k..(c + 1) * k],
                        v,
                        j,
                    );
                }
            }
        }
    }

    /// Merges the state `(vals2, idx2)`, over terms that all come after those of
    /// `(vals, idx)`, into `(vals, idx)`.
    pub fn combine(
        &self,
        dim: usize,
        vals: &mut [f64],
        idx: &mut [i64],
        vals2: &[f64],
        idx2: &[i64],
    ) {
        match self.kind {
            ReductionKind::Sum => {
                let (s, comp) = vals.split_at_mut(dim);
                for c in 0..dim {
                    kahan_add(&mut s[c], &mut comp[c], vals2[c]);
                    comp[c] += vals2[dim + c];
                }
            }
            ReductionKind::LogSumExp => {
                let (m, s) = vals.split_at_mut(dim);
                for c in 0..dim {
                    lse_merge(&mut m[c], &mut s[c], vals2[c], vals2[dim + c]);
                }
            }
            ReductionKind::SumSoftMaxWeight => {
                // State: [max, sum, weighted sums of G scaled by exp(-max)].
                let (m, m2) = (vals[0], vals2[0]);
                let new_m = if m2 > m || m == f64::NEG_INFINITY || m2.is_nan() {
                    m2
                } else {
                    m
                };
                let scale = |old: f64| {
                    if old == f64::NEG_INFINITY {
                        0.0
                    } else {
                        (old - new_m).exp()
                    }
                };
                let (a, b) = (scale(m), scale(m2));
                vals[0] = new_m;
                for c in 1..dim + 1 {
                    vals[c] = vals[c] * a + vals2[c] * b;
                }
            }
            ReductionKind::Min
            | ReductionKind::Max
            | ReductionKind::ArgMin
            | ReductionKind::ArgMax
            | ReductionKind::MinArgMin
            | ReductionKind::MaxArgMax => {
                let max = self.kind.is_max();
                for c in 0..dim {
                    if idx2[c] >= 0 {
                        take_if_first(max, &mut vals[c], &mut idx[c], vals2[c], idx2[c]);
                    }
                }
            }
            ReductionKind::KMin(k) | ReductionKind::ArgKMin(k) | ReductionKind::KMinArgKMin(k) => {
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
        }
    }

    /// Writes the outputs of one row from its final state: `out_vals` has
    /// [`OutputSpec::values`] slots and `out_idx` has [`OutputSpec::indices`]; `K*` outputs are
    /// laid out `[rank][component]`.
    pub fn finalize(
        &self,
        dim: usize,
        vals: &[f64],
        idx: &[i64],
        out_vals: &mut [f64],
        out_idx: &mut [i64],
    ) {
        match self.kind {
            ReductionKind::Sum => {
                for c in 0..dim {
                    out_vals[c] = vals[c] + vals[dim + c];
                }
            }
            ReductionKind::LogSumExp => {
                for c in 0..dim {
                    out_vals[c] = vals[c] + vals[dim + c].ln();
                    if vals[c] == f64::NEG_INFINITY && !vals[dim + c].is_nan() {
                        out_vals[c] = f64::NEG_INFINITY;
                    }
                }
            }
            ReductionKind::SumSoftMaxWeight => {
                for c in 0..dim - 1 {
                    out_vals[c] = vals[2 + c] / vals[1];
                }
            }
            ReductionKind::Min | ReductionKind::Max => out_vals.copy_from_slice(&vals[..dim]),
            ReductionKind::ArgMin | ReductionKind::ArgMax => out_idx.copy_from_slice(&idx[..dim]),
            ReductionKind::MinArgMin | ReductionKind::MaxArgMax => {
                out_vals.copy_from_slice(&vals[..dim]);
                out_idx.copy_from_slice(&idx[..dim]);
            }
            ReductionKind::KMin(k) | ReductionKind::ArgKMin(k) | ReductionKind::KMinArgKMin(k) => {
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
        }
    }
}

/// Inserts `(v, j)` into the sorted list `(vals, idx)` of the `k` smallest terms seen so far
/// (empty slots have index -1 and sort last). Equal values keep the earlier index first.
#[inline]
pub(crate) fn kmin_insert(vals: &mut [f64], idx: &mut [i64], v: f64, j: i64) {
    let k = vals.len();
    let last = k - 1;
    if idx[last] >= 0 && !before_min(v, vals[last]) {
        return;
    }
    let mut p = last;
    while p > 0 && (idx[p - 1] < 0 || before_min(v, vals[p - 1])) {
        vals[p] = vals[p - 1];
        idx[p] = idx[p - 1];
        p -= 1;
    }
    vals[p] = v;
    idx[p] = j;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_kinds() -> Vec<ReductionKind> {
        vec![
            ReductionKind::Sum,
            ReductionKind::LogSumExp,
            ReductionKind::SumSoftMaxWeight,
            ReductionKind::Min,
            ReductionKind::Max,
            ReductionKind::ArgMin,
            ReductionKind::ArgMax,
            ReductionKind::MinArgMin,
            ReductionKind::MaxArgMax,
            ReductionKind::KMin(3),
            ReductionKind::ArgKMin(3),
            ReductionKind::KMinArgKMin(3),
        ]
    }

    fn run(red: &Reduction, dim: usize, terms: &[Vec<f64>], j0: i64) -> (Vec<f64>, Vec<i64>) {
        let s = red.state_spec(dim);
        let (mut v, mut i) = (vec![0.0; s.vals], vec![0; s.idx]);
        red.init(dim, &mut v, &mut i);
        for (t, f) in terms.iter().enumerate() {
            red.accumulate(&mut v, &mut i, f, j0 + t as i64);
        }
        (v, i)
    }

    fn finalize(red: &Reduction, dim: usize, st: &(Vec<f64>, Vec<i64>)) -> (Vec<f64>, Vec<i64>) {
        let o = red.output_spec(dim).unwrap();
        let (mut v, mut i) = (vec![0.0; o.values], vec![0; o.indices]);
        red.finalize(dim, &st.0, &st.1, &mut v, &mut i);
        (v, i)
    }

    /// Splitting the terms anywhere and combining the halves gives the result of one pass.
    #[test]
    fn combine_agrees_with_sequential_accumulation() {
        let dim = 3;
        let terms: Vec<Vec<f64>> = (0..11)
            .map(|t| {
                (0..dim)
                    .map(|c| (((t * 7 + c * 3) % 5) as f64) - 1.5)
                    .collect()
            })
            .collect();
        for kind in all_kinds() {
            let red = Reduction::new(kind, Axis::J);
            let whole = finalize(&red, dim, &run(&red, dim, &terms, 0));
            for split in 0..=terms.len() {
                let mut a = run(&red, dim, &terms[..split], 0);
                let b = run(&red, dim, &terms[split..], split as i64);
                red.combine(dim, &mut a.0, &mut a.1, &b.0, &b.1);
                let got = finalize(&red, dim, &a);
                assert_eq!(got.1, whole.1, "{kind:?} indices, split {split}");
                for (x, y) in got.0.iter().zip(&whole.0) {
                    assert!(
                        (x - y).abs() <= 1e-12 * y.abs().max(1.0),
                        "{kind:?} split {split}"
                    );
                }
            }
        }
    }

    #[test]
    fn ties_pick_the_first_index_and_nan_wins() {
        let red = Reduction::new(ReductionKind::MinArgMin, Axis::J);
        let st = run(&red, 1, &[vec![2.0], vec![1.0], vec![1.0]], 0);
        assert_eq!(finalize(&red, 1, &st), (vec![1.0], vec![1]));
        let st = run(&red, 1, &[vec![2.0], vec![f64::NAN], vec![1.0]], 0);
        let out = finalize(&red, 1, &st);
        assert!(out.0[0].is_nan());
        assert_eq!(out.1, vec![1]);
    }

    #[test]
    fn kmin_with_fewer_terms_than_k_pads() {
        let red = Reduction::new(ReductionKind::KMinArgKMin(4), Axis::J);
        let st = run(&red, 1, &[vec![3.0], vec![1.0]], 0);
        let (v, i) = finalize(&red, 1, &st);
        assert_eq!(v, vec![1.0, 3.0, f64::INFINITY, f64::INFINITY]);
        assert_eq!(i, vec![1, 0, -1, -1]);
    }

    #[test]
    fn logsumexp_is_stable_for_large_values() {
        let red = Reduction::new(ReductionKind::LogSumExp, Axis::J);
        let st = run(&red, 1, &[vec![1000.0], vec![1000.0]], 0);
        let (v, _) = finalize(&red, 1, &st);
        assert!((v[0] - (1000.0 + 2f64.ln())).abs() < 1e-12);
    }
}
