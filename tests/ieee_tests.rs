//! IEEE semantics of every reduction (the rules of `src/reduction/mod.rs`): rows with `+inf`,
//! `-inf`, both, `NaN`, only `-inf`, only `+inf` and subnormal terms, in f32 and f64, over both
//! axes, through the generic and the fused Sum paths; against dense Candle (the matrix of the
//! formula's values built with Candle ops, then reduced) and, where the rules differ from it,
//! against plain loops implementing the documented rule. Then the gradients of these cases,
//! `KernelOperator::matmul` with infinite weights, and an f32 sum of 10^7 terms against f64.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::{flat, flat_i64};
use lazy_kernels::{Axis, Kernel, KernelOperator, LazyTensor, ReductionKind};

const INF: f64 = f64::INFINITY;
const NAN: f64 = f64::NAN;
/// Terms per row: more than two CPU tiles (512), and more than one fused tile (2048).
const T: usize = 2600;
/// Where the special values sit: in different tiles.
const AT_INF: usize = 3;
const AT_NEG_INF: usize = 1500;
const AT_NAN: usize = 700;

/// The rows of terms tested, by name.
fn patterns(dtype: DType) -> Vec<(&'static str, Vec<f64>)> {
    let base: Vec<f64> = (0..T).map(|j| (j as f64 * 0.37).sin() * 2.0).collect();
    let with = |sets: &[(usize, f64)]| {
        let mut v = base.clone();
        for &(j, x) in sets {
            v[j] = x;
        }
        v
    };
    // Subnormal in the dtype (and their products by 0.5 too).
    let tiny = if dtype == DType::F32 { 1e-41 } else { 1e-310 };
    vec![
        ("finite", base.clone()),
        ("+inf", with(&[(AT_INF, INF)])),
        ("-inf", with(&[(AT_NEG_INF, -INF)])),
        ("both", with(&[(AT_INF, INF), (AT_NEG_INF, -INF)])),
        ("NaN", with(&[(AT_NAN, NAN)])),
        ("NaN, +inf", with(&[(AT_INF, INF), (AT_NAN, NAN)])),
        ("NaN, -inf", with(&[(AT_NAN, NAN), (AT_NEG_INF, -INF)])),
        ("all -inf", vec![-INF; T]),
        ("all +inf", vec![INF; T]),
        (
            "subnormal",
            (0..T).map(|j| tiny * (1 + j % 7) as f64).collect(),
        ),
    ]
}

fn cpu() -> Device {
    Device::Cpu
}

