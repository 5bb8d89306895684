//! Training: maximising the marginal likelihood with candle-nn's AdamW, or with L-BFGS where
//! the likelihood is exact.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use candle_core::{DType, Tensor, Var};
use candle_nn::{AdamW, Optimizer as _, ParamsAdamW};

use super::{ExactGp, NllMethod, NllReport};
use crate::error::Error;
use crate::progress::Progress;

/// Steps (and L-BFGS pairs) whose room is reserved ahead; more grow as they come, so that a
/// huge `steps` or `history` allocates nothing up front.
const PREALLOCATED: usize = 1024;

/// The optimiser of [`ExactGp::fit`].
///
/// ```
/// use lazy_kernels::gp::{FitOptions, Optimizer};
/// let o = FitOptions { optimizer: Optimizer::Lbfgs { history: 10 }, ..FitOptions::default() };
/// assert_eq!(FitOptions::default().optimizer, Optimizer::AdamW);
/// # let _ = o;
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Optimizer {
    /// AdamW (candle-nn) at the learning rate [`FitOptions::lr`], one NLL evaluation per
    /// step: robust to the stochastic NLL, whose value and gradient change with the probes at
    /// every step (the default).
    #[default]
    AdamW,
    /// L-BFGS (Liu & Nocedal, "On the limited memory BFGS method for large scale
    /// optimization", Math. Programming 45, 1989) with the last `history` steps, and a
    /// backtracking line search that accepts a step when it decreases the NLL by at least
    /// `1e-4` of the decrease predicted by the gradient (Armijo's condition); the first step
    /// moves no raw value by more than [`FitOptions::lr`]. For the exact NLL only
    /// ([`NllMethod::Exact`]; with the stochastic one `fit` returns an error), which is
    /// deterministic: there it needs several times fewer evaluations than AdamW. Each
    /// [`FitStep`] is one evaluation (line-search trials included); `steps` bounds them.
    Lbfgs {
        /// The correction pairs kept (10 is usual; at least 1).
        history: usize,
    },
}

/// Settings of [`ExactGp::fit`].
///
/// ```
/// use lazy_kernels::gp::FitOptions;
/// let o = FitOptions { steps: 50, lr: 0.1, ..FitOptions::default() };
/// assert_eq!(o.patience, 5);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct FitOptions {
    /// The optimiser (default [`Optimizer::AdamW`]).
    pub optimizer: Optimizer,
    /// The most optimiser steps, NLL evaluations with L-BFGS (default 100).
    pub steps: usize,
    /// AdamW's learning rate on the raw (softplus-inverse) hyperparameters (default 0.05);
    /// the weight decay is 0.
    pub lr: f64,
    /// Early stopping: the fit stops when the mean NLL per point over the last `patience`
    /// steps is no more than `tol` below its mean over the `patience` steps before (default
    /// `1e-4`; 0 never stops early). Means over windows, because each step's NLL is a
    /// stochastic estimate (new probes every step): a tolerance below the estimate's noise
    /// (about `logdet_std_error / N`) may never trigger. With L-BFGS: when `patience`
    /// iterations in a row each lower the NLL per point by no more than `tol`, or when the line
    /// search finds no lower value (converged to the precision of the NLL).
    pub tol: f64,
    /// The window of `tol` (default 5).
    pub patience: usize,
    /// A progress bar on standard error: the step, the NLL and the values (default `true`;
    /// drawn only when standard error is a terminal, and with the crate feature `progress`,
    /// on by default).
    pub progress: bool,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            optimizer: Optimizer::AdamW,
            steps: 100,
            lr: 0.05,
            tol: 1e-4,
            patience: 5,
            progress: true,
        }
    }
}

/// One step of a fit: the NLL at the hyperparameters before the step, and those values.
#[derive(Clone, Debug, PartialEq)]
pub struct FitStep {
    /// The step's index (from 0).
    pub step: usize,
    /// What the NLL evaluation found.
    pub report: NllReport,
    /// Each hyperparameter's name and values, then `("noise", [sigma^2])` and
    /// `("mean", [m])`.
    pub values: Vec<(String, Vec<f64>)>,
    /// Seconds from the start of the fit to the end of this step's evaluation.
    pub seconds: f64,
}

