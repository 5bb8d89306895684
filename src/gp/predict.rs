//! Prediction: the posterior mean, variance and joint samples at new points.
//!
//! Every prediction works from a cache built once per model state ([`PredictCache`]): the
//! training operator in `f64`, the mean's solve `a = (K + s^2 I)^-1 (y - m)` with its
//! preconditioned solver, and, when asked for, the LOVE factor. On the exact path
//! ([`NllMethod::Exact`](super::NllMethod::Exact), which
//! [`NllMethod::Auto`](super::NllMethod::Auto) takes for small problems) the cache holds the dense Cholesky factor of `K + s^2 I` instead:
//! the mean, [`Variances::Exact`] variances (`|L^-1 k(X, x*)|^2`, a forward substitution by
//! panels per batch of 1024 test points) and the exact covariances of the samples come from
//! it; LOVE, when asked for, is built as on the stochastic path. The cache is keyed on the
//! values of the kernel's parameters, the noise, the mean and the settings: changing any of
//! them (a `fit` step, [`Positive::set`](super::Positive::set), `gp.mean().set(..)`, new
//! settings) rebuilds it at the next prediction.
//!
//! Precision: the model's points and hyperparameters are converted to `f64` (exactly) and
//! everything after that is `f64`: kernel values, solves, the LOVE factor and the subtraction
//! `k(x*, x*) - b^T (K + s^2 I)^-1 b`, which cancels where the variance is small. An `f32` model
//! therefore predicts what an `f64` model of the same (f32-representable) numbers predicts. A
//! formula kernel ([`Kernel::from_formula`](crate::Kernel::from_formula)) whose captured
//! tensors cannot be converted is evaluated in the model's dtype, with everything else in
//! `f64`.

use std::time::Instant;

use candle_core::{DType, Tensor};

use super::{ExactGp, GpSettings, OP};
use crate::error::Error;
use crate::linalg::{Cholesky, matmul};
use crate::solve::{SolveInfo, Solver, Stop};
use crate::{Kernel, KernelOperator};

/// How [`ExactGp::predict`] computes the posterior variances ([`GpSettings::variances`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Variances {
    /// `k(x*, x*) - b^T (K + s^2 I)^-1 b` with `b = k(X, x*)`, by one batched CG solve per
    /// [`GpSettings::predict_chunk`] test points (to [`GpSettings::predict_tol`]): exact, and
    /// `O(M / chunk)` solves per call.
    Exact,
    /// LOVE (Pleiss, Gardner, Weinberger and Wilson, "Constant-Time Predictive Distributions
    /// for Gaussian Processes", ICML 2018): a Lanczos decomposition `Q T Q^T` of
    /// `K + s^2 I` started from `y - m` (with full reorthogonalisation), built once per model
    /// state, gives `R = Q L^-T` (`T = L L^T`, `R` is `N x k`) with
    /// `(K + s^2 I)^-1 ~ R R^T` on the Krylov space. Beyond the paper, the complement of that
    /// space, where Lanczos has not resolved `K` and its small eigenvalues leave
    /// `(K + s^2 I)^-1 ~ s^-2`, is counted as `s^-2 (I - Q Q^T)`: each variance is
    /// `k(x*, x*) - |R^T b|^2 - (|b|^2 - |Q^T b|^2) / s^2` with `b = k(X, x*)`, `O(N k)` per test
    /// point, no solve. (Without that term, a 2D Matern 5/2 problem with noise `1e-2` needed
    /// rank 920 for a `7e-4` relative error; with it, rank 656 for `8e-5`.)
    ///
    /// The rank `k` grows one Lanczos step at a time until, over the last 10 steps, the
    /// variance at 64 training points (where the variance is smallest) moved by less than
    /// `tol` of itself, until the Krylov space is exhausted, or until `max_rank` (see
    /// [`LoveReport`]). The rank needed follows the number of eigenvalues of `K` above the
    /// noise: tens for a smooth kernel in 1D, hundreds for a Matern kernel in 2D with small
    /// noise. Memory: `2 N k` numbers. The complement term is the difference of
    /// `|b|^2 / s^2` and `|Q^T b|^2 / s^2`, in `f64`: its rounding is about
    /// `1e-16 |b|^2 / s^2`, negligible unless the noise is tiny next to `|b|^2` (then use
    /// [`Variances::Exact`]).
    Love {
        /// Relative change of the probe variances over the last 10 steps at which the rank
        /// stops growing (default `1e-5`).
        tol: f64,
        /// The largest rank (default 1000).
        max_rank: usize,
    },
}

