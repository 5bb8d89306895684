//! [`LazyTensor`]: the user-facing builder of formulas over bound Candle tensors.
//!
//! A `LazyTensor` is a formula ([`Expr`]) plus the tensors its variables refer to. Building
//! one costs nothing; a reduction ([`LazyTensor::sum`], [`LazyTensor::argkmin`], ...) runs it
//! and returns a Candle tensor. Building never returns `Result`, so that formulas read as
//! maths: a failing op (mismatched dimensions in `+` or `sqdist`) yields a `LazyTensor`
//! carrying the error, which the reduction returns, naming the op and its operands
//! ([`LazyTensor::checked`] returns it at once).
//!
//! Reductions are differentiable: for every bound tensor that tracks gradients (a Candle `Var`
//! or a tensor computed from one), `backward()` on a loss built from the result gives its
//! gradient, with the tensor's shape (see [`crate::op`]).

use std::ops::{Add, Div, Mul, Neg, Sub};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::Tensor;

use crate::dist::Comm;
use crate::error::Error;
use crate::formula::ops::{binary_table, ternary_table, unary_table};
use crate::formula::{BinaryOp, Expr, Op, TernaryOp, UnaryOp, Var, VarCat, parse::parse};
use crate::op::gram::{PathReport, ReductionOptions};
use crate::op::{Binding, ReductionOutput, check_bindable, reduce};
use crate::ranges::{BlockSparse, Ranges};
use crate::reduction::{Axis, Reduction, ReductionKind};

/// A symbolic tensor: a formula over `i`-indexed variables, `j`-indexed variables and
/// parameters, never materialised as an `M x N` array.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use lazy_kernels::{Axis, LazyTensor};
/// let dev = Device::Cpu;
/// let x = Tensor::new(&[[0f32, 0.], [1., 0.]], &dev)?;        // (M, D) = (2, 2)
/// let y = Tensor::new(&[[0f32, 0.], [0., 1.], [3., 3.]], &dev)?; // (N, D) = (3, 2)
/// let b = Tensor::new(&[1f32, 2., 3.], &dev)?;                // (N,)
/// let (x_i, y_j, b_j) = (LazyTensor::vi(&x)?, LazyTensor::vj(&y)?, LazyTensor::vj(&b)?);
/// let k_ij = (-x_i.sqdist(&y_j)).exp();                      // exp(-|x_i - y_j|^2)
/// let out = (k_ij * b_j).sum(Axis::J)?;                       // (M, 1)
/// let v = out.to_vec2::<f32>()?;
/// let expected = 1.0 + 2.0 * (-1f32).exp() + 3.0 * (-18f32).exp();
/// assert!((v[0][0] - expected).abs() < 1e-6);
/// let nn = x_i.sqdist(&y_j).argkmin(2, Axis::J)?;            // (M, 2) i64 indices
/// assert_eq!(nn.to_vec2::<i64>()?, vec![vec![0, 1], vec![0, 1]]);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct LazyTensor {
    expr: Result<Expr, Error>,
    bindings: Arc<Vec<Binding>>,
    /// The block-sparse ranges its reductions visit ([`LazyTensor::with_ranges`]).
    ranges: Option<Arc<Ranges>>,
    /// The ranks its reductions are split over ([`LazyTensor::shard`]); one when `None`.
    shard: Option<Comm>,
}

/// Identifiers of bound tensors while formulas are built (replaced by positions when a
/// reduction runs, so they never reach a printed formula or a cache key).
static NEXT_BINDING: AtomicUsize = AtomicUsize::new(0);

/// A new binding identifier.
pub(crate) fn fresh_id() -> usize {
    NEXT_BINDING.fetch_add(1, Ordering::Relaxed)
}

fn merge(a: &[Binding], b: &[Binding]) -> Arc<Vec<Binding>> {
    let mut out = a.to_vec();
    for x in b {
        if !out.iter().any(|y| y.id == x.id) {
            out.push(x.clone());
        }
    }
    Arc::new(out)
}

/// `e` for a message: its formula, each variable numbered by its place among `bindings`
/// (as a reduction numbers them), and the shapes and dtypes of the tensors they are bound to.
pub(crate) fn describe(e: &Expr, bindings: &[Binding]) -> String {
    let place = |v: &Var| bindings.iter().position(|b| b.id == v.pos);
    let numbered = e.map_vars(&mut |v| Var {
        pos: place(&v).unwrap_or(v.pos),
        ..v
    });
    let tensors: Vec<String> = e
        .vars()
        .iter()
        .filter_map(|v| {
            let p = place(v)?;
            let t = &bindings[p].tensor;
            let var = Expr::var(Var { pos: p, ..*v }).ok()?;
            Some(format!("{var} is a {:?} {:?} tensor", t.dims(), t.dtype()))
        })
        .collect();
    if tensors.is_empty() {
        format!("{}", numbered.brief())
    } else {
        format!("{} (where {})", numbered.brief(), tensors.join(", "))
    }
}

/// `err`, the error of an op on `operands`, with the operands described.
fn with_operands(err: Error, operands: &[&Expr], bindings: &[Binding]) -> Error {
    let described: Vec<String> = operands.iter().map(|e| describe(e, bindings)).collect();
    err.with_detail(&format!("operands: {}", described.join(" and ")))
}

impl LazyTensor {
    fn bind(t: &Tensor, cat: VarCat, op: &'static str) -> candle_core::Result<LazyTensor> {
        let dim = check_bindable(t, cat, op)?;
        let id = fresh_id();
        let expr = Expr::var(Var { cat, pos: id, dim })?;
        Ok(LazyTensor {
            expr: Ok(expr),
            bindings: Arc::new(vec![Binding {
                id,
                cat,
                dim,
                tensor: t.clone(),
            }]),
            ranges: None,
            shard: None,
        })
    }

    /// An `i`-indexed variable from a `(M, D)` tensor (or `(M,)`, taken as `D = 1`), or a
    /// batch of them from a `(B, M, D)` tensor (see [`LazyTensor::param_batched`] for batches).
    pub fn vi(t: &Tensor) -> candle_core::Result<LazyTensor> {
        LazyTensor::bind(t, VarCat::I, "LazyTensor::vi")
    }

    /// A `j`-indexed variable from a `(N, D)` tensor (or `(N,)`, taken as `D = 1`), or a
    /// batch of them from a `(B, N, D)` tensor.
    pub fn vj(t: &Tensor) -> candle_core::Result<LazyTensor> {
        LazyTensor::bind(t, VarCat::J, "LazyTensor::vj")
    }

