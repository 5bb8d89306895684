//! One training step of an exact Gaussian process (the negative log marginal likelihood and its
//! gradient: `gp.nll()?` then `backward()`), ours against a dense Cholesky reference.
//!
//! ```text
//! cargo run --release --example bench_gp                          # N = 10^4 and 10^5
//! cargo run --release --example bench_gp -- --sizes 1e4 --runs 5
//! cargo run --release --example bench_gp -- --no-dense --f32
//! cargo run --release --features cuda --example bench_gp -- --device cuda   # ours on CUDA
//! ```
//!
//! `--device cpu|cuda|cuda:N` (default `cpu`): where ours runs (its child process gets the
//! same `--device`); the dense reference always runs on the CPU.
//!
//! The problem: `N` points uniform in the unit cube (seed 0),
//! `y = sin(2 pi x0) cos(pi x1) + 0.5 sin(3 x2) + 0.1 eps`, `eps ~ N(0, 1)`; a Gaussian kernel
//! with per-dimension lengthscales and an outputscale, and the noise variance, all
//! [`Positive`], at fixed values (see [`LENGTHSCALES`], [`OUTPUTSCALE`], [`NOISE`]); the
//! constant mean at the mean of `y`; default [`GpSettings`].
//!
//! * Ours: [`ExactGp::nll`] (CG solve and stochastic Lanczos log-determinant) and `backward()`
//!   on it; the gradients are read back to the host inside the timed region (which also
//!   synchronises a GPU).
//! * Dense (CPU, `f64`): build `A = K + (sigma^2 + floor) I` (`N^2` doubles), factor it
//!   `A = L L^T` with the blocked right-looking Cholesky of this file (panels of 512 columns;
//!   the panel solve and the trailing update are matrix products by Candle's CPU `matmul`,
//!   the `gemm` crate on rayon; copies and updates rayon over rows; the 512 x 512 diagonal
//!   blocks serial), `a = A^-1 (y - m)` by two triangular solves, the exact NLL
//!   `(y - m)^T a / 2 + sum log L_ii + N log(2 pi) / 2`, then the exact gradient
//!   `0.5 tr((A^-1 - a a^T) dA/dtheta)` with `A^-1` formed: `L^-1` in place (blocked), then
//!   `A^-1 = L^-T L^-1` tile by tile (1024 x 1024), each tile consumed at once with
//!   `dA/dtheta` computed pair by pair (never stored). About `N^3` flops in all, memory one
//!   `N x N` matrix plus panels. The table also gives the dense NLL alone (build, Cholesky,
//!   solve: what any dense step costs before its gradient), since forming `A^-1` is the
//!   larger part of the exact gradient.
//! * Memory: each method runs in its own child process (this program re-executed with a
//!   hidden `--child` flag) that reads its peak RSS (`VmHWM` of `/proc/self/status`) after its
//!   timed runs; the inputs are a few MB. On CUDA it is the host's peak RSS only.
//! * Timing: median of `R` runs (`--runs R`, default 3) after a warm-up run; at `N >= 50,000`,
//!   `ceil(R / 3)` runs after a warm-up on the same problem at `N = 2,000` (same code paths,
//!   a fraction of the cost). The dense method runs where its matrix fits in half the
//!   available memory, else the table says what it would need.

#[path = "device/mod.rs"]
mod device;
#[path = "gp_problem/mod.rs"]
mod gp_problem;
#[path = "report/mod.rs"]
mod report;
use std::error::Error;
use std::process::{Command, Stdio};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use lazy_kernels::gp::{ExactGp, GpSettings, NllReport};
use lazy_kernels::{linalg, SolveOptions};
use rayon::prelude::*;

use gp_problem::{build_gp, Problem, D, LENGTHSCALES, NOISE, NOISE_SD, OUTPUTSCALE};

type Res<T> = Result<T, Box<dyn Error>>;

/// Sizes from which the run count is `ceil(R / 3)` and the warm-up is a small problem.
const LARGE: usize = 50_000;
/// The warm-up problem's size for large `N`.
const WARMUP_N: usize = 2_000;
/// Column panel of the dense Cholesky and of the triangular inverse.
const NB: usize = 512;
/// Row chunk of the dense trailing updates.
const CHUNK: usize = 512;
/// Tile of `A^-1` in the dense gradient.
const TILE: usize = 1024;

// ---------------------------------------------------------------------------------------------
// The problem.

