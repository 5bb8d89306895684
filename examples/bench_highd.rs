//! High-dimensional reductions (issue 15): the direct path, the block path of matrix products,
//! the automatic choice, a dense Candle implementation and the bare matrix product `X Y^T` of
//! the same shape, side by side in one markdown table, with the block results' accuracy.
//!
//! ```text
//! cargo run --release --example bench_highd                        # CPU, M = N = 2 x 10^4
//! cargo run --release --example bench_highd -- --quick             # CPU, M = N = 2000
//! cargo run --release --example bench_highd -- --dims 64,256 --m 1e4 --n 1e4 --max-seconds 30
//! cargo run --release --features cuda --example bench_highd -- --device cuda   # M = N = 10^5
//! ```
//!
//! `--help` lists the options.
//!
//! Rows: the Gaussian sum `sum_j exp(-|x_i - y_j|^2 / (2 s^2)) b_j` (b of one column,
//! `2 s^2 = D / 6`, the mean squared distance of uniform points, so that the kernel neither
//! vanishes nor saturates at any D) and `ArgKMin(10)` of `|x_i - y_j|^2`, at each D of `--dims`
//! (default 3, 16, 64, 256, 1024). Points are uniform in `[0, 1)^D`, weights uniform in
//! `[0, 1)`, drawn by a fixed generator (the same numbers for the same sizes and `--seed`).
//!
//! Columns:
//! * *direct*, *blocks*: `reduce_with` with `Path::Direct` / `Path::Blocks` (on CUDA also
//!   *blocks TF32*, `Precision::Tf32`);
//! * *auto*: `Path::Auto`, with the path `explain` reports (its reasons are listed below the
//!   table);
//! * *dense Candle*: rows in chunks of `--chunk-mib` MiB of `chunk x N` values (256 MiB on the
//!   CPU, 2 GiB on CUDA): `|x|^2 + |y|^2 - 2 X Y^T` by a matrix product, clamped at 0, then
//!   `exp` and a matrix product with `b` for the sum; for ArgKMin a full `arg_sort` of each row
//!   (Candle has no top-k) and its first 10 columns;
//! * *matmul*: the bare product `X Y^T` with the same chunks and nothing else: the time the
//!   hardware needs for the inner products alone;
//! * *auto / matmul* and *direct / auto*: ratios of times of this run;
//! * *err*: for the sum, the largest relative difference `|v_i - d_i| / |d_i|` from the direct
//!   path's result `d`; for ArgKMin, the share of rows whose set of 10 indices differs from the
//!   direct path's (ties within rounding may differ). When the direct path's full run is
//!   skipped, the reference is the direct path on the first rows only (said below the table).
//!
//! Timing: each cell is first estimated by a run on 1/32 of the rows (which also compiles its
//! formula); a cell whose estimate exceeds `--max-seconds` is skipped, with a note. Then every
//! cell runs once untimed (its result gives the accuracy), and then in repetitions that run the
//! cells of one D one after the other, so that noise of the machine hits them alike: at least 3
//! repetitions, up to 10 for cells faster than 0.2 s. A cell's time is its median. On CUDA every
//! time is read after the device has finished.

#[path = "device/mod.rs"]
mod device;
#[path = "report/mod.rs"]
mod report;
#[path = "sizes/mod.rs"]
mod sizes;

use std::error::Error;
use std::hint::black_box;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use clap::Parser;
use lazy_kernels::{Axis, LazyTensor, Path, Precision, ReductionKind, ReductionOptions, linalg};

type Res<T> = Result<T, Box<dyn Error>>;

/// The k of ArgKMin.
const K: usize = 10;
/// A cell's estimate runs on this fraction of the rows (1 / PROBE).
const PROBE: usize = 32;
/// Repetitions of every timed cell at least, and of fast cells at most.
const MIN_REPS: usize = 3;
const MAX_REPS: usize = 10;
/// Fast cells repeat until about this many seconds (within [`MIN_REPS`, `MAX_REPS`]).
const CELL_SECONDS: f64 = 2.0;

