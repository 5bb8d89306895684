//! The tile executor: runs a compiled [`Program`] over a block of output rows.
//!
//! For a block of rows, the row code runs once per row (hoisted values); then for each tile of
//! `j` (so the tile's inputs stay in cache across the rows of the block), the tile code runs
//! for each row and the reduction consumes the root register. Everything here is
//! `#[inline(always)]` so that it is compiled inside the `#[target_feature]` wrappers in
//! `backend/cpu/mod.rs`, once per instruction set.

use super::isa::Arch;
use super::kernels::{MAX_ONE_PASS_DIM, OutView, View, map1, map2, map3, reduce_components};
use super::program::{Instr, Level, Moment, Program, Root, Storage};
#[cfg(doc)]
use crate::formula::UnaryOp;
use crate::formula::ops::{BinaryKernel, TernaryKernel, UnaryKernel};
use crate::math::Real;
use crate::reduction::{Reduction, Tile, kahan_add, lse_merge_tile};

/// Terms per tile when the tile code stores registers: they and the tile's inputs stay in
/// the L1 cache (measured best among 256..2048 for multi-pass formulas).
pub(crate) const TILE: usize = 512;
/// Terms per tile when the whole formula is fused into the reduction (no tile register is
/// stored): only the inputs are read, and longer tiles amortise the per-tile work (measured
/// 25% faster than 512 for the Gaussian kernel sum).
pub(crate) const FUSED_TILE: usize = 2048;
/// Distance between consecutive tile registers (and components): a tile plus 64 to 128 bytes,
/// so that loads and stores of different registers are never a multiple of 4 KiB apart (a
/// precaution against x86 store forwarding's "4K aliasing"; no difference was measured with
/// the current kernels).
const TILE_STRIDE: usize = TILE + 16;
/// Columns of a multi-column `Sum` of products accumulated in one pass.
const GROUP: usize = 4;
/// The `j` inputs are padded to a multiple of this, so that tile loops need no remainder.
pub(crate) const PAD: usize = 32;

/// The data of one bound tensor, as the executor reads it.
pub(crate) enum InputData<'a, T> {
    /// An `i`-variable: `rows x dim`, row-major.
    Rows(&'a [T]),
    /// A `j`-variable, transposed: component `c` of term `j` at `c * stride + j`, padded.
    Cols { data: Vec<T>, stride: usize },
    /// A parameter: `dim` values.
    Param(&'a [T]),
    /// The pair input `k` of a block plan: the block's inner products, from the
    /// [`PairBlock`] `k` given to [`run_block`].
    Pair(usize),
    /// A variable the program does not read (an operand of the block path's inner products).
    Unused,
}

/// A block of one pair input of the block path: the value of pair `(i, j)` for the block's
/// row `r` (`i = rows.start + r`) at `data[r * ld + j - j_start]`, padded so that whole tiles
/// can be read.
#[derive(Clone, Copy)]
pub(crate) struct PairBlock<'a, T> {
    pub data: &'a [T],
    pub ld: usize,
    pub j_start: usize,
}

/// Everything a block needs, shared by all blocks.
pub(crate) struct Context<'a, T> {
    pub prog: &'a Program,
    pub inputs: Vec<InputData<'a, T>>,
    pub reduction: Reduction,
    /// Components of the formula.
    pub dim: usize,
    pub state_vals: usize,
    pub state_idx: usize,
    pub out_vals: usize,
    pub out_idx: usize,
}

/// The loops of [`exec_instr`] over one op, as kernels that the op table instantiates with
/// each op's scalar function (so each loop is compiled, and vectorised, once per op).
///
/// Built only by `exec_instr`, under its safety contract (live, non-overlapping views of `len`
/// terms).
struct Map1<T> {
    a: View<T>,
    out: OutView<T>,
    dim: usize,
    len: usize,
}

impl<T: Real> UnaryKernel<T> for Map1<T> {
    type Output = ();
    #[inline(always)]
    fn run<F: Fn(T) -> T + Copy>(self, f: F) {
        // SAFETY: built only by `exec_instr`, under its contract.
        unsafe { map1(self.a, self.out, self.dim, self.len, f) }
    }
}

