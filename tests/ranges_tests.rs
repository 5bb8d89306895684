//! Block-sparse reductions (`LazyTensor::with_ranges`) against dense masked references: every
//! reduction kind, both axes, f32 and f64, clusters from a grid and from labels, random masks
//! with rows and columns that keep nothing; gradients against Candle's autodiff of the dense
//! masked computation; skipped blocks never evaluated; the helpers; bad inputs.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::*;
use lazy_kernels::formula::{VarCat, parse};
use lazy_kernels::{
    Axis, BlockSparse, Clusters, LazyTensor, Path, ReductionKind, ReductionOptions,
};

/// A problem in sorted order: points `x` (M, 3), `y` (N, 3), weights `b` (N, 2), the clusters
/// of each side, the cluster mask and the block-sparse ranges built from it.
struct Problem {
    x: Tensor,
    y: Tensor,
    b: Tensor,
    rows: Clusters,
    cols: Clusters,
    mask: Vec<Vec<bool>>,
    ranges: BlockSparse,
}

impl Problem {
    /// Row clusters from a grid, column clusters from labels (one unused), a random mask with
    /// `p` kept; `cover`: every row and column cluster keeps at least one block, else row
    /// cluster 0 and column cluster 1 keep none.
    fn new(m: usize, n: usize, seed: u64, p: f64, cover: bool) -> Problem {
        let mut r = Rng(seed);
        let x = r.tensor(&[m, 3], 0., 1.);
        let y = r.tensor(&[n, 3], 0., 1.);
        let b = r.tensor(&[n, 2], 0.5, 1.5);
        let rows = Clusters::grid(&x, 0.45).unwrap();
        let labels: Vec<usize> = (0..n).map(|_| [0, 1, 2, 3, 5][r.below(5)]).collect();
        let cols = Clusters::from_labels(&labels).unwrap();
        assert_eq!(cols.num_clusters(), 6);
        let (cr, cc) = (rows.num_clusters(), cols.num_clusters());
        assert!(cr >= 4, "{cr} row clusters");
        let mut mask: Vec<Vec<bool>> = (0..cr)
            .map(|_| (0..cc).map(|_| r.uniform(0., 1.) < p).collect())
            .collect();
        if cover {
            for (k, row) in mask.iter_mut().enumerate() {
                row[[0, 1, 2, 3, 5][k % 5]] = true;
            }
            for l in [0, 1, 2, 3, 5] {
                mask[l % cr][l] = true;
            }
        } else {
            mask[0].iter_mut().for_each(|v| *v = false);
            mask.iter_mut().for_each(|row| row[1] = false);
        }
        let flat: Vec<u8> = mask.iter().flatten().map(|&k| u8::from(k)).collect();
        let keep = Tensor::from_vec(flat, (cr, cc), &Device::Cpu).unwrap();
        let ranges = BlockSparse::from_mask(&rows, &cols, &keep).unwrap();
        Problem {
            x: rows.sort(&x).unwrap(),
            y: cols.sort(&y).unwrap(),
            b: cols.sort(&b).unwrap(),
            rows,
            cols,
            mask,
            ranges,
        }
    }

    /// Whether the pair (sorted row `i`, sorted column `j`) is in a kept block.
    fn kept(&self, i: usize, j: usize) -> bool {
        let k = (0..self.rows.num_clusters())
            .find(|&k| self.rows.range(k).contains(&i))
            .unwrap();
        let l = (0..self.cols.num_clusters())
            .find(|&l| self.cols.range(l).contains(&j))
            .unwrap();
        self.mask[k][l]
    }

    fn m(&self) -> usize {
        self.x.dims()[0]
    }

    fn n(&self) -> usize {
        self.y.dims()[0]
    }

    /// The dense `(M, N)` mask of the kept pairs, as 0/1 `f64`.
    fn pair_mask(&self) -> Tensor {
        let (m, n) = (self.m(), self.n());
        let v: Vec<f64> = (0..m * n)
            .map(|p| f64::from(u8::from(self.kept(p / n, p % n))))
            .collect();
        Tensor::from_vec(v, (m, n), &Device::Cpu).unwrap()
    }

    fn inputs(&self) -> Vec<(VarCat, Tensor)> {
        vec![
            (VarCat::I, self.x.clone()),
            (VarCat::J, self.y.clone()),
            (VarCat::J, self.b.clone()),
        ]
    }

    /// For each output row of a reduction over `axis`, the kept terms with their formula
    /// values (from the dense `(M, N, E)` values `dense`).
    fn kept_terms(&self, dense: &Tensor, axis: Axis) -> Vec<Vec<(i64, Vec<f64>)>> {
        let d = dense.to_vec3::<f64>().unwrap();
        let (m, n) = (self.m(), self.n());
        match axis {
            Axis::J => (0..m)
                .map(|i| {
                    (0..n)
                        .filter(|&j| self.kept(i, j))
                        .map(|j| (j as i64, d[i][j].clone()))
                        .collect()
                })
                .collect(),
            Axis::I => (0..n)
                .map(|j| {
                    (0..m)
                        .filter(|&i| self.kept(i, j))
                        .map(|i| (i as i64, d[i][j].clone()))
                        .collect()
                })
                .collect(),
        }
    }
}

