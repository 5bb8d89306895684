//! The CPU backend: formulas compiled into register programs, run tile by tile with SIMD
//! loops, rayon over blocks of output rows.
//!
//! Each output row is computed by one thread, in a fixed order, so results do not depend on
//! the number of threads. A block-sparse plan (`plan.ranges`) runs the same loop over the
//! kept blocks only: its blocks of rows are aligned to the row intervals of the ranges, and
//! each visits only the merged intervals of terms its interval keeps. The instruction set is chosen at run time ([`isa`]); the executor
//! is instantiated once per level inside `#[target_feature]` functions.

mod blocks;
pub(crate) mod exec;
pub mod isa;
pub(crate) mod kernels;
pub(crate) mod program;

use rayon::prelude::*;

use std::ops::Range;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout};
use half::{bf16, f16};

use self::exec::{Context, InputData, PAD, PairBlock, States};
use self::isa::Isa;
use self::program::Program;
use super::{Outputs, ReductionPlan};
use crate::error::Error;
use crate::formula::VarCat;
use crate::math::Real;
use crate::reduction::ReductionKind;

/// Output rows per rayon task: enough to reuse each tile of `j` data across rows.
const BLOCK_ROWS: usize = 32;
/// With fewer row blocks than this, the terms are split too ...
const SPLIT_BELOW_BLOCKS: usize = 8;
/// ... in chunks of this many terms (a multiple of every tile length), when there are at
/// least two chunks.
const SPLIT_TERMS: usize = 1 << 16;

/// Runs `plan` on the packed input in `storage` (contiguous, from `layout`), in its dtype:
/// the outputs as Candle storage (f16 and bf16 are computed in f32, then rounded).
pub(crate) fn reduce_storage(
    plan: &ReductionPlan,
    storage: &CpuStorage,
    layout: &Layout,
) -> candle_core::Result<Outputs<CpuStorage>> {
    let (start, end) = super::packed_range(layout)?;
    let sched = Schedule::of(plan);
    check_states(plan, &sched)?;
    let (vals, idx) = match storage {
        CpuStorage::F32(v) => reduce_scheduled::<f32>(plan, &sched, &v[start..end]),
        CpuStorage::F64(v) => reduce_scheduled::<f64>(plan, &sched, &v[start..end]),
        CpuStorage::F16(v) => reduce_scheduled::<f32>(plan, &sched, &to_f32(&v[start..end])),
        CpuStorage::BF16(v) => reduce_scheduled::<f32>(plan, &sched, &to_f32(&v[start..end])),
        other => {
            let detail = format!("unsupported dtype {:?}", other.dtype());
            return Err(Error::DType {
                op: "reduction",
                detail,
            }
            .into());
        }
    };
    let values = match storage {
        CpuStorage::F32(_) => CpuStorage::F32(vals.iter().map(|&x| x as f32).collect()),
        CpuStorage::F64(_) => CpuStorage::F64(vals),
        CpuStorage::F16(_) => CpuStorage::F16(vals.iter().map(|&x| f16::from_f64(x)).collect()),
        _ => CpuStorage::BF16(vals.iter().map(|&x| bf16::from_f64(x)).collect()),
    };
    let idx = CpuStorage::I64(idx);
    Ok(match (plan.out.values > 0, plan.out.indices > 0) {
        (true, with_indices) => Outputs {
            primary: values,
            indices: with_indices.then_some(idx),
        },
        (false, _) => Outputs {
            primary: idx,
            indices: None,
        },
    })
}

fn to_f32(v: &[impl Copy + Into<f32>]) -> Vec<f32> {
    v.iter().map(|&x| x.into()).collect()
}

/// Runs `plan` on CPU data: `data` is the packed input (every bound tensor flattened, at the
/// offsets of `plan.vars`). Returns the values (`rows x out.values`, in `f64` for the caller to
/// convert) and the indices (`rows x out.indices`).
#[cfg(test)]
pub(crate) fn reduce<T: Real>(plan: &ReductionPlan, data: &[T]) -> (Vec<f64>, Vec<i64>) {
    reduce_scheduled(plan, &Schedule::of(plan), data)
}

