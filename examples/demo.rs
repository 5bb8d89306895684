//! A tour of lazy-kernels' reductions: a Gaussian kernel sum, a log-sum-exp, k-nearest
//! neighbours, a formula string and gradients, with timings and a check of values and
//! gradients against a dense Candle computation (on the same device).
//!
//! Run with `cargo run --release --example demo [-- --n N] [--seed S] [--device D]` (default
//! N = 20000 points, also written `2e4`; `--device cpu|cuda|cuda:N`, default `cpu`; `--help`
//! lists the options). On a GPU the first call of each formula includes its compilation
//! (NVRTC, cached on disk for the next run).

#[path = "device/mod.rs"]
mod device;
#[path = "seed/mod.rs"]
mod seed;
#[path = "sizes/mod.rs"]
mod sizes;

use std::time::Instant;

use candle_core::{D, DType, Device, Tensor, Var};
use clap::Parser;
use lazy_kernels::{Axis, LazyTensor, linalg};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// A tour of lazy-kernels' reductions, timed and checked against dense Candle.
///
/// A Gaussian kernel sum, a log-sum-exp, the 5 nearest neighbours, a parsed formula reduced
/// over i and the gradients of a kernel sum with respect to the points and the bandwidth, on M
/// = N points uniform in the unit cube (D = 3, f32); then the values and gradients against a
/// dense Candle computation on the first 2000 points. On a GPU the first call of each formula
/// includes its compilation (NVRTC, cached on disk for the next run).
#[derive(Parser)]
#[command(name = "demo")]
struct Cli {
    /// Points of each set, M = N (`20000`, `2e4`).
    #[arg(long, value_name = "N", default_value = "20000", value_parser = sizes::at_least(5))]
    n: usize,
    /// The same as `--n` (the older spelling: `demo 20000`).
    #[arg(value_name = "N", hide = true, conflicts_with = "n", value_parser = sizes::at_least(5))]
    size: Option<usize>,
    /// Seed of the random points and weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    device: device::DeviceArg,
}

