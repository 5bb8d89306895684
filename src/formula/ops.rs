//! The op table: every primitive operation of a formula, each defined in one place.
//!
//! Component-wise ops are rows of three tables, by arity: `unary_table!`, `binary_table!` and
//! `ternary_table!` below. A row is everything the crate knows about the op:
//!
//! | field | what it is | who reads it |
//! | --- | --- | --- |
//! | doc comment | the op's documentation | the enum variant and the `LazyTensor` method |
//! | `method` | the [`crate::LazyTensor`] method (`_`: none) | `crate::lazy` |
//! | `name` | printed and parsed name | printer, [`super::parse()`] |
//! | `domain` | where tests sample each argument ([`Domain`]) | generated tests |
//! | `apply` | scalar semantics, generic over [`Real`] and `FMA` | CPU backend, [`super::simplify()`] |
//! | `large` | (optional) the exact value beyond `T::TRIG_LIMIT` | CPU backend |
//! | `reference` | the `f64` definition, from `std` and `libm` | tests (independent reference) |
//! | `cuda` | the CUDA C expression (a template) | CUDA generator, host C++ test, nvcc corpus |
//! | `vjp` | the derivative (vector-Jacobian product) | [`super::grad()`] |
//!
//! The dimension rule is the arity's: a unary op keeps its argument's dimension, binary and
//! ternary ops broadcast 1-component arguments ([`Op::infer_dim`]). The tables are "x-macros":
//! each hands its rows to a consumer macro; the consumers in `formula/table.rs` define the enums
//! ([`UnaryOp`], [`BinaryOp`], [`TernaryOp`]) and their methods (`name`, `apply`, `with_fn`,
//! `reference`, `cuda`, `vjp`, ...), and `crate::lazy` defines the named methods of
//! [`crate::LazyTensor`]. The CPU executor runs each op through `with_fn`, which hands the
//! op's scalar function to a tile loop as a closure of its own type, so every op's loop is
//! compiled and vectorised separately. The generated tests (`tests/ops_tests.rs`,
//! `tests/grad_tests.rs`, `tests/cuda_codegen_tests.rs`, through `tests/common`) iterate over
//! [`UnaryOp::ALL`], [`BinaryOp::ALL`] and [`TernaryOp::ALL`] and sample each argument from
//! its `domain`: values against `reference` in f32 and f64 on both axes, gradients against
//! finite differences, and the CUDA expression compiled as host C++ and by nvcc.
//!
//! # Adding an op
//!
//! One row. For example `Log2`, a unary op, goes into `unary_table!`:
//!
//! ```text
//! /// Base-2 logarithm; `NaN` for negative `x`.
//! Log2 {
//!     method: log2,
//!     name: "Log2",
//!     domain: [Domain::Positive],
//!     apply: |x| x.ln::<FMA>() * T::from_f64(std::f64::consts::LOG2_E),
//!     reference: |x| x.log2(),
//!     cuda: "log2{f}({a})",
//!     vjp: |x, out, a| Some(bin(BinaryOp::Div, a, &mul(x, &k(std::f64::consts::LN_2)))),
//! },
//! ```
//!
//! and nothing else: `x_i.log2()`, `parse("Log2(x)")`, the CPU and CUDA backends, the
//! gradient, and the tests of its values, its derivative and its CUDA form follow. An op whose
//! scalar form needs a new vectorisable function adds it to [`crate::math`] first (and to
//! [`Real`]); one whose CUDA form needs a helper adds it to `cuda/lk_math.cuh`.
//!
//! Ops that are not component-wise live in [`Op`] itself (variables, constants, `Sum`, `Elem`,
//! `Extract`, `Concat`, `MatVecMult`): each backend handles them structurally. Composite
//! operations (`SqDist`, `Dot`, `Norm2`, ...) are constructors in [`super::expr`] that build
//! primitives.

use super::expr::Expr;
use super::table::{define_binary, define_ternary, define_unary};
use crate::error::{Result, dim_mismatch};
use crate::math::Real;

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

