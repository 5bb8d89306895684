//! Strong scaling of sharded kernel products and solves over MPI ranks: the same problem on one
//! rank and on all the ranks `mpirun` started, alternated, with the efficiency
//! `T_1 / (P T_P)` and the scaling model's prediction of `T_P` (README, "Beyond one device").
//!
//! ```text
//! cargo build --release --features mpi --example bench_distributed
//! RAYON_NUM_THREADS=1 mpirun -n 2 target/release/examples/bench_distributed [--n N]
//!     [--solve-n N] [--reps R] [--solve-reps R] [--dtype f32|f64] [--tol T]
//! ```
//!
//! One thread per rank (`RAYON_NUM_THREADS=1`): the one-rank time is rank 0 alone, the others
//! waiting in a collective on their own cores. The problem: `N` (default 10^5) uniform points
//! in `[0, 1]^3`, a Gaussian kernel of lengthscale 0.3, `K b` for one right-hand side; the
//! solve `(K + 0.01 I) a = y` of the same kernel on `--solve-n` points (default 10^5) with the
//! default pivoted-Cholesky preconditioner, to `--tol` (default 10^-3). A product's time is the
//! median of `--reps` (default 3) runs, a solve's of `--solve-reps` (default 1), one-rank and
//! all-rank runs alternating; a sharded time is the slowest rank's. The all-gather of `N`
//! values is timed alone (median of 20): the model predicts `T_P = T_1 / P + T_gather` for a
//! product and, for the solve, its one-rank setup (the preconditioner: its rows are split,
//! its factorisation is not) plus its one-rank iterations over `P` plus one `T_gather` per
//! product.

