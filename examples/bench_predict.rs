//! Predictions of an exact GP: the mean alone, mean and variance by LOVE and by exact batched
//! solves (the stochastic path's predictions), and by the exact path's dense Cholesky factor,
//! timed, with the largest error against a dense `f64` reference on a subset.
//!
//! ```text
//! cargo run --release --example bench_predict                    # N = 2,000, M = 10^4, 2D Matern 5/2
//! cargo run --release --example bench_predict -- --kernel gauss --dim 1 --dtype f32
//! cargo run --release --example bench_predict -- --no-exact --reps 5
//! cargo run --release --features cuda --example bench_predict -- --device cuda
//! ```
//!
//! `--device cpu|cuda|cuda:N` (default `cpu`): where the model lives and predicts (the dense
//! reference is computed from its `to_dense` on the host). `--help` lists the options.
//!
//! The problem (`--seed`, default 7): `N` training points uniform in the unit square (or interval, `--dim 1`),
//! `y = sin(6 x0) + cos(4 x1) + 0.1 eps`; `M` test points uniform in `[-0.1, 1.1]^D`; a
//! Matern 5/2 (or `--kernel gauss` Gaussian) kernel of lengthscale 0.2, outputscale 1, noise
//! variance 0.01; default settings otherwise, with `nll_method` set per row (`Stochastic`
//! for the first five, `Exact` for the last three: the mean from the dense factor, the
//! variances by LOVE, then from the dense factor with `Variances::Exact`).
//!
//! Rows: "cold" includes what the model caches once per hyperparameter state (the mean's
//! solve and, for LOVE, the factor), "warm" reuses it (what a second call costs). Times are the
//! median of `--reps` runs (default 3), the methods alternating within each repetition. The
//! error columns: over the first `--check` test points (default 200), the largest
//! `|mean - ref| / max|ref|` and the largest relative variance error, the reference being the
//! dense posterior in `f64` from `KernelOperator::to_dense` and a Cholesky factorisation written
//! here.

#[path = "device/mod.rs"]
mod device;
#[path = "report/mod.rs"]
mod report;
#[path = "sizes/mod.rs"]
mod sizes;

use std::error::Error;
use std::time::Instant;

use candle_core::{DType, Tensor};
use clap::{CommandFactory, Parser, ValueEnum};
use lazy_kernels::gp::{ExactGp, NllMethod, Positive, Variances};
use lazy_kernels::{Kernel, KernelOperator};

type Res<T> = Result<T, Box<dyn Error>>;

/// The kernel of the model.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum KernelArg {
    /// Matern 5/2.
    Matern,
    /// Gaussian.
    Gauss,
}

/// Predictions of an exact GP: the mean, mean and variance by LOVE, by exact solves and by the
/// exact path's dense Cholesky factor, timed, with their errors against a dense f64 reference.
///
/// N training points uniform in the unit square (or interval, --dim 1), y = sin(6 x0) + cos(4
/// x1) + 0.1 eps; M test points uniform in [-0.1, 1.1]^D; a Matern 5/2 or Gaussian kernel of
/// lengthscale 0.2, outputscale 1, noise variance 0.01. "Cold" rows include what the model
/// caches once per hyperparameter state, "warm" rows reuse it. Times are medians of --reps
/// runs, the methods alternating within each repetition; the errors are over the first --check
/// test points, against the dense posterior in f64.
#[derive(Parser)]
#[command(name = "bench_predict")]
struct Cli {
    /// Training points.
    #[arg(long, value_name = "N", default_value = "2000", value_parser = sizes::at_least(2))]
    n: usize,
    /// Test points.
    #[arg(long, value_name = "M", default_value = "1e4", value_parser = sizes::count)]
    m: usize,
    /// Dimension of the points: 1 or 2.
    #[arg(long, value_name = "D", default_value = "2", value_parser = dimension)]
    dim: usize,
    /// The kernel.
    #[arg(long, value_enum, default_value = "matern")]
    kernel: KernelArg,
    /// The model's floating-point type (the reference is in f64 either way).
    #[arg(long, value_enum, default_value = "f64")]
    dtype: device::Dtype,
    /// Leave out the exact batched solves (the slow row).
    #[arg(long)]
    no_exact: bool,
    /// Repetitions of each timed row.
    #[arg(long, value_name = "R", default_value = "3", value_parser = sizes::count)]
    reps: usize,
    /// Test points the errors are measured on (at most --m).
    #[arg(long, value_name = "K", default_value = "200", value_parser = sizes::count)]
    check: usize,
    /// Seed of the random points and noise.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    #[command(flatten)]
    device: device::DeviceArg,
}

/// `--dim`: 1 or 2.
fn dimension(s: &str) -> Result<usize, String> {
    match s.trim() {
        "1" => Ok(1),
        "2" => Ok(2),
        _ => Err(format!("{s:?}: 1 or 2")),
    }
}

