//! Kernel interpolation (kriging), ported from KeOps' "Kernel interpolation - NumPy API"
//! example (../shared/seed/) as KeOps writes it: the kernels are symbolic matrices built from
//! `LazyTensor`s (`gaussian_kernel(x, x)`), `K_xx.solve(&b, alpha, ..)` solves
//! `(K_xx + alpha I) a = b` for a Gaussian kernel in 1D and a Laplacian kernel in 2D, and
//! `K_tx.matmul(&a)` (KeOps' `K_tx @ a`) evaluates the fitted model on a grid, which is drawn.
//! The matrix is never built. (The same with the library's kernel families:
//! `KernelOperator::new(Kernel::gaussian(&sigma), &x, &x)?.solve(..)`, see the README.)
//!
//! ```text
//! cargo run --release --example kernel_interpolation -- [--n N] [--dtype f32|f64] [--out DIR]
//!     [--seed S] [--device D]
//! ```
//!
//! `--n` (default 10,000, the seed's GPU setting) is the number of points of each problem;
//! `--dtype` (default `f64`, the seed's) the floating-point type; the figures go to `--out`
//! (default `figures/`): `kernel_interpolation_1d.png` (the noisy samples and the interpolant)
//! and `kernel_interpolation_2d.png` (the interpolant as an image over the unit square, with
//! its colour bar, under the samples coloured by value, with theirs); `--seed` (default 0)
//! draws the data; `--device cpu|cuda|cuda:N` (default `cpu`) is where the data live and
//! everything runs. `--help` lists the options.

#[path = "device/mod.rs"]
mod device;
#[path = "figure/mod.rs"]
mod figure;
#[path = "seed/mod.rs"]
mod seed;
#[path = "sizes/mod.rs"]
mod sizes;

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use clap::Parser;
use lazy_kernels::{LazyTensor, SolveInfo, SolveOptions};
use plotters::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

use figure::thousands;

