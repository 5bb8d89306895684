//! The Mauna Loa CO2 record fitted with the composite kernel of Rasmussen & Williams,
//! "Gaussian Processes for Machine Learning" (2006), section 5.4.3, eq. 5.15-5.19, every
//! hyperparameter learned by maximising the marginal likelihood ([`ExactGp::fit`]), then a
//! forecast to 2025 with its 95% band.
//!
//! ```text
//! cargo run --release --example mauna_loa -- [--every K] [--monthly] [--steps S] [--out DIR]
//!     [--lr LR] [--method auto|exact|stochastic] [--stop S] [--rank R] [--probes P] [--tol T]
//!     [--data CSV] [--device D]
//! ```
//!
//! `--device cpu|cuda|cuda:N` (default `cpu`): where the data live and the fit runs. `--help`
//! lists the options. (No `--dtype`: the model is `f64`, which the ill-conditioned kernel
//! matrix of these data needs.)
//!
//! The data (`examples/data/mauna_loa_co2_weekly.csv`, see `examples/data/README.md`; without
//! `--data` the file is looked for in `$LK_DATA_DIR`, then in `examples/data/` under the
//! current directory, then in this crate's `examples/data/`, so that a binary copied to another
//! host finds it too): weekly
//! CO2 concentrations (ppm) from March 1958 to December 2001, 2,225 weeks with a value, dates
//! converted to decimal years. By default every week is a training point; `--every K` keeps
//! one point in K; `--monthly` trains on the monthly means instead (521 months, dated mid-month),
//! data like those of Rasmussen & Williams, whose published values it then comes close to.
//!
//! The kernel (`r = x - x'` in years; see `examples/mauna_loa_model/mod.rs`):
//!
//! ```text
//! k1 = th1^2 exp(-r^2 / (2 th2^2))                                   long-term trend
//! k2 = th3^2 exp(-r^2 / (2 th4^2) - 2 sin^2(pi r) / th5^2)           yearly cycle, decaying
//! k3 = th6^2 (1 + r^2 / (2 th8 th7^2))^(-th8)                        medium-term irregularities
//! k4 = th9^2 exp(-r^2 / (2 th10^2)) + th11^2 delta(r)                correlated and white noise
//! ```
//!
//! with a learned constant mean (it starts at the data mean). Each of `th1..th10` is a
//! [`Positive`](lazy_kernels::gp::Positive) with the exp transform, `th = exp(raw)`, so that
//! every hyperparameter moves by a similar relative step whatever its units; the noise variance
//! `th11^2` is a softplus one. The start is that of scikit-learn's Mauna Loa example.
//!
//! The fit maximises the marginal likelihood. By default (`--method auto`) it runs on the
//! exact path for these sizes (the dense kernel matrix and a blocked Cholesky factorisation
//! on the device, [`NllMethod::Exact`]): the NLL and its gradient are then exact, and the fit
//! is L-BFGS ([`Optimizer::Lbfgs`], history 10, first step at most `--lr` in the raw
//! values), stopped when 5 iterations in a row each improve the NLL per point by at most
//! `--stop` (default `1e-6`), or after `--steps` evaluations (default 300).
//! `--method stochastic` trains on the estimate instead (CG and stochastic Lanczos
//! quadrature, 16 probes, a pivoted-Cholesky preconditioner of rank `min(600, N/2)`) by
//! AdamW, with no early stop: `--steps` steps, the last sixth at a tenth of `--lr` (default
//! 0.1).
//!
//! Printed after the fit: the learned values beside scikit-learn's optimum for the weekly data
//! and Rasmussen & Williams' published values; the exact NLL (dense Cholesky) at each of the
//! three; the stochastic estimate at the learned values, with its standard error, beside the
//! exact value. Figures (`--out`, default `figures/`): `DIR/mauna_loa.png` (1958-2025) and
//! `DIR/mauna_loa_zoom.png` (1995-2025): data (black), posterior mean (red), 95% interval of a
//! new observation (blue), and a dashed line where the data end and the forecast starts, with
//! a title, labelled axes and a legend.