fn col(v: &[f64], dtype: DType) -> Tensor {
    Tensor::from_vec(v.to_vec(), (v.len(), 1), &cpu())
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// The formula's two shapes: `x * y` (the CPU backend's fused product root for Sum) and
/// `x + y` (the generic root).
#[derive(Clone, Copy, Debug)]
enum Shape {
    Product,
    Add,
}

/// One problem: two output rows whose terms are `pattern` combined with a per-row scalar
/// (1 and 0.5 for products, 0 and 1.5 for sums), the pattern on the reduced axis.
struct Problem {
    /// The row scalars and the pattern, as the lazy inputs (`x` an i-variable).
    x: Tensor,
    y: Tensor,
    /// The second component `G` of SumSoftMaxWeight, on the reduced axis.
    g: Tensor,
    /// The dense matrix of the formula's values, rows = output rows (Candle ops in the dtype).
    dense: Tensor,
    shape: Shape,
    axis: Axis,
}

impl Problem {
    fn new(pattern: &[f64], dtype: DType, shape: Shape, axis: Axis) -> Problem {
        let row = match shape {
            Shape::Product => [1.0, 0.5],
            Shape::Add => [0.0, 1.5],
        };
        let (rows, terms) = (col(&row, dtype), col(pattern, dtype));
        let gv: Vec<f64> = (0..pattern.len()).map(|j| (j as f64).cos()).collect();
        let g = col(&gv, dtype);
        let op = |a: &Tensor, b: &Tensor| match shape {
            Shape::Product => a.broadcast_mul(&b.t().unwrap()).unwrap(),
            Shape::Add => a.broadcast_add(&b.t().unwrap()).unwrap(),
        };
        let (x, y, dense) = match axis {
            Axis::J => (rows.clone(), terms.clone(), op(&rows, &terms)),
            Axis::I => (terms.clone(), rows.clone(), op(&terms, &rows).t().unwrap()),
        };
        Problem {
            x,
            y,
            g,
            dense,
            shape,
            axis,
        }
    }

    fn formula(&self) -> LazyTensor {
        let (x, y) = (
            LazyTensor::vi(&self.x).unwrap(),
            LazyTensor::vj(&self.y).unwrap(),
        );
        match self.shape {
            Shape::Product => x * y,
            Shape::Add => x + y,
        }
    }

    fn reduce(&self, kind: ReductionKind) -> (Vec<f64>, Vec<i64>) {
        let f = if kind == ReductionKind::SumSoftMaxWeight {
            let g = match self.axis {
                Axis::J => LazyTensor::vj(&self.g),
                Axis::I => LazyTensor::vi(&self.g),
            };
            self.formula().concat(&g.unwrap())
        } else {
            self.formula()
        };
        let out = f.reduce(kind, self.axis).unwrap();
        (
            out.values.as_ref().map(flat).unwrap_or_default(),
            out.indices.as_ref().map(flat_i64).unwrap_or_default(),
        )
    }

    /// The dense rows as f64 (the values the lazy formula computes, in the dtype).
    fn rows(&self) -> Vec<Vec<f64>> {
        self.dense.to_dtype(DType::F64).unwrap().to_vec2().unwrap()
    }
}

/// Same value: equal (infinities included), both NaN, or finite within `tol`.
fn same(got: f64, want: f64, tol: f64) -> bool {
    if !want.is_finite() || !got.is_finite() {
        return got == want || (got.is_nan() && want.is_nan());
    }
    (got - want).abs() <= tol
}

fn check_values(got: &[f64], want: &[f64], tols: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (r, ((&g, &w), &t)) in got.iter().zip(want).zip(tols).enumerate() {
        assert!(same(g, w, t), "{what}, row {r}: got {g:e}, want {w:e}");
    }
}

/// The relative tolerance of a dtype (sums: relative to the sum of `|F|`).
fn rtol(dtype: DType) -> f64 {
    if dtype == DType::F32 { 2e-6 } else { 1e-13 }
}

/// The spacing of subnormals in the dtype: the rounding of each subnormal product, which the
/// fused product root (`x * sum_j y_j`) does not make as the dense matrix does.
fn subnormal_ulp(dtype: DType) -> f64 {
    if dtype == DType::F32 {
        f32::from_bits(1) as f64
    } else {
        f64::from_bits(1)
    }
}

/// Every case: patterns x dtypes x axes x formula shapes.
fn for_each_case(mut f: impl FnMut(&str, &str, &Problem, DType)) {
    for dtype in [DType::F64, DType::F32] {
        for (name, pattern) in patterns(dtype) {
            for axis in [Axis::J, Axis::I] {
                for shape in [Shape::Product, Shape::Add] {
                    let p = Problem::new(&pattern, dtype, shape, axis);
                    let what = format!("{name} {dtype:?} {axis:?} {shape:?}");
                    f(name, &what, &p, dtype);
                }
            }
        }
    }
}

/// Sum: dense Candle's sum (of the same values, in f64) in every case, and the rules.
#[test]
fn sum_follows_ieee_and_dense_candle() {
    for_each_case(|name, what, p, dtype| {
        let (got, _) = p.reduce(ReductionKind::Sum);
        let d64 = p.dense.to_dtype(DType::F64).unwrap();
        let want = flat(&d64.sum(1).unwrap());
        let tols: Vec<f64> = flat(&d64.abs().unwrap().sum(1).unwrap())
            .iter()
            .map(|s| s * rtol(dtype) + T as f64 * subnormal_ulp(dtype))
            .collect();
        check_values(&got, &want, &tols, what);
        // The dense sum in the dtype itself (Candle's own order) has the same class.
        let native = flat(&p.dense.sum(1).unwrap());
        for (g, n) in got.iter().zip(&native) {
            assert_eq!(g.is_finite(), n.is_finite(), "{what}: {g} vs Candle {n}");
        }
        let rule = match name {
            "+inf" | "all +inf" => Some(INF),
            "-inf" | "all -inf" => Some(-INF),
            "both" | "NaN" | "NaN, +inf" | "NaN, -inf" => Some(NAN),
            _ => None,
        };
        if let Some(r) = rule {
            assert!(got.iter().all(|&g| same(g, r, 0.0)), "{what}: {got:?}");
        }
        if name == "subnormal" && matches!(p.shape, Shape::Product) {
            assert!(got.iter().all(|&g| g > 0.0), "{what}: {got:?}");
        }
    });
}

/// LogSumExp: dense Candle's `log(sum(exp(F)))` (no overflow at these values) in every case.
#[test]
fn logsumexp_follows_ieee_and_dense_candle() {
    for_each_case(|name, what, p, dtype| {
        let (got, _) = p.reduce(ReductionKind::LogSumExp);
        let d64 = p.dense.to_dtype(DType::F64).unwrap();
        let want = flat(&d64.exp().unwrap().sum(1).unwrap().log().unwrap());
        let tols = vec![10.0 * rtol(dtype); got.len()];
        check_values(&got, &want, &tols, what);
        if matches!(name, "+inf" | "both" | "all +inf") {
            assert!(got.iter().all(|&g| g == INF), "{what}: {got:?}");
        }
        if name == "all -inf" {
            assert!(got.iter().all(|&g| g == -INF), "{what}: {got:?}");
        }
    });
}

/// SumSoftMaxWeight: the documented rule, and dense Candle (`exp(F) G / sum exp(F)`) wherever
/// Candle's result is not `NaN`.
#[test]
fn softmax_weights_follow_the_limit_rule() {
    for_each_case(|name, what, p, dtype| {
        let (got, _) = p.reduce(ReductionKind::SumSoftMaxWeight);
        let g = flat(&p.g);
        let want: Vec<f64> = p
            .rows()
            .iter()
            .map(|s| common::ieee_rule(ReductionKind::SumSoftMaxWeight, s, &g).unwrap())
            .collect();
        let tols = vec![20.0 * rtol(dtype); got.len()];
        check_values(&got, &want, &tols, what);
        let d64 = p.dense.to_dtype(DType::F64).unwrap();
        let w = d64.exp().unwrap();
        let g64 = p.g.to_dtype(DType::F64).unwrap();
        let dense = flat(
            &lazy_kernels::linalg::matmul(&w, &g64)
                .unwrap()
                .div(&w.sum_keepdim(1).unwrap())
                .unwrap(),
        );
        for (r, (&o, &d)) in got.iter().zip(&dense).enumerate() {
            if !d.is_nan() {
                assert!(
                    same(o, d, 20.0 * rtol(dtype)),
                    "{what} row {r}: {o} vs Candle {d}"
                );
            }
        }
        if name == "all -inf" {
            assert!(got.iter().all(|&v| v == 0.0), "{what}: {got:?}");
            assert!(dense.iter().all(|v| v.is_nan()), "Candle: 0 / 0");
        }
    });
}

/// The documented order of the selections: `NaN` first, then increasing (or decreasing)
/// values, ties to the earlier index; the first `k` of a row with their indices.
fn select_rule(row: &[f64], max: bool, k: usize) -> Vec<(f64, i64)> {
    let key = |v: f64| if max { -v } else { v };
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (row[a], row[b]);
        match (x.is_nan(), y.is_nan()) {
            (true, false) => std::cmp::Ordering::Less,
            (false, true) => std::cmp::Ordering::Greater,
            (true, true) => a.cmp(&b),
            _ => key(x).partial_cmp(&key(y)).unwrap().then(a.cmp(&b)),
        }
    });
    order[..k].iter().map(|&j| (row[j], j as i64)).collect()
}

