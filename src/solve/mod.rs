//! `(K + alpha I) a = b` for a kernel matrix that is never built: batched preconditioned
//! conjugate gradients ([`cg`](self)), a pivoted-Cholesky preconditioner, and gradients by
//! implicit differentiation.
//!
//! The entry point is [`KernelOperator::solve`].

mod block_corrected;
mod cg;
mod implicit;
mod lanczos;
mod logdet;
mod pivoted_cholesky;
mod random;

pub use cg::Stop;
pub(crate) use lanczos::Lanczos;
pub use logdet::{LogdetEstimator, LogdetInfo, LogdetOptions};
pub use pivoted_cholesky::{AUTO_MEMORY, Rank};

use std::time::Instant;

use candle_core::{DType, Tensor};

use crate::error::Error;
use crate::operator::{matmul_lazy, prepare_matmul};
use crate::{KernelOperator, LazyTensor};
use cg::{CgOutcome, CgSettings, SpdOperator};
use pivoted_cholesky::PivotedCholesky;

/// The preconditioner of a solve.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Preconditioner {
    /// Plain conjugate gradients.
    None,
    /// A pivoted-Cholesky factor `L^T L` of `K` of the given rank; `(L^T L + alpha I)^-1` is
    /// applied by the Woodbury identity (with `alpha = 0`, the largest remaining diagonal of
    /// `K - L^T L` stands in for `alpha`).
    PivotedCholesky(Rank),
}

impl Default for Preconditioner {
    /// Pivoted Cholesky of automatic rank, at most 400.
    fn default() -> Self {
        Preconditioner::PivotedCholesky(Rank::default())
    }
}

/// Settings of [`KernelOperator::solve`].
///
/// ```
/// use lazy_kernels::{Preconditioner, Rank, SolveOptions};
/// let opts = SolveOptions {
///     tol: 1e-8,
///     max_iters: 200,
///     preconditioner: Preconditioner::PivotedCholesky(Rank::Fixed(50)),
///     ..SolveOptions::default()
/// };
/// assert!(opts.x0.is_none());
/// ```
#[derive(Clone, Debug)]
pub struct SolveOptions {
    /// Relative residual `|b - (K + alpha I) a| / |b|` at which a column has converged
    /// (default `1e-6`).
    pub tol: f64,
    /// The most iterations (default 1000). A column that has not converged by then is reported
    /// in [`SolveInfo`], never hidden.
    pub max_iters: usize,
    /// The preconditioner (default: pivoted Cholesky of automatic rank, at most 400).
    pub preconditioner: Preconditioner,
    /// A warm start, of the shape of `b` (default: zeros).
    pub x0: Option<Tensor>,
    /// Confirm convergence on the true residual `b - (K + alpha I) a`, recomputed with one more
    /// product when the recurrence says a column has converged; iterations go on from the true
    /// residual if it is above `tol` (default `true`). With `false`, the reported residuals are
    /// those of the recurrence, which can be optimistic in low precision, and a column whose
    /// recurrence residual improves by less than 10% over three looks 100 iterations apart
    /// stops as stalled (so that no `max_iters` makes a solve run forever).
    pub check_residual: bool,
    /// Draw a progress bar on standard error once the solve has run this long (default
    /// `None`: never). The bar shows the digits of residual reduction reached out of those
    /// `tol` asks for, the iteration and the largest residual; it is drawn only when standard
    /// error is a terminal and the crate feature `progress` (on by default) is enabled. The
    /// examples set one second.
    pub progress: Option<std::time::Duration>,
}

impl Default for SolveOptions {
    fn default() -> Self {
        SolveOptions {
            tol: 1e-6,
            max_iters: 1000,
            preconditioner: Preconditioner::default(),
            x0: None,
            check_residual: true,
            progress: None,
        }
    }
}