/// What one step found: the NLL, its parts and the gradient with respect to the raw (softplus
/// inverse) lengthscales, outputscale and noise, and the mean.
#[derive(Clone, Debug, Default)]
struct Step {
    nll: f64,
    data_fit: f64,
    logdet: f64,
    logdet_se: f64,
    grads: Vec<f64>,
    iters: (usize, usize),
    converged: bool,
    /// Seconds of `nll()` and of `backward()` (with the read-back), ours only.
    split: (f64, f64),
}

const GRAD_NAMES: [&str; 6] = ["raw l0", "raw l1", "raw l2", "raw s", "raw noise", "mean"];

// ---------------------------------------------------------------------------------------------
// Ours.

/// One training step's work: the NLL, `backward()`, the gradients read back.
fn ours_step(gp: &ExactGp) -> Res<Step> {
    let dev = gp.data().0.device().clone();
    let t = Instant::now();
    let (loss, report): (Tensor, NllReport) = gp.nll()?;
    let forward = device::elapsed(&dev, t)?;
    let grads = loss.backward()?;
    let mut g = Vec::with_capacity(GRAD_NAMES.len());
    // The hyperparameters' and the noise's raw `Var`s, then the mean (named one by one:
    // `vars()` leaves the mean out when it is not learned).
    let mut vars: Vec<Var> = gp.hypers().iter().map(|h| h.var().clone()).collect();
    vars.push(gp.noise().var().clone());
    vars.push(gp.mean().clone());
    for v in vars {
        let t = grads
            .get(v.as_tensor())
            .ok_or("a model variable got no gradient")?;
        g.extend(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?);
    }
    Ok(Step {
        nll: report.nll,
        data_fit: report.data_fit,
        logdet: report.logdet,
        logdet_se: report.logdet_std_error,
        grads: g,
        iters: report.iterations,
        converged: report.converged,
        split: (forward, device::elapsed(&dev, t)? - forward),
    })
}

/// The preconditioner's rank in the NLL's solve. `NllReport` does not carry it, so the same
/// system (the same operator, ridge and preconditioner settings) is set up again with one CG
/// iteration: the automatic rank depends only on `K` and the ridge.
fn preconditioner_rank(gp: &ExactGp) -> Res<usize> {
    let k = gp.operator()?;
    let (_, y) = gp.data();
    let r = y.broadcast_sub(gp.mean().as_tensor())?;
    let ridge = gp.noise().values()?[0] + gp.settings.noise_floor;
    let opts = SolveOptions {
        tol: gp.settings.train_tol,
        max_iters: 1,
        preconditioner: gp.settings.preconditioner,
        ..SolveOptions::default()
    };
    let (_, info) = k.solve(&r.detach(), ridge, &opts)?;
    Ok(info.preconditioner_rank)
}

// ---------------------------------------------------------------------------------------------
// Dense reference (CPU, f64): a row-major N x N matrix, lower triangle used, upper kept zero.

/// Seconds of each phase of the dense step.
#[derive(Clone, Debug, Default)]
struct Phases {
    build: f64,
    cholesky: f64,
    solve: f64,
    inverse: f64,
    gradient: f64,
}

/// `a[r0..r1, c0..c1]` as a tensor (a copy).
fn get_block(a: &[f64], n: usize, rows: (usize, usize), cols: (usize, usize)) -> Res<Tensor> {
    let w = cols.1 - cols.0;
    let mut v = vec![0.0; (rows.1 - rows.0) * w];
    v.par_chunks_mut(w.max(1)).enumerate().for_each(|(i, row)| {
        let start = (rows.0 + i) * n + cols.0;
        row.copy_from_slice(&a[start..start + w]);
    });
    Ok(Tensor::from_vec(v, (rows.1 - rows.0, w), &Device::Cpu)?)
}

/// Writes the `(r1 - r0, c1 - c0)` tensor `t` into `a[r0..r1, c0..c1]`.
fn set_block(a: &mut [f64], n: usize, r0: usize, c0: usize, t: &Tensor) -> Res<()> {
    let (h, w) = t.dims2()?;
    with_data(t, |v| {
        a[r0 * n..(r0 + h) * n]
            .par_chunks_mut(n)
            .enumerate()
            .for_each(|(i, row)| row[c0..c0 + w].copy_from_slice(&v[i * w..(i + 1) * w]))
    })
}

/// Calls `f` on the values of a CPU `f64` tensor in row-major order, without a copy when the
/// tensor is contiguous.
fn with_data<R>(t: &Tensor, f: impl FnOnce(&[f64]) -> R) -> Res<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        return Err("the dense reference needs CPU tensors".into());
    };
    let start = layout.start_offset();
    Ok(f(&cpu.as_slice::<f64>()?[start..start + t.elem_count()]))
}