/// Min, Max, their Arg and both forms, KMin, ArgKMin: the NaN-first order with infinities,
/// and dense Candle's `min`/`max` on rows without `NaN`.
#[test]
fn selections_keep_nan_first_with_infinities() {
    for_each_case(|_, what, p, _| {
        let rows = p.rows();
        for (kind, max, k) in [
            (ReductionKind::MinArgMin, false, 1),
            (ReductionKind::MaxArgMax, true, 1),
            (ReductionKind::KMinArgKMin(3), false, 3),
        ] {
            let (vals, idx) = p.reduce(kind);
            let want: Vec<(f64, i64)> = rows.iter().flat_map(|r| select_rule(r, max, k)).collect();
            let what = format!("{what} {kind:?}");
            for (r, (w, (v, i))) in want.iter().zip(vals.iter().zip(&idx)).enumerate() {
                assert!(
                    same(*v, w.0, 0.0) && *i == w.1,
                    "{what} {r}: ({v}, {i}) vs {w:?}"
                );
            }
            // The values-only and indices-only kinds agree with the pair.
            let (only_vals, only_idx) = match kind {
                ReductionKind::MinArgMin => (ReductionKind::Min, ReductionKind::ArgMin),
                ReductionKind::MaxArgMax => (ReductionKind::Max, ReductionKind::ArgMax),
                _ => (ReductionKind::KMin(k), ReductionKind::ArgKMin(k)),
            };
            let v2 = p.reduce(only_vals).0;
            assert!(
                v2.iter().zip(&vals).all(|(a, b)| same(*a, *b, 0.0)),
                "{what}"
            );
            assert_eq!(p.reduce(only_idx).1, idx, "{what}");
        }
        if !rows.iter().flatten().any(|v| v.is_nan()) {
            let d = &p.dense;
            let (mn, _) = p.reduce(ReductionKind::Min);
            let (mx, _) = p.reduce(ReductionKind::Max);
            assert_eq!(mn, flat(&d.min(1).unwrap()), "{what}: Candle min");
            assert_eq!(mx, flat(&d.max(1).unwrap()), "{what}: Candle max");
        }
    });
}

