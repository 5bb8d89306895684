//! Ranks as MPI processes ([`Mpi`], feature `mpi`), through the `mpi` crate (rsmpi).

use std::sync::Mutex;

use mpi::Threading;
use mpi::datatype::PartitionMut;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator as _, CommunicatorCollectives, Root};

use super::{Communicator, check_counts, check_root, max_index_by_gather};
use crate::error::Error;

/// The ranks of `MPI_COMM_WORLD`: one process per rank, started by `mpirun` (or `srun`),
/// on one host or many. Initialises MPI when created and finalises it when the last handle
/// is dropped; a process creates it once.
///
/// ```no_run
/// use lazy_kernels::dist::{Comm, Mpi};
/// let comm = Comm::new(Mpi::init()?);
/// println!("rank {} of {}", comm.rank(), comm.size());
/// # Ok::<(), candle_core::Error>(())
/// ```
pub struct Mpi {
    rank: usize,
    size: usize,
    /// The world communicator, and the environment whose drop finalises MPI (after it).
    inner: Mutex<(SimpleCommunicator, Universe)>,
}

// SAFETY: MPI handles are plain identifiers of the MPI library's objects, usable from any
// thread of a library initialised at `MPI_THREAD_SERIALIZED` or above (checked in `init`),
// provided no two threads call it at once: every call goes through the mutex.
unsafe impl Send for Mpi {}
// SAFETY: as above: shared access only ever reaches MPI through the mutex.
unsafe impl Sync for Mpi {}

impl Mpi {
    /// Initialises MPI (at `MPI_THREAD_SERIALIZED`: any thread may call it, one at a time) and
    /// takes the world communicator. Fails when MPI is already initialised in this process or
    /// gives a lower thread level.
    pub fn init() -> candle_core::Result<Mpi> {
        let (universe, level) =
            mpi::initialize_with_threading(Threading::Serialized).ok_or_else(|| {
                Error::Backend {
                    what: "MPI initialisation",
                    detail: "MPI is already initialised in this process (create Mpi once)".into(),
                }
            })?;
        if level < Threading::Serialized {
            return Err(Error::Backend {
                what: "MPI initialisation",
                detail: format!(
                    "the MPI library gives thread level {level:?}, below Serialized; rebuild it \
                     with thread support"
                ),
            }
            .into());
        }
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        Ok(Mpi {
            rank,
            size,
            inner: Mutex::new((world, universe)),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&SimpleCommunicator) -> T) -> candle_core::Result<T> {
        let guard = self.inner.lock().map_err(|_| Error::Backend {
            what: "MPI",
            detail: "a thread panicked during an MPI call".into(),
        })?;
        Ok(f(&guard.0))
    }
}

/// `n` as an MPI count.
fn count(n: usize, op: &'static str) -> candle_core::Result<i32> {
    i32::try_from(n).map_err(|_| {
        Error::InvalidArgument {
            op,
            detail: format!("{n} values exceed MPI's count limit (2^31 - 1) in one message"),
        }
        .into()
    })
}

impl Communicator for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn name(&self) -> &'static str {
        "MPI"
    }
    fn all_reduce_sum(&self, buf: &mut [f64]) -> candle_core::Result<()> {
        count(buf.len(), "Mpi::all_reduce_sum")?;
        let send = buf.to_vec();
        self.with(|w| w.all_reduce_into(&send[..], buf, mpi::collective::SystemOperation::sum()))
    }
    fn all_reduce_max_index(&self, value: f64, index: u64) -> candle_core::Result<(f64, u64)> {
        max_index_by_gather(self, value, index)
    }
    fn all_gather(&self, local: &[f64], counts: &[usize]) -> candle_core::Result<Vec<f64>> {
        const OP: &str = "Mpi::all_gather";
        check_counts(OP, local.len(), counts, self.rank, self.size)?;
        let total: usize = counts.iter().sum();
        count(total, OP)?;
        let c: Vec<i32> = counts.iter().map(|&n| n as i32).collect();
        let displs: Vec<i32> = c
            .iter()
            .scan(0i32, |acc, &n| {
                let d = *acc;
                *acc += n;
                Some(d)
            })
            .collect();
        let mut out = vec![0f64; total];
        self.with(|w| {
            let mut part = PartitionMut::new(&mut out[..], c, displs);
            w.all_gather_varcount_into(local, &mut part);
        })?;
        Ok(out)
    }
    fn broadcast(&self, buf: &mut [f64], root: usize) -> candle_core::Result<()> {
        check_root("Mpi::broadcast", root, self.size)?;
        count(buf.len(), "Mpi::broadcast")?;
        self.with(|w| w.process_at_rank(root as i32).broadcast_into(buf))
    }
}
