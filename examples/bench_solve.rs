//! Benchmark of `KernelOperator::solve` on the two problems of the seed example (1D Gaussian
//! kernel, sigma 0.1; 2D Laplacian kernel, sigma 0.1), to relative residual 1e-6: time to
//! build the preconditioner, time to iterate, iterations, for f64 and f32, the seed's ridge
//! and 1e-2, with and without the pivoted-Cholesky preconditioner (automatic rank, at most
//! 400). Prints a Markdown table.
//!
//! ```text
//! cargo run --release --example bench_solve -- [--sizes 1e4,1e5] [--budget SECONDS] [--dtype f32|f64]
//!     [--only WORDS] [--seed S] [--device D]
//! ```
//!
//! (`--help` lists the options; `--n` is another spelling of `--sizes`.)
//!
//! `--device cpu|cuda|cuda:N` (default `cpu`): where the data live and the solves run; each
//! time is read after the device has finished (on a GPU the first product also compiles the
//! kernel, so it is run once before the one that is timed).
//!
//! `--budget` caps the iterations of each cell at about that many seconds of products (one
//! product is timed first); a capped cell is reported as not converged, with its residual.
//! `--only WORDS` keeps the cells whose description contains every comma-separated word, out
//! of `1D`, `2D`, `F64`, `F32`, `seed`, `small` (alpha 1e-2), `none`, `pivoted`; `--dtype`
//! keeps one of the two dtypes (both by default).

#[path = "device/mod.rs"]
mod device;
#[path = "report/mod.rs"]
mod report;
#[path = "seed/mod.rs"]
mod seed;
#[path = "sizes/mod.rs"]
mod sizes;

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use clap::Parser;
use lazy_kernels::{Kernel, KernelOperator, Preconditioner, Rank, SolveOptions, Stop};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// Benchmark of `KernelOperator::solve` on the seed example's problems, to residual 1e-6.
///
/// A 1D Gaussian and a 2D Laplacian kernel (sigma 0.1), for f64 and f32, the seed's ridge and
/// 1e-2, with and without the pivoted-Cholesky preconditioner (automatic rank, at most 400):
/// the time to build the preconditioner, the time to iterate, the iterations. Prints a
/// Markdown table.
#[derive(Parser)]
#[command(name = "bench_solve")]
struct Cli {
    /// The sizes N (`1e4,1e5`).
    #[arg(
        long,
        alias = "n",
        value_name = "N,...",
        value_delimiter = ',',
        default_value = "1e4",
        value_parser = sizes::at_least(2)
    )]
    sizes: Vec<usize>,
    /// Cap each cell's iterations at about this many seconds of products (a capped cell is
    /// reported as not converged, with its residual).
    #[arg(long, value_name = "SECONDS", default_value = "120", value_parser = sizes::seconds)]
    budget: f64,
    /// Keep the cells whose description contains every word: 1D, 2D, F64, F32, seed, small,
    /// none, pivoted.
    #[arg(long, value_name = "WORDS", value_delimiter = ',')]
    only: Vec<String>,
    /// One dtype only [default: both, f64 then f32].
    #[arg(long, value_enum)]
    dtype: Option<device::Dtype>,
    /// Seed of the random points and right-hand sides.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Ignored (what `cargo bench` passes).
    #[arg(long, hide = true)]
    bench: bool,
    #[command(flatten)]
    device: device::DeviceArg,
}

fn main() -> candle_core::Result<()> {
    let cli = Cli::parse();
    let (sizes, budget, only) = (cli.sizes, cli.budget, cli.only);
    let dtypes = match cli.dtype {
        Some(d) => vec![d.dtype()],
        None => vec![DType::F64, DType::F32],
    };
    let dev = cli.device.open();
    println!("{}\n", report::machine_header());
    let cpu = Device::Cpu;
    if !dev.is_cpu() {
        println!("Device: {}\n", device::describe(&dev));
    }
    println!(
        "| problem | N | dtype | alpha | preconditioner | rank | setup (s) | iterations (s) \
         | total (s) | iterations | products | residual | device reads |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let problems = ["1D Gaussian", "2D Laplacian"];
    let bar = report::progress(
        (sizes.len() * problems.len() * dtypes.len()) as u64,
        "problems",
    );
    for &n in &sizes {
        for problem in problems {
            let mut rng = StdRng::seed_from_u64(cli.seed);
            let (pts, bs, d, seed_alpha) = if problem.starts_with("1D") {
                let (x, b) = seed::data_1d(n, &mut rng);
                (x, b, 1, 1.0)
            } else {
                let (x, b) = seed::data_2d(n, &mut rng);
                (x, b, 2, 10.0)
            };
            for &dtype in &dtypes {
                bar.set_message(format!("{problem}, N = {n}, {dtype:?}"));
                let on_dev = |t: Tensor| t.to_dtype(dtype)?.to_device(&dev);
                let x = on_dev(Tensor::from_vec(pts.clone(), (n, d), &cpu)?)?;
                let b = on_dev(Tensor::from_vec(bs.clone(), (n, 1), &cpu)?)?;
                let sigma = on_dev(Tensor::new(&[0.1f64], &cpu)?)?;
                let kernel = if d == 1 {
                    Kernel::gaussian(&sigma)
                } else {
                    Kernel::laplacian(&sigma)
                };
                let k = KernelOperator::new(kernel, &x, &x)?;
                // One product, to turn the time budget into an iteration cap (after a first one
                // on a GPU, where the first call compiles the kernel).
                if !dev.is_cpu() {
                    k.matmul(&b)?;
                    device::sync(&dev)?;
                }
                let start = Instant::now();
                k.matmul(&b)?;
                let t_product = device::elapsed(&dev, start)?;
                let cap = ((budget / t_product) as usize).clamp(5, 5000);
                for alpha in [seed_alpha, 1e-2] {
                    for pre in [
                        Preconditioner::None,
                        Preconditioner::PivotedCholesky(Rank::Auto { max: 400 }),
                    ] {
                        let tags = format!(
                            "{problem} {dtype:?} {} {}",
                            if alpha == seed_alpha { "seed" } else { "small" },
                            if pre == Preconditioner::None {
                                "none"
                            } else {
                                "pivoted"
                            }
                        );
                        if !only.iter().all(|w| tags.contains(w.as_str())) {
                            continue;
                        }
                        let opts = SolveOptions {
                            tol: 1e-6,
                            max_iters: cap,
                            preconditioner: pre,
                            ..SolveOptions::default()
                        };
                        let start = Instant::now();
                        let (_, info) = k.solve(&b, alpha, &opts)?;
                        let total = device::elapsed(&dev, start)?;
                        let row = format!(
                            "| {problem} | {n} | {dtype:?} | {alpha} | {} | {} | {:.3} | {:.3} \
                             | {:.3} | {}{} | {} | {:.1e} | {} |",
                            if pre == Preconditioner::None {
                                "none"
                            } else {
                                "pivoted Cholesky"
                            },
                            info.preconditioner_rank,
                            info.setup_seconds,
                            info.solve_seconds,
                            total,
                            info.iterations,
                            match info.stops[0] {
                                Stop::Converged => String::new(),
                                Stop::MaxIters => format!(" (NOT converged: capped at {cap})"),
                                Stop::Stalled => " (NOT converged: stalled)".to_string(),
                                Stop::Breakdown => " (NOT converged: breakdown)".to_string(),
                            },
                            info.products,
                            info.max_residual(),
                            info.host_reads,
                        );
                        bar.suspend(|| println!("{row}"));
                    }
                }
                bar.inc(1);
            }
        }
    }
    bar.finish_and_clear();
    Ok(())
}
