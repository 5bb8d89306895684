//! Block-sparse against dense: a Gaussian kernel sum with sigma = 0.01 on 10^6 points of the
//! unit sphere (a surface in 3D: clustered points), `out_i = sum_j exp(-|x_i - x_j|^2 / (2
//! sigma^2)) b_j`.
//!
//! `cargo bench --bench bench_ranges` (`-- --n 100000` for another size, `-- --seed S` for other
//! points, `-- --help` for the options).
//!
//! The sparse reduction keeps the pairs of grid cells whose centroids are within
//! `r + 2 * (largest cell radius)`, with `r = 5.5 sigma`: every pair of points closer than `r` is
//! kept, and the dropped part of a row's sum is below `exp(-r^2 / (2 sigma^2)) = 2.7e-7` of it
//! (the tail of a 2D Gaussian on a locally flat surface). The dense reduction over all 10^12
//! pairs would take minutes on this machine: it is timed on a subset of rows (every row against
//! all 10^6 columns) and extrapolated linearly to all rows, and the error of the sparse result is
//! measured on those rows.

#[path = "../examples/report/mod.rs"]
mod report;
#[path = "../examples/sizes/mod.rs"]
mod sizes;

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use clap::Parser;
use lazy_kernels::{Axis, BlockSparse, Clusters, LazyTensor};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const SIGMA: f64 = 0.01;
/// Truncation radius, in units of sigma.
const R_SIGMAS: f64 = 5.5;
/// Rows of the dense subset.
const DENSE_ROWS: usize = 2000;

/// Block-sparse against dense: a Gaussian sum with sigma = 0.01 on points of the unit sphere.
///
/// The sparse reduction keeps the pairs of grid cells whose centroids are within 5.5 sigma + 2 x
/// (largest cell radius), for two cell sizes in f32 and one in f64; the dense reduction is
/// timed on 2000 rows against all columns and extrapolated, and the sparse result's error is
/// measured on those rows. Prints a markdown table. Run by `cargo bench --bench bench_ranges`.
#[derive(Parser)]
#[command(name = "bench_ranges")]
struct Cli {
    /// Points on the sphere (`1000000`, `1e6`).
    #[arg(long, value_name = "N", default_value = "1e6", value_parser = sizes::at_least(2))]
    n: usize,
    /// Seed of the random points and weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Ignored: what `cargo bench` passes to the benchmarks.
    #[arg(long, hide = true)]
    bench: bool,
    /// Ignored: the filter `cargo bench FILTER` passes to every benchmark.
    #[arg(hide = true)]
    filter: Vec<String>,
}

