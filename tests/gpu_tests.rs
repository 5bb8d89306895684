//! The GPU test suite (`harness = false`): every check runs a computation on CUDA device 0 and
//! the same computation on CPU tensors, and compares the two. Without a CUDA device (the
//! default build has no CUDA support, or the machine has no GPU) it prints one line saying that
//! it skipped and exits 0.
//!
//! ```text
//! cargo test --release --features cuda --test gpu_tests             # every check
//! cargo test --release --features cuda --test gpu_tests -- KMin     # names containing "KMin"
//! LK_GPU_TESTS_DEVICE=cpu cargo test --release --test gpu_tests     # dry run, CPU against CPU
//! ```
//!
//! Each check prints `ok` or `FAILED`, its name and the measured error; the program exits 1
//! if any failed. Values are compared relative to a scale per output (`sum_j |F|` for sums,
//! `max(1, |value|)` otherwise) with a tolerance per dtype; indices must be equal, except that
//! where they differ the two terms' exact values (recomputed on the CPU in f64) must be a
//! near tie. The data are random, so ties are rare.
//!
//! The checks of the rest of the public surface (preconditioned and plain solves and their
//! gradients, `solve_logdet`, `gp::ExactGp`, every `Kernel` family, `rows`, `diag`,
//! `to_dense`, `t`) live in `tests/gpu/surface.rs`; its header says how they compare. The
//! `threads/` checks (`tests/gpu/threads.rs`) run reductions, gradients and solves from eight
//! host threads at once and require results bit-identical to one thread.
//!
//! Dry run: `LK_GPU_TESTS_DEVICE=cpu` makes the CPU the device under test, so that every
//! check's logic (its runs, comparisons, residuals and device checks) runs on a machine
//! without a GPU, in the default build. The two sides then compute the same thing on the same
//! backend, so the errors printed are 0 except where a check compares against another dtype
//! or an independent computation; the checks that need two devices (bad input mixing CPU and
//! CUDA tensors) are reported as `skip`. `LK_GPU_TESTS_DEVICE=cuda` (or unset) is the real
//! run.

mod common;
#[path = "dist/mod.rs"]
mod dist;
#[path = "gpu/matrix.rs"]
mod matrix;
#[path = "gpu/multi.rs"]
mod multi;
#[path = "gpu/ranges.rs"]
mod ranges;
#[path = "gpu/surface.rs"]
mod surface;
#[path = "gpu/threads.rs"]
mod threads;

use std::cell::RefCell;
use std::collections::HashMap;
use std::error::Error;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use common::{Rng, flat, flat_i64};
use lazy_kernels::ReductionKind::{self, *};
use lazy_kernels::{
    Axis, Kernel, KernelOperator, LazyTensor, Path, Precision, ReductionOptions, SolveOptions,
};

type Res<T> = Result<T, Box<dyn Error>>;
/// The body of a check: what it measured, or why it failed.
type Body = dyn Fn(&Ctx) -> Res<String>;

/// A Gaussian kernel times a two-component j-variable, with a bandwidth parameter.
const GAUSS: &str = "Exp(-SqDist(x, y) / (2.0 * Square(s))) * b";
const SQDIST: &str = "SqDist(x, y)";
/// Most ops, three components (needs D = 3). Discontinuous ops only see exactly rounded
/// arguments (one subtraction or the inputs), so both devices take the same branches.
const MANY: &str = "Concat(Sin(3.0 * Elem(x, 0) - Elem(y, 1)) * Cos(Dot(x, y)) \
    + Sqrt(SqDist(x, y) + 0.5) * Log(2.0 + Elem(x, 2)) + Rsqrt(SqNorm2(y) + 0.5) \
    + Abs(Elem(x, 1) - Elem(y, 2)) + ReLU(Elem(x, 0) - Elem(y, 0)) \
    + Step(Elem(x, 1) - Elem(y, 1)) * Sign(Elem(x, 2) - Elem(y, 0)) \
    + Pow(Elem(x, 0) - Elem(y, 2), 3) + Powf(Abs(Elem(x, 1) - Elem(y, 1)) + 0.5, s) \
    + Min(Elem(x, 0), Elem(y, 0)) * Max(Elem(x, 2), Elem(y, 1)) \
    + Clamp(Elem(x, 0) * Elem(y, 2), -0.25, 0.25) \
    + IfElse(Elem(x, 2) - Elem(y, 2), Exp(Elem(y, 0)), Elem(x, 1)) \
    + Lt(Elem(x, 0), Elem(y, 1)) - Ge(Elem(x, 1), Elem(y, 0)), \
    MatVecMult(a, Extract(x - y, 1, 2)))";

const ALL_KINDS: [ReductionKind; 12] = [
    Sum,
    LogSumExp,
    SumSoftMaxWeight,
    Min,
    Max,
    ArgMin,
    ArgMax,
    MinArgMin,
    MaxArgMax,
    KMin(4),
    ArgKMin(4),
    KMinArgKMin(10),
];

/// Tolerance on values computed in `dtype` on both devices, relative to each output's scale.
fn tol(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => 1e-11,
        DType::F32 => 1e-4,
        _ => 2e-2,
    }
}