/// As [`Map1`], for binary ops.
struct Map2<T> {
    a: View<T>,
    b: View<T>,
    out: OutView<T>,
    dim: usize,
    len: usize,
}

impl<T: Real> BinaryKernel<T> for Map2<T> {
    type Output = ();
    #[inline(always)]
    fn run<F: Fn(T, T) -> T + Copy>(self, f: F) {
        // SAFETY: built only by `exec_instr`, under its contract.
        unsafe { map2(self.a, self.b, self.out, self.dim, self.len, f) }
    }
}

/// As [`Map1`], for ternary ops.
struct Map3<T> {
    a: View<T>,
    b: View<T>,
    c: View<T>,
    out: OutView<T>,
    dim: usize,
    len: usize,
}

impl<T: Real> TernaryKernel<T> for Map3<T> {
    type Output = ();
    #[inline(always)]
    fn run<F: Fn(T, T, T) -> T + Copy>(self, f: F) {
        // SAFETY: built only by `exec_instr`, under its contract.
        unsafe { map3(self.a, self.b, self.c, self.out, self.dim, self.len, f) }
    }
}

/// Runs one instruction over `len` terms.
///
/// # Safety
/// `views` and `outs` must describe live registers of at least `len` terms (tile registers)
/// or one value (row registers) per component, and `out` registers must not overlap inputs.
#[inline(always)]
unsafe fn exec_instr<T: Real, A: Arch, const FMA: bool>(
    ins: &Instr,
    prog: &Program,
    views: &[View<T>],
    outs: &[OutView<T>],
    len: usize,
) {
    let dim = |r: usize| prog.regs[r].dim;
    // SAFETY (every call below): forwarded from the caller.
    unsafe {
        match *ins {
            Instr::Const { value, out } => outs[out].slice(0, len).fill(T::from_f64(value)),
            Instr::Unary { op, a, out } => {
                let (v, o, d) = (views[a], outs[out], dim(out));
                op.with_fn::<T, FMA, _>(Map1 {
                    a: v,
                    out: o,
                    dim: d,
                    len,
                });
                if let Some(exact) = op.large_arg::<T>() {
                    fix_large_args(exact, v, o, d, len);
                }
            }
            Instr::ExpMul { a, b, out } => {
                map2(views[a], views[b], outs[out], dim(out), len, |x, y| {
                    (x * y).exp::<FMA>()
                })
            }
            Instr::Binary { op, a, b, out } => op.with_fn::<T, FMA, _>(Map2 {
                a: views[a],
                b: views[b],
                out: outs[out],
                dim: dim(out),
                len,
            }),
            Instr::Ternary { op, a, b, c, out } => op.with_fn::<T, FMA, _>(Map3 {
                a: views[a],
                b: views[b],
                c: views[c],
                out: outs[out],
                dim: dim(out),
                len,
            }),
            Instr::Sum { a, out } => {
                let o = outs[out].slice(0, len);
                let v = views[a];
                o.fill(T::ZERO);
                for c in 0..v.dim {
                    if v.tile {
                        for (o, &x) in o.iter_mut().zip(v.slice(c, len)) {
                            *o += x;
                        }
                    } else {
                        let x = v.scalar(c);
                        o.iter_mut().for_each(|o| *o += x);
                    }
                }
            }
            Instr::SqDist { a, b, out } => {
                let d = dim(a).max(dim(b));
                reduce_components::<T, FMA>(views[a], views[b], outs[out], d, len, true)
            }
            Instr::Dot { a, b, out } => {
                let d = dim(a).max(dim(b));
                reduce_components::<T, FMA>(views[a], views[b], outs[out], d, len, false)
            }
            Instr::Extract { a, start, out } => {
                let v = views[a];
                let shifted = View {
                    ptr: v.comp(start),
                    dim: dim(out),
                    ..v
                };
                map1(shifted, outs[out], dim(out), len, |x| x);
            }
            Instr::Concat { a, b, out } => {
                let o = outs[out];
                map1(views[a], o, dim(a), len, |x| x);
                let tail = OutView {
                    ptr: o.ptr.add(dim(a) * o.cstride),
                    cstride: o.cstride,
                };
                map1(views[b], tail, dim(b), len, |x| x);
            }
            Instr::MatVec { a, v, out } => {
                let m = dim(v);
                let (va, vv) = (views[a], views[v]);
                for r in 0..dim(out) {
                    let row = View {
                        ptr: va.comp(r * m),
                        dim: m,
                        ..va
                    };
                    let o = OutView {
                        ptr: outs[out].ptr.add(r * outs[out].cstride),
                        cstride: 0,
                    };
                    reduce_components::<T, FMA>(row, vv, o, m, len, false);
                }
            }
            Instr::Broadcast { a, out } => map1(views[a], outs[out], dim(out), len, |x| x),
        }
    }
}

