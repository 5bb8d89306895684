//! Reductions: what is computed over the reduced index, with one set of semantics shared by
//! every backend.
//!
//! A reduction keeps, for each output row, a small state of `f64` values and `i64` indices
//! (typed indices: no index ever lives in a float, so they are exact past 2^24). The protocol is
//! [`Reduction::init`], [`Reduction::accumulate`] (one term `j`), [`Reduction::combine`] (two
//! partial states over consecutive ranges of `j`; backends use it to merge vectorised tile
//! partials and, on GPUs, blocks) and [`Reduction::finalize`]. States are in `f64` whatever the
//! input dtype, so `f32` sums over 10^7 terms keep their accuracy: backends sum a tile of
//! terms in the compute type and add the tile's partial sum into the `f64` state with Kahan
//! compensation.
//!
//! # IEEE semantics
//!
//! Infinite, `NaN` and subnormal terms give the results below on every backend (the CPU, the
//! CUDA kernels, the fused and block paths); each family's file says how and gives the
//! gradients:
//!
//! | reduction | row with `+inf` | `-inf` | both | `NaN` | all `-inf` |
//! |---|---|---|---|---|---|
//! | `Sum` | `+inf` | `-inf` | `NaN` | `NaN` | `-inf` |
//! | `LogSumExp` | `+inf` | ignored | `+inf` | `NaN` | `-inf` |
//! | `SumSoftMaxWeight` (scores) | mean of `G` over the `+inf` terms | weight 0 | as `+inf` | `NaN` | 0 |
//! | `Min`, `ArgMin`, `KMin` | ordinary value | ordinary value | ordinary | `NaN` first | `-inf` |
//! | `Max`, `ArgMax` | ordinary value | ordinary value | ordinary | `NaN` first | `-inf` |
//!
//! `Sum` and `LogSumExp` agree with a dense Candle `sum` and `log(sum(exp))`. `SumSoftMaxWeight`
//! returns the limit of the weights where a dense softmax computes `inf / inf` or `0 / 0`
//! (`NaN`), and 0 for a fully masked row as FlashAttention does. The selections put `NaN` first
//! (it propagates) where Candle's `min`/`max` skip it. Subnormal terms are neither flushed nor
//! treated specially by the CPU backend.
//!
//! # Design: one file per family
//!
//! Every [`ReductionKind`] belongs to a *family*, a type implementing the crate-internal trait
//! `Family`, in its own file:
//!
//! | file | family | kinds |
//! |---|---|---|
//! | `sum.rs` | `Sum` | [`ReductionKind::Sum`] |
//! | `logsumexp.rs` | `LogSumExp` | [`ReductionKind::LogSumExp`] |
//! | `softmax.rs` | `SoftMax` | [`ReductionKind::SumSoftMaxWeight`] |
//! | `select.rs` | `Select { max, outputs }` | `Min`, `Max`, `ArgMin`, `ArgMax`, `MinArgMin`, `MaxArgMax` |
//! | `kselect.rs` | `KSelect { k, outputs }` | `KMin`, `ArgKMin`, `KMinArgKMin` |
//!
//! A family gives everything about its kinds, and nothing else in the crate spells it out:
//!
//! - its name, output spec and state spec;
//! - the host `f64` protocol: init, accumulate, combine, finalize (what [`Reduction`] runs);
//! - the CPU backend's tile accumulation (`Family::accumulate_tile`, generic over the compute
//!   type and the instruction set, `#[inline(always)]` so that it is compiled inside the
//!   `#[target_feature]` wrappers with no dispatch in its loops; `backend/cpu/exec.rs` calls
//!   it for every root that is not a fused Sum/LogSumExp product);
//! - its CUDA code: the C helper functions its states use (`Family::cuda_helpers`, emitted
//!   into every generated module after `cuda/lk_reduce.cuh`'s storage conversions) and the C
//!   statements of the kernels (`Family::cuda_code`);
//! - its gradient rule (`Family::grad_rule`: term-wise with a given adjoint, softmax,
//!   selected indices, or none) and the kind the forward pass must run so that the backward
//!   pass has what it needs (`Family::forward_for_grad`: `Min` runs as `MinArgMin` when a
//!   gradient may be asked for).
//!
//! [`ReductionKind`] reaches its family in exactly one `match` (`ReductionKind::visit`): a
//! *visitor* receives the family by value, so generic code (the CPU tile loops) is
//! monomorphised per family with no dynamic dispatch, and host code that needs no generics
//! takes the family as a `&dyn Family` (`ReductionKind::family`). A family of several kinds
//! is one arm, and its own file says which member each kind is (`Select::of`, `KSelect::of`):
//! the CPU backend then compiles one tile loop per family, with the parameters (`max`, `k`)
//! read at run time, as it did before families existed.
//!
//! The Min/Max family's order, "`a` comes strictly before `b`" (a `NaN` first, then `<` for
//! minima or `>` for maxima; ties keep the earlier index, since a state only takes a later
//! term that comes strictly before its value), is written once in Rust (`select::before`,
//! generic over the compute type, used by the host code and the CPU tile filters of `select.rs`
//! and `kselect.rs`) and once in C next to it (`lk_before` in `select::CUDA`), which every C
//! use calls.
//!
//! # Adding a reduction kind
//!
//! Say `SumSquares`, `sum_j F^2`. It needs a new family; a kind with the rules of an existing
//! family (a `Select` returning something else, say) would instead be a new member of that
//! family, in its file (`of`, `name`), and steps 1 and 2 below. The steps:
//!
//! 1. a variant `SumSquares` of [`ReductionKind`] (documented), and the kind in
//!    [`ReductionKind::all`];
//! 2. an arm in `ReductionKind::visit`: `ReductionKind::SumSquares => v.visit(SumSquares)`;
//! 3. the file `sumsquares.rs` (and its `mod` line here), implementing `Family`:
//!
//! ```ignore
//! #[derive(Clone, Copy, Debug)]
//! pub(crate) struct SumSquares;
//!
//! impl Family for SumSquares {
//!     fn name(&self) -> &'static str { "SumSquares" }
//!     fn output_spec(&self, dim: usize) -> Result<OutputSpec> { Sum.output_spec(dim) }
//!     fn state_spec(&self, dim: usize) -> StateSpec { Sum.state_spec(dim) }
//!     fn init(&self, dim: usize, vals: &mut [f64], idx: &mut [i64]) { Sum.init(dim, vals, idx) }
//!     fn accumulate(&self, vals: &mut [f64], idx: &mut [i64], f: &[f64], j: i64) {
//!         let sq: Vec<f64> = f.iter().map(|v| v * v).collect();
//!         Sum.accumulate(vals, idx, &sq, j)
//!     }
//!     // combine and finalize: those of Sum.
//!     unsafe fn accumulate_tile<T: Real, A: Arch, const FMA: bool>(
//!         &self, tile: Tile<'_, T>, vals: &mut [f64], _idx: &mut [i64],
//!     ) {
//!         let (sums, comps) = vals.split_at_mut(tile.dim);
//!         for c in 0..tile.dim {
//!             let xs = unsafe { tile.root.slice(c, tile.valid) };
//!             kahan_add(&mut sums[c], &mut comps[c], unsafe { A::dot(xs, xs) }.to_f64());
//!         }
//!     }
//!     fn cuda_helpers(&self) -> &'static str { "" } // lk_kahan_add comes with Sum
//!     fn cuda_code(&self, f: usize, tc: &str, nv: usize) -> CudaCode {
//!         // Sum's code with `tp[c] += f[c] * f[c];` as the term.
//!     }
//!     fn grad_rule(&self) -> GradRule {
//!         // The adjoint of F_ij is 2 G_i F_ij.
//!         GradRule::TermWise { adjoint: |f, g, _| /* 2 * g * f */, uses_output: false }
//!     }
//! }
//! ```
//!
//! The CPU backend, the CUDA generator and the backward pass need no change, and
//! `LazyTensor::reduce` takes the new kind (a named shorthand in `src/lazy.rs` is optional).
//! (The tests list
//! kinds through [`ReductionKind::all`], so they cover the new kind; reference values for it
//! go in `tests/reduction_tests.rs`.)

