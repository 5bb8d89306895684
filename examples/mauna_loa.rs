//! The Mauna Loa CO2 record fitted with the composite kernel of Rasmussen & Williams,
//! "Gaussian Processes for Machine Learning" (2006), section 5.4.3, eq. 5.15-5.19, every
//! hyperparameter learned by maximising the marginal likelihood ([`ExactGp::fit`]), then a
//! forecast to 2025 with its 95% band.
//!
//! ```text
//! cargo run --release --example mauna_loa -- [--every K] [--monthly] [--steps S] [--out DIR]
//!     [--lr LR] [--rank R] [--probes P] [--tol T] [--data CSV] [--device D]
//! ```
//!
//! `--device cpu|cuda|cuda:N` (default `cpu`): where the data live and the fit runs.
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
//! The kernel, with `r = x - x'` in years:
//!
//! ```text
//! k1 = th1^2 exp(-r^2 / (2 th2^2))                                   long-term trend
//! k2 = th3^2 exp(-r^2 / (2 th4^2) - 2 sin^2(pi r) / th5^2)           yearly cycle, decaying
//! k3 = th6^2 (1 + r^2 / (2 th8 th7^2))^(-th8)                        medium-term irregularities
//! k4 = th9^2 exp(-r^2 / (2 th10^2)) + th11^2 delta(r)                correlated and white noise
//! ```
//!
//! built from the crate's kernels: `k1 = gaussian(th2).scale(th1^2)`,
//! `k2 = (gaussian(th4) * periodic(th5, 1)).scale(th3^2)` (the period is a fixed tensor, 1
//! year), `k3 = rational_quadratic(th7, th8).scale(th6^2)` (the crate's
//! `(1 + r^2 / (2 alpha l^2))^(-alpha)` is eq. 5.17 with `l = th7`, `alpha = th8`),
//! `k4 = gaussian(th10).scale(th9^2)`, and the GP's noise variance `th11^2`. The constant mean
//! of the GP is learned too (it starts at the data mean).
//!
//! Each of `th1..th10` is a [`Positive`] with the [`Transform::Exp`] transform,
//! `th = exp(raw)`, so that every hyperparameter moves by a similar relative step whatever its
//! units (with softplus, AdamW's steps of about `lr` on `raw` would move `th1 = 50 ppm` by about
//! `lr` ppm per step, and take hundreds of steps); the noise variance `th11^2` is a softplus
//! [`Positive`]. The start is that of scikit-learn's Mauna Loa example.
//!
//! Defaults: 150 AdamW steps of learning rate 0.1, training CG tolerance `1e-3`, 16 probes, a
//! pivoted-Cholesky preconditioner of rank `min(600, N/2)`. After the fit the NLL is also
//! computed exactly (dense Cholesky, `O(N^3)`, a few seconds at N = 2,225) at the learned and at
//! the published values. Figures: `DIR/mauna_loa.png` (1958-2025) and `DIR/mauna_loa_zoom.png`
//! (1995-2025): data (black), posterior mean (red), 95% interval of a new observation (blue).

#[path = "dense/mod.rs"]
mod dense;
#[path = "device/mod.rs"]
mod device;
#[path = "plot/mod.rs"]
mod plot;

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use lazy_kernels::gp::{ExactGp, FitOptions, GpSettings, Positive, Transform};
use lazy_kernels::{Kernel, Preconditioner, Rank};

/// A hyperparameter of eq. 5.15-5.18 (not the noise).
struct Hyper {
    name: &'static str,
    unit: &'static str,
    /// Rasmussen & Williams' value (Section 5.4.3).
    published: f64,
    /// Where the fit starts.
    start: f64,
    /// The learned value.
    value: Positive,
}

impl Hyper {
    fn current(&self) -> candle_core::Result<f64> {
        Ok(self.value.values()?[0])
    }
}

/// Published values: Rasmussen & Williams (2006), section 5.4.3 (th10 = 1.6 months).
const PUBLISHED: [(&str, &str, f64); 11] = [
    ("th1", "ppm", 66.0),
    ("th2", "yr", 67.0),
    ("th3", "ppm", 2.4),
    ("th4", "yr", 90.0),
    ("th5", "", 1.3),
    ("th6", "ppm", 0.66),
    ("th7", "yr", 1.2),
    ("th8", "", 0.78),
    ("th9", "ppm", 0.18),
    ("th10", "yr", 1.6 / 12.0),
    ("th11", "ppm", 0.19),
];

