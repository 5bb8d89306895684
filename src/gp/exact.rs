//! The exact marginal likelihood: the dense kernel matrix factored by the blocked Cholesky of
//! [`crate::linalg::Cholesky`] on the model's device, with its gradient.
//!
//! `-log p(y) = r^T A^-1 r / 2 + log det A / 2 + N log(2 pi) / 2` with `A = K + sigma^2 I` and
//! `r = y - m`. Its gradient is `dA = W = (A^-1 - a a^T) / 2` (with `a = A^-1 r`) and
//! `dr = a`. The value comes from the factor of the dense `A` (built from the detached
//! hyperparameters, in `f64` whatever the model's dtype: the dense path is the accurate one).
//! The gradient enters Candle's graph as exact zeros whose gradients are the NLL's:
//! `sum_ij W_ij K_ij - (the same, detached)`, reduced lazily by row blocks (the kernel's own
//! formula and its derivatives, never a tracked `N x N` tensor), `tr(W) (sigma^2 - sigma^2)`
//! and `(r - r) . a`. From there Candle's autodiff reaches every hyperparameter, the noise and
//! the mean.
//!
//! Costs: `N^2` kernel values for `A`, `2 N^3 / 3` flops for the factor and as many for
//! `A^-1` (formed with every evaluation, since `W` is part of the graph), then `N^2` kernel
//! values and gradients for `sum W K` and its backward pass; memory `O(N^2)`
//! ([`NllMethod::exact_memory`]), which is why [`NllMethod::Auto`] takes this path only up to
//! [`NllMethod::exact_limit`].

use candle_core::{DType, Device, Tensor};

use super::{ExactGp, NllReport, OP};
use crate::error::Error;
use crate::linalg::Cholesky;

/// How [`ExactGp::nll`] computes the negative log marginal likelihood.
///
/// ```
/// use candle_core::Device;
/// use lazy_kernels::gp::NllMethod;
/// assert_eq!(NllMethod::default(), NllMethod::Auto);
/// assert_eq!(NllMethod::Auto.resolve(2_000, &Device::Cpu), NllMethod::Exact);
/// assert_eq!(NllMethod::Auto.resolve(100_000, &Device::Cpu), NllMethod::Stochastic);
/// assert_eq!(NllMethod::Stochastic.resolve(1_000, &Device::Cpu), NllMethod::Stochastic);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NllMethod {
    /// [`NllMethod::Exact`] up to [`NllMethod::exact_limit`] points, else
    /// [`NllMethod::Stochastic`] (the default).
    #[default]
    Auto,
    /// The dense kernel matrix and a blocked Cholesky factorisation on the model's device
    /// (see [`crate::linalg::Cholesky`]): exact value and gradient, no standard error,
    /// `O(N^2)` memory and `O(N^3)` time.
    Exact,
    /// Conjugate gradients for the data term and stochastic Lanczos quadrature for the
    /// log-determinant ([`KernelOperator::solve_logdet`](crate::KernelOperator::solve_logdet)):
    /// `O(N)` memory, an unbiased estimate with a standard error.
    Stochastic,
}

impl NllMethod {
    /// The most training points for which [`NllMethod::Auto`] takes the exact path on
    /// `device`.
    ///
    /// Where the exact step is faster than the stochastic one depends on how hard the solves
    /// are. Measured on the 2-core CPU of the README (value and gradient, default settings):
    /// on a well-conditioned problem (`bench_gp`: 3D Gaussian kernel, CG converges in 3 to 5
    /// iterations) the exact step is faster up to N = 200 and 2.2x, 5.3x, 12x slower at 500,
    /// 2,000, 4,000 (0.06, 0.87, 5.8 s); on the ill-conditioned weekly Mauna Loa problem
    /// (N = 2,225, a composite kernel with a short-range term) it is faster: 1.6 s against
    /// 2.0 s. The CPU limit, 2,500, keeps the exact path where its step costs about a second
    /// or less on that machine and where hard problems gain from it; its value is exact and
    /// deterministic, which lets [`Optimizer::Lbfgs`](super::Optimizer::Lbfgs) train on it.
    /// On CUDA the limit is a guess, not yet measured: the factorisation runs at the device's
    /// `f64` matrix-product speed, and [`NllMethod::exact_memory`] at the limit is 6.4 GB.
    pub fn exact_limit(device: &Device) -> usize {
        if device.is_cpu() {
            EXACT_LIMIT_CPU
        } else {
            EXACT_LIMIT_CUDA
        }
    }