use std::fmt;
use std::fmt::Write;

use crate::backend::cpu::isa::Arch;
use crate::backend::cpu::kernels::View;
use crate::error::Result;
use crate::formula::Expr;
use crate::math::Real;

mod kselect;
mod logsumexp;
mod select;
mod softmax;
mod sum;

pub(crate) use logsumexp::lse_merge_tile;
pub(crate) use sum::kahan_add;

use kselect::KSelect;
use select::Select;

/// Which index a reduction runs over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Axis {
    /// Reduce over `i`: one output row per `j`.
    I,
    /// Reduce over `j`: one output row per `i`.
    J,
}

/// What a reduction computes for each output row, over the terms of the reduced index.
///
/// Min/Max-type reductions act on each component of the formula independently; ties are
/// broken towards the smallest index; a `NaN` term wins (so that `NaN` propagates). For the
/// `K*` reductions with `k` larger than the number of terms, the missing slots hold `+inf` and
/// index `-1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReductionKind {
    /// `sum_j F`.
    Sum,
    /// `log sum_j exp(F)`, computed stably (running maximum), component by component.
    LogSumExp,
    /// `sum_j exp(F) G / sum_j exp(F)` for the formula `Concat(F, G)` with `F` of one component.
    SumSoftMaxWeight,
    /// `min_j F`.
    Min,
    /// `max_j F`.
    Max,
    /// `argmin_j F` (integer indices).
    ArgMin,
    /// `argmax_j F` (integer indices).
    ArgMax,
    /// Both `min_j F` and `argmin_j F`.
    MinArgMin,
    /// Both `max_j F` and `argmax_j F`.
    MaxArgMax,
    /// The `k` smallest values, in increasing order.
    KMin(usize),
    /// The indices of the `k` smallest values, in increasing order of the values.
    ArgKMin(usize),
    /// Both the `k` smallest values and their indices.
    KMinArgKMin(usize),
}

