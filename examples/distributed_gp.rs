//! An exact GP on `N` (default 10^6) synthetic 3D points, its kernel products sharded over the
//! available ranks ([`ExactGp::shard`]), trained for a few AdamW steps, then its posterior mean
//! checked against the truth at 1,000 new points.
//!
//! ```text
//! # MPI ranks on CPUs (one thread per rank; N cut to what 2 cores do in minutes):
//! cargo build --release --features mpi --example distributed_gp
//! RAYON_NUM_THREADS=1 mpirun -n 2 target/release/examples/distributed_gp --n 20000 --steps 3
//! # NCCL between GPUs, one GPU per rank, 8 per host (rank r of a host takes cuda:r):
//! cargo build --release --features cuda,mpi,nccl --example distributed_gp
//! mpirun -n 16 -N 8 target/release/examples/distributed_gp --device cuda --comm nccl
//! # One process:
//! cargo run --release --example distributed_gp -- --n 20000
//! ```
//!
//! `--comm auto|single|mpi|nccl` (default `auto`: MPI when built with `--features mpi` and
//! started by `mpirun`, else one process). Every rank generates the same data from `--seed`,
//! builds the same model and makes the same calls; each evaluates its block of rows of every
//! kernel product, and only rank 0 prints. `--dtype` (default `f32`), `--device cpu|cuda|cuda:N`
//! (under MPI, `cuda:N` is the first GPU and each rank of a host adds its local rank).
//!
//! The data: `x` uniform in `[0, 1]^3`, `y = sin(2 pi x1) cos(2 pi x2) + x3 + 0.1 eps`. The
//! model: a Gaussian kernel with one lengthscale per dimension and an output scale, plus noise
//! (start: lengthscales 0.5, scale 1, noise 0.1), fitted on the stochastic NLL (10 probes).

#[path = "comm/mod.rs"]
mod comm;
#[path = "device/mod.rs"]
mod device;
#[path = "sizes/mod.rs"]
mod sizes;

use std::time::Instant;

use candle_core::{D, DType, Device, Tensor};
use clap::Parser;
use lazy_kernels::Kernel;
use lazy_kernels::gp::{ExactGp, FitOptions, NllMethod, Positive};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A GP on N synthetic 3D points, sharded over MPI ranks or NCCL GPUs, trained for a few steps.
#[derive(Parser)]
#[command(name = "distributed_gp")]
struct Cli {
    /// Number of training points; `1e6`, `1_000_000` and `1,000,000` are read too.
    #[arg(long, value_name = "N", default_value = "1e6", value_parser = sizes::count)]
    n: usize,
    /// AdamW steps (learning rate 0.05, no early stop).
    #[arg(long, value_name = "S", default_value_t = 5)]
    steps: usize,
    /// Floating-point type of the data, the hyperparameters and the fit.
    #[arg(long, value_enum, default_value_t = device::Dtype::F32)]
    dtype: device::Dtype,
    /// Which communicator the products are sharded over.
    #[arg(long, value_enum, default_value_t = comm::CommArg::Auto)]
    comm: comm::CommArg,
    /// Seed of the synthetic data (the same on every rank).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    device: device::DeviceArg,
}

fn truth(x: &[f32]) -> f64 {
    let tau = std::f64::consts::TAU;
    (tau * x[0] as f64).sin() * (tau * x[1] as f64).cos() + x[2] as f64
}

fn normal(rng: &mut StdRng) -> f64 {
    let u: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * rng.random::<f64>()).cos()
}

/// `n` points `(n, 3)` and their truths, from `rng`.
fn points(rng: &mut StdRng, n: usize) -> (Vec<f32>, Vec<f64>) {
    let x: Vec<f32> = (0..3 * n).map(|_| rng.random::<f32>()).collect();
    let f = x.chunks(3).map(truth).collect();
    (x, f)
}