    /// About the most memory the exact path takes at `n` training points, in bytes: eight
    /// `n x n` matrices of `f64` (measured on the CPU by `bench_gp`: 881 MiB of peak resident
    /// memory at N = 4,000, 7.2 such matrices).
    ///
    /// ```
    /// use lazy_kernels::gp::NllMethod;
    /// assert_eq!(NllMethod::exact_memory(1000), 64_000_000);
    /// ```
    pub fn exact_memory(n: usize) -> usize {
        n.saturating_mul(n).saturating_mul(8 * 8)
    }

    /// What this choice means for `n` training points on `device`: [`NllMethod::Auto`]
    /// resolved, the others unchanged.
    pub fn resolve(self, n: usize, device: &Device) -> NllMethod {
        match self {
            NllMethod::Auto if n <= NllMethod::exact_limit(device) => NllMethod::Exact,
            NllMethod::Auto => NllMethod::Stochastic,
            other => other,
        }
    }
}

/// See [`NllMethod::exact_limit`].
const EXACT_LIMIT_CPU: usize = 2_500;
/// See [`NllMethod::exact_limit`].
const EXACT_LIMIT_CUDA: usize = 10_000;

/// Rows per reduction of the gradient's weighted sum ([`crate::KernelOperator`]'s
/// `weighted_sum`): measured on the weekly Mauna Loa problem (N = 2,225, 2-core CPU), 256 rows
/// took 0.85 s for the sum and its gradient, 16 rows 1.6 s and one row at a time (a gradient
/// through `to_dense`) 3.1 s.
const GRADIENT_ROWS: usize = 256;

impl ExactGp {
    /// `-log p(y)` by the dense path (see the [module documentation](self)).
    pub(super) fn nll_exact(&self) -> candle_core::Result<(Tensor, NllReport)> {
        let n = self.x.dim(0)?;
        let dtype = self.x.dtype();
        let dev = self.x.device();
        let k = self.operator()?;
        let noise = self.noise_variance()?;
        let noise64 = noise.detach().to_dtype(DType::F64)?.to_scalar::<f64>()?;
        crate::backend::memory::reserve(
            OP,
            || format!("the exact NLL's dense f64 matrices for N = {n} (NllMethod::exact_memory)"),
            n.checked_mul(n).and_then(|nn| nn.checked_mul(64)),
            dev,
        )?;
        let a = (k.detached_in(DType::F64)?.to_dense()?
            + Tensor::eye(n, DType::F64, dev)?.affine(noise64, 0.0)?)?;
        let factor = Cholesky::new(&a).map_err(|e| Error::InvalidArgument {
            op: OP,
            detail: format!(
                "the exact NLL's Cholesky factorisation of K + sigma^2 I failed ({e}): the \
                 matrix is not numerically positive definite; raise the noise or \
                 GpSettings::noise_floor"
            ),
        })?;
        drop(a);
        let r = self.y.broadcast_sub(self.mean.as_tensor())?;
        let r64 = r.detach().to_dtype(DType::F64)?;
        let alpha = factor.solve(&r64)?;
        let data_fit = 0.5 * (&r64 * &alpha)?.sum_all()?.to_scalar::<f64>()?;
        let logdet = factor.logdet();
        let constant = 0.5 * n as f64 * (2.0 * std::f64::consts::PI).ln();
        let value = data_fit + 0.5 * logdet + constant;
        if !value.is_finite() {
            return Err(Error::InvalidArgument {
                op: OP,
                detail: format!("the exact NLL is {value} (data fit {data_fit}, log det {logdet})"),
            }
            .into());
        }
        // The gradient's weights W = (A^-1 - a a^T) / 2, and their trace for the noise.
        let outer = alpha.unsqueeze(1)?.broadcast_mul(&alpha.unsqueeze(0)?)?;
        let w = ((factor.inverse()? - outer)? * 0.5)?;
        drop(factor);
        let trace = (&w * Tensor::eye(n, DType::F64, dev)?)?
            .sum_all()?
            .to_scalar::<f64>()?;
        // Exact zeros whose gradients are those of the NLL: sum W_ij dK_ij, tr(W) dsigma^2,
        // and a^T dr.
        let through_k = k.weighted_sum(&w, GRADIENT_ROWS)?;
        let through_noise = noise.affine(trace, 0.0)?;
        let through_r = ((&r - r.detach())? * alpha.to_dtype(dtype)?)?.sum_all()?;
        let zero = ((through_k.clone() - through_k.detach())?
            + (through_noise.clone() - through_noise.detach())?)?;
        let zero = (zero + through_r)?;
        let nll = (zero + value)?;
        let report = NllReport {
            nll: value,
            data_fit,
            logdet,
            logdet_std_error: 0.0,
            iterations: (0, 0),
            converged: true,
            preconditioner_rank: 0,
            method: super::NllMethod::Exact,
        };
        Ok((nll, report))
    }
}