/// A reduction: its kind and the axis it reduces over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Reduction {
    /// What is computed.
    pub kind: ReductionKind,
    /// Over which index.
    pub axis: Axis,
}

/// The shape of a reduction's outputs for one row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutputSpec {
    /// Number of value columns (0 when the reduction returns indices only).
    pub values: usize,
    /// Number of index columns (0 when the reduction returns values only).
    pub indices: usize,
    /// `k` for the `K*` reductions, else 1.
    pub k: usize,
    /// Components of the formula the values and indices refer to.
    pub components: usize,
}

/// Sizes of a row's reduction state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateSpec {
    /// Number of `f64` slots.
    pub vals: usize,
    /// Number of `i64` slots.
    pub idx: usize,
}

impl fmt::Display for Reduction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let axis = match self.axis {
            Axis::I => "i",
            Axis::J => "j",
        };
        match self.kind.k() {
            Some(k) => write!(f, "{}(k={k},axis={axis})", self.kind.name()),
            None => write!(f, "{}(axis={axis})", self.kind.name()),
        }
    }
}

/// One tile of terms as the CPU backend hands it to a family: the formula's values for the
/// terms `j0..j0 + valid` of one output row.
pub(crate) struct Tile<'a, T> {
    /// The formula's root register: `dim` components of at least `valid` terms.
    pub root: View<T>,
    /// A scratch tile of at least `valid` values.
    pub weights: &'a mut [T],
    /// Number of terms.
    pub valid: usize,
    /// Index of the first term.
    pub j0: usize,
    /// Components of the formula.
    pub dim: usize,
}

