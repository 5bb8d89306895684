//! Formula expressions: an immutable DAG of [`Op`] nodes with dimension inference and a
//! canonical printed form.
//!
//! An [`Expr`] is a reference-counted node with its structural hash cached at construction, so
//! equality and hashing of whole subtrees are cheap and a subexpression used twice is stored
//! once. The backends hash-cons an `Expr` into a graph of distinct nodes (common
//! subexpressions are evaluated once) when they compile it. There is no global interner and no
//! counter: the printed form depends only on the structure, so it doubles as a cache key and
//! round-trips through [`super::parse()`].

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use super::ops::{BinaryOp, Op, TernaryOp, UnaryOp, Var, VarCat};
use crate::error::{Result, dim_mismatch, invalid};

struct Node {
    op: Op,
    args: Vec<Expr>,
    dim: usize,
    /// The longest path to a leaf, in nodes (1 for a leaf).
    depth: usize,
    /// Nodes of the tree the DAG unfolds to (what the printed form spells out), saturating.
    size: usize,
    hash: u64,
}

/// The deepest formula a reduction runs, gradients' formulas included. Building, printing,
/// comparing, simplifying, differentiating and dropping a formula work at any depth (they
/// never recurse, so a chain of a million ops is fine); the backends' compilers recurse, so
/// [`crate::LazyTensor::reduce`] and the other entry points refuse a deeper formula with
/// [`crate::Error::InvalidArgument`] before compiling it, and compile one deeper than a few
/// hundred levels on a thread whose stack is sized for it. (The parser stops at 256 levels.)
pub const MAX_DEPTH: usize = 10_000;

/// Dropping a formula frees its nodes one after another, without recursion, so that the drop
/// of a deep chain cannot overflow the stack.
impl Drop for Node {
    fn drop(&mut self) {
        let mut stack = std::mem::take(&mut self.args);
        while let Some(e) = stack.pop() {
            // The last reference to a node: take its arguments before it is freed.
            if let Ok(mut node) = Arc::try_unwrap(e.0) {
                stack.append(&mut node.args);
            }
        }
    }
}

/// A formula: a node of the expression DAG.
///
/// Build it with the constructors below (each checks dimensions and returns an error naming the
/// op), with [`crate::LazyTensor`], or by parsing a string with [`super::parse::parse`].
///
/// ```
/// use lazy_kernels::formula::{Expr, Var, VarCat};
/// let x = Expr::var(Var { cat: VarCat::I, pos: 0, dim: 3 })?;
/// let y = Expr::var(Var { cat: VarCat::J, pos: 1, dim: 3 })?;
/// let k = Expr::sqdist(&x, &y)?.neg().exp();
/// assert_eq!(k.dim(), 1);
/// assert_eq!(k.to_string(), "Exp(-Sum(Square(Vi(0,3) - Vj(1,3))))");
/// # Ok::<(), lazy_kernels::Error>(())
/// ```
#[derive(Clone)]
pub struct Expr(Arc<Node>);

impl PartialEq for Expr {
    /// Structural equality, by an explicit stack of node pairs (no recursion).
    fn eq(&self, other: &Self) -> bool {
        let mut pairs: Vec<(&Expr, &Expr)> = vec![(self, other)];
        while let Some((a, b)) = pairs.pop() {
            if Arc::ptr_eq(&a.0, &b.0) {
                continue;
            }
            let same_node = a.0.hash == b.0.hash
                && a.0.dim == b.0.dim
                && a.0.depth == b.0.depth
                && op_key(&a.0.op) == op_key(&b.0.op)
                && a.0.args.len() == b.0.args.len();
            if !same_node {
                return false;
            }
            pairs.extend(a.0.args.iter().zip(&b.0.args));
        }
        true
    }
}
impl Eq for Expr {}

impl Hash for Expr {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0.hash);
    }
}

/// A hashable, comparable image of an op (constants compared by bit pattern).
#[derive(PartialEq, Eq, Hash)]
enum OpKey {
    Var(Var),
    Const(u64),
    Unary(UnaryOp),
    Binary(BinaryOp),
    Ternary(TernaryOp),
    Sum,
    Elem(usize),
    Extract(usize, usize),
    Concat,
    MatVecMult,
}

