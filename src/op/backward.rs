//! The backward pass of a reduction: gradients of every bound tensor, computed by new
//! reductions built with [`crate::formula::grad`] and run by the same backends.
//!
//! Each reduction family says which rule applies (`crate::reduction::GradRule`; term-wise
//! rules carry their adjoint). With `F` the formula, `G` the incoming gradient (one row per
//! output row) and the reduction over `j`:
//!
//! - `Sum`: the adjoint of `F_ij` is `G_i`;
//! - `LogSumExp`: `G_i exp(F_ij - out_i)`, from the saved output, so it never overflows;
//! - `SumSoftMaxWeight` (`F = (S, V)`, `out_i = sum_j s_ij V_ij` with
//!   `s_ij = exp(S_ij - lse_i)`): `s_ij <V_ij - out_i, G_i>` for `S` and `s_ij G_i` for `V`;
//!   `lse_i` comes from one more log-sum-exp reduction;
//! - `Min`, `Max`, `KMin` (and the values of their `Arg` variants): the adjoint goes to the
//!   selected terms only. The formula's gradient is evaluated at the selected pairs `(i, j*)`
//!   (gathered rows), then summed over `i` for i-variables and scattered onto `j*` for
//!   j-variables.
//!
//! The gradient of an i-variable is then a reduction over `j`, of a j-variable a reduction over
//! `i`, of a parameter either, followed by a sum over the rows. A block-sparse forward pass
//! (`plan.ranges`) gives its ranges to these reductions (and to the log-sum-exp of the softmax
//! rule), transposed for those over `i`, so skipped blocks contribute to no gradient; the
//! pointwise evaluations at selected pairs and the scaling of sums need none. Gradients that reduce over the
//! same axis are concatenated into one formula, so they share one pass over the pairs and
//! every subexpression (the kernel's exponential is computed once per pair). Tensors that need
//! no gradient get no formula: their part of the packed gradient is zeros.
//!
//! Every step is a differentiable Candle op or one of our reductions, so the gradient can
//! itself be differentiated (Candle's `CANDLE_GRAD_DO_NOT_DETACH=1` keeps the graph).

use candle_core::Tensor;

use super::gram::ReductionOptions;
use super::{Binding, reduce_sized};
use crate::backend::ReductionPlan;
use crate::error::Error;
use crate::formula::grad::factor_out;
use crate::formula::{BinaryOp, Expr, Op, UnaryOp, Var, VarCat, grad};
use crate::reduction::{Axis, GradRule, Reduction, ReductionKind};

/// The backward pass of one forward reduction.
pub(super) struct Backward<'a> {
    pub(super) plan: &'a ReductionPlan,
    /// Per bound tensor: whether it needs a gradient.
    pub(super) needs_grad: &'a [bool],
    /// For Min, Max and KMin: the selected indices saved by the forward pass.
    pub(super) indices: Option<&'a Tensor>,
    /// The forward reduction's options, which the reductions of the backward pass take too.
    pub(super) options: &'a ReductionOptions,
}

fn var(cat: VarCat, pos: usize, dim: usize) -> candle_core::Result<Expr> {
    Ok(Expr::var(Var { cat, pos, dim })?)
}

fn bin(op: BinaryOp, a: &Expr, b: &Expr) -> candle_core::Result<Expr> {
    Ok(Expr::binary(op, a, b)?)
}