/// [`reduce`] with the schedule of `plan` ([`Schedule::of`]).
fn reduce_scheduled<T: Real>(
    plan: &ReductionPlan,
    sched: &Schedule,
    data: &[T],
) -> (Vec<f64>, Vec<i64>) {
    // A sum of one term of a formula without j-variables is the formula itself, row by row:
    // evaluated vectorised over the rows (the backward pass asks for such evaluations).
    if plan.terms == 1
        && plan.ranges.is_none()
        && plan.reduction.kind == ReductionKind::Sum
        && plan.vars.iter().all(|v| v.cat != VarCat::J)
    {
        return (map_rows(plan, data), Vec::new());
    }
    if let Some(bp) = &plan.blocks {
        return blocks::reduce(plan, bp, data);
    }
    let cats: Vec<(VarCat, usize)> = plan.vars.iter().map(|v| (v.cat, v.dim)).collect();
    let prog = Program::compile(&plan.formula, &cats, plan.reduction.kind);
    let inputs = plan_inputs(plan, data, &|_| true);
    let ctx = context(plan, &prog, inputs, plan.formula.dim());
    let isa = isa::detect();
    let states: Vec<States> = sched
        .tasks
        .par_iter()
        .map(|task| {
            let rows = sched.blocks[task.block].clone();
            run_block_on(isa, &ctx, rows, sched.terms_of(task), &[])
        })
        .collect();
    finish(plan, &ctx, &sched.blocks, &sched.counts, states)
}

/// What [`reduce`] runs: blocks of at most [`BLOCK_ROWS`] rows covering every output row in
/// order, and the tasks (run in parallel) that reduce a block over some of its terms; the
/// states of a block's tasks are combined in order. The schedule depends on the sizes and the
/// ranges only (never on the number of threads), so results are deterministic.
///
/// Without ranges every block has the terms `0..terms`. With ranges, blocks are aligned to
/// the row intervals and each has the merged intervals of terms its interval keeps (none for
/// rows outside every kept block: such a block has no task and gets the initial state).
/// With few blocks, the terms are split in chunks of [`SPLIT_TERMS`] (long intervals only),
/// one task each, so that every core works; otherwise a block is one task over all its
/// intervals, run in one pass of the executor (its scratch and its rows' hoisted values made
/// once), accumulating into one state.
struct Schedule {
    /// The blocks of rows.
    blocks: Vec<Range<usize>>,
    /// Per block, its number of tasks (consecutive in `tasks`).
    counts: Vec<usize>,
    tasks: Vec<Task>,
    /// The intervals of terms of each group of rows (a block's `group`).
    intervals: Vec<Vec<Range<usize>>>,
}

/// One task of a [`Schedule`].
struct Task {
    block: usize,
    terms: TaskTerms,
}

/// The terms of a [`Task`].
enum TaskTerms {
    /// Every interval of the block's group (`Schedule::intervals[group]`), in order.
    Group(usize),
    /// One chunk of terms.
    Chunk(Range<usize>),
}

impl Schedule {
    fn of(plan: &ReductionPlan) -> Schedule {
        // Groups of rows that share their intervals of terms, covering 0..rows in order.
        let mut groups: Vec<(Range<usize>, Vec<Range<usize>>)> = Vec::new();
        match &plan.ranges {
            None => groups.push((0..plan.rows, std::iter::once(0..plan.terms).collect())),
            Some(r) => {
                let mut at = 0;
                for b in r.row_blocks() {
                    if b.rows.start > at {
                        groups.push((at..b.rows.start, Vec::new()));
                    }
                    at = b.rows.end;
                    groups.push((b.rows, b.terms));
                }
                if at < plan.rows {
                    groups.push((at..plan.rows, Vec::new()));
                }
            }
        }
        let mut blocks = Vec::new();
        let mut block_group = Vec::new();
        for (g, (rows, _)) in groups.iter().enumerate() {
            for r0 in rows.clone().step_by(BLOCK_ROWS) {
                blocks.push(r0..(r0 + BLOCK_ROWS).min(rows.end));
                block_group.push(g);
            }
        }
        let split = blocks.len() < SPLIT_BELOW_BLOCKS;
        let mut tasks = Vec::new();
        let mut counts = vec![0; blocks.len()];
        for (b, &g) in block_group.iter().enumerate() {
            let intervals = &groups[g].1;
            if intervals.is_empty() {
                continue;
            }
            if split {
                for t in intervals.iter().flat_map(|t| term_chunks(t.clone())) {
                    tasks.push(Task {
                        block: b,
                        terms: TaskTerms::Chunk(t),
                    });
                    counts[b] += 1;
                }
            } else {
                tasks.push(Task {
                    block: b,
                    terms: TaskTerms::Group(g),
                });
                counts[b] = 1;
            }
        }
        let intervals = groups.into_iter().map(|(_, t)| t).collect();
        Schedule {
            blocks,
            counts,
            tasks,
            intervals,
        }
    }

