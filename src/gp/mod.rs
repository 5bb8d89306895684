//! Exact Gaussian-process regression on a [`KernelOperator`]: the marginal likelihood through
//! the differentiable solve and stochastic Lanczos quadrature, without building the kernel
//! matrix, or exactly by a dense Cholesky factorisation on the device for problems small
//! enough ([`NllMethod`], chosen by size by default), hyperparameters learned by gradients
//! ([`ExactGp::fit`]: AdamW, or L-BFGS on the exact path), predictions with
//! variances ([`ExactGp::predict`]: LOVE or batched solves), the mean alone
//! ([`ExactGp::predict_mean`]), joint posterior samples ([`ExactGp::posterior_samples`]), and
//! models saved and loaded in safetensors ([`persist`]).
//!
//! The model: `y = m + f(x) + eps`, `f ~ GP(0, k)`, `eps ~ N(0, sigma^2)`, with a constant mean
//! `m`, a kernel `k` built by a closure from [`Positive`] hyperparameters (so that sums,
//! products and scalings of the kernels of [`Kernel`] compose freely), and a noise variance
//! `sigma^2` (plus a small floor, [`GpSettings::noise_floor`]).
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use lazy_kernels::gp::{ExactGp, Positive};
//! use lazy_kernels::Kernel;
//! let dev = Device::Cpu;
//! let x = Tensor::rand(0f64, 1., (200, 1), &dev)?;
//! let y = ((x.clone() * 6.0)?.sin()? * 2.0)?.squeeze(1)?;
//! let l = Positive::new("lengthscale", &[0.2], DType::F64, &dev)?;
//! let s = Positive::new("outputscale", &[1.0], DType::F64, &dev)?;
//! let noise = Positive::new("noise", &[0.1], DType::F64, &dev)?;
//! let (lc, sc) = (l.clone(), s.clone());
//! let gp = ExactGp::new(&x, &y, vec![l, s], noise,
//!     move || Ok(Kernel::gaussian(&lc.value()?).scale(&sc.value()?)))?;
//! let (nll, report) = gp.nll()?;          // differentiable: nll.backward()
//! assert!(report.converged && nll.to_scalar::<f64>()?.is_finite());
//! let p = gp.predict(&Tensor::new(&[[0.5f64]], &dev)?)?;
//! let want = 2.0 * 3f64.sin();
//! assert!((p.mean.to_vec1::<f64>()?[0] - want).abs() < 0.1);
//! # Ok::<(), candle_core::Error>(())
//! ```

mod exact;
mod fit;
pub mod persist;
mod positive;
mod predict;

pub use exact::NllMethod;
pub use fit::{FitOptions, FitReport, FitStep, Optimizer};
pub use persist::SavedGp;
pub use positive::{Positive, Transform};
pub use predict::{LoveReport, MAX_SAMPLE_POINTS, Prediction, Variances};

use candle_core::{DType, Tensor, Var};

use crate::dist::Comm;
use crate::error::Error;
use crate::solve::{LogdetEstimator, LogdetOptions, Preconditioner, Rank, Ridge, SolveOptions};
use crate::{Kernel, KernelOperator};

