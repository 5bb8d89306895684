//! A blocked Cholesky factorisation on any Candle device: the exact path of the GP's marginal
//! likelihood ([`crate::gp::NllMethod::Exact`]) and anything else that needs a dense
//! symmetric positive-definite solve.
//!
//! Right-looking, by column panels of [`BLOCK`] columns: each panel's diagonal block is
//! factored on the host (a `BLOCK x BLOCK` copy, `BLOCK^3 / 3` flops), and everything of order
//! `N^2` or `N^3` runs as Candle operations on the matrix's device: the panel below the
//! diagonal block is `A21 L11^-T` (one matrix product) and the trailing matrix is updated as
//! `A22 - L21 L21^T` (one matrix product, and one subtraction that writes the next trailing
//! matrix). On a GPU that is cuBLAS for `O(N^3)` of the work and one host round trip per panel.
//! The factor keeps, per panel, `L11^-1` and `L21`: solves are products by them, never a
//! triangular solve element by element.
//!
//! Costs: about `2 N^3 / 3` flops for the factor (the trailing update forms the whole square
//! `L21 L21^T`, twice what a symmetric rank-k update needs, in exchange for one plain product),
//! `2 N^2 E` per solve of `E` columns, `2 N^3 / 3` for [`Cholesky::inverse`]; memory: the factor
//! holds `N^2 / 2` values, and the factorisation needs up to three `N x N` matrices at once
//! (the input, the product and the next trailing matrix).

use candle_core::{DType, Device, Tensor};

use super::matmul;
use crate::error::Error;

/// Columns per panel: the host factors `BLOCK x BLOCK` diagonal blocks (under 6 Mflop each)
/// and the device's products have an inner dimension of `BLOCK`.
pub const BLOCK: usize = 256;

const OP: &str = "Cholesky";

/// One panel of the factor: columns `start..start + b`.
#[derive(Clone, Debug)]
struct Panel {
    start: usize,
    /// `L11^-1`, `(b, b)`, lower triangular, on the device.
    inv_diag: Tensor,
    /// `L21`, the factor below the diagonal block, `(N - start - b, b)`; `None` for the last
    /// panel.
    below: Option<Tensor>,
}

/// The factor `A = L L^T` of a symmetric positive-definite `(N, N)` matrix (see the
/// [module documentation](self)).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use lazy_kernels::linalg::Cholesky;
/// let a = Tensor::new(&[[4f64, 2.], [2., 3.]], &Device::Cpu)?;
/// let c = Cholesky::new(&a)?;
/// assert!((c.logdet() - 8f64.ln()).abs() < 1e-14);             // det = 12 - 4
/// let x = c.solve(&Tensor::new(&[2f64, 1.], &Device::Cpu)?)?;
/// let want = [0.5, 0.0];                                      // A x = b
/// for (g, w) in x.to_vec1::<f64>()?.iter().zip(want) { assert!((g - w).abs() < 1e-14); }
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Cholesky {
    n: usize,
    dtype: DType,
    device: Device,
    panels: Vec<Panel>,
    /// `log det A = 2 sum log L_ii`, summed in `f64` on the host.
    logdet: f64,
}