    /// The intervals of terms of `task`, in order.
    fn terms_of<'a>(&'a self, task: &'a Task) -> &'a [Range<usize>] {
        match &task.terms {
            TaskTerms::Group(g) => &self.intervals[*g],
            TaskTerms::Chunk(c) => std::slice::from_ref(c),
        }
    }
}

/// The executor's inputs of `plan`'s variables from its packed data: the i-variables and
/// parameters in place, the j-variables transposed and padded ([`columns`]), and those that
/// `read` says the program does not read as [`InputData::Unused`]. Block-sparse plans start
/// intervals of terms anywhere, so their padding covers one more [`PAD`] past the last term
/// (a tile reads its terms rounded up to a multiple of `PAD`).
fn plan_inputs<'a, T: Real>(
    plan: &ReductionPlan,
    data: &'a [T],
    read: &dyn Fn(usize) -> bool,
) -> Vec<InputData<'a, T>> {
    let extra = if plan.ranges.is_some() { PAD } else { 0 };
    let padded = plan.terms.div_ceil(PAD) * PAD + extra;
    plan.vars
        .iter()
        .enumerate()
        .map(|(pos, v)| {
            let src = &data[v.offset..v.offset + v.rows * v.dim];
            match v.cat {
                _ if !read(pos) => InputData::Unused,
                VarCat::I => InputData::Rows(src),
                VarCat::P => InputData::Param(src),
                VarCat::J => columns(src, v.dim, padded),
            }
        })
        .collect()
}

/// The executor's context of `prog` for `plan`, reducing a formula of `dim` components.
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

/// The chunks of an interval of terms that a [`Schedule`] with few blocks splits: chunks of
/// [`SPLIT_TERMS`] (a multiple of every tile length) when there are at least two, else the
/// interval.
fn term_chunks(terms: Range<usize>) -> Vec<Range<usize>> {
    if terms.len() >= 2 * SPLIT_TERMS {
        terms
            .clone()
            .step_by(SPLIT_TERMS)
            .map(|j0| j0..(j0 + SPLIT_TERMS).min(terms.end))
            .collect()
    } else {
        vec![terms]
    }
}

/// The partial states of [`reduce`] (one per task of `sched`, all held until they are
/// combined) fit in memory: the `k` of a k-nearest search makes them large.
fn check_states(plan: &ReductionPlan, sched: &Schedule) -> candle_core::Result<()> {
    use crate::backend::memory::{bytes, reserve};
    if plan.blocks.is_some() {
        return Ok(()); // the block path sizes its own buffers
    }
    let st = plan.reduction.state_spec(plan.formula.dim());
    let tasks = sched.tasks.len();
    let rows = tasks.checked_mul(BLOCK_ROWS);
    let need = rows
        .and_then(|r| bytes(&[(r, st.vals), (r, st.idx)]))
        .and_then(|b| b.checked_mul(8));
    Ok(reserve(
        plan.reduction.kind.name(),
        || {
            format!(
                "the partial states ({tasks} tasks of {BLOCK_ROWS} rows, {} values and {} \
                 indices per row)",
                st.vals, st.idx
            )
        },
        need,
        &candle_core::Device::Cpu,
    )?)
}

