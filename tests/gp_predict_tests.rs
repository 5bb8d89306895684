//! Predictions of `ExactGp` (mean only, LOVE and exact variances, joint samples) against a
//! dense `f64` reference computed here: the kernel matrix from `KernelOperator::to_dense` of an
//! `f64` operator built from the model's numbers, and a Cholesky factorisation written here.

#![allow(clippy::needless_range_loop)]

mod common;

use candle_core::{DType, Device, Tensor};
use common::Rng;
use lazy_kernels::gp::{ExactGp, GpSettings, NllMethod, Positive, Variances};
use lazy_kernels::{Kernel, KernelOperator};

/// Lower Cholesky factor (row-major) of `a + shift I`.
fn cholesky(a: &[f64], n: usize, shift: f64) -> Vec<f64> {
    let mut l = vec![0.0; n * n];
    for j in 0..n {
        for k in 0..=j {
            let mut s = a[j * n + k] + if j == k { shift } else { 0.0 };
            for p in 0..k {
                s -= l[j * n + p] * l[k * n + p];
            }
            if j == k {
                assert!(s > 0.0, "reference: not positive definite");
                l[j * n + j] = s.sqrt();
            } else {
                l[j * n + k] = s / l[k * n + k];
            }
        }
    }
    l
}

fn chol_solve(l: &[f64], n: usize, b: &[f64]) -> Vec<f64> {
    let mut x = b.to_vec();
    for i in 0..n {
        for p in 0..i {
            x[i] -= l[i * n + p] * x[p];
        }
        x[i] /= l[i * n + i];
    }
    for i in (0..n).rev() {
        for p in i + 1..n {
            x[i] -= l[p * n + i] * x[p];
        }
        x[i] /= l[i * n + i];
    }
    x
}

fn vec1(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

#[derive(Clone, Copy)]
enum Shape {
    Gauss,
    Matern,
}

fn kernel(shape: Shape, l: &Tensor, s: &Tensor) -> Kernel {
    match shape {
        Shape::Gauss => Kernel::gaussian(l).scale(s),
        Shape::Matern => Kernel::matern52(l).scale(s),
    }
}

struct Case {
    gp: ExactGp,
    x: Tensor,
    xt: Tensor,
    shape: Shape,
}

/// `n` training points in `[0, 1]^d`, `m` test points in `[-0.2, 1.2]^d` (the first ones on
/// training points, where the variance is smallest), in `dtype`.
fn case(shape: Shape, d: usize, n: usize, m: usize, ls: f64, noise: f64, dtype: DType) -> Case {
    let dev = Device::Cpu;
    let mut rng = Rng(11 + d as u64);
    let x = rng.tensor(&[n, d], 0.0, 1.0).to_dtype(dtype).unwrap();
    let xv = x.to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap();
    let y: Vec<f64> = xv
        .iter()
        .map(|p| (6.0 * p[0]).sin() + p.iter().sum::<f64>() + 0.1 * rng.uniform(-1.0, 1.0))
        .collect();
    let y = Tensor::new(y.as_slice(), &dev)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    let far = rng.tensor(&[m - 10, d], -0.2, 1.2).to_dtype(dtype).unwrap();
    let xt = Tensor::cat(&[&x.narrow(0, 0, 10).unwrap(), &far], 0).unwrap();
    let l = Positive::new("lengthscale", &[ls], dtype, &dev).unwrap();
    let s = Positive::new("outputscale", &[1.3], dtype, &dev).unwrap();
    let nz = Positive::new("noise", &[noise], dtype, &dev).unwrap();
    let (lc, sc) = (l.clone(), s.clone());
    let gp = ExactGp::new(&x, &y, vec![l, s], nz, move || {
        Ok(kernel(shape, &lc.value()?, &sc.value()?))
    })
    .unwrap()
    // LOVE and the CG solves are the stochastic path's; `Auto` would take the exact one at
    // these sizes (checked separately in `check`).
    .with_settings(GpSettings {
        nll_method: NllMethod::Stochastic,
        ..GpSettings::default()
    });
    Case { gp, x, xt, shape }
}

/// The dense posterior mean, covariance at the test points, in `f64`, from the model's
/// current numbers.
fn dense_posterior(c: &Case) -> (Vec<f64>, Vec<Vec<f64>>) {
    let gp = &c.gp;
    let f64v = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
    let (l, s) = (
        f64v(&gp.hypers()[0].value().unwrap()),
        f64v(&gp.hypers()[1].value().unwrap()),
    );
    let k = kernel(c.shape, &l, &s);
    let (x, xt) = (f64v(&c.x), f64v(&c.xt));
    let (n, m) = (x.dim(0).unwrap(), xt.dim(0).unwrap());
    let kd = vec1(
        &KernelOperator::new(k.clone(), &x, &x)
            .unwrap()
            .to_dense()
            .unwrap(),
    );
    let noise = vec1(&gp.noise().value().unwrap())[0] + gp.settings.noise_floor;
    let ch = cholesky(&kd, n, noise);
    let mean = vec1(gp.mean().as_tensor())[0];
    let r: Vec<f64> = vec1(gp.data().1).iter().map(|v| v - mean).collect();
    let a = chol_solve(&ch, n, &r);
    let cross = KernelOperator::new(k.clone(), &xt, &x)
        .unwrap()
        .to_dense()
        .unwrap()
        .to_vec2::<f64>()
        .unwrap();
    let prior = KernelOperator::new(k, &xt, &xt)
        .unwrap()
        .to_dense()
        .unwrap()
        .to_vec2::<f64>()
        .unwrap();
    let mu: Vec<f64> = cross
        .iter()
        .map(|k| mean + k.iter().zip(&a).map(|(u, v)| u * v).sum::<f64>())
        .collect();
    let v: Vec<Vec<f64>> = cross.iter().map(|k| chol_solve(&ch, n, k)).collect();
    let mut cov = vec![vec![0.0; m]; m];
    for i in 0..m {
        for j in 0..m {
            cov[i][j] = prior[i][j] - cross[i].iter().zip(&v[j]).map(|(u, w)| u * w).sum::<f64>();
        }
    }
    (mu, cov)
}

fn max_rel(got: &[f64], want: &[f64]) -> f64 {
    got.iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs() / w.abs())
        .fold(0.0, f64::max)
}