/// Cholesky factor of a small dense `b x b` SPD matrix (row-major, lower), in place.
fn cholesky_small(m: &mut [f64], b: usize, offset: usize) -> Res<()> {
    for j in 0..b {
        let mut d = m[j * b + j];
        for p in 0..j {
            d -= m[j * b + p] * m[j * b + p];
        }
        if d.is_nan() || d <= 0.0 {
            return Err(format!(
                "dense Cholesky: pivot {} is {d:e}: not positive definite",
                offset + j
            )
            .into());
        }
        let djj = d.sqrt();
        m[j * b + j] = djj;
        for i in j + 1..b {
            let mut s = m[i * b + j];
            for p in 0..j {
                s -= m[i * b + p] * m[j * b + p];
            }
            m[i * b + j] = s / djj;
        }
        for i in 0..j {
            m[i * b + j] = 0.0;
        }
    }
    Ok(())
}

/// The inverse of a small lower-triangular `b x b` matrix (row-major), a new matrix.
fn inverse_lower_small(l: &[f64], b: usize) -> Vec<f64> {
    let mut inv = vec![0.0; b * b];
    for j in 0..b {
        inv[j * b + j] = 1.0 / l[j * b + j];
        for i in j + 1..b {
            let mut s = 0.0;
            for p in j..i {
                s += l[i * b + p] * inv[p * b + j];
            }
            inv[i * b + j] = -s / l[i * b + i];
        }
    }
    inv
}

/// `a = L L^T` in place (lower triangle), blocked right-looking: per panel of `NB` columns,
/// the diagonal block (serial), the panel below it (`A21 L11^-T`, a matrix product), and the
/// trailing update `A22 -= L21 L21^T` by row chunks of `CHUNK` (matrix products, lower part
/// only written back).
fn cholesky(a: &mut [f64], n: usize) -> Res<()> {
    for k0 in (0..n).step_by(NB) {
        let k1 = (k0 + NB).min(n);
        let b = k1 - k0;
        let mut diag = get_block(a, n, (k0, k1), (k0, k1))?
            .flatten_all()?
            .to_vec1::<f64>()?;
        cholesky_small(&mut diag, b, k0)?;
        set_block(
            a,
            n,
            k0,
            k0,
            &Tensor::from_vec(diag.clone(), (b, b), &Device::Cpu)?,
        )?;
        let m = n - k1;
        if m == 0 {
            break;
        }
        let inv_t = Tensor::from_vec(inverse_lower_small(&diag, b), (b, b), &Device::Cpu)?.t()?;
        let panel = linalg::matmul(&get_block(a, n, (k1, n), (k0, k1))?, &inv_t)?;
        set_block(a, n, k1, k0, &panel)?;
        for r0 in (0..m).step_by(CHUNK) {
            let r1 = (r0 + CHUNK).min(m);
            let upd = linalg::matmul(
                &panel.narrow(0, r0, r1 - r0)?,
                &panel.narrow(0, 0, r1)?.t()?,
            )?;
            with_data(&upd, |v| {
                a[(k1 + r0) * n..(k1 + r1) * n]
                    .par_chunks_mut(n)
                    .enumerate()
                    .for_each(|(ii, row)| {
                        let len = r0 + ii + 1; // columns k1 .. k1 + len: the lower part
                        let src = &v[ii * r1..ii * r1 + len];
                        for (dst, s) in row[k1..k1 + len].iter_mut().zip(src) {
                            *dst -= s;
                        }
                    })
            })?;
        }
    }
    Ok(())
}

/// `L^-1` in place of `L` (lower), blocked: from the last panel to the first,
/// `X21 = -X22 L21 X11` with `X22 = L22^-1` already in place (products by row chunks).
fn inverse_lower(a: &mut [f64], n: usize) -> Res<()> {
    let starts: Vec<usize> = (0..n).step_by(NB).collect();
    for &j0 in starts.iter().rev() {
        let j1 = (j0 + NB).min(n);
        let b = j1 - j0;
        let diag = get_block(a, n, (j0, j1), (j0, j1))?
            .flatten_all()?
            .to_vec1::<f64>()?;
        let x11 = Tensor::from_vec(inverse_lower_small(&diag, b), (b, b), &Device::Cpu)?;
        set_block(a, n, j0, j0, &x11)?;
        let m = n - j1;
        if m == 0 {
            continue;
        }
        let l21 = get_block(a, n, (j1, n), (j0, j1))?;
        let mut parts = Vec::with_capacity(m.div_ceil(CHUNK));
        for r0 in (0..m).step_by(CHUNK) {
            let r1 = (r0 + CHUNK).min(m);
            let x22 = get_block(a, n, (j1 + r0, j1 + r1), (j1, j1 + r1))?;
            parts.push(linalg::matmul(&x22, &l21.narrow(0, 0, r1)?)?);
        }
        let x21 = linalg::matmul(&Tensor::cat(&parts, 0)?, &x11)?.neg()?;
        set_block(a, n, j1, j0, &x21)?;
    }
    Ok(())
}

