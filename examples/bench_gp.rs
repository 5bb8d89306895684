//! One training step of an exact Gaussian process (the negative log marginal likelihood and its
//! gradient: `gp.nll()?` then `backward()`) by the two paths of [`NllMethod`]: the stochastic
//! one (CG and stochastic Lanczos quadrature) against the exact one (dense matrix, blocked
//! Cholesky), on the same model and device.
//!
//! ```text
//! cargo run --release --example bench_gp                          # N = 10^4 and 10^5
//! cargo run --release --example bench_gp -- --sizes 1000,2000,4000 --runs 5
//! cargo run --release --example bench_gp -- --no-exact --dtype f32
//! cargo run --release --features cuda --example bench_gp -- --device cuda
//! ```
//!
//! `--device cpu|cuda|cuda:N` (default `cpu`): where both methods run (each child process gets
//! the same `--device`). `--help` lists the options.
//!
//! The problem: `N` points uniform in the unit cube (`--seed`, default 0),
//! `y = sin(2 pi x0) cos(pi x1) + 0.5 sin(3 x2) + 0.1 eps`, `eps ~ N(0, 1)`; a Gaussian kernel
//! with per-dimension lengthscales and an outputscale, and the noise variance, all
//! [`Positive`](lazy_kernels::gp::Positive), at fixed values (see [`LENGTHSCALES`],
//! [`OUTPUTSCALE`], [`NOISE`]); the constant mean at the mean of `y` (the model of
//! `gp_problem`, in `f64`, or `f32` with `--dtype f32`).
//!
//! * Stochastic: the default [`GpSettings`] with `nll_method: NllMethod::Stochastic` (CG solve
//!   and stochastic Lanczos log-determinant; an estimate with a standard error).
//! * Exact: the same model with `nll_method: NllMethod::Exact` (the dense `K + sigma^2 I` by
//!   `KernelOperator::to_dense`, `linalg::Cholesky` on the device, `A^-1` formed in the
//!   backward pass; the factorisation is in `f64` for `f32` models too). It runs where its
//!   peak, `NllMethod::exact_memory(N)` (the library's estimate), fits in
//!   [`MEMORY_SHARE`] of the available memory: the host's `MemAvailable` on the CPU, the
//!   device's free memory on CUDA (up to [`EXACT_UNCHECKED_MAX`] points when that cannot be
//!   read).
//! * Each step is `nll()`, `backward()` and the gradients read back to the host (which also
//!   synchronises a GPU), timed as a whole; the report also gives the `nll()` part alone.
//! * Memory: each method runs in its own child process (this program re-executed with a
//!   hidden `--child METHOD` option) that reads its peak RSS (`VmHWM` of `/proc/self/status`)
//!   after its timed runs; the inputs are a few MB. On CUDA the child also samples the device's
//!   used memory (`cuMemGetInfo`) every millisecond in a background thread during its timed runs:
//!   the peak over the samples minus the value before the warm-up (with the model's data
//!   already on the device), so a shorter peak between two samples is missed.
//! * Timing: median of `R` runs (`--runs R`, default 3) after a warm-up run; at `N >= 50,000`,
//!   `ceil(R / 3)` runs after a warm-up on the same problem at `N = 2,000` (same code paths,
//!   a fraction of the cost).

#[path = "device/mod.rs"]
mod device;
#[path = "gp_problem/mod.rs"]
mod gp_problem;
#[path = "report/mod.rs"]
mod report;
#[path = "sizes/mod.rs"]
mod sizes;
use std::error::Error;
use std::process::{Command, Stdio};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use clap::{Parser, ValueEnum};
use lazy_kernels::gp::{ExactGp, GpSettings, NllMethod, NllReport};

use gp_problem::{LENGTHSCALES, NOISE, NOISE_SD, OUTPUTSCALE, Problem, build_gp};

type Res<T> = Result<T, Box<dyn Error>>;

/// Sizes from which the run count is `ceil(R / 3)` and the warm-up is a small problem.
const LARGE: usize = 50_000;
/// The warm-up problem's size for large `N`.
const WARMUP_N: usize = 2_000;
/// The share of the available memory the exact path may plan to take.
const MEMORY_SHARE: f64 = 0.9;
/// The largest `N` the exact path runs at on a CUDA device whose free memory cannot be read
/// (`NllMethod::exact_memory`: 6.4 GB at this size).
const EXACT_UNCHECKED_MAX: usize = 10_000;

