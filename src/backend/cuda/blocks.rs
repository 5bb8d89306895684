//! How the CUDA backend splits a block plan (`crate::op::gram`) into launches.
//!
//! The blocks of inner products of a launch (one per pair input, and one of coefficients for
//! a matrix product) live in device memory at once, so their size is bounded by the plan's
//! memory budget: the rows are cut into row blocks and, when a row block of all the terms does
//! not fit, the terms into term blocks. For each (row block, term block), cuBLAS computes the
//! blocks `S_k^T` and the main kernel reduces them; the states of a row block's term blocks
//! (and of their chunks, [`Grid`]) go to one buffer of chunks, which the combine kernel merges
//! into the row block's outputs. A row block of one term block and one chunk writes its
//! outputs at once.
//!
//! The schedule is computed here, in every build, so that the host emulation of the kernels
//! (tests/cuda_emulation_tests.rs) runs the launches the device runs.

use std::ops::Range;

use super::codegen::{CudaKernel, Grid};

/// One launch of a row block: its terms, its grid, and where its chunks' states go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TermBlock {
    /// The terms of the launch.
    pub terms: Range<usize>,
    /// The launch grid over the row block's rows and these terms.
    pub grid: Grid,
    /// The chunk of the row block's state buffer of the launch's first chunk, or -1 when the
    /// launch writes the outputs (the row block has one chunk in all).
    pub chunk_base: i32,
}

/// A block of output rows and its launches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowBlock {
    /// The output rows.
    pub rows: Range<usize>,
    /// The launches over the terms, in order.
    pub terms: Vec<TermBlock>,
    /// Chunks of states in all (the combine kernel runs when there are more than one).
    pub chunks: usize,
}

/// The sizes of a schedule's blocks: `rows x terms` pairs, `buffers` blocks of `elem` bytes per
/// pair within `budget` bytes; row blocks of all the terms when at least `min_rows` rows fit,
/// else `min_rows` rows and term blocks of a multiple of `tile` terms (at least one tile).
pub fn block_sizes(
    (rows, terms): (usize, usize),
    buffers: usize,
    elem: usize,
    budget: usize,
    (min_rows, tile): (usize, usize),
) -> (usize, usize) {
    let (rows, terms) = (rows.max(1), terms.max(1));
    let per_pair = (buffers * elem).max(1);
    let fit = budget / per_pair; // pairs per launch
    let rb = fit / terms;
    if rb >= rows.min(min_rows.max(1)) {
        return (rb.min(rows), terms);
    }
    let rb = rows.min(min_rows.max(1));
    let tile = tile.max(1);
    let tb = (fit / rb / tile).max(1) * tile;
    (rb, tb.min(terms))
}

/// The launches of a block plan's main kernel `kernel` over `rows x terms` pairs with
/// `buffers` blocks of `elem` bytes per pair within `budget` bytes, on a device of `sms`
/// multiprocessors (see the module documentation).
///
/// ```
/// use lazy_kernels::backend::cuda::blocks::schedule;
/// use lazy_kernels::backend::cuda::{generate_with_pairs, Storage};
/// use lazy_kernels::formula::{Expr, Var, VarCat};
/// use lazy_kernels::ReductionKind;
/// let x = Expr::var(Var { cat: VarCat::I, pos: 0, dim: 64 })?;
/// let y = Expr::var(Var { cat: VarCat::J, pos: 1, dim: 64 })?;
/// let dot = Expr::dot(&x, &y)?;
/// let vars = [(VarCat::I, 64), (VarCat::J, 64)];
/// let k = generate_with_pairs(&dot, ReductionKind::Max, &vars, &[dot.clone()], Storage::F32)?;
/// // 100k x 100k pairs of 4 bytes within 256 MiB: row blocks of all the terms.
/// let s = schedule(&k, (100_000, 100_000), 1, 4, 256 << 20, 132);
/// assert!(s.len() > 1 && s.iter().all(|b| b.terms.len() == 1 && b.terms[0].terms == (0..100_000)));
/// # Ok::<(), lazy_kernels::Error>(())
/// ```
pub fn schedule(
    kernel: &CudaKernel,
    (rows, terms): (usize, usize),
    buffers: usize,
    elem: usize,
    budget: usize,
    sms: usize,
) -> Vec<RowBlock> {
    let (rb, tb) = block_sizes(
        (rows, terms),
        buffers,
        elem,
        budget,
        (kernel.block * kernel.rows_per_thread, kernel.block),
    );
    ranges(rows, rb)
        .map(|r| {
            let mut chunks = 0;
            let mut launches: Vec<TermBlock> = ranges(terms, tb)
                .map(|t| {
                    let grid = kernel.grid(r.len(), t.len(), sms);
                    let base = chunks;
                    chunks += grid.chunks;
                    TermBlock {
                        terms: t,
                        grid,
                        chunk_base: i32::try_from(base).unwrap_or(i32::MAX),
                    }
                })
                .collect();
            if chunks == 1 {
                launches[0].chunk_base = -1;
            }
            RowBlock {
                rows: r,
                terms: launches,
                chunks,
            }
        })
        .collect()
}

/// `0..n` in consecutive ranges of `step` (one empty range when `n` is 0).
pub fn ranges(n: usize, step: usize) -> impl Iterator<Item = Range<usize>> {
    let step = step.max(1);
    (0..n.max(1))
        .step_by(step)
        .map(move |a| a..(a + step).min(n))
}

/// The launches of a block plan's matrix product (`Sum_j c_ij v_j` as `C V`) over
/// `rows x terms` pairs, with `buffers` blocks of `elem` bytes per pair (the pair inputs' and
/// the coefficients') within `budget` bytes: (rows, terms) of each, row block by row block.
///
/// ```
/// use lazy_kernels::backend::cuda::blocks::product_blocks;
/// // 10k x 10k pairs, two blocks of 8 bytes each, in 64 MiB: row blocks of all the terms.
/// let b = product_blocks((10_000, 10_000), 2, 8, 64 << 20);
/// assert!(b.len() > 1 && b.iter().all(|(_, t)| *t == (0..10_000)));
/// ```
pub fn product_blocks(
    (rows, terms): (usize, usize),
    buffers: usize,
    elem: usize,
    budget: usize,
) -> Vec<(Range<usize>, Range<usize>)> {
    let min = super::codegen::VALUES_BLOCK;
    let (rb, tb) = block_sizes((rows, terms), buffers, elem, budget, (min, min));
    ranges(rows, rb)
        .flat_map(|r| ranges(terms, tb).map(move |t| (r.clone(), t)))
        .collect()
}
