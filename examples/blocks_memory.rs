//! The block path's memory: the peak resident memory of a Gaussian kernel sum and of an
//! ArgKMin(10) on the block path, against the inputs' size, for point sets of `M` and `N`
//! points in `D` dimensions (f32, CPU). The extra memory is the centred copies of the points,
//! their norms, the output and the blocks in flight (`ReductionOptions::block_bytes` at most):
//! `O((M + N) D + budget)`, never `O(M N)`.
//!
//! ```text
//! cargo run --release --example blocks_memory -- [--sizes 1e5x1e5,1e6x1e4,1e4x1e6] [--dim 256] [--seed S]
//! ```
//!
//! Each size runs in a child process of its own (this binary with a hidden `--one MxN`), so
//! that each peak is its own. Linux only (the peak is `VmHWM` of `/proc/self/status`).

#[path = "device/mod.rs"]
mod device;
#[path = "report/mod.rs"]
mod report;
#[path = "sizes/mod.rs"]
mod sizes;

use std::process::{Command, Stdio};
use std::time::Instant;

use candle_core::{Device, Tensor};
use clap::Parser;
use lazy_kernels::{Axis, LazyTensor, Path, ReductionKind, ReductionOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The block path's peak memory: a Gaussian sum and an ArgKMin(10) of M x N points (CPU).
///
/// For each size M x N, one child process (this program again) draws M and N points uniform
/// in [0, 1)^D and N weights (f32), then runs a Gaussian kernel sum and an ArgKMin(10) on the
/// block path, and prints the peak resident memory (VmHWM of /proc/self/status) before and
/// after, against the inputs' size and the size a dense M x N matrix would have. Linux only.
#[derive(Parser)]
#[command(name = "blocks_memory")]
struct Cli {
    /// The sizes, as MxN pairs (`1e5x1e5,1e6x1e4`), each in a child process of its own.
    #[arg(
        long,
        value_name = "MxN,...",
        value_delimiter = ',',
        default_value = "1e5x1e5,1e6x1e4,1e4x1e6",
        value_parser = sizes::pair
    )]
    sizes: Vec<(usize, usize)>,
    /// Dimension D of the points.
    #[arg(long, value_name = "D", default_value = "256", value_parser = sizes::count)]
    dim: usize,
    /// Seed of the random points and weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Child mode: runs the reductions at this one size in this process and prints its row.
    #[arg(long, value_name = "MxN", hide = true, value_parser = sizes::pair)]
    one: Option<(usize, usize)>,
    /// Must be `cpu` (the default): the program measures the CPU's resident memory.
    #[command(flatten)]
    device: device::DeviceArg,
}

/// The peak resident memory of this process so far, in bytes (`None` off Linux).
fn peak_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

const MIB: f64 = (1u64 << 20) as f64;

/// A `(rows, cols)` tensor of f32 uniform in [0, 1) on the CPU.
fn uniform(rng: &mut StdRng, rows: usize, cols: usize) -> candle_core::Result<Tensor> {
    let v: Vec<f32> = (0..rows * cols).map(|_| rng.random::<f32>()).collect();
    Tensor::from_vec(v, (rows, cols), &Device::Cpu)
}

/// Runs both reductions at `m x n` in this process and prints one table row.
fn one(m: usize, n: usize, d: usize, seed: u64) -> candle_core::Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let x = uniform(&mut rng, m, d)?;
    let y = uniform(&mut rng, n, d)?;
    let b = uniform(&mut rng, n, 1)?;
    let inputs = ((m + n) * d + n) * 4;
    let before = peak_bytes().unwrap_or(0);
    let options = ReductionOptions {
        path: Path::Blocks,
        ..Default::default()
    };
    let (xl, yl) = (LazyTensor::vi(&x)?, LazyTensor::vj(&y)?);
    let d2 = xl.sqdist(&yl);
    let start = Instant::now();
    let k = (-(&d2) * (1.0 / d as f64)).exp() * LazyTensor::vj(&b)?;
    let sum = k.reduce_with(ReductionKind::Sum, Axis::J, &options)?;
    let knn = d2.reduce_with(ReductionKind::ArgKMin(10), Axis::J, &options)?;
    let seconds = start.elapsed().as_secs_f64();
    assert_eq!(sum.values.map(|v| v.dims().to_vec()), Some(vec![m, 1]));
    assert_eq!(knn.indices.map(|v| v.dims().to_vec()), Some(vec![m, 10]));
    let peak = peak_bytes().unwrap_or(0);
    let dense = (m as f64) * (n as f64) * 4.0;
    println!(
        "| {m} | {n} | {d} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} |",
        inputs as f64 / MIB,
        before as f64 / MIB,
        peak as f64 / MIB,
        (peak.saturating_sub(before)) as f64 / MIB,
        dense / MIB,
        seconds
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    if cli.device.open().is_cuda() {
        device::fail(
            "blocks_memory measures the CPU's resident memory: run it with --device cpu",
            2,
        );
    }
    let d = cli.dim;
    if let Some((m, n)) = cli.one {
        one(m, n, d, cli.seed)?;
        return Ok(());
    }
    if peak_bytes().is_none() {
        return Err("the peak resident memory is read from /proc/self/status: Linux only".into());
    }
    println!("{}", report::machine_header());
    println!();
    println!(
        "Gaussian sum then ArgKMin(10), block path, f32, CPU ({} threads), block budget {} MiB",
        rayon::current_num_threads(),
        ReductionOptions::default().block_bytes >> 20
    );
    println!();
    println!(
        "| M | N | D | inputs (MiB) | peak before (MiB) | peak after (MiB) | extra (MiB) | dense M x N f32 (MiB) | seconds |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let exe = std::env::current_exe()?;
    let bar = report::progress(cli.sizes.len() as u64, "sizes");
    for &(m, n) in &cli.sizes {
        bar.set_message(format!("{m} x {n}"));
        // The child's row comes back through a pipe, to be printed between the bar's redraws.
        let out = Command::new(&exe)
            .args([
                "--one",
                &format!("{m}x{n}"),
                "--dim",
                &d.to_string(),
                "--seed",
                &cli.seed.to_string(),
            ])
            .stderr(Stdio::inherit())
            .output()?;
        bar.suspend(|| print!("{}", String::from_utf8_lossy(&out.stdout)));
        if !out.status.success() {
            bar.abandon();
            return Err(format!("the run at {m} x {n} failed").into());
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}
