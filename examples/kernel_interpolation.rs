//! Kernel interpolation (kriging), ported from KeOps' "Kernel interpolation - NumPy API"
//! example (../shared/seed/) as KeOps writes it: the kernels are symbolic matrices built from
//! `LazyTensor`s (`gaussian_kernel(x, x)`), `K_xx.solve(&b, alpha, ..)` solves
//! `(K_xx + alpha I) a = b` for a Gaussian kernel in 1D and a Laplacian kernel in 2D, and
//! `K_tx.matmul(&a)` (KeOps' `K_tx @ a`) evaluates the fitted model on a grid, which is drawn.
//! The matrix is never built. (The same with the library's kernel families:
//! `KernelOperator::new(Kernel::gaussian(&sigma), &x, &x)?.solve(..)`, see the README.)
//!
//! ```text
//! cargo run --release --example kernel_interpolation -- [N] [--out DIR] [--f32] [--device D]
//! ```
//!
//! N defaults to 10,000 (the seed's GPU setting); the figures go to `figures/` by default;
//! `--device cpu|cuda|cuda:N` (default `cpu`) is where the data live and everything runs.

#[path = "device/mod.rs"]
mod device;
#[path = "plot/mod.rs"]
mod plot;
#[path = "seed/mod.rs"]
mod seed;

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use lazy_kernels::{LazyTensor, SolveInfo, SolveOptions};
use rand::rngs::StdRng;
use rand::SeedableRng;

