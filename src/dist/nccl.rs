//! Ranks as GPUs joined by NCCL ([`Nccl`], feature `nccl`), through Candle's cudarc.

use std::sync::{Arc, Mutex};

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaStream};
use candle_core::cuda_backend::cudarc::nccl::result::NcclError;
use candle_core::cuda_backend::cudarc::nccl::safe::{Comm as NcclComm, Id, ReduceOp};

use super::{Comm, Communicator, check_counts, check_root, max_index_by_gather};
use crate::error::Error;

/// One GPU per rank, the collectives run by NCCL on the GPU's stream (NVLink within a host,
/// InfiniBand or TCP between hosts). Created on every rank together, with the rank's CUDA
/// device and a bootstrap communicator of the same ranks (usually `Mpi`) over which rank 0
/// sends NCCL's unique identifier.
///
/// The collectives take host values (the sharded code gathers through the host today): each
/// is a copy to the device, the NCCL collective, and a copy back.
///
/// ```no_run
/// # #[cfg(feature = "mpi")] {
/// use candle_core::Device;
/// use lazy_kernels::dist::{Comm, Mpi, Nccl};
/// let mpi = Comm::new(Mpi::init()?);
/// let device = Device::new_cuda(mpi.rank() % 8)?;      // one GPU per rank on 8-GPU hosts
/// let nccl = Comm::new(Nccl::new(&device, &mpi)?);
/// # }
/// # Ok::<(), candle_core::Error>(())
/// ```
pub struct Nccl {
    rank: usize,
    size: usize,
    stream: Arc<CudaStream>,
    comm: Mutex<NcclComm>,
}

// SAFETY: an NCCL communicator may be used from any thread, one call at a time: every call
// goes through the mutex, and the stream it is bound to is itself `Send + Sync`.
unsafe impl Send for Nccl {}
// SAFETY: as above.
unsafe impl Sync for Nccl {}

/// A failing NCCL or driver call as this crate's error.
fn backend_err<E: std::fmt::Debug>(what: &'static str) -> impl Fn(E) -> candle_core::Error {
    move |e| {
        Error::Backend {
            what,
            detail: format!("{e:?}"),
        }
        .into()
    }
}

impl Nccl {
    /// The NCCL communicator of this rank (`bootstrap.rank()` of `bootstrap.size()`) on
    /// `device`, which must be a CUDA device, its own (one GPU per rank). Every rank of
    /// `bootstrap` must call it.
    pub fn new(device: &candle_core::Device, bootstrap: &Comm) -> candle_core::Result<Nccl> {
        const OP: &str = "Nccl::new";
        let stream = match device {
            candle_core::Device::Cuda(d) => d.cuda_stream(),
            other => {
                return Err(Error::Device {
                    op: OP,
                    detail: format!("NCCL needs a CUDA device, got {:?}", other.location()),
                }
                .into());
            }
        };
        // Rank 0 makes the identifier; every rank gets its 128 bytes, one per f64 (exact).
        let mut bytes = [0f64; 128];
        if bootstrap.rank() == 0 {
            let id = Id::new().map_err(backend_err("ncclGetUniqueId"))?;
            for (b, c) in bytes.iter_mut().zip(id.internal()) {
                *b = *c as f64;
            }
        }
        bootstrap.broadcast(&mut bytes, 0)?;
        let mut internal = [0 as std::ffi::c_char; 128];
        for (c, b) in internal.iter_mut().zip(bytes) {
            *c = b as std::ffi::c_char;
        }
        let comm = NcclComm::from_rank(
            stream.clone(),
            bootstrap.rank(),
            bootstrap.size(),
            Id::uninit(internal),
        )
        .map_err(backend_err("ncclCommInitRank"))?;
        Ok(Nccl {
            rank: bootstrap.rank(),
            size: bootstrap.size(),
            stream,
            comm: Mutex::new(comm),
        })
    }

    fn lock(&self) -> candle_core::Result<std::sync::MutexGuard<'_, NcclComm>> {
        self.comm.lock().map_err(|_| {
            Error::Backend {
                what: "NCCL",
                detail: "a thread panicked during an NCCL call".into(),
            }
            .into()
        })
    }

    /// `buf` copied to the device, `op` run on it in place (named `what` in errors), and
    /// copied back: the in-place collectives. Nothing to do for an empty `buf`.
    fn in_place<T>(
        &self,
        buf: &mut [f64],
        what: &'static str,
        op: impl FnOnce(&NcclComm, &mut CudaSlice<f64>) -> Result<T, NcclError>,
    ) -> candle_core::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let mut d = self.stream.clone_htod(&*buf).map_err(backend_err(what))?;
        op(&*self.lock()?, &mut d).map_err(backend_err(what))?;
        self.stream.memcpy_dtoh(&d, buf).map_err(backend_err(what))
    }

    /// The gather of equal blocks of `per_rank` values, `local` padded with zeros to it.
    fn gather_equal(&self, local: &[f64], per_rank: usize) -> candle_core::Result<Vec<f64>> {
        let mut send = local.to_vec();
        send.resize(per_rank.max(1), 0.0);
        let src = self
            .stream
            .clone_htod(&send)
            .map_err(backend_err("NCCL all-gather (copy)"))?;
        let mut dst = self
            .stream
            .alloc_zeros::<f64>(send.len() * self.size)
            .map_err(backend_err("NCCL all-gather (alloc)"))?;
        self.lock()?
            .all_gather(&src, &mut dst)
            .map_err(backend_err("ncclAllGather"))?;
        self.stream
            .clone_dtoh(&dst)
            .map_err(backend_err("NCCL all-gather (copy back)"))
    }
}

impl Communicator for Nccl {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn name(&self) -> &'static str {
        "NCCL"
    }
    fn all_reduce_sum(&self, buf: &mut [f64]) -> candle_core::Result<()> {
        self.in_place(buf, "ncclAllReduce", |c, d| {
            c.all_reduce_in_place(d, &ReduceOp::Sum)
        })
    }
    fn all_reduce_max_index(&self, value: f64, index: u64) -> candle_core::Result<(f64, u64)> {
        max_index_by_gather(self, value, index)
    }
    fn all_gather(&self, local: &[f64], counts: &[usize]) -> candle_core::Result<Vec<f64>> {
        const OP: &str = "Nccl::all_gather";
        check_counts(OP, local.len(), counts, self.rank, self.size)?;
        // NCCL gathers equal blocks: pad every block to the longest, then drop the padding.
        let per_rank = counts.iter().copied().max().unwrap_or(0).max(1);
        let all = self.gather_equal(local, per_rank)?;
        Ok(counts
            .iter()
            .enumerate()
            .flat_map(|(r, &c)| all[r * per_rank..r * per_rank + c].iter().copied())
            .collect())
    }
    fn broadcast(&self, buf: &mut [f64], root: usize) -> candle_core::Result<()> {
        check_root("Nccl::broadcast", root, self.size)?;
        self.in_place(buf, "ncclBroadcast", |c, d| {
            c.broadcast_in_place(d, root as i32)
        })
    }
}