/// The starting point of the fit, th1..th11 (the initial kernel of scikit-learn's Mauna Loa
/// example: `50^2 RBF(50) + 2^2 RBF(100) ExpSineSquared(1, 1) + 0.5^2 RQ(1, 1)
/// + 0.1^2 RBF(0.1) + White(0.1^2)`).
const START: [f64; 11] = [50.0, 50.0, 2.0, 100.0, 1.0, 0.5, 1.0, 1.0, 0.1, 0.1, 0.1];

/// `YYYYMMDD` as a decimal year: `year + (day of the year - 1) / days in the year`.
fn decimal_year(date: &str) -> Option<f64> {
    if date.len() != 8 {
        return None;
    }
    let year: i32 = date[0..4].parse().ok()?;
    let month: usize = date[4..6].parse().ok()?;
    let day: u32 = date[6..8].parse().ok()?;
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let mut days = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if leap {
        days[1] = 29;
    }
    if !(1..=12).contains(&month) || day == 0 || day > days[month - 1] {
        return None;
    }
    let before: u32 = days[..month - 1].iter().sum();
    let in_year = if leap { 366.0 } else { 365.0 };
    Some(year as f64 + (before + day - 1) as f64 / in_year)
}

/// A row of the data: year, month, the date as a decimal year, CO2 in ppm.
type Row = (i32, usize, f64, f64);

/// The rows of the CSV (`date,co2`, a header line) that have a value.
fn read_co2(path: &std::path::Path) -> std::io::Result<Vec<Row>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let mut out = Vec::new();
    for (k, line) in text.lines().enumerate().skip(1) {
        let mut fields = line.trim().split(',');
        let (date, co2) = (fields.next().unwrap_or(""), fields.next().unwrap_or(""));
        if co2.trim().is_empty() {
            continue; // a missing week
        }
        let bad = || std::io::Error::other(format!("{}:{}: bad row {line:?}", path.display(), k));
        let x = decimal_year(date.trim()).ok_or_else(bad)?;
        let y: f64 = co2.trim().parse().map_err(|_| bad())?;
        let (year, month) = (
            date[0..4].parse().unwrap_or(0),
            date[4..6].parse().unwrap_or(0),
        );
        out.push((year, month, x, y));
    }
    Ok(out)
}

/// The mean of the weekly values of each calendar month that has any, dated at mid-month.
fn monthly_means(rows: &[Row]) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = Vec::new();
    let mut k = 0;
    while k < rows.len() {
        let (year, month) = (rows[k].0, rows[k].1);
        let same = rows[k..]
            .iter()
            .take_while(|r| (r.0, r.1) == (year, month))
            .count();
        let mean = rows[k..k + same].iter().map(|r| r.3).sum::<f64>() / same as f64;
        out.push((year as f64 + (month as f64 - 0.5) / 12.0, mean));
        k += same;
    }
    out
}

/// The exact NLL of the model at its current values (the dense kernel matrix, `O(N^2)` memory,
/// built on the model's device, factored on the CPU).
fn exact_nll(gp: &ExactGp, ys: &[f64]) -> candle_core::Result<f64> {
    let n = ys.len();
    let noise = gp.noise().values()?[0] + gp.settings.noise_floor;
    let k = gp.operator()?.to_dense()?;
    let k = (&k + Tensor::eye(n, DType::F64, k.device())?.affine(noise, 0.0)?)?;
    let mean = gp.mean().as_tensor().to_vec1::<f64>()?[0];
    let r: Vec<f64> = ys.iter().map(|v| v - mean).collect();
    let k = k.flatten_all()?.to_device(&Device::Cpu)?.to_vec1::<f64>()?;
    Ok(dense::dense_nll(k, &r))
}

/// The data file's name in `examples/data/`.
const DATA_FILE: &str = "mauna_loa_co2_weekly.csv";

/// Where the data file is when `--data` does not say: `$LK_DATA_DIR/FILE`, then
/// `examples/data/FILE` under the current directory, then under this crate's directory (where
/// it was built); an error naming every place tried if it is in none.
fn find_data() -> std::io::Result<PathBuf> {
    let mut tried = Vec::new();
    if let Some(dir) = std::env::var_os("LK_DATA_DIR") {
        tried.push(PathBuf::from(dir).join(DATA_FILE));
    }
    tried.push(PathBuf::from("examples").join("data").join(DATA_FILE));
    tried.push(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join("data")
            .join(DATA_FILE),
    );
    if let Some(found) = tried.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    let places: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
    Err(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!(
            "the data file {DATA_FILE} is in none of: {} (set LK_DATA_DIR to its folder, or \
             give --data CSV)",
            places.join(", ")
        ),
    ))
}