/// Relative gap below which two terms are a tie that rounding may order either way.
fn tie_tol(dtype: DType) -> f64 {
    if dtype == DType::F64 { 1e-12 } else { 1e-5 }
}

// ---------------------------------------------------------------------------------------------
// Runner
// ---------------------------------------------------------------------------------------------

/// What every check gets: the device and a cache of CPU problems by size.
struct Ctx {
    dev: Device,
    problems: RefCell<HashMap<(usize, usize, usize), Problem>>,
}

impl Ctx {
    fn problem(&self, m: usize, n: usize, d: usize) -> Res<Problem> {
        if let Some(p) = self.problems.borrow().get(&(m, n, d)) {
            return Ok(p.clone());
        }
        let p = Problem::new(m, n, d)?;
        self.problems.borrow_mut().insert((m, n, d), p.clone());
        Ok(p)
    }
}

/// A named check; `run` returns what it measured, or why it failed.
struct Check {
    name: String,
    run: Box<Body>,
}

fn check(name: impl Into<String>, run: impl Fn(&Ctx) -> Res<String> + 'static) -> Check {
    Check {
        name: name.into(),
        run: Box::new(run),
    }
}

/// The first line of an error (candle appends a backtrace on the next lines).
fn one_line(e: impl std::fmt::Display) -> String {
    e.to_string()
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string()
}

/// Whether the device under test is a CUDA device (false in a dry run, where it is the CPU).
static DEVICE_IS_CUDA: AtomicBool = AtomicBool::new(true);

/// The error of a check that does not apply to this run (it needs two distinct devices).
#[derive(Debug)]
struct Skipped(&'static str);

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl Error for Skipped {}

/// Skips a check that mixes the CPU and the device when the device is the CPU.
fn needs_two_devices() -> Res<()> {
    if DEVICE_IS_CUDA.load(Ordering::Relaxed) {
        Ok(())
    } else {
        Err(Skipped("needs a CUDA device besides the CPU (dry run)").into())
    }
}

fn main() -> ExitCode {
    // Names to select (like libtest's filters); flags that `cargo test` passes are ignored.
    let mut filters = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--test-threads" | "--skip" | "--format" | "--color" => {
                args.next();
            }
            s if s.starts_with('-') => {}
            _ => filters.push(a),
        }
    }
    let checks: Vec<Check> = all_checks()
        .into_iter()
        .filter(|c| filters.is_empty() || filters.iter().any(|f| c.name.contains(f.as_str())))
        .collect();
    let dry_run = match std::env::var("LK_GPU_TESTS_DEVICE").as_deref() {
        Ok("cpu") => true,
        Ok("cuda") | Ok("") | Err(_) => false,
        Ok(other) => {
            println!("gpu_tests: LK_GPU_TESTS_DEVICE={other:?}: expected \"cpu\" or \"cuda\"");
            return ExitCode::FAILURE;
        }
    };
    let dev = if dry_run {
        Device::Cpu
    } else {
        match Device::new_cuda(0) {
            Ok(dev) => dev,
            Err(e) => {
                println!(
                    "gpu_tests: SKIPPED all {} GPU tests: no CUDA device ({})",
                    checks.len(),
                    one_line(e)
                );
                return ExitCode::SUCCESS;
            }
        }
    };
    DEVICE_IS_CUDA.store(dev.is_cuda(), Ordering::Relaxed);
    if dry_run {
        println!(
            "gpu_tests: {} checks, DRY RUN (LK_GPU_TESTS_DEVICE=cpu): the CPU stands for the \
             device, CPU against CPU",
            checks.len()
        );
    } else {
        println!("gpu_tests: {} checks on {:?}", checks.len(), dev.location());
    }
    let ctx = Ctx {
        dev,
        problems: RefCell::new(HashMap::new()),
    };
    let start = Instant::now();
    let mut failed = Vec::new();
    let mut skipped = 0;
    for c in &checks {
        let t0 = Instant::now();
        let res = catch_unwind(AssertUnwindSafe(|| (c.run)(&ctx))).unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
            Err(format!("panicked: {}", msg.unwrap_or_default()).into())
        });
        let secs = t0.elapsed().as_secs_f64();
        match res {
            Ok(what) => println!("ok     {:<46} {what} [{secs:.2}s]", c.name),
            Err(e) if e.downcast_ref::<Skipped>().is_some() => {
                println!("skip   {:<46} {e}", c.name);
                skipped += 1;
            }
            Err(e) => {
                println!("FAILED {:<46} {} [{secs:.2}s]", c.name, one_line(e));
                failed.push(c.name.as_str());
            }
        }
    }
    println!(
        "gpu_tests: {} passed, {} failed, {skipped} skipped, {:.1} s",
        checks.len() - failed.len() - skipped,
        failed.len(),
        start.elapsed().as_secs_f64()
    );
    if failed.is_empty() {
        return ExitCode::SUCCESS;
    }
    println!("failed checks:");
    for name in failed {
        println!("    {name}");
    }
    ExitCode::FAILURE
}

// ---------------------------------------------------------------------------------------------
// The table of checks
// ---------------------------------------------------------------------------------------------

