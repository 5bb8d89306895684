//! Tests of `Kernel` and `KernelOperator` against independent references.
//!
//! Every kernel matrix is recomputed here twice, without the crate:
//!
//! * densely with plain Candle ops on `(M, N, D)` tensors of pairwise differences (this one is
//!   differentiable, so Candle's autodiff through it is a reference for the gradients), and
//! * with plain `f64` loops over the pairs (`scalar_k`).
//!
//! Gradients are also checked against central finite differences of the crate's own forward
//! pass. Nothing compares the crate with itself (`to_dense` / `rows` are never a reference).

mod common;

use std::f64::consts::PI;

use candle_core::{DType, Device, Result, Tensor, Var};
use common::{Rng, assert_close, flat};
use lazy_kernels::{Kernel, KernelOperator, LazyTensor, Nu, linalg};

// ---------------------------------------------------------------------------------------------
// Independent references
// ---------------------------------------------------------------------------------------------

/// The kernel families under test.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fam {
    Gaussian,
    Laplacian,
    Matern12,
    Matern32,
    Matern52,
    /// Built with `Kernel::matern(nu, ..)`.
    MaternNu(Nu),
    RationalQuadratic,
    Periodic,
    Linear,
}

const ALL: [Fam; 11] = [
    Fam::Gaussian,
    Fam::Laplacian,
    Fam::Matern12,
    Fam::Matern32,
    Fam::Matern52,
    Fam::MaternNu(Nu::Half),
    Fam::MaternNu(Nu::ThreeHalves),
    Fam::MaternNu(Nu::FiveHalves),
    Fam::RationalQuadratic,
    Fam::Periodic,
    Fam::Linear,
];

impl Fam {
    /// `Some(3)` for Matern 3/2 etc.: the constant `2 nu` under the square root.
    fn matern(self) -> Option<u32> {
        match self {
            Fam::Laplacian | Fam::Matern12 | Fam::MaternNu(Nu::Half) => Some(1),
            Fam::Matern32 | Fam::MaternNu(Nu::ThreeHalves) => Some(3),
            Fam::Matern52 | Fam::MaternNu(Nu::FiveHalves) => Some(5),
            _ => None,
        }
    }
}

/// Hyperparameters: lengthscale, rational quadratic alpha, period.
#[derive(Clone)]
struct Hyp {
    l: Tensor,
    alpha: Tensor,
    period: Tensor,
}

fn build(f: Fam, h: &Hyp) -> Kernel {
    match f {
        Fam::Gaussian => Kernel::gaussian(&h.l),
        Fam::Laplacian => Kernel::laplacian(&h.l),
        Fam::Matern12 => Kernel::matern12(&h.l),
        Fam::Matern32 => Kernel::matern32(&h.l),
        Fam::Matern52 => Kernel::matern52(&h.l),
        Fam::MaternNu(nu) => Kernel::matern(nu, &h.l),
        Fam::RationalQuadratic => Kernel::rational_quadratic(&h.l, &h.alpha),
        Fam::Periodic => Kernel::periodic(&h.l, &h.period),
        Fam::Linear => Kernel::linear(),
    }
}

/// A `(1,)`, `()` or `(D,)` hyperparameter reshaped to broadcast against `(M, N, D)`.
fn b3(t: &Tensor) -> Result<Tensor> {
    t.reshape((1, 1, t.elem_count()))
}

/// `x_i - y_j` as an `(M, N, D)` tensor.
fn pair_diff(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    x.unsqueeze(1)?.broadcast_sub(&y.unsqueeze(0)?)
}

/// `|(x_i - y_j) / l|^2`, `(M, N)`.
fn ref_r2(x: &Tensor, y: &Tensor, l: &Tensor) -> Result<Tensor> {
    pair_diff(x, y)?.broadcast_div(&b3(l)?)?.sqr()?.sum(2)
}

/// `sqrt` whose gradient at 0 is 0 (the "double where" trick), like the crate's convention.
fn safe_sqrt(r2: &Tensor) -> Result<Tensor> {
    let zero = r2.eq(0.0)?;
    let safe = zero.where_cond(&r2.ones_like()?, r2)?;
    zero.where_cond(&r2.zeros_like()?, &safe.sqrt()?)
}

fn ref_gaussian(x: &Tensor, y: &Tensor, l: &Tensor) -> Result<Tensor> {
    (ref_r2(x, y, l)? * -0.5)?.exp()
}

/// Matern with `c = 2 nu` in {1, 3, 5}.
fn ref_matern(c: u32, x: &Tensor, y: &Tensor, l: &Tensor) -> Result<Tensor> {
    let s = (safe_sqrt(&ref_r2(x, y, l)?)? * (c as f64).sqrt())?;
    let e = s.neg()?.exp()?;
    match c {
        1 => Ok(e),
        3 => (s + 1.0)? * e,
        5 => ((&s + 1.0)? + (s.sqr()? / 3.0)?)? * e,
        _ => unreachable!(),
    }
}

fn ref_rq(x: &Tensor, y: &Tensor, l: &Tensor, alpha: &Tensor) -> Result<Tensor> {
    let a = alpha.reshape((1, 1))?;
    // (1 + r^2 / (2 a))^(-a) = exp(-a ln(1 + r^2 / (2 a)))
    let base = (ref_r2(x, y, l)?.broadcast_div(&(&a * 2.0)?)? + 1.0)?;
    base.log()?.broadcast_mul(&a)?.neg()?.exp()
}

fn ref_periodic(x: &Tensor, y: &Tensor, l: &Tensor, p: &Tensor) -> Result<Tensor> {
    let s = (pair_diff(x, y)?.broadcast_div(&b3(p)?)? * PI)?
        .sin()?
        .sqr()?;
    (s.broadcast_div(&b3(l)?.sqr()?)?.sum(2)? * -2.0)?.exp()
}

fn ref_linear(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    linalg::matmul(x, &y.t()?)
}

/// The dense `(M, N)` kernel matrix with Candle ops (x, y are `(M, D)`, `(N, D)`).
fn reference(f: Fam, h: &Hyp, x: &Tensor, y: &Tensor) -> Result<Tensor> {
    if let Some(c) = f.matern() {
        return ref_matern(c, x, y, &h.l);
    }
    match f {
        Fam::Gaussian => ref_gaussian(x, y, &h.l),
        Fam::RationalQuadratic => ref_rq(x, y, &h.l, &h.alpha),
        Fam::Periodic => ref_periodic(x, y, &h.l, &h.period),
        Fam::Linear => ref_linear(x, y),
        _ => unreachable!(),
    }
}