/// The reference of `kind` over the kept terms of each row, flattened as the reduction's
/// values and indices (empty rows: the reduction over zero terms).
fn reference(
    kind: ReductionKind,
    terms: &[Vec<(i64, Vec<f64>)>],
    e: usize,
) -> (Vec<f64>, Vec<i64>) {
    let (mut vals, mut idx) = (Vec::new(), Vec::new());
    for row in terms {
        match kind {
            ReductionKind::Sum => {
                vals.extend((0..e).map(|c| row.iter().map(|t| t.1[c]).sum::<f64>()));
            }
            ReductionKind::LogSumExp => vals.extend((0..e).map(|c| {
                let m = row.iter().map(|t| t.1[c]).fold(f64::NEG_INFINITY, f64::max);
                if row.is_empty() {
                    return f64::NEG_INFINITY;
                }
                m + row.iter().map(|t| (t.1[c] - m).exp()).sum::<f64>().ln()
            })),
            ReductionKind::SumSoftMaxWeight => {
                let m = row.iter().map(|t| t.1[0]).fold(f64::NEG_INFINITY, f64::max);
                let w: Vec<f64> = row.iter().map(|t| (t.1[0] - m).exp()).collect();
                let s: f64 = w.iter().sum();
                vals.extend((1..e).map(|c| {
                    if row.is_empty() {
                        return 0.0;
                    }
                    row.iter().zip(&w).map(|(t, w)| w * t.1[c]).sum::<f64>() / s
                }));
            }
            _ => {
                let max = matches!(
                    kind,
                    ReductionKind::Max | ReductionKind::ArgMax | ReductionKind::MaxArgMax
                );
                let k = kind.k().unwrap_or(1);
                let empty = if max {
                    f64::NEG_INFINITY
                } else {
                    f64::INFINITY
                };
                // [rank][component]
                let mut best = vec![vec![(empty, -1i64); e]; k];
                #[allow(clippy::needless_range_loop)] // c indexes the components of every term
                for c in 0..e {
                    let mut v: Vec<(f64, i64)> = row.iter().map(|t| (t.1[c], t.0)).collect();
                    v.sort_by(|a, b| {
                        let o = a.0.partial_cmp(&b.0).unwrap();
                        (if max { o.reverse() } else { o }).then(a.1.cmp(&b.1))
                    });
                    for (r, p) in v.into_iter().take(k).enumerate() {
                        best[r][c] = p;
                    }
                }
                for rank in best {
                    for (v, i) in rank {
                        vals.push(v);
                        idx.push(i);
                    }
                }
            }
        }
    }
    (vals, idx)
}

const SUM: &str = "Exp(-SqDist(Vi(0,3), Vj(1,3)) * 2.0) * Vj(2,2)";
const LSE: &str = "-SqDist(Vi(0,3), Vj(1,3)) * 3.0 + Vj(2,2)";
const SOFTMAX: &str = "Concat(-SqDist(Vi(0,3), Vj(1,3)) * 3.0, Vj(2,2))";
const SELECT: &str = "SqDist(Vi(0,3), Vj(1,3)) * Vj(2,2)";
const SELECT1: &str = "SqDist(Vi(0,3), Vj(1,3)) + Elem(Vj(2,2), 0)";

fn kinds() -> Vec<(ReductionKind, &'static str)> {
    use ReductionKind::*;
    vec![
        (Sum, SUM),
        (LogSumExp, LSE),
        (SumSoftMaxWeight, SOFTMAX),
        (Min, SELECT),
        (Max, SELECT),
        (ArgMin, SELECT),
        (ArgMax, SELECT),
        (MinArgMin, SELECT),
        (MaxArgMax, SELECT),
        (KMin(3), SELECT),
        (ArgKMin(4), SELECT1),
        (KMinArgKMin(3), SELECT1),
        (KMinArgKMin(200), SELECT1), // more slots than kept terms
    ]
}