/// What a solve did.
#[derive(Clone, Debug, PartialEq)]
pub struct SolveInfo {
    /// Iterations run (the most over the columns).
    pub iterations: usize,
    /// Iterations per column of `b`.
    pub column_iterations: Vec<usize>,
    /// Final relative residual `|b - (K + alpha I) a| / |b|` per column (0 for a zero column).
    pub residuals: Vec<f64>,
    /// Whether each column reached the tolerance.
    pub converged: Vec<bool>,
    /// Why each column stopped.
    pub stops: Vec<Stop>,
    /// Products with `K` (one per iteration, plus the residual checks and the warm start).
    pub products: usize,
    /// Rank of the preconditioner (0 without one).
    pub preconditioner_rank: usize,
    /// Trace of `K - L^T L`, what the preconditioner leaves out of `K` (NaN without one).
    pub preconditioner_remainder: f64,
    /// Seconds spent building the preconditioner.
    pub setup_seconds: f64,
    /// Seconds spent iterating.
    pub solve_seconds: f64,
    /// Reads of device values by the host, from the checks of the inputs to the last
    /// iteration: on a GPU each one waits until the device has finished its queued work. The
    /// preconditioner reads two or three blocks per round of pivots (not per pivot), and each
    /// iteration reads its per-column scalars once.
    pub host_reads: usize,
}

impl SolveInfo {
    /// Whether every column converged.
    pub fn all_converged(&self) -> bool {
        self.converged.iter().all(|&c| c)
    }

    /// The largest final relative residual.
    pub fn max_residual(&self) -> f64 {
        self.residuals.iter().cloned().fold(0.0, f64::max)
    }
}

/// The ridge `alpha` of a solve: a number, or a one-element tensor to differentiate.
#[derive(Clone, Debug)]
pub enum Ridge {
    /// A fixed value.
    Value(f64),
    /// A tensor of one element (a `Var` to learn it).
    Tensor(Tensor),
}

impl From<f64> for Ridge {
    fn from(v: f64) -> Ridge {
        Ridge::Value(v)
    }
}

impl From<&Tensor> for Ridge {
    fn from(t: &Tensor) -> Ridge {
        Ridge::Tensor(t.clone())
    }
}

impl From<Tensor> for Ridge {
    fn from(t: Tensor) -> Ridge {
        Ridge::Tensor(t)
    }
}

const OP: &str = "KernelOperator::solve";

