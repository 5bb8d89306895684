//! The block path: reductions whose formula depends on the pair `(i, j)` only through inner
//! products `<x_i, y_j>`, run through tiled matrix products.
//!
//! At `D = 32..1024` the direct path computes every pair's distance one component at a time,
//! while a matrix product gets all of a block's inner products `S = X_blk Y_blk^T` at the
//! machine's peak. So, at planning:
//!
//! 1. *Recognition* (`analyze`): the formula's pair nodes are found: `SqDist(x_i, y_j)`,
//!    `WeightedSqDist(w, x_i, y_j)` with a parameter `w` (scalar or diagonal) and
//!    `Dot(x_i, y_j)`, each over an i-variable and a j-variable of one dimension (at least
//!    8). Once they are replaced by scalars, what is left of the formula must be cheap per
//!    pair, or be a `Sum` of `c_ij * t_ij` with `t` one of `v_j`, `u_i - v_j`, `v_j - u_i` (the
//!    gradients' shape), which is itself a matrix product: `sum_j c_ij (u_i - v_j) =
//!    u_i sum_j c_ij - (C V)_i`.
//! 2. *Choice* (`decide`): a cost model from the pairs' dimension, the sizes, the dtype and
//!    the device chooses this path or the direct one, unless [`ReductionOptions::path`]
//!    forces either. [`crate::LazyTensor::explain`] reports the choice and why.
//! 3. *Rewrite* (`rewrite`): the points of a distance are centred on the mean of all of them
//!    (distances do not change, and the cancellation of the expansion below shrinks with the
//!    points' spread instead of their distance to the origin); positive weights are folded
//!    into the points (`sqrt(w) x`). The new tensors are computed with Candle ops, so autodiff
//!    flows through them; they take `O((M + N) D)`.
//! 4. *Plan* (`block_plan`): on the bound formula, the `SqDist` and `Dot` nodes of point
//!    pairs are the pair inputs that the backends read from blocks instead of computing: for an
//!    inner product the block of `S`, for a distance `|x|^2 + |y|^2 - 2 S`, recomputed
//!    directly as `|x - y|^2` where that falls below [`NEAR`] times `|x|^2 + |y|^2` (the only
//!    place where the expansion loses accuracy). A `Sum` of `c_ij * t_ij` runs as `C_blk V_blk`.
//!
//! Gradients need no rule of their own: the gradient of `SqDist(x', y')` with respect to `x'`
//! is `c_ij (x'_i - y'_j)`, whose reduction over `j` is again a block plan, a matrix product,
//! and the centring is a Candle op.

use std::collections::HashMap;
use std::fmt;

use candle_core::{DType, Device, Tensor};

use super::Binding;
use crate::error::Error;
use crate::formula::{BinaryOp, Expr, Op, UnaryOp, Var, VarCat};
use crate::reduction::ReductionKind;

/// Which path runs a reduction: [`Path::Auto`] lets the cost model choose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Path {
    /// The cost model chooses (the default).
    #[default]
    Auto,
    /// The direct path: every pair's formula computed in registers, one component at a time.
    Direct,
    /// The block path: inner products of blocks by matrix products, then the rest of the
    /// formula and the reduction over each block. An error when the formula has no inner
    /// product to take this way.
    Blocks,
}

/// The arithmetic of the block path's matrix products.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Precision {
    /// Full precision of the dtype (f32 products in f32): the default.
    #[default]
    Full,
    /// TF32 tensor cores for f32 products on CUDA (10-bit mantissas: squared distances' relative
    /// error about 4e-4 at D = 256); on the CPU, the same as [`Precision::Full`].
    Tf32,
}

/// Options of a reduction: which path runs it and with which resources.
///
/// ```
/// use lazy_kernels::{Path, ReductionOptions};
/// let o = ReductionOptions { path: Path::Blocks, ..Default::default() };
/// assert_eq!(o.block_bytes, 256 << 20);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReductionOptions {
    /// The path; [`Path::Auto`] by default.
    pub path: Path,
    /// The block path's product arithmetic; [`Precision::Full`] by default.
    pub precision: Precision,
    /// The block path's memory budget in bytes, for the blocks of inner products (and of
    /// coefficients) in flight: 256 MiB by default.
    pub block_bytes: usize,
}

