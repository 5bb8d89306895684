//! The CUDA backend: fused reduction kernels generated from the formula ([`codegen`]),
//! compiled with NVRTC for the device's architecture at first use, cached in memory and on disk
//! ([`cache`]), and launched on Candle's stream (feature `cuda`).
//!
//! The code generator and the disk cache are part of every build, so that they can be tested
//! (and the generated sources compiled by `nvcc`) on machines without a GPU.

pub mod cache;
pub mod codegen;
#[cfg(feature = "cuda")]
pub(crate) mod launch;

pub use codegen::{generate, CudaKernel, Storage};

#[cfg(not(feature = "cuda"))]
use super::ReductionPlan;
#[cfg(not(feature = "cuda"))]
use crate::error::Error;

/// Builds without the `cuda` feature cannot hold a CUDA tensor; should one arrive, this says
/// how to get a build that runs it.
#[cfg(not(feature = "cuda"))]
pub(crate) fn unavailable(plan: &ReductionPlan) -> Error {
    Error::NotImplemented {
        what: "the CUDA backend in this build",
        detail: format!(
            "cannot run {} on a CUDA tensor: build lazy-kernels with `--features cuda`",
            plan.key()
        ),
    }
}