/// `a = (L L^T)^-1 r`: `L z = r`, then `L^T a = z`, with `L` in the lower triangle of `l`.
fn cholesky_solve(l: &[f64], n: usize, r: &[f64]) -> Vec<f64> {
    let mut z = r.to_vec();
    for i in 0..n {
        let row = &l[i * n..i * n + i];
        let s: f64 = row.iter().zip(&z[..i]).map(|(a, b)| a * b).sum();
        z[i] = (z[i] - s) / l[i * n + i];
    }
    for i in (0..n).rev() {
        z[i] /= l[i * n + i];
        let zi = z[i];
        let row = &l[i * n..i * n + i];
        for (zj, lij) in z[..i].iter_mut().zip(row) {
            *zj -= lij * zi;
        }
    }
    z
}

/// Sums over one tile of `A^-1` (rows `i0..`, columns `j0..`) of `W_ij dA_ij / dtheta` without
/// the constant factors, `W = A^-1 - a a^T`: `[sum W K0 d0^2, .. d1^2, .. d2^2, sum W K0,
/// sum_i W_ii]`, `K0` the unscaled kernel and `d = x_i - x_j`.
fn tile_sums(tile: &[f64], i0: usize, j0: usize, tj: usize, x: &[f64], alpha: &[f64]) -> [f64; 5] {
    let inv_l2: Vec<f64> = LENGTHSCALES.iter().map(|l| 1.0 / (l * l)).collect();
    tile.par_chunks(tj)
        .enumerate()
        .map(|(ii, row)| {
            let i = i0 + ii;
            let xi = &x[i * D..i * D + D];
            let mut acc = [0.0; 5];
            for (jj, &inv) in row.iter().enumerate() {
                let j = j0 + jj;
                let xj = &x[j * D..j * D + D];
                let d0 = xi[0] - xj[0];
                let d1 = xi[1] - xj[1];
                let d2 = xi[2] - xj[2];
                let (s0, s1, s2) = (d0 * d0, d1 * d1, d2 * d2);
                let k0 = (-0.5 * (s0 * inv_l2[0] + s1 * inv_l2[1] + s2 * inv_l2[2])).exp();
                let w = inv - alpha[i] * alpha[j];
                let wk = w * k0;
                acc[0] += wk * s0;
                acc[1] += wk * s1;
                acc[2] += wk * s2;
                acc[3] += wk;
                if i == j {
                    acc[4] += w;
                }
            }
            acc
        })
        .reduce(
            || [0.0; 5],
            |mut a, b| {
                for (x, y) in a.iter_mut().zip(b) {
                    *x += y;
                }
                a
            },
        )
}