impl Default for ReductionOptions {
    fn default() -> Self {
        ReductionOptions {
            path: Path::Auto,
            precision: Precision::Full,
            block_bytes: 256 << 20,
        }
    }
}

/// The path chosen for a reduction, and why ([`crate::LazyTensor::explain`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathReport {
    /// The path that runs: [`Path::Direct`] or [`Path::Blocks`].
    pub path: Path,
    /// The dimensions of the inner products found (empty: none).
    pub inner_products: Vec<usize>,
    /// Whether the rest of the formula is a `Sum` of `c_ij * v_j`, run as a matrix product.
    pub matmul_epilogue: bool,
    /// Why this path.
    pub reason: String,
}

impl fmt::Display for PathReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = match self.path {
            Path::Blocks => "blocks",
            _ => "direct",
        };
        write!(f, "{path} path: {}", self.reason)
    }
}

/// How a pair node reads its points.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Shape {
    /// `SqDist(x, y)`.
    SqDist,
    /// `WeightedSqDist(w, x, y)`, `w` a parameter.
    Weighted(Var),
    /// `Dot(x, y)`.
    Dot,
}

/// A pair node found in a formula: `node`, which reads the pair only through `<x, y>`.
#[derive(Clone, Debug)]
struct Found {
    node: Expr,
    shape: Shape,
    x: Var,
    y: Var,
}

/// A distance of the block path below `NEAR` times `|x|^2 + |y|^2` is recomputed directly as
/// `|x - y|^2`: above, the expansion `|x|^2 + |y|^2 - 2 <x, y>` (error a few units in the last
/// place of `|x|^2 + |y|^2`) is accurate to a few units in the last place of the distance
/// too, about the direct path's accuracy; below, it would lose `log2(1 / ratio)` bits. Only
/// near pairs (clusters, duplicates) take the direct computation.
pub const NEAR: f64 = 0.25;

/// Inner products of fewer components are computed in the elementwise pass, not by matrix
/// products.
const MIN_PAIR_DIM: usize = 8;

/// The i-variable and the j-variable of `a` and `b`, in either order, of one dimension (at
/// least [`MIN_PAIR_DIM`]).
fn point_pair(a: &Expr, b: &Expr) -> Option<(Var, Var)> {
    let (Op::Var(u), Op::Var(v)) = (a.op(), b.op()) else {
        return None;
    };
    if u.dim != v.dim || u.dim < MIN_PAIR_DIM {
        return None;
    }
    match (u.cat, v.cat) {
        (VarCat::I, VarCat::J) => Some((*u, *v)),
        (VarCat::J, VarCat::I) => Some((*v, *u)),
        _ => None,
    }
}

/// `Square(Sub(a, b))` over a pair of points.
fn squared_difference(e: &Expr) -> Option<(Var, Var)> {
    if *e.op() != Op::Unary(UnaryOp::Square) {
        return None;
    }
    let d = &e.args()[0];
    (*d.op() == Op::Binary(BinaryOp::Sub))
        .then(|| point_pair(&d.args()[0], &d.args()[1]))
        .flatten()
}

/// The pair node `e` is, if it is one (see [`Shape`]).
fn pair_node(e: &Expr) -> Option<Found> {
    if *e.op() != Op::Sum {
        return None;
    }
    let inner = &e.args()[0];
    let found = |shape, (x, y): (Var, Var)| Found {
        node: e.clone(),
        shape,
        x,
        y,
    };
    if let Some(p) = squared_difference(inner) {
        return Some(found(Shape::SqDist, p));
    }
    if *inner.op() != Op::Binary(BinaryOp::Mul) {
        return None;
    }
    let (a, b) = (&inner.args()[0], &inner.args()[1]);
    if let Some(p) = point_pair(a, b) {
        return Some(found(Shape::Dot, p));
    }
    for (w, sq) in [(a, b), (b, a)] {
        if let (Op::Var(w), Some(p)) = (w.op(), squared_difference(sq))
            && w.cat == VarCat::P
            && (w.dim == 1 || w.dim == p.0.dim)
        {
            return Some(found(Shape::Weighted(*w), p));
        }
    }
    None
}

