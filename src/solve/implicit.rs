//! The solve's gradient, by implicit differentiation.
//!
//! For `a = (K + alpha I)^-1 b` and an upstream gradient `g`, one adjoint solve gives
//! `lambda = (K + alpha I)^-1 g` (the matrix is symmetric), and then `db = lambda`,
//! `dalpha = -<lambda, a>`, `dtheta = -lambda^T (dK/dtheta) a` for every point and
//! hyperparameter `theta`.
//!
//! In Candle's graph: `z = b + (u.detach() - u)` with `u = K a + alpha a` built from the
//! differentiable operator and the (detached) solution `a`. `z` equals `b` exactly (the
//! bracket is an exact zero) and its gradient reaches `b` with `+` and everything in `K` and
//! `alpha` through `-u`. The custom op below returns the already computed `a` for `z` and, in
//! its backward pass, runs the adjoint solve with the forward pass's preconditioner.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use super::{Stop, System};
use crate::error::Error;

/// The identity on values that answers `bwd` with an adjoint solve.
pub(crate) struct SolveOp {
    /// The solution, in the dtype and shape of `b`, contiguous.
    pub solution: Tensor,
    pub system: Arc<System>,
    /// The largest relative residual the forward solve reached: an adjoint solve that stalls
    /// at its rounding floor (in `f32`) is accepted within 10x of this or of the tolerance,
    /// so that the gradient is as accurate as the value.
    pub forward_residual: f64,
}

impl CustomOp1 for SolveOp {
    fn name(&self) -> &'static str {
        "lazy-kernels-solve"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        crate::op::value_cpu(&self.solution, "KernelOperator::solve")
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        crate::op::value_cuda(&self.solution, "KernelOperator::solve")
    }

    fn bwd(&self, _: &Tensor, _: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (lambda, out) = self.system.solve_detached(&g.detach(), None)?;
        // Stalling at the rounding floor (f32) is accepted when the floor is no worse than
        // the forward solve's; the iteration cap and breakdowns are errors.
        let floor = 10.0 * self.system.settings.tol.max(self.forward_residual);
        let ok = |c: usize| match out.stops[c] {
            Stop::Converged => true,
            Stop::Stalled => out.residuals[c] <= floor,
            Stop::MaxIters | Stop::Breakdown => false,
        };
        if let Some(c) = (0..out.residuals.len()).find(|&c| !ok(c)) {
            return Err(Error::InvalidArgument {
                op: "KernelOperator::solve (backward)",
                detail: format!(
                    "the adjoint solve did not converge: column {c} stopped ({:?}) at \
                     relative residual {:.3e} after {} iterations (tolerance {:.1e}, forward \
                     solve {:.1e}); raise SolveOptions::max_iters or the preconditioner's rank",
                    out.stops[c],
                    out.residuals[c],
                    out.iterations[c],
                    self.system.settings.tol,
                    self.forward_residual
                ),
            }
            .into());
        }
        Ok(Some(lambda.to_dtype(g.dtype())?))
    }
}
