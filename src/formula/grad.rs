//! Symbolic reverse-mode differentiation: the vector-Jacobian product of a formula as a new
//! formula.
//!
//! `grad(F, v, eta)` is the formula `(dF/dv)^T eta`: for a formula `F` of `E` components and an
//! `E`-component "adjoint" `eta` (itself a formula, typically a variable bound to the incoming
//! gradient), it has `v.dim` components. KeOps calls this `Grad(F, v, eta)`.
//!
//! One backward sweep over the DAG (in reverse topological order) serves every requested
//! variable, and each op's rule ([`super::ops`]) builds its terms from the forward nodes, so
//! the result shares subexpressions with `F`: the gradient of a Gaussian reuses its `Exp` node,
//! and the backends, which hash-cons the DAG, compute it once per pair.
//!
//! Adjoints may be carried at one component while their node has several: that means "the same
//! value in every component", which keeps the adjoint of `Sum(..)` scalar instead of copying it
//! `n` times. It is widened only where components differ (`Extract`, `Elem`, `Concat`,
//! `MatVecMult`, and the final gradient of a variable).

use std::collections::HashMap;

use super::expr::Expr;
use super::ops::{BinaryOp, Op, Var};
use super::simplify::simplify;
use crate::error::{Result, dim_mismatch};

/// `n` zero components.
pub(crate) fn zeros(n: usize) -> Expr {
    let z = Expr::constant(0.0).expect("0 is finite");
    repeat(&z, n)
}

/// `n` copies of the 1-component `e`, side by side (`e` itself for `n = 1`).
fn repeat(e: &Expr, n: usize) -> Expr {
    debug_assert_eq!(e.dim(), 1);
    let mut out = e.clone();
    for _ in 1..n {
        out = Expr::new(Op::Concat, vec![out, e.clone()]).expect("Concat accepts any dims");
    }
    out
}

/// `a` widened to `n` components (`a` has 1 or `n`).
fn widen(a: &Expr, n: usize) -> Expr {
    if a.dim() == n {
        a.clone()
    } else {
        repeat(a, n)
    }
}

/// `parts` side by side, skipping empty ones.
fn concat(parts: Vec<Expr>) -> Expr {
    let mut it = parts.into_iter();
    let first = it.next().expect("at least one part");
    it.fold(first, |acc, p| {
        Expr::new(Op::Concat, vec![acc, p]).expect("Concat accepts any dims")
    })
}

/// `a` placed at components `start .. start + a.dim()` of an `n`-component zero vector.
fn place(a: &Expr, start: usize, n: usize) -> Expr {
    let mut parts = Vec::with_capacity(3);
    if start > 0 {
        parts.push(zeros(start));
    }
    parts.push(a.clone());
    let end = start + a.dim();
    if end < n {
        parts.push(zeros(n - end));
    }
    concat(parts)
}

fn extract(a: &Expr, start: usize, len: usize) -> Expr {
    if start == 0 && len == a.dim() {
        return a.clone();
    }
    Expr::new(Op::Extract { start, len }, vec![a.clone()]).expect("in range")
}

fn mul(a: &Expr, b: &Expr) -> Expr {
    Expr::binary(BinaryOp::Mul, a, b).expect("broadcasting factors")
}

/// The adjoint contribution `c` of a component-wise op with an `out_dim`-component result,
/// brought to an argument of `arg_dim` components: a broadcast argument (1 component) receives
/// the sum over the result's components.
fn unbroadcast(c: Expr, out_dim: usize, arg_dim: usize) -> Expr {
    if arg_dim == out_dim || out_dim == 1 {
        c
    } else if c.dim() == 1 {
        // The same value in each of `out_dim` components.
        mul(&c, &Expr::constant(out_dim as f64).expect("finite"))
    } else {
        c.sum()
    }
}