fn all_checks() -> Vec<Check> {
    use DType::{BF16, F16, F32, F64};
    let both = [F32, F64];
    let mut v = Vec::new();
    // Few rows with many terms (j split across blocks); over i: many rows of 7 terms (and
    // KMinArgKMin(10) pads 3 slots).
    let tall = (7, 200_000, 3);
    reductions(&mut v, &[GAUSS, SQDIST], &ALL_KINDS, &both, tall);
    let many_kinds = [
        Sum,
        LogSumExp,
        SumSoftMaxWeight,
        MinArgMin,
        MaxArgMax,
        KMinArgKMin(10),
    ];
    reductions(&mut v, &[MANY], &many_kinds, &both, tall);
    // Many rows.
    let square = (20_000, 20_000, 3);
    reductions(&mut v, &[GAUSS], &[Sum], &both, square);
    reductions(
        &mut v,
        &[SQDIST],
        &[LogSumExp, MinArgMin, KMinArgKMin(10)],
        &both,
        square,
    );
    reductions(&mut v, &[MANY], &[Sum], &both, (4_000, 20_000, 3));
    // Odd sizes: one pair, and sizes that are no multiple of a block or a tile.
    for size in [(1, 1, 3), (70, 13, 3), (37, 1100, 3)] {
        let kinds = [Sum, MinArgMin, KMinArgKMin(10)];
        reductions(&mut v, &[GAUSS, SQDIST], &kinds, &[F32], size);
    }
    // Dimensions, up to a large one.
    for size in [(1000, 3000, 1), (1000, 3000, 17), (500, 1500, 300)] {
        reductions(&mut v, &[GAUSS], &[Sum], &both, size);
        reductions(&mut v, &[SQDIST], &[KMinArgKMin(10)], &both, size);
    }
    // Half precisions (computed in f32, rounded once).
    reductions(&mut v, &[GAUSS], &[Sum], &[F16, BF16], (2000, 3000, 3));
    // NaN propagation: x row 3 and y row 5 hold a NaN.
    for kind in [Sum, Min, ArgMin, MaxArgMax, KMinArgKMin(3)] {
        for axis in [Axis::J, Axis::I] {
            v.push(reduction(SQDIST, kind, axis, F32, (50, 300, 3), true));
        }
    }
    // IEEE rules (src/reduction/mod.rs): rows with +inf, -inf, both, only -inf, only +inf.
    let ieee_kinds = [
        Sum,
        LogSumExp,
        SumSoftMaxWeight,
        MinArgMin,
        MaxArgMax,
        KMinArgKMin(3),
    ];
    for kind in ieee_kinds {
        for dtype in both {
            for axis in [Axis::J, Axis::I] {
                for inf_terms in [false, true] {
                    let name = format!(
                        "ieee{}/{kind:?}/{}/{}",
                        if inf_terms { "+inf" } else { "" },
                        axis_name(axis),
                        dt(dtype)
                    );
                    v.push(check(name, move |ctx| {
                        ieee(ctx, kind, axis, dtype, inf_terms)
                    }));
                }
            }
        }
    }
    for size in [tall, (3000, 5000, 3)] {
        for dtype in both {
            v.push(check(
                format!("grad/gauss/x,y,b,s/{}/{}", dt(dtype), sz(size)),
                move |ctx| gauss_grads(ctx, size, dtype),
            ));
        }
    }
    // The block path: one launch, few rows (chunks), and a budget of 1 MiB (row blocks of
    // term blocks); gradients at D = 64 take it too (matrix products C V).
    for (size, mib) in [
        ((3000, 5000, 64), 256),
        ((7, 200_000, 128), 256),
        ((3000, 5000, 64), 1),
    ] {
        for dtype in both {
            for axis in [Axis::J, Axis::I] {
                v.push(blocks(GAUSS, Sum, axis, dtype, size, mib << 20));
                for kind in [LogSumExp, MinArgMin, ArgKMin(4), KMinArgKMin(10)] {
                    v.push(blocks(SQDIST, kind, axis, dtype, size, mib << 20));
                }
            }
        }
    }
    for dtype in both {
        let size = (2000, 3000, 64);
        v.push(check(
            format!("blocks/grad/gauss/x,y,b,s/{}/{}", dt(dtype), sz(size)),
            move |ctx| gauss_grads(ctx, size, dtype),
        ));
    }
    v.push(check("blocks/tf32/gauss/j/f32/4000x6000xD256", |ctx| {
        blocks_tf32(ctx, (4000, 6000, 256))
    }));
    for dtype in both {
        v.push(check(
            format!("operator/gaussian/matmul,solve,grad/{}", dt(dtype)),
            move |ctx| operator(ctx, dtype),
        ));
    }
    // Block-sparse ranges: every kind, both axes, gradients.
    ranges::checks(&mut v);
    surface::checks(&mut v);
    // Eight host threads at once against one (issue 17, stress).
    threads::checks(&mut v);
    // A formula as a matrix (matmul, t, solve) and batch dimensions (issue 18).
    matrix::checks(&mut v);
    multi::checks(&mut v);
    bad_input(&mut v);
    v
}