/// Runs every kind on both axes in `dtype` and compares with the masked reference.
fn check_all_kinds(p: &Problem, dtype: DType) {
    let ins = p.inputs();
    let cast: Vec<Tensor> = ins
        .iter()
        .map(|(_, t)| t.to_dtype(dtype).unwrap())
        .collect();
    let args: Vec<&Tensor> = cast.iter().collect();
    let f64_ = dtype == DType::F64;
    for (kind, src) in kinds() {
        let f = parse(src, &[]).unwrap();
        let dense = dense_eval(&f, &ins, p.m(), p.n()).unwrap();
        for axis in [Axis::J, Axis::I] {
            let what = format!("{kind:?} over {axis:?} in {dtype:?}");
            let out = LazyTensor::from_formula(&f, &args)
                .unwrap()
                .with_ranges(&p.ranges)
                .reduce(kind, axis)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let terms = p.kept_terms(&dense, axis);
            let (want_v, want_i) = reference(kind, &terms, f.dim());
            let (rtol, atol) = if f64_ { (1e-12, 1e-14) } else { (2e-5, 1e-6) };
            if let Some(v) = &out.values {
                assert_close(&flat(v), &want_v, rtol, atol, &what);
            }
            if let Some(i) = &out.indices {
                let got = flat_i64(i);
                assert_eq!(got.len(), want_i.len(), "{what}: indices");
                if f64_ {
                    assert_eq!(got, want_i, "{what}: indices");
                } else {
                    // In f32 near ties may swap: the value at the index found must be the
                    // reference's value.
                    let e = f.dim();
                    let k = kind.k().unwrap_or(1);
                    for (q, (&g, &w)) in got.iter().zip(&want_i).enumerate() {
                        let (row, c) = (q / (k * e), q % e);
                        if w < 0 {
                            assert_eq!(g, -1, "{what}: slot {q}");
                            continue;
                        }
                        let at = |t: i64| terms[row].iter().find(|x| x.0 == t).map(|x| x.1[c]);
                        let (gv, wv) = (at(g), at(w).unwrap());
                        let gv = gv.unwrap_or_else(|| panic!("{what}: index {g} not kept"));
                        assert!((gv - wv).abs() <= 1e-5 * wv.abs().max(1.0), "{what}: {q}");
                    }
                }
            }
        }
    }
}

#[test]
fn every_kind_both_axes_f64_with_empty_rows_and_columns() {
    let p = Problem::new(83, 101, 7, 0.4, false);
    check_all_kinds(&p, DType::F64);
}

#[test]
fn every_kind_both_axes_f32() {
    let p = Problem::new(70, 95, 11, 0.5, false);
    check_all_kinds(&p, DType::F32);
}

#[test]
fn random_masks_of_every_density() {
    for (seed, prob) in [(21, 0.0), (22, 0.1), (23, 0.7), (24, 1.0)] {
        let p = Problem::new(64, 77, seed, prob, prob > 0.5);
        let f = parse(SUM, &[]).unwrap();
        let ins = p.inputs();
        let dense = dense_eval(&f, &ins, p.m(), p.n()).unwrap();
        for axis in [Axis::J, Axis::I] {
            let got = LazyTensor::from_formula(&f, &[&p.x, &p.y, &p.b])
                .unwrap()
                .with_ranges(&p.ranges)
                .sum(axis)
                .unwrap();
            let (want, _) = reference(ReductionKind::Sum, &p.kept_terms(&dense, axis), 2);
            assert_close(
                &flat(&got),
                &want,
                1e-12,
                1e-14,
                &format!("p {prob} {axis:?}"),
            );
        }
        let brute = (0..p.m() * p.n())
            .filter(|&q| p.kept(q / p.n(), q % p.n()))
            .count() as u64;
        assert_eq!(p.ranges.kept_pairs(), brute);
    }
}

/// Rows whose cluster keeps nothing get the reduction over zero terms.
#[test]
fn rows_that_keep_nothing_get_the_empty_reduction() {
    let p = Problem::new(60, 80, 5, 0.5, false);
    let row = p.rows.range(0).start; // row cluster 0 keeps nothing
    let f = LazyTensor::from_formula(&parse(SELECT1, &[]).unwrap(), &[&p.x, &p.y, &p.b])
        .unwrap()
        .with_ranges(&p.ranges);
    let at = |t: Tensor| flat(&t.get(row).unwrap());
    assert_eq!(at(f.sum(Axis::J).unwrap()), vec![0.0]);
    assert_eq!(at(f.logsumexp(Axis::J).unwrap()), vec![f64::NEG_INFINITY]);
    assert_eq!(at(f.min(Axis::J).unwrap()), vec![f64::INFINITY]);
    assert_eq!(at(f.max(Axis::J).unwrap()), vec![f64::NEG_INFINITY]);
    let (v, i) = f.min_argmin(Axis::J).unwrap();
    assert_eq!(
        (at(v), flat_i64(&i.get(row).unwrap())),
        (vec![f64::INFINITY], vec![-1])
    );
    let (v, i) = f.kmin_argkmin(2, Axis::J).unwrap();
    assert_eq!(at(v), vec![f64::INFINITY; 2]);
    assert_eq!(flat_i64(&i.get(row).unwrap()), vec![-1, -1]);
    let sw = f.sum_softmax_weight(&f, Axis::J).unwrap();
    assert_eq!(at(sw), vec![0.0]);
    // Over i: column cluster 1 is kept by no row cluster.
    let col = p.cols.range(1).start;
    let s = f.sum(Axis::I).unwrap();
    assert_eq!(flat(&s.get(col).unwrap()), vec![0.0]);
}

