//! Ranks as threads of one process ([`LocalGroup`]).

use std::sync::{Arc, Barrier, Mutex};

use super::{Comm, Communicator, check_counts, check_root, max_index_by_gather};
use crate::error::Error;

/// The shared state of a group: one mailbox per rank and the barrier they meet at.
struct Shared {
    size: usize,
    mail: Mutex<Vec<Vec<f64>>>,
    barrier: Barrier,
}

/// `size` ranks as threads of one process, exchanging through shared memory: every collective
/// is an exchange of each rank's values followed by the same arithmetic, in rank order, on
/// every rank. For tests and for trying sharded code without MPI; it brings no speed of its
/// own (each rank's reductions still use the whole thread pool).
///
/// ```
/// use lazy_kernels::dist::{Communicator, LocalGroup};
/// let sums = LocalGroup::run(3, |comm| {
///     let mut v = vec![comm.rank() as f64, 1.0];
///     comm.all_reduce_sum(&mut v)?;
///     Ok(v)
/// })?;
/// assert!(sums.iter().all(|v| v == &vec![3.0, 3.0]));
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Clone)]
pub struct LocalGroup {
    rank: usize,
    shared: Arc<Shared>,
}

impl LocalGroup {
    /// The `size` communicators of a new group, rank `r` at position `r`; each must be moved
    /// to its own thread.
    pub fn group(size: usize) -> candle_core::Result<Vec<Comm>> {
        if size == 0 {
            return Err(Error::InvalidArgument {
                op: "LocalGroup::group",
                detail: "a group needs at least one rank".into(),
            }
            .into());
        }
        let shared = Arc::new(Shared {
            size,
            mail: Mutex::new(vec![Vec::new(); size]),
            barrier: Barrier::new(size),
        });
        Ok((0..size)
            .map(|rank| {
                Comm::new(LocalGroup {
                    rank,
                    shared: shared.clone(),
                })
            })
            .collect())
    }

    /// Runs `f` on `size` threads, one per rank of a new group, and returns their results in
    /// rank order (the first error, if any rank failed). A rank that fails before a
    /// collective the others reach leaves them waiting: `f` must fail on every rank or none,
    /// as the sharded code does.
    pub fn run<T: Send>(
        size: usize,
        f: impl Fn(Comm) -> candle_core::Result<T> + Sync,
    ) -> candle_core::Result<Vec<T>> {
        let comms = LocalGroup::group(size)?;
        let f = &f;
        let results: Vec<candle_core::Result<T>> = std::thread::scope(|s| {
            let handles: Vec<_> = comms.into_iter().map(|c| s.spawn(move || f(c))).collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(Error::Backend {
                            what: "LocalGroup::run",
                            detail: "a rank's thread panicked".into(),
                        }
                        .into())
                    })
                })
                .collect()
        });
        results.into_iter().collect()
    }

    /// Every rank's `local`, in rank order.
    fn exchange(&self, local: &[f64]) -> candle_core::Result<Vec<Vec<f64>>> {
        let poisoned = |_| {
            candle_core::Error::from(Error::Backend {
                what: "LocalGroup",
                detail: "another rank panicked during a collective".into(),
            })
        };
        self.shared.mail.lock().map_err(poisoned)?[self.rank] = local.to_vec();
        self.shared.barrier.wait();
        let all = self.shared.mail.lock().map_err(poisoned)?.clone();
        // Nobody writes the next collective's values before everyone has read these.
        self.shared.barrier.wait();
        Ok(all)
    }
}

impl Communicator for LocalGroup {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.shared.size
    }
    fn name(&self) -> &'static str {
        "threads of one process"
    }
    fn all_reduce_sum(&self, buf: &mut [f64]) -> candle_core::Result<()> {
        let all = self.exchange(buf)?;
        if all.iter().any(|r| r.len() != buf.len()) {
            return Err(length_mismatch(&all));
        }
        for (k, v) in buf.iter_mut().enumerate() {
            *v = all.iter().map(|r| r[k]).sum();
        }
        Ok(())
    }
    fn all_reduce_max_index(&self, value: f64, index: u64) -> candle_core::Result<(f64, u64)> {
        max_index_by_gather(self, value, index)
    }
    fn all_gather(&self, local: &[f64], counts: &[usize]) -> candle_core::Result<Vec<f64>> {
        // Every rank checks after the exchange, so that a bad call fails on every rank.
        let ok = check_counts(
            "LocalGroup::all_gather",
            local.len(),
            counts,
            self.rank,
            self.size(),
        );
        let all = self.exchange(local)?;
        ok?;
        if all.iter().zip(counts).any(|(r, &c)| r.len() != c) {
            return Err(length_mismatch(&all));
        }
        Ok(all.concat())
    }
    fn broadcast(&self, buf: &mut [f64], root: usize) -> candle_core::Result<()> {
        check_root("LocalGroup::broadcast", root, self.size())?;
        let all = self.exchange(buf)?;
        if all[root].len() != buf.len() {
            return Err(length_mismatch(&all));
        }
        buf.copy_from_slice(&all[root]);
        Ok(())
    }
}

fn length_mismatch(all: &[Vec<f64>]) -> candle_core::Error {
    let lens: Vec<usize> = all.iter().map(Vec::len).collect();
    Error::InvalidArgument {
        op: "LocalGroup",
        detail: format!("the ranks gave collectives of different lengths: {lens:?}"),
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collectives_agree_on_every_rank() {
        let out = LocalGroup::run(3, |c| {
            let r = c.rank() as f64;
            let mut s = vec![r, 2.0 * r];
            c.all_reduce_sum(&mut s)?;
            let m = c.all_reduce_max_index(-(r - 1.0).abs(), 10 + c.rank() as u64)?;
            let counts = [1, 2, 0];
            let local = vec![r; counts[c.rank()]];
            let g = c.all_gather(&local, &counts)?;
            let mut b = vec![r, r];
            c.broadcast(&mut b, 2)?;
            Ok((s, m, g, b))
        })
        .unwrap();
        for (s, m, g, b) in out {
            assert_eq!(s, vec![3.0, 6.0]);
            assert_eq!(m, (0.0, 11));
            assert_eq!(g, vec![0.0, 1.0, 1.0]);
            assert_eq!(b, vec![2.0, 2.0]);
        }
    }

    #[test]
    fn mismatched_lengths_are_errors_on_every_rank() {
        let out = LocalGroup::run(2, |c| {
            let mut v = vec![1.0; 1 + c.rank()];
            Ok(c.all_reduce_sum(&mut v).is_err())
        })
        .unwrap();
        assert_eq!(out, vec![true, true]);
    }
}
