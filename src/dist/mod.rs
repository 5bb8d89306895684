//! Sharding over processes and devices: the [`Communicator`] abstraction with the few
//! collectives the sharded code needs, its implementations, and the rule by which a reduction
//! is split over ranks.
//!
//! # How a sharded reduction runs
//!
//! Every rank holds the whole formula: all the points and every vector it is applied to (for a
//! kernel product `K b` over `N` points, the `N x D` points and `b`). A reduction over `j`
//! (one output row per `i`) is split by its output rows: rank `r` of `P` evaluates the rows
//! `[r N / P, (r + 1) N / P)` (its block of the `i`-variables, against all of the
//! `j`-variables), and an **all-gather** gives every rank the whole output. A reduction over
//! `i` is split by its `j` rows the same way. The work is `O(N^2 / P)` per rank, the
//! communication `O(N)` per rank and reduction.
//!
//! Everything after the reduction (a conjugate-gradient iteration's vector updates, its dot
//! products and convergence tests, the preconditioner, the GP's loss) then runs on every rank
//! on identical data, in the same order, and gives bitwise identical results: no rank decides
//! alone, so the ranks' collectives always match. These steps cost `O(N)` per rank against the
//! reductions' `O(N^2 / P)`.
//!
//! Gradients follow the same rule (the two conjugate operators of Megatron-LM's tensor
//! parallelism): the all-gather's backward pass keeps the rank's own rows of the incoming
//! gradient, and each tensor bound into a sharded reduction passes through an identity whose
//! backward pass **all-reduces** (sums) its gradient over the ranks, since each rank's partial
//! gradient comes from its own rows only. Every rank then holds the full gradient of every
//! hyperparameter and point, and an optimiser steps identically everywhere.
//!
//! With one rank ([`SingleProcess`], what every [`KernelOperator`](crate::KernelOperator) and
//! [`LazyTensor`](crate::LazyTensor) has unless told otherwise) the split is the whole range
//! and the collectives are identities: the sharded code path is the only code path.
//!
//! # Implementations
//!
//! - [`SingleProcess`]: one rank.
//! - [`LocalGroup`]: ranks as threads of one process, sharing memory; for tests, and for
//!   trying sharded code without MPI.
//! - `Mpi` (feature `mpi`): ranks as MPI processes, started by `mpirun`.
//! - `Nccl` (feature `nccl`, with `cuda`): one GPU per rank, NCCL's collectives, bootstrapped
//!   over another communicator (MPI).
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use lazy_kernels::dist::{Comm, LocalGroup};
//! use lazy_kernels::{Kernel, KernelOperator};
//! let x = Tensor::rand(0f64, 1., (300, 2), &Device::Cpu)?;
//! let b = Tensor::rand(0f64, 1., (300, 2), &Device::Cpu)?;
//! let k = KernelOperator::new(Kernel::gaussian(&Tensor::new(&[0.3f64], &Device::Cpu)?), &x, &x)?;
//! let whole = k.matmul(&b)?;
//! // Three ranks, as three threads: each computes 100 rows, and each gets all 300.
//! let parts = LocalGroup::run(3, |comm: Comm| k.shard(&comm).matmul(&b))?;
//! for part in parts {
//!     let err = (part - &whole)?.abs()?.max_all()?.to_scalar::<f64>()?;
//!     assert!(err < 1e-12);
//! }
//! # Ok::<(), candle_core::Error>(())
//! ```

mod local;
#[cfg(feature = "mpi")]
mod mpi;
#[cfg(feature = "nccl")]
mod nccl;
mod ops;
pub(crate) mod shard;

pub(crate) use ops::all_gather_rows;

use std::fmt;
use std::sync::Arc;

pub use local::LocalGroup;
#[cfg(feature = "mpi")]
pub use mpi::Mpi;
#[cfg(feature = "nccl")]
pub use nccl::Nccl;

use crate::error::Error;