/// The vector-Jacobian products `(dF/dv)^T eta` of `f` for each variable of `wrt`, from one
/// backward sweep; `None` where the gradient is identically zero (the variable does not occur,
/// or only through ops with a zero derivative).
///
/// `eta` must have `f.dim()` components (or 1: the same adjoint for every component). Each
/// gradient has its variable's dimension and is simplified.
///
/// ```
/// use lazy_kernels::formula::{grad, parse, Var, VarCat};
/// // d/dx exp(-|x - y|^2) . eta = -2 (x - y) exp(-|x - y|^2) eta
/// let f = parse("Exp(-SqDist(Vi(0,2), Vj(1,2)))", &[])?;
/// let eta = parse("Vi(2,1)", &[])?;
/// let x = Var { cat: VarCat::I, pos: 0, dim: 2 };
/// let g = grad(&f, &[x], &eta)?;
/// let g = g[0].as_ref().expect("f depends on x");
/// assert_eq!(g.dim(), 2);
/// // The exponential appears once: the gradient reuses the forward node.
/// assert_eq!(g.to_string().matches("Exp").count(), 1);
/// # Ok::<(), lazy_kernels::Error>(())
/// ```
pub fn grad(f: &Expr, wrt: &[Var], eta: &Expr) -> Result<Vec<Option<Expr>>> {
    if eta.dim() != f.dim() && eta.dim() != 1 {
        return Err(dim_mismatch(
            "Grad",
            format!(
                "the adjoint has {} components; the formula has {}",
                eta.dim(),
                f.dim()
            ),
        ));
    }
    let order = f.topo_order();
    let mut adj: HashMap<Expr, Expr> = HashMap::new();
    adj.insert(f.clone(), eta.clone());
    let add = |adj: &mut HashMap<Expr, Expr>, node: &Expr, c: Expr| {
        let new = match adj.remove(node) {
            Some(prev) => {
                Expr::binary(BinaryOp::Add, &prev, &c).expect("adjoints have compatible dims")
            }
            None => c,
        };
        adj.insert(node.clone(), new);
    };
    for n in order.iter().rev() {
        let Some(a) = adj.get(n).cloned() else {
            continue;
        };
        let args = n.args();
        match *n.op() {
            Op::Var(_) | Op::Const(_) => {}
            Op::Unary(u) => {
                if let Some(c) = u.vjp(&args[0], n, &a) {
                    add(&mut adj, &args[0], c);
                }
            }
            Op::Binary(b) => {
                let (cx, cy) = b.vjp(&args[0], &args[1], n, &a);
                for (arg, c) in args.iter().zip([cx, cy]) {
                    if let Some(c) = c {
                        add(&mut adj, arg, unbroadcast(c, n.dim(), arg.dim()));
                    }
                }
            }
            Op::Ternary(t) => {
                let cs = t.vjp([&args[0], &args[1], &args[2]], n, &a);
                for (arg, c) in args.iter().zip(cs) {
                    if let Some(c) = c {
                        add(&mut adj, arg, unbroadcast(c, n.dim(), arg.dim()));
                    }
                }
            }
            // Every component of the argument receives the (scalar) adjoint.
            Op::Sum => add(&mut adj, &args[0], a),
            Op::Elem(m) => add(&mut adj, &args[0], place(&a, m, args[0].dim())),
            Op::Extract { start, len } => add(
                &mut adj,
                &args[0],
                place(&widen(&a, len), start, args[0].dim()),
            ),
            Op::Concat => {
                let d0 = args[0].dim();
                if a.dim() == 1 {
                    add(&mut adj, &args[0], a.clone());
                    add(&mut adj, &args[1], a);
                } else {
                    add(&mut adj, &args[0], extract(&a, 0, d0));
                    add(&mut adj, &args[1], extract(&a, d0, args[1].dim()));
                }
            }
            Op::MatVecMult => {
                // out_r = sum_c A[r m + c] v_c: dA[r m + c] = a_r v_c, dv_c = sum_r a_r A[r m + c].
                let (mat, v) = (&args[0], &args[1]);
                let (rows, m) = (n.dim(), v.dim());
                let a = widen(&a, rows);
                let a_r = |r: usize| extract(&a, r, 1);
                let d_mat = concat((0..rows).map(|r| mul(&a_r(r), v)).collect());
                let d_v = (0..rows)
                    .map(|r| mul(&a_r(r), &extract(mat, r * m, m)))
                    .reduce(|s, t| Expr::binary(BinaryOp::Add, &s, &t).expect("same dims"))
                    .expect("at least one row");
                add(&mut adj, mat, d_mat);
                add(&mut adj, v, d_v);
            }
        }
        // This node's adjoint is complete once its users are done; free it unless it is a
        // requested variable.
        if !matches!(n.op(), Op::Var(_)) {
            adj.remove(n);
        }
    }
    Ok(wrt
        .iter()
        .map(|v| {
            let node = Expr::var(*v).ok()?;
            let g = adj.get(&node)?;
            Some(simplify(&widen(g, v.dim)))
        })
        .collect())
}

