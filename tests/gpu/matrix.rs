//! Issue 18 on the device under test: a `LazyTensor` formula as a matrix (`matmul`, `t`,
//! `solve` with its gradient) and batch dimensions (reductions, indices and gradients of
//! `(B, M, D)` inputs), each against the same call on the CPU. Batches run as block-sparse
//! reductions, so on CUDA they need the backend's block-sparse path.

use candle_core::{DType, Device, Tensor, Var};
use lazy_kernels::{Axis, LazyTensor, SolveOptions};

use super::common::Rng;
use super::{Check, Ctx, Res, check, dt, on_device, rel_err, tol};

pub(super) fn checks(v: &mut Vec<Check>) {
    for dtype in [DType::F32, DType::F64] {
        v.push(check(
            format!("matrix/formula matmul,t,solve,grad/{}", dt(dtype)),
            move |ctx| matrix(ctx, dtype),
        ));
        v.push(check(
            format!("batch/gaussian sum,argkmin,grad/B=4/{}", dt(dtype)),
            move |ctx| batch(ctx, dtype),
        ));
    }
}

/// `exp(-|x_i - y_j|^2 / (2 s^2))` as KeOps writes it.
fn gaussian(x: &Tensor, y: &Tensor, s: &Tensor) -> candle_core::Result<LazyTensor> {
    let (x_i, y_j) = (LazyTensor::vi(x)?, LazyTensor::vj(y)?);
    let s = if s.rank() == 2 {
        LazyTensor::param_batched(s)?
    } else {
        LazyTensor::param(s)?
    };
    Ok((-x_i.sqdist(&y_j) / (2.0 * s.square())).exp())
}

/// The matmul, transpose and solve (with the gradient of `<w, a>` in the bandwidth) of a
/// formula on `dev`.
fn matrix_on(dev: &Device, dtype: DType) -> Res<Vec<Tensor>> {
    let mut r = Rng(0x1818);
    let f = |t: Tensor| t.to_dtype(dtype)?.to_device(dev);
    let x = f(r.tensor(&[1500, 2], 0.0, 1.0))?;
    let t = f(r.tensor(&[300, 2], 0.0, 1.0))?;
    let b = f(r.tensor(&[1500, 2], -1.0, 1.0))?;
    let w = f(r.tensor(&[1500, 2], -1.0, 1.0))?;
    let s = Var::from_tensor(&f(Tensor::new(&[0.1f64], &Device::Cpu)?)?)?;
    let k_tx = gaussian(&t, &x, s.as_tensor())?;
    let kb = k_tx.matmul(&b)?;
    let ktc = k_tx.t().matmul(&kb)?;
    let opts = SolveOptions {
        tol: if dtype == DType::F64 { 1e-10 } else { 1e-5 },
        ..SolveOptions::default()
    };
    let (a, info) = gaussian(&x, &x, s.as_tensor())?.solve(&b, 0.1, &opts)?;
    if !info.all_converged() {
        return Err(format!("the solve did not converge: {:?}", info.stops).into());
    }
    let g = (&a * &w)?.sum_all()?.backward()?;
    let ds = g.get(&s).ok_or("no gradient of s")?.clone();
    for (o, what) in [(&kb, "K b"), (&a, "a"), (&ds, "d/ds")] {
        on_device(o, what)?;
    }
    Ok(vec![kb, ktc, a, ds])
}

fn matrix(ctx: &Ctx, dtype: DType) -> Res<String> {
    let got = matrix_on(&ctx.dev, dtype)?;
    let want = matrix_on(&Device::Cpu, dtype)?;
    let solve_tol = if dtype == DType::F64 { 1e-8 } else { 1e-3 };
    let mut report = Vec::new();
    for ((g, w), (what, t)) in got.iter().zip(&want).zip([
        ("K b", tol(dtype)),
        ("K^T c", tol(dtype)),
        ("a", solve_tol),
        ("d/ds", solve_tol),
    ]) {
        report.push(format!("{what} {:.1e}", rel_err(g, w, t, what)?));
    }
    Ok(report.join(", "))
}

/// A batched Gaussian sum with per-batch bandwidths, its `argkmin`, and the gradients of
/// the sum in the points and bandwidths, on `dev`.
fn batch_on(dev: &Device, dtype: DType) -> Res<Vec<Tensor>> {
    let mut r = Rng(0xBA7C);
    let f = |t: Tensor| t.to_dtype(dtype)?.to_device(dev);
    let x = Var::from_tensor(&f(r.tensor(&[4, 700, 3], 0.0, 1.0))?)?;
    let y = f(r.tensor(&[4, 900, 3], 0.0, 1.0))?;
    let b = f(r.tensor(&[4, 900, 2], -1.0, 1.0))?;
    let s = Var::from_tensor(&f(r.tensor(&[4, 1], 0.1, 0.4))?)?;
    let w = f(r.tensor(&[4, 700, 2], -1.0, 1.0))?;
    let k = gaussian(x.as_tensor(), &y, s.as_tensor())?;
    let kb = k.matmul(&b)?;
    if kb.dims() != [4, 700, 2] {
        return Err(format!("K b has shape {:?}, expected [4, 700, 2]", kb.dims()).into());
    }
    let d = LazyTensor::vi(x.as_tensor())?.sqdist(&LazyTensor::vj(&y)?);
    let nn = d.argkmin(3, Axis::J)?;
    let g = (&kb * &w)?.sum_all()?.backward()?;
    let gx = g.get(&x).ok_or("no gradient of x")?.clone();
    let gs = g.get(&s).ok_or("no gradient of s")?.clone();
    for (o, what) in [(&kb, "K b"), (&nn, "argkmin"), (&gx, "d/dx")] {
        on_device(o, what)?;
    }
    Ok(vec![kb, nn, gx, gs])
}

fn batch(ctx: &Ctx, dtype: DType) -> Res<String> {
    let got = batch_on(&ctx.dev, dtype)?;
    let want = batch_on(&Device::Cpu, dtype)?;
    let mut report = Vec::new();
    for (k, what) in [(0, "K b"), (2, "d/dx"), (3, "d/ds")] {
        report.push(format!(
            "{what} {:.1e}",
            rel_err(&got[k], &want[k], 10.0 * tol(dtype), what)?
        ));
    }
    // Nearest neighbours: the same indices, local to the batch, up to ties in rounding.
    let g = got[1]
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<i64>()?;
    let w = want[1].flatten_all()?.to_vec1::<i64>()?;
    let differ = g.iter().zip(&w).filter(|(a, b)| a != b).count();
    if differ * 1000 > g.len() || g.iter().any(|&i| !(0..900).contains(&i)) {
        return Err(format!("argkmin: {differ} of {} indices differ", g.len()).into());
    }
    report.push(format!("argkmin {differ} ties"));
    Ok(report.join(", "))
}
