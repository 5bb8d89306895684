//! Every reduction against plain-loop references over dense Candle values: f32 and f64, both
//! axes, 1 and 3 components, sizes that cross tile and block boundaries, ties, k > N.

mod common;

use candle_core::{DType, Tensor};
use common::*;
use lazy_kernels::formula::{Expr, VarCat, parse};
use lazy_kernels::{Axis, LazyTensor, ReductionKind};

fn inputs(m: usize, n: usize, seed: u64) -> Vec<(VarCat, Tensor)> {
    let mut r = Rng(seed);
    vec![
        (VarCat::I, r.tensor(&[m, 3], -1., 1.)),
        (VarCat::J, r.tensor(&[n, 3], -1., 1.)),
    ]
}

const FORMULAS: [&str; 4] = [
    "SqDist(Vi(0,3), Vj(1,3))",
    "(Vi(0,3) - Vj(1,3)) * 3.0",
    "-SqDist(Vi(0,3), Vj(1,3)) * 5.0",
    "Concat(Sin(Dot(Vi(0,3), Vj(1,3))), Vj(1,3) * Elem(Vi(0,3), 0))",
];

fn run(
    f: &Expr,
    ins: &[(VarCat, Tensor)],
    dtype: DType,
    kind: ReductionKind,
    axis: Axis,
) -> lazy_kernels::ReductionOutput {
    let ts: Vec<Tensor> = ins
        .iter()
        .map(|(_, t)| t.to_dtype(dtype).unwrap())
        .collect();
    let refs: Vec<&Tensor> = ts.iter().collect();
    LazyTensor::from_formula(f, &refs)
        .unwrap()
        .reduce(kind, axis)
        .unwrap_or_else(|e| panic!("{f} {kind:?}: {e}"))
}

fn tol(dtype: DType) -> f64 {
    if dtype == DType::F64 { 1e-12 } else { 3e-6 }
}

