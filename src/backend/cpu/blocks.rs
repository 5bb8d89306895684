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

use super::exec::{FUSED_TILE, InputData, PAD, PairBlock, States};
use super::program::Program;
use super::{context, isa, run_block_on, values_on};
use crate::backend::ReductionPlan;
use crate::formula::{Expr, VarCat};
use crate::math::Real;
use crate::op::gram::BlockPlan;
use crate::reduction::ReductionKind;

/// Output rows per task: 512 rows of 2,048 terms (4 MiB of f32 inner products per thread)
/// measured 1.4x faster than 64 x 4,096 at M = N = 2e4, D = 256, f32, 2 cores (each task's
/// product packs its chunk of `Y` once for more rows).
pub(crate) const ROWS: usize = 512;
/// Groups of chunks of terms per row block when there are fewer row blocks than this.
const GROUPS: usize = 8;
/// Terms per task at most (a multiple of every tile length).
pub(crate) const TERMS: usize = FUSED_TILE;

/// The sizes of a block plan's tasks on the CPU: rows and terms, so that every thread's
/// buffers (one `rows x terms` block per pair input, and one of coefficients for a matrix
/// product) fit `budget` bytes.
/// The default budget binds only past 64 threads in f32; where a budget binds, the sizes (and
/// so the last bits of f32 sums, which are summed by tile) depend on the number of threads.
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
    let mut inputs = super::plan_inputs(plan, data, &|pos| read.contains(&pos));
    inputs.extend((0..bp.pairs.len()).map(InputData::Pair));
    inputs
}

/// The squared norms of the rows of a `rows x d` matrix, summed in `f64`.
fn norms<T: Real>(m: &[T], d: usize) -> Vec<T> {
    m.chunks_exact(d)
        .map(|r| T::from_f64(r.iter().map(|v| v.to_f64() * v.to_f64()).sum()))
        .collect()
}

/// `|x - y|^2` in the compute type, with eight partial sums (vectorised): the direct path's
/// accuracy, for the distances that the expansion would cancel.
fn sqdist_exact<T: Real>(x: &[T], y: &[T]) -> T {
    let mut acc = [T::ZERO; 8];
    let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (a, b) in xc.zip(yc) {
        for k in 0..8 {
            let t = a[k] - b[k];
            acc[k] += t * t;
        }
    }
    for (k, (a, b)) in xr.iter().zip(yr).enumerate() {
        let t = *a - *b;
        acc[k] += t * t;
    }
    acc.iter().fold(T::ZERO, |s, &v| s + v)
}

/// The squared norms of the points of every distance pair input (`None` for inner products):
/// (i-side, j-side).
type Norms<T> = Vec<Option<(Vec<T>, Vec<T>)>>;

fn pair_norms<T: Real>(plan: &ReductionPlan, bp: &BlockPlan, data: &[T]) -> Norms<T> {
    bp.pairs
        .iter()
        .map(|p| {
            p.distance.then(|| {
                let (x, y) = (&plan.vars[p.x], &plan.vars[p.y]);
                let xs = &data[x.offset..x.offset + x.rows * p.dim];
                let ys = &data[y.offset..y.offset + y.rows * p.dim];
                (norms(xs, p.dim), norms(ys, p.dim))
            })
        })
        .collect()
}

