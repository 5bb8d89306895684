//! The op table: every primitive operation of a formula, in one place.
//!
//! Each primitive lives in one of three enums by arity ([`UnaryOp`], [`BinaryOp`],
//! [`TernaryOp`]) or in [`Op`] itself (variables, constants and the vector ops that do not act
//! component by component). For each, this file holds its printed name, its dimension rule and
//! its scalar semantics ([`UnaryOp::apply`] and friends, generic over the compute type), which the
//! CPU backend inlines into its vectorised tile loops. Composite operations (`SqDist`, `Dot`,
//! `Norm2`, ...) are not here: they are constructors in [`super::expr`] that build primitives.
//!
//! No `match` on these enums has a catch-all arm, so adding an op makes the compiler list every
//! place that must learn about it.

use crate::math::Real;
use crate::error::{dim_mismatch, Result};

/// Category of a formula variable: which index it is attached to.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum VarCat {
    /// Indexed by `i`: one row per output row (when reducing over `j`).
    I,
    /// Indexed by `j`: one row per reduced term (when reducing over `j`).
    J,
    /// A parameter: the same vector for every pair `(i, j)`.
    P,
}

/// A formula variable: the `pos`-th bound tensor, of category `cat`, whose rows have `dim`
/// components.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Var {
    /// Whether the variable is indexed by `i`, by `j`, or is a parameter.
    pub cat: VarCat,
    /// Position of the bound tensor in the formula's argument list.
    pub pos: usize,
    /// Number of components per row.
    pub dim: usize,
}

/// Component-wise operations of one argument.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum UnaryOp {
    /// `-x`.
    Neg,
    /// `exp(x)`.
    Exp,
    /// Natural logarithm; `NaN` for negative `x`, `-inf` at 0.
    Log,
    /// Square root; `NaN` for negative `x`. Its derivative at 0 is taken as 0 (see `Rsqrt`).
    Sqrt,
    /// `1 / sqrt(x)`, and 0 at `x = 0` (KeOps' convention, which makes the gradient of a
    /// distance at zero distance 0 instead of NaN).
    Rsqrt,
    /// `x * x`.
    Square,
    /// `1 / x`.
    Inv,
    /// `|x|`.
    Abs,
    /// `-1`, `0` or `1` (and `NaN` for `NaN`).
    Sign,
    /// `0` for `x < 0`, `1` for `x >= 0` (and `NaN` for `NaN`).
    Step,
    /// `max(x, 0)` (and `NaN` for `NaN`).
    Relu,
    /// `sin(x)`.
    Sin,
    /// `cos(x)`.
    Cos,
    /// `x^n` for an integer `n`, by repeated multiplication (`x^-n = 1 / x^n`).
    Pow(i32),
}

/// Component-wise operations of two arguments; a 1-component argument is broadcast against
/// the other.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum BinaryOp {
    /// `a + b`.
    Add,
    /// `a - b`.
    Sub,
    /// `a * b`.
    Mul,
    /// `a / b`.
    Div,
    /// `a^b = exp(b * log(a))` (KeOps' definition): `NaN` for negative `a`.
    Powf,
    /// Smallest of the two, `NaN` if either is `NaN`.
    Min,
    /// Largest of the two, `NaN` if either is `NaN`.
    Max,
    /// `1` if `a < b`, else `0`.
    Lt,
    /// `1` if `a <= b`, else `0`.
    Le,
    /// `1` if `a > b`, else `0`.
    Gt,
    /// `1` if `a >= b`, else `0`.
    Ge,
    /// `1` if `a == b`, else `0`.
    Eq,
    /// `1` if `a != b`, else `0` (`1` when either is `NaN`).
    Ne,
}

/// Component-wise operations of three arguments, with broadcasting of 1-component arguments.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum TernaryOp {
    /// `Clamp(x, lo, hi) = min(max(x, lo), hi)`; `NaN` stays `NaN`.
    Clamp,
    /// `IfElse(c, a, b) = a if c >= 0 else b` (KeOps' definition; a `NaN` condition picks `b`).
    IfElse,
}

