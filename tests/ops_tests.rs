//! Every formula op against a dense Candle reference, f32 and f64, both axes.

mod common;

use candle_core::{DType, Tensor};
use common::*;
use lazy_kernels::formula::{BinaryOp, Domain, Expr, UnaryOp, VarCat, parse};
use lazy_kernels::{Axis, LazyTensor};

/// Inputs: x = Vi(0,3), y = Vj(1,3), p = Pm(2,3), s = Pm(3,1), u = Vi(4,1), v = Vj(5,1),
/// A = Vi(6,6) (a 2x3 matrix per row).
struct Case {
    inputs: Vec<(VarCat, Tensor)>,
    m: usize,
    n: usize,
}

fn case(m: usize, n: usize, seed: u64) -> Case {
    let mut r = Rng(seed);
    let inputs = vec![
        (VarCat::I, r.tensor(&[m, 3], -1., 1.)),
        (VarCat::J, r.tensor(&[n, 3], -1., 1.)),
        (VarCat::P, r.tensor(&[3], 0.5, 1.5)),
        (VarCat::P, r.tensor(&[1], 0.5, 1.5)),
        (VarCat::I, r.tensor(&[m, 1], -1., 1.)),
        (VarCat::J, r.tensor(&[n, 1], -1., 1.)),
        (VarCat::I, r.tensor(&[m, 6], -1., 1.)),
    ];
    Case { inputs, m, n }
}

const NAMES: [&str; 7] = ["x", "y", "p", "s", "u", "v", "A"];

fn formula(src: &str) -> Expr {
    let leaves = [
        "Vi(0,3)", "Vj(1,3)", "Pm(2,3)", "Pm(3,1)", "Vi(4,1)", "Vj(5,1)", "Vi(6,6)",
    ];
    let names: Vec<(&str, Expr)> = NAMES
        .iter()
        .zip(leaves)
        .map(|(n, l)| (*n, parse(l, &[]).unwrap()))
        .collect();
    parse(src, &names).unwrap_or_else(|e| panic!("{e}"))
}

/// Checks `Sum` of `src` over both axes in f32 and f64 against the dense reference.
fn check_sum(src: &str) {
    check_sum_dtypes(src, &[DType::F64, DType::F32]);
}

fn check_sum_dtypes(src: &str, dtypes: &[DType]) {
    let f = formula(src);
    let c = case(37, 45, 11);
    for axis in [Axis::J, Axis::I] {
        let dense = dense_eval(&f, &c.inputs, c.m, c.n).unwrap();
        let dv = dense_values(&dense, axis == Axis::J).unwrap();
        let want: Vec<f64> = ref_sum(&dv).concat();
        let scale: Vec<f64> = ref_sum(
            &dv.iter()
                .map(|r| {
                    r.iter()
                        .map(|t| t.iter().map(|x| x.abs()).collect())
                        .collect()
                })
                .collect(),
        )
        .concat();
        for &dtype in dtypes {
            let ts: Vec<Tensor> = c
                .inputs
                .iter()
                .map(|(_, t)| t.to_dtype(dtype).unwrap())
                .collect();
            let refs: Vec<&Tensor> = ts.iter().collect();
            let got = LazyTensor::from_formula(&f, &refs)
                .unwrap()
                .sum(axis)
                .unwrap_or_else(|e| panic!("{src}: {e}"));
            assert_eq!(got.dtype(), dtype);
            let got = flat(&got);
            let tol = if dtype == DType::F64 { 1e-12 } else { 2e-6 };
            assert_eq!(got.len(), want.len(), "{src}");
            for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                let err = (g - w).abs();
                assert!(
                    err <= tol * scale[k].max(1.0) * 4.0,
                    "{src} {dtype:?} {axis:?} [{k}]: got {g}, want {w}"
                );
            }
        }
    }
}

