//! Batched preconditioned conjugate gradients with one step size and one convergence test per
//! column of the right-hand side.
//!
//! The iterates live in `f64` tensors on the operator's device whatever the operator's dtype
//! (an `f32` kernel product is rounded once per product, not accumulated into the iterates);
//! the per-column scalars (`<r, z>`, `<p, A p>`, residual norms) come to the host, a few numbers
//! per iteration. Converged columns stop moving and leave the products: the operator is applied
//! to the active columns only.

use candle_core::{DType, Tensor};

use super::host_read;
use crate::operator::{column_bucket, column_buckets};
use crate::progress::Progress;

/// A symmetric positive definite operator on `(N, E)` `f64` tensors.
pub(crate) trait SpdOperator {
    /// `A v`, as fast as the operator's dtype allows (the iterations).
    fn apply(&self, v: &Tensor) -> candle_core::Result<Tensor>;
    /// `A v` in `f64` (the residual checks): the same as `apply` for an `f64` operator.
    fn apply_exact(&self, v: &Tensor) -> candle_core::Result<Tensor> {
        self.apply(v)
    }
    /// `v` rounded to the dtype the solution is returned in.
    fn round(&self, v: &Tensor) -> candle_core::Result<Tensor> {
        Ok(v.clone())
    }
    /// Starts compiling, where products are compiled (a GPU), the products of `v`s of each
    /// number of columns in `columns`, for `apply` and `apply_exact` (nothing by default).
    fn prepare(&self, _columns: &[usize]) -> candle_core::Result<()> {
        Ok(())
    }
}

/// A preconditioner: `M^-1 v` for an SPD `M` close to `A`.
pub(crate) trait Preconditioner {
    /// `M^-1 v`.
    fn apply(&self, v: &Tensor) -> candle_core::Result<Tensor>;
}

/// Why a column stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Its true relative residual reached the tolerance.
    Converged,
    /// The iteration cap came first.
    MaxIters,
    /// Its true residual stopped decreasing between two checks: the rounding floor of the
    /// operator's dtype is above the tolerance.
    Stalled,
    /// A non-positive curvature `<p, A p>`: the operator is not positive definite (a kernel
    /// that is not, or rounding at a very small ridge).
    Breakdown,
}

/// What CG did, per column.
#[derive(Clone, Debug)]
pub(crate) struct CgOutcome {
    pub iterations: Vec<usize>,
    pub residuals: Vec<f64>,
    pub converged: Vec<bool>,
    pub stops: Vec<Stop>,
    /// Operator products, counted in columns-blocks (one per call to `A`).
    pub products: usize,
    /// Per column, the CG coefficients of its first uninterrupted Krylov sequence: the step
    /// sizes `alpha_k` and the ratios `beta_k` (the Lanczos tridiagonal of the preconditioned
    /// operator, see [`super::lanczos`]). A residual replacement ends the sequence.
    pub lanczos: Vec<Coefficients>,
}

/// The coefficients of one column's conjugate-gradient run.
#[derive(Clone, Debug, Default)]
pub(crate) struct Coefficients {
    /// Step sizes `alpha_0, alpha_1, ...`.
    pub steps: Vec<f64>,
    /// `beta_k = <r_k+1, z_k+1> / <r_k, z_k>` after each step.
    pub ratios: Vec<f64>,
    /// Whether the sequence is still being recorded.
    open: bool,
}

/// Stopping rules.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CgSettings {
    pub tol: f64,
    pub max_iters: usize,
    /// Recompute `b - A x` when a column's recurrence says it has converged, and go on from
    /// the true residual if it has not (one product more, residuals that are never optimistic).
    pub check_residual: bool,
    /// Columns that estimate a log-determinant (see [`Quadrature`]), or `None`.
    pub quadrature: Option<Quadrature>,
    /// When to show a progress bar (see [`crate::SolveOptions::progress`]).
    pub progress: Option<std::time::Duration>,
}