/// High-dimensional reductions: the direct path, the block path, the automatic choice, dense
/// Candle and the bare matrix product, side by side.
///
/// For each D: the Gaussian sum sum_j exp(-|x_i - y_j|^2 / (2 s^2)) b_j (2 s^2 = D / 6) and
/// ArgKMin(10) of |x_i - y_j|^2, of M and N points uniform in [0, 1)^D, by `reduce_with` on
/// the direct path, the block path (and TF32 blocks on CUDA) and the automatic choice, by dense
/// Candle in chunks, and the bare product X Y^T of the same chunks; with the block results'
/// errors against the direct path. Each cell is estimated on 1/32 of the rows first and skipped
/// above --max-seconds; the times are medians of 3 to 10 repetitions. Prints a markdown table.
#[derive(Parser, Debug)]
#[command(name = "bench_highd")]
struct Cli {
    /// A smaller run: M = N = 2000, D = 3,64,256, --max-seconds 10.
    #[arg(long)]
    quick: bool,
    /// Points x_i [default: 2e4 on the CPU, 1e5 on CUDA, 2000 with --quick].
    #[arg(long, value_name = "M", value_parser = sizes::count)]
    m: Option<usize>,
    /// Points y_j [default: 2e4 on the CPU, 1e5 on CUDA, 2000 with --quick].
    #[arg(long, value_name = "N", value_parser = sizes::count)]
    n: Option<usize>,
    /// The dimensions D [default: 3,16,64,256,1024; 3,64,256 with --quick].
    #[arg(long, value_name = "D,...", value_delimiter = ',', value_parser = sizes::count)]
    dims: Option<Vec<usize>>,
    /// The points' and weights' floating-point type.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: device::Dtype,
    /// Skip a cell whose estimate exceeds this many seconds [default: 120, 10 with --quick].
    #[arg(long, value_name = "S", value_parser = sizes::seconds)]
    max_seconds: Option<f64>,
    /// MiB of one chunk x N matrix of dense Candle and of the bare product [default: 256 on the
    /// CPU, 2048 on CUDA].
    #[arg(long, value_name = "MIB", value_parser = sizes::count)]
    chunk_mib: Option<usize>,
    /// Seed of the random points and weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    device: device::DeviceArg,
}

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq)]
struct Config {
    m: usize,
    n: usize,
    dims: Vec<usize>,
    dtype: DType,
    max_seconds: f64,
    /// Bytes of one `chunk x N` matrix of the dense implementation and of the bare product.
    chunk_bytes: usize,
    seed: u64,
}

impl Config {
    /// The configuration `cli` asks for, on a CUDA device or the CPU.
    fn new(cli: &Cli, cuda: bool) -> Config {
        let quick = cli.quick;
        let size = if quick {
            2_000
        } else if cuda {
            100_000
        } else {
            20_000
        };
        Config {
            m: cli.m.unwrap_or(size),
            n: cli.n.unwrap_or(size),
            dims: cli.dims.clone().unwrap_or_else(|| {
                if quick {
                    vec![3, 64, 256]
                } else {
                    vec![3, 16, 64, 256, 1024]
                }
            }),
            dtype: cli.dtype.dtype(),
            max_seconds: cli.max_seconds.unwrap_or(if quick { 10.0 } else { 120.0 }),
            chunk_bytes: match cli.chunk_mib {
                Some(mib) => mib << 20,
                None if cuda => 2 << 30,
                None => 256 << 20,
            },
            seed: cli.seed,
        }
    }

    /// Rows of one chunk of the dense implementation and of the bare product.
    fn chunk_rows(&self) -> usize {
        (self.chunk_bytes / (self.n * self.dtype.size_in_bytes())).clamp(1, self.m)
    }
}

/// Small deterministic generator (xorshift64*), uniform in [0, 1).
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

/// The inputs at one D: points x (M, D), y (N, D), weights b (N, 1), the Gaussian's `1 / (2
/// s^2)`, and the rows of the dense chunks.
#[derive(Clone)]
struct Problem {
    x: Tensor,
    y: Tensor,
    b: Tensor,
    gamma: f64,
    chunk: usize,
}