#[test]
fn unary_ops() {
    for src in [
        "-(x - y)",
        "Exp(x - y)",
        "Log(Square(x - y) + 0.5)",
        "Sqrt(Square(x - y))",
        "Rsqrt(Square(x - y) + 0.1)",
        "Square(x - y)",
        "Inv(Square(x - y) + 0.2)",
        "Abs(x - y)",
        "Sign(x - y)",
        "Step(x - y)",
        "ReLU(x - y)",
        "Sin(10.0 * (x - y))",
        "Cos(10.0 * (x - y))",
        "Pow(x - y, 3)",
        "Pow(x - y, 0)",
        "Pow(x - y, 1)",
        "Pow(Abs(x - y) + 0.5, -2)",
    ] {
        check_sum(src);
    }
    // Large arguments: in f32 the rounding of the argument itself dominates, so f64 only.
    check_sum_dtypes("Sin(x * 3000.0 + y)", &[DType::F64]);
    check_sum_dtypes("Cos(x * 3000.0 + y) + Sin(1.0e7 * x)", &[DType::F64]);
}

/// Every op of the table, generated from its metadata (name, arity, domain), in f32 and f64
/// against its `f64` definition.
#[test]
fn every_op_of_the_table_against_its_definition() {
    let ops = table_op_sources(["x - y", "x + y", "2.0 * u * v"]);
    assert!(
        ops.len() >= 48,
        "{} ops: the table had 31 unary, 14 binary and 3 ternary ops",
        ops.len()
    );
    for (_, src) in ops {
        check_sum(&src);
    }
}

#[test]
fn binary_ops_with_broadcasting() {
    for src in [
        "x + y",
        "x - v",
        "u * y",
        "x / (Abs(y) + 0.5)",
        "(u - v) / s",
        "x * p + y",
        "Powf(Abs(x) + 0.5, y)",
        "Powf(Abs(x - y) + 0.1, s)",
        "Min(x, y)",
        "Max(x, v)",
        "Lt(x, y)",
        "Le(x, v)",
        "Gt(u, y)",
        "Ge(x, y)",
        "Eq(Step(x), Step(y))",
        "Ne(Step(x), Step(y))",
        "2.5 * x - 1.0 / (s + y)",
    ] {
        check_sum(src);
    }
}

#[test]
fn ternary_ops() {
    for src in [
        "Clamp(x, y, y + 0.5)",
        "Clamp(x - y, -0.25, 0.5)",
        "IfElse(x - y, x, y)",
        "IfElse(u - v, Exp(x), Sin(y))",
    ] {
        check_sum(src);
    }
}

#[test]
fn vector_ops() {
    for src in [
        "Sum(x * y)",
        "SqNorm2(x - y)",
        "Norm2(x - y)",
        "Normalize(x - y + 0.01)",
        "SqDist(x, y)",
        "Exp(-SqDist(x, y) / (2.0 * Square(s))) * v",
        "Exp(-SqDist(x, y) * s) * y",
        "Exp(-Sqrt(SqDist(x, y)) / s)",
        "WeightedSqDist(s, x, y)",
        "WeightedSqDist(p, x, y)",
        "WeightedSqNorm(p, x - y)",
        "Dot(x, y)",
        "Dot(x, p) * v",
        "Elem(x, 2) * Elem(y, 0)",
        "Extract(x - y, 1, 2)",
        "Concat(u, x - y)",
        "Concat(Exp(v), u)",
        "MatVecMult(A, y)",
        "MatVecMult(A, p) + v",
        "Sum(x) * Sum(y)",
        "u + 0.0 * v",
        "u * s + v",
        "Exp(u) * Sin(v) + Sqrt(SqDist(x, y) + 1.0) * Log(4.0 + Dot(x, y))",
    ] {
        check_sum(src);
    }
}

