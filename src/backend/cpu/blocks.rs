//! The CPU's block path (`crate::op::gram`): the inner products of a block of rows and a
//! chunk of terms come from one matrix product (the `gemm` crate, Candle's CPU matmul), and
//! the rest of the formula and the reduction run over them with the tile executor, reading
//! them as pair inputs.
//!
//! Each task (a block of [`ROWS`] output rows and a chunk of terms) computes its inner
//! products into its own buffer, small enough to stay in the L2 cache, and hands them to the
//! executor at once: the inner products never go to main memory. A `Sum` of `c_ij * v_j`
//! evaluates `c` over the block into a second buffer and multiplies it by the chunk of `v`.
//! The tasks' states are combined in the order of the terms, as the direct path does, so
//! results do not depend on the number of threads.

use std::ops::Range;

use rayon::prelude::*;

use super::exec::{Context, InputData, PairBlock, States, FUSED_TILE, PAD};
use super::program::Program;
use super::{columns, isa, run_block_on, values_on};
use crate::backend::ReductionPlan;
use crate::formula::{Expr, VarCat};
use crate::math::Real;
use crate::op::gram::BlockPlan;
use crate::reduction::ReductionKind;

/// Output rows per task.
pub(crate) const ROWS: usize = 64;
/// Terms per task at most (a multiple of every tile length).
pub(crate) const TERMS: usize = 2 * FUSED_TILE;

/// The sizes of a block plan's tasks on the CPU: rows and terms, so that every thread's
/// buffers (one `rows x terms` block per pair input, and one of coefficients for a matrix
/// product) fit `budget` bytes.
pub(crate) fn task_sizes(plan: &ReductionPlan, bp: &BlockPlan, elem: usize) -> (usize, usize) {
    let buffers = bp.pairs.len() + usize::from(bp.matmul.is_some());
    let threads = rayon::current_num_threads().max(1);
    let (mut rows, mut terms) = (ROWS, TERMS.min(plan.terms.div_ceil(PAD) * PAD));
    let bytes = |r: usize, t: usize| threads * buffers * r * t * elem;
    while bytes(rows, terms) > bp.block_bytes && terms > PAD {
        terms = (terms / 2).div_ceil(PAD) * PAD;
    }
    while bytes(rows, terms) > bp.block_bytes && rows > 1 {
        rows /= 2;
    }
    (rows, terms)
}

/// `dst (m x n, row-major, leading dimension ldd) = lhs (m x k) rhs (k x n)`, the operands given
/// by their row and column strides, with the `gemm` crate on the calling thread.
///
/// # Safety
/// The pointers and strides describe valid matrices of these sizes; `dst` does not overlap
/// them.
#[allow(clippy::too_many_arguments)]
unsafe fn product<T: Real>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    ldd: usize,
    lhs: (*const T, usize, usize),
    rhs: (*const T, usize, usize),
) {
    debug_assert!(dst.len() >= (m.max(1) - 1) * ldd + n);
    // SAFETY: forwarded from the caller; `T` is f32 or f64, which `gemm` supports.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            ldd as isize,
            false,
            lhs.0,
            lhs.2 as isize,
            lhs.1 as isize,
            rhs.0,
            rhs.2 as isize,
            rhs.1 as isize,
            T::ZERO,
            T::ONE,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// The inputs of the executor for `formula` with the block plan's pair inputs after the
/// variables: the variables the formula reads outside its pair nodes (others are unused).
fn inputs<'a, T: Real>(
    plan: &ReductionPlan,
    formula: &Expr,
    bp: &BlockPlan,
    data: &'a [T],
) -> Vec<InputData<'a, T>> {
    let read = crate::op::gram::outside_pairs(formula, bp);
    let padded = plan.terms.div_ceil(PAD) * PAD;
    let mut inputs: Vec<InputData<'a, T>> = plan
        .vars
        .iter()
        .enumerate()
        .map(|(pos, v)| {
            let src = &data[v.offset..v.offset + v.rows * v.dim];
            match v.cat {
                _ if !read.contains(&pos) => InputData::Unused,
                VarCat::I => InputData::Rows(src),
                VarCat::P => InputData::Param(src),
                VarCat::J => columns(src, v.dim, padded),
            }
        })
        .collect();
    inputs.extend((0..bp.pairs.len()).map(InputData::Pair));
    inputs
}