impl Problem {
    fn new(cfg: &Config, d: usize, dev: &Device) -> Res<Problem> {
        let state = 0x9E37_79B9_7F4A_7C15 ^ (d as u64) << 48 ^ cfg.m as u64;
        let mut r = XorShift((state ^ cfg.seed.wrapping_mul(0xD1B5_4A32_D192_ED03)).max(1));
        Ok(Problem {
            x: r.tensor(cfg.m, d, cfg.dtype, dev)?,
            y: r.tensor(cfg.n, d, cfg.dtype, dev)?,
            b: r.tensor(cfg.n, 1, cfg.dtype, dev)?,
            gamma: 6.0 / d as f64,
            chunk: cfg.chunk_rows(),
        })
    }

    fn rows(&self) -> usize {
        self.x.dims()[0]
    }

    /// The same problem on the first `rows` points x.
    fn first_rows(&self, rows: usize) -> Res<Problem> {
        Ok(Problem {
            x: self.x.narrow(0, 0, rows.min(self.rows()))?,
            ..self.clone()
        })
    }
}

/// The two reductions of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Task {
    /// The Gaussian sum.
    Sum,
    /// ArgKMin(10) of the squared distances.
    Knn,
}

impl Task {
    fn name(self) -> &'static str {
        match self {
            Task::Sum => "Gaussian sum",
            Task::Knn => "ArgKMin(10)",
        }
    }

    fn kind(self) -> ReductionKind {
        match self {
            Task::Sum => ReductionKind::Sum,
            Task::Knn => ReductionKind::ArgKMin(K),
        }
    }

    /// The lazy formula of the task on `p`.
    fn formula(self, p: &Problem) -> Res<LazyTensor> {
        let d = LazyTensor::vi(&p.x)?.sqdist(&LazyTensor::vj(&p.y)?);
        Ok(match self {
            Task::Sum => (-d * p.gamma).exp() * LazyTensor::vj(&p.b)?,
            Task::Knn => d,
        })
    }
}

/// One implementation, a column of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    /// `reduce_with` with this path and precision.
    Lazy(Path, Precision),
    /// Chunked dense Candle.
    Dense,
    /// The bare product `X Y^T`, chunked like [`Method::Dense`].
    Matmul,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Lazy(Path::Direct, _) => "direct",
            Method::Lazy(Path::Blocks, Precision::Tf32) => "blocks TF32",
            Method::Lazy(Path::Blocks, _) => "blocks",
            Method::Lazy(_, _) => "auto",
            Method::Dense => "dense Candle",
            Method::Matmul => "matmul X Y^T",
        }
    }
}

/// What a run returns: the sum's values or the k nearest indices as `f64`/`i64` rows on the
/// host, or nothing (the bare product).
#[derive(Clone, Debug, PartialEq)]
enum Output {
    Values(Vec<f64>),
    Indices(Vec<Vec<i64>>),
    Nothing,
}

/// The chunks of rows of `p.x`.
fn chunks(p: &Problem) -> impl Iterator<Item = (usize, usize)> + use<> {
    let (m, c) = (p.rows(), p.chunk);
    (0..m).step_by(c).map(move |r| (r, c.min(m - r)))
}

/// `|x_c|^2 + |y|^2 - 2 X_c Y^T`, clamped at 0, for one chunk `x_c` (`yn` the row of `|y|^2`).
fn dense_sqdist(x_c: &Tensor, y: &Tensor, yn: &Tensor) -> Res<Tensor> {
    let xn = x_c.sqr()?.sum_keepdim(1)?;
    let s = linalg::matmul(x_c, &y.t()?)?;
    Ok((xn.broadcast_add(yn)? - (s * 2.0)?)?.relu()?)
}

