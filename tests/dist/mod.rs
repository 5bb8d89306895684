//! Checks of sharded computation, run by every rank of a group: `tests/dist_tests.rs` runs
//! them on ranks that are threads ([`lazy_kernels::dist::LocalGroup`]), `tests/mpi_tests.rs`
//! on MPI processes under `mpirun`.
//!
//! Each check computes the same thing sharded over `comm` and on one rank (the single-process
//! path, computed by this rank alone) and asks that they agree to rounding; the kernel product
//! is also checked against a dense product written here with loops. Every rank must run the
//! same checks in the same order (each is a sequence of collectives).
#![allow(dead_code)]

use candle_core::{D, DType, Device, Result, Tensor, Var};
use lazy_kernels::dist::Comm;
use lazy_kernels::gp::{ExactGp, FitOptions, NllMethod, Positive};
use lazy_kernels::{
    Axis, BlockSparse, Clusters, Kernel, KernelOperator, LazyTensor, LogdetOptions, SolveOptions,
};

thread_local! {
    /// The device this thread's checks put their data on ([`all_on`]).
    static DEVICE: std::cell::RefCell<Device> = const { std::cell::RefCell::new(Device::Cpu) };
}

/// The device of this thread's checks.
pub fn dev() -> Device {
    DEVICE.with(|d| d.borrow().clone())
}

/// Deterministic values in `[0, 1)`, `(rows, cols)`, the same on every rank, on [`dev`].
pub fn data(rows: usize, cols: usize, salt: u64, dtype: DType) -> Result<Tensor> {
    let mut s = 0x9e37_79b9_7f4a_7c15u64 ^ salt.wrapping_mul(0x2545_f491_4f6c_dd1d);
    let v: Vec<f64> = (0..rows * cols)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64
        })
        .collect();
    Tensor::from_vec(v, (rows, cols), &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(&dev())
}

fn max_abs(t: &Tensor) -> Result<f64> {
    t.to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f64>()
}

/// Fails unless `a` and `b` agree within `rel` of `b`'s largest magnitude.
pub fn close(what: &str, a: &Tensor, b: &Tensor, rel: f64) -> Result<()> {
    let host = |t: &Tensor| t.to_device(&Device::Cpu)?.to_dtype(DType::F64);
    let err = max_abs(&(host(a)? - host(b)?)?)?;
    let scale = max_abs(b)?.max(f64::MIN_POSITIVE);
    if err <= rel * scale && err.is_finite() {
        Ok(())
    } else {
        candle_core::bail!(
            "{what}: sharded and single-process differ by {err:.3e} (scale {scale:.3e}, allowed {rel:.1e} relative)"
        )
    }
}

fn close_scalar(what: &str, a: f64, b: f64, rel: f64) -> Result<()> {
    if (a - b).abs() <= rel * b.abs().max(f64::MIN_POSITIVE) {
        Ok(())
    } else {
        candle_core::bail!("{what}: sharded {a} and single-process {b} differ")
    }
}

/// A check, run by every rank.
type Check = fn(&Comm) -> Result<()>;

/// Every check, in order, with the data on the CPU; returns their names.
pub fn all(comm: &Comm) -> Result<Vec<&'static str>> {
    all_on(comm, &Device::Cpu)
}

/// Every check, in order, with the data on `device` (this rank's); returns their names.
pub fn all_on(comm: &Comm, device: &Device) -> Result<Vec<&'static str>> {
    DEVICE.with(|d| *d.borrow_mut() = device.clone());
    let checks: [(&'static str, Check); 8] = [
        ("matmul and its gradients", matmul),
        ("reductions over i and over j", reductions),
        ("the preconditioned solve and its gradient", solve),
        ("solve_logdet and its gradient", logdet),
        ("the GP's NLL and its gradient", gp_nll),
        ("a GP fit and its predictions", gp_fit_predict),
        ("unsupported sharded inputs are errors", unsupported),
        ("collectives", collectives),
    ];
    let mut done = Vec::new();
    for (name, check) in checks {
        check(comm).map_err(|e| {
            candle_core::Error::Msg(format!(
                "rank {} of {}: {name}: {e}",
                comm.rank(),
                comm.size()
            ))
        })?;
        done.push(name);
    }
    Ok(done)
}

