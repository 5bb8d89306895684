//! Kernel matrices as linear operators: [`KernelOperator`] (`K_ij = k(x_i, y_j)`) with a lazy,
//! differentiable matrix product, its transpose, diagonal and rows, and [`Kernel`], the
//! covariance functions it is built from. The solve lives in [`crate::solve`].

mod kernel;

pub use kernel::{Kernel, KernelFn, MAX_KERNEL_DEPTH, Nu};

use candle_core::{DType, Tensor};

use crate::dist::Comm;
use crate::error::Error;
use crate::formula::VarCat;
use crate::{Axis, LazyTensor};

/// The paired points [`KernelOperator::rows`] may hold at once: 64 MiB.
const ROWS_MEMORY: usize = 1 << 26;

/// The `M x N` matrix `K_ij = k(x_i, y_j)` of a kernel between two point sets, never built:
/// products with it are reductions over the pairs.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use lazy_kernels::{Kernel, KernelOperator};
/// let dev = Device::Cpu;
/// let x = Tensor::rand(0f64, 1., (500, 2), &dev)?;
/// let y = Tensor::rand(0f64, 1., (300, 2), &dev)?;
/// let b = Tensor::rand(0f64, 1., (300, 3), &dev)?;
/// let l = Tensor::new(&[0.2f64], &dev)?;
/// let k = KernelOperator::new(Kernel::laplacian(&l), &x, &y)?;
/// assert_eq!(k.shape(), (500, 300));
/// let kb = k.matmul(&b)?;                                   // (500, 3), lazily
/// let dense = k.to_dense()?.matmul(&b)?;                    // the same, densely
/// let err = (kb - dense)?.abs()?.max_all()?.to_scalar::<f64>()?;
/// assert!(err < 1e-10);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct KernelOperator {
    kernel: Kernel,
    /// The points of the rows, `(M, D)`.
    rows: Tensor,
    /// The points of the columns, `(N, D)`.
    cols: Tensor,
    /// Whether the kernel's first argument is the column point (after [`KernelOperator::t`]).
    swapped: bool,
    /// The ranks its products are split over ([`KernelOperator::shard`]).
    comm: Comm,
}

/// Points as `(rows, D)`: a `(rows,)` tensor is one-dimensional points.
fn points(t: &Tensor, name: &str) -> candle_core::Result<Tensor> {
    let op = "KernelOperator::new";
    match t.dims() {
        [n] if *n > 0 => t.contiguous()?.reshape((*n, 1)),
        [n, d] if *n > 0 && *d > 0 => t.contiguous(),
        dims => Err(Error::Shape {
            op,
            detail: format!("{name} must be (rows, D) or (rows,) with rows, D >= 1, got {dims:?}"),
        }
        .into()),
    }
}

impl KernelOperator {
    /// The kernel matrix of `kernel` between the rows of `x` `(M, D)` and of `y` `(N, D)`
    /// (`(M,)` and `(N,)` are one-dimensional points). Checks dtypes, devices and the shapes of
    /// the kernel's hyperparameters.
    pub fn new(kernel: Kernel, x: &Tensor, y: &Tensor) -> candle_core::Result<KernelOperator> {
        let op = "KernelOperator::new";
        let rows = points(x, "x")?;
        let cols = points(y, "y")?;
        let (d, dy) = (rows.dim(1)?, cols.dim(1)?);
        if d != dy {
            return Err(Error::Shape {
                op,
                detail: format!("x has {d} dimensions per point and y has {dy}"),
            }
            .into());
        }
        if !crate::op::dtype_ok(x.dtype()) {
            return Err(Error::DType {
                op,
                detail: format!("points must be float, got {:?}", x.dtype()),
            }
            .into());
        }
        if x.dtype() != y.dtype() {
            return Err(Error::DType {
                op,
                detail: format!("x is {:?} and y is {:?}", x.dtype(), y.dtype()),
            }
            .into());
        }
        if !x.device().same_device(y.device()) {
            return Err(Error::Device {
                op,
                detail: format!(
                    "x is on {:?} and y on {:?}",
                    x.device().location(),
                    y.device().location()
                ),
            }
            .into());
        }
        kernel.check(d, x.dtype(), x.device())?;
        let k = KernelOperator {
            kernel,
            rows,
            cols,
            swapped: false,
            comm: Comm::single(),
        };
        // Build the formula once, so that a bad user formula fails here.
        k.lazy()?;
        Ok(k)
    }

