//! Second derivatives through the reductions' backward pass: Hessian-vector products of kernel
//! sums with respect to the points and second derivatives with respect to the bandwidth,
//! against closed forms and central finite differences of the first derivatives (f64).
//!
//! Candle detaches gradients unless `CANDLE_GRAD_DO_NOT_DETACH` is set when a thread first runs
//! `backward` (it is read once per thread), so every test here sets it first.

mod common;

use candle_core::{Result, Tensor, Var};
use common::*;
use lazy_kernels::{Axis, LazyTensor};

fn keep_gradient_graphs() {
    // SAFETY: the other tests of this binary run on parallel threads, but they and Candle read
    // the environment only through `std::env`, which serialises with `set_var`; no C code of
    // this binary reads it.
    unsafe { std::env::set_var("CANDLE_GRAD_DO_NOT_DETACH", "1") };
}

const STEP: f64 = 1e-6;

/// A Gaussian kernel sum problem: `L = sum_i w_i sum_j exp(-|x_i - y_j|^2 / (2 s^2)) b_j`.
struct Problem {
    x: Tensor, // (M, D)
    y: Tensor, // (N, D)
    b: Tensor, // (N, 1)
    w: Tensor, // (M,)
    s: Tensor, // (1,)
}

impl Problem {
    fn new(m: usize, n: usize, d: usize, seed: u64) -> Problem {
        let mut r = Rng(seed);
        Problem {
            x: r.tensor(&[m, d], 0., 1.),
            y: r.tensor(&[n, d], 0., 1.),
            b: r.tensor(&[n, 1], -1., 1.),
            w: r.tensor(&[m], -1., 1.),
            s: r.tensor(&[1], 0.3, 0.6),
        }
    }

    fn dims(&self) -> (usize, usize, usize) {
        let (m, d) = self.x.dims2().unwrap();
        (m, self.y.dims2().unwrap().0, d)
    }

    /// The loss through our reduction, over `axis` (the same number either way).
    fn loss(&self, x: &Tensor, s: &Tensor, axis: Axis) -> Result<Tensor> {
        let (x_i, y_j) = (LazyTensor::vi(x)?, LazyTensor::vj(&self.y)?);
        let (b_j, w_i) = (LazyTensor::vj(&self.b)?, LazyTensor::vi(&self.w)?);
        let s = LazyTensor::param(s)?;
        let k = (-x_i.sqdist(&y_j) / (2.0 * s.square())).exp();
        match axis {
            // sum_i w_i (K b)_i
            Axis::J => (k * b_j).sum(Axis::J)?.squeeze(1)?.mul(&self.w)?.sum_all(),
            // sum_j b_j (K^T w)_j
            Axis::I => (k * w_i).sum(Axis::I)?.mul(&self.b)?.sum_all(),
        }
    }

    /// `(dL/dx, dL/ds)` by one backward pass, differentiable (the graph is kept).
    fn first(&self, x: &Var, s: &Var, axis: Axis) -> (Tensor, Tensor) {
        let grads = self
            .loss(x.as_tensor(), s.as_tensor(), axis)
            .unwrap()
            .backward()
            .unwrap();
        let gx = grads.get(x.as_tensor()).expect("dL/dx").clone();
        let gs = grads.get(s.as_tensor()).expect("dL/ds").clone();
        assert_eq!(gx.dims(), x.dims());
        assert_eq!(gs.dims(), s.dims());
        (gx, gs)
    }

    /// `(dL/dx, dL/ds)` at given values, as plain numbers.
    fn first_at(&self, x: &Tensor, s: &Tensor, axis: Axis) -> (Vec<f64>, Vec<f64>) {
        let (xv, sv) = (Var::from_tensor(x).unwrap(), Var::from_tensor(s).unwrap());
        let (gx, gs) = self.first(&xv, &sv, axis);
        (flat(&gx), flat(&gs))
    }