impl Cholesky {
    /// Factors `a` (`(N, N)`, `f32` or `f64`, any device; only its lower triangle is read,
    /// as far as the products allow: the matrix must be symmetric). The work is done in
    /// `a`'s dtype on `a`'s device, the diagonal blocks in `f64` on the host. The input is
    /// detached: the factor carries no gradient.
    ///
    /// Errors: a matrix that is not square, not of a float dtype, or not positive definite
    /// (a pivot that is not positive and finite, named with its index).
    pub fn new(a: &Tensor) -> candle_core::Result<Cholesky> {
        let n = match a.dims() {
            [r, c] if r == c => *r,
            dims => {
                return Err(Error::Shape {
                    op: OP,
                    detail: format!("the matrix must be square (N, N), got {dims:?}"),
                }
                .into());
            }
        };
        let dtype = a.dtype();
        if !matches!(dtype, DType::F32 | DType::F64) {
            return Err(Error::DType {
                op: OP,
                detail: format!("the matrix must be f32 or f64, got {dtype:?}"),
            }
            .into());
        }
        let device = a.device().clone();
        let mut panels = Vec::with_capacity(n.div_ceil(BLOCK));
        let mut logdet = 0.0;
        // The trailing matrix, rows and columns `start..n` of the partly factored matrix.
        let mut trailing = a.detach();
        let mut start = 0;
        while start < n {
            let m = n - start;
            let b = BLOCK.min(m);
            let mut diag = trailing
                .narrow(0, 0, b)?
                .narrow(1, 0, b)?
                .to_dtype(DType::F64)?
                .flatten_all()?
                .to_device(&Device::Cpu)?
                .to_vec1::<f64>()?;
            factor_small(&mut diag, b, start)?;
            logdet += (0..b).map(|i| 2.0 * diag[i * b + i].ln()).sum::<f64>();
            let inv = invert_lower_small(&diag, b);
            let inv_diag = Tensor::from_vec(inv, (b, b), &Device::Cpu)?
                .to_dtype(dtype)?
                .to_device(&device)?;
            let below = if m > b {
                // L21 = A21 L11^-T; A22 <- A22 - L21 L21^T.
                let a21 = trailing
                    .narrow(0, b, m - b)?
                    .narrow(1, 0, b)?
                    .contiguous()?;
                let l21 = matmul(&a21, &inv_diag.t()?)?;
                let update = matmul(&l21, &l21.t()?)?;
                trailing = (trailing.narrow(0, b, m - b)?.narrow(1, b, m - b)? - update)?;
                Some(l21)
            } else {
                None
            };
            panels.push(Panel {
                start,
                inv_diag,
                below,
            });
            start += b;
        }
        Ok(Cholesky {
            n,
            dtype,
            device,
            panels,
            logdet,
        })
    }

    /// `N`.
    pub fn size(&self) -> usize {
        self.n
    }

    /// `log det A`, from the diagonal of `L` (summed in `f64`).
    pub fn logdet(&self) -> f64 {
        self.logdet
    }

    /// `A^-1 b` for `b` of shape `(N,)` or `(N, E)`, in the factor's dtype and on its device
    /// (`b` is converted to the dtype; a tensor on another device is an error): a forward
    /// and a backward substitution by panels, two matrix products per panel each.
    pub fn solve(&self, b: &Tensor) -> candle_core::Result<Tensor> {
        let n = self.n;
        let (b2, vector) = match b.dims() {
            [m] if *m == n => (b.reshape((n, 1))?, true),
            [m, _] if *m == n => (b.clone(), false),
            dims => {
                return Err(Error::Shape {
                    op: OP,
                    detail: format!("the right-hand side must be ({n},) or ({n}, E), got {dims:?}"),
                }
                .into());
            }
        };
        let z = self.forward_panels(&self.rhs(&b2)?)?;
        // L^T x = z, from the last panel: x_k = L11^-T (z_k - L21^T x_below).
        let mut x: Vec<Tensor> = Vec::with_capacity(self.panels.len());
        for (p, zk) in self.panels.iter().zip(z).rev() {
            let rhs = match &p.below {
                Some(l21) => {
                    let below = Tensor::cat(&x.iter().rev().collect::<Vec<_>>(), 0)?;
                    (zk - matmul(&l21.t()?, &below)?)?
                }
                None => zk,
            };
            x.push(matmul(&p.inv_diag.t()?, &rhs)?);
        }
        x.reverse();
        let out = Tensor::cat(&x, 0)?;
        debug_assert_eq!(self.panels.first().map(|p| p.start), Some(0));
        if vector { out.reshape(n) } else { Ok(out) }
    }

