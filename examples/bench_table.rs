//! Prints a markdown table comparing the lazy Gaussian kernel sum with a dense Candle
//! implementation, against the reference limit of the vectorised exponential on one core.
//!
//! ```text
//! cargo run --release --example bench_table            # M = N up to 10^6 (slow)
//! cargo run --release --example bench_table -- --quick # M = N up to 10^5
//! cargo run --release --features cuda --example bench_table -- --quick --device cuda
//! cargo run --release --example bench_table -- --sizes 1e3,1e4
//! ```
//!
//! (`--help` lists the options.) Peak extra memory is measured in a child process (this
//! program re-executed with a hidden `--child ours|dense` option and its size): the child
//! builds the inputs, resets its peak RSS (`/proc/self/clear_refs`), runs one reduction and
//! prints the growth of `VmHWM`.
//!
//! `--device cpu|cuda|cuda:N` (default `cpu`): where the inputs live and both methods run
//! (the children too). On a GPU every time is read after the device has finished, the first
//! call of each formula (its compilation) is not timed, the per-core columns and the CPU's
//! exponential reference are left out, and the memory columns are the host's RSS only.

#[path = "device/mod.rs"]
mod device;
#[path = "report/mod.rs"]
mod report;
#[path = "sizes/mod.rs"]
mod sizes;
use std::error::Error;
use std::hint::black_box;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use clap::{Parser, ValueEnum};
use lazy_kernels::{Axis, LazyTensor, linalg};

/// The lazy Gaussian kernel sum against dense Candle, and against the CPU's exponential.
///
/// The Gaussian kernel sum (D = 3, E = 1, f32, sigma = 0.5) at each M = N: the best time, pairs
/// per second (per core, and per exponential of one core on the CPU), dense Candle's time
/// where its intermediates fit in 6 GiB, and the peak extra memory of both, measured in child
/// processes (this program again). Then LogSumExp and ArgKMin(10) at M = N = 10^5. Prints
/// markdown tables.
#[derive(Parser)]
#[command(name = "bench_table")]
struct Cli {
    /// M = N up to 10^5 instead of 10^6.
    #[arg(long)]
    quick: bool,
    /// The sizes M = N of the first table [default: 1e3,1e4,1e5,1e6; 1e3,1e4,1e5 with --quick].
    #[arg(long, value_name = "N,...", value_delimiter = ',', value_parser = sizes::count)]
    sizes: Option<Vec<usize>>,
    /// Seed of the random points and weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Child mode: one reduction of this kind at the first of `--sizes`, its time and memory.
    #[arg(long, value_name = "KIND", value_enum, hide = true)]
    child: Option<ChildKind>,
    #[command(flatten)]
    device: device::DeviceArg,
}

/// What a child process runs.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum ChildKind {
    /// The lazy sum.
    Ours,
    /// Dense Candle.
    Dense,
}

impl ChildKind {
    fn name(self) -> &'static str {
        match self {
            ChildKind::Ours => "ours",
            ChildKind::Dense => "dense",
        }
    }
}

type Res<T> = Result<T, Box<dyn Error>>;

const D: usize = 3;
const SIGMA: f32 = 0.5;
/// Dense Candle is only run when its intermediates fit in this many bytes.
const DENSE_LIMIT_BYTES: f64 = 6.0 * (1u64 << 30) as f64;

/// Small deterministic generator (xorshift64*), uniform f32 in [0, 1).
struct XorShift(u64);

impl XorShift {
    fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let r = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (r >> 40) as f32 / (1u64 << 24) as f32
    }

    fn tensor(&mut self, rows: usize, cols: usize) -> candle_core::Result<Tensor> {
        let v: Vec<f32> = (0..rows * cols).map(|_| self.next_f32()).collect();
        Tensor::from_vec(v, (rows, cols), &Device::Cpu)
    }
}

/// Inputs of the Gaussian kernel sum: points x (M, D), y (N, D), weights b (N, 1).
struct Inputs {
    x: Tensor,
    y: Tensor,
    b: Tensor,
    sigma: Tensor,
}

impl Inputs {
    /// Drawn on the CPU (the same numbers whatever the device), then moved to `dev`.
    fn new(m: usize, n: usize, dev: &Device, seed: u64) -> candle_core::Result<Inputs> {
        let state = 0x9E37_79B9_7F4A_7C15 ^ (m as u64) ^ ((n as u64) << 32);
        let mut rng = XorShift((state ^ seed.wrapping_mul(0xD1B5_4A32_D192_ED03)).max(1));
        Ok(Inputs {
            x: rng.tensor(m, D)?.to_device(dev)?,
            y: rng.tensor(n, D)?.to_device(dev)?,
            b: rng.tensor(n, 1)?.to_device(dev)?,
            sigma: Tensor::new(&[SIGMA], &Device::Cpu)?.to_device(dev)?,
        })
    }
}

