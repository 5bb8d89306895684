//! The rule by which a reduction is split over ranks (see the module documentation of
//! [`crate::dist`]).

use super::Comm;
use super::ops::{gather_rows, replicated};
use crate::formula::{Expr, VarCat};
use crate::op::gram::ReductionOptions;
use crate::op::{Binding, ReductionOutput};
use crate::reduction::{Axis, Reduction};

/// The reduction of `formula` over `bindings`, its output rows split over the ranks of `comm`
/// and gathered: the same result as one rank's, on every rank.
///
/// A formula without variables of the output's category, or with fewer output rows than
/// ranks, is evaluated whole on every rank (its work is small, and every rank must take part
/// in the same collectives).
pub(crate) fn reduce(
    comm: &Comm,
    formula: &Expr,
    bindings: &[Binding],
    reduction: Reduction,
    options: &ReductionOptions,
) -> candle_core::Result<ReductionOutput> {
    let out_cat = match reduction.axis {
        Axis::J => VarCat::I,
        Axis::I => VarCat::J,
    };
    let rows = match bindings.iter().find(|b| b.cat == out_cat) {
        Some(b) => b.tensor.dim(0)?,
        None => 0,
    };
    if comm.size() == 1 || rows < comm.size() {
        return crate::op::reduce(formula, bindings, reduction, None, options);
    }
    let (start, len) = comm.my_block(rows);
    let local: Vec<Binding> = bindings
        .iter()
        .map(|b| {
            let t = replicated(comm, &b.tensor)?;
            let t = if b.cat == out_cat {
                t.narrow(0, start, len)?.contiguous()?
            } else {
                t
            };
            Ok(Binding {
                tensor: t,
                ..b.clone()
            })
        })
        .collect::<candle_core::Result<_>>()?;
    let out = crate::op::reduce(formula, &local, reduction, None, options)?;
    Ok(ReductionOutput {
        values: out
            .values
            .map(|v| gather_rows(comm, &v, rows))
            .transpose()?,
        indices: out
            .indices
            .map(|i| gather_rows(comm, &i, rows))
            .transpose()?,
    })
}