/// Recomputes with `exact` (the standard library's function, see [`UnaryOp::large_arg`]) the
/// values whose argument is beyond the accurate range of the vectorised form (a compare per
/// term otherwise).
///
/// # Safety
/// As for [`exec_instr`].
#[inline(always)]
unsafe fn fix_large_args<T: Real>(
    exact: fn(T) -> T,
    a: View<T>,
    out: OutView<T>,
    dim: usize,
    len: usize,
) {
    for c in 0..dim {
        // SAFETY: forwarded from the caller.
        let o = unsafe { out.slice(c, len) };
        for (l, o) in o.iter_mut().enumerate() {
            // SAFETY: `l < len`; a row view has one value.
            let x = unsafe { *a.comp(c).add(if a.tile { l } else { 0 }) };
            if x.abs() > T::TRIG_LIMIT && x.abs() != T::INFINITY {
                *o = exact(x);
            }
        }
    }
}

/// Scratch memory of one block.
struct Scratch<T> {
    rows: Vec<T>,
    tile: Vec<T>,
    weights: Vec<T>,
}

/// Where the executor is: row `r` of the block (global row `i`), the tile starting at `j0`,
/// and whether row registers are being computed (`row_code`) or read by the tile code.
#[derive(Clone, Copy)]
struct At {
    r: usize,
    i: usize,
    j0: usize,
    row_code: bool,
}