/// The lazy formulas, built once (outside any timing).
struct Lazy {
    gauss: LazyTensor,
    lse: LazyTensor,
    sqdist: LazyTensor,
}

impl Lazy {
    fn new(inp: &Inputs) -> candle_core::Result<Lazy> {
        let x_i = LazyTensor::vi(&inp.x)?;
        let y_j = LazyTensor::vj(&inp.y)?;
        let b_j = LazyTensor::vj(&inp.b)?;
        let s = LazyTensor::param(&inp.sigma)?;
        let d_ij = x_i.sqdist(&y_j);
        let scaled = -&d_ij / (2.0 * s.square());
        Ok(Lazy {
            gauss: scaled.exp() * b_j,
            lse: scaled,
            sqdist: d_ij,
        })
    }

    fn gauss_sum(&self) -> candle_core::Result<Tensor> {
        self.gauss.sum(Axis::J)
    }
}

/// The materialised M x N implementation with plain Candle ops.
fn dense_gauss_sum(inp: &Inputs) -> candle_core::Result<Tensor> {
    let d = inp
        .x
        .unsqueeze(1)?
        .broadcast_sub(&inp.y.unsqueeze(0)?)?
        .sqr()?
        .sum(2)?;
    let c = -1.0 / (2.0 * (SIGMA as f64).powi(2));
    linalg::matmul(&(d * c)?.exp()?, &inp.b)
}