/// What the program runs, from the command line.
struct Args {
    n: usize,
    m: usize,
    dim: usize,
    gauss: bool,
    dtype: DType,
    exact: bool,
    reps: usize,
    check: usize,
    seed: u64,
}

fn args(cli: &Cli) -> Args {
    if cli.check > cli.m {
        Cli::command()
            .error(
                clap::error::ErrorKind::ValueValidation,
                format!("--check {} exceeds --m {}", cli.check, cli.m),
            )
            .exit();
    }
    Args {
        n: cli.n,
        m: cli.m,
        dim: cli.dim,
        gauss: cli.kernel == KernelArg::Gauss,
        dtype: cli.dtype.dtype(),
        exact: !cli.no_exact,
        reps: cli.reps,
        check: cli.check,
        seed: cli.seed,
    }
}

/// SplitMix64 uniforms.
struct Rng(u64);
impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let u = self.uniform().max(1e-300);
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * self.uniform()).cos()
    }
}

fn kernel(gauss: bool, l: &Tensor, s: &Tensor) -> Kernel {
    if gauss {
        Kernel::gaussian(l).scale(s)
    } else {
        Kernel::matern52(l).scale(s)
    }
}

/// Lower Cholesky factor (row-major) of `a + shift I`.
fn cholesky(a: &[f64], n: usize, shift: f64) -> Vec<f64> {
    let mut l = vec![0.0; n * n];
    for j in 0..n {
        let (done, rest) = l.split_at_mut(j * n);
        let lj = &mut rest[..n];
        for k in 0..j {
            let lk = &done[k * n..k * n + k];
            let dot: f64 = lj[..k].iter().zip(lk).map(|(x, y)| x * y).sum();
            lj[k] = (a[j * n + k] - dot) / done[k * n + k];
        }
        let s = a[j * n + j] + shift - lj[..j].iter().map(|v| v * v).sum::<f64>();
        assert!(s > 0.0, "reference Cholesky: not positive definite");
        lj[j] = s.sqrt();
    }
    l
}

/// `(L L^T)^-1 b`.
fn chol_solve(l: &[f64], n: usize, b: &[f64]) -> Vec<f64> {
    let mut x = b.to_vec();
    for i in 0..n {
        let dot: f64 = l[i * n..i * n + i]
            .iter()
            .zip(&x[..i])
            .map(|(a, b)| a * b)
            .sum();
        x[i] = (x[i] - dot) / l[i * n + i];
    }
    for i in (0..n).rev() {
        let mut t = x[i];
        for p in i + 1..n {
            t -= l[p * n + i] * x[p];
        }
        x[i] = t / l[i * n + i];
    }
    x
}