/// Settings of the solves and estimates of an [`ExactGp`].
#[derive(Clone, Debug, PartialEq)]
pub struct GpSettings {
    /// How the marginal likelihood is computed (default [`NllMethod::Auto`]: exactly up to
    /// [`NllMethod::exact_limit`] points, stochastically above). The settings below up to
    /// `quadrature_tol` are those of the stochastic path.
    pub nll_method: NllMethod,
    /// CG tolerance (relative residual) of the training solves (default `1e-3`).
    pub train_tol: f64,
    /// CG tolerance of the prediction solves (default `1e-8`; solves that stall at the
    /// rounding floor of `f32` are accepted).
    pub predict_tol: f64,
    /// Probe vectors of the log-determinant estimate (default 16).
    pub probes: usize,
    /// The largest Lanczos tridiagonal per probe (default 100).
    pub lanczos_iters: usize,
    /// The probes' preconditioner (default [`LogdetEstimator::BlockCorrected`], see
    /// [`LogdetOptions::estimator`]).
    pub logdet_estimator: LogdetEstimator,
    /// How far each probe's Lanczos quadrature is converged, in nats (default `1e-2`, see
    /// [`LogdetOptions::quadrature_tol`]).
    pub quadrature_tol: f64,
    /// The preconditioner (default: pivoted Cholesky of automatic rank, at most 100).
    pub preconditioner: Preconditioner,
    /// CG iteration cap (default 1000).
    pub max_iters: usize,
    /// Seed of the probes (default 0): [`ExactGp::nll`] uses it, step `s` of
    /// [`ExactGp::fit`] uses `seed + s`, so results are reproducible for a given seed.
    pub seed: u64,
    /// Added to the noise variance (default `1e-6`), so that `K + sigma^2 I` stays well
    /// conditioned when the learned noise goes to 0.
    pub noise_floor: f64,
    /// Test points per batched variance solve of [`Variances::Exact`] (default 64): memory is
    /// `O(chunk N)`.
    pub predict_chunk: usize,
    /// How [`ExactGp::predict`] computes variances (default: [`Variances::Love`]).
    pub variances: Variances,
    /// Whether [`ExactGp::fit`] learns the constant mean (default `true`; with `false` it
    /// stays at its value, the mean of `y` unless set).
    pub learn_mean: bool,
}

impl Default for GpSettings {
    fn default() -> Self {
        GpSettings {
            nll_method: NllMethod::Auto,
            train_tol: 1e-3,
            predict_tol: 1e-8,
            probes: 16,
            lanczos_iters: 100,
            logdet_estimator: LogdetEstimator::BlockCorrected,
            quadrature_tol: 1e-2,
            preconditioner: Preconditioner::PivotedCholesky(Rank::Auto { max: 100 }),
            max_iters: 1000,
            seed: 0,
            noise_floor: 1e-6,
            predict_chunk: 64,
            variances: Variances::default(),
            learn_mean: true,
        }
    }
}

/// What one evaluation of the negative log marginal likelihood found.
#[derive(Clone, Debug, PartialEq)]
pub struct NllReport {
    /// `-log p(y)`, total over the points.
    pub nll: f64,
    /// `(y - m)^T (K + sigma^2 I)^-1 (y - m) / 2`.
    pub data_fit: f64,
    /// The estimate of `log det(K + sigma^2 I)`.
    pub logdet: f64,
    /// Its standard error (probe spread).
    pub logdet_std_error: f64,
    /// CG iterations of the data column, and the most over the probes.
    pub iterations: (usize, usize),
    /// Whether the data solve converged.
    pub converged: bool,
    /// Rank of the pivoted-Cholesky preconditioner (0 without one).
    pub preconditioner_rank: usize,
    /// The path taken: [`NllMethod::Exact`] (then the standard error is 0, the iterations
    /// `(0, 0)` and the rank 0) or [`NllMethod::Stochastic`].
    pub method: NllMethod,
}

/// The kernel closure of an [`ExactGp`].
type KernelFn = Box<dyn Fn() -> candle_core::Result<Kernel> + Send + Sync>;

/// An exact GP regression model (see the [module documentation](self)).
pub struct ExactGp {
    x: Tensor,
    y: Tensor,
    hypers: Vec<Positive>,
    noise: Positive,
    mean: Var,
    kernel: KernelFn,
    /// The settings of solves and estimates.
    pub settings: GpSettings,
    /// What predictions share for the current model state (see [`ExactGp::predict`]).
    cache: std::sync::Mutex<Option<predict::PredictCache>>,
    /// The ranks its kernel products are split over ([`ExactGp::shard`]).
    comm: Comm,
}

const OP: &str = "ExactGp";

