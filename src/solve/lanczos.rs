//! Stochastic Lanczos quadrature: `z^T log(A) z` from the coefficients of a conjugate-gradient
//! run on `A x = z`.
//!
//! CG on `A` from `x0 = 0` is the Lanczos process on `A` with start vector `z / |z|`: its step
//! sizes `alpha_k` and ratios `beta_k` give the Lanczos tridiagonal `T` (diagonal
//! `1/alpha_k + beta_{k-1}/alpha_{k-1}`, off-diagonal `sqrt(beta_k)/alpha_k`), and
//! `z^T f(A) z ~ |z|^2 e1^T f(T) e1 = |z|^2 sum_j tau_j^2 f(theta_j)` (Gauss quadrature), with
//! `theta_j` the eigenvalues of `T` and `tau_j` the first components of its eigenvectors. With a
//! preconditioner `M`, PCG is Lanczos on `M^-1/2 A M^-1/2` from `M^-1/2 z`, whose squared
//! norm is `z^T M^-1 z`.

use candle_core::{DType, Tensor};

use super::cg::{Coefficients, SpdOperator};
use super::host_read;
use crate::linalg::matmul;

/// `e1^T log(T) e1` for the tridiagonal `T` of the first `max_steps` CG coefficients (`None`
/// when there is no step, or `T` has a non-positive eigenvalue).
pub(crate) fn log_quadrature(c: &Coefficients, max_steps: usize) -> Option<f64> {
    let k = c.steps.len().min(max_steps);
    if k == 0 {
        return None;
    }
    let mut diag = Vec::with_capacity(k);
    let mut off = Vec::with_capacity(k);
    for j in 0..k {
        let a = c.steps[j];
        let mut t = 1.0 / a;
        if j > 0 {
            t += c.ratios[j - 1] / c.steps[j - 1];
        }
        diag.push(t);
        if j + 1 < k {
            off.push(c.ratios[j].sqrt() / a);
        }
    }
    let (theta, tau) = tridiagonal_eigen(diag, &off);
    let mut q = 0.0;
    for (t, w) in theta.iter().zip(&tau) {
        if t.is_nan() || *t <= 0.0 {
            return None;
        }
        q += w * w * t.ln();
    }
    Some(q)
}

/// Eigenvalues of the symmetric tridiagonal matrix with diagonal `d` and off-diagonal `e`
/// (`e[i]` couples `i` and `i + 1`), and the first component of each unit eigenvector: the
/// implicit QL algorithm with Wilkinson shifts (EISPACK's `tql2`), accumulating only the first
/// row of the eigenvector matrix.
pub(crate) fn tridiagonal_eigen(mut d: Vec<f64>, e_in: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let n = d.len();
    let mut e = vec![0.0; n];
    e[..n.saturating_sub(1)].copy_from_slice(&e_in[..n.saturating_sub(1)]);
    let mut z = vec![0.0; n];
    if n > 0 {
        z[0] = 1.0;
    }
    let eps = f64::EPSILON;
    let mut f = 0.0;
    let mut tst1: f64 = 0.0;
    for l in 0..n {
        tst1 = tst1.max(d[l].abs() + e[l].abs());
        let mut m = l;
        while m + 1 < n && e[m].abs() > eps * tst1 {
            m += 1;
        }
        if m > l {
            // At most 50 sweeps per eigenvalue: convergence is cubic, a handful suffice.
            for _ in 0..50 {
                let g = d[l];
                let mut p = (d[l + 1] - g) / (2.0 * e[l]);
                let mut r = p.hypot(1.0);
                if p < 0.0 {
                    r = -r;
                }
                d[l] = e[l] / (p + r);
                d[l + 1] = e[l] * (p + r);
                let dl1 = d[l + 1];
                let h = g - d[l];
                for di in d.iter_mut().skip(l + 2) {
                    *di -= h;
                }
                f += h;
                p = d[m];
                let (mut c, mut c2, mut c3) = (1.0, 1.0, 1.0);
                let el1 = e[l + 1];
                let (mut s, mut s2) = (0.0, 0.0);
                for i in (l..m).rev() {
                    c3 = c2;
                    c2 = c;
                    s2 = s;
                    let g = c * e[i];
                    let h = c * p;
                    r = p.hypot(e[i]);
                    e[i + 1] = s * r;
                    s = e[i] / r;
                    c = p / r;
                    p = c * d[i] - s * g;
                    d[i + 1] = h + s * (c * g + s * d[i]);
                    let zh = z[i + 1];
                    z[i + 1] = s * z[i] + c * zh;
                    z[i] = c * z[i] - s * zh;
                }
                p = -s * s2 * c3 * el1 * e[l] / dl1;
                e[l] = s * p;
                d[l] = c * p;
                if e[l].abs() <= eps * tst1 {
                    break;
                }
            }
        }
        d[l] += f;
        e[l] = 0.0;
    }
    (d, z)
}

