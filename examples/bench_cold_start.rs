//! The cold start of an exact-GP training step: how many distinct CUDA kernels one step
//! (`gp.nll()` then `backward()`) needs, and what compiling them costs.
//!
//! ```text
//! cargo run --release --example bench_cold_start                    # the census, on the CPU
//! cargo run --release --features cuda --example bench_cold_start    # + NVRTC times, here
//! cargo run --release --features cuda --example bench_cold_start -- --device cuda
//! cargo run --release --example bench_cold_start -- --n 2000 --dtype f32 --list
//! ```
//!
//! (`--help` lists the options.)
//!
//! The step is that of `bench_gp`: `N` points uniform in the unit cube (`--seed`, default 0), a
//! Gaussian kernel with three lengthscales times an outputscale, a learned noise and mean,
//! default `GpSettings`.
//!
//! * On the CPU (default): one step runs with the kernel census on
//!   ([`lazy_kernels::backend::census`]), which records the CUDA module each reduction would
//!   compile (one more than on CUDA: the preconditioner's rows take another path on the CPU),
//!   and those that CUDA would compile ahead for backward passes ("ahead" in `--list`). With `--features cuda` every recorded source is then compiled here by NVRTC
//!   (no GPU needed) for `--arch` (default `compute_90`): one after the other, then on `k`
//!   threads for each `k` of `--threads` (default 2,4,8,16; wall time of the whole set, the
//!   kernels taken from a shared queue). This machine's cores set how far the concurrent
//!   figures can go.
//! * `--device cuda` (feature `cuda`): each dtype runs in a fresh child process (this program
//!   re-executed) with `LAZY_KERNELS_CACHE_DIR` pointing at a new, empty directory: the first
//!   step (cold: generate, NVRTC, load, run), then a warm step, and the census of the first
//!   step; then a second child on the now filled disk cache (first step of a new process).
//!
//! Options: `--n N` (default 10000), `--dtype f32|f64` (default both, f32 then f64), `--list`
//! (print every kernel of the census), `--out DIR` (write each kernel's source to
//! `DIR/<name>.cu`), `--threads 2,4,8`, `--arch compute_XY`, `--seed S`.

#[path = "device/mod.rs"]
mod device;
#[path = "gp_problem/mod.rs"]
mod gp_problem;
#[path = "report/mod.rs"]
mod report;
#[path = "sizes/mod.rs"]
mod sizes;

use std::error::Error;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device};
use clap::Parser;
use gp_problem::{Problem, build_gp};
use lazy_kernels::backend::census::{self, Census};
use lazy_kernels::gp::ExactGp;

type Res<T> = Result<T, Box<dyn Error>>;

/// One training step, ending with the gradients on the host: its seconds, the NLL and the
/// gradient's norm.
fn step(gp: &ExactGp) -> Res<(f64, f64, f64)> {
    let t = Instant::now();
    let (loss, report) = gp.nll()?;
    let grads = loss.backward()?;
    let mut norm = 0.0;
    for v in gp.vars() {
        if let Some(g) = grads.get(v.as_tensor()) {
            let g = g.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
            norm += g.iter().map(|x| x * x).sum::<f64>();
        }
    }
    Ok((t.elapsed().as_secs_f64(), report.nll, norm.sqrt()))
}

