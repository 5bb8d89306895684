//! The spread of the log-determinant estimate over seeds, on the weekly Mauna Loa CO2 data
//! (N = 2,225) with Rasmussen & Williams' composite kernel at the maximum of the likelihood:
//! one `ExactGp::nll_seeded` evaluation per seed and estimator on the stochastic path
//! (`NllMethod::Stochastic`, forced), against the exact NLL (`NllMethod::Exact`: a dense
//! Cholesky factorisation).
//!
//! ```text
//! cargo run --release --example bench_logdet -- [--seeds S] [--methods before,after,block]
//!     [--point sklearn|learned] [--rank R|auto] [--probes P] [--tol T] [--qtol Q] [--every K]
//!     [--data CSV] [--device D]
//! ```
//!
//! (`--help` lists the options.)
//!
//! The settings are `GpSettings::default()` unless changed by the arguments. The estimators
//! alternate seed by seed (A, B, A, B, ...), so that a change of the machine's speed during the
//! run affects both alike. Printed per estimator: the mean of the NLL over the seeds, its
//! standard deviation, the mean of `|NLL - exact|`, the mean reported standard error, the
//! largest `|z|` (error over reported standard error) and the time per evaluation.

#[path = "device/mod.rs"]
mod device;
#[path = "mauna_loa_model/mod.rs"]
mod mauna_loa_model;
#[path = "report/mod.rs"]
mod report;
#[path = "sizes/mod.rs"]
mod sizes;

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor};
use clap::{Parser, ValueEnum};
use lazy_kernels::gp::{GpSettings, NllMethod};
use lazy_kernels::{LogdetEstimator, Preconditioner, Rank};
use mauna_loa_model::SKLEARN;

/// The values learned by
/// `cargo run --release --example mauna_loa` (150 AdamW steps from scikit-learn's start, rank
/// 600; exact NLL 886.43, against 883.9 at scikit-learn's own optimum for these data). As at
/// scikit-learn's, the correlated-noise term has a lengthscale of about 6 days (th10), below
/// the spacing of the weeks: a short-range part of the kernel that no low-rank factor captures.
const LEARNED: [f64; 11] = [
    41.6627,
    55.3225,
    2.5025,
    129.0608,
    1.4214,
    0.9099,
    0.7685,
    0.0556,
    0.2540,
    0.0170,
    0.2330 * 0.2330,
];

/// The log-determinant estimators, by their names on the command line.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    /// Hutchinson's estimator with the solve's preconditioner; the probes stop at the CG
    /// tolerance.
    Before,
    /// The diagonal correction with the quadrature stop.
    After,
    /// The block correction with the quadrature stop.
    Block,
    /// The diagonal correction alone.
    Corrected,
    /// The quadrature stop alone.
    Quadrature,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Before => "before",
            Method::After => "after",
            Method::Block => "block",
            Method::Corrected => "corrected",
            Method::Quadrature => "quadrature",
        }
    }
}

/// Where the kernel's hyperparameters are.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Point {
    /// scikit-learn's optimum for the weekly data.
    Sklearn,
    /// The values `mauna_loa` learned (150 AdamW steps from scikit-learn's start).
    Learned,
}

/// The spread of the stochastic log-determinant over seeds, on the weekly Mauna Loa CO2 data.
///
/// Rasmussen & Williams' composite kernel at a maximum of the likelihood (N = 2,225): one
/// stochastic NLL evaluation per seed and estimator (`NllMethod::Stochastic`, forced), against
/// the exact NLL (dense Cholesky). The estimators alternate seed by seed. Prints per
/// estimator the mean NLL over the seeds, its standard deviation, the mean |NLL - exact|, the
/// mean reported standard error, the largest |z| and the time per evaluation. The settings are
/// `GpSettings::default()` unless changed by the options.
#[derive(Parser)]
#[command(name = "bench_logdet")]
struct Cli {
    /// Seeds (evaluations per estimator).
    #[arg(long, value_name = "S", default_value = "10", value_parser = sizes::count)]
    seeds: usize,
    /// The estimators to compare.
    #[arg(
        long,
        value_name = "METHOD,...",
        value_enum,
        value_delimiter = ',',
        default_value = "before,after,block"
    )]
    methods: Vec<Method>,
    /// The hyperparameters.
    #[arg(long, value_enum, default_value = "sklearn")]
    point: Point,
    /// The pivoted-Cholesky preconditioner's rank, or `auto` [default: GpSettings' default].
    #[arg(long, value_name = "R|auto", value_parser = rank)]
    rank: Option<Preconditioner>,
    /// Probe vectors of the stochastic log-determinant [default: GpSettings' default].
    #[arg(long, value_name = "P", value_parser = sizes::count)]
    probes: Option<usize>,
    /// The CG tolerance of training (`GpSettings::train_tol`) [default: GpSettings' default].
    #[arg(long, value_name = "T")]
    tol: Option<f64>,
    /// The quadrature stop's tolerance (`GpSettings::quadrature_tol`) [default: GpSettings'
    /// default].
    #[arg(long, value_name = "Q")]
    qtol: Option<f64>,
    /// Keep every K-th week of the data.
    #[arg(long, value_name = "K", default_value = "1", value_parser = sizes::count)]
    every: usize,
    /// The CO2 data file [default: found in $LK_DATA_DIR, ./examples/data, then the crate's].
    #[arg(long, value_name = "CSV")]
    data: Option<PathBuf>,
    #[command(flatten)]
    device: device::DeviceArg,
}

