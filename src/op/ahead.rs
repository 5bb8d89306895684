//! Compiling ahead of use: the reductions a backward pass will run are known at the forward
//! pass (they depend on the formula, the reduction, the variables' dimensions and which
//! inputs need gradients, not on values or sizes), so a tracked forward reduction hands them
//! to its backend (`Backend::prepare_backward`, at the dispatch point of
//! [`crate::backend`]): on CUDA their modules are queued for compiling on background threads
//! while the forward's own module compiles in the foreground, so that when `backward()`
//! comes they are ready or in flight; on the CPU the census notes them.
//!
//! The backward plans are found by running the backward pass itself in *planning mode* on
//! stand-in tensors (a few rows, on the CPU): every reduction it asks for is recorded instead
//! of run, and answered with zeros of the right shape. So there is one description of the
//! backward pass, and the prediction cannot drift from it.

use std::cell::{Cell, RefCell};

use candle_core::{DType, Device, Shape, Tensor};

use super::gram::{Path, ReductionOptions};
use super::{ReductionOutput, out_shape};
use crate::backend::{Backend, ReductionPlan, VarSpec};
use crate::formula::VarCat;
use crate::reduction::OutputSpec;

/// A reduction recorded in planning mode.
#[derive(Clone, Debug)]
pub(crate) struct Planned {
    /// What would have run.
    pub(crate) plan: ReductionPlan,
    /// The dtype of its inputs.
    pub(crate) dtype: DType,
    /// Per bound tensor (in plan order): whether it tracks gradients.
    pub(crate) needs_grad: Vec<bool>,
}

thread_local! {
    /// In planning mode: the reductions asked for so far.
    static PLANS: RefCell<Option<Vec<Planned>>> = const { RefCell::new(None) };
    /// Depth of backward passes of reductions running on this thread.
    static BACKWARD: Cell<usize> = const { Cell::new(0) };
}

/// Runs `f` marked as (part of) a reduction's backward pass: reductions it runs do not
/// prepare their own backward passes (a second-order gradient is rarely asked for).
pub(super) fn in_backward<R>(f: impl FnOnce() -> R) -> R {
    struct Depth;
    impl Drop for Depth {
        fn drop(&mut self) {
            BACKWARD.with(|d| d.set(d.get().saturating_sub(1)));
        }
    }
    BACKWARD.with(|d| d.set(d.get() + 1));
    let _depth = Depth;
    f()
}

/// Whether a reduction's backward pass is running on this thread.
pub(super) fn backward_active() -> bool {
    BACKWARD.with(|d| d.get() > 0)
}

/// Zeros of `shape` broadcast from one element: a tensor of that shape and no memory.
fn broadcast_zeros(shape: &Shape, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
    Tensor::zeros(vec![1; shape.rank()], dtype, device)?.broadcast_as(shape)
}