/// Terms of skipped blocks are never evaluated: a NaN there does not reach the result.
#[test]
fn skipped_blocks_are_not_evaluated() {
    let p = Problem::new(60, 80, 9, 0.5, false);
    // NaN weights on column cluster 1, which no row cluster keeps; Sqrt of a negative number
    // on column cluster 1 too.
    let n = p.n();
    let nan_cols = p.cols.range(1);
    assert!(!nan_cols.is_empty());
    let bad: Vec<f64> = (0..n)
        .map(|j| if nan_cols.contains(&j) { f64::NAN } else { 1.0 })
        .collect();
    let bad = Tensor::from_vec(bad, (n, 1), &Device::Cpu).unwrap();
    let shift: Vec<f64> = (0..n)
        .map(|j| if nan_cols.contains(&j) { -10.0 } else { 10.0 })
        .collect();
    let shift = Tensor::from_vec(shift, (n, 1), &Device::Cpu).unwrap();
    let (x_i, y_j) = (LazyTensor::vi(&p.x).unwrap(), LazyTensor::vj(&p.y).unwrap());
    let (w_j, s_j) = (
        LazyTensor::vj(&bad).unwrap(),
        LazyTensor::vj(&shift).unwrap(),
    );
    let k = (-x_i.sqdist(&y_j)).exp() * w_j * (s_j + x_i.sqdist(&y_j)).sqrt();
    let dense = k.sum(Axis::J).unwrap();
    assert!(flat(&dense).iter().all(|v| v.is_nan()));
    for kind in [
        ReductionKind::Sum,
        ReductionKind::LogSumExp,
        ReductionKind::Max,
    ] {
        for axis in [Axis::J, Axis::I] {
            let out = k.with_ranges(&p.ranges).reduce(kind, axis).unwrap();
            let v = flat(&out.values.unwrap());
            assert!(v.iter().all(|v| !v.is_nan()), "{kind:?} {axis:?}: {v:?}");
        }
    }
}

/// Gradients of x, y, b and a parameter through block-sparse sums over j and over i, against
/// Candle's autodiff of the dense masked computation.
#[test]
fn sum_gradients_match_dense_masked_autodiff() {
    let p = Problem::new(50, 64, 13, 0.45, false);
    let (m, n) = (p.m(), p.n());
    let mask = p.pair_mask();
    let mut r = Rng(99);
    let a = r.tensor(&[m, 2], -1., 1.); // i-weights for the reduction over i
    let w_out_j = r.tensor(&[m, 2], -1., 1.);
    let w_out_i = r.tensor(&[n, 2], -1., 1.);
    let grads = |lazy: bool| {
        let x = Var::from_tensor(&p.x).unwrap();
        let y = Var::from_tensor(&p.y).unwrap();
        let b = Var::from_tensor(&p.b).unwrap();
        let av = Var::from_tensor(&a).unwrap();
        let s = Var::new(&[0.3f64], &Device::Cpu).unwrap();
        let loss = if lazy {
            let (x_i, y_j) = (LazyTensor::vi(&x).unwrap(), LazyTensor::vj(&y).unwrap());
            let (b_j, a_i) = (LazyTensor::vj(&b).unwrap(), LazyTensor::vi(&av).unwrap());
            let s_p = LazyTensor::param(&s).unwrap();
            let k = (-x_i.sqdist(&y_j) / s_p).exp().with_ranges(&p.ranges);
            let over_j = (&k * &b_j).sum(Axis::J).unwrap();
            let over_i = (&k * &a_i).sum(Axis::I).unwrap();
            ((over_j * &w_out_j).unwrap().sum_all().unwrap()
                + (over_i * &w_out_i).unwrap().sum_all().unwrap())
            .unwrap()
        } else {
            let d = x
                .unsqueeze(1)
                .unwrap()
                .broadcast_sub(&y.unsqueeze(0).unwrap())
                .unwrap()
                .sqr()
                .unwrap()
                .sum(2)
                .unwrap();
            let k = (d.broadcast_div(&s).unwrap().neg().unwrap().exp().unwrap() * &mask).unwrap();
            let over_j = lazy_kernels::linalg::matmul(&k, &b).unwrap();
            let over_i =
                lazy_kernels::linalg::matmul(&k.t().unwrap().contiguous().unwrap(), &av).unwrap();
            ((over_j * &w_out_j).unwrap().sum_all().unwrap()
                + (over_i * &w_out_i).unwrap().sum_all().unwrap())
            .unwrap()
        };
        let g = loss.backward().unwrap();
        [&*x, &*y, &*b, &*av, &*s].map(|v| flat(g.get(v).unwrap()))
    };
    let (got, want) = (grads(true), grads(false));
    for (k, name) in ["x", "y", "b", "a", "sigma"].iter().enumerate() {
        assert_close(&got[k], &want[k], 1e-10, 1e-12, &format!("d/d{name}"));
    }
}