/// The blocks of inner products of the task `rows x terms`, into `bufs` (one per pair input,
/// `rows.len() x ld` each).
fn inner_products<'a, T: Real>(
    plan: &ReductionPlan,
    bp: &BlockPlan,
    data: &[T],
    rows: &Range<usize>,
    terms: &Range<usize>,
    bufs: &'a mut [Vec<T>],
    ld: usize,
) -> Vec<PairBlock<'a, T>> {
    for (p, buf) in bp.pairs.iter().zip(bufs.iter_mut()) {
        let (x, y) = (&plan.vars[p.x], &plan.vars[p.y]);
        let d = p.dim;
        let xs = &data[x.offset + rows.start * d..x.offset + rows.end * d];
        let ys = &data[y.offset + terms.start * d..y.offset + terms.end * d];
        // S = X_blk Y_blk^T: X row-major (strides d, 1), Y^T (strides 1, d).
        // SAFETY: the slices hold these matrices; `buf` holds `rows x ld` values.
        unsafe {
            product(
                (rows.len(), terms.len(), d),
                buf,
                ld,
                (xs.as_ptr(), d, 1),
                (ys.as_ptr(), 1, d),
            )
        };
    }
    bufs.iter()
        .map(|b| PairBlock {
            data: b.as_slice(),
            ld,
            j_start: terms.start,
        })
        .collect()
}

/// Runs a block plan on CPU data, as `super::reduce` runs a direct one: values (`f64`) and
/// indices.
pub(crate) fn reduce<T: Real>(
    plan: &ReductionPlan,
    bp: &BlockPlan,
    data: &[T],
) -> (Vec<f64>, Vec<i64>) {
    let (rb, tb) = task_sizes(plan, bp, std::mem::size_of::<T>());
    let blocks: Vec<Range<usize>> = (0..plan.rows)
        .step_by(rb)
        .map(|r0| r0..(r0 + rb).min(plan.rows))
        .collect();
    let chunks: Vec<Range<usize>> = (0..plan.terms)
        .step_by(tb)
        .map(|j0| j0..(j0 + tb).min(plan.terms))
        .collect();
    let tasks: Vec<(usize, usize)> = (0..blocks.len())
        .flat_map(|b| (0..chunks.len()).map(move |c| (b, c)))
        .collect();
    let cats: Vec<(VarCat, usize)> = plan.vars.iter().map(|v| (v.cat, v.dim)).collect();
    let nodes = bp.pair_nodes();
    let isa = isa::detect();
    let buffers = |n: usize| -> Vec<Vec<T>> { (0..n).map(|_| vec![T::ZERO; rb * tb]).collect() };
    if let Some((coef, v)) = &bp.matmul {
        // Sum_j c_ij v_j: C_blk V_blk per task.
        let prog = Program::compile_with_pairs(coef, &cats, ReductionKind::Max, &nodes);
        let ctx = context(plan, &prog, inputs(plan, coef, bp, data), 1);
        let vs = plan.vars[*v];
        let e = vs.dim;
        let parts: Vec<Vec<T>> = tasks
            .par_iter()
            .map_init(
                || (buffers(bp.pairs.len()), vec![T::ZERO; rb * tb]),
                |(bufs, c), &(b, ch)| {
                    let (rows, terms) = (&blocks[b], &chunks[ch]);
                    let pairs = inner_products(plan, bp, data, rows, terms, bufs, tb);
                    values_on(isa, &ctx, rows.clone(), terms.clone(), &pairs, c, tb);
                    let mut out = vec![T::ZERO; rows.len() * e];
                    let vdata = &data[vs.offset + terms.start * e..vs.offset + terms.end * e];
                    // SAFETY: `c` holds `rows x tb` coefficients, `vdata` the chunk's rows.
                    unsafe {
                        product(
                            (rows.len(), e, terms.len()),
                            &mut out,
                            e,
                            (c.as_ptr(), tb, 1),
                            (vdata.as_ptr(), e, 1),
                        )
                    };
                    out
                },
            )
            .collect();
        let mut vals = vec![0.0f64; plan.rows * e];
        for (&(b, _), part) in tasks.iter().zip(&parts) {
            let at = blocks[b].start * e;
            for (acc, p) in vals[at..at + part.len()].iter_mut().zip(part) {
                *acc += p.to_f64();
            }
        }
        return (vals, Vec::new());
    }
    let prog = Program::compile_with_pairs(&plan.formula, &cats, plan.reduction.kind, &nodes);
    let dim = plan.formula.dim();
    let ctx = context(plan, &prog, inputs(plan, &plan.formula, bp, data), dim);
    let states: Vec<States> = tasks
        .par_iter()
        .map_init(
            || buffers(bp.pairs.len()),
            |bufs, &(b, ch)| {
                let (rows, terms) = (&blocks[b], &chunks[ch]);
                let pairs = inner_products(plan, bp, data, rows, terms, bufs, tb);
                run_block_on(isa, &ctx, rows.clone(), terms.clone(), &pairs)
            },
        )
        .collect();
    super::finish(plan, &ctx, &blocks, chunks.len(), states)
}

/// The executor's context of `prog` for a formula of `dim` components.
fn context<'a, T: Real>(
    plan: &ReductionPlan,
    prog: &'a Program,
    inputs: Vec<InputData<'a, T>>,
    dim: usize,
) -> Context<'a, T> {
    let st = plan.reduction.state_spec(dim);
    Context {
        prog,
        inputs,
        reduction: plan.reduction,
        dim,
        state_vals: st.vals,
        state_idx: st.idx,
        out_vals: plan.out.values,
        out_idx: plan.out.indices,
    }
}