/// Runs `method` on `task` over `p`; returns when the result exists (on the host for the
/// reductions, after a device synchronisation for the bare product).
fn run(task: Task, method: Method, p: &Problem) -> Res<Output> {
    let out = match method {
        Method::Lazy(path, precision) => {
            let opts = ReductionOptions {
                path,
                precision,
                ..Default::default()
            };
            let r = task.formula(p)?.reduce_with(task.kind(), Axis::J, &opts)?;
            match task {
                Task::Sum => r.values.ok_or("the sum returned no values")?,
                Task::Knn => r.indices.ok_or("ArgKMin returned no indices")?,
            }
        }
        Method::Dense => {
            let yn = p.y.sqr()?.sum_keepdim(1)?.t()?;
            let mut parts = Vec::new();
            for (r, c) in chunks(p) {
                let d = dense_sqdist(&p.x.narrow(0, r, c)?, &p.y, &yn)?;
                parts.push(match task {
                    Task::Sum => linalg::matmul(&(d * -p.gamma)?.exp()?, &p.b)?,
                    Task::Knn => d.arg_sort_last_dim(true)?.narrow(1, 0, K)?,
                });
            }
            Tensor::cat(&parts, 0)?
        }
        Method::Matmul => {
            let yt = p.y.t()?;
            for (r, c) in chunks(p) {
                black_box(linalg::matmul(&p.x.narrow(0, r, c)?, &yt)?);
            }
            p.x.device().synchronize()?;
            return Ok(Output::Nothing);
        }
    };
    Ok(match task {
        Task::Sum => Output::Values(out.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?),
        Task::Knn => Output::Indices(out.to_dtype(DType::I64)?.to_vec2::<i64>()?),
    })
}

/// Seconds of one run and its output.
fn timed(task: Task, method: Method, p: &Problem) -> Res<(f64, Output)> {
    let t0 = Instant::now();
    let out = run(task, method, p)?;
    Ok((t0.elapsed().as_secs_f64(), out))
}

/// How `a` differs from the reference `r` on the reference's rows: the largest relative
/// difference of values, or the share of rows whose index sets differ. `None` when the kinds
/// differ.
fn difference(a: &Output, r: &Output) -> Option<f64> {
    match (a, r) {
        (Output::Values(a), Output::Values(r)) => Some(
            a.iter()
                .zip(r)
                .map(|(a, r)| (a - r).abs() / r.abs().max(f64::MIN_POSITIVE))
                .fold(0.0, f64::max),
        ),
        (Output::Indices(a), Output::Indices(r)) => {
            let set = |v: &[i64]| {
                let mut s = v.to_vec();
                s.sort_unstable();
                s
            };
            let differ = a.iter().zip(r).filter(|(a, r)| set(a) != set(r)).count();
            Some(differ as f64 / r.len().max(1) as f64)
        }
        _ => None,
    }
}

/// A cell of the table: its state after the estimate and the untimed run.
#[derive(Clone, Debug)]
enum Cell {
    /// Not run: why.
    Skipped(String),
    /// Failed: the error's first line.
    Failed(String),
    /// Run: the untimed run's output, the number of repetitions wanted and the times.
    Ran {
        output: Output,
        reps: usize,
        times: Vec<f64>,
    },
}

impl Cell {
    fn median(&self) -> Option<f64> {
        match self {
            Cell::Ran { times, .. } if !times.is_empty() => {
                let mut t = times.clone();
                t.sort_by(f64::total_cmp);
                Some(t[t.len() / 2])
            }
            _ => None,
        }
    }

    fn output(&self) -> Option<&Output> {
        match self {
            Cell::Ran { output, .. } => Some(output),
            _ => None,
        }
    }
}

/// The first line of an error.
fn first_line(e: &dyn Error) -> String {
    e.to_string().lines().next().unwrap_or("error").to_string()
}

fn fmt_s(s: f64) -> String {
    if s < 0.1 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{s:.3} s")
    }
}

/// The results at one D.
struct DimResult {
    d: usize,
    /// `(task, method, cell)` for every cell, the bare product under [`Task::Sum`].
    cells: Vec<(Task, Method, Cell)>,
    /// The path `explain` reports for each task, and why.
    auto: Vec<(Task, String, String)>,
    /// Rows of the accuracy reference when the direct path's full run was skipped.
    reference_rows: Option<usize>,
    /// Per task: the accuracy reference (the direct path's output, maybe on fewer rows).
    reference: Vec<(Task, Option<Output>)>,
}