impl ExactGp {
    /// A model of the targets `y` (`(N,)` or `(N, 1)`) at the inputs `x` (`(N, D)` or `(N,)`),
    /// with the kernel built by `kernel` from the hyperparameters `hypers` (the closure
    /// captures clones of them) and the noise variance `noise`. The constant mean starts at
    /// the mean of `y`. Every tensor must share `x`'s dtype and device.
    pub fn new(
        x: &Tensor,
        y: &Tensor,
        hypers: Vec<Positive>,
        noise: Positive,
        kernel: impl Fn() -> candle_core::Result<Kernel> + Send + Sync + 'static,
    ) -> candle_core::Result<ExactGp> {
        let n = x.dim(0)?;
        let y = match y.dims() {
            [m] if *m == n => y.clone(),
            [m, 1] if *m == n => y.reshape(n)?,
            dims => {
                return Err(Error::Shape {
                    op: OP,
                    detail: format!("y must be ({n},) or ({n}, 1) for {n} inputs, got {dims:?}"),
                }
                .into());
            }
        };
        if n == 0 {
            return Err(Error::Shape {
                op: OP,
                detail: "no training points".into(),
            }
            .into());
        }
        let x = if x.rank() == 1 {
            x.reshape((n, 1))?
        } else {
            x.clone()
        };
        if y.dtype() != x.dtype() || noise.var().dtype() != x.dtype() {
            return Err(Error::DType {
                op: OP,
                detail: format!(
                    "x is {:?}, y {:?} and the noise {:?}: they must agree",
                    x.dtype(),
                    y.dtype(),
                    noise.var().dtype()
                ),
            }
            .into());
        }
        if !y.device().same_device(x.device()) {
            return Err(Error::Device {
                op: OP,
                detail: "x and y are on different devices".into(),
            }
            .into());
        }
        let ysum = y.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
        if !ysum.is_finite() {
            return Err(Error::InvalidArgument {
                op: OP,
                detail: "y contains NaN or infinite values".into(),
            }
            .into());
        }
        let mean = Tensor::new(&[ysum / n as f64], x.device())?.to_dtype(x.dtype())?;
        let gp = ExactGp {
            x,
            y,
            hypers,
            noise,
            mean: Var::from_tensor(&mean)?,
            kernel: Box::new(kernel),
            settings: GpSettings::default(),
            cache: std::sync::Mutex::new(None),
            comm: Comm::single(),
        };
        // Build the kernel once, so that a wrong closure fails here, not in `fit`.
        gp.operator()?;
        Ok(gp)
    }

    /// The same model with other settings.
    pub fn with_settings(mut self, settings: GpSettings) -> ExactGp {
        self.settings = settings;
        self
    }

    /// The kernel hyperparameters given at creation.
    pub fn hypers(&self) -> &[Positive] {
        &self.hypers
    }

    /// The noise variance `sigma^2` (without the floor).
    pub fn noise(&self) -> &Positive {
        &self.noise
    }

    /// The constant mean.
    pub fn mean(&self) -> &Var {
        &self.mean
    }

    /// Every `Var` the model learns: the hyperparameters' raw values, the noise's, and the
    /// mean unless `settings.learn_mean` is off.
    pub fn vars(&self) -> Vec<Var> {
        let mut v: Vec<Var> = self.hypers.iter().map(|h| h.var().clone()).collect();
        v.push(self.noise.var().clone());
        if self.settings.learn_mean {
            v.push(self.mean.clone());
        }
        v
    }

    /// The training inputs `(N, D)` and targets `(N,)`.
    pub fn data(&self) -> (&Tensor, &Tensor) {
        (&self.x, &self.y)
    }

    /// The kernel operator on the training inputs, with the current hyperparameters.
    pub fn operator(&self) -> candle_core::Result<KernelOperator> {
        Ok(KernelOperator::new((self.kernel)()?, &self.x, &self.x)?.shard(&self.comm))
    }

    /// The same model, whose kernel products (in [`ExactGp::nll`], its gradients,
    /// [`ExactGp::fit`] and the predictions) are split over the ranks of `comm` (see
    /// [`crate::dist`] and [`KernelOperator::shard`]). Every rank builds the same model from
    /// the same data and makes the same calls; each gets the single-process results, to
    /// rounding, and steps its optimiser identically. The dense paths
    /// ([`NllMethod::Exact`], dense covariances) run whole on every rank.
    ///
    /// ```
    /// use candle_core::{DType, Device, Tensor};
    /// use lazy_kernels::dist::LocalGroup;
    /// use lazy_kernels::gp::{ExactGp, NllMethod, Positive};
    /// use lazy_kernels::Kernel;
    /// let dev = Device::Cpu;
    /// let x = Tensor::rand(0f64, 1., (300, 1), &dev)?;
    /// let y = x.affine(6.0, 0.0)?.sin()?.squeeze(1)?;
    /// let model = || -> candle_core::Result<ExactGp> {
    ///     let l = Positive::new("lengthscale", &[0.3], DType::F64, &dev)?;
    ///     let noise = Positive::new("noise", &[0.01], DType::F64, &dev)?;
    ///     let lc = l.clone();
    ///     let mut gp = ExactGp::new(&x, &y, vec![l], noise, move || Ok(Kernel::gaussian(&lc.value()?)))?;
    ///     gp.settings.nll_method = NllMethod::Stochastic;
    ///     Ok(gp)
    /// };
    /// let whole = model()?.nll()?.0.to_scalar::<f64>()?;
    /// let parts = LocalGroup::run(2, |comm| model()?.shard(&comm).nll()?.0.to_scalar::<f64>())?;
    /// assert!((parts[1] - whole).abs() <= 1e-9 * whole.abs());
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn shard(self, comm: &Comm) -> ExactGp {
        ExactGp {
            comm: comm.clone(),
            cache: std::sync::Mutex::new(None),
            ..self
        }
    }

