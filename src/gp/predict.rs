//! Prediction: the posterior mean and variance at new points.

use candle_core::{DType, Tensor};

use super::{ExactGp, OP};
use crate::error::Error;
use crate::solve::{SolveInfo, Stop};
use crate::KernelOperator;

/// The posterior at new points.
#[derive(Clone, Debug)]
pub struct Prediction {
    /// Posterior mean of `f` (and of `y`), `(M,)`.
    pub mean: Tensor,
    /// Posterior variance of the latent `f`, `(M,)`.
    pub variance: Tensor,
    /// The noise variance `sigma^2` (with the floor) that an observation adds.
    pub noise: f64,
}

impl Prediction {
    /// The 95% interval of a new observation `y`: `mean -+ 1.96 sqrt(variance + sigma^2)`,
    /// as `(lower, upper)`.
    pub fn interval(&self) -> candle_core::Result<(Tensor, Tensor)> {
        self.interval_z(1.959_963_984_540_054, true)
    }

    /// `mean -+ z sd`, with `sd` the standard deviation of `y` (`observed`) or of `f`.
    pub fn interval_z(&self, z: f64, observed: bool) -> candle_core::Result<(Tensor, Tensor)> {
        let var = if observed {
            (&self.variance + self.noise)?
        } else {
            self.variance.clone()
        };
        let half = (var.sqrt()? * z)?;
        Ok(((&self.mean - &half)?, (&self.mean + &half)?))
    }
}

/// An error unless every column converged, or stalled at the rounding floor.
fn accept(info: &SolveInfo, what: &str) -> candle_core::Result<()> {
    match info
        .stops
        .iter()
        .position(|s| matches!(s, Stop::MaxIters | Stop::Breakdown))
    {
        None => Ok(()),
        Some(c) => Err(Error::InvalidArgument {
            op: OP,
            detail: format!(
                "{what}: column {c} did not converge ({:?}, relative residual {:.2e} after {} \
                 iterations); raise settings.max_iters or the preconditioner's rank",
                info.stops[c], info.residuals[c], info.column_iterations[c]
            ),
        }
        .into()),
    }
}

impl ExactGp {
    /// The posterior mean and variance at `x_new` (`(M, D)` or `(M,)`), with the current
    /// hyperparameters (no gradients). The variance takes one batched solve per
    /// `settings.predict_chunk` test points, each against `chunk` columns of `K(x, x_new)`, so
    /// memory stays `O(chunk N)`.
    pub fn predict(&self, x_new: &Tensor) -> candle_core::Result<Prediction> {
        let dtype = self.x.dtype();
        let d = self.x.dim(1)?;
        let x_new = match x_new.dims() {
            [m] if d == 1 => x_new.reshape((*m, 1))?,
            [_, e] if *e == d => x_new.clone(),
            dims => {
                return Err(Error::Shape {
                    op: OP,
                    detail: format!("the new points must be (M, {d}), got {dims:?}"),
                }
                .into())
            }
        };
        if x_new.dtype() != dtype {
            return Err(Error::DType {
                op: OP,
                detail: format!(
                    "the new points are {:?}, the model {dtype:?}",
                    x_new.dtype()
                ),
            }
            .into());
        }
        let kernel = (self.kernel)()?.to_dtype(dtype)?;
        let noise = self
            .noise_variance()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        let mean = self.mean.as_tensor().detach();
        let opts = self.solve_options(self.settings.predict_tol);

        // One system and preconditioner for the mean's solve and every variance solve.
        let k = KernelOperator::new(kernel.clone(), &self.x, &self.x)?;
        let r = self.y.broadcast_sub(&mean)?;
        let solver = k.solver(&r, noise, &opts)?;
        let (a, info) = solver.solve(&r)?;
        accept(&info, "the mean's solve")?;
        let cross = KernelOperator::new(kernel.clone(), &x_new, &self.x)?;
        let mu = cross.matmul(&a)?.broadcast_add(&mean)?;

        let prior = KernelOperator::new(kernel, &x_new, &x_new)?.diag()?;
        let m = x_new.dim(0)?;
        let chunk = self.settings.predict_chunk.max(1);
        let mut parts = Vec::with_capacity(m.div_ceil(chunk));
        for start in (0..m).step_by(chunk) {
            let idx: Vec<usize> = (start..(start + chunk).min(m)).collect();
            let b = cross.rows(&idx)?.t()?.contiguous()?; // (N, c)
            let (v, info) = solver.solve(&b)?;
            accept(&info, "a variance solve")?;
            parts.push((&b * &v)?.sum(0)?);
        }
        let explained = Tensor::cat(&parts, 0)?;
        let variance = (prior - explained)?.relu()?;
        Ok(Prediction {
            mean: mu,
            variance,
            noise,
        })
    }
}