    /// A parameter per batch, from a `(B, P)` tensor: batch `b` of a batched formula reads
    /// row `b` (KeOps' and GPyTorch's batched hyperparameters; [`LazyTensor::param`] is shared
    /// by every batch).
    ///
    /// A formula with a variable bound to a `(B, M, D)` or `(B, N, D)` tensor is batched: its
    /// reductions give `(B, M, E)` (over `j`) or `(B, N, E)` (over `i`), batch `b` reducing
    /// the pairs of batch `b` only, as one reduction over the stacked batches (one parallel
    /// loop over `B x` row blocks: block-diagonal block-sparse ranges), differentiable like
    /// any reduction; indices are local to their batch. A batch of 1 and an unbatched
    /// variable are shared by every batch. Runs where block-sparse ranges run.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use lazy_kernels::{Axis, LazyTensor};
    /// let dev = Device::Cpu;
    /// let x = Tensor::rand(0f64, 1., (4, 100, 3), &dev)?;   // B = 4 batches of M = 100 points
    /// let y = Tensor::rand(0f64, 1., (4, 50, 3), &dev)?;    // and of N = 50
    /// let s = Tensor::new(&[[0.1f64], [0.2], [0.3], [0.4]], &dev)?; // one bandwidth per batch
    /// let (x_i, y_j) = (LazyTensor::vi(&x)?, LazyTensor::vj(&y)?);
    /// let s = LazyTensor::param_batched(&s)?;
    /// let k = (-x_i.sqdist(&y_j) / (2.0 * s.square())).exp();
    /// let out = k.sum(Axis::J)?;                              // (4, 100, 1)
    /// assert_eq!(out.dims(), &[4, 100, 1]);
    /// // Batch 2 alone, with its own bandwidth:
    /// let (x2, y2) = (LazyTensor::vi(&x.get(2)?)?, LazyTensor::vj(&y.get(2)?)?);
    /// let alone = (-x2.sqdist(&y2) / (2.0 * 0.3 * 0.3)).exp().sum(Axis::J)?;
    /// let err = (out.get(2)? - alone)?.abs()?.max_all()?.to_scalar::<f64>()?;
    /// assert!(err < 1e-12);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn param_batched(t: &Tensor) -> candle_core::Result<LazyTensor> {
        let op = "LazyTensor::param_batched";
        let (b, p) = match t.dims() {
            [b, p] if *b > 0 && *p > 0 => (*b, *p),
            dims => {
                return Err(Error::Shape {
                    op,
                    detail: format!("expected a (B, P) tensor with B, P >= 1, got {dims:?}"),
                }
                .into());
            }
        };
        // An i-variable of one row per batch, which broadcasts over the batch's rows.
        LazyTensor::bind(&t.reshape((b, 1, p))?, VarCat::I, op)
    }

    /// A parameter: a vector shared by every pair `(i, j)`, from a tensor of any shape (its
    /// values in row-major order), for example a lengthscale of shape `(1,)` or `(D,)`.
    pub fn param(t: &Tensor) -> candle_core::Result<LazyTensor> {
        LazyTensor::bind(t, VarCat::P, "LazyTensor::param")
    }

    /// A scalar constant (must be finite).
    pub fn constant(c: f64) -> LazyTensor {
        LazyTensor {
            expr: Expr::constant(c),
            bindings: Arc::new(Vec::new()),
            ranges: None,
            shard: None,
        }
    }

    /// A lazy tensor from a formula whose variable at position `p` is bound to `args[p]` (the
    /// category and dimension come from the formula; KeOps' `Genred`).
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use lazy_kernels::{formula::parse, Axis, LazyTensor};
    /// let x = Tensor::new(&[[1f64, 2.], [3., 4.]], &Device::Cpu)?;
    /// let y = Tensor::new(&[[0f64, 0.]], &Device::Cpu)?;
    /// let f = parse("SqDist(Vi(0,2), Vj(1,2))", &[])?;
    /// let d = LazyTensor::from_formula(&f, &[&x, &y])?.sum(Axis::J)?;
    /// assert_eq!(d.to_vec2::<f64>()?, vec![vec![5.0], vec![25.0]]);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn from_formula(formula: &Expr, args: &[&Tensor]) -> candle_core::Result<LazyTensor> {
        let mut bindings = Vec::new();
        let mut ids = Vec::new();
        for v in formula.vars() {
            let t = args.get(v.pos).ok_or_else(|| Error::InvalidArgument {
                op: "LazyTensor::from_formula",
                detail: format!(
                    "the formula uses argument {} but {} tensors were given",
                    v.pos,
                    args.len()
                ),
            })?;
            let dim = check_bindable(t, v.cat, "LazyTensor::from_formula")?;
            if dim != v.dim {
                return Err(Error::Shape {
                    op: "LazyTensor::from_formula",
                    detail: format!(
                        "argument {} has {dim} components per row, the formula expects {}",
                        v.pos, v.dim
                    ),
                }
                .into());
            }
            let id = NEXT_BINDING.fetch_add(1, Ordering::Relaxed);
            ids.push((v, id));
            bindings.push(Binding {
                id,
                cat: v.cat,
                dim,
                tensor: (*t).clone(),
            });
        }
        let expr = formula.map_vars(&mut |v| {
            let id = ids.iter().find(|(u, _)| *u == v).map_or(0, |(_, id)| *id);
            Var { pos: id, ..v }
        });
        Ok(LazyTensor {
            expr: Ok(expr),
            bindings: Arc::new(bindings),
            ranges: None,
            shard: None,
        })
    }

    /// Parses a formula string whose names are bound to lazy tensors.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use lazy_kernels::{Axis, LazyTensor};
    /// let x = Tensor::new(&[[0f64], [1.]], &Device::Cpu)?;
    /// let (x_i, y_j) = (LazyTensor::vi(&x)?, LazyTensor::vj(&x)?);
    /// let b_j = LazyTensor::vj(&Tensor::new(&[1f64, 1.], &Device::Cpu)?)?;
    /// let f = LazyTensor::parse("Exp(-SqDist(x,y)) * b", &[("x", &x_i), ("y", &y_j), ("b", &b_j)])?;
    /// let out = f.sum(Axis::J)?.to_vec2::<f64>()?;
    /// assert!((out[0][0] - (1.0 + (-1f64).exp())).abs() < 1e-12);
    /// // Errors point at the offending column:
    /// let err = LazyTensor::parse("Exp(x) + Foo(y)", &[("x", &x_i), ("y", &y_j)]).unwrap_err();
    /// assert!(err.to_string().contains("column 10"));
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn parse(src: &str, names: &[(&str, &LazyTensor)]) -> candle_core::Result<LazyTensor> {
        let mut bound: Vec<(&str, Expr)> = Vec::with_capacity(names.len());
        let mut bindings: Arc<Vec<Binding>> = Arc::new(Vec::new());
        let mut ranges = None;
        for (name, lt) in names {
            bound.push((name, lt.expr()?.clone()));
            bindings = merge(&bindings, &lt.bindings);
            ranges = crate::ranges::join(&ranges, &lt.ranges)?;
        }
        let expr = parse(src, &bound).map_err(Error::from)?;
        Ok(LazyTensor {
            expr: Ok(expr),
            bindings,
            ranges,
            shard: names.iter().find_map(|(_, lt)| lt.shard.clone()),
        })
    }

    /// The formula, or the error of the operation that failed while building it.
    pub fn expr(&self) -> candle_core::Result<&Expr> {
        self.expr.as_ref().map_err(|e| e.clone().into())
    }

    /// Number of components of the formula (1 for scalar formulas).
    pub fn dim(&self) -> candle_core::Result<usize> {
        Ok(self.expr()?.dim())
    }

    fn map(&self, f: impl FnOnce(&Expr) -> crate::error::Result<Expr>) -> LazyTensor {
        LazyTensor {
            expr: self.expr.clone().and_then(|e| f(&e)),
            bindings: self.bindings.clone(),
            ranges: self.ranges.clone(),
            shard: self.shard.clone(),
        }
    }

    fn zip(
        &self,
        other: &LazyTensor,
        f: impl FnOnce(&Expr, &Expr) -> crate::error::Result<Expr>,
    ) -> LazyTensor {
        let bindings = merge(&self.bindings, &other.bindings);
        let ranges = crate::ranges::join(&self.ranges, &other.ranges);
        let expr = match (&self.expr, &other.expr, &ranges) {
            (Ok(a), Ok(b), Ok(_)) => f(a, b).map_err(|e| with_operands(e, &[a, b], &bindings)),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => Err(e.clone()),
        };
        LazyTensor {
            expr,
            bindings,
            ranges: ranges.unwrap_or(None),
            shard: self.shard.clone().or_else(|| other.shard.clone()),
        }
    }

    fn zip3(
        &self,
        b: &LazyTensor,
        c: &LazyTensor,
        f: impl FnOnce(&Expr, &Expr, &Expr) -> crate::error::Result<Expr>,
    ) -> LazyTensor {
        let bindings = merge(&merge(&self.bindings, &b.bindings), &c.bindings);
        let ranges = crate::ranges::join(&self.ranges, &b.ranges)
            .and_then(|r| crate::ranges::join(&r, &c.ranges));
        let expr = match (&self.expr, &b.expr, &c.expr, &ranges) {
            (Ok(x), Ok(y), Ok(z), Ok(_)) => {
                f(x, y, z).map_err(|e| with_operands(e, &[x, y, z], &bindings))
            }
            (Err(e), _, _, _) | (_, Err(e), _, _) | (_, _, Err(e), _) | (_, _, _, Err(e)) => {
                Err(e.clone())
            }
        };
        LazyTensor {
            expr,
            bindings,
            ranges: ranges.unwrap_or(None),
            shard: [self, b, c].iter().find_map(|t| t.shard.clone()),
        }
    }

    /// `self`, or the error of the first operation that failed while building it: for an
    /// error at the line that made it rather than at the reduction. Every method that builds
    /// a formula (`sqdist`, `dot`, `+`, `exp`, ...) returns a `LazyTensor` and defers its
    /// error, so that formulas read as maths; the reductions return the deferred error,
    /// naming the op and its operands.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use lazy_kernels::{Axis, LazyTensor};
    /// let x_i = LazyTensor::vi(&Tensor::zeros((4, 3), candle_core::DType::F32, &Device::Cpu)?)?;
    /// let y_j = LazyTensor::vj(&Tensor::zeros((5, 2), candle_core::DType::F32, &Device::Cpu)?)?;
    /// let k = (-x_i.sqdist(&y_j)).exp();            // 3 against 2 components: no error yet
    /// let err = k.sum(Axis::J).unwrap_err().to_string();
    /// assert!(err.contains("SqDist") && err.contains("[4, 3]") && err.contains("[5, 2]"));
    /// assert!(x_i.sqdist(&y_j).checked().is_err()); // the same error, at once
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn checked(self) -> candle_core::Result<LazyTensor> {
        self.expr()?;
        Ok(self)
    }

    fn unary(&self, op: UnaryOp) -> LazyTensor {
        self.map(|e| Ok(Expr::unary(op, e)))
    }

    fn binary(&self, op: BinaryOp, other: &LazyTensor) -> LazyTensor {
        self.zip(other, |a, b| Expr::binary(op, a, b))
    }

    /// Sum of the components (a 1-component formula); not a reduction over `i` or `j`.
    pub fn component_sum(&self) -> LazyTensor {
        self.map(|e| Ok(e.sum()))
    }
    /// Squared Euclidean norm of the components.
    pub fn sqnorm2(&self) -> LazyTensor {
        self.map(|e| Ok(Expr::sqnorm2(e)))
    }
    /// Euclidean norm of the components.
    pub fn norm2(&self) -> LazyTensor {
        self.map(|e| Ok(Expr::norm2(e)))
    }
    /// `self / |self|`.
    pub fn normalize(&self) -> LazyTensor {
        self.map(|e| Ok(Expr::normalize(e)))
    }
    /// Squared Euclidean distance `|self - other|^2`.
    pub fn sqdist(&self, other: &LazyTensor) -> LazyTensor {
        self.zip(other, Expr::sqdist)
    }
    /// Weighted squared distance `sum_d w_d (self_d - other_d)^2`, with `w` of 1 component
    /// (scalar weight) or `dim` components (diagonal weights).
    pub fn weighted_sqdist(&self, other: &LazyTensor, w: &LazyTensor) -> LazyTensor {
        self.zip3(other, w, |a, b, w| Expr::weighted_sqdist(w, a, b))
    }
    /// Weighted squared norm `sum_d w_d self_d^2` (scalar or diagonal `w`).
    pub fn weighted_sqnorm(&self, w: &LazyTensor) -> LazyTensor {
        self.zip(w, |a, w| Expr::weighted_sqnorm(w, a))
    }
    /// Scalar product of the components of `self` and `other` (same dimension).
    pub fn dot(&self, other: &LazyTensor) -> LazyTensor {
        self.zip(other, Expr::dot)
    }
    /// Component `m`.
    pub fn elem(&self, m: usize) -> LazyTensor {
        self.map(|e| Expr::new(Op::Elem(m), vec![e.clone()]))
    }
    /// Components `start .. start + len`.
    pub fn extract(&self, start: usize, len: usize) -> LazyTensor {
        self.map(|e| Expr::new(Op::Extract { start, len }, vec![e.clone()]))
    }
    /// The components of `self` followed by those of `other`.
    pub fn concat(&self, other: &LazyTensor) -> LazyTensor {
        self.zip(other, |a, b| {
            Expr::new(Op::Concat, vec![a.clone(), b.clone()])
        })
    }
    /// Matrix-vector product: `self` is an `n x m` matrix (row-major, `n * m` components) and
    /// `v` an `m`-vector.
    pub fn matvecmult(&self, v: &LazyTensor) -> LazyTensor {
        self.zip(v, |a, b| {
            Expr::new(Op::MatVecMult, vec![a.clone(), b.clone()])
        })
    }

    /// The symbolic gradient `(d self / d wrt)^T eta` (KeOps' `Grad`): a new lazy tensor with
    /// `wrt`'s dimension, built by [`crate::formula::grad()`]. `wrt` must be a variable made by
    /// [`LazyTensor::vi`], [`LazyTensor::vj`] or [`LazyTensor::param`]; `eta` has the
    /// dimension of `self` (or 1). A formula that does not depend on `wrt` has a zero gradient,
    /// a formula of constants (which cannot be reduced on its own: it has no variable).
    ///
    /// Reducing the result gives gradients by hand, without Candle's autodiff: for example
    /// `sum_j (d F_ij / d x_i)^T eta_i` is `f.grad(&x_i, &eta_i).sum(Axis::J)`.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use lazy_kernels::{Axis, LazyTensor};
    /// let x = Tensor::new(&[[1f64], [2.0]], &Device::Cpu)?;
    /// let y = Tensor::new(&[[0f64], [3.0]], &Device::Cpu)?;
    /// let ones = Tensor::ones((2, 1), candle_core::DType::F64, &Device::Cpu)?;
    /// let (x_i, y_j) = (LazyTensor::vi(&x)?, LazyTensor::vj(&y)?);
    /// let f = x_i.sqdist(&y_j);                                  // (x_i - y_j)^2
    /// let g = f.grad(&x_i, &LazyTensor::vi(&ones)?).sum(Axis::J)?; // sum_j 2 (x_i - y_j)
    /// assert_eq!(g.to_vec2::<f64>()?, vec![vec![2.0 * (1.0 + -2.0)], vec![2.0 * (2.0 + -1.0)]]);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn grad(&self, wrt: &LazyTensor, eta: &LazyTensor) -> LazyTensor {
        let bindings = merge(&merge(&self.bindings, &eta.bindings), &wrt.bindings);
        let ranges = crate::ranges::join(&self.ranges, &eta.ranges)
            .and_then(|r| crate::ranges::join(&r, &wrt.ranges));
        let expr = match (&self.expr, &wrt.expr, &eta.expr, &ranges) {
            (Ok(f), Ok(w), Ok(e), Ok(_)) => match w.op() {
                Op::Var(v) => crate::formula::grad(f, &[*v], e)
                    .map(|mut g| {
                        let g = g.pop().flatten();
                        g.unwrap_or_else(|| crate::formula::grad::zeros(v.dim))
                    })
                    .map_err(|err| with_operands(err, &[f, e], &bindings)),
                _ => Err(Error::InvalidArgument {
                    op: "LazyTensor::grad",
                    detail: format!(
                        "can only differentiate with respect to a variable (vi, vj or param), \
                         not the formula {}",
                        describe(w, &bindings)
                    ),
                }),
            },
            (Err(e), _, _, _) | (_, Err(e), _, _) | (_, _, Err(e), _) | (_, _, _, Err(e)) => {
                Err(e.clone())
            }
        };
        LazyTensor {
            expr,
            bindings,
            ranges: ranges.unwrap_or(None),
            shard: [self, wrt, eta].iter().find_map(|t| t.shard.clone()),
        }
    }

    /// Evaluates a formula that has no `j`-variable row by row: a `(M, E)` tensor whose row `i`
    /// is `F(x_i, p)` (all its variables are `i`-variables or parameters). Differentiable like
    /// the reductions; used for diagonals of kernel matrices.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use lazy_kernels::LazyTensor;
    /// let x = Tensor::new(&[[3f64, 4.], [0., 1.]], &Device::Cpu)?;
    /// let y = Tensor::new(&[[0f64, 0.], [0., 0.]], &Device::Cpu)?;
    /// let d = LazyTensor::vi(&x)?.sqdist(&LazyTensor::vi(&y)?).pointwise()?;
    /// assert_eq!(d.to_vec2::<f64>()?, vec![vec![25.0], vec![1.0]]);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn pointwise(&self) -> candle_core::Result<Tensor> {
        let f = self.expr()?;
        if f.depends_on(VarCat::J) {
            return Err(Error::InvalidArgument {
                op: "LazyTensor::pointwise",
                detail: format!(
                    "the formula {} has j-variables: reduce it instead",
                    f.brief()
                ),
            }
            .into());
        }
        if let Some(b) = self.batched(None, "LazyTensor::pointwise")? {
            let rows = b.rows.0.unwrap_or(1);
            let out = crate::op::reduce_sized(
                f,
                &b.bindings,
                Reduction::new(ReductionKind::Sum, Axis::J),
                Some((b.batch * rows, 1)),
                None,
                &ReductionOptions::default(),
            )?;
            return b
                .output(out, Axis::J)?
                .values
                .ok_or_else(|| missing(ReductionKind::Sum, "values"));
        }
        let rows = self
            .bindings
            .iter()
            .find(|b| b.cat == VarCat::I)
            .map(|b| b.tensor.elem_count() / b.dim)
            .ok_or_else(|| Error::InvalidArgument {
                op: "LazyTensor::pointwise",
                detail: format!("the formula {} has no i-variable, so no rows", f.brief()),
            })?;
        crate::op::reduce_sized(
            f,
            &self.bindings,
            Reduction::new(ReductionKind::Sum, Axis::J),
            Some((rows, 1)),
            None,
            &ReductionOptions::default(),
        )?
        .values
        .ok_or_else(|| missing(ReductionKind::Sum, "values"))
    }

    /// Whether a bound tensor tracks gradients (Candle's `track_op`).
    pub(crate) fn tracks_grad(&self) -> bool {
        self.bindings.iter().any(|b| b.tensor.track_op())
    }

    /// The same formula with every bound tensor replaced by `f(tensor)`.
    pub(crate) fn map_tensors(
        &self,
        f: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
    ) -> candle_core::Result<LazyTensor> {
        let bindings = self
            .bindings
            .iter()
            .map(|b| {
                Ok(Binding {
                    tensor: f(&b.tensor)?,
                    ..b.clone()
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(LazyTensor {
            expr: self.expr.clone(),
            bindings: Arc::new(bindings),
            ranges: self.ranges.clone(),
            shard: self.shard.clone(),
        })
    }

    /// The same formula with every bound tensor converted to `dtype`.
    pub(crate) fn to_dtype(&self, dtype: candle_core::DType) -> candle_core::Result<LazyTensor> {
        self.map_tensors(|t| t.to_dtype(dtype))
    }

    /// The same formula with every bound tensor detached from the autodiff graph.
    pub(crate) fn detach(&self) -> candle_core::Result<LazyTensor> {
        self.map_tensors(|t| Ok(t.detach()))
    }

    /// Runs any reduction; [`ReductionOutput`] holds values and/or indices.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use lazy_kernels::{Axis, LazyTensor, ReductionKind};
    /// let x = Tensor::new(&[[0f32], [10.]], &Device::Cpu)?;
    /// let y = Tensor::new(&[[9f32], [1.], [2.]], &Device::Cpu)?;
    /// let d = LazyTensor::vi(&x)?.sqdist(&LazyTensor::vj(&y)?);
    /// let out = d.reduce(ReductionKind::KMinArgKMin(2), Axis::J)?;
    /// assert_eq!(out.values.unwrap().to_vec2::<f32>()?, vec![vec![1., 4.], vec![1., 64.]]);
    /// assert_eq!(out.indices.unwrap().to_vec2::<i64>()?, vec![vec![1, 2], vec![0, 2]]);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn reduce(&self, kind: ReductionKind, axis: Axis) -> candle_core::Result<ReductionOutput> {
        self.reduce_with(kind, axis, &ReductionOptions::default())
    }

    /// Runs any reduction with `options`: which path runs it (the block path of matrix
    /// products for inner products of high dimension, or the direct one) and with which
    /// resources. Its backward pass takes the same options.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use lazy_kernels::{Axis, LazyTensor, Path, ReductionKind, ReductionOptions};
    /// let x = Tensor::rand(0f64, 1., (40, 64), &Device::Cpu)?;
    /// let y = Tensor::rand(0f64, 1., (100, 64), &Device::Cpu)?;
    /// let k = (-LazyTensor::vi(&x)?.sqdist(&LazyTensor::vj(&y)?)).exp();
    /// let blocks = ReductionOptions { path: Path::Blocks, ..Default::default() };
    /// let direct = ReductionOptions { path: Path::Direct, ..Default::default() };
    /// let a = k.reduce_with(ReductionKind::Sum, Axis::J, &blocks)?.values.unwrap();
    /// let b = k.reduce_with(ReductionKind::Sum, Axis::J, &direct)?.values.unwrap();
    /// let err = (a - &b)?.abs()?.max_all()?.to_scalar::<f64>()?;
    /// assert!(err <= 1e-12 * b.max_all()?.to_scalar::<f64>()?);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn reduce_with(
        &self,
        kind: ReductionKind,
        axis: Axis,
        options: &ReductionOptions,
    ) -> candle_core::Result<ReductionOutput> {
        let reduction = Reduction::new(kind, axis);
        if let Some(comm) = self.shard.as_ref().filter(|c| c.size() > 1) {
            if self.ranges.is_some() {
                return Err(Error::NotImplemented {
                    what: "sharded block-sparse reductions",
                    detail: "the ranges name blocks of all rows; reduce on one rank \
                             (LazyTensor::shard with Comm::single())"
                        .into(),
                }
                .into());
            }
            if self.batched(Some(axis), kind.name())?.is_some() {
                return Err(Error::NotImplemented {
                    what: "sharded batched reductions",
                    detail: "reduce the batches one by one, or on one rank (LazyTensor::shard \
                             with Comm::single())"
                        .into(),
                }
                .into());
            }
            return crate::dist::shard::reduce(
                comm,
                self.expr()?,
                &self.bindings,
                reduction,
                options,
            );
        }
        if let Some(b) = self.batched(Some(axis), kind.name())? {
            let out = reduce(
                self.expr()?,
                &b.bindings,
                reduction,
                Some(&b.ranges),
                options,
            )?;
            return b.output(out, axis);
        }
        reduce(
            self.expr()?,
            &self.bindings,
            reduction,
            self.ranges.as_ref(),
            options,
        )
    }

    /// The stacked form of a formula with batched bindings (`(B, M, D)` tensors) for a
    /// reduction over `axis` (`None`: pointwise), or `None` when nothing is batched.
    fn batched(
        &self,
        axis: Option<Axis>,
        op: &'static str,
    ) -> candle_core::Result<Option<crate::op::batch::Batched>> {
        let b = crate::op::batch::unbatch(self.expr()?, &self.bindings, axis, op)?;
        if b.is_some() && self.ranges.is_some() {
            return Err(Error::NotImplemented {
                what: "block-sparse ranges on a batched formula",
                detail: "batches are reduced as block-diagonal ranges already; stack the \
                         batches and give the ranges of the whole instead"
                    .into(),
            }
            .into());
        }
        Ok(b)
    }

    /// Whether a bound tensor has a batch dimension (`(B, rows, D)`).
    pub(crate) fn is_batched(&self) -> bool {
        self.bindings.iter().any(|b| b.tensor.rank() == 3)
    }

    /// The path that [`LazyTensor::reduce_with`] would take with `options`, and why.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use lazy_kernels::{Axis, LazyTensor, Path, ReductionKind, ReductionOptions};
    /// let dev = Device::Cpu;
    /// let knn = |d: usize| -> candle_core::Result<Path> {
    ///     let x = LazyTensor::vi(&Tensor::zeros((1000, d), candle_core::DType::F32, &dev)?)?;
    ///     let y = LazyTensor::vj(&Tensor::zeros((1000, d), candle_core::DType::F32, &dev)?)?;
    ///     let r = x.sqdist(&y).explain(ReductionKind::ArgKMin(10), Axis::J, &Default::default())?;
    ///     Ok(r.path)
    /// };
    /// assert_eq!(knn(3)?, Path::Direct);
    /// assert_eq!(knn(256)?, Path::Blocks);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn explain(
        &self,
        kind: ReductionKind,
        axis: Axis,
        options: &ReductionOptions,
    ) -> candle_core::Result<PathReport> {
        let reduction = Reduction::new(kind, axis);
        if let Some(b) = self.batched(Some(axis), kind.name())? {
            let f = self.expr()?;
            return crate::op::explain(f, &b.bindings, reduction, Some(&b.ranges), options);
        }
        crate::op::explain(
            self.expr()?,
            &self.bindings,
            reduction,
            self.ranges.as_ref(),
            options,
        )
    }

    /// The same formula, whose reductions visit only the blocks that `ranges` keeps
    /// (block-sparse reductions, KeOps' `ranges`; see [`crate::ranges`]). The rows of the
    /// i-variables and the j-variables must be in the sorted orders of the clusters `ranges`
    /// was built from; sizes are checked when a reduction runs. A formula combining lazy
    /// tensors with different ranges fails when it is reduced. Runs on the CPU and CUDA backends.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use lazy_kernels::{Axis, BlockSparse, Clusters, LazyTensor};
    /// let x = Tensor::new(&[[0f64], [0.1], [5.0], [5.2]], &Device::Cpu)?;
    /// let cl = Clusters::grid(&x, 1.0)?;                        // {0, 0.1} and {5, 5.2}
    /// let near = BlockSparse::from_centroid_cutoff(&cl, &x, &cl, &x, 1.0)?;
    /// let xs = cl.sort(&x)?;
    /// let d = LazyTensor::vi(&xs)?.sqdist(&LazyTensor::vj(&xs)?);
    /// let far = d.with_ranges(&near).max(Axis::J)?;            // the farthest point of its cluster
    /// let far = far.flatten_all()?.to_vec1::<f64>()?;
    /// assert!((far[0] - 0.01).abs() < 1e-12 && (far[3] - 0.04).abs() < 1e-12);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn with_ranges(&self, ranges: &BlockSparse) -> LazyTensor {
        LazyTensor {
            ranges: Some(ranges.ranges().clone()),
            ..self.clone()
        }
    }

    /// The same formula, whose reductions are split over the ranks of `comm` by their output
    /// rows and gathered (see [`crate::dist`]): every rank must build the same formula over the
    /// same tensors and reduce it, and every rank gets the whole result, differentiable (the
    /// gradients of the bound tensors are summed over the ranks). Formulas combined with it
    /// inherit it. Batched formulas and block-sparse ranges are not split yet (an error says
    /// so).
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use lazy_kernels::dist::LocalGroup;
    /// use lazy_kernels::{Axis, LazyTensor};
    /// let x = Tensor::rand(0f32, 1., (100, 3), &Device::Cpu)?;
    /// let d = LazyTensor::vi(&x)?.sqdist(&LazyTensor::vj(&x)?);
    /// let whole = d.min(Axis::J)?;
    /// let parts = LocalGroup::run(2, |comm| d.shard(&comm).min(Axis::J))?;
    /// assert_eq!(parts[1].to_vec2::<f32>()?, whole.to_vec2::<f32>()?);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn shard(&self, comm: &Comm) -> LazyTensor {
        LazyTensor {
            shard: Some(comm.clone()),
            ..self.clone()
        }
    }

    /// The communicator of [`LazyTensor::shard`], if any.
    pub fn comm(&self) -> Option<&Comm> {
        self.shard.as_ref()
    }

    fn values(&self, kind: ReductionKind, axis: Axis) -> candle_core::Result<Tensor> {
        self.reduce(kind, axis)?
            .values
            .ok_or_else(|| missing(kind, "values"))
    }

    fn indices(&self, kind: ReductionKind, axis: Axis) -> candle_core::Result<Tensor> {
        self.reduce(kind, axis)?
            .indices
            .ok_or_else(|| missing(kind, "indices"))
    }

    fn both(&self, kind: ReductionKind, axis: Axis) -> candle_core::Result<(Tensor, Tensor)> {
        let out = self.reduce(kind, axis)?;
        match (out.values, out.indices) {
            (Some(v), Some(i)) => Ok((v, i)),
            _ => Err(missing(kind, "values and indices")),
        }
    }

    /// `sum` over `axis`: a `(M, E)` tensor for an `E`-component formula reduced over `j`.
    pub fn sum(&self, axis: Axis) -> candle_core::Result<Tensor> {
        self.values(ReductionKind::Sum, axis)
    }
    /// `log sum exp` over `axis`, computed stably, component by component.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use lazy_kernels::{Axis, LazyTensor};
    /// let x = Tensor::new(&[[1000f64]], &Device::Cpu)?;
    /// let y = Tensor::new(&[[0f64], [0.]], &Device::Cpu)?;
    /// let f = LazyTensor::vi(&x)? + LazyTensor::vj(&y)?;      // 1000 for both j
    /// let lse = f.logsumexp(Axis::J)?.to_vec2::<f64>()?;     // no overflow
    /// assert!((lse[0][0] - (1000.0 + 2f64.ln())).abs() < 1e-12);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn logsumexp(&self, axis: Axis) -> candle_core::Result<Tensor> {
        self.values(ReductionKind::LogSumExp, axis)
    }
    /// `sum exp(self) * weights / sum exp(self)` over `axis`, for a 1-component `self`
    /// (attention-like averaging), computed stably.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use lazy_kernels::{Axis, LazyTensor};
    /// let q = LazyTensor::vi(&Tensor::new(&[[0f64]], &Device::Cpu)?)?;
    /// let k = LazyTensor::vj(&Tensor::new(&[[0f64], [2f64.ln()]], &Device::Cpu)?)?;
    /// let v = LazyTensor::vj(&Tensor::new(&[[3f64], [6.]], &Device::Cpu)?)?;
    /// let out = (q + k).sum_softmax_weight(&v, Axis::J)?;    // weights 1/3 and 2/3
    /// assert!((out.to_vec2::<f64>()?[0][0] - 5.0).abs() < 1e-12);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn sum_softmax_weight(
        &self,
        weights: &LazyTensor,
        axis: Axis,
    ) -> candle_core::Result<Tensor> {
        if self.dim()? != 1 {
            return Err(Error::DimMismatch {
                op: "SumSoftMaxWeight",
                detail: format!(
                    "the softmax formula must have 1 component, got {}",
                    self.dim()?
                ),
            }
            .into());
        }
        self.concat(weights)
            .values(ReductionKind::SumSoftMaxWeight, axis)
    }
    /// Minimum over `axis`, component by component.
    pub fn min(&self, axis: Axis) -> candle_core::Result<Tensor> {
        self.values(ReductionKind::Min, axis)
    }
    /// Maximum over `axis`, component by component.
    pub fn max(&self, axis: Axis) -> candle_core::Result<Tensor> {
        self.values(ReductionKind::Max, axis)
    }
    /// Index (`i64`) of the minimum over `axis`; ties give the smallest index.
    pub fn argmin(&self, axis: Axis) -> candle_core::Result<Tensor> {
        self.indices(ReductionKind::ArgMin, axis)
    }
    /// Index (`i64`) of the maximum over `axis`; ties give the smallest index.
    pub fn argmax(&self, axis: Axis) -> candle_core::Result<Tensor> {
        self.indices(ReductionKind::ArgMax, axis)
    }
    /// Minimum and its index, in one pass.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use lazy_kernels::{Axis, LazyTensor};
    /// let x = LazyTensor::vi(&Tensor::new(&[[0f32], [5.]], &Device::Cpu)?)?;
    /// let y = LazyTensor::vj(&Tensor::new(&[[4f32], [1.], [4.]], &Device::Cpu)?)?;
    /// let (v, i) = x.sqdist(&y).min_argmin(Axis::I)?;      // for each j, the nearest i
    /// assert_eq!(v.to_vec2::<f32>()?, vec![vec![1.], vec![1.], vec![1.]]);
    /// assert_eq!(i.to_vec2::<i64>()?, vec![vec![1], vec![0], vec![1]]);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn min_argmin(&self, axis: Axis) -> candle_core::Result<(Tensor, Tensor)> {
        self.both(ReductionKind::MinArgMin, axis)
    }
    /// Maximum and its index, in one pass.
    pub fn max_argmax(&self, axis: Axis) -> candle_core::Result<(Tensor, Tensor)> {
        self.both(ReductionKind::MaxArgMax, axis)
    }
    /// The `k` smallest values in increasing order: `(M, k)` for a 1-component formula, else
    /// `(M, k, E)`; slots beyond the number of terms hold `+inf`.
    pub fn kmin(&self, k: usize, axis: Axis) -> candle_core::Result<Tensor> {
        self.values(ReductionKind::KMin(k), axis)
    }
    /// Indices (`i64`) of the `k` smallest values (k-nearest neighbours with `sqdist`); slots
    /// beyond the number of terms hold `-1`.
    pub fn argkmin(&self, k: usize, axis: Axis) -> candle_core::Result<Tensor> {
        self.indices(ReductionKind::ArgKMin(k), axis)
    }
    /// The `k` smallest values and their indices, in one pass.
    pub fn kmin_argkmin(&self, k: usize, axis: Axis) -> candle_core::Result<(Tensor, Tensor)> {
        self.both(ReductionKind::KMinArgKMin(k), axis)
    }
}

