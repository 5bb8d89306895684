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
//! Run with `cargo run --release --example learn_bandwidth [-- N] [--device D]` (default
//! N = 2000; f32; `--device cpu|cuda|cuda:N`, default `cpu`).

#[path = "device/mod.rs"]
mod device;

use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use lazy_kernels::{Axis, LazyTensor};

fn main() -> candle_core::Result<()> {
    let (dev, args) = device::from_args();
    let n: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(2000);
    let (true_sigma, start_sigma, steps) = (0.2f64, 0.5f64, 200);

    // The data are drawn on the CPU (the same numbers whatever the device), then moved.
    let cpu = Device::Cpu;
    let x = Tensor::rand(0f32, 1., (n, 2), &cpu)?.to_device(&dev)?;
    let c = Tensor::rand(0f32, 1., (n, 2), &cpu)?.to_device(&dev)?;
    let b = (Tensor::rand(0.5f32, 1.5, (n, 1), &cpu)? / n as f64)?.to_device(&dev)?; // sums of order 0.1
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
