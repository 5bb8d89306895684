//! `--comm auto|single|mpi|nccl`, shared by the distributed example and benchmark: which
//! communicator the sharded objects use ([`lazy_kernels::dist`]). Problems that stop a run (a
//! build without the feature, `nccl` without a CUDA device) are one line on stderr and exit 1.
#![allow(dead_code)]

use candle_core::Device;
use lazy_kernels::dist::Comm;

/// What `--comm` asked for.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommArg {
    /// MPI when built with `--features mpi` and started by `mpirun`, else one process.
    Auto,
    /// One process (no sharding).
    Single,
    /// MPI ranks (`--features mpi`, under `mpirun`).
    Mpi,
    /// NCCL between GPUs, one per MPI rank (`--features mpi,nccl`, `--device cuda`).
    Nccl,
}

/// Whether this process was started by an MPI launcher (OpenMPI, MPICH/Hydra, Slurm's PMI).
pub fn under_mpirun() -> bool {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
}

fn stop(msg: String) -> ! {
    eprintln!("{}: {msg}", crate::device::program_name());
    std::process::exit(1)
}

/// Stops: `arg` needs the features `f` this build lacks.
#[cfg_attr(all(feature = "mpi", feature = "nccl"), allow(dead_code))]
fn no_feature(arg: CommArg, f: &str) -> ! {
    stop(format!(
        "--comm {}: this build has no `{f}` feature; build with --features {f}",
        format!("{arg:?}").to_lowercase()
    ))
}

/// The communicator `arg` names, for data on `device`; stops the program with one line when
/// it cannot be had.
pub fn open(arg: CommArg, device: &Device) -> Comm {
    match arg {
        CommArg::Single => Comm::single(),
        CommArg::Auto if !under_mpirun() => Comm::single(),
        CommArg::Auto | CommArg::Mpi => {
            #[cfg(feature = "mpi")]
            {
                match lazy_kernels::dist::Mpi::init() {
                    Ok(m) => Comm::new(m),
                    Err(e) => stop(format!("MPI: {}", crate::device::one_line(&e))),
                }
            }
            #[cfg(not(feature = "mpi"))]
            {
                if arg == CommArg::Auto {
                    stop(
                        "started by mpirun, but this build has no `mpi` feature: every rank \
                         would run the whole problem; build with --features mpi"
                            .into(),
                    )
                }
                no_feature(arg, "mpi")
            }
        }
        CommArg::Nccl => {
            #[cfg(all(feature = "mpi", feature = "nccl"))]
            {
                let mpi = open(CommArg::Mpi, device);
                match lazy_kernels::dist::Nccl::new(device, &mpi) {
                    Ok(n) => Comm::new(n),
                    Err(e) => stop(format!("NCCL: {}", crate::device::one_line(&e))),
                }
            }
            #[cfg(not(all(feature = "mpi", feature = "nccl")))]
            {
                let _ = device;
                no_feature(arg, "mpi,nccl")
            }
        }
    }
}

/// This process's rank among those of its host, from the launcher's environment (OpenMPI,
/// MPICH/Hydra, Slurm), 0 when there is none: `--device cuda:N` under MPI becomes
/// `cuda:(N + local rank)`, so that each rank of a host takes its own GPU.
pub fn local_rank() -> usize {
    [
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "MPI_LOCALRANKID",
        "SLURM_LOCALID",
    ]
    .iter()
    .find_map(|v| std::env::var(v).ok()?.parse().ok())
    .unwrap_or(0)
}
