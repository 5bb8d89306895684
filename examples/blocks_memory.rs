//! The block path's memory: the peak resident memory of a Gaussian kernel sum and of an
//! ArgKMin(10) on the block path, against the inputs' size, for point sets of `M` and `N`
//! points in `D` dimensions (f32, CPU). The extra memory is the centred copies of the points,
//! their norms, the output and the blocks in flight (`ReductionOptions::block_bytes` at most):
//! `O((M + N) D + budget)`, never `O(M N)`.
//!
//! ```text
//! cargo run --release --example blocks_memory -- [--sizes 1e5x1e5,1e6x1e4,1e4x1e6] [--dim 256]
//! ```
//!
//! Each size runs in a child process of its own (this binary with `--one MxN`), so that each
//! peak is its own. Linux only (the peak is `VmHWM` of `/proc/self/status`).

mod device;

use std::process::Command;
use std::time::Instant;

use candle_core::{Device, Tensor};
use lazy_kernels::{Axis, LazyTensor, Path, ReductionKind, ReductionOptions};

/// The peak resident memory of this process so far, in bytes (`None` off Linux).
fn peak_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn parse_size(s: &str) -> Result<usize, String> {
    let v: f64 = s.parse().map_err(|_| format!("not a number: {s}"))?;
    if !(v >= 1.0 && v.fract() == 0.0) {
        return Err(format!("not a positive integer: {s}"));
    }
    Ok(v as usize)
}

fn parse_pair(s: &str) -> Result<(usize, usize), String> {
    let (m, n) = s
        .split_once('x')
        .ok_or_else(|| format!("expected MxN, got {s}"))?;
    Ok((parse_size(m)?, parse_size(n)?))
}

const MIB: f64 = (1u64 << 20) as f64;

/// Runs both reductions at `m x n` in this process and prints one table row.
fn one(m: usize, n: usize, d: usize) -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::rand(0f32, 1., (m, d), &dev)?;
    let y = Tensor::rand(0f32, 1., (n, d), &dev)?;
    let b = Tensor::rand(0f32, 1., (n, 1), &dev)?;
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
    let (choice, args) = device::choice_from_args();
    if device::open_or_exit(choice).is_cuda() {
        device::fail(
            "blocks_memory measures the CPU's resident memory: run it with --device cpu",
            2,
        );
    }
    let mut sizes = vec![(100_000, 100_000), (1_000_000, 10_000), (10_000, 1_000_000)];
    let mut d = 256;
    let mut k = 0;
    while k < args.len() {
        let value = args
            .get(k + 1)
            .ok_or_else(|| format!("{} needs a value", args[k]))?;
        match args[k].as_str() {
            "--one" => {
                let (m, n) = parse_pair(value)?;
                let dim = args
                    .iter()
                    .position(|a| a == "--dim")
                    .and_then(|p| args.get(p + 1))
                    .map(|v| parse_size(v))
                    .transpose()?
                    .unwrap_or(d);
                one(m, n, dim)?;
                return Ok(());
            }
            "--sizes" => {
                sizes = value.split(',').map(parse_pair).collect::<Result<_, _>>()?;
            }
            "--dim" => d = parse_size(value)?,
            other => return Err(format!("unknown argument {other}").into()),
        }
        k += 2;
    }
    if peak_bytes().is_none() {
        return Err("the peak resident memory is read from /proc/self/status: Linux only".into());
    }
    println!(
        "Gaussian sum then ArgKMin(10), block path, f32, CPU ({} threads), block budget {} MiB",
        rayon::current_num_threads(),
        ReductionOptions::default().block_bytes >> 20
    );
    println!();
    println!("| M | N | D | inputs (MiB) | peak before (MiB) | peak after (MiB) | extra (MiB) | dense M x N f32 (MiB) | seconds |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let exe = std::env::current_exe()?;
    for (m, n) in sizes {
        let status = Command::new(&exe)
            .args(["--one", &format!("{m}x{n}"), "--dim", &d.to_string()])
            .status()?;
        if !status.success() {
            return Err(format!("the run at {m} x {n} failed").into());
        }
    }
    Ok(())
}