/// Kernel interpolation (kriging) in 1D and 2D, KeOps' "Kernel interpolation - NumPy API"
/// example ported: (K_xx + alpha I) a = b solved without building the kernel matrix, the fitted
/// model drawn on a grid.
#[derive(Parser)]
#[command(name = "kernel_interpolation")]
struct Cli {
    /// Number of data points of each problem (1D and 2D); `10_000` and `10,000` are read too.
    #[arg(long, value_name = "N", default_value = "10000", value_parser = sizes::count)]
    n: usize,
    /// Floating-point type of the data, the solve and the predictions.
    #[arg(long, value_enum, default_value_t = device::Dtype::F64)]
    dtype: device::Dtype,
    /// Folder the two figures are written to (created if missing).
    #[arg(long, value_name = "DIR", default_value = "figures")]
    out: PathBuf,
    /// Seed of the random data (the same seed gives the same data).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    device: device::DeviceArg,
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
) -> candle_core::Result<(Tensor, SolveInfo)> {
    let start = Instant::now();
    let k_xx = kernel(x, x, SIGMA)?;
    // A progress bar on standard error once a solve has run a second (large `--n`).
    let opts = SolveOptions {
        progress: Some(std::time::Duration::from_secs(1)),
        ..SolveOptions::default()
    };
    let (a, info) = k_xx.solve(b, alpha, &opts)?;
    let elapsed = device::elapsed(x.device(), start)?;
    println!(
        "Time to perform an RBF interpolation with {} samples in {label}: {elapsed:.5}s",
        thousands(x.dim(0)?),
    );
    report(&info);
    Ok((a, info))
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
/// The seed's ridge regularisations, 1D and 2D.
const ALPHA_1D: f64 = 1.0;
const ALPHA_2D: f64 = 10.0;

/// `3 iterations` and the residual, or that the solve did not converge, for a subtitle.
fn solve_summary(info: &SolveInfo) -> String {
    let its = match info.iterations {
        1 => "1 iteration".to_string(),
        k => format!("{k} iterations"),
    };
    if info.all_converged() {
        format!("{its}, relative residual {:.1e}", info.max_residual())
    } else {
        format!("{its}, NOT converged")
    }
}

fn main() -> candle_core::Result<()> {
    let cli = Cli::parse();
    let dev = cli.device.open();
    let (n, dtype) = (cli.n, cli.dtype.dtype());
    std::fs::create_dir_all(&cli.out)?;
    let cpu = Device::Cpu;
    if !dev.is_cpu() {
        println!("device: {}", device::describe(&dev));
    }
    let mut rng = StdRng::seed_from_u64(cli.seed);
    let dt = cli.dtype.name();

    // ---------------------------------------------------------------- 1D, Gaussian kernel
    let (xs, bs) = seed::data_1d(n, &mut rng);
    let x = Tensor::from_vec(xs.clone(), (n, 1), &cpu)?
        .to_dtype(dtype)?
        .to_device(&dev)?;
    let b = Tensor::from_vec(bs.clone(), (n, 1), &cpu)?
        .to_dtype(dtype)?
        .to_device(&dev)?;
    let (a, info) = interpolate(gaussian_kernel, &x, &b, ALPHA_1D, "1D")?;

    // Extrapolate on a uniform sample and draw the fit over the noisy samples.
    let t: Vec<f64> = (0..1001).map(|k| k as f64 / 1000.0).collect();
    let t_tensor = Tensor::from_vec(t.clone(), (1001, 1), &cpu)?
        .to_dtype(dtype)?
        .to_device(&dev)?;
    let mean_t = predict(gaussian_kernel, &t_tensor, &x, &a)?;
    let path = cli.out.join("kernel_interpolation_1d.png");
    let title = format!("Gaussian kernel interpolation, {} points, 1D", thousands(n));
    let subtitle = format!(
        "k(x, y) = exp(\u{2212}|x \u{2212} y|\u{b2} / 2\u{3c3}\u{b2}), \u{3c3} = {SIGMA}; \
         (K + \u{3b1}I) a = b, \u{3b1} = {ALPHA_1D}, by preconditioned CG: {} ({dt})",
        solve_summary(&info)
    );
    figure::save_png(&path, (900, 660), |root| {
        let area = figure::titled(root, &title, Some(&subtitle))?;
        let mut chart = figure::chart(&area, 0.0..1.0, 0.0..1.0, figure::Layout::default())?;
        figure::axes(
            &mut chart,
            "x (dimensionless)",
            "b (dimensionless)",
            (1, 1),
            true,
        )?;
        let size = (20_000.0 / n as f64).sqrt().clamp(2.0, 8.0) as u32;
        let style = figure::BLUE.mix(0.6).filled();
        let points = xs.iter().zip(&bs).map(|(&x, &b)| ((x, b), style));
        figure::dots(&chart, points, size)?;
        let data = "data: b = x + 0.5 sin 6x + 0.1 sin 20x + 0.05 \u{3b5}";
        figure::legend_entry(&mut chart, data, figure::point_key(figure::BLUE, 0.8, 3))?;
        chart
            .draw_series(LineSeries::new(
                t.iter().zip(&mean_t).map(|(&t, &m)| (t, m)),
                figure::RED.stroke_width(2),
            ))?
            .label("interpolant K\u{209c}\u{2093} a at 1,001 points")
            .legend(figure::line_key(figure::RED, 2));
        figure::legend(&mut chart, SeriesLabelPosition::LowerRight)
    })?;
    println!("  wrote {}", path.display());

    // ---------------------------------------------------------------- 2D, Laplacian kernel
    let (pts, bs) = seed::data_2d(n, &mut rng);
    let x = Tensor::from_vec(pts.clone(), (n, 2), &cpu)?
        .to_dtype(dtype)?
        .to_device(&dev)?;
    let b = Tensor::from_vec(bs.clone(), (n, 1), &cpu)?
        .to_dtype(dtype)?
        .to_device(&dev)?;
    let (a, info) = interpolate(laplacian_kernel, &x, &b, ALPHA_2D, "2D")?;

    // The model on a 101 x 101 grid (row 0 at y = 0), under the samples.
    let g = 101;
    let grid: Vec<f64> = (0..g * g)
        .flat_map(|k| [(k % g) as f64 / 100.0, (k / g) as f64 / 100.0])
        .collect();
    let t_tensor = Tensor::from_vec(grid, (g * g, 2), &cpu)?
        .to_dtype(dtype)?
        .to_device(&dev)?;
    let mean_t = predict(laplacian_kernel, &t_tensor, &x, &a)?;
    // The grid's values are at the points k / 100: cells of 1/100 centred on them.
    let image = figure::Grid {
        values: &mean_t,
        nx: g,
        ny: g,
        x: (-0.005, 1.005),
        y: (-0.005, 1.005),
    };
    let model_range = image.range();
    let data_range = figure::finite_range(&bs);
    let path = cli.out.join("kernel_interpolation_2d.png");
    let title = format!(
        "Laplacian kernel interpolation, {} points, 2D",
        thousands(n)
    );
    let subtitle = format!(
        "k(x, y) = exp(\u{2212}|x \u{2212} y| / \u{3c3}), \u{3c3} = {SIGMA}; \
         (K + \u{3b1}I) a = b, \u{3b1} = {ALPHA_2D}, by preconditioned CG: {} ({dt})",
        solve_summary(&info)
    );
    figure::save_png(&path, (1060, 880), |root| {
        let area = figure::titled(root, &title, Some(&subtitle))?;
        // A square plotting area on the left, the two colour bars on the right.
        let layout = figure::Layout::default();
        let (w, h) = area.dim_in_pixel();
        let bars = 240;
        let pad = layout.left + 2 * layout.margin;
        let side = (h - layout.bottom - 2 * layout.margin).min(w - bars - pad);
        let (left, right) = area.split_horizontally(side + pad);
        let mut chart = figure::chart(&left, 0.0..1.0, 0.0..1.0, layout)?;
        figure::image(&chart, &image, model_range, figure::coolwarm)?;
        let (x1, x2) = ("x\u{2081} (dimensionless)", "x\u{2082} (dimensionless)");
        figure::axes(&mut chart, x1, x2, (1, 1), false)?;
        let size = (25_000.0 / n as f64).sqrt().clamp(2.0, 12.0) as u32;
        let span = (data_range.1 - data_range.0).max(f64::MIN_POSITIVE);
        let points = pts.chunks(2).zip(&bs).map(|(p, &v)| {
            let colour = figure::bwr((v - data_range.0) / span);
            ((p[0], p[1]), colour.filled())
        });
        figure::dots(&chart, points, size)?;
        let three_dots = |(x, y)| {
            EmptyElement::at((x, y))
                + Circle::new((3, 0), 3, figure::bwr(0.0).filled())
                + Circle::new((11, 0), 3, figure::bwr(0.3).filled())
                + Circle::new((19, 0), 3, figure::bwr(1.0).filled())
        };
        let data = "data points, coloured by b (right bar)";
        figure::legend_entry(&mut chart, data, three_dots)?;
        let model = "interpolant K\u{209c}\u{2093} a on a 101 \u{d7} 101 grid (left bar)";
        figure::legend_entry(
            &mut chart,
            model,
            figure::box_key(figure::coolwarm(0.85), 1.0),
        )?;
        figure::legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
        let (model_bar, data_bar) = right.split_horizontally(bars / 2);
        let gap = (layout.margin, layout.margin + layout.bottom);
        figure::colour_bar(
            &model_bar,
            model_range,
            figure::coolwarm,
            "interpolant",
            2,
            gap,
        )?;
        figure::colour_bar(&data_bar, data_range, figure::bwr, "data b", 2, gap)
    })?;
    println!("  wrote {}", path.display());
    Ok(())
}
