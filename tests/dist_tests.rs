//! Sharded kernel products, reductions, solves, log-determinants and GP training on 1, 2 and 3
//! ranks that are threads of this process ([`LocalGroup`]): each rank's results against the
//! single-process path and a dense product (the checks are in `tests/dist/mod.rs`, shared with
//! `tests/mpi_tests.rs`, which runs them on MPI processes under `mpirun`).

mod dist;

use lazy_kernels::dist::{Comm, LocalGroup};

fn run(size: usize) {
    let names = LocalGroup::run(size, |comm: Comm| dist::all(&comm)).unwrap();
    assert_eq!(names.len(), size);
    assert!(names.iter().all(|n| n.len() == 8));
}

#[test]
fn one_rank() {
    run(1);
}

#[test]
fn two_ranks() {
    run(2);
}

#[test]
fn three_ranks() {
    run(3);
}

#[test]
fn a_failing_check_fails() {
    // The checks can fail: results of different problems are caught.
    let comm = Comm::single();
    let a = dist::data(5, 2, 1, candle_core::DType::F64).unwrap();
    let b = dist::data(5, 2, 2, candle_core::DType::F64).unwrap();
    assert!(dist::close("x", &a, &b, 1e-3).is_err());
    assert!(dist::close("x", &a, &a, 0.0).is_ok());
    assert_eq!(comm.size(), 1);
}