fn op_key(op: &Op) -> OpKey {
    match *op {
        Op::Var(v) => OpKey::Var(v),
        // +0.0 and -0.0 print differently, so they are different formulas.
        Op::Const(c) => OpKey::Const(c.to_bits()),
        Op::Unary(u) => OpKey::Unary(u),
        Op::Binary(b) => OpKey::Binary(b),
        Op::Ternary(t) => OpKey::Ternary(t),
        Op::Sum => OpKey::Sum,
        Op::Elem(m) => OpKey::Elem(m),
        Op::Extract { start, len } => OpKey::Extract(start, len),
        Op::Concat => OpKey::Concat,
        Op::MatVecMult => OpKey::MatVecMult,
    }
}

impl Expr {
    /// Builds a node, checking the op's dimension rule.
    pub fn new(op: Op, args: Vec<Expr>) -> Result<Expr> {
        let dims: Vec<usize> = args.iter().map(Expr::dim).collect();
        let dim = op.infer_dim(&dims)?;
        if let Op::Const(c) = op
            && !c.is_finite()
        {
            return Err(invalid("Const", format!("constant {c} is not finite")));
        }
        if let Op::Var(v) = op
            && v.dim == 0
        {
            return Err(dim_mismatch(
                "Var",
                "a variable needs at least one component",
            ));
        }
        // The negation of a constant is the negated constant, so that printing and parsing
        // agree (`-2.5` is one literal).
        if let (Op::Unary(UnaryOp::Neg), [a]) = (op, args.as_slice())
            && let Op::Const(c) = a.0.op
        {
            return Expr::new(Op::Const(-c), vec![]);
        }
        let mut h = DefaultHasher::new();
        op_key(&op).hash(&mut h);
        dim.hash(&mut h);
        for a in &args {
            a.0.hash.hash(&mut h);
        }
        let hash = h.finish();
        let depth = 1 + args.iter().map(Expr::depth).max().unwrap_or(0);
        let size = args
            .iter()
            .fold(1usize, |acc, a| acc.saturating_add(a.0.size));
        Ok(Expr(Arc::new(Node {
            op,
            args,
            dim,
            depth,
            size,
            hash,
        })))
    }

