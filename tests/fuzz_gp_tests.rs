//! Fuzzing of kernel operators, solves and Gaussian processes (issue 17, point 5; the
//! harness, the property and how to fuzz longer: `tests/fuzz/mod.rs`): random kernels of every
//! family (sums, products, scales, a formula kernel) with valid, extreme and invalid
//! hyperparameters, random shapes and dtypes, into `KernelOperator`'s products, into
//! `KernelOperator::solve` with random `SolveOptions`, ridges and right-hand sides, and into
//! `ExactGp::{new, nll, predict, fit}` with random `GpSettings` and `FitOptions`, against the
//! kernels' definitions evaluated in `f64` (dense residuals, the dense exact NLL and posterior).

mod common;
mod fuzz;

use candle_core::{DType, Device, Tensor};
use common::{Rng, flat};
use fuzz::{all_finite, cases, check, close, debug, fuzz, no_panic};
use lazy_kernels::gp::{
    ExactGp, FitOptions, GpSettings, NllMethod, Optimizer, Positive, Variances,
};
use lazy_kernels::{
    Kernel, KernelOperator, LogdetEstimator, Nu, Preconditioner, Rank, Ridge, SolveOptions,
};
use proptest::prelude::TestCaseError;

// ------------------------------------------------------------------------------------------
// Kernels, solves and Gaussian processes
// ------------------------------------------------------------------------------------------

/// A kernel of the families of [`Kernel`], with its hyperparameters as numbers (the dense
/// reference) and tensors (the kernel).
#[derive(Clone, Debug)]
enum KSpec {
    Gaussian(Vec<f64>),
    Matern(Nu, Vec<f64>),
    RationalQuadratic(Vec<f64>, Vec<f64>),
    Periodic(Vec<f64>, Vec<f64>),
    Linear,
    Scale(Vec<f64>, Box<KSpec>),
    Sum(Box<KSpec>, Box<KSpec>),
    Product(Box<KSpec>, Box<KSpec>),
    /// `1 / sqrt(1 + |x - y|^2)`, through [`Kernel::from_formula`].
    InverseMultiquadric,
}

/// Hyperparameter values: mostly valid, of one or `d` values, sometimes invalid (zero,
/// negative, NaN, infinite, of the wrong length) or extreme.
fn hyper(r: &mut Rng, d: usize, per_dim: bool) -> Vec<f64> {
    let wild = r.below(4) == 0;
    let len = match r.below(10) {
        0 if wild => 0,
        1 if wild => d + 1,
        2 | 3 if per_dim => d,
        _ => 1,
    };
    (0..len)
        .map(|_| match r.below(6) {
            0 if wild => [0.0, -1.0, f64::NAN, f64::INFINITY, 1e-300, 1e300, 1e-8, 1e8][r.below(8)],
            _ => r.uniform(0.2, 2.0),
        })
        .collect()
}

fn random_kspec(r: &mut Rng, d: usize, depth: usize) -> KSpec {
    let leaf = depth == 0 || r.below(3) != 0;
    match r.below(if leaf { 6 } else { 9 }) {
        0 => KSpec::Gaussian(hyper(r, d, true)),
        1 => KSpec::Matern(
            [Nu::Half, Nu::ThreeHalves, Nu::FiveHalves][r.below(3)],
            hyper(r, d, true),
        ),
        2 => KSpec::RationalQuadratic(hyper(r, d, true), hyper(r, d, false)),
        3 => KSpec::Periodic(hyper(r, d, true), hyper(r, d, true)),
        4 => KSpec::Linear,
        5 => KSpec::InverseMultiquadric,
        6 => KSpec::Scale(hyper(r, d, false), Box::new(random_kspec(r, d, depth - 1))),
        7 => KSpec::Sum(
            Box::new(random_kspec(r, d, depth - 1)),
            Box::new(random_kspec(r, d, depth - 1)),
        ),
        _ => KSpec::Product(
            Box::new(random_kspec(r, d, depth - 1)),
            Box::new(random_kspec(r, d, depth - 1)),
        ),
    }
}

impl KSpec {
    fn kernel(&self, dtype: DType) -> candle_core::Result<Kernel> {
        let t = |v: &Vec<f64>| Tensor::new(v.as_slice(), &Device::Cpu)?.to_dtype(dtype);
        Ok(match self {
            KSpec::Gaussian(l) => Kernel::gaussian(&t(l)?),
            KSpec::Matern(nu, l) => Kernel::matern(*nu, &t(l)?),
            KSpec::RationalQuadratic(l, a) => Kernel::rational_quadratic(&t(l)?, &t(a)?),
            KSpec::Periodic(l, p) => Kernel::periodic(&t(l)?, &t(p)?),
            KSpec::Linear => Kernel::linear(),
            KSpec::Scale(c, k) => k.kernel(dtype)?.scale(&t(c)?),
            KSpec::Sum(a, b) => a.kernel(dtype)? + b.kernel(dtype)?,
            KSpec::Product(a, b) => a.kernel(dtype)? * b.kernel(dtype)?,
            KSpec::InverseMultiquadric => {
                Kernel::from_formula(|x, y| Ok((x.sqdist(y) + 1.0).rsqrt()))
            }
        })
    }

