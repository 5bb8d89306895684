//! The block-corrected probing preconditioner of the log-determinant: the pivoted-Cholesky
//! factor plus the block diagonal of what it leaves, `P = L^T L + B` with
//! `B = blockdiag(delta I + K - L^T L)` over groups of nearby points (the PITC approximation
//! of Quinonero-Candela & Rasmussen, "A unifying view of sparse approximate Gaussian process
//! regression", JMLR 6, 2005, used as a preconditioner).
//!
//! The key decision: the blocks are kept as one `(groups, b, b)` tensor on the operator's
//! device, and everything done with them (their kernel values, their Cholesky factors, the
//! products with them) is a batched operation over all groups at once, so the cost is a fixed
//! number of launches per step, whatever `N`. The groups are the leaves of a recursive
//! coordinate bisection of the points (on the host, `O(N log N)`), every leaf of exactly `b`
//! points except the last, which is padded with slots that the masks keep out of every sum.
//!
//! `log det P = log det B + log det(I_r + L B^-1 L^T)` (the matrix determinant lemma), its
//! inverse is Woodbury's, `B^-1 - M (I_r + L M)^-1 M^T` with `M = B^-1 L^T`, and its samples
//! are `L^T g1 + C g2` with `B = C C^T`.

use candle_core::{DType, Tensor};

use super::cg::Preconditioner;
use super::host_read;
use super::pivoted_cholesky::{PivotedCholesky, inverse_factor};
use crate::KernelOperator;
use crate::linalg::matmul;
use crate::operator::index_tensor;

/// Points per block. Measured on the weekly Mauna Loa problem (`examples/bench_logdet.rs`, 10
/// seeds, 2-core CPU): the mean reported standard error of the NLL is 2.32 nats with blocks
/// of 32, 1.90 with 64 and 1.85 with 128, at 0.67, 0.71 and 0.86 times the time per
/// evaluation of the diagonal correction: beyond 64 the blocks cost more than they gain.
pub(crate) const BLOCK_SIZE: usize = 64;

/// `P = L^T L + B` (see the module's documentation).
pub(crate) struct BlockCorrected {
    /// `L`, `(r, N)`.
    pub(crate) l: Tensor,
    /// The point of each slot of the blocks (`(groups b,)`, `u32`; padding slots repeat a
    /// point), and whether the slot is a point (`(groups b, 1)`, `f64`, 1 or 0).
    slots: Tensor,
    mask: Tensor,
    /// The slot of each point, `(N,)`, `u32`.
    slot_of: Tensor,
    groups: usize,
    b: usize,
    /// The Cholesky factors `C` of the blocks and `B^-1`, `(groups, b, b)`.
    chol: Tensor,
    b_inv: Tensor,
    /// `M = B^-1 L^T`, `(N, r)`.
    m: Tensor,
    /// `(I_r + L M)^-1`, `(r, r)`.
    c_inv: Tensor,
    /// `log det P`.
    pub(crate) logdet: f64,
}

/// The points' order whose consecutive runs of `b` are the groups: recursive coordinate
/// bisection of `points` (`n x d`, row-major) along the coordinate of the largest extent,
/// splitting each set at a multiple of `b`, so that only the last run can be shorter.
fn bisection_order(points: &[f64], d: usize, b: usize) -> Vec<usize> {
    fn split(points: &[f64], d: usize, b: usize, idx: &mut [usize]) {
        if idx.len() <= b {
            return;
        }
        let extent = |k: usize| {
            let (lo, hi) = idx
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &i| {
                    let v = points[i * d + k];
                    (lo.min(v), hi.max(v))
                });
            hi - lo
        };
        let axis = (0..d)
            .map(|k| (k, extent(k)))
            .fold((0, f64::NEG_INFINITY), |best, (k, e)| {
                if e > best.1 { (k, e) } else { best }
            })
            .0;
        let left = b * (idx.len().div_ceil(b) / 2);
        idx.select_nth_unstable_by(left, |&i, &j| {
            points[i * d + axis]
                .total_cmp(&points[j * d + axis])
                .then(i.cmp(&j))
        });
        let (lo, hi) = idx.split_at_mut(left);
        split(points, d, b, lo);
        split(points, d, b, hi);
    }
    let n = points.len() / d.max(1);
    let mut idx: Vec<usize> = (0..n).collect();
    if d > 0 {
        split(points, d, b, &mut idx);
    }
    idx
}

