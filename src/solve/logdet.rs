//! `log det(K + alpha I)` by stochastic Lanczos quadrature, from the same batched CG run as a
//! solve, with its gradient by Hutchinson's estimator.
//!
//! The probes `z_i` are drawn from `N(0, P)`, `P = L^T L + delta I` the pivoted-Cholesky
//! preconditioner (from `N(0, I)` without one), and solved together with `b`. Then
//!
//! - `log det(A) = log det(P) + E[w^T log(P^-1/2 A P^-1/2) w]` with `w = P^-1/2 z ~ N(0, I)`:
//!   `log det(P)` is exact (Woodbury), and each PCG run gives the Lanczos quadrature of the
//!   second term (see [`super::lanczos`]); a good preconditioner leaves little to estimate;
//! - `d log det(A) = tr(A^-1 dA) = E[(A^-1 z)^T dA (P^-1 z)]`, since `E[P^-1 z z^T] = I`:
//!   the value is returned as a tensor whose gradient is that of
//!   `mean_i (A^-1 z_i)^T A (P^-1 z_i)` with both vectors fixed.
//!
//! The probes come from a seeded generator on the host, so an estimate depends only on the
//! seed (not on the device or the number of threads).

use std::time::Instant;

use candle_core::Tensor;

use super::cg::{CgOutcome, Preconditioner as _};
use super::random::Normals;
use super::{host_read, lanczos, Ridge, SolveInfo, SolveOptions, OP};
use crate::error::Error;
use crate::operator::{matmul_lazy, prepare_matmul};
use crate::KernelOperator;

/// Settings of the log-determinant estimate of [`KernelOperator::solve_logdet`].
///
/// ```
/// use lazy_kernels::LogdetOptions;
/// let o = LogdetOptions { probes: 32, ..LogdetOptions::default() };
/// assert_eq!((o.lanczos_iters, o.seed), (100, 0));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogdetOptions {
    /// Probe vectors (default 16): the estimate's standard error falls as `1/sqrt(probes)`.
    pub probes: usize,
    /// The largest Lanczos tridiagonal taken from each probe's CG run (default 100).
    pub lanczos_iters: usize,
    /// Seed of the probes (default 0): one seed, one estimate.
    pub seed: u64,
}

impl Default for LogdetOptions {
    fn default() -> Self {
        LogdetOptions {
            probes: 16,
            lanczos_iters: 100,
            seed: 0,
        }
    }
}

/// What the log-determinant estimate found.
#[derive(Clone, Debug, PartialEq)]
pub struct LogdetInfo {
    /// The estimate of `log det(K + alpha I)`.
    pub value: f64,
    /// Its exact part, `log det(P)` of the preconditioner (0 without one).
    pub preconditioner_logdet: f64,
    /// Standard error of the estimate (the spread of the probes over `sqrt(probes)`).
    pub std_error: f64,
    /// CG iterations of each probe.
    pub probe_iterations: Vec<usize>,
}

/// The outcome of the columns `range` of a batched run.
fn columns(out: &CgOutcome, range: std::ops::Range<usize>) -> CgOutcome {
    CgOutcome {
        iterations: out.iterations[range.clone()].to_vec(),
        residuals: out.residuals[range.clone()].to_vec(),
        converged: out.converged[range.clone()].to_vec(),
        stops: out.stops[range.clone()].to_vec(),
        products: out.products,
        lanczos: out.lanczos[range].to_vec(),
    }
}