    /// Whether every hyperparameter is valid for points of dimension `d`.
    fn valid(&self, d: usize) -> bool {
        let ok = |v: &Vec<f64>, per_dim: bool| {
            (v.len() == 1 || (per_dim && v.len() == d))
                && v.iter().all(|x| x.is_finite() && *x > 0.0)
        };
        match self {
            KSpec::Gaussian(l) | KSpec::Matern(_, l) => ok(l, true),
            KSpec::RationalQuadratic(l, a) => ok(l, true) && ok(a, false),
            KSpec::Periodic(l, p) => ok(l, true) && ok(p, true),
            KSpec::Linear | KSpec::InverseMultiquadric => true,
            KSpec::Scale(c, k) => ok(c, false) && k.valid(d),
            KSpec::Sum(a, b) | KSpec::Product(a, b) => a.valid(d) && b.valid(d),
        }
    }

    /// Whether every hyperparameter is within `[1e-3, 1e3]`: beyond, `sin(pi (x - y) / p)`
    /// and the like are so ill-conditioned that two correct evaluations disagree (a period of
    /// `1e-300` put 0.57 between the operator's matrix and this reference).
    fn moderate(&self) -> bool {
        let ok = |v: &Vec<f64>| v.iter().all(|x| (1e-3..=1e3).contains(x));
        match self {
            KSpec::Gaussian(l) | KSpec::Matern(_, l) => ok(l),
            KSpec::RationalQuadratic(a, b) | KSpec::Periodic(a, b) => ok(a) && ok(b),
            KSpec::Linear | KSpec::InverseMultiquadric => true,
            KSpec::Scale(c, k) => ok(c) && k.moderate(),
            KSpec::Sum(a, b) | KSpec::Product(a, b) => a.moderate() && b.moderate(),
        }
    }

    /// `k(x, y)` in `f64` from the kernels' definitions (hyperparameters valid).
    fn eval(&self, x: &[f64], y: &[f64]) -> f64 {
        let per = |v: &Vec<f64>, i: usize| if v.len() == 1 { v[0] } else { v[i] };
        let r2 = |l: &Vec<f64>| -> f64 {
            x.iter()
                .zip(y)
                .enumerate()
                .map(|(i, (a, b))| ((a - b) / per(l, i)).powi(2))
                .sum()
        };
        match self {
            KSpec::Gaussian(l) => (-r2(l) / 2.0).exp(),
            KSpec::Matern(nu, l) => {
                let r = r2(l).sqrt();
                match nu {
                    Nu::Half => (-r).exp(),
                    Nu::ThreeHalves => (1.0 + 3f64.sqrt() * r) * (-(3f64.sqrt()) * r).exp(),
                    Nu::FiveHalves => {
                        (1.0 + 5f64.sqrt() * r + 5.0 * r * r / 3.0) * (-(5f64.sqrt()) * r).exp()
                    }
                }
            }
            KSpec::RationalQuadratic(l, a) => (1.0 + r2(l) / (2.0 * a[0])).powf(-a[0]),
            KSpec::Periodic(l, p) => {
                let s: f64 = (0..x.len())
                    .map(|i| {
                        let s = (std::f64::consts::PI * (x[i] - y[i]) / per(p, i)).sin();
                        s * s / per(l, i).powi(2)
                    })
                    .sum();
                (-2.0 * s).exp()
            }
            KSpec::Linear => x.iter().zip(y).map(|(a, b)| a * b).sum(),
            KSpec::Scale(c, k) => c[0] * k.eval(x, y),
            KSpec::Sum(a, b) => a.eval(x, y) + b.eval(x, y),
            KSpec::Product(a, b) => a.eval(x, y) * b.eval(x, y),
            KSpec::InverseMultiquadric => {
                1.0 / (1.0 + x.iter().zip(y).map(|(a, b)| (a - b).powi(2)).sum::<f64>()).sqrt()
            }
        }
    }

    fn dense(&self, xs: &[Vec<f64>], ys: &[Vec<f64>]) -> Vec<Vec<f64>> {
        xs.iter()
            .map(|x| ys.iter().map(|y| self.eval(x, y)).collect())
            .collect()
    }
}

