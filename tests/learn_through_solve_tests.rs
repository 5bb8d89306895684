//! Learning a kernel's lengthscale by gradient descent through `KernelOperator::solve`.
//!
//! Kernel ridge regression: `a(l) = (K_xx(l) + alpha I)^-1 y` on training points, and the
//! validation loss `L(l) = mean_v ((K_vx(l) a(l))_v - y_v)^2` on held-out points. AdamW on
//! `log l` (gradients by implicit differentiation of the solve) must land on the minimiser
//! that an independent dense computation finds: `L` evaluated on a fine grid of `l` with a
//! dense f64 Cholesky solve written here, then refined by golden-section search.

mod common;

use candle_core::{Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use common::Rng;
use lazy_kernels::{Kernel, KernelOperator, SolveOptions};

const ALPHA: f64 = 1e-2;

fn signal(x: f64) -> f64 {
    (6.0 * x).sin() + 0.5 * (20.0 * x).sin()
}

/// `(x_train, y_train, x_val, y_val)`.
fn data(seed: u64) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut r = Rng(seed);
    let mut sample = |n: usize| {
        let x: Vec<f64> = (0..n).map(|_| r.uniform(0.0, 1.0)).collect();
        let y = x
            .iter()
            .map(|&x| signal(x) + 0.1 * (r.uniform(-1.0, 1.0)))
            .collect();
        (x, y)
    };
    let (xt, yt) = sample(150);
    let (xv, yv) = sample(80);
    (xt, yt, xv, yv)
}

fn gauss(l: f64, a: f64, b: f64) -> f64 {
    (-0.5 * ((a - b) / l).powi(2)).exp()
}

/// The validation loss by a dense f64 Cholesky solve (the reference).
fn dense_loss(l: f64, xt: &[f64], yt: &[f64], xv: &[f64], yv: &[f64]) -> f64 {
    let n = xt.len();
    let mut k: Vec<f64> = (0..n * n).map(|p| gauss(l, xt[p / n], xt[p % n])).collect();
    for i in 0..n {
        k[i * n + i] += ALPHA;
    }
    // Cholesky, in place (lower).
    for j in 0..n {
        let mut s = k[j * n + j];
        for q in 0..j {
            s -= k[j * n + q] * k[j * n + q];
        }
        let s = s.sqrt();
        k[j * n + j] = s;
        for i in j + 1..n {
            let mut t = k[i * n + j];
            for q in 0..j {
                t -= k[i * n + q] * k[j * n + q];
            }
            k[i * n + j] = t / s;
        }
    }
    let mut a = yt.to_vec();
    for i in 0..n {
        for q in 0..i {
            a[i] -= k[i * n + q] * a[q];
        }
        a[i] /= k[i * n + i];
    }
    for i in (0..n).rev() {
        for q in i + 1..n {
            a[i] -= k[q * n + i] * a[q];
        }
        a[i] /= k[i * n + i];
    }
    xv.iter()
        .zip(yv)
        .map(|(&v, &y)| {
            let pred: f64 = xt.iter().zip(&a).map(|(&t, &ai)| gauss(l, v, t) * ai).sum();
            (pred - y).powi(2)
        })
        .sum::<f64>()
        / xv.len() as f64
}

/// The minimiser of the dense loss over `l` in [0.02, 0.5]: a grid, then golden sections.
fn dense_minimiser(xt: &[f64], yt: &[f64], xv: &[f64], yv: &[f64]) -> f64 {
    let f = |l: f64| dense_loss(l, xt, yt, xv, yv);
    let grid: Vec<f64> = (0..120)
        .map(|k| (0.02f64.ln() + (0.5f64 / 0.02).ln() * k as f64 / 119.0).exp())
        .collect();
    let best = (0..grid.len())
        .min_by(|&a, &b| f(grid[a]).total_cmp(&f(grid[b])))
        .unwrap();
    let (mut lo, mut hi) = (grid[best.saturating_sub(1)], grid[(best + 1).min(119)]);
    let g = (5f64.sqrt() - 1.0) / 2.0;
    for _ in 0..60 {
        let (c, d) = (hi - g * (hi - lo), lo + g * (hi - lo));
        if f(c) < f(d) {
            hi = d;
        } else {
            lo = c;
        }
    }
    0.5 * (lo + hi)
}

#[test]
fn lengthscale_learned_through_the_solve_matches_the_dense_minimiser() {
    let dev = Device::Cpu;
    let (xt, yt, xv, yv) = data(17);
    let want = dense_minimiser(&xt, &yt, &xv, &yv);
    assert!(
        (0.03..0.4).contains(&want),
        "the problem should have an interior optimum, got {want}"
    );

    let t = |v: &[f64]| Tensor::from_slice(v, (v.len(), 1), &dev).unwrap();
    let (x_t, y_t, x_v, y_v) = (t(&xt), t(&yt), t(&xv), t(&yv));
    let log_l = Var::new(&[0.3f64.ln()], &dev).unwrap();
    let params = ParamsAdamW {
        lr: 0.05,
        weight_decay: 0.0,
        ..Default::default()
    };
    let mut opt = AdamW::new(vec![log_l.clone()], params.clone()).unwrap();
    let opts = SolveOptions {
        tol: 1e-10,
        ..SolveOptions::default()
    };
    let steps = 240;
    for step in 0..steps {
        // The loss is flat near its minimum: a fresh optimiser with a smaller step for the last
        // third (Adam's second moments still remember the large early gradients).
        if step == 2 * steps / 3 {
            let params = ParamsAdamW {
                lr: 0.01,
                ..params.clone()
            };
            opt = AdamW::new(vec![log_l.clone()], params).unwrap();
        }
        let l = log_l.as_tensor().exp().unwrap();
        let k_xx = KernelOperator::new(Kernel::gaussian(&l), &x_t, &x_t).unwrap();
        let (a, info) = k_xx.solve(&y_t, ALPHA, &opts).unwrap();
        assert!(info.all_converged(), "step {step}: {info:?}");
        let k_vx = KernelOperator::new(Kernel::gaussian(&l), &x_v, &x_t).unwrap();
        let pred = k_vx.matmul(&a).unwrap();
        let loss = (pred - &y_v).unwrap().sqr().unwrap().mean_all().unwrap();
        opt.backward_step(&loss).unwrap();
    }
    let got = log_l.as_tensor().to_vec1::<f64>().unwrap()[0].exp();
    let rel = (got - want).abs() / want;
    assert!(
        rel < 0.01,
        "learned lengthscale {got}, dense minimiser {want} (relative difference {rel:.2e})"
    );
    // And the loss there is the dense minimum.
    let (lg, lw) = (
        dense_loss(got, &xt, &yt, &xv, &yv),
        dense_loss(want, &xt, &yt, &xv, &yv),
    );
    assert!(
        lg <= lw * (1.0 + 1e-4),
        "loss {lg} at the learned l, {lw} at the minimiser"
    );
}