#[path = "comm/mod.rs"]
mod comm;
#[path = "device/mod.rs"]
mod device;
#[path = "report/mod.rs"]
mod report;
#[path = "sizes/mod.rs"]
mod sizes;

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use clap::Parser;
use lazy_kernels::dist::Comm;
use lazy_kernels::{Kernel, KernelOperator, SolveOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Strong scaling of sharded kernel products and solves: one rank against all of `mpirun`'s.
#[derive(Parser)]
#[command(name = "bench_distributed")]
struct Cli {
    /// Points of the kernel product.
    #[arg(long, value_name = "N", default_value = "1e5", value_parser = sizes::count)]
    n: usize,
    /// Points of the solve.
    #[arg(long, value_name = "N", default_value = "1e5", value_parser = sizes::count)]
    solve_n: usize,
    /// Runs per product measurement (the median is reported).
    #[arg(long, value_name = "R", default_value_t = 3)]
    reps: usize,
    /// Runs per solve measurement.
    #[arg(long, value_name = "R", default_value_t = 1)]
    solve_reps: usize,
    /// Floating-point type of the points.
    #[arg(long, value_enum, default_value_t = device::Dtype::F32)]
    dtype: device::Dtype,
    /// Relative residual the solves stop at.
    #[arg(long, default_value_t = 1e-3)]
    tol: f64,
    /// Which communicator (`auto`: MPI under `mpirun`).
    #[arg(long, value_enum, default_value_t = comm::CommArg::Auto)]
    comm: comm::CommArg,
    #[command(flatten)]
    device: device::DeviceArg,
}

fn main() {
    let cli = Cli::parse();
    let dev = cli.device.open();
    let comm = comm::open(cli.comm, &dev);
    if let Err(e) = run(&cli, &dev, &comm) {
        eprintln!(
            "bench_distributed: rank {}: {}",
            comm.rank(),
            device::one_line(&e)
        );
        std::process::exit(1);
    }
}

/// Every rank waits for all.
fn barrier(comm: &Comm) -> candle_core::Result<()> {
    comm.all_reduce_sum(&mut [0.0])
}

/// The slowest rank's time.
fn slowest(comm: &Comm, t: f64) -> candle_core::Result<f64> {
    Ok(comm.all_reduce_max_index(t, 0)?.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn operator(n: usize, dtype: DType, dev: &Device) -> candle_core::Result<(KernelOperator, Tensor)> {
    let mut rng = StdRng::seed_from_u64(n as u64);
    let x: Vec<f32> = (0..3 * n).map(|_| rng.random::<f32>()).collect();
    let b: Vec<f32> = (0..n).map(|_| rng.random::<f32>() - 0.5).collect();
    let x = Tensor::from_vec(x, (n, 3), &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(dev)?;
    let b = Tensor::from_vec(b, n, &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(dev)?;
    let l = Tensor::new(&[0.3f64], &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(dev)?;
    Ok((KernelOperator::new(Kernel::gaussian(&l), &x, &x)?, b))
}

/// `f` timed on one rank (rank 0 alone: the others wait) and on all, alternated `reps` times;
/// the medians and the last result of each.
fn alternate<T>(
    comm: &Comm,
    reps: usize,
    dev: &Device,
    mut f: impl FnMut(&Comm) -> candle_core::Result<T>,
) -> candle_core::Result<(f64, f64, Option<T>, T)> {
    let (mut one, mut all) = (Vec::new(), Vec::new());
    let (mut out_one, mut out_all) = (None, None);
    for _ in 0..reps {
        barrier(comm)?;
        if comm.rank() == 0 {
            let start = Instant::now();
            out_one = Some(f(&Comm::single())?);
            one.push(device::elapsed(dev, start)?);
        }
        barrier(comm)?;
        let start = Instant::now();
        out_all = Some(f(comm)?);
        all.push(slowest(comm, device::elapsed(dev, start)?)?);
    }
    let t1 = if comm.rank() == 0 { median(one) } else { 0.0 };
    let mut t1 = [t1];
    comm.broadcast(&mut t1, 0)?;
    Ok((t1[0], median(all), out_one, out_all.expect("reps >= 1")))
}

fn run(cli: &Cli, dev: &Device, comm: &Comm) -> candle_core::Result<()> {
    let root = comm.rank() == 0;
    let p = comm.size();
    let reps = cli.reps.max(1);
    let dtype = cli.dtype.dtype();
    if root {
        println!("# bench_distributed\n{}", report::machine_header());
        println!(
            "- ranks: {p} over {} (one thread each: RAYON_NUM_THREADS={})\n",
            comm.name(),
            std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "unset".into())
        );
    }
    // The all-gather of N values alone.
    let gather = |n: usize| -> candle_core::Result<f64> {
        let (_, len) = comm.my_block(n);
        let local = vec![1.0; len];
        let counts = comm.counts(n);
        let mut times = Vec::new();
        for _ in 0..20 {
            barrier(comm)?;
            let start = Instant::now();
            comm.all_gather(&local, &counts)?;
            times.push(slowest(comm, start.elapsed().as_secs_f64())?);
        }
        Ok(median(times))
    };

    // The product.
    let (k, b) = operator(cli.n, dtype, dev)?;
    let (t1, tp, _, _) = alternate(comm, reps, dev, |c| k.shard(c).matmul(&b))?;
    let tg = gather(cli.n)?;
    let predicted = t1 / p as f64 + if p > 1 { tg } else { 0.0 };
    let mut rows = vec![(
        format!("K b, N = {}", report::fmt_n(cli.n)),
        t1,
        tp,
        predicted,
        tg,
    )];

    // The solve.
    let (k, y) = operator(cli.solve_n, dtype, dev)?;
    let opts = SolveOptions {
        tol: cli.tol,
        ..SolveOptions::default()
    };
    let (t1s, tps, info1, infop) = alternate(comm, cli.solve_reps.max(1), dev, |c| {
        Ok(k.shard(c).solve(&y, 0.01, &opts)?.1)
    })?;
    let tgs = gather(cli.solve_n)?;
    // The model: the preconditioner's setup is not split (its rows are, its factorisation is
    // not), the iterations are, and each product adds an all-gather. From rank 0's one-rank
    // run (every rank gets the prediction).
    let mut one = [0.0, 0.0];
    if let Some(i1) = &info1 {
        one = [i1.setup_seconds, i1.solve_seconds];
    }
    comm.broadcast(&mut one, 0)?;
    let [setup1, iter1] = one;
    let gathers = infop.products as f64;
    let predicted_s = setup1 + iter1 / p as f64 + if p > 1 { gathers * tgs } else { 0.0 };
    rows.push((
        format!(
            "solve, N = {}, {} its, {} products, rank {}",
            report::fmt_n(cli.solve_n),
            infop.iterations,
            infop.products,
            infop.preconditioner_rank
        ),
        t1s,
        tps,
        predicted_s,
        tgs,
    ));
    if root {
        if let Some(i1) = &info1 {
            if i1.iterations != infop.iterations || i1.products != infop.products {
                println!(
                    "warning: one rank took {} iterations and {} products, {p} ranks {} and {}",
                    i1.iterations, i1.products, infop.iterations, infop.products
                );
            }
            println!(
                "solve: preconditioner setup {:.3} s on one rank, {:.3} s on {p}; iterations \
                 {:.3} s and {:.3} s\n",
                i1.setup_seconds, infop.setup_seconds, i1.solve_seconds, infop.solve_seconds
            );
        }
        println!(
            "| {:<48} | {:>9} | {:>9} | {:>10} | {:>10} | {:>9} | {:>12} |",
            "problem",
            "1 rank s",
            format!("{p} ranks s"),
            "speed-up",
            "efficiency",
            "model s",
            "all-gather ms"
        );
        println!(
            "|{}|{}|{}|{}|{}|{}|{}|",
            "-".repeat(50),
            "-".repeat(11),
            "-".repeat(11),
            "-".repeat(12),
            "-".repeat(12),
            "-".repeat(11),
            "-".repeat(14)
        );
        for (name, t1, tp, pred, tg) in rows {
            println!(
                "| {name:<48} | {t1:>9.3} | {tp:>9.3} | {:>10.2} | {:>9.1} % | {pred:>9.3} | {:>12.3} |",
                t1 / tp,
                100.0 * t1 / (p as f64 * tp),
                tg * 1e3
            );
        }
        println!(
            "\nefficiency = T_1 / (P T_P); model: a product T_1 / P + T_gather; a solve its \
             one-rank setup ({setup1:.3} s, not split) + its one-rank iterations / P ({iter1:.3} \
             s / {p}) + one T_gather per product"
        );
    }
    Ok(())
}