    /// Closed forms: per pair `d = x_i - y_j`, `r = |d|^2`, `k = exp(-r / (2 s^2))`,
    /// `c = w_i b_j k`:
    /// `dL/dx_i = -sum_j c d / s^2`, `(H v)_i = sum_j c (d (d.v_i) / s^4 - v_i / s^2)`,
    /// `dL/ds = sum c r / s^3`, `d2L/ds2 = sum c (r^2 / s^6 - 3 r / s^4)`,
    /// `d2L/dx_i ds = sum_j c d (2 / s^3 - r / s^5)`.
    fn closed_forms(&self, v: &[f64]) -> ClosedForms {
        let (m, n, dd) = self.dims();
        let (x, y, b, w) = (flat(&self.x), flat(&self.y), flat(&self.b), flat(&self.w));
        let s = flat(&self.s)[0];
        let mut out = ClosedForms {
            gx: vec![0.0; m * dd],
            hv: vec![0.0; m * dd],
            gs: 0.0,
            gss: 0.0,
            gxs: vec![0.0; m * dd],
        };
        for i in 0..m {
            for j in 0..n {
                let d: Vec<f64> = (0..dd).map(|c| x[i * dd + c] - y[j * dd + c]).collect();
                let r: f64 = d.iter().map(|t| t * t).sum();
                let c = w[i] * b[j] * (-r / (2.0 * s * s)).exp();
                let dv: f64 = (0..dd).map(|k| d[k] * v[i * dd + k]).sum();
                for k in 0..dd {
                    out.gx[i * dd + k] -= c * d[k] / (s * s);
                    out.hv[i * dd + k] += c * (d[k] * dv / s.powi(4) - v[i * dd + k] / (s * s));
                    out.gxs[i * dd + k] += c * d[k] * (2.0 / s.powi(3) - r / s.powi(5));
                }
                out.gs += c * r / s.powi(3);
                out.gss += c * (r * r / s.powi(6) - 3.0 * r / s.powi(4));
            }
        }
        out
    }
}

struct ClosedForms {
    gx: Vec<f64>,
    hv: Vec<f64>,
    gs: f64,
    gss: f64,
    gxs: Vec<f64>,
}

fn scalar_like(s: &Tensor, v: f64) -> Tensor {
    Tensor::from_vec(vec![v], s.dims(), s.device()).unwrap()
}

#[test]
fn hessian_vector_product_of_a_gaussian_kernel_sum() {
    keep_gradient_graphs();
    for (m, n, d, seed) in [(9, 12, 2, 1), (14, 7, 3, 2), (6, 20, 1, 3)] {
        let p = Problem::new(m, n, d, seed);
        let v = Rng(seed + 100).tensor(&[m, d], -1., 1.);
        let want = p.closed_forms(&flat(&v));
        for axis in [Axis::J, Axis::I] {
            let what = format!("M={m} N={n} D={d} {axis:?}");
            let x = Var::from_tensor(&p.x).unwrap();
            let s = Var::from_tensor(&p.s).unwrap();
            let (gx, _) = p.first(&x, &s, axis);
            assert_close(
                &flat(&gx),
                &want.gx,
                1e-12,
                1e-13,
                &format!("{what}: gradient"),
            );

            // H v = d(sum(g * v))/dx by a second backward pass.
            let grads2 = (&gx * &v).unwrap().sum_all().unwrap().backward().unwrap();
            let hv = grads2.get(x.as_tensor()).expect("a second-order gradient");
            assert_eq!(hv.dims(), &[m, d]);
            let hv = flat(hv);
            assert_close(
                &hv,
                &want.hv,
                1e-11,
                1e-12,
                &format!("{what}: Hv, closed form"),
            );

            // Central differences of the (first-order) gradient along v.
            let h = STEP;
            let xp = (&p.x + (&v * h).unwrap()).unwrap();
            let xm = (&p.x - (&v * h).unwrap()).unwrap();
            let gp = p.first_at(&xp, &p.s, axis).0;
            let gm = p.first_at(&xm, &p.s, axis).0;
            let fd: Vec<f64> = gp
                .iter()
                .zip(&gm)
                .map(|(a, b)| (a - b) / (2.0 * h))
                .collect();
            assert_close(
                &hv,
                &fd,
                1e-6,
                1e-7,
                &format!("{what}: Hv, finite differences"),
            );
        }
    }
}