impl BlockCorrected {
    /// From the solve's factor and the detached operator (its dtype, its device): the groups,
    /// their blocks of the remainder `K - L^T L` shifted by the factor's `delta`, their
    /// Cholesky factors (batched on the device), and the small `(r, r)` system on the host.
    pub(crate) fn new(
        pre: &PivotedCholesky,
        op: &KernelOperator,
        block_size: usize,
    ) -> candle_core::Result<BlockCorrected> {
        let (l, delta) = pre.factor();
        let (r, n) = (l.dim(0)?, l.dim(1)?);
        let device = l.device().clone();
        let b = block_size.clamp(1, n.max(1));
        let x = op.points().0;
        let d = x.dim(1)?;
        let host = host_read(x.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>())?;
        let order = bisection_order(&host, d, b);
        let groups = n.div_ceil(b);
        let mut slot_idx = order.clone();
        slot_idx.resize(groups * b, 0);
        let mut slot_of = vec![0usize; n];
        for (s, &i) in order.iter().enumerate() {
            slot_of[i] = s;
        }
        let mask: Vec<f64> = (0..groups * b).map(|s| (s < n) as u8 as f64).collect();
        let mask = Tensor::from_vec(mask, (groups * b, 1), &device)?;
        let slots = index_tensor(&slot_idx, &device)?;
        let slot_of = index_tensor(&slot_of, &device)?;

        // The blocks of K - L^T L + delta I, the padding slots made rows and columns of I.
        let k = op.blocks(&slot_idx, b)?.detach().to_dtype(DType::F64)?;
        let remainder = if r > 0 {
            let lb = l
                .index_select(&slots, 1)?
                .reshape((r, groups, b))?
                .transpose(0, 1)?
                .contiguous()?; // (groups, r, b)
            (k - matmul(&lb.transpose(1, 2)?, &lb)?)?
        } else {
            k
        };
        let m3 = mask.reshape((groups, b, 1))?;
        let both = m3.broadcast_mul(&m3.transpose(1, 2)?)?;
        let eye = Tensor::eye(b, DType::F64, &device)?.unsqueeze(0)?;
        let shifted = ((remainder.broadcast_add(&eye.affine(delta, 0.0)?)? * &both)?
            + eye.broadcast_mul(&both.affine(-1.0, 1.0)?)?)?;
        let (chol, w, pivots) = batched_cholesky(shifted, delta)?;
        let b_inv = matmul(&w.transpose(1, 2)?, &w)?;
        let mut logdet = host_read(
            (pivots.flatten_all()?.log()? * mask.flatten_all()?)?
                .sum_all()?
                .to_scalar::<f64>(),
        )?;

        let mut this = BlockCorrected {
            l: l.clone(),
            slots,
            mask,
            slot_of,
            groups,
            b,
            chol,
            b_inv,
            m: Tensor::zeros((n, 0), DType::F64, &device)?,
            c_inv: Tensor::zeros((0, 0), DType::F64, &device)?,
            logdet: 0.0,
        };
        if r > 0 {
            let m = this.block_solve(&l.t()?.contiguous()?)?;
            let g = host_read(matmul(l, &m)?.to_vec2::<f64>())?;
            let (w, small) = inverse_factor(g, 1.0)?;
            logdet += small;
            let w = Tensor::from_vec(w, (r, r), &device)?;
            this.c_inv = matmul(&w.t()?, &w)?;
            this.m = m;
        }
        this.logdet = logdet;
        Ok(this)
    }

    /// `v` (`(N, p)`) in the blocks' slots, `(groups, b, p)`, zero in the padding.
    fn gather(&self, v: &Tensor) -> candle_core::Result<Tensor> {
        let p = v.dim(1)?;
        v.index_select(&self.slots, 0)?
            .broadcast_mul(&self.mask)?
            .reshape((self.groups, self.b, p))
    }

    /// The points' values of `t` (`(groups, b, p)`), `(N, p)`.
    fn scatter(&self, t: &Tensor) -> candle_core::Result<Tensor> {
        let p = t.dim(2)?;
        t.reshape((self.groups * self.b, p))?
            .index_select(&self.slot_of, 0)
    }

    /// `B^-1 v`.
    fn block_solve(&self, v: &Tensor) -> candle_core::Result<Tensor> {
        self.scatter(&matmul(&self.b_inv, &self.gather(v)?)?)
    }

    /// Samples of `N(0, P)` from standard normal `g1` (`(r, p)`) and `g2` (`(N, p)`):
    /// `L^T g1 + C g2` (`g2` read in the blocks' order, which leaves it standard normal).
    pub(crate) fn sample(&self, g1: &Tensor, g2: &Tensor) -> candle_core::Result<Tensor> {
        let blocks = self.scatter(&matmul(&self.chol, &self.gather(g2)?)?)?;
        if self.l.dim(0)? == 0 {
            return Ok(blocks);
        }
        matmul(&self.l.t()?, g1)? + blocks
    }
}

impl Preconditioner for BlockCorrected {
    fn apply(&self, v: &Tensor) -> candle_core::Result<Tensor> {
        let bv = self.block_solve(v)?;
        if self.l.dim(0)? == 0 {
            return Ok(bv);
        }
        let t = matmul(&self.c_inv, &matmul(&self.l, &bv)?)?;
        bv - matmul(&self.m, &t)?
    }
}

