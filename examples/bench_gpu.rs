//! GPU benchmark: prints markdown tables measured on CUDA device 0 (build with `--features
//! cuda`); without a CUDA device it says so and exits 0.
//!
//! ```text
//! cargo run --release --features cuda --example bench_gpu                    # M = N up to 10^6
//! cargo run --release --features cuda --example bench_gpu -- --quick         # up to 10^5
//! cargo run --release --features cuda --example bench_gpu -- --sizes 1e4,1e5
//! ```
//!
//! * The Gaussian kernel sum `sum_j exp(-|x_i - y_j|^2 / 2) b_j`, D = 3, f32, M = N: median
//!   time per call after a warm-up call, in kernel pairs per second and as a share of the
//!   reference limit of 4e12 exp/s (an H100 SXM5: 132 SMs x 16 results per clock per SM for
//!   the MUFU exp2 instruction, CUDA C++ Programming Guide's arithmetic-instruction throughput
//!   table for compute capability 9.0, x 1.98 GHz boost clock = 4.2e12; one exp per pair).
//! * LogSumExp of `-|x_i - y_j|^2` and ArgKMin(10) of `|x_i - y_j|^2` at M = N = 10^5.
//! * First-call latency of a formula never seen before (a constant taken from the clock makes
//!   it new: the call includes code generation, NVRTC and loading), the second call, and the
//!   first call of the same formula in a new process (this program re-executed with a hidden
//!   `--cached-child` flag), which comes from the disk cache.
//!
//! Every timed call ends with a copy of one scalar of the result to the host, so the time is
//! the time until the result exists.

#[path = "device/mod.rs"]
mod device;
#[path = "report/mod.rs"]
mod report;

use std::error::Error;
use std::hint::black_box;
use std::process::Command;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use candle_core::{DType, Device, Tensor};
use lazy_kernels::{Axis, LazyTensor};

type Res<T> = Result<T, Box<dyn Error>>;

const D: usize = 3;
/// Exp results per second of an H100 SXM5 (see the module documentation).
const EXP_LIMIT: f64 = 4e12;
/// Points of the latency measurements (small, so the run itself is negligible).
const LATENCY_N: usize = 1000;

/// Small deterministic generator (xorshift64*), uniform f32 in [0, 1).
struct XorShift(u64);

impl XorShift {
    fn tensor(&mut self, rows: usize, cols: usize, dev: &Device) -> Res<Tensor> {
        let v: Vec<f32> = (0..rows * cols)
            .map(|_| {
                self.0 ^= self.0 >> 12;
                self.0 ^= self.0 << 25;
                self.0 ^= self.0 >> 27;
                (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32
            })
            .collect();
        Ok(Tensor::from_vec(v, (rows, cols), &Device::Cpu)?.to_device(dev)?)
    }
}

/// Points x (M, D), y (N, D) and weights b (N, 1) on the device, as lazy variables.
struct Inputs {
    x: LazyTensor,
    y: LazyTensor,
    b: LazyTensor,
}

impl Inputs {
    fn new(m: usize, n: usize, dev: &Device) -> Res<Inputs> {
        let mut r = XorShift(0x9E37_79B9_7F4A_7C15 ^ m as u64 ^ ((n as u64) << 32));
        Ok(Inputs {
            x: LazyTensor::vi(&r.tensor(m, D, dev)?)?,
            y: LazyTensor::vj(&r.tensor(n, D, dev)?)?,
            b: LazyTensor::vj(&r.tensor(n, 1, dev)?)?,
        })
    }

