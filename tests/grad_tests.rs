//! Gradients through Candle's `backward()` on the reductions, in f64, against two independent
//! references:
//!
//! * central finite differences of the scalar loss `L = sum(out * W)` (our forward pass, `W` a
//!   fixed random tensor of `out`'s shape, entries where `out` is infinite left out), and
//! * Candle's own autodiff of the same loss computed densely: the formula evaluated on
//!   `(M, N, dim)` tensors by `common::dense_eval` (Candle ops, so differentiable when the
//!   inputs are `Var`s) and reduced with Candle ops.
//!
//! Inputs are kept away from the non-differentiable points of `Abs`, `ReLU`, `Min`, `Clamp`, ...
//! (random values: a kink within the finite-difference step would make the references
//! disagree with each other, which the checks would show).

mod common;

use candle_core::{DType, Device, Result, Tensor, Var};
use common::*;
use lazy_kernels::formula::{Expr, VarCat, parse};
use lazy_kernels::{Axis, LazyTensor, ReductionKind};

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// Relative finite-difference step: `h = STEP * max(1, |x|)`.
const STEP: f64 = 1e-6;

/// Tolerances of one gradient check.
#[derive(Clone, Copy, Debug)]
struct Tol {
    /// Against finite differences: `|g - fd| <= fd_rtol |fd| + fd_atol + noise`, where `noise`
    /// bounds the rounding error of the difference quotient (`FD_NOISE * eps * scale / h`,
    /// `scale = sum |out| |W|`).
    fd_rtol: f64,
    fd_atol: f64,
    /// Against the dense autodiff: `|g - d| <= dense_rtol |d| + dense_atol * max(1, max |d|)`
    /// (the maximum over the input's gradient, since gradients are sums with cancellations).
    dense_rtol: f64,
    dense_atol: f64,
    /// Whether to compare with finite differences (too slow for large inputs).
    fd: bool,
}

const TOL: Tol = Tol {
    fd_rtol: 1e-6,
    fd_atol: 1e-8,
    dense_rtol: 1e-10,
    dense_atol: 1e-12,
    fd: true,
};

/// Rounding error of one forward loss, in units of `eps * sum |out| |W|`.
const FD_NOISE: f64 = 8.0;

type Forward<'a> = &'a dyn Fn(&[Tensor]) -> Result<Tensor>;

/// `sum(out * w)` over the finite entries of `out` (the `+inf` slots of `KMin` with `k > N`
/// are left out, and so receive a zero adjoint).
fn loss(out: &Tensor, w: &Tensor) -> Result<Tensor> {
    let finite = out.abs()?.lt(f64::INFINITY)?;
    let kept = finite.where_cond(out, &out.zeros_like()?)?;
    (kept * w)?.sum_all()
}