/// The rows of the unary op table, handed to the consumer macro `$m` (see [`super::table`]).
macro_rules! unary_table {
    ($m:ident) => {
        $m! {
            /// `-x`.
            Neg {
                method: _,
                name: "Neg",
                domain: [Domain::All],
                apply: |x| -x,
                reference: |x| -x,
                cuda: "(-({a}))",
                vjp: |x, out, a| Some(a.neg()),
            },
            /// `exp(x)`.
            Exp {
                method: exp,
                name: "Exp",
                domain: [Domain::All],
                apply: |x| x.exp::<FMA>(),
                reference: |x| x.exp(),
                cuda: "lk_exp({a})",
                // d exp(x) = exp(x): reuse the forward node, so the exponential is computed once.
                vjp: |x, out, a| Some(mul(a, out)),
            },
            /// Natural logarithm; `NaN` for negative `x`, `-inf` at 0.
            Log {
                method: log,
                name: "Log",
                domain: [Domain::Positive],
                apply: |x| x.ln::<FMA>(),
                reference: |x| x.ln(),
                cuda: "lk_log({a})",
                vjp: |x, out, a| Some(bin(BinaryOp::Div, a, x)),
            },
            /// Square root; `NaN` for negative `x`. Its derivative at 0 is taken as 0 (see
            /// `Rsqrt`): the gradient of `|x - y|` at `x = y` is the zero subgradient, not
            /// `NaN`, as in KeOps.
            Sqrt {
                method: sqrt,
                name: "Sqrt",
                domain: [Domain::Positive],
                apply: |x| x.sqrt(),
                reference: |x| x.sqrt(),
                cuda: "lk_sqrt({a})",
                vjp: |x, out, a| Some(mul(&mul(a, &Expr::unary(UnaryOp::Rsqrt, x)), &k(0.5))),
            },
            /// `1 / sqrt(x)`, and 0 at `x = 0` (KeOps' convention, which makes the gradient of a
            /// distance at zero distance 0 instead of `NaN`).
            Rsqrt {
                method: rsqrt,
                name: "Rsqrt",
                domain: [Domain::Positive],
                apply: |x| {
                    let r = T::ONE / x.sqrt();
                    if x == T::ZERO { T::ZERO } else { r }
                },
                reference: |x| if x == 0.0 { 0.0 } else { 1.0 / x.sqrt() },
                cuda: "lk_rsqrt({a})",
                // d x^(-1/2) = -x^(-3/2) / 2.
                vjp: |x, out, a| Some(mul(&mul(a, &Expr::unary(UnaryOp::Pow(3), out)), &k(-0.5))),
            },
            /// `x * x`.
            Square {
                method: square,
                name: "Square",
                domain: [Domain::All],
                apply: |x| x * x,
                reference: |x| x * x,
                cuda: "({a} * {a})",
                vjp: |x, out, a| Some(mul(&mul(a, x), &k(2.0))),
            },
            /// `1 / x`.
            Inv {
                method: inv,
                name: "Inv",
                domain: [Domain::NonZero],
                apply: |x| T::ONE / x,
                reference: |x| 1.0 / x,
                cuda: "lk_inv({a})",
                // d (1/x) = -(1/x)^2.
                vjp: |x, out, a| Some(mul(a, &Expr::unary(UnaryOp::Square, out)).neg()),
            },
            /// `|x|`; its derivative at 0 is 0.
            Abs {
                method: abs,
                name: "Abs",
                domain: [Domain::All],
                apply: |x| x.abs(),
                reference: |x| x.abs(),
                cuda: "lk_abs({a})",
                vjp: |x, out, a| Some(mul(a, &Expr::unary(UnaryOp::Sign, x))),
            },
            /// `-1`, `0` or `1` (and `NaN` for `NaN`); a zero derivative.
            Sign {
                method: sign,
                name: "Sign",
                domain: [Domain::All],
                apply: |x| {
                    let s = if x > T::ZERO { T::ONE } else { T::ZERO };
                    let s = if x < T::ZERO { -T::ONE } else { s };
                    // NaN compares false both ways: give it back explicitly (a select, so the
                    // loop still vectorises).
                    keep_nan(x, s)
                },
                reference: |x| if x.is_nan() { x } else if x > 0.0 { 1.0 } else if x < 0.0 { -1.0 } else { 0.0 },
                cuda: "lk_sign({a})",
                vjp: |x, out, a| None,
            },
            /// `0` for `x < 0`, `1` for `x >= 0` (and `NaN` for `NaN`); a zero derivative.
            Step {
                method: step,
                name: "Step",
                domain: [Domain::All],
                apply: |x| keep_nan(x, if x >= T::ZERO { T::ONE } else { T::ZERO }),
                reference: |x| if x.is_nan() { x } else if x >= 0.0 { 1.0 } else { 0.0 },
                cuda: "lk_step({a})",
                vjp: |x, out, a| None,
            },
            /// `max(x, 0)` (and `NaN` for `NaN`); its derivative at 0 is 0.
            Relu {
                method: relu,
                name: "ReLU",
                domain: [Domain::All],
                apply: |x| keep_nan(x, if x > T::ZERO { x } else { T::ZERO }),
                reference: |x| if x.is_nan() { x } else { x.max(0.0) },
                cuda: "lk_relu({a})",
                vjp: |x, out, a| Some(mul(a, &bin(BinaryOp::Gt, x, &k(0.0)))),
            },
            /// `sin(x)`.
            Sin {
                method: sin,
                name: "Sin",
                domain: [Domain::All],
                apply: |x| x.sin::<FMA>(),
                large: |x| x.sin_std(),
                reference: |x| x.sin(),
                cuda: "lk_sin({a})",
                vjp: |x, out, a| Some(mul(a, &Expr::unary(UnaryOp::Cos, x))),
            },
            /// `cos(x)`.
            Cos {
                method: cos,
                name: "Cos",
                domain: [Domain::All],
                apply: |x| x.cos::<FMA>(),
                large: |x| x.cos_std(),
                reference: |x| x.cos(),
                cuda: "lk_cos({a})",
                vjp: |x, out, a| Some(mul(a, &Expr::unary(UnaryOp::Sin, x)).neg()),
            },
            /// `x^n` for an integer `n`, by repeated multiplication (`x^-n = 1 / x^n`).
            Pow(n: i32 = 3) {
                method: powi,
                name: "Pow",
                domain: [Domain::NonZero],
                apply: |x| powi(x, n),
                reference: |x| x.powi(n),
                cuda: "lk_powi({a}, {n})",
                vjp: |x, out, a| match n {
                    0 => None,
                    1 => Some(a.clone()),
                    n => Some(mul(&mul(a, &Expr::unary(UnaryOp::Pow(n - 1), x)), &k(n as f64))),
                },
            },
            /// `atan(x)`, in `(-pi/2, pi/2)`.
            Atan {
                method: atan,
                name: "Atan",
                domain: [Domain::All],
                apply: |x| x.atan::<FMA>(),
                reference: |x| x.atan(),
                cuda: "atan{f}({a})",
                // d atan(x) = 1 / (1 + x^2).
                vjp: |x, out, a| Some(bin(BinaryOp::Div, a, &bin(BinaryOp::Add, &k(1.0), &sq(x)))),
            },
            /// `tan(x)`.
            Tan {
                method: tan,
                name: "Tan",
                domain: [Domain::Unit],
                apply: |x| x.tan::<FMA>(),
                large: |x| x.tan_std(),
                reference: |x| x.tan(),
                cuda: "tan{f}({a})",
                // d tan(x) = 1 + tan(x)^2.
                vjp: |x, out, a| Some(mul(a, &bin(BinaryOp::Add, &k(1.0), &sq(out)))),
            },
            /// `tanh(x)`.
            Tanh {
                method: tanh,
                name: "Tanh",
                domain: [Domain::All],
                apply: |x| x.tanh::<FMA>(),
                reference: |x| x.tanh(),
                cuda: "tanh{f}({a})",
                // d tanh(x) = 1 - tanh(x)^2.
                vjp: |x, out, a| Some(mul(a, &bin(BinaryOp::Sub, &k(1.0), &sq(out)))),
            },
            /// `asin(x)`, `NaN` outside `[-1, 1]`.
            Asin {
                method: asin,
                name: "Asin",
                domain: [Domain::Unit],
                apply: |x| x.asin::<FMA>(),
                reference: |x| x.asin(),
                cuda: "asin{f}({a})",
                // d asin(x) = 1 / sqrt(1 - x^2).
                vjp: |x, out, a| Some(mul(a, &Expr::unary(UnaryOp::Rsqrt, &one_minus_sq(x)))),
            },
            /// `acos(x)`, `NaN` outside `[-1, 1]`.
            Acos {
                method: acos,
                name: "Acos",
                domain: [Domain::Unit],
                apply: |x| x.acos::<FMA>(),
                reference: |x| x.acos(),
                cuda: "acos{f}({a})",
                // d acos(x) = -1 / sqrt(1 - x^2).
                vjp: |x, out, a| Some(mul(a, &Expr::unary(UnaryOp::Rsqrt, &one_minus_sq(x))).neg()),
            },
            /// `sinh(x)`.
            Sinh {
                method: sinh,
                name: "Sinh",
                domain: [Domain::All],
                apply: |x| x.sinh::<FMA>(),
                reference: |x| x.sinh(),
                cuda: "sinh{f}({a})",
                vjp: |x, out, a| Some(mul(a, &Expr::unary(UnaryOp::Cosh, x))),
            },
            /// `cosh(x)`.
            Cosh {
                method: cosh,
                name: "Cosh",
                domain: [Domain::All],
                apply: |x| x.cosh::<FMA>(),
                reference: |x| x.cosh(),
                cuda: "cosh{f}({a})",
                vjp: |x, out, a| Some(mul(a, &Expr::unary(UnaryOp::Sinh, x))),
            },
            /// `log(1 + x)`, accurate for small `x`.
            Log1p {
                method: log1p,
                name: "Log1p",
                domain: [Domain::Positive],
                apply: |x| x.ln_1p::<FMA>(),
                reference: |x| x.ln_1p(),
                cuda: "log1p{f}({a})",
                vjp: |x, out, a| Some(bin(BinaryOp::Div, a, &bin(BinaryOp::Add, &k(1.0), x))),
            },
            /// `exp(x) - 1`, accurate for small `x`.
            Expm1 {
                method: expm1,
                name: "Expm1",
                domain: [Domain::All],
                apply: |x| x.exp_m1::<FMA>(),
                reference: |x| x.exp_m1(),
                cuda: "expm1{f}({a})",
                vjp: |x, out, a| Some(mul(a, &bin(BinaryOp::Add, out, &k(1.0)))),
            },
            /// `x log(x)`, and 0 at `x = 0` (its limit); `NaN` for negative `x`.
            XLogX {
                method: xlogx,
                name: "XLogX",
                domain: [Domain::Positive],
                apply: |x| {
                    let r = x * x.ln::<FMA>();
                    if x == T::ZERO { T::ZERO } else { r }
                },
                reference: |x| if x == 0.0 { 0.0 } else { x * x.ln() },
                cuda: "({a} == {T}(0) ? {T}(0) : {a} * lk_log({a}))",
                // d (x log x) = log(x) + 1.
                vjp: |x, out, a| Some(mul(a, &bin(BinaryOp::Add, &Expr::unary(UnaryOp::Log, x), &k(1.0)))),
            },
            /// `sin(x) / x`, and 1 at `x = 0` (KeOps' unnormalised sinc).
            Sinc {
                method: sinc,
                name: "Sinc",
                domain: [Domain::All],
                apply: |x| {
                    let r = x.sin::<FMA>() / x;
                    if x == T::ZERO { T::ONE } else { r }
                },
                large: |x| x.sin_std() / x,
                reference: |x| if x == 0.0 { 1.0 } else { x.sin() / x },
                cuda: "({a} == {T}(0) ? {T}(1) : lk_sin({a}) / {a})",
                // d sinc(x) = (cos(x) - sinc(x)) / x, and 0 at x = 0 (IfElse picks its first
                // branch, -x / 3 = 0, only where -|x| >= 0).
                vjp: |x, out, a| {
                    let far = bin(BinaryOp::Div, &bin(BinaryOp::Sub, &Expr::unary(UnaryOp::Cos, x), out), x);
                    let near = mul(x, &k(-1.0 / 3.0));
                    let d = Expr::ternary(TernaryOp::IfElse, &Expr::unary(UnaryOp::Abs, x).neg(), &near, &far)
                        .expect("one dimension");
                    Some(mul(a, &d))
                },
            },
            /// The largest integer not above `x`; a zero derivative.
            Floor {
                method: floor,
                name: "Floor",
                domain: [Domain::All],
                apply: |x| x.floor(),
                reference: |x| x.floor(),
                cuda: "floor{f}({a})",
                vjp: |x, out, a| None,
            },
            /// The nearest integer, halves away from zero (C's `round`); a zero derivative.
            Round {
                method: round,
                name: "Round",
                domain: [Domain::All],
                apply: |x| x.round(),
                reference: |x| x.round(),
                cuda: "round{f}({a})",
                vjp: |x, out, a| None,
            },
            /// `sign(x) sqrt(|x|)`; its derivative `1 / (2 sqrt(|x|))` is taken as 0 at 0.
            SignedSqrt {
                method: signed_sqrt,
                name: "SignedSqrt",
                domain: [Domain::NonZero],
                apply: |x| {
                    let r = x.abs().sqrt();
                    if x < T::ZERO { -r } else { r }
                },
                reference: |x| if x < 0.0 { -(-x).sqrt() } else { x.sqrt() },
                cuda: "({a} < {T}(0) ? -lk_sqrt(-{a}) : lk_sqrt({a}))",
                vjp: |x, out, a| Some(mul(&mul(a, &Expr::unary(UnaryOp::Rsqrt, &Expr::unary(UnaryOp::Abs, x))), &k(0.5))),
            },
            /// `log(1 + exp(x))`, computed as `max(x, 0) + log(1 + exp(-|x|))` (no overflow).
            SoftPlus {
                method: softplus,
                name: "SoftPlus",
                domain: [Domain::All],
                apply: |x| {
                    let m = if x > T::ZERO { x } else { T::ZERO };
                    keep_nan(x, m + (-x.abs()).exp::<FMA>().ln_1p::<FMA>())
                },
                reference: |x| if x > 0.0 { x + (-x).exp().ln_1p() } else { x.exp().ln_1p() },
                cuda: "(lk_relu({a}) + log1p{f}(lk_exp(-lk_abs({a}))))",
                vjp: |x, out, a| Some(mul(a, &Expr::unary(UnaryOp::Sigmoid, x))),
            },
            /// The logistic function `1 / (1 + exp(-x))`.
            Sigmoid {
                method: sigmoid,
                name: "Sigmoid",
                domain: [Domain::All],
                apply: |x| T::ONE / (T::ONE + (-x).exp::<FMA>()),
                reference: |x| 1.0 / (1.0 + (-x).exp()),
                cuda: "({T}(1) / ({T}(1) + lk_exp(-({a}))))",
                // d s(x) = s(x) (1 - s(x)).
                vjp: |x, out, a| Some(mul(&mul(a, out), &bin(BinaryOp::Sub, &k(1.0), out))),
            },
            /// The Gauss error function `erf(x) = 2 / sqrt(pi) int_0^x exp(-t^2) dt` (not in
            /// KeOps; probit likelihoods need it).
            Erf {
                method: erf,
                name: "Erf",
                domain: [Domain::All],
                apply: |x| x.erf::<FMA>(),
                reference: |x| libm::erf(x),
                cuda: "erf{f}({a})",
                // d erf(x) = 2 / sqrt(pi) exp(-x^2).
                vjp: |x, out, a| Some(mul(&mul(a, &Expr::unary(UnaryOp::Exp, &sq(x).neg())), &k(std::f64::consts::FRAC_2_SQRT_PI))),
            },
        }
    };
}

