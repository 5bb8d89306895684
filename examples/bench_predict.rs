//! Predictions of an exact GP: the mean alone, mean and variance by LOVE and by exact batched
//! solves (the stochastic path's predictions), and by the exact path's dense Cholesky factor,
//! timed, with the largest error against a dense `f64` reference on a subset.
//!
//! ```text
//! cargo run --release --example bench_predict                    # N = 2,000, M = 10^4, 2D Matern 5/2
//! cargo run --release --example bench_predict -- --kernel gauss --dim 1 --f32
//! cargo run --release --example bench_predict -- --no-exact --reps 5
//! cargo run --release --features cuda --example bench_predict -- --device cuda
//! ```
//!
//! `--device cpu|cuda|cuda:N` (default `cpu`): where the model lives and predicts (the dense
//! reference is computed from its `to_dense` on the host).
//!
//! The problem: `N` training points uniform in the unit square (or interval, `--dim 1`),
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

mod device;

use std::error::Error;
use std::time::Instant;

use candle_core::{DType, Tensor};
use lazy_kernels::gp::{ExactGp, NllMethod, Positive, Variances};
use lazy_kernels::{Kernel, KernelOperator};

type Res<T> = Result<T, Box<dyn Error>>;

struct Args {
    n: usize,
    m: usize,
    dim: usize,
    gauss: bool,
    f32: bool,
    exact: bool,
    reps: usize,
    check: usize,
}

fn args(v: Vec<String>) -> Res<Args> {
    let mut a = Args {
        n: 2000,
        m: 10_000,
        dim: 2,
        gauss: false,
        f32: false,
        exact: true,
        reps: 3,
        check: 200,
    };
    let mut i = 0;
    while i < v.len() {
        let next = |i: usize| -> Res<String> {
            v.get(i + 1)
                .cloned()
                .ok_or_else(|| format!("{} needs a value", v[i]).into())
        };
        match v[i].as_str() {
            "--n" => (a.n, i) = (next(i)?.parse()?, i + 1),
            "--m" => (a.m, i) = (next(i)?.parse()?, i + 1),
            "--dim" => (a.dim, i) = (next(i)?.parse()?, i + 1),
            "--reps" => (a.reps, i) = (next(i)?.parse()?, i + 1),
            "--check" => (a.check, i) = (next(i)?.parse()?, i + 1),
            "--kernel" => {
                a.gauss = match next(i)?.as_str() {
                    "gauss" => true,
                    "matern" => false,
                    k => return Err(format!("--kernel gauss|matern, got {k}").into()),
                };
                i += 1;
            }
            "--f32" => a.f32 = true,
            "--no-exact" => a.exact = false,
            other => return Err(format!("unknown argument {other}").into()),
        }
        i += 1;
    }
    if a.dim == 0 || a.dim > 2 || a.check > a.m || a.reps == 0 {
        return Err("--dim 1 or 2, --check <= --m, --reps >= 1".into());
    }
    Ok(a)
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
    let (dev, rest) = device::from_args();
    let a = args(rest)?;
    let dtype = if a.f32 { DType::F32 } else { DType::F64 };
    let mut rng = Rng(7);
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
    }
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