/// Combines the states of `states` (block after block, the `counts[b]` states of block `b`
/// in order; a block without states reduces over zero terms: its initial state) and
/// finalises them: the values (`f64`) and the indices of `plan`'s rows.
fn finish<T: Real>(
    plan: &ReductionPlan,
    ctx: &Context<'_, T>,
    blocks: &[Range<usize>],
    counts: &[usize],
    states: Vec<States>,
) -> (Vec<f64>, Vec<i64>) {
    let dim = ctx.dim;
    let (sv, si) = (ctx.state_vals, ctx.state_idx);
    let (ov, oi) = (ctx.out_vals, ctx.out_idx);
    let mut vals = vec![0.0f64; plan.rows * ov];
    let mut idx = vec![0i64; plan.rows * oi];
    let mut states = states.into_iter();
    for (b, &count) in blocks.iter().zip(counts) {
        let mut acc = if count == 0 {
            let mut init = States {
                vals: vec![0.0; b.len() * sv],
                idx: vec![0; b.len() * si],
            };
            for r in 0..b.len() {
                plan.reduction.init(
                    dim,
                    &mut init.vals[r * sv..(r + 1) * sv],
                    &mut init.idx[r * si..(r + 1) * si],
                );
            }
            init
        } else {
            states.next().expect("one state per task")
        };
        for _ in 1..count {
            let part = states.next().expect("one state per task");
            combine_into(plan, ctx, &mut acc, &part);
        }
        for (r, i) in b.clone().enumerate() {
            plan.reduction.finalize(
                dim,
                &acc.vals[r * sv..(r + 1) * sv],
                &acc.idx[r * si..(r + 1) * si],
                &mut vals[i * ov..(i + 1) * ov],
                &mut idx[i * oi..(i + 1) * oi],
            );
        }
    }
    (vals, idx)
}

/// Merges the states of `part` (a block's rows over later terms) into `acc`, row by row.
fn combine_into<T: Real>(
    plan: &ReductionPlan,
    ctx: &Context<'_, T>,
    acc: &mut States,
    part: &States,
) {
    let (sv, si) = (ctx.state_vals, ctx.state_idx);
    let rows = acc
        .vals
        .len()
        .checked_div(sv)
        .unwrap_or_else(|| acc.idx.len() / si.max(1));
    for r in 0..rows {
        plan.reduction.combine(
            ctx.dim,
            &mut acc.vals[r * sv..(r + 1) * sv],
            &mut acc.idx[r * si..(r + 1) * si],
            &part.vals[r * sv..(r + 1) * sv],
            &part.idx[r * si..(r + 1) * si],
        );
    }
}

/// `rows x dim` values, component-major with `padded` values per component (zeros after the
/// last row): the layout of the terms of a tile.
fn columns<T: Real>(src: &[T], dim: usize, padded: usize) -> InputData<'_, T> {
    let mut cols = vec![T::ZERO; dim * padded];
    for (j, row) in src.chunks_exact(dim).enumerate() {
        for (c, &x) in row.iter().enumerate() {
            cols[c * padded + j] = x;
        }
    }
    InputData::Cols {
        data: cols,
        stride: padded,
    }
}

/// Rows per rayon task of a pointwise evaluation.
const MAP_ROWS: usize = 8 * exec::TILE;

/// The formula of `plan` (no j-variable) at each of its rows, as `rows x dim` values: the rows
/// take the place of the terms of a reduction, so the evaluation is vectorised over them.
fn map_rows<T: Real>(plan: &ReductionPlan, data: &[T]) -> Vec<f64> {
    let formula = plan.formula.swap_ij();
    let cats: Vec<(VarCat, usize)> = plan
        .vars
        .iter()
        .map(|v| match v.cat {
            VarCat::I => (VarCat::J, v.dim),
            other => (other, v.dim),
        })
        .collect();
    // Compiled as for a `Max`: its root is the formula's value, never a fused product.
    let prog = Program::compile(&formula, &cats, ReductionKind::Max);
    let padded = plan.rows.div_ceil(PAD) * PAD;
    let inputs: Vec<InputData<'_, T>> = plan
        .vars
        .iter()
        .map(|v| {
            let src = &data[v.offset..v.offset + v.rows * v.dim];
            match v.cat {
                VarCat::P => InputData::Param(src),
                VarCat::I | VarCat::J => columns(src, v.dim, padded),
            }
        })
        .collect();
    let dim = formula.dim();
    let ctx = Context {
        prog: &prog,
        inputs,
        reduction: plan.reduction,
        dim,
        state_vals: 0,
        state_idx: 0,
        out_vals: dim,
        out_idx: 0,
    };
    let isa = isa::detect();
    let mut out = vec![0.0f64; plan.rows * dim];
    out.par_chunks_mut(MAP_ROWS * dim)
        .enumerate()
        .for_each(|(k, chunk)| {
            let start = k * MAP_ROWS;
            map_on(isa, &ctx, start..start + chunk.len() / dim, chunk);
        });
    out
}

