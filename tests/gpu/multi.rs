//! Sharded computation on the device (issue 20): the checks of `tests/dist/mod.rs` (products
//! and their gradients, reductions over both axes, the preconditioned solve, `solve_logdet`,
//! an exact GP's NLL, gradient, fit and predictions, each against the single-process path on
//! the same device and the product against a dense one) with the ranks as host threads
//! ([`LocalGroup`]):
//! - two ranks sharing the device under test (runs on one GPU, and in the dry run);
//! - one rank per CUDA device, when there are two or more (skipped otherwise);
//! - the same over NCCL (`--features nccl`), one rank per CUDA device, bootstrapped over the
//!   threads' group (skipped with fewer than two devices or without the feature).

use candle_core::Device;
use lazy_kernels::dist::{Comm, LocalGroup};

use super::dist;
use super::{Check, Res, Skipped, check};

pub(super) fn checks(v: &mut Vec<Check>) {
    v.push(check("multi/2 ranks on the device under test", |ctx| {
        let dev = ctx.dev.clone();
        ranks_on(2, move |_| Ok(dev.clone()), |c, _| Ok(c))
    }));
    v.push(check("multi/1 rank per CUDA device", |_| {
        let n = two_or_more()?;
        ranks_on(n, Device::new_cuda, |c, _| Ok(c))
    }));
    v.push(check("multi/NCCL, 1 rank per CUDA device", |_| nccl()));
}

/// The number of CUDA devices, when there are at least two.
fn two_or_more() -> Res<usize> {
    #[cfg(feature = "cuda")]
    {
        use candle_core::cuda_backend::cudarc::driver::CudaContext;
        let n = CudaContext::device_count().map_or(0, |n| n as usize);
        if n >= 2 {
            return Ok(n);
        }
    }
    Err(Skipped("needs two or more CUDA devices (this machine has fewer)").into())
}

#[cfg(feature = "nccl")]
fn nccl() -> Res<String> {
    let n = two_or_more()?;
    ranks_on(n, Device::new_cuda, |c, d| {
        Ok(Comm::new(lazy_kernels::dist::Nccl::new(d, &c)?))
    })
}

#[cfg(not(feature = "nccl"))]
fn nccl() -> Res<String> {
    two_or_more()?;
    Err(Skipped("built without the nccl feature").into())
}

/// Runs every check of `tests/dist/mod.rs` on `size` threads, rank `r` on `device(r)` with the
/// communicator `comm(group's, device)`.
fn ranks_on(
    size: usize,
    device: impl Fn(usize) -> candle_core::Result<Device> + Sync,
    comm: impl Fn(Comm, &Device) -> candle_core::Result<Comm> + Sync,
) -> Res<String> {
    let out = LocalGroup::run(size, |c| {
        let d = device(c.rank())?;
        let c = comm(c, &d)?;
        dist::all_on(&c, &d)
    })?;
    Ok(format!(
        "{} checks passed on each of {size} ranks",
        out[0].len()
    ))
}
