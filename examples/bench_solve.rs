//! Benchmark of `KernelOperator::solve` on the two problems of the seed example (1D Gaussian
//! kernel, sigma 0.1; 2D Laplacian kernel, sigma 0.1), to relative residual 1e-6: time to
//! build the preconditioner, time to iterate, iterations, for f64 and f32, the seed's ridge
//! and 1e-2, with and without the pivoted-Cholesky preconditioner (automatic rank, at most
//! 400). Prints a Markdown table.
//!
//! ```text
//! cargo run --release --example bench_solve -- [--n 10000,100000] [--budget SECONDS] [--device D]
//! ```
//!
//! `--device cpu|cuda|cuda:N` (default `cpu`): where the data live and the solves run; each
//! time is read after the device has finished (on a GPU the first product also compiles the
//! kernel, so it is run once before the one that is timed).
//!
//! `--budget` caps the iterations of each cell at about that many seconds of products (one
//! product is timed first); a capped cell is reported as not converged, with its residual.
//! `--only WORDS` keeps the cells whose description contains every comma-separated word, out
//! of `1D`, `2D`, `F64`, `F32`, `seed`, `small` (alpha 1e-2), `none`, `pivoted`.

#[path = "device/mod.rs"]
mod device;
#[path = "seed/mod.rs"]
mod seed;

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use lazy_kernels::{Kernel, KernelOperator, Preconditioner, Rank, SolveOptions, Stop};
use rand::rngs::StdRng;
use rand::SeedableRng;

fn main() -> candle_core::Result<()> {
    let mut sizes = vec![10_000usize];
    let mut budget = 120.0f64;
    let mut only: Vec<String> = Vec::new();
    let (dev, args) = device::from_args();
    let mut args = args.into_iter();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--n" => {
                sizes = args
                    .next()
                    .expect("--n N1,N2")
                    .split(',')
                    .map(|s| s.parse().expect("a size"))
                    .collect()
            }
            "--budget" => budget = args.next().expect("--budget S").parse().expect("seconds"),
            "--only" => {
                only = args
                    .next()
                    .expect("--only WORDS")
                    .split(',')
                    .map(String::from)
                    .collect()
            }
            "--bench" => {} // passed by `cargo bench`
            other => panic!("unknown argument {other}"),
        }
    }
    let cpu = Device::Cpu;
    if !dev.is_cpu() {
        println!("Device: {}\n", device::describe(&dev));
    }
    println!(
        "| problem | N | dtype | alpha | preconditioner | rank | setup (s) | iterations (s) \
         | total (s) | iterations | products | residual | device reads |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for &n in &sizes {
        for problem in ["1D Gaussian", "2D Laplacian"] {
            let mut rng = StdRng::seed_from_u64(0);
            let (pts, bs, d, seed_alpha) = if problem.starts_with("1D") {
                let (x, b) = seed::data_1d(n, &mut rng);
                (x, b, 1, 1.0)
            } else {
                let (x, b) = seed::data_2d(n, &mut rng);
                (x, b, 2, 10.0)
            };
            for dtype in [DType::F64, DType::F32] {
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
                        println!(
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
                    }
                }
            }
        }
    }
    Ok(())
}