/// The rows of the binary op table, handed to the consumer macro `$m`.
macro_rules! binary_table {
    ($m:ident) => {
        $m! {
            /// `a + b`.
            Add {
                method: _,
                name: "Add",
                infix: Some('+'),
                domain: [Domain::All, Domain::All],
                apply: |a, b| a + b,
                reference: |a, b| a + b,
                cuda: "({a} + {b})",
                vjp: |x, y, out, a| (Some(a.clone()), Some(a.clone())),
            },
            /// `a - b`.
            Sub {
                method: _,
                name: "Subtract",
                infix: Some('-'),
                domain: [Domain::All, Domain::All],
                apply: |a, b| a - b,
                reference: |a, b| a - b,
                cuda: "({a} - {b})",
                vjp: |x, y, out, a| (Some(a.clone()), Some(a.neg())),
            },
            /// `a * b`.
            Mul {
                method: _,
                name: "Mult",
                infix: Some('*'),
                domain: [Domain::All, Domain::All],
                apply: |a, b| a * b,
                reference: |a, b| a * b,
                cuda: "({a} * {b})",
                vjp: |x, y, out, a| (Some(mul(a, y)), Some(mul(a, x))),
            },
            /// `a / b`.
            Div {
                method: _,
                name: "Divide",
                infix: Some('/'),
                domain: [Domain::All, Domain::NonZero],
                apply: |a, b| a / b,
                reference: |a, b| a / b,
                cuda: "({a} / {b})",
                // d(x/y) = dx / y - (x/y) dy / y.
                vjp: |x, y, out, a| {
                    let t = bin(BinaryOp::Div, a, y);
                    let dy = mul(&t, out).neg();
                    (Some(t), Some(dy))
                },
            },
            /// `a^b = exp(b * log(a))` (KeOps' definition): `NaN` for negative `a`. Its
            /// derivative in the exponent, `out * log(a)`, is defined for `a > 0`.
            Powf {
                method: powf,
                name: "Powf",
                infix: None,
                domain: [Domain::Positive, Domain::All],
                apply: |a, b| (b * a.ln::<FMA>()).exp::<FMA>(),
                reference: |a, b| (b * a.ln()).exp(),
                cuda: "lk_powf({a}, {b})",
                // x^y = exp(y log x): d/dx = y x^(y-1), d/dy = x^y log x.
                vjp: |x, y, out, a| {
                    let ym1 = bin(BinaryOp::Sub, y, &k(1.0));
                    let dx = mul(&mul(a, y), &bin(BinaryOp::Powf, x, &ym1));
                    let dy = mul(&mul(a, out), &Expr::unary(UnaryOp::Log, x));
                    (Some(dx), Some(dy))
                },
            },
            /// Smallest of the two, `NaN` if either is `NaN`; the adjoint goes to the argument
            /// selected (the first on ties).
            Min {
                method: minimum,
                name: "Min",
                infix: None,
                domain: [Domain::All, Domain::All],
                // A NaN `a` is kept by the first select (comparisons with NaN are false), a NaN
                // `b` by the second: NaN propagates, as in `torch.minimum`.
                apply: |a, b| keep_nan(b, if b < a { b } else { a }),
                reference: |a, b| if a.is_nan() || b.is_nan() { f64::NAN } else { a.min(b) },
                cuda: "lk_min({a}, {b})",
                vjp: |x, y, out, a| (
                    Some(mul(a, &bin(BinaryOp::Le, x, y))),
                    Some(mul(a, &bin(BinaryOp::Gt, x, y))),
                ),
            },
            /// Largest of the two, `NaN` if either is `NaN`; the adjoint goes to the argument
            /// selected (the first on ties).
            Max {
                method: maximum,
                name: "Max",
                infix: None,
                domain: [Domain::All, Domain::All],
                apply: |a, b| keep_nan(b, if b > a { b } else { a }),
                reference: |a, b| if a.is_nan() || b.is_nan() { f64::NAN } else { a.max(b) },
                cuda: "lk_max({a}, {b})",
                vjp: |x, y, out, a| (
                    Some(mul(a, &bin(BinaryOp::Ge, x, y))),
                    Some(mul(a, &bin(BinaryOp::Lt, x, y))),
                ),
            },
            /// `1` if `a < b`, else `0`; a zero derivative.
            Lt {
                method: lt,
                name: "Lt",
                infix: None,
                domain: [Domain::All, Domain::All],
                apply: |a, b| bool01(a < b),
                reference: |a, b| f64::from(u8::from(a < b)),
                cuda: "lk_lt({a}, {b})",
                vjp: |x, y, out, a| (None, None),
            },
            /// `1` if `a <= b`, else `0`; a zero derivative.
            Le {
                method: le,
                name: "Le",
                infix: None,
                domain: [Domain::All, Domain::All],
                apply: |a, b| bool01(a <= b),
                reference: |a, b| f64::from(u8::from(a <= b)),
                cuda: "lk_le({a}, {b})",
                vjp: |x, y, out, a| (None, None),
            },
            /// `1` if `a > b`, else `0`; a zero derivative.
            Gt {
                method: gt,
                name: "Gt",
                infix: None,
                domain: [Domain::All, Domain::All],
                apply: |a, b| bool01(a > b),
                reference: |a, b| f64::from(u8::from(a > b)),
                cuda: "lk_gt({a}, {b})",
                vjp: |x, y, out, a| (None, None),
            },
            /// `1` if `a >= b`, else `0`; a zero derivative.
            Ge {
                method: ge,
                name: "Ge",
                infix: None,
                domain: [Domain::All, Domain::All],
                apply: |a, b| bool01(a >= b),
                reference: |a, b| f64::from(u8::from(a >= b)),
                cuda: "lk_ge({a}, {b})",
                vjp: |x, y, out, a| (None, None),
            },
            /// `1` if `a == b`, else `0`; a zero derivative.
            Eq {
                method: eq,
                name: "Eq",
                infix: None,
                domain: [Domain::All, Domain::All],
                apply: |a, b| bool01(a == b),
                reference: |a, b| f64::from(u8::from(a == b)),
                cuda: "lk_eq({a}, {b})",
                vjp: |x, y, out, a| (None, None),
            },
            /// `1` if `a != b`, else `0` (`1` when either is `NaN`); a zero derivative.
            Ne {
                method: ne,
                name: "Ne",
                infix: None,
                domain: [Domain::All, Domain::All],
                apply: |a, b| bool01(a != b),
                reference: |a, b| f64::from(u8::from(a != b)),
                cuda: "lk_ne({a}, {b})",
                vjp: |x, y, out, a| (None, None),
            },
            /// `atan2(a, b)`: the angle of the point `(b, a)`, in `[-pi, pi]`.
            Atan2 {
                method: atan2,
                name: "Atan2",
                infix: None,
                domain: [Domain::NonZero, Domain::NonZero],
                apply: |a, b| a.atan2::<FMA>(b),
                reference: |a, b| a.atan2(b),
                cuda: "atan2{f}({a}, {b})",
                // d atan2(y, x) = (x dy - y dx) / (x^2 + y^2).
                vjp: |x, y, out, a| {
                    let r2 = bin(BinaryOp::Add, &sq(x), &sq(y));
                    let t = bin(BinaryOp::Div, a, &r2);
                    (Some(mul(&t, y)), Some(mul(&t, x).neg()))
                },
            },
        }
    };
}

