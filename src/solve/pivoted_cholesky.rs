//! The pivoted-Cholesky preconditioner: a rank-`r` factor `K ~ L^T L` from `r` rows of `K`
//! (greedy on the largest remaining diagonal), and `(L^T L + alpha I)^-1` by the Woodbury
//! identity.
//!
//! The factor is built in `f64` on the operator's device: each step takes one row of `K`
//! (`O(N)` kernel values) and subtracts the previous rows' contributions (`O(k N)`, one
//! matrix product). Applying the inverse takes two `(r, N)` products:
//! `(v - L^T C^-1 L v) / alpha` with `C = alpha I + L L^T`.

use candle_core::{DType, Tensor};

use super::cg::Preconditioner;
use crate::error::Error;

/// How many rows the pivoted-Cholesky factor takes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rank {
    /// Exactly this many (fewer if `K` is exactly reproduced earlier).
    Fixed(usize),
    /// Until the trace of the remainder `K - L^T L` is at most `alpha` (then the
    /// preconditioned matrix has condition number at most 2), or `max` rows, or as many rows
    /// as fit in [`AUTO_MEMORY`] bytes of `f64` factor (`N = 10^6` points: 134 rows).
    /// Building rank `r` costs about `r^2 N / 2` multiply-adds and `r` rows of `K`.
    Auto {
        /// The largest rank taken.
        max: usize,
    },
}

/// The memory the automatic rank may give the factor `L` (`r x N` `f64` values): 1 GiB.
pub const AUTO_MEMORY: usize = 1 << 30;

impl Default for Rank {
    fn default() -> Self {
        Rank::Auto { max: 400 }
    }
}

/// A built preconditioner.
pub(crate) struct PivotedCholesky {
    /// `L`, `(r, N)`, `f64`, on the operator's device.
    l: Tensor,
    /// `C^-1 = (delta I + L L^T)^-1`, `(r, r)`.
    c_inv: Tensor,
    /// The shift `delta` (the ridge `alpha`, or the largest remaining diagonal when
    /// `alpha = 0`).
    delta: f64,
    /// Trace of `K - L^T L` when the factor stopped.
    pub remainder_trace: f64,
    /// `log det(delta I_r + L L^T)`, for the log-determinant of the preconditioner.
    small_logdet: f64,
}

/// Rows of the factor's first buffer; it doubles when full (up to the largest rank).
const FIRST_ROWS: usize = 64;

impl PivotedCholesky {
    /// Factors `K` from its diagonal (`(N,)`, `f64`) and a source of its rows (one row index
    /// at a time, `(N,)`, `f64`), all on the operator's device: the factor never leaves it;
    /// only the pivot, the largest remaining diagonal and its trace are read back each step,
    /// and the small `(r, r)` system is factored on the host.
    pub(crate) fn new(
        diag: Tensor,
        row: &mut dyn FnMut(usize) -> candle_core::Result<Tensor>,
        alpha: f64,
        rank: Rank,
    ) -> candle_core::Result<PivotedCholesky> {
        let n = diag.elem_count();
        let device = diag.device().clone();
        let max_rank = match rank {
            Rank::Fixed(r) => r.min(n),
            Rank::Auto { max } => max.min(n).min((AUTO_MEMORY / 8 / n).max(1)),
        };
        let bad_diag = |v: f64| Error::InvalidArgument {
            op: "solve (pivoted Cholesky)",
            detail: format!(
                "the kernel's diagonal has the value {v}: a kernel matrix must have a \
                 finite, non-negative diagonal"
            ),
        };
        let mut trace = diag.sum_all()?.to_scalar::<f64>()?;
        let low = diag.min(0)?.to_scalar::<f64>()?;
        if !trace.is_finite() {
            return Err(bad_diag(trace).into());
        }
        if low < 0.0 {
            return Err(bad_diag(low).into());
        }
        let scale = diag.max(0)?.to_scalar::<f64>()?;
        let zero = Tensor::zeros(1, DType::F64, &device)?;
        let mut d = diag.contiguous()?;
        // The factor's rows so far are the first `r` rows of `buf`.
        let mut buf = Tensor::zeros((FIRST_ROWS.min(max_rank).max(1), n), DType::F64, &device)?;
        let mut r = 0;
        while r < max_rank {
            if let Rank::Auto { .. } = rank {
                if trace <= alpha {
                    break;
                }
            }
            let piv = d.argmax(0)?.to_scalar::<u32>()? as usize;
            let dmax = d.get(piv)?.to_scalar::<f64>()?;
            // The remainder is round-off: K is reproduced.
            if dmax <= scale * 1e-13 || dmax <= 0.0 {
                break;
            }
            let mut l = row(piv)?;
            if l.elem_count() != n {
                return Err(Error::Shape {
                    op: "solve (pivoted Cholesky)",
                    detail: format!("a kernel row has {} values, expected {n}", l.elem_count()),
                }
                .into());
            }
            // l = (K[piv, :] - sum_k L[k, piv] L[k, :]) / sqrt(dmax): one product.
            if r > 0 {
                let done = buf.narrow(0, 0, r)?;
                let coef = done.narrow(1, piv, 1)?.t()?;
                l = (l - coef.matmul(&done)?.squeeze(0)?)?;
            }
            let l = (l * (1.0 / dmax.sqrt()))?;
            d = (d - l.sqr()?)?.relu()?;
            d.slice_set(&zero, 0, piv)?;
            trace = d.sum_all()?.to_scalar::<f64>()?;
            let cap = buf.dim(0)?;
            if r == cap {
                let more = Tensor::zeros((cap.min(max_rank - cap).max(1), n), DType::F64, &device)?;
                buf = Tensor::cat(&[&buf, &more], 0)?;
            }
            buf.slice_set(&l.unsqueeze(0)?, 0, r)?;
            r += 1;
        }
        let delta = if alpha > 0.0 {
            alpha
        } else {
            d.max(0)?.to_scalar::<f64>()?.max(scale * 1e-10)
        };
        let (l, c_inv, small_logdet) = if r > 0 {
            let l = buf.narrow(0, 0, r)?.contiguous()?;
            let llt = l.matmul(&l.t()?)?.to_vec2::<f64>()?;
            let (w, logdet) = inverse_factor(llt, delta)?;
            let w = Tensor::from_vec(w, (r, r), &device)?;
            let c_inv = w.t()?.matmul(&w)?;
            (l, c_inv, logdet)
        } else {
            (
                Tensor::zeros((0, n), DType::F64, &device)?,
                Tensor::zeros((0, 0), DType::F64, &device)?,
                0.0,
            )
        };
        Ok(PivotedCholesky {
            l,
            c_inv,
            delta,
            remainder_trace: trace,
            small_logdet,
        })
    }

