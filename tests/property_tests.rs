//! Random formulas: values against the dense Candle reference, and the canonical form
//! round-trips through the parser.

mod common;

use candle_core::{DType, Tensor};
use common::{
    Rng, assert_close, dense_eval, dense_values, flat, flat_i64, ref_lse, ref_sorted, ref_sum,
};
use lazy_kernels::formula::{Expr, parse};
use lazy_kernels::{Axis, LazyTensor, ReductionKind};
use proptest::prelude::{
    ProptestConfig, TestCaseError, any, prop_assert, prop_assert_eq, proptest,
};

/// A random formula over x = Vi(0,3), y = Vj(1,3), u = Vi(2,1), v = Vj(3,1), s = Pm(4,1),
/// built from ops applied in forms that keep values finite and moderate.
fn random_formula(r: &mut Rng, depth: usize) -> String {
    let leaves = ["x", "y", "u", "v", "s", "0.5", "-1.25"];
    if depth == 0 || r.below(5) == 0 {
        return leaves[r.below(leaves.len())].to_string();
    }
    let a = random_formula(r, depth - 1);
    let b = random_formula(r, depth - 1);
    let c = random_formula(r, depth - 1);
    match r.below(24) {
        0 => format!("({a} + {b})"),
        1 => format!("({a} - {b})"),
        2 => format!("({a} * {b})"),
        3 => format!("({a} / (Square({b}) + 0.5))"),
        4 => format!("-{a}"),
        5 => format!("Exp(-Square({a}))"),
        6 => format!("Log(Square({a}) + 1.0)"),
        7 => format!("Sqrt(Square({a}) + 0.25)"),
        8 => format!("Rsqrt(Square({a}) + 0.25)"),
        9 => format!("Inv(Square({a}) + 0.5)"),
        10 => format!("Sin({a})"),
        11 => format!("Cos({a})"),
        12 => format!("Abs({a})"),
        13 => format!("ReLU({a})"),
        14 => format!("Min({a}, {b})"),
        15 => format!("Max({a}, {b})"),
        16 => format!("Clamp({a}, -0.5, 0.75)"),
        17 => format!("IfElse({a}, {b}, {c})"),
        18 => format!("Pow(Clamp({a}, -2.0, 2.0), 3)"),
        19 => format!("Sum({a})"),
        20 => format!("Exp(-SqDist(x, {a}))"),
        21 => format!("Dot(y, {a} + x)"),
        22 => format!("Elem(Concat({a}, {b}), 0)"),
        _ => format!("Powf(Abs({a}) + 0.5, Clamp({b}, -1.0, 1.0))"),
    }
}

fn names() -> Vec<(&'static str, Expr)> {
    ["x", "y", "u", "v", "s"]
        .iter()
        .zip(["Vi(0,3)", "Vj(1,3)", "Vi(2,1)", "Vj(3,1)", "Pm(4,1)"])
        .map(|(n, l)| (*n, parse(l, &[]).unwrap()))
        .collect()
}

