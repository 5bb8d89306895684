//! Criterion benchmarks of the CPU reductions, in kernel pairs (M * N) per second.
//!
//! `cargo bench --bench reductions` (optionally with a filter, e.g. `-- gaussian_sum`).
//!
//! Every case runs at M = N = 10^4 and 10^5: the Gaussian sum for D in {1, 3, 10} and E in
//! {1, 16}, LogSumExp and ArgKMin(10) for D = 3. At 10^5 one reduction is 10^10 pairs
//! (seconds per call), so those cases take 10 flat samples; the whole run takes about ten
//! minutes on 2 cores.
//!
//! The machine header (`examples/report`: CPU model, cores, ISA, date, arguments) comes first,
//! then criterion's own output; criterion's options follow `--` (`-- --help` lists them).

#[path = "../examples/report/mod.rs"]
mod report;

use std::hint::black_box;
use std::time::Duration;

use candle_core::{Device, Tensor};
use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group};
use lazy_kernels::{Axis, LazyTensor};

const SMALL: usize = 10_000;
const LARGE: usize = 100_000;

/// Deterministic uniform f32 in [0, 1) (xorshift64*).
fn uniform(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..len)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect()
}

fn tensor(rows: usize, cols: usize, seed: u64) -> Tensor {
    Tensor::from_vec(uniform(rows * cols, seed), (rows, cols), &Device::Cpu)
        .expect("tensor from vec")
}

/// `(x_i, y_j, s)` with x (n, d), y (n, d) and the scale s = 0.5 of shape (1,).
fn points(n: usize, d: usize) -> (LazyTensor, LazyTensor, LazyTensor) {
    let x = tensor(n, d, 1);
    let y = tensor(n, d, 2);
    let s = Tensor::new(&[0.5f32], &Device::Cpu).expect("sigma");
    (
        LazyTensor::vi(&x).expect("vi"),
        LazyTensor::vj(&y).expect("vj"),
        LazyTensor::param(&s).expect("param"),
    )
}

/// `-|x_i - y_j|^2 / (2 s^2)`.
fn scaled_sqdist(x_i: &LazyTensor, y_j: &LazyTensor, s: &LazyTensor) -> LazyTensor {
    -x_i.sqdist(y_j) / (2.0 * s.square())
}

/// Sample settings per size: 10^4 is cheap, 10^5 takes seconds per call.
fn configure(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    n: usize,
) {
    if n >= LARGE {
        group
            .sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_millis(1))
            .measurement_time(Duration::from_secs(1));
    } else {
        group
            .sample_size(10)
            .sampling_mode(SamplingMode::Auto)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
    }
    group.throughput(Throughput::Elements((n * n) as u64));
}

fn gaussian_sum(c: &mut Criterion) {
    let mut group = c.benchmark_group("gaussian_sum");
    let mut cases = Vec::new();
    for n in [SMALL, LARGE] {
        for d in [1, 3, 10] {
            for e in [1, 16] {
                cases.push((n, d, e));
            }
        }
    }
    for (n, d, e) in cases {
        let (x_i, y_j, s) = points(n, d);
        let b_j = LazyTensor::vj(&tensor(n, e, 3)).expect("vj");
        let k = scaled_sqdist(&x_i, &y_j, &s).exp() * b_j;
        configure(&mut group, n);
        group.bench_with_input(BenchmarkId::new(format!("D{d}_E{e}"), n), &k, |bench, k| {
            bench.iter(|| black_box(k.sum(Axis::J).expect("sum")))
        });
    }
    group.finish();
}

fn logsumexp(c: &mut Criterion) {
    let mut group = c.benchmark_group("logsumexp");
    for n in [SMALL, LARGE] {
        let (x_i, y_j, s) = points(n, 3);
        let f = scaled_sqdist(&x_i, &y_j, &s);
        configure(&mut group, n);
        group.bench_with_input(BenchmarkId::new("D3", n), &f, |bench, f| {
            bench.iter(|| black_box(f.logsumexp(Axis::J).expect("logsumexp")))
        });
    }
    group.finish();
}

fn argkmin10(c: &mut Criterion) {
    let mut group = c.benchmark_group("argkmin10");
    for n in [SMALL, LARGE] {
        let (x_i, y_j, _) = points(n, 3);
        let f = x_i.sqdist(&y_j);
        configure(&mut group, n);
        group.bench_with_input(BenchmarkId::new("D3", n), &f, |bench, f| {
            bench.iter(|| black_box(f.argkmin(10, Axis::J).expect("argkmin")))
        });
    }
    group.finish();
}

criterion_group!(benches, gaussian_sum, logsumexp, argkmin10);

/// `criterion_main!(benches)`, after the machine header.
fn main() {
    println!("{}\n", report::machine_header());
    benches();
    Criterion::default().configure_from_args().final_summary();
}
