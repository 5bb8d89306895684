//! The Candle glue: a reduction of a formula over its bound tensors is bound, validated,
//! planned and dispatched here, and a custom op runs the plan on the tensors' device.
//!
//! `reduce_sized` (behind every reduction) runs four steps, each a small function:
//!
//! 1. *binding* (`bind`): the bound tensors the formula uses, in order of first appearance,
//!    and the formula rewritten over their positions, with `i` and `j` exchanged for a
//!    reduction over `i` (plans always reduce over `j`), and simplified;
//! 2. *validation* (`agree`, `layout`, `check_output`): one float dtype and one device, the
//!    same number of rows for the variables of an axis, non-empty axes, an output that fits;
//!    each failure is an error naming the problem, before any backend sees the data;
//! 3. *planning* (`run_kind`, then the `ReductionPlan`): what runs, which for `Min`, `Max`
//!    and `KMin` with an input that needs a gradient is the kind that also finds the indices
//!    of the selected terms (at the same cost), for the backward pass; block-sparse ranges
//!    ([`crate::ranges`]) are checked against the sizes and oriented for the plan's axis
//!    (transposed for a reduction over `i`), and such a plan takes the direct path;
//! 4. *dispatch* (`dispatch`, `run_op`): in planning mode (`ahead::intercept`) the
//!    plan is recorded instead of run; otherwise the device's backend is found at the one
//!    dispatch point, `crate::backend::Backend::of` (its error when this build has none: CUDA
//!    without the `cuda` feature, Metal), the census counts the dispatch, the backend prepares
//!    for the backward pass (CUDA compiles its modules ahead), and the bound tensors, flattened
//!    and concatenated into one packed tensor (`Tensor::cat`, so that autodiff splits a
//!    gradient back per input), go through one `ReductionOp` (`CustomOp1`). Candle calls its
//!    `cpu_fwd` or `cuda_fwd`, which hand the packed storage to their backend.
//!
//! **The index side channel.** A `CustomOp1` returns one tensor, but `MinArgMin`,
//! `MaxArgMax` and `KMinArgKMin` find two: values (in the inputs' float dtype) and indices
//! (`i64`), which cannot share one tensor. So the values are the op's output, and the
//! indices go through an `IndexSlot` that the op shares with `run_op`: the forward pass
//! fills it (once, before `apply_op1` returns); `run_op` then hands the indices to the caller
//! when the caller asked for them, and the op's backward pass reads them from the same slot
//! to route the gradient to the selected terms. Indices of a reduction without values (the
//! arg-reductions) are the op's output itself.
//!
//! The op's backward pass (`backward.rs`) builds the gradient of each reduction kind as new
//! reductions of symbolically differentiated formulas, run by the same backend; they are
//! themselves differentiable.

use std::sync::{Arc, OnceLock};

use candle_core::op::BackpropOp;
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};

use crate::backend::{Backend, Outputs, ReductionPlan, VarSpec, census, cpu};
use crate::error::Error;
use crate::formula::{Expr, Op, Var, VarCat, simplify};
use crate::ranges::Ranges;
use crate::reduction::{Axis, OutputSpec, Reduction, ReductionKind};

use self::gram::{ReductionOptions, Target};

mod ahead;
mod backward;
pub(crate) mod batch;
pub mod gram;

pub(crate) use ahead::{prepare, stand_in};

/// A tensor bound into a formula, with the identifier its variable carries while the formula
/// is being built.
#[derive(Clone, Debug)]
pub(crate) struct Binding {
    pub id: usize,
    pub cat: VarCat,
    pub dim: usize,
    pub tensor: Tensor,
}

/// The outputs of a reduction.
#[derive(Clone, Debug)]
pub struct ReductionOutput {
    /// Values, in the dtype of the inputs (absent for `ArgMin`, `ArgMax`, `ArgKMin`).
    pub values: Option<Tensor>,
    /// Indices as `i64` (present for the arg-reductions).
    pub indices: Option<Tensor>,
}

/// The side channel of a reduction's indices found next to its values (see the module
/// documentation): a `CustomOp1` returns one tensor, so its forward pass puts the indices
/// here, and the caller (`run_op`) and the op's backward pass both read them from this one
/// slot. Written at most once, by the forward pass; cloning shares the slot.
#[derive(Clone, Default)]
struct IndexSlot(Arc<OnceLock<Tensor>>);

