//! The CUDA backend (feature `cuda`): generated fused kernels compiled with NVRTC.
//!
//! Not built yet: a reduction on a CUDA tensor returns an error saying so, never a wrong or
//! empty result. The code generator, NVRTC compilation and the kernel cache come with the CUDA
//! issue; `cuda/` at the repository root will hold the fixed kernel skeleton.

use super::ReductionPlan;
use crate::error::Error;

/// Runs `plan` on a CUDA device: not available yet.
pub(crate) fn unavailable(plan: &ReductionPlan) -> Error {
    Error::NotImplemented {
        what: "the CUDA backend",
        detail: format!(
            "cannot run {} on a CUDA tensor yet; move the inputs to the CPU with \
             `.to_device(&Device::Cpu)`",
            plan.key()
        ),
    }
}
