//! The Mauna Loa CO2 model of `examples/mauna_loa.rs`, shared with `bench_logdet`: the data
//! (reading, monthly means, where the file is), Rasmussen & Williams' composite kernel
//! (section 5.4.3, eq. 5.15-5.19) built from [`Positive`] hyperparameters, and the reference
//! values of its hyperparameters (published, scikit-learn's start and optimum).

#![allow(dead_code)] // Each example uses part of it.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use lazy_kernels::Kernel;
use lazy_kernels::gp::{ExactGp, Positive, Transform};

/// Published values: Rasmussen & Williams (2006), section 5.4.3 (th10 = 1.6 months).
pub const PUBLISHED: [(&str, &str, f64); 11] = [
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
pub const START: [f64; 11] = [50.0, 50.0, 2.0, 100.0, 1.0, 0.5, 1.0, 1.0, 0.1, 0.1, 0.1];

/// scikit-learn's optimum for the weekly data, th1..th10 and the noise variance th11^2: its
/// `GaussianProcessRegressor` (1.9.1) fitted to `y - mean(y)` with this kernel from
/// [`START`] (`50^2 RBF(50) + 2^2 RBF(100) ExpSineSquared(1, 1 fixed) + 0.5^2 RQ(1, 1) +
/// 0.1^2 RBF(0.1) + White(0.01)`), 188 s on the 2-core machine of the README, 2026-12-04:
/// `-log p(y) = 883.628` ([`SKLEARN_NLL`]; the crate's exact NLL at these values, with the
/// mean of `y` as the constant mean, agrees to the last printed digit).
pub const SKLEARN: [f64; 11] = [
    48.277,
    54.487,
    2.57286,
    131.71,
    1.34506,
    8.08297,
    5.73659,
    0.000580814,
    0.338678,
    0.0120690,
    0.00190565,
];

/// scikit-learn's `-log p(y)` at [`SKLEARN`] for the weekly data.
pub const SKLEARN_NLL: f64 = 883.628;

/// `YYYYMMDD` as a decimal year: `year + (day of the year - 1) / days in the year`.
pub fn decimal_year(date: &str) -> Option<f64> {
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
pub type Row = (i32, usize, f64, f64);

/// The rows of the CSV (`date,co2`, a header line) that have a value.
pub fn read_co2(path: &std::path::Path) -> std::io::Result<Vec<Row>> {
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
pub fn monthly_means(rows: &[Row]) -> Vec<(f64, f64)> {
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

/// The data file's name in `examples/data/`.
pub const DATA_FILE: &str = "mauna_loa_co2_weekly.csv";

/// Where the data file is when `--data` does not say: `$LK_DATA_DIR/FILE`, then
/// `examples/data/FILE` under the current directory, then under this crate's directory (where
/// it was built); an error naming every place tried if it is in none.
pub fn find_data() -> std::io::Result<PathBuf> {
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

/// The model: th1..th10 as [`Positive`]s with the [`Transform::Exp`] transform (so that every
/// hyperparameter moves by a similar relative step whatever its units), the noise variance
/// `th11^2` a softplus [`Positive`], at `values` (th1..th10, then the noise variance), and the
/// kernel
///
/// ```text
/// k1 = th1^2 exp(-r^2 / (2 th2^2))                                   long-term trend
/// k2 = th3^2 exp(-r^2 / (2 th4^2) - 2 sin^2(pi r) / th5^2)           yearly cycle, decaying
/// k3 = th6^2 (1 + r^2 / (2 th8 th7^2))^(-th8)                        medium-term irregularities
/// k4 = th9^2 exp(-r^2 / (2 th10^2)) + th11^2 delta(r)                correlated and white noise
/// ```
///
/// built from the crate's kernels: `k1 = gaussian(th2).scale(th1^2)`,
/// `k2 = (gaussian(th4) * periodic(th5, 1)).scale(th3^2)` (the period is a fixed tensor, 1
/// year), `k3 = rational_quadratic(th7, th8).scale(th6^2)` (the crate's
/// `(1 + r^2 / (2 alpha l^2))^(-alpha)` is eq. 5.17 with `l = th7`, `alpha = th8`),
/// `k4 = gaussian(th10).scale(th9^2)`, and the GP's noise variance `th11^2`. Returns the model
/// and th1..th10.
pub fn model(
    x: &Tensor,
    y: &Tensor,
    values: &[f64; 11],
    dev: &Device,
) -> candle_core::Result<(ExactGp, Vec<Positive>)> {
    let dt = DType::F64;
    let th: Vec<Positive> = PUBLISHED[..10]
        .iter()
        .zip(values)
        .map(|(p, v)| Positive::with_transform(p.0, &[*v], Transform::Exp, dt, dev))
        .collect::<candle_core::Result<_>>()?;
    let noise = Positive::new("th11^2", &[values[10]], dt, dev)?;
    let captured = th.clone();
    let one_year = Tensor::new(&[1.0f64], dev)?;
    let kernel = move || -> candle_core::Result<Kernel> {
        let t = |i: usize| -> candle_core::Result<Tensor> { captured[i - 1].value() };
        let k1 = Kernel::gaussian(&t(2)?).scale(&t(1)?.sqr()?);
        let k2 =
            (Kernel::gaussian(&t(4)?) * Kernel::periodic(&t(5)?, &one_year)).scale(&t(3)?.sqr()?);
        let k3 = Kernel::rational_quadratic(&t(7)?, &t(8)?).scale(&t(6)?.sqr()?);
        let k4 = Kernel::gaussian(&t(10)?).scale(&t(9)?.sqr()?);
        Ok(k1 + k2 + k3 + k4)
    };
    let gp = ExactGp::new(x, y, th.clone(), noise, kernel)?;
    Ok((gp, th))
}
