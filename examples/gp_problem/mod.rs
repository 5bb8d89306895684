//! The exact-GP training problem of the GP benchmarks (`bench_gp`, `bench_cold_start`):
//! `N` points uniform in the unit cube (seed 0 unless their `--seed` says otherwise),
//! `y = sin(2 pi x0) cos(pi x1) + 0.5 sin(3 x2)` plus noise of standard deviation 0.1, and a
//! Gaussian kernel with three lengthscales times an output scale, a learned noise and the
//! default `GpSettings`.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use lazy_kernels::Kernel;
use lazy_kernels::gp::{ExactGp, GpSettings, Positive};

/// Dimensions of the points.
pub const D: usize = 3;
/// The lengthscales at which the step is evaluated.
pub const LENGTHSCALES: [f64; D] = [0.3, 0.4, 0.5];
/// The outputscale.
pub const OUTPUTSCALE: f64 = 1.0;
/// The noise variance (the data's own is `0.1^2 = 0.01`).
pub const NOISE: f64 = 0.05;
/// The standard deviation of the noise in the data.
pub const NOISE_SD: f64 = 0.1;

/// SplitMix64, uniform numbers in [0, 1) and standard normals (Box-Muller).
pub struct Rng(pub u64);

impl Rng {
    pub fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn normal(&mut self) -> f64 {
        let u = self.uniform().max(f64::MIN_POSITIVE);
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// The function behind the data.
pub fn truth(x: &[f64]) -> f64 {
    use std::f64::consts::PI;
    (2.0 * PI * x[0]).sin() * (PI * x[1]).cos() + 0.5 * (3.0 * x[2]).sin()
}

/// `N` points in the unit cube, row-major `(N, D)`, and their targets.
pub struct Problem {
    pub n: usize,
    pub x: Vec<f64>,
    pub y: Vec<f64>,
}

impl Problem {
    /// The problem at `n` points drawn with seed 0.
    pub fn new(n: usize) -> Problem {
        Problem::seeded(n, 0)
    }

    /// The problem at `n` points drawn with `seed` (the benchmarks' `--seed`).
    pub fn seeded(n: usize, seed: u64) -> Problem {
        let mut rng = Rng(seed);
        let x: Vec<f64> = (0..n * D).map(|_| rng.uniform()).collect();
        let y = (0..n)
            .map(|i| truth(&x[i * D..(i + 1) * D]) + NOISE_SD * rng.normal())
            .collect();
        Problem { n, x, y }
    }

    /// The constant mean the GP starts from: the mean of `y`.
    pub fn mean(&self) -> f64 {
        self.y.iter().sum::<f64>() / self.n as f64
    }
}

/// The model of the problem on `dev` in `dtype`, at the values above.
pub fn build_gp(
    p: &Problem,
    dev: &Device,
    dtype: DType,
) -> Result<ExactGp, Box<dyn std::error::Error>> {
    let x = Tensor::from_vec(p.x.clone(), (p.n, D), &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(dev)?;
    let y = Tensor::from_vec(p.y.clone(), p.n, &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(dev)?;
    let l = Positive::new("lengthscale", &LENGTHSCALES, dtype, dev)?;
    let s = Positive::new("outputscale", &[OUTPUTSCALE], dtype, dev)?;
    let noise = Positive::new("noise", &[NOISE], dtype, dev)?;
    let (lc, sc) = (l.clone(), s.clone());
    let gp = ExactGp::new(&x, &y, vec![l, s], noise, move || {
        Ok(Kernel::gaussian(&lc.value()?).scale(&sc.value()?))
    })?;
    Ok(gp.with_settings(GpSettings::default()))
}