// ---------------------------------------------------------------------------------------------
// One step.

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
    rank: usize,
    /// Seconds of `nll()` and of `backward()` (with the read-back).
    split: (f64, f64),
}

const GRAD_NAMES: [&str; 6] = ["raw l0", "raw l1", "raw l2", "raw s", "raw noise", "mean"];

/// The two methods, by their names in the table and on a child's command line.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    /// `NllMethod::Stochastic`.
    Stochastic,
    /// `NllMethod::Exact`.
    Exact,
}

impl Method {
    fn nll(self) -> NllMethod {
        match self {
            Method::Stochastic => NllMethod::Stochastic,
            Method::Exact => NllMethod::Exact,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Method::Stochastic => "stochastic",
            Method::Exact => "exact",
        }
    }
}

/// One exact-GP training step by the stochastic NLL (CG, SLQ) against the exact one (Cholesky).
///
/// For each N: N points uniform in the unit cube, y = sin(2 pi x0) cos(pi x1) + 0.5 sin(3 x2) +
/// 0.1 eps, a Gaussian kernel with three lengthscales and an outputscale, a learned noise and
/// mean. Each method runs in a child process of its own (this program again), which times
/// nll(), backward() and the gradients read back (median of the runs after a warm-up) and
/// reads its peak memory. The exact method runs where its memory estimate fits in 90% of the
/// available memory. Prints a markdown table and details.
#[derive(Parser)]
#[command(name = "bench_gp")]
struct Cli {
    /// The sizes N (`1e4,1e5`).
    #[arg(
        long,
        value_name = "N,...",
        value_delimiter = ',',
        default_value = "1e4,1e5",
        value_parser = sizes::at_least(2)
    )]
    sizes: Vec<usize>,
    /// Timed runs per method and size (`ceil(R / 3)` from N = 50,000).
    #[arg(long, value_name = "R", default_value = "3", value_parser = sizes::count)]
    runs: usize,
    /// Leave out the exact method.
    #[arg(long)]
    no_exact: bool,
    /// The model's floating-point type (the exact Cholesky is in f64 either way).
    #[arg(long, value_enum, default_value = "f64")]
    dtype: device::Dtype,
    /// Seed of the problem's points and noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Child mode: runs METHOD at the first of `--sizes`, `--runs` times, and prints a RESULT
    /// line.
    #[arg(long, value_name = "METHOD", value_enum, hide = true)]
    child: Option<Method>,
    #[command(flatten)]
    device: device::DeviceArg,
}

/// The problem's model on `dev` in `dtype`, with the NLL forced to `method`.
fn model(p: &Problem, dev: &Device, dtype: DType, method: NllMethod) -> Res<ExactGp> {
    let mut gp = build_gp(p, dev, dtype)?;
    gp.settings.nll_method = method;
    Ok(gp)
}

/// One training step's work: the NLL, `backward()`, the gradients read back.
fn step(gp: &ExactGp) -> Res<Step> {
    let dev = gp.data().0.device().clone();
    let t = Instant::now();
    let (loss, report): (Tensor, NllReport) = gp.nll()?;
    let forward = device::elapsed(&dev, t)?;
    if report.method != gp.settings.nll_method {
        return Err(format!(
            "asked for {:?}, the NLL took {:?}",
            gp.settings.nll_method, report.method
        )
        .into());
    }
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
        rank: report.preconditioner_rank,
        split: (forward, device::elapsed(&dev, t)? - forward),
    })
}

// ---------------------------------------------------------------------------------------------
// Device memory (CUDA only; the same functions return `None` without the `cuda` feature).

#[cfg(feature = "cuda")]
mod device_memory {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::thread::JoinHandle;
    use std::time::Duration;

    use candle_core::Device;
    use candle_core::cuda_backend::cudarc::driver::{CudaContext, result};

    fn context(dev: &Device) -> Option<Arc<CudaContext>> {
        Some(dev.as_cuda_device().ok()?.cuda_stream().context().clone())
    }

    /// The device's free and total memory in bytes, when `dev` is a CUDA device.
    pub fn free_total(dev: &Device) -> Option<(usize, usize)> {
        let ctx = context(dev)?;
        ctx.bind_to_thread().ok()?;
        result::mem_get_info().ok()
    }