impl IndexSlot {
    /// Keeps the indices found by the forward pass.
    fn put(&self, indices: Tensor) {
        let first = self.0.set(indices).is_ok();
        debug_assert!(first, "a reduction op runs its forward pass once");
    }

    /// The indices, once the forward pass has put them.
    fn get(&self) -> Option<&Tensor> {
        self.0.get()
    }
}

/// The custom op running one plan on a packed input (the bound tensors, flattened and
/// concatenated); indices found next to values go to `indices`.
struct ReductionOp {
    plan: Arc<ReductionPlan>,
    /// Per bound tensor (in plan order): whether it needs a gradient (`track_op` at forward).
    needs_grad: Vec<bool>,
    /// The indices next to the values (the side channel), for the caller and for the
    /// backward pass of Min, Max and KMin.
    indices: IndexSlot,
    /// The options of the reduction, which its backward pass's reductions take too.
    options: ReductionOptions,
}

impl ReductionOp {
    /// Turns a backend's outputs into the op's result: keeps the indices next to values in
    /// `self.indices` (as a tensor of the storage that `wrap` makes) and returns the primary
    /// output with its shape.
    fn finish<S>(
        &self,
        out: Outputs<S>,
        wrap: fn(S) -> candle_core::Storage,
    ) -> candle_core::Result<(S, Shape)> {
        let spec = self.plan.out;
        if let Some(idx) = out.indices {
            let shape = out_shape(&self.plan, spec.indices);
            let t = Tensor::from_storage(wrap(idx), shape, BackpropOp::none(), false);
            self.indices.put(t);
        }
        let cols = if spec.values > 0 {
            spec.values
        } else {
            spec.indices
        };
        Ok((out.primary, out_shape(&self.plan, cols)))
    }
}

/// The shape of an output of `plan` with `cols` columns (values or indices).
fn out_shape(p: &ReductionPlan, cols: usize) -> Shape {
    match p.reduction.kind.k() {
        Some(k) if p.out.components == 1 => Shape::from((p.rows, k)),
        Some(k) => Shape::from((p.rows, k, p.out.components)),
        None => Shape::from((p.rows, cols)),
    }
}

impl CustomOp1 for ReductionOp {
    fn name(&self) -> &'static str {
        "lazy-kernels-reduction"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = cpu::reduce_storage(&self.plan, storage, layout)?;
        self.finish(out, candle_core::Storage::Cpu)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let out = crate::backend::cuda::launch::reduce(&self.plan, storage, layout)?;
        self.finish(out, candle_core::Storage::Cuda)
    }

    fn bwd(
        &self,
        arg: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let grads = ahead::in_backward(|| {
            backward::Backward {
                plan: &self.plan,
                needs_grad: &self.needs_grad,
                indices: self.indices.get(),
                options: &self.options,
            }
            .run(arg, res, grad_res)
        })?;
        Ok(Some(grads))
    }
}

/// A custom op that only adds a backward pass: its value, `value`, was computed before it
/// was applied (the forward pass copies it), and its backward pass maps the output's
/// gradient to the argument's with `bwd`. The solve's implicit gradient and the collectives
/// of sharded reductions are this.
pub(crate) struct Precomputed<F> {
    /// The op's name (for Candle's reports and the errors of its forward pass).
    pub name: &'static str,
    /// The value, in the dtype and shape of the result, on the argument's device.
    pub value: Tensor,
    /// The argument's gradient from the result's.
    pub bwd: F,
}