/// The collectives sharded computations need, over a fixed group of `size()` ranks.
///
/// Every rank must call the same collectives in the same order with the same lengths (the
/// sharded code guarantees it: see the [module documentation](self)); a rank that fails
/// between two collectives leaves the others waiting in the next one, as in any MPI program.
/// Implementations give every rank bitwise identical results.
///
/// ```
/// use lazy_kernels::dist::{Communicator, LocalGroup};
/// let out = LocalGroup::run(2, |c| {
///     let mine = vec![c.rank() as f64; c.rank() + 1];         // rank 0: [0], rank 1: [1, 1]
///     let all = c.all_gather(&mine, &[1, 2])?;
///     let best = c.all_reduce_max_index(10.0 - c.rank() as f64, c.rank() as u64)?;
///     Ok((all, best))
/// })?;
/// assert_eq!(out[1], (vec![0.0, 1.0, 1.0], (10.0, 0)));
/// # Ok::<(), candle_core::Error>(())
/// ```
pub trait Communicator: Send + Sync {
    /// This rank, in `0..size()`.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn size(&self) -> usize;
    /// What carries the messages (`"single process"`, `"MPI"`, ...), for reports.
    fn name(&self) -> &'static str;
    /// Sums `buf` elementwise over the ranks, in place (the same length on every rank).
    fn all_reduce_sum(&self, buf: &mut [f64]) -> candle_core::Result<()>;
    /// The largest `value` over the ranks and the `index` that came with it (the smallest
    /// index among equal values), the same on every rank: a pivot search's arg-max.
    fn all_reduce_max_index(&self, value: f64, index: u64) -> candle_core::Result<(f64, u64)>;
    /// The concatenation, in rank order, of every rank's `local`, where rank `r` gives
    /// `counts[r]` values (the same `counts` on every rank).
    fn all_gather(&self, local: &[f64], counts: &[usize]) -> candle_core::Result<Vec<f64>>;
    /// Copies `buf` of rank `root` into `buf` of every rank (the same length on every rank).
    fn broadcast(&self, buf: &mut [f64], root: usize) -> candle_core::Result<()>;
}

/// A shared handle on a [`Communicator`]: what sharded objects hold. Cloning shares it.
#[derive(Clone)]
pub struct Comm(Arc<dyn Communicator>);

impl Comm {
    /// A handle on `c`.
    ///
    /// ```
    /// use lazy_kernels::dist::{Comm, SingleProcess};
    /// let comm = Comm::new(SingleProcess);
    /// assert_eq!((comm.rank(), comm.size()), (0, 1));
    /// ```
    pub fn new(c: impl Communicator + 'static) -> Comm {
        Comm(Arc::new(c))
    }

    /// A handle on a communicator already shared (so that its owner can still reach it, to
    /// read counters of its own, say).
    pub fn from_arc(c: Arc<dyn Communicator>) -> Comm {
        Comm(c)
    }

    /// The one-rank communicator every unsharded object has.
    ///
    /// ```
    /// assert_eq!(lazy_kernels::dist::Comm::single().size(), 1);
    /// ```
    pub fn single() -> Comm {
        Comm::new(SingleProcess)
    }

    /// The rows `[start, start + len)` of `rows` that `rank` of `size` evaluates: balanced
    /// blocks in rank order, the first `rows % size` ranks one row longer.
    ///
    /// ```
    /// use lazy_kernels::dist::Comm;
    /// let blocks: Vec<_> = (0..3).map(|r| Comm::block(10, 3, r)).collect();
    /// assert_eq!(blocks, vec![(0, 4), (4, 3), (7, 3)]);
    /// ```
    pub fn block(rows: usize, size: usize, rank: usize) -> (usize, usize) {
        let (q, r) = (rows / size, rows % size);
        let start = rank * q + rank.min(r);
        (start, q + usize::from(rank < r))
    }

    /// This rank's block of `rows` ([`Comm::block`]).
    ///
    /// ```
    /// use lazy_kernels::dist::{Comm, LocalGroup};
    /// let blocks = LocalGroup::run(2, |c| Ok((c.my_block(5), c.counts(5))))?;
    /// assert_eq!(blocks, vec![((0, 3), vec![3, 2]), ((3, 2), vec![3, 2])]);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn my_block(&self, rows: usize) -> (usize, usize) {
        Comm::block(rows, self.size(), self.rank())
    }

    /// Every rank's block length of `rows`, in rank order.
    pub fn counts(&self, rows: usize) -> Vec<usize> {
        (0..self.size())
            .map(|r| Comm::block(rows, self.size(), r).1)
            .collect()
    }
}

impl std::ops::Deref for Comm {
    type Target = dyn Communicator;
    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Comm({}, rank {} of {})",
            self.name(),
            self.rank(),
            self.size()
        )
    }
}