/// Bytes the dense implementation keeps alive at once: the (M, N, D) difference and its
/// square plus the (M, N) distances (temporaries live until the end of the `let`).
fn dense_bytes(n: usize) -> f64 {
    (n as f64) * (n as f64) * 4.0 * (2 * D + 1) as f64
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Times `f` on `dev` until `budget` is spent (at least `min_reps`, at most `max_reps` runs;
/// on a GPU after one untimed run, which compiles the kernel the first time).
/// Returns the sorted run times.
fn time_runs<F>(
    dev: &Device,
    min_reps: usize,
    max_reps: usize,
    budget: Duration,
    mut f: F,
) -> Res<Vec<f64>>
where
    F: FnMut() -> candle_core::Result<Tensor>,
{
    if !dev.is_cpu() {
        black_box(f()?);
        device::sync(dev)?;
    }
    let start = Instant::now();
    let mut times = Vec::new();
    while times.len() < min_reps || (times.len() < max_reps && start.elapsed() < budget) {
        let t0 = Instant::now();
        let out = f()?;
        times.push(device::elapsed(dev, t0)?);
        black_box(out);
    }
    times.sort_by(f64::total_cmp);
    Ok(times)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        f64::NAN
    } else {
        s[s.len() / 2]
    }
}

/// exp/s of `exp_in_place_f32` on one core (this thread), 4096-element buffer in [-10, 0].
/// Each call refills the buffer from a source copy; the time of the refill alone is measured
/// the same way and subtracted.
fn exp_per_second() -> f64 {
    const LEN: usize = 4096;
    let mut rng = XorShift(42);
    let src: Vec<f32> = (0..LEN).map(|_| -10.0 * rng.next_f32()).collect();
    let mut buf = src.clone();
    let mut run = |calls: usize, with_exp: bool| -> f64 {
        let t0 = Instant::now();
        for _ in 0..calls {
            buf.copy_from_slice(black_box(&src));
            if with_exp {
                lazy_kernels::backend::cpu::exp_in_place_f32(&mut buf);
            }
            black_box(&mut buf);
        }
        secs(t0.elapsed())
    };
    // Calibrate the number of calls for ~0.5 s.
    let mut calls = 64;
    loop {
        let t = run(calls, true);
        if t > 0.05 {
            calls = ((calls as f64) * 0.5 / t).ceil() as usize;
            break;
        }
        calls *= 4;
    }
    let mut with = Vec::new();
    let mut copy_only = Vec::new();
    for _ in 0..5 {
        with.push(run(calls, true));
        copy_only.push(run(calls, false));
    }
    let exp_time = (median(&with) - median(&copy_only)).max(median(&with) * 0.5);
    (calls * LEN) as f64 / exp_time
}

/// One run measured by a child process: the reduction's time and peak extra memory.
struct ChildResult {
    time_s: f64,
    extra_mib: Option<f64>,
}

fn read_status_kib(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Child mode: build the inputs, reset the peak RSS, run one reduction, print the result (on a
/// GPU after one untimed run of the same reduction).
fn child(what: ChildKind, n: usize, dev: &Device, seed: u64) -> Res<()> {
    let inp = Inputs::new(n, n, dev, seed)?;
    let lazy = Lazy::new(&inp)?;
    let run = || -> Res<Tensor> {
        Ok(match what {
            ChildKind::Ours => lazy.gauss_sum()?,
            ChildKind::Dense => dense_gauss_sum(&inp)?,
        })
    };
    if !dev.is_cpu() {
        black_box(run()?);
        device::sync(dev)?;
    }
    // Resetting the high-water mark to the current RSS makes the difference exact; where
    // that is not possible, the difference of the high-water marks is a lower bound.
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let before = if reset {
        read_status_kib("VmRSS:")
    } else {
        read_status_kib("VmHWM:")
    };
    let t0 = Instant::now();
    let out = run()?;
    let t = device::elapsed(dev, t0)?;
    let after = read_status_kib("VmHWM:");
    black_box(out);
    match (before, after) {
        (Some(b), Some(a)) => println!("CHILD time_s={t} extra_kib={}", a.saturating_sub(b)),
        _ => println!("CHILD time_s={t} extra_kib=na"),
    }
    Ok(())
}

/// Runs this program as a child on the device `choice`; `None` if that fails for any reason
/// (said on stderr, between the redraws of `bar`).
fn run_child(
    what: ChildKind,
    n: usize,
    choice: device::Choice,
    seed: u64,
    bar: &indicatif::ProgressBar,
) -> Option<ChildResult> {
    let exe = std::env::current_exe().ok()?;
    let out = Command::new(exe)
        .args([
            "--child",
            what.name(),
            "--sizes",
            &n.to_string(),
            "--seed",
            &seed.to_string(),
            "--device",
            &choice.spec(),
        ])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        bar.suspend(|| {
            eprintln!(
                "child {} {n} failed: {}",
                what.name(),
                String::from_utf8_lossy(&out.stderr).trim()
            )
        });
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.starts_with("CHILD "))?;
    let mut time_s = None;
    let mut extra_mib = None;
    for kv in line.split_whitespace().skip(1) {
        match kv.split_once('=') {
            Some(("time_s", v)) => time_s = v.parse::<f64>().ok(),
            Some(("extra_kib", v)) => extra_mib = v.parse::<f64>().ok().map(|k| k / 1024.0),
            _ => {}
        }
    }
    Some(ChildResult {
        time_s: time_s?,
        extra_mib,
    })
}

fn fmt_mib(m: Option<f64>) -> String {
    match m {
        Some(m) => format!("{m:.1} MiB"),
        None => "n/a".to_string(),
    }
}

fn fmt_pow10(n: usize) -> String {
    let e = (n as f64).log10().round() as i32;
    if 10usize.pow(e as u32) == n {
        format!("10^{e}")
    } else {
        n.to_string()
    }
}

fn main() -> Res<()> {
    let all_args: Vec<String> = std::env::args().skip(1).collect();
    let cli = Cli::parse();
    let choice = cli.device.device;
    let dev = cli.device.open();
    let seed = cli.seed;
    if let Some(what) = cli.child {
        let n = cli.sizes.as_ref().and_then(|s| s.first().copied());
        return child(what, n.ok_or("--child needs --sizes N")?, &dev, seed);
    }
    let quick = cli.quick;
    let on_cpu = dev.is_cpu();
    let threads = rayon::current_num_threads();

    println!(
        "# lazy-kernels benchmark: `cargo run --release{} --example bench_table{}{}`",
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
    if !on_cpu {
        println!("- device: {}", device::describe(&dev));
    }
    println!("- note: timings are noisy on shared machines (no core pinning or isolation).");

    // The CPU's exponential, the limit of the CPU backend (no meaning for a GPU).
    let exp_s = if on_cpu { exp_per_second() } else { f64::NAN };
    if on_cpu {
        println!(
            "- reference: `exp_in_place_f32` on one core, 4096 f32 in [-10, 0]: {exp_s:.3e} exp/s per core"
        );
    }
    println!();
    // The per-core columns, on the CPU only.
    let per_core_cell = |v: f64, precision: usize| {
        if on_cpu {
            format!("{v:.precision$e}")
        } else {
            "-".to_string()
        }
    };

    let sizes = cli.sizes.clone().unwrap_or_else(|| {
        let mut sizes = vec![1_000usize, 10_000, 100_000];
        if !quick {
            sizes.push(1_000_000);
        }
        sizes
    });

    println!("## Gaussian kernel sum, D = {D}, E = 1, f32, sigma = {SIGMA}");
    println!();
    println!(
        "| M=N | ours (s) | pairs/s | pairs/s per core | pairs per exp (per core) | dense Candle (s) | speed-up vs dense | peak extra memory ours | peak extra memory dense |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    // A step per size, and one for the second table.
    let bar = report::progress(sizes.len() as u64 + 1, "sizes");
    let mut notes = Vec::new();
    for &n in &sizes {
        let pairs = (n as f64) * (n as f64);
        // Ours: one run in a child (time and memory), then more runs here if they are cheap.
        bar.set_message(format!("M = N = {}", fmt_pow10(n)));
        let ours_child = run_child(ChildKind::Ours, n, choice, seed, &bar);
        let mut ours_times: Vec<f64> = ours_child.iter().map(|c| c.time_s).collect();
        let child_t = ours_times.first().copied().unwrap_or(f64::INFINITY);
        if child_t < 5.0 || ours_times.is_empty() {
            let inp = Inputs::new(n, n, &dev, seed)?;
            let lazy = Lazy::new(&inp)?;
            lazy.gauss_sum()?; // warm-up
            let max = if child_t < 0.5 { 20 } else { 3 };
            ours_times.extend(time_runs(&dev, 1, max, Duration::from_secs(3), || {
                lazy.gauss_sum()
            })?);
        }
        let ours = ours_times.iter().copied().fold(f64::INFINITY, f64::min);
        notes.push(format!(
            "M=N={}: ours best of {} run(s)",
            fmt_pow10(n),
            ours_times.len()
        ));
        let rate = pairs / ours;
        let per_core = rate / threads as f64;

        let need = dense_bytes(n);
        let (dense_t, dense_mem) = if need <= DENSE_LIMIT_BYTES {
            let dense_child = run_child(ChildKind::Dense, n, choice, seed, &bar);
            let inp = Inputs::new(n, n, &dev, seed)?;
            let mut times: Vec<f64> = dense_child.iter().map(|c| c.time_s).collect();
            times.extend(time_runs(&dev, 1, 5, Duration::from_secs(3), || {
                dense_gauss_sum(&inp)
            })?);
            let best = times.iter().copied().fold(f64::INFINITY, f64::min);
            (Some(best), dense_child.and_then(|c| c.extra_mib))
        } else {
            (None, None)
        };
        let (dense_cell, speedup_cell, dense_mem_cell) = match dense_t {
            Some(t) => (
                format!("{t:.4}"),
                format!("{:.1}x", t / ours),
                fmt_mib(dense_mem),
            ),
            None => {
                let na = format!("n/a (would need {:.0} GiB)", need / (1u64 << 30) as f64);
                (na.clone(), "n/a".to_string(), na)
            }
        };
        let row = format!(
            "| {} | {:.4} | {:.3e} | {} | {} | {} | {} | {} | {} |",
            fmt_pow10(n),
            ours,
            rate,
            per_core_cell(per_core, 3),
            if on_cpu {
                format!("{:.3}", per_core / exp_s)
            } else {
                "-".to_string()
            },
            dense_cell,
            speedup_cell,
            fmt_mib(ours_child.and_then(|c| c.extra_mib)),
            dense_mem_cell,
        );
        bar.suspend(|| println!("{row}"));
        bar.inc(1);
    }
    println!();
    println!(
        "Times are the best run; {}. Dense: best of a child run and up to 5 runs here. \
         Peak extra memory: growth of peak RSS (VmHWM) over one reduction in a fresh child \
         process, inputs already built. Dense memory estimate: M*N*4 B*(2D+1).",
        notes.join("; ")
    );
    println!();

    // Second table: other reductions at M = N = 10^5.
    let n = 100_000;
    let pairs = (n as f64) * (n as f64);
    bar.set_message("other reductions");
    let inp = Inputs::new(n, n, &dev, seed)?;
    let lazy = Lazy::new(&inp)?;
    bar.suspend(|| {
        println!("## Other reductions, M = N = 10^5, D = {D}, f32 (ours only)");
        println!();
        println!("| reduction | time (s) | pairs/s | pairs/s per core |");
        println!("|---|---|---|---|");
    });
    let lse = time_runs(&dev, 1, 2, Duration::from_secs(5), || {
        lazy.lse.logsumexp(Axis::J)
    })?;
    let knn = time_runs(&dev, 1, 2, Duration::from_secs(5), || {
        lazy.sqdist.argkmin(10, Axis::J)
    })?;
    bar.finish_and_clear();
    for (name, times) in [
        ("LogSumExp of -sqdist(x, y) / (2 s^2)", &lse),
        ("ArgKMin(10) of sqdist(x, y)", &knn),
    ] {
        let t = times[0];
        println!(
            "| {name} | {t:.4} | {:.3e} | {} |",
            pairs / t,
            per_core_cell(pairs / t / threads as f64, 3)
        );
    }
    println!();
    println!("Best of up to 2 runs each.");
    Ok(())
}