/// Deterministic uniform in [0, 1) (xorshift64*).
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f64 {
        let s = &mut self.0;
        *s ^= *s >> 12;
        *s ^= *s << 25;
        *s ^= *s >> 27;
        (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `n` points uniform on the unit sphere and weights in [0.5, 1.5), drawn with `seed`.
fn problem(n: usize, seed: u64) -> Res<(Tensor, Tensor)> {
    let mut r = Rng((0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_mul(0xD1B5_4A32_D192_ED03)).max(1));
    let mut x = Vec::with_capacity(3 * n);
    for _ in 0..n {
        let z = 2.0 * r.uniform() - 1.0;
        let phi = 2.0 * std::f64::consts::PI * r.uniform();
        let rho = (1.0 - z * z).sqrt();
        x.extend([rho * phi.cos(), rho * phi.sin(), z]);
    }
    let b: Vec<f64> = (0..n).map(|_| 0.5 + r.uniform()).collect();
    Ok((
        Tensor::from_vec(x, (n, 3), &Device::Cpu)?,
        Tensor::from_vec(b, (n, 1), &Device::Cpu)?,
    ))
}

/// The Gaussian sum of `x_i` against `(y_j, b_j)`, with optional ranges.
fn gauss_sum(x: &Tensor, y: &Tensor, b: &Tensor, ranges: Option<&BlockSparse>) -> Res<Tensor> {
    let (x_i, y_j, b_j) = (LazyTensor::vi(x)?, LazyTensor::vj(y)?, LazyTensor::vj(b)?);
    let k = (-x_i.sqdist(&y_j) / (2.0 * SIGMA * SIGMA)).exp() * b_j;
    let k = match ranges {
        Some(r) => k.with_ranges(r),
        None => k,
    };
    Ok(k.sum(Axis::J)?)
}

fn seconds<T>(f: impl FnOnce() -> Res<T>) -> Res<(T, f64)> {
    let t = Instant::now();
    let out = f()?;
    Ok((out, t.elapsed().as_secs_f64()))
}

struct Row {
    dtype: DType,
    cell: f64,
    clusters: usize,
    setup_s: f64,
    density: f64,
    sparse_s: f64,
    dense_s: f64,
    max_rel: f64,
    mean_rel: f64,
}

fn run(x64: &Tensor, b64: &Tensor, dtype: DType, cell: f64) -> Res<Row> {
    let n = x64.dims()[0];
    let (x, b) = (x64.to_dtype(dtype)?, b64.to_dtype(dtype)?);
    // Setup: clusters, sorted tensors, the kept blocks.
    let ((cl, xs, bs, ranges), setup_s) = seconds(|| {
        let cl = Clusters::grid(&x, cell)?;
        let rmax = cl
            .radii(&x)?
            .to_dtype(DType::F64)?
            .max(0)?
            .to_scalar::<f64>()?;
        let cutoff = R_SIGMAS * SIGMA + 2.0 * rmax;
        let ranges = BlockSparse::from_centroid_cutoff(&cl, &x, &cl, &x, cutoff)?;
        Ok((cl.clone(), cl.sort(&x)?, cl.sort(&b)?, ranges))
    })?;
    // Sparse: best of two runs.
    let mut sparse_s = f64::INFINITY;
    let mut sparse = None;
    for _ in 0..2 {
        let (out, s) = seconds(|| gauss_sum(&xs, &xs, &bs, Some(&ranges)))?;
        sparse_s = sparse_s.min(s);
        sparse = Some(out);
    }
    let sparse = sparse.ok_or("no run")?;
    // Dense on a subset of rows (evenly spaced in the sorted order), all columns.
    let rows = DENSE_ROWS.min(n);
    let pick: Vec<u32> = (0..rows).map(|k| (k * n / rows) as u32).collect();
    let pick = Tensor::from_vec(pick, rows, &Device::Cpu)?;
    let (dense, dense_sub_s) = seconds(|| gauss_sum(&xs.index_select(&pick, 0)?, &xs, &bs, None))?;
    let dense_s = dense_sub_s * n as f64 / rows as f64;
    let d = dense
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    let s = sparse
        .index_select(&pick, 0)?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    let rel: Vec<f64> = s
        .iter()
        .zip(&d)
        .map(|(s, d)| (s - d).abs() / d.abs())
        .collect();
    Ok(Row {
        dtype,
        cell,
        clusters: cl.num_clusters(),
        setup_s,
        density: ranges.density(),
        sparse_s,
        dense_s,
        max_rel: rel.iter().copied().fold(0.0, f64::max),
        mean_rel: rel.iter().sum::<f64>() / rel.len() as f64,
    })
}

fn main() -> Res<()> {
    let cli = Cli::parse();
    let n = cli.n;
    println!(
        "# block-sparse benchmark: `cargo bench --bench bench_ranges{}`",
        match (n == 1_000_000, cli.seed) {
            (true, 0) => String::new(),
            (false, 0) => format!(" -- --n {n}"),
            (true, seed) => format!(" -- --seed {seed}"),
            (false, seed) => format!(" -- --n {n} --seed {seed}"),
        }
    );
    println!();
    println!("{}", report::machine_header());
    println!(
        "- problem: Gaussian sum, sigma {SIGMA}, {} points uniform on the unit sphere (x = y), \
         weights in [0.5, 1.5)",
        report::fmt_n(n)
    );
    println!(
        "- sparse: grid clusters of the given cell; blocks kept when their centroids are within \
         {R_SIGMAS} sigma + 2 x (largest cluster radius), so every pair closer than {R_SIGMAS} \
         sigma is kept; time of the reduction alone (best of 2), setup (clustering, sorting, \
         cutoff) apart"
    );
    println!(
        "- dense: the same reduction without ranges, timed on {} rows against all {} columns \
         and extrapolated linearly to all rows (not run in full); the error is that of the \
         sparse result on those rows, relative to the dense one",
        DENSE_ROWS.min(n),
        report::fmt_n(n)
    );
    println!("- note: timings are noisy on shared machines (no core pinning or isolation).");
    println!();
    println!(
        "| dtype | cell | clusters | kept pairs | setup | sparse | dense (extrapolated) | \
         speed-up | max rel. error | mean rel. error |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let (x, b) = problem(n, cli.seed)?;
    let cases = [(DType::F32, 0.02), (DType::F32, 0.03), (DType::F64, 0.02)];
    let bar = report::progress(cases.len() as u64, "cases");
    for (dtype, cell) in cases {
        bar.set_message(format!("{dtype:?}, cell {cell}"));
        let r = run(&x, &b, dtype, cell)?;
        bar.inc(1);
        let row = format!(
            "| {:?} | {} | {} | {:.3}% ({:.2e}) | {:.2} s | {:.2} s | {:.0} s | {:.0}x | {:.1e} | {:.1e} |",
            r.dtype,
            r.cell,
            r.clusters,
            100.0 * r.density,
            r.density * (n as f64) * (n as f64),
            r.setup_s,
            r.sparse_s,
            r.dense_s,
            r.dense_s / r.sparse_s,
            r.max_rel,
            r.mean_rel
        );
        bar.suspend(|| println!("{row}"));
    }
    bar.finish_and_clear();
    Ok(())
}