/// Replaces the nodes of `f` that are keys of `with` by their values (bottom-up).
fn replace(f: &Expr, with: &HashMap<Expr, Expr>) -> Expr {
    let mut memo: HashMap<Expr, Expr> = HashMap::new();
    for n in f.topo_order() {
        let new = if let Some(r) = with.get(&n) {
            r.clone()
        } else if n.args().is_empty() {
            n.clone()
        } else {
            let args: Vec<Expr> = n.args().iter().map(|a| memo[a].clone()).collect();
            Expr::new(*n.op(), args).expect("replacements keep dimensions")
        };
        memo.insert(n, new);
    }
    memo[f].clone()
}

/// Per-pair work of `f`: the components of its nodes that depend on both `i` and `j`.
fn pair_work(f: &Expr) -> usize {
    // Whether each node reads an i- and a j-variable, in one pass: arguments come first.
    let mut reads: HashMap<Expr, (bool, bool)> = HashMap::new();
    let mut work = 0;
    for n in f.topo_order() {
        let (i, j) = match n.op() {
            Op::Var(v) => (v.cat == VarCat::I, v.cat == VarCat::J),
            _ => n.args().iter().fold((false, false), |(i, j), a| {
                let (ai, aj) = reads[a];
                (i || ai, j || aj)
            }),
        };
        if i && j {
            work += n.dim();
        }
        reads.insert(n, (i, j));
    }
    work
}

/// The matrix-product form of a `Sum`'s term `c_ij * t_ij` (either order), `c` one
/// component: `t = v_j` (a j-variable), `t = u_i - v_j` or `t = v_j - u_i` (an i-variable and
/// a j-variable of one dimension, the gradients' shape). Its sum over `j` is
/// `v_sign (C V)_i + u_sign u_i (sum_j c_ij)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MatMul {
    /// The coefficient `c`.
    pub coef: Expr,
    /// Position of `v`, and whether it is negated.
    pub v: usize,
    /// Whether `C V` is subtracted.
    pub v_neg: bool,
    /// Position of `u`, if any, and whether it is negated.
    pub u: Option<(usize, bool)>,
}

fn matmul_parts(f: &Expr) -> Option<(MatMul, usize)> {
    if *f.op() != Op::Binary(BinaryOp::Mul) {
        return None;
    }
    let (a, b) = (&f.args()[0], &f.args()[1]);
    let var = |e: &Expr, cat: VarCat| match e.op() {
        Op::Var(v) if v.cat == cat => Some(*v),
        _ => None,
    };
    for (c, t) in [(a, b), (b, a)] {
        if c.dim() != 1 || t.dim() < 2 {
            continue;
        }
        let coef = c.clone();
        if let Some(v) = var(t, VarCat::J) {
            let m = MatMul {
                coef,
                v: v.pos,
                v_neg: false,
                u: None,
            };
            return Some((m, v.dim));
        }
        if *t.op() == Op::Binary(BinaryOp::Sub) {
            let (p, q) = (&t.args()[0], &t.args()[1]);
            if let (Some(u), Some(v)) = (var(p, VarCat::I), var(q, VarCat::J)) {
                let m = MatMul {
                    coef,
                    v: v.pos,
                    v_neg: true,
                    u: Some((u.pos, false)),
                };
                return Some((m, v.dim));
            }
            if let (Some(v), Some(u)) = (var(p, VarCat::J), var(q, VarCat::I)) {
                let m = MatMul {
                    coef,
                    v: v.pos,
                    v_neg: false,
                    u: Some((u.pos, true)),
                };
                return Some((m, v.dim));
            }
        }
    }
    None
}

/// What recognition finds in a formula.
struct Analysis {
    found: Vec<Found>,
    /// The formula with every pair node replaced by a scalar stand-in.
    rest: Expr,
    /// Whether `rest` is a `Sum`'s `c_ij * v_j`.
    matmul: bool,
}