/// A node of a formula: the operation applied to the node's arguments.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Op {
    /// A bound variable (a leaf).
    Var(Var),
    /// A scalar constant (a leaf, 1 component).
    Const(f64),
    /// A component-wise operation of one argument.
    Unary(UnaryOp),
    /// A component-wise operation of two arguments.
    Binary(BinaryOp),
    /// A component-wise operation of three arguments.
    Ternary(TernaryOp),
    /// Sum of the components of the argument (1 component).
    Sum,
    /// Component `m` of the argument (1 component).
    Elem(usize),
    /// Components `start .. start + len` of the argument.
    Extract {
        /// First component taken.
        start: usize,
        /// Number of components taken.
        len: usize,
    },
    /// The components of the first argument followed by those of the second.
    Concat,
    /// Matrix-vector product: the first argument is an `n x m` matrix stored row-major
    /// (`n * m` components), the second an `m`-vector; the result has `n` components.
    MatVecMult,
}

impl UnaryOp {
    /// Every unary op without data, for tests and for the parser's name table.
    pub const SIMPLE: [UnaryOp; 13] = [
        UnaryOp::Neg,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Rsqrt,
        UnaryOp::Square,
        UnaryOp::Inv,
        UnaryOp::Abs,
        UnaryOp::Sign,
        UnaryOp::Step,
        UnaryOp::Relu,
        UnaryOp::Sin,
        UnaryOp::Cos,
    ];

    /// The name used by the printer and the parser.
    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "Neg",
            UnaryOp::Exp => "Exp",
            UnaryOp::Log => "Log",
            UnaryOp::Sqrt => "Sqrt",
            UnaryOp::Rsqrt => "Rsqrt",
            UnaryOp::Square => "Square",
            UnaryOp::Inv => "Inv",
            UnaryOp::Abs => "Abs",
            UnaryOp::Sign => "Sign",
            UnaryOp::Step => "Step",
            UnaryOp::Relu => "ReLU",
            UnaryOp::Sin => "Sin",
            UnaryOp::Cos => "Cos",
            UnaryOp::Pow(_) => "Pow",
        }
    }

    /// The scalar semantics, inlined into the backends' vectorised loops.
    #[inline(always)]
    pub fn apply<T: Real, const FMA: bool>(self, x: T) -> T {
        match self {
            UnaryOp::Neg => -x,
            UnaryOp::Exp => x.exp::<FMA>(),
            UnaryOp::Log => x.ln::<FMA>(),
            UnaryOp::Sqrt => x.sqrt(),
            // KeOps' convention: Rsqrt(0) = 0, so that the derivative of a norm at the origin is
            // 0 instead of NaN (a select, so loops still vectorise).
            UnaryOp::Rsqrt => {
                let r = T::ONE / x.sqrt();
                if x == T::ZERO {
                    T::ZERO
                } else {
                    r
                }
            }
            UnaryOp::Square => x * x,
            UnaryOp::Inv => T::ONE / x,
            UnaryOp::Abs => x.abs(),
            UnaryOp::Sign => {
                let s = if x > T::ZERO { T::ONE } else { T::ZERO };
                let s = if x < T::ZERO { -T::ONE } else { s };
                // NaN compares false both ways: give it back explicitly (a select, so the loop
                // still vectorises).
                keep_nan(x, s)
            }
            UnaryOp::Step => {
                let s = if x >= T::ZERO { T::ONE } else { T::ZERO };
                keep_nan(x, s)
            }
            UnaryOp::Relu => {
                let r = if x > T::ZERO { x } else { T::ZERO };
                keep_nan(x, r)
            }
            UnaryOp::Sin => x.sin::<FMA>(),
            UnaryOp::Cos => x.cos::<FMA>(),
            UnaryOp::Pow(n) => powi(x, n),
        }
    }
}

/// `x` where `x` is NaN, else `y`: a select that vectorises.
#[inline(always)]
fn keep_nan<T: Real>(x: T, y: T) -> T {
    #[allow(clippy::eq_op)]
    let nan = x != x;
    if nan {
        x
    } else {
        y
    }
}

/// `x^n` by binary exponentiation; the loop depends on `n` only, which is constant over a tile.
#[inline(always)]
fn powi<T: Real>(x: T, n: i32) -> T {
    let mut e = n.unsigned_abs();
    let mut base = x;
    let mut acc = T::ONE;
    while e > 0 {
        if e & 1 == 1 {
            acc = acc * base;
        }
        base = base * base;
        e >>= 1;
    }
    if n < 0 {
        T::ONE / acc
    } else {
        acc
    }
}