#[path = "device/mod.rs"]
mod device;
#[path = "figure/mod.rs"]
mod figure;
#[path = "mauna_loa_model/mod.rs"]
mod mauna_loa_model;

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor};
use clap::Parser;
use lazy_kernels::gp::{
    ExactGp, FitOptions, GpSettings, NllMethod, NllReport, Optimizer, Variances,
};
use lazy_kernels::{Preconditioner, Rank};
use mauna_loa_model::{PUBLISHED, SKLEARN, SKLEARN_NLL, START};
use plotters::prelude::*;

/// The Mauna Loa CO2 record fitted with Rasmussen & Williams' composite kernel (GPML section
/// 5.4.3), every hyperparameter learned by maximising the marginal likelihood, then a forecast
/// to 2025 with its 95% band, drawn.
#[derive(Parser)]
#[command(name = "mauna_loa")]
struct Cli {
    /// Keep one training point in K (of the weeks, or of the months with --monthly).
    #[arg(long, value_name = "K", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    every: u32,
    /// Train on the monthly means (521 months, dated mid-month) instead of the weekly values.
    #[arg(long)]
    monthly: bool,
    /// At most this many NLL evaluations (L-BFGS) or steps (AdamW).
    #[arg(long, value_name = "S", default_value_t = 300)]
    steps: usize,
    /// Folder the two figures are written to (created if missing).
    #[arg(long, value_name = "DIR", default_value = "figures")]
    out: PathBuf,
    /// Learning rate: L-BFGS's largest first step in the raw values, or AdamW's rate (its
    /// last sixth of the steps at a tenth of it).
    #[arg(long, value_name = "LR", default_value_t = 0.1, value_parser = positive)]
    lr: f64,
    /// How the NLL is computed while training.
    #[arg(long, value_enum, default_value_t = Method::Auto)]
    method: Method,
    /// L-BFGS stops when 5 iterations in a row each improve the NLL per point by at most this.
    #[arg(long, value_name = "S", default_value_t = 1e-6, value_parser = non_negative)]
    stop: f64,
    /// Rank of the pivoted-Cholesky preconditioner (stochastic path; default min(600, N/2)).
    #[arg(long, value_name = "R")]
    rank: Option<usize>,
    /// Random probes of the stochastic NLL estimate.
    #[arg(long, value_name = "P", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    probes: u32,
    /// Relative tolerance of the CG solves while training (stochastic path).
    #[arg(long, value_name = "T", default_value_t = 1e-3, value_parser = positive)]
    tol: f64,
    /// The CO2 data file (`date,co2` rows); by default mauna_loa_co2_weekly.csv in
    /// $LK_DATA_DIR, ./examples/data or this crate's examples/data.
    #[arg(long, value_name = "CSV")]
    data: Option<PathBuf>,
    #[command(flatten)]
    device: device::DeviceArg,
}

/// `--method`: how the NLL is computed while training.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Method {
    /// `exact` at these sizes (`NllMethod::Auto`).
    Auto,
    /// The dense kernel matrix and its Cholesky factorisation; the fit is L-BFGS.
    Exact,
    /// CG and stochastic Lanczos quadrature; the fit is AdamW.
    Stochastic,
}

/// A finite number > 0.
fn positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a finite number > 0")),
    }
}

/// A finite number >= 0.
fn non_negative(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a finite number >= 0")),
    }
}

impl Method {
    fn nll_method(self) -> NllMethod {
        match self {
            Method::Auto => NllMethod::Auto,
            Method::Exact => NllMethod::Exact,
            Method::Stochastic => NllMethod::Stochastic,
        }
    }
}