impl<F> CustomOp1 for Precomputed<F>
where
    F: Fn(&Tensor) -> candle_core::Result<Option<Tensor>> + Send + Sync,
{
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let a = self.value.to_device(&Device::Cpu)?.flatten_all()?;
        let storage = match a.dtype() {
            DType::F64 => CpuStorage::F64(a.to_vec1()?),
            DType::F32 => CpuStorage::F32(a.to_vec1()?),
            DType::F16 => CpuStorage::F16(a.to_vec1()?),
            DType::BF16 => CpuStorage::BF16(a.to_vec1()?),
            other => {
                return Err(Error::DType {
                    op: self.name,
                    detail: format!("{other:?} is not a float dtype"),
                }
                .into());
            }
        };
        Ok((storage, self.value.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        // A fresh contiguous copy on the device, whose storage is exactly the value.
        let a = self.value.copy()?;
        let (storage, layout) = a.storage_and_layout();
        match &*storage {
            candle_core::Storage::Cuda(c) => Ok((c.try_clone(layout)?, a.shape().clone())),
            _ => Err(Error::Device {
                op: self.name,
                detail: "the value is not on the CUDA device of the op's argument".into(),
            }
            .into()),
        }
    }

    fn bwd(&self, _: &Tensor, _: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        (self.bwd)(g)
    }
}

/// Whether `d` is a dtype the reductions accept (f32, f64, f16, bf16).
pub(crate) fn dtype_ok(d: DType) -> bool {
    matches!(d, DType::F32 | DType::F64 | DType::F16 | DType::BF16)
}

/// Checks that `t` can be bound as a variable of category `cat`; returns its number of
/// components per row.
pub(crate) fn check_bindable(
    t: &Tensor,
    cat: VarCat,
    op: &'static str,
) -> crate::error::Result<usize> {
    if !dtype_ok(t.dtype()) {
        return Err(Error::DType {
            op,
            detail: format!(
                "{:?} is not a float dtype (expected f32, f64, f16 or bf16)",
                t.dtype()
            ),
        });
    }
    let dims = t.dims();
    match cat {
        VarCat::P => {
            if t.elem_count() == 0 {
                return Err(Error::Shape {
                    op,
                    detail: format!("a parameter needs at least one value, got shape {dims:?}"),
                });
            }
            Ok(t.elem_count())
        }
        VarCat::I | VarCat::J => match dims {
            [_] => Ok(1),
            [_, d] if *d > 0 => Ok(*d),
            [b, _, d] if *b > 0 && *d > 0 => Ok(*d),
            _ => Err(Error::Shape {
                op,
                detail: format!(
                    "expected a (rows, dim) or (rows,) tensor, or a batch (B, rows, dim), with \
                     B, dim >= 1, got shape {dims:?}"
                ),
            }),
        },
    }
}

/// Batched bindings (`(B, rows, D)`) are stacked by [`batch::unbatch`] before they reach a
/// plan, whose sizes count the rows of 2-D tensors: one that arrives here is an internal error
/// rather than a wrong size.
fn unbatched(bindings: &[Binding], op: &'static str) -> crate::error::Result<()> {
    match bindings.iter().find(|b| b.tensor.rank() > 2) {
        Some(b) => Err(Error::InvalidArgument {
            op,
            detail: format!(
                "a batched tensor of shape {:?} reached a plan unstacked (reduce it through \
                 LazyTensor)",
                b.tensor.dims()
            ),
        }),
        None => Ok(()),
    }
}

/// Runs `reduction` of `formula` over the tensors in `bindings`, visiting only the blocks
/// that `ranges` keeps when given (rows: the i-rows, columns: the j-rows).
pub(crate) fn reduce(
    formula: &Expr,
    bindings: &[Binding],
    reduction: Reduction,
    ranges: Option<&Arc<Ranges>>,
    options: &ReductionOptions,
) -> candle_core::Result<ReductionOutput> {
    reduce_sized(formula, bindings, reduction, None, ranges, options)
}

/// As [`reduce`]; `sizes` gives the numbers of rows of `i` and of `j` for formulas that have
/// no variable of one category (the backward pass evaluates such formulas).
///
/// Binding, validation, planning and dispatch, in this order (so the first failing check
/// names the problem); see the module documentation.
pub(crate) fn reduce_sized(
    formula: &Expr,
    bindings: &[Binding],
    reduction: Reduction,
    sizes: Option<(usize, usize)>,
    ranges: Option<&Arc<Ranges>>,
    options: &ReductionOptions,
) -> candle_core::Result<ReductionOutput> {
    // The compilers recurse over the formula: past a few hundred levels they run on a thread
    // whose stack is sized for the depth, up to the limit.
    formula.check_depth(reduction.kind.name())?;
    unbatched(bindings, reduction.kind.name())?;
    with_stack_for(formula.depth(), || {
        reduce_unchecked(formula, bindings, reduction, sizes, ranges, options)
    })
}

/// The depth below which a formula compiles on the caller's stack: at most about 0.5 MiB of
/// a debug build's 2 MiB thread stack (the CPU lowering takes about 1.5 KiB per level there,
/// measured by gdb on a 1,400-level chain).
const CALLER_STACK_DEPTH: usize = 300;

/// Runs `f`, which compiles a formula `depth` levels deep: on the caller's thread below
/// [`CALLER_STACK_DEPTH`], otherwise on a scoped thread whose stack has 8 KiB per level (5x
/// the debug build's need; only the pages used are committed). A panic in `f` is resumed here.
fn with_stack_for<R: Send>(
    depth: usize,
    f: impl FnOnce() -> candle_core::Result<R> + Send,
) -> candle_core::Result<R> {
    if depth <= CALLER_STACK_DEPTH {
        return f();
    }
    let bytes = (1 << 20) + depth.saturating_mul(8 << 10);
    std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name("lazy-kernels deep formula".into())
            .stack_size(bytes)
            .spawn_scoped(s, f)
            .map_err(|e| Error::InvalidArgument {
                op: "reduce",
                detail: format!(
                    "a formula {depth} levels deep compiles on a thread with a {} MiB stack, \
                     which could not be started: {e}",
                    bytes >> 20
                ),
            })?;
        handle
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// [`reduce_sized`] once the formula's depth is checked and the stack is large enough.
fn reduce_unchecked(
    formula: &Expr,
    bindings: &[Binding],
    reduction: Reduction,
    sizes: Option<(usize, usize)>,
    ranges: Option<&Arc<Ranges>>,
    options: &ReductionOptions,
) -> candle_core::Result<ReductionOutput> {
    // Block-sparse ranges run on the direct path (the block path does not take them).
    let sparse = ranges.is_some();
    if !sparse && let Some(parts) = split_sum(formula, bindings, reduction, sizes, options)? {
        return Ok(parts);
    }
    // The block path: distances rewritten into inner products of new tensors, when chosen.
    let target = target_of(formula, bindings, reduction.axis, sizes).filter(|_| !sparse);
    let rewritten = match target {
        Some(t) => gram::rewrite(
            formula,
            bindings,
            reduction.kind,
            t,
            options,
            &mut crate::lazy::fresh_id,
        )?,
        None => None,
    };
    let (formula, bindings) = match &rewritten {
        Some((f, b)) => (f, b.as_slice()),
        None => (formula, bindings),
    };
    let op = reduction.kind.name();
    let bound = bind(formula, bindings, reduction)?;
    let needs_grad: Vec<bool> = bound.tensors.iter().map(|b| b.tensor.track_op()).collect();
    let run = run_kind(reduction, bound.formula.dim(), &needs_grad)?;
    let (dtype, device) = agree(&bound.tensors, op)?;
    let (vars, rows, terms) = layout(&bound.tensors, reduction.axis, sizes, op)?;
    check_output(rows, run.out, dtype, &device, op)?;
    let ranges = match ranges {
        Some(r) => {
            let (ni, nj) = match reduction.axis {
                Axis::J => (rows, terms),
                Axis::I => (terms, rows),
            };
            Some(crate::ranges::for_axis(r, reduction.axis, ni, nj, op)?)
        }
        None => None,
    };
    // A rewritten formula was chosen for the block path: its plan is one.
    let forced = ReductionOptions {
        path: gram::Path::Blocks,
        ..*options
    };
    let blocks = match ranges {
        Some(_) => None,
        None => gram::block_plan(
            &bound.formula,
            run.reduction.kind,
            Target::of(dtype, &device, rows, terms),
            if rewritten.is_some() {
                &forced
            } else {
                options
            },
        )?,
    };
    let plan = ReductionPlan {
        formula: bound.formula,
        reduction: run.reduction,
        vars,
        rows,
        terms,
        out: run.out,
        blocks,
        ranges,
    };
    let user_indices = run.user_indices;
    dispatch(
        plan,
        &bound.tensors,
        dtype,
        &device,
        needs_grad,
        user_indices,
        options,
    )
}

/// The target of a reduction of `formula` before binding: dtype, device and sizes from the
/// bound tensors (`None` when they do not say, or disagree: validation reports it later).
fn target_of(
    formula: &Expr,
    bindings: &[Binding],
    axis: Axis,
    sizes: Option<(usize, usize)>,
) -> Option<Target> {
    let used = formula.vars();
    let tensors: Vec<&Binding> = used
        .iter()
        .filter_map(|v| bindings.iter().find(|b| b.id == v.pos))
        .collect();
    let first = tensors.first()?;
    // Mixed dtypes or devices: validation names the problem, no block path is planned.
    let (dtype, device) = (first.tensor.dtype(), first.tensor.device());
    if tensors
        .iter()
        .any(|b| b.tensor.dtype() != dtype || !b.tensor.device().same_device(device))
    {
        return None;
    }
    let rows_of = |cat: VarCat| {
        tensors
            .iter()
            .find(|b| b.cat == cat)
            .map(|b| b.tensor.elem_count() / b.dim.max(1))
    };
    let ni = rows_of(VarCat::I).or(sizes.map(|s| s.0))?;
    let nj = rows_of(VarCat::J).or(sizes.map(|s| s.1))?;
    let (rows, terms) = match axis {
        Axis::J => (ni, nj),
        Axis::I => (nj, ni),
    };
    Some(Target::of(dtype, device, rows, terms))
}

/// A `Sum` of a `Concat` whose parts take different paths (a gradient's `c_ij * y_j`, a matrix
/// product on the block path, next to the gradients of parameters): each run of parts that
/// takes one path is reduced on its own, and the values are put side by side. `None` when the
/// whole formula takes one path.
fn split_sum(
    formula: &Expr,
    bindings: &[Binding],
    reduction: Reduction,
    sizes: Option<(usize, usize)>,
    options: &ReductionOptions,
) -> candle_core::Result<Option<ReductionOutput>> {
    if reduction.kind != ReductionKind::Sum
        || *formula.op() != Op::Concat
        || options.path == gram::Path::Direct
    {
        return Ok(None);
    }
    let Some(target) = target_of(formula, bindings, reduction.axis, sizes) else {
        return Ok(None);
    };
    let mut parts = Vec::new();
    let mut stack = vec![formula.clone()];
    while let Some(e) = stack.pop() {
        if *e.op() == Op::Concat {
            stack.push(e.args()[1].clone());
            stack.push(e.args()[0].clone());
        } else {
            parts.push(e);
        }
    }
    let auto = ReductionOptions {
        path: gram::Path::Auto,
        ..*options
    };
    // Each part's path: 0 direct, 1 blocks; a matrix product (2 + its place) runs alone.
    let key = |(k, f): (usize, &Expr)| -> crate::error::Result<usize> {
        let r = gram::choose(f, ReductionKind::Sum, target, &auto)?;
        Ok(match (r.path, r.matmul_epilogue) {
            (gram::Path::Blocks, true) => 2 + k,
            (gram::Path::Blocks, false) => 1,
            _ => 0,
        })
    };
    let keys: Vec<usize> = parts
        .iter()
        .enumerate()
        .map(key)
        .collect::<crate::error::Result<_>>()?;
    // Parts that agree are reduced together, by the whole's own choice: splitting them into
    // one group would reduce the same formula again (and recurse without end when the whole
    // chooses otherwise than its parts, as a large gradient Concat of block parts does).
    if keys.iter().all(|&k| k == keys[0]) {
        return Ok(None);
    }
    let mut values = Vec::new();
    let mut k = 0;
    while k < parts.len() {
        let mut group = parts[k].clone();
        let mut end = k + 1;
        while end < parts.len() && keys[end] == keys[k] {
            group = Expr::new(Op::Concat, vec![group, parts[end].clone()])?;
            end += 1;
        }
        let out = reduce_sized(&group, bindings, reduction, sizes, None, options)?;
        values.push(out.values.ok_or_else(|| Error::InvalidArgument {
            op: "Sum",
            detail: "a sum returned no values".into(),
        })?);
        k = end;
    }
    Ok(Some(ReductionOutput {
        values: Some(Tensor::cat(&values, 1)?),
        indices: None,
    }))
}

/// The path `reduce` would take (see [`crate::LazyTensor::explain`]).
pub(crate) fn explain(
    formula: &Expr,
    bindings: &[Binding],
    reduction: Reduction,
    ranges: Option<&Arc<Ranges>>,
    options: &ReductionOptions,
) -> candle_core::Result<gram::PathReport> {
    formula.check_depth(reduction.kind.name())?;
    if ranges.is_some() {
        return Ok(gram::PathReport {
            path: gram::Path::Direct,
            inner_products: Vec::new(),
            matmul_epilogue: false,
            reason: format!(
                "block-sparse ranges: the direct path visits only the kept blocks (the block \
                 path does not take ranges{})",
                if options.path == gram::Path::Blocks {
                    ", so the option Path::Blocks is not followed"
                } else {
                    ""
                }
            ),
        });
    }
    let target = target_of(formula, bindings, reduction.axis, None).ok_or_else(|| {
        Error::InvalidArgument {
            op: reduction.kind.name(),
            detail: "the formula needs an i-variable and a j-variable".into(),
        }
    })?;
    Ok(gram::choose(formula, reduction.kind, target, options)?)
}

/// A formula bound to the tensors it uses.
struct Bound<'a> {
    /// The bound tensors the formula uses, in order of first appearance (the plan's order).
    tensors: Vec<&'a Binding>,
    /// The formula over positions `0..tensors.len()`, reduced over `j` (`i` and `j`
    /// exchanged for a reduction over `i`), simplified.
    formula: Expr,
}

/// Binding: finds the tensor of each variable of `formula` in `bindings` and rewrites the
/// formula over their positions, for a plan that reduces over `j`.
fn bind<'a>(
    formula: &Expr,
    bindings: &'a [Binding],
    reduction: Reduction,
) -> crate::error::Result<Bound<'a>> {
    let used: Vec<Var> = formula.vars();
    let tensors = used
        .iter()
        .map(|v| {
            let found = bindings.iter().find(|b| b.id == v.pos);
            found.ok_or_else(|| Error::InvalidArgument {
                op: reduction.kind.name(),
                detail: format!("variable {v:?} is not bound to a tensor"),
            })
        })
        .collect::<crate::error::Result<Vec<&Binding>>>()?;
    let mut pos_of = |v: Var| Var {
        pos: used.iter().position(|u| *u == v).unwrap_or(0),
        ..v
    };
    let mut f = formula.map_vars(&mut pos_of);
    if reduction.axis == Axis::I {
        f = f.swap_ij();
    }
    Ok(Bound {
        tensors,
        formula: simplify(&f),
    })
}