impl BinaryOp {
    /// Every binary op, for tests and for the parser's name table.
    pub const ALL: [BinaryOp; 13] = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Powf,
        BinaryOp::Min,
        BinaryOp::Max,
        BinaryOp::Lt,
        BinaryOp::Le,
        BinaryOp::Gt,
        BinaryOp::Ge,
        BinaryOp::Eq,
        BinaryOp::Ne,
    ];

    /// The name used by the printer (for the function-call form) and the parser.
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "Add",
            BinaryOp::Sub => "Subtract",
            BinaryOp::Mul => "Mult",
            BinaryOp::Div => "Divide",
            BinaryOp::Powf => "Powf",
            BinaryOp::Min => "Min",
            BinaryOp::Max => "Max",
            BinaryOp::Lt => "Lt",
            BinaryOp::Le => "Le",
            BinaryOp::Gt => "Gt",
            BinaryOp::Ge => "Ge",
            BinaryOp::Eq => "Eq",
            BinaryOp::Ne => "Ne",
        }
    }

    /// The infix symbol of the four arithmetic operators.
    pub fn infix(self) -> Option<char> {
        match self {
            BinaryOp::Add => Some('+'),
            BinaryOp::Sub => Some('-'),
            BinaryOp::Mul => Some('*'),
            BinaryOp::Div => Some('/'),
            BinaryOp::Powf
            | BinaryOp::Min
            | BinaryOp::Max
            | BinaryOp::Lt
            | BinaryOp::Le
            | BinaryOp::Gt
            | BinaryOp::Ge
            | BinaryOp::Eq
            | BinaryOp::Ne => None,
        }
    }

    /// The scalar semantics, inlined into the backends' vectorised loops.
    #[inline(always)]
    pub fn apply<T: Real, const FMA: bool>(self, a: T, b: T) -> T {
        let bool01 = |c: bool| if c { T::ONE } else { T::ZERO };
        match self {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
            BinaryOp::Div => a / b,
            BinaryOp::Powf => (b * a.ln::<FMA>()).exp::<FMA>(),
            // A NaN `a` is kept by the first select (comparisons with NaN are false), a NaN `b`
            // by the second: NaN propagates, as in `torch.minimum`.
            BinaryOp::Min => keep_nan(b, if b < a { b } else { a }),
            BinaryOp::Max => keep_nan(b, if b > a { b } else { a }),
            BinaryOp::Lt => bool01(a < b),
            BinaryOp::Le => bool01(a <= b),
            BinaryOp::Gt => bool01(a > b),
            BinaryOp::Ge => bool01(a >= b),
            BinaryOp::Eq => bool01(a == b),
            BinaryOp::Ne => bool01(a != b),
        }
    }
}

impl TernaryOp {
    /// Every ternary op.
    pub const ALL: [TernaryOp; 2] = [TernaryOp::Clamp, TernaryOp::IfElse];

    /// The name used by the printer and the parser.
    pub fn name(self) -> &'static str {
        match self {
            TernaryOp::Clamp => "Clamp",
            TernaryOp::IfElse => "IfElse",
        }
    }

    /// The scalar semantics, inlined into the backends' loops.
    #[inline(always)]
    pub fn apply<T: Real>(self, a: T, b: T, c: T) -> T {
        match self {
            TernaryOp::Clamp => {
                let lo = if a < b { b } else { a };
                let hi = if lo > c { c } else { lo };
                keep_nan(a, hi)
            }
            TernaryOp::IfElse => {
                if a >= T::ZERO {
                    b
                } else {
                    c
                }
            }
        }
    }
}

/// Dimension of a component-wise result: all dimensions equal, or 1 (broadcast).
pub(crate) fn broadcast_dims(op: &'static str, dims: &[usize]) -> Result<usize> {
    let out = dims.iter().copied().max().unwrap_or(1);
    if dims.iter().all(|&d| d == 1 || d == out) {
        Ok(out)
    } else {
        Err(dim_mismatch(
            op,
            format!("arguments have dimensions {dims:?}; each must be 1 or {out}"),
        ))
    }
}

impl Op {
    /// Number of arguments the op takes.
    pub fn arity(&self) -> usize {
        match self {
            Op::Var(_) | Op::Const(_) => 0,
            Op::Unary(_) | Op::Sum | Op::Elem(_) | Op::Extract { .. } => 1,
            Op::Binary(_) | Op::Concat | Op::MatVecMult => 2,
            Op::Ternary(_) => 3,
        }
    }