/// The rows of the ternary op table, handed to the consumer macro `$m`.
macro_rules! ternary_table {
    ($m:ident) => {
        $m! {
            /// `Clamp(x, lo, hi) = min(max(x, lo), hi)`; `NaN` stays `NaN`. The adjoint goes to
            /// whichever of the three it returns (`x` on the boundaries).
            Clamp {
                method: clamp(lo, hi),
                name: "Clamp",
                domain: [Domain::All, Domain::All, Domain::All],
                apply: |x, lo, hi| {
                    let l = if x < lo { lo } else { x };
                    let h = if l > hi { hi } else { l };
                    keep_nan(x, h)
                },
                reference: |x, lo, hi| if x.is_nan() { x } else if x < lo { if lo > hi { hi } else { lo } } else if x > hi { hi } else { x },
                cuda: "lk_clamp({a}, {b}, {c})",
                vjp: |x, lo, hi, out, a| {
                    let low = bin(BinaryOp::Max, x, lo);
                    let takes_hi = bin(BinaryOp::Gt, &low, hi);
                    let takes_lo = mul(&bin(BinaryOp::Lt, x, lo), &bin(BinaryOp::Le, lo, hi));
                    let takes_x = mul(&bin(BinaryOp::Ge, x, lo), &bin(BinaryOp::Le, x, hi));
                    [Some(mul(a, &takes_x)), Some(mul(a, &takes_lo)), Some(mul(a, &takes_hi))]
                },
            },
            /// `IfElse(c, a, b) = a if c >= 0 else b` (KeOps' definition; a `NaN` condition
            /// picks `b`). The adjoint goes to the branch taken; `c` gets none.
            IfElse {
                method: if_else(if_true, if_false),
                name: "IfElse",
                domain: [Domain::NonZero, Domain::All, Domain::All],
                apply: |c, a, b| if c >= T::ZERO { a } else { b },
                reference: |c, a, b| if c >= 0.0 { a } else { b },
                cuda: "lk_ifelse({a}, {b}, {c})",
                vjp: |c, p, q, out, a| {
                    let takes_p = bin(BinaryOp::Ge, c, &k(0.0));
                    let takes_q = bin(BinaryOp::Sub, &k(1.0), &takes_p);
                    [None, Some(mul(a, &takes_p)), Some(mul(a, &takes_q))]
                },
            },
            /// `Mod(x, n, d) = x - n floor((x - d) / n)`: `x` modulo `n`, in `[d, d + n)` for
            /// `n > 0` (KeOps' definition). The offset `d` has a zero derivative (almost
            /// everywhere).
            Mod {
                method: modulo(n, offset),
                name: "Mod",
                domain: [Domain::All, Domain::Positive, Domain::All],
                apply: |x, n, d| x - n * ((x - d) / n).floor(),
                reference: |x, n, d| x - n * ((x - d) / n).floor(),
                cuda: "({a} - {b} * floor{f}(({a} - {c}) / {b}))",
                vjp: |x, n, d, out, a| {
                    let q = Expr::unary(UnaryOp::Floor, &bin(BinaryOp::Div, &bin(BinaryOp::Sub, x, d), n));
                    [Some(a.clone()), Some(mul(a, &q).neg()), None]
                },
            },
        }
    };
}