/// The stop rule of the probe columns of a log-determinant estimate: a probe column has
/// converged when its residual has reached the tolerance *and* its Lanczos quadrature
/// `|w|^2 e1^T log(T_k) e1` (see [`super::lanczos`]) has changed by at most `tol` over each of
/// the last two steps, or its Lanczos sequence has `max_steps` steps or has ended.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Quadrature {
    /// The first probe column (the columns before it are solved to the tolerance alone).
    pub first: usize,
    /// The largest change of a probe's term, in nats, over each of the last two steps.
    pub tol: f64,
    /// The largest tridiagonal used.
    pub max_steps: usize,
}

/// Iterations between two looks at the true residual of columns whose recurrence has not
/// reached its threshold (one product each: 1% of the work).
const MONITOR_EVERY: usize = 100;

/// Looks in a row without a 10% improvement of the best true residual after which a column
/// is stalled (true residuals of low-precision iterations fluctuate: one bad look is not
/// enough).
const IDLE_LOOKS: usize = 3;

/// `<a_c, b_c>` for every column `c`, as a `(1, E)` tensor on the device.
fn col_dots_t(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    (a * b)?.sum_keepdim(0)
}

/// A `(1, E)` row of per-column values, on the host.
fn read_row(t: &Tensor) -> candle_core::Result<Vec<f64>> {
    host_read(t.flatten_all()?.to_vec1::<f64>())
}

/// `<a_c, b_c>` for every column `c`, on the host.
fn col_dots(a: &Tensor, b: &Tensor) -> candle_core::Result<Vec<f64>> {
    read_row(&col_dots_t(a, b)?)
}

/// A `(1, E)` row of per-column coefficients.
fn row(v: &[f64], like: &Tensor) -> candle_core::Result<Tensor> {
    Tensor::from_slice(v, (1, v.len()), like.device())
}

/// `f(v)` on the columns flagged in `active` (the others are zero in the result).
///
/// `f` runs on [`column_bucket`] columns: the active ones, and inactive ones to fill up (their
/// results are dropped). The number of active columns shrinks unpredictably as columns
/// converge, and each number of columns is a distinct kernel (an NVRTC compile on a GPU);
/// buckets keep them to a few sizes, at most twice the work.
fn apply_active(
    f: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
    v: &Tensor,
    active: &[bool],
    products: &mut usize,
) -> candle_core::Result<Tensor> {
    *products += 1;
    let e = active.len();
    let on: Vec<u32> = (0..e as u32).filter(|&c| active[c as usize]).collect();
    if on.len() == e {
        return f(v);
    }
    let width = column_bucket(on.len(), e);
    let ids = Tensor::new(on.as_slice(), v.device())?;
    let av = if width == e {
        f(v)?.index_select(&ids, 1)?
    } else {
        let fill = (0..e as u32).filter(|&c| !active[c as usize]);
        let padded: Vec<u32> = on.iter().cloned().chain(fill).take(width).collect();
        let padded = Tensor::new(padded.as_slice(), v.device())?;
        f(&v.index_select(&padded, 1)?)?
            .narrow(1, 0, on.len())?
            .contiguous()?
    };
    v.zeros_like()?.index_add(&ids, &av, 1)
}

/// `old` with the columns flagged in `mask` taken from `new`.
fn merge_columns(old: &Tensor, new: &Tensor, mask: &[bool]) -> candle_core::Result<Tensor> {
    let keep: Vec<f64> = mask.iter().map(|&f| f64::from(!f)).collect();
    let take: Vec<f64> = mask.iter().map(|&f| f64::from(f)).collect();
    old.broadcast_mul(&row(&keep, old)?)? + new.broadcast_mul(&row(&take, old)?)?
}

