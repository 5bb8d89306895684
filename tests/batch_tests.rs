//! Batch dimensions: variables bound to `(B, M, D)` and `(B, N, D)` tensors and parameters per
//! batch (`LazyTensor::param_batched`), reduced into `(B, R, E)`. References: the same formula
//! on each batch alone (the unbatched path, itself tested against dense computations), and for
//! the Gaussian sum a dense `f64` computation with Candle ops (values and autodiff gradients).

mod common;

use candle_core::{DType, Result, Tensor, Var};
use common::{Rng, assert_close, flat, flat_i64};
use lazy_kernels::{Axis, LazyTensor, ReductionKind, SolveOptions};

const B: usize = 3;

/// `exp(-|x_i - y_j|^2 / (2 s^2)) * b_j` with `x`, `y`, `b` and `s` bound as given.
fn gaussian(x: &LazyTensor, y: &LazyTensor, s: &LazyTensor, b: &LazyTensor) -> LazyTensor {
    (-x.sqdist(y) / (2.0 * s.square())).exp() * b
}

/// Batch `k` of a tensor bound batched (`(B, ..)`), or the tensor itself when shared.
fn batch_of(t: &Tensor, k: usize) -> Result<Tensor> {
    if t.rank() == 3 {
        t.get(if t.dim(0)? == 1 { 0 } else { k })
    } else {
        Ok(t.clone())
    }
}

/// The batched reduction of `kind` over `axis` against the same reduction on each batch alone:
/// `x`, `y`, `b` are `(B or 1, rows, D)` or unbatched, `s` is `(B, 1)`.
fn check_per_batch(
    x: &Tensor,
    y: &Tensor,
    b: &Tensor,
    s: &Tensor,
    kind: ReductionKind,
    axis: Axis,
    what: &str,
) -> Result<()> {
    let f = gaussian(
        &LazyTensor::vi(x)?,
        &LazyTensor::vj(y)?,
        &LazyTensor::param_batched(s)?,
        &LazyTensor::vj(b)?,
    );
    let kind_f = match kind {
        // SumSoftMaxWeight reduces Concat(score, values).
        ReductionKind::SumSoftMaxWeight => {
            let (x_i, y_j) = (LazyTensor::vi(x)?, LazyTensor::vj(y)?);
            (-x_i.sqdist(&y_j)).concat(&LazyTensor::vj(b)?)
        }
        _ => f,
    };
    let got = kind_f.reduce(kind, axis)?;
    for k in 0..B {
        let (xk, yk, bk) = (batch_of(x, k)?, batch_of(y, k)?, batch_of(b, k)?);
        let sk = s.get(k)?;
        let fk = match kind {
            ReductionKind::SumSoftMaxWeight => {
                let (x_i, y_j) = (LazyTensor::vi(&xk)?, LazyTensor::vj(&yk)?);
                (-x_i.sqdist(&y_j)).concat(&LazyTensor::vj(&bk)?)
            }
            _ => gaussian(
                &LazyTensor::vi(&xk)?,
                &LazyTensor::vj(&yk)?,
                &LazyTensor::param(&sk)?,
                &LazyTensor::vj(&bk)?,
            ),
        };
        let want = fk.reduce(kind, axis)?;
        let what = format!("{what} {kind:?} {axis:?} batch {k}");
        match (&got.values, &want.values) {
            (Some(g), Some(w)) => {
                let g = g.get(k)?;
                assert_eq!(g.dims(), w.dims(), "{what}: shape");
                assert_close(&flat(&g), &flat(w), 1e-12, 1e-300, &what);
            }
            (None, None) => {}
            _ => panic!("{what}: values present in one result only"),
        }
        match (&got.indices, &want.indices) {
            (Some(g), Some(w)) => {
                assert_eq!(flat_i64(&g.get(k)?), flat_i64(w), "{what}: indices")
            }
            (None, None) => {}
            _ => panic!("{what}: indices present in one result only"),
        }
    }
    Ok(())
}

fn kinds() -> Vec<ReductionKind> {
    vec![
        ReductionKind::Sum,
        ReductionKind::LogSumExp,
        ReductionKind::SumSoftMaxWeight,
        ReductionKind::Min,
        ReductionKind::MaxArgMax,
        ReductionKind::ArgMin,
        ReductionKind::KMinArgKMin(3),
        ReductionKind::ArgKMin(20), // more slots than terms: -1 padding stays -1
    ]
}