fn dt(dtype: DType) -> &'static str {
    dtype.as_str()
}

fn sz((m, n, d): (usize, usize, usize)) -> String {
    format!("{m}x{n}xD{d}")
}

fn short(src: &str) -> &'static str {
    match src {
        GAUSS => "gauss",
        SQDIST => "sqdist",
        _ => "many",
    }
}

/// Every combination of formula, kind and dtype, over both axes.
fn reductions(
    v: &mut Vec<Check>,
    forms: &[&'static str],
    kinds: &[ReductionKind],
    dtypes: &[DType],
    size: (usize, usize, usize),
) {
    for &src in forms {
        for &kind in kinds {
            for &dtype in dtypes {
                for axis in [Axis::J, Axis::I] {
                    v.push(reduction(src, kind, axis, dtype, size, false));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Problems
// ---------------------------------------------------------------------------------------------

/// Inputs: x (M, D) and y (N, D) uniform in a cube scaled so that distances are of order 1
/// for every D, b (N, 2), the bandwidth s (1,), a 2 x 2 matrix a (4,); and block-sparse
/// ranges that every formula of the problem carries (`tests/gpu/ranges.rs`), or none.
#[derive(Clone)]
struct Problem {
    x: Tensor,
    y: Tensor,
    b: Tensor,
    s: Tensor,
    a: Tensor,
    ranges: Option<lazy_kernels::BlockSparse>,
}

impl Problem {
    fn new(m: usize, n: usize, d: usize) -> Res<Problem> {
        let mut r = Rng(0x5eed ^ ((m as u64) << 40) ^ ((n as u64) << 8) ^ d as u64);
        let h = (3.0 / d as f64).sqrt();
        Ok(Problem {
            x: r.tensor(&[m, d], -h, h),
            y: r.tensor(&[n, d], -h, h),
            b: r.tensor(&[n, 2], -1.0, 1.0),
            s: Tensor::new(&[0.5f64], &Device::Cpu)?,
            a: r.tensor(&[4], -1.0, 1.0),
            ranges: None,
        })
    }

    fn map(&self, f: impl Fn(&Tensor) -> candle_core::Result<Tensor>) -> Res<Problem> {
        Ok(Problem {
            x: f(&self.x)?,
            y: f(&self.y)?,
            b: f(&self.b)?,
            s: f(&self.s)?,
            a: f(&self.a)?,
            ranges: self.ranges.clone(),
        })
    }

    fn to(&self, dev: &Device, dtype: DType) -> Res<Problem> {
        self.map(|t| t.to_dtype(dtype)?.to_device(dev))
    }

    /// The same problem with a NaN in x row 3 and in y row 5.
    fn with_nan(&self) -> Res<Problem> {
        let poison = |t: &Tensor, row: usize| -> candle_core::Result<Tensor> {
            let mut v = t.to_vec2::<f64>()?;
            v[row][0] = f64::NAN;
            Tensor::from_vec(v.concat(), t.dims(), &Device::Cpu)
        };
        Ok(Problem {
            x: poison(&self.x, 3)?,
            y: poison(&self.y, 5)?,
            ..self.clone()
        })
    }

    /// The formula `src` over the names x, y, b (variables), s and a (parameters).
    fn lazy(&self, src: &str) -> Res<LazyTensor> {
        let (x, y, b) = (
            LazyTensor::vi(&self.x)?,
            LazyTensor::vj(&self.y)?,
            LazyTensor::vj(&self.b)?,
        );
        let (s, a) = (LazyTensor::param(&self.s)?, LazyTensor::param(&self.a)?);
        let names = [("x", &x), ("y", &y), ("b", &b), ("s", &s), ("a", &a)];
        let f = LazyTensor::parse(src, &names)?;
        Ok(match &self.ranges {
            Some(r) => f.with_ranges(r),
            None => f,
        })
    }

    /// `F(x_i, y_j)` in f64 on the CPU (from this problem's values, already rounded to its dtype).
    fn term(&self, src: &str, i: usize, j: usize) -> Res<Vec<f64>> {
        let one = Problem {
            x: self.x.narrow(0, i, 1)?,
            y: self.y.narrow(0, j, 1)?,
            b: self.b.narrow(0, j, 1)?,
            ranges: None,
            ..self.clone()
        };
        Ok(flat(
            &one.to(&Device::Cpu, DType::F64)?.lazy(src)?.sum(Axis::J)?,
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Comparisons
// ---------------------------------------------------------------------------------------------

/// `t` is on the device under test: the CUDA device, or the CPU in a dry run.
fn on_device(t: &Tensor, what: &str) -> Res<()> {
    let cuda = DEVICE_IS_CUDA.load(Ordering::Relaxed);
    if t.device().is_cuda() == cuda {
        Ok(())
    } else {
        Err(format!(
            "{what} is on {:?}, not on the device under test ({})",
            t.device().location(),
            if cuda { "CUDA" } else { "the CPU, dry run" }
        )
        .into())
    }
}

/// Same shape and dtype, and the result on the device under test.
fn same_kind(got: &Tensor, want: &Tensor, what: &str) -> Res<()> {
    on_device(got, what)?;
    if got.dims() != want.dims() || got.dtype() != want.dtype() {
        return Err(format!(
            "{what}: {:?} {:?} on the device but {:?} {:?} on the CPU",
            got.dims(),
            got.dtype(),
            want.dims(),
            want.dtype()
        )
        .into());
    }
    Ok(())
}

/// The largest `|got - want| / scale` (0 where both are equal, NaN, or the same infinity).
fn max_err(got: &[f64], want: &[f64], scale: &[f64]) -> f64 {
    got.iter()
        .zip(want)
        .zip(scale)
        .map(|((g, w), s)| {
            if g == w || (g.is_nan() && w.is_nan()) {
                0.0
            } else {
                let e = (g - w).abs() / s.max(1e-300);
                if e.is_nan() { f64::INFINITY } else { e }
            }
        })
        .fold(0.0, f64::max)
}

/// `max |got - want| / max |want|` of two tensors of the same shape, failing above `tol`.
fn rel_err(got: &Tensor, want: &Tensor, tol: f64, what: &str) -> Res<f64> {
    same_kind(got, want, what)?;
    let (g, w) = (flat(&got.to_device(&Device::Cpu)?), flat(want));
    let scale = w.iter().fold(1e-300, |m, v| v.abs().max(m));
    let err = max_err(&g, &w, &vec![scale; w.len()]);
    if err > tol {
        return Err(format!("{what}: error {err:.2e} > {tol:.0e}").into());
    }
    Ok(err)
}

fn axis_name(axis: Axis) -> &'static str {
    match axis {
        Axis::I => "I",
        Axis::J => "J",
    }
}

fn reduction(
    src: &'static str,
    kind: ReductionKind,
    axis: Axis,
    dtype: DType,
    size: (usize, usize, usize),
    nan: bool,
) -> Check {
    let name = format!(
        "{}{kind:?}/{}/{}/{}/{}",
        if nan { "nan/" } else { "" },
        short(src),
        axis_name(axis),
        dt(dtype),
        sz(size)
    );
    check(name, move |ctx| {
        let (m, n, d) = size;
        let mut p = ctx.problem(m, n, d)?;
        if nan {
            p = p.with_nan()?;
        }
        let opts = ReductionOptions::default();
        compare_reduction(&ctx.dev, &p, src, (kind, axis, &opts), dtype, nan)
    })
}

/// The block path (matrix products of inner products, `crate::op::gram`) on the device under
/// test against the CPU's block path, both forced with a memory budget of `block_bytes`: the
/// device's path must be the block path, and the outputs those of the CPU.
fn blocks(
    src: &'static str,
    kind: ReductionKind,
    axis: Axis,
    dtype: DType,
    size: (usize, usize, usize),
    block_bytes: usize,
) -> Check {
    let name = format!(
        "blocks/{kind:?}/{}/{}/{}/{}/{}MiB",
        short(src),
        axis_name(axis),
        dt(dtype),
        sz(size),
        block_bytes >> 20
    );
    check(name, move |ctx| {
        let (m, n, d) = size;
        let p = ctx.problem(m, n, d)?;
        let opts = ReductionOptions {
            path: Path::Blocks,
            block_bytes,
            ..Default::default()
        };
        let report = p
            .to(&ctx.dev, dtype)?
            .lazy(src)?
            .explain(kind, axis, &opts)?;
        if report.path != Path::Blocks {
            return Err(format!("the device takes the {report}").into());
        }
        compare_reduction(&ctx.dev, &p, src, (kind, axis, &opts), dtype, false)
    })
}

/// A Gaussian sum on TF32 tensor cores against the CPU in f32 (relative error of the
/// distances about 4e-4 at D = 256, so the tolerance is 1e-2).
fn blocks_tf32(ctx: &Ctx, (m, n, d): (usize, usize, usize)) -> Res<String> {
    let p = ctx.problem(m, n, d)?;
    let opts = ReductionOptions {
        path: Path::Blocks,
        precision: Precision::Tf32,
        ..Default::default()
    };
    let got = p.to(&ctx.dev, DType::F32)?.lazy(GAUSS)?;
    let got = got
        .reduce_with(Sum, Axis::J, &opts)?
        .values
        .ok_or("no values")?;
    let want = p.to(&Device::Cpu, DType::F32)?.lazy(GAUSS)?.sum(Axis::J)?;
    Ok(format!(
        "error {:.1e}",
        rel_err(&got, &want, 1e-2, "values")?
    ))
}

/// Runs one reduction on CUDA and on the CPU (same dtype) and compares values and indices.
fn compare_reduction(
    dev: &Device,
    p: &Problem,
    src: &str,
    (kind, axis, opts): (ReductionKind, Axis, &ReductionOptions),
    dtype: DType,
    nan: bool,
) -> Res<String> {
    let src = match kind {
        SumSoftMaxWeight => format!("Concat(-SqDist(x, y) * 2.0, {src})"),
        _ => src.to_string(),
    };
    let cpu = p.to(&Device::Cpu, dtype)?;
    let got = p
        .to(dev, dtype)?
        .lazy(&src)?
        .reduce_with(kind, axis, opts)?;
    let want = cpu.lazy(&src)?.reduce_with(kind, axis, opts)?;
    let mut report = Vec::new();
    match (&got.values, &want.values) {
        (Some(g), Some(w)) => {
            same_kind(g, w, "values")?;
            let (g, w) = (flat(&g.to_device(&Device::Cpu)?), flat(w));
            let scale = match kind {
                Sum => flat(&cpu.lazy(&format!("Abs({src})"))?.sum(axis)?),
                _ => w.iter().map(|v| v.abs().max(1.0)).collect(),
            };
            let err = max_err(&g, &w, &scale);
            if err > tol(dtype) {
                return Err(format!("values: error {err:.2e} > {:.0e}", tol(dtype)).into());
            }
            if nan && !g.iter().any(|v| v.is_nan()) {
                return Err("values: no NaN came through".into());
            }
            report.push(format!("values err {err:.1e}"));
        }
        (None, None) => {}
        _ => return Err("values present on one device only".into()),
    }
    match (&got.indices, &want.indices) {
        (Some(g), Some(w)) => {
            same_kind(g, w, "indices")?;
            let (g, w) = (flat_i64(&g.to_device(&Device::Cpu)?), flat_i64(w));
            let comps = cpu.lazy(&src)?.dim()?;
            let per_row = kind.k().unwrap_or(1) * comps;
            let terms = match axis {
                Axis::J => p.y.dim(0)?,
                Axis::I => p.x.dim(0)?,
            } as i64;
            let mut ties = 0;
            for (pos, (&gi, &wi)) in g.iter().zip(&w).enumerate().filter(|(_, (a, b))| a != b) {
                let (row, c) = (pos / per_row, pos % comps);
                let bad = || format!("row {row} slot {}: index {gi}, CPU {wi}", pos % per_row);
                if !(0..terms).contains(&gi) || wi < 0 || ties == 20 {
                    return Err(format!("indices: {} (near ties so far: {ties})", bad()).into());
                }
                let term = |k: i64| -> Res<f64> {
                    let (i, j) = match axis {
                        Axis::J => (row, k as usize),
                        Axis::I => (k as usize, row),
                    };
                    Ok(cpu.term(&src, i, j)?[c])
                };
                let (vg, vw) = (term(gi)?, term(wi)?);
                let gap = (vg - vw).abs();
                if gap.is_nan() || gap > tie_tol(dtype) * vw.abs().max(1.0) {
                    return Err(format!("indices: {}, F = {vg} vs {vw}", bad()).into());
                }
                ties += 1;
            }
            report.push(match ties {
                0 => "indices equal".to_string(),
                t => format!("indices equal but {t} near-tie swaps"),
            });
        }
        (None, None) => {}
        _ => return Err("indices present on one device only".into()),
    }
    Ok(report.join(", "))
}

/// `F = Log(ReLU(t - r))` for row scalars `r` and terms `t` (5000, crossing tiles and
/// blocks): rows whose terms are finite and `+inf` (r = -1, with `inf_terms`), `-inf` and
/// finite (0), `-inf` and `+inf` (-0.5, with `inf_terms`), only `-inf` (10, without
/// `inf_terms`), only `+inf` (r = -inf), then random rows. The device against the CPU (non-finite
/// values exactly, indices exactly), and the CPU's Sum, LogSumExp and SumSoftMaxWeight (with
/// `G = Exp(-t * t)`) against the IEEE rules of plain loops (`common::ieee_rule`).
fn ieee(ctx: &Ctx, kind: ReductionKind, axis: Axis, dtype: DType, inf_terms: bool) -> Res<String> {
    let mut rng = Rng(17);
    let inf = f64::INFINITY;
    let n = 5000;
    let terms: Vec<f64> = (0..n)
        .map(|j| match j {
            2 | 2502 if inf_terms => inf,
            _ if j % 50 == 0 => 0.0,
            _ if j % 50 == 1 => -0.5,
            _ => rng.uniform(0.5, 2.0),
        })
        .collect();
    let mut rows = vec![-1.0, -0.5, 0.0, 10.0, -inf];
    rows.extend((0..20).map(|_| rng.uniform(-2.0, 0.5)));
    let col = |v: &[f64]| -> Res<Tensor> {
        Ok(Tensor::from_vec(v.to_vec(), (v.len(), 1), &Device::Cpu)?.to_dtype(dtype)?)
    };
    let (r, t) = (col(&rows)?, col(&terms)?);
    let (x, y, f, g) = match axis {
        Axis::J => (&r, &t, "Log(ReLU(y - x))", "Exp(-y * y)"),
        Axis::I => (&t, &r, "Log(ReLU(x - y))", "Exp(-x * x)"),
    };
    let src = match kind {
        SumSoftMaxWeight => format!("Concat({f}, {g})"),
        _ => f.to_string(),
    };
    let run = |dev: &Device| -> Res<lazy_kernels::ReductionOutput> {
        let (x, y) = (
            LazyTensor::vi(&x.to_device(dev)?)?,
            LazyTensor::vj(&y.to_device(dev)?)?,
        );
        Ok(LazyTensor::parse(&src, &[("x", &x), ("y", &y)])?.reduce(kind, axis)?)
    };
    let (got, want) = (run(&ctx.dev)?, run(&Device::Cpu)?);
    // The terms' values, rows x terms, in f64 from the dtype's.
    let dense = t
        .t()?
        .broadcast_sub(&r)?
        .relu()?
        .log()?
        .to_dtype(DType::F64)?;
    let dense = dense.to_vec2::<f64>()?;
    let gv: Vec<f64> = flat(&t).iter().map(|t| (-t * t).exp()).collect();
    let mut report = Vec::new();
    if let (Some(gt), Some(wt)) = (&got.values, &want.values) {
        same_kind(gt, wt, "values")?;
        let (gvals, wvals) = (flat(&gt.to_device(&Device::Cpu)?), flat(wt));
        let scale: Vec<f64> = match kind {
            Sum => dense
                .iter()
                .map(|row| row.iter().map(|v| v.abs()).filter(|v| v.is_finite()).sum())
                .collect(),
            _ => wvals.iter().map(|v| v.abs().max(1.0)).collect(),
        };
        let stride = wvals.len() / rows.len();
        let err = max_err(&gvals, &wvals, &scale);
        if err > tol(dtype) {
            return Err(format!(
                "values: error {err:.2e} > {:.0e} against the CPU",
                tol(dtype)
            )
            .into());
        }
        report.push(format!("values err {err:.1e}"));
        let rule: Option<Vec<f64>> = dense
            .iter()
            .map(|row| common::ieee_rule(kind, row, &gv))
            .collect();
        if let Some(rule) = rule {
            let w1: Vec<f64> = wvals.iter().step_by(stride).cloned().collect();
            let rule_err = max_err(&w1, &rule, &scale);
            if rule_err > tol(dtype) {
                return Err(format!(
                    "CPU values: error {rule_err:.2e} against the IEEE rule: {:?} vs {:?}",
                    &w1[..5],
                    &rule[..5]
                )
                .into());
            }
            report.push(format!("rule err {rule_err:.1e}"));
        }
    }
    if let (Some(gi), Some(wi)) = (&got.indices, &want.indices) {
        if flat_i64(&gi.to_device(&Device::Cpu)?) != flat_i64(wi) {
            return Err("indices differ from the CPU's".into());
        }
        report.push("indices equal".into());
    }
    Ok(report.join(", "))
}

// ---------------------------------------------------------------------------------------------
// Gradients, operator and solve, bad input
// ---------------------------------------------------------------------------------------------

/// Gradients of `sum(out * w)`, `out` the Gaussian kernel sum over j, with respect to x, y, b
/// and the bandwidth s.
fn gauss_grads(ctx: &Ctx, (m, n, d): (usize, usize, usize), dtype: DType) -> Res<String> {
    gauss_grads_of(ctx, &ctx.problem(m, n, d)?, dtype, Axis::J)
}

/// [`gauss_grads`] of problem `p`, the sum over `axis`.
fn gauss_grads_of(ctx: &Ctx, p: &Problem, dtype: DType, axis: Axis) -> Res<String> {
    let rows = match axis {
        Axis::J => p.x.dim(0)?,
        Axis::I => p.y.dim(0)?,
    };
    let w = Rng(7).tensor(&[rows, 2], -1.0, 1.0);
    let grads = |dev: &Device| -> Res<Vec<Tensor>> {
        let q = p.to(dev, dtype)?;
        let vars = [&q.x, &q.y, &q.b, &q.s].map(Var::from_tensor);
        let vars = vars.into_iter().collect::<candle_core::Result<Vec<_>>>()?;
        let q = Problem {
            x: vars[0].as_tensor().clone(),
            y: vars[1].as_tensor().clone(),
            b: vars[2].as_tensor().clone(),
            s: vars[3].as_tensor().clone(),
            a: q.a,
            ranges: q.ranges,
        };
        let out = q.lazy(GAUSS)?.sum(axis)?;
        let g = (out * w.to_dtype(dtype)?.to_device(dev)?)?
            .sum_all()?
            .backward()?;
        let get = |v: &Var| g.get(v).cloned().ok_or("a gradient is missing");
        Ok(vars.iter().map(get).collect::<Result<_, _>>()?)
    };
    let (gpu, cpu) = (grads(&ctx.dev)?, grads(&Device::Cpu)?);
    let t = if dtype == DType::F64 { 1e-9 } else { 5e-4 };
    let mut errs = Vec::new();
    for ((g, c), name) in gpu.iter().zip(&cpu).zip(["x", "y", "b", "s"]) {
        errs.push(format!(
            "{name} {:.1e}",
            rel_err(g, c, t, &format!("d/d{name}"))?
        ));
    }
    Ok(format!("errors {}", errs.join(", ")))
}

/// The Euclidean norm of a tensor, in f64.
fn norm(t: &Tensor) -> Res<f64> {
    Ok(t.to_dtype(DType::F64)?
        .sqr()?
        .sum_all()?
        .sqrt()?
        .to_scalar::<f64>()?)
}

/// `K b`, the solve `(K + I) a = b` and `d sum(a) / d l` for a Gaussian kernel of lengthscale
/// `l` on 2000 points in 2D.
fn operator(ctx: &Ctx, dtype: DType) -> Res<String> {
    let mut r = Rng(11);
    let x = r.tensor(&[2000, 2], 0.0, 1.0);
    let b = (x.narrow(1, 0, 1)? * 6.0)?.sin()?;
    let l = Tensor::new(&[0.1f64], &Device::Cpu)?;
    let alpha = 1.0;
    let run = |dev: &Device| -> Res<(Tensor, Tensor, Tensor)> {
        let lv = Var::from_tensor(&l.to_dtype(dtype)?.to_device(dev)?)?;
        let (xd, bd) = (
            x.to_dtype(dtype)?.to_device(dev)?,
            b.to_dtype(dtype)?.to_device(dev)?,
        );
        let k = KernelOperator::new(Kernel::gaussian(lv.as_tensor()), &xd, &xd)?;
        let kb = k.matmul(&bd)?;
        let (a, info) = k.solve(&bd, alpha, &SolveOptions::default())?;
        if !info.all_converged() {
            return Err(format!("{:?}: solve did not converge: {info:?}", dev.location()).into());
        }
        let g = a.sum_all()?.backward()?;
        let dl = g
            .get(&lv)
            .cloned()
            .ok_or("no gradient for the lengthscale")?;
        Ok((kb, a, dl))
    };
    let ((kb_g, a_g, dl_g), (kb_c, a_c, dl_c)) = (run(&ctx.dev)?, run(&Device::Cpu)?);
    let kb_err = rel_err(&kb_g, &kb_c, tol(dtype), "K b")?;
    on_device(&a_g, "the solution")?;
    on_device(&dl_g, "d/dl")?;
    // True residuals of both solutions, with an f64 operator on the CPU.
    let k64 = KernelOperator::new(Kernel::gaussian(&l), &x, &x)?;
    let residual = |a: &Tensor| -> Res<f64> {
        let a = a.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
        Ok(norm(&((k64.matmul(&a)? + (&a * alpha)?)? - &b)?)? / norm(&b)?)
    };
    let (res_g, res_c) = (residual(&a_g)?, residual(&a_c)?);
    if res_g > (10.0 * res_c).max(1e-5) {
        return Err(format!("solve: residual {res_g:.1e}, CPU {res_c:.1e}").into());
    }
    let (a_tol, dl_tol) = if dtype == DType::F64 {
        (1e-3, 1e-3)
    } else {
        (1e-3, 1e-2)
    };
    let a_err = rel_err(&a_g, &a_c, a_tol, "solution")?;
    let dl_err = rel_err(&dl_g, &dl_c, dl_tol, "d/dl")?;
    Ok(format!(
        "K b err {kb_err:.1e}; residual {res_g:.1e} (CPU {res_c:.1e}), solution err {a_err:.1e}; \
         d/dl err {dl_err:.1e}"
    ))
}

/// Ok (with the message) if `r` is an error.
fn expect_err<T>(r: candle_core::Result<T>) -> Res<String> {
    match r {
        Ok(_) => Err("no error".into()),
        Err(e) => {
            let msg = one_line(e);
            Ok(format!(
                "error: {}",
                msg.chars().take(100).collect::<String>()
            ))
        }
    }
}

fn bad_input(v: &mut Vec<Check>) {
    v.push(check(
        "bad input/reduction: x on CPU, y on CUDA",
        move |ctx| {
            needs_two_devices()?;
            let p = ctx.problem(50, 300, 3)?;
            let (x, y) = (
                LazyTensor::vi(&p.x)?,
                LazyTensor::vj(&p.y.to_device(&ctx.dev)?)?,
            );
            expect_err(x.sqdist(&y).sum(Axis::J))
        },
    ));
    v.push(check(
        "bad input/reduction: f32 and f64 on CUDA",
        move |ctx| {
            let p = ctx.problem(50, 300, 3)?.to(&ctx.dev, DType::F64)?;
            let x = LazyTensor::vi(&p.x.to_dtype(DType::F32)?)?;
            expect_err(x.sqdist(&LazyTensor::vj(&p.y)?).min(Axis::I))
        },
    ));
    v.push(check(
        "bad input/operator: lengthscale on CPU",
        move |ctx| {
            needs_two_devices()?;
            let x = ctx.problem(50, 300, 3)?.x.to_device(&ctx.dev)?;
            let l = Tensor::new(&[0.5f64], &Device::Cpu)?;
            expect_err(KernelOperator::new(Kernel::gaussian(&l), &x, &x))
        },
    ));
    v.push(check(
        "bad input/operator: CUDA K times CPU b",
        move |ctx| {
            needs_two_devices()?;
            let p = ctx.problem(50, 300, 3)?;
            let l = Tensor::new(&[0.5f64], &ctx.dev)?;
            let x = p.x.to_device(&ctx.dev)?;
            let k = KernelOperator::new(Kernel::gaussian(&l), &x, &x)?;
            expect_err(k.matmul(&p.x.narrow(1, 0, 1)?))
        },
    ));
}