fn main() {
    let cli = Cli::parse();
    let choice = match cli.device.device {
        device::Choice::Cuda(n) if comm::under_mpirun() => {
            device::Choice::Cuda(n + comm::local_rank())
        }
        c => c,
    };
    let dev = device::open_or_exit(choice);
    let comm = comm::open(cli.comm, &dev);
    if let Err(e) = run(&cli, &dev, &comm) {
        eprintln!(
            "distributed_gp: rank {}: {}",
            comm.rank(),
            device::one_line(&e)
        );
        std::process::exit(1);
    }
}

fn run(cli: &Cli, dev: &Device, comm: &lazy_kernels::dist::Comm) -> candle_core::Result<()> {
    let root = comm.rank() == 0;
    let dtype = cli.dtype.dtype();
    let mut rng = StdRng::seed_from_u64(cli.seed);
    let (xv, fv) = points(&mut rng, cli.n);
    let yv: Vec<f64> = fv.iter().map(|f| f + 0.1 * normal(&mut rng)).collect();
    let x = Tensor::from_vec(xv, (cli.n, 3), &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(dev)?;
    let y = Tensor::from_vec(yv, cli.n, &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(dev)?;
    let l = Positive::new("lengthscale", &[0.5, 0.5, 0.5], dtype, dev)?;
    let s = Positive::new("outputscale", &[1.0], dtype, dev)?;
    let noise = Positive::new("noise", &[0.1], dtype, dev)?;
    let (lc, sc) = (l.clone(), s.clone());
    let mut gp = ExactGp::new(&x, &y, vec![l, s], noise, move || {
        Ok(Kernel::gaussian(&lc.value()?).scale(&sc.value()?))
    })?
    .shard(comm);
    gp.settings.nll_method = NllMethod::Stochastic;
    gp.settings.probes = 10;
    if root {
        println!(
            "distributed_gp: N = {}, 3D, {} on {:?}, {} rank(s) over {}",
            cli.n,
            cli.dtype.name(),
            dev.location(),
            comm.size(),
            comm.name()
        );
        println!(
            "each rank evaluates {} of the N rows of every kernel product",
            comm.my_block(cli.n).1
        );
    }
    let start = Instant::now();
    let report = gp.fit(&FitOptions {
        steps: cli.steps,
        lr: 0.05,
        tol: 0.0,
        progress: root,
        ..FitOptions::default()
    })?;
    let fit_seconds = device::elapsed(dev, start)?;
    if root {
        for step in &report.trajectory {
            println!(
                "step {:>3}: NLL per point {:>9.5}, CG iterations {} (solve) and {} (gradient)",
                step.step,
                step.report.nll / cli.n as f64,
                step.report.iterations.0,
                step.report.iterations.1
            );
        }
        println!(
            "fit: {} steps in {fit_seconds:.2} s ({:.2} s per step)",
            report.trajectory.len(),
            fit_seconds / report.trajectory.len().max(1) as f64
        );
        for (name, v) in gp.values()? {
            let v: Vec<String> = v.iter().map(|x| format!("{x:.4}")).collect();
            println!("  {name:<12} {}", v.join(", "));
        }
    }
    // The posterior mean at new points against the noiseless truth.
    let (xt, ft) = points(&mut rng, 1000);
    let xt = Tensor::from_vec(xt, (1000, 3), &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(dev)?;
    let start = Instant::now();
    let mean = gp.predict_mean(&xt)?;
    let predict_seconds = device::elapsed(dev, start)?;
    let mean = mean.to_dtype(DType::F64)?.to_device(&Device::Cpu)?;
    let ft = Tensor::new(ft.as_slice(), &Device::Cpu)?;
    let rmse = (mean - &ft)?
        .sqr()?
        .mean(D::Minus1)?
        .sqrt()?
        .to_scalar::<f64>()?;
    if root {
        println!(
            "posterior mean at 1,000 new points: RMSE {rmse:.4} against the truth (noise sd 0.1), \
             {predict_seconds:.2} s"
        );
    }
    Ok(())
}