pub(crate) use {binary_table, ternary_table, unary_table};

unary_table!(define_unary);
binary_table!(define_binary);
ternary_table!(define_ternary);

/// Where the tests sample an op's argument: the op is defined, smooth enough for finite
/// differences almost everywhere, and away from its poles.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Domain {
    /// Any value (the tests use `[-2, 2]`).
    All,
    /// Positive values (`[0.1, 2.9]`).
    Positive,
    /// Inside `(-1, 1)` (`[-0.9, 0.9]`).
    Unit,
    /// Away from 0, either sign (`0.2 <= |x| <= 2`).
    NonZero,
}

impl Domain {
    /// The range of magnitudes the tests draw from: `(lo, hi, both_signs)`.
    pub fn range(self) -> (f64, f64, bool) {
        match self {
            Domain::All => (-2.0, 2.0, false),
            Domain::Positive => (0.1, 2.9, false),
            Domain::Unit => (-0.9, 0.9, false),
            Domain::NonZero => (0.2, 2.0, true),
        }
    }
}

/// A loop over a tile, generic over the unary op's scalar function (see [`UnaryOp::with_fn`]).
pub trait UnaryKernel<T> {
    /// What the loop returns.
    type Output;
    /// Runs the loop with `f`.
    fn run<F: Fn(T) -> T + Copy>(self, f: F) -> Self::Output;
}