/// The cold start of an exact-GP training step: its CUDA kernels and what compiling them costs.
///
/// On the CPU (default): one step (`gp.nll()` then `backward()`, N points in the unit cube, a
/// Gaussian kernel with three lengthscales times an outputscale) runs with the kernel census
/// on, which records the CUDA module each reduction would compile; with `--features cuda`
/// every recorded source is then compiled here by NVRTC (no GPU needed), one after the other
/// and on k threads for each k of `--threads`. With `--device cuda`: per dtype, a fresh
/// process on an empty disk cache (first step cold, then warm), then one on the filled cache.
#[derive(Parser)]
#[command(name = "bench_cold_start")]
struct Cli {
    /// Points of the problem (`10000`, `1e4`).
    #[arg(long, value_name = "N", default_value = "1e4", value_parser = sizes::at_least(2))]
    n: usize,
    /// One dtype only [default: both, f32 then f64].
    #[arg(long, value_enum)]
    dtype: Option<device::Dtype>,
    /// Print every kernel of the census (and "ahead" for those CUDA compiles ahead for the
    /// backward passes).
    #[arg(long)]
    list: bool,
    /// Write each kernel's source to `DIR/<name>.cu` (CPU census only).
    #[arg(long, value_name = "DIR", alias = "dump")]
    out: Option<PathBuf>,
    /// Thread counts of the concurrent NVRTC compilations (`--features cuda`).
    #[arg(
        long,
        value_name = "K,...",
        value_delimiter = ',',
        default_value = "2,4,8,16",
        value_parser = sizes::count
    )]
    threads: Vec<usize>,
    /// The architecture NVRTC compiles for (`--features cuda`).
    #[arg(long, value_name = "compute_XY", default_value = "compute_90")]
    arch: String,
    /// Seed of the problem's points and noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Child mode (`--device cuda`): one dtype's first and warm steps in this process.
    #[arg(long, hide = true)]
    child: bool,
    #[command(flatten)]
    device: device::DeviceArg,
}

/// What the program does, from the command line (NVRTC and the device are for `--features
/// cuda` only).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct Args {
    n: usize,
    dtypes: Vec<DType>,
    list: bool,
    threads: Vec<usize>,
    arch: String,
    seed: u64,
    device: device::Choice,
    cuda: bool,
    child: bool,
    dump: Option<PathBuf>,
}

fn parse_args() -> Args {
    let cli = Cli::parse();
    // `--device` as every example takes it: cuda needs a build with the feature and a device.
    let cuda = matches!(cli.device.device, device::Choice::Cuda(_));
    if cuda {
        cli.device.open();
    }
    Args {
        n: cli.n,
        dtypes: match cli.dtype {
            Some(d) => vec![d.dtype()],
            None => vec![DType::F32, DType::F64],
        },
        list: cli.list,
        threads: cli.threads,
        arch: cli.arch,
        seed: cli.seed,
        device: cli.device.device,
        cuda,
        child: cli.child,
        dump: cli.out,
    }
}

fn name(d: DType) -> &'static str {
    if d == DType::F32 { "f32" } else { "f64" }
}

/// What distinguishes the kernels of a census: per reduction and variable layout, the counts.
fn summary(c: &Census) -> String {
    let mut groups: Vec<(String, usize, usize)> = Vec::new();
    for k in c.kernels.iter().filter(|k| k.dispatches > 0) {
        let vars: Vec<String> = k.vars.iter().map(|(c, d)| format!("{c:?}{d}")).collect();
        let shape = format!("{} [{}]", k.reduction, vars.join(" "));
        match groups.iter_mut().find(|g| g.0 == shape) {
            Some(g) => {
                g.1 += 1;
                g.2 += k.dispatches;
            }
            None => groups.push((shape, 1, k.dispatches)),
        }
    }
    let mut s = String::new();
    for (shape, kernels, calls) in groups {
        s.push_str(&format!(
            "    {kernels:>3} kernels, {calls:>5} calls: {shape}\n"
        ));
    }
    s
}