fn analyze(f: &Expr, kind: ReductionKind) -> Analysis {
    let found: Vec<Found> = f.topo_order().iter().filter_map(pair_node).collect();
    if found.is_empty() {
        // Nothing to replace (the direct path, which most formulas take).
        return Analysis {
            found,
            rest: f.clone(),
            matmul: false,
        };
    }
    let mut with = HashMap::new();
    for (k, p) in found.iter().enumerate() {
        // A stand-in of the pair's levels: the product of a fresh i- and j-variable.
        let pos = usize::MAX - 2 * k;
        let xi = Expr::var(Var {
            cat: VarCat::I,
            pos,
            dim: 1,
        })
        .expect("valid");
        let yj = Expr::var(Var {
            cat: VarCat::J,
            pos: pos - 1,
            dim: 1,
        })
        .expect("valid");
        with.insert(
            p.node.clone(),
            Expr::binary(BinaryOp::Mul, &xi, &yj).expect("scalars"),
        );
    }
    let rest = replace(f, &with);
    let matmul = kind == ReductionKind::Sum && matmul_parts(&rest).is_some_and(|(_, d)| d >= 2);
    Analysis {
        found,
        rest,
        matmul,
    }
}

/// Where a reduction runs, for the cost model.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Target {
    pub dtype: DType,
    pub cuda: bool,
    pub rows: usize,
    pub terms: usize,
}

impl Target {
    pub(crate) fn of(dtype: DType, device: &Device, rows: usize, terms: usize) -> Target {
        Target {
            dtype,
            cuda: device.is_cuda(),
            rows,
            terms,
        }
    }
}

/// Smallest inner-product dimension for which the block path pays, per device and dtype. CPU:
/// measured with `examples/bench_highd.rs` (2 cores, M = N = 2e4, f32: blocks 2x slower than
/// the direct path at D = 16, 1.9x faster at D = 64). CUDA: estimates from the H200's direct
/// kernels (74 ms at D = 64, M = N = 1e5) against cuBLAS products of the same shape (39 ms in
/// f32, 14.5 ms in TF32), not yet measured on the block path.
fn min_dim(t: Target, opts: &ReductionOptions) -> usize {
    match (t.cuda, t.dtype, opts.precision) {
        (true, DType::F32, Precision::Tf32) => 24,
        (true, DType::F64, _) => 16,
        (true, _, _) => 48,
        (false, _, _) => 24,
    }
}

/// The choice: `Ok(report)` (the path that runs), or the error of a forced block path that
/// cannot run.
fn decide(a: &Analysis, t: Target, opts: &ReductionOptions) -> crate::error::Result<PathReport> {
    let dims: Vec<usize> = a.found.iter().map(|p| p.x.dim).collect();
    let report = |path, reason: String| PathReport {
        path,
        inner_products: dims.clone(),
        matmul_epilogue: a.matmul && path == Path::Blocks,
        reason,
    };
    let gram: usize = dims.iter().sum();
    // The remaining per-pair work (not computed without inner products: then it is moot).
    let rest = match (a.found.is_empty(), a.matmul) {
        (true, _) => 0,
        (false, true) => 1,
        (false, false) => pair_work(&a.rest),
    };
    let why_not = if a.found.is_empty() {
        Some(
            "the formula has no inner product <x_i, y_j> (SqDist, WeightedSqDist, Dot of an \
              i-variable and a j-variable)"
                .to_string(),
        )
    } else if rest > gram.max(16) {
        Some(format!(
            "once its inner products (dimensions {dims:?}) are replaced, the formula still does \
             {rest} operations per pair: {}",
            a.rest
        ))
    } else if matches!(t.dtype, DType::F16 | DType::BF16) {
        Some(format!(
            "{:?}: |x|^2 + |y|^2 - 2<x, y> cancels too much in half precision",
            t.dtype
        ))
    } else {
        None
    };
    match (opts.path, why_not) {
        (Path::Direct, _) => Ok(report(Path::Direct, "forced by the options".into())),
        // A backward pass takes the block path where it can.
        (Path::Blocks, Some(why)) if super::ahead::backward_active() => {
            Ok(report(Path::Direct, why))
        }
        (Path::Blocks, Some(why)) => Err(Error::InvalidArgument {
            op: "ReductionOptions",
            detail: format!("the block path was forced, but {why}"),
        }),
        (Path::Blocks, None) => Ok(report(Path::Blocks, "forced by the options".into())),
        (Path::Auto, Some(why)) => Ok(report(Path::Direct, why)),
        (Path::Auto, None) => {
            let min = min_dim(t, opts);
            let device = if t.cuda { "CUDA" } else { "the CPU" };
            if gram < min {
                Ok(report(
                    Path::Direct,
                    format!(
                        "inner products of dimension {gram} < {min}, where matrix products start \
                         to pay on {device} in {:?}",
                        t.dtype
                    ),
                ))
            } else if t.rows < 16 || t.terms < 64 {
                Ok(report(
                    Path::Direct,
                    format!("{} x {} pairs: too few for blocks", t.rows, t.terms),
                ))
            } else {
                Ok(report(
                    Path::Blocks,
                    format!(
                        "inner products of dimension {gram} >= {min} on {device} in {:?}",
                        t.dtype
                    ),
                ))
            }
        }
    }
}