    /// `log det(L^T L + delta I_N) = (N - r) log delta + log det(delta I_r + L L^T)`.
    pub(crate) fn logdet(&self) -> candle_core::Result<f64> {
        let n = self.l.dim(1)?;
        Ok((n - self.rank()) as f64 * self.delta.ln() + self.small_logdet)
    }

    /// Samples of `N(0, L^T L + delta I)` from standard normal `g1` (`(r, p)`) and `g2`
    /// (`(N, p)`): `L^T g1 + sqrt(delta) g2`.
    pub(crate) fn sample(&self, g1: &Tensor, g2: &Tensor) -> candle_core::Result<Tensor> {
        let scaled = (g2 * self.delta.sqrt())?;
        if self.rank() == 0 {
            return Ok(scaled);
        }
        self.l.t()?.matmul(g1)? + scaled
    }

    /// The rank taken.
    pub(crate) fn rank(&self) -> usize {
        self.l.dims()[0]
    }
}

/// `W = L^-1` for the Cholesky factor `L` of `delta I + G` (`G` symmetric positive
/// semi-definite, row-major), so that `(delta I + G)^-1 = W^T W`.
/// Also returns `log det(delta I + G)`.
fn inverse_factor(g: Vec<Vec<f64>>, delta: f64) -> candle_core::Result<(Vec<f64>, f64)> {
    let r = g.len();
    let mut a: Vec<f64> = g.into_iter().flatten().collect();
    for i in 0..r {
        a[i * r + i] += delta;
    }
    // In-place lower Cholesky factor.
    for j in 0..r {
        let mut s = a[j * r + j];
        for k in 0..j {
            s -= a[j * r + k] * a[j * r + k];
        }
        if s.is_nan() || s <= 0.0 {
            return Err(Error::InvalidArgument {
                op: "solve (pivoted Cholesky)",
                detail: "the preconditioner's small system is not positive definite \
                         (the kernel matrix is not positive semi-definite)"
                    .into(),
            }
            .into());
        }
        let s = s.sqrt();
        a[j * r + j] = s;
        for i in j + 1..r {
            let mut t = a[i * r + j];
            for k in 0..j {
                t -= a[i * r + k] * a[j * r + k];
            }
            a[i * r + j] = t / s;
        }
    }
    // W = L^-1, row by row: W_i = (e_i - sum_{k<i} L_ik W_k) / L_ii (contiguous row updates).
    let mut w = vec![0.0; r * r];
    for i in 0..r {
        let (done, rest) = w.split_at_mut(i * r);
        let wi = &mut rest[..r];
        wi[i] = 1.0;
        for k in 0..i {
            let c = a[i * r + k];
            let wk = &done[k * r..k * r + k + 1];
            for (v, &x) in wi[..=k].iter_mut().zip(wk) {
                *v -= c * x;
            }
        }
        let inv = 1.0 / a[i * r + i];
        for v in wi[..=i].iter_mut() {
            *v *= inv;
        }
    }
    let logdet = (0..r).map(|i| 2.0 * a[i * r + i].ln()).sum();
    Ok((w, logdet))
}

impl Preconditioner for PivotedCholesky {
    fn apply(&self, v: &Tensor) -> candle_core::Result<Tensor> {
        if self.rank() == 0 {
            return v / self.delta;
        }
        let lv = self.l.matmul(v)?;
        let w = self.c_inv.matmul(&lv)?;
        (v - self.l.t()?.matmul(&w)?)? / self.delta
    }
}