/// What runs for the user's reduction.
struct Run {
    /// The reduction run: the user's, or one that also finds the indices a gradient needs.
    reduction: Reduction,
    /// Its output columns.
    out: OutputSpec,
    /// Whether the user's reduction returns indices next to values (indices found only for
    /// the backward pass are not part of the user's result).
    user_indices: bool,
}

/// Planning: the reduction that runs for `reduction` of a formula of `dim` components, given
/// which inputs need a gradient.
fn run_kind(reduction: Reduction, dim: usize, needs_grad: &[bool]) -> crate::error::Result<Run> {
    let user_out = reduction.output_spec(dim)?;
    // Min, Max and KMin route their gradient to the selected terms: when a gradient may be
    // needed, the forward pass also finds their indices (at the same cost) and keeps them.
    let run = ReductionKind::forward_kind(reduction.kind, needs_grad.contains(&true));
    let run = Reduction::new(run, reduction.axis);
    Ok(Run {
        reduction: run,
        out: run.output_spec(dim)?,
        user_indices: user_out.indices > 0,
    })
}

/// Validation: the dtype and the device that all bound tensors share (there must be one).
fn agree(tensors: &[&Binding], op: &'static str) -> crate::error::Result<(DType, Device)> {
    let first = tensors.first().ok_or_else(|| Error::InvalidArgument {
        op,
        detail: "the formula has no variables: bind an i-variable and a j-variable".into(),
    })?;
    let (dtype, device) = (first.tensor.dtype(), first.tensor.device());
    for b in tensors {
        if b.tensor.dtype() != dtype {
            let detail = format!(
                "all bound tensors must have one dtype: found {dtype:?} and {:?}",
                b.tensor.dtype()
            );
            return Err(Error::DType { op, detail });
        }
        if !b.tensor.device().same_device(device) {
            let detail = format!(
                "all bound tensors must be on one device: found {:?} and {:?}",
                device.location(),
                b.tensor.device().location()
            );
            return Err(Error::Device { op, detail });
        }
    }
    Ok((dtype, device.clone()))
}