/// Splits a product into the factors that do not depend on variables of category `reduced`
/// and those that do: `e = outer * inner` (component-wise, with broadcasting). A reduction over
/// `reduced` of `e` is then `outer * (reduction of inner)`, by linearity, which takes the
/// `outer` factors out of the per-pair loop.
///
/// Returns `None` when there is nothing to take out (no outer factor, or no inner one). The
/// factors are those of a tree of `Mul`, `Neg` and divisions by outer values.
pub(crate) fn factor_out(e: &Expr, reduced: super::VarCat) -> Option<(Expr, Expr)> {
    let depends = |x: &Expr| x.depends_on(reduced);
    let (factors, negate) = e.product_factors();
    let (inner, outer): (Vec<Expr>, Vec<Expr>) = factors.into_iter().partition(depends);
    if inner.is_empty() || (outer.is_empty() && !negate) {
        return None;
    }
    let product = |fs: Vec<Expr>| fs.into_iter().reduce(|a, b| mul(&a, &b));
    let mut outer = product(outer).unwrap_or_else(|| Expr::constant(1.0).expect("finite"));
    if negate {
        outer = outer.neg();
    }
    let inner = product(inner).expect("not empty");
    Some((simplify(&outer), inner))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formula::{VarCat, parse};

    fn v(cat: VarCat, pos: usize, dim: usize) -> Var {
        Var { cat, pos, dim }
    }

    #[test]
    fn gaussian_gradient_reuses_the_exponential() {
        let f = parse("Exp(-SqDist(Vi(0,3), Vj(1,3)) * Pm(2,1)) * Vj(3,1)", &[]).unwrap();
        let eta = parse("Vi(4,1)", &[]).unwrap();
        let wrt = [v(VarCat::I, 0, 3), v(VarCat::J, 1, 3), v(VarCat::P, 2, 1)];
        let gs = grad(&f, &wrt, &eta).unwrap();
        let all = concat(gs.into_iter().map(Option::unwrap).collect());
        assert_eq!(all.dim(), 7);
        let exps = all
            .topo_order()
            .iter()
            .filter(|n| matches!(n.op(), Op::Unary(crate::formula::UnaryOp::Exp)))
            .count();
        assert_eq!(exps, 1, "{all}");
    }

    #[test]
    fn zero_derivatives_are_absent() {
        let f = parse("Step(Vi(0,1) - Vj(1,1)) + Vj(2,1)", &[]).unwrap();
        let eta = parse("Vi(3,1)", &[]).unwrap();
        let gs = grad(
            &f,
            &[v(VarCat::I, 0, 1), v(VarCat::J, 2, 1), v(VarCat::P, 9, 1)],
            &eta,
        )
        .unwrap();
        assert!(gs[0].is_none());
        assert_eq!(gs[1].as_ref().unwrap().to_string(), "Vi(3,1)");
        assert!(gs[2].is_none());
    }

    #[test]
    fn broadcast_arguments_receive_summed_adjoints() {
        // d/dp Sum(p + x) with p scalar and x of 3 components: 3 * eta.
        let f = parse("Sum(Pm(0,1) + Vi(1,3))", &[]).unwrap();
        let eta = parse("Vi(2,1)", &[]).unwrap();
        let gs = grad(&f, &[v(VarCat::P, 0, 1), v(VarCat::I, 1, 3)], &eta).unwrap();
        assert_eq!(gs[0].as_ref().unwrap().to_string(), "Vi(2,1) * 3.0");
        assert_eq!(gs[1].as_ref().unwrap().dim(), 3);
    }

    #[test]
    fn outer_factors_come_out_of_products() {
        let f = parse(
            "-(Vi(0,1) * Vj(1,1) * Exp(Vi(2,3) - Vj(3,3)) / (2.0 * Pm(4,1))) * 3.0",
            &[],
        )
        .unwrap();
        let (outer, inner) = factor_out(&f, VarCat::J).unwrap();
        assert_eq!(inner.to_string(), "Vj(1,1) * Exp(Vi(2,3) - Vj(3,3))");
        assert!(!outer.depends_on(VarCat::J));
        assert_eq!(outer.dim(), 1);
        // Nothing to take out.
        assert!(factor_out(&parse("Exp(Vj(1,1) * Vi(0,1))", &[]).unwrap(), VarCat::J).is_none());
    }

    #[test]
    fn adjoint_dimension_is_checked() {
        let f = parse("Vi(0,3) * Vj(1,3)", &[]).unwrap();
        let eta = parse("Vi(2,2)", &[]).unwrap();
        assert!(grad(&f, &[v(VarCat::I, 0, 3)], &eta).is_err());
    }
}
