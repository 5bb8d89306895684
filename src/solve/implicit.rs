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
//! `alpha` through `-u`. A [`Precomputed`](crate::op::Precomputed) op returns the already
//! computed `a` for `z` and, in its backward pass, runs the adjoint solve ([`adjoint`]) with the
//! forward pass's preconditioner.

use candle_core::Tensor;

use super::{Stop, System};
use crate::error::Error;

/// The gradient of `b` from the gradient `g` of the solution: the adjoint solve
/// `lambda = (K + alpha I)^-1 g` with the forward pass's preconditioner (the backward pass of
/// the solve's [`Precomputed`](crate::op::Precomputed) op). `forward_residual` is the largest
/// relative residual the forward solve reached: an adjoint solve that stalls at its rounding
/// floor (in `f32`) is accepted within 10x of it or of the tolerance, so that the gradient is
/// as accurate as the value.
pub(crate) fn adjoint(
    system: &System,
    forward_residual: f64,
    g: &Tensor,
) -> candle_core::Result<Option<Tensor>> {
    let (lambda, out) = system.solve_detached(&g.detach(), None)?;
    // Stalling at the rounding floor (f32) is accepted when the floor is no worse than
    // the forward solve's; the iteration cap and breakdowns are errors.
    let floor = 10.0 * system.settings.tol.max(forward_residual);
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
                system.settings.tol,
                forward_residual
            ),
        }
        .into());
    }
    Ok(Some(lambda.to_dtype(g.dtype())?))
}