/// The names of the output axis and of the reduced axis of a reduction over `axis`.
fn axis_names(axis: Axis) -> (&'static str, &'static str) {
    match axis {
        Axis::J => ("i", "j"),
        Axis::I => ("j", "i"),
    }
}

/// Validation and layout: the plan's variables (categories after the axis swap, rows, offsets
/// in the packed input), its number of output rows and of reduced terms. `sizes` (rows of `i`
/// and of `j`) stands in for an axis without variables.
fn layout(
    tensors: &[&Binding],
    axis: Axis,
    sizes: Option<(usize, usize)>,
    op: &'static str,
) -> crate::error::Result<(Vec<VarSpec>, usize, usize)> {
    let (vars, rows, terms) = var_specs(tensors, axis, op)?;
    // `sizes` is (i-rows, j-rows); `rows` and `terms` are per output and reduced axis.
    let sizes = sizes.map(|(ni, nj)| match axis {
        Axis::J => (ni, nj),
        Axis::I => (nj, ni),
    });
    let rows = rows.or(sizes.map(|s| s.0));
    let terms = terms.or(sizes.map(|s| s.1));
    let (rows, terms) = known_sizes(rows, terms, axis, op)?;
    Ok((vars, rows, terms))
}

/// The plan's variables, and the rows of the output axis and the terms of the reduced axis
/// where variables give them (the variables of one axis must agree).
fn var_specs(
    tensors: &[&Binding],
    axis: Axis,
    op: &'static str,
) -> crate::error::Result<(Vec<VarSpec>, Option<usize>, Option<usize>)> {
    let (out_name, red_name) = axis_names(axis);
    let (mut rows, mut terms) = (None, None);
    let mut vars = Vec::with_capacity(tensors.len());
    let mut offset = 0;
    for b in tensors {
        let cat = match (b.cat, axis) {
            (VarCat::I, Axis::I) => VarCat::J,
            (VarCat::J, Axis::I) => VarCat::I,
            (c, _) => c,
        };
        let n = b.tensor.elem_count() / b.dim;
        match cat {
            VarCat::I => same_rows(&mut rows, n, out_name, b, op)?,
            VarCat::J => same_rows(&mut terms, n, red_name, b, op)?,
            VarCat::P => {}
        }
        let rows = if cat == VarCat::P { 1 } else { n };
        vars.push(VarSpec {
            cat,
            dim: b.dim,
            rows,
            offset,
        });
        offset += b.tensor.elem_count();
    }
    Ok((vars, rows, terms))
}