/// The blocks of the pair inputs of the task `rows x terms`, into `bufs` (one per pair input,
/// `rows.len() x ld` each): `S = X_blk Y_blk^T` by a matrix product, and for a distance
/// `|x|^2 + |y|^2 - 2 S`, recomputed as `|x - y|^2` where it falls below
/// [`crate::op::gram::NEAR`] times `|x|^2 + |y|^2` (where the expansion loses accuracy).
#[allow(clippy::too_many_arguments)]
fn pair_blocks<'a, T: Real>(
    plan: &ReductionPlan,
    bp: &BlockPlan,
    norms: &Norms<T>,
    data: &[T],
    rows: &Range<usize>,
    terms: &Range<usize>,
    bufs: &'a mut [Vec<T>],
    ld: usize,
) -> Vec<PairBlock<'a, T>> {
    for ((p, buf), nm) in bp.pairs.iter().zip(bufs.iter_mut()).zip(norms) {
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
        let Some((xn, yn)) = nm else { continue };
        let near = T::from_f64(crate::op::gram::NEAR);
        let two = T::from_f64(2.0);
        for (r, i) in rows.clone().enumerate() {
            let row = &mut buf[r * ld..r * ld + terms.len()];
            for (l, s) in row.iter_mut().enumerate() {
                let j = terms.start + l;
                let scale = xn[i] + yn[j];
                let e = scale - two * *s;
                *s = if e < near * scale {
                    sqdist_exact(&xs[r * d..(r + 1) * d], &ys[l * d..(l + 1) * d])
                } else {
                    e
                };
            }
        }
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
    // Each task runs a contiguous group of chunks of one row block and combines their states
    // as it goes, so that memory holds a few states per row, not one per chunk. Row blocks
    // are split into several groups only when they are too few to keep every core busy; the
    // split depends on the sizes only, so results do not depend on the number of threads.
    let per_block = if blocks.len() >= GROUPS {
        1
    } else {
        GROUPS.min(chunks.len())
    };
    let groups: Vec<Range<usize>> = (0..per_block)
        .map(|g| g * chunks.len() / per_block..(g + 1) * chunks.len() / per_block)
        .collect();
    let tasks: Vec<(usize, Range<usize>)> = (0..blocks.len())
        .flat_map(|b| groups.iter().map(move |g| (b, g.clone())))
        .collect();
    let cats: Vec<(VarCat, usize)> = plan.vars.iter().map(|v| (v.cat, v.dim)).collect();
    let nodes = bp.pair_nodes();
    let norms = pair_norms(plan, bp, data);
    let isa = isa::detect();
    let buffers = |n: usize| -> Vec<Vec<T>> { (0..n).map(|_| vec![T::ZERO; rb * tb]).collect() };
    if let Some(mm) = &bp.matmul {
        // sum_j c_ij (u_i - v_j) = u_i sum_j c_ij - (C V)_i: C_blk V_blk and C's row sums per
        // task, added in the order of the terms.
        let prog = Program::compile_with_pairs(&mm.coef, &cats, ReductionKind::Max, &nodes);
        let ctx = context(plan, &prog, inputs(plan, &mm.coef, bp, data), 1);
        let vs = plan.vars[mm.v];
        let e = vs.dim;
        // Per task: (C V)_i and sum_j c_ij over its chunks, in f64, in the order of the terms.
        let parts: Vec<(Vec<f64>, Vec<f64>)> = tasks
            .par_iter()
            .map_init(
                || (buffers(bp.pairs.len()), vec![T::ZERO; rb * tb]),
                |(bufs, c), (b, g)| {
                    let rows = &blocks[*b];
                    let mut cv = vec![0.0f64; rows.len() * e];
                    let mut sums = vec![0.0f64; rows.len()];
                    let mut out = vec![T::ZERO; rows.len() * e];
                    for terms in &chunks[g.clone()] {
                        let pairs = pair_blocks(plan, bp, &norms, data, rows, terms, bufs, tb);
                        values_on(isa, &ctx, rows.clone(), terms.clone(), &pairs, c, tb);
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
                        for (acc, p) in cv.iter_mut().zip(&out) {
                            *acc += p.to_f64();
                        }
                        for (r, s) in sums.iter_mut().enumerate() {
                            *s += c[r * tb..r * tb + terms.len()]
                                .iter()
                                .map(|v| v.to_f64())
                                .sum::<f64>();
                        }
                    }
                    (cv, sums)
                },
            )
            .collect();
        let mut cv = vec![0.0f64; plan.rows * e];
        let mut csum = vec![0.0f64; plan.rows];
        for ((b, _), (part, sums)) in tasks.iter().zip(&parts) {
            let r0 = blocks[*b].start;
            for (acc, p) in cv[r0 * e..r0 * e + part.len()].iter_mut().zip(part) {
                *acc += p;
            }
            for (acc, s) in csum[r0..r0 + sums.len()].iter_mut().zip(sums) {
                *acc += s;
            }
        }
        let v_sign = if mm.v_neg { -1.0 } else { 1.0 };
        let mut vals: Vec<f64> = cv.iter().map(|v| v_sign * v).collect();
        if let Some((u, u_neg)) = mm.u {
            let us = plan.vars[u];
            let sign = if u_neg { -1.0 } else { 1.0 };
            let ud = &data[us.offset..us.offset + us.rows * e];
            for (i, row) in vals.chunks_exact_mut(e).enumerate() {
                for (c, v) in row.iter_mut().enumerate() {
                    *v += sign * ud[i * e + c].to_f64() * csum[i];
                }
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
            |bufs, (b, g)| {
                let rows = &blocks[*b];
                let mut acc: Option<States> = None;
                for terms in &chunks[g.clone()] {
                    let pairs = pair_blocks(plan, bp, &norms, data, rows, terms, bufs, tb);
                    let part =
                        run_block_on(isa, &ctx, rows.clone(), std::slice::from_ref(terms), &pairs);
                    match &mut acc {
                        None => acc = Some(part),
                        Some(a) => super::combine_into(plan, &ctx, a, &part),
                    }
                }
                acc.expect("every group has a chunk")
            },
        )
        .collect();
    super::finish(
        plan,
        &ctx,
        &blocks,
        &vec![groups.len(); blocks.len()],
        states,
    )
}
