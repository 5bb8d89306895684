//! Device backends: each runs a reduction plan (`ReductionPlan`) on its device's memory.
//!
//! Two backends exist: [`cpu`] (formulas compiled into register programs, run tile by tile
//! with SIMD loops) and [`cuda`] (fused kernels generated from the formula, compiled with
//! NVRTC; feature `cuda`). Backends receive validated, contiguous inputs (the checks live in
//! [`crate::op`]) and know nothing of autodiff. The plan always reduces over `j`: a reduction
//! over `i` is planned with the roles of `i` and `j` exchanged.
//!
//! `Backend` (crate-private) is the one dispatch point from a Candle device to device-specific
//! code. `Backend::of(device)` gives the backend of a device, or says why this build has none
//! (`NoBackend`: a CUDA device without the `cuda` feature, a Metal device), and that reason
//! becomes the error of a reduction there. Every other decision that depends on the device
//! is one of its methods: whether it compiles modules (and so whether compiling ahead pays),
//! compiling the modules of forward plans ahead (`Backend::prepare`), and preparing for a
//! backward pass (`Backend::prepare_backward`: CUDA compiles its modules on background
//! threads, the CPU notes in the [`census`] what CUDA would compile). Running a plan is
//! Candle's dispatch: it calls the custom op's `cpu_fwd` or `cuda_fwd`, which hand the
//! packed storage to `cpu::reduce_storage` or `cuda::launch::reduce`; both answer with
//! `Outputs` in their device's storage.
//!
//! A new backend (Metal, say) is a variant of `Backend` and its arms in these methods (the
//! compiler lists them), a module here with its `reduce_storage`, and the op's `metal_fwd`.

pub mod census;
pub mod cpu;
pub mod cuda;
pub mod memory;

use candle_core::{DType, Device};

use crate::error::Error;
use crate::formula::{Expr, VarCat};
use crate::op::gram::BlockPlan;
use crate::reduction::{Axis, OutputSpec, Reduction};

/// The backend that runs reductions on one device: the crate's one dispatch point from a
/// Candle [`Device`] to device-specific code (see the module documentation).
#[derive(Clone, Debug)]
pub(crate) enum Backend {
    /// The CPU tile executor ([`cpu`]).
    Cpu,
    /// Generated CUDA kernels ([`cuda`]) on this device.
    #[cfg(feature = "cuda")]
    Cuda(candle_core::CudaDevice),
}

/// Why a device has no backend in this build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NoBackend {
    /// A CUDA device, in a build without the `cuda` feature.
    #[cfg_attr(feature = "cuda", allow(dead_code))]
    CudaFeatureOff,
    /// A Metal device: there is no Metal backend yet.
    Metal,
}

impl NoBackend {
    /// The error of running `plan` on such a device: what is missing, and how to get it.
    pub(crate) fn error(self, plan: &ReductionPlan) -> Error {
        match self {
            NoBackend::CudaFeatureOff => Error::NotImplemented {
                what: "the CUDA backend in this build",
                detail: format!(
                    "cannot run {} on a CUDA tensor: build lazy-kernels with `--features cuda`",
                    plan.key()
                ),
            },
            NoBackend::Metal => Error::NotImplemented {
                what: "the Metal backend",
                detail: format!("cannot run {} on a Metal tensor", plan.key()),
            },
        }
    }
}

impl Backend {
    /// The backend that runs reductions on `device`, or why this build has none.
    pub(crate) fn of(device: &Device) -> Result<Backend, NoBackend> {
        match device {
            Device::Cpu => Ok(Backend::Cpu),
            #[cfg(feature = "cuda")]
            Device::Cuda(dev) => Ok(Backend::Cuda(dev.clone())),
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(_) => Err(NoBackend::CudaFeatureOff),
            Device::Metal(_) => Err(NoBackend::Metal),
        }
    }

    /// Whether this backend runs block-sparse reductions (plans with `ranges`): both do (CUDA
    /// with its block-sparse modules, `cuda::generate_ranged`).
    pub(crate) fn runs_ranges(&self) -> bool {
        match self {
            Backend::Cpu => true,
            #[cfg(feature = "cuda")]
            Backend::Cuda(_) => true,
        }
    }

    /// Whether this backend compiles a module per kernel (so that compiling ahead of use
    /// pays): CUDA does, the CPU does not.
    pub(crate) fn compiles(&self) -> bool {
        !matches!(self, Backend::Cpu)
    }

    /// Starts compiling the modules of `plans` (inputs of `dtype`) on background threads,
    /// so that the reductions that need them find them ready or in flight; nothing on a
    /// backend that compiles nothing.
    #[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
    pub(crate) fn prepare(&self, plans: impl IntoIterator<Item = ReductionPlan>, dtype: DType) {
        match self {
            Backend::Cpu => {}
            #[cfg(feature = "cuda")]
            Backend::Cuda(dev) => {
                if let Ok(storage) = cuda::Storage::from_dtype(dtype) {
                    cuda::launch::prepare_on(plans, storage, dev);
                }
            }
        }
    }