/// Records `n` rows of the `axis_name`-variable `b` in `seen`, or fails if an earlier
/// variable of that axis had another number.
fn same_rows(
    seen: &mut Option<usize>,
    n: usize,
    axis_name: &str,
    b: &Binding,
    op: &'static str,
) -> crate::error::Result<()> {
    match *seen {
        None => *seen = Some(n),
        Some(m) if m != n => {
            let detail = format!(
                "the {axis_name}-variables have different numbers of rows: {m} and {n} \
                 (shape {:?})",
                b.tensor.dims()
            );
            return Err(Error::Shape { op, detail });
        }
        Some(_) => {}
    }
    Ok(())
}

/// Validation: the numbers of output rows and of reduced terms are known and not zero.
fn known_sizes(
    rows: Option<usize>,
    terms: Option<usize>,
    axis: Axis,
    op: &'static str,
) -> crate::error::Result<(usize, usize)> {
    let (out_name, red_name) = axis_names(axis);
    let rows = rows.ok_or_else(|| Error::InvalidArgument {
        op,
        detail: format!(
            "the formula has no {out_name}-variable, so the number of output rows is unknown"
        ),
    })?;
    let terms = terms.ok_or_else(|| Error::InvalidArgument {
        op,
        detail: format!(
            "the formula has no {red_name}-variable, so the number of reduced terms is unknown"
        ),
    })?;
    if rows == 0 || terms == 0 {
        let detail = format!(
            "empty input: {rows} {out_name}-rows and {terms} {red_name}-rows \
             (both must be at least 1)"
        );
        return Err(Error::Shape { op, detail });
    }
    Ok((rows, terms))
}

