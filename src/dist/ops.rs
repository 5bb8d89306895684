//! The two differentiable collectives of a sharded reduction (see the module documentation of
//! [`crate::dist`]): [`replicated`], the identity whose backward pass sums the gradient over
//! the ranks, and [`gather_rows`], the all-gather of row blocks whose backward pass keeps the
//! rank's own rows. Both are [`Precomputed`] ops.

use candle_core::{DType, Tensor};

use super::Comm;
use crate::op::Precomputed;

/// `t`, as a tensor whose gradient is summed over the ranks (each rank's gradient of a tensor
/// bound into a sharded reduction comes from its own rows only). `t` itself when it tracks no
/// gradient.
pub(crate) fn replicated(comm: &Comm, t: &Tensor) -> candle_core::Result<Tensor> {
    if !t.track_op() {
        return Ok(t.clone());
    }
    let comm = comm.clone();
    t.apply_op1(Precomputed {
        name: "lazy-kernels-replicated",
        value: t.detach(),
        bwd: move |g: &Tensor| {
            let mut host = to_host(g)?;
            comm.all_reduce_sum(&mut host)?;
            Ok(Some(
                Tensor::from_vec(host, g.shape(), g.device())?.to_dtype(g.dtype())?,
            ))
        },
    })
}

/// The rows of every rank's `local` `(rows_r, ...)` stacked in rank order, `(rows, ...)`, where
/// rank `r` holds `Comm::block(rows, size, r)`; differentiable with respect to `local`.
pub(crate) fn gather_rows(comm: &Comm, local: &Tensor, rows: usize) -> candle_core::Result<Tensor> {
    let whole = all_gather_rows(comm, &local.detach(), rows)?;
    if !local.track_op() {
        return Ok(whole);
    }
    let (start, len) = comm.my_block(rows);
    local.apply_op1(Precomputed {
        name: "lazy-kernels-gather-rows",
        value: whole,
        bwd: move |g: &Tensor| Ok(Some(g.narrow(0, start, len)?.contiguous()?)),
    })
}

/// `t`'s values in `f64` on the host, flattened (exact for every float dtype and for indices
/// below `2^53`).
fn to_host(t: &Tensor) -> candle_core::Result<Vec<f64>> {
    t.to_dtype(DType::F64)?
        .flatten_all()?
        .to_device(&candle_core::Device::Cpu)?
        .to_vec1()
}

/// The all-gather of row blocks, not differentiable: through the host in `f64`.
pub(crate) fn all_gather_rows(
    comm: &Comm,
    local: &Tensor,
    rows: usize,
) -> candle_core::Result<Tensor> {
    let dims = local.dims().to_vec();
    let per_row: usize = dims.iter().skip(1).product();
    let counts: Vec<usize> = comm.counts(rows).iter().map(|c| c * per_row).collect();
    let all = comm.all_gather(&to_host(local)?, &counts)?;
    let mut shape = dims;
    shape[0] = rows;
    Tensor::from_vec(all, shape, local.device())?.to_dtype(local.dtype())
}