fn main() -> candle_core::Result<()> {
    let cli = Cli::parse();
    let n = cli.size.unwrap_or(cli.n);
    let dev = cli.device.open();
    println!(
        "lazy-kernels demo: M = N = {n}, D = 3, f32, {}\n",
        device::describe(&dev)
    );
    // The data are drawn on the CPU (the same numbers whatever the device), then moved.
    let cpu = Device::Cpu;
    let mut rng = StdRng::seed_from_u64(cli.seed);
    let x = seed::uniform(&mut rng, n, 3)?.to_device(&dev)?;
    let y = seed::uniform(&mut rng, n, 3)?.to_device(&dev)?;
    let b = seed::uniform(&mut rng, n, 1)?.to_device(&dev)?;
    let sigma = Tensor::new(&[0.1f32], &cpu)?.to_device(&dev)?;

    let x_i = LazyTensor::vi(&x)?;
    let y_j = LazyTensor::vj(&y)?;
    let b_j = LazyTensor::vj(&b)?;
    let s = LazyTensor::param(&sigma)?;
    let d_ij = x_i.sqdist(&y_j);
    let k_ij = (-&d_ij / (2.0 * s.square())).exp();

    // 1. Gaussian kernel matrix-vector product, never materialising the N x N matrix.
    let t = Instant::now();
    let kb = (&k_ij * &b_j).sum(Axis::J)?;
    let secs = device::elapsed(&dev, t)?;
    println!(
        "Gaussian kernel sum  (K b)_i        {:>8.3} s  {:>6.2e} pairs/s   out[0..3] = {:?}",
        secs,
        (n * n) as f64 / secs,
        &kb.flatten_all()?.to_vec1::<f32>()?[..3]
    );

    // 2. Log-sum-exp (soft minimum), stable for large arguments.
    let t = Instant::now();
    let lse = (-&d_ij / (2.0 * s.square())).logsumexp(Axis::J)?;
    println!(
        "LogSumExp over j                    {:>8.3} s                      out[0..3] = {:?}",
        device::elapsed(&dev, t)?,
        &lse.flatten_all()?.to_vec1::<f32>()?[..3]
    );

    // 3. k-nearest neighbours: integer indices.
    let t = Instant::now();
    let (dist, knn) = d_ij.kmin_argkmin(5, Axis::J)?;
    println!(
        "5 nearest neighbours (KMinArgKMin)  {:>8.3} s                      row 0: {:?} at {:?}",
        device::elapsed(&dev, t)?,
        knn.get(0)?.to_vec1::<i64>()?,
        dist.get(0)?.to_vec1::<f32>()?
    );

    // 4. Reduction over i (the transposed product K^T b) and a formula string.
    let t = Instant::now();
    let f = LazyTensor::parse(
        "Exp(-SqDist(x, y) / (2.0 * Square(s))) * b",
        &[
            ("x", &x_i),
            ("y", &y_j),
            ("s", &s),
            ("b", &LazyTensor::vi(&b)?),
        ],
    )?;
    let ktb = f.sum(Axis::I)?;
    println!(
        "Parsed formula, reduced over i      {:>8.3} s                      {} -> {:?}",
        device::elapsed(&dev, t)?,
        f.expr()?,
        ktb.dims()
    );

    // 5. Gradients through Candle's autodiff: of sum_i (K b)_i with respect to the points x
    //    and the bandwidth sigma (Vars), computed by lazy reductions too.
    let xv = Var::from_tensor(&x)?;
    let sv = Var::from_tensor(&sigma)?;
    let gauss_sum = |x: &Tensor, sigma: &Tensor, y: &Tensor, b: &Tensor| {
        let s = LazyTensor::param(sigma)?;
        let k = (-LazyTensor::vi(x)?.sqdist(&LazyTensor::vj(y)?) / (2.0 * s.square())).exp();
        (k * LazyTensor::vj(b)?).sum(Axis::J)
    };
    let t = Instant::now();
    let out = gauss_sum(xv.as_tensor(), sv.as_tensor(), &y, &b)?;
    let forward = device::elapsed(&dev, t)?;
    let t = Instant::now();
    let grads = out.sum_all()?.backward()?;
    let backward = device::elapsed(&dev, t)?;
    let gx = grads.get(&xv).expect("x is a Var");
    let gs = grads.get(&sv).expect("sigma is a Var");
    println!(
        "Gradients wrt x and sigma (backward) {backward:>7.3} s  ({:.2}x the forward pass)  \
         dL/dsigma = {:.4e}, dL/dx[0] = {:?}",
        backward / forward,
        gs.to_vec1::<f32>()?[0],
        gx.get(0)?.to_vec1::<f32>()?
    );

    // 6. Check against a dense Candle computation on the first 2000 points.
    let m = n.min(2000);
    let (xs, ys, bs) = (x.narrow(0, 0, m)?, y.narrow(0, 0, m)?, b.narrow(0, 0, m)?);
    let t = Instant::now();
    let d = xs
        .unsqueeze(1)?
        .broadcast_sub(&ys.unsqueeze(0)?)?
        .sqr()?
        .sum(D::Minus1)?;
    let dense = linalg::matmul(&(d * (-1.0 / (2.0 * 0.01)))?.exp()?, &bs)?;
    let dense_secs = device::elapsed(&dev, t)?;
    let t = Instant::now();
    let lazy = (LazyTensor::vi(&xs)?.sqdist(&LazyTensor::vj(&ys)?) * (-1.0 / (2.0 * 0.01)))
        .exp()
        .mul_sum(&LazyTensor::vj(&bs)?)?;
    let lazy_secs = device::elapsed(&dev, t)?;
    let err = (lazy - &dense)?
        .abs()?
        .max_all()?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()?;
    let scale = dense
        .abs()?
        .max_all()?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()?;
    println!(
        "\nCheck at M = N = {m}: dense Candle {dense_secs:.4} s, lazy {lazy_secs:.4} s, \
         max |lazy - dense| / max |dense| = {:.1e}",
        err / scale
    );

    // The gradients, against Candle's autodiff of the dense computation.
    let (xv, sv) = (Var::from_tensor(&xs)?, Var::from_tensor(&sigma)?);
    let d = xv
        .as_tensor()
        .unsqueeze(1)?
        .broadcast_sub(&ys.unsqueeze(0)?)?
        .sqr()?
        .sum(D::Minus1)?;
    let two_s2 = (sv.as_tensor().sqr()? * 2.0)?;
    let dense = linalg::matmul(&d.broadcast_div(&two_s2)?.neg()?.exp()?, &bs)?;
    let dense_grads = dense.sum_all()?.backward()?;
    let lazy_grads = gauss_sum(xv.as_tensor(), sv.as_tensor(), &ys, &bs)?
        .sum_all()?
        .backward()?;
    let rel = |v: &Var| -> candle_core::Result<f64> {
        let (a, b) = (
            lazy_grads.get(v).expect("a Var"),
            dense_grads.get(v).expect("a Var"),
        );
        let err = (a - b)?.abs()?.max_all()?.to_dtype(DType::F64)?;
        let scale = b.abs()?.max_all()?.to_dtype(DType::F64)?;
        Ok(err.to_scalar::<f64>()? / scale.to_scalar::<f64>()?)
    };
    println!(
        "Gradients at M = N = {m}: max relative difference to dense autodiff: x {:.1e}, sigma {:.1e}",
        rel(&xv)?,
        rel(&sv)?
    );
    Ok(())
}

/// `(self * b).sum(Axis::J)`, to show that lazy tensors compose like any Rust value.
trait MulSum {
    fn mul_sum(self, b: &LazyTensor) -> candle_core::Result<Tensor>;
}

impl MulSum for LazyTensor {
    fn mul_sum(self, b: &LazyTensor) -> candle_core::Result<Tensor> {
        (self * b).sum(Axis::J)
    }
}