/// The dense step: exact NLL and exact gradient, in `f64` on the CPU.
fn dense_step(p: &Problem) -> Res<(Step, Phases)> {
    let n = p.n;
    let mut ph = Phases::default();
    let floor = GpSettings::default().noise_floor;
    let ridge = NOISE + floor;
    let inv_l2: Vec<f64> = LENGTHSCALES.iter().map(|l| 1.0 / (l * l)).collect();

    let t = Instant::now();
    let mut a = vec![0.0f64; n * n];
    a.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
        let xi = &p.x[i * D..i * D + D];
        for (j, v) in row[..=i].iter_mut().enumerate() {
            let xj = &p.x[j * D..j * D + D];
            let q: f64 = (0..D).map(|d| (xi[d] - xj[d]).powi(2) * inv_l2[d]).sum();
            *v = OUTPUTSCALE * (-0.5 * q).exp();
        }
        row[i] += ridge;
    });
    ph.build = t.elapsed().as_secs_f64();

    let t = Instant::now();
    cholesky(&mut a, n)?;
    ph.cholesky = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let mean = p.mean();
    let r: Vec<f64> = p.y.iter().map(|y| y - mean).collect();
    let alpha = cholesky_solve(&a, n, &r);
    let logdet = 2.0 * (0..n).map(|i| a[i * n + i].ln()).sum::<f64>();
    let data_fit = 0.5 * r.iter().zip(&alpha).map(|(a, b)| a * b).sum::<f64>();
    let nll = data_fit + 0.5 * logdet + 0.5 * n as f64 * (2.0 * std::f64::consts::PI).ln();
    ph.solve = t.elapsed().as_secs_f64();

    let t = Instant::now();
    inverse_lower(&mut a, n)?;
    ph.inverse = t.elapsed().as_secs_f64();

    // A^-1[I, J] = X[i0.., I]^T X[i0.., J] for J <= I (X = L^-1, zero above the diagonal).
    let t = Instant::now();
    let mut sums = [0.0; 5];
    for i0 in (0..n).step_by(TILE) {
        let i1 = (i0 + TILE).min(n);
        let ci = get_block(&a, n, (i0, n), (i0, i1))?;
        for j0 in (0..=i0).step_by(TILE) {
            let j1 = (j0 + TILE).min(n);
            let cj = if j0 == i0 {
                ci.clone()
            } else {
                get_block(&a, n, (i0, n), (j0, j1))?
            };
            let tile = linalg::matmul(&ci.t()?, &cj)?;
            let part = with_data(&tile, |t| tile_sums(t, i0, j0, j1 - j0, &p.x, &alpha))?;
            let weight = if j0 == i0 { 1.0 } else { 2.0 };
            for (s, v) in sums.iter_mut().zip(part) {
                *s += weight * v;
            }
        }
    }
    drop(a);
    // dNLL/dv = 0.5 sum_ij W_ij dA_ij/dv; d v / d raw = sigmoid(raw) = 1 - exp(-v).
    let dsoft = |v: f64| 1.0 - (-v).exp();
    let mut grads = Vec::with_capacity(GRAD_NAMES.len());
    for (d, l) in LENGTHSCALES.iter().enumerate() {
        grads.push(0.5 * OUTPUTSCALE / l.powi(3) * sums[d] * dsoft(*l));
    }
    grads.push(0.5 * sums[3] * dsoft(OUTPUTSCALE));
    grads.push(0.5 * sums[4] * dsoft(NOISE));
    grads.push(-alpha.iter().sum::<f64>());
    ph.gradient = t.elapsed().as_secs_f64();

    Ok((
        Step {
            nll,
            data_fit,
            logdet,
            logdet_se: 0.0,
            grads,
            iters: (0, 0),
            converged: true,
            split: (0.0, 0.0),
        },
        ph,
    ))
}

// ---------------------------------------------------------------------------------------------
// Child processes.

fn read_status_kib(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn mem_available_bytes() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    s.lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|k| k * 1024.0)
}

fn join(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:e}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        k if k % 2 == 1 => s[k / 2],
        k => 0.5 * (s[k / 2 - 1] + s[k / 2]),
    }
}

/// Child mode: one method at one size; prints a `RESULT` line.
fn child(method: &str, n: usize, runs: usize, dev: &Device, dtype: DType) -> Res<()> {
    if method == "dense" && !dev.is_cpu() {
        return Err("the dense reference runs on the CPU only".into());
    }
    let problem = Problem::new(n);
    let base_kib = read_status_kib("VmHWM:").unwrap_or(0);
    let large = n >= LARGE;
    let mut times = Vec::with_capacity(runs);
    let (step, extra) = match method {
        "ours" => {
            let gp = build_gp(&problem, dev, dtype)?;
            if large {
                ours_step(&build_gp(&Problem::new(WARMUP_N), dev, dtype)?)?;
            } else {
                ours_step(&gp)?;
            }
            let mut step = Step::default();
            for _ in 0..runs {
                let t = Instant::now();
                step = ours_step(&gp)?;
                times.push(t.elapsed().as_secs_f64());
            }
            let hwm = read_status_kib("VmHWM:").unwrap_or(0);
            let rank = preconditioner_rank(&gp)?;
            (step, format!("hwm_kib={hwm} rank={rank}"))
        }
        "dense" => {
            dense_step(&Problem::new(if large { WARMUP_N } else { n }))?;
            let mut out = (Step::default(), Phases::default());
            let mut nll_part = Vec::with_capacity(runs);
            for _ in 0..runs {
                let t = Instant::now();
                out = dense_step(&problem)?;
                times.push(t.elapsed().as_secs_f64());
                nll_part.push(out.1.build + out.1.cholesky + out.1.solve);
            }
            let hwm = read_status_kib("VmHWM:").unwrap_or(0);
            let ph = out.1;
            (
                out.0,
                format!(
                    "hwm_kib={hwm} phases={},{},{},{},{} nllpart={}",
                    ph.build,
                    ph.cholesky,
                    ph.solve,
                    ph.inverse,
                    ph.gradient,
                    join(&nll_part)
                ),
            )
        }
        other => return Err(format!("unknown method {other}").into()),
    };
    println!(
        "RESULT times={} nll={:e} fit={:e} logdet={:e} logdet_se={:e} grads={} iters={},{} \
         converged={} split={},{} base_kib={base_kib} {extra}",
        join(&times),
        step.nll,
        step.data_fit,
        step.logdet,
        step.logdet_se,
        join(&step.grads),
        step.iters.0,
        step.iters.1,
        step.converged,
        step.split.0,
        step.split.1,
    );
    Ok(())
}

