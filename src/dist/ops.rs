//! The two differentiable collectives of a sharded reduction (see the module documentation of
//! [`crate::dist`]): [`replicated`], the identity whose backward pass sums the gradient over
//! the ranks, and [`gather_rows`], the all-gather of row blocks whose backward pass keeps the
//! rank's own rows.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};

use super::Comm;

/// `t`, as a tensor whose gradient is summed over the ranks (each rank's gradient of a tensor
/// bound into a sharded reduction comes from its own rows only). `t` itself when it tracks no
/// gradient.
pub(crate) fn replicated(comm: &Comm, t: &Tensor) -> candle_core::Result<Tensor> {
    if !t.track_op() {
        return Ok(t.clone());
    }
    t.apply_op1(Replicated {
        comm: comm.clone(),
        value: t.detach(),
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
    local.apply_op1(Gathered {
        value: whole,
        start,
        len,
    })
}

/// The all-gather of row blocks, not differentiable: through the host in `f64` (exact for
/// every float dtype and for indices below `2^53`).
pub(crate) fn all_gather_rows(
    comm: &Comm,
    local: &Tensor,
    rows: usize,
) -> candle_core::Result<Tensor> {
    let dims = local.dims().to_vec();
    let per_row: usize = dims.iter().skip(1).product();
    let counts: Vec<usize> = comm.counts(rows).iter().map(|c| c * per_row).collect();
    let host: Vec<f64> = local
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_device(&candle_core::Device::Cpu)?
        .to_vec1()?;
    let all = comm.all_gather(&host, &counts)?;
    let mut shape = dims;
    shape[0] = rows;
    Tensor::from_vec(all, shape, local.device())?.to_dtype(local.dtype())
}

/// The identity, whose backward pass all-reduces the gradient.
struct Replicated {
    comm: Comm,
    value: Tensor,
}

impl CustomOp1 for Replicated {
    fn name(&self) -> &'static str {
        "lazy-kernels-replicated"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        crate::op::value_cpu(&self.value, "dist (replicated input)")
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        crate::op::value_cuda(&self.value, "dist (replicated input)")
    }

    fn bwd(&self, _: &Tensor, _: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let mut host: Vec<f64> = g
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_device(&candle_core::Device::Cpu)?
            .to_vec1()?;
        self.comm.all_reduce_sum(&mut host)?;
        let sum = Tensor::from_vec(host, g.shape(), g.device())?.to_dtype(g.dtype())?;
        Ok(Some(sum))
    }
}

/// The all-gather of row blocks (its value computed before it is applied), whose backward
/// pass keeps this rank's rows `[start, start + len)`.
struct Gathered {
    value: Tensor,
    start: usize,
    len: usize,
}

impl CustomOp1 for Gathered {
    fn name(&self) -> &'static str {
        "lazy-kernels-gather-rows"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        crate::op::value_cpu(&self.value, "dist (all-gather)")
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        crate::op::value_cuda(&self.value, "dist (all-gather)")
    }

    fn bwd(&self, _: &Tensor, _: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(g.narrow(0, self.start, self.len)?.contiguous()?))
    }
}