/// What [`ExactGp::fit`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct FitReport {
    /// Every step, in order.
    pub trajectory: Vec<FitStep>,
    /// The step whose hyperparameters the model holds after the fit (`None` when no step
    /// ran): `fit` returns the best values it evaluated, not the last, because a step can
    /// overshoot. On the exact path, the (last) step of the lowest NLL. On the stochastic
    /// path, where each NLL is an estimate, windows of [`FitOptions::patience`] consecutive
    /// steps (those of the stopping rule) are compared by their mean NLL: the last step of the
    /// last window whose mean is within one standard error of the lowest mean (so that the
    /// probes' luck does not choose). Its values are `trajectory[best_step].values`.
    pub best_step: Option<usize>,
    /// Whether the tolerance stopped the fit before `steps`.
    pub stopped_early: bool,
    /// Wall time.
    pub seconds: f64,
}

impl ExactGp {
    /// Each hyperparameter's name and current values, then the noise variance and the mean.
    pub fn values(&self) -> candle_core::Result<Vec<(String, Vec<f64>)>> {
        let mut v: Vec<(String, Vec<f64>)> = self
            .hypers
            .iter()
            .map(|h| Ok((h.name().to_string(), h.values()?)))
            .collect::<candle_core::Result<_>>()?;
        v.push(("noise".into(), self.noise.values()?));
        let m = self
            .mean
            .as_tensor()
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?;
        v.push(("mean".into(), m));
        Ok(v)
    }

    /// Maximises the marginal likelihood on every `Var` of the model ([`ExactGp::vars`]) by
    /// `opts.optimizer`. With AdamW, step `s` evaluates the NLL (with the probes of seed
    /// `settings.seed + s` on the stochastic path) and its gradient, then updates the
    /// hyperparameters; L-BFGS evaluates the NLL once per step too (see [`Optimizer`]).
    ///
    /// When the steps run out or the tolerance stops the fit, the model is left with the
    /// best hyperparameters evaluated, which need not be the last ones (a step can
    /// overshoot): [`FitReport::best_step`] says which step they come from and how "best" is
    /// decided on the stochastic path.
    pub fn fit(&mut self, opts: &FitOptions) -> candle_core::Result<FitReport> {
        if !(opts.lr.is_finite() && opts.lr > 0.0) {
            return Err(Error::InvalidArgument {
                op: "ExactGp::fit",
                detail: format!("the learning rate must be finite and > 0, got {}", opts.lr),
            }
            .into());
        }
        if let Optimizer::Lbfgs { history } = opts.optimizer {
            return self.fit_lbfgs(opts, history);
        }
        let start = Instant::now();
        let mut adam = AdamW::new(
            self.vars(),
            ParamsAdamW {
                lr: opts.lr,
                weight_decay: 0.0,
                ..ParamsAdamW::default()
            },
        )?;
        let n = self.x.dim(0)? as f64;
        let mut bar = Progress::new("fit", opts.steps, opts.progress.then_some(Duration::ZERO));
        let vars = self.vars();
        let mut trajectory: Vec<FitStep> = Vec::with_capacity(opts.steps.min(PREALLOCATED));
        let mut raw: Vec<Vec<f64>> = Vec::with_capacity(opts.steps.min(PREALLOCATED));
        let mut stopped_early = false;
        let w = opts.patience.max(1);
        for step in 0..opts.steps {
            let values = self.values()?;
            raw.push(flatten(&vars)?);
            let (loss, report) = self.nll_seeded(self.settings.seed.wrapping_add(step as u64))?;
            if !report.nll.is_finite() {
                return Err(Error::InvalidArgument {
                    op: "ExactGp::fit",
                    detail: format!("the NLL is {} at step {step} ({values:?})", report.nll),
                }
                .into());
            }
            bar.update(step + 1, || line(&report, &values));
            trajectory.push(FitStep {
                step,
                report,
                values,
                seconds: start.elapsed().as_secs_f64(),
            });
            if opts.tol > 0.0 && trajectory.len() >= w.saturating_mul(2) {
                let mean = |steps: &[FitStep]| {
                    steps.iter().map(|s| s.report.nll).sum::<f64>() / (steps.len() as f64 * n)
                };
                let t = trajectory.len();
                if mean(&trajectory[t - 2 * w..t - w]) - mean(&trajectory[t - w..]) < opts.tol {
                    stopped_early = true;
                    break;
                }
            }
            let grads = loss.backward()?;
            adam.step(&grads)?;
        }
        bar.finish();
        let window = match self.nll_method()? {
            NllMethod::Exact => 1,
            _ => w,
        };
        let best_step = restore_best(&vars, &trajectory, &raw, window)?;
        Ok(FitReport {
            trajectory,
            best_step,
            stopped_early,
            seconds: start.elapsed().as_secs_f64(),
        })
    }
}

