//! Benchmark of the backward pass: the gradients of a Gaussian kernel sum
//! `out_i = sum_j exp(-|x_i - y_j|^2 / (2 sigma^2)) b_j` (D = 3, f32) with respect to the
//! points `x` and `y`, the weights `b` and the bandwidth `sigma` together (and separately),
//! against the forward pass, measured in one run; and the same for a Laplacian kernel
//! `exp(-|x_i - y_j| / sigma)`. Prints a markdown table.
//!
//! Run with `cargo run --release --example bench_grad [-- --sizes 1e4,1e5] [--seed S] [--device
//! D]` (default N = 10^4 and 10^5, M = N; `--device cpu|cuda|cuda:N`, default `cpu`; `--help`
//! lists the options). Each time is the best of a few repetitions (the machines are shared and
//! noisy), read after the device has finished; on a GPU the first call of each formula (its
//! compilation) is not among them.

#[path = "device/mod.rs"]
mod device;
#[path = "report/mod.rs"]
mod report;
#[path = "seed/mod.rs"]
mod seed;
#[path = "sizes/mod.rs"]
mod sizes;

use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use clap::Parser;
use lazy_kernels::{Axis, LazyTensor};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// Benchmark of the backward pass of Gaussian and Laplacian kernel sums against the forward.
///
/// The gradients of out_i = sum_j exp(-|x_i - y_j|^2 / (2 sigma^2)) b_j (D = 3, f32) with
/// respect to x, y, b and sigma together, to x alone and to sigma alone, and the same for a
/// Laplacian kernel exp(-|x_i - y_j| / sigma), each timed against the forward pass (best of 3
/// runs), at M = N for each size. Prints a markdown table.
#[derive(Parser)]
#[command(name = "bench_grad")]
struct Cli {
    /// The sizes M = N (`1e4,1e5`).
    #[arg(
        long,
        value_name = "N,...",
        value_delimiter = ',',
        default_value = "1e4,1e5",
        value_parser = sizes::count
    )]
    sizes: Vec<usize>,
    /// The same as `--sizes` (the older spelling: `bench_grad 10000 100000`).
    #[arg(value_name = "N", hide = true, conflicts_with = "sizes", value_parser = sizes::count)]
    positional: Vec<usize>,
    /// Seed of the random points and weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    device: device::DeviceArg,
}

/// Gradients to compute: which of x, y, b, sigma are `Var`s, for which kernel.
struct Case {
    name: &'static str,
    track: [bool; 4],
    laplacian: bool,
}

/// The best time of `reps` calls of `f` on `dev` (after one untimed call on a GPU).
fn best_of(
    dev: &Device,
    reps: usize,
    mut f: impl FnMut() -> candle_core::Result<()>,
) -> candle_core::Result<f64> {
    if !dev.is_cpu() {
        f()?;
        device::sync(dev)?;
    }
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        best = best.min(device::elapsed(dev, t)?);
    }
    Ok(best)
}

fn main() -> candle_core::Result<()> {
    let cli = Cli::parse();
    let sizes = if cli.positional.is_empty() {
        cli.sizes
    } else {
        cli.positional
    };
    let dev = cli.device.open();
    println!("{}\n", report::machine_header());
    println!(
        "Gaussian kernel sum, D = 3, f32, M = N, {}; best of 3 runs\n",
        device::describe(&dev)
    );
    let cpu = Device::Cpu;
    let cases = [
        Case {
            name: "x, y, b, sigma",
            track: [true; 4],
            laplacian: false,
        },
        Case {
            name: "x",
            track: [true, false, false, false],
            laplacian: false,
        },
        Case {
            name: "sigma",
            track: [false, false, false, true],
            laplacian: false,
        },
        Case {
            name: "x, y, b, sigma",
            track: [true; 4],
            laplacian: true,
        },
    ];
    println!("| N | kernel | gradients of | forward | backward | backward / forward |");
    println!("|---|---|---|---|---|---|");
    let bar = report::progress((sizes.len() * cases.len()) as u64, "cases");
    let mut rng = StdRng::seed_from_u64(cli.seed);
    for &n in &sizes {
        let x = seed::uniform(&mut rng, n, 3)?.to_device(&dev)?;
        let y = seed::uniform(&mut rng, n, 3)?.to_device(&dev)?;
        let b = seed::uniform(&mut rng, n, 1)?.to_device(&dev)?;
        let sigma = Tensor::new(&[0.1f32], &cpu)?.to_device(&dev)?;
        for case in &cases {
            let bind = |t: &Tensor, k: usize| -> candle_core::Result<Tensor> {
                Ok(if case.track[k] {
                    Var::from_tensor(t)?.as_tensor().clone()
                } else {
                    t.clone()
                })
            };
            let (xv, yv, bv, sv) = (bind(&x, 0)?, bind(&y, 1)?, bind(&b, 2)?, bind(&sigma, 3)?);
            let forward = || -> candle_core::Result<Tensor> {
                let x_i = LazyTensor::vi(&xv)?;
                let y_j = LazyTensor::vj(&yv)?;
                let b_j = LazyTensor::vj(&bv)?;
                let s = LazyTensor::param(&sv)?;
                let k = if case.laplacian {
                    (-x_i.sqdist(&y_j).sqrt() / s).exp()
                } else {
                    (-x_i.sqdist(&y_j) / (2.0 * s.square())).exp()
                };
                (k * b_j).sum(Axis::J)
            };
            let tf = best_of(&dev, 3, || forward().map(|_| ()))?;
            let out = forward()?;
            let loss = out.sum_all()?;
            let tb = best_of(&dev, 3, || {
                let g = loss.backward()?;
                // Every requested gradient exists.
                for (k, t) in [&xv, &yv, &bv, &sv].into_iter().enumerate() {
                    if case.track[k] && g.get(t).is_none() {
                        return Err(candle_core::Error::Msg("missing gradient".into()));
                    }
                }
                Ok(())
            })?;
            let kernel = if case.laplacian {
                "Laplacian"
            } else {
                "Gaussian"
            };
            bar.suspend(|| {
                println!(
                    "| {n} | {kernel} | {} | {tf:.4} s | {tb:.4} s | **{:.2}** |",
                    case.name,
                    tb / tf
                )
            });
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok(())
}