/// A child's `RESULT` line, parsed.
#[derive(Clone, Debug, Default)]
struct ChildResult {
    times: Vec<f64>,
    step: Step,
    hwm_kib: f64,
    base_kib: f64,
    rank: Option<usize>,
    phases: Vec<f64>,
    /// Dense only: build + Cholesky + solve of each run (the NLL without its gradient).
    nll_part: Vec<f64>,
}

fn parse_list(v: &str) -> Vec<f64> {
    v.split(',').filter_map(|x| x.parse().ok()).collect()
}

fn run_child(
    method: &str,
    n: usize,
    runs: usize,
    device: device::Choice,
    f32: bool,
) -> Res<ChildResult> {
    let exe = std::env::current_exe()?;
    let mut args = vec![
        "--child".to_string(),
        method.to_string(),
        n.to_string(),
        runs.to_string(),
        "--device".to_string(),
        device.spec(),
    ];
    if f32 {
        args.push("--f32".into());
    }
    let out = Command::new(exe)
        .args(&args)
        .stderr(Stdio::inherit())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("child {method} N={n} on {device} failed ({})", out.status).into());
    }
    let line = text
        .lines()
        .find(|l| l.starts_with("RESULT "))
        .ok_or("the child printed no RESULT line")?;
    let mut r = ChildResult::default();
    for kv in line.split_whitespace().skip(1) {
        let Some((k, v)) = kv.split_once('=') else {
            continue;
        };
        match k {
            "times" => r.times = parse_list(v),
            "nll" => r.step.nll = v.parse()?,
            "fit" => r.step.data_fit = v.parse()?,
            "logdet" => r.step.logdet = v.parse()?,
            "logdet_se" => r.step.logdet_se = v.parse()?,
            "grads" => r.step.grads = parse_list(v),
            "iters" => {
                let it = parse_list(v);
                r.step.iters = (it[0] as usize, it[1] as usize);
            }
            "converged" => r.step.converged = v == "true",
            "split" => {
                let sp = parse_list(v);
                r.step.split = (sp[0], sp[1]);
            }
            "hwm_kib" => r.hwm_kib = v.parse()?,
            "base_kib" => r.base_kib = v.parse()?,
            "rank" => r.rank = Some(v.parse()?),
            "phases" => r.phases = parse_list(v),
            "nllpart" => r.nll_part = parse_list(v),
            _ => {}
        }
    }
    Ok(r)
}

// ---------------------------------------------------------------------------------------------
// The report.

fn fmt_bytes(b: f64) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    if b >= GIB {
        format!("{:.2} GiB", b / GIB)
    } else {
        format!("{:.0} MiB", b / (1u64 << 20) as f64)
    }
}

fn parse_sizes(s: &str) -> Res<Vec<usize>> {
    s.split(',')
        .map(|t| {
            let v: f64 = t.trim().parse()?;
            if !(v >= 2.0 && v.fract() == 0.0) {
                return Err(format!("bad size {t}").into());
            }
            Ok(v as usize)
        })
        .collect()
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs()
}

/// `|g - h| / |h|` over the gradient vectors.
fn grad_rel(g: &[f64], h: &[f64]) -> f64 {
    let num: f64 = g.iter().zip(h).map(|(a, b)| (a - b).powi(2)).sum();
    let den: f64 = h.iter().map(|b| b * b).sum();
    (num / den).sqrt()
}