/// Validation: the output (`rows` rows of `out`'s values in `dtype` and indices in `i64`,
/// with the backends' `f64`/`i64` staging copies of them) fits in `device`'s memory.
fn check_output(
    rows: usize,
    out: OutputSpec,
    dtype: DType,
    device: &Device,
    op: &'static str,
) -> crate::error::Result<()> {
    use crate::backend::memory::{bytes, reserve};
    let vals = rows.checked_mul(out.values);
    let idx = rows.checked_mul(out.indices);
    let need = vals
        .zip(idx)
        .and_then(|(v, i)| bytes(&[(v, dtype.size_in_bytes()), (v, 8), (i, 8), (i, 8)]));
    reserve(
        op,
        || {
            format!(
                "the output ({rows} rows x {} values and {} indices)",
                out.values, out.indices
            )
        },
        need,
        device,
    )
}

/// Dispatch: in planning mode, records `plan` and answers with stand-ins; otherwise finds the
/// backend of `device` (the one dispatch point: its error when this build has none), counts
/// the dispatch in the census, lets the backend prepare for the backward pass, and runs the
/// op. `user_indices`: whether the caller gets the indices found next to values.
fn dispatch(
    plan: ReductionPlan,
    tensors: &[&Binding],
    dtype: DType,
    device: &Device,
    needs_grad: Vec<bool>,
    user_indices: bool,
    options: &ReductionOptions,
) -> candle_core::Result<ReductionOutput> {
    // The backward pass, planned ahead, records this plan instead of running it.
    if let Some(stand_in) = ahead::intercept(&plan, dtype, &needs_grad, user_indices, device) {
        return stand_in;
    }
    let backend = Backend::of(device).map_err(|no| no.error(&plan))?;
    if plan.ranges.is_some() && !backend.runs_ranges() {
        return Err(Error::NotImplemented {
            what: "block-sparse ranges on this device",
            detail: format!(
                "cannot run {} with ranges on {:?}: this backend does not run block-sparse \
                 ranges",
                plan.key(),
                device.location()
            ),
        }
        .into());
    }
    census::dispatched(&plan, dtype);
    // The modules of this reduction's backward pass start compiling now, in the background
    // (on CUDA; the census notes them elsewhere). Not for a reduction of a backward pass.
    if !ahead::backward_active() {
        ahead::prepare_backward(&backend, &plan, &needs_grad, dtype);
    }
    run_op(plan, tensors, needs_grad, user_indices, options)
}