    /// `sum_j exp(-c |x_i - y_j|^2) b_j`.
    fn gauss(&self, c: f64) -> Res<Tensor> {
        Ok(((-self.x.sqdist(&self.y)? * c).exp() * &self.b).sum(Axis::J)?)
    }
}

/// Waits for `t` by copying one scalar computed from it to the host.
fn sync(t: &Tensor) -> Res<()> {
    black_box(t.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?);
    Ok(())
}

/// Seconds of one call of `f`, synchronised.
fn time_once(f: &mut impl FnMut() -> Res<Tensor>) -> Res<f64> {
    let t0 = Instant::now();
    sync(&f()?)?;
    Ok(t0.elapsed().as_secs_f64())
}

/// Median seconds per call after one warm-up call: at least 3 and at most `max_reps` runs,
/// stopping after about 2 s.
fn time_median(max_reps: usize, mut f: impl FnMut() -> Res<Tensor>) -> Res<f64> {
    time_once(&mut f)?;
    let start = Instant::now();
    let mut times = Vec::new();
    while times.len() < 3 || (times.len() < max_reps && start.elapsed().as_secs_f64() < 2.0) {
        times.push(time_once(&mut f)?);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn fmt_s(s: f64) -> String {
    if s < 0.1 {
        format!("{:.3} ms", s * 1e3)
    } else {
        format!("{s:.3} s")
    }
}

/// The first line `command args` prints, if it runs.
fn first_line(command: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(command).args(args).output().ok()?;
    let s = String::from_utf8_lossy(&out.stdout);
    let line = s.lines().next()?.trim().to_string();
    (out.status.success() && !line.is_empty()).then_some(line)
}

/// Child mode: the first and second call of the Gaussian sum with constant `c` (the parent
/// compiled it, so the first call finds it in the disk cache), after a warm-up of the CUDA
/// context with plain Candle ops.
fn cached_child(c: f64) -> Res<()> {
    let dev = Device::new_cuda(0)?;
    sync(&Tensor::ones((1000, 3), DType::F32, &dev)?.sqr()?)?;
    let inp = Inputs::new(LATENCY_N, LATENCY_N, &dev)?;
    let first = time_once(&mut || inp.gauss(c))?;
    let second = time_once(&mut || inp.gauss(c))?;
    println!("CHILD first_s={first} second_s={second}");
    Ok(())
}

/// Runs this program as a child timing the constant `c`; the first and second call times.
fn run_cached_child(c: f64) -> Res<(f64, f64)> {
    let out = Command::new(std::env::current_exe()?)
        .args(["--cached-child", &format!("{:016x}", c.to_bits())])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.starts_with("CHILD "));
    let (Some(line), true) = (line, out.status.success()) else {
        return Err(format!(
            "child failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    };
    let value = |key: &str| -> Res<f64> {
        let kv = line.split_whitespace().find_map(|kv| kv.strip_prefix(key));
        Ok(kv.ok_or("child output")?.trim_start_matches('=').parse()?)
    };
    Ok((value("first_s")?, value("second_s")?))
}

fn parse_sizes(s: &str) -> Res<Vec<usize>> {
    s.split(',')
        .map(|v| Ok(v.trim().parse::<f64>()? as usize))
        .collect()
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, bits] = args.as_slice() {
        if flag == "--cached-child" {
            return cached_child(f64::from_bits(u64::from_str_radix(bits, 16)?));
        }
    }
    let quick = args.iter().any(|a| a == "--quick");
    let sizes = match args.iter().position(|a| a == "--sizes") {
        Some(k) => parse_sizes(
            args.get(k + 1)
                .ok_or("--sizes needs a list, e.g. 1e4,1e5")?,
        )?,
        None if quick => vec![10_000, 100_000],
        None => vec![10_000, 100_000, 1_000_000],
    };
    // CUDA only: without CUDA support or a device, one line saying which (exit 1).
    let dev = device::open_or_exit(device::Choice::Cuda(0));
    let max_reps = if quick { 5 } else { 20 };
    let unix = SystemTime::now().duration_since(UNIX_EPOCH)?;

    println!(
        "# lazy-kernels GPU benchmark: `bench_gpu {}`",
        args.join(" ")
    );
    println!();
    println!("- date: unix {}", unix.as_secs());
    let query = ["--query-gpu=name,driver_version", "--format=csv,noheader"];
    let gpu = first_line("nvidia-smi", &query).unwrap_or_else(|| "unknown".into());
    println!("- GPU: {gpu} (name, driver)");
    println!(
        "- times: median per call after a warm-up call, including a copy of one scalar of the \
         result to the host"
    );
    println!(
        "- reference: {EXP_LIMIT:.0e} exp/s, an H100 SXM5's exp unit (132 SMs x 16 MUFU.EX2 per \
         clock x 1.98 GHz), one exp per pair"
    );
    println!();
    println!("Gaussian kernel sum `sum_j exp(-|x_i - y_j|^2 / 2) b_j`, D = 3, E = 1, f32:");
    println!();
    println!("| M = N | time per call | pairs/s | share of {EXP_LIMIT:.0e} exp/s |");
    println!("|---|---|---|---|");
    for &n in &sizes {
        let inp = Inputs::new(n, n, &dev)?;
        let t = time_median(max_reps, || inp.gauss(0.5))?;
        let rate = (n as f64).powi(2) / t;
        println!(
            "| {} | {} | {rate:.3e} | {:.2} |",
            report::fmt_n(n),
            fmt_s(t),
            rate / EXP_LIMIT
        );
    }
    println!();

    let n = 100_000;
    println!(
        "Other reductions, M = N = {}, D = 3, f32:",
        report::fmt_n(n)
    );
    println!();
    println!("| reduction | time per call | pairs/s |");
    println!("|---|---|---|");
    let inp = Inputs::new(n, n, &dev)?;
    let d2 = inp.x.sqdist(&inp.y)?;
    let neg = -&d2;
    let row =
        |name: &str, t: f64| println!("| {name} | {} | {:.3e} |", fmt_s(t), (n as f64).powi(2) / t);
    row(
        "LogSumExp of -SqDist",
        time_median(max_reps, || Ok(neg.logsumexp(Axis::J)?))?,
    );
    row(
        "ArgKMin(10) of SqDist",
        time_median(max_reps, || Ok(d2.argkmin(10, Axis::J)?))?,
    );
    println!();

    // A constant no earlier run can have used: the formula is new to every cache.
    let c = 0.5 + (unix.subsec_nanos() as f64 + (unix.as_secs() % 1000) as f64 * 1e9) * 1e-13;
    let inp = Inputs::new(LATENCY_N, LATENCY_N, &dev)?;
    let first = time_once(&mut || inp.gauss(c))?;
    let second = time_once(&mut || inp.gauss(c))?;
    println!(
        "Latency, Gaussian kernel sum with a new constant ({c}), M = N = {}, f32:",
        report::fmt_n(LATENCY_N)
    );
    println!();
    println!("| call | time |");
    println!("|---|---|");
    println!(
        "| first call of a new formula (generate, compile, load, run) | {} |",
        fmt_s(first)
    );
    println!("| second call (in-memory cache) | {} |", fmt_s(second));
    match run_cached_child(c) {
        Ok((first, second)) => {
            println!(
                "| new process: first call (disk cache) | {} |",
                fmt_s(first)
            );
            println!("| new process: second call | {} |", fmt_s(second));
            println!(
                "| new process: disk-cache overhead (first - second) | {} |",
                fmt_s(first - second)
            );
        }
        Err(e) => println!(
            "| new process | failed: {} |",
            e.to_string().replace('\n', " ")
        ),
    }
    Ok(())
}