    /// The formula for messages and comments: its printed form when that is at most
    /// [`BRIEF_NODES`] nodes long, otherwise a summary (a DAG that reuses subformulas prints
    /// as a tree, which can be exponentially larger than the DAG: `x + x` nested 60 times).
    pub(crate) fn brief(&self) -> Brief<'_> {
        Brief(self)
    }

    /// The longest chain of nested ops, in nodes (1 for a variable or a constant).
    ///
    /// ```
    /// use lazy_kernels::formula::parse;
    /// assert_eq!(parse("Exp(-Vi(0,1))", &[])?.depth(), 3);
    /// # Ok::<(), lazy_kernels::Error>(())
    /// ```
    pub fn depth(&self) -> usize {
        self.0.depth
    }

    /// `Ok` when the formula is at most [`MAX_DEPTH`] deep, an error naming `op` otherwise.
    pub(crate) fn check_depth(&self, op: &'static str) -> Result<()> {
        if self.depth() <= MAX_DEPTH {
            return Ok(());
        }
        Err(invalid(
            op,
            format!(
                "the formula is {} ops deep, more than the {MAX_DEPTH} a reduction compiles \
                 (lazy_kernels::formula::expr::MAX_DEPTH); gradients count too",
                self.depth()
            ),
        ))
    }

    /// A variable leaf; it needs at least one component.
    pub fn var(v: Var) -> Result<Expr> {
        Expr::new(Op::Var(v), vec![])
    }

    /// A scalar constant leaf; the value must be finite.
    pub fn constant(c: f64) -> Result<Expr> {
        Expr::new(Op::Const(c), vec![])
    }

    /// The node's operation.
    pub fn op(&self) -> &Op {
        &self.0.op
    }

    /// The node's arguments.
    pub fn args(&self) -> &[Expr] {
        &self.0.args
    }

    /// Number of components of the formula's value.
    pub fn dim(&self) -> usize {
        self.0.dim
    }

    /// A component-wise op of one argument (never fails: the dimension is kept).
    pub fn unary(op: UnaryOp, a: &Expr) -> Expr {
        Expr::new(Op::Unary(op), vec![a.clone()]).expect("unary ops keep any dimension")
    }

    /// A component-wise op of two arguments with broadcasting of 1-component arguments.
    pub fn binary(op: BinaryOp, a: &Expr, b: &Expr) -> Result<Expr> {
        Expr::new(Op::Binary(op), vec![a.clone(), b.clone()])
    }

    /// A component-wise op of three arguments with broadcasting of 1-component arguments.
    pub fn ternary(op: TernaryOp, a: &Expr, b: &Expr, c: &Expr) -> Result<Expr> {
        Expr::new(Op::Ternary(op), vec![a.clone(), b.clone(), c.clone()])
    }

    /// `-self` (the negation of a constant is the negated constant).
    pub fn neg(&self) -> Expr {
        Expr::unary(UnaryOp::Neg, self)
    }

    /// `exp(self)`.
    pub fn exp(&self) -> Expr {
        Expr::unary(UnaryOp::Exp, self)
    }

    /// Sum of the components (1 component).
    pub fn sum(&self) -> Expr {
        Expr::new(Op::Sum, vec![self.clone()]).expect("Sum accepts any dimension")
    }

    /// Squared Euclidean norm: `Sum(Square(a))`.
    pub fn sqnorm2(a: &Expr) -> Expr {
        Expr::unary(UnaryOp::Square, a).sum()
    }

    /// Euclidean norm: `Sqrt(SqNorm2(a))`.
    pub fn norm2(a: &Expr) -> Expr {
        Expr::unary(UnaryOp::Sqrt, &Expr::sqnorm2(a))
    }

    /// `a / |a|`, as `a * Rsqrt(SqNorm2(a))`.
    pub fn normalize(a: &Expr) -> Expr {
        let r = Expr::unary(UnaryOp::Rsqrt, &Expr::sqnorm2(a));
        Expr::binary(BinaryOp::Mul, a, &r).expect("a 1-component factor broadcasts")
    }

    /// Squared distance `Sum(Square(a - b))`; `a` and `b` must have the same dimension (or one
    /// of them 1).
    pub fn sqdist(a: &Expr, b: &Expr) -> Result<Expr> {
        let d = Expr::binary(BinaryOp::Sub, a, b).map_err(|_| {
            dim_mismatch(
                "SqDist",
                format!("arguments have dimensions {} and {}", a.dim(), b.dim()),
            )
        })?;
        Ok(Expr::sqnorm2(&d))
    }

    /// Scalar product `Sum(a * b)`; `a` and `b` must have the same dimension.
    pub fn dot(a: &Expr, b: &Expr) -> Result<Expr> {
        if a.dim() != b.dim() {
            return Err(dim_mismatch(
                "Dot",
                format!("arguments have dimensions {} and {}", a.dim(), b.dim()),
            ));
        }
        Ok(Expr::binary(BinaryOp::Mul, a, b)?.sum())
    }

    /// Weighted squared norm `Sum(w * Square(a))`, with `w` a scalar weight (1 component) or a
    /// diagonal one (as many components as `a`).
    pub fn weighted_sqnorm(w: &Expr, a: &Expr) -> Result<Expr> {
        if w.dim() != 1 && w.dim() != a.dim() {
            return Err(dim_mismatch(
                "WeightedSqNorm",
                format!(
                    "weights have {} components; expected 1 or {} (the vector's dimension)",
                    w.dim(),
                    a.dim()
                ),
            ));
        }
        Ok(Expr::binary(BinaryOp::Mul, w, &Expr::unary(UnaryOp::Square, a))?.sum())
    }

    /// Weighted squared distance `Sum(w * Square(a - b))` (scalar or diagonal `w`).
    pub fn weighted_sqdist(w: &Expr, a: &Expr, b: &Expr) -> Result<Expr> {
        if a.dim() != b.dim() {
            return Err(dim_mismatch(
                "WeightedSqDist",
                format!("points have dimensions {} and {}", a.dim(), b.dim()),
            ));
        }
        let d = Expr::binary(BinaryOp::Sub, a, b)?;
        Expr::weighted_sqnorm(w, &d).map_err(|e| match e {
            crate::Error::DimMismatch { detail, .. } => dim_mismatch("WeightedSqDist", detail),
            other => other,
        })
    }

    /// Every distinct node reachable from `self` (structurally equal subtrees count once),
    /// arguments before their users.
    pub fn topo_order(&self) -> Vec<Expr> {
        let mut seen: HashSet<Expr> = HashSet::new();
        let mut order = Vec::new();
        // Iterative post-order, so deep formulas cannot overflow the stack.
        let mut stack: Vec<(Expr, usize)> = vec![(self.clone(), 0)];
        while let Some((e, next)) = stack.pop() {
            if next == 0 && seen.contains(&e) {
                continue;
            }
            if next < e.args().len() {
                let child = e.args()[next].clone();
                stack.push((e, next + 1));
                if !seen.contains(&child) {
                    stack.push((child, 0));
                }
            } else if seen.insert(e.clone()) {
                order.push(e);
            }
        }
        order
    }

    /// The distinct variables of the formula, in order of first appearance (depth first,
    /// arguments left to right).
    pub fn vars(&self) -> Vec<Var> {
        let mut out: Vec<Var> = Vec::new();
        for n in self.topo_order() {
            if let Op::Var(v) = n.op()
                && !out.contains(v)
            {
                out.push(*v);
            }
        }
        out
    }

    /// Rebuilds the formula with every variable replaced by `f(var)` (same dimension).
    pub(crate) fn map_vars(&self, f: &mut dyn FnMut(Var) -> Var) -> Expr {
        let mut memo: HashMap<Expr, Expr> = HashMap::new();
        for n in self.topo_order() {
            let new = match *n.op() {
                Op::Var(v) => Expr::var(f(v)).expect("map_vars keeps dimensions"),
                _ => {
                    let args: Vec<Expr> = n.args().iter().map(|a| memo[a].clone()).collect();
                    if args
                        .iter()
                        .zip(n.args())
                        .all(|(a, b)| Arc::ptr_eq(&a.0, &b.0))
                    {
                        n.clone()
                    } else {
                        Expr::new(*n.op(), args).expect("same dimensions as before")
                    }
                }
            };
            memo.insert(n, new);
        }
        memo[self].clone()
    }

    /// The same formula with the roles of `i` and `j` exchanged (to reduce over `i` with the
    /// machinery that reduces over `j`).
    pub fn swap_ij(&self) -> Expr {
        self.map_vars(&mut |v| Var {
            cat: match v.cat {
                VarCat::I => VarCat::J,
                VarCat::J => VarCat::I,
                VarCat::P => VarCat::P,
            },
            ..v
        })
    }

    /// The factors of `self` as a product tree, and whether their product is negated: `Mul`
    /// nodes are opened, `Neg` flips the sign, and `a / b` becomes the factors of `a` and
    /// `Inv(b)`. Any other node is one factor.
    pub(crate) fn product_factors(&self) -> (Vec<Expr>, bool) {
        let mut factors = Vec::new();
        let mut negated = false;
        let mut stack = vec![self.clone()];
        while let Some(x) = stack.pop() {
            match x.op() {
                Op::Binary(BinaryOp::Mul) => {
                    stack.push(x.args()[1].clone());
                    stack.push(x.args()[0].clone());
                }
                Op::Unary(UnaryOp::Neg) => {
                    negated = !negated;
                    stack.push(x.args()[0].clone());
                }
                Op::Binary(BinaryOp::Div) => {
                    factors.push(Expr::unary(UnaryOp::Inv, &x.args()[1]));
                    stack.push(x.args()[0].clone());
                }
                _ => factors.push(x),
            }
        }
        (factors, negated)
    }

    /// Whether any variable of category `cat` occurs in the formula.
    pub fn depends_on(&self, cat: VarCat) -> bool {
        self.vars().iter().any(|v| v.cat == cat)
    }

    /// Number of distinct nodes.
    pub fn node_count(&self) -> usize {
        self.topo_order().len()
    }
}