    /// The op's name, as printed.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Var(v) => match v.cat {
                VarCat::I => "Vi",
                VarCat::J => "Vj",
                VarCat::P => "Pm",
            },
            Op::Const(_) => "Const",
            Op::Unary(u) => u.name(),
            Op::Binary(b) => b.name(),
            Op::Ternary(t) => t.name(),
            Op::Sum => "Sum",
            Op::Elem(_) => "Elem",
            Op::Extract { .. } => "Extract",
            Op::Concat => "Concat",
            Op::MatVecMult => "MatVecMult",
        }
    }

    /// The dimension rule: the result's number of components from the arguments'.
    pub fn infer_dim(&self, dims: &[usize]) -> Result<usize> {
        let name = self.name();
        if dims.len() != self.arity() {
            return Err(dim_mismatch(
                name,
                format!("expects {} arguments, got {}", self.arity(), dims.len()),
            ));
        }
        match *self {
            Op::Var(v) => Ok(v.dim),
            Op::Const(_) => Ok(1),
            Op::Unary(_) => Ok(dims[0]),
            Op::Binary(_) | Op::Ternary(_) => broadcast_dims(name, dims),
            Op::Sum => Ok(1),
            Op::Elem(m) => {
                if m < dims[0] {
                    Ok(1)
                } else {
                    Err(dim_mismatch(
                        name,
                        format!("component {m} of a {}-component argument", dims[0]),
                    ))
                }
            }
            Op::Extract { start, len } => {
                if len > 0 && start.checked_add(len).is_some_and(|end| end <= dims[0]) {
                    Ok(len)
                } else {
                    Err(dim_mismatch(
                        name,
                        format!(
                            "components {start}..{} of a {}-component argument",
                            start.saturating_add(len),
                            dims[0]
                        ),
                    ))
                }
            }
            Op::Concat => Ok(dims[0] + dims[1]),
            Op::MatVecMult => {
                let (a, v) = (dims[0], dims[1]);
                if a % v == 0 {
                    Ok(a / v)
                } else {
                    Err(dim_mismatch(
                        name,
                        format!("a {a}-component matrix cannot multiply a {v}-component vector"),
                    ))
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Derivatives: the vector-Jacobian product of each component-wise op.
//
// `a` is the adjoint of the op's result (its dimension is the result's, or 1 when it is the same
// for every component); each rule returns the contribution to the adjoint of each argument, at
// the result's dimension or 1 (the sweep in `super::grad` sums the components back onto
// arguments that were broadcast). `None` is an exact zero: no term is built for it.
// ---------------------------------------------------------------------------------------------

use super::expr::Expr;

fn k(c: f64) -> Expr {
    Expr::constant(c).expect("derivative constants are finite")
}

fn mul(a: &Expr, b: &Expr) -> Expr {
    Expr::binary(BinaryOp::Mul, a, b).expect("derivative factors broadcast")
}

fn bin(op: BinaryOp, a: &Expr, b: &Expr) -> Expr {
    Expr::binary(op, a, b).expect("derivative terms broadcast")
}

impl UnaryOp {
    /// The adjoint of `x` given the adjoint `a` of `out = self(x)`. Non-differentiable points
    /// take the usual subgradient: `Abs'(0) = 0`, `ReLU'(0) = 0`; `Sign` and `Step` have a zero
    /// derivative everywhere (`None`).
    pub(crate) fn vjp(self, x: &Expr, out: &Expr, a: &Expr) -> Option<Expr> {
        Some(match self {
            UnaryOp::Neg => a.neg(),
            // d exp(x) = exp(x): reuse the forward node, so the exponential is computed once.
            UnaryOp::Exp => mul(a, out),
            UnaryOp::Log => bin(BinaryOp::Div, a, x),
            // d sqrt(x) = Rsqrt(x) / 2, taken as 0 at x = 0 (Rsqrt(0) = 0): the gradient of
            // |x - y| at x = y is the zero subgradient, not NaN, as in KeOps.
            UnaryOp::Sqrt => mul(&mul(a, &Expr::unary(UnaryOp::Rsqrt, x)), &k(0.5)),
            // d x^(-1/2) = -x^(-3/2) / 2.
            UnaryOp::Rsqrt => mul(&mul(a, &Expr::unary(UnaryOp::Pow(3), out)), &k(-0.5)),
            UnaryOp::Square => mul(&mul(a, x), &k(2.0)),
            // d (1/x) = -(1/x)^2.
            UnaryOp::Inv => mul(a, &Expr::unary(UnaryOp::Square, out)).neg(),
            UnaryOp::Abs => mul(a, &Expr::unary(UnaryOp::Sign, x)),
            UnaryOp::Sign | UnaryOp::Step => return None,
            UnaryOp::Relu => mul(a, &bin(BinaryOp::Gt, x, &k(0.0))),
            UnaryOp::Sin => mul(a, &Expr::unary(UnaryOp::Cos, x)),
            UnaryOp::Cos => mul(a, &Expr::unary(UnaryOp::Sin, x)).neg(),
            UnaryOp::Pow(0) => return None,
            UnaryOp::Pow(1) => a.clone(),
            UnaryOp::Pow(n) => mul(&mul(a, &Expr::unary(UnaryOp::Pow(n - 1), x)), &k(n as f64)),
        })
    }
}

impl BinaryOp {
    /// The adjoints of `x` and `y` given the adjoint `a` of `out = self(x, y)`. `Min` and `Max`
    /// route the whole adjoint to the argument they select (the first on ties, as the forward
    /// op does); comparisons have a zero derivative. `Powf`'s derivative in its exponent is
    /// `out * log(x)`, defined for `x > 0`.
    pub(crate) fn vjp(
        self,
        x: &Expr,
        y: &Expr,
        out: &Expr,
        a: &Expr,
    ) -> (Option<Expr>, Option<Expr>) {
        match self {
            BinaryOp::Add => (Some(a.clone()), Some(a.clone())),
            BinaryOp::Sub => (Some(a.clone()), Some(a.neg())),
            BinaryOp::Mul => (Some(mul(a, y)), Some(mul(a, x))),
            BinaryOp::Div => {
                // d(x/y) = dx / y - (x/y) dy / y.
                let t = bin(BinaryOp::Div, a, y);
                let dy = mul(&t, out).neg();
                (Some(t), Some(dy))
            }
            BinaryOp::Powf => {
                // x^y = exp(y log x): d/dx = y x^(y-1), d/dy = x^y log x.
                let ym1 = bin(BinaryOp::Sub, y, &k(1.0));
                let dx = mul(&mul(a, y), &bin(BinaryOp::Powf, x, &ym1));
                let dy = mul(&mul(a, out), &Expr::unary(UnaryOp::Log, x));
                (Some(dx), Some(dy))
            }
            // Min picks x unless y < x; Max picks x unless y > x.
            BinaryOp::Min => (
                Some(mul(a, &bin(BinaryOp::Le, x, y))),
                Some(mul(a, &bin(BinaryOp::Gt, x, y))),
            ),
            BinaryOp::Max => (
                Some(mul(a, &bin(BinaryOp::Ge, x, y))),
                Some(mul(a, &bin(BinaryOp::Lt, x, y))),
            ),
            BinaryOp::Lt
            | BinaryOp::Le
            | BinaryOp::Gt
            | BinaryOp::Ge
            | BinaryOp::Eq
            | BinaryOp::Ne => (None, None),
        }
    }
}

impl TernaryOp {
    /// The adjoints of the three arguments given the adjoint `a` of `out = self(x, y, z)`:
    /// `Clamp(x, lo, hi)` routes `a` to whichever of the three it returns (`x` on the
    /// boundaries); `IfElse(c, p, q)` routes it to the branch taken, and `c` gets none.
    pub(crate) fn vjp(self, args: [&Expr; 3], a: &Expr) -> [Option<Expr>; 3] {
        let [x, y, z] = args;
        match self {
            TernaryOp::Clamp => {
                let (lo, hi) = (y, z);
                let low = bin(BinaryOp::Max, x, lo);
                let takes_hi = bin(BinaryOp::Gt, &low, hi);
                let takes_lo = mul(&bin(BinaryOp::Lt, x, lo), &bin(BinaryOp::Le, lo, hi));
                let takes_x = mul(&bin(BinaryOp::Ge, x, lo), &bin(BinaryOp::Le, x, hi));
                [
                    Some(mul(a, &takes_x)),
                    Some(mul(a, &takes_lo)),
                    Some(mul(a, &takes_hi)),
                ]
            }
            TernaryOp::IfElse => {
                // KeOps' IfElse takes `p` when `c >= 0`, and `q` otherwise (NaN included).
                let takes_p = bin(BinaryOp::Ge, x, &k(0.0));
                let takes_q = bin(BinaryOp::Sub, &k(1.0), &takes_p);
                [None, Some(mul(a, &takes_p)), Some(mul(a, &takes_q))]
            }
        }
    }
}