/// `1,234,567`.
fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (k, c) in s.chars().enumerate() {
        if k > 0 && (s.len() - k).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn report(info: &SolveInfo) {
    println!(
        "  CG: {} iterations, relative residual {:.2e} ({}), preconditioner rank {} \
         (setup {:.3}s, iterations {:.3}s), {} device reads",
        info.iterations,
        info.max_residual(),
        if info.all_converged() {
            "converged".to_string()
        } else {
            format!("NOT converged: {:?}", info.stops[0])
        },
        info.preconditioner_rank,
        info.setup_seconds,
        info.solve_seconds,
        info.host_reads
    );
}

/// The seed's `gaussian_kernel(x, y, sigma)`: the `(M, N)` symbolic matrix
/// `exp(-|x_i - y_j|^2 / (2 sigma^2))`.
fn gaussian_kernel(x: &Tensor, y: &Tensor, sigma: f64) -> candle_core::Result<LazyTensor> {
    let x_i = LazyTensor::vi(x)?; // (M, D), indexed by i
    let y_j = LazyTensor::vj(y)?; // (N, D), indexed by j
    let d_ij = x_i.sqdist(&y_j); // (M, N) symbolic squared distances
    Ok((-d_ij / (2.0 * sigma * sigma)).exp())
}

/// The seed's `laplacian_kernel(x, y, sigma)`: `exp(-|x_i - y_j| / sigma)`.
fn laplacian_kernel(x: &Tensor, y: &Tensor, sigma: f64) -> candle_core::Result<LazyTensor> {
    let (x_i, y_j) = (LazyTensor::vi(x)?, LazyTensor::vj(y)?);
    Ok((-x_i.sqdist(&y_j).sqrt() / sigma).exp())
}

type KernelFn = fn(&Tensor, &Tensor, f64) -> candle_core::Result<LazyTensor>;

/// Solves `(K_xx + alpha I) a = b`, timed and printed like the seed, and reports the solve.
fn interpolate(
    kernel: KernelFn,
    x: &Tensor,
    b: &Tensor,
    alpha: f64,
    label: &str,
) -> candle_core::Result<Tensor> {
    let start = Instant::now();
    let k_xx = kernel(x, x, SIGMA)?;
    let (a, info) = k_xx.solve(b, alpha, &SolveOptions::default())?;
    let elapsed = device::elapsed(x.device(), start)?;
    println!(
        "Time to perform an RBF interpolation with {} samples in {label}: {elapsed:.5}s",
        thousands(x.dim(0)?),
    );
    report(&info);
    Ok(a)
}

/// The fitted model `K_tx a` at the points `t`.
fn predict(kernel: KernelFn, t: &Tensor, x: &Tensor, a: &Tensor) -> candle_core::Result<Vec<f64>> {
    kernel(t, x, SIGMA)?
        .matmul(a)?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_device(&Device::Cpu)?
        .to_vec1::<f64>()
}

/// The seed's bandwidth.
const SIGMA: f64 = 0.1;

fn main() -> candle_core::Result<()> {
    let mut n = 10_000usize;
    let mut out_dir = std::path::PathBuf::from("figures");
    let mut dtype = DType::F64;
    let (dev, args) = device::from_args();
    let mut args = args.into_iter();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => out_dir = args.next().expect("--out DIR").into(),
            "--f32" => dtype = DType::F32,
            s => {
                n = s
                    .replace(['_', ','], "")
                    .parse()
                    .expect("N must be a number")
            }
        }
    }
    std::fs::create_dir_all(&out_dir)?;
    let cpu = Device::Cpu;
    if !dev.is_cpu() {
        println!("device: {}", device::describe(&dev));
    }
    let mut rng = StdRng::seed_from_u64(0);

    // ---------------------------------------------------------------- 1D, Gaussian kernel
    let (xs, bs) = seed::data_1d(n, &mut rng);
    let x = Tensor::from_vec(xs.clone(), (n, 1), &cpu)?
        .to_dtype(dtype)?
        .to_device(&dev)?;
    let b = Tensor::from_vec(bs.clone(), (n, 1), &cpu)?
        .to_dtype(dtype)?
        .to_device(&dev)?;
    let a = interpolate(gaussian_kernel, &x, &b, 1.0, "1D")?; // ridge regularization alpha = 1

    // Extrapolate on a uniform sample and draw the fit over the noisy samples.
    let t: Vec<f64> = (0..1001).map(|k| k as f64 / 1000.0).collect();
    let t_tensor = Tensor::from_vec(t.clone(), (1001, 1), &cpu)?
        .to_dtype(dtype)?
        .to_device(&dev)?;
    let mean_t = predict(gaussian_kernel, &t_tensor, &x, &a)?;
    let mut fig = plot::Canvas::new(800, 600, (0.0, 1.0), (0.0, 1.0));
    fig.scatter(&xs, &bs, &[plot::BLUE], (100.0 / n as f64).sqrt().max(0.5));
    fig.line(&t, &mean_t, plot::RED, 2.0);
    fig.axes();
    let path = out_dir.join("kernel_interpolation_1d.png");
    fig.save_png(&path)?;
    println!("  wrote {}", path.display());

    // ---------------------------------------------------------------- 2D, Laplacian kernel
    let (pts, bs) = seed::data_2d(n, &mut rng);
    let x = Tensor::from_vec(pts.clone(), (n, 2), &cpu)?
        .to_dtype(dtype)?
        .to_device(&dev)?;
    let b = Tensor::from_vec(bs.clone(), (n, 1), &cpu)?
        .to_dtype(dtype)?
        .to_device(&dev)?;
    let a = interpolate(laplacian_kernel, &x, &b, 10.0, "2D")?;

    // The model on a 101 x 101 grid (row 0 at y = 0), under the samples.
    let g = 101;
    let grid: Vec<f64> = (0..g * g)
        .flat_map(|k| [(k % g) as f64 / 100.0, (k / g) as f64 / 100.0])
        .collect();
    let t_tensor = Tensor::from_vec(grid, (g * g, 2), &cpu)?
        .to_dtype(dtype)?
        .to_device(&dev)?;
    let mean_t = predict(laplacian_kernel, &t_tensor, &x, &a)?;
    let mut fig = plot::Canvas::new(800, 800, (0.0, 1.0), (0.0, 1.0));
    let (lo, hi) = mean_t
        .iter()
        .fold((f64::MAX, f64::MIN), |(l, h), &v| (l.min(v), h.max(v)));
    fig.image(&mean_t, g, g, lo, hi, plot::coolwarm, true);
    let colors: Vec<plot::Rgb> = bs.iter().map(|&v| plot::bwr(v.clamp(0.0, 1.0))).collect();
    let px: Vec<f64> = pts.iter().step_by(2).cloned().collect();
    let py: Vec<f64> = pts.iter().skip(1).step_by(2).cloned().collect();
    fig.scatter(&px, &py, &colors, (25000.0 / n as f64).sqrt() * 0.3);
    fig.axes();
    let path = out_dir.join("kernel_interpolation_2d.png");
    fig.save_png(&path)?;
    println!("  wrote {}", path.display());
    Ok(())
}