impl Backward<'_> {
    /// The gradient of the packed input (`arg`) given the output `res` and its gradient.
    pub(super) fn run(
        &self,
        arg: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let plan = self.plan;
        // The bound tensors as views of the packed input, so that the gradient stays
        // differentiable with respect to it.
        let views: Vec<Tensor> = plan
            .vars
            .iter()
            .map(|v| {
                let t = arg.narrow(0, v.offset, v.rows * v.dim)?;
                match v.cat {
                    VarCat::P => t.reshape(v.dim),
                    VarCat::I | VarCat::J => t.reshape((v.rows, v.dim)),
                }
            })
            .collect::<candle_core::Result<_>>()?;
        let bindings: Vec<Binding> = plan
            .vars
            .iter()
            .zip(&views)
            .enumerate()
            .map(|(pos, (v, t))| Binding {
                id: pos,
                cat: v.cat,
                dim: v.dim,
                tensor: t.clone(),
            })
            .collect();
        let grads = match plan.reduction.kind.grad_rule() {
            GradRule::TermWise {
                adjoint,
                uses_output,
            } => {
                let (g, g_bind) = self.incoming(grad_res)?;
                let mut extra = vec![g_bind];
                let out = if uses_output {
                    let n = bindings.len() + 1;
                    let e = plan.out.values;
                    extra.push(binding(n, VarCat::I, res.reshape((plan.rows, e))?));
                    Some(var(VarCat::I, n, e)?)
                } else {
                    None
                };
                let eta = adjoint(&plan.formula, &g, out.as_ref())?;
                self.term_grads(&plan.formula, &eta, with(&bindings, extra))?
            }
            GradRule::SoftMax => self.softmax_grads(&bindings, res, grad_res)?,
            GradRule::Selected => self.selected_grads(&views, grad_res)?,
            GradRule::None => {
                return Err(Error::InvalidArgument {
                    op: plan.reduction.kind.name(),
                    detail: "indices have no gradient".into(),
                }
                .into());
            }
        };
        // The packed gradient: each tensor's gradient flattened, zeros where none.
        let parts: Vec<Tensor> = plan
            .vars
            .iter()
            .zip(grads)
            .map(|(v, g)| match g {
                Some(g) => g.flatten_all(),
                None => Tensor::zeros(v.rows * v.dim, arg.dtype(), arg.device()),
            })
            .collect::<candle_core::Result<_>>()?;
        if parts.len() == 1 {
            return Ok(parts.into_iter().next().expect("one part"));
        }
        Tensor::cat(&parts, 0)
    }

    /// The incoming gradient as an i-variable (position after the bound tensors) and its
    /// binding.
    fn incoming(&self, grad_res: &Tensor) -> candle_core::Result<(Expr, Binding)> {
        let plan = self.plan;
        let (n, e) = (plan.vars.len(), plan.out.values);
        let g = grad_res.reshape((plan.rows, e))?;
        Ok((var(VarCat::I, n, e)?, binding(n, VarCat::I, g)))
    }

    /// Gradients for `SumSoftMaxWeight` of `F = Concat(S, V)`.
    fn softmax_grads(
        &self,
        bindings: &[Binding],
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Vec<Option<Tensor>>> {
        let plan = self.plan;
        let f = &plan.formula;
        let e = plan.out.values;
        let (s, v) = match (f.op(), f.args()) {
            (Op::Concat, [s, v]) if s.dim() == 1 => (s.clone(), v.clone()),
            _ => (
                Expr::new(Op::Extract { start: 0, len: 1 }, vec![f.clone()])?,
                Expr::new(Op::Extract { start: 1, len: e }, vec![f.clone()])?,
            ),
        };
        // lse_i of the scores, by one more (differentiable) reduction.
        let lse = reduce_values(
            &s,
            bindings,
            Reduction::new(ReductionKind::LogSumExp, Axis::J),
            Some((plan.rows, plan.terms)),
            plan.ranges.as_ref(),
            self.options,
        )?;
        // A fully masked row (lse = -inf) returns the constant 0: its weights must be 0, not
        // exp(-inf + inf) = NaN, so its lse is taken as +inf (see reduction/softmax.rs).
        let masked = lse.eq(f64::NEG_INFINITY)?;
        let lse = masked.where_cond(&(lse.ones_like()? * f64::INFINITY)?, &lse)?;
        let n = bindings.len();
        let (g, g_bind) = self.incoming(grad_res)?;
        let out = var(VarCat::I, n + 1, e)?;
        let out_bind = binding(n + 1, VarCat::I, res.reshape((plan.rows, e))?);
        let l = var(VarCat::I, n + 2, 1)?;
        let l_bind = binding(n + 2, VarCat::I, lse);
        let weight = Expr::unary(UnaryOp::Exp, &bin(BinaryOp::Sub, &s, &l)?);
        let centred = bin(BinaryOp::Sub, &v, &out)?;
        let ds = bin(
            BinaryOp::Mul,
            &weight,
            &bin(BinaryOp::Mul, &centred, &g)?.sum(),
        )?;
        let dv = bin(BinaryOp::Mul, &weight, &g)?;
        let f2 = Expr::new(Op::Concat, vec![s, v])?;
        let eta = Expr::new(Op::Concat, vec![ds, dv])?;
        self.term_grads(&f2, &eta, with(bindings, [g_bind, out_bind, l_bind]))
    }

    /// Gradients of `sum_ij <eta_ij, F_ij>` for each bound tensor that needs one: reductions
    /// over `j` for i-variables, over `i` for j-variables, and for parameters over whichever
    /// axis is already being reduced, then summed over rows.
    fn term_grads(
        &self,
        f: &Expr,
        eta: &Expr,
        bindings: Vec<Binding>,
    ) -> candle_core::Result<Vec<Option<Tensor>>> {
        let plan = self.plan;
        let wrt: Vec<Var> = plan
            .vars
            .iter()
            .enumerate()
            .map(|(pos, v)| Var {
                cat: v.cat,
                pos,
                dim: v.dim,
            })
            .collect();
        let gs: Vec<Option<Expr>> = grad(f, &wrt, eta)?
            .into_iter()
            .zip(self.needs_grad)
            .map(|(g, &needed)| g.filter(|_| needed))
            .collect();
        let has = |cat: VarCat| {
            gs.iter()
                .zip(&wrt)
                .any(|(g, v)| g.is_some() && v.cat == cat)
        };
        // Parameters join the reduction over j unless only j-variables need gradients.
        let params_axis = if has(VarCat::I) || !has(VarCat::J) {
            Axis::J
        } else {
            Axis::I
        };
        let mut out: Vec<Option<Tensor>> = vec![None; wrt.len()];
        for axis in [Axis::J, Axis::I] {
            let members: Vec<usize> = (0..wrt.len())
                .filter(|&k| {
                    gs[k].is_some()
                        && match wrt[k].cat {
                            VarCat::I => axis == Axis::J,
                            VarCat::J => axis == Axis::I,
                            VarCat::P => axis == params_axis,
                        }
                })
                .collect();
            if members.is_empty() {
                continue;
            }
            // By linearity, factors that do not depend on the reduced index are applied after
            // the reduction, once per output row, instead of once per pair.
            let reduced = match axis {
                Axis::J => VarCat::J,
                Axis::I => VarCat::I,
            };
            let split: Vec<(Option<Expr>, Expr)> = members
                .iter()
                .map(|&k| {
                    let g = gs[k].clone().expect("member");
                    match factor_out(&g, reduced) {
                        Some((outer, inner)) => (Some(outer), inner),
                        None => (None, g),
                    }
                })
                .collect();
            let formula = concat(split.iter().map(|(_, inner)| inner.clone()))?;
            let sizes = Some((plan.rows, plan.terms));
            let reduction = Reduction::new(ReductionKind::Sum, axis);
            // Over the forward pass's blocks (transposed for a reduction over i).
            let ranges = plan.ranges.as_ref();
            let mut sums =
                reduce_values(&formula, &bindings, reduction, sizes, ranges, self.options)?;
            if split.iter().any(|(outer, _)| outer.is_some()) {
                // outer_k * sums_k, row by row: a pointwise evaluation over the output rows.
                let out_cat = match axis {
                    Axis::J => VarCat::I,
                    Axis::I => VarCat::J,
                };
                let pos = bindings.len();
                let s = var(out_cat, pos, formula.dim())?;
                let mut col = 0;
                let mut parts = Vec::with_capacity(split.len());
                for (outer, inner) in &split {
                    let d = inner.dim();
                    let part = Expr::new(Op::Extract { start: col, len: d }, vec![s.clone()])?;
                    col += d;
                    parts.push(match outer {
                        Some(o) => bin(BinaryOp::Mul, o, &part)?,
                        None => part,
                    });
                }
                let scaled = concat(parts.into_iter())?;
                let pointwise = match axis {
                    Axis::J => (plan.rows, 1),
                    Axis::I => (1, plan.terms),
                };
                sums = reduce_values(
                    &scaled,
                    &with(&bindings, [binding(pos, out_cat, sums)]),
                    reduction,
                    Some(pointwise),
                    None,
                    self.options,
                )?;
            }
            let mut col = 0;
            for k in members {
                let d = wrt[k].dim;
                let g = sums.narrow(1, col, d)?;
                col += d;
                out[k] = Some(match wrt[k].cat {
                    VarCat::P => g.sum(0)?,
                    VarCat::I | VarCat::J => g,
                });
            }
        }
        Ok(out)
    }

    /// Gradients for Min, Max and KMin: the formula's gradient at the selected pairs.
    fn selected_grads(
        &self,
        views: &[Tensor],
        grad_res: &Tensor,
    ) -> candle_core::Result<Vec<Option<Tensor>>> {
        let plan = self.plan;
        let idx = self.indices.ok_or_else(|| Error::InvalidArgument {
            op: plan.reduction.kind.name(),
            detail: "the forward pass kept no indices for the backward pass".into(),
        })?;
        let e = plan.formula.dim();
        let k = plan.reduction.kind.k().unwrap_or(1);
        let (rows, q) = (plan.rows, k * e);
        let pairs = rows * q;
        let (dtype, device) = (grad_res.dtype(), grad_res.device());
        // Pair p = (i, r, c): row i, rank r, component c; its term is idx[p] (-1 where KMin
        // had fewer than k terms: such pairs get no gradient).
        let idx = idx.flatten_all()?;
        let valid = idx.ge(0i64)?;
        let any_invalid = valid.min(0)?.to_scalar::<u8>()? == 0;
        let idx = if any_invalid {
            valid.where_cond(&idx, &idx.zeros_like()?)?
        } else {
            idx
        };
        // The adjoint of pair (i, r, c) is G[i, r, c] on component c.
        let g = grad_res.reshape((rows * k, e))?;
        let mut eta = if e == 1 {
            g.reshape((pairs, 1))?
        } else {
            let eye = Tensor::eye(e, dtype, device)?.unsqueeze(0)?;
            g.unsqueeze(2)?.broadcast_mul(&eye)?.reshape((pairs, e))?
        };
        if any_invalid {
            let mask = valid.reshape((pairs, 1))?.broadcast_as((pairs, e))?;
            eta = mask.where_cond(&eta, &eta.zeros_like()?)?;
        }
        // Every variable gathered per pair, as an i-variable of the pairs.
        let mut bindings = Vec::with_capacity(views.len() + 1);
        for (pos, (v, t)) in plan.vars.iter().zip(views).enumerate() {
            let (cat, t) = match v.cat {
                VarCat::I => (
                    VarCat::I,
                    t.unsqueeze(1)?
                        .broadcast_as((rows, q, v.dim))?
                        .reshape((pairs, v.dim))?,
                ),
                VarCat::J => (VarCat::I, t.index_select(&idx, 0)?),
                VarCat::P => (VarCat::P, t.clone()),
            };
            bindings.push(binding(pos, cat, t));
        }
        let n = bindings.len();
        bindings.push(binding(n, VarCat::I, eta));
        let f = plan.formula.map_vars(&mut |v| Var {
            cat: if v.cat == VarCat::J { VarCat::I } else { v.cat },
            ..v
        });
        let wrt: Vec<Var> = plan
            .vars
            .iter()
            .enumerate()
            .map(|(pos, v)| Var {
                cat: if v.cat == VarCat::J { VarCat::I } else { v.cat },
                pos,
                dim: v.dim,
            })
            .collect();
        let gs: Vec<Option<Expr>> = grad(&f, &wrt, &var(VarCat::I, n, e)?)?
            .into_iter()
            .zip(self.needs_grad)
            .map(|(g, &needed)| g.filter(|_| needed))
            .collect();
        let members: Vec<usize> = (0..gs.len()).filter(|&m| gs[m].is_some()).collect();
        let mut out: Vec<Option<Tensor>> = vec![None; gs.len()];
        if members.is_empty() {
            return Ok(out);
        }
        let formula = concat(members.iter().map(|&m| gs[m].clone().expect("member")))?;
        // One "term" per pair: a pointwise evaluation.
        let per_pair = reduce_values(
            &formula,
            &bindings,
            Reduction::new(ReductionKind::Sum, Axis::J),
            Some((pairs, 1)),
            None,
            self.options,
        )?;
        let mut col = 0;
        for m in members {
            let v = plan.vars[m];
            let g = per_pair.narrow(1, col, v.dim)?;
            col += v.dim;
            out[m] = Some(match v.cat {
                VarCat::I => g.reshape((rows, q, v.dim))?.sum(1)?,
                VarCat::J => {
                    let g = if any_invalid {
                        let mask = valid.reshape((pairs, 1))?.broadcast_as((pairs, v.dim))?;
                        mask.where_cond(&g, &g.zeros_like()?)?
                    } else {
                        g
                    };
                    Tensor::zeros((plan.terms, v.dim), dtype, device)?.index_add(
                        &idx,
                        &g.contiguous()?,
                        0,
                    )?
                }
                VarCat::P => g.sum(0)?,
            });
        }
        Ok(out)
    }
}