/// LOVE's default `(tol, max_rank)`.
const LOVE_DEFAULTS: (f64, usize) = (1e-5, 1000);

impl Default for Variances {
    /// LOVE with `tol = 1e-5` and `max_rank = 1000`.
    fn default() -> Self {
        let (tol, max_rank) = LOVE_DEFAULTS;
        Variances::Love { tol, max_rank }
    }
}

/// Lanczos steps over which LOVE's stopping test measures the change of the variances.
const LOVE_WINDOW: usize = 10;
/// Training points at which LOVE's stopping test measures the variances.
const LOVE_PROBES: usize = 64;
/// Bytes of kernel rows `k(x*, X)` held at once by the LOVE products and the samples.
const ROWS_BYTES: usize = 1 << 24;
/// Test points per batch of solves with the dense factor of the exact path.
const DENSE_CHUNK: usize = 1024;
/// The most test points of [`ExactGp::posterior_samples`] (their covariance is dense).
pub const MAX_SAMPLE_POINTS: usize = 4096;

/// What building the LOVE factor did.
#[derive(Clone, Debug, PartialEq)]
pub struct LoveReport {
    /// The rank `k` of the factor (Lanczos steps).
    pub rank: usize,
    /// The largest relative change of the probe variances over the last 10 steps (the
    /// quantity compared with `tol`; `0` when the Krylov space was exhausted, which makes the
    /// factor exact).
    pub change: f64,
    /// Whether `change <= tol` (or the space was exhausted) before `max_rank`.
    pub converged: bool,
    /// Seconds spent building the factor.
    pub seconds: f64,
}

/// The posterior at new points.
#[derive(Clone, Debug)]
pub struct Prediction {
    /// Posterior mean of `f` (and of `y`), `(M,)`.
    pub mean: Tensor,
    /// Posterior variance of the latent `f`, `(M,)`.
    pub variance: Tensor,
    /// The noise variance `sigma^2` (with the floor) that an observation adds.
    pub noise: f64,
    /// The LOVE factor's report, when the variances came from it.
    pub love: Option<LoveReport>,
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

/// The LOVE factor of a cache.
struct Love {
    /// `[a | R]`, `(N, 1 + k)`, `f64`: the mean's weights beside the factor, so that one
    /// product with the kernel rows gives both.
    weights: Tensor,
    report: LoveReport,
    /// The options it was built with.
    options: (f64, usize),
}

/// What predictions share for one model state (see the module documentation).
pub(super) struct PredictCache {
    /// The values it was built from: kernel parameters, noise, mean.
    key: Vec<f64>,
    settings: GpSettings,
    /// The kernel in the working dtype, detached.
    kernel: Kernel,
    /// The training points in the working dtype.
    x: Tensor,
    /// The working dtype: `f64` unless the kernel cannot be converted.
    work: DType,
    /// The constant mean.
    mean: f64,
    /// `sigma^2 + floor`.
    noise: f64,
    /// `(K + s^2 I)^-1 (y - m)`, `(N, 1)`, `f64`.
    a: Tensor,
    /// `y - m`, `(N, 1)`, `f64`.
    residual: Tensor,
    /// The training operator in the working dtype.
    op: KernelOperator,
    /// The dense factor of `K + s^2 I`, on the exact path ([`super::NllMethod::Exact`]): the
    /// mean, [`Variances::Exact`] variances and exact covariances come from it.
    factor: Option<Cholesky>,
    /// The preconditioned CG solver of `K + s^2 I` (exact variances on the stochastic path,
    /// LOVE's operator on both): built with the cache on the stochastic path, when LOVE is
    /// first asked for on the exact path.
    solver: Option<Box<Solver>>,
    love: Option<Love>,
}

fn read_all(t: &Tensor) -> candle_core::Result<Vec<f64>> {
    t.detach()
        .flatten_all()?
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()
}

impl ExactGp {
    /// The values the prediction cache is keyed on.
    fn cache_key(&self, kernel: &Kernel) -> candle_core::Result<Vec<f64>> {
        let mut key = Vec::new();
        for t in kernel.parameters() {
            key.extend(read_all(&t)?);
        }
        for h in &self.hypers {
            key.extend(read_all(h.var().as_tensor())?);
        }
        key.extend(read_all(self.noise.var().as_tensor())?);
        key.extend(read_all(self.mean.as_tensor())?);
        Ok(key)
    }

