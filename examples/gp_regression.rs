//! Gaussian-process regression in 1D with every hyperparameter learned: the outputscale, the
//! lengthscale and the noise variance of a Gaussian kernel, from a deliberately poor start, by
//! maximising the marginal likelihood ([`ExactGp::fit`]), then the posterior mean and its 95%
//! band on a grid.
//!
//! ```text
//! cargo run --release --example gp_regression -- [--n N] [--steps S] [--dtype f32|f64]
//!     [--out DIR] [--seed S] [--device D]
//! ```
//!
//! `--device cpu|cuda|cuda:N` (default `cpu`): where the data live and the fit runs; `--dtype`
//! (default `f64`) the floating-point type of the data, the hyperparameters and the fit.
//! `--help` lists the options.
//!
//! The data: `N` (default 1,000) uniform points on `[0, 3]` (`--seed`, default 0),
//! `y = sin(3x) + 0.3 sin(11x) + 0.1 eps`, `eps ~ N(0, 1)`. The start: lengthscale 2.0,
//! outputscale 0.2, noise variance 1.0 (the truth: noise variance 0.01). The figure
//! `DIR/gp_regression.png` (`--out`, default `figures/`) shows the data (gray), the true
//! function (black), the posterior mean (red) and the 95% interval of a new observation (blue
//! band), with a legend.

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
use lazy_kernels::Kernel;
use lazy_kernels::gp::{ExactGp, FitOptions, GpSettings, NllMethod, Positive};
use plotters::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use figure::thousands;

/// Gaussian-process regression in 1D: the lengthscale, outputscale and noise variance of a
/// Gaussian kernel learned from a poor start by maximising the marginal likelihood, then the
/// posterior mean and its 95% band on a grid, drawn.
#[derive(Parser)]
#[command(name = "gp_regression")]
struct Cli {
    /// Number of data points; `1_000` and `1,000` are read too.
    #[arg(long, value_name = "N", default_value = "1000", value_parser = sizes::count)]
    n: usize,
    /// Optimiser steps (AdamW, learning rate 0.1, no early stop).
    #[arg(long, value_name = "S", default_value_t = 200)]
    steps: usize,
    /// Floating-point type of the data, the hyperparameters and the fit.
    #[arg(long, value_enum, default_value_t = device::Dtype::F64)]
    dtype: device::Dtype,
    /// Folder the figure is written to (created if missing).
    #[arg(long, value_name = "DIR", default_value = "figures")]
    out: PathBuf,
    /// Seed of the random data (the same seed gives the same data).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    device: device::DeviceArg,
}

/// The function the data are drawn from.
fn truth(x: f64) -> f64 {
    (3.0 * x).sin() + 0.3 * (11.0 * x).sin()
}

const NOISE_SD: f64 = 0.1;
const X_MAX: f64 = 3.0;

/// The value of the named entry of a fit step's `values`.
fn value(values: &[(String, Vec<f64>)], name: &str) -> f64 {
    values
        .iter()
        .find(|(n, _)| n == name)
        .map_or(f64::NAN, |(_, v)| v[0])
}