/// Mean-only, LOVE and exact predictions against the dense posterior.
fn check(shape: Shape, d: usize, ls: f64, noise: f64) {
    let mut c = case(shape, d, 300, 80, ls, noise, DType::F64);
    // A mean other than the initial one.
    c.gp.mean()
        .set(&Tensor::new(&[0.4f64], &Device::Cpu).unwrap())
        .unwrap();
    let (mu, cov) = dense_posterior(&c);
    let var: Vec<f64> = (0..mu.len()).map(|i| cov[i][i]).collect();
    let scale = mu.iter().fold(0f64, |a, v| a.max(v.abs()));
    let mean_err = |got: &[f64]| {
        got.iter()
            .zip(&mu)
            .map(|(g, w)| (g - w).abs() / scale)
            .fold(0.0, f64::max)
    };
    let only = vec1(&c.gp.predict_mean(&c.xt).unwrap());
    assert!(mean_err(&only) < 1e-6, "mean only: {:.2e}", mean_err(&only));

    let love = c.gp.predict(&c.xt).unwrap();
    let report = love.love.clone().expect("LOVE is the default");
    let (lm, lv) = (vec1(&love.mean), vec1(&love.variance));
    let love_err = max_rel(&lv, &var);
    eprintln!(
        "LOVE: rank {}, change {:.1e}: variance error {love_err:.2e} (variances {:.1e}..{:.1e})",
        report.rank,
        report.change,
        var.iter().cloned().fold(f64::MAX, f64::min),
        var.iter().cloned().fold(0.0, f64::max)
    );
    assert!(report.converged);
    assert!(mean_err(&lm) < 1e-6);
    assert!(love_err < 1e-3, "LOVE variance error {love_err:.2e}");

    c.gp.settings.variances = Variances::Exact;
    let exact = c.gp.predict(&c.xt).unwrap();
    assert!(exact.love.is_none());
    let ex_err = max_rel(&vec1(&exact.variance), &var);
    assert!(mean_err(&vec1(&exact.mean)) < 1e-6);
    assert!(ex_err < 1e-5, "exact variance error {ex_err:.2e}");

    // On the exact path the mean and exact variances come from the dense factor, to rounding;
    // LOVE is built as on the stochastic path when asked for.
    c.gp.settings.nll_method = NllMethod::Exact;
    c.gp.settings.variances = Variances::Exact;
    let dense = c.gp.predict(&c.xt).unwrap();
    assert!(dense.love.is_none());
    let (dm, dv) = (vec1(&dense.mean), vec1(&dense.variance));
    let dv_err = max_rel(&dv, &var);
    eprintln!(
        "exact path: mean {:.2e} variance {dv_err:.2e}",
        mean_err(&dm)
    );
    assert!(mean_err(&dm) < 1e-10 && dv_err < 1e-8, "{dv_err:.2e}");
    assert!(mean_err(&vec1(&c.gp.predict_mean(&c.xt).unwrap())) < 1e-10);
    c.gp.settings.variances = Variances::default();
    let love = c.gp.predict(&c.xt).unwrap();
    assert_eq!(love.love.clone(), Some(c.gp.love_report().unwrap()));
    assert!(mean_err(&vec1(&love.mean)) < 1e-10);
    assert!(max_rel(&vec1(&love.variance), &var) < 1e-3);
}