#[test]
fn every_kind_both_axes_matches_each_batch_alone() -> Result<()> {
    let mut r = Rng(1);
    let (m, n) = (17, 12);
    let x = r.tensor(&[B, m, 2], 0.0, 1.0);
    let y = r.tensor(&[B, n, 2], 0.0, 1.0);
    let b = r.tensor(&[B, n, 1], 0.5, 1.5);
    let s = r.tensor(&[B, 1], 0.2, 0.6);
    for kind in kinds() {
        for axis in [Axis::J, Axis::I] {
            // Over i, b_j (a j-variable) is a factor of each term: still per batch.
            check_per_batch(&x, &y, &b, &s, kind, axis, "all batched")?;
        }
    }
    Ok(())
}

#[test]
fn batches_of_one_and_unbatched_variables_are_shared() -> Result<()> {
    let mut r = Rng(2);
    let (m, n) = (9, 14);
    let xb = r.tensor(&[B, m, 2], 0.0, 1.0);
    let yb = r.tensor(&[B, n, 2], 0.0, 1.0);
    let bb = r.tensor(&[B, n, 1], 0.5, 1.5);
    let x1 = r.tensor(&[1, m, 2], 0.0, 1.0);
    let xu = r.tensor(&[m, 2], 0.0, 1.0);
    let yu = r.tensor(&[n, 2], 0.0, 1.0);
    let bu = r.tensor(&[n, 1], 0.5, 1.5);
    let s = r.tensor(&[B, 1], 0.2, 0.6);
    for kind in [
        ReductionKind::Sum,
        ReductionKind::ArgKMin(2),
        ReductionKind::LogSumExp,
    ] {
        for axis in [Axis::J, Axis::I] {
            check_per_batch(&x1, &yb, &bb, &s, kind, axis, "x batch of 1")?;
            check_per_batch(&xu, &yb, &bb, &s, kind, axis, "x unbatched")?;
            // The j-variables shared: over j they are not copied (one column range).
            check_per_batch(&xb, &yu, &bu, &s, kind, axis, "y, b unbatched")?;
        }
    }
    Ok(())
}

/// The Gaussian sum `(B, M, E)` densely with Candle ops: `(B, M, N, D)` differences.
fn dense_sum(x: &Tensor, y: &Tensor, s: &Tensor, b: &Tensor) -> Result<Tensor> {
    let d2 = x
        .unsqueeze(2)?
        .broadcast_sub(&y.unsqueeze(1)?)?
        .sqr()?
        .sum(3)?; // (B, M, N)
    let s2 = (s.sqr()? * 2.0)?.unsqueeze(2)?; // (B, 1, 1)
    let k = d2.broadcast_div(&s2)?.neg()?.exp()?;
    lazy_kernels::linalg::matmul(&k, b) // (B, M, E)
}

#[test]
fn gaussian_sum_and_gradients_match_dense_autodiff() -> Result<()> {
    let mut r = Rng(3);
    let (m, n) = (11, 8);
    let x = Var::from_tensor(&r.tensor(&[B, m, 3], 0.0, 1.0))?;
    let y = Var::from_tensor(&r.tensor(&[B, n, 3], 0.0, 1.0))?;
    let b = Var::from_tensor(&r.tensor(&[B, n, 2], -1.0, 1.0))?;
    let s = Var::from_tensor(&r.tensor(&[B, 1], 0.3, 0.7))?;
    let w = r.tensor(&[B, m, 2], -1.0, 1.0);
    let out = gaussian(
        &LazyTensor::vi(x.as_tensor())?,
        &LazyTensor::vj(y.as_tensor())?,
        &LazyTensor::param_batched(s.as_tensor())?,
        &LazyTensor::vj(b.as_tensor())?,
    )
    .sum(Axis::J)?;
    let want = dense_sum(x.as_tensor(), y.as_tensor(), s.as_tensor(), b.as_tensor())?;
    assert_eq!(out.dims(), &[B, m, 2]);
    assert_close(&flat(&out), &flat(&want), 1e-12, 1e-14, "values");
    let g = (out * &w)?.sum_all()?.backward()?;
    let gd = (want * &w)?.sum_all()?.backward()?;
    for (v, name) in [(&x, "x"), (&y, "y"), (&b, "b"), (&s, "s")] {
        let (got, want) = (g.get(v).expect("grad"), gd.get(v).expect("dense grad"));
        assert_eq!(got.dims(), v.dims(), "{name}: gradient shape");
        assert_close(&flat(got), &flat(want), 1e-10, 1e-12, &format!("d/d{name}"));
    }
    // The same through matmul: K b with K batched and b (B, N, E).
    let (x_i, y_j) = (
        LazyTensor::vi(x.as_tensor())?,
        LazyTensor::vj(y.as_tensor())?,
    );
    let k = (-x_i.sqdist(&y_j) / (2.0 * LazyTensor::param_batched(s.as_tensor())?.square())).exp();
    let kb = k.matmul(b.as_tensor())?;
    let want = dense_sum(x.as_tensor(), y.as_tensor(), s.as_tensor(), b.as_tensor())?;
    assert_close(&flat(&kb), &flat(&want), 1e-12, 1e-14, "matmul");
    // b shared by the batches, as a vector: (B, M).
    let bv = r.tensor(&[n], -1.0, 1.0);
    let kbv = k.matmul(&bv)?;
    assert_eq!(kbv.dims(), &[B, m]);
    let bvb = bv
        .reshape((1, n, 1))?
        .broadcast_as((B, n, 1))?
        .contiguous()?;
    let want = dense_sum(x.as_tensor(), y.as_tensor(), s.as_tensor(), &bvb)?.squeeze(2)?;
    assert_close(
        &flat(&kbv),
        &flat(&want),
        1e-12,
        1e-14,
        "matmul, shared vector b",
    );
    // pointwise of a batched formula of i-variables only: (B, M, 1).
    let p = (LazyTensor::vi(x.as_tensor())?.sqnorm2() * LazyTensor::param_batched(s.as_tensor())?)
        .pointwise()?;
    let want = x
        .as_tensor()
        .sqr()?
        .sum_keepdim(2)?
        .broadcast_mul(&s.as_tensor().unsqueeze(1)?)?;
    assert_close(&flat(&p), &flat(&want), 1e-14, 1e-300, "pointwise");
    Ok(())
}