/// A stand-in for a `shape` tensor in a closure run by [`prepare`] (or [`plan`]): zeros
/// broadcast from one element, so that nothing of that size is allocated.
pub(crate) fn stand_in(
    shape: impl Into<Shape>,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Tensor> {
    broadcast_zeros(&shape.into(), dtype, device)
}

/// In planning mode, records `plan` and returns stand-in outputs (broadcast zeros on
/// `device`, shaped as the real outputs); `None` otherwise. `user_indices`: whether the
/// caller gets indices next to values.
pub(super) fn intercept(
    plan: &ReductionPlan,
    dtype: DType,
    needs_grad: &[bool],
    user_indices: bool,
    device: &Device,
) -> Option<candle_core::Result<ReductionOutput>> {
    let planning = PLANS.with(|p| match p.borrow_mut().as_mut() {
        Some(plans) => {
            plans.push(Planned {
                plan: plan.clone(),
                dtype,
                needs_grad: needs_grad.to_vec(),
            });
            true
        }
        None => false,
    });
    if !planning {
        return None;
    }
    let out = plan.out;
    let zeros = |cols: usize, dtype: DType| broadcast_zeros(&out_shape(plan, cols), dtype, device);
    Some((|| {
        Ok(if out.values > 0 {
            ReductionOutput {
                values: Some(zeros(out.values, dtype)?),
                indices: if user_indices && out.indices > 0 {
                    Some(zeros(out.indices, DType::I64)?)
                } else {
                    None
                },
            }
        } else {
            ReductionOutput {
                values: None,
                indices: Some(zeros(out.indices, DType::I64)?),
            }
        })
    })())
}

/// Runs `f` in planning mode and returns the reductions it asked for: each is recorded, not
/// run, and answered with zeros of its outputs' shapes (broadcast: nothing is allocated).
/// Bind [`stand_in`]s for large inputs that the real computation would make.
pub(crate) fn plan(
    f: impl FnOnce() -> candle_core::Result<()>,
) -> candle_core::Result<Vec<Planned>> {
    struct Planning(Option<Vec<Planned>>);
    impl Drop for Planning {
        fn drop(&mut self) {
            // Back to the outer state (not planning, or an outer planning's record).
            let outer = self.0.take();
            PLANS.with(|p| *p.borrow_mut() = outer);
        }
    }
    let outer = PLANS.with(|p| p.borrow_mut().replace(Vec::new()));
    let guard = Planning(outer);
    let r = f();
    let plans = PLANS.with(|p| p.borrow_mut().take()).unwrap_or_default();
    drop(guard);
    r.map(|()| plans)
}

/// Starts compiling, on `device` and on background threads, the modules of every reduction
/// that `f` asks for, and, for those with inputs that track gradients, the modules of their
/// backward passes. `f` runs in planning mode (see [`plan`]) and only on CUDA devices (there
/// is nothing to compile elsewhere); its error is returned.
///
/// A layer that knows which reductions it will run (a solve: its products for each number of
/// right-hand sides) calls this first, so that their compiles overlap instead of following
/// one another.
pub(crate) fn prepare(
    device: &Device,
    f: impl FnOnce() -> candle_core::Result<()>,
) -> candle_core::Result<()> {
    let backend = match Backend::of(device) {
        Ok(backend) if backend.compiles() => backend,
        _ => return Ok(()),
    };
    for p in plan(f)? {
        backend.prepare([p.plan.clone()], p.dtype);
        prepare_backward(&backend, &p.plan, &p.needs_grad, p.dtype);
    }
    Ok(())
}

/// When `plan` has a backward pass (it has values, and inputs flagged in `needs_grad` need
/// gradients), prepares `backend` for it (see `Backend::prepare_backward`: CUDA starts
/// compiling its modules, the census notes them elsewhere), with the plans of
/// [`backward_plans`].
pub(super) fn prepare_backward(
    backend: &Backend,
    plan: &ReductionPlan,
    needs_grad: &[bool],
    dtype: DType,
) {
    if plan.out.values > 0 && needs_grad.contains(&true) {
        backend.prepare_backward(plan, needs_grad, dtype, || {
            backward_plans(plan, needs_grad, dtype)
        });
    }
}

/// The plans the backward pass of `plan` runs when the inputs flagged in `needs_grad` need
/// gradients, for inputs of `dtype` (their sizes are those of stand-ins; the kernels do not
/// depend on sizes).
fn backward_plans(
    forward: &ReductionPlan,
    needs_grad: &[bool],
    dtype: DType,
) -> candle_core::Result<Vec<ReductionPlan>> {
    // A few rows of each axis, distinct so that no shape is ambiguous.
    let (rows, terms) = (2, 3);
    let mut offset = 0;
    let vars: Vec<VarSpec> = forward
        .vars
        .iter()
        .map(|v| {
            let n = match v.cat {
                VarCat::P => 1,
                VarCat::I => rows,
                VarCat::J => terms,
            };
            let s = VarSpec {
                rows: n,
                offset,
                ..*v
            };
            offset += n * v.dim;
            s
        })
        .collect();
    let stand_in_plan = ReductionPlan {
        formula: forward.formula.clone(),
        reduction: forward.reduction,
        vars,
        rows,
        terms,
        out: forward.out,
        blocks: forward.blocks.clone(),
        // Block-sparse kernels depend on whether there are ranges, not on which: the
        // stand-ins get ranges of their own sizes (one block, kept), so that the backward
        // pass's plans carry ranges where the real ones will.
        ranges: forward.ranges.as_ref().and_then(|_| {
            let one = |n: usize| std::iter::once(0..n).collect();
            crate::ranges::Ranges::new(rows, terms, one(rows), one(terms), &[(0, 0)])
                .ok()
                .map(std::sync::Arc::new)
        }),
    };
    let cpu = Device::Cpu;
    let OutputSpec {
        values, indices, ..
    } = forward.out;
    if values == 0 {
        return Ok(Vec::new());
    }
    let arg = Tensor::zeros(offset, dtype, &cpu)?;
    let res = Tensor::zeros(out_shape(&stand_in_plan, values), dtype, &cpu)?;
    let idx = if indices > 0 {
        Some(Tensor::zeros(
            out_shape(&stand_in_plan, indices),
            DType::I64,
            &cpu,
        )?)
    } else {
        None
    };
    // The stand-ins are few: the block path, where the forward pass took it, is asked for
    // (a backward pass takes it where it can).
    let options = match &forward.blocks {
        Some(b) => ReductionOptions {
            path: Path::Blocks,
            precision: b.precision,
            block_bytes: b.block_bytes,
        },
        None => ReductionOptions::default(),
    };
    let planned = plan(|| {
        in_backward(|| {
            super::backward::Backward {
                plan: &stand_in_plan,
                needs_grad,
                indices: idx.as_ref(),
                options: &options,
            }
            .run(&arg, &res, &res)
        })
        .map(|_| ())
    })?;
    Ok(planned.into_iter().map(|p| p.plan).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::census;
    use crate::backend::cuda::Storage;
    use crate::{Axis, LazyTensor};
    use candle_core::Var;

    fn var(rows: usize, cols: usize, seed: f64) -> Var {
        let v: Vec<f64> = (0..rows * cols)
            .map(|k| ((k as f64 + seed) * 0.61).sin())
            .collect();
        Var::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
    }

    fn name(p: &ReductionPlan, dtype: DType) -> String {
        let storage = Storage::from_dtype(dtype).unwrap();
        p.cuda_kernel(storage).unwrap().name
    }

    /// The kernels `run` dispatches (forward and backward) whose formula mentions `tag`,
    /// against those planned for its forward reduction and the backward pass of that.
    fn check_prediction(tag: &str, run: impl Fn() -> candle_core::Result<Tensor>) {
        let planned = plan(|| run().map(|_| ())).unwrap();
        assert_eq!(planned.len(), 1, "one forward reduction");
        let p = &planned[0];
        assert!(p.needs_grad.contains(&true));
        let mut predicted = vec![name(&p.plan, p.dtype)];
        for b in backward_plans(&p.plan, &p.needs_grad, p.dtype).unwrap() {
            predicted.push(name(&b, p.dtype));
        }

        let _lock = census::test_lock();
        census::start();
        let out = run();
        let grads = out.and_then(|o| o.sum_all()?.backward());
        let c = census::stop();
        grads.unwrap();
        // Other tests may run reductions meanwhile: every planned kernel ran, and every
        // kernel that ran with this formula's constant was planned.
        let all: Vec<&str> = c.kernels.iter().map(|k| k.name.as_str()).collect();
        for p in &predicted {
            assert!(all.contains(&p.as_str()), "{p} was planned, not run:\n{c}");
        }
        let tagged: Vec<&str> = c
            .kernels
            .iter()
            .filter(|k| k.formula.contains(tag))
            .map(|k| k.name.as_str())
            .collect();
        assert!(tagged.len() >= 2, "forward and backward: {c}");
        for t in tagged {
            assert!(
                predicted.iter().any(|p| p == t),
                "{t} ran, not planned:\n{c}"
            );
        }
    }

    #[test]
    fn the_planned_backward_pass_is_the_one_that_runs() {
        let (x, y, b) = (var(7, 3, 0.0), var(5, 3, 1.0), var(5, 2, 2.0));
        let s = Var::from_vec(vec![0.8f64], 1, &Device::Cpu).unwrap();
        // A Gaussian kernel sum with a parameter: gradients over j, over i, pointwise steps.
        check_prediction("0.4321", || {
            let (x_i, y_j, b_j) = (
                LazyTensor::vi(x.as_tensor())?,
                LazyTensor::vj(y.as_tensor())?,
                LazyTensor::vj(b.as_tensor())?,
            );
            let s = LazyTensor::param(s.as_tensor())?;
            ((-0.4321 * x_i.sqdist(&y_j) * s.square()).exp() * b_j).sum(Axis::J)
        });
        // Log-sum-exp (its backward uses the saved output) over i.
        check_prediction("0.5432", || {
            let (x_i, y_j) = (
                LazyTensor::vi(x.as_tensor())?,
                LazyTensor::vj(y.as_tensor())?,
            );
            (-0.5432 * x_i.sqdist(&y_j)).logsumexp(Axis::I)
        });
        // Min (run with its indices; the backward evaluates the gradient at them).
        check_prediction("0.6543", || {
            let (x_i, y_j) = (
                LazyTensor::vi(x.as_tensor())?,
                LazyTensor::vj(y.as_tensor())?,
            );
            (0.6543 * x_i.sqdist(&y_j)).min(Axis::J)
        });
        // Block-sparse, over i: the backward pass's modules are block-sparse ones too.
        let rows = crate::Clusters::from_labels(&[0, 0, 1, 1, 1, 2, 2]).unwrap();
        let cols = crate::Clusters::from_labels(&[0, 1, 1, 2, 2]).unwrap();
        let keep = [(0, 0), (1, 2), (2, 1), (2, 2)];
        let keep = crate::BlockSparse::from_pairs(&rows, &cols, &keep).unwrap();
        check_prediction("0.7654", || {
            let (x_i, y_j) = (
                LazyTensor::vi(x.as_tensor())?,
                LazyTensor::vj(y.as_tensor())?,
            );
            let s = LazyTensor::param(s.as_tensor())?;
            (-0.7654 * x_i.sqdist(&y_j) * s.square())
                .exp()
                .with_ranges(&keep)
                .sum(Axis::I)
        });
    }

    #[test]
    fn planning_answers_with_stand_ins_and_ends_cleanly() {
        let x = Tensor::rand(0f32, 1., (4, 3), &Device::Cpu).unwrap();
        let big = 1_000_000;
        // A product with a million-row stand-in: recorded, answered with broadcast zeros.
        let planned = plan(|| {
            let y = stand_in((big, 3), DType::F32, &Device::Cpu)?;
            let b = stand_in((big, 16), DType::F32, &Device::Cpu)?;
            let (x_i, y_j) = (LazyTensor::vi(&x)?, LazyTensor::vj(&y)?);
            let out = ((-x_i.sqdist(&y_j)).exp() * LazyTensor::vj(&b)?).sum(Axis::J)?;
            assert_eq!(out.dims(), &[4, 16]);
            assert_eq!(out.sum_all()?.to_scalar::<f32>()?, 0.0);
            Ok(())
        })
        .unwrap();
        assert_eq!(planned.len(), 1);
        assert_eq!((planned[0].plan.rows, planned[0].plan.terms), (4, big));
        assert_eq!(planned[0].needs_grad, vec![false; 3]);
        // An error inside ends planning too; reductions then run for real.
        let failed = plan(|| {
            Err(crate::error::Error::InvalidArgument {
                op: "test",
                detail: "stop".into(),
            }
            .into())
        });
        assert!(failed.unwrap_err().to_string().contains("stop"));
        let x_i = LazyTensor::vi(&x).unwrap();
        let real = x_i
            .sqdist(&LazyTensor::vj(&x).unwrap())
            .sum(Axis::J)
            .unwrap();
        assert!(real.sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
        // Nested planning keeps each level's record.
        let x_j = LazyTensor::vj(&x).unwrap();
        let outer = plan(|| {
            x_i.sqdist(&x_j).sum(Axis::J)?;
            let inner = plan(|| x_i.sqdist(&x_j).exp().sum(Axis::J).map(|_| ()))?;
            assert_eq!(inner.len(), 1);
            x_i.sqdist(&x_j).min(Axis::J)?;
            Ok(())
        })
        .unwrap();
        assert_eq!(outer.len(), 2);
    }
}
