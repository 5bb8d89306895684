//! GPU benchmark: prints markdown tables measured on CUDA device 0 (build with `--features
//! cuda`); without CUDA support or a CUDA device it says so in one line and exits 1.
//!
//! ```text
//! cargo run --release --features cuda --example bench_gpu               # M = N up to 3 x 10^6
//! cargo run --release --features cuda --example bench_gpu -- --quick    # up to 10^5
//! cargo run --release --features cuda --example bench_gpu -- --sizes 1e4,1e5
//! cargo run --release --features cuda --example bench_gpu -- --device cuda:1
//! ```
//!
//! `--device cuda|cuda:N` (default `cuda`, device 0); `--seed S` changes the random points;
//! `--help` lists the options.
//!
//! * The Gaussian kernel sum `sum_j exp(-|x_i - y_j|^2 / 2) b_j`, D = 3, f32, M = N (10^4,
//!   10^5, 10^6, 3 x 10^6; `--quick` 10^4, 10^5; `--sizes` any): median time per call after a
//!   warm-up call, in kernel pairs per second and as a share of the reference limit of 4e12
//!   exp/s (an H100 SXM5: 132 SMs x 16 results per clock per SM for the MUFU exp2 instruction,
//!   CUDA C++ Programming Guide's arithmetic-instruction throughput table for compute
//!   capability 9.0, x 1.98 GHz boost clock = 4.2e12; one exp per pair).
//! * Spellings and precisions of that sum at M = N = 10^6 (10^5 with `--quick`; `--sizes` does
//!   not apply): the constant form in f32, the README's form with sigma as a parameter
//!   (`(-x.sqdist(&y) / (s.square() * 2.0)).exp() * &b`, sigma = 1, the same values) in f32,
//!   the constant form in f64 and with f16 inputs; each beside its predicted time.
//! * LogSumExp of `-|x_i - y_j|^2` and ArgKMin(10) of `|x_i - y_j|^2` at M = N = 10^5, each
//!   beside its predicted time and as a ratio to the Gaussian sum measured at the same size in
//!   the same run (targets: LogSumExp at most 1.5x, ArgKMin(10) at most 2x).
//! * Forward and backward of the sigma-form Gaussian sum with respect to x, y, b and sigma (all
//!   candle `Var`s; `sum_all()?.backward()?`, then every gradient copied to the host) at M = N
//!   = 10^5 and 10^6 (10^5 with `--quick`), as a ratio to the forward time of the same sum.
//! * First-call latency of a formula never seen before (a constant taken from the clock makes
//!   it new: the call includes code generation, NVRTC and loading), the second call, and the
//!   first call of the same formula in a new process (this program re-executed with a hidden
//!   `--cached-child` option), which comes from the disk cache.
//!
//! Every timed call ends with a copy of one scalar of the result to the host (of every
//! gradient, whole, for the backward pass), so the time is the time until the result exists.
//!
//! Predicted times come from the per-pair SASS instruction counts of the generated kernels'
//! main loops committed in `cuda/sass-budget.txt` (checked in CI by `scripts/sass-budget.py`),
//! by the formula of that script's docstring for an H100/H200 SXM (132 SMs at 1.98 GHz, 4
//! schedulers x 32 lanes per SM, so 128 lane-instructions per clock per SM; MUFU 16 and FP64
//! 64 results per clock per SM, so a MUFU instruction costs 8 issue slots and an FP64 one 2):
//! seconds = pairs x max(total, 8 mufu, 2 fp64) / (132 x 1.98e9 x 128). It is a lower bound
//! (no latency, memory or occupancy model); measured / predicted says how far a run is from it.

#[path = "device/mod.rs"]
mod device;
#[path = "report/mod.rs"]
mod report;
#[path = "sizes/mod.rs"]
mod sizes;

use std::error::Error;
use std::hint::black_box;
use std::process::Command;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use candle_core::{DType, Device, Tensor, Var};
use clap::Parser;
use lazy_kernels::{Axis, LazyTensor};