#[test]
fn second_derivatives_with_respect_to_the_bandwidth() {
    keep_gradient_graphs();
    for (m, n, d, seed) in [(9, 12, 2, 4), (5, 17, 3, 5)] {
        let p = Problem::new(m, n, d, seed);
        let want = p.closed_forms(&vec![0.0; m * d]);
        let s0 = flat(&p.s)[0];
        for axis in [Axis::J, Axis::I] {
            let what = format!("M={m} N={n} D={d} {axis:?}");
            let x = Var::from_tensor(&p.x).unwrap();
            let s = Var::from_tensor(&p.s).unwrap();
            let (_, gs) = p.first(&x, &s, axis);
            assert_close(
                &flat(&gs),
                &[want.gs],
                1e-12,
                1e-13,
                &format!("{what}: dL/ds"),
            );

            // d2L/ds2 and d2L/dx ds from one more backward pass of dL/ds.
            let grads2 = gs.sum_all().unwrap().backward().unwrap();
            let gss = grads2.get(s.as_tensor()).expect("d2L/ds2");
            assert_eq!(gss.dims(), &[1]);
            let gss = flat(gss);
            let gxs = flat(grads2.get(x.as_tensor()).expect("d2L/dx ds"));
            assert_close(&gss, &[want.gss], 1e-11, 1e-12, &format!("{what}: d2L/ds2"));
            assert_close(&gxs, &want.gxs, 1e-11, 1e-12, &format!("{what}: d2L/dx ds"));

            // Finite differences in s of the first derivatives (dL/ds and dL/dx).
            let h = STEP * s0;
            let (gxp, gsp) = p.first_at(&p.x, &scalar_like(&p.s, s0 + h), axis);
            let (gxm, gsm) = p.first_at(&p.x, &scalar_like(&p.s, s0 - h), axis);
            let fd_ss = (gsp[0] - gsm[0]) / (2.0 * h);
            let fd_xs: Vec<f64> = gxp
                .iter()
                .zip(&gxm)
                .map(|(a, b)| (a - b) / (2.0 * h))
                .collect();
            assert_close(&gss, &[fd_ss], 1e-6, 1e-7, &format!("{what}: d2L/ds2, FD"));
            assert_close(&gxs, &fd_xs, 1e-6, 1e-7, &format!("{what}: d2L/dx ds, FD"));

            // And the second difference of L itself (a reference without any gradient).
            let h2 = 1e-4 * s0;
            let l = |sv: f64| {
                p.loss(&p.x, &scalar_like(&p.s, sv), axis)
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
            };
            let fd2 = (l(s0 + h2) - 2.0 * l(s0) + l(s0 - h2)) / (h2 * h2);
            assert_close(
                &gss,
                &[fd2],
                1e-5,
                1e-5,
                &format!("{what}: d2L/ds2, second difference"),
            );
        }
    }
}