/// The per-kind pieces of a generated CUDA kernel (C statements). In them `f[c]` is the term's
/// formula value (compute type), `j` its index, `sv`/`si` the row's state, `sv2`/`si2` a later
/// state to merge, `i` the output row and `out_vals`/`out_idx` the outputs.
#[derive(Default)]
pub(crate) struct CudaCode {
    /// Writes the neutral state into `sv`/`si`.
    pub init: String,
    /// The tile's partial state: arrays of the compute type (name, length), one set per row
    /// the thread computes (the generator declares them).
    pub tile_vars: Vec<(&'static str, usize)>,
    /// Initialises the tile's partial state, before the tile.
    pub tile_init: String,
    /// Accumulates the term `f` (index `j`), into the tile state or the row's state; it may
    /// leave the term to `term_rare` by setting `rare`.
    pub term: String,
    /// The rare part of a term's update: run for every row of the thread, after `term`,
    /// when `term` set the thread's `bool rare` for any of them (empty: never).
    pub term_rare: String,
    /// Merges the tile state into the row's state, after the tile.
    pub tile_end: String,
    /// Merges `sv2`/`si2` into `sv`/`si`.
    pub combine: String,
    /// Writes the row's outputs.
    pub finalize: String,
}

/// The C statement that stores the value `v` into output column `at` of row `i`, for rows of
/// `nv` values.
pub(crate) fn cuda_store(nv: usize, at: impl fmt::Display, v: impl fmt::Display) -> String {
    format!("lk_store(out_vals + (long long)i * {nv} + {at}, {v});\n")
}

/// The term update of the selections (`Min`, `Max`, their `Arg` forms, the `K*` ones) for
/// component `c`: a term that does not come before the state's value in slot `slot` of
/// `sv`/`si` (the best value, or the k-th) is one comparison `f[c] {not_before} thr[c]` in the
/// compute type; the others run `take` (which reads `f[c]` and `j`) in the rare part. `thr[c]`
/// is that value in the compute type (exact: it came from it), or NaN while the slot is empty
/// (or holds NaN), so that `take` decides those. The caller declares the tile variable `thr`.
pub(crate) fn cuda_filtered_take(
    k: &mut CudaCode,
    c: usize,
    slot: usize,
    tc: &str,
    not_before: &str,
    take: &str,
) {
    let thr = format!("thr[{c}] = si[{slot}] >= 0 ? ({tc})sv[{slot}] : lk_nan<{tc}>();");
    let _ = writeln!(k.tile_init, "{thr}");
    let _ = writeln!(k.term, "rare = rare || !(f[{c}] {not_before} thr[{c}]);");
    let _ = writeln!(
        k.term_rare,
        "if (!(f[{c}] {not_before} thr[{c}])) {{ {take} {thr} }}"
    );
}

/// `-inf` in `double`, in generated C.
pub(crate) const CUDA_NEG_INF: &str = "(-lk_inf())";

/// The adjoint of a term-wise gradient: given the formula `F`, the incoming gradient `G` (an
/// i-variable, one row per output row) and, when the rule asks for it, the forward output (an
/// i-variable too), the formula whose `<adjoint_ij, dF_ij>` summed over the pairs is the
/// gradient.
pub(crate) type Adjoint = fn(f: &Expr, g: &Expr, out: Option<&Expr>) -> Result<Expr>;

/// How the gradient of a reduction reaches its terms (applied by `crate::op::backward`).
#[derive(Clone, Copy)]
pub(crate) enum GradRule {
    /// Every term gets an adjoint, a formula of the term, the incoming gradient and (when
    /// `uses_output`) the forward output.
    TermWise {
        /// The adjoint's formula.
        adjoint: Adjoint,
        /// Whether the adjoint reads the forward output.
        uses_output: bool,
    },
    /// `SumSoftMaxWeight`'s rule (the softmax weights by one more log-sum-exp reduction).
    SoftMax,
    /// Only the selected terms get the incoming gradient; the forward pass saved their
    /// indices.
    Selected,
    /// The outputs are indices: no gradient.
    None,
}

/// What a reduction family defines; see the [module documentation](self).
///
/// Slices of the host protocol are one row's state (`vals`, `idx`, sized by
/// [`Family::state_spec`]) and, for [`Family::finalize`], one row's outputs (sized by
/// [`Family::output_spec`]).
pub(crate) trait Family {
    /// The name used in printed reductions and cache keys.
    fn name(&self) -> &'static str;
    /// `k` of the `K*` reductions.
    fn k(&self) -> Option<usize> {
        None
    }
    /// Checks that a formula of `dim` components can be reduced, and returns its outputs.
    fn output_spec(&self, dim: usize) -> Result<OutputSpec>;
    /// Sizes of the per-row state for a formula of `dim` components.
    fn state_spec(&self, dim: usize) -> StateSpec;
    /// Writes the neutral state.
    fn init(&self, dim: usize, vals: &mut [f64], idx: &mut [i64]);
    /// Accumulates the term `j`, whose formula value is `f` (all components).
    fn accumulate(&self, vals: &mut [f64], idx: &mut [i64], f: &[f64], j: i64);
    /// Merges `(vals2, idx2)`, over terms that all come after those of `(vals, idx)`.
    fn combine(&self, dim: usize, vals: &mut [f64], idx: &mut [i64], vals2: &[f64], idx2: &[i64]);
    /// Writes the outputs of one row from its final state (`K*` outputs `[rank][component]`).
    fn finalize(
        &self,
        dim: usize,
        vals: &[f64],
        idx: &[i64],
        out_vals: &mut [f64],
        out_idx: &mut [i64],
    );
    /// The CPU backend's accumulation of one tile into the row's state: the result of
    /// [`Family::accumulate`] on each term in order (up to rounding: sums are taken in the
    /// compute type within the tile). Must be `#[inline(always)]`.
    ///
    /// # Safety
    /// The CPU supports the instruction set `A`; `tile.root` is a tile view of `tile.dim`
    /// components holding at least `tile.valid` terms.
    unsafe fn accumulate_tile<T: Real, A: Arch, const FMA: bool>(
        &self,
        tile: Tile<'_, T>,
        vals: &mut [f64],
        idx: &mut [i64],
    ) where
        Self: Sized;
    /// The C helper functions the family's CUDA code calls (device code, emitted once into
    /// every generated module; `""` when it needs none).
    fn cuda_helpers(&self) -> &'static str;
    /// The kernels' statements for a formula of `f` components, compute type `tc`, and `nv`
    /// value outputs per row.
    fn cuda_code(&self, f: usize, tc: &str, nv: usize) -> CudaCode;
    /// How the gradient reaches the terms.
    fn grad_rule(&self) -> GradRule;
    /// The kind the forward pass runs instead when a gradient may be needed (so that the
    /// backward pass has the indices it needs); `None` to run the kind itself.
    fn forward_for_grad(&self) -> Option<ReductionKind> {
        None
    }
}

/// Code run on a reduction kind's family, generic over the family (see
/// `ReductionKind::visit`).
pub(crate) trait Visit {
    /// What the visit returns.
    type Out;
    /// Runs on the family.
    fn visit<F: Family>(self, family: F) -> Self::Out;
}

/// A visitor calling a closure on the family as a trait object.
struct DynVisit<G>(G);

impl<R, G: FnOnce(&dyn Family) -> R> Visit for DynVisit<G> {
    type Out = R;
    fn visit<F: Family>(self, family: F) -> R {
        (self.0)(&family)
    }
}

/// The visitor of [`ReductionKind::accumulate_tile`].
struct TileVisit<'a, 'b, T, A, const FMA: bool> {
    tile: Tile<'a, T>,
    vals: &'b mut [f64],
    idx: &'b mut [i64],
    arch: std::marker::PhantomData<A>,
}

impl<T: Real, A: Arch, const FMA: bool> Visit for TileVisit<'_, '_, T, A, FMA> {
    type Out = ();
    #[inline(always)]
    fn visit<F: Family>(self, family: F) {
        // SAFETY: `TileVisit` is only built by `ReductionKind::accumulate_tile`, whose caller
        // guarantees the conditions of `Family::accumulate_tile`.
        unsafe { family.accumulate_tile::<T, A, FMA>(self.tile, self.vals, self.idx) }
    }
}

impl ReductionKind {
    /// Runs `v` on the family of this kind: the one place that maps kinds to families.
    #[inline(always)]
    pub(crate) fn visit<V: Visit>(self, v: V) -> V::Out {
        match self {
            ReductionKind::Sum => v.visit(sum::Sum),
            ReductionKind::LogSumExp => v.visit(logsumexp::LogSumExp),
            ReductionKind::SumSoftMaxWeight => v.visit(softmax::SoftMax),
            ReductionKind::Min
            | ReductionKind::Max
            | ReductionKind::ArgMin
            | ReductionKind::ArgMax
            | ReductionKind::MinArgMin
            | ReductionKind::MaxArgMax => v.visit(Select::of(self)),
            ReductionKind::KMin(_) | ReductionKind::ArgKMin(_) | ReductionKind::KMinArgKMin(_) => {
                v.visit(KSelect::of(self))
            }
        }
    }

