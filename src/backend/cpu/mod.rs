//! The CPU backend: formulas compiled into register programs, run tile by tile with SIMD
//! loops, rayon over blocks of output rows.
//!
//! Each output row is computed by one thread, in a fixed order, so results do not depend on
//! the number of threads. The instruction set is chosen at run time ([`isa`]); the executor
//! is instantiated once per level inside `#[target_feature]` functions.

pub(crate) mod exec;
pub mod isa;
pub(crate) mod kernels;
pub mod math;
pub(crate) mod program;
pub mod real;

use rayon::prelude::*;

use self::exec::{Context, InputData, PAD};
use self::isa::Isa;
use self::program::Program;
use self::real::Real;
use super::ReductionPlan;
use crate::formula::VarCat;

/// Output rows per rayon task: enough to reuse each tile of `j` data across rows.
const BLOCK_ROWS: usize = 32;

/// Runs `plan` on CPU data: `data` is the packed input (every bound tensor flattened, at the
/// offsets of `plan.vars`). Returns the values (`rows x out.values`, in `f64` for the caller to
/// convert) and the indices (`rows x out.indices`).
pub(crate) fn reduce<T: Real>(plan: &ReductionPlan, data: &[T]) -> (Vec<f64>, Vec<i64>) {
    let cats: Vec<(VarCat, usize)> = plan.vars.iter().map(|v| (v.cat, v.dim)).collect();
    let prog = Program::compile(&plan.formula, &cats, plan.reduction.kind);
    let padded = plan.terms.div_ceil(PAD) * PAD;
    let inputs: Vec<InputData<'_, T>> = plan
        .vars
        .iter()
        .map(|v| {
            let src = &data[v.offset..v.offset + v.rows * v.dim];
            match v.cat {
                VarCat::I => InputData::Rows(src),
                VarCat::P => InputData::Param(src),
                VarCat::J => {
                    let mut cols = vec![T::ZERO; v.dim * padded];
                    for (j, row) in src.chunks_exact(v.dim).enumerate() {
                        for (c, &x) in row.iter().enumerate() {
                            cols[c * padded + j] = x;
                        }
                    }
                    InputData::Cols {
                        data: cols,
                        stride: padded,
                    }
                }
            }
        })
        .collect();
    let dim = plan.formula.dim();
    let st = plan.reduction.state_spec(dim);
    let ctx = Context {
        prog: &prog,
        inputs,
        reduction: plan.reduction,
        terms: plan.terms,
        dim,
        state_vals: st.vals,
        state_idx: st.idx,
        out_vals: plan.out.values,
        out_idx: plan.out.indices,
    };
    let isa = isa::detect();
    let starts: Vec<usize> = (0..plan.rows).step_by(BLOCK_ROWS).collect();
    let parts: Vec<(Vec<f64>, Vec<i64>)> = starts
        .par_iter()
        .map(|&r0| {
            let rows = r0..(r0 + BLOCK_ROWS).min(plan.rows);
            let mut ov = vec![0.0f64; rows.len() * ctx.out_vals];
            let mut oi = vec![0i64; rows.len() * ctx.out_idx];
            run_block_on(isa, &ctx, rows, &mut ov, &mut oi);
            (ov, oi)
        })
        .collect();
    let mut vals = Vec::with_capacity(plan.rows * ctx.out_vals);
    let mut idx = Vec::with_capacity(plan.rows * ctx.out_idx);
    for (v, i) in parts {
        vals.extend_from_slice(&v);
        idx.extend_from_slice(&i);
    }
    (vals, idx)
}

/// Runs one block with the executor compiled for `isa`.
fn run_block_on<T: Real>(
    isa: Isa,
    ctx: &Context<'_, T>,
    rows: std::ops::Range<usize>,
    ov: &mut [f64],
    oi: &mut [i64],
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` is only chosen when the CPU reports AVX-512F, AVX2 and FMA;
        // the context was built by `reduce`, which sizes every input as `run_block` requires.
        Isa::Avx512 => unsafe { run_avx512(ctx, rows, ov, oi) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` is only chosen when the CPU reports AVX2 and FMA; as above.
        Isa::Avx2 => unsafe { run_avx2(ctx, rows, ov, oi) },
        // SAFETY: the context was built by `reduce` (see above).
        _ => unsafe { exec::run_block::<T, isa::Baseline, BASELINE_FMA>(ctx, rows, ov, oi) },
    }
}

/// FMA is part of the baseline on aarch64, not on x86-64.
const BASELINE_FMA: bool = cfg!(target_arch = "aarch64");

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn run_avx512<T: Real>(
    ctx: &Context<'_, T>,
    rows: std::ops::Range<usize>,
    ov: &mut [f64],
    oi: &mut [i64],
) {
    // SAFETY: forwarded from `run_block_on`.
    unsafe { exec::run_block::<T, isa::Avx512, true>(ctx, rows, ov, oi) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2<T: Real>(
    ctx: &Context<'_, T>,
    rows: std::ops::Range<usize>,
    ov: &mut [f64],
    oi: &mut [i64],
) {
    // SAFETY: forwarded from `run_block_on`.
    unsafe { exec::run_block::<T, isa::Avx2, true>(ctx, rows, ov, oi) }
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
