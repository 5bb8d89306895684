//! The pure symbolic layer: formulas over `i`-variables, `j`-variables and parameters.
//!
//! Nothing here knows about tensors or devices. A formula is an [`Expr`] DAG of [`Op`] nodes;
//! [`parse()`] reads the string syntax, [`simplify()`] folds constants, [`grad()`] differentiates
//! (vector-Jacobian products as new formulas), and the canonical printed
//! form (`Display`) is the cache key of compiled kernels.

pub mod expr;
pub mod grad;
pub mod ops;
pub mod parse;
pub mod simplify;
mod table;

pub use expr::Expr;
pub use grad::grad;
pub use ops::{BinaryOp, Domain, Op, TernaryOp, UnaryOp, Var, VarCat};
pub use parse::{ParseError, parse};
pub use simplify::simplify;