/// The symbolic matrix: a one-component formula of `i`-variables (rows `M`), `j`-variables
/// (rows `N`) and parameters is the `M x N` matrix `K_ij`, which is multiplied, transposed and
/// solved against without ever being built, as KeOps' `K @ b`, `K.t()` and `K.solve(b)`.
impl LazyTensor {
    /// The bindings of the formula's variables of category `cat`.
    fn bound(&self, cat: VarCat) -> candle_core::Result<Vec<&Binding>> {
        let vars = self.expr()?.vars();
        Ok(self
            .bindings
            .iter()
            .filter(|b| b.cat == cat && vars.iter().any(|v| v.pos == b.id))
            .collect())
    }

    /// `(M, N)` for `op`: the rows of the `i`-variables and of the `j`-variables.
    fn matrix_shape(&self, op: &'static str) -> candle_core::Result<(usize, usize)> {
        if self.is_batched() {
            return Err(Error::InvalidArgument {
                op,
                detail: "the formula is batched (a variable is bound to a (B, rows, D) \
                         tensor): it is B matrices, whose reductions and `matmul` give \
                         (B, M, E)"
                    .into(),
            }
            .into());
        }
        let rows = |cat: VarCat, name: &str| -> candle_core::Result<usize> {
            let bound = self.bound(cat)?;
            let Some(first) = bound.first() else {
                return Err(Error::InvalidArgument {
                    op,
                    detail: format!(
                        "a matrix needs a {name}-variable (its {}), the formula {} has none",
                        if name == "i" { "rows" } else { "columns" },
                        describe(self.expr()?, &self.bindings)
                    ),
                }
                .into());
            };
            let n = first.tensor.dim(0)?;
            if let Some(other) = bound.iter().find(|b| b.tensor.dim(0).ok() != Some(n)) {
                return Err(Error::Shape {
                    op,
                    detail: format!(
                        "the {name}-variables have different numbers of rows: {:?} and {:?}",
                        first.tensor.dims(),
                        other.tensor.dims()
                    ),
                }
                .into());
            }
            Ok(n)
        };
        Ok((rows(VarCat::I, "i")?, rows(VarCat::J, "j")?))
    }