    /// Forgets the cached solve and LOVE factor (they are rebuilt at the next prediction).
    /// Needed only if the kernel closure reads values that are neither hyperparameters nor
    /// kernel parameters (the cache is keyed on those), and changed them.
    pub fn clear_prediction_cache(&self) {
        *self.cache.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Runs `f` on the cache of the current model state, building it (the mean's solve) if
    /// needed, and the LOVE factor too if `love` is given.
    fn with_cache<T>(
        &self,
        love: Option<(f64, usize)>,
        f: impl FnOnce(&PredictCache) -> candle_core::Result<T>,
    ) -> candle_core::Result<T> {
        let kernel = (self.kernel)()?;
        let key = self.cache_key(&kernel)?;
        let mut guard = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let stale = match &*guard {
            Some(c) => c.key != key || c.settings != self.settings,
            None => true,
        };
        if stale {
            *guard = None;
            *guard = Some(self.build_cache(kernel, key)?);
        }
        let cache = guard.as_mut().expect("built above");
        if let Some(opts) = love
            && cache.love.as_ref().map(|l| l.options) != Some(opts)
        {
            cache.love = None;
            if cache.solver.is_none() {
                let r = cache.residual.to_dtype(cache.work)?;
                let settings = self.solve_options(self.settings.predict_tol);
                cache.solver = Some(Box::new(cache.op.solver(&r, cache.noise, &settings)?));
            }
            cache.love = Some(cache.build_love(opts)?);
        }
        f(cache)
    }

    fn build_cache(&self, kernel: Kernel, key: Vec<f64>) -> candle_core::Result<PredictCache> {
        let dtype = self.x.dtype();
        // `f64` when the kernel converts (a formula kernel's captured tensors may not).
        let x64 = self.x.detach().to_dtype(DType::F64)?;
        let (op, kernel, x, work) = match kernel
            .to_dtype(DType::F64)
            .and_then(|k| Ok((KernelOperator::new(k.clone(), &x64, &x64)?, k)))
        {
            Ok((op, k)) => (op, k, x64, DType::F64),
            Err(_) => {
                let k = kernel.to_dtype(dtype)?;
                let x = self.x.detach();
                (KernelOperator::new(k.clone(), &x, &x)?, k, x, dtype)
            }
        };
        let op = op.shard(&self.comm);
        let noise = self
            .noise_variance()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        let mean = self
            .mean
            .as_tensor()
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?[0];
        let residual = (self.y.detach().to_dtype(DType::F64)? - mean)?.reshape((self.n(), 1))?;
        let r_work = residual.to_dtype(work)?;
        let (factor, solver, a) = if self.nll_method()? == super::NllMethod::Exact {
            let n = self.n();
            let dense = (op.to_dense()?.to_dtype(DType::F64)?
                + Tensor::eye(n, DType::F64, x.device())?.affine(noise, 0.0)?)?;
            let factor = Cholesky::new(&dense).map_err(|e| Error::InvalidArgument {
                op: OP,
                detail: format!(
                    "the prediction's Cholesky factorisation of K + sigma^2 I failed ({e}); \
                     raise the noise or GpSettings::noise_floor"
                ),
            })?;
            let a = factor.solve(&residual)?;
            (Some(factor), None, a)
        } else {
            let opts = self.solve_options(self.settings.predict_tol);
            let solver = op.solver(&r_work, noise, &opts)?;
            let (a, info) = solver.solve(&r_work)?;
            accept(&info, "the mean's solve")?;
            (None, Some(Box::new(solver)), a)
        };
        Ok(PredictCache {
            key,
            settings: self.settings.clone(),
            kernel,
            x,
            work,
            mean,
            noise,
            a: a.to_dtype(DType::F64)?,
            residual,
            op,
            factor,
            solver,
            love: None,
        })
    }

    fn n(&self) -> usize {
        self.x.dims()[0]
    }

    /// `x_new` as `(M, D)` in the model's dtype, checked (shape, dtype, device, values).
    fn test_points(&self, x_new: &Tensor) -> candle_core::Result<Tensor> {
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
                .into());
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
        if !x_new.device().same_device(self.x.device()) {
            return Err(Error::Device {
                op: OP,
                detail: format!(
                    "the new points are on {:?}, the model on {:?}",
                    x_new.device().location(),
                    self.x.device().location()
                ),
            }
            .into());
        }
        if x_new.elem_count() > 0 {
            let s = x_new
                .detach()
                .to_dtype(DType::F64)?
                .abs()?
                .sum_all()?
                .to_scalar::<f64>()?;
            if !s.is_finite() {
                return Err(Error::InvalidArgument {
                    op: OP,
                    detail: "the new points contain NaN or infinite values".into(),
                }
                .into());
            }
        }
        Ok(x_new.detach())
    }

    /// The posterior mean at `x_new` (`(M, D)` or `(M,)`), `(M,)` in the model's dtype, with
    /// the current hyperparameters (no gradients): `m + k(x*, X) a`, one lazy product with the
    /// cached `a = (K + s^2 I)^-1 (y - m)` (the solve runs once per model state).
    ///
    /// ```
    /// use candle_core::{DType, Device, Tensor};
    /// use lazy_kernels::gp::{ExactGp, Positive};
    /// use lazy_kernels::Kernel;
    /// let dev = Device::Cpu;
    /// let x = Tensor::rand(0f64, 1., (300, 1), &dev)?;
    /// let y = ((x.clone() * 6.0)?.sin()?).squeeze(1)?;
    /// let l = Positive::new("lengthscale", &[0.2], DType::F64, &dev)?;
    /// let noise = Positive::new("noise", &[1e-3], DType::F64, &dev)?;
    /// let lc = l.clone();
    /// let gp = ExactGp::new(&x, &y, vec![l], noise, move || Ok(Kernel::gaussian(&lc.value()?)))?;
    /// let mu = gp.predict_mean(&Tensor::new(&[0.25f64, 0.5], &dev)?)?.to_vec1::<f64>()?;
    /// assert!((mu[0] - 1.5f64.sin()).abs() < 0.02 && (mu[1] - 3f64.sin()).abs() < 0.02);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn predict_mean(&self, x_new: &Tensor) -> candle_core::Result<Tensor> {
        let x_new = self.test_points(x_new)?;
        let m = x_new.dim(0)?;
        let dtype = self.x.dtype();
        if m == 0 {
            return Tensor::zeros(0, dtype, x_new.device());
        }
        self.with_cache(None, |c| {
            let cross = c.cross(&x_new)?;
            let mu = cross.matmul(&c.a.to_dtype(c.work)?)?;
            let mu = (mu.to_dtype(DType::F64)? + c.mean)?;
            mu.reshape(m)?.to_dtype(dtype)
        })
    }