#[test]
fn hessian_vector_products_through_other_reductions() {
    // Soft-min, softmax-weighted average and hard-min energies; H v by a second backward pass
    // against central differences of the gradient. Hard-min: L = sum_i w_i min_j |x_i - y_j|^2
    // has, away from ties, the Hessian 2 w_i I in x_i and, in y_j, 2 sum_{i: j*(i) = j} w_i I.
    keep_gradient_graphs();
    let (m, n, d) = (8, 11, 2);
    let mut r = Rng(6);
    let (x0, y0) = (r.tensor(&[m, d], 0., 1.), r.tensor(&[n, d], 0., 1.));
    let (w, b) = (r.tensor(&[m], -1., 1.), r.tensor(&[n, 2], -1., 1.));
    let t = Tensor::new(&[0.05f64], x0.device()).unwrap();
    // Energies of (x, y).
    type Energy<'a> = &'a dyn Fn(&Tensor, &Tensor) -> Result<Tensor>;
    let score = |x: &Tensor, y: &Tensor| -> Result<LazyTensor> {
        Ok(-LazyTensor::vi(x)?.sqdist(&LazyTensor::vj(y)?) / LazyTensor::param(&t)?)
    };
    let softmin = |x: &Tensor, y: &Tensor| -> Result<Tensor> {
        let lse = score(x, y)?.logsumexp(Axis::J)?;
        lse.squeeze(1)?.mul(&w)?.sum_all()
    };
    let softmax = |x: &Tensor, y: &Tensor| -> Result<Tensor> {
        let b_j = LazyTensor::vj(&b)? * LazyTensor::vj(y)?.elem(0);
        let avg = score(x, y)?.sum_softmax_weight(&b_j, Axis::J)?;
        avg.sum(1)?.mul(&w)?.sum_all()
    };
    let hardmin = |x: &Tensor, y: &Tensor| -> Result<Tensor> {
        let e = LazyTensor::vi(x)?.sqdist(&LazyTensor::vj(y)?);
        e.min(Axis::J)?.squeeze(1)?.mul(&w)?.sum_all()
    };
    let energies: [(&str, Energy); 3] = [
        ("soft-min", &softmin),
        ("softmax average", &softmax),
        ("hard-min", &hardmin),
    ];
    for (name, f) in energies {
        for wrt_y in [false, true] {
            let what = format!("{name}, H v in {}", if wrt_y { "y" } else { "x" });
            let z0 = if wrt_y { &y0 } else { &x0 };
            let v = Rng(7).tensor(z0.dims(), -1., 1.);
            // The gradient in z, at z (kept differentiable when z is the given Var).
            let grad_at = |z: &Var| -> Tensor {
                let l = if wrt_y {
                    f(&x0, z.as_tensor())
                } else {
                    f(z.as_tensor(), &y0)
                };
                let g = l.unwrap().backward().unwrap();
                let g = g.get(z.as_tensor()).expect("a gradient").clone();
                assert_eq!(g.dims(), z.dims());
                g
            };
            let z = Var::from_tensor(z0).unwrap();
            let g = grad_at(&z);
            let g2 = (&g * &v).unwrap().sum_all().unwrap().backward().unwrap();
            let hv = flat(g2.get(z.as_tensor()).expect("a second-order gradient"));
            let h = STEP;
            let zp = Var::from_tensor(&(z0 + (&v * h).unwrap()).unwrap()).unwrap();
            let zm = Var::from_tensor(&(z0 - (&v * h).unwrap()).unwrap()).unwrap();
            let (gp, gm) = (flat(&grad_at(&zp)), flat(&grad_at(&zm)));
            let fd: Vec<f64> = gp
                .iter()
                .zip(&gm)
                .map(|(a, b)| (a - b) / (2.0 * h))
                .collect();
            assert_close(
                &hv,
                &fd,
                1e-6,
                1e-6,
                &format!("{what}: vs finite differences"),
            );
            if name == "hard-min" {
                let (wv, vv) = (flat(&w), flat(&v));
                let want: Vec<f64> = if wrt_y {
                    let nearest = LazyTensor::vi(&x0)
                        .unwrap()
                        .sqdist(&LazyTensor::vj(&y0).unwrap())
                        .argmin(Axis::J)
                        .unwrap();
                    let mut c = vec![0.0; n];
                    for (i, j) in flat_i64(&nearest).into_iter().enumerate() {
                        c[j as usize] += wv[i];
                    }
                    (0..n * d).map(|k| 2.0 * c[k / d] * vv[k]).collect()
                } else {
                    (0..m * d).map(|k| 2.0 * wv[k / d] * vv[k]).collect()
                };
                assert_close(&hv, &want, 1e-12, 1e-13, &format!("{what}: closed form"));
            }
        }
    }
}