    /// Runs `f` on the family of this kind, as a trait object (for code that needs no
    /// generics: the host protocol, code generation, gradient rules).
    pub(crate) fn family<R>(self, f: impl FnOnce(&dyn Family) -> R) -> R {
        self.visit(DynVisit(f))
    }

    /// Every kind, the `K*` ones with `k`, in the order of the enum.
    pub fn all(k: usize) -> Vec<ReductionKind> {
        vec![
            ReductionKind::Sum,
            ReductionKind::LogSumExp,
            ReductionKind::SumSoftMaxWeight,
            ReductionKind::Min,
            ReductionKind::Max,
            ReductionKind::ArgMin,
            ReductionKind::ArgMax,
            ReductionKind::MinArgMin,
            ReductionKind::MaxArgMax,
            ReductionKind::KMin(k),
            ReductionKind::ArgKMin(k),
            ReductionKind::KMinArgKMin(k),
        ]
    }

    /// The name used in printed reductions and cache keys.
    pub fn name(&self) -> &'static str {
        self.family(|f| f.name())
    }

    /// `k` of the `K*` reductions.
    pub fn k(&self) -> Option<usize> {
        self.family(|f| f.k())
    }

    /// The kind the forward pass runs for this kind when `needs_grad` (some input may need a
    /// gradient): `MinArgMin` for `Min`, so that the backward pass has the selected indices.
    pub(crate) fn forward_kind(self, needs_grad: bool) -> ReductionKind {
        match self.family(|f| f.forward_for_grad()) {
            Some(kind) if needs_grad => kind,
            _ => self,
        }
    }

