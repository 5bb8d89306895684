//! A tour of lazy-kernels' reductions on the CPU: a Gaussian kernel sum, a log-sum-exp,
//! k-nearest neighbours and a formula string, with timings and a check against a dense Candle
//! computation.
//!
//! Run with `cargo run --release --example demo [-- N]` (default N = 20000 points).

use std::time::Instant;

use candle_core::{DType, Device, Tensor, D};
use lazy_kernels::{backend::cpu::isa, Axis, LazyTensor};

fn main() -> candle_core::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let dev = Device::Cpu;
    println!(
        "lazy-kernels demo: M = N = {n}, D = 3, f32, CPU ({}, {} threads)\n",
        isa::detect().name(),
        rayon::current_num_threads()
    );
    let x = Tensor::rand(0f32, 1., (n, 3), &dev)?;
    let y = Tensor::rand(0f32, 1., (n, 3), &dev)?;
    let b = Tensor::rand(0f32, 1., (n, 1), &dev)?;
    let sigma = Tensor::new(&[0.1f32], &dev)?;

    let x_i = LazyTensor::vi(&x)?;
    let y_j = LazyTensor::vj(&y)?;
    let b_j = LazyTensor::vj(&b)?;
    let s = LazyTensor::param(&sigma)?;
    let d_ij = x_i.sqdist(&y_j)?;
    let k_ij = (-&d_ij / (2.0 * s.square())).exp();

    // 1. Gaussian kernel matrix-vector product, never materialising the N x N matrix.
    let t = Instant::now();
    let kb = (&k_ij * &b_j).sum(Axis::J)?;
    let secs = t.elapsed().as_secs_f64();
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
        t.elapsed().as_secs_f64(),
        &lse.flatten_all()?.to_vec1::<f32>()?[..3]
    );

    // 3. k-nearest neighbours: integer indices.
    let t = Instant::now();
    let (dist, knn) = d_ij.kmin_argkmin(5, Axis::J)?;
    println!(
        "5 nearest neighbours (KMinArgKMin)  {:>8.3} s                      row 0: {:?} at {:?}",
        t.elapsed().as_secs_f64(),
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
        t.elapsed().as_secs_f64(),
        f.expr()?,
        ktb.dims()
    );

    // 5. Check against a dense Candle computation on the first 2000 points.
    let m = n.min(2000);
    let (xs, ys, bs) = (x.narrow(0, 0, m)?, y.narrow(0, 0, m)?, b.narrow(0, 0, m)?);
    let t = Instant::now();
    let d = xs
        .unsqueeze(1)?
        .broadcast_sub(&ys.unsqueeze(0)?)?
        .sqr()?
        .sum(D::Minus1)?;
    let dense = (d * (-1.0 / (2.0 * 0.01)))?.exp()?.matmul(&bs)?;
    let dense_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let lazy = (LazyTensor::vi(&xs)?.sqdist(&LazyTensor::vj(&ys)?)? * (-1.0 / (2.0 * 0.01)))
        .exp()
        .mul_sum(&LazyTensor::vj(&bs)?)?;
    let lazy_secs = t.elapsed().as_secs_f64();
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