fn rows_of(t: &Tensor) -> Vec<Vec<f64>> {
    let t = t.to_dtype(DType::F64).unwrap();
    match t.rank() {
        1 => t
            .to_vec1::<f64>()
            .unwrap()
            .into_iter()
            .map(|v| vec![v])
            .collect(),
        _ => t.to_vec2::<f64>().unwrap(),
    }
}

/// Extreme and invalid values for the real-valued options.
const ODD_REALS: [f64; 9] = [
    0.0,
    -1.0,
    f64::NAN,
    f64::INFINITY,
    f64::NEG_INFINITY,
    1e300,
    1e-300,
    0.5,
    2.0,
];

/// A tolerance: mostly usual, sometimes extreme or invalid.
fn real_option(r: &mut Rng, usual: f64) -> f64 {
    if r.below(8) == 0 {
        ODD_REALS[r.below(ODD_REALS.len())]
    } else {
        usual
    }
}

fn count_option(r: &mut Rng, usual: usize, n: usize) -> usize {
    match r.below(12) {
        0 => 0,
        1 => 1,
        2 => n + 3,
        3 => usize::MAX,
        _ => usual,
    }
}

fn random_preconditioner(r: &mut Rng, n: usize) -> Preconditioner {
    match r.below(3) {
        0 => Preconditioner::None,
        1 => Preconditioner::PivotedCholesky(Rank::Fixed(count_option(r, 5, n))),
        _ => Preconditioner::PivotedCholesky(Rank::Auto {
            max: count_option(r, 100, n),
        }),
    }
}

/// Random points `(n, d)`, sometimes with a NaN or an infinity.
fn random_points(r: &mut Rng, n: usize, d: usize, special: bool) -> Vec<f64> {
    (0..n * d)
        .map(|_| {
            if special && r.below(6) == 0 {
                [f64::NAN, f64::INFINITY, 1e300, -0.0][r.below(4)]
            } else {
                r.uniform(0.0, 1.0)
            }
        })
        .collect()
}