/// Columns of the Lanczos basis gathered into one block (one matrix product per block in the
/// reorthogonalisation).
const BASIS_BLOCK: usize = 32;

/// The Lanczos process with full reorthogonalisation on an SPD operator `A` (`(N, 1)` `f64`
/// vectors): after `j` steps, `A Q_j = Q_j T_j + beta_j q_{j+1} e_j^T` with `Q_j` orthonormal
/// to rounding (each new vector is orthogonalised twice against every earlier one, "twice is
/// enough") and `T_j` tridiagonal with diagonal `alpha` and off-diagonal `beta`.
///
/// Memory: the basis, `N j` numbers. Work per step: one product with `A` and `O(N j)`.
pub(crate) struct Lanczos<'a> {
    op: &'a dyn SpdOperator,
    /// Finished blocks of the basis, `(N, BASIS_BLOCK)` each.
    blocks: Vec<Tensor>,
    /// Basis vectors not yet in a block, `(N, 1)` each.
    pending: Vec<Tensor>,
    /// The next basis vector `q_{j+1}` (`None` once the Krylov space is exhausted).
    next: Option<Tensor>,
    /// `q_j`, the last vector of the basis.
    last: Option<Tensor>,
    /// Diagonal of `T`.
    pub alpha: Vec<f64>,
    /// Off-diagonal of `T` (`beta[j]` couples steps `j` and `j + 1`).
    pub beta: Vec<f64>,
    /// `|A q|` of the first step, the scale under which a `beta` is an exhausted space.
    scale: f64,
}

impl<'a> Lanczos<'a> {
    /// Starts from `start / |start|` (`(N, 1)`, any float dtype, non-zero).
    pub(crate) fn new(op: &'a dyn SpdOperator, start: &Tensor) -> candle_core::Result<Self> {
        let start = start.to_dtype(DType::F64)?;
        let norm = host_read(start.sqr()?.sum_all()?.to_scalar::<f64>())?.sqrt();
        if !(norm.is_finite() && norm > 0.0) {
            candle_core::bail!("Lanczos: the start vector has norm {norm}");
        }
        Ok(Lanczos {
            op,
            blocks: Vec::new(),
            pending: Vec::new(),
            next: Some((start / norm)?),
            last: None,
            alpha: Vec::new(),
            beta: Vec::new(),
            scale: 0.0,
        })
    }

    /// Steps taken (the size of `T` and of the basis).
    pub(crate) fn steps(&self) -> usize {
        self.alpha.len()
    }

    /// Whether the Krylov space is exhausted: `A` maps the basis into itself (to rounding), so
    /// `T` is exact on it and no step is left.
    pub(crate) fn exhausted(&self) -> bool {
        self.next.is_none()
    }

    /// `w - Q (Q^T w)` over the whole basis.
    fn orthogonalise(&self, mut w: Tensor) -> candle_core::Result<Tensor> {
        for b in &self.blocks {
            let c = matmul(&b.t()?, &w)?;
            w = (w - matmul(b, &c)?)?;
        }
        if !self.pending.is_empty() {
            let p = Tensor::cat(&self.pending, 1)?;
            let c = matmul(&p.t()?, &w)?;
            w = (w - matmul(&p, &c)?)?;
        }
        Ok(w)
    }