    /// The device's used memory (`total - free`), when `dev` is a CUDA device.
    pub fn used(dev: &Device) -> Option<usize> {
        free_total(dev).map(|(free, total)| total - free)
    }

    /// The device's name, when `dev` is a CUDA device.
    pub fn name(dev: &Device) -> Option<String> {
        context(dev)?.name().ok()
    }

    /// A background thread that reads the device's used memory every millisecond and keeps
    /// the largest value.
    pub struct Sampler {
        stop: Arc<AtomicBool>,
        handle: JoinHandle<Option<usize>>,
    }

    impl Sampler {
        pub fn start(dev: &Device) -> Option<Sampler> {
            let ctx = context(dev)?;
            let stop = Arc::new(AtomicBool::new(false));
            let flag = stop.clone();
            let handle = std::thread::spawn(move || {
                ctx.bind_to_thread().ok()?;
                let mut peak = 0;
                loop {
                    let (free, total) = result::mem_get_info().ok()?;
                    peak = peak.max(total - free);
                    if flag.load(Ordering::Relaxed) {
                        return Some(peak);
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            });
            Some(Sampler { stop, handle })
        }

        /// Stops the thread: the largest used memory it saw.
        pub fn peak(self) -> Option<usize> {
            self.stop.store(true, Ordering::Relaxed);
            self.handle.join().ok()?
        }
    }
}

#[cfg(not(feature = "cuda"))]
mod device_memory {
    use candle_core::Device;

    pub fn free_total(_: &Device) -> Option<(usize, usize)> {
        None
    }

    pub fn used(_: &Device) -> Option<usize> {
        None
    }

    pub fn name(_: &Device) -> Option<String> {
        None
    }

    pub struct Sampler;

    impl Sampler {
        pub fn start(_: &Device) -> Option<Sampler> {
            None
        }