impl DimResult {
    fn cell(&self, task: Task, method: Method) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|(t, m, _)| *t == task && *m == method)
            .map(|(_, _, c)| c)
    }

    /// How the output of `method` differs from the reference, on the reference's rows.
    fn error(&self, task: Task, method: Method) -> Option<f64> {
        let reference = self
            .reference
            .iter()
            .find(|(t, _)| *t == task)?
            .1
            .as_ref()?;
        let out = self.cell(task, method)?.output()?;
        let rows = match reference {
            Output::Values(v) => v.len(),
            Output::Indices(v) => v.len(),
            Output::Nothing => return None,
        };
        let head = match out {
            Output::Values(v) => Output::Values(v[..rows.min(v.len())].to_vec()),
            Output::Indices(v) => Output::Indices(v[..rows.min(v.len())].to_vec()),
            Output::Nothing => return None,
        };
        difference(&head, reference)
    }
}

/// The columns of the table on `dev`.
fn methods(dev: &Device) -> Vec<Method> {
    let mut m = vec![
        Method::Lazy(Path::Direct, Precision::Full),
        Method::Lazy(Path::Blocks, Precision::Full),
    ];
    if dev.is_cuda() {
        m.push(Method::Lazy(Path::Blocks, Precision::Tf32));
    }
    m.extend([Method::Lazy(Path::Auto, Precision::Full), Method::Dense]);
    m
}

/// Estimate, untimed run and timed repetitions of every cell at one D.
fn bench_dim(
    cfg: &Config,
    d: usize,
    dev: &Device,
    log: bool,
    bar: &indicatif::ProgressBar,
) -> Res<DimResult> {
    let p = Problem::new(cfg, d, dev)?;
    let probe_rows = (cfg.m / PROBE).max(cfg.m.min(64));
    let probe = p.first_rows(probe_rows)?;
    let scale = cfg.m as f64 / probe_rows as f64;
    let mut cells: Vec<(Task, Method, Cell)> = Vec::new();
    let mut jobs: Vec<(Task, Method)> = [Task::Sum, Task::Knn]
        .iter()
        .flat_map(|&t| methods(dev).into_iter().map(move |m| (t, m)))
        .collect();
    jobs.push((Task::Sum, Method::Matmul));
    let mut direct_estimate = Vec::new();
    for (task, method) in jobs {
        let mut seen = String::new();
        bar.set_message(format!("D = {d}, {}, {}", task.name(), method.name()));
        let cell = match timed(task, method, &probe) {
            Err(e) => Cell::Failed(first_line(&*e)),
            Ok((t, _)) => {
                let estimate = t * scale;
                if method == Method::Lazy(Path::Direct, Precision::Full) {
                    direct_estimate.push((task, estimate));
                }
                if estimate > cfg.max_seconds {
                    Cell::Skipped(format!(
                        "estimated {} > --max-seconds {}",
                        fmt_s(estimate),
                        cfg.max_seconds
                    ))
                } else {
                    match timed(task, method, &p) {
                        Err(e) => Cell::Failed(first_line(&*e)),
                        Ok((t, output)) => {
                            seen =
                                format!("estimate {}, untimed run {}", fmt_s(estimate), fmt_s(t));
                            Cell::Ran {
                                output,
                                reps: ((CELL_SECONDS / t) as usize).clamp(MIN_REPS, MAX_REPS),
                                times: Vec::new(),
                            }
                        }
                    }
                }
            }
        };
        if log {
            let state = match &cell {
                Cell::Ran { .. } => seen,
                Cell::Skipped(why) => format!("skipped: {why}"),
                Cell::Failed(why) => format!("error: {why}"),
            };
            bar.suspend(|| eprintln!("D = {d}, {}, {}: {state}", task.name(), method.name()));
        }
        cells.push((task, method, cell));
    }
    // Timed repetitions, the cells one after the other within each.
    bar.set_message(format!("D = {d}, timed repetitions"));
    let most = cells
        .iter()
        .map(|(_, _, c)| match c {
            Cell::Ran { reps, .. } => *reps,
            _ => 0,
        })
        .max()
        .unwrap_or(0);
    for rep in 0..most {
        for (task, method, cell) in cells.iter_mut() {
            if let Cell::Ran { reps, times, .. } = cell
                && rep < *reps
            {
                match timed(*task, *method, &p) {
                    Ok((t, out)) => {
                        black_box(out);
                        times.push(t);
                    }
                    Err(e) => *cell = Cell::Failed(first_line(&*e)),
                }
            }
        }
    }
    // The accuracy reference: the direct path's output, or its run on the first rows that fit
    // a quarter of the time limit.
    let direct = Method::Lazy(Path::Direct, Precision::Full);
    let mut reference = Vec::new();
    let mut reference_rows = None;
    for task in [Task::Sum, Task::Knn] {
        let full = cells
            .iter()
            .find(|(t, m, _)| *t == task && *m == direct)
            .and_then(|(_, _, c)| c.output().cloned());
        let out = match (full, direct_estimate.iter().find(|(t, _)| *t == task)) {
            (Some(out), _) => Some(out),
            (None, Some(&(_, estimate))) => {
                let share = (0.25 * cfg.max_seconds / estimate).min(1.0);
                let rows = ((cfg.m as f64 * share) as usize).max(probe_rows.min(cfg.m));
                reference_rows = Some(rows);
                run(task, direct, &p.first_rows(rows)?).ok()
            }
            (None, None) => None,
        };
        reference.push((task, out));
    }
    let mut auto = Vec::new();
    for task in [Task::Sum, Task::Knn] {
        let r = task
            .formula(&p)?
            .explain(task.kind(), Axis::J, &Default::default())?;
        let path = match r.path {
            Path::Blocks => "blocks",
            _ => "direct",
        };
        auto.push((task, path.to_string(), r.reason));
    }
    Ok(DimResult {
        d,
        cells,
        auto,
        reference_rows,
        reference,
    })
}