    /// `(M, N)`: the shape of the matrix `K_ij`, from the rows of the tensors bound as
    /// `i`-variables and as `j`-variables (an error if either is missing).
    ///
    /// ```
    /// use candle_core::{DType, Device, Tensor};
    /// use lazy_kernels::LazyTensor;
    /// let x = LazyTensor::vi(&Tensor::zeros((5, 3), DType::F32, &Device::Cpu)?)?;
    /// let y = LazyTensor::vj(&Tensor::zeros((7, 3), DType::F32, &Device::Cpu)?)?;
    /// assert_eq!((-x.sqdist(&y)).exp().shape()?, (5, 7));
    /// assert_eq!((-x.sqdist(&y)).exp().t().shape()?, (7, 5));
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn shape(&self) -> candle_core::Result<(usize, usize)> {
        self.matrix_shape("LazyTensor::shape")
    }

    /// `K b = sum_j K_ij b_j` (KeOps' `K @ b`), lazily and differentiably (with respect to `b`
    /// and every bound tensor): `b` is `(N,)` (giving `(M,)`) or `(N, E)` (giving `(M, E)`),
    /// and `self` a one-component formula. The same reduction as [`crate::KernelOperator::matmul`],
    /// with its fused paths.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use lazy_kernels::LazyTensor;
    /// let dev = Device::Cpu;
    /// let x = Tensor::new(&[[0f64], [1.0]], &dev)?;
    /// let y = Tensor::new(&[[0f64], [2.0], [3.0]], &dev)?;
    /// let b = Tensor::new(&[1f64, 2.0, 3.0], &dev)?;
    /// let k = (-LazyTensor::vi(&x)?.sqdist(&LazyTensor::vj(&y)?)).exp();   // (2, 3)
    /// let kb = k.matmul(&b)?.to_vec1::<f64>()?;                            // (2,)
    /// let want = 1.0 + 2.0 * (-4f64).exp() + 3.0 * (-9f64).exp();
    /// assert!((kb[0] - want).abs() < 1e-12);
    /// let ktc = k.t().matmul(&Tensor::new(&[1f64, 1.0], &dev)?)?;          // K^T c: (3,)
    /// assert_eq!(ktc.dims(), &[3]);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn matmul(&self, b: &Tensor) -> candle_core::Result<Tensor> {
        let op = "LazyTensor::matmul";
        if self.is_batched() || b.rank() == 3 {
            return self.matmul_batched(b, op);
        }
        let shape = self.matrix_shape(op)?;
        let dim = self.dim()?;
        if dim != 1 {
            return Err(Error::Shape {
                op,
                detail: format!(
                    "a matrix is a formula of one component, this one has {dim}: {}",
                    describe(self.expr()?, &self.bindings)
                ),
            }
            .into());
        }
        crate::operator::matmul_lazy(self, b, shape, op)
    }

    /// [`LazyTensor::matmul`] of a batched formula (or of a batch `b`): `b` is `(B, N, E)`,
    /// or `(N, E)` / `(N,)` shared by the batches; the result is `(B, M, E)` (`(B, M)` for a
    /// `(N,)` `b`).
    fn matmul_batched(&self, b: &Tensor, op: &'static str) -> candle_core::Result<Tensor> {
        let dim = self.dim()?;
        if dim != 1 {
            return Err(Error::Shape {
                op,
                detail: format!("a matrix is a formula of one component, this one has {dim}"),
            }
            .into());
        }
        let (b3, vector) = match b.dims() {
            [n] => (b.reshape((*n, 1))?, true),
            [_, e] | [_, _, e] if *e > 0 => (b.clone(), false),
            dims => {
                return Err(Error::Shape {
                    op,
                    detail: format!(
                        "b must be (B, N, E), (N, E) or (N,) with E >= 1, got {dims:?}"
                    ),
                }
                .into());
            }
        };
        let out = (self * LazyTensor::vj(&b3)?).sum(Axis::J)?;
        if vector { out.squeeze(2) } else { Ok(out) }
    }

    /// The transpose: `i` and `j` exchanged, so that `K^T_ji = K_ij` (KeOps' `K.t()`). The
    /// `i`-variables become `j`-variables and the reverse (and block-sparse ranges are
    /// transposed); nothing is computed.
    pub fn t(&self) -> LazyTensor {
        let swap = |c: VarCat| match c {
            VarCat::I => VarCat::J,
            VarCat::J => VarCat::I,
            VarCat::P => VarCat::P,
        };
        LazyTensor {
            expr: self.expr.as_ref().map(Expr::swap_ij).map_err(Clone::clone),
            bindings: Arc::new(
                self.bindings
                    .iter()
                    .map(|b| Binding {
                        cat: swap(b.cat),
                        ..b.clone()
                    })
                    .collect(),
            ),
            ranges: self.ranges.as_ref().map(|r| Arc::new(r.transposed())),
            shard: self.shard.clone(),
        }
    }

    /// Solves `(K + alpha I) a = b` (KeOps' `K.solve(b, alpha=alpha)`) for a square,
    /// symmetric `K`: a formula of one `i`-variable and one `j`-variable bound to the same
    /// points, and parameters. It runs [`crate::KernelOperator::solve`] on
    /// [`crate::KernelOperator::from_lazy`]: the same batched, preconditioned conjugate
    /// gradients (the pivoted-Cholesky preconditioner is built from the formula's rows), the
    /// same [`crate::SolveInfo`] and the same implicit gradients, with respect to `b`, the
    /// points, the parameters and a tensor `alpha`.
    ///
    /// A non-square formula, points that differ between `i` and `j`, and a formula whose
    /// values at a sample of pairs are visibly not symmetric are errors.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use lazy_kernels::{LazyTensor, SolveOptions};
    /// let dev = Device::Cpu;
    /// let x = Tensor::rand(0f64, 1., (500, 2), &dev)?;
    /// let b = Tensor::rand(0f64, 1., (500, 1), &dev)?;
    /// let (x_i, x_j) = (LazyTensor::vi(&x)?, LazyTensor::vj(&x)?);
    /// let s = LazyTensor::param(&Tensor::new(&[0.2f64], &dev)?)?;
    /// let k_xx = (-x_i.sqdist(&x_j) / (2.0 * s.square())).exp();
    /// let (a, info) = k_xx.solve(&b, 0.1, &SolveOptions::default())?;
    /// assert!(info.all_converged());
    /// let r = ((k_xx.matmul(&a)? + (&a * 0.1)?)? - &b)?;                  // (K + 0.1 I) a - b
    /// assert!(r.abs()?.max_all()?.to_scalar::<f64>()? < 1e-5);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn solve(
        &self,
        b: &Tensor,
        alpha: impl Into<crate::solve::Ridge>,
        opts: &crate::SolveOptions,
    ) -> candle_core::Result<(Tensor, crate::SolveInfo)> {
        crate::KernelOperator::from_lazy(self)?.solve(b, alpha, opts)
    }

    /// The bindings of the formula's only `i`-variable and only `j`-variable (an error of
    /// `op` otherwise): the points of a kernel `k(x_i, y_j)`.
    fn pair_bindings(&self, op: &'static str) -> candle_core::Result<(&Binding, &Binding)> {
        let one = |cat: VarCat, name: &str| -> candle_core::Result<&Binding> {
            match self.bound(cat)?.as_slice() {
                [b] => Ok(*b),
                bound => Err(Error::InvalidArgument {
                    op,
                    detail: format!(
                        "a kernel k(x_i, y_j) needs exactly one {name}-variable, the formula {} \
                         has {} (concatenate several with `concat`)",
                        describe(self.expr()?, &self.bindings),
                        bound.len()
                    ),
                }
                .into()),
            }
        };
        Ok((one(VarCat::I, "i")?, one(VarCat::J, "j")?))
    }

    /// The tensors bound to the formula's only `i`-variable and only `j`-variable (an error of
    /// `op` otherwise): the points of a kernel `k(x_i, y_j)`.
    pub(crate) fn pair_points(&self, op: &'static str) -> candle_core::Result<(Tensor, Tensor)> {
        let (bi, bj) = self.pair_bindings(op)?;
        Ok((bi.tensor.clone(), bj.tensor.clone()))
    }

    /// The formula with its only `i`-variable bound to `x` as a variable of category `xc` and
    /// its only `j`-variable to `y` as `yc` (checked by [`LazyTensor::pair_points`]), its
    /// parameters kept: the kernel `k(x, y)` of [`crate::Kernel`] at other points.
    pub(crate) fn rebind_pair(
        &self,
        x: &Tensor,
        xc: VarCat,
        y: &Tensor,
        yc: VarCat,
    ) -> candle_core::Result<LazyTensor> {
        let op = "LazyTensor (as a kernel)";
        let e = self.expr()?;
        let (bi, bj) = self.pair_bindings(op)?;
        let mut bindings: Vec<Binding> = self
            .bindings
            .iter()
            .filter(|b| b.cat == VarCat::P)
            .cloned()
            .collect();
        let mut ids = Vec::new();
        for (old, t, cat) in [(bi, x, xc), (bj, y, yc)] {
            let dim = check_bindable(t, cat, op)?;
            if dim != old.dim {
                return Err(Error::Shape {
                    op,
                    detail: format!(
                        "the formula's points have {} components, got a tensor of shape {:?}",
                        old.dim,
                        t.dims()
                    ),
                }
                .into());
            }
            let id = fresh_id();
            ids.push((old.id, id, cat));
            bindings.push(Binding {
                id,
                cat,
                dim,
                tensor: t.clone(),
            });
        }
        let expr = e.map_vars(
            &mut |v| match ids.iter().find(|(old, _, _)| *old == v.pos) {
                Some(&(_, pos, cat)) => Var { cat, pos, ..v },
                None => v,
            },
        );
        Ok(LazyTensor {
            expr: Ok(expr),
            bindings: Arc::new(bindings),
            ranges: None,
            shard: None,
        })
    }

    /// Whether the formula carries block-sparse ranges ([`LazyTensor::with_ranges`]).
    pub(crate) fn has_ranges(&self) -> bool {
        self.ranges.is_some()
    }
}