#[test]
fn predictions_match_dense_gaussian_1d() {
    check(Shape::Gauss, 1, 0.15, 1e-3);
}

#[test]
fn predictions_match_dense_matern_2d() {
    check(Shape::Matern, 2, 0.3, 1e-2);
}

#[test]
fn the_cache_follows_the_hyperparameters() {
    let c = case(Shape::Gauss, 1, 200, 40, 0.2, 1e-2, DType::F64);
    let first = vec1(&c.gp.predict(&c.xt).unwrap().variance);
    c.gp.hypers()[0].set(&[0.1]).unwrap();
    c.gp.noise().set(&[3e-3]).unwrap();
    let p = c.gp.predict(&c.xt).unwrap();
    let (mu, cov) = dense_posterior(&c);
    let var: Vec<f64> = (0..mu.len()).map(|i| cov[i][i]).collect();
    assert!(max_rel(&vec1(&p.variance), &var) < 1e-3);
    assert!(max_rel(&vec1(&p.mean), &mu) < 1e-6);
    assert!(
        max_rel(&first, &var) > 1e-2,
        "the new values change the variances"
    );
    // The LOVE report of the current state is the one the prediction used.
    assert_eq!(c.gp.love_report().unwrap(), p.love.unwrap());
}

/// f32 models: variances within 1e-3 relative of the f64 model of the same numbers, where the
/// variance is far below the prior (test points on training points, small noise).
#[test]
fn f32_variances_match_f64_where_small() {
    for method in [Variances::default(), Variances::Exact] {
        let mut c32 = case(Shape::Gauss, 1, 400, 60, 0.1, 1e-4, DType::F32);
        c32.gp.settings.variances = method;
        let c = Case {
            gp: {
                let dev = Device::Cpu;
                let x = c32.x.to_dtype(DType::F64).unwrap();
                let y = c32.gp.data().1.to_dtype(DType::F64).unwrap();
                let l = Positive::new("lengthscale", &[1.0], DType::F64, &dev).unwrap();
                let s = Positive::new("outputscale", &[1.0], DType::F64, &dev).unwrap();
                let nz = Positive::new("noise", &[1.0], DType::F64, &dev).unwrap();
                // The f32 model's raw values, exactly.
                for (p, q) in [(&l, &c32.gp.hypers()[0]), (&s, &c32.gp.hypers()[1])] {
                    p.var()
                        .set(&q.var().as_tensor().to_dtype(DType::F64).unwrap())
                        .unwrap();
                }
                nz.var()
                    .set(
                        &c32.gp
                            .noise()
                            .var()
                            .as_tensor()
                            .to_dtype(DType::F64)
                            .unwrap(),
                    )
                    .unwrap();
                let (lc, sc) = (l.clone(), s.clone());
                let gp = ExactGp::new(&x, &y, vec![l, s], nz, move || {
                    Ok(kernel(Shape::Gauss, &lc.value()?, &sc.value()?))
                })
                .unwrap();
                gp.mean()
                    .set(&c32.gp.mean().as_tensor().to_dtype(DType::F64).unwrap())
                    .unwrap();
                gp
            },
            x: c32.x.to_dtype(DType::F64).unwrap(),
            xt: c32.xt.to_dtype(DType::F64).unwrap(),
            shape: Shape::Gauss,
        };
        let (_, cov) = dense_posterior(&c);
        let var: Vec<f64> = (0..cov.len()).map(|i| cov[i][i]).collect();
        let p32 = c32.gp.predict(&c32.xt).unwrap();
        assert_eq!(p32.variance.dtype(), DType::F32);
        let v32 = vec1(&p32.variance);
        // The first 10 test points are training points: variance ~ the noise, 1e-4 of the prior.
        let small = var[..10].iter().cloned().fold(0.0, f64::max);
        assert!(small < 1e-3 * 1.3, "small variances: {small:.2e}");
        let err = max_rel(&v32, &var);
        eprintln!("{method:?}: f32 vs f64 variance, max relative error {err:.2e}");
        assert!(err < 1e-3, "{method:?}: {err:.2e}");
    }
}