/// `K b` against a dense product by loops, and the gradients of a loss of it with respect to
/// the lengthscale, the points and `b` against the single-process ones; in `f64` and `f32`.
pub fn matmul(comm: &Comm) -> Result<()> {
    let (n, d, e) = (203, 3, 2);
    for (dtype, rel) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
        let x = Var::from_tensor(&data(n, d, 1, dtype)?)?;
        let b = Var::from_tensor(&data(n, e, 2, dtype)?)?;
        let l = Var::from_tensor(&Tensor::new(&[0.4f64], &dev())?.to_dtype(dtype)?)?;
        let k = KernelOperator::new(
            Kernel::gaussian(l.as_tensor()),
            x.as_tensor(),
            x.as_tensor(),
        )?;
        let sharded = k.shard(comm).matmul(b.as_tensor())?;
        let single = k.matmul(b.as_tensor())?;
        close("K b", &sharded, &single, rel)?;
        // Dense, by loops, in f64.
        let (xv, bv) = (
            x.to_dtype(DType::F64)?.to_vec2::<f64>()?,
            b.to_dtype(DType::F64)?.to_vec2::<f64>()?,
        );
        let mut dense = vec![0f64; n * e];
        for i in 0..n {
            for j in 0..n {
                let r2: f64 = (0..d).map(|c| (xv[i][c] - xv[j][c]).powi(2)).sum();
                let kij = (-r2 / (2.0 * 0.4 * 0.4)).exp();
                for c in 0..e {
                    dense[i * e + c] += kij * bv[j][c];
                }
            }
        }
        let dense = Tensor::from_vec(dense, (n, e), &Device::Cpu)?;
        close("K b against the dense product", &sharded, &dense, rel)?;
        let w = data(n, e, 3, dtype)?;
        let loss = |kb: &Tensor| (kb.sqr()? * &w)?.sum_all();
        let gs = loss(&sharded)?.backward()?;
        let g1 = loss(&single)?.backward()?;
        for (name, v) in [("lengthscale", &l), ("points", &x), ("b", &b)] {
            let (a, s) = (gs.get(v), g1.get(v));
            match (a, s) {
                (Some(a), Some(s)) => close(&format!("gradient of {name}"), a, s, 50.0 * rel)?,
                _ => candle_core::bail!("gradient of {name}: missing"),
            }
        }
    }
    Ok(())
}

/// Sums, log-sum-exps, minima with their indices and the k nearest neighbours, over `j` and
/// over `i`, of a formula with `i`-, `j`-variables and a parameter; indices exactly.
pub fn reductions(comm: &Comm) -> Result<()> {
    let x = data(101, 2, 4, DType::F64)?;
    let y = data(77, 2, 5, DType::F64)?;
    let p = Tensor::new(&[1.5f64], &dev())?;
    let d = LazyTensor::vi(&x)?.sqdist(&LazyTensor::vj(&y)?) * LazyTensor::param(&p)?;
    let sd = d.shard(comm);
    for axis in [Axis::J, Axis::I] {
        close("sum", &sd.sum(axis)?, &d.sum(axis)?, 1e-13)?;
        close(
            "logsumexp",
            &(-&sd).logsumexp(axis)?,
            &(-&d).logsumexp(axis)?,
            1e-13,
        )?;
        close("min", &sd.min(axis)?, &d.min(axis)?, 0.0)?;
        let (a, b) = (sd.argmin(axis)?, d.argmin(axis)?);
        if a.to_vec2::<i64>()? != b.to_vec2::<i64>()? {
            candle_core::bail!("argmin over {axis:?}: indices differ");
        }
        let (a, b) = (sd.argkmin(3, axis)?, d.argkmin(3, axis)?);
        if a.flatten_all()?.to_vec1::<i64>()? != b.flatten_all()?.to_vec1::<i64>()? {
            candle_core::bail!("argkmin over {axis:?}: indices differ");
        }
    }
    // A formula the sharded product depends on in every way: `sum_j exp(-|x_i - y_j|^2) b_j`.
    let b = data(77, 3, 6, DType::F64)?;
    let k = (-LazyTensor::vi(&x)?.sqdist(&LazyTensor::vj(&y)?)).exp() * LazyTensor::vj(&b)?;
    close(
        "a vector formula",
        &k.shard(comm).sum(Axis::J)?,
        &k.sum(Axis::J)?,
        1e-13,
    )?;
    // The symbolic matrix: `K @ b`, `K^T @ b` and `K.solve(b, alpha)` of a formula.
    let g = (-LazyTensor::vi(&x)?.sqdist(&LazyTensor::vj(&x)?) * 4.0).exp();
    let bx = data(101, 2, 15, DType::F64)?;
    let gs = g.shard(comm);
    close(
        "LazyTensor::matmul",
        &gs.matmul(&bx)?,
        &g.matmul(&bx)?,
        1e-13,
    )?;
    close(
        "LazyTensor::t",
        &gs.t().matmul(&bx)?,
        &g.t().matmul(&bx)?,
        1e-13,
    )?;
    let opts = SolveOptions::default();
    let (a_s, _) = gs.solve(&bx, 0.1, &opts)?;
    let (a_1, _) = g.solve(&bx, 0.1, &opts)?;
    close("LazyTensor::solve", &a_s, &a_1, 1e-9)?;
    Ok(())
}