/// Error of `got` in units in the last place of `want` at the precision with `mantissa`
/// explicit bits (23 for f32, 52 for f64); subnormal results use the smallest normal's ulp.
fn ulps(got: f64, want: f64, mantissa: i32, min_exp: i32) -> f64 {
    if got == want || (got.is_nan() && want.is_nan()) {
        return 0.0;
    }
    if !got.is_finite() || !want.is_finite() {
        return f64::INFINITY;
    }
    let e = if want == 0.0 {
        min_exp
    } else {
        (want.abs().log2().floor() as i32).max(min_exp)
    };
    (got - want).abs() / 2f64.powi(e - mantissa)
}

/// Samples of a domain (see `Domain::range`), deterministic.
fn samples(d: Domain, n: usize, seed: u64) -> Vec<f64> {
    let (lo, hi, both_signs) = d.range();
    let mut r = Rng(seed);
    (0..n)
        .map(|_| {
            let v = r.uniform(lo, hi);
            if both_signs && r.below(2) == 0 { -v } else { v }
        })
        .collect()
}

/// The scalar form of every unary and binary op of the table (the CPU backend's, both FMA
/// instantiations) against its `f64` definition, on its test domain: the largest error in ulp,
/// printed as a table (`cargo test --test ops_tests ulp -- --nocapture`) and bounded.
#[test]
fn every_op_of_the_table_is_accurate_to_a_few_ulp() {
    const N: usize = 20_000;
    // f32 results are compared with the f64 definition at the same (f32) arguments; f64 results
    // with the f64 definition (`std`/`libm`, itself within about an ulp).
    let mut rows: Vec<(String, [f64; 4])> = Vec::new();
    for &u in UnaryOp::ALL {
        let xs = samples(u.domain(), N, 7);
        let mut worst = [0.0f64; 4];
        for &x in &xs {
            let x32 = x as f32;
            let w32 = u.reference(x32 as f64);
            let w64 = u.reference(x);
            let e = [
                ulps(u.apply::<f32, false>(x32) as f64, w32, 23, -126),
                ulps(u.apply::<f32, true>(x32) as f64, w32, 23, -126),
                ulps(u.apply::<f64, false>(x), w64, 52, -1022),
                ulps(u.apply::<f64, true>(x), w64, 52, -1022),
            ];
            for (w, e) in worst.iter_mut().zip(e) {
                *w = w.max(e);
            }
        }
        rows.push((u.name().to_string(), worst));
    }
    for &b in BinaryOp::ALL {
        let [da, db] = b.domain();
        let (xs, ys) = (samples(da, N, 8), samples(db, N, 9));
        let mut worst = [0.0f64; 4];
        for (&x, &y) in xs.iter().zip(&ys) {
            let (x32, y32) = (x as f32, y as f32);
            let w32 = b.reference(x32 as f64, y32 as f64);
            let w64 = b.reference(x, y);
            let e = [
                ulps(b.apply::<f32, false>(x32, y32) as f64, w32, 23, -126),
                ulps(b.apply::<f32, true>(x32, y32) as f64, w32, 23, -126),
                ulps(b.apply::<f64, false>(x, y), w64, 52, -1022),
                ulps(b.apply::<f64, true>(x, y), w64, 52, -1022),
            ];
            for (w, e) in worst.iter_mut().zip(e) {
                *w = w.max(e);
            }
        }
        rows.push((b.name().to_string(), worst));
    }
    eprintln!("| op | f32 | f32 FMA | f64 | f64 FMA |\n| --- | --- | --- | --- | --- |");
    for (name, w) in &rows {
        eprintln!(
            "| {name} | {:.2} | {:.2} | {:.2} | {:.2} |",
            w[0], w[1], w[2], w[3]
        );
    }
    // `Powf(a, b) = exp(b log a)` amplifies the error of the logarithm by `|b log a|` (up to 4.6
    // on its domain), as in KeOps; every other op is within a few ulp.
    for (name, w) in &rows {
        let bound = if name == "Powf" { 16.0 } else { 4.0 };
        assert!(
            w.iter().all(|&e| e <= bound),
            "{name}: {w:?} ulp (bound {bound})"
        );
    }
}
