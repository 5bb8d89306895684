//! Seeded random data shared by the examples: the data of KeOps' kernel interpolation example
//! (../shared/seed/; a noisy 1D signal and a noisy 2D ring with 25% outliers), standard normal
//! samples and uniform tensors.
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use rand::Rng;
use rand::rngs::StdRng;

/// A `(rows, cols)` tensor of f32 uniform in [0, 1) on the CPU.
pub fn uniform(rng: &mut StdRng, rows: usize, cols: usize) -> candle_core::Result<Tensor> {
    let v: Vec<f32> = (0..rows * cols).map(|_| rng.random::<f32>()).collect();
    Tensor::from_vec(v, (rows, cols), &Device::Cpu)
}

/// A standard normal sample (Box-Muller).
pub fn randn(rng: &mut StdRng) -> f64 {
    let u: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let v: f64 = rng.random();
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

/// `n` points in `[0, 1)` and `x + 0.5 sin(6x) + 0.1 sin(20x) + 0.05 noise`.
pub fn data_1d(n: usize, rng: &mut StdRng) -> (Vec<f64>, Vec<f64>) {
    let xs: Vec<f64> = (0..n).map(|_| rng.random()).collect();
    let bs = xs
        .iter()
        .map(|&x| x + 0.5 * (6.0 * x).sin() + 0.1 * (20.0 * x).sin() + 0.05 * randn(rng))
        .collect();
    (xs, bs)
}

/// `n` points in `[0, 1)^2` (row-major `(n, 2)`) and the indicator of the ring
/// `0.3 <= |x - (0.5, 0.5)| <= 0.4` plus `0.05` noise, with the last quarter replaced by
/// uniform outliers.
pub fn data_2d(n: usize, rng: &mut StdRng) -> (Vec<f64>, Vec<f64>) {
    let pts: Vec<f64> = (0..2 * n).map(|_| rng.random()).collect();
    let mut bs: Vec<f64> = pts
        .chunks(2)
        .map(|p| {
            let r2 = (p[0] - 0.5).powi(2) + (p[1] - 0.5).powi(2);
            let ring = if (0.3f64.powi(2)..=0.4f64.powi(2)).contains(&r2) {
                1.0
            } else {
                0.0
            };
            ring + 0.05 * randn(rng)
        })
        .collect();
    let n_out = n / 4;
    for v in bs.iter_mut().skip(n - n_out) {
        *v = rng.random();
    }
    (pts, bs)
}