/// Solves `A x = b` (`b`: `(N, E)` `f64`) from `x0`, column by column in lockstep.
pub(crate) fn cg(
    a: &dyn SpdOperator,
    m: Option<&dyn Preconditioner>,
    b: &Tensor,
    x0: Option<&Tensor>,
    s: CgSettings,
) -> candle_core::Result<(Tensor, CgOutcome)> {
    debug_assert_eq!(b.dtype(), DType::F64);
    let e = b.dim(1)?;
    // The products this run may take, compiled at once rather than one after the other.
    a.prepare(&column_buckets(e))?;
    let precondition = |r: &Tensor| match m {
        Some(m) => m.apply(r),
        None => Ok(r.clone()),
    };
    let bnorm: Vec<f64> = col_dots(b, b)?.into_iter().map(f64::sqrt).collect();
    let mut products = 0;
    let mut x = match x0 {
        Some(x0) => x0.clone(),
        None => b.zeros_like()?,
    };
    let fast = |v: &Tensor| a.apply(v);
    let exact_op = |v: &Tensor| a.apply_exact(v);
    let mut r = match x0 {
        Some(_) => (b - apply_active(&exact_op, &x, &vec![true; e], &mut products)?)?,
        None => b.clone(),
    };
    let rel = |r: &Tensor| -> candle_core::Result<Vec<f64>> {
        Ok(col_dots(r, r)?
            .into_iter()
            .zip(&bnorm)
            .map(|(rr, bn)| if *bn > 0.0 { rr.sqrt() / bn } else { 0.0 })
            .collect())
    };
    let mut res = rel(&r)?;
    // A zero right-hand side has the solution 0, whatever the start.
    if bnorm.contains(&0.0) {
        let keep: Vec<f64> = bnorm.iter().map(|&n| f64::from(n > 0.0)).collect();
        let keep = row(&keep, b)?;
        x = x.broadcast_mul(&keep)?;
        r = r.broadcast_mul(&keep)?;
    }
    let mut converged: Vec<bool> = res.iter().map(|&v| v <= s.tol).collect();
    let mut iterations = vec![0usize; e];
    let mut z = precondition(&r)?;
    let mut p = z.clone();
    // `<r, z>` per column lives on the device; the host sees it once per iteration, with the
    // other per-column scalars, in one read.
    let mut rz_t = col_dots_t(&r, &z)?;
    let mut rz = read_row(&rz_t)?;
    let mut broken = vec![false; e];
    let mut stops = vec![Stop::MaxIters; e];
    // The true residual at each column's last check: a restart that does not reduce it by a
    // good factor means the residual has reached the floor of the operator's rounding, and
    // the column stops.
    let mut last_true = vec![f64::INFINITY; e];
    // The best true residual seen at the periodic looks (see `MONITOR_EVERY`), and the number
    // of looks since it last improved by 10%.
    let mut best_seen = vec![f64::INFINITY; e];
    let mut idle_looks = vec![0usize; e];
    // The threshold of the recurrence: `tol` at first, lowered after a check finds the true
    // residual above `tol` by as much as it was off (so the next check is likely to pass).
    let mut target = vec![s.tol; e];
    // Whether `res[c]` was computed from `b - A x` (not from the recurrence).
    let mut exact = vec![true; e];
    let mut lanczos: Vec<Coefficients> = (0..e)
        .map(|c| Coefficients {
            open: !converged[c],
            ..Default::default()
        })
        .collect();
    // The probe columns' quadrature: `|w|^2 = <r0, M^-1 r0>`, the last value, the steps in a
    // row that changed it by at most the tolerance, and whether it has converged.
    let w2 = rz.clone();
    let mut quad_last = vec![f64::NAN; e];
    let mut quad_calm = vec![0usize; e];
    let mut quad_done: Vec<bool> = (0..e)
        .map(|c| s.quadrature.is_none_or(|q| c < q.first))
        .collect();
    // The active columns as a `(1, E)` u8 mask on the device, rebuilt when they change.
    let mut mask_of: Option<(Vec<bool>, Tensor)> = None;
    let mut it = 0;
    // The bar counts the digits of residual reduction, out of the `log10(1 / tol)` asked for.
    let digits = |res: &[f64], done: &[bool]| {
        let worst = res
            .iter()
            .zip(done)
            .filter(|&(_, &d)| !d)
            .map(|(&r, _)| r)
            .fold(0.0f64, f64::max);
        (worst, (-worst.log10()).clamp(0.0, 100.0) as usize)
    };
    let goal = (-s.tol.log10()).clamp(1.0, 100.0).ceil() as usize;
    let mut bar = Progress::new("CG", goal, s.progress);
    while it < s.max_iters {
        let active: Vec<bool> = (0..e).map(|c| !converged[c] && !broken[c]).collect();
        if !active.contains(&true) {
            break;
        }
        it += 1;
        let active_t = match &mask_of {
            Some((m, t)) if *m == active => t.clone(),
            _ => {
                let v: Vec<u8> = active.iter().map(|&a| u8::from(a)).collect();
                let t = Tensor::from_vec(v, (1, e), b.device())?;
                mask_of = Some((active.clone(), t.clone()));
                t
            }
        };
        // One iteration on the device, its scalars read back once at the end. A column that
        // is inactive, or whose curvature `<p, A p>` is not positive and finite (the operator
        // is not positive definite there), takes no step.
        let ap = apply_active(&fast, &p, &active, &mut products)?;
        let pap_t = col_dots_t(&p, &ap)?;
        let good = pap_t
            .gt(0.0)?
            .mul(&pap_t.lt(f64::INFINITY)?)?
            .mul(&rz_t.abs()?.lt(f64::INFINITY)?)?
            .mul(&active_t)?;
        let zeros = pap_t.zeros_like()?;
        let step_t = good.where_cond(&(&rz_t / &pap_t)?, &zeros)?;
        x = (x + p.broadcast_mul(&step_t)?)?;
        r = (r - ap.broadcast_mul(&step_t)?)?;
        z = precondition(&r)?;
        let rz_new_t = col_dots_t(&r, &z)?;
        let rr_t = col_dots_t(&r, &r)?;
        let moving = good.mul(&rz_t.ne(0.0)?)?;
        let beta_t = moving.where_cond(&(&rz_new_t / &rz_t)?, &zeros)?;
        let p_next = (&z + p.broadcast_mul(&beta_t)?)?;
        let read = Tensor::cat(&[&pap_t, &rz_new_t, &rr_t, &step_t, &beta_t], 0)?;
        let read = host_read(read.to_vec2::<f64>())?;
        let (pap, rz_new, rr, step, beta) = (&read[0], &read[1], &read[2], &read[3], &read[4]);
        for c in 0..e {
            if !active[c] {
                continue;
            }
            if !(pap[c] > 0.0 && pap[c].is_finite() && rz[c].is_finite()) {
                broken[c] = true;
                stops[c] = Stop::Breakdown;
                continue;
            }
            iterations[c] += 1;
            if lanczos[c].open {
                lanczos[c].steps.push(step[c]);
            }
            res[c] = if bnorm[c] > 0.0 {
                rr[c].sqrt() / bnorm[c]
            } else {
                0.0
            };
            exact[c] = false;
        }
        let (worst, reached) = digits(&res, &converged);
        bar.update(reached.min(goal), || {
            format!(
                "iteration {it}, largest residual {worst:.1e} (tol {:.0e})",
                s.tol
            )
        });
        if let Some(q) = s.quadrature {
            for c in q.first..e {
                if quad_done[c] || !active[c] || broken[c] {
                    continue;
                }
                let l = &lanczos[c];
                let k = l.steps.len();
                if !l.open || k >= q.max_steps {
                    quad_done[c] = true;
                    continue;
                }
                // The tridiagonal of k steps needs k - 1 ratios: they are all there.
                let v = match super::lanczos::log_quadrature(l, k) {
                    Some(v) => w2[c] * v,
                    None => {
                        quad_done[c] = true; // not positive definite: reported by the caller
                        continue;
                    }
                };
                if (v - quad_last[c]).abs() <= q.tol {
                    quad_calm[c] += 1;
                } else {
                    quad_calm[c] = 0;
                }
                quad_last[c] = v;
                quad_done[c] = quad_calm[c] >= 2;
            }
        }
        let newly: Vec<usize> = (0..e)
            .filter(|&c| active[c] && !broken[c] && quad_done[c] && res[c] <= target[c])
            .collect();
        let mut restart = vec![false; e];
        let mut replaced = false;
        if !newly.is_empty() && s.check_residual {
            // Residual replacement: the recurrence may have drifted from b - A x. The check
            // is on the solution as it will be returned (rounded to its dtype), with an `f64`
            // product, so that low-precision products are refined like iterative refinement.
            let mask: Vec<bool> = (0..e).map(|c| newly.contains(&c)).collect();
            x = merge_columns(&x, &a.round(&x)?, &mask)?;
            let true_r = (b - apply_active(&exact_op, &x, &mask, &mut products)?)?;
            let true_res = rel(&true_r)?;
            r = merge_columns(&r, &true_r, &mask)?;
            replaced = true;
            for &c in &newly {
                res[c] = true_res[c];
                exact[c] = true;
                if true_res[c] <= s.tol {
                    converged[c] = true;
                } else if true_res[c] > 0.7 * last_true[c] {
                    broken[c] = true;
                    stops[c] = Stop::Stalled;
                } else {
                    last_true[c] = true_res[c];
                    target[c] *= 0.5 * s.tol / true_res[c];
                    restart[c] = true;
                }
            }
        } else {
            for &c in &newly {
                converged[c] = true;
            }
        }
        if s.check_residual && it % MONITOR_EVERY == 0 {
            // A recurrence that stagnates above its threshold (low-precision products) never
            // triggers the checks above: look at the true residual of the answer as returned
            // (which is `x` rounded to its dtype) now and then, without disturbing the
            // iteration, and stop a column that has stopped improving.
            let due: Vec<bool> = (0..e)
                .map(|c| {
                    active[c] && !broken[c] && !converged[c] && quad_done[c] && !newly.contains(&c)
                })
                .collect();
            if due.contains(&true) {
                let true_r = (b - apply_active(&exact_op, &a.round(&x)?, &due, &mut products)?)?;
                let true_res = rel(&true_r)?;
                for c in (0..e).filter(|&c| due[c]) {
                    if true_res[c] <= s.tol {
                        converged[c] = true;
                    } else if true_res[c] <= 0.9 * best_seen[c] {
                        best_seen[c] = true_res[c];
                        idle_looks[c] = 0;
                        continue;
                    } else if idle_looks[c] + 1 < IDLE_LOOKS {
                        idle_looks[c] += 1;
                        continue;
                    } else {
                        broken[c] = true;
                        stops[c] = Stop::Stalled;
                    }
                    res[c] = true_res[c];
                    exact[c] = true;
                }
            }
        }
        if !s.check_residual && it % MONITOR_EVERY == 0 {
            // Without the checks, the recurrence's own residual is all there is: a column whose
            // recurrence stops improving (a numerically singular system below its tolerance)
            // stops by the same rule, rather than running to `max_iters`.
            for c in 0..e {
                if !active[c] || broken[c] || converged[c] || !quad_done[c] {
                    continue;
                }
                if res[c] <= 0.9 * best_seen[c] {
                    best_seen[c] = res[c];
                    idle_looks[c] = 0;
                } else if idle_looks[c] + 1 < IDLE_LOOKS {
                    idle_looks[c] += 1;
                } else {
                    broken[c] = true;
                    stops[c] = Stop::Stalled;
                }
            }
        }
        for c in 0..e {
            let l = &mut lanczos[c];
            if restart[c] || broken[c] {
                l.open = false;
            }
            if l.open && active[c] {
                l.ratios.push(beta[c]);
            }
        }
        if replaced {
            // The residuals of the checked columns were replaced: precondition again, and
            // restart the columns that go on from their true residual (`p = z`).
            z = precondition(&r)?;
            rz_t = col_dots_t(&r, &z)?;
            rz = read_row(&rz_t)?;
            p = merge_columns(&p_next, &z, &restart)?;
        } else {
            rz_t = rz_new_t;
            rz = rz_new.clone();
            p = p_next;
        }
    }
    if s.check_residual && it > 0 {
        // Columns stopped by the cap or a breakdown: report their true residual too.
        let unsure: Vec<bool> = (0..e)
            .map(|c| !converged[c] && bnorm[c] > 0.0 && !exact[c])
            .collect();
        if unsure.contains(&true) {
            x = merge_columns(&x, &a.round(&x)?, &unsure)?;
            let true_r = (b - apply_active(&exact_op, &x, &unsure, &mut products)?)?;
            let true_res = rel(&true_r)?;
            for c in 0..e {
                if unsure[c] {
                    res[c] = true_res[c];
                    converged[c] = true_res[c] <= s.tol;
                }
            }
        }
    }
    bar.finish();
    for c in 0..e {
        if converged[c] {
            stops[c] = Stop::Converged;
        }
    }
    Ok((
        x,
        CgOutcome {
            iterations,
            residuals: res,
            converged,
            stops,
            products,
            lanczos,
        },
    ))
}