/// GPU benchmark of the reductions: markdown tables measured on a CUDA device.
///
/// The Gaussian kernel sum (D = 3, f32, M = N) at each size, in pairs per second and as a
/// share of an H100's exp throughput; its spellings and precisions, LogSumExp and ArgKMin(10)
/// beside their times predicted from the kernels' SASS instruction counts; the backward pass
/// against the forward; the first-call latency of a new formula, in memory and from the disk
/// cache (in a new process). Needs a build with `--features cuda`: without CUDA support or a
/// CUDA device it says so in one line and exits 1.
#[derive(Parser)]
#[command(name = "bench_gpu")]
struct Cli {
    /// Smaller sizes and fewer repetitions: M = N up to 10^5.
    #[arg(long)]
    quick: bool,
    /// The sizes M = N of the first table [default: 1e4,1e5,1e6,3e6; 1e4,1e5 with --quick].
    #[arg(long, value_name = "N,...", value_delimiter = ',', value_parser = sizes::count)]
    sizes: Option<Vec<usize>>,
    /// Seed of the random points and weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The CUDA device: `cuda` (device 0) or `cuda:N`.
    #[arg(long, value_name = "cuda|cuda:N", default_value = "cuda", value_parser = cuda_choice)]
    device: device::Choice,
    /// Child mode: times the first and second call of the Gaussian sum with the constant of
    /// these f64 bits (hexadecimal), from the disk cache.
    #[arg(long, value_name = "BITS", hide = true, value_parser = f64_from_bits)]
    cached_child: Option<f64>,
}

/// `--device`: a CUDA device only.
fn cuda_choice(s: &str) -> Result<device::Choice, String> {
    match device::Choice::parse(s)? {
        device::Choice::Cpu => Err("bench_gpu runs on a CUDA device only: cuda or cuda:N".into()),
        c => Ok(c),
    }
}

/// An `f64` from the hexadecimal digits of its bits.
fn f64_from_bits(s: &str) -> Result<f64, String> {
    u64::from_str_radix(s, 16)
        .map(f64::from_bits)
        .map_err(|e| format!("{s:?}: {e}"))
}

type Res<T> = Result<T, Box<dyn Error>>;

const D: usize = 3;
/// Exp results per second of an H100 SXM5 (see the module documentation).
const EXP_LIMIT: f64 = 4e12;
/// Points of the latency measurements (small, so the run itself is negligible).
const LATENCY_N: usize = 1000;
/// Per-pair SASS instruction counts of the budget kernels, one row per kernel label:
/// `label regs spill fp32 mufu lds cvt fp64 branch call other total` (`#` starts a comment).
const SASS_BUDGET: &str = include_str!("../cuda/sass-budget.txt");
/// Lane-instructions an H100/H200 SXM issues per second: 132 SMs x 1.98e9 Hz x 4 schedulers
/// x 32 lanes (`scripts/sass-budget.py`'s docstring).
const ISSUE_RATE: f64 = 132.0 * 1.98e9 * 4.0 * 32.0;

/// Small deterministic generator (xorshift64*), uniform f32 in [0, 1).
struct XorShift(u64);

impl XorShift {
    /// A `(rows, cols)` tensor of `dtype` on `dev` (drawn in f32, then converted).
    fn tensor(&mut self, rows: usize, cols: usize, dtype: DType, dev: &Device) -> Res<Tensor> {
        let v: Vec<f32> = (0..rows * cols)
            .map(|_| {
                self.0 ^= self.0 >> 12;
                self.0 ^= self.0 << 25;
                self.0 ^= self.0 >> 27;
                (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32
            })
            .collect();
        let t = Tensor::from_vec(v, (rows, cols), &Device::Cpu)?;
        Ok(t.to_dtype(dtype)?.to_device(dev)?)
    }
}

/// Points x (M, D), y (N, D), weights b (N, 1) and sigma = 1 (1,) of `dtype` on `dev`; the
/// same values for the same sizes and seed whatever the dtype (up to its rounding).
fn tensors(m: usize, n: usize, dtype: DType, dev: &Device, seed: u64) -> Res<[Tensor; 4]> {
    let state = 0x9E37_79B9_7F4A_7C15 ^ m as u64 ^ ((n as u64) << 32);
    let mut r = XorShift((state ^ seed.wrapping_mul(0xD1B5_4A32_D192_ED03)).max(1));
    Ok([
        r.tensor(m, D, dtype, dev)?,
        r.tensor(n, D, dtype, dev)?,
        r.tensor(n, 1, dtype, dev)?,
        Tensor::ones(1, dtype, dev)?,
    ])
}

/// The inputs of [`tensors`] as lazy variables (sigma a parameter).
struct Inputs {
    x: LazyTensor,
    y: LazyTensor,
    b: LazyTensor,
    s: LazyTensor,
}

impl Inputs {
    fn new(m: usize, n: usize, dtype: DType, dev: &Device, seed: u64) -> Res<Inputs> {
        Inputs::bind(&tensors(m, n, dtype, dev, seed)?)
    }

