//! Batch dimensions, as KeOps and GPyTorch use them: `i`- and `j`-variables bound to tensors
//! of shape `(B, M, D)` and `(B, N, D)`, parameters per batch (`(B, 1, P)`, made by
//! [`crate::LazyTensor::param_batched`]) or shared, reduce batch by batch into `(B, M, E)`.
//!
//! A batched reduction is one block-sparse reduction: the batches are stacked into `B M`
//! rows and `B N` columns, and block-diagonal ranges keep the pairs of each batch only, so the
//! backend runs one parallel loop over `B x` row blocks (never a loop over batches), and the
//! backward pass is the ranged reduction's own. A batch of 1, an unbatched tensor, and a
//! batched tensor with 1 row (a parameter per batch) broadcast: they are copied to the `B`
//! batches or the `M` rows (linear memory; the reduced axis' variables are not copied when none
//! of them is batched: every batch reduces over the same terms).

use std::ops::Range;
use std::sync::Arc;

use candle_core::Tensor;

use super::{Binding, ReductionOutput};
use crate::error::Error;
use crate::formula::{Expr, VarCat};
use crate::ranges::Ranges;
use crate::reduction::Axis;

/// A batched formula's bindings stacked into plain `(rows, D)` tensors, with the ranges that
/// keep each batch's pairs.
pub(crate) struct Batched {
    /// The stacked bindings (ids unchanged).
    pub(crate) bindings: Vec<Binding>,
    /// Block-diagonal ranges over the stacked `i`-rows and `j`-rows.
    pub(crate) ranges: Arc<Ranges>,
    /// `B`.
    pub(crate) batch: usize,
    /// Rows per batch of `i` and of `j` (`None`: the formula has no such variable).
    pub(crate) rows: (Option<usize>, Option<usize>),
    /// Whether the `i`- and the `j`-variables are shared by the batches rather than stacked
    /// (the reduced axis' variables, when none of them is batched).
    pub(crate) shared: (bool, bool),
}

fn shape_err(op: &'static str, detail: String) -> candle_core::Error {
    Error::Shape { op, detail }.into()
}

/// `(batch, rows)` of a variable's tensor: `(Some(B), M)` for `(B, M, D)`, `(None, M)` for
/// `(M, D)` or `(M,)`.
fn batch_rows(t: &Tensor) -> (Option<usize>, usize) {
    match t.dims() {
        [b, m, _] => (Some(*b), *m),
        [m, ..] => (None, *m),
        [] => (None, 1),
    }
}