fn main() -> candle_core::Result<()> {
    let mut every = 1usize;
    let mut steps = 150usize;
    let mut out_dir = PathBuf::from("figures");
    let mut monthly = false;
    let mut lr = 0.1;
    let mut rank: Option<usize> = None;
    let mut probes = 16usize;
    let mut tol = 1e-3;
    let mut data: Option<PathBuf> = None;
    let (dev, args) = device::from_args();
    let mut args = args.into_iter();
    while let Some(a) = args.next() {
        let mut next = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--every" => every = next().parse().expect("--every K: a number >= 1"),
            "--monthly" => monthly = true,
            "--steps" => steps = next().parse().expect("--steps S: a number"),
            "--out" => out_dir = next().into(),
            "--lr" => lr = next().parse().expect("--lr LR: a number"),
            "--rank" => rank = Some(next().parse().expect("--rank R: a number")),
            "--probes" => probes = next().parse().expect("--probes P: a number"),
            "--tol" => tol = next().parse().expect("--tol T: a number"),
            "--data" => data = Some(next().into()),
            s => panic!(
                "unknown argument {s:?} (expected --every K, --monthly, --steps S, --out DIR, \
                 --lr LR, --rank R, --probes P, --tol T, --data CSV, --device D)"
            ),
        }
    }
    let every = every.max(1);
    let data = match data {
        Some(path) => path,
        None => find_data().unwrap_or_else(|e| device::fail(&e.to_string(), 1)),
    };
    std::fs::create_dir_all(&out_dir)?;
    let cpu = Device::Cpu;
    let dt = DType::F64;
    if !dev.is_cpu() {
        println!("device: {}", device::describe(&dev));
    }

    // ---------------------------------------------------------------- data
    let rows = read_co2(&data)?;
    if rows.is_empty() {
        return Err(std::io::Error::other(format!("{}: no data", data.display())).into());
    }
    let (kept, what): (Vec<(f64, f64)>, String) = if monthly {
        let m = monthly_means(&rows);
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
    let hypers: Vec<Hyper> = PUBLISHED[..10]
        .iter()
        .zip(START)
        .map(|(&(name, unit, published), start)| {
            Ok(Hyper {
                name,
                unit,
                published,
                start,
                value: Positive::with_transform(name, &[start], Transform::Exp, dt, &dev)?,
            })
        })
        .collect::<candle_core::Result<_>>()?;
    let noise = Positive::new("th11^2", &[START[10] * START[10]], dt, &dev)?;
    let values: Vec<Positive> = hypers.iter().map(|h| h.value.clone()).collect();
    let th = values.clone();
    let one_year = Tensor::new(&[1.0f64], &dev)?;
    let kernel = move || -> candle_core::Result<Kernel> {
        let t = |i: usize| -> candle_core::Result<Tensor> { th[i - 1].value() };
        let k1 = Kernel::gaussian(&t(2)?).scale(&t(1)?.sqr()?);
        let k2 =
            (Kernel::gaussian(&t(4)?) * Kernel::periodic(&t(5)?, &one_year)).scale(&t(3)?.sqr()?);
        let k3 = Kernel::rational_quadratic(&t(7)?, &t(8)?).scale(&t(6)?.sqr()?);
        let k4 = Kernel::gaussian(&t(10)?).scale(&t(9)?.sqr()?);
        Ok(k1 + k2 + k3 + k4)
    };
    // A preconditioner of rank N would be a dense Cholesky factorisation: by default at most
    // half the points. Measured on the first 20 steps with the 2,225 weekly points: rank 100
    // takes 11 to 23 CG iterations per step, 300 takes 5 to 9, 600 takes 1 to 6 and is the
    // fastest per step; with the 521 monthly means, 200 beats 50 and 521.
    let rank = rank.unwrap_or(600.min(n / 2)).min(n);
    let settings = GpSettings {
        train_tol: tol,
        predict_tol: 1e-6,
        probes,
        preconditioner: Preconditioner::PivotedCholesky(Rank::Fixed(rank)),
        max_iters: 2000,
        predict_chunk: 256,
        ..GpSettings::default()
    };
    println!(
        "settings: CG tolerance {tol:e} (training), {:e} (prediction), {probes} probes, \
         pivoted-Cholesky preconditioner of rank {rank}, noise floor {:e}",
        settings.predict_tol, settings.noise_floor
    );
    let mut gp = ExactGp::new(&x, &y, values, noise, kernel)?.with_settings(settings);

    // ---------------------------------------------------------------- fit
    let opts = FitOptions {
        steps,
        lr,
        tol: 0.0, // no early stop: the NLL estimate changes with the probes at every step
        ..FitOptions::default()
    };
    println!("fitting: AdamW, lr {lr}, {steps} steps");
    let report = gp.fit(&opts)?;
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
    let last = report.trajectory.len().saturating_sub(1);
    for st in &report.trajectory {
        if st.step % 10 != 0 && st.step != last {
            continue;
        }
        let mut row = String::new();
        for (_, v) in st.values.iter().take(hypers.len()) {
            row += &format!("{:>8.3}", v[0]);
        }
        let noise = st.values[10].1[0];
        row += &format!("{:>8.3}", noise.sqrt());
        println!(
            "{:>4} {:>9.5} {row}  {:>7.2} {:>9}",
            st.step,
            st.report.nll / n as f64,
            st.values[11].1[0],
            format!("{}/{}", st.report.iterations.0, st.report.iterations.1),
        );
    }
    println!(
        "{} steps in {:.1}s ({:.2}s per step){}",
        report.trajectory.len(),
        report.seconds,
        report.seconds / report.trajectory.len().max(1) as f64,
        if report.stopped_early {
            ", stopped early"
        } else {
            ""
        }
    );

    // ---------------------------------------------------------------- learned vs published
    let (nll, info) = gp.nll()?;
    let nll = nll.to_scalar::<f64>()?;
    println!(
        "\n{:>5} {:>10} {:>10} {:>10}  unit",
        "", "start", "learned", "R&W 2006"
    );
    for h in &hypers {
        println!(
            "{:>5} {:>10.4} {:>10.4} {:>10.4}  {}",
            h.name,
            h.start,
            h.current()?,
            h.published,
            h.unit
        );
    }
    let th11 = gp.noise().values()?[0].sqrt();
    println!(
        "{:>5} {:>10.4} {:>10.4} {:>10.4}  ppm (noise sd)",
        "th11", START[10], th11, PUBLISHED[10].2
    );
    let mean = gp.mean().as_tensor().to_vec1::<f64>()?[0];
    println!("constant mean {mean:.3} ppm");
    println!(
        "NLL (estimate) {nll:.2}, {:.5} per point (log det {:.2} +- {:.2}, data fit {:.2}; \
         log marginal likelihood {:.2}); R&W's log marginal likelihood, for their monthly data: \
         -108.5",
        nll / n as f64,
        info.logdet,
        info.logdet_std_error,
        info.data_fit,
        -nll
    );
    let start = Instant::now();
    let exact_learned = exact_nll(&gp, &ys)?;
    let learned: Vec<f64> = hypers
        .iter()
        .map(|h| h.value.values())
        .collect::<candle_core::Result<Vec<_>>>()?
        .concat();
    let noise_learned = gp.noise().values()?;
    for h in &hypers {
        h.value.set(&[h.published])?;
    }
    gp.noise().set(&[PUBLISHED[10].2 * PUBLISHED[10].2])?;
    let exact_published = exact_nll(&gp, &ys)?;
    for (h, v) in hypers.iter().zip(&learned) {
        h.value.set(&[*v])?;
    }
    gp.noise().set(&noise_learned)?;
    println!(
        "exact NLL by dense Cholesky ({:.1}s): {exact_learned:.2} ({:.5} per point) at the \
         learned values, {exact_published:.2} ({:.5} per point) at R&W's (same mean)",
        start.elapsed().as_secs_f64(),
        exact_learned / n as f64,
        exact_published / n as f64
    );

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
    let curves = Curves {
        xs: &xs,
        ys: &ys,
        grid: &grid,
        mean: &mu,
        lo: &lo,
        hi: &hi,
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

/// The data and the posterior on the forecast grid, for the figures.
struct Curves<'a> {
    xs: &'a [f64],
    ys: &'a [f64],
    grid: &'a [f64],
    mean: &'a [f64],
    lo: &'a [f64],
    hi: &'a [f64],
}

impl Curves<'_> {
    /// Data (black), 95% band (blue) and posterior mean (red) over the years `window`, with the
    /// y range fitted to what lies in it.
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
        // Whole ppm, so that the full range (under 100 ppm) gets ticks every 20.
        let (y0, y1) = ((y0 - 0.5).floor(), (y1 + 0.5).ceil());
        let mut fig = plot::Canvas::new(1000, 560, window, (y0, y1));
        fig.band(self.grid, self.lo, self.hi, plot::BLUE, 0.3);
        let zoom = window.1 - window.0 < 40.0;
        fig.scatter(
            self.xs,
            self.ys,
            &[plot::BLACK],
            if zoom { 1.5 } else { 1.0 },
        );
        fig.line(
            self.grid,
            self.mean,
            plot::RED,
            if zoom { 1.2 } else { 1.5 },
        );
        fig.axes();
        fig.save_png(path)
    }
}