    /// Prepares for the backward pass of `forward`, run on inputs of `dtype` of which those
    /// flagged in `needs_grad` need gradients; `backward` finds the plans of that pass (called
    /// only when they are needed). CUDA starts compiling their modules on background threads
    /// (once per kernel key, flags, dtype and architecture). Elsewhere, with the census on,
    /// the census notes the modules CUDA would compile here (once per kernel key, flags and
    /// dtype), so that the count is observable without a GPU.
    pub(crate) fn prepare_backward(
        &self,
        forward: &ReductionPlan,
        needs_grad: &[bool],
        dtype: DType,
        backward: impl FnOnce() -> candle_core::Result<Vec<ReductionPlan>>,
    ) {
        let Ok(storage) = cuda::Storage::from_dtype(dtype) else {
            return;
        };
        match self {
            Backend::Cpu => census::note_backward(forward, needs_grad, storage, backward),
            #[cfg(feature = "cuda")]
            Backend::Cuda(dev) => {
                cuda::prepare_backward(dev, forward, needs_grad, storage, backward)
            }
        }
    }
}

/// The range of the packed input in its storage: backends read it as one contiguous slice
/// (the packing makes it so; anything else is a bug reported as an error).
pub(crate) fn packed_range(layout: &candle_core::Layout) -> candle_core::Result<(usize, usize)> {
    layout.contiguous_offsets().ok_or_else(|| {
        Error::InvalidArgument {
            op: "reduction",
            detail: "packed input is not contiguous".into(),
        }
        .into()
    })
}

/// What a backend's run of a plan gives, in its device's storage `S`: the primary output
/// (values, or the indices of a reduction without values) and the indices found next to
/// values (present when the plan's output has both).
pub(crate) struct Outputs<S> {
    /// Values, or indices when the reduction has no values.
    pub(crate) primary: S,
    /// Indices next to values.
    pub(crate) indices: Option<S>,
}

/// One bound tensor of a plan: its category, components per row, number of rows and where
/// its values start in the packed input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct VarSpec {
    /// `I`, `J` or `P` (after the axis swap, so the reduction is over `J`).
    pub(crate) cat: VarCat,
    /// Components per row.
    pub(crate) dim: usize,
    /// Rows (1 for a parameter).
    pub(crate) rows: usize,
    /// Offset of the first value in the packed input.
    pub(crate) offset: usize,
}

/// A reduction ready to run: formula (over `j`), kind, inputs and sizes.
#[derive(Clone, Debug)]
pub(crate) struct ReductionPlan {
    /// The formula, with variable positions `0..vars.len()`, reduced over `j`.
    pub(crate) formula: Expr,
    /// The reduction (its `axis` is the user's; the plan itself always reduces over `j`).
    pub(crate) reduction: Reduction,
    /// The bound tensors, by position.
    pub(crate) vars: Vec<VarSpec>,
    /// Number of output rows.
    pub(crate) rows: usize,
    /// Number of reduced terms.
    pub(crate) terms: usize,
    /// Output columns.
    pub(crate) out: OutputSpec,
    /// The block path's plan (`crate::op::gram`), or `None` for the direct path.
    pub(crate) blocks: Option<BlockPlan>,
    /// The block-sparse ranges (rows: the plan's output rows, columns: its terms): only the
    /// kept blocks are visited; `None` visits every pair. Never with `blocks`.
    pub(crate) ranges: Option<std::sync::Arc<crate::ranges::Ranges>>,
}

impl ReductionPlan {
    /// The canonical text of the reduction: the key of compiled-kernel caches.
    pub(crate) fn key(&self) -> String {
        format!("{}:{}", self.reduction, self.formula)
    }

    /// The reduction the generated module runs: the plan's kind over `j` (a reduction over
    /// `i` is planned with `i` and `j` exchanged, so it runs the same module).
    pub(crate) fn kernel_reduction(&self) -> Reduction {
        Reduction::new(self.reduction.kind, Axis::J)
    }

    /// The variables as the code generator takes them: category and components by position.
    pub(crate) fn kernel_vars(&self) -> Vec<(VarCat, usize)> {
        self.vars.iter().map(|v| (v.cat, v.dim)).collect()
    }

    /// The CUDA module of this plan for inputs stored as `storage`: generated (in every
    /// build), not compiled. A block plan's module reads its pair inputs from blocks of inner
    /// products; for a matrix product, it is the coefficient kernel alone.
    pub(crate) fn cuda_kernel(
        &self,
        storage: cuda::Storage,
    ) -> crate::error::Result<cuda::CudaKernel> {
        let vars = self.kernel_vars();
        if self.ranges.is_some() {
            // Ranges run on the direct path (`blocks` is `None`).
            return cuda::generate_ranged(&self.formula, self.reduction.kind, &vars, storage);
        }
        let Some(bp) = &self.blocks else {
            return cuda::generate(&self.formula, self.reduction.kind, &vars, storage);
        };
        let pairs = bp.pair_nodes();
        match &bp.matmul {
            Some(mm) => cuda::generate_values(&mm.coef, &vars, &pairs, storage),
            None => cuda::generate_with_pairs(
                &self.formula,
                self.reduction.kind,
                &vars,
                &pairs,
                storage,
            ),
        }
    }

    /// What determines the generated module besides the dtype: the reduction kind, the
    /// formula and the variables (not the sizes, and not the user's axis), whether it runs
    /// block-sparse ranges (not which), and for a block plan its pair inputs and matrix
    /// product.
    pub(crate) fn kernel_key(&self) -> String {
        let key = format!(
            "{}:{}:{:?}",
            self.kernel_reduction(),
            self.formula,
            self.kernel_vars()
        );
        match &self.blocks {
            None if self.ranges.is_some() => format!("{key}:ranges"),
            None => key,
            Some(bp) => {
                let pairs: Vec<String> = bp.pairs.iter().map(|p| p.node.to_string()).collect();
                let coef = bp.matmul.as_ref().map(|m| format!("{m:?}"));
                format!("{key}:blocks{pairs:?}:{coef:?}")
            }
        }
    }
}
