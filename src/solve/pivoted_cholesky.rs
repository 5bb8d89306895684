//! The pivoted-Cholesky preconditioner: a rank-`r` factor `K ~ L^T L` from `r` rows of `K`
//! (greedy on the largest remaining diagonal), and `(L^T L + alpha I)^-1` by the Woodbury
//! identity.
//!
//! The factor is built on the host in `f64`: each step takes one row of `K` (`O(N)` kernel
//! values) and subtracts the previous rows' contributions (`O(k N)`), in parallel over column
//! chunks. Applying the inverse takes two `(r, N)` products on the operator's device:
//! `(v - L^T C^-1 L v) / alpha` with `C = alpha I + L L^T`.

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

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
}

/// Columns per parallel task of the row update.
const CHUNK: usize = 2048;

impl PivotedCholesky {
    /// Factors `K` from its diagonal and a source of its rows (one row index at a time, as
    /// `f64` values on the host).
    pub(crate) fn new(
        diag: Vec<f64>,
        row: &mut dyn FnMut(usize) -> candle_core::Result<Vec<f64>>,
        alpha: f64,
        rank: Rank,
        device: &Device,
    ) -> candle_core::Result<PivotedCholesky> {
        let n = diag.len();
        let max_rank = match rank {
            Rank::Fixed(r) => r.min(n),
            Rank::Auto { max } => max.min(n).min((AUTO_MEMORY / 8 / n).max(1)),
        };
        let mut d = diag;
        if let Some(bad) = d.iter().find(|v| !v.is_finite() || **v < 0.0) {
            return Err(Error::InvalidArgument {
                op: "solve (pivoted Cholesky)",
                detail: format!(
                    "the kernel's diagonal has the value {bad}: a kernel matrix must have a \
                     finite, non-negative diagonal"
                ),
            }
            .into());
        }
        let scale = d.iter().cloned().fold(0.0, f64::max);
        let mut rows: Vec<Vec<f64>> = Vec::with_capacity(max_rank);
        let mut pivots: Vec<usize> = Vec::with_capacity(max_rank);
        let mut trace: f64 = d.iter().sum();
        while rows.len() < max_rank {
            if let Rank::Auto { .. } = rank {
                if trace <= alpha {
                    break;
                }
            }
            let (piv, &dmax) = d
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .expect("n >= 1");
            // The remainder is round-off: K is reproduced.
            if dmax <= scale * 1e-13 || dmax <= 0.0 {
                break;
            }
            let mut l = row(piv)?;
            if l.len() != n {
                return Err(Error::Shape {
                    op: "solve (pivoted Cholesky)",
                    detail: format!("a kernel row has {} values, expected {n}", l.len()),
                }
                .into());
            }
            let coef: Vec<f64> = rows.iter().map(|r| r[piv]).collect();
            let inv = 1.0 / dmax.sqrt();
            l.par_chunks_mut(CHUNK)
                .zip(d.par_chunks_mut(CHUNK))
                .enumerate()
                .for_each(|(ci, (lc, dc))| {
                    let off = ci * CHUNK;
                    for (r, &c) in rows.iter().zip(&coef) {
                        let rc = &r[off..off + lc.len()];
                        for (v, &w) in lc.iter_mut().zip(rc) {
                            *v -= c * w;
                        }
                    }
                    for (v, dv) in lc.iter_mut().zip(dc.iter_mut()) {
                        *v *= inv;
                        *dv = (*dv - *v * *v).max(0.0);
                    }
                });
            d[piv] = 0.0;
            trace = d.iter().sum();
            pivots.push(piv);
            rows.push(l);
        }
        let r = rows.len();
        let delta = if alpha > 0.0 {
            alpha
        } else {
            d.iter().cloned().fold(0.0, f64::max).max(scale * 1e-10)
        };
        let flat: Vec<f64> = rows.into_iter().flatten().collect();
        let l = Tensor::from_vec(flat, (r, n), &Device::Cpu)?;
        let c_inv = if r > 0 {
            let llt = l.matmul(&l.t()?)?.to_vec2::<f64>()?;
            let w = Tensor::from_vec(inverse_factor(llt, delta)?, (r, r), &Device::Cpu)?;
            w.t()?.matmul(&w)?.to_device(device)?
        } else {
            Tensor::zeros((0, 0), DType::F64, device)?
        };
        Ok(PivotedCholesky {
            l: l.to_device(device)?,
            c_inv,
            delta,
            remainder_trace: trace,
        })
    }

    /// The rank taken.
    pub(crate) fn rank(&self) -> usize {
        self.l.dims()[0]
    }
}

/// `W = L^-1` for the Cholesky factor `L` of `delta I + G` (`G` symmetric positive
/// semi-definite, row-major), so that `(delta I + G)^-1 = W^T W`.
fn inverse_factor(g: Vec<Vec<f64>>, delta: f64) -> candle_core::Result<Vec<f64>> {
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
    Ok(w)
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