fn binding(id: usize, cat: VarCat, tensor: Tensor) -> Binding {
    let dim = match cat {
        VarCat::P => tensor.elem_count(),
        VarCat::I | VarCat::J => tensor.dims().get(1).copied().unwrap_or(1),
    };
    Binding {
        id,
        cat,
        dim,
        tensor,
    }
}

/// The values of a reduction run by [`reduce_sized`] (every reduction the backward pass runs
/// returns values).
fn reduce_values(
    formula: &Expr,
    bindings: &[Binding],
    reduction: Reduction,
    sizes: Option<(usize, usize)>,
    ranges: Option<&std::sync::Arc<crate::ranges::Ranges>>,
    options: &ReductionOptions,
) -> candle_core::Result<Tensor> {
    reduce_sized(formula, bindings, reduction, sizes, ranges, options)?
        .values
        .ok_or_else(|| {
            Error::InvalidArgument {
                op: reduction.kind.name(),
                detail: format!(
                    "the backward pass's reduction of {} returned no values",
                    formula.brief()
                ),
            }
            .into()
        })
}

/// The parts side by side.
fn concat(parts: impl Iterator<Item = Expr>) -> candle_core::Result<Expr> {
    let mut out: Option<Expr> = None;
    for p in parts {
        out = Some(match out {
            None => p,
            Some(acc) => Expr::new(Op::Concat, vec![acc, p])?,
        });
    }
    out.ok_or_else(|| {
        Error::InvalidArgument {
            op: "Concat",
            detail: "no parts".into(),
        }
        .into()
    })
}

fn with(bindings: &[Binding], extra: impl IntoIterator<Item = Binding>) -> Vec<Binding> {
    let mut all = bindings.to_vec();
    all.extend(extra);
    all
}