/// The choice for `formula` (bound formula or user formula: only categories and dimensions
/// matter) reduced with `kind` on `target`.
pub(crate) fn choose(
    formula: &Expr,
    kind: ReductionKind,
    target: Target,
    opts: &ReductionOptions,
) -> crate::error::Result<PathReport> {
    decide(&analyze(formula, kind), target, opts)
}

/// The pair inputs of a block plan: the nodes `SqDist(x_i, y_j)` and `Dot(x_i, y_j)` of the
/// bound formula, each with the positions of its i-variable and its j-variable. Backends
/// compute `S = X Y^T` for each, and for a distance `|x|^2 + |y|^2 - 2 S`, recomputed directly
/// where it cancels (see [`NEAR`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PairInput {
    /// The node, as it is in the formula.
    pub node: Expr,
    /// Whether the node is a squared distance (else an inner product).
    pub distance: bool,
    /// Position of the i-variable.
    pub x: usize,
    /// Position of the j-variable.
    pub y: usize,
    /// Their dimension.
    pub dim: usize,
}

/// How a block plan runs (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BlockPlan {
    /// The pair inputs, read from blocks of inner products.
    pub pairs: Vec<PairInput>,
    /// For a `Sum` of `c_ij * t_ij` with `t` linear in the points: its matrix-product form.
    pub matmul: Option<MatMul>,
    /// The product arithmetic.
    pub precision: Precision,
    /// The memory budget of blocks in flight, in bytes.
    pub block_bytes: usize,
}

impl BlockPlan {
    /// The pair inputs' nodes, in order.
    pub(crate) fn pair_nodes(&self) -> Vec<Expr> {
        self.pairs.iter().map(|p| p.node.clone()).collect()
    }
}

/// The block plan of a bound, rewritten formula (every pair node a `Dot`), when the choice is
/// the block path; `None` for the direct path.
pub(crate) fn block_plan(
    formula: &Expr,
    kind: ReductionKind,
    target: Target,
    opts: &ReductionOptions,
) -> crate::error::Result<Option<BlockPlan>> {
    let a = analyze(formula, kind);
    if decide(&a, target, opts)?.path != Path::Blocks {
        return Ok(None);
    }
    let weighted = a
        .found
        .iter()
        .any(|p| matches!(p.shape, Shape::Weighted(_)));
    if weighted && (opts.path != Path::Blocks || super::ahead::backward_active()) {
        return Ok(None);
    }
    if weighted {
        return Err(Error::InvalidArgument {
            op: "block path",
            detail: format!(
                "the weighted distances of {} were not rewritten into distances of scaled \
                 points (their weights must be positive)",
                formula.brief()
            ),
        });
    }
    let pairs = a
        .found
        .iter()
        .map(|p| PairInput {
            node: p.node.clone(),
            distance: p.shape == Shape::SqDist,
            x: p.x.pos,
            y: p.y.pos,
            dim: p.x.dim,
        })
        .collect();
    let matmul = if a.matmul {
        matmul_parts(formula).map(|(m, _)| m)
    } else {
        None
    };
    Ok(Some(BlockPlan {
        pairs,
        matmul,
        precision: opts.precision,
        block_bytes: opts.block_bytes,
    }))
}

