//! `KernelOperator::solve`: `(K + alpha I) a = b` by preconditioned conjugate gradients, and its
//! gradients by implicit differentiation, against independent references written here:
//!
//! * a dense `f64` Cholesky solve on the host, with the kernel matrix built by plain loops from
//!   the points and the hyperparameter values (`RefK`);
//! * central finite differences (in `f64`) of the whole solve;
//! * a dense differentiable Candle solve: `K` built from Candle ops on the `Var`s and
//!   `(K + alpha I) a = b` solved by Gauss-Jordan elimination written with Candle tensor ops,
//!   then `backward()` through it.
//!
//! The crate's `to_dense` / `rows` are never used as a reference.

// Index loops read best in the dense linear algebra of the references; the loss helpers take
// every differentiable input explicitly.
#![allow(clippy::needless_range_loop, clippy::too_many_arguments)]

mod common;

use candle_core::{DType, Device, Result, Tensor, Var};
use common::{Rng, assert_close, flat};
use lazy_kernels::{Kernel, KernelOperator, Preconditioner, Rank, SolveInfo, SolveOptions};

// ---------------------------------------------------------------------------------------------
// Dense host references
// ---------------------------------------------------------------------------------------------

/// A kernel described by plain numbers: evaluated by loops for the reference, and turned into
/// the crate's `Kernel` (with the same values) for the solve under test.
#[derive(Clone, Debug)]
enum RefK {
    /// `exp(-r^2 / 2)`, lengthscale isotropic (one value) or per dimension.
    Gauss(Vec<f64>),
    /// Matern with `2 nu` = 1, 3 or 5.
    Matern(u8, Vec<f64>),
    /// `c * k`.
    Scale(f64, Box<RefK>),
    /// `k1 + k2`.
    Sum(Box<RefK>, Box<RefK>),
}

fn scaled_dist2(l: &[f64], x: &[f64], y: &[f64]) -> f64 {
    x.iter()
        .zip(y)
        .enumerate()
        .map(|(d, (a, b))| {
            let ld = if l.len() == 1 { l[0] } else { l[d] };
            ((a - b) / ld).powi(2)
        })
        .sum()
}

impl RefK {
    fn eval(&self, x: &[f64], y: &[f64]) -> f64 {
        match self {
            RefK::Gauss(l) => (-0.5 * scaled_dist2(l, x, y)).exp(),
            RefK::Matern(nu2, l) => {
                let r = scaled_dist2(l, x, y).sqrt();
                match nu2 {
                    1 => (-r).exp(),
                    3 => {
                        let s = 3f64.sqrt() * r;
                        (1.0 + s) * (-s).exp()
                    }
                    5 => {
                        let s = 5f64.sqrt() * r;
                        (1.0 + s + 5.0 * r * r / 3.0) * (-s).exp()
                    }
                    _ => unreachable!(),
                }
            }
            RefK::Scale(c, k) => c * k.eval(x, y),
            RefK::Sum(a, b) => a.eval(x, y) + b.eval(x, y),
        }
    }