/// The gradient of `sum_rows(reduction(x_i + y_j))` with respect to `y` (the pattern), from
/// ours and from dense Candle, in f64.
fn grads(pattern: &[f64], kind: ReductionKind) -> (Vec<f64>, Option<Vec<f64>>) {
    let x = Var::from_tensor(&col(&[0.0, 1.5], DType::F64)).unwrap();
    let y = Var::from_tensor(&col(pattern, DType::F64)).unwrap();
    let f = LazyTensor::vi(x.as_tensor()).unwrap() + LazyTensor::vj(y.as_tensor()).unwrap();
    let out = f.reduce(kind, Axis::J).unwrap().values.unwrap();
    let ours = out.sum_all().unwrap().backward().unwrap();
    let ours = flat(ours.get(y.as_tensor()).unwrap());
    let d = x
        .as_tensor()
        .broadcast_add(&y.as_tensor().t().unwrap())
        .unwrap();
    let dense = match kind {
        ReductionKind::Sum => Some(d.sum(1).unwrap()),
        ReductionKind::LogSumExp => Some(d.exp().unwrap().sum(1).unwrap().log().unwrap()),
        _ => None,
    };
    let dense = dense.map(|o| {
        let g = o.sum_all().unwrap().backward().unwrap();
        flat(g.get(y.as_tensor()).unwrap())
    });
    (ours, dense)
}