/// Runs a pointwise evaluation with the executor compiled for `isa`.
fn map_on<T: Real>(isa: Isa, ctx: &Context<'_, T>, terms: Range<usize>, out: &mut [f64]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` is only chosen when the CPU reports AVX-512F, AVX2 and FMA;
        // `map_rows` sizes every input and starts chunks at multiples of `PAD`.
        Isa::Avx512 => unsafe { map_avx512(ctx, terms, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` is only chosen when the CPU reports AVX2 and FMA; as above.
        Isa::Avx2 => unsafe { map_avx2(ctx, terms, out) },
        // SAFETY: as above.
        _ => unsafe { exec::run_map::<T, isa::Baseline, BASELINE_FMA>(ctx, terms, out) },
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn map_avx512<T: Real>(ctx: &Context<'_, T>, terms: Range<usize>, out: &mut [f64]) {
    // SAFETY: forwarded from `map_on`.
    unsafe { exec::run_map::<T, isa::Avx512, true>(ctx, terms, out) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn map_avx2<T: Real>(ctx: &Context<'_, T>, terms: Range<usize>, out: &mut [f64]) {
    // SAFETY: forwarded from `map_on`.
    unsafe { exec::run_map::<T, isa::Avx2, true>(ctx, terms, out) }
}

/// Runs one block over the intervals `terms` with the executor compiled for `isa` (`pairs`:
/// the blocks of a block plan's pair inputs).
fn run_block_on<T: Real>(
    isa: Isa,
    ctx: &Context<'_, T>,
    rows: Range<usize>,
    terms: &[Range<usize>],
    pairs: &[PairBlock<'_, T>],
) -> States {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` is only chosen when the CPU reports AVX-512F, AVX2 and FMA;
        // the context was built by `reduce` or `blocks::reduce`, which size every input as
        // `run_block` requires (padding past the last term covers a tile rounded up to
        // `PAD` from any start) and split the terms as it requires.
        Isa::Avx512 => unsafe { run_avx512(ctx, rows, terms, pairs) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` is only chosen when the CPU reports AVX2 and FMA; as above.
        Isa::Avx2 => unsafe { run_avx2(ctx, rows, terms, pairs) },
        // SAFETY: the context was built by `reduce` (see above).
        _ => unsafe { exec::run_block::<T, isa::Baseline, BASELINE_FMA>(ctx, rows, terms, pairs) },
    }
}

/// FMA is part of the baseline on aarch64, not on x86-64.
const BASELINE_FMA: bool = cfg!(target_arch = "aarch64");

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn run_avx512<T: Real>(
    ctx: &Context<'_, T>,
    rows: Range<usize>,
    terms: &[Range<usize>],
    pairs: &[PairBlock<'_, T>],
) -> States {
    // SAFETY: forwarded from `run_block_on`.
    unsafe { exec::run_block::<T, isa::Avx512, true>(ctx, rows, terms, pairs) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2<T: Real>(
    ctx: &Context<'_, T>,
    rows: Range<usize>,
    terms: &[Range<usize>],
    pairs: &[PairBlock<'_, T>],
) -> States {
    // SAFETY: forwarded from `run_block_on`.
    unsafe { exec::run_block::<T, isa::Avx2, true>(ctx, rows, terms, pairs) }
}

/// Evaluates a block's pair values with the executor compiled for `isa` (see
/// `exec::run_block_values`).
fn values_on<T: Real>(
    isa: Isa,
    ctx: &Context<'_, T>,
    rows: Range<usize>,
    terms: Range<usize>,
    pairs: &[PairBlock<'_, T>],
    out: &mut [T],
    ld: usize,
) {
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn avx512<T: Real>(
        ctx: &Context<'_, T>,
        rows: Range<usize>,
        terms: Range<usize>,
        pairs: &[PairBlock<'_, T>],
        out: &mut [T],
        ld: usize,
    ) {
        // SAFETY: forwarded from `values_on`.
        unsafe { exec::run_block_values::<T, isa::Avx512, true>(ctx, rows, terms, pairs, out, ld) }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2<T: Real>(
        ctx: &Context<'_, T>,
        rows: Range<usize>,
        terms: Range<usize>,
        pairs: &[PairBlock<'_, T>],
        out: &mut [T],
        ld: usize,
    ) {
        // SAFETY: forwarded from `values_on`.
        unsafe { exec::run_block_values::<T, isa::Avx2, true>(ctx, rows, terms, pairs, out, ld) }
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: chosen only when the CPU reports these features; `blocks::reduce` sizes
        // the inputs, the pair blocks and `out` as `run_block_values` requires.
        Isa::Avx512 => unsafe { avx512(ctx, rows, terms, pairs, out, ld) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { avx2(ctx, rows, terms, pairs, out, ld) },
        // SAFETY: as above.
        _ => unsafe {
            exec::run_block_values::<T, isa::Baseline, BASELINE_FMA>(
                ctx, rows, terms, pairs, out, ld,
            )
        },
    }
}

/// `x = exp(x)` over a slice with the vectorised exponential of the instruction set reductions
/// use ([`isa::detect`]): the reference throughput that benchmarks compare kernels against.
///
/// ```
/// let mut v = vec![0f32, 1.0, -1.0];
/// lazy_kernels::backend::cpu::exp_in_place_f32(&mut v);
/// assert!((v[1] - std::f32::consts::E).abs() < 1e-6);
/// ```
pub fn exp_in_place_f32(x: &mut [f32]) {
    exp_in_place(x)
}

/// `x = exp(x)` over a slice of `f64`, as [`exp_in_place_f32`].
pub fn exp_in_place_f64(x: &mut [f64]) {
    exp_in_place(x)
}

fn exp_in_place<T: Real>(x: &mut [T]) {
    #[inline(always)]
    fn body<T: Real, const FMA: bool>(x: &mut [T]) {
        for v in x.iter_mut() {
            *v = v.exp::<FMA>();
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn avx512<T: Real>(x: &mut [T]) {
        body::<T, true>(x)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2<T: Real>(x: &mut [T]) {
        body::<T, true>(x)
    }
    match isa::detect() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: chosen only when the CPU reports these features.
        Isa::Avx512 => unsafe { avx512(x) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: chosen only when the CPU reports these features.
        Isa::Avx2 => unsafe { avx2(x) },
        _ => body::<T, BASELINE_FMA>(x),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::VarSpec;
    use crate::formula::parse;
    use crate::reduction::Reduction;

    /// A one-term sum of a formula without j-variables (the backward pass's pointwise
    /// evaluations) is the formula at each row, across the chunks of the parallel evaluation.
    #[test]
    fn pointwise_evaluation_is_the_formula_at_each_row() {
        let rows = MAP_ROWS + 77;
        let formula = parse("Concat(Exp(Vi(0,2)) * Pm(1,1), Sum(Vi(0,2)))", &[]).unwrap();
        let x: Vec<f64> = (0..2 * rows).map(|k| (k as f64 * 0.37).sin()).collect();
        let mut data = x.clone();
        data.push(1.5);
        let plan = ReductionPlan {
            formula: formula.clone(),
            reduction: Reduction::new(ReductionKind::Sum, crate::reduction::Axis::J),
            vars: vec![
                VarSpec {
                    cat: VarCat::I,
                    dim: 2,
                    rows,
                    offset: 0,
                },
                VarSpec {
                    cat: VarCat::P,
                    dim: 1,
                    rows: 1,
                    offset: 2 * rows,
                },
            ],
            rows,
            terms: 1,
            out: Reduction::new(ReductionKind::Sum, crate::reduction::Axis::J)
                .output_spec(3)
                .unwrap(),
            blocks: None,
            ranges: None,
        };
        let (vals, idx) = reduce::<f64>(&plan, &data);
        assert!(idx.is_empty());
        assert_eq!(vals.len(), rows * 3);
        for (i, (p, row)) in x.chunks(2).zip(vals.chunks(3)).enumerate() {
            let want = [p[0].exp() * 1.5, p[1].exp() * 1.5, p[0] + p[1]];
            for (g, w) in row.iter().zip(want) {
                assert!(
                    (g - w).abs() <= 1e-14 * w.abs().max(1.0),
                    "row {i}: {row:?} vs {want:?}"
                );
            }
        }
    }
}
