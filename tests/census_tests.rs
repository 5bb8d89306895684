//! The kernel census on the CPU: the distinct CUDA modules a computation would compile are
//! counted without a GPU (see `lazy_kernels::backend::census`).
//!
//! The census is one per process: the tests here take a lock so that they do not count each
//! other's reductions.

use std::sync::{Mutex, MutexGuard};

use candle_core::{DType, Device, Tensor, Var};
use lazy_kernels::backend::census::{self, Census};
use lazy_kernels::backend::cuda::Storage;
use lazy_kernels::formula::VarCat;
use lazy_kernels::{Axis, LazyTensor};

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn data(dtype: DType) -> (Var, Var, Var, Var) {
    let dev = Device::Cpu;
    let t = |r: usize, c: usize, seed: f64| {
        let v: Vec<f64> = (0..r * c)
            .map(|k| ((k as f64 + seed) * 0.37).sin())
            .collect();
        Var::from_tensor(
            &Tensor::from_vec(v, (r, c), &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap(),
        )
        .unwrap()
    };
    let sigma = Var::from_tensor(
        &Tensor::new(&[0.7f64], &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap(),
    )
    .unwrap();
    (t(20, 3, 0.0), t(30, 3, 1.0), t(30, 2, 2.0), sigma)
}

/// `sum_j exp(-|x_i - y_j|^2 / (2 s^2)) b_j`, then the gradient of its total with respect to
/// x, y, b and s.
fn sum_and_gradient(dtype: DType) -> candle_core::Result<()> {
    let (x, y, b, s) = data(dtype);
    let (x_i, y_j, b_j) = (
        LazyTensor::vi(x.as_tensor())?,
        LazyTensor::vj(y.as_tensor())?,
        LazyTensor::vj(b.as_tensor())?,
    );
    let s = LazyTensor::param(s.as_tensor())?;
    let out = ((-x_i.sqdist(&y_j) / (2.0 * s.square())).exp() * b_j).sum(Axis::J)?;
    out.sum_all()?.backward()?;
    Ok(())
}

fn counted(f: impl FnOnce() -> candle_core::Result<()>) -> Census {
    census::start();
    let r = f();
    let c = census::stop();
    r.unwrap();
    c
}

#[test]
fn a_sum_and_its_gradient_record_their_distinct_kernels() {
    let _l = serial();
    let once = counted(|| sum_and_gradient(DType::F32));
    // The forward reduction, then the backward pass: one reduction over j for x and s, one
    // over i for y and b (planned over j with i and j exchanged), and the pointwise steps
    // that apply the factors taken out of the sums.
    assert!(once.distinct() >= 3, "{once}");
    assert_eq!(once.distinct(), once.kernels.len(), "{once}");
    assert_eq!(once.dispatches, once.distinct(), "each kernel once: {once}");
    let fwd = &once.kernels[0];
    assert_eq!(fwd.reduction, "Sum(axis=j)");
    assert_eq!(
        fwd.vars,
        vec![
            (VarCat::I, 3),
            (VarCat::J, 3),
            (VarCat::P, 1),
            (VarCat::J, 2)
        ],
        "{once}"
    );
    assert!(fwd.formula.contains("Exp"), "{}", fwd.formula);
    for (n, k) in once.kernels.iter().enumerate() {
        assert_eq!(k.storage, Storage::F32);
        assert!(k.name.starts_with("lk_") && k.source.contains(&format!("{}_main", k.name)));
        // Nothing is compiled on the CPU, but the backward pass's modules are noted as those
        // CUDA compiles ahead, at the forward reduction.
        assert_eq!((k.nvrtc_seconds, k.from_disk), (None, false));
        assert_eq!(k.prepared, n > 0, "{once}");
    }
    assert_eq!((once.compiled, once.disk_hits), (0, 0));
    assert_eq!(once.prepared, once.distinct() - 1);
    assert_eq!(
        once.unused().count(),
        0,
        "every module compiled ahead was used"
    );

    // A second step dispatches the same kernels again and adds none.
    let twice = counted(|| {
        sum_and_gradient(DType::F32)?;
        sum_and_gradient(DType::F32)
    });
    assert_eq!(twice.distinct(), once.distinct(), "{twice}");
    assert_eq!(twice.dispatches, 2 * once.dispatches);
    let names = |c: &Census| c.kernels.iter().map(|k| k.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&twice), names(&once), "names are stable");
    assert_eq!(
        twice.prepared, once.prepared,
        "noted once per forward reduction"
    );
    assert!(twice.kernels.iter().all(|k| k.dispatches == 2));

    // In f64, as many kernels, all different (the dtype is part of a module).
    let f64s = counted(|| sum_and_gradient(DType::F64));
    assert_eq!(f64s.distinct(), once.distinct());
    assert_eq!(f64s.of(Storage::F64).count(), f64s.distinct());
    assert!(names(&f64s).iter().all(|n| !names(&once).contains(n)));
    // The table names every kernel.
    let table = f64s.to_string();
    for k in &f64s.kernels {
        assert!(table.contains(&k.name), "{table}");
    }
}

#[test]
fn the_census_is_off_unless_started() {
    let _l = serial();
    census::start();
    let _ = census::stop();
    assert!(!census::is_on());
    sum_and_gradient(DType::F32).unwrap();
    census::start();
    assert_eq!(
        census::snapshot().dispatches,
        0,
        "nothing counted while off"
    );
    sum_and_gradient(DType::F32).unwrap();
    let running = census::snapshot();
    assert!(running.dispatches > 0 && census::is_on());
    let c = census::stop();
    assert_eq!(c.dispatches, running.dispatches);
    assert_eq!(
        census::snapshot().dispatches,
        0,
        "stop hands the record over"
    );
}

#[test]
fn a_reduction_over_i_uses_the_module_of_the_same_reduction_over_j() {
    let _l = serial();
    let (x, y, _, _) = data(DType::F64);
    let (x, y) = (x.as_tensor(), y.as_tensor());
    let c = counted(|| {
        // sum_i exp(-|x_i - y_j|^2) b_i, over i ...
        let (x_i, y_j) = (LazyTensor::vi(x)?, LazyTensor::vj(y)?);
        let b_i = LazyTensor::vi(&x.narrow(1, 0, 2)?.contiguous()?)?;
        let _ = ((-x_i.sqdist(&y_j)).exp() * b_i).sum(Axis::I)?;
        // ... and the same over j, with the roles of the point sets exchanged.
        let (x_j, y_i) = (LazyTensor::vj(x)?, LazyTensor::vi(y)?);
        let b_j = LazyTensor::vj(&x.narrow(1, 0, 2)?.contiguous()?)?;
        let _ = ((-x_j.sqdist(&y_i)).exp() * b_j).sum(Axis::J)?;
        Ok(())
    });
    assert_eq!((c.dispatches, c.distinct()), (2, 1), "{c}");
}

#[test]
fn errors_are_not_kernels() {
    let _l = serial();
    let (x, y, _, _) = data(DType::F32);
    let y64 = y.as_tensor().to_dtype(DType::F64).unwrap();
    let c = counted(|| {
        let x_i = LazyTensor::vi(x.as_tensor())?;
        let bad = LazyTensor::vj(&y64)?;
        // Mixed dtypes: rejected before anything is dispatched.
        let r = x_i.sqdist(&bad).sum(Axis::J);
        assert!(r.is_err());
        Ok(())
    });
    assert_eq!((c.dispatches, c.distinct()), (0, 0), "{c}");
}

#[test]
fn modules_compiled_ahead_for_a_backward_pass_that_never_comes_are_unused() {
    let _l = serial();
    let (x, y, _, _) = data(DType::F32);
    let c = counted(|| {
        let (x_i, y_j) = (
            LazyTensor::vi(x.as_tensor())?,
            LazyTensor::vj(y.as_tensor())?,
        );
        // x tracks gradients, the result is detached: no backward pass.
        let _ = (-x_i.sqdist(&y_j)).exp().sum(Axis::J)?.detach();
        Ok(())
    });
    assert_eq!(c.distinct(), 1, "{c}");
    assert!(c.unused().count() >= 1, "{c}");
    assert!(c.unused().all(|k| k.prepared && k.dispatches == 0));
    assert!(c.to_string().contains("ahead"), "{c}");
}