/// Gradients: Sum's is the incoming gradient whatever the term (2 = both rows' 1); LogSumExp's
/// the softmax weights, `NaN` at `+inf` terms and everywhere in a row of `-inf` only, as dense
/// Candle's; Min's goes to the selected term, `NaN` and `-inf` ones included.
#[test]
fn gradients_of_the_special_cases_are_the_documented_ones() {
    for (name, pattern) in patterns(DType::F64) {
        let (ours, dense) = grads(&pattern, ReductionKind::Sum);
        assert!(ours.iter().all(|&g| g == 2.0), "Sum {name}");
        assert_eq!(ours, dense.unwrap(), "Sum {name}");

        let (ours, dense) = grads(&pattern, ReductionKind::LogSumExp);
        let tols = vec![1e-12; ours.len()];
        check_values(
            &ours,
            &dense.unwrap(),
            &tols,
            &format!("LogSumExp grad {name}"),
        );
        match name {
            "+inf" | "both" => {
                assert!(ours[AT_INF].is_nan(), "{name}");
                assert!(
                    ours.iter()
                        .enumerate()
                        .all(|(j, &g)| j == AT_INF || g == 0.0)
                );
            }
            "all -inf" | "all +inf" => assert!(ours.iter().all(|g| g.is_nan()), "{name}"),
            "-inf" => assert_eq!(ours[AT_NEG_INF], 0.0),
            _ => {}
        }

        let (ours, _) = grads(&pattern, ReductionKind::Min);
        let at = select_rule(&pattern, false, 1)[0].1 as usize;
        for (j, &g) in ours.iter().enumerate() {
            assert_eq!(g, if j == at { 2.0 } else { 0.0 }, "Min grad {name} at {j}");
        }
    }
}

/// SumSoftMaxWeight's gradients: 0 for a fully masked row (its output is the constant 0) and
/// for `-inf` scores; `NaN` at the `+inf` scores of a row, 0 at its other terms.
#[test]
fn softmax_gradients_of_masked_and_infinite_rows() {
    for (name, pattern) in [
        ("all -inf", vec![-INF; T]),
        ("-inf", patterns(DType::F64)[2].1.clone()),
        ("+inf", patterns(DType::F64)[1].1.clone()),
    ] {
        let s = Var::from_tensor(&col(&pattern, DType::F64)).unwrap();
        let gv: Vec<f64> = (0..T).map(|j| (j as f64).cos()).collect();
        let g = Var::from_tensor(&col(&gv, DType::F64)).unwrap();
        let x = col(&[0.0], DType::F64);
        let scores = LazyTensor::vi(&x).unwrap() + LazyTensor::vj(s.as_tensor()).unwrap();
        let out = scores
            .sum_softmax_weight(&LazyTensor::vj(g.as_tensor()).unwrap(), Axis::J)
            .unwrap();
        let grads = out.sum_all().unwrap().backward().unwrap();
        let ds = flat(grads.get(s.as_tensor()).unwrap());
        let dg = flat(grads.get(g.as_tensor()).unwrap());
        match name {
            "all -inf" => {
                assert_eq!(flat(&out), vec![0.0]);
                assert!(ds.iter().chain(&dg).all(|&v| v == 0.0), "{name}");
            }
            "-inf" => {
                assert_eq!((ds[AT_NEG_INF], dg[AT_NEG_INF]), (0.0, 0.0));
                assert!(ds.iter().chain(&dg).all(|v| v.is_finite()), "{name}");
                // The others against central finite differences of the forward pass.
                let h = 1e-6;
                let at = |j: usize, d: f64| {
                    let mut gp = gv.clone();
                    gp[j] += d;
                    let gt = col(&gp, DType::F64);
                    let w = LazyTensor::vj(&gt).unwrap();
                    flat(&scores.sum_softmax_weight(&w, Axis::J).unwrap())[0]
                };
                for j in [0, 10, AT_NEG_INF + 1] {
                    let fd = (at(j, h) - at(j, -h)) / (2.0 * h);
                    assert!(
                        (fd - dg[j]).abs() < 1e-8,
                        "{name} dG {j}: {fd} vs {}",
                        dg[j]
                    );
                }
            }
            _ => {
                assert_eq!(flat(&out), vec![gv[AT_INF]]);
                assert!(ds[AT_INF].is_nan() && dg[AT_INF].is_nan(), "{name}");
                let others =
                    |v: &[f64]| v.iter().enumerate().all(|(j, &x)| j == AT_INF || x == 0.0);
                assert!(others(&ds) && others(&dg), "{name}");
            }
        }
    }
}