/// Checks one reduction of one formula on one problem, in both dtypes and both axes.
fn check(src: &str, kind: ReductionKind, m: usize, n: usize) {
    let f = parse(src, &[]).unwrap();
    let ins = inputs(m, n, 5 + m as u64);
    // The dense reference, evaluated once for both axes.
    let dense = dense_eval(&f, &ins, m, n).unwrap();
    for axis in [Axis::J, Axis::I] {
        let dv = dense_values(&dense, axis == Axis::J).unwrap();
        let rows = dv.len();
        let e = f.dim();
        for dtype in [DType::F64, DType::F32] {
            let what = format!("{src} {kind:?} {axis:?} {dtype:?}");
            let out = run(&f, &ins, dtype, kind, axis);
            let t = tol(dtype);
            match kind {
                ReductionKind::Sum | ReductionKind::LogSumExp | ReductionKind::SumSoftMaxWeight => {
                    let v = out.values.unwrap();
                    let want = match kind {
                        ReductionKind::Sum => ref_sum(&dv),
                        ReductionKind::LogSumExp => ref_lse(&dv),
                        _ => ref_softmax_weight(&dv),
                    };
                    assert_eq!(v.dims(), &[rows, want[0].len()], "{what}");
                    assert_eq!(v.dtype(), dtype);
                    let scale = (n.max(m)) as f64;
                    assert_close(&flat(&v), &want.concat(), t * 10.0, t * scale, &what);
                }
                ReductionKind::Min
                | ReductionKind::Max
                | ReductionKind::ArgMin
                | ReductionKind::ArgMax
                | ReductionKind::MinArgMin
                | ReductionKind::MaxArgMax
                | ReductionKind::KMin(_)
                | ReductionKind::ArgKMin(_)
                | ReductionKind::KMinArgKMin(_) => {
                    let desc = matches!(
                        kind,
                        ReductionKind::Max | ReductionKind::ArgMax | ReductionKind::MaxArgMax
                    );
                    let k = kind_k(kind);
                    let sorted = ref_sorted(&dv, desc);
                    let shape: Vec<usize> = match (kind.k(), e) {
                        (Some(k), 1) => vec![rows, k],
                        (Some(k), _) => vec![rows, k, e],
                        (None, _) => vec![rows, e],
                    };
                    // Expected (value, index) at [row][rank][component]; +inf / -1 beyond N.
                    let expect = |r: usize, rank: usize, c: usize| -> (f64, i64) {
                        sorted[r][c]
                            .get(rank)
                            .copied()
                            .unwrap_or((f64::INFINITY, -1))
                    };
                    if let Some(v) = &out.values {
                        assert_eq!(v.dims(), shape.as_slice(), "{what}");
                        let got = flat(v);
                        for r in 0..rows {
                            for rank in 0..k {
                                for c in 0..e {
                                    let g = got[(r * k + rank) * e + c];
                                    let w = expect(r, rank, c).0;
                                    assert!(
                                        g == w || (g - w).abs() <= t * 10.0 * w.abs().max(1.0),
                                        "{what} row {r} rank {rank} comp {c}: got {g}, want {w}"
                                    );
                                }
                            }
                        }
                    }
                    if let Some(i) = &out.indices {
                        assert_eq!(i.dims(), shape.as_slice(), "{what}");
                        assert_eq!(i.dtype(), DType::I64);
                        let got = flat_i64(i);
                        for r in 0..rows {
                            for rank in 0..k {
                                for c in 0..e {
                                    let g = got[(r * k + rank) * e + c];
                                    let (wv, wi) = expect(r, rank, c);
                                    if dtype == DType::F64 || wi < 0 {
                                        assert_eq!(g, wi, "{what} row {r} rank {rank} comp {c}");
                                    } else {
                                        // In f32, near-ties may swap: the chosen term's exact
                                        // value must be (nearly) the expected one.
                                        let gv = dv[r][g as usize][c];
                                        assert!(
                                            (gv - wv).abs() <= 1e-5 * wv.abs().max(1.0),
                                            "{what} row {r} rank {rank}: index {g} has {gv}, want {wv}"
                                        );
                                    }
                                }
                            }
                        }
                    }
                }
                _ => unreachable!(),
            }
        }
    }
}

fn kind_k(kind: ReductionKind) -> usize {
    kind.k().unwrap_or(1)
}

const SIZES: [(usize, usize); 3] = [(37, 1100), (70, 13), (1, 1)];

#[test]
fn sum_and_logsumexp() {
    for (m, n) in SIZES {
        for src in FORMULAS {
            check(src, ReductionKind::Sum, m, n);
            check(src, ReductionKind::LogSumExp, m, n);
        }
    }
}

#[test]
fn sum_softmax_weight() {
    for (m, n) in SIZES {
        check(FORMULAS[3], ReductionKind::SumSoftMaxWeight, m, n);
        check(
            "Concat(-SqDist(Vi(0,3), Vj(1,3)) * 30.0, Vj(1,3))",
            ReductionKind::SumSoftMaxWeight,
            m,
            n,
        );
    }
}

#[test]
fn min_max_and_arg() {
    for (m, n) in SIZES {
        for src in &FORMULAS[..3] {
            for kind in [
                ReductionKind::Min,
                ReductionKind::Max,
                ReductionKind::ArgMin,
                ReductionKind::ArgMax,
                ReductionKind::MinArgMin,
                ReductionKind::MaxArgMax,
            ] {
                check(src, kind, m, n);
            }
        }
    }
}

#[test]
fn kmin_family_including_k_above_n() {
    for (m, n) in SIZES {
        for src in &FORMULAS[..2] {
            for k in [1, 5] {
                check(src, ReductionKind::KMin(k), m, n);
                check(src, ReductionKind::ArgKMin(k), m, n);
                check(src, ReductionKind::KMinArgKMin(k), m, n);
            }
        }
    }
    // k far above N: padded with +inf and -1.
    check(FORMULAS[0], ReductionKind::KMinArgKMin(20), 5, 3);
}