thread_local! {
    /// Reads of device values by the host on this thread (see [`host_read`]).
    static HOST_READS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Counts one read of device values by the host: on a GPU, a wait until the device has done
/// everything queued before it. A solve's reads are reported in [`SolveInfo::host_reads`], and
/// every read of the solve's code is counted here, so that the CPU test suite sees a change
/// that would make a GPU solve wait more.
pub(crate) fn host_read<T>(value: candle_core::Result<T>) -> candle_core::Result<T> {
    HOST_READS.with(|c| c.set(c.get() + 1));
    value
}

/// A `(rows, cols)` `f64` tensor of standard normals from `seed` (the same on every device),
/// on `like`'s device.
pub(crate) fn normals(
    seed: u64,
    rows: usize,
    cols: usize,
    like: &Tensor,
) -> candle_core::Result<Tensor> {
    random::Normals::new(seed).tensor(rows, cols, like)
}

/// The reads counted on this thread so far.
fn host_reads() -> usize {
    HOST_READS.with(|c| c.get())
}

fn bad(detail: String) -> candle_core::Error {
    Error::InvalidArgument { op: OP, detail }.into()
}

/// `K + alpha I` with `K` detached, on `(N, E)` `f64` tensors, with its preconditioner: what
/// the forward solve and the adjoint solve share.
pub(crate) struct System {
    k: LazyTensor,
    /// The device of the operator.
    device: candle_core::Device,
    /// `K` in `f64` for the residual checks, when `k` is not `f64` already.
    k64: Option<LazyTensor>,
    n: usize,
    dtype: DType,
    alpha: f64,
    pre: Option<PivotedCholesky>,
    settings: CgSettings,
}

impl SpdOperator for System {
    fn apply(&self, v: &Tensor) -> candle_core::Result<Tensor> {
        let kv = matmul_lazy(&self.k, &v.to_dtype(self.dtype)?, (self.n, self.n), OP)?;
        kv.to_dtype(DType::F64)? + (v * self.alpha)?
    }

    fn apply_exact(&self, v: &Tensor) -> candle_core::Result<Tensor> {
        match &self.k64 {
            Some(k64) => matmul_lazy(k64, v, (self.n, self.n), OP)? + (v * self.alpha)?,
            None => self.apply(v),
        }
    }

    fn round(&self, v: &Tensor) -> candle_core::Result<Tensor> {
        v.to_dtype(self.dtype)?.to_dtype(DType::F64)
    }

    fn prepare(&self, columns: &[usize]) -> candle_core::Result<()> {
        let device = self.device.clone();
        let shape = (self.n, self.n);
        prepare_matmul(&self.k, shape, columns, self.dtype, &device)?;
        match &self.k64 {
            Some(k64) => prepare_matmul(k64, shape, columns, DType::F64, &device),
            None => Ok(()),
        }
    }
}

impl System {
    /// Solves for `b` (`(N, E)`, any float dtype) without gradients; the result is `f64`.
    pub(crate) fn solve_detached(
        &self,
        b: &Tensor,
        x0: Option<&Tensor>,
    ) -> candle_core::Result<(Tensor, CgOutcome)> {
        let b = b.to_dtype(DType::F64)?;
        let x0 = x0.map(|x| x.to_dtype(DType::F64)).transpose()?;
        let pre = self.pre.as_ref().map(|p| p as &dyn cg::Preconditioner);
        cg::cg(self, pre, &b, x0.as_ref(), self.settings)
    }
}

impl KernelOperator {
    /// Solves `(K + alpha I) a = b` by conjugate gradients, column by column (each column of
    /// `b` has its own step sizes and its own convergence test), and returns `a` (the shape and
    /// dtype of `b`) with a [`SolveInfo`].
    ///
    /// `K` must be square and symmetric: built on one point set (`KernelOperator::new(k, &x,
    /// &x)`). `alpha >= 0` is a number or a one-element tensor. The result is differentiable
    /// with respect to `b`, the points, every kernel hyperparameter and a tensor `alpha`, by
    /// implicit differentiation: the backward pass runs one more solve (with the same
    /// preconditioner), and fails with an error if that solve hits the iteration cap or breaks
    /// down (one that stalls at the `f32` rounding floor is accepted within 10 times the
    /// forward solve's residual or the tolerance).
    ///
    /// Not converging is not an error: look at `info.converged` (or `info.all_converged()`)
    /// and `info.stops` (why each column stopped). In `f32`, the solution's own rounding puts a
    /// floor under the residual, about `6e-8 |K| |a| / |b|`: with `10^4` uniform points in 1D,
    /// a Gaussian kernel of lengthscale 0.1, `alpha = 1e-2` and a uniform random `b`, the exact
    /// solution rounded to `f32` already has a relative residual of `3e-5`; such a column stops
    /// as [`Stop::Stalled`].
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use lazy_kernels::{Kernel, KernelOperator, SolveOptions};
    /// let dev = Device::Cpu;
    /// let x = Tensor::rand(0f64, 1., (1000, 1), &dev)?;
    /// let b = (x.clone() * 6.0)?.sin()?;                          // (1000, 1)
    /// let l = Tensor::new(&[0.1f64], &dev)?;
    /// let k = KernelOperator::new(Kernel::gaussian(&l), &x, &x)?;
    /// let (a, info) = k.solve(&b, 1.0, &SolveOptions::default())?;
    /// assert!(info.all_converged() && info.max_residual() <= 1e-6);
    /// let r = ((k.matmul(&a)? + &a)? - &b)?;                       // (K + I) a - b
    /// let rel = r.sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>()?
    ///     / b.sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>()?;
    /// assert!(rel <= 1e-6);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn solve(
        &self,
        b: &Tensor,
        alpha: impl Into<Ridge>,
        opts: &SolveOptions,
    ) -> candle_core::Result<(Tensor, SolveInfo)> {
        let setup = self.setup(b, alpha.into(), opts)?;
        let start = Instant::now();
        let (a64, out) = setup.system.solve_detached(&setup.b64, setup.x0.as_ref())?;
        setup.finish(a64, out, start.elapsed().as_secs_f64())
    }

    /// Checks the inputs of a solve and builds its system (with the preconditioner).
    fn setup(&self, b: &Tensor, alpha: Ridge, opts: &SolveOptions) -> candle_core::Result<Setup> {
        let reads_start = host_reads();
        // CG keeps about six f64 copies of the right-hand sides (x, r, z, p, A p, the f64 b).
        crate::backend::memory::reserve(
            OP,
            || format!("the CG buffers of right-hand sides of shape {:?}", b.dims()),
            b.elem_count().checked_mul(6 * 8),
            b.device(),
        )?;
        let (m, n) = self.shape();
        if m != n {
            return Err(Error::Shape {
                op: OP,
                detail: format!("the operator is {m} x {n}: a solve needs a square operator"),
            }
            .into());
        }
        let (rows, cols) = self.points();
        // The hyperparameters again: a `Var` may have been updated since the operator was built.
        self.kernel()
            .check(rows.dim(1)?, rows.dtype(), rows.device())?;
        for (points, name) in [(rows, "row"), (cols, "column")] {
            check_finite_points(points, name)?;
            if rows.id() == cols.id() {
                break;
            }
        }
        if rows.id() != cols.id() {
            let same = rows
                .eq(cols)?
                .to_dtype(DType::F64)?
                .min_all()?
                .to_scalar::<f64>();
            if host_read(same)? != 1.0 {
                return Err(bad(
                    "the operator's row and column points differ, so K is not \
                     symmetric: build it as KernelOperator::new(kernel, &x, &x)"
                        .into(),
                ));
            }
        }
        if self.kernel().has_formula() {
            self.check_symmetric()?;
        }
        let alpha_value = match &alpha {
            Ridge::Value(v) => *v,
            Ridge::Tensor(t) => {
                if t.elem_count() != 1 {
                    return Err(Error::Shape {
                        op: OP,
                        detail: format!("alpha must have one element, got shape {:?}", t.dims()),
                    }
                    .into());
                }
                host_read(t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>())?[0]
            }
        };
        if !(alpha_value.is_finite() && alpha_value >= 0.0) {
            return Err(bad(format!(
                "alpha must be finite and >= 0, got {alpha_value}"
            )));
        }
        if !(opts.tol.is_finite() && opts.tol > 0.0) {
            return Err(bad(format!("tol must be finite and > 0, got {}", opts.tol)));
        }
        let dtype = self.dtype();
        if b.dtype() != dtype {
            return Err(Error::DType {
                op: OP,
                detail: format!("b is {:?} but the points are {dtype:?}", b.dtype()),
            }
            .into());
        }
        if !b.device().same_device(rows.device()) {
            return Err(Error::Device {
                op: OP,
                detail: format!(
                    "b is on {:?} but the points are on {:?}",
                    b.device().location(),
                    rows.device().location()
                ),
            }
            .into());
        }
        let (b2, vector) = match b.dims() {
            [r] if *r == n => (b.reshape((n, 1))?, true),
            [r, e] if *r == n && *e > 0 => (b.clone(), false),
            dims => {
                return Err(Error::Shape {
                    op: OP,
                    detail: format!("b must be ({n},) or ({n}, E) with E >= 1, got {dims:?}"),
                }
                .into());
            }
        };
        let b64 = b2.detach().to_dtype(DType::F64)?;
        let total = host_read(b64.sqr()?.sum_all()?.to_scalar::<f64>())?;
        if !total.is_finite() {
            return Err(bad("b contains NaN or infinite values".into()));
        }
        let x0 = match &opts.x0 {
            None => None,
            Some(x0) => {
                if x0.dims() != b.dims() {
                    return Err(Error::Shape {
                        op: OP,
                        detail: format!(
                            "the warm start x0 has shape {:?}, b has {:?}",
                            x0.dims(),
                            b.dims()
                        ),
                    }
                    .into());
                }
                let x0 = x0.detach().reshape(b2.shape())?.to_dtype(DType::F64)?;
                let s = host_read(x0.sqr()?.sum_all()?.to_scalar::<f64>())?;
                if !s.is_finite() {
                    return Err(bad(
                        "the warm start x0 contains NaN or infinite values".into()
                    ));
                }
                Some(x0)
            }
        };

        // The preconditioner, from the detached operator.
        let start = Instant::now();
        let rank = match opts.preconditioner {
            Preconditioner::None => None,
            Preconditioner::PivotedCholesky(r) => Some(r),
        };
        let pre = match rank {
            None => None,
            Some(rank) => {
                // Detached (a formula kernel's captured tensors are not reached by
                // `detached_in`: its values are detached too).
                let op = self.detached_in(dtype)?;
                let diag = op.diag()?.detach().to_dtype(DType::F64)?;
                let mut rows = |idx: &[usize]| -> candle_core::Result<Tensor> {
                    op.rows_detached(idx)?.to_dtype(DType::F64)
                };
                let mut block = |idx: &[usize]| -> candle_core::Result<Tensor> {
                    op.block(idx)?.detach().to_dtype(DType::F64)
                };
                Some(PivotedCholesky::new(
                    diag,
                    &mut rows,
                    &mut block,
                    alpha_value,
                    rank,
                )?)
            }
        };
        let setup_seconds = start.elapsed().as_secs_f64();
        // The formula once: detached for the iterations, tracked for the gradient below.
        let k = self.lazy()?;
        let k_det = k.detach()?;
        let k64 = if dtype == DType::F64 {
            None
        } else {
            Some(self.detached_lazy_in(DType::F64)?)
        };
        let system = System {
            k: k_det,
            device: rows.device().clone(),
            k64,
            n,
            dtype,
            alpha: alpha_value,
            pre,
            settings: CgSettings {
                tol: opts.tol,
                max_iters: opts.max_iters,
                check_residual: opts.check_residual,
                quadrature: None,
                progress: opts.progress,
            },
        };
        // The tracked product of the gradient (and its backward pass) compiles now, beside
        // the iterations' products, rather than after them.
        if k.tracks_grad() {
            prepare_matmul(&k, (n, n), &[b2.dim(1)?], dtype, rows.device())?;
        }
        Ok(Setup {
            system,
            k,
            b2,
            b64,
            x0,
            vector,
            alpha,
            n,
            dtype,
            setup_seconds,
            reads_start,
        })
    }
}