    fn bind([x, y, b, s]: &[Tensor; 4]) -> Res<Inputs> {
        Ok(Inputs {
            x: LazyTensor::vi(x)?,
            y: LazyTensor::vj(y)?,
            b: LazyTensor::vj(b)?,
            s: LazyTensor::param(s)?,
        })
    }

    /// `sum_j exp(-c |x_i - y_j|^2) b_j`.
    fn gauss(&self, c: f64) -> Res<Tensor> {
        Ok(((-self.x.sqdist(&self.y) * c).exp() * &self.b).sum(Axis::J)?)
    }

    /// The constant form `exp(-|x - y|^2 * 0.5) * b`, summed over j.
    fn gauss_const(&self) -> Res<Tensor> {
        self.gauss(0.5)
    }

    /// The README's form with sigma as a parameter, summed over j.
    fn gauss_sigma(&self) -> Res<Tensor> {
        let k = (-self.x.sqdist(&self.y) / (self.s.square() * 2.0)).exp();
        Ok((k * &self.b).sum(Axis::J)?)
    }

    fn logsumexp(&self) -> Res<Tensor> {
        Ok((-self.x.sqdist(&self.y)).logsumexp(Axis::J)?)
    }

    fn argkmin10(&self) -> Res<Tensor> {
        Ok(self.x.sqdist(&self.y).argkmin(10, Axis::J)?)
    }
}

/// A reduction timed against its prediction: its name, dtype, how it runs, its row in
/// `cuda/sass-budget.txt` and, for the other reductions, the issue's target for its ratio to
/// the Gaussian sum.
#[derive(Clone, Copy)]
struct Row {
    name: &'static str,
    dtype: DType,
    run: fn(&Inputs) -> Res<Tensor>,
    label: &'static str,
    target: Option<f64>,
}

/// The Gaussian sum in its constant form, f32: the first table, and the reference of the
/// others.
const GAUSS: Row = Row {
    name: "Gaussian sum `(-x.sqdist(&y)? * 0.5).exp() * &b`",
    dtype: DType::F32,
    run: Inputs::gauss_const,
    label: "gauss_const_f32",
    target: None,
};

/// The rows of "Gaussian sum spellings and precisions".
const SPELLINGS: [Row; 4] = [
    GAUSS,
    Row {
        name: "sigma parameter `(-x.sqdist(&y)? / (s.square() * 2.0)).exp() * &b`",
        dtype: DType::F32,
        run: Inputs::gauss_sigma,
        label: "gauss_sigma_f32",
        target: None,
    },
    Row {
        name: "constant form",
        dtype: DType::F64,
        run: Inputs::gauss_const,
        label: "gauss_const_f64",
        target: None,
    },
    Row {
        name: "constant form",
        dtype: DType::F16,
        run: Inputs::gauss_const,
        label: "gauss_const_f16",
        target: None,
    },
];

/// The rows of "Other reductions"; the first is the Gaussian sum they are compared with.
const OTHERS: [Row; 3] = [
    GAUSS,
    Row {
        name: "LogSumExp of -SqDist",
        dtype: DType::F32,
        run: Inputs::logsumexp,
        label: "logsumexp_f32",
        target: Some(1.5),
    },
    Row {
        name: "ArgKMin(10) of SqDist",
        dtype: DType::F32,
        run: Inputs::argkmin10,
        label: "argkmin10_f32",
        target: Some(2.0),
    },
];

/// The per-pair instruction counts of one budget kernel that its predicted time uses.
#[derive(Clone, Copy, Debug, PartialEq)]
struct PairCost {
    mufu: f64,
    fp64: f64,
    total: f64,
}

impl PairCost {
    /// Predicted seconds for `pairs` pairs on an H100/H200 SXM: pairs x max(total, 8 mufu,
    /// 2 fp64) / (132 x 1.98e9 x 128), the formula of `scripts/sass-budget.py`'s docstring
    /// (MUFU 16 and FP64 64 results per clock per SM against 128 issue slots).
    fn predicted_s(&self, pairs: f64) -> f64 {
        let slots = self.total.max(8.0 * self.mufu).max(2.0 * self.fp64);
        pairs * slots / ISSUE_RATE
    }
}

/// The counts of kernel `label` in the budget file `text`, or an error naming the label.
fn pair_cost(text: &str, label: &str) -> Res<PairCost> {
    let mut rows = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| l.split_whitespace().collect::<Vec<_>>());
    let row = rows
        .find(|r| r.first() == Some(&label))
        .ok_or_else(|| format!("cuda/sass-budget.txt has no row for kernel {label:?}"))?;
    let values = row[1..]
        .iter()
        .map(|v| v.parse::<f64>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cuda/sass-budget.txt, kernel {label:?}: {e}"))?;
    let [
        _regs,
        _spill,
        _fp32,
        mufu,
        _lds,
        _cvt,
        fp64,
        _branch,
        _call,
        _other,
        total,
    ] = values[..]
    else {
        return Err(format!(
            "cuda/sass-budget.txt, kernel {label:?}: {} numbers, expected 11 (regs spill fp32 \
             mufu lds cvt fp64 branch call other total)",
            values.len()
        )
        .into());
    };
    Ok(PairCost { mufu, fp64, total })
}

/// Waits for `t` by copying one scalar computed from it to the host.
fn sync(t: &Tensor) -> Res<()> {
    black_box(t.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?);
    Ok(())
}

/// Seconds of one call of `f`, which returns when its result exists on the host.
fn time_once(f: &mut impl FnMut() -> Res<()>) -> Res<f64> {
    let t0 = Instant::now();
    f()?;
    Ok(t0.elapsed().as_secs_f64())
}

/// Median seconds per call of `f` (as in [`time_once`]) after one warm-up call: at least 3 and
/// at most `max_reps` runs, stopping after about 2 s.
fn time_median(max_reps: usize, mut f: impl FnMut() -> Res<()>) -> Res<f64> {
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
fn cached_child(c: f64, dev: &Device, seed: u64) -> Res<()> {
    sync(&Tensor::ones((1000, 3), DType::F32, dev)?.sqr()?)?;
    let inp = Inputs::new(LATENCY_N, LATENCY_N, DType::F32, dev, seed)?;
    let first = time_once(&mut || sync(&inp.gauss(c)?))?;
    let second = time_once(&mut || sync(&inp.gauss(c)?))?;
    println!("CHILD first_s={first} second_s={second}");
    Ok(())
}

/// Runs this program as a child timing the constant `c`; the first and second call times.
fn run_cached_child(c: f64, device: device::Choice, seed: u64) -> Res<(f64, f64)> {
    let out = Command::new(std::env::current_exe()?)
        .args([
            "--cached-child",
            &format!("{:016x}", c.to_bits()),
            "--device",
            &device.spec(),
            "--seed",
            &seed.to_string(),
        ])
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

/// Prints a line of the report (`println!`'s arguments) between the progress bar's redraws.
macro_rules! out {
    ($bench:expr) => {
        $bench.bar.suspend(|| println!())
    };
    ($bench:expr, $($arg:tt)*) => {
        $bench.bar.suspend(|| println!($($arg)*))
    };
}

/// What every table needs: the device, the number of timed calls, the seed of the inputs and
/// the progress bar (a step per row of the tables).
struct Bench {
    dev: Device,
    device: device::Choice,
    max_reps: usize,
    seed: u64,
    bar: indicatif::ProgressBar,
}

impl Bench {
    /// Median seconds per call of `row` on `inp`.
    fn time(&self, row: &Row, inp: &Inputs) -> Res<f64> {
        time_median(self.max_reps, || sync(&(row.run)(inp)?))
    }

    /// The Gaussian sum, constant form, f32, at each M = N of `sizes`.
    fn gauss_sizes(&self, sizes: &[usize]) -> Res<()> {
        out!(
            self,
            "Gaussian kernel sum `sum_j exp(-|x_i - y_j|^2 / 2) b_j`, D = 3, E = 1, f32:"
        );
        out!(self);
        out!(
            self,
            "| M = N | time per call | pairs/s | share of {EXP_LIMIT:.0e} exp/s |"
        );
        out!(self, "|---|---|---|---|");
        for &n in sizes {
            let inp = Inputs::new(n, n, DType::F32, &self.dev, self.seed)?;
            let t = self.time(&GAUSS, &inp)?;
            let rate = (n as f64).powi(2) / t;
            out!(
                self,
                "| {} | {} | {rate:.3e} | {:.2} |",
                report::fmt_n(n),
                fmt_s(t),
                rate / EXP_LIMIT
            );
            self.bar.inc(1);
        }
        out!(self);
        Ok(())
    }

    /// The rows of [`SPELLINGS`] at M = N = `n`.
    fn spellings(&self, n: usize) -> Res<()> {
        let pairs = (n as f64).powi(2);
        out!(
            self,
            "Gaussian sum spellings and precisions, M = N = {}, D = 3, E = 1:",
            report::fmt_n(n)
        );
        out!(self);
        out!(
            self,
            "| spelling | dtype | time per call | pairs/s | share of {EXP_LIMIT:.0e} exp/s | \
             predicted (H100/H200) | measured / predicted |"
        );
        out!(self, "|---|---|---|---|---|---|---|");
        for row in &SPELLINGS {
            let predicted = pair_cost(SASS_BUDGET, row.label)?.predicted_s(pairs);
            let t = self.time(row, &Inputs::new(n, n, row.dtype, &self.dev, self.seed)?)?;
            out!(
                self,
                "| {} | {} | {} | {:.3e} | {:.2} | {} | {:.2} |",
                row.name,
                row.dtype.as_str(),
                fmt_s(t),
                pairs / t,
                pairs / t / EXP_LIMIT,
                fmt_s(predicted),
                t / predicted
            );
            self.bar.inc(1);
        }
        out!(self);
        Ok(())
    }

    /// The rows of [`OTHERS`] at M = N = `n`, as ratios to the Gaussian sum (the first row).
    fn others(&self, n: usize) -> Res<()> {
        let pairs = (n as f64).powi(2);
        out!(
            self,
            "Other reductions, M = N = {}, D = 3, f32 (ratio: to the Gaussian sum of this \
             table):",
            report::fmt_n(n)
        );
        out!(self);
        out!(
            self,
            "| reduction | time per call | pairs/s | predicted (H100/H200) | measured / \
             predicted | ratio to the Gaussian sum | target ratio |"
        );
        out!(self, "|---|---|---|---|---|---|---|");
        let inp = Inputs::new(n, n, DType::F32, &self.dev, self.seed)?;
        let mut gauss = None;
        for row in &OTHERS {
            let predicted = pair_cost(SASS_BUDGET, row.label)?.predicted_s(pairs);
            let t = self.time(row, &inp)?;
            let reference = *gauss.get_or_insert(t);
            let target = row.target.map_or("-".into(), |r| format!("at most {r}"));
            out!(
                self,
                "| {} | {} | {:.3e} | {} | {:.2} | {:.2} | {target} |",
                row.name,
                fmt_s(t),
                pairs / t,
                fmt_s(predicted),
                t / predicted,
                t / reference
            );
            self.bar.inc(1);
        }
        out!(self);
        Ok(())
    }

    /// Forward and forward + backward of the sigma-form Gaussian sum, gradients with respect
    /// to x, y, b and sigma, at each M = N of `sizes`.
    fn gradients(&self, sizes: &[usize]) -> Res<()> {
        out!(
            self,
            "Gradient of the sigma-form Gaussian sum with respect to x, y, b and sigma, D = 3, \
             f32 (`sum_all()?.backward()?`, then every gradient copied to the host; the first \
             H200 run measured 3.3x):"
        );
        out!(self);
        out!(
            self,
            "| M = N | forward | forward + backward | (forward + backward) / forward |"
        );
        out!(self, "|---|---|---|---|");
        for &n in sizes {
            let [x, y, b, s] = tensors(n, n, DType::F32, &self.dev, self.seed)?;
            let vars = [
                Var::from_tensor(&x)?,
                Var::from_tensor(&y)?,
                Var::from_tensor(&b)?,
                Var::from_tensor(&s)?,
            ];
            let inp = Inputs::bind(&vars.each_ref().map(|v| v.as_tensor().clone()))?;
            let forward = time_median(self.max_reps, || sync(&inp.gauss_sigma()?))?;
            let both = time_median(self.max_reps, || {
                let grads = inp.gauss_sigma()?.sum_all()?.backward()?;
                for v in &vars {
                    let g = grads.get(v.as_tensor()).ok_or("a gradient is missing")?;
                    black_box(g.to_device(&Device::Cpu)?);
                }
                Ok(())
            })?;
            out!(
                self,
                "| {} | {} | {} | {:.2} |",
                report::fmt_n(n),
                fmt_s(forward),
                fmt_s(both),
                both / forward
            );
            self.bar.inc(1);
        }
        out!(self);
        Ok(())
    }

    /// First and second call of a formula new to every cache, and the same in a new process.
    fn latency(&self, unix: std::time::Duration) -> Res<()> {
        // A constant no earlier run can have used: the formula is new to every cache.
        let c = 0.5 + (unix.subsec_nanos() as f64 + (unix.as_secs() % 1000) as f64 * 1e9) * 1e-13;
        let inp = Inputs::new(LATENCY_N, LATENCY_N, DType::F32, &self.dev, self.seed)?;
        let first = time_once(&mut || sync(&inp.gauss(c)?))?;
        let second = time_once(&mut || sync(&inp.gauss(c)?))?;
        out!(
            self,
            "Latency, Gaussian kernel sum with a new constant ({c}), M = N = {}, f32:",
            report::fmt_n(LATENCY_N)
        );
        out!(self);
        out!(self, "| call | time |");
        out!(self, "|---|---|");
        out!(
            self,
            "| first call of a new formula (generate, compile, load, run) | {} |",
            fmt_s(first)
        );
        out!(
            self,
            "| second call (in-memory cache) | {} |",
            fmt_s(second)
        );
        match run_cached_child(c, self.device, self.seed) {
            Ok((first, second)) => {
                out!(
                    self,
                    "| new process: first call (disk cache) | {} |",
                    fmt_s(first)
                );
                out!(self, "| new process: second call | {} |", fmt_s(second));
                out!(
                    self,
                    "| new process: disk-cache overhead (first - second) | {} |",
                    fmt_s(first - second)
                );
            }
            Err(e) => out!(
                self,
                "| new process | failed: {} |",
                e.to_string().replace('\n', " ")
            ),
        }
        self.bar.inc(1);
        Ok(())
    }
}

fn main() -> Res<()> {
    let cli = Cli::parse();
    if let Some(c) = cli.cached_child {
        let dev = device::open_or_exit(cli.device);
        return cached_child(c, &dev, cli.seed);
    }
    let quick = cli.quick;
    let sizes = match cli.sizes {
        Some(sizes) => sizes,
        None if quick => vec![10_000, 100_000],
        None => vec![10_000, 100_000, 1_000_000, 3_000_000],
    };
    let gradient_sizes: &[usize] = if quick {
        &[100_000]
    } else {
        &[100_000, 1_000_000]
    };
    // Every row's budget kernel exists before any device time is spent.
    for row in SPELLINGS.iter().chain(&OTHERS) {
        pair_cost(SASS_BUDGET, row.label)?;
    }
    // CUDA only: without CUDA support or a device, one line saying which (exit 1).
    let dev = device::open_or_exit(cli.device);
    let steps = sizes.len() + SPELLINGS.len() + OTHERS.len() + gradient_sizes.len() + 1;
    let bench = Bench {
        dev,
        device: cli.device,
        max_reps: if quick { 5 } else { 20 },
        seed: cli.seed,
        bar: report::progress(steps as u64, "table rows"),
    };
    let unix = SystemTime::now().duration_since(UNIX_EPOCH)?;

    out!(
        bench,
        "# lazy-kernels GPU benchmark: `bench_gpu {}`",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
    out!(bench);
    out!(bench, "{}", report::machine_header());
    let query = ["--query-gpu=name,driver_version", "--format=csv,noheader"];
    let gpu = first_line("nvidia-smi", &query).unwrap_or_else(|| "unknown".into());
    out!(
        bench,
        "- GPU: {gpu} (name, driver); `--device {}`",
        cli.device
    );
    out!(
        bench,
        "- times: median per call after a warm-up call, including a copy of one scalar of the \
         result to the host"
    );
    out!(
        bench,
        "- reference: {EXP_LIMIT:.0e} exp/s, an H100 SXM5's exp unit (132 SMs x 16 MUFU.EX2 per \
         clock x 1.98 GHz), one exp per pair"
    );
    out!(
        bench,
        "- predicted: pairs x max(total, 8 mufu, 2 fp64) / (132 SMs x 1.98 GHz x 128 lanes), \
         per-pair SASS counts of cuda/sass-budget.txt (scripts/sass-budget.py), H100/H200 SXM"
    );
    out!(bench);
    bench.gauss_sizes(&sizes)?;
    bench.spellings(if quick { 100_000 } else { 1_000_000 })?;
    bench.others(100_000)?;
    bench.gradients(gradient_sizes)?;
    bench.latency(unix)?;
    bench.bar.finish_and_clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_has_a_budget_kernel() {
        for row in SPELLINGS.iter().chain(&OTHERS) {
            let cost = pair_cost(SASS_BUDGET, row.label).unwrap();
            assert!(cost.total > 0.0, "{}", row.label);
        }
    }

    #[test]
    fn budget_rows_are_read_by_label() {
        let text = "# kernel regs ...\nk1 63 0 8.00 1.00 0.25 0.00 0.00 0.06 0.00 0.25 9.56\n\
                    k2 128 0 1.00 0.00 0.50 0.00 23.00 3.06 0.00 3.81 31.38\n\
                    k4 64 0 8.00 2.00 0.25 0.00 0.00 0.06 0.00 0.25 10.56\n";
        let k1 = pair_cost(text, "k1").unwrap();
        assert_eq!(
            k1,
            PairCost {
                mufu: 1.0,
                fp64: 0.0,
                total: 9.56
            }
        );
        // 10^12 pairs at 132 x 1.98e9 x 128 = 3.345408e13 issue slots per second.
        let slots = |label| pair_cost(text, label).unwrap().predicted_s(1e12) * 3.345_408e13 / 1e12;
        // Issue-bound: the total.
        assert!((slots("k1") - 9.56).abs() < 1e-9, "{}", slots("k1"));
        // FP64-bound: 2 x 23.
        assert!((slots("k2") - 46.0).abs() < 1e-9, "{}", slots("k2"));
        // MUFU-bound: 8 x 2.
        assert!((slots("k4") - 16.0).abs() < 1e-9, "{}", slots("k4"));
        let missing = pair_cost(text, "k3").unwrap_err().to_string();
        assert!(missing.contains("\"k3\""), "{missing}");
        let short = pair_cost("k1 1 2 3\n", "k1").unwrap_err().to_string();
        assert!(
            short.contains("\"k1\"") && short.contains("expected 11"),
            "{short}"
        );
        let bad = pair_cost("k1 1 2 x 4 5 6 7 8 9 10 11\n", "k1")
            .unwrap_err()
            .to_string();
        assert!(bad.contains("\"k1\""), "{bad}");
    }
}
