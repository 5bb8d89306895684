//! The Candle glue: validation of bound tensors, packing, and the custom op that runs a
//! reduction on the tensors' device.
//!
//! All bound tensors are flattened and concatenated into one packed tensor (`Tensor::cat`, so
//! the autodiff graph can later split a gradient back per input), and one `ReductionOp`
//! (`CustomOp1`) runs the plan on it. Checks of dtype, device, shapes and sizes happen here,
//! before any backend sees the data, each with an error naming the problem.
//!
//! The op's backward pass (`backward.rs`) builds the gradient of each reduction kind as new
//! reductions of symbolically differentiated formulas, run by the same backend; they are
//! themselves differentiable. `Min`, `Max` and `KMin` are run with their indices when a bound
//! tensor needs a gradient, so that the backward pass knows which terms were selected.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};

use crate::backend::{cpu, cuda, ReductionPlan, VarSpec};
use crate::error::Error;
use crate::formula::{simplify, Expr, Var, VarCat};
use crate::reduction::{Axis, Reduction, ReductionKind};

mod ahead;
mod backward;

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

/// The custom op running one plan; a second output (indices next to values) is handed back
/// through `side`.
struct ReductionOp {
    plan: Arc<ReductionPlan>,
    side: Arc<Mutex<Option<Tensor>>>,
    /// Per bound tensor (in plan order): whether it needs a gradient (`track_op` at forward).
    needs_grad: Vec<bool>,
    /// Indices of the selected terms, kept for the backward pass of Min, Max and KMin.
    saved: Arc<Mutex<Option<Tensor>>>,
}

fn to_f32(v: &[impl Copy + Into<f32>]) -> Vec<f32> {
    v.iter().map(|&x| x.into()).collect()
}

impl ReductionOp {
    /// Hands the indices computed next to the values to the caller (through `side`).
    fn keep_indices(&self, t: Tensor) -> candle_core::Result<()> {
        *self.side.lock().map_err(|_| Error::InvalidArgument {
            op: "reduction",
            detail: "a previous reduction panicked".into(),
        })? = Some(t);
        Ok(())
    }

    fn out_shape(&self, cols: usize) -> Shape {
        out_shape(&self.plan, cols)
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
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| Error::InvalidArgument {
                op: "reduction",
                detail: "packed input is not contiguous".into(),
            })?;
        let plan = &self.plan;
        let (vals, idx) = match storage {
            CpuStorage::F32(v) => cpu::reduce::<f32>(plan, &v[start..end]),
            CpuStorage::F64(v) => cpu::reduce::<f64>(plan, &v[start..end]),
            CpuStorage::F16(v) => cpu::reduce::<f32>(plan, &to_f32(&v[start..end])),
            CpuStorage::BF16(v) => cpu::reduce::<f32>(plan, &to_f32(&v[start..end])),
            other => {
                return Err(Error::DType {
                    op: "reduction",
                    detail: format!(
                        "unsupported dtype {:?}",
                        candle_core::backend::BackendStorage::dtype(other)
                    ),
                }
                .into())
            }
        };
        let values = match storage {
            CpuStorage::F32(_) => CpuStorage::F32(vals.iter().map(|&x| x as f32).collect()),
            CpuStorage::F64(_) => CpuStorage::F64(vals),
            CpuStorage::F16(_) => {
                CpuStorage::F16(vals.iter().map(|&x| half::f16::from_f64(x)).collect())
            }
            _ => CpuStorage::BF16(vals.iter().map(|&x| half::bf16::from_f64(x)).collect()),
        };
        let out = plan.out;
        if out.values > 0 {
            if out.indices > 0 {
                let t = Tensor::from_vec(idx, self.out_shape(out.indices), &Device::Cpu)?;
                self.keep_indices(t)?;
            }
            Ok((values, self.out_shape(out.values)))
        } else {
            Ok((CpuStorage::I64(idx), self.out_shape(out.indices)))
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let out = self.plan.out;
        let r = cuda::launch::reduce(&self.plan, storage, layout)?;
        if let Some(idx) = r.indices {
            let t = Tensor::from_storage(
                candle_core::Storage::Cuda(idx),
                self.out_shape(out.indices),
                candle_core::op::BackpropOp::none(),
                false,
            );
            self.keep_indices(t)?;
        }
        let cols = if out.values > 0 {
            out.values
        } else {
            out.indices
        };
        Ok((r.primary, self.out_shape(cols)))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let saved = self.saved.lock().ok().and_then(|s| s.clone());
        let grads = ahead::in_backward(|| {
            backward::Backward {
                plan: &self.plan,
                needs_grad: &self.needs_grad,
                indices: saved.as_ref(),
            }
            .run(arg, res, grad_res)
        })?;
        Ok(Some(grads))
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
            _ => Err(Error::Shape {
                op,
                detail: format!(
                    "expected a (rows, dim) or (rows,) tensor with dim >= 1, got shape {dims:?}"
                ),
            }),
        },
    }
}

