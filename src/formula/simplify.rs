//! Algebraic simplification: constant folding and neutral elements.
//!
//! Every rewrite is a small named rule with its identity in a comment. Each rule replaces a
//! node by a strictly smaller one (fewer nodes), so the bottom-up driver terminates. Rules
//! never change the value of a formula for finite inputs; rules that would change it for
//! special values (`x * 0` is NaN for infinite `x`) are deliberately absent. Common
//! subexpressions need no rule: the backends hash-cons the DAG when they compile it.

use std::collections::HashMap;

use super::expr::Expr;
use super::ops::{BinaryOp, Op, UnaryOp};

fn const_of(e: &Expr) -> Option<f64> {
    match e.op() {
        Op::Const(c) => Some(*c),
        _ => None,
    }
}

/// `op(c1, c2, ..)` on constants is the constant it evaluates to (when finite).
fn fold_constants(e: &Expr) -> Option<Expr> {
    let cs: Option<Vec<f64>> = e.args().iter().map(const_of).collect();
    let cs = cs?;
    let v = match (*e.op(), cs.as_slice()) {
        (Op::Unary(u), [a]) => u.apply::<f64, false>(*a),
        (Op::Binary(b), [a, c]) => b.apply::<f64, false>(*a, *c),
        (Op::Ternary(t), [a, b, c]) => t.apply::<f64, false>(*a, *b, *c),
        (Op::Sum, [a]) => *a,
        _ => return None,
    };
    if v.is_finite() && !cs.is_empty() {
        Expr::constant(v).ok()
    } else {
        None
    }
}

fn is(c: f64, v: f64) -> bool {
    c == v
}

/// Neutral elements: `x + 0 = 0 + x = x - 0 = x`, `x * 1 = 1 * x = x / 1 = x`, `--x = x`,
/// and `Sum(x) = x` for a 1-component `x`. Only applied when `x` already has the result's
/// dimension (a neutral scalar must not be what broadcasts `x`).
fn neutral(e: &Expr) -> Option<Expr> {
    let a = e.args();
    let keep = |x: &Expr| (x.dim() == e.dim()).then(|| x.clone());
    match *e.op() {
        Op::Binary(BinaryOp::Add) => match (const_of(&a[0]), const_of(&a[1])) {
            (_, Some(c)) if is(c, 0.0) => keep(&a[0]),
            (Some(c), _) if is(c, 0.0) => keep(&a[1]),
            _ => None,
        },
        Op::Binary(BinaryOp::Sub) if const_of(&a[1]) == Some(0.0) => keep(&a[0]),
        Op::Binary(BinaryOp::Mul) => match (const_of(&a[0]), const_of(&a[1])) {
            (_, Some(c)) if is(c, 1.0) => keep(&a[0]),
            (Some(c), _) if is(c, 1.0) => keep(&a[1]),
            _ => None,
        },
        Op::Binary(BinaryOp::Div) if const_of(&a[1]) == Some(1.0) => keep(&a[0]),
        Op::Unary(UnaryOp::Neg) => match a[0].op() {
            Op::Unary(UnaryOp::Neg) => Some(a[0].args()[0].clone()),
            _ => None,
        },
        Op::Sum if a[0].dim() == 1 => Some(a[0].clone()),
        _ => None,
    }
}

/// Applies every rule bottom-up until none applies.
///
/// ```
/// use lazy_kernels::formula::{parse, simplify};
/// let f = parse("Vi(0,1) * (2.0 - 1.0) + 0.0", &[])?;
/// assert_eq!(simplify(&f).to_string(), "Vi(0,1)");
/// # Ok::<(), lazy_kernels::Error>(())
/// ```
pub fn simplify(e: &Expr) -> Expr {
    let mut memo: HashMap<Expr, Expr> = HashMap::new();
    for n in e.topo_order() {
        let args: Vec<Expr> = n.args().iter().map(|a| memo[a].clone()).collect();
        let mut cur = if args == n.args() {
            n.clone()
        } else {
            Expr::new(*n.op(), args).expect("simplified arguments keep their dimensions")
        };
        while let Some(next) = fold_constants(&cur).or_else(|| neutral(&cur)) {
            cur = next;
        }
        memo.insert(n, cur);
    }
    memo[e].clone()
}
