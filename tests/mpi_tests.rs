//! The sharded checks of `tests/dist/mod.rs` on MPI processes: each rank runs every check
//! with the world communicator and compares with the single-process path it computes alone.
//! Run by `scripts/mpi-tests.sh` (`mpirun -n P` for P = 1, 2, 3, oversubscribed); started
//! without `mpirun` it is one rank. Exits non-zero, on the failing rank, when a check fails.

mod dist;

use lazy_kernels::dist::{Comm, Mpi};

fn main() {
    let comm = match Mpi::init() {
        Ok(m) => Comm::new(m),
        Err(e) => {
            eprintln!("mpi_tests: {e}");
            std::process::exit(2);
        }
    };
    let start = std::time::Instant::now();
    match dist::all(&comm) {
        Ok(names) => {
            for n in &names {
                println!("rank {} of {}: ok: {n}", comm.rank(), comm.size());
            }
            println!(
                "rank {} of {}: {} checks passed in {:.1} s",
                comm.rank(),
                comm.size(),
                names.len(),
                start.elapsed().as_secs_f64()
            );
        }
        Err(e) => {
            eprintln!("mpi_tests: FAILED: {e}");
            // The other ranks may be waiting in a collective: end them all.
            std::process::exit(1);
        }
    }
}