impl Default for Comm {
    fn default() -> Comm {
        Comm::single()
    }
}

/// One rank: every collective is the identity.
///
/// ```
/// use lazy_kernels::dist::{Communicator, SingleProcess};
/// let mut v = vec![1.0, 2.0];
/// SingleProcess.all_reduce_sum(&mut v)?;
/// assert_eq!(v, vec![1.0, 2.0]);
/// assert_eq!(SingleProcess.all_reduce_max_index(3.0, 7)?, (3.0, 7));
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleProcess;

impl Communicator for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn name(&self) -> &'static str {
        "single process"
    }
    fn all_reduce_sum(&self, _: &mut [f64]) -> candle_core::Result<()> {
        Ok(())
    }
    fn all_reduce_max_index(&self, value: f64, index: u64) -> candle_core::Result<(f64, u64)> {
        Ok((value, index))
    }
    fn all_gather(&self, local: &[f64], counts: &[usize]) -> candle_core::Result<Vec<f64>> {
        check_counts("SingleProcess::all_gather", local.len(), counts, 0, 1)?;
        Ok(local.to_vec())
    }
    fn broadcast(&self, _: &mut [f64], root: usize) -> candle_core::Result<()> {
        check_root("SingleProcess::broadcast", root, 1)
    }
}

/// Checks that `counts` has one entry per rank of `size` and that `rank`'s is `len`.
pub(crate) fn check_counts(
    op: &'static str,
    len: usize,
    counts: &[usize],
    rank: usize,
    size: usize,
) -> candle_core::Result<()> {
    match counts.get(rank) {
        Some(&c) if c == len && counts.len() == size => Ok(()),
        _ => Err(Error::InvalidArgument {
            op,
            detail: format!(
                "rank {rank} gives {len} values but counts are {counts:?} (one count per rank)"
            ),
        }
        .into()),
    }
}

/// Checks a broadcast's root.
pub(crate) fn check_root(op: &'static str, root: usize, size: usize) -> candle_core::Result<()> {
    if root < size {
        Ok(())
    } else {
        Err(Error::InvalidArgument {
            op,
            detail: format!("root {root} is not a rank of {size}"),
        }
        .into())
    }
}

/// [`Communicator::all_reduce_max_index`] through an all-gather of every rank's value and
/// index (the index as two exact 32-bit halves): for communicators without an arg-max of their
/// own.
pub(crate) fn max_index_by_gather(
    c: &dyn Communicator,
    value: f64,
    index: u64,
) -> candle_core::Result<(f64, u64)> {
    let mine = [value, (index >> 32) as f64, (index & 0xffff_ffff) as f64];
    let all = c.all_gather(&mine, &vec![3; c.size()])?;
    Ok(max_index(
        all.chunks(3)
            .map(|r| (r[0], ((r[1] as u64) << 32) | r[2] as u64)),
    ))
}

/// The largest value and its index among `(value, index)` pairs, the smallest index among
/// equal values (NaN counts as the largest, so that a bad value is never hidden).
pub(crate) fn max_index(pairs: impl IntoIterator<Item = (f64, u64)>) -> (f64, u64) {
    let better = |(v, i): (f64, u64), (bv, bi): (f64, u64)| match (v.is_nan(), bv.is_nan()) {
        (true, false) => true,
        (false, true) => false,
        _ => v > bv || (v == bv && i < bi),
    };
    pairs
        .into_iter()
        .reduce(|best, p| if better(p, best) { p } else { best })
        .unwrap_or((f64::NEG_INFINITY, u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_the_rows_in_order() {
        for rows in 0..20 {
            for size in 1..6 {
                let mut next = 0;
                for rank in 0..size {
                    let (s, l) = Comm::block(rows, size, rank);
                    assert_eq!(s, next);
                    next += l;
                }
                assert_eq!(next, rows);
            }
        }
    }

    #[test]
    fn max_index_takes_the_smallest_index_of_ties_and_keeps_nan() {
        assert_eq!(max_index([(1.0, 5), (3.0, 9), (3.0, 2)]), (3.0, 2));
        assert!(max_index([(1.0, 5), (f64::NAN, 9)]).0.is_nan());
        assert_eq!(max_index([(f64::NEG_INFINITY, 4)]), (f64::NEG_INFINITY, 4));
    }
}