/// Gradients through LogSumExp, SumSoftMaxWeight, Min and KMin under ranges (every row and
/// column keeps a block, so the dense reference is finite).
#[test]
fn lse_softmax_min_kmin_gradients_match_dense_masked_autodiff() {
    let p = Problem::new(40, 56, 17, 0.4, true);
    let mask = p.pair_mask();
    let big = ((mask.ones_like().unwrap() - &mask).unwrap() * 1e30).unwrap(); // 0 or 1e30
    let mut r = Rng(3);
    let w = r.tensor(&[p.m(), 2], -1., 1.);
    for case in ["lse", "softmax", "min", "kmin"] {
        let grads = |lazy: bool| {
            let x = Var::from_tensor(&p.x).unwrap();
            let y = Var::from_tensor(&p.y).unwrap();
            let b = Var::from_tensor(&p.b).unwrap();
            let out = if lazy {
                let (x_i, y_j) = (LazyTensor::vi(&x).unwrap(), LazyTensor::vj(&y).unwrap());
                let b_j = LazyTensor::vj(&b).unwrap();
                let d = x_i.sqdist(&y_j).with_ranges(&p.ranges);
                match case {
                    "lse" => (-&d + &b_j).logsumexp(Axis::J).unwrap(),
                    "softmax" => (-&d).sum_softmax_weight(&b_j, Axis::J).unwrap(),
                    "min" => (&d * &b_j).min(Axis::J).unwrap(),
                    _ => (&d * b_j.elem(0)).kmin(2, Axis::J).unwrap(),
                }
            } else {
                let d = x
                    .unsqueeze(1)
                    .unwrap()
                    .broadcast_sub(&y.unsqueeze(0).unwrap())
                    .unwrap()
                    .sqr()
                    .unwrap()
                    .sum(2)
                    .unwrap(); // (M, N)
                let (m, n) = (p.m(), p.n());
                let b0 = b.narrow(1, 0, 1).unwrap().t().unwrap(); // (1, N)
                let per_comp = |c: usize| {
                    let bc = b.narrow(1, c, 1).unwrap().t().unwrap();
                    match case {
                        "lse" => {
                            let z = (bc.broadcast_sub(&d).unwrap() - &big).unwrap();
                            let mx = z.max_keepdim(1).unwrap().detach();
                            (z.broadcast_sub(&mx).unwrap().exp().unwrap().sum_keepdim(1))
                                .unwrap()
                                .log()
                                .unwrap()
                                .add(&mx)
                                .unwrap()
                        }
                        "softmax" => {
                            let z = (d.neg().unwrap() - &big).unwrap();
                            let mx = z.max_keepdim(1).unwrap().detach();
                            let e = z.broadcast_sub(&mx).unwrap().exp().unwrap();
                            let num = e.broadcast_mul(&bc).unwrap().sum_keepdim(1).unwrap();
                            (num / e.sum_keepdim(1).unwrap()).unwrap()
                        }
                        _ => {
                            let z = (d.broadcast_mul(&bc).unwrap() + &big).unwrap();
                            z.min_keepdim(1).unwrap()
                        }
                    }
                };
                match case {
                    "kmin" => {
                        // The two smallest: the minimum, then the minimum of the others.
                        let z = (d.broadcast_mul(&b0).unwrap() + &big).unwrap();
                        let first = z.min_keepdim(1).unwrap();
                        let at = z.broadcast_eq(&first.detach()).unwrap();
                        let rest = at
                            .where_cond(&Tensor::full(2e30, (m, n), &Device::Cpu).unwrap(), &z)
                            .unwrap();
                        Tensor::cat(&[first, rest.min_keepdim(1).unwrap()], 1).unwrap()
                    }
                    _ => Tensor::cat(&[per_comp(0), per_comp(1)], 1).unwrap(),
                }
            };
            let loss = (out * &w).unwrap().sum_all().unwrap();
            let g = loss.backward().unwrap();
            [&*x, &*y, &*b].map(|v| {
                g.get(v)
                    .map(flat)
                    .unwrap_or_else(|| vec![0.0; v.elem_count()])
            })
        };
        let (got, want) = (grads(true), grads(false));
        for (k, name) in ["x", "y", "b"].iter().enumerate() {
            assert_close(
                &got[k],
                &want[k],
                1e-9,
                1e-11,
                &format!("{case}: d/d{name}"),
            );
        }
    }
}