    /// One step: appends `q_j` to the basis and returns it with `alpha_j`, or `None` once the
    /// space is exhausted.
    pub(crate) fn step(&mut self) -> candle_core::Result<Option<(Tensor, f64)>> {
        let q = match self.next.take() {
            None => return Ok(None),
            Some(q) => q,
        };
        let mut w = self.op.apply(&q)?;
        let a = host_read((&q * &w)?.sum_all()?.to_scalar::<f64>())?;
        if !a.is_finite() || a <= 0.0 {
            candle_core::bail!(
                "Lanczos: q^T A q = {a} at step {}: the operator is not positive definite",
                self.steps()
            );
        }
        w = (w - (&q * a)?)?;
        if let (Some(prev), Some(&b)) = (&self.last, self.beta.last()) {
            w = (w - (prev * b)?)?;
        }
        self.pending.push(q.clone());
        if self.pending.len() == BASIS_BLOCK {
            self.blocks.push(Tensor::cat(&self.pending, 1)?);
            self.pending.clear();
        }
        w = self.orthogonalise(w)?;
        w = self.orthogonalise(w)?;
        let b = host_read(w.sqr()?.sum_all()?.to_scalar::<f64>())?.sqrt();
        if self.alpha.is_empty() {
            self.scale = a;
        }
        self.scale = self.scale.max(a);
        self.alpha.push(a);
        let n = w.dim(0)?;
        // An exhausted space: nothing of `A q_j` is left outside the basis (or the basis is
        // the whole space).
        if !b.is_finite() || b <= 1e-12 * self.scale || self.steps() >= n {
            self.next = None;
        } else {
            self.beta.push(b);
            self.next = Some((w / b)?);
        }
        self.last = Some(q.clone());
        Ok(Some((q, a)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Moments `e1^T T^p e1` from the quadrature must match the matrix's.
    #[test]
    fn eigenvalues_and_first_components_reproduce_the_moments() {
        let d = vec![4.0, 3.0, 5.0, 2.5, 6.0];
        let e = vec![1.0, -0.5, 0.25, 2.0];
        let (theta, tau) = tridiagonal_eigen(d.clone(), &e);
        let m = |p: i32| -> f64 { theta.iter().zip(&tau).map(|(t, w)| w * w * t.powi(p)).sum() };
        assert!((m(0) - 1.0).abs() < 1e-13);
        assert!((m(1) - d[0]).abs() < 1e-12);
        assert!((m(2) - (d[0] * d[0] + e[0] * e[0])).abs() < 1e-12);
        // (T^3)_00 = d0^3 + 2 d0 e0^2 + d1 e0^2.
        let t3 = d[0].powi(3) + 2.0 * d[0] * e[0] * e[0] + d[1] * e[0] * e[0];
        assert!((m(3) - t3).abs() < 1e-10);
        let trace: f64 = d.iter().sum();
        assert!((theta.iter().sum::<f64>() - trace).abs() < 1e-12);
    }

    #[test]
    fn quadrature_of_a_diagonal_operator_is_exact() {
        // CG on A = diag(1, 2, 4) from z = (1, 1, 1)/sqrt(3) converges in 3 steps, and the
        // quadrature is then exact: e1^T log(T) e1 = mean(log(1), log(2), log(4)).
        let lambda = [1.0f64, 2.0, 4.0];
        let z: Vec<f64> = vec![1.0 / 3f64.sqrt(); 3];
        let (mut x, mut r, mut p) = (vec![0.0; 3], z.clone(), z.clone());
        let mut c = Coefficients::default();
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(u, v)| u * v).sum::<f64>();
        for _ in 0..3 {
            let ap: Vec<f64> = p.iter().zip(&lambda).map(|(v, l)| v * l).collect();
            let rr = dot(&r, &r);
            let a = rr / dot(&p, &ap);
            for i in 0..3 {
                x[i] += a * p[i];
                r[i] -= a * ap[i];
            }
            let beta = dot(&r, &r) / rr;
            for i in 0..3 {
                p[i] = r[i] + beta * p[i];
            }
            c.steps.push(a);
            c.ratios.push(beta);
        }
        let want = lambda.iter().map(|l| l.ln()).sum::<f64>() / 3.0;
        let got = log_quadrature(&c, 100).unwrap();
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        // Truncated to one step: log of the Rayleigh quotient.
        let one = log_quadrature(&c, 1).unwrap();
        assert!((one - (7.0f64 / 3.0).ln()).abs() < 1e-12, "{one}");
    }
}