/// `k(x, y)` with plain f64 arithmetic (lengthscale / period of 1 or D values).
fn scalar_k(f: Fam, l: &[f64], alpha: f64, p: &[f64], x: &[f64], y: &[f64]) -> f64 {
    let pick = |v: &[f64], d: usize| if v.len() == 1 { v[0] } else { v[d] };
    let r2: f64 = (0..x.len())
        .map(|d| ((x[d] - y[d]) / pick(l, d)).powi(2))
        .sum();
    let r = r2.sqrt();
    if let Some(c) = f.matern() {
        let s = (c as f64).sqrt() * r;
        return match c {
            1 => (-s).exp(),
            3 => (1.0 + s) * (-s).exp(),
            _ => (1.0 + s + 5.0 * r2 / 3.0) * (-s).exp(),
        };
    }
    match f {
        Fam::Gaussian => (-r2 / 2.0).exp(),
        Fam::RationalQuadratic => (1.0 + r2 / (2.0 * alpha)).powf(-alpha),
        Fam::Periodic => {
            let s: f64 = (0..x.len())
                .map(|d| (PI * (x[d] - y[d]) / pick(p, d)).sin().powi(2) / pick(l, d).powi(2))
                .sum();
            (-2.0 * s).exp()
        }
        Fam::Linear => x.iter().zip(y).map(|(a, b)| a * b).sum(),
        _ => unreachable!(),
    }
}