/// `values` (th1..th10, then the noise variance) put into the model.
fn set_values(gp: &ExactGp, values: &[f64; 11]) -> candle_core::Result<()> {
    for (h, v) in gp.hypers().iter().zip(values) {
        h.set(&[*v])?;
    }
    gp.noise().set(&[values[10]])
}

/// The model's th1..th10 and noise variance.
fn get_values(gp: &ExactGp) -> candle_core::Result<[f64; 11]> {
    let mut v = [0.0; 11];
    for (slot, h) in v.iter_mut().zip(gp.hypers()) {
        *slot = h.values()?[0];
    }
    v[10] = gp.noise().values()?[0];
    Ok(v)
}

/// The NLL by `method` at the model's current values, with the seconds it took.
fn nll_by(gp: &mut ExactGp, method: NllMethod) -> candle_core::Result<(NllReport, f64)> {
    let keep = gp.settings.nll_method;
    gp.settings.nll_method = method;
    let start = Instant::now();
    let out = gp.nll();
    gp.settings.nll_method = keep;
    Ok((out?.1, start.elapsed().as_secs_f64()))
}

fn main() -> candle_core::Result<()> {
    let cli = Cli::parse();
    let dev = cli.device.open();
    let (every, steps, monthly, lr) = (cli.every as usize, cli.steps, cli.monthly, cli.lr);
    let (method, stop, tol) = (cli.method.nll_method(), cli.stop, cli.tol);
    let probes = cli.probes as usize;
    let out_dir = cli.out.clone();
    let data = match cli.data.clone() {
        Some(path) => path,
        None => mauna_loa_model::find_data().unwrap_or_else(|e| device::fail(&e.to_string(), 1)),
    };
    std::fs::create_dir_all(&out_dir)?;
    let cpu = Device::Cpu;
    if !dev.is_cpu() {
        println!("device: {}", device::describe(&dev));
    }

    // ---------------------------------------------------------------- data
    let rows = mauna_loa_model::read_co2(&data)?;
    if rows.is_empty() {
        return Err(std::io::Error::other(format!("{}: no data", data.display())).into());
    }
    let (kept, what): (Vec<(f64, f64)>, String) = if monthly {
        let m = mauna_loa_model::monthly_means(&rows);
        let kept: Vec<(f64, f64)> = m.iter().step_by(every).cloned().collect();
        let what = format!(
            "the means of the {} months with data{}",
            m.len(),
            if every > 1 {
                format!(", one in {every}")
            } else {
                String::new()
            }
        );
        (kept, what)
    } else {
        let kept = rows.iter().step_by(every).map(|r| (r.2, r.3)).collect();
        let what = if every > 1 {
            format!("one week in {every}")
        } else {
            "every week".to_string()
        };
        (kept, what)
    };
    // scikit-learn's optimum is that of the weekly data, every week.
    let weekly = !monthly && every == 1;
    let n = kept.len();
    let xs: Vec<f64> = kept.iter().map(|p| p.0).collect();
    let ys: Vec<f64> = kept.iter().map(|p| p.1).collect();
    println!(
        "{}: {} weeks with a value, {:.2} to {:.2}; training on {n} points: {what}",
        data.display(),
        rows.len(),
        rows[0].2,
        rows[rows.len() - 1].2,
    );
    let x = Tensor::from_vec(xs.clone(), (n, 1), &cpu)?.to_device(&dev)?;
    let y = Tensor::from_vec(ys.clone(), n, &cpu)?.to_device(&dev)?;

    // ---------------------------------------------------------------- model
    let mut start = START;
    start[10] = START[10] * START[10];
    let (gp, _) = mauna_loa_model::model(&x, &y, &start, &dev)?;
    // A preconditioner of rank N would be a dense Cholesky factorisation: by default at most
    // half the points. Measured on the first 20 steps with the 2,225 weekly points: rank 100
    // takes 11 to 23 CG iterations per step, 300 takes 5 to 9, 600 takes 1 to 6 and is the
    // fastest per step; with the 521 monthly means, 200 beats 50 and 521.
    let rank = cli.rank.unwrap_or(600.min(n / 2)).min(n);
    let settings = GpSettings {
        nll_method: method,
        train_tol: tol,
        predict_tol: 1e-6,
        probes,
        preconditioner: Preconditioner::PivotedCholesky(Rank::Fixed(rank)),
        max_iters: 2000,
        predict_chunk: 256,
        // Exact variances: from the dense factor on the exact path (1 s for the forecast, where
        // LOVE needs a rank near its cap on this kernel and took 115 s), batched CG solves on
        // the stochastic one.
        variances: Variances::Exact,
        ..GpSettings::default()
    };
    let mut gp = gp.with_settings(settings);
    let path = gp.nll_method()?;
    match path {
        NllMethod::Exact => println!(
            "NLL: exact (dense Cholesky on {}, --method {method:?}); early stop below {stop:e} \
             per point over 5 steps",
            device::describe(&dev)
        ),
        _ => println!(
            "NLL: stochastic estimate: CG tolerance {tol:e}, {probes} probes, pivoted-Cholesky \
             preconditioner of rank {rank}, noise floor {:e}; no early stop",
            gp.settings.noise_floor
        ),
    }

    // ---------------------------------------------------------------- fit
    // The exact NLL is deterministic: L-BFGS, stopped when it no longer improves. The
    // estimate changes with the probes at every step: AdamW, no early stop, the last sixth of
    // the steps at a tenth of the rate.
    let exact_fit = path == NllMethod::Exact;
    let phases: Vec<FitOptions> = if exact_fit {
        println!("fitting: L-BFGS (history 10), at most {steps} evaluations");
        vec![FitOptions {
            optimizer: Optimizer::Lbfgs { history: 10 },
            steps,
            lr,
            tol: stop,
            ..FitOptions::default()
        }]
    } else {
        let tail = steps / 6;
        println!(
            "fitting: AdamW, {} steps at lr {lr}, then {tail} at {}",
            steps - tail,
            lr / 10.0
        );
        [(steps - tail, lr), (tail, lr / 10.0)]
            .iter()
            .filter(|p| p.0 > 0)
            .map(|&(steps, lr)| FitOptions {
                steps,
                lr,
                tol: 0.0,
                ..FitOptions::default()
            })
            .collect()
    };
    let mut trajectory = Vec::new();
    let mut seconds = 0.0;
    let mut stopped = false;
    let mut best = None;
    for opts in &phases {
        let report = gp.fit(opts)?;
        seconds += report.seconds;
        let offset = trajectory.len();
        best = report.best_step.map(|b| b + offset);
        trajectory.extend(report.trajectory.into_iter().map(|mut st| {
            st.step += offset;
            st
        }));
        stopped = report.stopped_early;
    }
    let head: Vec<String> = (1..=11).map(|i| format!("th{i}")).collect();
    println!(
        "{:>4} {:>9} {}  {:>7} {:>9}",
        "step",
        "NLL/N",
        head.iter()
            .map(|h| format!("{h:>8}"))
            .collect::<Vec<_>>()
            .join(""),
        "mean",
        "CG its"
    );
    let last = trajectory.len().saturating_sub(1);
    for st in &trajectory {
        if st.step % 20 != 0 && st.step != last {
            continue;
        }
        let mut row = String::new();
        for (_, v) in st.values.iter().take(10) {
            row += &format!("{:>8.3}", v[0]);
        }
        row += &format!("{:>8.3}", st.values[10].1[0].sqrt());
        println!(
            "{:>4} {:>9.5} {row}  {:>7.2} {:>9}",
            st.step,
            st.report.nll / n as f64,
            st.values[11].1[0],
            format!("{}/{}", st.report.iterations.0, st.report.iterations.1),
        );
    }
    println!(
        "{} steps in {seconds:.1}s ({:.3}s per step){}; the model keeps step {}'s values",
        trajectory.len(),
        seconds / trajectory.len().max(1) as f64,
        if stopped { ", stopped early" } else { "" },
        best.map_or("none".to_string(), |b: usize| b.to_string()),
    );

    // ---------------------------------------------------------------- learned vs references
    let learned = get_values(&gp)?;
    let mut published = [0.0; 11];
    for (p, v) in published.iter_mut().zip(PUBLISHED) {
        *p = v.2;
    }
    published[10] *= published[10];
    let sd = |v: &[f64; 11], i: usize| if i == 10 { v[10].sqrt() } else { v[i] };
    println!(
        "\n{:>5} {:>10} {:>10} {:>12} {:>10}  unit",
        "", "start", "learned", "scikit-learn", "R&W 2006"
    );
    for (i, (name, unit, _)) in PUBLISHED.iter().enumerate() {
        let sk = if weekly {
            format!("{:>12.4}", sd(&SKLEARN, i))
        } else {
            format!("{:>12}", "-")
        };
        let unit = if i == 10 { "ppm (noise sd)" } else { unit };
        println!(
            "{name:>5} {:>10.4} {:>10.4} {sk} {:>10.4}  {unit}",
            sd(&start, i),
            sd(&learned, i),
            sd(&published, i),
        );
    }
    let mean = gp.mean().as_tensor().to_vec1::<f64>()?[0];
    println!(
        "constant mean {mean:.3} ppm (learned; kept for R&W's values; the data mean for \
         scikit-learn's, which fitted y - mean(y))"
    );
    if !weekly {
        println!("(scikit-learn's optimum is that of every week of the weekly data: not shown)");
    }
    let (exact, t_exact) = nll_by(&mut gp, NllMethod::Exact)?;
    let (estimate, t_estimate) = nll_by(&mut gp, NllMethod::Stochastic)?;
    println!(
        "NLL at the learned values: exact {:.3} ({:.5} per point, dense Cholesky, {t_exact:.2}s); \
         stochastic estimate {:.3} +- {:.3} (standard error; {probes} probes, {t_estimate:.2}s)",
        exact.nll,
        exact.nll / n as f64,
        estimate.nll,
        estimate.logdet_std_error / 2.0,
    );
    let mut others = Vec::new();
    if weekly {
        // scikit-learn fitted y - mean(y): its constant mean is the data mean.
        let learned_mean = gp.mean().as_tensor().copy()?;
        let data_mean = ys.iter().sum::<f64>() / n as f64;
        gp.mean().set(&Tensor::new(&[data_mean], &dev)?)?;
        set_values(&gp, &SKLEARN)?;
        others.push((
            "scikit-learn's optimum",
            nll_by(&mut gp, NllMethod::Exact)?.0.nll,
        ));
        gp.mean().set(&learned_mean)?;
    }
    set_values(&gp, &published)?;
    others.push((
        "R&W's published values",
        nll_by(&mut gp, NllMethod::Exact)?.0.nll,
    ));
    set_values(&gp, &learned)?;
    for (what, v) in others {
        println!(
            "exact NLL at {what}: {v:.3} ({:.5} per point)",
            v / n as f64
        );
    }
    if weekly {
        println!(
            "learned vs scikit-learn's fit (-log p = {SKLEARN_NLL}): {:+.3} nats ({:+.3}%); \
             fit time {seconds:.1}s",
            exact.nll - SKLEARN_NLL,
            100.0 * (exact.nll - SKLEARN_NLL) / SKLEARN_NLL
        );
        // On the exact path every step's NLL is exact: when the fit came within 0.5%.
        let within = SKLEARN_NLL * 1.005;
        if let (true, Some(st)) = (
            exact_fit,
            trajectory.iter().find(|st| st.report.nll <= within),
        ) {
            println!(
                "within 0.5% of scikit-learn's optimum (exact NLL <= {within:.2}) from step {} \
                 ({:.3}), {:.1}s into the fit",
                st.step, st.report.nll, st.seconds
            );
        }
    }

    // ---------------------------------------------------------------- forecast
    let (g0, g1) = (1958.0, 2025.0);
    let months = ((g1 - g0) * 12.0) as usize;
    let grid: Vec<f64> = (0..=months).map(|m| g0 + m as f64 / 12.0).collect();
    let start = Instant::now();
    let t_grid = Tensor::from_vec(grid.clone(), grid.len(), &cpu)?.to_device(&dev)?;
    let pred = gp.predict(&t_grid)?;
    let (lo, hi) = pred.interval()?;
    let host = |t: &Tensor| t.to_device(&cpu)?.to_vec1::<f64>();
    let (mu, lo, hi) = (host(&pred.mean)?, host(&lo)?, host(&hi)?);
    println!(
        "forecast on {} monthly points, {g0} to {g1}: {:.1}s",
        grid.len(),
        device::elapsed(&dev, start)?
    );
    for year in [2002.0, 2010.0, 2020.0, 2025.0] {
        let k = (((year - g0) * 12.0) as usize).min(grid.len() - 1);
        println!(
            "  {year:.0}-01: {:.1} ppm, 95% interval [{:.1}, {:.1}]",
            mu[k], lo[k], hi[k]
        );
    }

    // ---------------------------------------------------------------- figures
    let how = if exact_fit {
        format!("L-BFGS on the exact NLL ({:.2} at the end)", exact.nll)
    } else {
        format!(
            "AdamW on the stochastic NLL (exact {:.2} at the end)",
            exact.nll
        )
    };
    let curves = Curves {
        xs: &xs,
        ys: &ys,
        grid: &grid,
        mean: &mu,
        lo: &lo,
        hi: &hi,
        data: format!(
            "data: {} {}{}",
            figure::thousands(n),
            if monthly {
                "monthly means"
            } else {
                "weekly values"
            },
            if every > 1 {
                format!(" (one in {every})")
            } else {
                String::new()
            }
        ),
        fit: format!(
            "Rasmussen & Williams' kernel, 11 hyperparameters and the mean learned by {how}"
        ),
    };
    for (name, window) in [
        ("mauna_loa.png", (g0, g1)),
        ("mauna_loa_zoom.png", (1995.0, g1)),
    ] {
        let path = out_dir.join(name);
        curves.draw(&path, window)?;
        println!(
            "wrote {} ({:.0} to {:.0})",
            path.display(),
            window.0,
            window.1
        );
    }
    Ok(())
}