/// The step [`FitReport::best_step`] names, among the steps of `trajectory`, with windows of
/// `window` consecutive steps: the lowest mean NLL is the best window's; the chosen window is
/// the last one whose mean is within one standard error (of the difference of the two means)
/// of it, and the step its last one. With an exact NLL (standard errors 0) and windows of
/// one step, the last step of the lowest NLL. `None` for an empty trajectory.
///
/// Why the last window within the noise, and not the lowest: each stochastic NLL is an
/// estimate, so among many windows near the optimum the lowest mean is mostly the luckiest
/// probes, not the best values; the later windows have had more steps. A rise beyond the
/// noise (an overshoot) still moves the choice back.
fn best_step(trajectory: &[FitStep], window: usize) -> Option<usize> {
    if trajectory.is_empty() {
        return None;
    }
    let w = window.clamp(1, trajectory.len());
    // Each window's mean NLL and the variance of that mean (the NLL's standard error is half
    // the log-determinant's; the steps use independent probes).
    let windows: Vec<(f64, f64)> = trajectory
        .windows(w)
        .map(|steps| {
            let mean = steps.iter().map(|s| s.report.nll).sum::<f64>() / w as f64;
            let var = steps
                .iter()
                .map(|s| (0.5 * s.report.logdet_std_error).powi(2))
                .sum::<f64>()
                / (w * w) as f64;
            (mean, var)
        })
        .collect();
    // `fit` stops on a NaN NLL, so every mean is a number; `total_cmp` keeps this total anyway.
    let (best_mean, best_var) = *windows.iter().min_by(|a, b| a.0.total_cmp(&b.0))?;
    let last = windows
        .iter()
        .rposition(|&(mean, var)| mean <= best_mean + (var + best_var).sqrt())?;
    Some(last + w - 1)
}

/// Sets `vars` to the raw values of the [`best_step`] of `trajectory` (`raw[k]` holds step
/// `k`'s, in the order of [`flatten`]) and returns that step.
fn restore_best(
    vars: &[Var],
    trajectory: &[FitStep],
    raw: &[Vec<f64>],
    window: usize,
) -> candle_core::Result<Option<usize>> {
    let best = best_step(trajectory, window);
    if let Some(k) = best {
        unflatten(vars, &raw[k])?;
    }
    Ok(best)
}

/// The raw values of `vars`, flattened in order, as `f64`.
fn flatten(vars: &[Var]) -> candle_core::Result<Vec<f64>> {
    let mut out = Vec::new();
    for v in vars {
        out.extend(
            v.as_tensor()
                .to_dtype(DType::F64)?
                .flatten_all()?
                .to_vec1::<f64>()?,
        );
    }
    Ok(out)
}

