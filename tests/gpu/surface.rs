//! The public surface above the reductions, on the device under test against the CPU, in f32
//! and f64: `KernelOperator::solve` (pivoted Cholesky of automatic and of fixed rank, and plain
//! CG) with its gradients, `solve_logdet` with a fixed seed, `gp::ExactGp` (`nll`, `backward`,
//! `fit`, `predict`), every `Kernel` family and combinations through `matmul` and its gradient,
//! and `rows`, `diag`, `to_dense`, `t`, `lazy`.
//!
//! Each check runs one closure twice, on the device and on the CPU, and compares every output it
//! names: `max |device - CPU| / max |CPU|` per output, against a tolerance per output and dtype.
//! f64 tolerances are fixed. Where an f32 result goes through an iterative solve (solves,
//! log-determinants, GP), how far two f32 computations may drift apart depends on the
//! problem's conditioning, which no fixed number captures; there the closure also runs on the
//! CPU in f64 (same settings, same probes), and the f32 tolerance is the larger of a fixed
//! floor and [`F32_GAP_FACTOR`] times the CPU's own f32-vs-f64 difference: an f32 result on
//! the device may differ from the f32 result on the CPU by a few times what f32 rounding does
//! to the CPU's, no more. Both are printed (`err (tol ...)`). Besides the comparisons, the
//! solve checks measure the true residual of both devices' solutions and of the adjoint solve
//! with an independent f64 operator on the CPU, and several checks test identities on the
//! device itself (`d/dalpha = -sum(a * d/db)`, `rows` against `to_dense`, `t()` against the
//! transpose, ...).
//!
//! Sizes are small (N <= 1500) so that the checks run in seconds on a GPU: the time goes to
//! NVRTC (one compilation per new formula), so formulas and sizes are shared between checks.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use lazy_kernels::gp::{ExactGp, FitOptions, GpSettings, NllMethod, Positive};
use lazy_kernels::{
    Axis, Kernel, KernelOperator, LazyTensor, LogdetOptions, Preconditioner, Rank, Ridge,
    SolveInfo, SolveOptions, Stop, linalg,
};

use super::common::{Rng, flat};
use super::{Check, Ctx, Res, check, dt, max_err, on_device, one_line, same_kind, tol};

/// How many times the CPU's own f32-vs-f64 difference an f32 result may differ between the
/// device and the CPU: each f32 computation is about that far from the f64 one, in directions
/// set by different roundings, so their distance is up to about twice that; twice more for the
/// spread of a maximum over elements.
const F32_GAP_FACTOR: f64 = 4.0;