/// `Dec 2001`: the month a decimal year falls in.
fn month(year: f64) -> String {
    const NAMES: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let y = year.floor();
    let m = (((year - y) * 12.0).floor() as usize).min(11);
    format!("{} {y:.0}", NAMES[m])
}

/// The data and the posterior on the forecast grid, for the figures.
struct Curves<'a> {
    xs: &'a [f64],
    ys: &'a [f64],
    grid: &'a [f64],
    mean: &'a [f64],
    lo: &'a [f64],
    hi: &'a [f64],
    /// The legend's entry for the data.
    data: String,
    /// The line under the title: the model and the fit.
    fit: String,
}

impl Curves<'_> {
    /// Data (black), 95% band (blue) and posterior mean (red) over the years `window`, with the
    /// y range fitted to what lies in it, and a dashed line where the data end.
    fn draw(&self, path: &std::path::Path, window: (f64, f64)) -> std::io::Result<()> {
        let inside = |x: &f64| (window.0..=window.1).contains(x);
        let (mut y0, mut y1) = (f64::MAX, f64::MIN);
        for (x, (l, h)) in self.grid.iter().zip(self.lo.iter().zip(self.hi)) {
            if inside(x) {
                (y0, y1) = (y0.min(*l), y1.max(*h));
            }
        }
        for (x, y) in self.xs.iter().zip(self.ys) {
            if inside(x) {
                (y0, y1) = (y0.min(*y), y1.max(*y));
            }
        }
        // Whole ppm, with room above for the legend.
        let (y0, y1) = ((y0 - 0.5).floor(), (y1 + 0.5).ceil());
        let y1 = y1 + 0.3 * (y1 - y0);
        let zoom = window.1 - window.0 < 40.0;
        let forecast_start = self.xs.iter().cloned().fold(f64::MIN, f64::max);
        // Only what lies in the window: plotters does not clip to the plotting area.
        let keep = |k: &usize| inside(&self.grid[*k]);
        let idx: Vec<usize> = (0..self.grid.len()).filter(keep).collect();
        let pick = |v: &[f64]| idx.iter().map(|&k| v[k]).collect::<Vec<f64>>();
        let (gx, mean, lo, hi) = (
            pick(self.grid),
            pick(self.mean),
            pick(self.lo),
            pick(self.hi),
        );
        let title = format!(
            "Mauna Loa CO\u{2082}: Gaussian-process fit and forecast, {:.0}\u{2013}{:.0}",
            window.0, window.1
        );
        figure::save_png(path, (1100, 640), |root| {
            let area = figure::titled(root, &title, Some(&self.fit))?;
            let mut chart =
                figure::chart(&area, window.0..window.1, y0..y1, figure::Layout::default())?;
            figure::axes(&mut chart, "year", "CO\u{2082} (ppm)", (0, 0), true)?;
            chart
                .draw_series(std::iter::once(figure::band(
                    &gx,
                    &lo,
                    &hi,
                    figure::BLUE,
                    0.3,
                )))?
                .label("95% interval of a new observation")
                .legend(figure::box_key(figure::BLUE, 0.3));
            chart
                .draw_series(LineSeries::new(
                    gx.iter().zip(&mean).map(|(&x, &y)| (x, y)),
                    figure::RED.stroke_width(if zoom { 2 } else { 1 }),
                ))?
                .label("posterior mean")
                .legend(figure::line_key(figure::RED, 2));
            let style = BLACK.filled();
            let points = self.xs.iter().zip(self.ys).map(|(&x, &y)| ((x, y), style));
            figure::dots(&chart, points, if zoom { 4 } else { 2 })?;
            figure::legend_entry(
                &mut chart,
                self.data.as_str(),
                figure::point_key(BLACK, 1.0, 3),
            )?;
            if inside(&forecast_start) {
                let line = DashedLineSeries::new(
                    [(forecast_start, y0), (forecast_start, y1)],
                    8,
                    5,
                    figure::GRAY.stroke_width(2),
                );
                chart
                    .draw_series(line)?
                    .label(format!(
                        "forecast from the last data point ({})",
                        month(forecast_start)
                    ))
                    .legend(|(x, y)| {
                        let dash = |a: i32, b: i32| {
                            PathElement::new(vec![(a, 0), (b, 0)], figure::GRAY.stroke_width(2))
                        };
                        EmptyElement::at((x, y)) + dash(0, 8) + dash(14, 22)
                    });
                let label = figure::text(figure::LEGEND_SIZE).color(&figure::GRAY).pos(
                    plotters::style::text_anchor::Pos::new(
                        plotters::style::text_anchor::HPos::Left,
                        plotters::style::text_anchor::VPos::Bottom,
                    ),
                );
                chart.draw_series(std::iter::once(Text::new(
                    "forecast \u{2192}",
                    (
                        forecast_start + 0.01 * (window.1 - window.0),
                        y0 + 0.02 * (y1 - y0),
                    ),
                    label,
                )))?;
            }
            figure::legend(&mut chart, SeriesLabelPosition::UpperLeft)
        })
    }
}