#[test]
fn ties_resolve_to_the_smallest_index() {
    // Step and Sign produce many exact ties.
    for src in ["Step(Vi(0,3) - Vj(1,3))", "Sign(Vi(0,3) - Vj(1,3)) * 2.0"] {
        for kind in [
            ReductionKind::ArgMin,
            ReductionKind::ArgMax,
            ReductionKind::MinArgMin,
            ReductionKind::KMinArgKMin(4),
        ] {
            check(src, kind, 40, 700);
        }
    }
}

#[test]
fn half_precision_is_computed_in_f32() {
    let f = parse("Exp(-SqDist(Vi(0,3), Vj(1,3))) * Elem(Vj(1,3), 0)", &[]).unwrap();
    let ins = inputs(20, 300, 3);
    let dense = dense_eval(&f, &ins, 20, 300).unwrap();
    let want = ref_sum(&dense_values(&dense, true).unwrap()).concat();
    for dtype in [DType::F16, DType::BF16] {
        // Reference on the rounded inputs, so only the computation is compared.
        let rounded: Vec<(VarCat, Tensor)> = ins
            .iter()
            .map(|(c, t)| (*c, t.to_dtype(dtype).unwrap().to_dtype(DType::F64).unwrap()))
            .collect();
        let dense_r = dense_eval(&f, &rounded, 20, 300).unwrap();
        let want_r = ref_sum(&dense_values(&dense_r, true).unwrap()).concat();
        let out = run(&f, &ins, dtype, ReductionKind::Sum, Axis::J)
            .values
            .unwrap();
        assert_eq!(out.dtype(), dtype);
        // One rounding of the f32 result to the half type.
        let eps = if dtype == DType::F16 { 1e-3 } else { 8e-3 };
        assert_close(&flat(&out), &want_r, eps, 1e-3, &format!("{dtype:?}"));
        assert_close(
            &flat(&out),
            &want,
            0.05,
            0.05,
            &format!("{dtype:?} vs exact inputs"),
        );
    }
}

#[test]
fn results_do_not_depend_on_the_number_of_threads() {
    let f = parse("Exp(-SqDist(Vi(0,3), Vj(1,3))) * Sum(Vj(1,3))", &[]).unwrap();
    let ins = inputs(300, 2000, 9);
    let a = flat(
        &run(&f, &ins, DType::F32, ReductionKind::Sum, Axis::J)
            .values
            .unwrap(),
    );
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let b = pool.install(|| {
        flat(
            &run(&f, &ins, DType::F32, ReductionKind::Sum, Axis::J)
                .values
                .unwrap(),
        )
    });
    assert_eq!(a, b);
}

/// The fused Gaussian path (one pass, long tiles) for 1 to 16 dimensions and the unfused one
/// beyond, across tile boundaries, both axes, f32 and f64; weights of 1 column (fused), 2 and 5
/// columns (four columns per pass plus a remainder).
/// `Sum` of the formula `src` over both axes, in f64 and f32, against the dense reference.
fn check_sum_against_dense(src: &str, ins: &[(VarCat, Tensor)], m: usize, n: usize) {
    let f = parse(src, &[]).unwrap();
    let dense = dense_eval(&f, ins, m, n).unwrap();
    for axis in [Axis::J, Axis::I] {
        let want = ref_sum(&dense_values(&dense, axis == Axis::J).unwrap()).concat();
        for dtype in [DType::F64, DType::F32] {
            let out = run(&f, ins, dtype, ReductionKind::Sum, axis);
            let t = tol(dtype);
            assert_close(
                &flat(&out.values.unwrap()),
                &want,
                t * 10.0,
                t * 10.0 * n as f64,
                &format!("{src} {axis:?} {dtype:?}"),
            );
        }
    }
}