#[test]
fn f32_batches_match_each_batch_alone() -> Result<()> {
    let mut r = Rng(4);
    let x = r.tensor(&[B, 40, 3], 0.0, 1.0).to_dtype(DType::F32)?;
    let y = r.tensor(&[B, 30, 3], 0.0, 1.0).to_dtype(DType::F32)?;
    let (x_i, y_j) = (LazyTensor::vi(&x)?, LazyTensor::vj(&y)?);
    let nn = x_i.sqdist(&y_j).argkmin(4, Axis::J)?;
    assert_eq!(nn.dims(), &[B, 40, 4]);
    for k in 0..B {
        let alone = LazyTensor::vi(&x.get(k)?)?
            .sqdist(&LazyTensor::vj(&y.get(k)?)?)
            .argkmin(4, Axis::J)?;
        assert_eq!(flat_i64(&nn.get(k)?), flat_i64(&alone), "batch {k}");
    }
    Ok(())
}

#[test]
fn batch_misuse_is_an_error() -> Result<()> {
    let mut r = Rng(5);
    let x = r.tensor(&[3, 10, 2], 0.0, 1.0);
    let y = r.tensor(&[2, 8, 2], 0.0, 1.0);
    let msg = |e: candle_core::Error| e.to_string();
    let (x_i, y_j) = (LazyTensor::vi(&x)?, LazyTensor::vj(&y)?);
    let e = msg(x_i.sqdist(&y_j).sum(Axis::J).unwrap_err());
    assert!(e.contains("2 and 3 batches"), "{e}");
    // Rows per batch that differ between i-variables.
    let x2 = LazyTensor::vi(&r.tensor(&[3, 9, 2], 0.0, 1.0))?;
    let y3 = LazyTensor::vj(&r.tensor(&[3, 8, 2], 0.0, 1.0))?;
    let e = msg((x_i.sqdist(&y3) + x2.sqdist(&y3)).sum(Axis::J).unwrap_err());
    assert!(
        e.contains("9 and 10 rows per batch") || e.contains("10 and 9"),
        "{e}"
    );
    // Parameters per batch must be (B, P).
    let e = msg(LazyTensor::param_batched(&r.tensor(&[3], 0.0, 1.0)).unwrap_err());
    assert!(e.contains("(B, P)"), "{e}");
    // A batched formula is B matrices: no single shape, no solve yet.
    let k = (-x_i.sqdist(&LazyTensor::vj(&x)?)).exp();
    assert!(msg(k.shape().unwrap_err()).contains("batched"));
    let b = r.tensor(&[3, 10, 1], 0.0, 1.0);
    let e = msg(k.solve(&b, 0.1, &SolveOptions::default()).unwrap_err());
    assert!(e.contains("batched"), "{e}");
    // A 4-D tensor is no variable.
    let e = msg(LazyTensor::vi(&r.tensor(&[2, 3, 10, 2], 0.0, 1.0)).unwrap_err());
    assert!(e.contains("(B, rows, dim)"), "{e}");
    Ok(())
}