/// The positions of the variables that `formula` reads outside the pair nodes of `bp` (the
/// backends need not load the others).
pub(crate) fn outside_pairs(formula: &Expr, bp: &BlockPlan) -> Vec<usize> {
    let mut with = HashMap::new();
    for p in &bp.pairs {
        with.insert(p.node.clone(), Expr::constant(0.0).expect("finite"));
    }
    replace(formula, &with)
        .vars()
        .iter()
        .map(|v| v.pos)
        .collect()
}

/// The tensor of `b` as `(rows, dim)`.
fn rows_of(b: &Binding) -> candle_core::Result<Tensor> {
    let n = b.tensor.elem_count() / b.dim;
    b.tensor.reshape((n, b.dim))
}

/// Rewrites the distances of `formula` (over `bindings`, by identifier) into inner products of
/// centred points (see the module documentation) when the block path is chosen; `None`
/// otherwise, or when there is nothing to rewrite. `fresh` gives new binding identifiers.
pub(crate) fn rewrite(
    formula: &Expr,
    bindings: &[Binding],
    kind: ReductionKind,
    target: Target,
    opts: &ReductionOptions,
    fresh: &mut dyn FnMut() -> usize,
) -> candle_core::Result<Option<(Expr, Vec<Binding>)>> {
    // A backward pass's formulas come from rewritten ones: their points are centred already.
    if super::ahead::backward_active() {
        return Ok(None);
    }
    let a = analyze(formula, kind);
    if decide(&a, target, opts)?.path != Path::Blocks
        || a.found.iter().all(|p| p.shape == Shape::Dot)
    {
        return Ok(None);
    }
    let find = |v: Var| -> candle_core::Result<&Binding> {
        bindings.iter().find(|b| b.id == v.pos).ok_or_else(|| {
            Error::InvalidArgument {
                op: "block path",
                detail: format!("variable {v:?} is not bound to a tensor"),
            }
            .into()
        })
    };
    let mut out: Vec<Binding> = bindings.to_vec();
    let mut bind = |cat: VarCat, tensor: Tensor| -> candle_core::Result<Expr> {
        let dim = tensor.dims()[1];
        let id = fresh();
        out.push(Binding {
            id,
            cat,
            dim,
            tensor,
        });
        Ok(Expr::var(Var { cat, pos: id, dim })?)
    };
    let mut with: HashMap<Expr, Expr> = HashMap::new();
    let mut made: HashMap<(Var, Var, Shape), Expr> = HashMap::new();
    for p in a.found.iter().filter(|p| p.shape != Shape::Dot) {
        let key = (p.x, p.y, p.shape);
        if let Some(e) = made.get(&key) {
            with.insert(p.node.clone(), e.clone());
            continue;
        }
        let (x, y) = (rows_of(find(p.x)?)?, rows_of(find(p.y)?)?);
        let (m, n) = (x.dims()[0], y.dims()[0]);
        // The centre: the mean of all the points, a constant for autodiff.
        let c = ((x.sum_keepdim(0)? + y.sum_keepdim(0)?)? / (m + n) as f64)?.detach();
        let (mut xc, mut yc) = (x.broadcast_sub(&c)?, y.broadcast_sub(&c)?);
        if let Shape::Weighted(w) = p.shape {
            // sum_d w_d (x_d - y_d)^2 = |sqrt(w) x - sqrt(w) y|^2 for positive weights.
            let w = find(w)?.tensor.flatten_all()?;
            let smallest = w
                .to_dtype(candle_core::DType::F64)?
                .min(0)?
                .to_scalar::<f64>()?;
            if smallest.is_nan() || smallest <= 0.0 {
                return Ok(None);
            }
            let r = w.sqrt()?.unsqueeze(0)?;
            xc = xc.broadcast_mul(&r)?;
            yc = yc.broadcast_mul(&r)?;
        }
        let d = Expr::sqdist(&bind(VarCat::I, xc)?, &bind(VarCat::J, yc)?)?;
        made.insert(key, d.clone());
        with.insert(p.node.clone(), d);
    }
    Ok(Some((replace(formula, &with), out)))
}