        pub fn peak(self) -> Option<usize> {
            None
        }
    }
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

fn meminfo_bytes(field: &str) -> Option<f64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    s.lines()
        .find(|l| l.starts_with(field))
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
fn child(method: Method, n: usize, runs: usize, dev: &Device, dtype: DType, seed: u64) -> Res<()> {
    let method = method.nll();
    let problem = Problem::seeded(n, seed);
    let base_kib = read_status_kib("VmHWM:").unwrap_or(0);
    let gp = model(&problem, dev, dtype, method)?;
    device::sync(dev)?;
    let device_base = device_memory::used(dev);
    if n >= LARGE {
        step(&model(
            &Problem::seeded(WARMUP_N, seed),
            dev,
            dtype,
            method,
        )?)?;
    } else {
        step(&gp)?;
    }
    let sampler = device_memory::Sampler::start(dev);
    let mut times = Vec::with_capacity(runs);
    let mut forward = Vec::with_capacity(runs);
    let mut last = Step::default();
    for _ in 0..runs {
        let t = Instant::now();
        last = step(&gp)?;
        times.push(t.elapsed().as_secs_f64());
        forward.push(last.split.0);
    }
    let device_peak = match (sampler.and_then(|s| s.peak()), device_base) {
        (Some(peak), Some(base)) => peak.saturating_sub(base) as f64,
        _ => -1.0,
    };
    let hwm = read_status_kib("VmHWM:").unwrap_or(0);
    println!(
        "RESULT times={} forward={} nll={:e} fit={:e} logdet={:e} logdet_se={:e} grads={} \
         iters={},{} converged={} rank={} split={},{} base_kib={base_kib} hwm_kib={hwm} \
         device_peak={device_peak:e} device_base={:e}",
        join(&times),
        join(&forward),
        last.nll,
        last.data_fit,
        last.logdet,
        last.logdet_se,
        join(&last.grads),
        last.iters.0,
        last.iters.1,
        last.converged,
        last.rank,
        last.split.0,
        last.split.1,
        device_base.map_or(-1.0, |b| b as f64),
    );
    Ok(())
}

/// A child's `RESULT` line, parsed.
#[derive(Clone, Debug, Default)]
struct ChildResult {
    times: Vec<f64>,
    /// The `nll()` part of each run.
    forward: Vec<f64>,
    step: Step,
    hwm_kib: f64,
    base_kib: f64,
    /// Bytes: the sampled peak of the device's used memory minus its value before the warm-up,
    /// and that value; `None` on the CPU.
    device_peak: Option<f64>,
    device_base: Option<f64>,
}

fn parse_list(v: &str) -> Vec<f64> {
    v.split(',').filter_map(|x| x.parse().ok()).collect()
}

/// Two numbers `a,b`.
fn parse_pair(v: &str) -> Res<(f64, f64)> {
    match parse_list(v)[..] {
        [a, b] => Ok((a, b)),
        _ => Err(format!("expected two numbers, got {v}").into()),
    }
}

fn run_child(method: Method, n: usize, runs: usize, cli: &Cli) -> Res<ChildResult> {
    let exe = std::env::current_exe()?;
    let device = cli.device.device;
    let args = [
        "--child".to_string(),
        method.name().to_string(),
        "--sizes".to_string(),
        n.to_string(),
        "--runs".to_string(),
        runs.to_string(),
        "--dtype".to_string(),
        cli.dtype.name().to_string(),
        "--seed".to_string(),
        cli.seed.to_string(),
        "--device".to_string(),
        device.spec(),
    ];
    let out = Command::new(exe)
        .args(&args)
        .stderr(Stdio::inherit())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "child {} N={n} on {device} failed ({})",
            method.name(),
            out.status
        )
        .into());
    }
    let line = text
        .lines()
        .find(|l| l.starts_with("RESULT "))
        .ok_or("the child printed no RESULT line")?;
    let mut r = ChildResult::default();
    let non_negative = |v: &str| -> Res<Option<f64>> {
        let x: f64 = v.parse()?;
        Ok((x >= 0.0).then_some(x))
    };
    for kv in line.split_whitespace().skip(1) {
        let Some((k, v)) = kv.split_once('=') else {
            continue;
        };
        match k {
            "times" => r.times = parse_list(v),
            "forward" => r.forward = parse_list(v),
            "nll" => r.step.nll = v.parse()?,
            "fit" => r.step.data_fit = v.parse()?,
            "logdet" => r.step.logdet = v.parse()?,
            "logdet_se" => r.step.logdet_se = v.parse()?,
            "grads" => r.step.grads = parse_list(v),
            "iters" => {
                let (a, b) = parse_pair(v)?;
                r.step.iters = (a as usize, b as usize);
            }
            "converged" => r.step.converged = v == "true",
            "rank" => r.step.rank = v.parse()?,
            "split" => r.step.split = parse_pair(v)?,
            "hwm_kib" => r.hwm_kib = v.parse()?,
            "base_kib" => r.base_kib = v.parse()?,
            "device_peak" => r.device_peak = non_negative(v)?,
            "device_base" => r.device_base = non_negative(v)?,
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

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs()
}

/// `|g - h| / |h|` over the gradient vectors.
fn grad_rel(g: &[f64], h: &[f64]) -> f64 {
    let num: f64 = g.iter().zip(h).map(|(a, b)| (a - b).powi(2)).sum();
    let den: f64 = h.iter().map(|b| b * b).sum();
    (num / den).sqrt()
}

/// Whether the exact path fits at `n` points on `dev`: `Ok(bytes it needs)` or why not.
fn exact_fits(n: usize, dev: &Device) -> Result<f64, String> {
    let need = NllMethod::exact_memory(n) as f64;
    let (avail, what) = if dev.is_cpu() {
        (meminfo_bytes("MemAvailable:"), "available (host)")
    } else {
        (
            device_memory::free_total(dev).map(|(free, _)| free as f64),
            "free on the device",
        )
    };
    match avail {
        Some(avail) if need <= MEMORY_SHARE * avail => Ok(need),
        Some(avail) => Err(format!(
            "not run: needs about {} (NllMethod::exact_memory), {} {what}",
            fmt_bytes(need),
            fmt_bytes(avail)
        )),
        None if !dev.is_cpu() && n <= EXACT_UNCHECKED_MAX => Ok(need),
        None => Err(format!(
            "not run: needs about {}, and the free memory cannot be read (runs unchecked up to \
             N = {EXACT_UNCHECKED_MAX} only)",
            fmt_bytes(need)
        )),
    }
}

fn main() -> Res<()> {
    let all_args: Vec<String> = std::env::args().skip(1).collect();
    let cli = Cli::parse();
    let choice = cli.device.device;
    // Fails here, in one line, when the device cannot be used (the children open it again).
    let dev = cli.device.open();
    let dtype = cli.dtype.dtype();
    if let Some(method) = cli.child {
        return child(method, cli.sizes[0], cli.runs, &dev, dtype, cli.seed);
    }
    let start = Instant::now();
    let (sizes, runs, exact) = (cli.sizes.clone(), cli.runs, !cli.no_exact);

    let mem_total = meminfo_bytes("MemTotal:").map_or("?".into(), fmt_bytes);
    let dtype_name = cli.dtype.name();
    println!(
        "# Exact GP training step, stochastic and exact NLL: `cargo run --release{} --example \
         bench_gp{}{}`",
        if cfg!(feature = "cuda") {
            " --features cuda"
        } else {
            ""
        },
        if all_args.is_empty() { "" } else { " -- " },
        all_args.join(" ")
    );
    println!();
    println!("{}", report::machine_header());
    println!("- RAM: {mem_total}");
    println!();
    let device_name = device_memory::name(&dev).map_or(String::new(), |n| format!(", {n}"));
    let device_total = device_memory::free_total(&dev)
        .map_or(String::new(), |(_, t)| format!(", {}", fmt_bytes(t as f64)));
    println!(
        "Device: both methods on {}{device_name}{device_total} (`--device {choice}`).",
        device::describe(&dev)
    );
    let s = GpSettings::default();
    println!(
        "Problem: N uniform points in [0,1]^3, y = sin(2 pi x0) cos(pi x1) + 0.5 sin(3 x2) + \
         {NOISE_SD} eps; Gaussian kernel, lengthscales {LENGTHSCALES:?}, outputscale \
         {OUTPUTSCALE}, noise variance {NOISE} (+ floor {}); the model in {dtype_name}, default \
         GpSettings but for nll_method (stochastic: train tol {}, {} probes, preconditioner \
         {:?}; exact: Cholesky in f64).",
        s.noise_floor, s.train_tol, s.probes, s.preconditioner
    );
    println!();

    struct Row {
        n: usize,
        runs: usize,
        stochastic: Res<ChildResult>,
        exact: Result<ChildResult, String>,
    }
    let mut rows = Vec::new();
    let bar = report::progress(2 * sizes.len() as u64, "child runs");
    // What runs now: on the bar's line, or a line of its own when there is no bar.
    let say = |msg: String| {
        if bar.is_hidden() {
            eprintln!("bench_gp: {msg}");
        } else {
            bar.set_message(msg);
        }
    };
    for &n in &sizes {
        let r = if n >= LARGE { runs.div_ceil(3) } else { runs };
        let exact_res = if !exact {
            Err("not run (--no-exact)".to_string())
        } else {
            exact_fits(n, &dev).and_then(|_| {
                say(format!("exact N = {n} on {choice}, runs: {r}..."));
                run_child(Method::Exact, n, r, &cli).map_err(|e| format!("failed: {e}"))
            })
        };
        bar.inc(1);
        say(format!("stochastic N = {n} on {choice}, runs: {r}..."));
        let stochastic = run_child(Method::Stochastic, n, r, &cli);
        bar.inc(1);
        rows.push(Row {
            n,
            runs: r,
            stochastic,
            exact: exact_res,
        });
    }
    bar.finish_and_clear();

    println!(
        "| N | device | runs | stochastic (s/step) | exact (s/step) | exact / stochastic | exact \
         nll() only (s) | peak RSS stochastic | peak RSS exact | peak device mem. stochastic | \
         peak device mem. exact | NLL stochastic | its std. error (nats) | NLL exact | NLL rel. \
         diff | (stoch. - exact) / std. error | grad rel. diff | CG iterations (data, max \
         probe) | preconditioner rank |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let kib = 1024.0;
    let dash = || "-".to_string();
    let device_mem = |c: &ChildResult| c.device_peak.map_or_else(dash, fmt_bytes);
    for row in &rows {
        let [sto_t, sto_rss, sto_dev, nll_s, se, iters, rank] = match &row.stochastic {
            Ok(o) => [
                format!("{:.3}", median(&o.times)),
                fmt_bytes(o.hwm_kib * kib),
                device_mem(o),
                format!("{:.6e}", o.step.nll),
                format!("{:.2}", o.step.logdet_se / 2.0),
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
                o.step.rank.to_string(),
            ],
            Err(e) => std::array::from_fn(|_| format!("failed: {e}")),
        };
        let [
            ex_t,
            ratio,
            ex_fwd,
            ex_rss,
            ex_dev,
            nll_e,
            nll_rel,
            z,
            g_rel,
        ] = match (&row.exact, &row.stochastic) {
            (Ok(d), o) => {
                let dt = median(&d.times);
                let [ratio, nr, z, gr] = match o {
                    Ok(o) => [
                        format!("{:.2}x", dt / median(&o.times)),
                        format!("{:.2e}", rel(o.step.nll, d.step.nll)),
                        format!(
                            "{:+.2}",
                            (o.step.nll - d.step.nll) / (o.step.logdet_se / 2.0)
                        ),
                        format!("{:.2e}", grad_rel(&o.step.grads, &d.step.grads)),
                    ],
                    Err(_) => std::array::from_fn(|_| dash()),
                };
                [
                    format!("{dt:.3}"),
                    ratio,
                    format!("{:.3}", median(&d.forward)),
                    fmt_bytes(d.hwm_kib * kib),
                    device_mem(d),
                    format!("{:.6e}", d.step.nll),
                    nr,
                    z,
                    gr,
                ]
            }
            (Err(e), _) => std::array::from_fn(|i| if i == 0 { e.clone() } else { dash() }),
        };
        println!(
            "| {} | {choice} | {} | {sto_t} | {ex_t} | {ratio} | {ex_fwd} | {sto_rss} | {ex_rss} | \
             {sto_dev} | {ex_dev} | {nll_s} | {se} | {nll_e} | {nll_rel} | {z} | {g_rel} | \
             {iters} | {rank} |",
            report::fmt_n(row.n),
            row.runs,
        );
    }
    println!();
    println!(
        "Times: median of the runs after a warm-up (one full run below N = {LARGE}, a run at \
         N = {WARMUP_N} from there on); a step is nll(), backward() and the gradients read \
         back. Exact nll() only: the value's part of the same runs (dense matrix, Cholesky, \
         solve), the rest being the backward pass (A^-1, the gradient through the dense \
         matrix). Peak RSS: VmHWM of the method's own child process after its runs (its \
         baseline, the process with the data, in the details below). Peak device memory (CUDA \
         only, \"-\" on the CPU): the device's used memory sampled every millisecond during \
         the timed runs, peak minus the value before the warm-up; a sample, so it can miss a \
         short peak. Std. error: the stochastic NLL's, half the log-determinant's. NLL rel. \
         diff: |stoch. - exact| / |exact|; grad rel. diff: |g_stoch. - g_exact| / |g_exact| \
         over the gradient w.r.t. (raw l0, l1, l2, raw outputscale, raw noise, mean). The \
         exact method runs where NllMethod::exact_memory(N) fits in {:.0}% of the \
         available memory (host MemAvailable on the CPU, the device's free memory on CUDA).",
        MEMORY_SHARE * 100.0
    );
    println!();
    println!("Details:");
    for row in &rows {
        let n2_doubles = (row.n as f64).powi(2) * 8.0;
        for (name, res) in [
            ("stochastic", row.stochastic.as_ref().ok()),
            ("exact", row.exact.as_ref().ok()),
        ] {
            let Some(c) = res else { continue };
            let device_base = c.device_base.map_or(String::new(), |b| {
                format!(", device memory before {}", fmt_bytes(b))
            });
            // What the exact path's memory is in units of its estimate's.
            let per_n2 = if name == "exact" {
                format!(", peak RSS {:.2} N^2 doubles", c.hwm_kib * kib / n2_doubles)
            } else {
                String::new()
            };
            println!(
                "- {name} N = {} on {choice}: times {:?} s (last run: nll() {:.3} s, backward() \
                 {:.3} s); data fit {:.6e}, log det {:.6e} +- {:.2e}{per_n2}; baseline RSS \
                 {}{device_base}",
                report::fmt_n(row.n),
                c.times,
                c.step.split.0,
                c.step.split.1,
                c.step.data_fit,
                c.step.logdet,
                c.step.logdet_se,
                fmt_bytes(c.base_kib * kib),
            );
            println!("  gradient: {}", fmt_grads(&c.step.grads));
        }
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
