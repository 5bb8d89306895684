//! Learning a kernel bandwidth by gradient descent through a reduction's backward pass.
//!
//! Targets are `t = K_0.2(x, c) b`: Gaussian kernel sums with bandwidth 0.2, fixed centres `c`
//! and positive weights `b`. The loss `mean_i ((K_sigma(x, c) b)_i - t_i)^2` is zero at
//! `sigma = 0.2` and only there: with positive weights every `(K_sigma b)_i` strictly
//! increases with `sigma`, so each residual has the sign of `sigma - 0.2`. AdamW (no weight
//! decay) on `log sigma`, from `sigma = 0.5`, must land within 1% of 0.2.

mod common;

use candle_core::{Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use common::*;
use lazy_kernels::{Axis, LazyTensor};

const TRUE_SIGMA: f64 = 0.2;

/// `sum_j exp(-|x_i - c_j|^2 / (2 sigma^2)) b_j` by plain loops (the targets).
fn kernel_sums(x: &[f64], c: &[f64], b: &[f64], dim: usize, sigma: f64) -> Vec<f64> {
    x.chunks(dim)
        .map(|xi| {
            c.chunks(dim)
                .zip(b)
                .map(|(cj, bj)| {
                    let r: f64 = xi.iter().zip(cj).map(|(p, q)| (p - q) * (p - q)).sum();
                    (-r / (2.0 * sigma * sigma)).exp() * bj
                })
                .sum()
        })
        .collect()
}

fn learn(dim: usize, m: usize, n_centres: usize, seed: u64) -> f64 {
    let dev = Device::Cpu;
    let mut r = Rng(seed);
    let x = r.tensor(&[m, dim], 0., 1.);
    let c = r.tensor(&[n_centres, dim], 0., 1.);
    let b = r.tensor(&[n_centres, 1], 0.5, 1.5);
    let t = kernel_sums(&flat(&x), &flat(&c), &flat(&b), dim, TRUE_SIGMA);
    let t = Tensor::from_vec(t, (m, 1), &dev).unwrap();

    let (x_i, c_j, b_j) = (
        LazyTensor::vi(&x).unwrap(),
        LazyTensor::vj(&c).unwrap(),
        LazyTensor::vj(&b).unwrap(),
    );
    let d2 = x_i.sqdist(&c_j);
    let log_sigma = Var::new(&[0.5f64.ln()], &dev).unwrap();
    let params = ParamsAdamW {
        lr: 0.05,
        weight_decay: 0.0,
        ..Default::default()
    };
    let mut opt = AdamW::new(vec![log_sigma.clone()], params).unwrap();
    let steps = 300;
    for step in 0..steps {
        // A smaller step for the last third, to settle.
        if step == 2 * steps / 3 {
            opt.set_learning_rate(0.005);
        }
        let sigma = log_sigma.as_tensor().exp().unwrap();
        let s = LazyTensor::param(&sigma).unwrap();
        let pred = ((-&d2 / (2.0 * s.square())).exp() * &b_j)
            .sum(Axis::J)
            .unwrap();
        let loss = (pred - &t).unwrap().sqr().unwrap().mean_all().unwrap();
        opt.backward_step(&loss).unwrap();
    }
    flat(&log_sigma.as_tensor().exp().unwrap())[0]
}

#[test]
fn learns_the_bandwidth_in_one_dimension() {
    let sigma = learn(1, 40, 6, 1);
    assert!(
        (sigma - TRUE_SIGMA).abs() <= 0.01 * TRUE_SIGMA,
        "learned sigma {sigma}, want {TRUE_SIGMA} within 1%"
    );
}

#[test]
fn learns_the_bandwidth_in_two_dimensions() {
    let sigma = learn(2, 50, 10, 2);
    assert!(
        (sigma - TRUE_SIGMA).abs() <= 0.01 * TRUE_SIGMA,
        "learned sigma {sigma}, want {TRUE_SIGMA} within 1%"
    );
}