fn missing(kind: ReductionKind, what: &str) -> candle_core::Error {
    Error::InvalidArgument {
        op: kind.name(),
        detail: format!("the reduction did not produce {what}"),
    }
    .into()
}

macro_rules! impl_binop {
    ($trait:ident, $method:ident, $op:expr) => {
        impl $trait<&LazyTensor> for &LazyTensor {
            type Output = LazyTensor;
            fn $method(self, rhs: &LazyTensor) -> LazyTensor {
                self.binary($op, rhs)
            }
        }
        impl $trait<LazyTensor> for LazyTensor {
            type Output = LazyTensor;
            fn $method(self, rhs: LazyTensor) -> LazyTensor {
                self.binary($op, &rhs)
            }
        }
        impl $trait<&LazyTensor> for LazyTensor {
            type Output = LazyTensor;
            fn $method(self, rhs: &LazyTensor) -> LazyTensor {
                self.binary($op, rhs)
            }
        }
        impl $trait<LazyTensor> for &LazyTensor {
            type Output = LazyTensor;
            fn $method(self, rhs: LazyTensor) -> LazyTensor {
                self.binary($op, &rhs)
            }
        }
        impl $trait<f64> for &LazyTensor {
            type Output = LazyTensor;
            fn $method(self, rhs: f64) -> LazyTensor {
                self.binary($op, &LazyTensor::constant(rhs))
            }
        }
        impl $trait<f64> for LazyTensor {
            type Output = LazyTensor;
            fn $method(self, rhs: f64) -> LazyTensor {
                self.binary($op, &LazyTensor::constant(rhs))
            }
        }
        impl $trait<&LazyTensor> for f64 {
            type Output = LazyTensor;
            fn $method(self, rhs: &LazyTensor) -> LazyTensor {
                LazyTensor::constant(self).binary($op, rhs)
            }
        }
        impl $trait<LazyTensor> for f64 {
            type Output = LazyTensor;
            fn $method(self, rhs: LazyTensor) -> LazyTensor {
                LazyTensor::constant(self).binary($op, &rhs)
            }
        }
    };
}