    /// The posterior mean and variance at `x_new` (`(M, D)` or `(M,)`), with the current
    /// hyperparameters (no gradients), the variances as [`GpSettings::variances`] says:
    /// [`Variances::Love`] (the default: a factor built once per model state, then `O(N k)`
    /// per point) or [`Variances::Exact`] (batched CG solves; on the exact path,
    /// [`NllMethod::Exact`](super::NllMethod::Exact), `|L^-1 k(X, x*)|^2` from the dense
    /// Cholesky factor `L` of `K + s^2 I`, which also gives the mean there). Memory:
    /// `O(N (k + c))` with `c` the test points handled at once (16 MiB of kernel rows for
    /// LOVE, [`GpSettings::predict_chunk`] for exact variances, at least 1,024 with the dense
    /// factor), never `O(N M)`; the exact path's factor holds `N^2 / 2` values.
    pub fn predict(&self, x_new: &Tensor) -> candle_core::Result<Prediction> {
        let x_new = self.test_points(x_new)?;
        let dtype = self.x.dtype();
        let m = x_new.dim(0)?;
        let love = self.love_options()?;
        self.with_cache(love, |c| {
            let noise = c.noise;
            if m == 0 {
                let empty = Tensor::zeros(0, dtype, x_new.device())?;
                return Ok(Prediction {
                    mean: empty.clone(),
                    variance: empty,
                    noise,
                    love: c.love.as_ref().map(|l| l.report.clone()),
                });
            }
            let cross = c.cross(&x_new)?;
            let prior = KernelOperator::new(c.kernel.clone(), &c.xn(&x_new)?, &c.xn(&x_new)?)?
                .diag()?
                .to_dtype(DType::F64)?;
            let (mu, explained) = match &c.love {
                Some(love) => {
                    let (p, norms) = rows_times(&cross, &love.weights)?; // (M, 1 + 2k)
                    let k = love.report.rank;
                    let wr = p.narrow(1, 1, k)?.sqr()?.sum(1)?;
                    let wq = p.narrow(1, 1 + k, k)?.sqr()?.sum(1)?;
                    let explained = ((wr + (norms / c.noise)?)? - wq)?;
                    (p.narrow(1, 0, 1)?.reshape(m)?, explained)
                }
                None => c.exact_explained(&cross)?,
            };
            let variance = (prior - explained)?.relu()?;
            Ok(Prediction {
                mean: (mu + c.mean)?.to_dtype(dtype)?,
                variance: variance.to_dtype(dtype)?,
                noise,
                love: c.love.as_ref().map(|l| l.report.clone()),
            })
        })
    }