impl fmt::Debug for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Expr({self})")
    }
}

/// Precedence levels of the printed form: sums, products, unary minus, atoms.
const PREC_ADD: u8 = 1;
const PREC_MUL: u8 = 2;
const PREC_NEG: u8 = 3;
const PREC_ATOM: u8 = 4;

fn precedence(e: &Expr) -> u8 {
    match e.op() {
        Op::Binary(BinaryOp::Add | BinaryOp::Sub) => PREC_ADD,
        Op::Binary(BinaryOp::Mul | BinaryOp::Div) => PREC_MUL,
        Op::Unary(UnaryOp::Neg) => PREC_NEG,
        Op::Const(c) if *c < 0.0 || (*c == 0.0 && c.is_sign_negative()) => PREC_NEG,
        _ => PREC_ATOM,
    }
}

/// Prints a constant so that parsing it gives back the same bits.
pub(crate) fn fmt_const(c: f64) -> String {
    // `{:?}` is the shortest representation that round-trips, and always has a '.' or 'e'.
    format!("{c:?}")
}

/// The most nodes [`Expr::brief`] prints.
pub(crate) const BRIEF_NODES: usize = 4096;

/// See [`Expr::brief`].
pub(crate) struct Brief<'a>(&'a Expr);

impl fmt::Display for Brief<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = self.0;
        if e.0.size <= BRIEF_NODES {
            return write_expr(e, f);
        }
        write!(
            f,
            "<a formula of {} distinct nodes, {} deep, too long to print>",
            e.node_count(),
            e.depth()
        )
    }
}