fn check(seed: u64, kind: ReductionKind, axis: Axis) -> Result<(), TestCaseError> {
    let mut r = Rng(seed | 1);
    // Make sure both an i- and a j-variable occur.
    let src = format!("{} + 0.0 * (u + v)", random_formula(&mut r, 4));
    let f = parse(&src, &names()).unwrap();
    prop_assert_eq!(&parse(&f.to_string(), &[]).unwrap(), &f);
    let (m, n) = (5 + r.below(30), 1 + r.below(700));
    let mut g = Rng(seed.wrapping_mul(31) | 1);
    let ins = [
        (
            lazy_kernels::formula::VarCat::I,
            g.tensor(&[m, 3], -1.5, 1.5),
        ),
        (
            lazy_kernels::formula::VarCat::J,
            g.tensor(&[n, 3], -1.5, 1.5),
        ),
        (
            lazy_kernels::formula::VarCat::I,
            g.tensor(&[m, 1], -1.5, 1.5),
        ),
        (
            lazy_kernels::formula::VarCat::J,
            g.tensor(&[n, 1], -1.5, 1.5),
        ),
        (lazy_kernels::formula::VarCat::P, g.tensor(&[1], 0.5, 1.5)),
    ];
    let dense = dense_eval(&f, &ins, m, n).unwrap();
    let dv = dense_values(&dense, axis == Axis::J).unwrap();
    let refs: Vec<&Tensor> = ins.iter().map(|(_, t)| t).collect();
    let out = LazyTensor::from_formula(&f, &refs)
        .unwrap()
        .reduce(kind, axis)
        .unwrap();
    let what = format!("{src} {kind:?} {axis:?}");
    match kind {
        ReductionKind::Sum => {
            let got = flat(&out.values.unwrap());
            let want = ref_sum(&dv).concat();
            let scale: f64 = dv
                .iter()
                .flatten()
                .flatten()
                .map(|x| x.abs())
                .fold(0.0, f64::max);
            assert_close(&got, &want, 1e-9, 1e-9 * scale * n.max(m) as f64, &what);
        }
        ReductionKind::LogSumExp => {
            assert_close(
                &flat(&out.values.unwrap()),
                &ref_lse(&dv).concat(),
                1e-9,
                1e-9,
                &what,
            );
        }
        _ => {
            let got = flat(&out.values.unwrap());
            let idx = flat_i64(&out.indices.unwrap());
            let sorted = ref_sorted(&dv, false);
            let want: Vec<f64> = sorted
                .iter()
                .flat_map(|r| r.iter().map(|c| c[0].0))
                .collect();
            assert_close(&got, &want, 1e-12, 1e-14, &what);
            // The chosen index holds the minimum (rounding may reorder near-ties).
            let e = f.dim();
            for (k, &i) in idx.iter().enumerate() {
                let (row, c) = (k / e, k % e);
                let v = dv[row][i as usize][c];
                prop_assert!(
                    (v - want[k]).abs() <= 1e-12 * want[k].abs().max(1e-2),
                    "{}",
                    what
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_formulas_sum_over_j(seed in any::<u64>()) {
        check(seed, ReductionKind::Sum, Axis::J)?;
    }

    #[test]
    fn random_formulas_sum_over_i(seed in any::<u64>()) {
        check(seed, ReductionKind::Sum, Axis::I)?;
    }

    #[test]
    fn random_formulas_logsumexp(seed in any::<u64>()) {
        check(seed, ReductionKind::LogSumExp, Axis::J)?;
    }

    #[test]
    fn random_formulas_min_argmin(seed in any::<u64>()) {
        check(seed, ReductionKind::MinArgMin, Axis::I)?;
    }
}

#[test]
fn f32_matches_f64_on_random_formulas() {
    for seed in 1..20u64 {
        let mut r = Rng(seed * 7919);
        let src = format!("{} + 0.0 * (u + v)", random_formula(&mut r, 3));
        let f = parse(&src, &names()).unwrap();
        let mut g = Rng(seed);
        let ts = [
            g.tensor(&[9, 3], -1.5, 1.5),
            g.tensor(&[300, 3], -1.5, 1.5),
            g.tensor(&[9, 1], -1.5, 1.5),
            g.tensor(&[300, 1], -1.5, 1.5),
            g.tensor(&[1], 0.5, 1.5),
        ];
        let run = |dt: DType| {
            let c: Vec<Tensor> = ts.iter().map(|t| t.to_dtype(dt).unwrap()).collect();
            let refs: Vec<&Tensor> = c.iter().collect();
            flat(
                &LazyTensor::from_formula(&f, &refs)
                    .unwrap()
                    .sum(Axis::J)
                    .unwrap(),
            )
        };
        let (a, b) = (run(DType::F32), run(DType::F64));
        let abs: Vec<f64> = {
            let c: Vec<Tensor> = ts.to_vec();
            let refs: Vec<&Tensor> = c.iter().collect();
            let absf = parse(&format!("Abs({src})"), &names()).unwrap();
            flat(
                &LazyTensor::from_formula(&absf, &refs)
                    .unwrap()
                    .sum(Axis::J)
                    .unwrap(),
            )
        };
        for k in 0..a.len() {
            assert!(
                (a[k] - b[k]).abs() <= 1e-5 * abs[k].max(1.0),
                "{src}: {} vs {}",
                a[k],
                b[k]
            );
        }
    }
}