impl_binop!(Add, add, BinaryOp::Add);
impl_binop!(Sub, sub, BinaryOp::Sub);
impl_binop!(Mul, mul, BinaryOp::Mul);
impl_binop!(Div, div, BinaryOp::Div);

impl Neg for &LazyTensor {
    type Output = LazyTensor;
    fn neg(self) -> LazyTensor {
        self.unary(UnaryOp::Neg)
    }
}

impl Neg for LazyTensor {
    type Output = LazyTensor;
    fn neg(self) -> LazyTensor {
        self.unary(UnaryOp::Neg)
    }
}

// The methods of the ops, one per row of the op table (`crate::formula::ops`).

/// One method per unary op of the table (none for a `method: _` row).
macro_rules! unary_methods {
    ($(
        $(#[doc = $doc:literal])*
        $V:ident $(($p:ident: $pt:ty = $sample:expr))? { method: $method:tt, $($rest:tt)* }
    ),* $(,)?) => {
        impl LazyTensor {
            $(unary_method!([$(#[doc = $doc])*] $method $V [$($p: $pt)?]);)*
        }
    };
}

macro_rules! unary_method {
    ([$($doc:tt)*] _ $V:ident [$($params:tt)*]) => {};
    ([$($doc:tt)*] $method:ident $V:ident [$($p:ident: $pt:ty)?]) => {
        $($doc)*
        pub fn $method(&self $(, $p: $pt)?) -> LazyTensor {
            self.unary(UnaryOp::$V $(($p))?)
        }
    };
}

/// One method per binary op of the table: `self op other`, with `other` of 1 or `dim`
/// components (an error otherwise).
macro_rules! binary_methods {
    ($(
        $(#[doc = $doc:literal])*
        $V:ident { method: $method:tt, $($rest:tt)* }
    ),* $(,)?) => {
        impl LazyTensor {
            $(binary_method!([$(#[doc = $doc])*] $method $V);)*
        }
    };
}

macro_rules! binary_method {
    ([$($doc:tt)*] _ $V:ident) => {};
    ([$($doc:tt)*] $method:ident $V:ident) => {
        $($doc)*
        pub fn $method(&self, other: &LazyTensor) -> LazyTensor {
            self.binary(BinaryOp::$V, other)
        }
    };
}

/// One method per ternary op of the table, `self` its first argument.
macro_rules! ternary_methods {
    ($(
        $(#[doc = $doc:literal])*
        $V:ident { method: $method:ident($b:ident, $c:ident), $($rest:tt)* }
    ),* $(,)?) => {
        impl LazyTensor {
            $(
                $(#[doc = $doc])*
                pub fn $method(&self, $b: &LazyTensor, $c: &LazyTensor) -> LazyTensor {
                    self.zip3($b, $c, |x, y, z| Expr::ternary(TernaryOp::$V, x, y, z))
                }
            )*
        }
    };
}

unary_table!(unary_methods);
binary_table!(binary_methods);
ternary_table!(ternary_methods);