impl KernelOperator {
    /// Solves `(K + alpha I) a = b` as [`KernelOperator::solve`] does and, from the same batched
    /// CG run, estimates `log det(K + alpha I)` by stochastic Lanczos quadrature with
    /// `ld.probes` probe vectors solved together with `b` (the marginal likelihood of a
    /// Gaussian process needs both).
    ///
    /// Returns `a` (differentiable as in `solve`), the log-determinant as a scalar tensor of the
    /// operator's dtype whose gradient (with respect to the points, every kernel
    /// hyperparameter and a tensor `alpha`) is Hutchinson's estimate of
    /// `tr((K + alpha I)^-1 d(K + alpha I))` from the same probes, the solve's report for the
    /// columns of `b`, and the estimate's report. The probes are solved to `opts.tol` as well;
    /// a probe whose Lanczos matrix is not positive definite is an error.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use lazy_kernels::{Kernel, KernelOperator, LogdetOptions, SolveOptions};
    /// let x = Tensor::rand(0f64, 1., (500, 1), &Device::Cpu)?;
    /// let l = Tensor::new(&[0.2f64], &Device::Cpu)?;
    /// let k = KernelOperator::new(Kernel::gaussian(&l), &x, &x)?;
    /// let y = (x.clone() * 3.0)?.sin()?;
    /// let (a, logdet, info, ld) = k.solve_logdet(&y, 0.1, &SolveOptions::default(),
    ///                                          &LogdetOptions::default())?;
    /// assert!(info.all_converged());
    /// assert!((logdet.to_scalar::<f64>()? - ld.value).abs() < 1e-12);
    /// assert!(ld.std_error < 0.05 * ld.value.abs());
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn solve_logdet(
        &self,
        b: &Tensor,
        alpha: impl Into<Ridge>,
        opts: &SolveOptions,
        ld: &LogdetOptions,
    ) -> candle_core::Result<(Tensor, Tensor, SolveInfo, LogdetInfo)> {
        if ld.probes == 0 || ld.lanczos_iters == 0 {
            return Err(Error::InvalidArgument {
                op: OP,
                detail: format!(
                    "the log-determinant needs at least one probe and one Lanczos step, got \
                     {} probes and {} steps",
                    ld.probes, ld.lanczos_iters
                ),
            }
            .into());
        }
        let setup = self.setup(b, alpha.into(), opts)?;
        let (n, e, p) = (setup.n, setup.b64.dim(1)?, ld.probes);
        if setup.k.tracks_grad() {
            let device = setup.b64.device();
            prepare_matmul(&setup.k, (n, n), &[p], setup.dtype, device)?;
        }
        let mut normals = Normals::new(ld.seed);
        let (z, pre_logdet) = match &setup.system.pre {
            Some(pre) => {
                let g1 = normals.tensor(pre.rank(), p, &setup.b64)?;
                let g2 = normals.tensor(n, p, &setup.b64)?;
                (pre.sample(&g1, &g2)?, pre.logdet()?)
            }
            None => (normals.tensor(n, p, &setup.b64)?, 0.0),
        };
        let rhs = Tensor::cat(&[&setup.b64, &z], 1)?;
        let x0 = match &setup.x0 {
            Some(x0) => Some(Tensor::cat(&[x0, &z.zeros_like()?], 1)?),
            None => None,
        };
        let start = Instant::now();
        let (sol, out) = setup.system.solve_detached(&rhs, x0.as_ref())?;
        let seconds = start.elapsed().as_secs_f64();

        // The quadrature: log det(P) + mean_i |w_i|^2 e1^T log(T_i) e1, |w_i|^2 = z_i^T P^-1 z_i.
        let v = match &setup.system.pre {
            Some(pre) => pre.apply(&z)?,
            None => z.clone(),
        };
        let w2 = host_read((&z * &v)?.sum(0)?.to_vec1::<f64>())?;
        let mut terms = Vec::with_capacity(p);
        for (i, w) in w2.iter().enumerate() {
            let q = lanczos::log_quadrature(&out.lanczos[e + i], ld.lanczos_iters).ok_or_else(
                || Error::InvalidArgument {
                    op: OP,
                    detail: format!(
                        "probe {i}: the Lanczos matrix of K + alpha I is not positive definite \
                         (a kernel that is not, or a ridge too small for the dtype)"
                    ),
                },
            )?;
            terms.push(w * q);
        }
        let mean = terms.iter().sum::<f64>() / p as f64;
        let var = terms.iter().map(|t| (t - mean) * (t - mean)).sum::<f64>() / p as f64;
        let info = LogdetInfo {
            value: pre_logdet + mean,
            preconditioner_logdet: pre_logdet,
            std_error: (var / p as f64).sqrt(),
            probe_iterations: out.iterations[e..].to_vec(),
        };

        // Hutchinson: the gradient of mean_i u_i^T (K + alpha I) v_i, u = A^-1 z, v = P^-1 z.
        let dtype = setup.dtype;
        let alpha_tracks = matches!(&setup.alpha, Ridge::Tensor(t) if t.track_op());
        let value = Tensor::new(info.value, b.device())?.to_dtype(dtype)?;
        let logdet = if setup.k.tracks_grad() || alpha_tracks {
            let u = sol.narrow(1, e, p)?.to_dtype(dtype)?;
            let vd = v.to_dtype(dtype)?;
            let kv = matmul_lazy(&setup.k, &vd, (n, n), OP)?;
            let av = match &setup.alpha {
                Ridge::Tensor(t) => vd.broadcast_mul(&t.flatten_all()?.reshape((1, 1))?)?,
                Ridge::Value(a) => (&vd * *a)?,
            };
            let s = ((u * (kv + av)?)?.sum_all()? / p as f64)?;
            (value + (&s - s.detach())?)?
        } else {
            value
        };
        let a64 = sol.narrow(0, 0, n)?.narrow(1, 0, e)?.contiguous()?;
        let (a, solve_info) = setup.finish(a64, columns(&out, 0..e), seconds)?;
        Ok((a, logdet, solve_info, info))
    }
}