fn loss_value(out: &Tensor, w: &Tensor) -> f64 {
    loss(out, w)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// The fixed random weights `W` of the loss for an output of shape `dims`.
fn weights(dims: &[usize]) -> Tensor {
    Rng(0x9e37_79b9_7f4a_7c15).tensor(dims, -1.0, 1.0)
}

/// `sum |out| |w|` over the finite entries: the scale of the rounding errors of the loss.
fn loss_scale(out: &Tensor, w: &Tensor) -> f64 {
    flat(out)
        .iter()
        .zip(flat(w))
        .filter(|(o, _)| o.is_finite())
        .map(|(o, w)| (o * w).abs())
        .sum()
}

/// Central finite differences of `loss(forward(values), w)` with respect to `values[k]`, and
/// the smallest step used.
fn finite_differences(
    forward: Forward,
    values: &[Tensor],
    k: usize,
    w: &Tensor,
) -> (Vec<f64>, f64) {
    let base = flat(&values[k]);
    let shape = values[k].dims().to_vec();
    let mut min_h = f64::INFINITY;
    let at = |e: usize, delta: f64| -> (f64, f64) {
        let mut v = base.clone();
        v[e] += delta;
        let x = v[e];
        let mut vals = values.to_vec();
        vals[k] = Tensor::from_vec(v, shape.as_slice(), &Device::Cpu).unwrap();
        let out = forward(&vals).unwrap_or_else(|e| panic!("forward at a perturbed point: {e}"));
        (loss_value(&out, w), x)
    };
    let g = (0..base.len())
        .map(|e| {
            let h = STEP * base[e].abs().max(1.0);
            min_h = min_h.min(h);
            let (lp, xp) = at(e, h);
            let (lm, xm) = at(e, -h);
            (lp - lm) / (xp - xm)
        })
        .collect();
    (g, min_h)
}

/// Checks the gradients of `L = sum(out * W)`, `out = lazy(inputs)`, with respect to every input
/// whose `tracked` flag is set (made a `Var`), against finite differences of `lazy` and, when
/// given, against Candle's autodiff of `dense(inputs)` (which must give `out` too). Inputs are
/// f64. Returns the gradients (`None` for untracked inputs).
fn check_grads(
    what: &str,
    values: &[Tensor],
    tracked: &[bool],
    lazy: Forward,
    dense: Option<Forward>,
    tol: Tol,
) -> Vec<Option<Vec<f64>>> {
    assert_eq!(values.len(), tracked.len());
    let vars: Vec<Option<Var>> = values
        .iter()
        .zip(tracked)
        .map(|(v, &t)| t.then(|| Var::from_tensor(v).unwrap()))
        .collect();
    let ts: Vec<Tensor> = values
        .iter()
        .zip(&vars)
        .map(|(v, var)| {
            var.as_ref()
                .map_or_else(|| v.clone(), |x| x.as_tensor().clone())
        })
        .collect();
    let out = lazy(&ts).unwrap_or_else(|e| panic!("{what}: forward: {e}"));
    let w = weights(out.dims());
    let grads = loss(&out, &w)
        .unwrap()
        .backward()
        .unwrap_or_else(|e| panic!("{what}: backward: {e}"));

    let scale = loss_scale(&out, &w);
    let dense_grads = dense.map(|dense| {
        let d = dense(&ts).unwrap_or_else(|e| panic!("{what}: dense reference: {e}"));
        assert_eq!(d.dims(), out.dims(), "{what}: output shape");
        let want = flat(&d);
        let big = want
            .iter()
            .filter(|x| x.is_finite())
            .fold(1.0f64, |m, x| m.max(x.abs()));
        assert_close(
            &flat(&out),
            &want,
            1e-10,
            1e-10 * big,
            &format!("{what}: values"),
        );
        loss(&d, &w)
            .unwrap()
            .backward()
            .unwrap_or_else(|e| panic!("{what}: dense backward: {e}"))
    });

    let mut result = Vec::with_capacity(values.len());
    for (k, t) in ts.iter().enumerate() {
        if !tracked[k] {
            result.push(None);
            continue;
        }
        let n = values[k].elem_count();
        let got = match grads.get(t) {
            Some(g) => {
                assert_eq!(g.dims(), values[k].dims(), "{what}: shape of gradient {k}");
                assert_eq!(
                    g.dtype(),
                    values[k].dtype(),
                    "{what}: dtype of gradient {k}"
                );
                flat(g)
            }
            // No gradient at all: the loss does not depend on this input (it must be zero).
            None => vec![0.0; n],
        };
        assert!(
            got.iter().all(|x| x.is_finite()),
            "{what}: gradient {k} is not finite: {got:?}"
        );

        if tol.fd {
            let (fd, h) = finite_differences(lazy, values, k, &w);
            let noise = FD_NOISE * f64::EPSILON * scale / h;
            assert_close(
                &got,
                &fd,
                tol.fd_rtol,
                tol.fd_atol + noise,
                &format!("{what}: gradient {k} vs finite differences"),
            );
        }

        if let Some(dg) = &dense_grads {
            let want = dg.get(t).map_or_else(|| vec![0.0; n], flat);
            let big = want.iter().fold(1.0f64, |m, x| m.max(x.abs()));
            assert_close(
                &got,
                &want,
                tol.dense_rtol,
                tol.dense_atol * big,
                &format!("{what}: gradient {k} vs dense autodiff"),
            );
        }
        result.push(Some(got));
    }
    result
}

/// The values of a reduction of a formula over positional tensors.
fn lazy_values(f: &Expr, ts: &[Tensor], kind: ReductionKind, axis: Axis) -> Result<Tensor> {
    let refs: Vec<&Tensor> = ts.iter().collect();
    let out = LazyTensor::from_formula(f, &refs)?.reduce(kind, axis)?;
    Ok(out.values.expect("a reduction with values"))
}

/// The reduction of dense `(M, N, E)` values with Candle ops (differentiable).
fn dense_reduce(d: &Tensor, kind: ReductionKind, axis: Axis) -> Result<Tensor> {
    let d = match axis {
        Axis::J => d.clone(),
        Axis::I => d.transpose(0, 1)?.contiguous()?,
    };
    let (r, t, e) = d.dims3()?;
    Ok(match kind {
        ReductionKind::Sum => d.sum(1)?,
        ReductionKind::LogSumExp => {
            // The maximum is a constant shift: detached, it adds nothing to the gradient.
            let mx = d.max_keepdim(1)?.detach();
            (d.broadcast_sub(&mx)?.exp()?.sum_keepdim(1)?.log()? + mx)?.squeeze(1)?
        }
        ReductionKind::SumSoftMaxWeight => {
            let f = d.narrow(2, 0, 1)?;
            let v = d.narrow(2, 1, e - 1)?;
            let mx = f.max_keepdim(1)?.detach();
            let w = f.broadcast_sub(&mx)?.exp()?;
            v.broadcast_mul(&w)?.sum(1)?.broadcast_div(&w.sum(1)?)?
        }
        ReductionKind::Min | ReductionKind::MinArgMin => d.min(1)?,
        ReductionKind::Max | ReductionKind::MaxArgMax => d.max(1)?,
        ReductionKind::KMin(k) | ReductionKind::KMinArgKMin(k) => {
            let dt = d.transpose(1, 2)?.contiguous()?; // (r, e, t)
            let take = k.min(t);
            let idx = dt
                .arg_sort_last_dim(true)?
                .narrow(2, 0, take)?
                .contiguous()?;
            let mut vals = dt.gather(&idx, 2)?; // (r, e, take)
            if k > t {
                let pad = Tensor::full(f64::INFINITY, (r, e, k - t), &Device::Cpu)?;
                vals = Tensor::cat(&[&vals, &pad], 2)?;
            }
            let vals = vals.transpose(1, 2)?.contiguous()?; // (r, k, e)
            if e == 1 { vals.reshape((r, k))? } else { vals }
        }
        other => panic!("no dense reference for {other:?}"),
    })
}

/// Named inputs of a formula: the name `x` of input `k` stands for `Vi(k, d)`, `Vj(k, d)` or
/// `Pm(k, d)`.
struct Case {
    names: Vec<&'static str>,
    inputs: Vec<(VarCat, Tensor)>,
    m: usize,
    n: usize,
}

impl Case {
    fn new(m: usize, n: usize) -> Case {
        Case {
            names: Vec::new(),
            inputs: Vec::new(),
            m,
            n,
        }
    }

    fn with(mut self, name: &'static str, cat: VarCat, t: Tensor) -> Case {
        self.names.push(name);
        self.inputs.push((cat, t));
        self
    }

    /// The inputs of most tests: `x` (M, 3), `y` (N, 3), `p` (3,), `s` (1,), `u` (M,) and
    /// `v` (N,) one-dimensional, `a` (M, 6) (a 2 x 3 matrix per row), `q` a 0-dimensional
    /// parameter, `b` (N, 1).
    fn standard(m: usize, n: usize, seed: u64) -> Case {
        let mut r = Rng(seed);
        Case::new(m, n)
            .with("x", VarCat::I, r.tensor(&[m, 3], -1., 1.))
            .with("y", VarCat::J, r.tensor(&[n, 3], -1., 1.))
            .with("p", VarCat::P, r.tensor(&[3], 0.5, 1.5))
            .with("s", VarCat::P, r.tensor(&[1], 0.5, 1.5))
            .with("u", VarCat::I, r.tensor(&[m], -1., 1.))
            .with("v", VarCat::J, r.tensor(&[n], -1., 1.))
            .with("a", VarCat::I, r.tensor(&[m, 6], -1., 1.))
            .with("q", VarCat::P, r.tensor(&[], 0.5, 1.5))
            .with("b", VarCat::J, r.tensor(&[n, 1], -1., 1.))
    }

    fn formula(&self, src: &str) -> Expr {
        let leaves: Vec<(&str, Expr)> = self
            .names
            .iter()
            .zip(&self.inputs)
            .enumerate()
            .map(|(k, (name, (cat, t)))| {
                let (tag, dim) = match cat {
                    VarCat::I => ("Vi", t.elem_count() / self.m),
                    VarCat::J => ("Vj", t.elem_count() / self.n),
                    VarCat::P => ("Pm", t.elem_count()),
                };
                (*name, parse(&format!("{tag}({k},{dim})"), &[]).unwrap())
            })
            .collect();
        parse(src, &leaves).unwrap_or_else(|e| panic!("{src}: {e}"))
    }

    fn values(&self) -> Vec<Tensor> {
        self.inputs.iter().map(|(_, t)| t.clone()).collect()
    }

    /// Checks the gradient of `kind` of `src` over `axis` w.r.t. every input the formula uses.
    fn check(&self, src: &str, kind: ReductionKind, axis: Axis) -> Vec<Option<Vec<f64>>> {
        self.check_tol(src, kind, axis, TOL)
    }

    fn check_tol(
        &self,
        src: &str,
        kind: ReductionKind,
        axis: Axis,
        tol: Tol,
    ) -> Vec<Option<Vec<f64>>> {
        let f = self.formula(src);
        let used: Vec<usize> = f.vars().iter().map(|v| v.pos).collect();
        let tracked: Vec<bool> = (0..self.inputs.len()).map(|k| used.contains(&k)).collect();
        let cats: Vec<VarCat> = self.inputs.iter().map(|(c, _)| *c).collect();
        let (m, n) = (self.m, self.n);
        let lazy = |ts: &[Tensor]| lazy_values(&f, ts, kind, axis);
        let dense = |ts: &[Tensor]| {
            let ins: Vec<(VarCat, Tensor)> = cats.iter().copied().zip(ts.iter().cloned()).collect();
            dense_reduce(&dense_eval(&f, &ins, m, n)?, kind, axis)
        };
        let what = format!("{src} {kind:?} {axis:?}");
        let dense: Option<Forward> = dense_autodiff_covers(&f).then_some(&dense);
        check_grads(&what, &self.values(), &tracked, &lazy, dense, tol)
    }
}

// ---------------------------------------------------------------------------------------------
// Formula ops (Sum reductions; both axes)
// ---------------------------------------------------------------------------------------------

fn check_sum_both_axes(case: &Case, formulas: &[&str]) {
    for src in formulas {
        for axis in [Axis::J, Axis::I] {
            case.check(src, ReductionKind::Sum, axis);
        }
    }
}

#[test]
fn unary_ops() {
    let case = Case::standard(6, 8, 1);
    check_sum_both_axes(
        &case,
        &[
            "-(x * y)",
            "Exp(x - y)",
            "Log(Square(x - y) + 0.5)",
            "Log(x + 2.0) * y",
            "Sqrt(Square(x - y) + 0.1)",
            "Sqrt(x + 1.5) * y",
            "Rsqrt(Square(x - y) + 0.1)",
            "Square(x - y)",
            "Inv(Square(x - y) + 0.2)",
            "Inv(x + 2.0) * v",
            "Abs(x - y)",
            "Sign(x - y) * Exp(x + y)",
            "Step(x - y) * Sin(x * y)",
            "ReLU(x - y)",
            "Sin(3.0 * x - y)",
            "Cos(3.0 * x * y)",
            "Pow(x - y, 0) * x * v",
            "Pow(x - y, 1)",
            "Pow(x - y, 2)",
            "Pow(x - y, 3)",
            "Pow(x * y, 5)",
            "Pow(Abs(x - y) + 0.5, -1)",
            "Pow(Abs(x - y) + 0.5, -2)",
            "Pow(x * y + 2.0, -3)",
        ],
    );
}

/// Every op of the table, generated from its metadata: the gradient of its `Sum` against finite
/// differences and the dense reference, both axes.
#[test]
fn every_op_of_the_table_has_the_derivative_of_its_definition() {
    let case = Case::standard(6, 8, 11);
    let ops = table_op_sources(["x - y", "x + y", "2.0 * u * v"]);
    let srcs: Vec<&str> = ops.iter().map(|(_, s)| s.as_str()).collect();
    check_sum_both_axes(&case, &srcs);
}

#[test]
fn binary_ops_with_broadcasting() {
    let case = Case::standard(6, 8, 2);
    check_sum_both_axes(
        &case,
        &[
            "x + y",
            "x + v",
            "u + y",
            "x - y",
            "u - y",
            "x - v",
            "x * y",
            "u * y",
            "x * v",
            "x * p + y",
            "x / (Square(y) + 0.5)",
            "u / (y + 2.0)",
            "(x - y) / s",
            "(u - v) / q",
            "1.0 / (x + y + 3.0)",
            "Powf(Abs(x) + 0.5, y)",
            "Powf(Square(x - y) + 0.1, s)",
            "Powf(u + 2.0, y)",
            "Powf(x + 2.0, v)",
            "Powf(x + 2.0, p) * v",
            "Min(x, y)",
            "Min(u, y)",
            "Min(x, v) * s",
            "Max(x, y)",
            "Max(x, v)",
            "Max(u * 2.0, y)",
            "2.5 * x - 1.0 / (s + y)",
        ],
    );
}

#[test]
fn comparisons_have_zero_gradient() {
    let case = Case::standard(6, 8, 3);
    check_sum_both_axes(
        &case,
        &[
            "Lt(x, y) * Exp(x - y)",
            "Le(x, v) * x",
            "Gt(u, y) * y",
            "Ge(x, y) * (x + y)",
            "Eq(Step(x), Step(y)) * x * y",
            "Ne(Step(x), Step(y)) * Sin(x - y)",
        ],
    );
    // A formula that is only comparisons (times the variables' values) has an exactly zero
    // gradient: no rounding, no stray term.
    for src in [
        "Lt(x, y)", "Le(x, y)", "Gt(x, v)", "Ge(u, y)", "Eq(x, y)", "Ne(x, y)",
    ] {
        let f = case.formula(src);
        let grads = case.check(src, ReductionKind::Sum, Axis::J);
        for (k, g) in grads.iter().enumerate() {
            if let Some(g) = g {
                assert!(g.iter().all(|&x| x == 0.0), "{f}: gradient {k} = {g:?}");
            }
        }
    }
}

#[test]
fn ternary_ops() {
    let case = Case::standard(6, 8, 4);
    check_sum_both_axes(
        &case,
        &[
            "Clamp(x, y, y + 0.5)",
            "Clamp(x - y, -0.25, 0.5)",
            "Clamp(2.0 * x, -0.5, v)",
            "Clamp(u, y - 0.5, p)",
            "IfElse(x - y, x * y, Exp(y))",
            "IfElse(u - v, Exp(x), Sin(y))",
            "IfElse(x, u, v) * s",
        ],
    );
}

#[test]
fn vector_ops() {
    let case = Case::standard(6, 8, 5);
    check_sum_both_axes(
        &case,
        &[
            "Sum(x * y)",
            "Sum(x) * Sum(y)",
            "Elem(x, 2) * Elem(y, 0)",
            "Elem(x - y, 1) * Elem(p, 2)",
            "Extract(x - y, 1, 2) * Elem(y, 1)",
            "Extract(Exp(x * y), 0, 2)",
            "Concat(u, x - y)",
            "Concat(Exp(v), u * s)",
            "Concat(x * y, Sin(x + y)) * 0.5",
            "MatVecMult(a, y)",
            "MatVecMult(a, p) + v",
            "MatVecMult(a * v, Sin(y))",
        ],
    );
}

#[test]
fn composite_ops() {
    let case = Case::standard(6, 8, 6);
    check_sum_both_axes(
        &case,
        &[
            "SqDist(x, y)",
            "SqDist(x, v)",
            "SqNorm2(x - y)",
            "Dot(x, y)",
            "Dot(x, p) * v",
            "Norm2(x - y)",
            "Normalize(x - y + 0.01)",
            "Normalize(x * s + y)",
            "WeightedSqDist(s, x, y)",
            "WeightedSqDist(p, x, y)",
            "WeightedSqDist(q, x, y)",
            "WeightedSqNorm(p, x - y)",
            "Exp(-SqDist(x, y) / (2.0 * Square(s))) * v",
            "Exp(-SqDist(x, y) * s) * y",
            "Exp(-Sqrt(SqDist(x, y)) / s) * b",
            "Exp(-WeightedSqDist(p, x, y)) * Concat(b, v)",
            "Exp(u) * Sin(v) + Sqrt(SqDist(x, y) + 1.0) * Log(4.0 + Dot(x, y))",
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// Reductions
// ---------------------------------------------------------------------------------------------

/// Formulas of 1 and 3 components used for every reduction.
const RED_1: &str = "Sin(Dot(x, y) * 2.0) + u * v - SqDist(x, y) * s";
const RED_3: &str = "Exp(-SqDist(x, y) * s) * y + Cos(x * v)";

#[test]
fn sum_reduction_both_axes() {
    let case = Case::standard(13, 17, 11);
    for src in [RED_1, RED_3] {
        for axis in [Axis::J, Axis::I] {
            case.check(src, ReductionKind::Sum, axis);
        }
    }
}

#[test]
fn logsumexp_both_axes() {
    let case = Case::standard(13, 17, 12);
    for src in [RED_1, RED_3, "-SqDist(x, y) * 20.0 + v"] {
        for axis in [Axis::J, Axis::I] {
            case.check(src, ReductionKind::LogSumExp, axis);
        }
    }
}

#[test]
fn logsumexp_of_large_values_has_finite_gradients() {
    // exp(1000) overflows f64: only a stable forward and backward give finite gradients.
    let case = Case::standard(9, 11, 13);
    for src in [
        "1000.0 + Sin(Dot(x, y)) * 3.0 + v",
        "Exp(x * 0.1) * 800.0 - y * 1000.0",
        "-1000.0 + u * v",
    ] {
        for axis in [Axis::J, Axis::I] {
            case.check(src, ReductionKind::LogSumExp, axis);
        }
    }
}

#[test]
fn sum_softmax_weight_both_axes() {
    let case = Case::standard(13, 17, 14);
    for src in [
        "Concat(Dot(x, y) * 2.0 + u, y * v)",
        "Concat(-SqDist(x, y) / s, Exp(x - y))",
    ] {
        for axis in [Axis::J, Axis::I] {
            case.check(src, ReductionKind::SumSoftMaxWeight, axis);
        }
    }
    // Softmax formula values near 1000 are rounded to about 1e-13, which puts a noise of about
    // 1e-13 / STEP = 1e-7 on each finite-difference quotient.
    let tol = Tol {
        fd_atol: 1e-7,
        ..TOL
    };
    for axis in [Axis::J, Axis::I] {
        case.check_tol(
            "Concat(1000.0 - SqDist(x, y) * 4.0, b)",
            ReductionKind::SumSoftMaxWeight,
            axis,
            tol,
        );
    }
}

#[test]
fn sum_softmax_weight_method() {
    // The same through `LazyTensor::sum_softmax_weight`, softmax formula and weights apart.
    let mut r = Rng(15);
    let (m, n) = (9, 12);
    let values = vec![
        r.tensor(&[m, 2], -1., 1.),
        r.tensor(&[n, 2], -1., 1.),
        r.tensor(&[n, 3], -1., 1.),
    ];
    for axis in [Axis::J, Axis::I] {
        let lazy = |ts: &[Tensor]| {
            let (q, k, v) = (
                LazyTensor::vi(&ts[0])?,
                LazyTensor::vj(&ts[1])?,
                LazyTensor::vj(&ts[2])?,
            );
            (q.dot(&k) * 3.0).sum_softmax_weight(&(v * q.elem(1)), axis)
        };
        let dense = |ts: &[Tensor]| {
            let f = parse(
                "Concat(Dot(Vi(0,2), Vj(1,2)) * 3.0, Vj(2,3) * Elem(Vi(0,2), 1))",
                &[],
            )
            .unwrap();
            let ins = vec![
                (VarCat::I, ts[0].clone()),
                (VarCat::J, ts[1].clone()),
                (VarCat::J, ts[2].clone()),
            ];
            dense_reduce(
                &dense_eval(&f, &ins, m, n)?,
                ReductionKind::SumSoftMaxWeight,
                axis,
            )
        };
        check_grads(
            &format!("sum_softmax_weight {axis:?}"),
            &values,
            &[true, true, true],
            &lazy,
            Some(&dense),
            TOL,
        );
    }
}

#[test]
fn min_max_values() {
    let case = Case::standard(13, 17, 16);
    for kind in [
        ReductionKind::Min,
        ReductionKind::Max,
        ReductionKind::MinArgMin,
        ReductionKind::MaxArgMax,
    ] {
        for src in [RED_1, RED_3] {
            for axis in [Axis::J, Axis::I] {
                case.check(src, kind, axis);
            }
        }
    }
}

#[test]
fn kmin_values() {
    let case = Case::standard(13, 17, 17);
    for kind in [
        ReductionKind::KMin(1),
        ReductionKind::KMin(3),
        ReductionKind::KMinArgKMin(4),
    ] {
        for src in [RED_1, RED_3] {
            for axis in [Axis::J, Axis::I] {
                case.check(src, kind, axis);
            }
        }
    }
}

#[test]
fn kmin_with_k_above_the_number_of_terms() {
    // Slots beyond N hold +inf (left out of the loss): the real entries' gradients must be
    // finite and right.
    let case = Case::standard(9, 5, 18);
    for kind in [ReductionKind::KMin(7), ReductionKind::KMinArgKMin(6)] {
        for src in [RED_1, RED_3] {
            case.check(src, kind, Axis::J);
        }
        // Over i, 9 terms.
        case.check(RED_1, ReductionKind::KMin(12), Axis::I);
    }
}

#[test]
fn kmin_gradient_goes_to_the_selected_terms() {
    // d min_j F_ij / d y_j is dF/dy at the argmin and zero elsewhere: with F = |x_i - y_j|^2
    // the gradient of sum_i w_i min_j F_ij w.r.t. y_j is sum over the rows i whose nearest
    // neighbour is j of 2 w_i (y_j - x_i). The same for the k nearest.
    let mut r = Rng(19);
    let (m, n, k) = (11, 14, 3);
    let x = r.tensor(&[m, 2], 0., 1.);
    let y = r.tensor(&[n, 2], 0., 1.);
    let yv = Var::from_tensor(&y).unwrap();
    let d = LazyTensor::vi(&x)
        .unwrap()
        .sqdist(&LazyTensor::vj(yv.as_tensor()).unwrap());
    let (vals, idx) = d.kmin_argkmin(k, Axis::J).unwrap();
    let w = r.tensor(&[m, k], -1., 1.);
    let grads = (vals * &w).unwrap().sum_all().unwrap().backward().unwrap();
    let got = flat(grads.get(yv.as_tensor()).expect("a gradient for y"));
    let (xs, ys, ws, idx) = (flat(&x), flat(&y), flat(&w), flat_i64(&idx));
    let mut want = vec![0.0; n * 2];
    for i in 0..m {
        for rank in 0..k {
            let j = idx[i * k + rank] as usize;
            for c in 0..2 {
                want[j * 2 + c] += 2.0 * ws[i * k + rank] * (ys[j * 2 + c] - xs[i * 2 + c]);
            }
        }
    }
    assert_close(&got, &want, 1e-12, 1e-14, "ArgKMin-routed gradient");
}

#[test]
fn index_outputs_carry_no_gradient() {
    let mut r = Rng(20);
    let x = Var::from_tensor(&r.tensor(&[8, 2], -1., 1.)).unwrap();
    let y = Var::from_tensor(&r.tensor(&[10, 2], -1., 1.)).unwrap();
    let d = LazyTensor::vi(x.as_tensor())
        .unwrap()
        .sqdist(&LazyTensor::vj(y.as_tensor()).unwrap());
    for idx in [
        d.argmin(Axis::J).unwrap(),
        d.argmax(Axis::I).unwrap(),
        d.argkmin(3, Axis::J).unwrap(),
        d.min_argmin(Axis::J).unwrap().1,
        d.kmin_argkmin(2, Axis::I).unwrap().1,
    ] {
        assert_eq!(idx.dtype(), DType::I64);
        assert!(!idx.is_variable());
        // A loss computed from the indices only depends on no variable: backward succeeds and
        // gives x and y no gradient.
        let grads = idx
            .to_dtype(DType::F64)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(grads.get(x.as_tensor()).is_none());
        assert!(grads.get(y.as_tensor()).is_none());
    }
    // Values and indices from one reduction: backward through the values only.
    let (v, i) = d.min_argmin(Axis::J).unwrap();
    let grads = v.sum_all().unwrap().backward().unwrap();
    assert!(grads.get(&i).is_none());
    let gx = flat(grads.get(x.as_tensor()).unwrap());
    assert!(gx.iter().all(|g| g.is_finite()) && gx.iter().any(|&g| g != 0.0));
}

// ---------------------------------------------------------------------------------------------
// Inputs: shapes, parameters, sharing, untracked tensors, dtypes
// ---------------------------------------------------------------------------------------------

#[test]
fn parameter_shapes_and_one_dimensional_inputs() {
    // Through the LazyTensor API: a Gaussian kernel with s of shape (1,), diagonal weights of
    // shape (D,), a 0-dimensional parameter and (M,) / (N,) inputs; every gradient has exactly
    // its input's shape.
    let mut r = Rng(21);
    let (m, n, d) = (7, 9, 3);
    let values = vec![
        r.tensor(&[m, d], -1., 1.), // x
        r.tensor(&[n, d], -1., 1.), // y
        r.tensor(&[1], 0.5, 1.0),   // s
        r.tensor(&[d], 0.5, 1.5),   // diagonal weights
        r.tensor(&[], 0.5, 1.5),    // scalar-shaped amplitude
        r.tensor(&[m], -1., 1.),    // u (M,)
        r.tensor(&[n], -1., 1.),    // b (N,)
    ];
    for axis in [Axis::J, Axis::I] {
        let lazy = |ts: &[Tensor]| {
            let x = LazyTensor::vi(&ts[0])?;
            let y = LazyTensor::vj(&ts[1])?;
            let s = LazyTensor::param(&ts[2])?;
            let wd = LazyTensor::param(&ts[3])?;
            let amp = LazyTensor::param(&ts[4])?;
            let u = LazyTensor::vi(&ts[5])?;
            let b = LazyTensor::vj(&ts[6])?;
            let k = (-x.weighted_sqdist(&y, &wd) / (2.0 * s.square())).exp();
            (k * b * amp + u.sin()).sum(axis)
        };
        let dense = |ts: &[Tensor]| {
            let f = parse(
                "Exp(-WeightedSqDist(Pm(3,3), Vi(0,3), Vj(1,3)) / (2.0 * Square(Pm(2,1)))) \
                 * Vj(6,1) * Pm(4,1) + Sin(Vi(5,1))",
                &[],
            )
            .unwrap();
            let cats = [
                VarCat::I,
                VarCat::J,
                VarCat::P,
                VarCat::P,
                VarCat::P,
                VarCat::I,
                VarCat::J,
            ];
            let ins: Vec<(VarCat, Tensor)> = cats.into_iter().zip(ts.iter().cloned()).collect();
            dense_reduce(&dense_eval(&f, &ins, m, n)?, ReductionKind::Sum, axis)
        };
        check_grads(
            &format!("parameter shapes {axis:?}"),
            &values,
            &[true; 7],
            &lazy,
            Some(&dense),
            TOL,
        );
    }
}

#[test]
fn many_bound_tensors() {
    // Six bound tensors of all categories, over both axes and several reductions.
    let case = Case::standard(8, 10, 22);
    let src = "Exp(-WeightedSqDist(p, x, y) * s) * (u + v) * q + Elem(MatVecMult(a, y), 1) * b";
    for axis in [Axis::J, Axis::I] {
        for kind in [
            ReductionKind::Sum,
            ReductionKind::LogSumExp,
            ReductionKind::Min,
            ReductionKind::KMin(2),
        ] {
            case.check(src, kind, axis);
        }
    }
}

#[test]
fn one_tensor_bound_twice() {
    // The same Var as the i- and the j-variable (a self-interaction energy), and bound twice as
    // an i-variable: the gradient sums every use.
    let mut r = Rng(23);
    let n = 10;
    let values = vec![r.tensor(&[n, 2], -1., 1.), r.tensor(&[1], 0.5, 1.0)];
    for axis in [Axis::J, Axis::I] {
        let lazy = |ts: &[Tensor]| {
            let xi = LazyTensor::vi(&ts[0])?;
            let xj = LazyTensor::vj(&ts[0])?;
            let xi2 = LazyTensor::vi(&ts[0])?;
            let s = LazyTensor::param(&ts[1])?;
            ((-xi.sqdist(&xj) * s).exp() * xi2.elem(0) + xi.elem(1)).sum(axis)
        };
        let dense = |ts: &[Tensor]| {
            let f = parse(
                "Exp(-SqDist(Vi(0,2), Vj(1,2)) * Pm(2,1)) * Elem(Vi(3,2), 0) + Elem(Vi(0,2), 1)",
                &[],
            )
            .unwrap();
            let ins = vec![
                (VarCat::I, ts[0].clone()),
                (VarCat::J, ts[0].clone()),
                (VarCat::P, ts[1].clone()),
                (VarCat::I, ts[0].clone()),
            ];
            dense_reduce(&dense_eval(&f, &ins, n, n)?, ReductionKind::Sum, axis)
        };
        check_grads(
            &format!("bound twice {axis:?}"),
            &values,
            &[true, true],
            &lazy,
            Some(&dense),
            TOL,
        );
    }
    // The same variable twice in one formula.
    let case = Case::standard(7, 9, 24);
    case.check("x * x + Exp(x - y) * x", ReductionKind::Sum, Axis::J);
}

#[test]
fn untracked_tensors_mixed_with_vars() {
    // x and p are plain tensors, y and s are Vars: only the Vars get gradients (right ones).
    let mut r = Rng(25);
    let (m, n) = (8, 11);
    let x = r.tensor(&[m, 3], -1., 1.);
    let p = r.tensor(&[3], 0.5, 1.5);
    let y = Var::from_tensor(&r.tensor(&[n, 3], -1., 1.)).unwrap();
    let s = Var::from_tensor(&r.tensor(&[1], 0.5, 1.5)).unwrap();
    let f = |x: &Tensor, y: &Tensor, p: &Tensor, s: &Tensor| -> Result<Tensor> {
        let (x, y) = (LazyTensor::vi(x)?, LazyTensor::vj(y)?);
        let (p, s) = (LazyTensor::param(p)?, LazyTensor::param(s)?);
        (-x.weighted_sqdist(&y, &p) * s).exp().sum(Axis::J)
    };
    let out = f(&x, y.as_tensor(), &p, s.as_tensor()).unwrap();
    let grads = loss(&out, &weights(out.dims()))
        .unwrap()
        .backward()
        .unwrap();
    // Plain tensors need no gradient. Candle's gradient store may still hold an entry for a
    // tensor that enters the graph as is (a 1-D tensor is its own flattening): zeros then.
    for (name, t) in [("x", &x), ("p", &p)] {
        if let Some(g) = grads.get(t) {
            assert!(
                flat(g).iter().all(|&v| v == 0.0),
                "plain {name} got a gradient"
            );
        }
    }
    // The Vars' gradients against the all-Var check.
    let values = vec![
        x.clone(),
        y.as_tensor().clone(),
        p.clone(),
        s.as_tensor().clone(),
    ];
    let lazy = |ts: &[Tensor]| f(&ts[0], &ts[1], &ts[2], &ts[3]);
    let all = check_grads("mixed, all tracked", &values, &[true; 4], &lazy, None, TOL);
    let some = check_grads(
        "mixed, y and s tracked",
        &values,
        &[false, true, false, true],
        &lazy,
        None,
        TOL,
    );
    assert!(some[0].is_none() && some[2].is_none());
    assert_close(
        some[1].as_ref().unwrap(),
        all[1].as_ref().unwrap(),
        1e-14,
        1e-14,
        "y",
    );
    assert_close(
        some[3].as_ref().unwrap(),
        all[3].as_ref().unwrap(),
        1e-14,
        1e-14,
        "s",
    );
    let gy = flat(grads.get(y.as_tensor()).unwrap());
    assert_close(&gy, all[1].as_ref().unwrap(), 1e-14, 1e-14, "y, direct");
}

#[test]
fn strided_inputs() {
    // x stored transposed, y a narrowed view of a larger tensor: the gradients have the stored
    // tensors' shapes (zero outside the view).
    let mut r = Rng(30);
    let (m, n) = (7, 9);
    let values = vec![r.tensor(&[3, m], -1., 1.), r.tensor(&[n + 4, 3], -1., 1.)];
    let views =
        |ts: &[Tensor]| -> Result<(Tensor, Tensor)> { Ok((ts[0].t()?, ts[1].narrow(0, 2, n)?)) };
    for axis in [Axis::J, Axis::I] {
        let lazy = |ts: &[Tensor]| {
            let (x, y) = views(ts)?;
            let (x, y) = (LazyTensor::vi(&x)?, LazyTensor::vj(&y)?);
            ((-x.sqdist(&y)).exp() * y.elem(0)).sum(axis)
        };
        let dense = |ts: &[Tensor]| {
            let (x, y) = views(ts)?;
            let f = parse("Exp(-SqDist(Vi(0,3), Vj(1,3))) * Elem(Vj(1,3), 0)", &[]).unwrap();
            let ins = vec![(VarCat::I, x), (VarCat::J, y)];
            dense_reduce(&dense_eval(&f, &ins, m, n)?, ReductionKind::Sum, axis)
        };
        let g = check_grads(
            &format!("strided {axis:?}"),
            &values,
            &[true, true],
            &lazy,
            Some(&dense),
            TOL,
        );
        let gy = g[1].as_ref().unwrap();
        assert!(gy[..6].iter().chain(&gy[(n + 2) * 3..]).all(|&v| v == 0.0));
    }
}

#[test]
fn many_terms_and_many_rows() {
    // N = 66000 j-terms for 5 rows (the passes over j split the terms into chunks of 65536)
    // and, over i, 66000 rows of 5 terms: against the dense autodiff only (finite differences
    // would need a forward pass per input component).
    let mut r = Rng(31);
    let (m, n) = (5, 66_000);
    let values = vec![
        r.tensor(&[m, 2], 0., 1.),
        r.tensor(&[n, 2], 0., 1.),
        r.tensor(&[n, 1], -1., 1.),
        r.tensor(&[1], 0.1, 0.3),
    ];
    let f = parse(
        "Exp(-SqDist(Vi(0,2), Vj(1,2)) / (2.0 * Square(Pm(3,1)))) * Vj(2,1)",
        &[],
    )
    .unwrap();
    let cats = [VarCat::I, VarCat::J, VarCat::J, VarCat::P];
    let tol = Tol { fd: false, ..TOL };
    for (kind, axis) in [
        (ReductionKind::Sum, Axis::J),
        (ReductionKind::LogSumExp, Axis::J),
        (ReductionKind::Min, Axis::J),
        (ReductionKind::Sum, Axis::I),
    ] {
        let lazy = |ts: &[Tensor]| lazy_values(&f, ts, kind, axis);
        let dense = |ts: &[Tensor]| {
            let ins: Vec<(VarCat, Tensor)> = cats.into_iter().zip(ts.iter().cloned()).collect();
            dense_reduce(&dense_eval(&f, &ins, m, n)?, kind, axis)
        };
        check_grads(
            &format!("large {kind:?} {axis:?}"),
            &values,
            &[true; 4],
            &lazy,
            Some(&dense),
            tol,
        );
    }
}

/// Gradients of `sum(out * W)` for three reductions of a Gaussian-type formula, with the
/// inputs `values` cast to `dtype`.
fn gaussian_grads_in(
    values: &[Tensor; 4],
    dtype: DType,
    kind: ReductionKind,
    axis: Axis,
) -> Vec<Vec<f64>> {
    let vars: Vec<Var> = values
        .iter()
        .map(|v| Var::from_tensor(&v.to_dtype(dtype).unwrap()).unwrap())
        .collect();
    let x = LazyTensor::vi(vars[0].as_tensor()).unwrap();
    let y = LazyTensor::vj(vars[1].as_tensor()).unwrap();
    let b = LazyTensor::vj(vars[2].as_tensor()).unwrap();
    let s = LazyTensor::param(vars[3].as_tensor()).unwrap();
    let g = -x.sqdist(&y) / (2.0 * s.square());
    let out = match kind {
        ReductionKind::Sum => (g.exp() * b).sum(axis),
        ReductionKind::LogSumExp => (g + b.elem(0)).logsumexp(axis),
        _ => (g * b).min(axis),
    }
    .unwrap();
    assert_eq!(out.dtype(), dtype);
    let w = Rng(27).tensor(out.dims(), -1., 1.).to_dtype(dtype).unwrap();
    let grads = (out * w).unwrap().sum_all().unwrap().backward().unwrap();
    vars.iter()
        .map(|v| {
            let g = grads.get(v.as_tensor()).expect("a gradient");
            assert_eq!(g.dtype(), dtype);
            assert_eq!(g.dims(), v.dims());
            flat(g)
        })
        .collect()
}

#[test]
fn f32_gradients_match_f64() {
    let mut r = Rng(26);
    let (m, n) = (23, 31);
    let values = [
        r.tensor(&[m, 2], 0., 1.),
        r.tensor(&[n, 2], 0., 1.),
        r.tensor(&[n, 2], -1., 1.),
        r.tensor(&[1], 0.2, 0.4),
    ];
    for kind in [
        ReductionKind::Sum,
        ReductionKind::LogSumExp,
        ReductionKind::Min,
    ] {
        for axis in [Axis::J, Axis::I] {
            let g64 = gaussian_grads_in(&values, DType::F64, kind, axis);
            let g32 = gaussian_grads_in(&values, DType::F32, kind, axis);
            for (k, (a, b)) in g32.iter().zip(&g64).enumerate() {
                let big = b.iter().fold(1e-3f64, |m, x| m.max(x.abs()));
                assert_close(
                    a,
                    b,
                    1e-4,
                    1e-4 * big,
                    &format!("{kind:?} {axis:?} input {k}"),
                );
            }
        }
    }
}

/// f16 and bf16 gradients (computed in f32, rounded at the end) against f64 gradients of the
/// same rounded inputs.
#[test]
fn half_precision_gradients_match_f64() {
    let mut r = Rng(28);
    let (m, n) = (19, 27);
    let raw = [
        r.tensor(&[m, 2], 0., 1.),
        r.tensor(&[n, 2], 0., 1.),
        r.tensor(&[n, 2], -1., 1.),
        r.tensor(&[1], 0.2, 0.4),
    ];
    for (dtype, rtol) in [(DType::F16, 1e-2), (DType::BF16, 6e-2)] {
        let values = raw
            .clone()
            .map(|t| t.to_dtype(dtype).unwrap().to_dtype(DType::F64).unwrap());
        for kind in [
            ReductionKind::Sum,
            ReductionKind::LogSumExp,
            ReductionKind::Min,
        ] {
            for axis in [Axis::J, Axis::I] {
                let g64 = gaussian_grads_in(&values, DType::F64, kind, axis);
                let gh = gaussian_grads_in(&values, dtype, kind, axis);
                for (k, (a, b)) in gh.iter().zip(&g64).enumerate() {
                    let big = b.iter().fold(1e-3f64, |m, x| m.max(x.abs()));
                    assert_close(
                        a,
                        b,
                        rtol,
                        rtol * big,
                        &format!("{dtype:?} {kind:?} {axis:?} input {k}"),
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Random formulas
// ---------------------------------------------------------------------------------------------

/// Random expression trees over `x` = Vi(0,2), `y` = Vj(1,2), `p` = Pm(2,2), `s` = Pm(3,1),
/// `u` = Vi(4,1), `v` = Vj(5,1), with inputs in [-1, 1] (parameters in [0.5, 1.5]) and every
/// op's argument kept in its domain (logarithms, roots and inverses of positive values,
/// exponentials of bounded values).
struct Gen(Rng);

impl Gen {
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.0.below(xs.len())]
    }

    fn leaf(&mut self, dim: usize) -> String {
        if dim == 2 {
            self.pick(&["x", "y", "p", "x", "y"]).to_string()
        } else {
            match self.0.below(8) {
                0 => format!("{:.3}", self.0.uniform(-2.0, 2.0)),
                1 => "Elem(x, 1)".into(),
                2 => "Elem(y, 0)".into(),
                _ => self.pick(&["u", "v", "s", "u", "v"]).to_string(),
            }
        }
    }

    /// An expression of `dim` (1 or 2) components.
    fn expr(&mut self, dim: usize, depth: usize) -> String {
        if depth == 0 || self.0.below(5) == 0 {
            return self.leaf(dim);
        }
        let d = depth - 1;
        // Argument dimensions of a component-wise op of result dimension `dim`: the same, or
        // 1 (broadcast) now and then.
        let o1 = if dim == 2 && self.0.below(3) == 0 {
            1
        } else {
            dim
        };
        let o2 = if dim == 2 && self.0.below(3) == 0 {
            1
        } else {
            dim
        };
        let a = self.expr(dim, d);
        match self.0.below(if dim == 1 { 30 } else { 27 }) {
            0 => format!("-({a})"),
            1 => format!("Sin({a})"),
            2 => format!("Cos({a})"),
            3 => format!("Exp(Sin({a}))"),
            4 => format!("Log(Square({a}) + 1.0)"),
            5 => format!("Sqrt(Square({a}) + 0.5)"),
            6 => format!("Rsqrt(Square({a}) + 0.5)"),
            7 => format!("Inv(Square({a}) + 1.0)"),
            8 => format!("Abs({a})"),
            9 => format!("ReLU({a})"),
            10 => format!("Pow(Sin({a}), 3)"),
            11 => format!("Pow(Cos({a}) + 2.0, -2)"),
            12 => format!("(Sign({}) * {a})", self.expr(o1, d)),
            13 => format!("(Step({}) * {a})", self.expr(o1, d)),
            14 => format!("({a} + {})", self.expr(o1, d)),
            15 => format!("({} - {a})", self.expr(o1, d)),
            16 => format!("({a} * {})", self.expr(o1, d)),
            17 => format!("({a} / (Square({}) + 1.0))", self.expr(o1, d)),
            18 => format!("Powf(Square({a}) + 0.5, Sin({}))", self.expr(o1, d)),
            19 => format!("Min({a}, {})", self.expr(o1, d)),
            20 => format!("Max({}, {a})", self.expr(o1, d)),
            21 => {
                let cmp = self.pick(&["Lt", "Le", "Gt", "Ge"]);
                let (l, r) = (self.expr(o1, d), self.expr(o2, d));
                format!("({cmp}({l}, {r}) * {a})")
            }
            22 => format!("Clamp({a}, -0.5, 0.7)"),
            23 => {
                let (c, b) = (self.expr(o1, d), self.expr(o2, d));
                format!("IfElse({c}, {a}, {b})")
            }
            24 => {
                let lo = self.expr(o1, d);
                format!("Clamp({a}, {lo}, {lo} + 1.0)")
            }
            // Vector ops.
            25 | 26 if dim == 2 => {
                let (e, f) = (self.expr(1, d), self.expr(1, d));
                if self.0.below(2) == 0 {
                    format!("Concat({e}, {f})")
                } else {
                    let g = self.expr(2, d);
                    format!("MatVecMult(Concat(Concat({e}, {f}), {g}), {a})")
                }
            }
            25 => format!("Sum({})", self.expr(2, d)),
            26 => format!("Elem({}, {})", self.expr(2, d), self.0.below(2)),
            27 => {
                let (e, f) = (self.expr(2, d), self.expr(2, d));
                format!("Dot({e}, {f})")
            }
            28 => {
                let (e, f) = (self.expr(2, d), self.expr(2, d));
                format!("Sqrt(SqDist({e}, {f}) + 0.1)")
            }
            _ => format!("Extract({}, {}, 1)", self.expr(2, d), self.0.below(2)),
        }
    }
}

#[test]
fn random_formulas_against_finite_differences() {
    let (m, n) = (5, 6);
    let mut r = Rng(28);
    let case = Case::new(m, n)
        .with("x", VarCat::I, r.tensor(&[m, 2], -1., 1.))
        .with("y", VarCat::J, r.tensor(&[n, 2], -1., 1.))
        .with("p", VarCat::P, r.tensor(&[2], 0.5, 1.5))
        .with("s", VarCat::P, r.tensor(&[1], 0.5, 1.5))
        .with("u", VarCat::I, r.tensor(&[m, 1], -1., 1.))
        .with("v", VarCat::J, r.tensor(&[n, 1], -1., 1.));
    let mut fgen = Gen(Rng(29));
    for t in 0..48 {
        let dim = 1 + fgen.0.below(2);
        let g = loop {
            let g = fgen.expr(dim, 3);
            if g.contains('(') {
                break g; // not a bare variable
            }
        };
        // Every formula depends on an i- and a j-variable (a reduction needs both), and the
        // random part is weighted by both.
        let src = format!("({g}) * Cos(u - v) + u * v");
        let (kind, axis) = match t % 4 {
            0 => (ReductionKind::Sum, Axis::J),
            1 => (ReductionKind::Sum, Axis::I),
            2 => (ReductionKind::LogSumExp, Axis::J),
            _ => (ReductionKind::Max, Axis::I),
        };
        case.check(&src, kind, axis);
    }
}

// ---------------------------------------------------------------------------------------------
// Symbolic gradients as lazy tensors
// ---------------------------------------------------------------------------------------------

/// `LazyTensor::grad` reduced by hand gives the gradients `backward()` gives.
#[test]
fn lazy_grad_matches_backward() {
    let mut r = Rng(41);
    let (m, n) = (17, 23);
    let x = Var::from_tensor(&r.tensor(&[m, 3], 0., 1.)).unwrap();
    let y = Var::from_tensor(&r.tensor(&[n, 3], 0., 1.)).unwrap();
    let b = r.tensor(&[n, 2], -1., 1.);
    let w = r.tensor(&[m, 2], -1., 1.);
    let (x_i, y_j, b_j) = (
        LazyTensor::vi(x.as_tensor()).unwrap(),
        LazyTensor::vj(y.as_tensor()).unwrap(),
        LazyTensor::vj(&b).unwrap(),
    );
    let f = (-x_i.sqdist(&y_j) * 2.0).exp() * &b_j; // 2 components
    let auto = (f.sum(Axis::J).unwrap() * &w)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let eta = LazyTensor::vi(&w).unwrap();
    let gx = f.grad(&x_i, &eta).sum(Axis::J).unwrap();
    let gy = f.grad(&y_j, &eta).sum(Axis::I).unwrap();
    assert_eq!(gx.dims(), &[m, 3]);
    assert_eq!(gy.dims(), &[n, 3]);
    assert_close(&flat(&gx), &flat(auto.get(&x).unwrap()), 1e-12, 1e-12, "x");
    assert_close(&flat(&gy), &flat(auto.get(&y).unwrap()), 1e-12, 1e-12, "y");
    // Only variables can be differentiated against.
    let err = f
        .grad(&(&x_i * 2.0), &eta)
        .checked()
        .unwrap_err()
        .to_string();
    assert!(err.contains("variable"), "{err}");
}