/// One step of the printer: text to write, or a formula to print.
enum Piece<'a> {
    Text(&'static str),
    Owned(String),
    Expr(&'a Expr),
}

/// Prints `e` in the canonical form, with an explicit stack of pieces (no recursion, so any
/// depth prints).
fn write_expr<'a>(e: &'a Expr, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let mut todo: Vec<Piece<'a>> = vec![Piece::Expr(e)];
    while let Some(piece) = todo.pop() {
        let e = match piece {
            Piece::Text(t) => {
                f.write_str(t)?;
                continue;
            }
            Piece::Owned(t) => {
                f.write_str(&t)?;
                continue;
            }
            Piece::Expr(e) => e,
        };
        // The pieces of `e`, in printing order; pushed reversed below.
        let mut out: Vec<Piece<'a>> = Vec::new();
        let a = e.args();
        let wrapped = |child: &'a Expr, min: u8, out: &mut Vec<Piece<'a>>| {
            if precedence(child) < min {
                out.extend([Piece::Text("("), Piece::Expr(child), Piece::Text(")")]);
            } else {
                out.push(Piece::Expr(child));
            }
        };
        match *e.op() {
            Op::Var(v) => out.push(Piece::Owned(format!(
                "{}({},{})",
                e.op().name(),
                v.pos,
                v.dim
            ))),
            Op::Const(c) => out.push(Piece::Owned(fmt_const(c))),
            Op::Unary(UnaryOp::Neg) => {
                out.push(Piece::Text("-"));
                // `--x` would not re-parse as written; `-(-x)` does.
                wrapped(&a[0], PREC_ATOM.min(PREC_NEG + 1), &mut out);
            }
            Op::Unary(UnaryOp::Pow(n)) => out.extend([
                Piece::Text("Pow("),
                Piece::Expr(&a[0]),
                Piece::Owned(format!(",{n})")),
            ]),
            Op::Unary(u) => out.extend([
                Piece::Text(u.name()),
                Piece::Text("("),
                Piece::Expr(&a[0]),
                Piece::Text(")"),
            ]),
            Op::Binary(b) => match b.infix() {
                Some(sym) => {
                    let p = precedence(e);
                    // Left-associative: the left operand may share the precedence, the right
                    // may not.
                    wrapped(&a[0], p, &mut out);
                    out.push(Piece::Owned(format!(" {sym} ")));
                    wrapped(&a[1], p + 1, &mut out);
                }
                None => out.extend([
                    Piece::Text(b.name()),
                    Piece::Text("("),
                    Piece::Expr(&a[0]),
                    Piece::Text(","),
                    Piece::Expr(&a[1]),
                    Piece::Text(")"),
                ]),
            },
            Op::Ternary(t) => out.extend([
                Piece::Text(t.name()),
                Piece::Text("("),
                Piece::Expr(&a[0]),
                Piece::Text(","),
                Piece::Expr(&a[1]),
                Piece::Text(","),
                Piece::Expr(&a[2]),
                Piece::Text(")"),
            ]),
            Op::Sum => out.extend([Piece::Text("Sum("), Piece::Expr(&a[0]), Piece::Text(")")]),
            Op::Elem(m) => out.extend([
                Piece::Text("Elem("),
                Piece::Expr(&a[0]),
                Piece::Owned(format!(",{m})")),
            ]),
            Op::Extract { start, len } => out.extend([
                Piece::Text("Extract("),
                Piece::Expr(&a[0]),
                Piece::Owned(format!(",{start},{len})")),
            ]),
            Op::Concat | Op::MatVecMult => out.extend([
                Piece::Text(e.op().name()),
                Piece::Text("("),
                Piece::Expr(&a[0]),
                Piece::Text(","),
                Piece::Expr(&a[1]),
                Piece::Text(")"),
            ]),
        }
        todo.extend(out.into_iter().rev());
    }
    Ok(())
}

impl fmt::Display for Expr {
    /// The canonical form: depends only on the structure, and parses back to an equal formula.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_expr(self, f)
    }
}
