//! Device backends: each runs a reduction plan (`ReductionPlan`) on its device's memory.
//!
//! Backends receive validated, contiguous inputs (the checks live in [`crate::op`]) and know
//! nothing of autodiff. The plan always reduces over `j`: a reduction over `i` is planned with
//! the roles of `i` and `j` exchanged.

pub mod census;
pub mod cpu;
pub mod cuda;

use crate::formula::{Expr, VarCat};
use crate::reduction::{Axis, OutputSpec, Reduction};

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
    /// build), not compiled.
    pub(crate) fn cuda_kernel(
        &self,
        storage: cuda::Storage,
    ) -> crate::error::Result<cuda::CudaKernel> {
        cuda::generate(
            &self.formula,
            self.reduction.kind,
            &self.kernel_vars(),
            storage,
        )
    }

    /// What determines the generated module besides the dtype: the reduction kind, the
    /// formula and the variables (not the sizes, and not the user's axis).
    pub(crate) fn kernel_key(&self) -> String {
        format!(
            "{}:{}:{:?}",
            self.kernel_reduction(),
            self.formula,
            self.kernel_vars()
        )
    }
}