/// The points of a solve (`name`: row or column) contain no `NaN` or infinite value (else the
/// error names the first bad row, rather than the preconditioner's NaN diagonal).
fn check_finite_points(points: &Tensor, name: &str) -> candle_core::Result<()> {
    let p64 = points.detach().to_dtype(DType::F64)?;
    let total = host_read(p64.sum_all()?.to_scalar::<f64>())?;
    if total.is_finite() {
        return Ok(());
    }
    let d = p64.dim(1)?;
    let values = host_read(p64.flatten_all()?.to_vec1::<f64>())?;
    match values.iter().position(|v| !v.is_finite()) {
        Some(at) => Err(bad(format!(
            "the {name} points contain {} at row {}, component {}",
            values[at],
            at / d,
            at % d
        ))),
        // Finite values whose sum overflows.
        None => Ok(()),
    }
}

/// Pairs sampled by [`KernelOperator::check_symmetric`]: the block of `K` at this many indices.
const SYMMETRY_SAMPLE: usize = 8;

impl KernelOperator {
    /// Checks that `K` is visibly symmetric: its block at [`SYMMETRY_SAMPLE`] indices spread
    /// over the points equals its transpose (to a tolerance of the dtype's rounding). A user
    /// formula (`Kernel::from_formula`, [`KernelOperator::from_lazy`]) is not symmetric by
    /// construction, and CG on a non-symmetric matrix returns wrong numbers without noticing.
    fn check_symmetric(&self) -> candle_core::Result<()> {
        let n = self.shape().0;
        let s = SYMMETRY_SAMPLE.min(n);
        let mut idx: Vec<usize> = (0..s).map(|t| t * (n - 1) / (s - 1).max(1)).collect();
        idx.dedup();
        let block = self.block(&idx)?.detach().to_dtype(DType::F64)?;
        let k = host_read(block.flatten_all()?.to_vec1::<f64>())?;
        let m = idx.len();
        let scale = k
            .iter()
            .filter(|v| v.is_finite())
            .fold(0.0f64, |a, v| a.max(v.abs()));
        let tol = match self.dtype() {
            DType::F64 => 1e-12,
            DType::F32 => 1e-5,
            _ => 1e-2,
        } * scale.max(f64::MIN_POSITIVE);
        for a in 0..m {
            for b in a + 1..m {
                let (ab, ba) = (k[a * m + b], k[b * m + a]);
                if (ab - ba).abs() > tol {
                    return Err(bad(format!(
                        "the kernel is not symmetric: K[{}, {}] = {ab:e} but K[{}, {}] = {ba:e}; \
                         a solve needs a symmetric positive-definite matrix",
                        idx[a], idx[b], idx[b], idx[a]
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Solves without gradients that share one system, and so one preconditioner, across
/// right-hand sides (a GP's predictive variance solves against many blocks of columns).
pub(crate) struct Solver {
    setup: Setup,
}

impl KernelOperator {
    /// A [`Solver`] for `(K + alpha I)`; `b` is a first right-hand side, checked as
    /// [`KernelOperator::solve`] checks it.
    pub(crate) fn solver(
        &self,
        b: &Tensor,
        alpha: f64,
        opts: &SolveOptions,
    ) -> candle_core::Result<Solver> {
        Ok(Solver {
            setup: self.setup(b, Ridge::Value(alpha), opts)?,
        })
    }
}

impl Solver {
    /// The Lanczos process (with full reorthogonalisation) on this solver's `K + alpha I`,
    /// started from `start` (`(N, 1)`, non-zero): see [`Lanczos`].
    pub(crate) fn lanczos(&self, start: &Tensor) -> candle_core::Result<Lanczos<'_>> {
        Lanczos::new(&self.setup.system, start)
    }

    /// The solution for `b` (`(N,)` or `(N, E)`, the operator's dtype), detached, and the
    /// report (whose setup time is that of the shared preconditioner).
    pub(crate) fn solve(&self, b: &Tensor) -> candle_core::Result<(Tensor, SolveInfo)> {
        let s = &self.setup;
        let (b2, vector) = match b.dims() {
            [r] if *r == s.n => (b.reshape((s.n, 1))?, true),
            [r, e] if *r == s.n && *e > 0 => (b.clone(), false),
            dims => {
                return Err(Error::Shape {
                    op: OP,
                    detail: format!("b must be ({0},) or ({0}, E), got {dims:?}", s.n),
                }
                .into());
            }
        };
        let (start, reads_start) = (Instant::now(), host_reads());
        let (a64, out) = s.system.solve_detached(&b2.detach(), None)?;
        let info = s.report(out, start.elapsed().as_secs_f64(), reads_start);
        let a = a64.to_dtype(s.dtype)?;
        let a = if vector { a.reshape(s.n)? } else { a };
        Ok((a, info))
    }
}

/// A checked solve, ready to iterate: what [`KernelOperator::solve`] and
/// [`KernelOperator::solve_logdet`] share.
struct Setup {
    system: System,
    /// The tracked formula of `K` (for the gradients).
    k: LazyTensor,
    /// `b` as `(N, E)`, tracked.
    b2: Tensor,
    /// `b` as `(N, E)`, detached, `f64`.
    b64: Tensor,
    x0: Option<Tensor>,
    /// Whether `b` was a vector.
    vector: bool,
    alpha: Ridge,
    n: usize,
    dtype: DType,
    setup_seconds: f64,
    /// The host reads counted when the checks began.
    reads_start: usize,
}

impl Setup {
    /// The report of a CG run on this system.
    fn report(&self, out: CgOutcome, solve_seconds: f64, reads_start: usize) -> SolveInfo {
        let pre = self.system.pre.as_ref();
        SolveInfo {
            iterations: out.iterations.iter().cloned().max().unwrap_or(0),
            column_iterations: out.iterations,
            residuals: out.residuals,
            converged: out.converged,
            stops: out.stops,
            products: out.products,
            preconditioner_rank: pre.map_or(0, |p| p.rank()),
            preconditioner_remainder: pre.map_or(f64::NAN, |p| p.remainder_trace),
            setup_seconds: self.setup_seconds,
            solve_seconds,
            host_reads: host_reads() - reads_start,
        }
    }

    /// The solution in `b`'s shape and dtype, differentiable by implicit differentiation, and
    /// the report.
    fn finish(
        self,
        a64: Tensor,
        out: CgOutcome,
        solve_seconds: f64,
    ) -> candle_core::Result<(Tensor, SolveInfo)> {
        let info = self.report(out, solve_seconds, self.reads_start);
        let Setup {
            system,
            k,
            b2,
            vector,
            alpha,
            n,
            dtype,
            ..
        } = self;
        let a = a64.to_dtype(dtype)?.contiguous()?;

        // Gradients: only if something upstream of the solution tracks them.
        let alpha_tracks = matches!(&alpha, Ridge::Tensor(t) if t.track_op());
        let a = if b2.track_op() || k.tracks_grad() || alpha_tracks {
            let z = if k.tracks_grad() || alpha_tracks {
                let ka = matmul_lazy(&k, &a, (n, n), OP)?;
                let aa = match &alpha {
                    Ridge::Tensor(t) => a.broadcast_mul(&t.flatten_all()?.reshape((1, 1))?)?,
                    Ridge::Value(v) => (&a * *v)?,
                };
                let u = (ka + aa)?;
                (&b2 + (u.detach() - u)?)?
            } else {
                b2.clone()
            };
            let forward_residual = info.max_residual();
            z.apply_op1(crate::op::Precomputed {
                name: "lazy-kernels-solve",
                value: a,
                bwd: move |g: &Tensor| implicit::adjoint(&system, forward_residual, g),
            })?
        } else {
            a
        };
        let a = if vector { a.reshape(n)? } else { a };
        Ok((a, info))
    }
}