/// Runs `plan` on the packed `tensors` through a `ReductionOp` (tracked when the reduction
/// has values), and collects its outputs: the op's result, and the indices next to values
/// from the side channel when the caller asked for them.
fn run_op(
    plan: ReductionPlan,
    tensors: &[&Binding],
    needs_grad: Vec<bool>,
    user_indices: bool,
    options: &ReductionOptions,
) -> candle_core::Result<ReductionOutput> {
    let out = plan.out;
    let packed = pack(tensors)?;
    let indices = IndexSlot::default();
    let op = ReductionOp {
        plan: Arc::new(plan),
        needs_grad,
        indices: indices.clone(),
        options: *options,
    };
    if out.values == 0 {
        let primary = packed.apply_op1_no_bwd(&op)?;
        return Ok(ReductionOutput {
            values: None,
            indices: Some(primary),
        });
    }
    let values = packed.apply_op1(op)?;
    Ok(ReductionOutput {
        values: Some(values),
        indices: indices.get().filter(|_| user_indices).cloned(),
    })
}

/// Flattens and concatenates the bound tensors (contiguous copies where needed). Tensors that
/// need no gradient are detached first, so that the backward pass of `cat` does not record a
/// (zero) gradient for them.
fn pack(tensors: &[&Binding]) -> candle_core::Result<Tensor> {
    let flat: Vec<Tensor> = tensors
        .iter()
        .map(|b| {
            if b.tensor.track_op() {
                b.tensor.flatten_all()
            } else {
                b.tensor.detach().flatten_all()
            }
        })
        .collect::<candle_core::Result<_>>()?;
    if flat.len() == 1 {
        return flat[0].contiguous();
    }
    Tensor::cat(&flat, 0)
}
