//! Device backends: each runs a [`ReductionPlan`] on its device's memory.
//!
//! Backends receive validated, contiguous inputs (the checks live in [`crate::op`]) and know
//! nothing of autodiff. The plan always reduces over `j`: a reduction over `i` is planned with
//! the roles of `i` and `j` exchanged.

pub mod cpu;
pub mod cuda;

use crate::formula::{Expr, VarCat};
use crate::reduction::{OutputSpec, Reduction};

/// One bound tensor of a plan: its category, components per row, number of rows and where
/// its values start in the packed input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VarSpec {
    /// `I`, `J` or `P` (after the axis swap, so the reduction is over `J`).
    pub cat: VarCat,
    /// Components per row.
    pub dim: usize,
    /// Rows (1 for a parameter).
    pub rows: usize,
    /// Offset of the first value in the packed input.
    pub offset: usize,
}

/// A reduction ready to run: formula (over `j`), kind, inputs and sizes.
#[derive(Clone, Debug)]
pub struct ReductionPlan {
    /// The formula, with variable positions `0..vars.len()`, reduced over `j`.
    pub formula: Expr,
    /// The reduction (its `axis` is the user's; the plan itself always reduces over `j`).
    pub reduction: Reduction,
    /// The bound tensors, by position.
    pub vars: Vec<VarSpec>,
    /// Number of output rows.
    pub rows: usize,
    /// Number of reduced terms.
    pub terms: usize,
    /// Output columns.
    pub out: OutputSpec,
}

impl ReductionPlan {
    /// The canonical text of the reduction: the key of compiled-kernel caches.
    pub fn key(&self) -> String {
        format!("{}:{}", self.reduction, self.formula)
    }
}