/// Long intervals with few rows: the terms are split into chunks (tasks combined in order).
#[test]
fn few_rows_and_long_intervals_split_the_terms() {
    let (m, n) = (20, 270_003);
    let mut r = Rng(41);
    let x = r.tensor(&[m, 1], 0., 1.);
    let y = r.tensor(&[n, 1], 0., 1.);
    let rows =
        Clusters::from_labels(&(0..m).map(|i| usize::from(i >= 7)).collect::<Vec<_>>()).unwrap();
    let cols = Clusters::from_labels(
        &(0..n)
            .map(|j| {
                if j < 140_003 {
                    0
                } else if j < 140_010 {
                    1
                } else {
                    2
                }
            })
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let bs = BlockSparse::from_pairs(&rows, &cols, &[(0, 0), (0, 2), (1, 1), (1, 2)]).unwrap();
    let f = (LazyTensor::vi(&x).unwrap() - LazyTensor::vj(&y).unwrap()).square();
    let got = flat(&f.with_ranges(&bs).sum(Axis::J).unwrap());
    let xv = flat(&x);
    let yv = flat(&y);
    for i in 0..m {
        let keep = |j: usize| {
            if i < 7 {
                !(140_003..140_010).contains(&j)
            } else {
                j >= 140_003
            }
        };
        let want: f64 = (0..n)
            .filter(|&j| keep(j))
            .map(|j| (xv[i] - yv[j]).powi(2))
            .sum();
        assert!(
            (got[i] - want).abs() <= 1e-11 * want,
            "row {i}: {} vs {want}",
            got[i]
        );
    }
}

#[test]
fn clusters_from_labels_grid_and_tensors() {
    let cl = Clusters::from_labels(&[2, 0, 2, 1, 0]).unwrap();
    assert_eq!(cl.order(), &[1, 4, 3, 0, 2]);
    assert_eq!(cl.sizes(), vec![2, 1, 2]);
    assert_eq!(cl.labels(), vec![2, 0, 2, 1, 0]);
    for t in [
        Tensor::new(&[2u8, 0, 2, 1, 0], &Device::Cpu).unwrap(),
        Tensor::new(&[2u32, 0, 2, 1, 0], &Device::Cpu).unwrap(),
        Tensor::new(&[[2i64], [0], [2], [1], [0]], &Device::Cpu).unwrap(),
    ] {
        assert_eq!(Clusters::from_labels_tensor(&t).unwrap(), cl);
    }
    // A 2D grid: every cluster is one cell, cells in lexicographic order.
    let mut r = Rng(4);
    let x = r.tensor(&[300, 2], -1., 1.);
    let g = Clusters::grid(&x, 0.3).unwrap();
    let xv = x.to_vec2::<f64>().unwrap();
    let lo = [
        xv.iter().map(|p| p[0]).fold(f64::INFINITY, f64::min),
        xv.iter().map(|p| p[1]).fold(f64::INFINITY, f64::min),
    ];
    let cell_of = |p: &[f64]| {
        [
            ((p[0] - lo[0]) / 0.3).floor() as i64,
            ((p[1] - lo[1]) / 0.3).floor() as i64,
        ]
    };
    let mut prev: Option<[i64; 2]> = None;
    for k in 0..g.num_clusters() {
        let cells: Vec<[i64; 2]> = g.range(k).map(|s| cell_of(&xv[g.order()[s]])).collect();
        assert!(
            cells.iter().all(|c| *c == cells[0]),
            "cluster {k} spans cells"
        );
        assert!(prev.is_none_or(|p| p < cells[0]), "cells out of order");
        prev = Some(cells[0]);
    }
    // sort / unsort, and gradients through sort.
    let xs = g.sort(&x).unwrap();
    assert_eq!(g.unsort(&xs).unwrap().to_vec2::<f64>().unwrap(), xv);
    let v = Var::from_tensor(&x).unwrap();
    let w = r.tensor(&[300, 2], -1., 1.);
    let loss = (g.sort(&v).unwrap() * g.sort(&w).unwrap())
        .unwrap()
        .sum_all()
        .unwrap();
    let gr = loss.backward().unwrap();
    assert_eq!(flat(gr.get(&v).unwrap()), flat(&w));
}

#[test]
fn centroids_radii_and_the_cutoff_keep_every_close_pair() {
    let mut r = Rng(8);
    let x = r.tensor(&[200, 3], 0., 1.);
    let y = r.tensor(&[150, 3], 0., 1.);
    let (cx, cy) = (
        Clusters::grid(&x, 0.25).unwrap(),
        Clusters::grid(&y, 0.2).unwrap(),
    );
    let xv = x.to_vec2::<f64>().unwrap();
    let c = cx.centroids(&x).unwrap().to_vec2::<f64>().unwrap();
    let rad = cx.radii(&x).unwrap().to_vec1::<f64>().unwrap();
    let dist = |a: &[f64], b: &[f64]| -> f64 {
        a.iter()
            .zip(b)
            .map(|(p, q)| (p - q) * (p - q))
            .sum::<f64>()
            .sqrt()
    };
    for k in 0..cx.num_clusters() {
        let pts: Vec<&Vec<f64>> = cx.range(k).map(|s| &xv[cx.order()[s]]).collect();
        for d in 0..3 {
            let mean = pts.iter().map(|p| p[d]).sum::<f64>() / pts.len() as f64;
            assert!((c[k][d] - mean).abs() < 1e-12);
        }
        let far = pts.iter().map(|p| dist(p, &c[k])).fold(0.0, f64::max);
        assert!((rad[k] - far).abs() < 1e-12);
    }
    let ry = cy.radii(&y).unwrap().to_vec1::<f64>().unwrap();
    let rmax = rad.iter().chain(&ry).fold(0.0f64, |a, &b| a.max(b));
    let within = 0.15;
    let bs = BlockSparse::from_centroid_cutoff(&cx, &x, &cy, &y, within + 2.0 * rmax).unwrap();
    assert!(bs.density() < 1.0);
    // Every pair closer than `within` is in a kept block: the count of such pairs by a
    // block-sparse reduction equals the dense count.
    let (xs, ys) = (cx.sort(&x).unwrap(), cy.sort(&y).unwrap());
    let d = LazyTensor::vi(&xs)
        .unwrap()
        .sqdist(&LazyTensor::vj(&ys).unwrap());
    let close = (within * within - d).step();
    let sparse = flat(&close.with_ranges(&bs).sum(Axis::J).unwrap());
    let dense = flat(&close.sum(Axis::J).unwrap());
    assert_eq!(sparse, dense);
    assert!(dense.iter().sum::<f64>() > 100.0);
    // And the kept blocks are exactly those with centroids within the cutoff.
    let cyc = cy.centroids(&y).unwrap().to_vec2::<f64>().unwrap();
    let cut = within + 2.0 * rmax;
    let mut pairs = 0u64;
    for (k, ck) in c.iter().enumerate() {
        for (l, cl) in cyc.iter().enumerate() {
            if dist(ck, cl) <= cut {
                pairs += (cx.range(k).len() * cy.range(l).len()) as u64;
            }
        }
    }
    assert_eq!(bs.kept_pairs(), pairs);
}

/// Under ranges the block path falls back to the direct path; `explain` says so.
#[test]
fn the_block_path_falls_back_to_the_direct_path() {
    let mut r = Rng(12);
    let x = r.tensor(&[90, 64], 0., 1.);
    let rows = Clusters::from_labels(&(0..90).map(|i| i / 20).collect::<Vec<_>>()).unwrap();
    let bs =
        BlockSparse::from_pairs(&rows, &rows, &[(0, 0), (1, 2), (2, 1), (4, 4), (3, 0)]).unwrap();
    let d = LazyTensor::vi(&x)
        .unwrap()
        .sqdist(&LazyTensor::vj(&x).unwrap());
    let k = (-d / 64.0).exp();
    let forced = ReductionOptions {
        path: Path::Blocks,
        ..Default::default()
    };
    assert_eq!(
        k.explain(ReductionKind::Sum, Axis::J, &forced)
            .unwrap()
            .path,
        Path::Blocks
    );
    let report = k
        .with_ranges(&bs)
        .explain(ReductionKind::Sum, Axis::J, &forced)
        .unwrap();
    assert_eq!(report.path, Path::Direct);
    assert!(report.reason.contains("block-sparse"), "{report}");
    let sparse = k
        .with_ranges(&bs)
        .reduce_with(ReductionKind::Sum, Axis::J, &forced)
        .unwrap()
        .values
        .unwrap();
    let mask: Vec<f64> = (0..90 * 90)
        .map(|q| {
            let (k, l) = ((q / 90) / 20, (q % 90) / 20);
            f64::from(u8::from(
                [(0, 0), (1, 2), (2, 1), (4, 4), (3, 0)].contains(&(k, l)),
            ))
        })
        .collect();
    let mask = Tensor::from_vec(mask, (90, 90), &Device::Cpu).unwrap();
    let xv = x.to_vec2::<f64>().unwrap();
    let kd: Vec<f64> = (0..90 * 90)
        .map(|q| {
            let (a, b) = (&xv[q / 90], &xv[q % 90]);
            (-a.iter().zip(b).map(|(p, q)| (p - q) * (p - q)).sum::<f64>() / 64.0).exp()
        })
        .collect();
    let want = (Tensor::from_vec(kd, (90, 90), &Device::Cpu).unwrap() * mask)
        .unwrap()
        .sum_keepdim(1)
        .unwrap();
    assert_close(&flat(&sparse), &flat(&want), 1e-12, 1e-14, "blocks forced");
}

#[test]
fn results_are_deterministic() {
    let p = Problem::new(70, 90, 31, 0.5, false);
    let f = LazyTensor::from_formula(&parse(SUM, &[]).unwrap(), &[&p.x, &p.y, &p.b])
        .unwrap()
        .with_ranges(&p.ranges);
    let a = flat(&f.sum(Axis::J).unwrap());
    let b = flat(&f.sum(Axis::J).unwrap());
    assert_eq!(
        a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        b.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
}

#[test]
fn bad_inputs_are_clear_errors() {
    let msg = |e: candle_core::Error| e.to_string();
    let p = Problem::new(40, 50, 2, 0.5, false);
    // Mask of the wrong shape.
    let wrong = Tensor::zeros((2, 3), DType::U8, &Device::Cpu).unwrap();
    let e = msg(BlockSparse::from_mask(&p.rows, &p.cols, &wrong).unwrap_err());
    assert!(
        e.contains("mask must be (row clusters, column clusters)"),
        "{e}"
    );
    // Pairs outside the clusters.
    let e = msg(BlockSparse::from_pairs(&p.rows, &p.cols, &[(0, 99)]).unwrap_err());
    assert!(e.contains("kept block (0, 99)"), "{e}");
    // Ranges for other sizes than the variables'.
    let x_short = p.x.narrow(0, 0, 39).unwrap();
    let f = LazyTensor::vi(&x_short)
        .unwrap()
        .sqdist(&LazyTensor::vj(&p.y).unwrap())
        .with_ranges(&p.ranges);
    for axis in [Axis::J, Axis::I] {
        let e = msg(f.sum(axis).unwrap_err());
        assert!(
            e.contains("block-sparse ranges are for 40 i-rows x 50 j-rows"),
            "{e}"
        );
        assert!(e.contains("39 i-rows"), "{e}");
    }
    // Combining lazy tensors with different ranges.
    let q = Problem::new(40, 50, 3, 0.5, false);
    let a = LazyTensor::vi(&p.x).unwrap().with_ranges(&p.ranges);
    let b = LazyTensor::vj(&p.y).unwrap().with_ranges(&q.ranges);
    let e = msg(a.sqdist(&b).sum(Axis::J).unwrap_err());
    assert!(e.contains("different block-sparse ranges"), "{e}");
    let same = LazyTensor::vj(&p.y).unwrap().with_ranges(&p.ranges);
    assert!(a.sqdist(&same).sum(Axis::J).is_ok());
    // Clusters.
    assert!(msg(Clusters::from_labels(&[]).unwrap_err()).contains("no labels"));
    let neg = Tensor::new(&[0i64, -2], &Device::Cpu).unwrap();
    assert!(msg(Clusters::from_labels_tensor(&neg).unwrap_err()).contains("negative label -2"));
    let float = Tensor::new(&[0f32, 1.], &Device::Cpu).unwrap();
    assert!(msg(Clusters::from_labels_tensor(&float).unwrap_err()).contains("integers"));
    let huge = Clusters::from_labels(&[0, usize::MAX / 2]);
    assert!(huge.is_err());
    for cell in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let e = msg(Clusters::grid(&p.x, cell).unwrap_err());
        assert!(e.contains("cell size must be positive"), "{e}");
    }
    let nan = Tensor::new(&[[0f64, 1.], [f64::NAN, 0.]], &Device::Cpu).unwrap();
    assert!(msg(Clusters::grid(&nan, 0.1).unwrap_err()).contains("non-finite"));
    assert!(msg(Clusters::grid(&p.x, 1e-300).unwrap_err()).contains("too small"));
    let e = msg(p.rows.sort(&p.y).unwrap_err());
    assert!(e.contains("the clusters have 40 rows"), "{e}");
    let e = msg(p.rows.centroids(&p.y).unwrap_err());
    assert!(
        e.contains("the clusters have 40 rows, the points 50"),
        "{e}"
    );
    let e = msg(BlockSparse::from_centroid_cutoff(&p.rows, &p.x, &p.cols, &p.y, -1.0).unwrap_err());
    assert!(e.contains("cutoff must be >= 0"), "{e}");
    let y2 = p.y.narrow(1, 0, 2).unwrap();
    let e = msg(BlockSparse::from_centroid_cutoff(&p.rows, &p.x, &p.cols, &y2, 1.0).unwrap_err());
    assert!(e.contains("x has 3 components per row, y has 2"), "{e}");
}

// CUDA runs block-sparse reductions too: the GPU suite's `ranges/...` checks compare them
// with the CPU (tests/gpu/ranges.rs), and tests/cuda_emulation_tests.rs runs the generated
// block-sparse modules as host C++ against the CPU backend.