    /// `L^-1 b` for `b` of shape `(N, E)` (the factor's dtype and device): half of
    /// [`Cholesky::solve`], what `b^T A^-1 b = |L^-1 b|^2` needs.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use lazy_kernels::linalg::Cholesky;
    /// let a = Tensor::new(&[[4f64, 2.], [2., 3.]], &Device::Cpu)?;
    /// let b = Tensor::new(&[[2f64], [1.]], &Device::Cpu)?;
    /// let z = Cholesky::new(&a)?.forward(&b)?;                    // L = [[2, 0], [1, sqrt 2]]
    /// let q: f64 = z.sqr()?.sum_all()?.to_scalar()?;              // b^T A^-1 b = 1
    /// assert!((q - 1.0).abs() < 1e-14);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn forward(&self, b: &Tensor) -> candle_core::Result<Tensor> {
        match b.dims() {
            [m, _] if *m == self.n => {}
            dims => {
                return Err(Error::Shape {
                    op: OP,
                    detail: format!("the right-hand side must be ({}, E), got {dims:?}", self.n),
                }
                .into());
            }
        }
        let z = self.forward_panels(&self.rhs(b)?)?;
        Tensor::cat(&z, 0)
    }

    /// A right-hand side `(N, E)` of shape already checked: on the factor's device (else an
    /// error), detached, in its dtype, contiguous.
    fn rhs(&self, b: &Tensor) -> candle_core::Result<Tensor> {
        if !b.device().same_device(&self.device) {
            return Err(Error::Device {
                op: OP,
                detail: "the right-hand side is not on the factor's device".into(),
            }
            .into());
        }
        b.detach().to_dtype(self.dtype)?.contiguous()
    }

    /// `L z = b` panel by panel (`b` from [`Cholesky::rhs`]):
    /// `z_k = L11^-1 rest_k`, `rest <- rest_below - L21 z_k`; the blocks `z_k`.
    fn forward_panels(&self, b: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        let mut z = Vec::with_capacity(self.panels.len());
        let mut rest = b.clone();
        for p in &self.panels {
            let bk = p.inv_diag.dim(0)?;
            let zk = matmul(&p.inv_diag, &rest.narrow(0, 0, bk)?)?;
            if let Some(l21) = &p.below {
                let m = rest.dim(0)? - bk;
                rest = (rest.narrow(0, bk, m)? - matmul(l21, &zk)?)?;
            }
            z.push(zk);
        }
        Ok(z)
    }

    /// `A^-1`, `(N, N)`, as `X^T X` with `X = L^-1`, both by panels and only where `X` is not
    /// zero (`2 N^3 / 3` flops, where a solve of the identity would take `2 N^3`): the column
    /// panels of `X` by forward substitution from their diagonal block down, then each block
    /// `(i, j)`, `i <= j`, of `A^-1` as one product of two of them (the block `(j, i)` its
    /// transpose). Memory: `X`'s `N^2 / 2` values beside the result.
    pub fn inverse(&self) -> candle_core::Result<Tensor> {
        let p = self.panels.len();
        // X[s_j.., panel j], (N - s_j, b_j): X_jj = L_jj^-1, then X_kj = L_kk^-1 (rest)_k with
        // rest = -(L below panel j) X_jj, updated panel by panel as in `solve`.
        let mut cols: Vec<Tensor> = Vec::with_capacity(p);
        for j in 0..p {
            let xjj = self.panels[j].inv_diag.clone();
            let mut pieces = vec![xjj.clone()];
            if let Some(l21) = &self.panels[j].below {
                let mut rest = matmul(l21, &xjj)?.neg()?;
                for panel in &self.panels[j + 1..] {
                    let bk = panel.inv_diag.dim(0)?;
                    let zk = matmul(&panel.inv_diag, &rest.narrow(0, 0, bk)?)?;
                    if let Some(below) = &panel.below {
                        let m = rest.dim(0)? - bk;
                        rest = (rest.narrow(0, bk, m)? - matmul(below, &zk)?)?;
                    }
                    pieces.push(zk);
                }
            }
            cols.push(Tensor::cat(&pieces, 0)?);
        }
        // (A^-1)_ij = sum_{k >= max(i, j)} X_ki^T X_kj: rows s_j.. of column panel i against
        // column panel j, for i <= j.
        let mut upper: Vec<Vec<Tensor>> = Vec::with_capacity(p);
        for i in 0..p {
            let mut row = Vec::with_capacity(p - i);
            for j in i..p {
                let (si, sj) = (self.panels[i].start, self.panels[j].start);
                let len = self.n - sj;
                row.push(matmul(&cols[i].narrow(0, sj - si, len)?.t()?, &cols[j])?);
            }
            upper.push(row);
        }
        let mut rows = Vec::with_capacity(p);
        for i in 0..p {
            let row: Vec<Tensor> = (0..p)
                .map(|j| {
                    if i <= j {
                        Ok(upper[i][j - i].clone())
                    } else {
                        upper[j][i - j].t()
                    }
                })
                .collect::<candle_core::Result<_>>()?;
            rows.push(Tensor::cat(&row, 1)?);
        }
        Tensor::cat(&rows, 0)
    }
}

