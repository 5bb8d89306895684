//! Fits the bandwidth of a Gaussian kernel by gradient descent, with the kernel sums and their
//! gradients computed by lazy-kernels' reductions (never an `N x N` matrix).
//!
//! The data: `N` points `x` and `N` centres `c` uniform in the unit square, positive weights
//! `b` (of order `1 / N`), and targets `t = K_0.2(x, c) b`, where `(K_s(x, c) b)_i = sum_j exp(-|x_i - c_j|^2 /
//! (2 s^2)) b_j`. The model is the same kernel sum with an unknown bandwidth `sigma`; the loss
//! `mean_i ((K_sigma(x, c) b)_i - t_i)^2` is zero at `sigma = 0.2` and nowhere else (with
//! positive weights every kernel sum grows with `sigma`). Starting from `sigma = 0.5`, AdamW
//! (no weight decay) optimises `log sigma`: each step runs one reduction forward and its
//! backward pass (reductions too), and prints the loss and `sigma`.
//!
//! Run with `cargo run --release --example learn_bandwidth [-- --n N] [--seed S] [--device D]`
//! (default N = 2000; f32; `--device cpu|cuda|cuda:N`, default `cpu`; `--help` lists the
//! options).

#[path = "device/mod.rs"]
mod device;
#[path = "sizes/mod.rs"]
mod sizes;

use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use clap::Parser;
use lazy_kernels::{Axis, LazyTensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Fits a Gaussian kernel's bandwidth by gradient descent on lazy kernel sums.
///
/// N points x and N centres c uniform in the unit square, positive weights b, and targets t =
/// K_0.2(x, c) b (a Gaussian kernel sum of bandwidth 0.2). Starting from sigma = 0.5, AdamW
/// optimises log sigma for the loss mean_i ((K_sigma(x, c) b)_i - t_i)^2: each of the 200
/// steps runs one reduction forward and its backward pass (reductions too), and prints the
/// loss and sigma. f32.
#[derive(Parser)]
#[command(name = "learn_bandwidth")]
struct Cli {
    /// Points and centres, N of each (`2000`, `2e3`).
    #[arg(long, value_name = "N", default_value = "2000", value_parser = sizes::count)]
    n: usize,
    /// The same as `--n` (the older spelling: `learn_bandwidth 2000`).
    #[arg(value_name = "N", hide = true, conflicts_with = "n", value_parser = sizes::count)]
    size: Option<usize>,
    /// Seed of the random points, centres and weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    device: device::DeviceArg,
}

/// A `(rows, cols)` tensor of f32 uniform in [lo, hi) on the CPU.
fn uniform(
    rng: &mut StdRng,
    rows: usize,
    cols: usize,
    (lo, hi): (f32, f32),
) -> candle_core::Result<Tensor> {
    let v: Vec<f32> = (0..rows * cols)
        .map(|_| lo + (hi - lo) * rng.random::<f32>())
        .collect();
    Tensor::from_vec(v, (rows, cols), &Device::Cpu)
}

fn main() -> candle_core::Result<()> {
    let cli = Cli::parse();
    let n = cli.size.unwrap_or(cli.n);
    let dev = cli.device.open();
    let (true_sigma, start_sigma, steps) = (0.2f64, 0.5f64, 200);

    // The data are drawn on the CPU (the same numbers whatever the device), then moved.
    let mut rng = StdRng::seed_from_u64(cli.seed);
    let x = uniform(&mut rng, n, 2, (0.0, 1.0))?.to_device(&dev)?;
    let c = uniform(&mut rng, n, 2, (0.0, 1.0))?.to_device(&dev)?;
    let b = (uniform(&mut rng, n, 1, (0.5, 1.5))? / n as f64)?.to_device(&dev)?; // sums of order 0.1
    let (x_i, c_j, b_j) = (
        LazyTensor::vi(&x)?,
        LazyTensor::vj(&c)?,
        LazyTensor::vj(&b)?,
    );
    let d2 = x_i.sqdist(&c_j);
    let kernel_sum = |sigma: &Tensor| -> candle_core::Result<Tensor> {
        let s = LazyTensor::param(sigma)?;
        ((-&d2 / (2.0 * s.square())).exp() * &b_j).sum(Axis::J)
    };
    let targets = kernel_sum(&Tensor::new(&[true_sigma as f32], &dev)?)?;

    let log_sigma = Var::new(&[start_sigma.ln() as f32], &dev)?;
    let params = ParamsAdamW {
        lr: 0.05,
        weight_decay: 0.0,
        ..Default::default()
    };
    let mut opt = AdamW::new(vec![log_sigma.clone()], params)?;
    println!(
        "Fitting a Gaussian bandwidth: {n} points, {n} centres, 2D, f32; true sigma = \
         {true_sigma}, start at {start_sigma}{}\n",
        if dev.is_cpu() {
            String::new()
        } else {
            format!("; on {}", device::describe(&dev))
        }
    );
    println!("{:>5}  {:>12}  {:>10}", "step", "loss", "sigma");
    let start = Instant::now();
    for step in 0..steps {
        // A smaller learning rate for the last third of the steps, to settle.
        if step == 2 * steps / 3 {
            opt.set_learning_rate(0.005);
        }
        let sigma = log_sigma.as_tensor().exp()?;
        let loss = (kernel_sum(&sigma)? - &targets)?.sqr()?.mean_all()?;
        println!(
            "{step:>5}  {:>12.4e}  {:>10.6}",
            loss.to_scalar::<f32>()?,
            sigma.to_vec1::<f32>()?[0]
        );
        opt.backward_step(&loss)?;
    }
    let sigma = log_sigma.as_tensor().exp()?.to_vec1::<f32>()?[0] as f64;
    let seconds = device::elapsed(&dev, start)?;
    println!(
        "\nlearned sigma = {sigma:.6} (true {true_sigma}, relative error {:.2e}); {steps} steps \
         of {n} x {n} kernel sums and their gradients in {:.2} s",
        (sigma - true_sigma).abs() / true_sigma,
        seconds
    );
    Ok(())
}