/// The stacked form of a formula whose bindings include `(B, M, D)` tensors, for a reduction
/// over `axis` (`None`: a pointwise evaluation); `Ok(None)` when no binding is batched.
pub(crate) fn unbatch(
    formula: &Expr,
    bindings: &[Binding],
    axis: Option<Axis>,
    op: &'static str,
) -> candle_core::Result<Option<Batched>> {
    let used = formula.vars();
    let used: Vec<&Binding> = bindings
        .iter()
        .filter(|b| used.iter().any(|v| v.pos == b.id))
        .collect();
    let batches: Vec<usize> = used
        .iter()
        .filter_map(|b| batch_rows(&b.tensor).0)
        .collect();
    let Some(&batch) = batches.iter().max() else {
        return Ok(None);
    };
    if let Some(bad) = batches.iter().find(|&&b| b != batch && b != 1) {
        return Err(shape_err(
            op,
            format!(
                "the batched tensors have {bad} and {batch} batches (a batch of 1 broadcasts, \
                 other sizes must agree)"
            ),
        ));
    }
    // Rows per batch of each category: a batched tensor of 1 row broadcasts over them.
    let rows_of = |cat: VarCat| -> candle_core::Result<Option<usize>> {
        let of_cat: Vec<(Option<usize>, usize)> = used
            .iter()
            .filter(|b| b.cat == cat)
            .map(|b| batch_rows(&b.tensor))
            .collect();
        let Some(rows) = of_cat
            .iter()
            .filter(|(b, r)| b.is_none() || *r != 1)
            .map(|&(_, r)| r)
            .max()
            .or_else(|| of_cat.first().map(|&(_, r)| r))
        else {
            return Ok(None);
        };
        match of_cat
            .iter()
            .find(|&&(b, r)| r != rows && !(b.is_some() && r == 1))
        {
            Some((_, r)) => Err(shape_err(
                op,
                format!(
                    "the {} have {r} and {rows} rows per batch",
                    if cat == VarCat::I {
                        "i-variables"
                    } else {
                        "j-variables"
                    }
                ),
            )),
            None => Ok(Some(rows)),
        }
    };
    let (mi, nj) = (rows_of(VarCat::I)?, rows_of(VarCat::J)?);
    // The reduced axis' variables are shared when none of them is batched.
    let reduced = match axis {
        Some(Axis::J) => Some(VarCat::J),
        Some(Axis::I) => Some(VarCat::I),
        None => None,
    };
    let shared = |cat: VarCat| {
        Some(cat) == reduced
            && used
                .iter()
                .filter(|b| b.cat == cat)
                .all(|b| batch_rows(&b.tensor).0.is_none())
    };
    let (shared_i, shared_j) = (shared(VarCat::I), shared(VarCat::J));
    let stacked = used
        .iter()
        .map(|b| {
            let (rows, keep) = match b.cat {
                VarCat::I => (mi, shared_i),
                VarCat::J => (nj, shared_j),
                VarCat::P => (None, true),
            };
            let tensor = match rows {
                Some(rows) if !keep => {
                    let d = b.dim;
                    let t = match b.tensor.dims() {
                        [_, _, _] => b.tensor.clone(),
                        _ => b.tensor.reshape((1, (), d))?,
                    };
                    t.broadcast_as((batch, rows, d))?
                        .contiguous()?
                        .reshape((batch * rows, d))?
                }
                _ => b.tensor.clone(),
            };
            Ok(Binding {
                tensor,
                ..(*b).clone()
            })
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    let parts = |rows: usize, shared: bool| -> (usize, Vec<Range<usize>>) {
        if shared {
            (rows, vec![0..rows; 1])
        } else {
            (
                batch * rows,
                (0..batch).map(|b| b * rows..(b + 1) * rows).collect(),
            )
        }
    };
    let (ni, row_parts) = parts(mi.unwrap_or(1), shared_i);
    let (nc, col_parts) = parts(nj.unwrap_or(1), shared_j);
    let kept: Vec<(usize, usize)> = (0..batch)
        .map(|b| (if shared_i { 0 } else { b }, if shared_j { 0 } else { b }))
        .collect();
    let ranges = Ranges::new(ni, nc, row_parts, col_parts, &kept)?;
    Ok(Some(Batched {
        bindings: stacked,
        ranges: Arc::new(ranges),
        batch,
        rows: (mi, nj),
        shared: (shared_i, shared_j),
    }))
}

impl Batched {
    /// The output of the stacked reduction over `axis` in the batched shape `(B, R, E)`, its
    /// indices made local to their batch (`-1` padding kept).
    pub(crate) fn output(
        &self,
        out: ReductionOutput,
        axis: Axis,
    ) -> candle_core::Result<ReductionOutput> {
        let (out_rows, terms, stacked_terms) = match axis {
            Axis::J => (self.rows.0, self.rows.1, !self.shared.1),
            Axis::I => (self.rows.1, self.rows.0, !self.shared.0),
        };
        let r = out_rows.unwrap_or(1);
        let b = self.batch;
        let batched = |t: Tensor| -> candle_core::Result<Tensor> {
            let e = t.dim(1)?;
            t.reshape((b, r, e))
        };
        let local = |t: Tensor| -> candle_core::Result<Tensor> {
            let t = match (stacked_terms, terms) {
                (true, Some(n)) => {
                    let offsets: Vec<i64> = (0..b * r).map(|row| ((row / r) * n) as i64).collect();
                    let offsets = Tensor::from_vec(offsets, (b * r, 1), t.device())?;
                    let shifted = t.broadcast_sub(&offsets)?;
                    t.ge(0i64)?.where_cond(&shifted, &t)?
                }
                _ => t,
            };
            batched(t)
        };
        let ReductionOutput { values, indices } = out;
        Ok(ReductionOutput {
            values: values.map(batched).transpose()?,
            indices: indices.map(local).transpose()?,
        })
    }
}