/// The text of a time cell.
fn time_cell(c: Option<&Cell>) -> String {
    match c {
        None => "-".into(),
        Some(Cell::Skipped(_)) => "skipped".into(),
        Some(Cell::Failed(_)) => "error".into(),
        Some(c) => c.median().map_or("-".into(), fmt_s),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    }
}

fn error_cell(task: Task, e: Option<f64>) -> String {
    match (task, e) {
        (_, None) => "-".into(),
        (Task::Sum, Some(e)) => format!("{e:.1e}"),
        (Task::Knn, Some(e)) => format!("{:.2}%", 100.0 * e),
    }
}

/// The table of `results` and the notes below it, as markdown.
fn table(results: &[DimResult], dev: &Device) -> String {
    let ms = methods(dev);
    let mut s = String::new();
    let mut head = "| reduction | D |".to_string();
    for m in &ms {
        head += &format!(" {} |", m.name());
    }
    head += " matmul X Y^T | auto / matmul | direct / auto |";
    let accurate: Vec<Method> = ms
        .iter()
        .copied()
        .filter(|m| *m != Method::Lazy(Path::Direct, Precision::Full))
        .collect();
    for m in &accurate {
        head += &format!(" err {} |", m.name());
    }
    s += &head;
    s += "\n|";
    s += &"---|".repeat(head.matches('|').count() - 1);
    s += "\n";
    let mut notes = Vec::new();
    for task in [Task::Sum, Task::Knn] {
        for r in results {
            let auto_m = Method::Lazy(Path::Auto, Precision::Full);
            let direct_m = Method::Lazy(Path::Direct, Precision::Full);
            let t = |m| r.cell(task, m).and_then(Cell::median);
            let mut row = format!("| {} | {} |", task.name(), r.d);
            for &m in &ms {
                let mut cell = time_cell(r.cell(task, m));
                if m == auto_m
                    && let Some((_, path, _)) = r.auto.iter().find(|(t, _, _)| *t == task)
                {
                    cell += &format!(" ({path})");
                }
                row += &format!(" {cell} |");
            }
            let matmul = r.cell(Task::Sum, Method::Matmul);
            row += &format!(
                " {} | {} | {} |",
                time_cell(matmul),
                ratio(t(auto_m), matmul.and_then(Cell::median)),
                ratio(t(direct_m), t(auto_m)),
            );
            for &m in &accurate {
                row += &format!(" {} |", error_cell(task, r.error(task, m)));
            }
            s += &row;
            s += "\n";
            for &m in ms.iter().chain(&[Method::Matmul]) {
                let (who, why) = match r.cell(task, m) {
                    Some(Cell::Skipped(why)) => ("skipped", why),
                    Some(Cell::Failed(why)) => ("error", why),
                    _ => continue,
                };
                notes.push(format!(
                    "- {}, D = {}, {}: {who}: {why}",
                    task.name(),
                    r.d,
                    m.name()
                ));
            }
        }
    }
    s += "\n";
    for r in results {
        for (task, path, why) in &r.auto {
            notes.push(format!(
                "- auto, {}, D = {}: {path} path: {why}",
                task.name(),
                r.d
            ));
        }
        if let Some(rows) = r.reference_rows {
            notes.push(format!(
                "- D = {}: the direct path's full run was skipped; the errors compare the first \
                 {rows} rows with the direct path on those rows",
                r.d
            ));
        }
    }
    s += &notes.join("\n");
    s += "\n";
    s
}