/// `KernelOperator::matmul` (a lazy Sum of `K_ij b_j`, the fused product path) with infinite
/// and `NaN` weights, f64 and f32: the dense product's results (the kernel is positive).
#[test]
fn kernel_matmul_with_infinite_weights() {
    for dtype in [DType::F64, DType::F32] {
        let x = Tensor::arange(0u32, 40, &cpu())
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let x = (x.reshape((20, 2)).unwrap() * 0.1).unwrap();
        let y = (x.clone() + 0.05).unwrap();
        let ls = Tensor::new(&[1.0f64], &cpu())
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let k = KernelOperator::new(Kernel::gaussian(&ls), &x, &y).unwrap();
        for (name, sets, want) in [
            ("+inf", vec![(4, INF)], INF),
            ("-inf", vec![(15, -INF)], -INF),
            ("both", vec![(4, INF), (15, -INF)], NAN),
            ("NaN", vec![(9, NAN)], NAN),
        ] {
            let mut b: Vec<f64> = (0..20).map(|j| j as f64 * 0.1 - 1.0).collect();
            for (j, v) in sets {
                b[j] = v;
            }
            let bt = Tensor::from_vec(b, 20, &cpu())
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let got = flat(&k.matmul(&bt).unwrap());
            assert!(
                got.iter().all(|&g| same(g, want, 0.0)),
                "{name} {dtype:?}: {got:?}"
            );
            // Dense: the kernel matrix from the operator's rows, times b.
            let dense = k.rows(&(0..20).collect::<Vec<_>>()).unwrap();
            let dense =
                flat(&lazy_kernels::linalg::matmul(&dense, &bt.reshape((20, 1)).unwrap()).unwrap());
            assert!(
                dense.iter().all(|&g| same(g, want, 0.0)),
                "dense {name}: {dense:?}"
            );
        }
    }
}

/// An f32 sum of 10^7 positive terms agrees with the f64 sum of the same terms to 1e-5
/// (issue 17, point 6), through the generic and the fused product roots.
#[test]
fn f32_sum_of_ten_million_terms_matches_f64() {
    let n = 10_000_000;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let terms: Vec<f32> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            0.5 + (state >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect();
    let want: f64 = terms.iter().map(|&v| v as f64).sum();
    let y = Tensor::from_vec(terms, (n, 1), &cpu()).unwrap();
    for (shape, x) in [(Shape::Product, 1f32), (Shape::Add, 0f32)] {
        let x = Tensor::new(&[[x]], &cpu()).unwrap();
        let (xl, yl) = (LazyTensor::vi(&x).unwrap(), LazyTensor::vj(&y).unwrap());
        let f = match shape {
            Shape::Product => xl * yl,
            Shape::Add => xl + yl,
        };
        let got = flat(&f.sum(Axis::J).unwrap())[0];
        let rel = (got - want).abs() / want;
        assert!(rel < 1e-5, "{shape:?}: {got} vs {want} (relative {rel:e})");
        // The f32 rounding of the result is the only error left.
        assert!(rel < 1e-7, "{shape:?}: relative error {rel:e}");
    }
}