/// The Cholesky factors `C` (lower) of a batch of symmetric matrices `a` (`(g, b, b)`, `f64`)
/// whose eigenvalues are at least `floor > 0` in exact arithmetic, their inverses `C^-1` and
/// the pivots `C_kk^2` (`(g, b)`): `b` batched right-looking elimination steps, each a few
/// element-wise operations on the whole batch. A pivot below `floor` (rounding: a Schur
/// complement of such a matrix has no eigenvalue below it) is raised to `floor`, so `C C^T`
/// is always positive definite, and it is what the caller uses consistently (samples,
/// inverse, determinant), so the estimate stays unbiased.
fn batched_cholesky(mut a: Tensor, floor: f64) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let (g, b) = (a.dim(0)?, a.dim(1)?);
    let device = a.device().clone();
    let mut w = Tensor::eye(b, DType::F64, &device)?
        .unsqueeze(0)?
        .broadcast_as((g, b, b))?
        .contiguous()?;
    let mut cols = Vec::with_capacity(b);
    let mut pivots = Vec::with_capacity(b);
    for k in 0..b {
        let below: Vec<f64> = (0..b).map(|i| (i > k) as u8 as f64).collect();
        let below = Tensor::from_vec(below, (1, b, 1), &device)?;
        let mut unit = vec![0.0; b];
        unit[k] = 1.0;
        let unit = Tensor::from_vec(unit, (1, b, 1), &device)?;
        let col = a.narrow(2, k, 1)?; // (g, b, 1)
        let pivot = col.narrow(1, k, 1)?.maximum(floor)?; // (g, 1, 1)
        let s = pivot.sqrt()?;
        let c = (col.broadcast_mul(&below)?.broadcast_div(&s)? + unit.broadcast_mul(&s)?)?;
        a = (a - c.broadcast_mul(&c.transpose(1, 2)?)?)?;
        let row = w.narrow(1, k, 1)?.broadcast_div(&s)?; // (g, 1, b)
        w = (w - c.broadcast_sub(&unit)?.broadcast_mul(&row)?)?;
        cols.push(c);
        pivots.push(pivot.reshape((g, 1))?);
    }
    let chol = Tensor::cat(&cols, 2)?;
    let pivots = Tensor::cat(&pivots, 1)?;
    Ok((chol, w, pivots))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The batched factors of two random SPD blocks: `C C^T = A`, `C` lower triangular,
    /// `W C = I`, and the pivots' product the determinant.
    #[test]
    fn batched_cholesky_factors_and_inverts() {
        let dev = Device::Cpu;
        let b = 5;
        let x = Tensor::rand(-1f64, 1., (2, b, b), &dev).unwrap();
        let eye = Tensor::eye(b, DType::F64, &dev)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let a = matmul(&x, &x.transpose(1, 2).unwrap().contiguous().unwrap())
            .unwrap()
            .broadcast_add(&eye.affine(0.1, 0.0).unwrap())
            .unwrap();
        let (c, w, pivots) = batched_cholesky(a.clone(), 1e-12).unwrap();
        let cct = matmul(&c, &c.transpose(1, 2).unwrap().contiguous().unwrap()).unwrap();
        let err = (cct - &a).unwrap().abs().unwrap().max_all().unwrap();
        assert!(err.to_scalar::<f64>().unwrap() < 1e-12);
        let wc = matmul(&w, &c).unwrap().broadcast_sub(&eye).unwrap();
        let err = wc
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(err < 1e-10, "{err}");
        let c = c.to_vec3::<f64>().unwrap();
        let p = pivots.to_vec2::<f64>().unwrap();
        for (cg, pg) in c.iter().zip(&p) {
            for i in 0..b {
                assert!((cg[i][i] * cg[i][i] - pg[i]).abs() < 1e-12);
                assert!(cg[i][i + 1..].iter().all(|&v| v == 0.0));
            }
        }
    }

    /// Every run of `b` of the order is a set of nearby points, only the last run is short,
    /// and the order is a permutation.
    #[test]
    fn bisection_groups_nearby_points() {
        // A 1D grid, shuffled: the groups must be runs of consecutive grid points.
        let n = 37;
        let points: Vec<f64> = (0..n).map(|i| ((i * 17) % n) as f64).collect();
        let order = bisection_order(&points, 1, 8);
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, (0..n).collect::<Vec<_>>());
        for group in order.chunks(8) {
            let v: Vec<f64> = group.iter().map(|&i| points[i]).collect();
            let (lo, hi) = v
                .iter()
                .fold((f64::MAX, f64::MIN), |(l, h), &x| (l.min(x), h.max(x)));
            assert_eq!(hi - lo, (group.len() - 1) as f64, "{v:?}");
        }
    }
}