/// Joint samples: their mean and covariance over many draws against the dense posterior, within
/// a few standard errors; the same seed gives the same samples.
#[test]
fn posterior_samples_have_the_posterior_moments() {
    for method in [Variances::default(), Variances::Exact] {
        let mut c = case(Shape::Matern, 1, 150, 12, 0.2, 1e-2, DType::F64);
        c.gp.settings.variances = method;
        let (mu, cov) = dense_posterior(&c);
        let count = 20_000;
        let s = c.gp.posterior_samples(&c.xt, count, 5).unwrap();
        assert_eq!(s.dims(), &[count, 12]);
        let sv = s.to_vec2::<f64>().unwrap();
        let m = 12;
        for i in 0..m {
            let avg = sv.iter().map(|r| r[i]).sum::<f64>() / count as f64;
            let se = (cov[i][i] / count as f64).sqrt();
            assert!(
                (avg - mu[i]).abs() < 5.0 * se + 1e-9,
                "{method:?}: mean {i}"
            );
            for j in 0..m {
                let c_ij = sv
                    .iter()
                    .map(|r| (r[i] - mu[i]) * (r[j] - mu[j]))
                    .sum::<f64>()
                    / count as f64;
                // Standard error of a sample covariance: sqrt((C_ii C_jj + C_ij^2) / n).
                let se = ((cov[i][i] * cov[j][j] + cov[i][j].powi(2)) / count as f64).sqrt();
                assert!(
                    (c_ij - cov[i][j]).abs() < 5.0 * se + 1e-9,
                    "{method:?}: covariance ({i}, {j}): {c_ij:.3e} vs {:.3e}",
                    cov[i][j]
                );
            }
        }
        let again = c.gp.posterior_samples(&c.xt, count, 5).unwrap();
        assert_eq!(vec1(&again), vec1(&s));
        let other = c.gp.posterior_samples(&c.xt, 3, 6).unwrap();
        assert_ne!(vec1(&other), vec1(&s.narrow(0, 0, 3).unwrap()));
    }
}

fn err<T>(r: candle_core::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_inputs_are_errors() {
    let mut c = case(Shape::Gauss, 2, 50, 20, 0.3, 1e-2, DType::F64);
    let dev = Device::Cpu;
    let wrong_d = Tensor::zeros((3, 3), DType::F64, &dev).unwrap();
    assert!(err(c.gp.predict(&wrong_d)).contains("(M, 2)"));
    assert!(err(c.gp.predict_mean(&wrong_d)).contains("(M, 2)"));
    let wrong_t = Tensor::zeros((3, 2), DType::F32, &dev).unwrap();
    assert!(err(c.gp.predict(&wrong_t)).contains("F32"));
    let nan = Tensor::new(&[[0.5f64, f64::NAN]], &dev).unwrap();
    assert!(err(c.gp.predict_mean(&nan)).contains("NaN"));
    assert!(err(c.gp.posterior_samples(&nan, 2, 0)).contains("NaN"));
    let many = Tensor::zeros((5000, 2), DType::F64, &dev).unwrap();
    assert!(err(c.gp.posterior_samples(&many, 1, 0)).contains("at most"));
    c.gp.settings.variances = Variances::Love {
        tol: 0.0,
        max_rank: 10,
    };
    assert!(err(c.gp.predict(&c.xt)).contains("tol"));
    c.gp.settings.variances = Variances::Love {
        tol: 1e-3,
        max_rank: 0,
    };
    assert!(err(c.gp.predict(&c.xt)).contains("max_rank"));
    // Empty test sets are fine.
    c.gp.settings.variances = Variances::default();
    let none = Tensor::zeros((0, 2), DType::F64, &dev).unwrap();
    assert_eq!(c.gp.predict(&none).unwrap().mean.dims(), &[0]);
    assert_eq!(c.gp.predict_mean(&none).unwrap().dims(), &[0]);
    assert_eq!(c.gp.posterior_samples(&none, 4, 0).unwrap().dims(), &[4, 0]);
    // A rank cap too small to converge is reported, not hidden.
    c.gp.settings.variances = Variances::Love {
        tol: 1e-12,
        max_rank: 2,
    };
    let p = c.gp.predict(&c.xt).unwrap();
    let r = p.love.unwrap();
    assert_eq!(r.rank, 2);
    assert!(!r.converged);
}

#[test]
fn exact_gp_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<ExactGp>();
}