    /// LOVE's options if [`GpSettings::variances`] asks for it.
    fn love_options(&self) -> candle_core::Result<Option<(f64, usize)>> {
        match self.settings.variances {
            Variances::Love { tol, max_rank } => Ok(Some(check_love(tol, max_rank)?)),
            Variances::Exact => Ok(None),
        }
    }

    /// Builds the LOVE factor of the current model state (if not cached) with the options of
    /// [`GpSettings::variances`] (LOVE's defaults when it says [`Variances::Exact`]), and
    /// reports its rank and convergence.
    pub fn love_report(&self) -> candle_core::Result<LoveReport> {
        let (tol, max_rank) = match self.settings.variances {
            Variances::Love { tol, max_rank } => (tol, max_rank),
            Variances::Exact => LOVE_DEFAULTS,
        };
        let opts = check_love(tol, max_rank)?;
        self.with_cache(Some(opts), |c| {
            Ok(c.love.as_ref().expect("built").report.clone())
        })
    }

    /// `count` joint samples of the latent `f` at `x_new` (`(M, D)` or `(M,)`) from the
    /// posterior with the current hyperparameters: `(count, M)` in the model's dtype, each row
    /// `mu + L z` with `L L^T` the posterior covariance at the test points and `z` standard
    /// normal from `seed` (the same seed gives the same samples).
    ///
    /// The covariance `C = K** - K*X (K + s^2 I)^-1 KX*` is built densely in `f64` (`M x M`,
    /// what joint samples need) as [`GpSettings::variances`] says: with LOVE,
    /// `K** - W W^T` with `W = K*X R` (`M x k`); exactly, by batched solves against the
    /// columns of `KX*` and lazy products (`O(M^2 N)` work). Then a Cholesky factorisation on
    /// the host (`O(M^3)`), with a jitter of `1e-10`, `1e-9`, ... up to `1e-6` of the largest
    /// prior variance added if `C` is not numerically positive definite. Memory: `O(M^2 + N k)`.
    /// At most [`MAX_SAMPLE_POINTS`] test points.
    pub fn posterior_samples(
        &self,
        x_new: &Tensor,
        count: usize,
        seed: u64,
    ) -> candle_core::Result<Tensor> {
        let x_new = self.test_points(x_new)?;
        let dtype = self.x.dtype();
        let m = x_new.dim(0)?;
        if m > MAX_SAMPLE_POINTS {
            return Err(Error::InvalidArgument {
                op: OP,
                detail: format!(
                    "posterior_samples at {m} points: at most {MAX_SAMPLE_POINTS} (the \
                     covariance is a dense M x M matrix); sample fewer points at a time only if \
                     they need not be jointly distributed"
                ),
            }
            .into());
        }
        if m == 0 || count == 0 {
            return Tensor::zeros((count, m), dtype, x_new.device());
        }
        let love = self.love_options()?;
        self.with_cache(love, |c| {
            let xn = c.xn(&x_new)?;
            let cross = c.cross(&x_new)?;
            let prior = KernelOperator::new(c.kernel.clone(), &xn, &xn)?
                .to_dense()?
                .to_dtype(DType::F64)?;
            let (mu, explained) = match &c.love {
                Some(love) => {
                    let (p, _) = rows_times(&cross, &love.weights)?;
                    let k = love.report.rank;
                    let wr = p.narrow(1, 1, k)?.contiguous()?;
                    let wq = p.narrow(1, 1 + k, k)?.contiguous()?;
                    let gram = (gram(&cross)? / c.noise)?;
                    let explained = ((matmul(&wr, &wr.t()?)? + gram)? - matmul(&wq, &wq.t()?)?)?;
                    (p.narrow(1, 0, 1)?.reshape(m)?, explained)
                }
                None => c.exact_covariance(&cross)?,
            };
            let cov = (prior - explained)?;
            let l = cholesky_jittered(&cov.flatten_all()?.to_vec1::<f64>()?, m)?;
            let l = Tensor::from_vec(l, (m, m), x_new.device())?;
            let z = crate::solve::normals(seed, count, m, &l)?;
            let s = matmul(&z, &l.t()?)?.broadcast_add(&(mu + c.mean)?.reshape((1, m))?)?;
            s.to_dtype(dtype)
        })
    }
}

/// Checks LOVE's options.
fn check_love(tol: f64, max_rank: usize) -> candle_core::Result<(f64, usize)> {
    if !(tol.is_finite() && tol > 0.0) {
        return Err(Error::InvalidArgument {
            op: OP,
            detail: format!("Variances::Love: tol must be finite and > 0, got {tol}"),
        }
        .into());
    }
    if max_rank == 0 {
        return Err(Error::InvalidArgument {
            op: OP,
            detail: "Variances::Love: max_rank must be >= 1".into(),
        }
        .into());
    }
    Ok((tol, max_rank))
}

/// Test points per chunk of dense kernel rows (16 MiB of `f64`).
fn rows_chunk(cross: &KernelOperator) -> usize {
    let (m, n) = cross.shape();
    (ROWS_BYTES / (8 * n)).clamp(1, m)
}

/// `K(x*, X) B` for an `(N, E)` `f64` matrix `B`, as `(M, E)` `f64`, and the squared norms of
/// the rows of `K(x*, X)`, `(M,)`: dense kernel rows in chunks of 16 MiB times `B` (one matrix
/// product per chunk).
fn rows_times(cross: &KernelOperator, b: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
    let m = cross.shape().0;
    let chunk = rows_chunk(cross);
    let (mut parts, mut norms) = (Vec::new(), Vec::new());
    for start in (0..m).step_by(chunk) {
        let idx: Vec<usize> = (start..(start + chunk).min(m)).collect();
        let rows = cross.rows_detached(&idx)?.to_dtype(DType::F64)?;
        parts.push(matmul(&rows, b)?);
        norms.push(rows.sqr()?.sum(1)?);
    }
    Ok((Tensor::cat(&parts, 0)?, Tensor::cat(&norms, 0)?))
}

/// `K(x*, X) K(X, x*)`, `(M, M)` `f64`, by chunks of dense rows (recomputed per pair of
/// chunks, so that no `M x N` matrix is held).
fn gram(cross: &KernelOperator) -> candle_core::Result<Tensor> {
    let m = cross.shape().0;
    let chunk = rows_chunk(cross);
    let rows = |start: usize| -> candle_core::Result<Tensor> {
        let idx: Vec<usize> = (start..(start + chunk).min(m)).collect();
        cross.rows_detached(&idx)?.to_dtype(DType::F64)
    };
    let mut bands = Vec::new();
    for i in (0..m).step_by(chunk) {
        let ri = rows(i)?;
        let mut band = Vec::new();
        for j in (0..m).step_by(chunk) {
            let rj = if i == j { ri.clone() } else { rows(j)? };
            band.push(matmul(&ri, &rj.t()?)?);
        }
        bands.push(Tensor::cat(&band, 1)?);
    }
    Tensor::cat(&bands, 0)
}

/// The error of a cache without its solver (`with_cache` builds it before it is needed).
fn missing_solver() -> candle_core::Error {
    Error::Backend {
        what: "ExactGp prediction cache",
        detail: "no CG solver was built for this prediction (a bug of lazy-kernels)".into(),
    }
    .into()
}

impl PredictCache {
    /// `(K + s^2 I)^-1 b` for the columns `b` (`(N, c)`, the working dtype), in `f64` from the
    /// dense factor, else in the working dtype from the CG solver (checked).
    fn solve_columns(&self, b: &Tensor, what: &str) -> candle_core::Result<Tensor> {
        match (&self.factor, &self.solver) {
            (Some(factor), _) => factor.solve(&b.to_dtype(DType::F64)?),
            (None, Some(solver)) => {
                let (v, info) = solver.solve(b)?;
                accept(&info, what)?;
                Ok(v)
            }
            (None, None) => Err(missing_solver()),
        }
    }

