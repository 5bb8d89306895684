//! The kernels of the per-pair instruction budget (`cuda/sass-budget.txt`), generated along
//! the path a user's call takes: each is the CUDA module that the census
//! ([`lazy_kernels::backend::census`]) records while the computation runs on the CPU, so the
//! module is the one CUDA would compile for the same call.
//!
//! `LK_SASS_CORPUS=dir cargo test --test sass_kernels_tests` writes `dir/<label>.cu`, one
//! module per label; `scripts/sass-budget.py dir` compiles them for sm_90, reads their SASS
//! and compares the instructions per pair of each main loop with the budget (CI runs both,
//! from `scripts/check-cuda.sh`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, Var};
use lazy_kernels::backend::census::{self, KernelRecord};
use lazy_kernels::{Axis, Kernel, KernelOperator, LazyTensor};

const D: usize = 3;
const N: usize = 40;

fn rand(rows: usize, cols: usize, dtype: DType) -> Tensor {
    Tensor::rand(0f32, 1., (rows, cols), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// The one kernel the census saw dispatched while `f` ran.
fn only_kernel(label: &str, f: impl FnOnce() -> candle_core::Result<()>) -> KernelRecord {
    kernel_where(label, |_| true, f)
}

/// The one kernel the census saw dispatched while `f` ran whose formula passes `pick`.
fn kernel_where(
    label: &str,
    pick: impl Fn(&str) -> bool,
    f: impl FnOnce() -> candle_core::Result<()>,
) -> KernelRecord {
    census::start();
    let r = f();
    let c = census::stop();
    r.unwrap_or_else(|e| panic!("{label}: {e}"));
    let used: Vec<&KernelRecord> = c
        .kernels
        .iter()
        .filter(|k| k.dispatches > 0 && pick(&k.formula))
        .collect();
    assert_eq!(
        used.len(),
        1,
        "{label}: {} kernels dispatched: {:?}",
        used.len(),
        used.iter()
            .map(|k| (&k.reduction, &k.formula))
            .collect::<Vec<_>>()
    );
    used[0].clone()
}

/// Random points `x_i`, `y_j` (D components) and weights `b_j` of `dtype`.
fn points(dtype: DType) -> candle_core::Result<(LazyTensor, LazyTensor, LazyTensor)> {
    Ok((
        LazyTensor::vi(&rand(N, D, dtype))?,
        LazyTensor::vj(&rand(N, D, dtype))?,
        LazyTensor::vj(&rand(N, 1, dtype))?,
    ))
}

/// `sum_j exp(-|x_i - y_j|^2 c) b_j` for inputs of `dtype`, written with a constant.
fn gauss_const(dtype: DType) -> impl FnOnce() -> candle_core::Result<()> {
    move || {
        let (x, y, b) = points(dtype)?;
        ((-x.sqdist(&y) * 0.5).exp() * &b).sum(Axis::J)?;
        Ok(())
    }
}

/// The labelled budget kernels, in the budget file's order.
fn budget_kernels() -> BTreeMap<&'static str, KernelRecord> {
    let mut out = BTreeMap::new();
    out.insert(
        "gauss_const_f32",
        only_kernel("gauss_const_f32", gauss_const(DType::F32)),
    );
    out.insert(
        "gauss_const_f64",
        only_kernel("gauss_const_f64", gauss_const(DType::F64)),
    );
    out.insert(
        "gauss_const_f16",
        only_kernel("gauss_const_f16", gauss_const(DType::F16)),
    );
    // The spelling the README teaches: sigma as a parameter.
    out.insert(
        "gauss_sigma_f32",
        only_kernel("gauss_sigma_f32", || {
            let (x, y, b) = points(DType::F32)?;
            let s = LazyTensor::param(&Tensor::new(&[0.7f32], &Device::Cpu)?)?;
            ((-x.sqdist(&y) / (s.square() * 2.0)).exp() * &b).sum(Axis::J)?;
            Ok(())
        }),
    );
    // The library's kernel families, as `KernelOperator::matmul` runs them.
    for (label, kernel) in [
        ("laplacian_f32", Kernel::laplacian as fn(&Tensor) -> Kernel),
        ("matern32_f32", Kernel::matern32),
    ] {
        out.insert(
            label,
            only_kernel(label, || {
                let l = Tensor::new(&[0.7f32], &Device::Cpu)?;
                let x = rand(N, D, DType::F32);
                KernelOperator::new(kernel(&l), &x, &x)?.matmul(&rand(N, 1, DType::F32))?;
                Ok(())
            }),
        );
    }
    out.insert(
        "logsumexp_f32",
        only_kernel("logsumexp_f32", || {
            let (x, y, _) = points(DType::F32)?;
            (-x.sqdist(&y)).logsumexp(Axis::J)?;
            Ok(())
        }),
    );
    out.insert(
        "argkmin10_f32",
        only_kernel("argkmin10_f32", || {
            let (x, y, _) = points(DType::F32)?;
            x.sqdist(&y).argkmin(10, Axis::J)?;
            Ok(())
        }),
    );
    // The Gaussian sum with block-sparse ranges: the block-sparse module, whose main loop
    // (over a tile of one kept interval) must cost what the dense one does.
    out.insert(
        "gauss_ranges_f32",
        only_kernel("gauss_ranges_f32", || {
            let (x, y, b) = points(DType::F32)?;
            let labels: Vec<usize> = (0..N).map(|r| r / 10).collect();
            let cl = lazy_kernels::Clusters::from_labels(&labels)?;
            let keep = lazy_kernels::BlockSparse::from_pairs(&cl, &cl, &[(0, 0), (1, 2), (3, 3)])?;
            ((-x.sqdist(&y) * 0.5).exp() * &b)
                .with_ranges(&keep)
                .sum(Axis::J)?;
            Ok(())
        }),
    );
    // Nearest neighbours: the one-term selection.
    out.insert(
        "argmin_f32",
        only_kernel("argmin_f32", || {
            let (x, y, _) = points(DType::F32)?;
            x.sqdist(&y).argmin(Axis::J)?;
            Ok(())
        }),
    );
    // The gradient of the constant-form Gaussian sum with respect to x: the backward pass's
    // reduction over j (the other one scales its result by the incoming gradient).
    out.insert("gauss_grad_x_f32", {
        let xv = Var::from_tensor(&rand(N, D, DType::F32)).unwrap();
        let x = LazyTensor::vi(xv.as_tensor()).unwrap();
        let y = LazyTensor::vj(&rand(N, D, DType::F32)).unwrap();
        let b = LazyTensor::vj(&rand(N, 1, DType::F32)).unwrap();
        let sum = ((-x.sqdist(&y) * 0.5).exp() * &b).sum(Axis::J).unwrap();
        kernel_where(
            "gauss_grad_x_f32",
            |f| f.contains("Exp"),
            || {
                sum.sum_all()?.backward()?;
                Ok(())
            },
        )
    });
    out
}

#[test]
fn budget_kernels_are_written() {
    let kernels = budget_kernels();
    for (label, k) in &kernels {
        assert_eq!(k.source.matches("_main(").count(), 1, "{label}");
    }
    // The two spellings of the Gaussian sum are distinct modules (the sigma one reads a
    // parameter).
    assert_ne!(
        kernels["gauss_const_f32"].name,
        kernels["gauss_sigma_f32"].name
    );
    let Some(dir) = std::env::var_os("LK_SASS_CORPUS").map(PathBuf::from) else {
        eprintln!(
            "LK_SASS_CORPUS is not set: {} kernels generated, none written",
            kernels.len()
        );
        return;
    };
    std::fs::create_dir_all(&dir).unwrap();
    for (label, k) in &kernels {
        let text = format!(
            "// lk-sass label={label} reduction={} formula={}\n{}",
            k.reduction, k.formula, k.source
        );
        std::fs::write(dir.join(format!("{label}.cu")), text).unwrap();
    }
    eprintln!(
        "{} budget kernels written to {}",
        kernels.len(),
        dir.display()
    );
}