    /// The communicator its products are split over ([`ExactGp::shard`]).
    pub fn comm(&self) -> &Comm {
        &self.comm
    }

    /// `sigma^2 + floor`, tracked.
    fn noise_variance(&self) -> candle_core::Result<Tensor> {
        self.noise.value()?.sum_all()? + self.settings.noise_floor
    }

    fn solve_options(&self, tol: f64) -> SolveOptions {
        SolveOptions {
            tol,
            max_iters: self.settings.max_iters,
            preconditioner: self.settings.preconditioner,
            ..SolveOptions::default()
        }
    }

    /// The negative log marginal likelihood `-log p(y)` (total over the points) as a
    /// differentiable scalar, by the path of `settings.nll_method` (with the probes of seed
    /// `settings.seed` on the stochastic path).
    pub fn nll(&self) -> candle_core::Result<(Tensor, NllReport)> {
        self.nll_seeded(self.settings.seed)
    }

    /// The path [`ExactGp::nll`] takes for this model: [`NllMethod::Exact`] or
    /// [`NllMethod::Stochastic`].
    pub fn nll_method(&self) -> candle_core::Result<NllMethod> {
        Ok(self
            .settings
            .nll_method
            .resolve(self.x.dim(0)?, self.x.device()))
    }

    /// [`ExactGp::nll`] with the probes of `seed` (which the exact path does not use).
    pub fn nll_seeded(&self, seed: u64) -> candle_core::Result<(Tensor, NllReport)> {
        match self.nll_method()? {
            NllMethod::Exact => self.nll_exact(),
            _ => self.nll_stochastic(seed),
        }
    }

    /// `-log p(y)` by the CG solve and stochastic Lanczos quadrature.
    fn nll_stochastic(&self, seed: u64) -> candle_core::Result<(Tensor, NllReport)> {
        let s = &self.settings;
        let n = self.x.dim(0)?;
        let k = self.operator()?;
        let r = self.y.broadcast_sub(self.mean.as_tensor())?;
        let ld = LogdetOptions {
            probes: s.probes,
            lanczos_iters: s.lanczos_iters,
            seed,
            estimator: s.logdet_estimator,
            quadrature_tol: s.quadrature_tol,
        };
        let (a, logdet, info, ldinfo) = k.solve_logdet(
            &r,
            Ridge::Tensor(self.noise_variance()?),
            &self.solve_options(s.train_tol),
            &ld,
        )?;
        let fit = ((&r * &a)?.sum_all()? * 0.5)?;
        let constant = 0.5 * n as f64 * (2.0 * std::f64::consts::PI).ln();
        let nll = ((&fit + (logdet * 0.5)?)? + constant)?;
        let report = NllReport {
            nll: nll.to_dtype(DType::F64)?.to_scalar::<f64>()?,
            data_fit: fit.to_dtype(DType::F64)?.to_scalar::<f64>()?,
            logdet: ldinfo.value,
            logdet_std_error: ldinfo.std_error,
            iterations: (
                info.iterations,
                ldinfo.probe_iterations.iter().cloned().max().unwrap_or(0),
            ),
            converged: info.all_converged(),
            preconditioner_rank: info.preconditioner_rank,
            method: NllMethod::Stochastic,
        };
        Ok((nll, report))
    }
}