    /// Test points per batch of variance solves: [`GpSettings::predict_chunk`] for CG, at least
    /// [`DENSE_CHUNK`] with the dense factor (whose solves cost two matrix products per panel,
    /// whatever the number of columns).
    fn chunk(&self) -> usize {
        if self.factor.is_some() {
            self.settings.predict_chunk.max(DENSE_CHUNK)
        } else {
            self.settings.predict_chunk.max(1)
        }
    }

    /// The test points in the working dtype.
    fn xn(&self, x_new: &Tensor) -> candle_core::Result<Tensor> {
        x_new.to_dtype(self.work)
    }

    /// `K(x*, X)` in the working dtype.
    fn cross(&self, x_new: &Tensor) -> candle_core::Result<KernelOperator> {
        Ok(
            KernelOperator::new(self.kernel.clone(), &self.xn(x_new)?, &self.x)?
                .shard(self.op.comm()),
        )
    }

    /// The means `k(x*, X) a` (without `m`) and `b^T (K + s^2 I)^-1 b` per test point, by
    /// batched solves of `settings.predict_chunk` columns.
    fn exact_explained(&self, cross: &KernelOperator) -> candle_core::Result<(Tensor, Tensor)> {
        let m = cross.shape().0;
        let chunk = self.chunk();
        let (mut means, mut parts) = (Vec::new(), Vec::new());
        for start in (0..m).step_by(chunk) {
            let idx: Vec<usize> = (start..(start + chunk).min(m)).collect();
            let rows = cross.rows_detached(&idx)?; // (c, N), working dtype
            let b = rows.t()?.contiguous()?;
            let b64 = b.to_dtype(DType::F64)?;
            // b^T A^-1 b: |L^-1 b|^2 from the factor (half a solve), else b . (A^-1 b).
            parts.push(match &self.factor {
                Some(factor) => factor.forward(&b64)?.sqr()?.sum(0)?,
                None => {
                    let v = self.solve_columns(&b, "a variance solve")?;
                    (&b64 * v.to_dtype(DType::F64)?)?.sum(0)?
                }
            });
            means.push(matmul(&b64.t()?, &self.a)?.reshape(idx.len())?);
        }
        Ok((Tensor::cat(&means, 0)?, Tensor::cat(&parts, 0)?))
    }