fn vec1(t: &Tensor) -> Res<Vec<f64>> {
    Ok(t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() -> Res<()> {
    let cli = Cli::parse();
    let a = args(&cli);
    let dev = cli.device.open();
    let dtype = a.dtype;
    println!("{}\n", report::machine_header());
    let mut rng = Rng(a.seed);
    let pts: Vec<f64> = (0..a.n * a.dim).map(|_| rng.uniform()).collect();
    let y: Vec<f64> = (0..a.n)
        .map(|i| {
            let p = &pts[i * a.dim..(i + 1) * a.dim];
            (6.0 * p[0]).sin() + p.get(1).map_or(0.0, |v| (4.0 * v).cos()) + 0.1 * rng.normal()
        })
        .collect();
    let tpts: Vec<f64> = (0..a.m * a.dim)
        .map(|_| -0.1 + 1.2 * rng.uniform())
        .collect();
    // The model's numbers, rounded to its dtype once; the reference uses the same numbers.
    let x = Tensor::from_vec(pts, (a.n, a.dim), &dev)?.to_dtype(dtype)?;
    let yt = Tensor::new(y.as_slice(), &dev)?.to_dtype(dtype)?;
    let xt = Tensor::from_vec(tpts, (a.m, a.dim), &dev)?.to_dtype(dtype)?;
    let l = Positive::new("lengthscale", &[0.2], dtype, &dev)?;
    let s = Positive::new("outputscale", &[1.0], dtype, &dev)?;
    let noise = Positive::new("noise", &[0.01], dtype, &dev)?;
    let (lc, sc, gauss) = (l.clone(), s.clone(), a.gauss);
    let mut gp = ExactGp::new(
        &x,
        &yt,
        vec![l.clone(), s.clone()],
        noise.clone(),
        move || Ok(kernel(gauss, &lc.value()?, &sc.value()?)),
    )?;

    // The dense f64 reference on the first `check` test points.
    let t0 = Instant::now();
    let x64 = x.to_dtype(DType::F64)?;
    let xc = xt.narrow(0, 0, a.check)?.to_dtype(DType::F64)?;
    let (lv, sv) = (
        l.value()?.to_dtype(DType::F64)?,
        s.value()?.to_dtype(DType::F64)?,
    );
    let k64 = kernel(a.gauss, &lv, &sv);
    let kd = vec1(&KernelOperator::new(k64.clone(), &x64, &x64)?.to_dense()?)?;
    let total_noise = vec1(&noise.value()?)?[0] + gp.settings.noise_floor;
    let ch = cholesky(&kd, a.n, total_noise);
    let mean = vec1(gp.mean().as_tensor())?[0];
    let r: Vec<f64> = vec1(&yt)?.iter().map(|v| v - mean).collect();
    let alpha = chol_solve(&ch, a.n, &r);
    let cross = KernelOperator::new(k64.clone(), &xc, &x64)?
        .to_dense()?
        .to_vec2::<f64>()?;
    let prior = vec1(&KernelOperator::new(k64, &xc, &xc)?.diag()?)?;
    let (mut ref_mu, mut ref_var) = (Vec::new(), Vec::new());
    for (i, k) in cross.iter().enumerate() {
        ref_mu.push(mean + k.iter().zip(&alpha).map(|(a, b)| a * b).sum::<f64>());
        let v = chol_solve(&ch, a.n, k);
        ref_var.push(prior[i] - k.iter().zip(&v).map(|(a, b)| a * b).sum::<f64>());
    }
    let mu_scale = ref_mu.iter().fold(0f64, |m, v| m.max(v.abs()));
    println!(
        "N = {}, M = {}, {}D, {} kernel, {:?}; dense f64 reference on {} test points: {:.1} s \
         (variances {:.2e} to {:.2e})",
        a.n,
        a.m,
        a.dim,
        if a.gauss { "Gaussian" } else { "Matern 5/2" },
        dtype,
        a.check,
        t0.elapsed().as_secs_f64(),
        ref_var.iter().cloned().fold(f64::MAX, f64::min),
        ref_var.iter().cloned().fold(0.0, f64::max),
    );
    let mean_err = |mu: &[f64]| {
        (0..a.check)
            .map(|i| (mu[i] - ref_mu[i]).abs() / mu_scale)
            .fold(0.0, f64::max)
    };
    let var_err = |v: &[f64]| {
        (0..a.check)
            .map(|i| (v[i] - ref_var[i]).abs() / ref_var[i])
            .fold(0.0, f64::max)
    };

    // name -> (times, mean error, variance error, note)
    type Row = (Vec<f64>, f64, Option<f64>, String);
    let names = [
        "mean only, cold",
        "mean only, warm",
        "LOVE mean + variance, cold",
        "LOVE mean + variance, warm",
        "exact mean + variance, warm",
        "exact path, LOVE, cold",
        "exact path, LOVE, warm",
        "exact path, dense variances, cold",
    ];
    let mut rows: Vec<Row> = names
        .iter()
        .map(|_| (Vec::new(), 0.0, None, String::new()))
        .collect();
    let bar = report::progress(a.reps as u64, "repetitions");
    for rep in 0..a.reps {
        for (i, row) in rows.iter_mut().enumerate() {
            if i == 4 && (!a.exact || rep > 0) {
                continue; // the exact path once: it is the slow one
            }
            gp.settings.variances = if i == 4 || i == 7 {
                Variances::Exact
            } else {
                Variances::default()
            };
            gp.settings.nll_method = if i >= 5 {
                NllMethod::Exact
            } else {
                NllMethod::Stochastic
            };
            if i == 0 || i == 2 || i == 5 || i == 7 {
                gp.clear_prediction_cache();
            }
            let t = Instant::now();
            if i < 2 {
                let mu = gp.predict_mean(&xt)?;
                let mu = vec1(&mu)?;
                row.0.push(t.elapsed().as_secs_f64());
                row.1 = mean_err(&mu);
            } else {
                let p = gp.predict(&xt)?;
                let (mu, var) = (vec1(&p.mean)?, vec1(&p.variance)?);
                row.0.push(t.elapsed().as_secs_f64());
                row.1 = mean_err(&mu);
                row.2 = Some(var_err(&var));
                if let Some(l) = &p.love {
                    row.3 = format!(
                        "rank {}, change {:.1e}, converged {}, factor {:.3} s",
                        l.rank, l.change, l.converged, l.seconds
                    );
                }
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    println!(
        "{:<30} {:>9} {:>14} {:>14}  note",
        "method", "time (s)", "mean error", "var rel error"
    );
    for (name, row) in names.iter().zip(&rows) {
        if row.0.is_empty() {
            continue;
        }
        println!(
            "{:<30} {:>9.4} {:>14.2e} {:>14}  {}",
            name,
            median(row.0.clone()),
            row.1,
            row.2.map_or("-".to_string(), |v| format!("{v:.2e}")),
            row.3
        );
    }
    Ok(())
}