/// Views of every register at position `at`.
#[inline(always)]
fn make_views<T: Real>(
    ctx: &Context<'_, T>,
    scratch: &mut Scratch<T>,
    at: At,
    pairs: &[PairBlock<'_, T>],
    views: &mut Vec<View<T>>,
    outs: &mut Vec<OutView<T>>,
) {
    let At { r, i, j0, row_code } = at;
    views.clear();
    outs.clear();
    let prog = ctx.prog;
    let row_base = scratch.rows.as_mut_ptr().wrapping_add(r * prog.row_len);
    let tile_base = scratch.tile.as_mut_ptr();
    for reg in &prog.regs {
        let (ptr, cstride, tile): (*mut T, usize, bool) = match (reg.storage, reg.level) {
            (Storage::Scratch(o), Level::Row) => (row_base.wrapping_add(o), 1, row_code),
            (Storage::Scratch(o), Level::Tile) => {
                (tile_base.wrapping_add(o * TILE_STRIDE), TILE_STRIDE, true)
            }
            (Storage::Input(p), _) => match &ctx.inputs[p] {
                InputData::Rows(d) => (d.as_ptr().wrapping_add(i * reg.dim) as *mut T, 1, row_code),
                InputData::Param(d) => (d.as_ptr() as *mut T, 1, row_code),
                InputData::Cols { data, stride } => {
                    (data.as_ptr().wrapping_add(j0) as *mut T, *stride, true)
                }
                InputData::Pair(k) => {
                    let p = &pairs[*k];
                    let at = r * p.ld + j0 - p.j_start;
                    (p.data.as_ptr().wrapping_add(at) as *mut T, p.ld, true)
                }
                InputData::Unused => (std::ptr::NonNull::dangling().as_ptr(), 1, row_code),
            },
        };
        views.push(View {
            ptr: ptr as *const T,
            cstride,
            tile,
            dim: reg.dim,
        });
        outs.push(OutView { ptr, cstride });
    }
}

/// The reduction states of a block of rows (`rows x state_vals` values and
/// `rows x state_idx` indices), before finalisation.
pub(crate) struct States {
    pub vals: Vec<f64>,
    pub idx: Vec<i64>,
}

/// Runs the program for output rows `rows` over the intervals of terms `terms` (in order), and
/// hands each row's tile (its registers' views, the number of valid terms and the first term)
/// to `consume`, with the scratch tile of the reduction.
///
/// # Safety
/// As for [`run_block`].
#[inline(always)]
unsafe fn for_each_tile<T: Real, A: Arch, const FMA: bool>(
    ctx: &Context<'_, T>,
    rows: std::ops::Range<usize>,
    terms: &[std::ops::Range<usize>],
    pairs: &[PairBlock<'_, T>],
    mut consume: impl FnMut(usize, &[View<T>], &mut [T], usize, usize),
) {
    let prog = ctx.prog;
    let nr = rows.len();
    let mut scratch = Scratch {
        rows: vec![T::ZERO; nr * prog.row_len],
        tile: vec![T::ZERO; prog.tile_components * TILE_STRIDE],
        weights: Vec::new(),
    };
    // Registers are TILE long: longer tiles only when no register is stored.
    let tile = if prog.tile_code.is_empty() {
        FUSED_TILE
    } else {
        TILE
    };
    scratch.weights = match prog.root {
        // A scratch tile for the exponentials, then ones for a root without weights.
        Root::SqDistExpMoments { .. } => [vec![T::ZERO; tile], vec![T::ONE; tile]].concat(),
        _ => vec![T::ZERO; tile],
    };
    let mut views = Vec::with_capacity(prog.regs.len());
    let mut outs = Vec::with_capacity(prog.regs.len());
    for (r, i) in rows.clone().enumerate() {
        let at = At {
            r,
            i,
            j0: terms.first().map_or(0, |t| t.start),
            row_code: true,
        };
        make_views(ctx, &mut scratch, at, pairs, &mut views, &mut outs);
        for ins in &prog.row_code {
            // SAFETY: row registers have `dim` values in the row scratch; inputs are sized by
            // the caller.
            unsafe { exec_instr::<T, A, FMA>(ins, prog, &views, &outs, 1) };
        }
    }
    for interval in terms {
        let mut j0 = interval.start;
        while j0 < interval.end {
            let valid = tile.min(interval.end - j0);
            let len = valid.div_ceil(PAD) * PAD;
            for (r, i) in rows.clone().enumerate() {
                let at = At {
                    r,
                    i,
                    j0,
                    row_code: false,
                };
                make_views(ctx, &mut scratch, at, pairs, &mut views, &mut outs);
                for ins in &prog.tile_code {
                    // SAFETY: tile registers hold TILE >= len terms; j-inputs and pair blocks
                    // are padded to cover j0 + len (see `run_block`).
                    unsafe { exec_instr::<T, A, FMA>(ins, prog, &views, &outs, len) };
                }
                consume(r, &views, scratch.weights.as_mut_slice(), valid, j0);
            }
            j0 += tile;
        }
    }
}

/// Runs the reduction for output rows `rows` over the intervals of terms `terms`, in order
/// (`FMA` must be `A::FMA`), and returns the rows' reduction states. `pairs` holds the blocks of the pair
/// inputs of a block plan (empty otherwise).
///
/// # Safety
/// `ctx` must be consistent: inputs sized for the program's registers (`i`-variables with at
/// least `rows.end` rows, pair blocks of `rows.len()` rows padded to a multiple of [`PAD`]);
/// each interval of `terms` must lie in the terms, and the `j`-variables hold at least its
/// start plus its length rounded up to a multiple of [`PAD`] values per component (so a start at a
/// multiple of `PAD` needs the terms padded to a multiple of `PAD`; block-sparse plans start
/// anywhere and pad one more `PAD`). Tiles compute the terms past an interval's end up to that
/// bound too (padding, or terms of a skipped block), and reduce only those of the interval.
#[inline(always)]
pub(crate) unsafe fn run_block<T: Real, A: Arch, const FMA: bool>(
    ctx: &Context<'_, T>,
    rows: std::ops::Range<usize>,
    terms: &[std::ops::Range<usize>],
    pairs: &[PairBlock<'_, T>],
) -> States {
    debug_assert_eq!(A::FMA, FMA);
    let nr = rows.len();
    let (sv, si) = (ctx.state_vals, ctx.state_idx);
    let mut vals = vec![0.0f64; nr * sv];
    let mut idx = vec![0i64; nr * si];
    for r in 0..nr {
        ctx.reduction.init(
            ctx.dim,
            &mut vals[r * sv..(r + 1) * sv],
            &mut idx[r * si..(r + 1) * si],
        );
    }
    let consume = |r: usize, views: &[View<T>], weights: &mut [T], valid: usize, j0: usize| {
        // SAFETY: `for_each_tile` hands the views of the current row and tile.
        unsafe {
            accumulate_tile::<T, A, FMA>(
                ctx,
                views,
                weights,
                valid,
                j0,
                &mut vals[r * sv..(r + 1) * sv],
                &mut idx[r * si..(r + 1) * si],
            )
        };
    };
    // SAFETY: forwarded from the caller.
    unsafe { for_each_tile::<T, A, FMA>(ctx, rows, terms, pairs, consume) };
    States { vals, idx }
}

/// Evaluates a one-component formula at every pair of the block `rows x terms`: the value of
/// pair `(rows.start + r, terms.start + l)` goes to `out[r * ld + l]`. The program must have
/// a [`Root::Value`] root.
///
/// # Safety
/// As for [`run_block`]; `out` holds `rows.len() * ld` values and `ld >= terms.len()`.
#[inline(always)]
pub(crate) unsafe fn run_block_values<T: Real, A: Arch, const FMA: bool>(
    ctx: &Context<'_, T>,
    rows: std::ops::Range<usize>,
    terms: std::ops::Range<usize>,
    pairs: &[PairBlock<'_, T>],
    out: &mut [T],
    ld: usize,
) {
    let Root::Value(root) = ctx.prog.root else {
        unreachable!("value programs are compiled with a value root")
    };
    let start = terms.start;
    let consume = |r: usize, views: &[View<T>], _: &mut [T], valid: usize, j0: usize| {
        // SAFETY: the root is a tile register of one component holding `valid` terms.
        let v = unsafe { views[root].slice(0, valid) };
        let at = r * ld + j0 - start;
        out[at..at + valid].copy_from_slice(v);
    };
    let terms = std::slice::from_ref(&terms);
    // SAFETY: forwarded from the caller.
    unsafe { for_each_tile::<T, A, FMA>(ctx, rows, terms, pairs, consume) };
}

/// Evaluates the formula (no reduction) for the terms `terms`: component `c` of term `l` goes
/// to `out[(l - terms.start) * dim + c]`. The program must have a [`Root::Value`] root and
/// no `i`-variable: its terms are the points the formula is evaluated at, vectorised like the
/// terms of a reduction.
///
/// # Safety
/// As for [`run_block`] (`terms` starts at a multiple of [`PAD`]); `out` holds
/// `terms.len() * dim` values.
#[inline(always)]
pub(crate) unsafe fn run_map<T: Real, A: Arch, const FMA: bool>(
    ctx: &Context<'_, T>,
    terms: std::ops::Range<usize>,
    out: &mut [f64],
) {
    let prog = ctx.prog;
    let Root::Value(root) = prog.root else {
        unreachable!("map programs are compiled with a value root")
    };
    let mut scratch = Scratch {
        rows: vec![T::ZERO; prog.row_len],
        tile: vec![T::ZERO; prog.tile_components * TILE_STRIDE],
        weights: Vec::new(),
    };
    let mut views = Vec::with_capacity(prog.regs.len());
    let mut outs = Vec::with_capacity(prog.regs.len());
    let at = At {
        r: 0,
        i: 0,
        j0: 0,
        row_code: true,
    };
    make_views(ctx, &mut scratch, at, &[], &mut views, &mut outs);
    for ins in &prog.row_code {
        // SAFETY: as in `run_block`.
        unsafe { exec_instr::<T, A, FMA>(ins, prog, &views, &outs, 1) };
    }
    let dim = ctx.dim;
    let mut j0 = terms.start;
    while j0 < terms.end {
        let valid = TILE.min(terms.end - j0);
        let len = valid.div_ceil(PAD) * PAD;
        let at = At {
            j0,
            row_code: false,
            ..at
        };
        make_views(ctx, &mut scratch, at, &[], &mut views, &mut outs);
        for ins in &prog.tile_code {
            // SAFETY: as in `run_block`.
            unsafe { exec_instr::<T, A, FMA>(ins, prog, &views, &outs, len) };
        }
        let base = (j0 - terms.start) * dim;
        for c in 0..dim {
            // SAFETY: the root is a tile register of `dim` components holding `len` terms.
            let vals = unsafe { views[root].slice(c, valid) };
            for (l, v) in vals.iter().enumerate() {
                out[base + l * dim + c] = v.to_f64();
            }
        }
        j0 += TILE;
    }
}

/// The values of a row register `x` and the component slices of a tile register `t` of the
/// same dimension (at most [`MAX_ONE_PASS_DIM`]): the two point sets of a fused distance.
///
/// # Safety
/// `x` must be a row view and `t` a tile view with at least `len` terms, both of `x.dim`
/// components.
#[inline(always)]
#[allow(clippy::type_complexity)]
unsafe fn point_pair<'a, T: Real>(
    x: View<T>,
    t: View<T>,
    len: usize,
) -> (usize, [T; MAX_ONE_PASS_DIM], [&'a [T]; MAX_ONE_PASS_DIM]) {
    let mut xs = [T::ZERO; MAX_ONE_PASS_DIM];
    let mut ts: [&[T]; MAX_ONE_PASS_DIM] = [&[]; MAX_ONE_PASS_DIM];
    for c in 0..x.dim {
        // SAFETY: forwarded from the caller.
        xs[c] = unsafe { x.scalar(c) };
        ts[c] = unsafe { t.slice(c, len) };
    }
    (x.dim, xs, ts)
}

/// Consumes the root register of one row over `valid` terms starting at `j0`.
///
/// # Safety
/// As for [`run_block`]; `views` describe the current row and tile.
#[inline(always)]
unsafe fn accumulate_tile<T: Real, A: Arch, const FMA: bool>(
    ctx: &Context<'_, T>,
    views: &[View<T>],
    weights: &mut [T],
    valid: usize,
    j0: usize,
    vals: &mut [f64],
    idx: &mut [i64],
) {
    let dim = ctx.dim;
    // SAFETY (every block below): forwarded from the caller.
    let root = match ctx.prog.root {
        Root::Value(r) => views[r],
        Root::ExpProduct { a, s, y } => {
            let part = unsafe {
                A::dot_exp(
                    views[a].slice(0, valid),
                    views[s].scalar(0),
                    views[y].slice(0, valid),
                )
            };
            let (sum, comp) = vals.split_at_mut(1);
            kahan_add(&mut sum[0], &mut comp[0], part.to_f64());
            return;
        }
        Root::SqDistExpProduct { x, t, s, y, sqrt } => {
            let (s, y) = (views[s], views[y]);
            let (d, xs, ts) = unsafe { point_pair(views[x], views[t], valid) };
            let (s, y) = unsafe { (s.scalar(0), y.slice(0, valid)) };
            let part = if sqrt {
                unsafe { A::dist_exp_dot(&xs[..d], &ts[..d], s, y) }
            } else {
                unsafe { A::sqdist_exp_dot(&xs[..d], &ts[..d], s, y) }
            };
            let (sum, comp) = vals.split_at_mut(1);
            kahan_add(&mut sum[0], &mut comp[0], part.to_f64());
            return;
        }
        Root::SqDistExpMoments { x, t, s, w } => {
            let (d, xs, ts) = unsafe { point_pair(views[x], views[t], valid) };
            // `weights` holds a scratch tile, then a tile of ones (see `run_block`).
            let (e, ones) = weights.split_at_mut(weights.len() / 2);
            let y = match w {
                Some(w) => unsafe { views[w].slice(0, valid) },
                None => &ones[..valid],
            };
            let m = unsafe {
                A::sqdist_exp_moments(&xs[..d], &ts[..d], views[s].scalar(0), y, &mut e[..valid])
            };
            let (sums, comps) = vals.split_at_mut(dim);
            let mut c = 0;
            for &(moment, negate) in &ctx.prog.moments {
                let sign = if negate { -1.0 } else { 1.0 };
                let from = match moment {
                    Moment::One => 0..1,
                    Moment::Diff => 1..1 + d,
                    Moment::SqDist => 1 + d..2 + d,
                };
                for v in &m[from] {
                    kahan_add(&mut sums[c], &mut comps[c], sign * v.to_f64());
                    c += 1;
                }
            }
            return;
        }
        Root::DiffMoments { x, t } => {
            let (d, xs, ts) = unsafe { point_pair(views[x], views[t], valid) };
            let (sums, comps) = vals.split_at_mut(dim);
            let mut c = 0;
            for part in &ctx.prog.diff_parts {
                let coef = unsafe { views[part.coef].slice(0, valid) };
                if part.diff {
                    let m = unsafe { A::diff_dots(&xs[..d], &ts[..d], coef) };
                    for v in &m[..d] {
                        kahan_add(&mut sums[c], &mut comps[c], v.to_f64());
                        c += 1;
                    }
                } else {
                    let v = unsafe { A::sum(coef) };
                    kahan_add(&mut sums[c], &mut comps[c], v.to_f64());
                    c += 1;
                }
            }
            return;
        }
        Root::SqDistScaled { x, t, s } => {
            let s = views[s];
            let (d, xs, ts) = unsafe { point_pair(views[x], views[t], valid) };
            let v = &mut weights[..valid];
            let m = unsafe { A::sqdist_scaled_max(&xs[..d], &ts[..d], s.scalar(0), v) };
            let (ms, ss) = vals.split_at_mut(1);
            unsafe { lse_merge_tile::<T, A>(&mut ms[0], &mut ss[0], v, m) };
            return;
        }
        Root::Product(a, b) => {
            let (x, y) = (views[a], views[b]);
            let (sums, comps) = vals.split_at_mut(dim);
            // One tile factor shared by several columns of the other (kernel times a
            // multi-column weight matrix): four columns per pass, the shared factor loaded once.
            let (shared, multi) = if x.dim == 1 && y.dim > 1 {
                (x, y)
            } else {
                (y, x)
            };
            let mut c0 = 0;
            if shared.dim == 1 && multi.dim >= GROUP && shared.tile && multi.tile {
                let w = unsafe { shared.slice(0, valid) };
                while c0 + GROUP <= dim {
                    let cols: [&[T]; GROUP] =
                        std::array::from_fn(|k| unsafe { multi.slice(c0 + k, valid) });
                    let parts = unsafe { A::dot4(w, cols) };
                    for (k, part) in parts.iter().enumerate() {
                        kahan_add(&mut sums[c0 + k], &mut comps[c0 + k], part.to_f64());
                    }
                    c0 += GROUP;
                }
            }
            for c in c0..dim {
                let part = unsafe {
                    match (x.tile, y.tile) {
                        (true, true) => A::dot(x.slice(c, valid), y.slice(c, valid)),
                        (true, false) => A::sum(x.slice(c, valid)) * y.scalar(c),
                        (false, _) => x.scalar(c) * A::sum(y.slice(c, valid)),
                    }
                };
                kahan_add(&mut sums[c], &mut comps[c], part.to_f64());
            }
            return;
        }
    };
    // SAFETY: forwarded from the caller; `root` holds `dim` components of `valid` terms.
    unsafe {
        ctx.reduction.kind.accumulate_tile::<T, A, FMA>(
            Tile {
                root,
                weights,
                valid,
                j0,
                dim,
            },
            vals,
            idx,
        )
    }
}