/// Sets `vars` to the flat values `x` (in the order of [`flatten`]).
fn unflatten(vars: &[Var], x: &[f64]) -> candle_core::Result<()> {
    let mut at = 0;
    for v in vars {
        let t = v.as_tensor();
        let len = t.elem_count();
        let values = Tensor::from_slice(&x[at..at + len], t.shape(), t.device())?;
        v.set(&values.to_dtype(t.dtype())?)?;
        at += len;
    }
    Ok(())
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

impl ExactGp {
    /// The NLL and its gradient with respect to `vars` (flat, zeros where a `Var` gets none),
    /// at the values the `Var`s hold.
    fn value_and_gradient(
        &self,
        vars: &[Var],
        seed: u64,
    ) -> candle_core::Result<(NllReport, Vec<f64>)> {
        let (loss, report) = self.nll_seeded(seed)?;
        let grads = loss.backward()?;
        let mut g = Vec::new();
        for v in vars {
            let t = v.as_tensor();
            match grads.get(t) {
                Some(d) => g.extend(d.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?),
                None => g.extend(std::iter::repeat_n(0.0, t.elem_count())),
            }
        }
        Ok((report, g))
    }

    /// [`ExactGp::fit`] by L-BFGS (see [`Optimizer::Lbfgs`]).
    fn fit_lbfgs(&mut self, opts: &FitOptions, history: usize) -> candle_core::Result<FitReport> {
        const OP: &str = "ExactGp::fit";
        if history == 0 {
            return Err(Error::InvalidArgument {
                op: OP,
                detail: "L-BFGS needs a history of at least 1 step".into(),
            }
            .into());
        }
        if self.nll_method()? != NllMethod::Exact {
            return Err(Error::InvalidArgument {
                op: OP,
                detail: "L-BFGS needs the exact NLL (GpSettings::nll_method = NllMethod::Exact, \
                         or Auto below NllMethod::exact_limit): the stochastic estimate changes \
                         with its probes, which breaks the line search; use Optimizer::AdamW"
                    .into(),
            }
            .into());
        }
        let start = Instant::now();
        let n = self.x.dim(0)? as f64;
        let vars = self.vars();
        let mut bar = Progress::new("fit", opts.steps, opts.progress.then_some(Duration::ZERO));
        let mut trajectory: Vec<FitStep> = Vec::with_capacity(opts.steps.min(PREALLOCATED));
        let mut raw: Vec<Vec<f64>> = Vec::with_capacity(opts.steps.min(PREALLOCATED));
        let mut stopped_early = false;
        let seed = self.settings.seed;
        // One evaluation at the values the `Var`s hold, recorded as a step.
        let evaluate = |gp: &ExactGp,
                        trajectory: &mut Vec<FitStep>,
                        raw: &mut Vec<Vec<f64>>,
                        bar: &mut Progress|
         -> candle_core::Result<(f64, Vec<f64>)> {
            let values = gp.values()?;
            raw.push(flatten(&vars)?);
            let (report, g) = gp.value_and_gradient(&vars, seed)?;
            let step = trajectory.len();
            bar.update(step + 1, || line(&report, &values));
            let f = report.nll;
            trajectory.push(FitStep {
                step,
                report,
                values,
                seconds: start.elapsed().as_secs_f64(),
            });
            if !f.is_finite() || g.iter().any(|v| !v.is_finite()) {
                return Ok((f64::INFINITY, g));
            }
            Ok((f, g))
        };
        let mut x = flatten(&vars)?;
        if opts.steps == 0 {
            return Ok(FitReport {
                trajectory,
                best_step: None,
                stopped_early,
                seconds: start.elapsed().as_secs_f64(),
            });
        }
        let (mut f, mut g) = evaluate(self, &mut trajectory, &mut raw, &mut bar)?;
        if !f.is_finite() {
            return Err(Error::InvalidArgument {
                op: OP,
                detail: format!("the NLL or its gradient is not finite at the start ({f})"),
            }
            .into());
        }
        let mut pairs: VecDeque<(Vec<f64>, Vec<f64>, f64)> =
            VecDeque::with_capacity(history.min(PREALLOCATED));
        let mut small = 0;
        'outer: while trajectory.len() < opts.steps {
            // The two-loop recursion: d = -H g.
            let mut q = g.clone();
            let mut alphas = Vec::with_capacity(pairs.len());
            for (s, y, rho) in pairs.iter().rev() {
                let a = rho * dot(s, &q);
                q.iter_mut().zip(y).for_each(|(qi, yi)| *qi -= a * yi);
                alphas.push(a);
            }
            let gamma = match pairs.back() {
                Some((s, y, _)) => dot(s, y) / dot(y, y),
                None => {
                    let gmax = g.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                    opts.lr / gmax.max(f64::MIN_POSITIVE)
                }
            };
            q.iter_mut().for_each(|v| *v *= gamma);
            for ((s, y, rho), a) in pairs.iter().zip(alphas.iter().rev()) {
                let b = rho * dot(y, &q);
                q.iter_mut().zip(s).for_each(|(qi, si)| *qi += (a - b) * si);
            }
            let mut d: Vec<f64> = q.iter().map(|v| -v).collect();
            let mut slope = dot(&g, &d);
            if slope >= 0.0 {
                // Not a descent direction (curvature lost): restart from the gradient.
                pairs.clear();
                let gmax = g.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                d = g
                    .iter()
                    .map(|v| -v * opts.lr / gmax.max(f64::MIN_POSITIVE))
                    .collect();
                slope = dot(&g, &d);
                if slope >= 0.0 {
                    break; // a zero gradient: converged
                }
            }
            // Backtracking line search (Armijo).
            let mut t = 1.0;
            loop {
                if trajectory.len() >= opts.steps {
                    break 'outer;
                }
                let trial: Vec<f64> = x.iter().zip(&d).map(|(xi, di)| xi + t * di).collect();
                unflatten(&vars, &trial)?;
                let (ft, gt) = evaluate(self, &mut trajectory, &mut raw, &mut bar)?;
                if ft <= f + 1e-4 * t * slope {
                    let s: Vec<f64> = trial.iter().zip(&x).map(|(a, b)| a - b).collect();
                    let y: Vec<f64> = gt.iter().zip(&g).map(|(a, b)| a - b).collect();
                    let sy = dot(&s, &y);
                    if sy > 1e-12 * dot(&s, &s).sqrt() * dot(&y, &y).sqrt() {
                        if pairs.len() == history {
                            pairs.pop_front();
                        }
                        pairs.push_back((s, y, 1.0 / sy));
                    }
                    let decrease = (f - ft) / n;
                    x = trial;
                    (f, g) = (ft, gt);
                    small = if opts.tol > 0.0 && decrease <= opts.tol {
                        small + 1
                    } else {
                        0
                    };
                    if opts.tol > 0.0 && small >= opts.patience.max(1) {
                        stopped_early = true;
                        break 'outer;
                    }
                    break;
                }
                t *= 0.5;
                if t < 1e-10 {
                    // No lower value along the direction: converged to the NLL's precision.
                    stopped_early = true;
                    break 'outer;
                }
            }
        }
        bar.finish();
        // The NLL is exact: the lowest value evaluated (a line-search trial rejected for too
        // small a decrease can still be the lowest).
        let best_step = restore_best(&vars, &trajectory, &raw, 1)?;
        Ok(FitReport {
            trajectory,
            best_step,
            stopped_early,
            seconds: start.elapsed().as_secs_f64(),
        })
    }
}

/// The progress bar's message: the NLL and the values.
fn line(r: &NllReport, values: &[(String, Vec<f64>)]) -> String {
    let vals: Vec<String> = values
        .iter()
        .map(|(name, v)| {
            let v: Vec<String> = v.iter().map(|x| format!("{x:.3}")).collect();
            format!("{name} {}", v.join(","))
        })
        .collect();
    format!("nll {:.4e}  {}", r.nll, vals.join("  "))
}
