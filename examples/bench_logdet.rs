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
//! The settings are `GpSettings::default()` unless changed by the arguments. The estimators
//! alternate seed by seed (A, B, A, B, ...), so that a change of the machine's speed during the
//! run affects both alike. Printed per estimator: the mean of the NLL over the seeds, its
//! standard deviation, the mean of `|NLL - exact|`, the mean reported standard error, the
//! largest `|z|` (error over reported standard error) and the time per evaluation.

#[path = "device/mod.rs"]
mod device;
#[path = "mauna_loa_model/mod.rs"]
mod mauna_loa_model;

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor};
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

/// The settings of an estimator: `before` (the solve's preconditioner for the probes, which
/// stop at the CG tolerance), `after` (the diagonal correction with the quadrature stop),
/// `block` (the block correction with the quadrature stop), `corrected` (the diagonal
/// correction alone), `quadrature` (the quadrature stop alone).
fn method(name: &str, base: &GpSettings) -> GpSettings {
    let (estimator, quadrature_tol) = match name {
        "before" => (LogdetEstimator::Hutchinson, 0.0),
        "after" => (LogdetEstimator::DiagonalCorrected, base.quadrature_tol),
        "corrected" => (LogdetEstimator::DiagonalCorrected, 0.0),
        "block" => (LogdetEstimator::BlockCorrected, base.quadrature_tol),
        "quadrature" => (LogdetEstimator::Hutchinson, base.quadrature_tol),
        s => panic!("unknown method {s:?} (before, after, block, corrected, quadrature)"),
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
    let (dev, args) = device::from_args();
    let mut seeds = 10u64;
    let mut methods = vec![
        "before".to_string(),
        "after".to_string(),
        "block".to_string(),
    ];
    // The stochastic path, forced: at this size `NllMethod::Auto` would take the exact one.
    let mut settings = GpSettings {
        nll_method: NllMethod::Stochastic,
        ..GpSettings::default()
    };
    let mut every = 1usize;
    let mut point = SKLEARN;
    let mut data: Option<PathBuf> = None;
    let mut args = args.into_iter();
    while let Some(a) = args.next() {
        let mut next = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--seeds" => seeds = next().parse().expect("--seeds S: a number"),
            "--methods" => methods = next().split(',').map(str::to_string).collect(),
            "--rank" => {
                let v = next();
                settings.preconditioner = if v == "auto" {
                    Preconditioner::default()
                } else {
                    Preconditioner::PivotedCholesky(Rank::Fixed(
                        v.parse().expect("--rank R: a number or auto"),
                    ))
                }
            }
            "--probes" => settings.probes = next().parse().expect("--probes P: a number"),
            "--tol" => settings.train_tol = next().parse().expect("--tol T: a number"),
            "--qtol" => settings.quadrature_tol = next().parse().expect("--qtol Q: a number"),
            "--every" => every = next().parse().expect("--every K: a number"),
            "--data" => data = Some(next().into()),
            "--point" => {
                point = match next().as_str() {
                    "sklearn" => SKLEARN,
                    "learned" => LEARNED,
                    p => panic!("--point sklearn|learned, got {p}"),
                }
            }
            s => panic!("unknown argument {s:?}"),
        }
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
    for seed in 0..seeds {
        for (m, name) in methods.iter().enumerate() {
            gp.settings = method(name, &settings);
            let start = Instant::now();
            let (_, rep) = gp.nll_seeded(seed)?;
            let secs = device::elapsed(&dev, start)?;
            results[m].push((rep.nll, rep.logdet_std_error / 2.0, secs));
        }
    }
    println!(
        "\n{:<12} {:>6} {:>10} {:>8} {:>10} {:>9} {:>7} {:>9}",
        "method", "seeds", "mean NLL", "sd", "mean|err|", "mean se", "max|z|", "s/eval"
    );
    for (m, name) in methods.iter().enumerate() {
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