/// `--rank`: `auto` (the default preconditioner) or a fixed rank of the pivoted Cholesky.
fn rank(s: &str) -> Result<Preconditioner, String> {
    if s.trim() == "auto" {
        return Ok(Preconditioner::default());
    }
    let r = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: a rank (a whole number) or auto"))?;
    Ok(Preconditioner::PivotedCholesky(Rank::Fixed(r)))
}

/// The settings of an estimator (see [`Method`]).
fn method(m: Method, base: &GpSettings) -> GpSettings {
    let (estimator, quadrature_tol) = match m {
        Method::Before => (LogdetEstimator::Hutchinson, 0.0),
        Method::After => (LogdetEstimator::DiagonalCorrected, base.quadrature_tol),
        Method::Corrected => (LogdetEstimator::DiagonalCorrected, 0.0),
        Method::Block => (LogdetEstimator::BlockCorrected, base.quadrature_tol),
        Method::Quadrature => (LogdetEstimator::Hutchinson, base.quadrature_tol),
    };
    GpSettings {
        logdet_estimator: estimator,
        quadrature_tol,
        ..base.clone()
    }
}

/// Mean and sample standard deviation.
fn mean_sd(v: &[f64]) -> (f64, f64) {
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len().max(2) - 1) as f64;
    (m, var.sqrt())
}

fn main() -> candle_core::Result<()> {
    let cli = Cli::parse();
    let dev = cli.device.open();
    let (seeds, methods, every, data) = (cli.seeds, cli.methods, cli.every, cli.data);
    let point = match cli.point {
        Point::Sklearn => SKLEARN,
        Point::Learned => LEARNED,
    };
    // The stochastic path, forced: at this size `NllMethod::Auto` would take the exact one.
    let mut settings = GpSettings {
        nll_method: NllMethod::Stochastic,
        ..GpSettings::default()
    };
    if let Some(p) = cli.rank {
        settings.preconditioner = p;
    }
    if let Some(p) = cli.probes {
        settings.probes = p;
    }
    if let Some(t) = cli.tol {
        settings.train_tol = t;
    }
    if let Some(q) = cli.qtol {
        settings.quadrature_tol = q;
    }
    let data = match data {
        Some(path) => path,
        None => mauna_loa_model::find_data().unwrap_or_else(|e| device::fail(&e.to_string(), 1)),
    };
    let rows = mauna_loa_model::read_co2(&data)?;
    let kept: Vec<(f64, f64)> = rows
        .iter()
        .step_by(every.max(1))
        .map(|r| (r.2, r.3))
        .collect();
    let n = kept.len();
    let xs: Vec<f64> = kept.iter().map(|p| p.0).collect();
    let ys: Vec<f64> = kept.iter().map(|p| p.1).collect();
    let cpu = Device::Cpu;
    let x = Tensor::from_vec(xs, (n, 1), &cpu)?.to_device(&dev)?;
    let y = Tensor::from_vec(ys, n, &cpu)?.to_device(&dev)?;
    let (gp, _) = mauna_loa_model::model(&x, &y, &point, &dev)?;
    let mut gp = gp.with_settings(GpSettings {
        nll_method: NllMethod::Exact,
        ..settings.clone()
    });

    println!("{}\n", report::machine_header());
    let start = Instant::now();
    let exact = gp.nll()?.1.nll;
    println!(
        "weekly Mauna Loa CO2, N = {n}, R&W's kernel at the weekly optimum; {}\n\
         settings: {:?}\nexact NLL (dense Cholesky, NllMethod::Exact, {:.1}s): {exact:.3}",
        device::describe(&dev),
        settings,
        start.elapsed().as_secs_f64()
    );

    // Warm up (the first evaluation compiles and allocates).
    gp.nll_seeded(1000)?;
    let mut results: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); methods.len()];
    let bar = report::progress((seeds * methods.len()) as u64, "evaluations");
    for seed in 0..seeds as u64 {
        for (m, &name) in methods.iter().enumerate() {
            gp.settings = method(name, &settings);
            let start = Instant::now();
            let (_, rep) = gp.nll_seeded(seed)?;
            let secs = device::elapsed(&dev, start)?;
            results[m].push((rep.nll, rep.logdet_std_error / 2.0, secs));
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    println!(
        "\n{:<12} {:>6} {:>10} {:>8} {:>10} {:>9} {:>7} {:>9}",
        "method", "seeds", "mean NLL", "sd", "mean|err|", "mean se", "max|z|", "s/eval"
    );
    for (m, name) in methods.iter().map(|m| m.name()).enumerate() {
        let v: Vec<f64> = results[m].iter().map(|r| r.0).collect();
        let (mu, sd) = mean_sd(&v);
        let err = v.iter().map(|x| (x - exact).abs()).sum::<f64>() / v.len() as f64;
        let se = results[m].iter().map(|r| r.1).sum::<f64>() / v.len() as f64;
        let z = results[m]
            .iter()
            .map(|r| ((r.0 - exact) / r.1).abs())
            .fold(0.0, f64::max);
        let secs = results[m].iter().map(|r| r.2).sum::<f64>() / v.len() as f64;
        println!(
            "{name:<12} {:>6} {mu:>10.2} {sd:>8.2} {err:>10.2} {se:>9.2} {z:>7.2} {secs:>9.3}",
            v.len()
        );
        println!(
            "  bias {:+.2} = {:+.2} standard errors of the mean",
            mu - exact,
            (mu - exact) / (sd / (v.len() as f64).sqrt())
        );
    }
    Ok(())
}