fn operator(n: usize, dtype: DType) -> Result<(KernelOperator, Var)> {
    let x = data(n, 2, 7, dtype)?;
    let l = Var::from_tensor(&Tensor::new(&[0.25f64], &dev())?.to_dtype(dtype)?)?;
    let k = KernelOperator::new(Kernel::matern52(l.as_tensor()), &x, &x)?;
    Ok((k, l))
}

/// The preconditioned solve of two right-hand sides and the gradient of a loss of its solution
/// with respect to the lengthscale (an adjoint solve).
pub fn solve(comm: &Comm) -> Result<()> {
    let (k, l) = operator(350, DType::F64)?;
    let b = data(350, 2, 8, DType::F64)?;
    let opts = SolveOptions {
        tol: 1e-10,
        ..SolveOptions::default()
    };
    let (a_s, info_s) = k.shard(comm).solve(&b, 0.05, &opts)?;
    let (a_1, info_1) = k.solve(&b, 0.05, &opts)?;
    if !info_s.all_converged() || info_s.iterations != info_1.iterations {
        candle_core::bail!(
            "the sharded solve took {:?} iterations, the single-process one {:?}",
            info_s.iterations,
            info_1.iterations
        );
    }
    close("solution", &a_s, &a_1, 1e-9)?;
    let w = data(350, 2, 9, DType::F64)?;
    let gs = (&a_s * &w)?.sum_all()?.backward()?;
    let g1 = (&a_1 * &w)?.sum_all()?.backward()?;
    match (gs.get(&l), g1.get(&l)) {
        (Some(a), Some(b)) => close("gradient through the solve", a, b, 1e-8),
        _ => candle_core::bail!("gradient through the solve: missing"),
    }
}

/// `log det(K + alpha I)` by stochastic Lanczos quadrature, and its gradient.
pub fn logdet(comm: &Comm) -> Result<()> {
    let (k, l) = operator(300, DType::F64)?;
    let b = data(300, 1, 10, DType::F64)?;
    let opts = SolveOptions::default();
    let ld = LogdetOptions::default();
    let (_, ls, _, _) = k.shard(comm).solve_logdet(&b, 0.1, &opts, &ld)?;
    let (_, l1, _, _) = k.solve_logdet(&b, 0.1, &opts, &ld)?;
    close_scalar(
        "logdet",
        ls.to_scalar::<f64>()?,
        l1.to_scalar::<f64>()?,
        1e-9,
    )?;
    let gs = ls.backward()?;
    let g1 = l1.backward()?;
    match (gs.get(&l), g1.get(&l)) {
        (Some(a), Some(b)) => close("gradient of the logdet", a, b, 1e-8),
        _ => candle_core::bail!("gradient of the logdet: missing"),
    }
}

fn model(n: usize) -> Result<ExactGp> {
    let dev = dev();
    let x = data(n, 3, 11, DType::F64)?;
    let y = ((x.sum(D::Minus1)? * 2.0)?.sin()? + (data(n, 1, 12, DType::F64)?.squeeze(1)? * 0.1)?)?;
    let l = Positive::new("lengthscale", &[0.5], DType::F64, &dev)?;
    let s = Positive::new("outputscale", &[1.0], DType::F64, &dev)?;
    let noise = Positive::new("noise", &[0.05], DType::F64, &dev)?;
    let (lc, sc) = (l.clone(), s.clone());
    let mut gp = ExactGp::new(&x, &y, vec![l, s], noise, move || {
        Ok(Kernel::matern52(&lc.value()?).scale(&sc.value()?))
    })?;
    gp.settings.nll_method = NllMethod::Stochastic;
    Ok(gp)
}