#[test]
fn gaussian_kernel_sums_across_dimensions_and_tiles() {
    for d in [1, 2, 3, 4, 5, 12, 17] {
        for (m, n) in [(70, 5000), (3, 2049)] {
            let mut r = Rng(100 + d as u64);
            let ins = vec![
                (VarCat::I, r.tensor(&[m, d], 0., 1.)),
                (VarCat::J, r.tensor(&[n, d], 0., 1.)),
                (VarCat::P, r.tensor(&[1], 0.2, 0.5)),
                (VarCat::J, r.tensor(&[n, 1], -1., 1.)),
                (VarCat::J, r.tensor(&[n, 2], -1., 1.)),
                (VarCat::J, r.tensor(&[n, 5], -1., 1.)),
            ];
            for w in ["Vj(3,1)", "Vj(4,2)", "Vj(5,5)"] {
                let src =
                    format!("Exp(-SqDist(Vi(0,{d}), Vj(1,{d})) / (2.0 * Square(Pm(2,1)))) * {w}");
                check_sum_against_dense(&src, &ins, m, n);
            }
            // `exp(-y)` as `exp(y * -1)`, the fused Laplacian (`exp(s |x - y|) * w`, the square
            // root inside the pass), and a distance the root's weight reads too (which must
            // not be fused away).
            let sq = format!("SqDist(Vi(0,{d}), Vj(1,{d}))");
            for src in [
                format!("Exp(-{sq}) * Vj(3,1)"),
                format!("Exp(-Sqrt({sq})) * Vj(3,1)"),
                format!("Exp(-Sqrt({sq}) / Pm(2,1)) * Vj(3,1)"),
                format!("Exp(-Sqrt({sq})) * Sqrt({sq})"),
            ] {
                check_sum_against_dense(&src, &ins, m, n);
            }
            // The Gaussian kernel with its moments (the shape of its gradients), with and
            // without a weight, with both signs of the difference.
            let k = format!("Exp(-SqDist(Vi(0,{d}), Vj(1,{d})) / (2.0 * Square(Pm(2,1))))");
            let sq = format!("SqDist(Vi(0,{d}), Vj(1,{d}))");
            let moments = if [1, 3, 17].contains(&d) { 3 } else { 1 };
            for src in [
                format!(
                    "Concat(Concat(Vj(3,1) * {k} * (Vi(0,{d}) - Vj(1,{d})), Vj(3,1) * {k} * {sq}), Vj(3,1) * {k})"
                ),
                format!("Concat(-({k} * (Vj(1,{d}) - Vi(0,{d}))), {k})"),
                format!("{k} * {sq}"),
            ]
            .into_iter()
            .take(moments)
            {
                check_sum_against_dense(&src, &ins, m, n);
            }
            // Radial-kernel gradient shapes: coefficients times `x - y` (or `y - x`), summed
            // without storing the products.
            let r = format!("Sqrt({sq})");
            for src in [
                format!(
                    "Concat(Vj(3,1) * Exp(-{r}) / {r} * (Vi(0,{d}) - Vj(1,{d})), Vj(3,1) * Exp(-{r}))"
                ),
                format!("-(Inv(1.0 + {sq}) * (Vj(1,{d}) - Vi(0,{d})) * Pm(2,1))"),
            ]
            .into_iter()
            .take(if d > 1 { 2 } else { 0 })
            {
                check_sum_against_dense(&src, &ins, m, n);
            }
            // The fused log-sum-exp of a scaled squared distance.
            let src = format!("-SqDist(Vi(0,{d}), Vj(1,{d})) / (2.0 * Square(Pm(2,1)))");
            let f = parse(&src, &[]).unwrap();
            let dense = dense_eval(&f, &ins, m, n).unwrap();
            for axis in [Axis::J, Axis::I] {
                let want = ref_lse(&dense_values(&dense, axis == Axis::J).unwrap()).concat();
                for dtype in [DType::F64, DType::F32] {
                    let out = run(&f, &ins, dtype, ReductionKind::LogSumExp, axis);
                    let t = tol(dtype);
                    let what = format!("{src} {axis:?} {dtype:?}");
                    assert_close(
                        &flat(&out.values.unwrap()),
                        &want,
                        t * 10.0,
                        t * 10.0,
                        &what,
                    );
                }
            }
        }
    }
}