/// Runs the whole benchmark: one [`DimResult`] per D of `cfg`.
/// With `log`, a line on stderr per cell and a progress bar over the dimensions.
fn bench(cfg: &Config, dev: &Device, log: bool) -> Res<Vec<DimResult>> {
    let bar = if log {
        report::progress(cfg.dims.len() as u64, "dimensions")
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut results = Vec::new();
    for &d in &cfg.dims {
        results.push(bench_dim(cfg, d, dev, log, &bar)?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(results)
}

fn main() -> Res<()> {
    let cli = Cli::parse();
    let dev = cli.device.open();
    let cfg = Config::new(&cli, dev.is_cuda());
    println!(
        "# lazy-kernels high-dimensional benchmark: `bench_highd {}`",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
    println!();
    println!("{}", report::machine_header());
    println!("- device: {}", device::describe(&dev));
    println!(
        "- M = {}, N = {}, {}, D = {:?}; Gaussian 2 s^2 = D / 6; points uniform in [0, 1)^D \
         (seed {})",
        report::fmt_n(cfg.m),
        report::fmt_n(cfg.n),
        cfg.dtype.as_str(),
        cfg.dims,
        cfg.seed
    );
    println!(
        "- dense Candle and matmul: chunks of {} rows ({} MiB per chunk x N matrix)",
        cfg.chunk_rows(),
        cfg.chunk_bytes >> 20
    );
    println!(
        "- times: median of {MIN_REPS}..{MAX_REPS} repetitions after an untimed run, cells \
         alternating within each repetition; skipped when the estimate (a run on 1/{PROBE} of \
         the rows) exceeds {} s",
        cfg.max_seconds
    );
    println!(
        "- err: sum: max |v_i - d_i| / |d_i| vs the direct path d; ArgKMin(10): share of rows \
         whose index set differs from the direct path's"
    );
    println!("- note: timings are noisy on shared machines (no core pinning or isolation).");
    println!();
    let results = bench(&cfg, &dev, true)?;
    print!("{}", table(&results, &dev));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The configuration of the command line `s` (without the program's name).
    fn parse(s: &str, cuda: bool) -> Result<Config, clap::Error> {
        let args = std::iter::once("bench_highd").chain(s.split_whitespace());
        Ok(Config::new(&Cli::try_parse_from(args)?, cuda))
    }

    #[test]
    fn flags_are_parsed_and_checked() {
        let c = parse("--m 2e4 --n 300 --dims 3,64 --dtype f64", false).unwrap();
        assert_eq!(
            (c.m, c.n, c.dims.clone(), c.dtype),
            (20_000, 300, vec![3, 64], DType::F64)
        );
        assert_eq!(parse("", true).unwrap().m, 100_000);
        assert_eq!(parse("", false).unwrap().m, 20_000);
        let c = parse("--quick --m 500 --max-seconds 3 --chunk-mib 64", false).unwrap();
        assert_eq!(
            (c.m, c.n, c.max_seconds, c.chunk_bytes),
            (500, 2000, 3.0, 64 << 20)
        );
        for bad in [
            "--m 0",
            "--m 1.5",
            "--dims 3,x",
            "--dtype f16",
            "--max-seconds -1",
            "--m",
            "--x 1",
        ] {
            let e = parse(bad, false).unwrap_err();
            // A usage error: clap prints it and exits with code 2.
            assert_eq!(e.exit_code(), 2, "{bad}: {e}");
        }
    }

    #[test]
    fn index_sets_and_relative_errors() {
        let a = Output::Indices(vec![vec![1, 2], vec![3, 4]]);
        let r = Output::Indices(vec![vec![2, 1], vec![3, 5]]);
        assert_eq!(difference(&a, &r), Some(0.5));
        let v = difference(
            &Output::Values(vec![1.0, 2.2]),
            &Output::Values(vec![1.0, 2.0]),
        );
        assert!((v.unwrap() - 0.1).abs() < 1e-12);
        assert_eq!(difference(&a, &Output::Values(vec![1.0])), None);
    }

    /// The whole benchmark at a small size: every cell runs, the block path agrees with the
    /// direct one, and the table has a row per reduction and D.
    #[test]
    fn small_run_agrees_with_the_direct_path() {
        let cfg = Config {
            m: 200,
            n: 300,
            dims: vec![3, 64],
            dtype: DType::F32,
            max_seconds: 60.0,
            chunk_bytes: 64 * 300 * 4,
            seed: 0,
        };
        let dev = Device::Cpu;
        let results = bench(&cfg, &dev, false).unwrap();
        let blocks = Method::Lazy(Path::Blocks, Precision::Full);
        for r in &results {
            for (task, method, cell) in &r.cells {
                if r.d == 3 && *method == blocks {
                    // Inner products of 3 components are not taken by matrix products.
                    assert!(matches!(cell, Cell::Failed(_)), "{cell:?}");
                    continue;
                }
                assert!(
                    matches!(cell, Cell::Ran { times, .. } if times.len() >= MIN_REPS),
                    "D = {}, {task:?}, {method:?}: {cell:?}",
                    r.d
                );
            }
            let checked = if r.d == 3 { &[][..] } else { &[blocks][..] };
            for &m in checked
                .iter()
                .chain(&[Method::Lazy(Path::Auto, Precision::Full), Method::Dense])
            {
                let e = r.error(Task::Sum, m).unwrap();
                assert!(e < 1e-4, "D = {}, {m:?}: {e}", r.d);
                let e = r.error(Task::Knn, m).unwrap();
                assert!(e <= 0.02, "D = {}, {m:?}: {e}", r.d);
            }
        }
        let auto = |d: usize, task| {
            let r = results.iter().find(|r| r.d == d).unwrap();
            r.auto
                .iter()
                .find(|(t, _, _)| *t == task)
                .unwrap()
                .1
                .clone()
        };
        assert_eq!(auto(3, Task::Sum), "direct");
        assert_eq!(auto(64, Task::Knn), "blocks");
        let text = table(&results, &dev);
        for row in ["| Gaussian sum | 3 |", "| ArgKMin(10) | 64 |"] {
            assert!(text.contains(row), "{row} in\n{text}");
        }
    }

    #[test]
    fn slow_cells_are_skipped_with_a_note() {
        let cfg = Config {
            m: 64,
            n: 64,
            dims: vec![16],
            dtype: DType::F32,
            max_seconds: 1e-12,
            chunk_bytes: 1 << 20,
            seed: 0,
        };
        let results = bench(&cfg, &Device::Cpu, false).unwrap();
        let text = table(&results, &Device::Cpu);
        assert!(text.contains("direct: skipped: estimated"), "{text}");
        assert!(text.contains("| skipped |"), "{text}");
    }
}