/// The stochastic NLL of an exact GP and its gradient with respect to every parameter.
pub fn gp_nll(comm: &Comm) -> Result<()> {
    let (single, sharded) = (model(260)?, model(260)?.shard(comm));
    let (ns, _) = sharded.nll()?;
    let (n1, _) = single.nll()?;
    close_scalar("NLL", ns.to_scalar::<f64>()?, n1.to_scalar::<f64>()?, 1e-9)?;
    let (gs, g1) = (ns.backward()?, n1.backward()?);
    for (vs, v1) in sharded.vars().iter().zip(single.vars().iter()) {
        match (gs.get(vs), g1.get(v1)) {
            (Some(a), Some(b)) => close("NLL gradient", a, b, 1e-8)?,
            (None, None) => {}
            _ => candle_core::bail!("NLL gradient: present on one side only"),
        }
    }
    Ok(())
}

/// Three AdamW steps, then the posterior mean and variance at new points.
pub fn gp_fit_predict(comm: &Comm) -> Result<()> {
    let (mut single, mut sharded) = (model(240)?, model(240)?.shard(comm));
    let opts = FitOptions {
        steps: 3,
        progress: false,
        ..FitOptions::default()
    };
    sharded.fit(&opts)?;
    single.fit(&opts)?;
    for ((name, a), (_, b)) in sharded.values()?.into_iter().zip(single.values()?) {
        for (a, b) in a.iter().zip(&b) {
            close_scalar(&format!("fitted {name}"), *a, *b, 1e-9)?;
        }
    }
    let x_new = data(37, 3, 13, DType::F64)?;
    let (ps, p1) = (sharded.predict(&x_new)?, single.predict(&x_new)?);
    close("posterior mean", &ps.mean, &p1.mean, 1e-9)?;
    close("posterior variance", &ps.variance, &p1.variance, 1e-7)?;
    Ok(())
}

/// Batched formulas and block-sparse ranges are not split yet: with more than one rank they
/// are errors that say so, on every rank.
pub fn unsupported(comm: &Comm) -> Result<()> {
    if comm.size() == 1 {
        return Ok(());
    }
    let x = data(40, 2, 14, DType::F64)?;
    let batched = x.reshape((2, 20, 2))?;
    let f = LazyTensor::vi(&batched)?.sqdist(&LazyTensor::vj(&batched)?);
    let err = f.shard(comm).sum(Axis::J).unwrap_err().to_string();
    if !err.contains("not implemented") {
        candle_core::bail!("a sharded batched reduction: unexpected error {err}");
    }
    let labels: Vec<usize> = (0..40).map(|i| i / 10).collect();
    let c = Clusters::from_labels(&labels)?;
    let near = BlockSparse::from_pairs(&c, &c, &[(0, 0), (1, 1), (2, 2), (3, 3)])?;
    let d = LazyTensor::vi(&x)?.sqdist(&LazyTensor::vj(&x)?);
    let err = d
        .with_ranges(&near)
        .shard(comm)
        .sum(Axis::J)
        .unwrap_err()
        .to_string();
    if !err.contains("not implemented") {
        candle_core::bail!("a sharded block-sparse reduction: unexpected error {err}");
    }
    Ok(())
}

/// The collectives themselves: sums, arg-max with ties, gathers of unequal blocks, broadcasts.
pub fn collectives(comm: &Comm) -> Result<()> {
    let (r, p) = (comm.rank(), comm.size());
    let mut v = vec![r as f64, 1.0];
    comm.all_reduce_sum(&mut v)?;
    let want = (p * (p - 1) / 2) as f64;
    if v != vec![want, p as f64] {
        candle_core::bail!("all_reduce_sum gave {v:?}");
    }
    // Every rank offers 1.0 except the last, which offers 2.0 with index 5 + rank; ties of the
    // others resolve to the smallest index.
    let value = if r + 1 == p && p > 1 { 2.0 } else { 1.0 };
    let got = comm.all_reduce_max_index(value, 5 + r as u64 + (1 << 40))?;
    let want = if p > 1 {
        (2.0, 5 + (p - 1) as u64 + (1 << 40))
    } else {
        (1.0, 5 + (1 << 40))
    };
    if got != want {
        candle_core::bail!("all_reduce_max_index gave {got:?}, want {want:?}");
    }
    let counts = comm.counts(10);
    let (start, len) = comm.my_block(10);
    let local: Vec<f64> = (start..start + len).map(|i| i as f64).collect();
    let all = comm.all_gather(&local, &counts)?;
    if all != (0..10).map(|i| i as f64).collect::<Vec<_>>() {
        candle_core::bail!("all_gather gave {all:?}");
    }
    let mut b = vec![r as f64; 3];
    comm.broadcast(&mut b, p - 1)?;
    if b != vec![(p - 1) as f64; 3] {
        candle_core::bail!("broadcast gave {b:?}");
    }
    Ok(())
}