fn main() -> Res<()> {
    let all_args: Vec<String> = std::env::args().skip(1).collect();
    let (choice, args) = device::choice_from_args();
    let f32 = args.iter().any(|a| a == "--f32");
    // Fails here, in one line, when the device cannot be used (the children open it again).
    let dev = device::open_or_exit(choice);
    if args.first().map(String::as_str) == Some("--child") {
        let get = |i: usize| args.get(i).ok_or("--child needs METHOD N RUNS");
        let dtype = if f32 { DType::F32 } else { DType::F64 };
        return child(get(1)?, get(2)?.parse()?, get(3)?.parse()?, &dev, dtype);
    }
    let start = Instant::now();
    let mut sizes = vec![10_000, 100_000];
    let mut runs = 3usize;
    let mut dense = true;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--sizes" => {
                sizes = parse_sizes(args.get(i + 1).ok_or("--sizes needs a list: 1e4,1e5")?)?;
                i += 1;
            }
            "--runs" => {
                runs = args.get(i + 1).ok_or("--runs needs a number")?.parse()?;
                if runs == 0 {
                    return Err("--runs must be at least 1".into());
                }
                i += 1;
            }
            "--no-dense" => dense = false,
            "--f32" => {}
            other => {
                return Err(format!(
                    "unknown argument {other} (options: --sizes 1e4,1e5 --runs R --no-dense --f32 \
                     --device cpu|cuda|cuda:N)"
                )
                .into())
            }
        }
        i += 1;
    }

    let nproc = std::thread::available_parallelism().map_or(0, |p| p.get());
    let mem_total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or("?".into(), |k| fmt_bytes(k * 1024.0));
    let dtype_name = if f32 { "f32" } else { "f64" };
    println!(
        "# Exact GP training step: `cargo run --release{} --example bench_gp{}{}`",
        if cfg!(feature = "cuda") {
            " --features cuda"
        } else {
            ""
        },
        if all_args.is_empty() { "" } else { " -- " },
        all_args.join(" ")
    );
    println!();
    println!(
        "Machine: {nproc} CPUs (nproc), {}, {} RAM, rayon threads {}, ISA {}",
        report::cpu_model(),
        mem_total,
        rayon::current_num_threads(),
        lazy_kernels::backend::cpu::isa::detect().name()
    );
    let s = GpSettings::default();
    println!(
        "Problem: N uniform points in [0,1]^3, y = sin(2 pi x0) cos(pi x1) + 0.5 sin(3 x2) + \
         {NOISE_SD} eps; Gaussian kernel, lengthscales {LENGTHSCALES:?}, outputscale \
         {OUTPUTSCALE}, noise variance {NOISE} (+ floor {}); ours in {dtype_name}, default \
         GpSettings (train tol {}, {} probes, preconditioner {:?}); dense in f64.",
        s.noise_floor, s.train_tol, s.probes, s.preconditioner
    );
    println!();

    println!(
        "Device: ours on {} (`--device {choice}`), the dense reference on the CPU.",
        device::describe(&dev)
    );
    println!();

    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for &n in &sizes {
        let r = if n >= LARGE { runs.div_ceil(3) } else { runs };
        let dense_bytes = (n as f64) * (n as f64) * 8.0;
        let avail = mem_available_bytes().unwrap_or(0.0);
        let dense_res = if !dense {
            Err("not run (--no-dense)".to_string())
        } else if dense_bytes > 0.5 * avail {
            Err(format!(
                "does not fit: the matrix alone needs {:.1} GB ({}), {} available",
                dense_bytes / 1e9,
                fmt_bytes(dense_bytes),
                fmt_bytes(avail)
            ))
        } else {
            eprintln!("bench_gp: dense N = {n}, runs: {r}...");
            run_child("dense", n, r, device::Choice::Cpu, false).map_err(|e| format!("failed: {e}"))
        };
        eprintln!("bench_gp: ours N = {n} on {choice}, runs: {r}...");
        let ours = run_child("ours", n, r, choice, f32);
        rows.push((n, choice.spec(), r, ours, dense_res.clone(), dense_bytes));
        if let Ok(d) = &dense_res {
            let ph = &d.phases;
            if ph.len() == 5 {
                notes.push(format!(
                    "dense N = {}: build {:.2} s, Cholesky {:.2} s ({:.1} GFLOP/s), solve {:.2} s, \
                     L^-1 {:.2} s, A^-1 tiles and gradient {:.2} s (last run)",
                    report::fmt_n(n),
                    ph[0],
                    ph[1],
                    (n as f64).powi(3) / 3.0 / ph[1] / 1e9,
                    ph[2],
                    ph[3],
                    ph[4]
                ));
            }
        }
    }

    println!(
        "| N | device | runs | ours (s/step) | dense (s/step) | dense / ours | dense NLL only, \
         no gradient (s) | dense NLL only / ours | peak RSS ours | peak RSS dense | dense matrix \
         N^2 f64 | NLL ours | NLL dense | NLL rel. diff | grad rel. diff | CG iterations (data, \
         max probe) | preconditioner rank |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let kib = 1024.0;
    for (n, device, r, ours, dense_res, dense_bytes) in &rows {
        let (ours_t, ours_mem, nll_o, iters, rank) = match ours {
            Ok(o) => (
                format!("{:.3}", median(&o.times)),
                fmt_bytes(o.hwm_kib * kib),
                format!("{:.6e}", o.step.nll),
                format!(
                    "{}, {}{}",
                    o.step.iters.0,
                    o.step.iters.1,
                    if o.step.converged {
                        ""
                    } else {
                        " (NOT converged)"
                    }
                ),
                o.rank.map_or("?".into(), |r| r.to_string()),
            ),
            Err(e) => {
                let e = format!("failed: {e}");
                (e.clone(), e.clone(), e.clone(), e.clone(), e)
            }
        };
        let dash = || "-".to_string();
        let [dense_t, ratio, part_t, part_ratio, dense_mem, nll_d, nll_rel, g_rel] =
            match (dense_res, ours) {
                (Ok(d), o) => {
                    let dt = median(&d.times);
                    let pt = median(&d.nll_part);
                    let [ratio, part_ratio, nr, gr] = match o {
                        Ok(o) => {
                            let ot = median(&o.times);
                            [
                                format!("{:.1}x", dt / ot),
                                format!("{:.1}x", pt / ot),
                                format!("{:.2e}", rel(o.step.nll, d.step.nll)),
                                format!("{:.2e}", grad_rel(&o.step.grads, &d.step.grads)),
                            ]
                        }
                        Err(_) => [dash(), dash(), dash(), dash()],
                    };
                    [
                        format!("{dt:.3}"),
                        ratio,
                        format!("{pt:.3}"),
                        part_ratio,
                        fmt_bytes(d.hwm_kib * kib),
                        format!("{:.6e}", d.step.nll),
                        nr,
                        gr,
                    ]
                }
                (Err(e), _) => [
                    e.clone(),
                    dash(),
                    dash(),
                    dash(),
                    dash(),
                    dash(),
                    dash(),
                    dash(),
                ],
            };
        println!(
            "| {} | {device} | {r} | {ours_t} | {dense_t} | {ratio} | {part_t} | {part_ratio} | \
             {ours_mem} | {dense_mem} | {} | {nll_o} | {nll_d} | {nll_rel} | {g_rel} | {iters} | \
             {rank} |",
            report::fmt_n(*n),
            fmt_bytes(*dense_bytes),
        );
    }
    println!();
    println!(
        "Times: median of the runs after a warm-up (one full run below N = {LARGE}, a run at \
         N = {WARMUP_N} from there on); dense on the CPU in f64 with the exact gradient (A^-1 \
         formed, about N^3 flops). Dense NLL only: the build, Cholesky and solve of the same \
         runs (median), what any dense step costs before its gradient (a dense step with a \
         Hutchinson gradient would cost about that plus O(N^2) per probe). Peak RSS: VmHWM of the method's own child process after its \
         runs (its baseline, the process with the data, in the details below); on CUDA the \
         host's only. NLL rel. diff: |ours - dense| / |dense|; grad rel. diff: |g_ours - \
         g_dense| / |g_dense| over the gradient w.r.t. (raw l0, l1, l2, raw outputscale, raw \
         noise, mean)."
    );
    println!();
    println!("Details:");
    for (n, device, _, ours, dense_res, _) in &rows {
        if let Ok(o) = ours {
            println!(
                "- ours N = {} on {device}: times {:?} s (last run: nll() {:.3} s, backward() \
                 {:.3} s); data fit {:.6e}, log det {:.6e} +- {:.2e} (probe std. error); \
                 baseline RSS {}",
                report::fmt_n(*n),
                o.times,
                o.step.split.0,
                o.step.split.1,
                o.step.data_fit,
                o.step.logdet,
                o.step.logdet_se,
                fmt_bytes(o.base_kib * kib)
            );
            println!("  gradient ours:  {}", fmt_grads(&o.step.grads));
        }
        if let Ok(d) = dense_res {
            println!(
                "- dense N = {}: times {:?} s; data fit {:.6e}, log det {:.6e}; baseline RSS {}",
                report::fmt_n(*n),
                d.times,
                d.step.data_fit,
                d.step.logdet,
                fmt_bytes(d.base_kib * kib)
            );
            println!("  gradient dense: {}", fmt_grads(&d.step.grads));
        }
    }
    for note in &notes {
        println!("- {note}");
    }
    println!();
    println!(
        "Whole program: {:.1} s wall time.",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn fmt_grads(g: &[f64]) -> String {
    g.iter()
        .zip(GRAD_NAMES)
        .map(|(v, name)| format!("{name} {v:+.5e}"))
        .collect::<Vec<_>>()
        .join(", ")
}