    /// The operator of a symbolic matrix `K_ij` built as a [`LazyTensor`]: a one-component
    /// formula of one `i`-variable (the row points), one `j`-variable (the column points) and
    /// parameters, which may track gradients. Everything a [`Kernel`] operator has works on it
    /// ([`KernelOperator::solve`] with its preconditioner built from the formula's rows,
    /// [`KernelOperator::rows`], gradients, ...): the formula is evaluated at other points by
    /// binding them in place of its variables. [`LazyTensor::solve`] is this, then `solve`.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use lazy_kernels::{KernelOperator, LazyTensor};
    /// let x = Tensor::new(&[[0f64], [1.0], [3.0]], &Device::Cpu)?;
    /// let (x_i, x_j) = (LazyTensor::vi(&x)?, LazyTensor::vj(&x)?);
    /// let k = KernelOperator::from_lazy(&(x_i.sqdist(&x_j) + 1.0).rsqrt())?; // 1 / sqrt(1 + r^2)
    /// assert_eq!(k.shape(), (3, 3));
    /// let d = k.to_dense()?.to_vec2::<f64>()?;
    /// assert!((d[0][1] - 0.5f64.sqrt()).abs() < 1e-15 && d[1][1] == 1.0);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn from_lazy(k_ij: &LazyTensor) -> candle_core::Result<KernelOperator> {
        let (kernel, x, y) = Kernel::of_lazy(k_ij, "KernelOperator::from_lazy")?;
        let op = KernelOperator::new(kernel, &x, &y)?;
        Ok(match k_ij.comm() {
            Some(comm) => op.shard(comm),
            None => op,
        })
    }

    /// `(M, N)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows.dims()[0], self.cols.dims()[0])
    }

    /// The kernel.
    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    /// The points of the rows `(M, D)` and of the columns `(N, D)`.
    pub fn points(&self) -> (&Tensor, &Tensor) {
        (&self.rows, &self.cols)
    }

    /// The dtype of the points.
    pub fn dtype(&self) -> DType {
        self.rows.dtype()
    }

    /// `K_ij` as a lazy tensor (an `(M, N)` symbolic matrix), for any reduction.
    pub fn lazy(&self) -> candle_core::Result<LazyTensor> {
        Ok(self
            .formula_of(&self.rows, VarCat::I, &self.cols, VarCat::J)?
            .shard(&self.comm))
    }

    /// The same operator, whose products (and everything built on them: solves,
    /// log-determinants, a GP's loss and gradients) are split over the ranks of `comm` by
    /// rows: each rank evaluates its block of rows of `K b` and an all-gather gives every rank
    /// the whole product (see [`crate::dist`]). Every rank must build the same operator from
    /// the same points and make the same calls; each gets the single-process result, to
    /// rounding.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use lazy_kernels::dist::LocalGroup;
    /// use lazy_kernels::{Kernel, KernelOperator, SolveOptions};
    /// let x = Tensor::rand(0f64, 1., (400, 2), &Device::Cpu)?;
    /// let b = Tensor::rand(0f64, 1., 400, &Device::Cpu)?;
    /// let k = KernelOperator::new(Kernel::matern52(&Tensor::new(&[0.2f64], &Device::Cpu)?), &x, &x)?;
    /// let opts = SolveOptions::default();
    /// let (whole, _) = k.solve(&b, 0.1, &opts)?;
    /// let parts = LocalGroup::run(2, |comm| Ok(k.shard(&comm).solve(&b, 0.1, &opts)?.0))?;
    /// let err = (&parts[0] - &whole)?.abs()?.max_all()?.to_scalar::<f64>()?;
    /// assert!(err < 1e-10);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn shard(&self, comm: &Comm) -> KernelOperator {
        KernelOperator {
            comm: comm.clone(),
            ..self.clone()
        }
    }

    /// The communicator its products are split over ([`Comm::single`] unless
    /// [`KernelOperator::shard`] said otherwise).
    pub fn comm(&self) -> &Comm {
        &self.comm
    }

    /// The formula with the row points bound as `rc` and the column points as `cc`.
    fn formula_of(
        &self,
        rows: &Tensor,
        rc: VarCat,
        cols: &Tensor,
        cc: VarCat,
    ) -> candle_core::Result<LazyTensor> {
        if self.swapped {
            self.kernel.formula(cols, cc, rows, rc)
        } else {
            self.kernel.formula(rows, rc, cols, cc)
        }
    }

    /// `K b`, lazily and differentiably (with respect to `b`, the points and every
    /// hyperparameter): `b` is `(N,)` (giving `(M,)`) or `(N, E)` (giving `(M, E)`).
    pub fn matmul(&self, b: &Tensor) -> candle_core::Result<Tensor> {
        matmul_lazy(&self.lazy()?, b, self.shape(), "KernelOperator::matmul")
    }

    /// The transpose `K^T`, `(N, M)`: `K^T_ji = k(x_i, y_j)` (for a symmetric kernel, the
    /// operator of `k` between `y` and `x`).
    pub fn t(&self) -> KernelOperator {
        KernelOperator {
            kernel: self.kernel.clone(),
            rows: self.cols.clone(),
            cols: self.rows.clone(),
            swapped: !self.swapped,
            comm: self.comm.clone(),
        }
    }

    /// The diagonal `K_kk`, `(min(M, N),)`, evaluated pointwise (differentiable).
    pub fn diag(&self) -> candle_core::Result<Tensor> {
        let n = self.shape().0.min(self.shape().1);
        let r = self.rows.narrow(0, 0, n)?;
        let c = self.cols.narrow(0, 0, n)?;
        self.formula_of(&r, VarCat::I, &c, VarCat::I)?
            .pointwise()?
            .reshape(n)
    }

    /// The rows `K[idx, :]` as a dense `(idx.len(), N)` tensor (what a preconditioner needs),
    /// differentiable; `O(idx.len() N)` memory, nothing of size `M x N`.
    ///
    /// On the CPU each row is one pointwise evaluation over the column points with the row's
    /// point bound as a parameter (no copies). On a GPU, where a launch costs more than the
    /// work of a row, all rows are one evaluation: the rows' points are paired with the column
    /// points and the kernel is evaluated pointwise over the pairs (the formula of
    /// [`KernelOperator::diag`], so one compiled kernel serves both), in chunks whose paired
    /// points take at most 64 MiB.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use lazy_kernels::{Kernel, KernelOperator};
    /// let x = Tensor::new(&[[0f64], [1.0], [3.0]], &Device::Cpu)?;
    /// let y = Tensor::new(&[[0f64], [2.0]], &Device::Cpu)?;
    /// let k = KernelOperator::new(Kernel::laplacian(&Tensor::new(&[1f64], &Device::Cpu)?), &x, &y)?;
    /// let r = k.rows(&[2, 0])?.to_vec2::<f64>()?;             // K[2, :] and K[0, :]
    /// assert!((r[0][1] - (-1f64).exp()).abs() < 1e-15 && r[1][0] == 1.0);
    /// assert_eq!(k.t().shape(), (2, 3));                      // K^T
    /// assert_eq!(k.diag()?.to_vec1::<f64>()?, vec![1.0, (-1f64).exp()]); // K_00, K_11
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn rows(&self, idx: &[usize]) -> candle_core::Result<Tensor> {
        let (m, n) = self.shape();
        if let Some(bad) = idx.iter().find(|&&i| i >= m) {
            return Err(Error::InvalidArgument {
                op: "KernelOperator::rows",
                detail: format!("row index {bad} is out of range for {m} rows"),
            }
            .into());
        }
        if idx.is_empty() {
            return Tensor::zeros((0, n), self.dtype(), self.rows.device());
        }
        // The rows, and their pieces before they are concatenated.
        crate::backend::memory::reserve(
            "KernelOperator::rows",
            || format!("{} dense rows of {n} kernel values", idx.len()),
            idx.len()
                .checked_mul(n)
                .and_then(|c| c.checked_mul(2 * self.dtype().size_in_bytes())),
            self.rows.device(),
        )?;
        if self.rows.device().is_cpu() {
            self.rows_one_by_one(idx)
        } else {
            let points = self
                .rows
                .index_select(&index_tensor(idx, self.rows.device())?, 0)?;
            self.rows_paired(&points, ROWS_MEMORY)
        }
    }

    /// The rows `K[idx, :]` as [`KernelOperator::rows`] gives them, detached, evaluated by the
    /// ranks of the operator's communicator together: each its block of the columns, then an
    /// all-gather (what the preconditioner and the predictive variances read: `O(idx.len() N)`
    /// work split over the ranks).
    pub(crate) fn rows_detached(&self, idx: &[usize]) -> candle_core::Result<Tensor> {
        let n = self.shape().1;
        let comm = &self.comm;
        if comm.size() == 1 || n < comm.size() || idx.is_empty() {
            return Ok(self.rows(idx)?.detach());
        }
        let (start, len) = comm.my_block(n);
        let part = KernelOperator {
            cols: self.cols.narrow(0, start, len)?.contiguous()?,
            ..self.clone()
        };
        let local = part.rows(idx)?.detach().t()?.contiguous()?; // (len, idx.len())
        crate::dist::all_gather_rows(comm, &local, n)?
            .t()?
            .contiguous()
    }

    /// The block `K[idx, idx]` (checked, non-empty indices `< min(M, N)`): one pointwise
    /// evaluation over the `idx.len()^2` paired points, on every device (what the
    /// preconditioner's acceptance test needs of its candidates).
    pub(crate) fn block(&self, idx: &[usize]) -> candle_core::Result<Tensor> {
        let ids = index_tensor(idx, self.rows.device())?;
        let sub = KernelOperator {
            kernel: self.kernel.clone(),
            rows: self.rows.index_select(&ids, 0)?,
            cols: self.cols.index_select(&ids, 0)?,
            swapped: self.swapped,
            comm: self.comm.clone(),
        };
        sub.rows_paired(&sub.rows, ROWS_MEMORY)
    }

    /// The diagonal blocks `K[g, g]` of the groups `g` of `b` consecutive indices of `idx`
    /// (checked, `idx.len()` a non-zero multiple of `b`, indices `< min(M, N)`), as one
    /// `(idx.len() / b, b, b)` tensor: pointwise evaluations over the paired points of the
    /// groups, as many groups at once as fit in the paired points' memory budget (the block
    /// preconditioner of the log-determinant needs `O(N b)` values, not rows).
    pub(crate) fn blocks(&self, idx: &[usize], b: usize) -> candle_core::Result<Tensor> {
        let groups = idx.len() / b;
        let ids = index_tensor(idx, self.rows.device())?;
        let left = self.rows.index_select(&ids, 0)?;
        let right = self.cols.index_select(&ids, 0)?;
        let d = left.dim(1)?;
        let bytes_per_group = 2 * b * b * d * self.dtype().size_in_bytes();
        let chunk = (ROWS_MEMORY / bytes_per_group).clamp(1, groups);
        let mut out = Vec::with_capacity(groups.div_ceil(chunk));
        for start in (0..groups).step_by(chunk) {
            let c = chunk.min(groups - start);
            let pair = |points: &Tensor, axis: usize| -> candle_core::Result<Tensor> {
                points
                    .narrow(0, start * b, c * b)?
                    .reshape((c, b, d))?
                    .unsqueeze(axis)?
                    .broadcast_as((c, b, b, d))?
                    .contiguous()?
                    .reshape((c * b * b, d))
            };
            let (l, r) = (pair(&left, 2)?, pair(&right, 1)?);
            out.push(
                self.formula_of(&l, VarCat::I, &r, VarCat::I)?
                    .pointwise()?
                    .reshape((c, b, b))?,
            );
        }
        Tensor::cat(&out, 0)
    }

    /// [`KernelOperator::rows`], one pointwise evaluation per row (checked indices).
    pub(crate) fn rows_one_by_one(&self, idx: &[usize]) -> candle_core::Result<Tensor> {
        let n = self.shape().1;
        let out = idx
            .iter()
            .map(|&i| {
                let point = self.rows.get(i)?;
                self.formula_of(&point, VarCat::P, &self.cols, VarCat::I)?
                    .pointwise()?
                    .reshape((1, n))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Tensor::cat(&out, 0)
    }

    /// The rows of `K` at the row points `points` (`(B, D)`, non-empty): one pointwise
    /// evaluation over the points paired with the column points per chunk of rows whose paired
    /// points take at most `budget` bytes.
    pub(crate) fn rows_paired(
        &self,
        points: &Tensor,
        budget: usize,
    ) -> candle_core::Result<Tensor> {
        let (b, n) = (points.dim(0)?, self.shape().1);
        let d = self.rows.dim(1)?;
        // Two paired copies of `chunk x N` points per chunk.
        let bytes_per_row = 2 * n * d * self.dtype().size_in_bytes();
        let chunk = (budget / bytes_per_row).clamp(1, b);
        let mut out = Vec::with_capacity(b.div_ceil(chunk));
        for start in (0..b).step_by(chunk) {
            let c = chunk.min(b - start);
            let left = points
                .narrow(0, start, c)?
                .unsqueeze(1)?
                .broadcast_as((c, n, d))?
                .contiguous()?
                .reshape((c * n, d))?;
            let right = self
                .cols
                .unsqueeze(0)?
                .broadcast_as((c, n, d))?
                .contiguous()?
                .reshape((c * n, d))?;
            out.push(
                self.formula_of(&left, VarCat::I, &right, VarCat::I)?
                    .pointwise()?
                    .reshape((c, n))?,
            );
        }
        Tensor::cat(&out, 0)
    }

    /// The dense `(M, N)` matrix, for small blocks and tests (`O(M N)` memory, as asked).
    pub fn to_dense(&self) -> candle_core::Result<Tensor> {
        let idx: Vec<usize> = (0..self.shape().0).collect();
        self.rows(&idx)
    }

    /// `sum_ij W_ij K_ij` for a dense `(M, N)` weight matrix `w` (detached, the operator's
    /// dtype and device), differentiable with respect to the points and hyperparameters like
    /// [`KernelOperator::matmul`], and without a tracked `(M, N)` tensor: per block of
    /// `block` rows `I`, one reduction `sum_{i in I} sum_j <e_i, w_j> K_ij`, whose weights
    /// `W_ij = <e_i, w_j>` pair the one-hot rows `e_i` of the block (an i-variable of
    /// dimension `|I|`) with the block's columns of `W` (a j-variable). One forward and one
    /// backward reduction per block, each parallel over the block's rows, where the rows of
    /// [`KernelOperator::to_dense`] take one of each per row.
    pub(crate) fn weighted_sum(&self, w: &Tensor, block: usize) -> candle_core::Result<Tensor> {
        let (m, n) = self.shape();
        if w.dims() != [m, n] {
            return Err(Error::Shape {
                op: "KernelOperator::weighted_sum",
                detail: format!("the weights must be ({m}, {n}), got {:?}", w.dims()),
            }
            .into());
        }
        let (dtype, dev) = (self.dtype(), self.rows.device());
        let w = w.detach().to_dtype(dtype)?;
        let mut total: Option<Tensor> = None;
        for start in (0..m).step_by(block.max(1)) {
            let b = block.max(1).min(m - start);
            let part = KernelOperator {
                kernel: self.kernel.clone(),
                rows: self.rows.narrow(0, start, b)?,
                cols: self.cols.clone(),
                swapped: self.swapped,
                comm: self.comm.clone(),
            };
            let one_hot = LazyTensor::vi(&Tensor::eye(b, dtype, dev)?)?;
            let weights = LazyTensor::vj(&w.narrow(0, start, b)?.t()?.contiguous()?)?;
            let s = (part.lazy()? * one_hot.dot(&weights))
                .sum(Axis::J)?
                .sum_all()?;
            total = Some(match total {
                Some(t) => (t + s)?,
                None => s,
            });
        }
        total.ok_or_else(|| {
            Error::Shape {
                op: "KernelOperator::weighted_sum",
                detail: "the operator has no rows".into(),
            }
            .into()
        })
    }

    /// `K_ij` computed in `dtype` from the points and hyperparameters converted first (so
    /// that the lengthscale scaling is done in `dtype` too), detached.
    pub(crate) fn detached_lazy_in(&self, dtype: DType) -> candle_core::Result<LazyTensor> {
        self.detached_in(dtype)?.lazy()?.to_dtype(dtype)?.detach()
    }

    /// The operator with its points and hyperparameters detached and converted to `dtype`
    /// (what a preconditioner evaluates: no gradient, so no backward pass to prepare).
    pub(crate) fn detached_in(&self, dtype: DType) -> candle_core::Result<KernelOperator> {
        let rows = self.rows.detach().to_dtype(dtype)?;
        // One tensor for both sides when the operator has one point set, so that the kernel
        // scales it once.
        let cols = if self.rows.id() == self.cols.id() {
            rows.clone()
        } else {
            self.cols.detach().to_dtype(dtype)?
        };
        Ok(KernelOperator {
            kernel: self.kernel.to_dtype(dtype)?,
            rows,
            cols,
            swapped: self.swapped,
            comm: self.comm.clone(),
        })
    }
}

/// Indices as a `u32` tensor on `device` (what `index_select` takes on every device).
pub(crate) fn index_tensor(
    idx: &[usize],
    device: &candle_core::Device,
) -> candle_core::Result<Tensor> {
    let ids: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
    Tensor::from_vec(ids, idx.len(), device)
}

/// `K b` for a lazy `K` of `shape`, with `b` `(N,)` or `(N, E)`: the checks and the reshapes.
pub(crate) fn matmul_lazy(
    k: &LazyTensor,
    b: &Tensor,
    shape: (usize, usize),
    op: &'static str,
) -> candle_core::Result<Tensor> {
    let (m, n) = shape;
    let (b2, vector) = match b.dims() {
        [r] => (b.reshape((*r, 1))?, true),
        [_, e] if *e > 0 => (b.clone(), false),
        dims => {
            return Err(Error::Shape {
                op,
                detail: format!("b must be (N,) or (N, E) with E >= 1, got {dims:?}"),
            }
            .into());
        }
    };
    if b2.dim(0)? != n {
        return Err(Error::Shape {
            op,
            detail: format!(
                "b has {} rows but the operator is {m} x {n} (b needs N = {n} rows)",
                b2.dim(0)?
            ),
        }
        .into());
    }
    let out = (k * LazyTensor::vj(&b2)?).sum(Axis::J)?;
    if vector { out.reshape(m) } else { Ok(out) }
}

/// The number of columns a product is best computed with when `active` of `total` columns
/// are needed: `total` when that is at most twice `active`, else the next power of two.
/// A conjugate-gradient solve applies its operator to its unconverged columns only, and their
/// number shrinks unpredictably; computed on these few sizes (with extra columns whose results
/// are dropped), the products need few distinct kernels, and each distinct kernel is an NVRTC
/// compile on CUDA. At most twice the columns (the pair's exponential, the bulk of the work,
/// is shared by all columns), and about `log2(total)` kernels: 1, 2, 4, 8, 17 for 17.
pub(crate) fn column_bucket(active: usize, total: usize) -> usize {
    if total <= active.saturating_mul(2) {
        total.max(active)
    } else {
        active.max(1).next_power_of_two()
    }
}

/// Every value [`column_bucket`] takes for `total` columns, in increasing order.
pub(crate) fn column_buckets(total: usize) -> Vec<usize> {
    let mut out: Vec<usize> = (1..=total).map(|a| column_bucket(a, total)).collect();
    out.dedup();
    out
}

/// Starts compiling, on a CUDA device and on background threads, the modules of `k b` (`k`
/// of `shape`) for `b` of each number of columns in `columns`, in `k`'s dtype `dtype`, and the
/// modules of their backward passes when `k` tracks gradients; does nothing on other devices.
/// A solve calls it with [`column_buckets`] before its first product, so that the kernels of
/// all its products compile at once instead of one after the other.
pub(crate) fn prepare_matmul(
    k: &LazyTensor,
    shape: (usize, usize),
    columns: &[usize],
    dtype: DType,
    device: &candle_core::Device,
) -> candle_core::Result<()> {
    crate::op::prepare(device, || {
        for &e in columns {
            let b = crate::op::stand_in((shape.1, e), dtype, device)?;
            matmul_lazy(k, &b, shape, "KernelOperator (prepare)")?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// A block is the dense matrix at the chosen rows and columns, repeated indices included.
    #[test]
    fn block_is_the_dense_matrix_at_the_indices() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::rand(-1f64, 1., (9, 2), &dev)?;
        let l = Tensor::new(&[0.7f64, 1.3], &dev)?;
        let op = KernelOperator::new(Kernel::matern32(&l) + Kernel::linear(), &x, &x)?;
        let idx = [4usize, 0, 8, 4, 2];
        let dense = op.to_dense()?.to_vec2::<f64>()?;
        let got = op.block(&idx)?.to_vec2::<f64>()?;
        for (a, &i) in idx.iter().enumerate() {
            for (b, &j) in idx.iter().enumerate() {
                assert!((got[a][b] - dense[i][j]).abs() <= 1e-14, "K[{i}, {j}]");
            }
        }
        Ok(())
    }

    /// The two ways of evaluating rows agree, for every family, transposed, in one chunk or
    /// in many.
    #[test]
    fn paired_rows_match_rows_one_by_one() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::rand(-1f64, 1., (9, 2), &dev)?;
        let y = Tensor::rand(-1f64, 1., (7, 2), &dev)?;
        let l = Tensor::new(&[0.7f64, 1.3], &dev)?;
        let s = Tensor::new(&[0.8f64], &dev)?;
        let kernels = [
            Kernel::gaussian(&l),
            Kernel::laplacian(&l),
            Kernel::matern52(&s).scale(&s) + Kernel::linear(),
            Kernel::periodic(&s, &s) * Kernel::rational_quadratic(&l, &s),
        ];
        for k in kernels {
            let op = KernelOperator::new(k, &x, &y)?;
            for op in [op.clone(), op.t()] {
                let idx: Vec<usize> = (0..op.shape().0).rev().chain([0, 0]).collect();
                let want = op.rows_one_by_one(&idx)?;
                let points = op.rows.index_select(&index_tensor(&idx, &dev)?, 0)?;
                for budget in [ROWS_MEMORY, 1] {
                    let got = op.rows_paired(&points, budget)?;
                    let err = (got - &want)?.abs()?.max_all()?.to_scalar::<f64>()?;
                    assert!(err <= 1e-14, "{:?}: {err:e}", op.kernel());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod bucket_tests {
    use super::*;

    #[test]
    fn column_buckets_are_few_and_at_most_twice_the_active_columns() {
        assert_eq!(column_buckets(17), vec![1, 2, 4, 8, 17]);
        assert_eq!(column_buckets(16), vec![1, 2, 4, 8, 16]);
        assert_eq!(column_buckets(1), vec![1]);
        assert_eq!(column_buckets(3), vec![1, 3]);
        for total in 1..70 {
            let buckets = column_buckets(total);
            for active in 1..=total {
                let b = column_bucket(active, total);
                assert!(
                    b >= active && b <= total && b < 2 * active + 1,
                    "{active}/{total}: {b}"
                );
                assert!(
                    buckets.contains(&b),
                    "{active}/{total}: {b} not in {buckets:?}"
                );
            }
            assert_eq!(column_bucket(total, total), total);
        }
        // The variations seen in one GP step (17 columns): three kernels instead of five.
        let seen: std::collections::BTreeSet<usize> = [17, 16, 9, 8, 1]
            .iter()
            .map(|&a| column_bucket(a, 17))
            .collect();
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![1, 8, 17]);
    }

    #[test]
    fn prepare_matmul_does_nothing_off_cuda() {
        let x = Tensor::rand(0f32, 1., (10, 3), &candle_core::Device::Cpu).unwrap();
        let l = Tensor::new(&[0.5f32], &candle_core::Device::Cpu).unwrap();
        let k = KernelOperator::new(Kernel::gaussian(&l), &x, &x).unwrap();
        let (dev, shape) = (candle_core::Device::Cpu, k.shape());
        prepare_matmul(
            &k.lazy().unwrap(),
            shape,
            &column_buckets(17),
            DType::F32,
            &dev,
        )
        .unwrap();
    }
}