fn cpu_census(a: &Args) -> Res<()> {
    println!("{}\n", report::machine_header());
    println!(
        "# Kernels of one exact-GP step (N = {}, D = 3, Gaussian x scale, default GpSettings), \
         counted on the CPU",
        a.n
    );
    let mut sources: Vec<(DType, Census)> = Vec::new();
    let bar = report::progress(a.dtypes.len() as u64, "census steps");
    for &dtype in &a.dtypes {
        bar.set_message(format!("census step, {}", name(dtype)));
        let gp = build_gp(&Problem::seeded(a.n, a.seed), &Device::Cpu, dtype)?;
        census::start();
        let (secs, nll, grad) = step(&gp)?;
        let c = census::stop();
        bar.inc(1);
        bar.suspend(|| -> Res<()> {
            println!(
                "\n## {}: {} distinct kernels, {} reductions (the CPU step took {secs:.2} s; NLL \
                 {nll:.6}, gradient norm {grad:.6})",
                name(dtype),
                c.distinct(),
                c.dispatches
            );
            print!("{}", summary(&c));
            if a.list {
                println!("{c}");
            }
            if let Some(dir) = &a.dump {
                std::fs::create_dir_all(dir)?;
                for k in c.kernels.iter().filter(|k| k.dispatches > 0) {
                    std::fs::write(dir.join(format!("{}.cu", k.name)), &k.source)?;
                }
            }
            Ok(())
        })?;
        sources.push((dtype, c));
    }
    bar.finish_and_clear();
    nvrtc_times(a, &sources)
}

#[cfg(not(feature = "cuda"))]
fn nvrtc_times(_: &Args, _: &[(DType, Census)]) -> Res<()> {
    println!("\n(NVRTC times need `--features cuda`: NVRTC runs without a GPU.)");
    Ok(())
}

/// Compiles every recorded kernel with NVRTC, one after the other and on `k` threads.
#[cfg(feature = "cuda")]
fn nvrtc_times(a: &Args, sets: &[(DType, Census)]) -> Res<()> {
    use lazy_kernels::backend::cuda::{CudaKernel, compile_ptx};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "\n## NVRTC here ({}, {cores} cores), seconds to compile the kernels of one step",
        a.arch
    );
    let mut head =
        String::from("| dtype | kernels | sequential | per kernel (min / median / max) |");
    let mut rule = String::from("|---|---|---|---|");
    for t in &a.threads {
        head.push_str(&format!(" {t} threads |"));
        rule.push_str("---|");
    }
    println!("{head}\n{rule}");
    let bar = report::progress((sets.len() * (1 + a.threads.len())) as u64, "NVRTC");
    for (dtype, c) in sets {
        // The recorded sources, as modules (only the name and source matter to NVRTC).
        let kernels: Vec<CudaKernel> = c
            .kernels
            .iter()
            .filter(|k| k.dispatches > 0)
            .map(|k| CudaKernel {
                name: k.name.clone(),
                source: k.source.clone(),
                block: 0,
                shared: false,
                state_vals: 0,
                state_idx: 0,
                out_vals: 0,
                out_idx: 0,
                rows_per_thread: 1,
                values: false,
                blocks: false,
                ranged: false,
            })
            .collect();
        let t = Instant::now();
        let mut each = Vec::new();
        for k in &kernels {
            let t = Instant::now();
            compile_ptx(k, &a.arch)?;
            each.push(t.elapsed().as_secs_f64());
        }
        let seq = t.elapsed().as_secs_f64();
        bar.inc(1);
        each.sort_by(f64::total_cmp);
        let mut row = format!(
            "| {} | {} | {seq:.2} | {:.3} / {:.3} / {:.3} |",
            name(*dtype),
            kernels.len(),
            each.first().copied().unwrap_or(0.0),
            each.get(each.len() / 2).copied().unwrap_or(0.0),
            each.last().copied().unwrap_or(0.0)
        );
        for &threads in &a.threads {
            let next = AtomicUsize::new(0);
            let t = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..threads {
                    s.spawn(|| {
                        loop {
                            let i = next.fetch_add(1, Ordering::SeqCst);
                            let Some(k) = kernels.get(i) else { break };
                            compile_ptx(k, &a.arch).expect("compiled sequentially above");
                        }
                    });
                }
            });
            row.push_str(&format!(" {:.2} |", t.elapsed().as_secs_f64()));
            bar.inc(1);
        }
        bar.suspend(|| println!("{row}"));
    }
    bar.finish_and_clear();
    Ok(())
}