fn main() -> candle_core::Result<()> {
    let cli = Cli::parse();
    let dev = cli.device.open();
    let (n, steps, out_dir) = (cli.n, cli.steps, &cli.out);
    std::fs::create_dir_all(out_dir)?;
    let cpu = Device::Cpu;
    let dt = cli.dtype.dtype();
    if !dev.is_cpu() {
        println!("device: {}", device::describe(&dev));
    }

    // ---------------------------------------------------------------- data
    let mut rng = StdRng::seed_from_u64(cli.seed);
    let xs: Vec<f64> = (0..n).map(|_| X_MAX * rng.random::<f64>()).collect();
    let ys: Vec<f64> = xs
        .iter()
        .map(|&x| truth(x) + NOISE_SD * seed::randn(&mut rng))
        .collect();
    let x = Tensor::from_vec(xs.clone(), (n, 1), &cpu)?
        .to_dtype(dt)?
        .to_device(&dev)?;
    let y = Tensor::from_vec(ys.clone(), n, &cpu)?
        .to_dtype(dt)?
        .to_device(&dev)?;
    let y_mean = ys.iter().sum::<f64>() / n as f64;
    let y_var = ys.iter().map(|v| (v - y_mean).powi(2)).sum::<f64>() / n as f64;
    println!(
        "{n} points on [0, {X_MAX}]: y = sin(3x) + 0.3 sin(11x) + {NOISE_SD} N(0, 1) \
         (sample mean {y_mean:.3}, variance {y_var:.3})"
    );

    // ---------------------------------------------------------------- model, poor start
    let lengthscale = Positive::new("lengthscale", &[2.0], dt, &dev)?;
    let outputscale = Positive::new("outputscale", &[0.2], dt, &dev)?;
    let noise = Positive::new("noise", &[1.0], dt, &dev)?;
    let (l, s) = (lengthscale.clone(), outputscale.clone());
    let mut gp = ExactGp::new(&x, &y, vec![lengthscale, outputscale], noise, move || {
        Ok(Kernel::gaussian(&l.value()?).scale(&s.value()?))
    })?
    .with_settings(GpSettings {
        // The scalable path (CG and stochastic Lanczos quadrature), which `Auto` would leave
        // for the exact one at this size; the exact NLL is printed at the end to check it.
        nll_method: NllMethod::Stochastic,
        train_tol: 1e-4,
        probes: 16,
        ..GpSettings::default()
    });

    // ---------------------------------------------------------------- fit
    let opts = FitOptions {
        steps,
        lr: 0.1,
        // No early stop: the NLL is a stochastic estimate (new probes every step) and the
        // likelihood is flat along the outputscale, which is still moving when the NLL per
        // point has changed by less than 1e-4 for five steps (FitOptions' default, reached at
        // step 100 here).
        tol: 0.0,
        ..FitOptions::default()
    };
    println!("fitting: AdamW, lr {}, {steps} steps", opts.lr);
    let report = gp.fit(&opts)?;
    println!(
        "{:>5} {:>10} {:>12} {:>12} {:>12} {:>9} {:>8}",
        "step", "NLL/N", "lengthscale", "outputscale", "noise", "mean", "CG its"
    );
    let last = report.trajectory.len().saturating_sub(1);
    for st in &report.trajectory {
        if st.step % 10 != 0 && st.step != last {
            continue;
        }
        let v = &st.values;
        println!(
            "{:>5} {:>10.5} {:>12.4} {:>12.4} {:>12.5} {:>9.4} {:>8}",
            st.step,
            st.report.nll / n as f64,
            value(v, "lengthscale"),
            value(v, "outputscale"),
            value(v, "noise"),
            value(v, "mean"),
            format!("{}/{}", st.report.iterations.0, st.report.iterations.1),
        );
    }
    println!(
        "{} steps in {:.2}s ({:.3}s per step){}; the model keeps step {}'s values (FitReport::best_step)",
        report.trajectory.len(),
        report.seconds,
        report.seconds / report.trajectory.len().max(1) as f64,
        if report.stopped_early {
            ", stopped early"
        } else {
            ""
        },
        report
            .best_step
            .map_or("none".to_string(), |b| b.to_string()),
    );
    let (nll, _) = gp.nll()?;
    let vals = gp.values()?;
    println!(
        "final: NLL/N {:.5}, lengthscale {:.4}, outputscale {:.4}, noise variance {:.5} \
         (noise sd {:.4}), mean {:.4}",
        nll.to_dtype(DType::F64)?.to_scalar::<f64>()? / n as f64,
        value(&vals, "lengthscale"),
        value(&vals, "outputscale"),
        value(&vals, "noise"),
        value(&vals, "noise").sqrt(),
        value(&vals, "mean"),
    );
    if n <= NllMethod::exact_limit(&dev) {
        // The exact NLL at the same hyperparameters (dense Cholesky on the device).
        gp.settings.nll_method = NllMethod::Exact;
        let exact = gp.nll()?.1.nll;
        gp.settings.nll_method = NllMethod::Stochastic;
        println!(
            "       exact NLL/N by a dense Cholesky factorisation at these values: {:.5}",
            exact / n as f64
        );
    }
    println!(
        "data:  noise variance {:.5} (noise sd {NOISE_SD}); the function has no single \
         lengthscale or outputscale (its variance on [0, {X_MAX}] is about {:.3})",
        NOISE_SD * NOISE_SD,
        y_var - NOISE_SD * NOISE_SD
    );

    // ---------------------------------------------------------------- predict on a grid
    let g = 400;
    let grid: Vec<f64> = (0..g)
        .map(|k| -0.25 + (X_MAX + 0.5) * k as f64 / (g - 1) as f64)
        .collect();
    let start = Instant::now();
    let t_grid = Tensor::from_vec(grid.clone(), g, &cpu)?
        .to_dtype(dt)?
        .to_device(&dev)?;
    let pred = gp.predict(&t_grid)?;
    let (lo, hi) = pred.interval()?;
    let host = |t: &Tensor| t.to_dtype(DType::F64)?.to_device(&cpu)?.to_vec1::<f64>();
    let (mean, lo, hi) = (host(&pred.mean)?, host(&lo)?, host(&hi)?);
    let predict_seconds = device::elapsed(&dev, start)?;
    let rmse = (grid
        .iter()
        .zip(&mean)
        .filter(|(x, _)| (0.0..=X_MAX).contains(*x))
        .map(|(x, m)| (m - truth(*x)).powi(2))
        .sum::<f64>()
        / grid.iter().filter(|x| (0.0..=X_MAX).contains(*x)).count() as f64)
        .sqrt();
    let inside = xs
        .iter()
        .zip(&ys)
        .filter(|(x, y)| {
            let k = (((*x + 0.25) / (X_MAX + 0.5) * (g - 1) as f64).round() as usize).min(g - 1);
            (lo[k]..=hi[k]).contains(*y)
        })
        .count();
    println!(
        "prediction on {g} grid points in {:.2}s: RMSE of the mean against the true function on \
         [0, {X_MAX}] {rmse:.4}; {:.1}% of the data inside the 95% band (at the nearest grid \
         point)",
        predict_seconds,
        100.0 * inside as f64 / n as f64
    );

    // ---------------------------------------------------------------- figure
    let true_f: Vec<f64> = grid.iter().map(|&x| truth(x)).collect();
    let path = out_dir.join("gp_regression.png");
    let title = format!(
        "Gaussian-process regression, {} points, hyperparameters learned",
        thousands(n)
    );
    let subtitle = format!(
        "Gaussian kernel, {} AdamW steps: lengthscale 2 \u{2192} {:.3}, outputscale 0.2 \u{2192} \
         {:.3}, noise variance 1 \u{2192} {:.4} (true {:.2})",
        report.trajectory.len(),
        value(&vals, "lengthscale"),
        value(&vals, "outputscale"),
        value(&vals, "noise"),
        NOISE_SD * NOISE_SD,
    );
    let x_range = grid[0]..grid[g - 1];
    // Curves clamped to the y range (plotters does not clip to the plotting area).
    let (y0, y1) = (-2.2, 2.8);
    let clip = |v: &[f64]| -> Vec<f64> { v.iter().map(|y| y.clamp(y0, y1)).collect() };
    let (lo, hi, mean, true_f) = (clip(&lo), clip(&hi), clip(&mean), clip(&true_f));
    figure::save_png(&path, (1000, 620), |root| {
        let area = figure::titled(root, &title, Some(&subtitle))?;
        let layout = figure::Layout::default();
        let mut chart = figure::chart(&area, x_range, y0..y1, layout)?;
        figure::axes(
            &mut chart,
            "x (dimensionless)",
            "y (dimensionless)",
            (1, 1),
            true,
        )?;
        chart
            .draw_series(std::iter::once(figure::band(
                &grid,
                &lo,
                &hi,
                figure::BLUE,
                0.25,
            )))?
            .label("95% interval of a new observation")
            .legend(figure::box_key(figure::BLUE, 0.25));
        let style = figure::GRAY.mix(0.7).filled();
        figure::dots(
            &chart,
            xs.iter().zip(&ys).map(|(&x, &y)| ((x, y), style)),
            4,
        )?;
        let data = format!(
            "data: y = f(x) + {NOISE_SD} \u{3b5}, \u{3b5} ~ N(0, 1), {} points",
            thousands(n)
        );
        figure::legend_entry(&mut chart, data, figure::point_key(figure::GRAY, 0.7, 3))?;
        chart
            .draw_series(LineSeries::new(
                grid.iter().zip(&true_f).map(|(&x, &y)| (x, y)),
                BLACK.stroke_width(2),
            ))?
            .label("true function f(x) = sin 3x + 0.3 sin 11x")
            .legend(figure::line_key(BLACK, 2));
        chart
            .draw_series(LineSeries::new(
                grid.iter().zip(&mean).map(|(&x, &y)| (x, y)),
                figure::RED.stroke_width(2),
            ))?
            .label("posterior mean")
            .legend(figure::line_key(figure::RED, 2));
        figure::legend(&mut chart, SeriesLabelPosition::UpperRight)
    })?;
    println!("wrote {}", path.display());
    Ok(())
}