    /// How the gradient reaches the terms.
    pub(crate) fn grad_rule(self) -> GradRule {
        self.family(|f| f.grad_rule())
    }

    /// The kernels' statements of this kind for a formula of `f` components, compute type
    /// `tc` and `nv` value outputs per row.
    pub(crate) fn cuda_code(self, f: usize, tc: &str, nv: usize) -> CudaCode {
        self.family(|fam| fam.cuda_code(f, tc, nv))
    }

    /// Accumulates one tile of the CPU backend into a row's state.
    ///
    /// # Safety
    /// As for `Family::accumulate_tile`.
    #[inline(always)]
    pub(crate) unsafe fn accumulate_tile<T: Real, A: Arch, const FMA: bool>(
        self,
        tile: Tile<'_, T>,
        vals: &mut [f64],
        idx: &mut [i64],
    ) {
        self.visit(TileVisit::<T, A, FMA> {
            tile,
            vals,
            idx,
            arch: std::marker::PhantomData,
        })
    }
}

/// The C helper functions of every family's states, in the order of [`ReductionKind::all`],
/// each after a blank line: generated modules hold them after the storage conversions of
/// `cuda/lk_reduce.cuh`.
pub(crate) fn cuda_helpers() -> String {
    let mut seen: Vec<&'static str> = Vec::new();
    for kind in ReductionKind::all(1) {
        let h = kind.family(|f| f.cuda_helpers());
        if !h.is_empty() && !seen.contains(&h) {
            seen.push(h);
        }
    }
    let mut s = String::new();
    for h in seen {
        let _ = write!(s, "\n{h}");
    }
    s
}

impl OutputSpec {
    /// `values` value columns and `indices` index columns for `k` ranks of `components`.
    pub(crate) fn new(values: usize, indices: usize, k: usize, components: usize) -> OutputSpec {
        OutputSpec {
            values,
            indices,
            k,
            components,
        }
    }
}

impl Reduction {
    /// A reduction of `kind` over `axis`.
    pub fn new(kind: ReductionKind, axis: Axis) -> Reduction {
        Reduction { kind, axis }
    }

    /// Checks that a formula of `dim` components can be reduced, and returns its outputs.
    pub fn output_spec(&self, dim: usize) -> Result<OutputSpec> {
        self.kind.family(|f| f.output_spec(dim))
    }

    /// Sizes of the per-row state for a formula of `dim` components.
    pub fn state_spec(&self, dim: usize) -> StateSpec {
        self.kind.family(|f| f.state_spec(dim))
    }

    /// Writes the neutral state (`dim` formula components).
    pub fn init(&self, dim: usize, vals: &mut [f64], idx: &mut [i64]) {
        self.kind.family(|f| f.init(dim, vals, idx))
    }

    /// Accumulates the term `j`, whose formula value is `f` (all components).
    pub fn accumulate(&self, vals: &mut [f64], idx: &mut [i64], f: &[f64], j: i64) {
        self.kind.family(|fam| fam.accumulate(vals, idx, f, j))
    }

    /// Merges the state `(vals2, idx2)`, over terms that all come after those of
    /// `(vals, idx)`, into `(vals, idx)`.
    pub fn combine(
        &self,
        dim: usize,
        vals: &mut [f64],
        idx: &mut [i64],
        vals2: &[f64],
        idx2: &[i64],
    ) {
        self.kind.family(|f| f.combine(dim, vals, idx, vals2, idx2))
    }

    /// Writes the outputs of one row from its final state: `out_vals` has
    /// [`OutputSpec::values`] slots and `out_idx` has [`OutputSpec::indices`]; `K*` outputs are
    /// laid out `[rank][component]`.
    pub fn finalize(
        &self,
        dim: usize,
        vals: &[f64],
        idx: &[i64],
        out_vals: &mut [f64],
        out_idx: &mut [i64],
    ) {
        self.kind
            .family(|f| f.finalize(dim, vals, idx, out_vals, out_idx))
    }
}

#[cfg(test)]
mod tests;