pub(super) fn checks(v: &mut Vec<Check>) {
    let both = [DType::F32, DType::F64];
    let pres = [
        ("pchol-auto", Preconditioner::default()),
        (
            "pchol-rank30",
            Preconditioner::PivotedCholesky(Rank::Fixed(30)),
        ),
        ("none", Preconditioner::None),
    ];
    for (label, pre) in pres {
        for dtype in both {
            v.push(check(
                format!("solve/{label}/a,grad b,x,l,alpha/{}", dt(dtype)),
                move |ctx| solve_check(ctx, pre, dtype),
            ));
        }
    }
    for dtype in both {
        v.push(check(
            format!("logdet/seeded/value,a,grad l/{}", dt(dtype)),
            move |ctx| logdet_check(ctx, dtype),
        ));
    }
    for dtype in both {
        for method in [NllMethod::Stochastic, NllMethod::Exact] {
            v.push(check(
                format!("gp/nll,backward/{method:?}/{}", dt(dtype)),
                move |ctx| gp_nll(ctx, dtype, method),
            ));
            v.push(check(
                format!("gp/fit 3 steps/{method:?}/{}", dt(dtype)),
                move |ctx| gp_fit(ctx, dtype, method),
            ));
        }
        v.push(check(
            format!("gp/predict mean,variance/{}", dt(dtype)),
            move |ctx| gp_predict(ctx, dtype),
        ));
    }
    for (i, spec) in kernel_specs().iter().enumerate() {
        for dtype in both {
            v.push(check(
                format!("kernel/{}/matmul,grad/{}", spec.name, dt(dtype)),
                move |ctx| kernel_check(ctx, i, dtype),
            ));
        }
    }
    for dtype in both {
        v.push(check(
            format!("operator/rows,diag,to_dense,t,lazy/{}", dt(dtype)),
            move |ctx| operator_parts(ctx, dtype),
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// Runs on both devices and their comparison
// ---------------------------------------------------------------------------------------------

/// One output of a run, with its tolerances.
struct Out {
    name: String,
    value: Tensor,
    /// A value read back to the host (a report's number): not on the device.
    host: bool,
    /// Tolerance in f64.
    tol64: f64,
    /// Tolerance in f32; with a yardstick, the least one.
    tol32: f64,
}

impl Out {
    fn new(name: impl Into<String>, value: &Tensor, tol64: f64, tol32: f64) -> Out {
        Out {
            name: name.into(),
            value: value.clone(),
            host: false,
            tol64,
            tol32,
        }
    }

    fn host(name: impl Into<String>, values: &[f64], tol64: f64, tol32: f64) -> Res<Out> {
        Ok(Out {
            name: name.into(),
            value: Tensor::new(values, &Device::Cpu)?,
            host: true,
            tol64,
            tol32,
        })
    }
}

/// What one run produced: the outputs to compare and anything else a check looks at.
struct Side<T> {
    outs: Vec<Out>,
    extra: T,
}

/// The runs of one check: on the device, on the CPU, and (f32 with a yardstick) on the CPU in
/// f64.
struct Runs<T> {
    dtype: DType,
    dev: Side<T>,
    cpu: Side<T>,
    f64_cpu: Option<Side<T>>,
}

/// Runs `run` on the device under test and on the CPU in `dtype`, and for f32 with
/// `yardstick` on the CPU in f64 too.
fn runs<T>(
    ctx: &Ctx,
    dtype: DType,
    yardstick: bool,
    run: impl Fn(&Device, DType) -> Res<Side<T>>,
) -> Res<Runs<T>> {
    let on = |dev: &Device, dt: DType, what: &str| -> Res<Side<T>> {
        run(dev, dt).map_err(|e| format!("{what}: {}", one_line(e)).into())
    };
    let dev = on(&ctx.dev, dtype, "on the device")?;
    let cpu = on(&Device::Cpu, dtype, "on the CPU")?;
    let f64_cpu = if yardstick && dtype != DType::F64 {
        Some(on(&Device::Cpu, DType::F64, "on the CPU in f64")?)
    } else {
        None
    };
    Ok(Runs {
        dtype,
        dev,
        cpu,
        f64_cpu,
    })
}

/// `max |got - want| / max |want|` (infinite where only one of them is NaN).
fn rel_dist(got: &Tensor, want: &Tensor) -> Res<f64> {
    let g = flat(&got.to_device(&Device::Cpu)?);
    let w = flat(&want.to_device(&Device::Cpu)?);
    if g.len() != w.len() {
        return Err(format!("{} values against {}", g.len(), w.len()).into());
    }
    let scale = w.iter().fold(1e-300, |m: f64, v| v.abs().max(m));
    Ok(max_err(&g, &w, &vec![scale; w.len()]))
}

impl<T> Runs<T> {
    /// The tolerance of output `k` and how it came about.
    fn tolerance(&self, k: usize) -> Res<(f64, String)> {
        let out = &self.cpu.outs[k];
        Ok(match (&self.f64_cpu, self.dtype) {
            (_, DType::F64) => (out.tol64, String::new()),
            (None, _) => (out.tol32, String::new()),
            (Some(r), _) => {
                let gap = rel_dist(&out.value, &r.outs[k].value)?;
                let t = out.tol32.max(F32_GAP_FACTOR * gap);
                (
                    t,
                    format!(
                        " (max of {:.0e} and {F32_GAP_FACTOR} x the CPU's f32-vs-f64 \
                         difference {gap:.1e})",
                        out.tol32
                    ),
                )
            }
        })
    }

    /// Compares every output of the device run with the CPU's.
    fn compare(&self) -> Res<String> {
        let (dev, cpu) = (&self.dev.outs, &self.cpu.outs);
        if dev.len() != cpu.len() {
            return Err(format!(
                "{} outputs on the device, {} on the CPU",
                dev.len(),
                cpu.len()
            )
            .into());
        }
        let mut report = Vec::new();
        for (k, (g, w)) in dev.iter().zip(cpu).enumerate() {
            if g.host {
                if g.value.dims() != w.value.dims() {
                    return Err(format!(
                        "{}: {:?} against {:?}",
                        g.name,
                        g.value.dims(),
                        w.value.dims()
                    )
                    .into());
                }
            } else {
                same_kind(&g.value, &w.value, &g.name)?;
            }
            let err = rel_dist(&g.value, &w.value)?;
            let (t, how) = self.tolerance(k)?;
            if err > t {
                return Err(format!("{}: error {err:.2e} > {t:.1e}{how}", g.name).into());
            }
            report.push(if self.f64_cpu.is_some() {
                format!("{} {err:.1e} (tol {t:.0e})", g.name)
            } else {
                format!("{} {err:.1e}", g.name)
            });
        }
        Ok(report.join(", "))
    }
}

fn grad_of(g: &GradStore, v: &Var, name: &str) -> Res<Tensor> {
    g.get(v)
        .cloned()
        .ok_or_else(|| format!("no gradient for {name}").into())
}

/// The gradients of named variables as outputs `d<name>`, with the tolerances of gradients
/// through kernel products (1e-9 in f64, 5e-4 in f32).
fn grad_outs<'a>(
    g: &GradStore,
    vars: impl IntoIterator<Item = (&'a str, &'a Var)>,
) -> Res<Vec<Out>> {
    vars.into_iter()
        .map(|(name, v)| {
            Ok(Out::new(
                format!("d{name}"),
                &grad_of(g, v, name)?,
                1e-9,
                5e-4,
            ))
        })
        .collect()
}

/// A learnable tensor of `values` in `dtype` on `dev`.
fn var(values: &[f64], dtype: DType, dev: &Device) -> Res<Var> {
    Ok(Var::from_tensor(
        &Tensor::new(values, &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(dev)?,
    )?)
}

fn to(t: &Tensor, dtype: DType, dev: &Device) -> Res<Tensor> {
    Ok(t.to_dtype(dtype)?.to_device(dev)?)
}

// ---------------------------------------------------------------------------------------------
// Solve
// ---------------------------------------------------------------------------------------------

/// Points of the solve and log-determinant checks: uniform in the unit square.
const SOLVE_N: usize = 1500;
/// The Gaussian kernel's lengthscale and the ridge: `K + alpha I` has a condition number of a
/// few thousand, so plain CG takes a few hundred iterations and the preconditioner matters.
const SOLVE_L: f64 = 0.15;
const SOLVE_ALPHA: f64 = 0.2;

/// `x` `(N, 2)`; `b` `(N, 2)`, a smooth column and a rough one; `w` `(N, 2)` the weights of
/// the loss `sum(a * w)`.
fn solve_problem() -> Res<(Tensor, Tensor, Tensor)> {
    let mut r = Rng(21);
    let x = r.tensor(&[SOLVE_N, 2], 0.0, 1.0);
    let smooth =
        ((x.narrow(1, 0, 1)? * 6.0)?.sin()? + ((x.narrow(1, 1, 1)? * 5.0)?.cos()? * 0.3)?)?;
    let rough = r.tensor(&[SOLVE_N, 1], -1.0, 1.0);
    let b = Tensor::cat(&[&smooth, &rough], 1)?;
    let w = r.tensor(&[SOLVE_N, 2], -1.0, 1.0);
    Ok((x, b, w))
}

/// Solve settings: f64 solves go to 1e-10, so that two solutions agree far below any error
/// worth catching even where rounding makes the devices stop one iteration apart; f32 solves
/// keep the default 1e-6 (they may stall at the f32 rounding floor, reported as such).
fn solve_tol(dtype: DType) -> f64 {
    if dtype == DType::F64 { 1e-10 } else { 1e-6 }
}

/// `t` rounded to `dtype`, back in f64: the values a solve in `dtype` sees.
fn rounded(t: &Tensor, dtype: DType) -> Res<Tensor> {
    Ok(t.to_dtype(dtype)?.to_dtype(DType::F64)?)
}

fn rounded_scalar(v: f64, dtype: DType) -> Res<f64> {
    Ok(rounded(&Tensor::new(&[v], &Device::Cpu)?, dtype)?.to_vec1::<f64>()?[0])
}

/// The largest relative residual `|(K + alpha I) a - rhs| / |rhs|` over the columns, with `K`
/// an f64 operator on the CPU.
fn residual(k64: &KernelOperator, alpha: f64, a: &Tensor, rhs: &Tensor) -> Res<f64> {
    let a = a.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    let r = ((k64.matmul(&a)? + (&a * alpha)?)? - rhs)?;
    let num = flat(&r.sqr()?.sum(0)?.sqrt()?);
    let den = flat(&rhs.sqr()?.sum(0)?.sqrt()?);
    Ok(num.iter().zip(&den).map(|(n, d)| n / d).fold(0.0, f64::max))
}

/// Whether a solve ended well: every column converged (f64), or converged or stalled at the
/// rounding floor (f32).
fn solve_ended_well(info: &SolveInfo, dtype: DType, side: &str) -> Res<()> {
    if dtype == DType::F64 && !info.all_converged() {
        return Err(format!(
            "{side}: the solve did not converge: {:?}, residuals {:?}",
            info.stops, info.residuals
        )
        .into());
    }
    if info
        .stops
        .iter()
        .any(|s| matches!(s, Stop::MaxIters | Stop::Breakdown))
    {
        return Err(format!(
            "{side}: the solve stopped: {:?}, residuals {:?}",
            info.stops, info.residuals
        )
        .into());
    }
    Ok(())
}

/// `(K + alpha I) a = b` with a Gaussian kernel, `alpha` a tensor, and the gradients of
/// `sum(a * w)` with respect to `b`, the points, the lengthscale and `alpha`.
fn solve_check(ctx: &Ctx, pre: Preconditioner, dtype: DType) -> Res<String> {
    let (x, b, w) = solve_problem()?;
    let opts = SolveOptions {
        tol: solve_tol(dtype),
        preconditioner: pre,
        ..SolveOptions::default()
    };
    let runs = runs(ctx, dtype, true, |dev, dt| {
        let xv = Var::from_tensor(&to(&x, dt, dev)?)?;
        let bv = Var::from_tensor(&to(&b, dt, dev)?)?;
        let lv = var(&[SOLVE_L], dt, dev)?;
        let av = var(&[SOLVE_ALPHA], dt, dev)?;
        let k = KernelOperator::new(
            Kernel::gaussian(lv.as_tensor()),
            xv.as_tensor(),
            xv.as_tensor(),
        )?;
        let (a, info) = k.solve(bv.as_tensor(), Ridge::Tensor(av.as_tensor().clone()), &opts)?;
        let g = (&a * to(&w, dt, dev)?)?.sum_all()?.backward()?;
        let db = grad_of(&g, &bv, "b")?;
        let dalpha = grad_of(&g, &av, "alpha")?;
        let outs = vec![
            Out::new("a", &a, 1e-6, 1e-4),
            Out::new("db", &db, 1e-6, 1e-4),
            Out::new("dx", &grad_of(&g, &xv, "x")?, 1e-6, 1e-4),
            Out::new("dl", &grad_of(&g, &lv, "l")?, 1e-6, 1e-4),
            Out::new("dalpha", &dalpha, 1e-6, 1e-4),
        ];
        Ok(Side {
            outs,
            extra: (a, db, dalpha, info),
        })
    })?;
    let (a_d, db_d, dalpha_d, info_d) = &runs.dev.extra;
    let (a_c, db_c, dalpha_c, info_c) = &runs.cpu.extra;
    solve_ended_well(info_d, dtype, "device")?;
    solve_ended_well(info_c, dtype, "CPU")?;
    let fixed = matches!(pre, Preconditioner::PivotedCholesky(Rank::Fixed(_)));
    if (fixed || dtype == DType::F64) && info_d.preconditioner_rank != info_c.preconditioner_rank {
        return Err(format!(
            "preconditioner rank {} on the device, {} on the CPU",
            info_d.preconditioner_rank, info_c.preconditioner_rank
        )
        .into());
    }

    // True residuals of the solutions and of the adjoint solves (d/db = (K + alpha I)^-1 w), by
    // an f64 operator on the CPU built from the values the solve saw (rounded to its dtype).
    let k64 = KernelOperator::new(
        Kernel::gaussian(&rounded(&Tensor::new(&[SOLVE_L], &Device::Cpu)?, dtype)?),
        &rounded(&x, dtype)?,
        &rounded(&x, dtype)?,
    )?;
    let alpha = rounded_scalar(SOLVE_ALPHA, dtype)?;
    let (b64, w64) = (rounded(&b, dtype)?, rounded(&w, dtype)?);
    let (res_d, res_c) = (
        residual(&k64, alpha, a_d, &b64)?,
        residual(&k64, alpha, a_c, &b64)?,
    );
    let (adj_d, adj_c) = (
        residual(&k64, alpha, db_d, &w64)?,
        residual(&k64, alpha, db_c, &w64)?,
    );
    let floor = 2.0 * opts.tol;
    for (res, info, side) in [(res_d, info_d, "device"), (res_c, info_c, "CPU")] {
        // The report gives the residual of the returned solution.
        let said = info.max_residual();
        if (res - said).abs() > 0.1 * res.max(said) + 1e-13 {
            return Err(format!("{side}: true residual {res:.2e}, reported {said:.2e}").into());
        }
        if dtype == DType::F64 && res > floor {
            return Err(format!("{side}: true residual {res:.2e} > {floor:.0e}").into());
        }
    }
    if res_d > (10.0 * res_c).max(floor) {
        return Err(format!("solution: true residual {res_d:.1e}, CPU {res_c:.1e}").into());
    }
    if adj_d > (10.0 * adj_c).max(floor) {
        return Err(format!("adjoint solve: true residual {adj_d:.1e}, CPU {adj_c:.1e}").into());
    }
    // d/dalpha = -a^T (K + alpha I)^-1 w = -sum(a * d/db), on each device.
    let identity_tol = if dtype == DType::F64 { 1e-10 } else { 1e-4 };
    for (a, db, dalpha, side) in [
        (a_d, db_d, dalpha_d, "device"),
        (a_c, db_c, dalpha_c, "CPU"),
    ] {
        let prod = (a.to_dtype(DType::F64)? * db.to_dtype(DType::F64)?)?;
        let s = prod.sum_all()?.to_vec0::<f64>()?;
        let scale = prod.abs()?.sum_all()?.to_vec0::<f64>()?;
        let da = flat(dalpha)[0];
        let e = (da + s).abs() / scale;
        if e > identity_tol {
            return Err(format!(
                "{side}: d/dalpha {da:.6e} but -sum(a * d/db) = {:.6e} (error {e:.1e})",
                -s
            )
            .into());
        }
    }
    on_device(a_d, "the solution")?;
    let cmp = runs.compare()?;
    Ok(format!(
        "rank {} (CPU {}), it {} (CPU {}); residual {res_d:.1e} (CPU {res_c:.1e}), adjoint \
         {adj_d:.1e} (CPU {adj_c:.1e}); {cmp}",
        info_d.preconditioner_rank,
        info_c.preconditioner_rank,
        info_d.iterations,
        info_c.iterations,
    ))
}

// ---------------------------------------------------------------------------------------------
// Log-determinant
// ---------------------------------------------------------------------------------------------

/// `solve_logdet` with a fixed seed on the solve problem (first column of `b`, as a vector).
/// The probes come from a host generator, so both devices estimate from the same probes: in
/// f64 the estimates must agree to 1e-8 relative. In f32 the kernel products are rounded to
/// f32 (relative 1e-7 per product, differently on each device), which moves each probe's
/// Lanczos coefficients and so the quadrature: the tolerance is the larger of 1e-5 and
/// [`F32_GAP_FACTOR`] times the CPU's own f32-vs-f64 difference with the same probes.
fn logdet_check(ctx: &Ctx, dtype: DType) -> Res<String> {
    let (x, b, _) = solve_problem()?;
    let b = b.narrow(1, 0, 1)?.squeeze(1)?;
    let opts = SolveOptions {
        tol: solve_tol(dtype),
        ..SolveOptions::default()
    };
    let ld = LogdetOptions {
        probes: 8,
        lanczos_iters: 100,
        seed: 2026,
        ..LogdetOptions::default()
    };
    let runs = runs(ctx, dtype, true, |dev, dt| {
        let xd = to(&x, dt, dev)?;
        let lv = var(&[SOLVE_L], dt, dev)?;
        let k = KernelOperator::new(Kernel::gaussian(lv.as_tensor()), &xd, &xd)?;
        let (a, logdet, info, li) = k.solve_logdet(&to(&b, dt, dev)?, SOLVE_ALPHA, &opts, &ld)?;
        let value = logdet.to_dtype(DType::F64)?.to_vec0::<f64>()?;
        let rounding = if dt == DType::F64 { 1e-15 } else { 1e-7 };
        if (value - li.value).abs() > rounding * li.value.abs() {
            return Err(format!("the tensor holds {value}, the report {}", li.value).into());
        }
        let g = logdet.backward()?;
        let outs = vec![
            Out::new("logdet", &logdet, 1e-8, 1e-5),
            Out::new("a", &a, 1e-6, 1e-4),
            Out::new("dl", &grad_of(&g, &lv, "l")?, 1e-6, 1e-4),
        ];
        Ok(Side {
            outs,
            extra: (info, li),
        })
    })?;
    let ((info_d, li_d), (info_c, li_c)) = (&runs.dev.extra, &runs.cpu.extra);
    solve_ended_well(info_d, dtype, "device")?;
    solve_ended_well(info_c, dtype, "CPU")?;
    // What tells a failed comparison's cause: the preconditioner's exact part (pivots) and
    // the probes' iterations.
    let why = format!(
        "rank {} / {} (CPU), log det(P) {:.10e} / {:.10e}, probe iterations {:?} / {:?}",
        info_d.preconditioner_rank,
        info_c.preconditioner_rank,
        li_d.preconditioner_logdet,
        li_c.preconditioner_logdet,
        li_d.probe_iterations,
        li_c.probe_iterations
    );
    let cmp = runs.compare().map_err(|e| format!("{e}; {why}"))?;
    Ok(format!(
        "log det {:.6} +- {:.2} (CPU {:.6}), rank {}; {cmp}",
        li_d.value, li_d.std_error, li_c.value, info_d.preconditioner_rank
    ))
}

// ---------------------------------------------------------------------------------------------
// Gaussian processes
// ---------------------------------------------------------------------------------------------

const GP_N: usize = 800;

/// Training inputs `(N, 2)` uniform in the unit square, noisy targets `(N,)`, and 40 test
/// points in `[-0.3, 1.3]^2` (some outside the data, where the variance nears the prior).
fn gp_data() -> Res<(Tensor, Tensor, Tensor)> {
    let mut r = Rng(61);
    let x = r.tensor(&[GP_N, 2], 0.0, 1.0);
    let noise: Vec<f64> = (0..GP_N)
        .map(|_| (0..12).map(|_| r.uniform(0.0, 1.0)).sum::<f64>() - 6.0)
        .collect();
    let noise = Tensor::from_vec(noise, GP_N, &Device::Cpu)?;
    let f = ((x.narrow(1, 0, 1)? * 4.0)?.sin()? + (x.narrow(1, 1, 1)? * 3.0)?.cos()?)?;
    let y = (f.squeeze(1)? + (noise * 0.1)?)?;
    let x_new = r.tensor(&[40, 2], -0.3, 1.3);
    Ok((x, y, x_new))
}

/// Settings of the GP checks. The probes have a fixed seed. In f64 the training solves go to
/// 1e-8 (the default 1e-3 would let the two devices' estimates differ by the solves' error
/// where rounding makes a column stop one iteration apart); f32 keeps the default. Chunks of
/// 16 test points, so `predict` runs several variance solves. The NLL by the stochastic path
/// (what `nll_method` is for the checks that take one).
fn gp_settings(dtype: DType) -> GpSettings {
    let d = GpSettings::default();
    GpSettings {
        nll_method: NllMethod::Stochastic,
        probes: 8,
        seed: 11,
        predict_chunk: 16,
        train_tol: if dtype == DType::F64 {
            1e-8
        } else {
            d.train_tol
        },
        ..d
    }
}

/// A Matern 5/2 kernel with one lengthscale per dimension, times an output scale, with noise.
fn gp_model(
    data: &(Tensor, Tensor, Tensor),
    dev: &Device,
    dtype: DType,
    settings: &GpSettings,
) -> Res<ExactGp> {
    let l = Positive::new("lengthscale", &[0.3, 0.5], dtype, dev)?;
    let s = Positive::new("outputscale", &[1.0], dtype, dev)?;
    let noise = Positive::new("noise", &[0.02], dtype, dev)?;
    let (lc, sc) = (l.clone(), s.clone());
    let gp = ExactGp::new(
        &to(&data.0, dtype, dev)?,
        &to(&data.1, dtype, dev)?,
        vec![l, s],
        noise,
        move || Ok(Kernel::matern52(&lc.value()?).scale(&sc.value()?)),
    )?;
    Ok(gp.with_settings(settings.clone()))
}

/// `nll` and the gradient of every learned `Var` (lengthscales, output scale, noise, mean), by
/// the path `method` (the exact one factors the dense matrix on the device).
fn gp_nll(ctx: &Ctx, dtype: DType, method: NllMethod) -> Res<String> {
    let data = gp_data()?;
    let settings = GpSettings {
        nll_method: method,
        ..gp_settings(dtype)
    };
    let runs = runs(ctx, dtype, true, |dev, dt| {
        let gp = gp_model(&data, dev, dt, &settings)?;
        let (nll, report) = gp.nll()?;
        let g = nll.backward()?;
        let vars = gp.vars();
        let names = ["dlengthscale", "doutputscale", "dnoise", "dmean"];
        if vars.len() != names.len() {
            return Err(format!("{} learned Vars, expected {}", vars.len(), names.len()).into());
        }
        let mut outs = vec![Out::new("nll", &nll, 1e-8, 2e-6)];
        for (v, name) in vars.iter().zip(names) {
            outs.push(Out::new(name, &grad_of(&g, v, name)?, 1e-7, 1e-4));
        }
        Ok(Side {
            outs,
            extra: report,
        })
    })?;
    let (rd, rc) = (&runs.dev.extra, &runs.cpu.extra);
    if rd.method != method || rc.method != method {
        return Err(format!(
            "asked for {method:?}, took {:?} / {:?}",
            rd.method, rc.method
        )
        .into());
    }
    if !(rd.converged && rc.converged) {
        return Err(format!("the data solve did not converge: {rd:?} / {rc:?}").into());
    }
    if dtype == DType::F64 && rd.preconditioner_rank != rc.preconditioner_rank {
        return Err(format!(
            "preconditioner rank {} on the device, {} on the CPU",
            rd.preconditioner_rank, rc.preconditioner_rank
        )
        .into());
    }
    let cmp = runs.compare()?;
    Ok(format!(
        "nll {:.6} (CPU {:.6}), it {:?}, rank {}; {cmp}",
        rd.nll, rc.nll, rd.iterations, rd.preconditioner_rank
    ))
}

/// Three steps of `fit` (AdamW): the NLL of each step and every hyperparameter after them.
fn gp_fit(ctx: &Ctx, dtype: DType, method: NllMethod) -> Res<String> {
    let data = gp_data()?;
    let settings = GpSettings {
        nll_method: method,
        ..gp_settings(dtype)
    };
    let opts = FitOptions {
        optimizer: lazy_kernels::gp::Optimizer::AdamW,
        steps: 3,
        lr: 0.05,
        tol: 0.0,
        patience: 1,
        progress: false,
    };
    let runs = runs(ctx, dtype, true, |dev, dt| {
        let mut gp = gp_model(&data, dev, dt, &settings)?;
        let before = gp.values()?;
        let r = gp.fit(&opts)?;
        if r.trajectory.len() != opts.steps || r.stopped_early {
            return Err(format!(
                "{} steps (stopped early: {})",
                r.trajectory.len(),
                r.stopped_early
            )
            .into());
        }
        if gp.values()? == before {
            return Err("fit changed nothing".into());
        }
        let nlls: Vec<f64> = r.trajectory.iter().map(|s| s.report.nll).collect();
        let mut outs = vec![Out::host("step nlls", &nlls, 1e-8, 2e-6)?];
        for h in gp.hypers() {
            outs.push(Out::new(h.name(), &h.value()?, 1e-8, 1e-5));
        }
        outs.push(Out::new("noise", &gp.noise().value()?, 1e-8, 1e-5));
        outs.push(Out::new("mean", gp.mean().as_tensor(), 1e-8, 1e-5));
        Ok(Side { outs, extra: nlls })
    })?;
    let cmp = runs.compare()?;
    Ok(format!("nll {:.6?}; {cmp}", runs.dev.extra))
}

/// `predict` (mean and variance at 40 points, in chunks of 16) and the 95% interval.
///
/// The variance `k(x*, x*) - k*^T (K + s^2 I)^-1 k*` cancels where it is small (near the data):
/// in f32 the two devices' roundings then give variances that differ by up to ~1.5% of their
/// value (the first GPU run measured that), far more than f32's resolution. So variances are
/// compared as everything else here, relative to the largest variance (about the prior
/// variance, reached at the test points far from the data): an absolute error in units of the
/// prior, which is what the cancellation bounds. f32 gets the yardstick tolerance, and the
/// device's f32 variances are also compared with the f64 CPU variances under the same bound;
/// the largest per-point relative difference is printed, not tested.
fn gp_predict(ctx: &Ctx, dtype: DType) -> Res<String> {
    let data = gp_data()?;
    let settings = gp_settings(dtype);
    let runs = runs(ctx, dtype, true, |dev, dt| {
        let gp = gp_model(&data, dev, dt, &settings)?;
        let p = gp.predict(&to(&data.2, dt, dev)?)?;
        let (lower, upper) = p.interval()?;
        let outs = vec![
            Out::new("mean", &p.mean, 1e-8, 1e-4),
            Out::new("variance", &p.variance, 1e-8, 1e-4),
            Out::new("lower", &lower, 1e-8, 1e-4),
            Out::new("upper", &upper, 1e-8, 1e-4),
            Out::host("noise", &[p.noise], 1e-12, 1e-6)?,
        ];
        Ok(Side {
            outs,
            extra: p.variance.clone(),
        })
    })?;
    let cmp = runs.compare()?;
    let per_point = |got: &Tensor, want: &Tensor| -> Res<f64> {
        let (g, w) = (flat(&got.to_device(&Device::Cpu)?), flat(want));
        let scale: Vec<f64> = w.iter().map(|v| v.abs()).collect();
        Ok(max_err(&g, &w, &scale))
    };
    let var_d = &runs.dev.extra;
    let mut report = format!(
        "{cmp}; variance per point up to {:.1e} relative",
        per_point(var_d, &runs.cpu.extra)?
    );
    if let Some(r) = &runs.f64_cpu {
        let k = runs.cpu.outs.iter().position(|o| o.name == "variance");
        let (t, how) = runs.tolerance(k.ok_or("no variance output")?)?;
        let err = rel_dist(var_d, &r.extra)?;
        if err > t {
            return Err(
                format!("variance against the f64 CPU: error {err:.2e} > {t:.1e}{how}").into(),
            );
        }
        report += &format!(
            "; against f64: variance {err:.1e} (per point up to {:.1e})",
            per_point(var_d, &r.extra)?
        );
    }
    Ok(report)
}

// ---------------------------------------------------------------------------------------------
// Kernel families
// ---------------------------------------------------------------------------------------------

/// A kernel to check: its name, its hyperparameters (name, initial values) and how to build it
/// from those tensors, in order.
struct KernelSpec {
    name: &'static str,
    hypers: Vec<(&'static str, Vec<f64>)>,
    build: fn(&[Tensor]) -> Kernel,
}

fn spec(
    name: &'static str,
    hypers: &[(&'static str, &[f64])],
    build: fn(&[Tensor]) -> Kernel,
) -> KernelSpec {
    KernelSpec {
        name,
        hypers: hypers.iter().map(|(n, v)| (*n, v.to_vec())).collect(),
        build,
    }
}

/// Every family, per-dimension lengthscales, and sums, products and scalings. Lengthscales
/// scale the points before the formula, so iso and per-dimension variants of a family share
/// their compiled formula.
fn kernel_specs() -> Vec<KernelSpec> {
    vec![
        spec("gaussian", &[("l", &[0.3])], |h| Kernel::gaussian(&h[0])),
        spec("laplacian", &[("l", &[0.3])], |h| Kernel::laplacian(&h[0])),
        spec("matern12", &[("l", &[0.4])], |h| Kernel::matern12(&h[0])),
        spec("matern32", &[("l", &[0.3])], |h| Kernel::matern32(&h[0])),
        spec("matern52", &[("l", &[0.3])], |h| Kernel::matern52(&h[0])),
        spec(
            "rational quadratic",
            &[("l", &[0.3]), ("alpha", &[1.5])],
            |h| Kernel::rational_quadratic(&h[0], &h[1]),
        ),
        spec("periodic", &[("l", &[0.8]), ("period", &[0.5])], |h| {
            Kernel::periodic(&h[0], &h[1])
        }),
        spec("linear", &[], |_| Kernel::linear()),
        // The inverse multiquadric 1 / sqrt(1 + c |x - y|^2), with c a learnable parameter.
        spec("from_formula imq", &[("c", &[4.0])], |h| {
            let c = h[0].clone();
            Kernel::from_formula(move |x, y| {
                Ok((x.sqdist(y) * LazyTensor::param(&c)? + 1.0).rsqrt())
            })
        }),
        spec("gaussian per-dim l", &[("l", &[0.2, 0.5])], |h| {
            Kernel::gaussian(&h[0])
        }),
        spec("matern52 per-dim l", &[("l", &[0.3, 0.6])], |h| {
            Kernel::matern52(&h[0])
        }),
        spec(
            "periodic per-dim l,period",
            &[("l", &[0.7, 1.1]), ("period", &[0.5, 0.8])],
            |h| Kernel::periodic(&h[0], &h[1]),
        ),
        spec(
            "gaussian.scale + matern32",
            &[("l", &[0.3]), ("scale", &[2.0]), ("l2", &[0.5])],
            |h| Kernel::gaussian(&h[0]).scale(&h[1]) + Kernel::matern32(&h[2]),
        ),
        spec(
            "periodic * gaussian",
            &[("l", &[0.8]), ("period", &[0.5]), ("l2", &[0.6])],
            |h| Kernel::periodic(&h[0], &h[1]) * Kernel::gaussian(&h[2]),
        ),
        spec(
            "linear.scale + rq.scale",
            &[
                ("s1", &[0.5]),
                ("l", &[0.4]),
                ("alpha", &[0.8]),
                ("s2", &[1.3]),
            ],
            |h| {
                Kernel::linear().scale(&h[0])
                    + Kernel::rational_quadratic(&h[1], &h[2]).scale(&h[3])
            },
        ),
        spec(
            "(gaussian + laplacian).scale * matern52 per-dim",
            &[
                ("l", &[0.3]),
                ("l2", &[0.5]),
                ("scale", &[0.7]),
                ("l3", &[0.4, 0.9]),
            ],
            |h| {
                (Kernel::gaussian(&h[0]) + Kernel::laplacian(&h[1])).scale(&h[2])
                    * Kernel::matern52(&h[3])
            },
        ),
    ]
}

/// `K b` for the kernel `kernel_specs()[i]` between 600 and 800 points in the unit square
/// (so that the linear kernel is positive too) with `b >= 0`, so that `K b` does not cancel and
/// its error is relative to its largest entry; and the gradients of `sum(K b * w)` with respect
/// to both point sets, `b` and every hyperparameter. Tolerances as the reductions and
/// gradients of the rest of the suite.
fn kernel_check(ctx: &Ctx, i: usize, dtype: DType) -> Res<String> {
    let spec = &kernel_specs()[i];
    let (m, n, d) = (600, 800, 2);
    let mut r = Rng(31);
    let x = r.tensor(&[m, d], 0.0, 1.0);
    let y = r.tensor(&[n, d], 0.0, 1.0);
    let b = r.tensor(&[n, 2], 0.0, 1.0);
    let w = r.tensor(&[m, 2], -1.0, 1.0);
    let runs = runs(ctx, dtype, false, |dev, dt| {
        let mut vars = vec![
            Var::from_tensor(&to(&x, dt, dev)?)?,
            Var::from_tensor(&to(&y, dt, dev)?)?,
            Var::from_tensor(&to(&b, dt, dev)?)?,
        ];
        for (_, v) in &spec.hypers {
            vars.push(var(v, dt, dev)?);
        }
        let hypers: Vec<Tensor> = vars[3..].iter().map(|v| v.as_tensor().clone()).collect();
        let k = KernelOperator::new(
            (spec.build)(&hypers),
            vars[0].as_tensor(),
            vars[1].as_tensor(),
        )?;
        let kb = k.matmul(vars[2].as_tensor())?;
        let g = (&kb * to(&w, dt, dev)?)?.sum_all()?.backward()?;
        let names = ["x", "y", "b"]
            .into_iter()
            .chain(spec.hypers.iter().map(|(n, _)| *n));
        let mut outs = vec![Out::new("Kb", &kb, 1e-11, 1e-4)];
        outs.extend(grad_outs(&g, names.zip(&vars))?);
        Ok(Side { outs, extra: () })
    })?;
    runs.compare()
}

// ---------------------------------------------------------------------------------------------
// rows, diag, to_dense, t, lazy
// ---------------------------------------------------------------------------------------------

/// The parts of a `KernelOperator` between 50 and 70 points (a per-dimension Gaussian times a
/// scale plus a Matern 3/2), against the CPU, and against each other on the device: `rows`
/// against the rows of `to_dense`, `diag` against its diagonal, `t().to_dense()` against its
/// transpose, `t().matmul(c)` against a dense product, `lazy()`'s log-sum-exp against the
/// dense one; and the gradients of `sum(K^T c * w)` with respect to the points and every
/// hyperparameter.
fn operator_parts(ctx: &Ctx, dtype: DType) -> Res<String> {
    let (m, n) = (50, 70);
    let mut r = Rng(41);
    let x = r.tensor(&[m, 2], 0.0, 1.0);
    let y = r.tensor(&[n, 2], 0.0, 1.0);
    let c = r.tensor(&[m, 3], 0.0, 1.0);
    let w = r.tensor(&[n, 3], -1.0, 1.0);
    let idx = [3usize, 0, 49, 3];
    let t = tol(dtype);
    let runs = runs(ctx, dtype, false, |dev, dt| {
        let xv = Var::from_tensor(&to(&x, dt, dev)?)?;
        let yv = Var::from_tensor(&to(&y, dt, dev)?)?;
        let hv = [
            var(&[0.3, 0.6], dt, dev)?,
            var(&[1.5], dt, dev)?,
            var(&[0.4], dt, dev)?,
        ];
        let kernel = Kernel::gaussian(hv[0].as_tensor()).scale(hv[1].as_tensor())
            + Kernel::matern32(hv[2].as_tensor());
        let k = KernelOperator::new(kernel, xv.as_tensor(), yv.as_tensor())?;
        let kt = k.t();
        if k.shape() != (m, n) || kt.shape() != (n, m) {
            return Err(format!("shapes {:?} and {:?}", k.shape(), kt.shape()).into());
        }
        let rows = k.rows(&idx)?;
        let diag = k.diag()?;
        let dense = k.to_dense()?;
        let dense_t = kt.to_dense()?;
        let cd = to(&c, dt, dev)?;
        let ktc = kt.matmul(&cd)?;
        let lse = k.lazy()?.logsumexp(Axis::J)?;
        // The same matrix by different routes, on this device.
        let agree = |what: &str, a: &Tensor, b: &Tensor| -> Res<()> {
            on_device(a, what)?;
            let e = rel_dist(a, b)?;
            if e > t {
                return Err(format!("{what}: error {e:.2e} > {t:.0e}").into());
            }
            Ok(())
        };
        let picked = idx
            .iter()
            .map(|&i| dense.narrow(0, i, 1))
            .collect::<candle_core::Result<Vec<_>>>()?;
        agree("rows vs to_dense", &rows, &Tensor::cat(&picked, 0)?)?;
        let dense_diag = (0..m.min(n))
            .map(|i| dense.narrow(0, i, 1)?.narrow(1, i, 1)?.flatten_all())
            .collect::<candle_core::Result<Vec<_>>>()?;
        agree("diag vs to_dense", &diag, &Tensor::cat(&dense_diag, 0)?)?;
        agree(
            "t().to_dense() vs to_dense().t()",
            &dense_t,
            &dense.t()?.contiguous()?,
        )?;
        agree("t().matmul vs dense", &ktc, &linalg::matmul(&dense_t, &cd)?)?;
        agree(
            "lazy logsumexp vs dense",
            &lse,
            &dense.exp()?.sum_keepdim(1)?.log()?,
        )?;
        let g = (&ktc * to(&w, dt, dev)?)?.sum_all()?.backward()?;
        let mut outs = vec![
            Out::new("rows", &rows, 1e-11, 1e-4),
            Out::new("diag", &diag, 1e-11, 1e-4),
            Out::new("to_dense", &dense, 1e-11, 1e-4),
            Out::new("t().to_dense", &dense_t, 1e-11, 1e-4),
            Out::new("t().matmul", &ktc, 1e-11, 1e-4),
            Out::new("lse", &lse, 1e-11, 1e-4),
        ];
        let vars = [
            ("x", &xv),
            ("y", &yv),
            ("l", &hv[0]),
            ("scale", &hv[1]),
            ("l2", &hv[2]),
        ];
        outs.extend(grad_outs(&g, vars)?);
        Ok(Side { outs, extra: () })
    })?;
    runs.compare()
}