/// A loop over a tile, generic over the binary op's scalar function.
pub trait BinaryKernel<T> {
    /// What the loop returns.
    type Output;
    /// Runs the loop with `f`.
    fn run<F: Fn(T, T) -> T + Copy>(self, f: F) -> Self::Output;
}

/// A loop over a tile, generic over the ternary op's scalar function.
pub trait TernaryKernel<T> {
    /// What the loop returns.
    type Output;
    /// Runs the loop with `f`.
    fn run<F: Fn(T, T, T) -> T + Copy>(self, f: F) -> Self::Output;
}

/// The "loop" of one value: `apply`.
struct ApplyOne<T>(T);
impl<T> UnaryKernel<T> for ApplyOne<T> {
    type Output = T;
    #[inline(always)]
    fn run<F: Fn(T) -> T + Copy>(self, f: F) -> T {
        f(self.0)
    }
}

struct ApplyTwo<T>(T, T);
impl<T> BinaryKernel<T> for ApplyTwo<T> {
    type Output = T;
    #[inline(always)]
    fn run<F: Fn(T, T) -> T + Copy>(self, f: F) -> T {
        f(self.0, self.1)
    }
}

struct ApplyThree<T>(T, T, T);
impl<T> TernaryKernel<T> for ApplyThree<T> {
    type Output = T;
    #[inline(always)]
    fn run<F: Fn(T, T, T) -> T + Copy>(self, f: F) -> T {
        f(self.0, self.1, self.2)
    }
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

/// `x` where `x` is NaN, else `y`: a select that vectorises.
#[inline(always)]
fn keep_nan<T: Real>(x: T, y: T) -> T {
    #[allow(clippy::eq_op)]
    let nan = x != x;
    if nan { x } else { y }
}

/// 1 or 0.
#[inline(always)]
fn bool01<T: Real>(c: bool) -> T {
    if c { T::ONE } else { T::ZERO }
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
    if n < 0 { T::ONE / acc } else { acc }
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
// Builders for the derivatives of the table. Each rule returns the adjoint of each argument at
// the result's dimension or 1 (the sweep in `super::grad` sums the components back onto
// arguments that were broadcast).
// ---------------------------------------------------------------------------------------------

fn k(c: f64) -> Expr {
    Expr::constant(c).expect("derivative constants are finite")
}

fn mul(a: &Expr, b: &Expr) -> Expr {
    Expr::binary(BinaryOp::Mul, a, b).expect("derivative factors broadcast")
}

fn bin(op: BinaryOp, a: &Expr, b: &Expr) -> Expr {
    Expr::binary(op, a, b).expect("derivative terms broadcast")
}

fn sq(x: &Expr) -> Expr {
    Expr::unary(UnaryOp::Square, x)
}

/// `1 - x^2`.
fn one_minus_sq(x: &Expr) -> Expr {
    bin(BinaryOp::Sub, &k(1.0), &sq(x))
}