/// One random solve: kernel, points, right-hand side, ridge and options.
fn solve_case(seed: u64, stats: &std::cell::RefCell<[usize; 3]>) -> Result<(), TestCaseError> {
    let mut r = Rng(seed | 1);
    let dtype = [
        DType::F64,
        DType::F64,
        DType::F64,
        DType::F64,
        DType::F32,
        DType::F16,
        DType::I64,
    ][r.below(7)];
    let n = [0, 1, 2, 5, 5, 20, 20, 50][r.below(8)];
    let d = 1 + r.below(3);
    let spec = random_kspec(&mut r, d, 2);
    let special = r.below(8) == 0;
    let xv = random_points(&mut r, n, d, special);
    let x = Tensor::from_vec(xv, (n, d), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    // Mostly one point set; sometimes a copy, other points or another count.
    let y = match r.below(16) {
        0 => x.copy().unwrap(),
        1 => Tensor::from_vec(random_points(&mut r, n, d, false), (n, d), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap(),
        2 => x.narrow(0, 0, n.saturating_sub(1)).unwrap(),
        _ => x.clone(),
    };
    let e = 1 + r.below(3);
    let b_special = r.below(10) == 0;
    let (b_rows, vector) = match r.below(20) {
        0 => (n + 1, false),
        1..=3 => (n, true),
        _ => (n, false),
    };
    let bv: Vec<f64> = (0..b_rows * e)
        .map(|_| {
            if b_special && r.below(4) == 0 {
                f64::NAN
            } else {
                r.uniform(-1.0, 1.0)
            }
        })
        .collect();
    let b_dtype = if r.below(15) == 0 { DType::F32 } else { dtype };
    let b = Tensor::from_vec(bv, (b_rows, e), &Device::Cpu)
        .unwrap()
        .to_dtype(b_dtype)
        .unwrap();
    let b = if vector {
        b.narrow(1, 0, 1).unwrap().squeeze(1).unwrap()
    } else {
        b
    };
    let b_nan = !all_finite(&b);
    let alpha_value = real_option(&mut r, 0.1);
    let alpha: Ridge = match r.below(12) {
        0 | 1 => Ridge::Tensor(
            Tensor::new(&[alpha_value], &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap(),
        ),
        2 => Ridge::Tensor(Tensor::new(&[alpha_value, 1.0], &Device::Cpu).unwrap()),
        _ => Ridge::Value(alpha_value),
    };
    let x0 = match r.below(10) {
        0 => Some(b.zeros_like().unwrap()),
        1 => Some((b.ones_like().unwrap() * f64::NAN).unwrap()),
        2 => Some(Tensor::zeros(n + 2, dtype, &Device::Cpu).unwrap()),
        _ => None,
    };
    let check_residual = r.below(2) == 0;
    let max_iters = count_option(&mut r, 1000, n);
    let opts = SolveOptions {
        tol: real_option(&mut r, 1e-8),
        // Any cap, usize::MAX included, with or without residual checks (see fuzz_corpus.rs
        // `unbounded_iterations_without_residual_checks_terminate`).
        max_iters,
        preconditioner: random_preconditioner(&mut r, n),
        x0,
        check_residual,
        progress: None,
    };
    let what = || {
        format!(
            "seed {seed}: {spec:?} {dtype:?} N {n} D {d} b {:?} {b_dtype:?} special {special}/{b_special} \
             alpha {alpha:?} {opts:?}",
            b.dims()
        )
    };
    if std::env::var("LK_FUZZ_DEBUG").is_ok() {
        eprintln!("solve case {}", what());
    }
    let result = no_panic(what, || {
        let k = KernelOperator::new(spec.kernel(dtype)?, &x, &y)?;
        k.solve(&b, alpha.clone(), &opts)
    })?;
    let (a, info) = match result {
        Ok(v) => v,
        Err(err) => {
            debug("solve", &err);
            stats.borrow_mut()[1] += 1;
            return Ok(());
        }
    };
    stats.borrow_mut()[0] += 1;
    // Inputs that must have been refused.
    let alpha_ok = match &alpha {
        Ridge::Value(v) => v.is_finite() && *v >= 0.0,
        Ridge::Tensor(t) => t.elem_count() == 1 && alpha_value.is_finite() && alpha_value >= 0.0,
    };
    check(
        spec.valid(d)
            && alpha_ok
            && opts.tol.is_finite()
            && opts.tol > 0.0
            && !b_nan
            && b_rows == n
            && b_dtype == dtype,
        || format!("{}: invalid input accepted", what()),
    )?;
    check(a.dims() == b.dims() && a.dtype() == b.dtype(), || {
        format!("{}: a is {:?} {:?}", what(), a.dims(), a.dtype())
    })?;
    check(
        info.converged.len() == e.min(if vector { 1 } else { e }),
        || format!("{}: {} columns reported", what(), info.converged.len()),
    )?;
    // The dense reference: converged columns have a small residual.
    if dtype != DType::F64 || special || y.dims() != x.dims() || !spec.moderate() {
        return Ok(());
    }
    let xs = rows_of(&x);
    let kd = spec.dense(&xs, &rows_of(&y));
    if kd.iter().flatten().any(|v| !v.is_finite()) {
        return Ok(());
    }
    let (a, b) = (rows_of(&a), rows_of(&b));
    let k_norm = kd.iter().flatten().map(|v| v * v).sum::<f64>().sqrt() + alpha_value;
    for c in 0..info.converged.len() {
        if !info.converged[c] {
            continue;
        }
        let col = |m: &Vec<Vec<f64>>| m.iter().map(|row| row[c]).collect::<Vec<f64>>();
        let (ac, bc) = (col(&a), col(&b));
        let res: f64 = (0..n)
            .map(|i| {
                let ka: f64 = (0..n).map(|j| kd[i][j] * ac[j]).sum::<f64>() + alpha_value * ac[i];
                (bc[i] - ka).powi(2)
            })
            .sum::<f64>()
            .sqrt();
        let (b_norm, a_norm) = (norm(&bc), norm(&ac));
        let allowed = 10.0 * opts.tol * b_norm + 1e-12 * k_norm * a_norm;
        check(res <= allowed, || {
            // How far the operator's own matrix is from the reference, to tell a wrong
            // matrix from a wrong solve.
            let k = KernelOperator::new(spec.kernel(dtype).unwrap(), &x, &y).unwrap();
            let kk = rows_of(&k.to_dense().unwrap());
            let diff = kk
                .iter()
                .flatten()
                .zip(kd.iter().flatten())
                .map(|(a, b)| (a - b).abs());
            format!(
                "{}: column {c} converged with the dense residual {res:e}, allowed {allowed:e} \
                 (|K - dense K|_max = {:e})",
                what(),
                diff.fold(0.0, f64::max)
            )
        })?;
    }
    stats.borrow_mut()[2] += 1;
    Ok(())
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

#[test]
fn fuzz_kernel_operator_solve() {
    let stats = std::cell::RefCell::new([0usize; 3]);
    fuzz("solve", cases(1500), |seed| solve_case(seed, &stats));
    let [ok, err, checked] = *stats.borrow();
    eprintln!("fuzz: solve cases: {ok} Ok ({checked} checked against a dense residual), {err} Err");
}

/// The Cholesky factor of the symmetric `a` (row-major `n x n`), or `None` if it is not
/// numerically positive definite.
fn cholesky(a: &[Vec<f64>]) -> Option<Vec<Vec<f64>>> {
    let n = a.len();
    let mut l = vec![vec![0.0; n]; n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = a[i][j] - (0..j).map(|k| l[i][k] * l[j][k]).sum::<f64>();
            if i == j {
                if s.is_nan() || s <= 0.0 {
                    return None;
                }
                l[i][i] = s.sqrt();
            } else {
                l[i][j] = s / l[j][j];
            }
        }
    }
    Some(l)
}

/// `A^-1 b` from the Cholesky factor of `A`.
fn chol_solve(l: &[Vec<f64>], b: &[f64]) -> Vec<f64> {
    let n = l.len();
    let mut z = b.to_vec();
    for i in 0..n {
        z[i] = (z[i] - (0..i).map(|k| l[i][k] * z[k]).sum::<f64>()) / l[i][i];
    }
    for i in (0..n).rev() {
        z[i] = (z[i] - (i + 1..n).map(|k| l[k][i] * z[k]).sum::<f64>()) / l[i][i];
    }
    z
}

/// One random GP: data, kernel, settings; `nll`, `predict`, a short `fit`, `predict` again.
fn gp_case(seed: u64, stats: &std::cell::RefCell<[usize; 4]>) -> Result<(), TestCaseError> {
    let mut r = Rng(seed | 1);
    let wild = r.below(2) == 0;
    let dtype = if wild && r.below(4) == 0 {
        DType::F32
    } else {
        DType::F64
    };
    let n = [1, 2, 5, 12, 30][r.below(5)];
    let d = 1 + r.below(2);
    let special_x = wild && r.below(4) == 0;
    let xv = random_points(&mut r, n, d, special_x);
    let yv: Vec<f64> = (0..n)
        .map(|i| (3.0 * xv[i * d]).sin() + 0.1 * r.uniform(-1.0, 1.0))
        .collect();
    let x = Tensor::from_vec(xv, (n, d), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    let y = match r.below(if wild { 8 } else { 1 }) {
        1 => Tensor::from_vec(vec![f64::NAN; n], n, &Device::Cpu).unwrap(),
        2 => Tensor::from_vec(vec![0.5; n + 1], n + 1, &Device::Cpu).unwrap(),
        _ => Tensor::from_vec(yv, (n, 1), &Device::Cpu).unwrap(),
    }
    .to_dtype(dtype)
    .unwrap();
    let pick = |r: &mut Rng, usual: f64| if wild { real_option(r, usual) } else { usual };
    let count = |r: &mut Rng, usual: usize| {
        if wild {
            count_option(r, usual, n)
        } else {
            usual
        }
    };
    let ls: Vec<f64> = (0..if r.below(2) == 0 { 1 } else { d })
        .map(|_| r.uniform(0.1, 1.0))
        .collect();
    let ls = if wild && r.below(6) == 0 {
        vec![pick(&mut r, 0.5); d + 1]
    } else {
        ls
    };
    let family = r.below(4);
    let noise_init = [1e-2, 1e-4, 1e-12, 10.0][r.below(4)];
    let settings = GpSettings {
        nll_method: [NllMethod::Auto, NllMethod::Exact, NllMethod::Stochastic][r.below(3)],
        train_tol: pick(&mut r, 1e-3),
        predict_tol: pick(&mut r, 1e-8),
        probes: count(&mut r, 8),
        lanczos_iters: count(&mut r, 50),
        logdet_estimator: [
            LogdetEstimator::Hutchinson,
            LogdetEstimator::DiagonalCorrected,
            LogdetEstimator::BlockCorrected,
        ][r.below(3)],
        quadrature_tol: pick(&mut r, 1e-2),
        preconditioner: if wild {
            random_preconditioner(&mut r, n)
        } else {
            Preconditioner::default()
        },
        max_iters: count(&mut r, 200),
        seed: r.next_u64(),
        noise_floor: pick(&mut r, 1e-6),
        predict_chunk: count(&mut r, 64),
        variances: if r.below(2) == 0 {
            Variances::Exact
        } else {
            Variances::Love {
                tol: pick(&mut r, 1e-5),
                max_rank: count(&mut r, 1000),
            }
        },
        learn_mean: r.below(2) == 0,
    };
    let fit_opts = FitOptions {
        optimizer: if r.below(2) == 0 {
            Optimizer::AdamW
        } else {
            // usize::MAX included (see fuzz_corpus.rs `huge_lbfgs_history_is_an_error`).
            Optimizer::Lbfgs {
                history: count_option(&mut r, 10, n),
            }
        },
        steps: 1 + r.below(2),
        lr: pick(&mut r, 0.05),
        tol: pick(&mut r, 1e-4),
        // usize::MAX included (see fuzz_corpus.rs `huge_patience_is_not_an_overflow`).
        patience: count_option(&mut r, 5, n),
        progress: false,
    };
    let x_new = match r.below(if wild { 6 } else { 2 }) {
        0 => Tensor::from_vec(random_points(&mut r, 7, d, false), (7, d), &Device::Cpu).unwrap(),
        1 => Tensor::from_vec(random_points(&mut r, 3, d, false), (3, d), &Device::Cpu).unwrap(),
        2 => Tensor::zeros((0, d), DType::F64, &Device::Cpu).unwrap(),
        3 => Tensor::zeros((2, d + 1), DType::F64, &Device::Cpu).unwrap(),
        4 => Tensor::from_vec(random_points(&mut r, 4, d, true), (4, d), &Device::Cpu).unwrap(),
        _ => Tensor::from_vec(random_points(&mut r, 5, d, false), (5, d), &Device::Cpu).unwrap(),
    }
    .to_dtype(dtype)
    .unwrap();
    let what = || {
        format!(
            "seed {seed}: {dtype:?} N {n} D {d} family {family} lengthscale {ls:?} noise \
             {noise_init} x_new {:?} {settings:?} {fit_opts:?}",
            x_new.dims()
        )
    };
    let made = no_panic(
        what,
        || -> candle_core::Result<(ExactGp, Positive, Positive, Positive)> {
            let l = Positive::new("lengthscale", &ls, dtype, &Device::Cpu)?;
            let s = Positive::new("outputscale", &[1.5], dtype, &Device::Cpu)?;
            let noise = Positive::new("noise", &[noise_init], dtype, &Device::Cpu)?;
            let (lc, sc) = (l.clone(), s.clone());
            let kernel = move || {
                let l = lc.value()?;
                let k = match family {
                    0 => Kernel::gaussian(&l),
                    1 => Kernel::matern52(&l),
                    2 => Kernel::rational_quadratic(
                        &l,
                        &Tensor::new(&[2.0], &Device::Cpu)?.to_dtype(l.dtype())?,
                    ),
                    _ => Kernel::matern12(&l),
                };
                Ok(k.scale(&sc.value()?))
            };
            let gp = ExactGp::new(&x, &y, vec![l.clone(), s.clone()], noise.clone(), kernel)?
                .with_settings(settings.clone());
            Ok((gp, l, s, noise))
        },
    )?;
    let (mut gp, l, s, noise) = match made {
        Ok(v) => v,
        Err(err) => {
            debug("ExactGp::new", &err);
            stats.borrow_mut()[1] += 1;
            return Ok(());
        }
    };
    let nll = no_panic(what, || gp.nll())?;
    let method = no_panic(what, || gp.nll_method())?;
    let pred = no_panic(what, || gp.predict(&x_new))?;
    for (name, res) in [
        ("nll", nll.as_ref().err()),
        ("predict", pred.as_ref().err()),
    ] {
        if let Some(err) = res {
            debug(name, err);
        }
    }
    stats.borrow_mut()[if nll.is_ok() { 0 } else { 1 }] += 1;
    // The dense reference of the exact path (f64, sane settings).
    let exact = matches!(method, Ok(NllMethod::Exact));
    let floor = settings.noise_floor;
    if dtype == DType::F64 && exact && !wild && floor.is_finite() && floor >= 0.0 {
        let lv = l.values().unwrap();
        let sv = s.values().unwrap()[0];
        let s2 = noise.values().unwrap()[0] + floor;
        let spec = KSpec::Scale(
            vec![sv],
            Box::new(match family {
                0 => KSpec::Gaussian(lv),
                1 => KSpec::Matern(Nu::FiveHalves, lv),
                2 => KSpec::RationalQuadratic(lv, vec![2.0]),
                _ => KSpec::Matern(Nu::Half, lv),
            }),
        );
        let xs = rows_of(&x);
        let mut a = spec.dense(&xs, &xs);
        for (i, row) in a.iter_mut().enumerate() {
            row[i] += s2;
        }
        let yv = flat(&y);
        let mean = yv.iter().sum::<f64>() / n as f64;
        let res: Vec<f64> = yv.iter().map(|v| v - mean).collect();
        let cond = (sv * n as f64 + s2) / s2;
        if let (Some(lf), Ok((value, _))) = (cholesky(&a), &nll) {
            let alpha = chol_solve(&lf, &res);
            let fit: f64 = res.iter().zip(&alpha).map(|(r, a)| r * a).sum();
            let logdet: f64 = 2.0 * (0..n).map(|i| lf[i][i].ln()).sum::<f64>();
            let want =
                0.5 * fit + 0.5 * logdet + 0.5 * n as f64 * (2.0 * std::f64::consts::PI).ln();
            let got = value
                .to_dtype(DType::F64)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap()[0];
            let tol = 1e-9 * (fit.abs() + logdet.abs() + n as f64) * (1.0 + 1e-6 * cond);
            check((got - want).abs() <= tol, || {
                format!(
                    "{}: exact NLL {got}, dense {want} (tolerance {tol:e})",
                    what()
                )
            })?;
            if let Ok(p) = &pred {
                let xn = rows_of(&x_new);
                let kx = spec.dense(&xn, &xs);
                let want_mean: Vec<f64> = kx
                    .iter()
                    .map(|k| mean + k.iter().zip(&alpha).map(|(k, a)| k * a).sum::<f64>())
                    .collect();
                let scale = 1.0 + alpha.iter().map(|a| a.abs()).sum::<f64>() * sv;
                if let Some(msg) = close(
                    &flat(&p.mean),
                    &want_mean,
                    0.0,
                    1e-9 * scale * (1.0 + 1e-6 * cond),
                ) {
                    return Err(TestCaseError::fail(format!(
                        "{}: predicted mean: {msg}",
                        what()
                    )));
                }
                if settings.variances == Variances::Exact {
                    let want_var: Vec<f64> = kx
                        .iter()
                        .enumerate()
                        .map(|(i, k)| {
                            let v = chol_solve(&lf, k);
                            let prior = spec.eval(&xn[i], &xn[i]);
                            (prior - k.iter().zip(&v).map(|(k, v)| k * v).sum::<f64>()).max(0.0)
                        })
                        .collect();
                    if let Some(msg) = close(
                        &flat(&p.variance),
                        &want_var,
                        0.0,
                        1e-9 * sv * (1.0 + 1e-6 * cond),
                    ) {
                        return Err(TestCaseError::fail(format!(
                            "{}: predicted variance: {msg}",
                            what()
                        )));
                    }
                }
                stats.borrow_mut()[2] += 1;
            }
        }
    }
    // Sane inputs give finite predictions with nonnegative variances.
    if let (Ok(p), false) = (&pred, wild) {
        let (mu, var) = (flat(&p.mean), flat(&p.variance));
        check(
            mu.iter().all(|v| v.is_finite()) && var.iter().all(|v| v.is_finite() && *v >= 0.0),
            || format!("{}: prediction mean {mu:?} variance {var:?}", what()),
        )?;
    }
    // A short fit, then a prediction with what it learned.
    let fitted = no_panic(what, || gp.fit(&fit_opts))?;
    match &fitted {
        Ok(report) => {
            stats.borrow_mut()[3] += 1;
            check(
                !report.trajectory.is_empty() && report.trajectory.len() <= fit_opts.steps,
                || format!("{}: {} steps reported", what(), report.trajectory.len()),
            )?;
        }
        Err(err) => debug("fit", err),
    }
    let _ = no_panic(what, || gp.predict(&x_new))?;
    Ok(())
}

#[test]
fn fuzz_exact_gp() {
    let stats = std::cell::RefCell::new([0usize; 4]);
    fuzz("GP", cases(150), |seed| gp_case(seed, &stats));
    let [ok, err, checked, fits] = *stats.borrow();
    eprintln!(
        "fuzz: GP cases: {ok} with an NLL ({checked} checked against the dense exact NLL and \
         prediction), {err} Err at new or nll, {fits} fits Ok"
    );
}

/// One random kernel operator: `matmul`, `t().matmul`, `diag`, `rows` and `to_dense` against
/// the kernel's definition, with random shapes (non-square, mismatched `b`) and indices (some
/// out of range).
fn operator_case(seed: u64, stats: &std::cell::RefCell<[usize; 3]>) -> Result<(), TestCaseError> {
    let mut r = Rng(seed | 1);
    let dtype = [
        DType::F64,
        DType::F64,
        DType::F64,
        DType::F32,
        DType::BF16,
        DType::U8,
    ][r.below(6)];
    let (m, n) = ([0, 1, 3, 17, 40][r.below(5)], [1, 2, 9, 33][r.below(4)]);
    let d = 1 + r.below(3);
    let spec = random_kspec(&mut r, d, 2);
    let special = r.below(8) == 0;
    let x = Tensor::from_vec(random_points(&mut r, m, d, special), (m, d), &Device::Cpu).unwrap();
    let y = Tensor::from_vec(random_points(&mut r, n, d, false), (n, d), &Device::Cpu).unwrap();
    let (x, y) = (x.to_dtype(dtype).unwrap(), y.to_dtype(dtype).unwrap());
    // Non-contiguous points sometimes: the transpose of a contiguous transpose.
    let x = if r.below(4) == 0 {
        x.t().unwrap().contiguous().unwrap().t().unwrap()
    } else {
        x
    };
    let (b_rows, e) = (if r.below(10) == 0 { n + 1 } else { n }, 1 + r.below(3));
    let b = Tensor::from_vec(
        (0..b_rows * e)
            .map(|_| r.uniform(-1.0, 1.0))
            .collect::<Vec<f64>>(),
        (b_rows, e),
        &Device::Cpu,
    )
    .unwrap()
    .to_dtype(dtype)
    .unwrap();
    let idx: Vec<usize> = (0..r.below(4)).map(|_| r.below(m + 2)).collect();
    let what = || {
        format!(
            "seed {seed}: {spec:?} {dtype:?} M {m} N {n} D {d} b {:?} rows {idx:?}",
            b.dims()
        )
    };
    let k = match no_panic(what, || KernelOperator::new(spec.kernel(dtype)?, &x, &y))? {
        Ok(k) => k,
        Err(err) => {
            debug("KernelOperator::new", &err);
            stats.borrow_mut()[1] += 1;
            return Ok(());
        }
    };
    let kb = no_panic(what, || k.matmul(&b))?;
    let ktc = no_panic(what, || {
        k.t().matmul(&Tensor::ones((m, 1), dtype, &Device::Cpu)?)
    })?;
    let diag = no_panic(what, || k.diag())?;
    let rows = no_panic(what, || k.rows(&idx))?;
    let dense = no_panic(what, || k.to_dense())?;
    check(rows.is_ok() || idx.iter().any(|&i| i >= m), || {
        format!("{}: rows failed: {rows:?}", what())
    })?;
    check(rows.is_err() || idx.iter().all(|&i| i < m), || {
        format!("{}: an index out of range was accepted", what())
    })?;
    stats.borrow_mut()[0] += 1;
    if dtype != DType::F64 || special || !spec.valid(d) || !spec.moderate() {
        return Ok(());
    }
    let (xs, ys) = (rows_of(&x), rows_of(&y));
    let kd = spec.dense(&xs, &ys);
    let scale = 1.0 + kd.iter().flatten().map(|v| v.abs()).fold(0.0, f64::max);
    let fail =
        |what_: &str, msg: String| TestCaseError::fail(format!("{}: {what_}: {msg}", what()));
    if let Ok(dense) = &dense
        && let Some(msg) = close(&flat(dense), &kd.concat(), 1e-12, 1e-12 * scale)
    {
        return Err(fail("to_dense", msg));
    }
    if let (Ok(kb), true) = (&kb, b_rows == n) {
        let bv = rows_of(&b);
        let want: Vec<f64> = kd
            .iter()
            .flat_map(|row| {
                (0..e)
                    .map(|c| row.iter().zip(&bv).map(|(k, b)| k * b[c]).sum::<f64>())
                    .collect::<Vec<_>>()
            })
            .collect();
        if let Some(msg) = close(&flat(kb), &want, 1e-10, 1e-10 * scale * n as f64) {
            return Err(fail("matmul", msg));
        }
    }
    if let Ok(kt) = &ktc {
        let want: Vec<f64> = (0..n).map(|j| (0..m).map(|i| kd[i][j]).sum()).collect();
        if let Some(msg) = close(&flat(kt), &want, 1e-10, 1e-10 * scale * m as f64) {
            return Err(fail("t().matmul", msg));
        }
    }
    if let Ok(dg) = &diag {
        let want: Vec<f64> = (0..m.min(n)).map(|i| kd[i][i]).collect();
        if let Some(msg) = close(&flat(dg), &want, 1e-12, 1e-12 * scale) {
            return Err(fail("diag", msg));
        }
    }
    if let Ok(rw) = &rows {
        let want: Vec<f64> = idx.iter().flat_map(|&i| kd[i].clone()).collect();
        if let Some(msg) = close(&flat(rw), &want, 1e-12, 1e-12 * scale) {
            return Err(fail("rows", msg));
        }
    }
    stats.borrow_mut()[2] += 1;
    Ok(())
}

#[test]
fn fuzz_kernel_operator_products() {
    let stats = std::cell::RefCell::new([0usize; 3]);
    fuzz("operator", cases(1000), |seed| operator_case(seed, &stats));
    let [ok, err, checked] = *stats.borrow();
    eprintln!(
        "fuzz: operator cases: {ok} built ({checked} checked against the dense kernel), {err} Err"
    );
}