/// Inputs of any layout (transposed, narrowed) give the results of contiguous copies.
#[test]
fn strided_inputs_are_accepted() {
    let mut r = Rng(31);
    let xt = r.tensor(&[3, 40], -1., 1.).to_dtype(DType::F32).unwrap(); // (D, M)
    let y = r.tensor(&[90, 5], -1., 1.).to_dtype(DType::F32).unwrap(); // columns 1..4 used
    let x = xt.t().unwrap(); // (M, D), not contiguous
    let yn = y.narrow(1, 1, 3).unwrap(); // (N, D), not contiguous
    assert!(!x.is_contiguous() && !yn.is_contiguous());
    let run = |x: &Tensor, y: &Tensor| {
        let f = (-LazyTensor::vi(x)
            .unwrap()
            .sqdist(&LazyTensor::vj(y).unwrap()))
        .exp();
        flat(&f.sum(Axis::J).unwrap())
    };
    let want = run(&x.contiguous().unwrap(), &yn.contiguous().unwrap());
    assert_eq!(run(&x, &yn), want);
}

/// Few output rows and many terms: the terms are split across threads and the partial states
/// combined; results match the dense reference and do not depend on the number of threads.
#[test]
fn few_rows_many_terms_split_the_terms() {
    let (m, n) = (3, 140_000);
    let mut r = Rng(57);
    let ins = vec![
        (VarCat::I, r.tensor(&[m, 2], 0., 1.)),
        (VarCat::J, r.tensor(&[n, 2], 0., 1.)),
    ];
    let f = parse(
        "Exp(-SqDist(Vi(0,2), Vj(1,2)) * 3.0) * Elem(Vj(1,2), 0)",
        &[],
    )
    .unwrap();
    let g = parse("SqDist(Vi(0,2), Vj(1,2))", &[]).unwrap();
    let dv_f = dense_values(&dense_eval(&f, &ins, m, n).unwrap(), true).unwrap();
    let dv_g = dense_values(&dense_eval(&g, &ins, m, n).unwrap(), true).unwrap();
    let sum = flat(
        &run(&f, &ins, DType::F64, ReductionKind::Sum, Axis::J)
            .values
            .unwrap(),
    );
    assert_close(&sum, &ref_sum(&dv_f).concat(), 1e-12, 1e-9, "split Sum");
    let lse = flat(
        &run(&f, &ins, DType::F64, ReductionKind::LogSumExp, Axis::J)
            .values
            .unwrap(),
    );
    assert_close(
        &lse,
        &ref_lse(&dv_f).concat(),
        1e-12,
        1e-12,
        "split LogSumExp",
    );
    let out = run(&g, &ins, DType::F64, ReductionKind::KMinArgKMin(4), Axis::J);
    let sorted = ref_sorted(&dv_g, false);
    let want_i: Vec<i64> = sorted
        .iter()
        .flat_map(|r| r[0][..4].iter().map(|p| p.1))
        .collect();
    assert_eq!(flat_i64(&out.indices.unwrap()), want_i);
    let (mv, mi) = {
        let o = run(&g, &ins, DType::F64, ReductionKind::MinArgMin, Axis::J);
        (flat(&o.values.unwrap()), flat_i64(&o.indices.unwrap()))
    };
    let want_m: Vec<f64> = sorted.iter().map(|r| r[0][0].0).collect();
    assert_close(&mv, &want_m, 0.0, 1e-15, "split Min");
    assert_eq!(mi, sorted.iter().map(|r| r[0][0].1).collect::<Vec<_>>());
    // Same bits with one thread.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let one = pool.install(|| {
        flat(
            &run(&f, &ins, DType::F32, ReductionKind::Sum, Axis::J)
                .values
                .unwrap(),
        )
    });
    let many = flat(
        &run(&f, &ins, DType::F32, ReductionKind::Sum, Axis::J)
            .values
            .unwrap(),
    );
    assert_eq!(one, many);
}