fn main() -> Res<()> {
    let a = parse_args();
    if a.child {
        return child(&a);
    }
    if a.cuda {
        return cuda_parent(&a);
    }
    cpu_census(&a)
}

#[cfg(not(feature = "cuda"))]
fn cuda_parent(_: &Args) -> Res<()> {
    unreachable!("--device cuda stops in parse_args without the `cuda` feature")
}

#[cfg(not(feature = "cuda"))]
fn child(_: &Args) -> Res<()> {
    Err("--device cuda needs a build with `--features cuda`".into())
}

/// Runs the children: per dtype, a cold process on an empty disk cache, then a process on
/// the cache the first one filled.
#[cfg(feature = "cuda")]
fn cuda_parent(a: &Args) -> Res<()> {
    use lazy_kernels::backend::cuda::cache::CACHE_DIR_VAR;
    use std::process::Stdio;
    let exe = std::env::current_exe()?;
    println!("{}\n", report::machine_header());
    println!(
        "# First exact-GP step on CUDA device {} (N = {}, fresh processes), background \
         compile threads: {}",
        match a.device {
            device::Choice::Cuda(n) => n,
            device::Choice::Cpu => 0,
        },
        a.n,
        lazy_kernels::backend::cuda::compile_threads()
    );
    let bar = report::progress(2 * a.dtypes.len() as u64, "child processes");
    for &dtype in &a.dtypes {
        let dir = std::env::temp_dir().join(format!(
            "lk-cold-{}-{}-{}",
            std::process::id(),
            name(dtype),
            Instant::now().elapsed().as_nanos()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        for run in ["empty disk cache", "filled disk cache"] {
            bar.set_message(format!("{} ({run})", name(dtype)));
            let mut cmd = std::process::Command::new(&exe);
            // The driver's own cache of compiled PTX is off too, so that the first step pays
            // what a user's very first one does (Candle's kernels JIT-compiled when the build
            // targets another architecture than the device's).
            cmd.env(CACHE_DIR_VAR, &dir)
                .env("CUDA_CACHE_DISABLE", "1")
                .args([
                    "--child",
                    "--n",
                    &a.n.to_string(),
                    "--dtype",
                    name(dtype),
                    "--seed",
                    &a.seed.to_string(),
                    "--device",
                    &a.device.spec(),
                ]);
            if a.list {
                cmd.arg("--list");
            }
            // The child's report comes back through a pipe, printed between the bar's redraws.
            let out = cmd.stderr(Stdio::inherit()).output()?;
            bar.suspend(|| {
                println!("\n## {} ({run})", name(dtype));
                print!("{}", String::from_utf8_lossy(&out.stdout));
            });
            bar.inc(1);
            if !out.status.success() {
                bar.abandon();
                return Err(
                    format!("the child ({}, {run}) failed: {}", name(dtype), out.status).into(),
                );
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    bar.finish_and_clear();
    Ok(())
}

/// In a fresh process: the first step with the census on, then a warm step.
#[cfg(feature = "cuda")]
fn child(a: &Args) -> Res<()> {
    let dev = device::open_or_exit(a.device);
    let dtype = a.dtypes[0];
    let t = Instant::now();
    let gp = build_gp(&Problem::seeded(a.n, a.seed), &dev, dtype)?;
    dev.synchronize()?;
    let setup = t.elapsed().as_secs_f64();
    census::start();
    let (first, nll, grad) = step(&gp)?;
    let c = census::stop();
    let (warm, _, _) = step(&gp)?;
    println!(
        "first step {first:.3} s, warm step {:.1} ms (setup {setup:.2} s); NLL {nll:.6}, \
         gradient norm {grad:.6}",
        warm * 1e3
    );
    println!("{}", c.to_string().lines().last().unwrap_or(""));
    print!("{}", summary(&c));
    if a.list {
        println!("{c}");
    }
    Ok(())
}