/// Runs `reduction` of `formula` over the tensors in `bindings`.
pub(crate) fn reduce(
    formula: &Expr,
    bindings: &[Binding],
    reduction: Reduction,
) -> candle_core::Result<ReductionOutput> {
    reduce_sized(formula, bindings, reduction, None)
}

/// As [`reduce`]; `sizes` gives the numbers of rows of `i` and of `j` for formulas that have
/// no variable of one category (the backward pass evaluates such formulas).
pub(crate) fn reduce_sized(
    formula: &Expr,
    bindings: &[Binding],
    reduction: Reduction,
    sizes: Option<(usize, usize)>,
) -> candle_core::Result<ReductionOutput> {
    let name = reduction.kind.name();
    // Bound tensors actually used, in order of first appearance: their positions.
    let used: Vec<Var> = formula.vars();
    let mut tensors: Vec<&Binding> = Vec::with_capacity(used.len());
    for v in &used {
        let b = bindings
            .iter()
            .find(|b| b.id == v.pos)
            .ok_or_else(|| Error::InvalidArgument {
                op: name,
                detail: format!("variable {v:?} is not bound to a tensor"),
            })?;
        tensors.push(b);
    }
    let mut pos_of = |v: Var| Var {
        pos: used.iter().position(|u| *u == v).unwrap_or(0),
        ..v
    };
    let mut f = formula.map_vars(&mut pos_of);
    if reduction.axis == Axis::I {
        f = f.swap_ij();
    }
    let f = simplify(&f);
    let user_out = reduction.output_spec(f.dim())?;
    // Min, Max and KMin route their gradient to the selected terms: when a gradient may be
    // needed, the forward pass also finds their indices (at the same cost) and keeps them.
    let needs_grad: Vec<bool> = used
        .iter()
        .map(|v| {
            bindings
                .iter()
                .find(|b| b.id == v.pos)
                .is_some_and(|b| b.tensor.track_op())
        })
        .collect();
    let run = ReductionKind::forward_kind(reduction.kind, needs_grad.contains(&true));
    let run = Reduction::new(run, reduction.axis);
    let out = run.output_spec(f.dim())?;

    // Dtype and device: all the same.
    let first = tensors.first().ok_or_else(|| Error::InvalidArgument {
        op: name,
        detail: "the formula has no variables: bind an i-variable and a j-variable".into(),
    })?;
    let (dtype, device) = (first.tensor.dtype(), first.tensor.device().clone());
    for b in &tensors {
        if b.tensor.dtype() != dtype {
            return Err(Error::DType {
                op: name,
                detail: format!(
                    "all bound tensors must have one dtype: found {dtype:?} and {:?}",
                    b.tensor.dtype()
                ),
            }
            .into());
        }
        if !b.tensor.device().same_device(&device) {
            return Err(Error::Device {
                op: name,
                detail: format!(
                    "all bound tensors must be on one device: found {:?} and {:?}",
                    device.location(),
                    b.tensor.device().location()
                ),
            }
            .into());
        }
    }

    // Sizes: rows of the output axis and terms of the reduced axis (after the swap, I and J).
    let (out_name, red_name) = match reduction.axis {
        Axis::J => ("i", "j"),
        Axis::I => ("j", "i"),
    };
    let mut rows: Option<usize> = None;
    let mut terms: Option<usize> = None;
    let mut vars = Vec::with_capacity(tensors.len());
    let mut offset = 0;
    for b in &tensors {
        let cat = match (b.cat, reduction.axis) {
            (VarCat::I, Axis::I) => VarCat::J,
            (VarCat::J, Axis::I) => VarCat::I,
            (c, _) => c,
        };
        let n = b.tensor.elem_count() / b.dim;
        let slot = match cat {
            VarCat::I => Some((&mut rows, out_name)),
            VarCat::J => Some((&mut terms, red_name)),
            VarCat::P => None,
        };
        if let Some((slot, axis_name)) = slot {
            match *slot {
                None => *slot = Some(n),
                Some(m) if m != n => {
                    let detail = format!(
                        "the {axis_name}-variables have different numbers of rows: {m} and {n} \
                         (shape {:?})",
                        b.tensor.dims()
                    );
                    return Err(Error::Shape { op: name, detail }.into());
                }
                Some(_) => {}
            }
        }
        vars.push(VarSpec {
            cat,
            dim: b.dim,
            rows: if cat == VarCat::P { 1 } else { n },
            offset,
        });
        offset += b.tensor.elem_count();
    }
    // `sizes` is (i-rows, j-rows); `rows` and `terms` are per output and reduced axis.
    let sizes = sizes.map(|(ni, nj)| match reduction.axis {
        Axis::J => (ni, nj),
        Axis::I => (nj, ni),
    });
    let rows = rows.or(sizes.map(|s| s.0));
    let terms = terms.or(sizes.map(|s| s.1));
    let rows = rows.ok_or_else(|| Error::InvalidArgument {
        op: name,
        detail: format!(
            "the formula has no {out_name}-variable, so the number of output rows is unknown"
        ),
    })?;
    let terms = terms.ok_or_else(|| Error::InvalidArgument {
        op: name,
        detail: format!(
            "the formula has no {red_name}-variable, so the number of reduced terms is unknown"
        ),
    })?;
    if rows == 0 || terms == 0 {
        let detail = format!(
            "empty input: {rows} {out_name}-rows and {terms} {red_name}-rows \
             (both must be at least 1)"
        );
        return Err(Error::Shape { op: name, detail }.into());
    }
    let cells = |cols: usize| {
        rows.checked_mul(cols)
            .filter(|&c| c <= (isize::MAX as usize) / 16)
    };
    if cells(out.values.max(out.indices)).is_none() {
        return Err(Error::InvalidArgument {
            op: name,
            detail: format!(
                "the output ({rows} rows x {} columns) is too large",
                out.values.max(out.indices)
            ),
        }
        .into());
    }
    let plan = Arc::new(ReductionPlan {
        formula: f,
        reduction: run,
        vars,
        rows,
        terms,
        out,
    });
    // The backward pass, planned ahead, records this plan instead of running it.
    if let Some(stand_in) =
        ahead::intercept(&plan, dtype, &needs_grad, user_out.indices > 0, &device)
    {
        return stand_in;
    }
    #[cfg(not(feature = "cuda"))]
    if device.is_cuda() {
        return Err(cuda::unavailable(&plan).into());
    }
    // The modules of this reduction's backward pass start compiling now, in the background.
    #[cfg(feature = "cuda")]
    if device.is_cuda() && out.values > 0 && needs_grad.contains(&true) && !ahead::backward_active()
    {
        ahead::prepare_backward(&plan, &needs_grad, dtype, &device);
    }

    if device.is_metal() {
        return Err(Error::NotImplemented {
            what: "the Metal backend",
            detail: format!("cannot run {} on a Metal tensor", plan.key()),
        }
        .into());
    }
    crate::backend::census::dispatched(&plan, dtype);
    // Elsewhere, the census notes what CUDA would compile ahead here.
    if crate::backend::census::is_on()
        && !device.is_cuda()
        && out.values > 0
        && needs_grad.contains(&true)
        && !ahead::backward_active()
    {
        ahead::census_backward(&plan, &needs_grad, dtype);
    }
    let packed = pack(&tensors)?;
    let side = Arc::new(Mutex::new(None));
    let saved = Arc::new(Mutex::new(None));
    let op = ReductionOp {
        plan: plan.clone(),
        side: side.clone(),
        needs_grad,
        saved: saved.clone(),
    };
    let primary = if out.values > 0 {
        packed.apply_op1(op)?
    } else {
        packed.apply_op1_no_bwd(&op)?
    };
    let secondary = side.lock().ok().and_then(|mut s| s.take());
    if let (Some(idx), Ok(mut slot)) = (&secondary, saved.lock()) {
        *slot = Some(idx.clone());
    }
    Ok(if out.values > 0 {
        ReductionOutput {
            values: Some(primary),
            // Indices found only for the backward pass are not part of the user's result.
            indices: if user_out.indices > 0 {
                secondary
            } else {
                None
            },
        }
    } else {
        ReductionOutput {
            values: None,
            indices: Some(primary),
        }
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