    /// The crate's kernel with the same hyperparameters, as tensors of `dtype`.
    fn kernel(&self, dtype: DType) -> Kernel {
        let t = |v: &[f64]| {
            Tensor::new(v, &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap()
        };
        match self {
            RefK::Gauss(l) => Kernel::gaussian(&t(l)),
            RefK::Matern(1, l) => Kernel::laplacian(&t(l)),
            RefK::Matern(3, l) => Kernel::matern32(&t(l)),
            RefK::Matern(5, l) => Kernel::matern52(&t(l)),
            RefK::Matern(..) => unreachable!(),
            RefK::Scale(c, k) => k.kernel(dtype).scale(&t(&[*c])),
            RefK::Sum(a, b) => a.kernel(dtype) + b.kernel(dtype),
        }
    }

    /// The dense `N x N` kernel matrix of the points, by loops.
    fn matrix(&self, pts: &[Vec<f64>]) -> Vec<Vec<f64>> {
        pts.iter()
            .map(|p| pts.iter().map(|q| self.eval(p, q)).collect())
            .collect()
    }
}

/// Points of a tensor `(N, D)` (or `(N,)`) as host rows.
fn host_points(x: &Tensor) -> Vec<Vec<f64>> {
    let x = x.to_dtype(DType::F64).unwrap();
    match x.dims() {
        [n] => x.reshape((*n, 1)).unwrap().to_vec2().unwrap(),
        _ => x.to_vec2().unwrap(),
    }
}

/// A right-hand side (or solution) `(N,)` / `(N, E)` as host rows `N x E`.
fn host_cols(t: &Tensor) -> Vec<Vec<f64>> {
    host_points(t)
}

/// Solves `(K + alpha I) A = B` (`K` SPD, `B` `N x E`) by a dense Cholesky factorization.
fn cholesky_solve(k: &[Vec<f64>], alpha: f64, b: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let n = k.len();
    let mut l = vec![vec![0.0; n]; n];
    for j in 0..n {
        let mut s = k[j][j] + alpha;
        for p in 0..j {
            s -= l[j][p] * l[j][p];
        }
        assert!(s > 0.0, "reference Cholesky: matrix not positive definite");
        let d = s.sqrt();
        l[j][j] = d;
        for i in j + 1..n {
            let mut t = k[i][j];
            for p in 0..j {
                t -= l[i][p] * l[j][p];
            }
            l[i][j] = t / d;
        }
    }
    let e = b[0].len();
    let mut x = b.to_vec();
    for c in 0..e {
        // L y = b
        for i in 0..n {
            let mut t = x[i][c];
            for p in 0..i {
                t -= l[i][p] * x[p][c];
            }
            x[i][c] = t / l[i][i];
        }
        // L^T x = y
        for i in (0..n).rev() {
            let mut t = x[i][c];
            for p in i + 1..n {
                t -= l[p][i] * x[p][c];
            }
            x[i][c] = t / l[i][i];
        }
    }
    x
}

/// `|b - (K + alpha I) a| / |b|` per column (0 for a zero column), in f64.
fn residuals(k: &[Vec<f64>], alpha: f64, a: &[Vec<f64>], b: &[Vec<f64>]) -> Vec<f64> {
    let n = k.len();
    let e = b[0].len();
    (0..e)
        .map(|c| {
            let (mut rr, mut bb) = (0.0, 0.0);
            for i in 0..n {
                let mut s = alpha * a[i][c];
                for j in 0..n {
                    s += k[i][j] * a[j][c];
                }
                rr += (b[i][c] - s).powi(2);
                bb += b[i][c].powi(2);
            }
            if bb > 0.0 { (rr / bb).sqrt() } else { 0.0 }
        })
        .collect()
}

/// Relative error `|got - want| / |want|` of column `c` (or of everything with `None`).
fn rel_err(got: &[Vec<f64>], want: &[Vec<f64>], c: Option<usize>) -> f64 {
    let (mut num, mut den) = (0.0, 0.0);
    for (g, w) in got.iter().zip(want) {
        for (k, (g, w)) in g.iter().zip(w).enumerate() {
            if c.is_none_or(|c| c == k) {
                num += (g - w).powi(2);
                den += w.powi(2);
            }
        }
    }
    (num / den).sqrt()
}

fn opts(tol: f64, pre: Preconditioner) -> SolveOptions {
    SolveOptions {
        tol,
        preconditioner: pre,
        ..SolveOptions::default()
    }
}

/// Asserts that the reported residuals match recomputed ones within 10% (up to round-off).
fn check_reported_residuals(info: &SolveInfo, mine: &[f64], what: &str) {
    assert_eq!(info.residuals.len(), mine.len(), "{what}: residual count");
    for (c, (r, m)) in info.residuals.iter().zip(mine).enumerate() {
        // Below ~1e-13 both are round-off of the residual's own computation.
        let ok = (r - m).abs() <= 0.1 * m.abs().max(r.abs()) + 1e-13;
        assert!(
            ok,
            "{what}: column {c}: reported residual {r:.3e}, recomputed {m:.3e}"
        );
    }
}

fn rand_points(rng: &mut Rng, n: usize, d: usize) -> Tensor {
    rng.tensor(&[n, d], 0.0, 1.0)
}

fn err_msg<T: std::fmt::Debug>(r: Result<T>, what: &str) -> String {
    match r {
        Ok(v) => panic!("{what}: expected an error, got Ok({v:?})"),
        Err(e) => e.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Solutions against the dense Cholesky solve
// ---------------------------------------------------------------------------------------------

/// Solves with the three preconditioner settings and both shapes of `b`, and checks the
/// solution against dense Cholesky, the reported residuals against recomputed ones, and
/// convergence.
fn check_against_cholesky(rk: &RefK, n: usize, d: usize, alpha: f64, seed: u64) {
    let mut rng = Rng(seed);
    let x = rand_points(&mut rng, n, d);
    let pts = host_points(&x);
    let kmat = rk.matrix(&pts);
    let op = KernelOperator::new(rk.kernel(DType::F64), &x, &x).unwrap();
    let b_mat = rng.tensor(&[n, 3], -1.0, 1.0);
    let b_vec = rng.tensor(&[n], -1.0, 1.0);
    for pre in [
        Preconditioner::None,
        Preconditioner::PivotedCholesky(Rank::Fixed(20)),
        Preconditioner::default(),
    ] {
        for b in [&b_vec, &b_mat] {
            let what = format!("{rk:?} N={n} D={d} alpha={alpha} {pre:?} b{:?}", b.dims());
            let (a, info) = op.solve(b, alpha, &opts(1e-10, pre)).unwrap();
            assert_eq!(a.dims(), b.dims(), "{what}: solution shape");
            assert_eq!(a.dtype(), DType::F64, "{what}: dtype");
            let bh = host_cols(b);
            let ah = host_cols(&a);
            let want = cholesky_solve(&kmat, alpha, &bh);
            let e = rel_err(&ah, &want, None);
            assert!(e < 1e-8, "{what}: relative error {e:.3e}");
            let e_cols = bh[0].len();
            assert_eq!(info.converged, vec![true; e_cols], "{what}: converged");
            assert!(info.all_converged(), "{what}");
            assert_eq!(info.column_iterations.len(), e_cols, "{what}");
            assert_eq!(
                info.iterations,
                *info.column_iterations.iter().max().unwrap(),
                "{what}: iterations = max over columns"
            );
            assert!(info.max_residual() <= 1e-10, "{what}: {info:?}");
            let mine = residuals(&kmat, alpha, &ah, &bh);
            check_reported_residuals(&info, &mine, &what);
            match pre {
                Preconditioner::None => assert_eq!(info.preconditioner_rank, 0, "{what}"),
                // Fixed(r) takes r rows, fewer only when K is reproduced to round-off.
                Preconditioner::PivotedCholesky(Rank::Fixed(r)) => {
                    let (k, rem) = (info.preconditioner_rank, info.preconditioner_remainder);
                    assert!(
                        k == r || (k < r && rem <= 1e-12 * n as f64),
                        "{what}: rank {k}, remainder trace {rem:.3e}"
                    )
                }
                _ => assert!(info.preconditioner_rank > 0, "{what}"),
            }
        }
    }
}

#[test]
fn solve_gaussian_1d_matches_dense_cholesky() {
    check_against_cholesky(&RefK::Gauss(vec![0.2]), 200, 1, 0.1, 11);
}

#[test]
fn solve_laplacian_2d_matches_dense_cholesky() {
    check_against_cholesky(&RefK::Matern(1, vec![0.3]), 160, 2, 0.05, 12);
}

#[test]
fn solve_matern52_3d_per_dim_lengthscales_matches_dense_cholesky() {
    check_against_cholesky(&RefK::Matern(5, vec![0.3, 0.5, 0.8]), 160, 3, 0.05, 13);
}

#[test]
fn solve_sum_kernel_matches_dense_cholesky() {
    let rk = RefK::Sum(
        Box::new(RefK::Scale(2.0, Box::new(RefK::Gauss(vec![0.4])))),
        Box::new(RefK::Matern(3, vec![0.15])),
    );
    check_against_cholesky(&rk, 160, 2, 0.1, 14);
}

// ---------------------------------------------------------------------------------------------
// 2. Per-column behaviour
// ---------------------------------------------------------------------------------------------

#[test]
fn solve_columns_converge_independently_zero_column_is_exact() {
    let n = 300;
    let alpha = 1e-2;
    let rk = RefK::Gauss(vec![0.1]);
    let mut rng = Rng(21);
    let x = rand_points(&mut rng, n, 1);
    let pts = host_points(&x);
    // Column 0: a smooth function (in the kernel's top eigenvectors, easy); column 1: random
    // noise (spread over all eigenvalues, hard); column 2: zero.
    let bh: Vec<Vec<f64>> = pts
        .iter()
        .map(|p| {
            vec![
                (2.0 * std::f64::consts::PI * p[0]).sin(),
                rng.uniform(-1.0, 1.0),
                0.0,
            ]
        })
        .collect();
    let b = Tensor::new(bh.clone(), &Device::Cpu).unwrap();
    let op = KernelOperator::new(rk.kernel(DType::F64), &x, &x).unwrap();
    let (a, info) = op
        .solve(&b, alpha, &opts(1e-10, Preconditioner::None))
        .unwrap();
    let it = &info.column_iterations;
    assert!(
        it[0] < it[1],
        "smooth column should need fewer iterations than the rough one: {it:?}"
    );
    assert_eq!(it[2], 0, "zero column needs no iteration: {it:?}");
    assert_eq!(info.iterations, it[1], "iterations is the max: {info:?}");
    assert_eq!(info.converged, vec![true, true, true]);
    assert_eq!(info.residuals[2], 0.0, "zero column residual");
    let ah = host_cols(&a);
    assert!(
        ah.iter().all(|r| r[2] == 0.0),
        "zero column must give exactly 0"
    );
    let kmat = rk.matrix(&pts);
    let want = cholesky_solve(&kmat, alpha, &bh);
    for c in 0..2 {
        let e = rel_err(&ah, &want, Some(c));
        assert!(e < 1e-7, "column {c}: relative error {e:.3e}");
    }
    let mine = residuals(&kmat, alpha, &ah, &bh);
    check_reported_residuals(&info, &mine, "per-column");
}

// ---------------------------------------------------------------------------------------------
// 3. Iteration cap
// ---------------------------------------------------------------------------------------------

#[test]
fn solve_iteration_cap_reports_non_convergence_without_error() {
    let n = 200;
    let alpha = 1e-3;
    let rk = RefK::Matern(1, vec![0.5]);
    let mut rng = Rng(31);
    let x = rand_points(&mut rng, n, 2);
    let b = rng.tensor(&[n, 2], -1.0, 1.0);
    let op = KernelOperator::new(rk.kernel(DType::F64), &x, &x).unwrap();
    let o = SolveOptions {
        tol: 1e-8,
        max_iters: 3,
        preconditioner: Preconditioner::None,
        ..SolveOptions::default()
    };
    let (a, info) = op
        .solve(&b, alpha, &o)
        .expect("hitting the cap is not an error");
    assert_eq!(info.converged, vec![false, false], "{info:?}");
    assert!(!info.all_converged());
    assert_eq!(info.iterations, 3);
    assert_eq!(info.column_iterations, vec![3, 3]);
    let kmat = rk.matrix(&host_points(&x));
    let mine = residuals(&kmat, alpha, &host_cols(&a), &host_cols(&b));
    for c in 0..2 {
        assert!(info.residuals[c] > 1e-8, "{info:?}");
        // The reported residual is the true one (recomputed after the cap).
        let (r, m) = (info.residuals[c], mine[c]);
        assert!(
            (r - m).abs() <= 1e-6 * m,
            "column {c}: reported {r:.6e}, recomputed {m:.6e}"
        );
    }
    assert!((info.max_residual() - mine[0].max(mine[1])).abs() <= 1e-6 * mine[0].max(mine[1]));
}

// ---------------------------------------------------------------------------------------------
// 4. Warm start
// ---------------------------------------------------------------------------------------------

#[test]
fn solve_warm_start_from_solution_converges_immediately() {
    let n = 200;
    let alpha = 0.05;
    let rk = RefK::Gauss(vec![0.2]);
    let mut rng = Rng(41);
    let x = rand_points(&mut rng, n, 2);
    let bh: Vec<Vec<f64>> = (0..n)
        .map(|_| (0..3).map(|_| rng.uniform(-1.0, 1.0)).collect())
        .collect();
    let b = Tensor::new(bh.clone(), &Device::Cpu).unwrap();
    let kmat = rk.matrix(&host_points(&x));
    let want = cholesky_solve(&kmat, alpha, &bh);
    let x0: Vec<Vec<f64>> = want
        .iter()
        .map(|r| {
            r.iter()
                .map(|v| v * (1.0 + 1e-9 * rng.uniform(-1.0, 1.0)))
                .collect()
        })
        .collect();
    let op = KernelOperator::new(rk.kernel(DType::F64), &x, &x).unwrap();
    for pre in [Preconditioner::None, Preconditioner::default()] {
        let o = SolveOptions {
            tol: 1e-6,
            preconditioner: pre,
            x0: Some(Tensor::new(x0.clone(), &Device::Cpu).unwrap()),
            ..SolveOptions::default()
        };
        let (a, info) = op.solve(&b, alpha, &o).unwrap();
        assert!(info.all_converged(), "{pre:?}: {info:?}");
        assert!(info.iterations <= 2, "{pre:?}: warm start took {info:?}");
        let e = rel_err(&host_cols(&a), &want, None);
        assert!(e < 1e-7, "{pre:?}: relative error {e:.3e}");
        // And the cold start needs many more.
        let (_, cold) = op.solve(&b, alpha, &opts(1e-6, pre)).unwrap();
        assert!(cold.iterations > info.iterations + 2, "{cold:?}");
    }
    // A warm start of the wrong size is an error.
    let bad = Tensor::zeros((n, 2), DType::F64, &Device::Cpu).unwrap();
    let o = SolveOptions {
        x0: Some(bad),
        ..SolveOptions::default()
    };
    let msg = err_msg(op.solve(&b, alpha, &o), "x0 (N, 2) for b (N, 3)");
    assert!(msg.contains("x0"), "{msg}");
    // And so is a non-finite one.
    let mut x0_nan = x0.clone();
    x0_nan[5][1] = f64::NAN;
    let o = SolveOptions {
        x0: Some(Tensor::new(x0_nan, &Device::Cpu).unwrap()),
        ..SolveOptions::default()
    };
    let msg = err_msg(op.solve(&b, alpha, &o), "NaN in x0");
    assert!(msg.contains("x0") && msg.contains("NaN"), "{msg}");
}

#[test]
fn solve_warm_start_transposed_shape_is_an_error() {
    let n = 50;
    let mut rng = Rng(42);
    let x = rand_points(&mut rng, n, 1);
    let b = rng.tensor(&[n, 3], -1.0, 1.0);
    let op = KernelOperator::new(
        Kernel::gaussian(&Tensor::new(&[0.2f64], &Device::Cpu).unwrap()),
        &x,
        &x,
    )
    .unwrap();
    let o = SolveOptions {
        x0: Some(Tensor::zeros((3, n), DType::F64, &Device::Cpu).unwrap()),
        ..SolveOptions::default()
    };
    let msg = err_msg(op.solve(&b, 0.1, &o), "x0 (3, N) for b (N, 3)");
    assert!(msg.contains("x0"), "{msg}");
}

// ---------------------------------------------------------------------------------------------
// 5. Preconditioner
// ---------------------------------------------------------------------------------------------

#[test]
fn preconditioner_halves_iterations_and_matches_plain_solution_laplacian_2d() {
    // N = 400: both solves run to convergence and agree with the dense solution.
    let n = 400;
    let alpha = 1e-2;
    let rk = RefK::Matern(1, vec![0.5]);
    let mut rng = Rng(50);
    let x = rand_points(&mut rng, n, 2);
    let b = rng.tensor(&[n, 1], -1.0, 1.0);
    let op = KernelOperator::new(rk.kernel(DType::F64), &x, &x).unwrap();
    let (a_plain, plain) = op
        .solve(&b, alpha, &opts(1e-8, Preconditioner::None))
        .unwrap();
    let pre = Preconditioner::PivotedCholesky(Rank::Fixed(100));
    let (a_pre, pc) = op.solve(&b, alpha, &opts(1e-8, pre)).unwrap();
    assert!(
        plain.all_converged() && pc.all_converged(),
        "{plain:?} {pc:?}"
    );
    assert!(
        2 * pc.iterations < plain.iterations,
        "preconditioned {} vs plain {} iterations",
        pc.iterations,
        plain.iterations
    );
    let want = cholesky_solve(&rk.matrix(&host_points(&x)), alpha, &host_cols(&b));
    for (name, a) in [("plain", &a_plain), ("preconditioned", &a_pre)] {
        let e = rel_err(&host_cols(a), &want, None);
        assert!(e < 1e-6, "{name}: relative error {e:.3e}");
    }
}

#[test]
fn preconditioner_cuts_iterations_on_large_laplacian_2d() {
    // N = 1200 (debug-mode products cost ~0.15 s here): the preconditioned solve converges in
    // k iterations; plain CG capped at 2k iterations is still far from the tolerance.
    let n = 1200;
    let alpha = 1e-2;
    let tol = 1e-5;
    let rk = RefK::Matern(1, vec![1.0]);
    let mut rng = Rng(51);
    let x = rand_points(&mut rng, n, 2);
    let b = rng.tensor(&[n, 1], -1.0, 1.0);
    let op = KernelOperator::new(rk.kernel(DType::F64), &x, &x).unwrap();
    let pre = Preconditioner::PivotedCholesky(Rank::Fixed(300));
    let (a_pre, pc) = op.solve(&b, alpha, &opts(tol, pre)).unwrap();
    assert!(pc.all_converged(), "{pc:?}");
    assert_eq!(pc.preconditioner_rank, 300);
    assert!(pc.iterations < 40, "{pc:?}");
    let capped = SolveOptions {
        tol,
        max_iters: 2 * pc.iterations,
        preconditioner: Preconditioner::None,
        ..SolveOptions::default()
    };
    let (_, plain) = op.solve(&b, alpha, &capped).unwrap();
    assert!(
        !plain.all_converged() && plain.residuals[0] > 10.0 * tol,
        "plain CG should need more than twice the preconditioned iterations ({}): {plain:?}",
        pc.iterations
    );
    // The preconditioned solution, checked by an independent residual.
    let mine = residuals(
        &rk.matrix(&host_points(&x)),
        alpha,
        &host_cols(&a_pre),
        &host_cols(&b),
    );
    assert!(mine[0] <= 1.5 * tol, "recomputed residual {:.3e}", mine[0]);
    check_reported_residuals(&pc, &mine, "N = 1200 preconditioned");
}

#[test]
fn preconditioner_fixed_rank_is_exact() {
    let n = 150;
    let mut rng = Rng(52);
    let x = rand_points(&mut rng, n, 2);
    let b = rng.tensor(&[n], -1.0, 1.0);
    let l = Tensor::new(&[0.3f64], &Device::Cpu).unwrap();
    let op = KernelOperator::new(Kernel::matern32(&l), &x, &x).unwrap();
    for r in [1, 7, 20, 60] {
        let pre = Preconditioner::PivotedCholesky(Rank::Fixed(r));
        let (_, info) = op.solve(&b, 0.1, &opts(1e-8, pre)).unwrap();
        assert_eq!(info.preconditioner_rank, r, "{info:?}");
        assert!(info.all_converged());
        assert!(info.preconditioner_remainder.is_finite() && info.preconditioner_remainder > 0.0);
    }
    let (_, info) = op
        .solve(&b, 0.1, &opts(1e-8, Preconditioner::None))
        .unwrap();
    assert_eq!(info.preconditioner_rank, 0);
    assert!(info.preconditioner_remainder.is_nan());
}

#[test]
fn preconditioner_auto_rank_stops_early_on_low_rank_kernel() {
    let n = 400;
    let alpha = 1.0;
    let rk = RefK::Gauss(vec![0.3]);
    let mut rng = Rng(53);
    let x = rand_points(&mut rng, n, 1);
    let b = rng.tensor(&[n, 2], -1.0, 1.0);
    let op = KernelOperator::new(rk.kernel(DType::F64), &x, &x).unwrap();
    let pre = Preconditioner::PivotedCholesky(Rank::Auto { max: 400 });
    let (a, info) = op.solve(&b, alpha, &opts(1e-10, pre)).unwrap();
    assert!(
        info.preconditioner_rank > 0 && info.preconditioner_rank < 100,
        "auto rank {}",
        info.preconditioner_rank
    );
    // The stop rule: the remaining trace is at most alpha.
    assert!(info.preconditioner_remainder <= alpha, "{info:?}");
    // With such a preconditioner CG needs only a handful of iterations.
    assert!(info.iterations <= 10, "{info:?}");
    let want = cholesky_solve(&rk.matrix(&host_points(&x)), alpha, &host_cols(&b));
    let e = rel_err(&host_cols(&a), &want, None);
    assert!(e < 1e-8, "relative error {e:.3e}");
}

#[test]
fn preconditioner_with_zero_alpha_converges_to_dense_solution() {
    let n = 60;
    let rk = RefK::Matern(1, vec![0.3]);
    let mut rng = Rng(54);
    let x = rand_points(&mut rng, n, 2);
    let b = rng.tensor(&[n, 2], -1.0, 1.0);
    let want = cholesky_solve(&rk.matrix(&host_points(&x)), 0.0, &host_cols(&b));
    let op = KernelOperator::new(rk.kernel(DType::F64), &x, &x).unwrap();
    for pre in [
        Preconditioner::PivotedCholesky(Rank::Fixed(10)),
        Preconditioner::default(),
    ] {
        let (a, info) = op.solve(&b, 0.0, &opts(1e-11, pre)).unwrap();
        assert!(info.all_converged(), "{pre:?}: {info:?}");
        let e = rel_err(&host_cols(&a), &want, None);
        assert!(e < 1e-7, "{pre:?}: relative error {e:.3e}");
    }
}

// ---------------------------------------------------------------------------------------------
// 6. f32
// ---------------------------------------------------------------------------------------------

#[test]
fn solve_f32_reaches_tolerance_and_matches_f64_reference() {
    let n = 300;
    let alpha = 0.5;
    let rk = RefK::Gauss(vec![0.25]);
    let mut rng = Rng(61);
    let x = rand_points(&mut rng, n, 2).to_dtype(DType::F32).unwrap();
    let b = rng.tensor(&[n, 2], -1.0, 1.0).to_dtype(DType::F32).unwrap();
    // The reference uses the f32 values, widened.
    let kmat = rk.matrix(&host_points(&x));
    let bh = host_cols(&b);
    let want = cholesky_solve(&kmat, alpha, &bh);
    let op = KernelOperator::new(rk.kernel(DType::F32), &x, &x).unwrap();
    for pre in [Preconditioner::None, Preconditioner::default()] {
        let (a, info) = op.solve(&b, alpha, &opts(1e-5, pre)).unwrap();
        assert_eq!(a.dtype(), DType::F32);
        assert_eq!(a.dims(), &[n, 2]);
        assert!(info.all_converged(), "{pre:?}: {info:?}");
        assert!(info.max_residual() <= 1e-5, "{pre:?}: {info:?}");
        let ah = host_cols(&a);
        let mine = residuals(&kmat, alpha, &ah, &bh);
        for r in &mine {
            assert!(*r <= 2e-5, "{pre:?}: recomputed residual {r:.3e}");
        }
        let e = rel_err(&ah, &want, None);
        assert!(e < 1e-4, "{pre:?}: relative error {e:.3e}");
    }
}

// ---------------------------------------------------------------------------------------------
// 7. Errors
// ---------------------------------------------------------------------------------------------

#[test]
fn solve_rejects_bad_inputs_with_clear_errors() {
    let dev = Device::Cpu;
    let n = 30;
    let mut rng = Rng(71);
    let x = rand_points(&mut rng, n, 2);
    let l = Tensor::new(&[0.3f64], &dev).unwrap();
    let k = Kernel::gaussian(&l);
    let op = KernelOperator::new(k.clone(), &x, &x).unwrap();
    let b = rng.tensor(&[n, 2], -1.0, 1.0);
    let o = SolveOptions::default();
    let lower = |s: String| s.to_lowercase();

    // Non-square operator.
    let y = rand_points(&mut rng, n + 5, 2);
    let rect = KernelOperator::new(k.clone(), &x, &y).unwrap();
    let m = lower(err_msg(rect.solve(&b, 1.0, &o), "non-square"));
    assert!(m.contains("square"), "{m}");
    // Square, but built on different points.
    let y = (&x + 0.1).unwrap();
    let other = KernelOperator::new(k.clone(), &x, &y).unwrap();
    let m = lower(err_msg(other.solve(&b, 1.0, &o), "different points"));
    assert!(m.contains("differ") || m.contains("symmetric"), "{m}");
    // Same values in a different tensor are fine.
    let xc = x.copy().unwrap();
    let same = KernelOperator::new(k.clone(), &x, &xc).unwrap();
    assert!(same.solve(&b, 1.0, &o).is_ok());
    // alpha: negative, NaN, infinite, two elements.
    for bad in [-1e-3, f64::NAN, f64::INFINITY] {
        let m = lower(err_msg(op.solve(&b, bad, &o), "bad alpha"));
        assert!(m.contains("alpha"), "alpha {bad}: {m}");
    }
    let two = Tensor::new(&[1.0f64, 2.0], &dev).unwrap();
    let m = lower(err_msg(op.solve(&b, &two, &o), "alpha with 2 elements"));
    assert!(m.contains("alpha") && m.contains("one element"), "{m}");
    let neg = Tensor::new(&[-1.0f64], &dev).unwrap();
    let m = lower(err_msg(op.solve(&b, &neg, &o), "negative alpha tensor"));
    assert!(m.contains("alpha"), "{m}");
    // b: NaN, inf, wrong rows, rank 3, other dtype.
    let mut bv = host_cols(&b);
    bv[3][1] = f64::NAN;
    let bn = Tensor::new(bv.clone(), &dev).unwrap();
    let m = lower(err_msg(op.solve(&bn, 1.0, &o), "NaN in b"));
    assert!(m.contains("nan"), "{m}");
    bv[3][1] = f64::NEG_INFINITY;
    let bi = Tensor::new(bv, &dev).unwrap();
    let m = lower(err_msg(op.solve(&bi, 1.0, &o), "inf in b"));
    assert!(m.contains("infinite") || m.contains("inf"), "{m}");
    let short = rng.tensor(&[n - 1, 2], -1.0, 1.0);
    let m = lower(err_msg(op.solve(&short, 1.0, &o), "wrong rows"));
    assert!(m.contains("b must be") && m.contains(&n.to_string()), "{m}");
    let short_vec = rng.tensor(&[n + 1], -1.0, 1.0);
    let m = lower(err_msg(op.solve(&short_vec, 1.0, &o), "wrong rows, vector"));
    assert!(m.contains("b must be"), "{m}");
    let cube = rng.tensor(&[n, 2, 1], -1.0, 1.0);
    let m = lower(err_msg(op.solve(&cube, 1.0, &o), "rank-3 b"));
    assert!(m.contains("b must be"), "{m}");
    let b32 = b.to_dtype(DType::F32).unwrap();
    let m = lower(err_msg(op.solve(&b32, 1.0, &o), "f32 b"));
    assert!(m.contains("f32") && m.contains("f64"), "{m}");
    // tol.
    for tol in [0.0, -1e-6, f64::NAN] {
        let ot = SolveOptions {
            tol,
            ..SolveOptions::default()
        };
        let m = lower(err_msg(op.solve(&b, 1.0, &ot), "bad tol"));
        assert!(m.contains("tol"), "tol {tol}: {m}");
    }
    // Every message names the op.
    let m = err_msg(op.solve(&b, -1.0, &o), "negative alpha");
    assert!(m.contains("KernelOperator::solve"), "{m}");
}

// ---------------------------------------------------------------------------------------------
// 8. Gradients
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum GradKernel {
    Gauss,
    Matern32,
}

/// The hyperparameters and data of a gradient check.
struct GradProblem {
    kind: GradKernel,
    x: Vec<Vec<f64>>,
    l: f64,
    c: f64,
    alpha: f64,
    b: Vec<Vec<f64>>,
    w: Vec<Vec<f64>>,
}

fn t2(v: &[Vec<f64>]) -> Tensor {
    Tensor::new(v.to_vec(), &Device::Cpu).unwrap()
}

fn t1(v: f64) -> Tensor {
    Tensor::new(&[v], &Device::Cpu).unwrap()
}

fn crate_kernel(kind: GradKernel, l: &Tensor, c: &Tensor) -> Kernel {
    match kind {
        GradKernel::Gauss => Kernel::gaussian(l).scale(c),
        GradKernel::Matern32 => Kernel::matern32(l).scale(c),
    }
}

/// `L = sum(w * a)` with `a` the crate's solution, as a tensor (differentiable if the inputs
/// are `Var`s).
fn crate_loss(
    kind: GradKernel,
    x: &Tensor,
    l: &Tensor,
    c: &Tensor,
    alpha: &Tensor,
    b: &Tensor,
    w: &Tensor,
    o: &SolveOptions,
) -> Result<Tensor> {
    let op = KernelOperator::new(crate_kernel(kind, l, c), x, x)?;
    let (a, info) = op.solve(b, alpha, o)?;
    assert!(info.all_converged(), "{info:?}");
    (a * w)?.sum_all()
}

/// The same loss with plain values (for finite differences).
fn crate_loss_value(p: &GradProblem, o: &SolveOptions) -> f64 {
    crate_loss(
        p.kind,
        &t2(&p.x),
        &t1(p.l),
        &t1(p.c),
        &t1(p.alpha),
        &t2(&p.b),
        &t2(&p.w),
        o,
    )
    .unwrap()
    .to_scalar::<f64>()
    .unwrap()
}

/// `(N, N)` one-hot column `e_k` as `(N, 1)`.
fn one_hot(n: usize, k: usize) -> Tensor {
    let mut v = vec![0.0f64; n];
    v[k] = 1.0;
    Tensor::from_vec(v, (n, 1), &Device::Cpu).unwrap()
}

/// The dense kernel matrix from Candle ops on (possibly `Var`) tensors: differentiable.
fn dense_k_candle(kind: GradKernel, x: &Tensor, l: &Tensor, c: &Tensor) -> Result<Tensor> {
    let n = x.dim(0)?;
    let xs = x.broadcast_div(l)?;
    let diff = xs.unsqueeze(1)?.broadcast_sub(&xs.unsqueeze(0)?)?; // (N, N, D)
    let r2 = diff.sqr()?.sum(2)?; // (N, N)
    let k = match kind {
        GradKernel::Gauss => (r2 * -0.5)?.exp()?,
        GradKernel::Matern32 => {
            // r = sqrt(r2) with a finite derivative on the diagonal (where r2 = 0 exactly):
            // shift the diagonal by one under the root, then zero it.
            let eye = Tensor::eye(n, DType::F64, x.device())?;
            let off = (1.0 - &eye)?;
            let r = ((r2 + &eye)?.sqrt()? * off)?;
            let s = (r * 3f64.sqrt())?;
            ((s.clone() + 1.0)? * s.neg()?.exp()?)?
        }
    };
    k.broadcast_mul(c)
}

/// Solves `A X = B` (`A` SPD `(N, N)`, `B` `(N, E)`) by Gauss-Jordan elimination with Candle
/// ops, differentiable with respect to `A` and `B`.
fn gauss_jordan_solve(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let n = a.dim(0)?;
    let e = b.dim(1)?;
    let mut m = Tensor::cat(&[a, b], 1)?;
    for k in 0..n {
        let row = m.narrow(0, k, 1)?;
        let pivot = row.narrow(1, k, 1)?;
        let row = row.broadcast_div(&pivot)?;
        // Row k becomes row / pivot; every other row i loses m_ik * row.
        let col = (m.narrow(1, k, 1)? - one_hot(n, k))?;
        m = (m - col.broadcast_mul(&row)?)?;
    }
    m.narrow(1, n, e)
}

/// The reference loss, fully dense and differentiable.
fn dense_loss(
    kind: GradKernel,
    x: &Tensor,
    l: &Tensor,
    c: &Tensor,
    alpha: &Tensor,
    b: &Tensor,
    w: &Tensor,
) -> Result<Tensor> {
    let n = x.dim(0)?;
    let k = dense_k_candle(kind, x, l, c)?;
    let eye = Tensor::eye(n, DType::F64, x.device())?;
    let a_mat = (k + eye.broadcast_mul(alpha)?)?;
    let a = gauss_jordan_solve(&a_mat, b)?;
    (a * w)?.sum_all()
}

fn grad_problem(kind: GradKernel, n: usize, seed: u64) -> GradProblem {
    let mut rng = Rng(seed);
    let x = (0..n)
        .map(|_| vec![rng.uniform(0.0, 1.0), rng.uniform(0.0, 1.0)])
        .collect();
    let b = (0..n)
        .map(|_| vec![rng.uniform(-1.0, 1.0), rng.uniform(-1.0, 1.0)])
        .collect();
    let w = (0..n)
        .map(|_| vec![rng.uniform(-1.0, 1.0), rng.uniform(-1.0, 1.0)])
        .collect();
    GradProblem {
        kind,
        x,
        l: 0.3,
        c: 1.5,
        alpha: 0.05,
        b,
        w,
    }
}

/// Relative distance of two gradient vectors `|g - r| / |r|`.
fn vec_rel(g: &[f64], r: &[f64]) -> f64 {
    let num: f64 = g.iter().zip(r).map(|(a, b)| (a - b).powi(2)).sum::<f64>();
    let den: f64 = r.iter().map(|b| b * b).sum::<f64>();
    (num / den).sqrt()
}

/// Checks every gradient of the solve's loss against the dense Candle autodiff, and a sample
/// of them against central finite differences of the crate's own solve.
fn check_solve_gradients(kind: GradKernel, n: usize, pre: Preconditioner, seed: u64) {
    let p = grad_problem(kind, n, seed);
    let what = format!("{kind:?} N={n} {pre:?}");
    let o = SolveOptions {
        tol: 1e-12,
        preconditioner: pre,
        ..SolveOptions::default()
    };
    let xv = Var::new(p.x.clone(), &Device::Cpu).unwrap();
    let lv = Var::new(&[p.l], &Device::Cpu).unwrap();
    let cv = Var::new(&[p.c], &Device::Cpu).unwrap();
    let av = Var::new(&[p.alpha], &Device::Cpu).unwrap();
    let bv = Var::new(p.b.clone(), &Device::Cpu).unwrap();
    let w = t2(&p.w);
    let vars: [(&str, &Var); 5] = [
        ("x", &xv),
        ("l", &lv),
        ("c", &cv),
        ("alpha", &av),
        ("b", &bv),
    ];

    let loss = crate_loss(kind, &xv, &lv, &cv, &av, &bv, &w, &o).unwrap();
    let grads = loss.backward().unwrap();
    let got: Vec<Vec<f64>> = vars
        .iter()
        .map(|(name, v)| {
            let g = grads
                .get(v)
                .unwrap_or_else(|| panic!("{what}: no gradient for {name}"));
            assert_eq!(g.dims(), v.dims(), "{what}: gradient shape of {name}");
            flat(g)
        })
        .collect();

    // (c) the dense differentiable Candle solve.
    let dl = dense_loss(kind, &xv, &lv, &cv, &av, &bv, &w).unwrap();
    let lval = loss.to_scalar::<f64>().unwrap();
    let dval = dl.to_scalar::<f64>().unwrap();
    assert!(
        (lval - dval).abs() <= 1e-9 * dval.abs().max(1.0),
        "{what}: loss {lval} vs dense {dval}"
    );
    let dgrads = dl.backward().unwrap();
    for ((name, v), g) in vars.iter().zip(&got) {
        let r = flat(dgrads.get(v).unwrap());
        assert!(
            g.iter().all(|v| v.is_finite()),
            "{what}: d/d{name} not finite: {g:?}"
        );
        let e = vec_rel(g, &r);
        assert!(
            e < 1e-6,
            "{what}: d/d{name}: relative distance to dense autodiff {e:.3e}"
        );
    }

    // (b) central finite differences of the crate's solve (a few entries of x and b, all the
    // scalar hyperparameters).
    let fd = |perturb: &dyn Fn(&mut GradProblem, f64), h: f64| -> f64 {
        let mut pp = GradProblem {
            w: p.w.clone(),
            b: p.b.clone(),
            x: p.x.clone(),
            ..p
        };
        perturb(&mut pp, h);
        let up = crate_loss_value(&pp, &o);
        let mut pm = GradProblem {
            w: p.w.clone(),
            b: p.b.clone(),
            x: p.x.clone(),
            ..p
        };
        perturb(&mut pm, -h);
        let dn = crate_loss_value(&pm, &o);
        (up - dn) / (2.0 * h)
    };
    let check = |name: &str, g: f64, fdv: f64, scale: f64| {
        assert!(
            (g - fdv).abs() <= 1e-5 * fdv.abs() + 1e-7 * scale,
            "{what}: d/d{name}: autodiff {g:.10e}, finite differences {fdv:.10e}"
        );
    };
    let h = 1e-5;
    check("l", got[1][0], fd(&|q, h| q.l += h, h), got[1][0].abs());
    check("c", got[2][0], fd(&|q, h| q.c += h, h), got[2][0].abs());
    check(
        "alpha",
        got[3][0],
        fd(&|q, h| q.alpha += h, h * 0.1),
        got[3][0].abs(),
    );
    let gx_scale = got[0].iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for (i, d) in [(0, 0), (3, 1), (n / 2, 0), (n - 1, 1)] {
        let fdv = fd(&|q, h| q.x[i][d] += h, h);
        check(&format!("x[{i}][{d}]"), got[0][2 * i + d], fdv, gx_scale);
    }
    let gb_scale = got[4].iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for (i, e) in [(1, 0), (n / 3, 1), (n - 2, 0)] {
        let fdv = fd(&|q, h| q.b[i][e] += h, h);
        check(&format!("b[{i}][{e}]"), got[4][2 * i + e], fdv, gb_scale);
    }
}

#[test]
fn grad_gaussian_no_preconditioner_matches_dense_and_fd() {
    check_solve_gradients(GradKernel::Gauss, 25, Preconditioner::None, 81);
}

#[test]
fn grad_gaussian_pivoted_cholesky_matches_dense_and_fd() {
    check_solve_gradients(
        GradKernel::Gauss,
        30,
        Preconditioner::PivotedCholesky(Rank::Fixed(8)),
        82,
    );
}

#[test]
fn grad_matern32_no_preconditioner_matches_dense_and_fd() {
    check_solve_gradients(GradKernel::Matern32, 25, Preconditioner::None, 83);
}

#[test]
fn grad_matern32_default_preconditioner_matches_dense_and_fd() {
    check_solve_gradients(GradKernel::Matern32, 30, Preconditioner::default(), 84);
}

#[test]
fn grad_only_b_tracked_matches_dense() {
    // Only b is a Var: the gradient is the adjoint solve (K + alpha I)^-1 w.
    let p = grad_problem(GradKernel::Gauss, 20, 85);
    let bv = Var::new(p.b.clone(), &Device::Cpu).unwrap();
    let w = t2(&p.w);
    let o = opts(1e-12, Preconditioner::default());
    let loss = crate_loss(
        p.kind,
        &t2(&p.x),
        &t1(p.l),
        &t1(p.c),
        &t1(p.alpha),
        &bv,
        &w,
        &o,
    )
    .unwrap();
    let g = flat(loss.backward().unwrap().get(&bv).unwrap());
    let rk = RefK::Scale(p.c, Box::new(RefK::Gauss(vec![p.l])));
    let want = cholesky_solve(&rk.matrix(&p.x), p.alpha, &p.w);
    let want: Vec<f64> = want.into_iter().flatten().collect();
    assert_close(&g, &want, 1e-8, 1e-10, "dL/db = (K + alpha I)^-1 w");
}

#[test]
fn solve_without_tracked_inputs_returns_plain_tensor() {
    let mut rng = Rng(86);
    let n = 40;
    let x = rand_points(&mut rng, n, 2);
    let b = rng.tensor(&[n], -1.0, 1.0);
    let l = Tensor::new(&[0.3f64], &Device::Cpu).unwrap();
    let alpha = Tensor::new(&[0.1f64], &Device::Cpu).unwrap();
    let op = KernelOperator::new(Kernel::gaussian(&l), &x, &x).unwrap();
    let (a, info) = op
        .solve(&b, &alpha, &opts(1e-10, Preconditioner::default()))
        .unwrap();
    assert!(info.all_converged());
    assert!(
        !a.track_op(),
        "no Var in, so the result must not track gradients"
    );
    assert_eq!(a.dims(), &[n]);
    let want = cholesky_solve(
        &RefK::Gauss(vec![0.3]).matrix(&host_points(&x)),
        0.1,
        &host_cols(&b),
    );
    assert!(rel_err(&host_cols(&a), &want, None) < 1e-8);
    // A gradient taken downstream simply finds no Var: no error.
    let loss = a.sum_all().unwrap();
    assert!(loss.backward().is_ok());
}

#[test]
fn grad_backward_errors_when_adjoint_solve_does_not_converge() {
    let n = 150;
    let mut rng = Rng(87);
    let x = rand_points(&mut rng, n, 2);
    let bv = Var::new(host_cols(&rng.tensor(&[n, 2], -1.0, 1.0)), &Device::Cpu).unwrap();
    let w = rng.tensor(&[n, 2], -1.0, 1.0);
    let l = Var::new(&[0.5f64], &Device::Cpu).unwrap();
    let op = KernelOperator::new(Kernel::laplacian(&l), &x, &x).unwrap();
    let o = SolveOptions {
        tol: 1e-8,
        max_iters: 2,
        preconditioner: Preconditioner::None,
        ..SolveOptions::default()
    };
    let (a, info) = op
        .solve(&bv, 1e-3, &o)
        .expect("the forward pass just reports");
    assert!(!info.all_converged());
    let loss = (a * &w).unwrap().sum_all().unwrap();
    let msg = err_msg(
        loss.backward().map(|_| ()),
        "backward with a capped adjoint solve",
    );
    assert!(msg.contains("adjoint"), "{msg}");
}

/// An f32 solve whose answer cannot reach the tolerance (the f32 rounding of the solution
/// alone puts its residual above it) stops as stalled, and its backward pass still works: the
/// adjoint solution satisfies its own system about as well as the forward one does.
#[test]
fn f32_stalled_solve_still_has_a_gradient() {
    let n = 300;
    let mut rng = Rng(91);
    let x = rand_points(&mut rng, n, 1);
    let rk = RefK::Gauss(vec![0.2]);
    let alpha = 1e-5;
    let b = rng.tensor(&[n, 1], 0.0, 1.0);
    let w = rng.tensor(&[n, 1], -1.0, 1.0);
    let bv = Var::from_tensor(&b.to_dtype(DType::F32).unwrap()).unwrap();
    let op = KernelOperator::new(
        rk.kernel(DType::F32),
        &x.to_dtype(DType::F32).unwrap(),
        &x.to_dtype(DType::F32).unwrap(),
    )
    .unwrap();
    let o = SolveOptions {
        tol: 1e-9,
        ..SolveOptions::default()
    };
    let (a, info) = op.solve(bv.as_tensor(), alpha, &o).unwrap();
    assert_eq!(info.stops, vec![lazy_kernels::Stop::Stalled], "{info:?}");
    // The reported residual is the true one of the returned f32 answer (computed here in f64
    // from the f32 points).
    let k = rk.matrix(&host_points(&x.to_dtype(DType::F32).unwrap()));
    let mine = residuals(
        &k,
        alpha,
        &host_cols(&a),
        &host_cols(&bv.as_tensor().to_dtype(DType::F64).unwrap()),
    );
    check_reported_residuals(&info, &mine, "f32 stalled");
    let loss = (a.to_dtype(DType::F64).unwrap() * &w)
        .unwrap()
        .sum_all()
        .unwrap();
    let grads = loss.backward().expect("a stalled f32 solve has a gradient");
    let lambda = host_cols(grads.get(&bv).expect("b is a Var"));
    let adj = residuals(&k, alpha, &lambda, &host_cols(&w));
    assert!(
        adj[0] <= 10.0 * info.max_residual(),
        "adjoint residual {} vs forward {}",
        adj[0],
        info.max_residual()
    );
}

/// A hyperparameter `Var` updated to an invalid value after the operator was built is caught
/// by the solve.
#[test]
fn solve_rechecks_hyperparameters_updated_after_construction() {
    let mut rng = Rng(5);
    let x = rand_points(&mut rng, 40, 2);
    let b = rng.tensor(&[40, 1], -1.0, 1.0);
    let l = Var::new(&[0.3f64], &Device::Cpu).unwrap();
    let op = KernelOperator::new(Kernel::matern32(l.as_tensor()), &x, &x).unwrap();
    assert!(op.solve(&b, 0.1, &SolveOptions::default()).is_ok());
    l.set(&Tensor::new(&[-0.3f64], &Device::Cpu).unwrap())
        .unwrap();
    let msg = err_msg(
        op.solve(&b, 0.1, &SolveOptions::default()),
        "negative lengthscale set after construction",
    );
    assert!(
        msg.contains("lengthscale") && msg.contains("positive"),
        "{msg}"
    );
}

/// With f16 products the recurrence stagnates far above the tolerance and never asks for a
/// residual check: the periodic look at the true residual stops the column as stalled well
/// before the cap, its reported residual is the true one of the returned f16 answer, and the
/// backward pass accepts the equally stalled adjoint solve.
#[test]
fn f16_stagnating_solve_stops_as_stalled_before_the_cap() {
    let n = 300;
    let mut rng = Rng(23);
    let x = rand_points(&mut rng, n, 2).to_dtype(DType::F16).unwrap();
    let rk = RefK::Matern(3, vec![0.1]);
    let b = rng.tensor(&[n, 1], 0.0, 1.0).to_dtype(DType::F16).unwrap();
    let bv = Var::from_tensor(&b).unwrap();
    let op = KernelOperator::new(rk.kernel(DType::F16), &x, &x).unwrap();
    let o = SolveOptions {
        max_iters: 5000,
        preconditioner: Preconditioner::None,
        ..SolveOptions::default()
    };
    let (a, info) = op.solve(bv.as_tensor(), 1e-2, &o).unwrap();
    assert_eq!(info.stops, vec![lazy_kernels::Stop::Stalled], "{info:?}");
    assert!(info.iterations < 1000, "{info:?}");
    let k = rk.matrix(&host_points(&x));
    let mine = residuals(&k, 1e-2, &host_cols(&a), &host_cols(&b));
    check_reported_residuals(&info, &mine, "f16 stalled");
    let loss = a.to_dtype(DType::F64).unwrap().sum_all().unwrap();
    let grads = loss.backward().expect("a stalled f16 solve has a gradient");
    assert_eq!(grads.get(&bv).expect("b is a Var").dims(), &[n, 1]);
}

/// A kernel close to `I` (lengthscale far below the spacing of the points): pivots cannot cut
/// the remainder's trace to `alpha`, and plain CG needs a few iterations. The automatic rank
/// stops after its first round instead of building 400 rows for nothing.
#[test]
fn preconditioner_auto_rank_stops_on_a_nearly_diagonal_kernel() {
    let n = 2000;
    let mut rng = Rng(55);
    let x = rand_points(&mut rng, n, 2);
    let b = rng.tensor(&[n], -1.0, 1.0);
    let l = Tensor::new(&[1e-3f64], &Device::Cpu).unwrap();
    let op = KernelOperator::new(Kernel::gaussian(&l), &x, &x).unwrap();
    let (_, pc) = op
        .solve(&b, 1.0, &opts(1e-8, Preconditioner::default()))
        .unwrap();
    let (_, plain) = op
        .solve(&b, 1.0, &opts(1e-8, Preconditioner::None))
        .unwrap();
    assert!(pc.all_converged() && plain.all_converged());
    assert!(
        pc.preconditioner_rank > 0 && pc.preconditioner_rank <= 16,
        "rank {}",
        pc.preconditioner_rank
    );
    assert!(pc.preconditioner_remainder > 1.0, "{pc:?}");
    assert!(pc.iterations <= plain.iterations, "{pc:?} vs {plain:?}");
}

/// On a GPU every read of device values by the host waits for the device: the solve must
/// read per round of pivots and per iteration, never per pivot (the first GPU run's factor read
/// three numbers per pivot: 1,200 waits at rank 400, 144 ms of a 150 ms solve). Counted on the
/// CPU, where the same code runs.
#[test]
fn solve_reads_the_device_per_round_and_per_iteration_not_per_pivot() {
    let n = 1500;
    let mut rng = Rng(56);
    let x = rand_points(&mut rng, n, 2);
    let b = rng.tensor(&[n, 3], -1.0, 1.0);
    let l = Tensor::new(&[0.1f64], &Device::Cpu).unwrap();
    let op = KernelOperator::new(Kernel::laplacian(&l), &x, &x).unwrap();
    for pre in [
        Preconditioner::PivotedCholesky(Rank::Fixed(300)),
        Preconditioner::PivotedCholesky(Rank::Auto { max: 300 }),
    ] {
        let (_, info) = op.solve(&b, 1.0, &opts(1e-8, pre)).unwrap();
        assert!(info.all_converged(), "{info:?}");
        assert_eq!(info.preconditioner_rank, 300, "{info:?}");
        eprintln!(
            "{pre:?}: {} host reads, {} iterations, {} products",
            info.host_reads, info.iterations, info.products
        );
        // Rounds of up to 64 candidates (about 10 for 300 pivots, at most 3 reads each), one
        // read per iteration and per residual check, and a few checks of the inputs.
        assert!(
            info.host_reads <= 40 + info.iterations + info.products,
            "{} host reads for rank {} and {} iterations",
            info.host_reads,
            info.preconditioner_rank,
            info.iterations
        );
    }
    let (_, plain) = op
        .solve(&b, 1.0, &opts(1e-8, Preconditioner::None))
        .unwrap();
    assert!(
        plain.host_reads <= 5 + plain.iterations + plain.products,
        "{plain:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// LazyTensor::solve: any symmetric formula, KeOps' `K_xx.solve(b, alpha=alpha)`
// ---------------------------------------------------------------------------------------------

/// `(1 + c |x_i - x_j|^2)^(-1/2)` (inverse multiquadric, positive definite), as a formula.
fn imq_formula(x: &Tensor, c: &Tensor) -> Result<lazy_kernels::LazyTensor> {
    use lazy_kernels::LazyTensor;
    let (x_i, x_j) = (LazyTensor::vi(x)?, LazyTensor::vj(x)?);
    Ok((x_i.sqdist(&x_j) * LazyTensor::param(c)? + 1.0).rsqrt())
}

fn imq_matrix(pts: &[Vec<f64>], c: f64) -> Vec<Vec<f64>> {
    let d2 = |p: &[f64], q: &[f64]| p.iter().zip(q).map(|(a, b)| (a - b).powi(2)).sum::<f64>();
    pts.iter()
        .map(|p| {
            pts.iter()
                .map(|q| 1.0 / (1.0 + c * d2(p, q)).sqrt())
                .collect()
        })
        .collect()
}

#[test]
fn lazy_solve_of_a_formula_matches_dense_cholesky() -> Result<()> {
    use lazy_kernels::LazyTensor;
    let mut rng = Rng(71);
    let (n, alpha) = (150, 0.05);
    let x = rand_points(&mut rng, n, 2);
    let pts = host_points(&x);
    // A formula no kernel family has, and the Gaussian written as KeOps writes it.
    let c = Tensor::new(&[30f64], &Device::Cpu)?;
    let imq = imq_formula(&x, &c)?;
    let (x_i, x_j) = (LazyTensor::vi(&x)?, LazyTensor::vj(&x)?);
    let gauss = (-x_i.sqdist(&x_j) / (2.0 * 0.2 * 0.2)).exp();
    for (k, kmat, what) in [
        (&imq, imq_matrix(&pts, 30.0), "imq"),
        (&gauss, RefK::Gauss(vec![0.2]).matrix(&pts), "gauss"),
    ] {
        for pre in [Preconditioner::None, Preconditioner::default()] {
            for b in [rng.tensor(&[n], -1.0, 1.0), rng.tensor(&[n, 3], -1.0, 1.0)] {
                let what = format!("{what} {pre:?} b{:?}", b.dims());
                let (a, info) = k.solve(&b, alpha, &opts(1e-10, pre))?;
                assert_eq!(a.dims(), b.dims(), "{what}");
                assert!(info.all_converged(), "{what}: {info:?}");
                let (ah, bh) = (host_cols(&a), host_cols(&b));
                let e = rel_err(&ah, &cholesky_solve(&kmat, alpha, &bh), None);
                assert!(e < 1e-8, "{what}: relative error {e:.3e}");
                check_reported_residuals(&info, &residuals(&kmat, alpha, &ah, &bh), &what);
                if pre != Preconditioner::None {
                    assert!(info.preconditioner_rank > 0, "{what}: built from the rows");
                }
            }
        }
    }
    Ok(())
}

#[test]
fn lazy_solve_gradients_match_finite_differences() -> Result<()> {
    let mut rng = Rng(72);
    let (n, alpha) = (40, 0.1);
    let x0 = rand_points(&mut rng, n, 2);
    let b0 = rng.tensor(&[n, 2], -1.0, 1.0);
    let w = rng.tensor(&[n, 2], -1.0, 1.0);
    let o = opts(1e-12, Preconditioner::default());
    // loss = <w, (K + alpha I)^-1 b>, with K the inverse multiquadric of parameter c.
    let loss = |x: &Tensor, b: &Tensor, c: &Tensor| -> Result<Tensor> {
        let (a, _) = imq_formula(x, c)?.solve(b, alpha, &o)?;
        (a * &w)?.sum_all()
    };
    let (x, b, c) = (
        Var::from_tensor(&x0)?,
        Var::from_tensor(&b0)?,
        Var::new(&[30f64], &Device::Cpu)?,
    );
    let grads = loss(x.as_tensor(), b.as_tensor(), c.as_tensor())?.backward()?;
    let fd = |which: usize, k: usize| -> Result<f64> {
        let h = 1e-6;
        let bump = |t: &Tensor, s: f64| -> Result<Tensor> {
            let mut v = t.flatten_all()?.to_vec1::<f64>()?;
            v[k] += s;
            Tensor::from_vec(v, t.shape(), &Device::Cpu)
        };
        let c0 = Tensor::new(&[30f64], &Device::Cpu)?;
        let at = |s: f64| -> Result<f64> {
            let (xx, bb, cc) = match which {
                0 => (bump(&x0, s)?, b0.clone(), c0.clone()),
                1 => (x0.clone(), bump(&b0, s)?, c0.clone()),
                _ => (x0.clone(), b0.clone(), bump(&c0, s * 30.0)?),
            };
            loss(&xx, &bb, &cc)?.to_scalar::<f64>()
        };
        let scale = if which == 2 { 30.0 } else { 1.0 };
        Ok((at(h)? - at(-h)?) / (2.0 * h * scale))
    };
    for (which, v, name, entries) in [
        (0, &x, "x", vec![0, 7, 2 * n - 1]),
        (1, &b, "b", vec![0, 5, 2 * n - 2]),
        (2, &c, "c", vec![0]),
    ] {
        let g = flat(grads.get(v).expect("a gradient"));
        for k in entries {
            let want = fd(which, k)?;
            let ok = (g[k] - want).abs() <= 1e-5 * want.abs().max(1e-3);
            assert!(ok, "d loss / d {name}[{k}]: {} against {want}", g[k]);
        }
    }
    Ok(())
}

#[test]
fn lazy_solve_misuse_is_an_error() -> Result<()> {
    use lazy_kernels::LazyTensor;
    let mut rng = Rng(73);
    let x = rand_points(&mut rng, 30, 2);
    let y = rand_points(&mut rng, 20, 2);
    let b = rng.tensor(&[30], -1.0, 1.0);
    let o = SolveOptions::default();
    let (x_i, x_j) = (LazyTensor::vi(&x)?, LazyTensor::vj(&x)?);
    let err = |k: LazyTensor, b: &Tensor| err_msg(k.solve(b, 0.1, &o), "solve");
    // Not square.
    let e = err((-x_i.sqdist(&LazyTensor::vj(&y)?)).exp(), &b);
    assert!(e.contains("square"), "{e}");
    // Square, but the points of i and j differ.
    let x2 = rand_points(&mut rng, 30, 2);
    let e = err((-x_i.sqdist(&LazyTensor::vj(&x2)?)).exp(), &b);
    assert!(e.contains("differ"), "{e}");
    // Visibly not symmetric: exp(sum_d (x_id - x_jd)).
    let e = err((&x_i - &x_j).component_sum().exp(), &b);
    assert!(e.contains("not symmetric"), "{e}");
    // A closure kernel that is not symmetric, through KernelOperator.
    let k = Kernel::from_formula(|x, y| Ok(x.dot(&(y * 2.0)) + x.component_sum()));
    let e = err_msg(
        KernelOperator::new(k, &x, &x)?.solve(&b, 0.1, &o),
        "closure",
    );
    assert!(e.contains("not symmetric"), "{e}");
    // Two i-variables.
    let w_i = LazyTensor::vi(&rng.tensor(&[30, 1], 0.0, 1.0))?;
    let e = err((-x_i.sqdist(&x_j)).exp() * w_i.exp(), &b);
    assert!(e.contains("exactly one i-variable"), "{e}");
    // A vector-valued formula.
    let e = err(&x_i - &x_j, &b);
    assert!(e.contains("one component"), "{e}");
    // NaN in the points: the input is named, not the kernel's diagonal.
    let mut v = x.flatten_all()?.to_vec1::<f64>()?;
    v[7] = f64::NAN;
    let xn = Tensor::from_vec(v, (30, 2), &Device::Cpu)?;
    let (xn_i, xn_j) = (LazyTensor::vi(&xn)?, LazyTensor::vj(&xn)?);
    let e = err((-xn_i.sqdist(&xn_j)).exp(), &b);
    assert!(e.contains("NaN at row 3, component 1"), "{e}");
    let gauss = Kernel::gaussian(&Tensor::new(&[0.3f64], &Device::Cpu)?);
    let e = err_msg(
        KernelOperator::new(gauss, &xn, &xn)?.solve(&b, 0.1, &o),
        "kernel",
    );
    assert!(e.contains("NaN at row 3"), "{e}");
    // A deferred build error surfaces at the solve, naming the op.
    let bad = LazyTensor::vj(&rand_points(&mut rng, 30, 3))?;
    let e = err((-x_i.sqdist(&bad)).exp(), &b);
    assert!(e.contains("SqDist"), "{e}");
    Ok(())
}

/// `SolveOptions::progress` draws a bar (on a terminal, after the threshold) and changes
/// nothing else: the same solution, bit for bit, and the same iterations.
#[test]
fn the_progress_option_changes_nothing_but_the_bar() {
    let dev = Device::Cpu;
    let mut rng = Rng(11);
    let x = rand_points(&mut rng, 300, 2);
    let b = rand_points(&mut rng, 300, 2);
    let l = Tensor::new(&[0.3f64], &dev).unwrap();
    let k = KernelOperator::new(Kernel::gaussian(&l), &x, &x).unwrap();
    let plain = opts(1e-8, Preconditioner::default());
    let with_bar = SolveOptions {
        progress: Some(std::time::Duration::ZERO),
        ..plain.clone()
    };
    let (a0, i0) = k.solve(&b, 1e-2, &plain).unwrap();
    let (a1, i1) = k.solve(&b, 1e-2, &with_bar).unwrap();
    assert_eq!(host_cols(&a0), host_cols(&a1));
    assert_eq!(i0.column_iterations, i1.column_iterations);
    assert!(i1.all_converged());
}
