//! Sharded kernel products, reductions, solves, log-determinants and GP training on 1, 2 and 3
//! ranks that are threads of this process ([`LocalGroup`]): each rank's results against the
//! single-process path and a dense product (the checks are in `tests/dist/mod.rs`, shared with
//! `tests/mpi_tests.rs`, which runs them on MPI processes under `mpirun`).

mod dist;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use lazy_kernels::dist::{Comm, Communicator, LocalGroup};

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

/// A communicator that counts the collectives it passes on, to show that the sharded paths
/// really split (a path that fell back to computing everything on every rank would pass the
/// comparisons of `tests/dist/mod.rs` too).
struct Counting {
    inner: Comm,
    gathers: AtomicUsize,
    sums: AtomicUsize,
}

impl Communicator for Counting {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn size(&self) -> usize {
        self.inner.size()
    }
    fn name(&self) -> &'static str {
        "counting"
    }
    fn all_reduce_sum(&self, buf: &mut [f64]) -> candle_core::Result<()> {
        self.sums.fetch_add(1, Ordering::Relaxed);
        self.inner.all_reduce_sum(buf)
    }
    fn all_reduce_max_index(&self, v: f64, i: u64) -> candle_core::Result<(f64, u64)> {
        self.inner.all_reduce_max_index(v, i)
    }
    fn all_gather(&self, local: &[f64], counts: &[usize]) -> candle_core::Result<Vec<f64>> {
        self.gathers.fetch_add(1, Ordering::Relaxed);
        self.inner.all_gather(local, counts)
    }
    fn broadcast(&self, buf: &mut [f64], root: usize) -> candle_core::Result<()> {
        self.inner.broadcast(buf, root)
    }
}

#[test]
fn products_solves_and_gradients_are_split_and_gathered() {
    use candle_core::{DType, Device, Var};
    use lazy_kernels::{Kernel, KernelOperator, SolveOptions};
    let out = LocalGroup::run(2, |inner| {
        let counting = Arc::new(Counting {
            inner,
            gathers: AtomicUsize::new(0),
            sums: AtomicUsize::new(0),
        });
        let comm = Comm::from_arc(counting.clone());
        let x = dist::data(300, 2, 1, DType::F64)?;
        let b = dist::data(300, 1, 2, DType::F64)?;
        let l = Var::new(&[0.3f64], &Device::Cpu)?;
        let k = KernelOperator::new(Kernel::gaussian(l.as_tensor()), &x, &x)?.shard(&comm);
        let (a, info) = k.solve(&b, 0.1, &SolveOptions::default())?;
        let after_solve = counting.gathers.load(Ordering::Relaxed);
        let sums_before = counting.sums.load(Ordering::Relaxed);
        let g = a.sum_all()?.backward()?;
        let gl = g.get(&l).map(|t| t.to_vec1::<f64>()).transpose()?;
        Ok((
            info.products,
            after_solve,
            counting.sums.load(Ordering::Relaxed) - sums_before,
            gl,
        ))
    })
    .unwrap();
    for (products, gathers, sums, gl) in out {
        // Each product is one all-gather of its rows, the preconditioner's rows more.
        assert!(
            gathers > products,
            "{gathers} all-gathers for {products} products"
        );
        // The backward pass all-reduces the gradients of the bound tensors.
        assert!(sums > 0, "no gradient was all-reduced");
        assert!(gl.is_some_and(|g| g[0].is_finite()));
    }
}