/// Factors the row-major `b x b` block `m` in place (`L` in the lower triangle, zeros above);
/// `offset` is the block's first row in the whole matrix, for the error.
fn factor_small(m: &mut [f64], b: usize, offset: usize) -> candle_core::Result<()> {
    for j in 0..b {
        let (done, rest) = m.split_at_mut(j * b);
        let row_j = &mut rest[..b];
        for i in 0..j {
            let row_i = &done[i * b..i * b + b];
            let s: f64 = row_i[..i].iter().zip(&row_j[..i]).map(|(x, y)| x * y).sum();
            row_j[i] = (row_j[i] - s) / row_i[i];
        }
        let d = row_j[j] - row_j[..j].iter().map(|v| v * v).sum::<f64>();
        if !(d > 0.0 && d.is_finite()) {
            return Err(Error::InvalidArgument {
                op: OP,
                detail: format!(
                    "the matrix is not positive definite: pivot {} is {d:e}",
                    offset + j
                ),
            }
            .into());
        }
        row_j[j] = d.sqrt();
        row_j[j + 1..].iter_mut().for_each(|v| *v = 0.0);
    }
    Ok(())
}

/// The inverse of the row-major lower-triangular `b x b` matrix `l`.
fn invert_lower_small(l: &[f64], b: usize) -> Vec<f64> {
    let mut inv = vec![0.0; b * b];
    for j in 0..b {
        inv[j * b + j] = 1.0 / l[j * b + j];
        for i in j + 1..b {
            let s: f64 = (j..i).map(|p| l[i * b + p] * inv[p * b + j]).sum();
            inv[i * b + j] = -s / l[i * b + i];
        }
    }
    inv
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A random SPD matrix `G G^T / n + shift I` and its dense reference pieces in f64.
    fn spd(n: usize, shift: f64) -> Tensor {
        let g = Tensor::randn(0f64, 1.0, (n, n), &Device::Cpu).unwrap();
        let a = (matmul(&g, &g.t().unwrap()).unwrap() / n as f64).unwrap();
        (a + (Tensor::eye(n, DType::F64, &Device::Cpu).unwrap() * shift).unwrap()).unwrap()
    }

    /// `max |t|` in f64.
    fn max_abs(t: &Tensor) -> f64 {
        let m = t.abs().unwrap().max_all().unwrap();
        m.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
    }

    /// Unblocked reference: log det and `A^-1 b` by a plain Cholesky on the host.
    fn reference(a: &Tensor, b: &[f64]) -> (f64, Vec<f64>) {
        let n = b.len();
        let mut l = a.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        factor_small(&mut l, n, 0).unwrap();
        let mut z = b.to_vec();
        for i in 0..n {
            let s: f64 = (0..i).map(|p| l[i * n + p] * z[p]).sum();
            z[i] = (z[i] - s) / l[i * n + i];
        }
        for i in (0..n).rev() {
            let s: f64 = (i + 1..n).map(|p| l[p * n + i] * z[p]).sum();
            z[i] = (z[i] - s) / l[i * n + i];
        }
        ((0..n).map(|i| 2.0 * l[i * n + i].ln()).sum(), z)
    }

    #[test]
    fn blocked_factor_matches_the_unblocked_one() {
        // Sizes below, at and across panel boundaries.
        for n in [1, 7, BLOCK, BLOCK + 1, 2 * BLOCK + 37] {
            let a = spd(n, 0.5);
            let b: Vec<f64> = (0..n).map(|i| (i as f64 * 0.37).sin()).collect();
            let (ld, x) = reference(&a, &b);
            let c = Cholesky::new(&a).unwrap();
            assert!(
                (c.logdet() - ld).abs() < 1e-10 * ld.abs().max(1.0),
                "n = {n}"
            );
            let got = c
                .solve(&Tensor::new(b.as_slice(), &Device::Cpu).unwrap())
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            let err = got
                .iter()
                .zip(&x)
                .map(|(g, w)| (g - w).abs())
                .fold(0.0, f64::max);
            assert!(err < 1e-10, "n = {n}: solve error {err:e}");
            // Several columns, and the inverse: A A^-1 = I.
            let inv = c.inverse().unwrap();
            let eye = matmul(&a, &inv).unwrap();
            let off = max_abs(&(eye - Tensor::eye(n, DType::F64, &Device::Cpu).unwrap()).unwrap());
            assert!(off < 1e-10, "n = {n}: |A A^-1 - I| = {off:e}");
        }
    }

    #[test]
    fn f32_factor_is_close_to_f64() {
        let n = BLOCK + 50;
        let a = spd(n, 1.0);
        let c64 = Cholesky::new(&a).unwrap();
        let c32 = Cholesky::new(&a.to_dtype(DType::F32).unwrap()).unwrap();
        assert!((c32.logdet() - c64.logdet()).abs() < 1e-4 * c64.logdet().abs().max(1.0));
        let b = Tensor::ones(n, DType::F64, &Device::Cpu).unwrap();
        let x64 = c64.solve(&b).unwrap();
        let x32 = c32.solve(&b).unwrap();
        assert_eq!(x32.dtype(), DType::F32);
        let diff = max_abs(&(x32.to_dtype(DType::F64).unwrap() - &x64).unwrap());
        assert!(diff < 1e-4, "{diff:e}");
    }

    #[test]
    fn bad_matrices_are_errors() {
        let dev = Device::Cpu;
        let rect = Tensor::zeros((3, 4), DType::F64, &dev).unwrap();
        assert!(
            Cholesky::new(&rect)
                .unwrap_err()
                .to_string()
                .contains("square")
        );
        let ints = Tensor::zeros((3, 3), DType::U32, &dev).unwrap();
        assert!(
            Cholesky::new(&ints)
                .unwrap_err()
                .to_string()
                .contains("f32 or f64")
        );
        // Indefinite in the second panel: the error names the pivot.
        let n = BLOCK + 10;
        let mut a = spd(n, 0.5).to_vec2::<f64>().unwrap();
        a[BLOCK + 3][BLOCK + 3] = -1.0;
        let a = Tensor::new(a, &dev).unwrap();
        let msg = Cholesky::new(&a).unwrap_err().to_string();
        assert!(msg.contains("not positive definite"), "{msg}");
        // NaN is not a pivot either.
        let nan = Tensor::new(&[[f64::NAN]], &dev).unwrap();
        assert!(
            Cholesky::new(&nan)
                .unwrap_err()
                .to_string()
                .contains("pivot 0")
        );
        let c = Cholesky::new(&Tensor::eye(3, DType::F64, &dev).unwrap()).unwrap();
        let msg = c
            .solve(&Tensor::zeros(4, DType::F64, &dev).unwrap())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("(3,) or (3, E)"), "{msg}");
    }
}
