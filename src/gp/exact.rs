//! The exact marginal likelihood: the dense kernel matrix factored by the blocked Cholesky of
//! [`crate::linalg::Cholesky`] on the model's device, with its gradient.
//!
//! `-log p(y) = r^T A^-1 r / 2 + log det A / 2 + N log(2 pi) / 2` with `A = K + sigma^2 I` and
//! `r = y - m`. Its gradient is `dA = (A^-1 - a a^T) / 2` (with `a = A^-1 r`) and `dr = a`. In
//! Candle's graph, one custom op takes the tracked dense `A` (built by
//! [`KernelOperator::to_dense`](crate::KernelOperator::to_dense) from the kernel's
//! hyperparameters, plus the noise on the diagonal), returns the computed value, and answers
//! its backward pass with `dA`, forming `A^-1` from the factor only then; `r` enters as
//! `(r - r.detach()) . a`, an exact zero with gradient `a`. From `dA`, Candle's autodiff
//! reaches every hyperparameter through the kernel's own formula.
//!
//! The factorisation runs in `f64` whatever the model's dtype (an `f32` model's matrix is
//! built a second time in `f64` for it): the dense path is the accurate one. Costs: `N^2`
//! kernel values for the value and `N^2` kernel gradients for the backward pass,
//! `2 N^3 / 3` flops for the factor and `2 N^3` for `A^-1`; memory `O(N^2)`, which is why
//! [`NllMethod::Auto`] takes this path only below [`NllMethod::exact_limit`].

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};

use super::{ExactGp, NllReport, OP};
use crate::error::Error;
use crate::linalg::Cholesky;

/// How [`ExactGp::nll`] computes the negative log marginal likelihood.
///
/// ```
/// use candle_core::Device;
/// use lazy_kernels::gp::NllMethod;
/// assert_eq!(NllMethod::default(), NllMethod::Auto);
/// assert_eq!(NllMethod::Auto.resolve(1_000, &Device::Cpu), NllMethod::Exact);
/// assert_eq!(NllMethod::Auto.resolve(100_000, &Device::Cpu), NllMethod::Stochastic);
/// assert_eq!(NllMethod::Stochastic.resolve(1_000, &Device::Cpu), NllMethod::Stochastic);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NllMethod {
    /// [`NllMethod::Exact`] up to [`NllMethod::exact_limit`] points, where it is the faster
    /// of the two, else [`NllMethod::Stochastic`] (the default).
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
    /// On the CPU it is where the exact step (value and gradient) stops being faster than the
    /// stochastic one with the default settings, measured by `bench_gp` on the 2-core machine
    /// of the README. On CUDA it is a guess, not yet measured: the factorisation runs at the
    /// device's `f64` matrix-product speed, so the crossover lies further out; memory
    /// (`5 N^2` doubles at the peak of the backward pass, 4 GB at this limit) bounds it too.
    pub fn exact_limit(device: &Device) -> usize {
        if device.is_cpu() {
            EXACT_LIMIT_CPU
        } else {
            EXACT_LIMIT_CUDA
        }
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
const EXACT_LIMIT_CPU: usize = 4_000;
/// See [`NllMethod::exact_limit`].
const EXACT_LIMIT_CUDA: usize = 10_000;

/// The value `r^T A^-1 r / 2 + log det A / 2` of a factored `A`, whose backward pass is
/// `g (A^-1 - a a^T) / 2`.
struct DenseNllOp {
    /// The value, a scalar in `A`'s dtype on `A`'s device.
    value: Tensor,
    factor: Cholesky,
    /// `a = A^-1 r`, `(N,)` `f64`.
    alpha: Tensor,
}

impl CustomOp1 for DenseNllOp {
    fn name(&self) -> &'static str {
        "lazy-kernels-dense-nll"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let v = self.value.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let storage = match self.value.dtype() {
            DType::F64 => CpuStorage::F64(vec![v]),
            DType::F32 => CpuStorage::F32(vec![v as f32]),
            other => {
                return Err(Error::DType {
                    op: OP,
                    detail: format!("the exact NLL needs an f32 or f64 model, got {other:?}"),
                }
                .into())
            }
        };
        Ok((storage, Shape::from(())))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let v = self.value.copy()?;
        let (storage, layout) = v.storage_and_layout();
        match &*storage {
            candle_core::Storage::Cuda(c) => Ok((c.try_clone(layout)?, Shape::from(()))),
            _ => Err(Error::Device {
                op: OP,
                detail: "the exact NLL is not on the CUDA device of the kernel matrix".into(),
            }
            .into()),
        }
    }

    fn bwd(&self, a: &Tensor, _: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let outer = self
            .alpha
            .unsqueeze(1)?
            .broadcast_mul(&self.alpha.unsqueeze(0)?)?;
        let w = ((self.factor.inverse()? - outer)? * 0.5)?;
        let g = g.detach().to_dtype(DType::F64)?;
        Ok(Some(w.broadcast_mul(&g)?.to_dtype(a.dtype())?))
    }
}

impl ExactGp {
    /// `-log p(y)` by the dense path (see the [module documentation](self)).
    pub(super) fn nll_exact(&self) -> candle_core::Result<(Tensor, NllReport)> {
        let n = self.x.dim(0)?;
        let dtype = self.x.dtype();
        let dev = self.x.device();
        let k = self.operator()?;
        let noise = self.noise_variance()?;
        let a = (k.to_dense()? + Tensor::eye(n, dtype, dev)?.broadcast_mul(&noise)?)?;
        let a64 = if dtype == DType::F64 {
            a.detach()
        } else {
            let noise64 = noise.detach().to_dtype(DType::F64)?;
            let k64 = k.detached_in(DType::F64)?.to_dense()?;
            (k64 + Tensor::eye(n, DType::F64, dev)?.broadcast_mul(&noise64)?)?
        };
        let factor = Cholesky::new(&a64).map_err(|e| Error::InvalidArgument {
            op: OP,
            detail: format!(
                "the exact NLL's Cholesky factorisation of K + sigma^2 I failed ({e}): the \
                 matrix is not numerically positive definite; raise the noise or \
                 GpSettings::noise_floor"
            ),
        })?;
        let r = self.y.broadcast_sub(self.mean.as_tensor())?;
        let r64 = r.detach().to_dtype(DType::F64)?;
        let alpha = factor.solve(&r64)?;
        let data_fit = 0.5 * (&r64 * &alpha)?.sum_all()?.to_scalar::<f64>()?;
        let logdet = factor.logdet();
        let constant = 0.5 * n as f64 * (2.0 * std::f64::consts::PI).ln();
        let value = data_fit + 0.5 * logdet;
        if !value.is_finite() {
            return Err(Error::InvalidArgument {
                op: OP,
                detail: format!("the exact NLL is {value} (data fit {data_fit}, log det {logdet})"),
            }
            .into());
        }
        let op = DenseNllOp {
            value: Tensor::new(value, dev)?.to_dtype(dtype)?,
            factor,
            alpha: alpha.clone(),
        };
        let core = a.apply_op1(op)?;
        let through_r = ((&r - r.detach())? * alpha.to_dtype(dtype)?)?.sum_all()?;
        let nll = ((core + through_r)? + constant)?;
        let report = NllReport {
            nll: value + constant,
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
