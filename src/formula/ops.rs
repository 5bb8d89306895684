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

use crate::backend::cpu::real::Real;
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
    /// Square root; `NaN` for negative `x`.
    Sqrt,
    /// `1 / sqrt(x)`.
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
            UnaryOp::Rsqrt => T::ONE / x.sqrt(),
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