    /// The means (without `m`) and `K*X (K + s^2 I)^-1 KX*` (`M x M`, `f64`), by batched solves
    /// of `settings.predict_chunk` columns and lazy products.
    fn exact_covariance(&self, cross: &KernelOperator) -> candle_core::Result<(Tensor, Tensor)> {
        let m = cross.shape().0;
        let chunk = self.chunk();
        let (mut means, mut cols) = (Vec::new(), Vec::new());
        for start in (0..m).step_by(chunk) {
            let idx: Vec<usize> = (start..(start + chunk).min(m)).collect();
            let b = cross.rows_detached(&idx)?.t()?.contiguous()?;
            let v = self.solve_columns(&b, "a covariance solve")?;
            let v64 = v.to_dtype(DType::F64)?;
            means.push(matmul(&b.to_dtype(DType::F64)?.t()?, &self.a)?.reshape(idx.len())?);
            cols.push(rows_times(cross, &v64)?.0); // (M, c)
        }
        let explained = Tensor::cat(&cols, 1)?;
        // Symmetric up to the solves' tolerance: average with the transpose.
        let explained = ((&explained + explained.t()?)? * 0.5)?;
        Ok((Tensor::cat(&means, 0)?, explained))
    }

    /// The LOVE factor (see [`Variances::Love`]).
    fn build_love(&self, (tol, max_rank): (f64, usize)) -> candle_core::Result<Love> {
        let start_time = Instant::now();
        let n = self.x.dim(0)?;
        let op = self.op.clone();
        // The start vector: `y - m`, or (a constant `y`) a fixed random vector.
        let rr = self.residual.sqr()?.sum_all()?.to_scalar::<f64>()?;
        let start = if rr > 0.0 {
            self.residual.clone()
        } else {
            crate::solve::normals(0, n, 1, &self.residual)?
        };
        let Some(solver) = &self.solver else {
            return Err(missing_solver());
        };
        let mut lanczos = solver.lanczos(&start.to_dtype(self.work)?)?;
        // Probes: evenly spaced training points.
        let p = LOVE_PROBES.min(n);
        let idx: Vec<usize> = (0..p).map(|i| i * n / p).collect();
        let probes = op.rows_detached(&idx)?.to_dtype(DType::F64)?; // (P, N)
        let pv = probes.to_vec2::<f64>()?;
        let prior: Vec<f64> = idx.iter().enumerate().map(|(i, &j)| pv[i][j]).collect();
        // With no basis, everything is the complement: |b|^2 / s^2.
        let mut explained: Vec<f64> = pv
            .iter()
            .map(|row| row.iter().map(|v| v * v).sum::<f64>() / self.noise)
            .collect();
        let mut history: Vec<Vec<f64>> = Vec::new();
        let mut columns: Vec<Tensor> = Vec::new();
        let mut basis: Vec<Tensor> = Vec::new();
        let (mut prev_r, mut prev_l): (Option<Tensor>, f64) = (None, 0.0);
        let (mut change, mut converged) = (f64::INFINITY, false);
        while columns.len() < max_rank {
            let j = columns.len();
            let (q, alpha) = match lanczos.step()? {
                None => break,
                Some(s) => s,
            };
            // T = L L^T, L lower bidiagonal: one new row per step.
            let off = if j > 0 {
                lanczos.beta[j - 1] / prev_l
            } else {
                0.0
            };
            let d2 = alpha - off * off;
            if !(d2.is_finite() && d2 > 0.0) {
                // T lost definiteness to rounding: the factor so far is what we have.
                break;
            }
            let l = d2.sqrt();
            // R L^T = Q: r_j = (q_j - off r_{j-1}) / l_jj.
            let r = match &prev_r {
                Some(pr) => ((&q - (pr * off)?)? / l)?,
                None => (&q / l)?,
            };
            let proj = matmul(&probes, &Tensor::cat(&[&r, &q], 1)?)?.to_vec2::<f64>()?;
            // The explained part grows by (r^T b)^2 and loses the complement's (q^T b)^2 / s^2.
            let inc: Vec<f64> = proj
                .iter()
                .map(|v| v[0] * v[0] - v[1] * v[1] / self.noise)
                .collect();
            for (e, i) in explained.iter_mut().zip(&inc) {
                *e += i;
            }
            history.push(inc);
            columns.push(r.clone());
            basis.push(q);
            prev_r = Some(r);
            prev_l = l;
            if lanczos.exhausted() {
                change = 0.0;
                converged = true;
                break;
            }
            if history.len() >= LOVE_WINDOW {
                let recent = &history[history.len() - LOVE_WINDOW..];
                change = (0..p)
                    .map(|i| {
                        let moved: f64 = recent.iter().map(|h| h[i]).sum::<f64>().abs();
                        let var = (prior[i] - explained[i]).max(1e-12 * prior[i]);
                        moved / var
                    })
                    .fold(0.0, f64::max);
                if change <= tol {
                    converged = true;
                    break;
                }
            }
        }
        let r = Tensor::cat(&columns, 1)?;
        let q = (Tensor::cat(&basis, 1)? / self.noise.sqrt())?;
        let weights = Tensor::cat(&[&self.a, &r, &q], 1)?.contiguous()?;
        Ok(Love {
            weights,
            report: LoveReport {
                rank: columns.len(),
                change,
                converged,
                seconds: start_time.elapsed().as_secs_f64(),
            },
            options: (tol, max_rank),
        })
    }
}

/// The lower Cholesky factor (row-major) of the symmetric `m x m` matrix `c`, with a jitter
/// of `1e-10`, `1e-9`, ... `1e-6` times its largest diagonal entry added if needed.
fn cholesky_jittered(c: &[f64], m: usize) -> candle_core::Result<Vec<f64>> {
    let scale = (0..m).map(|i| c[i * m + i]).fold(0.0, f64::max).max(1e-300);
    let mut jitter = 0.0;
    loop {
        if let Some(l) = cholesky(c, m, jitter) {
            return Ok(l);
        }
        jitter = if jitter == 0.0 {
            1e-10 * scale
        } else {
            jitter * 10.0
        };
        if jitter > 1.0001e-6 * scale {
            return Err(Error::InvalidArgument {
                op: OP,
                detail: format!(
                    "the posterior covariance at the test points is not positive definite even \
                     with a jitter of 1e-6 of its largest variance ({scale:.3e}): repeated or \
                     nearly repeated test points?"
                ),
            }
            .into());
        }
    }
}

/// The lower Cholesky factor of `c + jitter I`, or `None` if it is not positive definite.
fn cholesky(c: &[f64], m: usize, jitter: f64) -> Option<Vec<f64>> {
    let mut l = vec![0.0; m * m];
    for j in 0..m {
        let (done, rest) = l.split_at_mut(j * m);
        let lj = &mut rest[..m];
        for k in 0..j {
            let lk = &done[k * m..k * m + k];
            let dot: f64 = lj[..k].iter().zip(lk).map(|(a, b)| a * b).sum();
            lj[k] = (c[j * m + k] - dot) / done[k * m + k];
        }
        let s = c[j * m + j] + jitter - lj[..j].iter().map(|v| v * v).sum::<f64>();
        if !(s.is_finite() && s > 0.0) {
            return None;
        }
        lj[j] = s.sqrt();
    }
    Some(l)
}