/// The dense matrix with f64 loops, row-major `M * N`.
fn scalar_dense(f: Fam, h: &Hyp, x: &Tensor, y: &Tensor) -> Vec<f64> {
    let (l, alpha, p) = (flat(&h.l), flat(&h.alpha)[0], flat(&h.period));
    let xs = x.to_vec2::<f64>().unwrap();
    let ys = y.to_vec2::<f64>().unwrap();
    xs.iter()
        .flat_map(|xi| {
            ys.iter()
                .map(|yj| scalar_k(f, &l, alpha, &p, xi, yj))
                .collect::<Vec<_>>()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn cpu() -> Device {
    Device::Cpu
}

fn t1(v: &[f64]) -> Tensor {
    Tensor::new(v, &cpu()).unwrap()
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// `got` close to `want` elementwise: `|g - w| <= rtol (|w| + max |want|)`.
fn assert_t(got: &Tensor, want: &Tensor, rtol: f64, what: &str) {
    assert_eq!(got.dims(), want.dims(), "{what}: shapes differ");
    let w = flat(want);
    assert_close(&flat(got), &w, rtol, rtol * max_abs(&w).max(1e-300), what);
}

/// `K b` with a `(N,)` or `(N, E)` `b`, densely.
fn dense_mm(k: &Tensor, b: &Tensor) -> Result<Tensor> {
    if b.rank() == 1 {
        linalg::matmul(k, &b.unsqueeze(1)?)?.squeeze(1)
    } else {
        linalg::matmul(k, b)
    }
}

/// Checks `op.to_dense()` against the Candle reference `want` (and `scalar` loops when given),
/// and `op.matmul(b)` for `b` `(N,)` and `(N, 3)` against `want @ b`.
fn check_operator(
    op: &KernelOperator,
    want: &Tensor,
    scalar: Option<&[f64]>,
    rng: &mut Rng,
    what: &str,
) -> Result<()> {
    let (m, n) = want.dims2()?;
    assert_eq!(op.shape(), (m, n), "{what}: shape");
    let dense = op.to_dense()?;
    assert_t(
        &dense,
        want,
        1e-12,
        &format!("{what}: to_dense vs Candle reference"),
    );
    if let Some(s) = scalar {
        let scale = max_abs(s);
        assert_close(
            &flat(&dense),
            s,
            1e-12,
            1e-12 * scale,
            &format!("{what}: to_dense vs f64 loops"),
        );
    }
    for b in [rng.tensor(&[n], -1.0, 1.0), rng.tensor(&[n, 3], -1.0, 1.0)] {
        let got = op.matmul(&b)?;
        let exp = dense_mm(want, &b)?;
        assert_t(
            &got,
            &exp,
            1e-12,
            &format!("{what}: matmul b{:?}", b.dims()),
        );
    }
    Ok(())
}

/// The three lengthscale layouts of the family tests (D = 3).
fn hyp(layout: &str) -> Hyp {
    match layout {
        "iso" => Hyp {
            l: t1(&[0.8]),
            alpha: t1(&[1.7]),
            period: t1(&[1.3]),
        },
        "scalar" => Hyp {
            l: Tensor::new(0.8f64, &cpu()).unwrap(),
            alpha: Tensor::new(1.7f64, &cpu()).unwrap(),
            period: Tensor::new(1.3f64, &cpu()).unwrap(),
        },
        _ => Hyp {
            l: t1(&[0.5, 1.1, 2.3]),
            alpha: t1(&[0.6]),
            period: t1(&[0.9, 1.6, 2.5]),
        },
    }
}

fn check_all_families(layout: &str, seed: u64) -> Result<()> {
    let mut rng = Rng(seed);
    let (m, n) = (37, 23);
    let x = rng.tensor(&[m, 3], -1.0, 1.0);
    let y = rng.tensor(&[n, 3], -1.0, 1.0);
    let h = hyp(layout);
    for f in ALL {
        let op = KernelOperator::new(build(f, &h), &x, &y)?;
        let want = reference(f, &h, &x, &y)?;
        let s = scalar_dense(f, &h, &x, &y);
        check_operator(&op, &want, Some(&s), &mut rng, &format!("{f:?} ({layout})"))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 1. Each family
// ---------------------------------------------------------------------------------------------

#[test]
fn families_isotropic_lengthscale_shape_1() -> Result<()> {
    check_all_families("iso", 11)
}

#[test]
fn families_isotropic_lengthscale_scalar_tensor() -> Result<()> {
    check_all_families("scalar", 12)
}

#[test]
fn families_per_dimension_lengthscale() -> Result<()> {
    check_all_families("per_dim", 13)
}

/// Periodic with an isotropic lengthscale and a per-dimension period, and the reverse.
#[test]
fn periodic_mixed_lengthscale_and_period_shapes() -> Result<()> {
    let mut rng = Rng(14);
    let x = rng.tensor(&[19, 3], -2.0, 2.0);
    let y = rng.tensor(&[29, 3], -2.0, 2.0);
    for (l, p) in [
        (t1(&[0.7]), t1(&[0.9, 1.6, 2.5])),
        (t1(&[0.5, 1.1, 2.3]), t1(&[1.2])),
    ] {
        let h = Hyp {
            l,
            alpha: t1(&[1.0]),
            period: p,
        };
        let op = KernelOperator::new(build(Fam::Periodic, &h), &x, &y)?;
        let want = reference(Fam::Periodic, &h, &x, &y)?;
        let s = scalar_dense(Fam::Periodic, &h, &x, &y);
        check_operator(&op, &want, Some(&s), &mut rng, "periodic mixed")?;
    }
    Ok(())
}

/// Exact values at a few hand-computed pairs (a check of the references as well).
#[test]
fn hand_computed_values() -> Result<()> {
    let x = Tensor::new(&[[0f64, 0.0]], &cpu())?;
    let y = Tensor::new(&[[3f64, 4.0]], &cpu())?; // |x - y| = 5
    let l = t1(&[2.0]); // r = 2.5
    let r: f64 = 2.5;
    let val = |k: Kernel| -> Result<f64> {
        Ok(KernelOperator::new(k, &x, &y)?
            .to_dense()?
            .to_vec2::<f64>()?[0][0])
    };
    let s3 = 3f64.sqrt() * r;
    let s5 = 5f64.sqrt() * r;
    let cases = [
        (val(Kernel::gaussian(&l))?, (-r * r / 2.0).exp()),
        (val(Kernel::laplacian(&l))?, (-r).exp()),
        (val(Kernel::matern32(&l))?, (1.0 + s3) * (-s3).exp()),
        (
            val(Kernel::matern52(&l))?,
            (1.0 + s5 + 5.0 * r * r / 3.0) * (-s5).exp(),
        ),
        (
            val(Kernel::rational_quadratic(&l, &t1(&[0.5])))?,
            1.0 / (1.0 + r * r).sqrt(), // alpha = 1/2: (1 + r^2)^(-1/2)
        ),
        // sin(pi * 3 / 2) = -1, sin(pi * 4 / 2) = 0: exp(-2 * 1 / l^2)
        (
            val(Kernel::periodic(&l, &t1(&[2.0])))?,
            (-2.0f64 / 4.0).exp(),
        ),
        (val(Kernel::linear())?, 0.0),
    ];
    for (k, (got, want)) in cases.iter().enumerate() {
        assert!(
            (got - want).abs() < 1e-14,
            "case {k}: got {got}, want {want}"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. Combinations and custom formulas
// ---------------------------------------------------------------------------------------------

#[test]
fn combination_scaled_sum_times_periodic() -> Result<()> {
    let mut rng = Rng(21);
    let x = rng.tensor(&[31, 3], -1.0, 1.0);
    let y = rng.tensor(&[17, 3], -1.0, 1.0);
    let (c, lg, lm, lp, p) = (
        t1(&[1.7]),
        t1(&[0.5, 1.1, 2.3]),
        t1(&[0.9]),
        t1(&[1.4]),
        t1(&[0.9, 1.6, 2.5]),
    );
    let k = (Kernel::gaussian(&lg).scale(&c) + Kernel::matern32(&lm)) * Kernel::periodic(&lp, &p);
    let op = KernelOperator::new(k, &x, &y)?;
    let want = ((ref_gaussian(&x, &y, &lg)? * 1.7)? + ref_matern(3, &x, &y, &lm)?)?
        .mul(&ref_periodic(&x, &y, &lp, &p)?)?;
    check_operator(&op, &want, None, &mut rng, "(c G + M32) * P")
}

#[test]
fn custom_formula_inverse_multiquadric() -> Result<()> {
    let mut rng = Rng(22);
    let x = rng.tensor(&[26, 3], -1.0, 1.0);
    let y = rng.tensor(&[41, 3], -1.0, 1.0);
    let k = Kernel::from_formula(|x, y| Ok((x.sqdist(y) + 1.0).rsqrt()));
    let op = KernelOperator::new(k, &x, &y)?;
    let want = (pair_diff(&x, &y)?.sqr()?.sum(2)? + 1.0)?.sqrt()?.recip()?;
    check_operator(&op, &want, None, &mut rng, "inverse multiquadric")
}

#[test]
fn reference_operators_add_and_mul() -> Result<()> {
    let mut rng = Rng(23);
    let x = rng.tensor(&[21, 3], -1.0, 1.0);
    let y = rng.tensor(&[13, 3], -1.0, 1.0);
    let l = t1(&[0.7]);
    let g = Kernel::gaussian(&l);
    let lin = Kernel::linear();
    let m52 = Kernel::matern52(&t1(&[1.3, 0.4, 0.8]));
    let sum = &g + &lin;
    let prod = &g * &m52;
    let rg = ref_gaussian(&x, &y, &l)?;
    let want_sum = (&rg + ref_linear(&x, &y)?)?;
    let want_prod = (&rg * ref_matern(5, &x, &y, &t1(&[1.3, 0.4, 0.8]))?)?;
    check_operator(
        &KernelOperator::new(sum, &x, &y)?,
        &want_sum,
        None,
        &mut rng,
        "&G + &Lin",
    )?;
    check_operator(
        &KernelOperator::new(prod, &x, &y)?,
        &want_prod,
        None,
        &mut rng,
        "&G * &M52",
    )?;
    // The operands are still usable (borrowed, not moved).
    check_operator(
        &KernelOperator::new(g, &x, &y)?,
        &rg,
        None,
        &mut rng,
        "G after &",
    )?;
    Ok(())
}

/// `parameters()` lists every hyperparameter (scale, then the kernel's; sums left to right).
#[test]
fn parameters_are_listed() -> Result<()> {
    let (c, l1, l2, a, p) = (t1(&[2.0]), t1(&[0.5]), t1(&[0.6]), t1(&[0.7]), t1(&[0.8]));
    let k = (Kernel::gaussian(&l1).scale(&c) + Kernel::rational_quadratic(&l2, &a))
        * (Kernel::periodic(&l1, &p) + Kernel::linear());
    let got: Vec<f64> = k.parameters().iter().map(|t| flat(t)[0]).collect();
    assert_eq!(got, vec![2.0, 0.5, 0.6, 0.7, 0.5, 0.8]);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. Transpose
// ---------------------------------------------------------------------------------------------

/// A kernel formula that is not symmetric: `k(x, y) = 2 x . y + sum_d x_d`.
fn nonsymmetric() -> Kernel {
    Kernel::from_formula(|x, y| Ok(x.dot(&(y * 2.0)) + x.component_sum()))
}

fn ref_nonsymmetric(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    (linalg::matmul(x, &y.t()?)? * 2.0)?.broadcast_add(&x.sum_keepdim(1)?)
}

#[test]
fn transpose_of_nonsymmetric_formula() -> Result<()> {
    let mut rng = Rng(31);
    let (m, n) = (11, 7);
    let x = rng.tensor(&[m, 3], -1.0, 1.0);
    let y = rng.tensor(&[n, 3], -1.0, 1.0);
    let op = KernelOperator::new(nonsymmetric(), &x, &y)?;
    let want = ref_nonsymmetric(&x, &y)?; // (M, N)
    // (N, M) transpose.
    let want_t = want.t()?.contiguous()?;
    // Sanity: the operator of k between y and x is NOT the transpose here.
    let swapped = ref_nonsymmetric(&y, &x)?;
    assert!(
        (&swapped - &want_t)?.abs()?.max_all()?.to_scalar::<f64>()? > 0.1,
        "the test kernel should not be symmetric"
    );
    check_operator(&op, &want, None, &mut rng, "K")?;
    let tr = op.t();
    assert_eq!(tr.shape(), (n, m));
    assert_t(&tr.to_dense()?, &want_t, 1e-12, "t().to_dense()");
    assert_t(
        &tr.to_dense()?,
        &op.to_dense()?.t()?,
        1e-12,
        "t().to_dense() vs to_dense().t()",
    );
    check_operator(&tr, &want_t, None, &mut rng, "K^T")?;
    check_operator(&tr.t(), &want, None, &mut rng, "(K^T)^T")?;
    // diag and rows of the transpose.
    let d: Vec<f64> = (0..n)
        .map(|k| want.to_vec2::<f64>().unwrap()[k][k])
        .collect();
    assert_close(&flat(&tr.diag()?), &d, 1e-12, 1e-12, "t().diag()");
    assert_t(
        &tr.rows(&[6, 0, 6])?,
        &want_t.index_select(&Tensor::new(&[6u32, 0, 6], &cpu())?, 0)?,
        1e-12,
        "t().rows()",
    );
    Ok(())
}

#[test]
fn transpose_of_stationary_non_square() -> Result<()> {
    let mut rng = Rng(32);
    let x = rng.tensor(&[40, 3], -1.0, 1.0);
    let y = rng.tensor(&[9, 3], -1.0, 1.0);
    let h = hyp("per_dim");
    for f in [
        Fam::Gaussian,
        Fam::Matern52,
        Fam::RationalQuadratic,
        Fam::Periodic,
    ] {
        let op = KernelOperator::new(build(f, &h), &x, &y)?;
        let want_t = reference(f, &h, &x, &y)?.t()?.contiguous()?;
        check_operator(&op.t(), &want_t, None, &mut rng, &format!("{f:?}^T"))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. diag and rows
// ---------------------------------------------------------------------------------------------

#[test]
fn diag_square_stationary_is_one() -> Result<()> {
    let mut rng = Rng(41);
    let x = rng.tensor(&[15, 3], -1.0, 1.0);
    let x2 = x.copy()?; // equal values, another tensor
    let h = hyp("per_dim");
    for f in ALL.iter().filter(|f| **f != Fam::Linear) {
        for y in [&x, &x2] {
            let d = KernelOperator::new(build(*f, &h), &x, y)?.diag()?;
            assert_eq!(d.dims(), &[15]);
            assert_close(&flat(&d), &[1.0; 15], 1e-14, 1e-14, &format!("{f:?} diag"));
        }
    }
    Ok(())
}

#[test]
fn diag_square_linear_is_squared_norm() -> Result<()> {
    let mut rng = Rng(42);
    let x = rng.tensor(&[15, 3], -2.0, 2.0);
    let d = KernelOperator::new(Kernel::linear(), &x, &x)?.diag()?;
    let want: Vec<f64> = x
        .to_vec2::<f64>()?
        .iter()
        .map(|r| r.iter().map(|v| v * v).sum())
        .collect();
    assert_close(&flat(&d), &want, 1e-14, 1e-14, "linear diag");
    Ok(())
}

#[test]
fn diag_non_square_has_min_length() -> Result<()> {
    let mut rng = Rng(43);
    let h = hyp("per_dim");
    for (m, n) in [(12, 5), (5, 12)] {
        let x = rng.tensor(&[m, 3], -1.0, 1.0);
        let y = rng.tensor(&[n, 3], -1.0, 1.0);
        for f in [Fam::Gaussian, Fam::Matern32, Fam::Periodic, Fam::Linear] {
            let d = KernelOperator::new(build(f, &h), &x, &y)?.diag()?;
            assert_eq!(d.dims(), &[5], "{f:?} ({m}, {n})");
            let s = scalar_dense(f, &h, &x, &y);
            let want: Vec<f64> = (0..5).map(|k| s[k * n + k]).collect();
            assert_close(
                &flat(&d),
                &want,
                1e-12,
                1e-14,
                &format!("{f:?} diag ({m},{n})"),
            );
        }
    }
    Ok(())
}

#[test]
fn rows_selects_repeated_rows_in_order() -> Result<()> {
    let mut rng = Rng(44);
    let x = rng.tensor(&[10, 3], -1.0, 1.0);
    let y = rng.tensor(&[8, 3], -1.0, 1.0);
    let h = hyp("iso");
    let idx = [3usize, 0, 3, 9, 9, 5];
    for f in [
        Fam::Gaussian,
        Fam::Laplacian,
        Fam::RationalQuadratic,
        Fam::Linear,
    ] {
        let op = KernelOperator::new(build(f, &h), &x, &y)?;
        let got = op.rows(&idx)?;
        assert_eq!(got.dims(), &[6, 8]);
        let s = scalar_dense(f, &h, &x, &y);
        let want: Vec<f64> = idx
            .iter()
            .flat_map(|&i| s[i * 8..(i + 1) * 8].to_vec())
            .collect();
        assert_close(&flat(&got), &want, 1e-12, 1e-14, &format!("{f:?} rows"));
    }
    Ok(())
}

#[test]
fn rows_out_of_range_is_an_error() -> Result<()> {
    let mut rng = Rng(45);
    let x = rng.tensor(&[10, 3], -1.0, 1.0);
    let op = KernelOperator::new(Kernel::gaussian(&t1(&[1.0])), &x, &x.narrow(0, 0, 4)?)?;
    let err = op.rows(&[0, 10]).unwrap_err().to_string();
    assert!(err.contains("out of range"), "{err}");
    // Row 9 exists (M = 10) even though N = 4.
    assert_eq!(op.rows(&[9])?.dims(), &[1, 4]);
    assert!(op.t().rows(&[4]).is_err(), "the transpose has 4 rows");
    Ok(())
}

#[test]
fn rows_of_empty_slice_is_empty() -> Result<()> {
    let mut rng = Rng(46);
    let x = rng.tensor(&[10, 3], -1.0, 1.0);
    let y = rng.tensor(&[7, 3], -1.0, 1.0);
    let op = KernelOperator::new(Kernel::matern32(&t1(&[1.0])), &x, &y)?;
    let r = op.rows(&[])?;
    assert_eq!(r.dims(), &[0, 7]);
    assert_eq!(r.dtype(), DType::F64);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 5. f32 and 1-D points
// ---------------------------------------------------------------------------------------------

#[test]
fn f32_matches_f64() -> Result<()> {
    let mut rng = Rng(51);
    let x = rng.tensor(&[60, 3], -1.0, 1.0);
    let y = rng.tensor(&[45, 3], -1.0, 1.0);
    let b = rng.tensor(&[45, 3], -1.0, 1.0);
    let h = hyp("per_dim");
    let f32of = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
    let h32 = Hyp {
        l: f32of(&h.l),
        alpha: f32of(&h.alpha),
        period: f32of(&h.period),
    };
    for f in ALL {
        let want = dense_mm(&reference(f, &h, &x, &y)?, &b)?;
        let op = KernelOperator::new(build(f, &h32), &f32of(&x), &f32of(&y))?;
        assert_eq!(op.dtype(), DType::F32);
        let got = op.matmul(&f32of(&b))?;
        assert_eq!(got.dtype(), DType::F32);
        let err = (got.to_dtype(DType::F64)? - &want)?
            .abs()?
            .max_all()?
            .to_scalar::<f64>()?;
        let scale = want.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(
            err <= 1e-5 * scale,
            "{f:?}: f32 error {err} vs scale {scale}"
        );
        let d = op.to_dense()?;
        assert_eq!(d.dtype(), DType::F32);
    }
    Ok(())
}

#[test]
fn one_dimensional_points_as_vectors() -> Result<()> {
    let mut rng = Rng(52);
    let x = rng.tensor(&[33], -2.0, 2.0);
    let y = rng.tensor(&[21], -2.0, 2.0);
    let (x2, y2) = (x.unsqueeze(1)?, y.unsqueeze(1)?);
    for (l, p) in [
        (t1(&[0.6]), t1(&[1.1])),
        (Tensor::new(0.6f64, &cpu())?, t1(&[1.1])),
    ] {
        let h = Hyp {
            l,
            alpha: t1(&[2.5]),
            period: p,
        };
        for f in ALL {
            let op = KernelOperator::new(build(f, &h), &x, &y)?;
            let want = reference(f, &h, &x2, &y2)?;
            let s = scalar_dense(f, &h, &x2, &y2);
            check_operator(&op, &want, Some(&s), &mut rng, &format!("{f:?} 1-D"))?;
            assert_eq!(op.points().0.dims(), &[33, 1]);
        }
    }
    Ok(())
}

/// Large enough to span several tiles in both directions (2500 rows, 2500-long reductions).
#[test]
fn large_operator_matmul_and_transpose() -> Result<()> {
    let mut rng = Rng(53);
    let (m, n) = (2500, 300);
    let x = rng.tensor(&[m, 2], -1.0, 1.0);
    let y = rng.tensor(&[n, 2], -1.0, 1.0);
    let l = t1(&[0.3, 0.5]);
    let op = KernelOperator::new(Kernel::matern32(&l), &x, &y)?;
    let want = ref_matern(3, &x, &y, &l)?;
    let b = rng.tensor(&[n, 2], -1.0, 1.0);
    assert_t(
        &op.matmul(&b)?,
        &linalg::matmul(&want, &b)?,
        1e-12,
        "large K b",
    );
    let c = rng.tensor(&[m, 2], -1.0, 1.0);
    assert_t(
        &op.t().matmul(&c)?,
        &linalg::matmul(&want.t()?, &c)?,
        1e-12,
        "large K^T c",
    );
    let idx = [0usize, 1234, 2499];
    assert_t(
        &op.rows(&idx)?,
        &want.index_select(&Tensor::new(&[0u32, 1234, 2499], &cpu())?, 0)?,
        1e-12,
        "large rows",
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 6. Gradients
// ---------------------------------------------------------------------------------------------

/// A scalar loss of a list of input tensors.
type Loss<'a> = &'a dyn Fn(&[Tensor]) -> Result<Tensor>;

/// Gradients of `lazy` (the crate) with respect to every input, against central finite
/// differences of `lazy` and against Candle's autodiff of `dense` (the dense reference).
fn check_grads(
    what: &str,
    names: &[&str],
    inputs: &[Tensor],
    lazy: Loss,
    dense: Loss,
) -> Result<()> {
    assert_eq!(names.len(), inputs.len());
    let vars: Vec<Var> = inputs.iter().map(Var::from_tensor).collect::<Result<_>>()?;
    let vt: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let loss = lazy(&vt)?;
    let dloss = dense(&vt)?;
    let (lv, dv) = (loss.to_scalar::<f64>()?, dloss.to_scalar::<f64>()?);
    assert!(
        (lv - dv).abs() <= 1e-11 * dv.abs().max(1.0),
        "{what}: loss {lv} vs dense {dv}"
    );
    let grads = loss.backward()?;
    let dgrads = dloss.backward()?;
    for (i, v) in vars.iter().enumerate() {
        let name = format!("{what}: d/d{}", names[i]);
        let g = grads
            .get(v)
            .unwrap_or_else(|| panic!("{name}: no gradient"));
        assert_eq!(g.dims(), inputs[i].dims(), "{name}: gradient shape");
        let g = flat(g);
        assert!(
            g.iter().all(|v| v.is_finite()),
            "{name}: non-finite gradient {g:?}"
        );
        let gd = flat(
            dgrads
                .get(v)
                .unwrap_or_else(|| panic!("{name}: no dense gradient")),
        );
        let scale = max_abs(&gd).max(1.0);
        assert_close(
            &g,
            &gd,
            1e-9,
            1e-11 * scale,
            &format!("{name} vs dense autodiff"),
        );
        // Central finite differences of the crate's forward pass.
        let base = flat(&inputs[i]);
        let mut fd = Vec::with_capacity(base.len());
        for k in 0..base.len() {
            let h = 1e-6 * base[k].abs().max(1.0);
            let eval = |delta: f64| -> Result<f64> {
                let mut v = base.clone();
                v[k] += delta;
                let mut ins = inputs.to_vec();
                ins[i] = Tensor::from_vec(v, inputs[i].dims(), &cpu())?;
                lazy(&ins)?.to_scalar::<f64>()
            };
            fd.push((eval(h)? - eval(-h)?) / (2.0 * h));
        }
        assert_close(
            &g,
            &fd,
            1e-5,
            1e-7 * scale,
            &format!("{name} vs finite differences"),
        );
    }
    Ok(())
}

/// Gradient check of `sum((K b)^2)` for one family, with `x`, `y`, `b` and the family's
/// hyperparameters as inputs.
fn grad_family(f: Fam, h: &Hyp, seed: u64) -> Result<()> {
    let mut rng = Rng(seed);
    let x = rng.tensor(&[8, 3], -1.0, 1.0);
    let y = rng.tensor(&[6, 3], -1.0, 1.0);
    let b = rng.tensor(&[6, 2], -1.0, 1.0);
    // Inputs: x, y, b, then the hyperparameters this family uses.
    let (mut names, mut inputs) = (vec!["x", "y", "b"], vec![x, y, b]);
    match f {
        Fam::Linear => {}
        Fam::RationalQuadratic => {
            names.extend(["l", "alpha"]);
            inputs.extend([h.l.clone(), h.alpha.clone()]);
        }
        Fam::Periodic => {
            names.extend(["l", "period"]);
            inputs.extend([h.l.clone(), h.period.clone()]);
        }
        _ => {
            names.push("l");
            inputs.push(h.l.clone());
        }
    }
    let hyp_of = |t: &[Tensor]| -> Hyp {
        let mut hh = h.clone();
        match f {
            Fam::Linear => {}
            Fam::RationalQuadratic => {
                hh.l = t[3].clone();
                hh.alpha = t[4].clone();
            }
            Fam::Periodic => {
                hh.l = t[3].clone();
                hh.period = t[4].clone();
            }
            _ => hh.l = t[3].clone(),
        }
        hh
    };
    let lazy = |t: &[Tensor]| -> Result<Tensor> {
        let op = KernelOperator::new(build(f, &hyp_of(t)), &t[0], &t[1])?;
        op.matmul(&t[2])?.sqr()?.sum_all()
    };
    let dense = |t: &[Tensor]| -> Result<Tensor> {
        linalg::matmul(&reference(f, &hyp_of(t), &t[0], &t[1])?, &t[2])?
            .sqr()?
            .sum_all()
    };
    check_grads(&format!("{f:?}"), &names, &inputs, &lazy, &dense)
}

#[test]
fn grad_gaussian_isotropic_and_per_dim() -> Result<()> {
    grad_family(Fam::Gaussian, &hyp("iso"), 61)?;
    grad_family(Fam::Gaussian, &hyp("per_dim"), 62)
}

#[test]
fn grad_matern_family() -> Result<()> {
    grad_family(Fam::Laplacian, &hyp("iso"), 63)?;
    grad_family(Fam::Matern32, &hyp("per_dim"), 64)?;
    grad_family(Fam::Matern52, &hyp("scalar"), 65)?;
    grad_family(Fam::Matern52, &hyp("per_dim"), 66)
}

#[test]
fn grad_rational_quadratic_lengthscale_and_alpha() -> Result<()> {
    grad_family(Fam::RationalQuadratic, &hyp("iso"), 67)?;
    grad_family(Fam::RationalQuadratic, &hyp("per_dim"), 68)
}

#[test]
fn grad_periodic_lengthscale_and_period() -> Result<()> {
    grad_family(Fam::Periodic, &hyp("iso"), 69)?;
    grad_family(Fam::Periodic, &hyp("per_dim"), 70)
}

#[test]
fn grad_linear() -> Result<()> {
    grad_family(Fam::Linear, &hyp("iso"), 71)
}

/// Every hyperparameter of `(c G + M32) * P`, the scale included.
#[test]
fn grad_combination_with_scale() -> Result<()> {
    let mut rng = Rng(72);
    let inputs = vec![
        rng.tensor(&[7, 3], -1.0, 1.0),
        rng.tensor(&[9, 3], -1.0, 1.0),
        rng.tensor(&[9, 2], -1.0, 1.0),
        t1(&[1.7]),
        t1(&[0.5, 1.1, 2.3]),
        t1(&[0.9]),
        t1(&[1.4]),
        t1(&[0.9, 1.6, 2.5]),
    ];
    let names = ["x", "y", "b", "c", "l_gauss", "l_matern", "l_per", "period"];
    let lazy = |t: &[Tensor]| -> Result<Tensor> {
        let k = (Kernel::gaussian(&t[4]).scale(&t[3]) + Kernel::matern32(&t[5]))
            * Kernel::periodic(&t[6], &t[7]);
        KernelOperator::new(k, &t[0], &t[1])?
            .matmul(&t[2])?
            .sqr()?
            .sum_all()
    };
    let dense = |t: &[Tensor]| -> Result<Tensor> {
        let g = ref_gaussian(&t[0], &t[1], &t[4])?.broadcast_mul(&t[3].reshape((1, 1))?)?;
        let k = ((g + ref_matern(3, &t[0], &t[1], &t[5])?)?
            * ref_periodic(&t[0], &t[1], &t[6], &t[7])?)?;
        linalg::matmul(&k, &t[2])?.sqr()?.sum_all()
    };
    check_grads("combination", &names, &inputs, &lazy, &dense)
}

/// Gradients through `t().matmul` of a non-symmetric custom formula, with `b` a vector.
#[test]
fn grad_transpose_of_custom_formula() -> Result<()> {
    let mut rng = Rng(73);
    let inputs = vec![
        rng.tensor(&[7, 3], -1.0, 1.0),
        rng.tensor(&[5, 3], -1.0, 1.0),
        rng.tensor(&[7], -1.0, 1.0),
    ];
    // k(x, y) = exp(0.3 (2 x . y + sum x))
    let k = || {
        Kernel::from_formula(|x: &LazyTensor, y: &LazyTensor| {
            Ok(((x.dot(&(y * 2.0)) + x.component_sum()) * 0.3).exp())
        })
    };
    let lazy = |t: &[Tensor]| -> Result<Tensor> {
        let op = KernelOperator::new(k(), &t[0], &t[1])?;
        op.t().matmul(&t[2])?.sqr()?.sum_all()
    };
    let dense = |t: &[Tensor]| -> Result<Tensor> {
        let kd = (ref_nonsymmetric(&t[0], &t[1])? * 0.3)?.exp()?;
        dense_mm(&kd.t()?, &t[2])?.sqr()?.sum_all()
    };
    check_grads("K^T c", &["x", "y", "c"], &inputs, &lazy, &dense)
}

/// `KernelOperator::new(k, &x, &x)` with `x` a `Var`: the distance is 0 on the diagonal, and
/// the gradient must still be finite (sqrt'(0) contributes 0) and match finite differences.
fn grad_same_points(f: Fam, h: &Hyp, seed: u64) -> Result<()> {
    let mut rng = Rng(seed);
    let inputs = vec![
        rng.tensor(&[9, 3], -1.0, 1.0),
        rng.tensor(&[9, 2], -1.0, 1.0),
        h.l.clone(),
    ];
    let hyp_of = |t: &[Tensor]| Hyp {
        l: t[2].clone(),
        ..h.clone()
    };
    let lazy = |t: &[Tensor]| -> Result<Tensor> {
        let op = KernelOperator::new(build(f, &hyp_of(t)), &t[0], &t[0])?;
        op.matmul(&t[1])?.sqr()?.sum_all()
    };
    let dense = |t: &[Tensor]| -> Result<Tensor> {
        linalg::matmul(&reference(f, &hyp_of(t), &t[0], &t[0])?, &t[1])?
            .sqr()?
            .sum_all()
    };
    check_grads(
        &format!("{f:?} K(x, x)"),
        &["x", "b", "l"],
        &inputs,
        &lazy,
        &dense,
    )
}

#[test]
fn grad_laplacian_same_points_is_finite() -> Result<()> {
    grad_same_points(Fam::Laplacian, &hyp("iso"), 81)?;
    grad_same_points(Fam::Matern12, &hyp("per_dim"), 82)
}

#[test]
fn grad_matern32_and_52_same_points_are_finite() -> Result<()> {
    grad_same_points(Fam::Matern32, &hyp("iso"), 83)?;
    grad_same_points(Fam::Matern52, &hyp("per_dim"), 84)
}

#[test]
fn grad_gaussian_and_rq_same_points() -> Result<()> {
    grad_same_points(Fam::Gaussian, &hyp("per_dim"), 85)?;
    grad_same_points(Fam::RationalQuadratic, &hyp("iso"), 86)
}

// ---------------------------------------------------------------------------------------------
// 7. Errors
// ---------------------------------------------------------------------------------------------

fn err_of(r: Result<KernelOperator>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn assert_err_contains(msg: &str, words: &[&str]) {
    for w in words {
        assert!(msg.contains(w), "message {msg:?} should contain {w:?}");
    }
}

#[test]
fn error_points_of_different_dimensions() {
    let mut rng = Rng(91);
    let x = rng.tensor(&[5, 3], -1.0, 1.0);
    let y = rng.tensor(&[4, 2], -1.0, 1.0);
    let msg = err_of(KernelOperator::new(Kernel::gaussian(&t1(&[1.0])), &x, &y));
    assert_err_contains(&msg, &["KernelOperator::new", "dimensions"]);
}

#[test]
fn error_hyperparameters_of_wrong_shape() {
    let mut rng = Rng(92);
    let x = rng.tensor(&[5, 3], -1.0, 1.0);
    let l2 = t1(&[1.0, 2.0]);
    let l3 = t1(&[1.0, 2.0, 3.0]);
    let l22 = Tensor::new(&[[1f64, 2.0, 3.0]], &cpu()).unwrap(); // (1, 3): rank 2
    let one = t1(&[1.0]);
    let cases = [
        (Kernel::gaussian(&l2), "lengthscale"),
        (Kernel::matern52(&l2), "lengthscale"),
        (Kernel::gaussian(&l22), "lengthscale"),
        (Kernel::rational_quadratic(&one, &l3), "alpha"), // alpha is not per-dimension
        (Kernel::periodic(&one, &l2), "period"),
        (Kernel::linear().scale(&l3), "scale"), // a scale of 3 values
        (Kernel::linear() + Kernel::matern32(&l2), "lengthscale"), // inside a sum
    ];
    for (k, name) in cases {
        let msg = err_of(KernelOperator::new(k.clone(), &x, &x));
        assert_err_contains(&msg, &["shape", name]);
    }
}

#[test]
fn error_non_positive_hyperparameters() {
    let mut rng = Rng(93);
    let x = rng.tensor(&[5, 3], -1.0, 1.0);
    let one = t1(&[1.0]);
    let cases = [
        Kernel::gaussian(&t1(&[-0.5])),
        Kernel::gaussian(&t1(&[0.0])),
        Kernel::matern32(&t1(&[1.0, 0.0, 1.0])),
        Kernel::laplacian(&t1(&[f64::NAN])),
        Kernel::rational_quadratic(&one, &t1(&[-1.0])),
        Kernel::periodic(&one, &t1(&[0.0])),
        Kernel::linear().scale(&t1(&[-2.0])),
        Kernel::gaussian(&one) * Kernel::gaussian(&t1(&[f64::INFINITY])),
    ];
    for k in cases {
        let msg = err_of(KernelOperator::new(k.clone(), &x, &x));
        assert_err_contains(&msg, &["positive"]);
    }
}

#[test]
fn error_hyperparameter_of_another_dtype() {
    let mut rng = Rng(94);
    let x = rng.tensor(&[5, 3], -1.0, 1.0);
    let l32 = Tensor::new(&[1.0f32], &cpu()).unwrap();
    let one = t1(&[1.0]);
    for (k, name) in [
        (Kernel::gaussian(&l32), "lengthscale"),
        (Kernel::periodic(&one, &l32), "period"),
        (Kernel::rational_quadratic(&one, &l32), "alpha"),
        (Kernel::linear().scale(&l32), "scale"),
    ] {
        let msg = err_of(KernelOperator::new(k, &x, &x));
        assert_err_contains(&msg, &["dtype", name]);
    }
    // And f64 hyperparameters with f32 points.
    let x32 = x.to_dtype(DType::F32).unwrap();
    let msg = err_of(KernelOperator::new(Kernel::matern32(&one), &x32, &x32));
    assert_err_contains(&msg, &["dtype"]);
}

#[test]
fn error_points_of_different_dtypes() {
    let mut rng = Rng(95);
    let x = rng.tensor(&[5, 3], -1.0, 1.0);
    let y = x.to_dtype(DType::F32).unwrap();
    let msg = err_of(KernelOperator::new(Kernel::linear(), &x, &y));
    assert_err_contains(&msg, &["dtype"]);
}

#[test]
fn error_integer_points() {
    let xu = Tensor::new(&[[1u32, 2, 3], [4, 5, 6]], &cpu()).unwrap();
    let xi = Tensor::new(&[[1i64, 2, 3], [4, 5, 6]], &cpu()).unwrap();
    for x in [xu, xi] {
        let msg = err_of(KernelOperator::new(Kernel::linear(), &x, &x));
        assert_err_contains(&msg, &["float"]);
    }
}

#[test]
fn error_empty_or_badly_shaped_points() {
    let l = t1(&[1.0]);
    let empty = Tensor::zeros((0, 3), DType::F64, &cpu()).unwrap();
    let ok = Tensor::ones((4, 3), DType::F64, &cpu()).unwrap();
    let rank3 = Tensor::ones((2, 2, 3), DType::F64, &cpu()).unwrap();
    for (x, y) in [(&empty, &ok), (&ok, &empty), (&rank3, &rank3)] {
        let msg = err_of(KernelOperator::new(Kernel::gaussian(&l), x, y));
        assert_err_contains(&msg, &["shape"]);
    }
}

#[test]
fn error_b_with_wrong_rows_or_rank() -> Result<()> {
    let mut rng = Rng(96);
    let x = rng.tensor(&[6, 3], -1.0, 1.0);
    let y = rng.tensor(&[4, 3], -1.0, 1.0);
    let op = KernelOperator::new(Kernel::gaussian(&t1(&[1.0])), &x, &y)?;
    for b in [rng.tensor(&[6], -1.0, 1.0), rng.tensor(&[5, 2], -1.0, 1.0)] {
        let msg = op.matmul(&b).unwrap_err().to_string();
        assert_err_contains(&msg, &["KernelOperator::matmul", "rows"]);
    }
    // The transpose needs M = 6 rows.
    assert!(op.t().matmul(&rng.tensor(&[4], -1.0, 1.0)).is_err());
    assert_eq!(op.t().matmul(&rng.tensor(&[6], -1.0, 1.0))?.dims(), &[4]);
    let msg = op
        .matmul(&rng.tensor(&[4, 2, 1], -1.0, 1.0))
        .unwrap_err()
        .to_string();
    assert_err_contains(&msg, &["shape"]);
    Ok(())
}

#[test]
fn error_custom_formula_with_two_components() {
    let mut rng = Rng(97);
    let x = rng.tensor(&[5, 2], -1.0, 1.0);
    let y = rng.tensor(&[3, 2], -1.0, 1.0);
    let k = Kernel::from_formula(|x, y| Ok(x - y)); // 2 components
    let msg = err_of(KernelOperator::new(k, &x, &y));
    assert_err_contains(&msg, &["component"]);
    // Inside a sum too.
    let k = Kernel::linear() + Kernel::from_formula(|x, _| Ok(x.clone()));
    let msg = err_of(KernelOperator::new(k, &x, &y));
    assert_err_contains(&msg, &["component"]);
}

// ---------------------------------------------------------------------------------------------
// 5. LazyTensor as a symbolic matrix: matmul, t, from_lazy
// ---------------------------------------------------------------------------------------------

/// The non-symmetric formula of [`nonsymmetric`], written with `LazyTensor`s:
/// `K_ij = 2 x_i . y_j + sum_d x_id`.
fn lazy_nonsymmetric(x: &Tensor, y: &Tensor) -> Result<LazyTensor> {
    let (x_i, y_j) = (LazyTensor::vi(x)?, LazyTensor::vj(y)?);
    Ok(x_i.dot(&(y_j * 2.0)) + x_i.component_sum())
}

#[test]
fn lazy_matmul_and_transpose_match_dense() -> Result<()> {
    let mut rng = Rng(51);
    let (m, n) = (11, 7);
    let x = rng.tensor(&[m, 3], -1.0, 1.0);
    let y = rng.tensor(&[n, 3], -1.0, 1.0);
    let k = lazy_nonsymmetric(&x, &y)?;
    let want = ref_nonsymmetric(&x, &y)?; // (M, N)
    let want_t = want.t()?.contiguous()?;
    assert_eq!(k.shape()?, (m, n));
    assert_eq!(k.t().shape()?, (n, m));
    for (b, c) in [
        (rng.tensor(&[n], -1.0, 1.0), rng.tensor(&[m], -1.0, 1.0)),
        (
            rng.tensor(&[n, 3], -1.0, 1.0),
            rng.tensor(&[m, 2], -1.0, 1.0),
        ),
    ] {
        let what = format!("b{:?}", b.dims());
        assert_t(&k.matmul(&b)?, &dense_mm(&want, &b)?, 1e-12, &what);
        assert_t(&k.t().matmul(&c)?, &dense_mm(&want_t, &c)?, 1e-12, "K^T c");
        assert_t(
            &k.t().t().matmul(&b)?,
            &dense_mm(&want, &b)?,
            1e-12,
            "(K^T)^T b",
        );
    }
    // The operator of the same formula: every method against the dense reference.
    let op = KernelOperator::from_lazy(&k)?;
    check_operator(&op, &want, None, &mut rng, "from_lazy")?;
    check_operator(&op.t(), &want_t, None, &mut rng, "from_lazy(K)^T")?;
    check_operator(
        &KernelOperator::from_lazy(&k.t())?,
        &want_t,
        None,
        &mut rng,
        "from_lazy(K^T)",
    )?;
    assert_t(
        &op.rows(&[10, 0])?,
        &want.index_select(&Tensor::new(&[10u32, 0], &cpu())?, 0)?,
        1e-12,
        "from_lazy rows",
    );
    Ok(())
}

#[test]
fn lazy_matmul_gradients_match_dense_autodiff() -> Result<()> {
    let mut rng = Rng(52);
    let (m, n) = (9, 13);
    let x = Var::from_tensor(&rng.tensor(&[m, 2], -1.0, 1.0))?;
    let y = Var::from_tensor(&rng.tensor(&[n, 2], -1.0, 1.0))?;
    let b = Var::from_tensor(&rng.tensor(&[n, 2], -1.0, 1.0))?;
    let s = Var::from_tensor(&t1(&[0.7]))?;
    let w = rng.tensor(&[m, 2], -1.0, 1.0);
    // K_ij = exp(-|x_i - y_j|^2 / (2 s^2)) through the LazyTensor API ...
    let (x_i, y_j) = (
        LazyTensor::vi(x.as_tensor())?,
        LazyTensor::vj(y.as_tensor())?,
    );
    let sp = LazyTensor::param(s.as_tensor())?;
    let k = (-x_i.sqdist(&y_j) / (2.0 * sp.square())).exp();
    let loss = (k.matmul(b.as_tensor())? * &w)?.sum_all()?;
    let got = loss.backward()?;
    // ... and densely with Candle ops.
    let s2 = (s.as_tensor().sqr()? * 2.0)?;
    let kd = pair_diff(x.as_tensor(), y.as_tensor())?
        .sqr()?
        .sum(2)?
        .broadcast_div(&s2)?
        .neg()?
        .exp()?;
    let dense_loss = (linalg::matmul(&kd, b.as_tensor())? * &w)?.sum_all()?;
    let want = dense_loss.backward()?;
    assert_close(
        &[loss.to_scalar::<f64>()?],
        &[dense_loss.to_scalar::<f64>()?],
        1e-12,
        1e-12,
        "loss",
    );
    for (v, name) in [(&x, "x"), (&y, "y"), (&b, "b"), (&s, "s")] {
        let g = got.get(v).expect("a gradient");
        let d = want.get(v).expect("a dense gradient");
        assert_t(g, d, 1e-10, &format!("d loss / d {name}"));
    }
    Ok(())
}

#[test]
fn lazy_matrix_misuse_is_an_error() -> Result<()> {
    let mut rng = Rng(53);
    let x = rng.tensor(&[6, 3], -1.0, 1.0);
    let y = rng.tensor(&[4, 3], -1.0, 1.0);
    let (x_i, y_j) = (LazyTensor::vi(&x)?, LazyTensor::vj(&y)?);
    let msg = |r: Result<Tensor>| r.unwrap_err().to_string();
    // Three components are not a matrix.
    let e = msg((&x_i - &y_j).matmul(&t1(&[1.0, 2.0, 3.0, 4.0])));
    assert!(e.contains("one component, this one has 3"), "{e}");
    // b with the wrong number of rows.
    let e = msg(x_i.sqdist(&y_j).matmul(&t1(&[1.0, 2.0])));
    assert!(e.contains("N = 4"), "{e}");
    // No j-variable: no columns.
    let e = x_i.sqnorm2().shape().unwrap_err().to_string();
    assert!(e.contains("j-variable"), "{e}");
    // A deferred error surfaces at matmul, naming the op.
    let bad = LazyTensor::vj(&rng.tensor(&[4, 2], -1.0, 1.0))?;
    let e = msg(x_i.sqdist(&bad).exp().matmul(&t1(&[1.0; 4])));
    assert!(e.contains("SqDist"), "{e}");
    // i-variables of different lengths.
    let x2 = LazyTensor::vi(&rng.tensor(&[5, 3], -1.0, 1.0))?;
    let e = (x_i.sqdist(&y_j) + x2.sqdist(&y_j))
        .shape()
        .unwrap_err()
        .to_string();
    assert!(e.contains("different numbers of rows"), "{e}");
    // from_lazy takes exactly one i-variable and one j-variable.
    let x_i2 = LazyTensor::vi(&x)?; // the same tensor, a second variable
    let e = KernelOperator::from_lazy(&(x_i.sqdist(&y_j) + x_i2.sqdist(&y_j)))
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(e.contains("exactly one i-variable"), "{e}");
    Ok(())
}
