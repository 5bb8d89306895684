//! Training: maximising the marginal likelihood with a candle-nn optimiser.

use std::io::{IsTerminal, Write};
use std::time::Instant;

use candle_core::DType;
use candle_nn::{AdamW, Optimizer, ParamsAdamW};

use super::{ExactGp, NllReport};
use crate::error::Error;

/// Settings of [`ExactGp::fit`].
///
/// ```
/// use lazy_kernels::gp::FitOptions;
/// let o = FitOptions { steps: 50, lr: 0.1, ..FitOptions::default() };
/// assert_eq!(o.patience, 5);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct FitOptions {
    /// The most optimiser steps (default 100).
    pub steps: usize,
    /// AdamW's learning rate on the raw (softplus-inverse) hyperparameters (default 0.05);
    /// the weight decay is 0.
    pub lr: f64,
    /// Early stopping: the fit stops when the mean NLL per point over the last `patience`
    /// steps is no more than `tol` below its mean over the `patience` steps before (default
    /// `1e-4`; 0 never stops early). Means over windows, because each step's NLL is a
    /// stochastic estimate (new probes every step): a tolerance below the estimate's noise
    /// (about `logdet_std_error / N`) may never trigger.
    pub tol: f64,
    /// The window of `tol` (default 5).
    pub patience: usize,
    /// A progress bar on standard error (default `true`; drawn only when standard error is
    /// a terminal).
    pub progress: bool,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
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
}

/// What [`ExactGp::fit`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct FitReport {
    /// Every step, in order.
    pub trajectory: Vec<FitStep>,
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

    /// Maximises the marginal likelihood by AdamW on every `Var` of the model
    /// ([`ExactGp::vars`]). Step `s` evaluates the NLL with the probes of seed
    /// `settings.seed + s` and its gradient, then updates the hyperparameters.
    pub fn fit(&mut self, opts: &FitOptions) -> candle_core::Result<FitReport> {
        if !(opts.lr.is_finite() && opts.lr > 0.0) {
            return Err(Error::InvalidArgument {
                op: "ExactGp::fit",
                detail: format!("the learning rate must be finite and > 0, got {}", opts.lr),
            }
            .into());
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
        let bar = opts.progress && std::io::stderr().is_terminal();
        let mut trajectory: Vec<FitStep> = Vec::with_capacity(opts.steps);
        let mut stopped_early = false;
        let w = opts.patience.max(1);
        for step in 0..opts.steps {
            let values = self.values()?;
            let (loss, report) = self.nll_seeded(self.settings.seed.wrapping_add(step as u64))?;
            if !report.nll.is_finite() {
                return Err(Error::InvalidArgument {
                    op: "ExactGp::fit",
                    detail: format!("the NLL is {} at step {step} ({values:?})", report.nll),
                }
                .into());
            }
            if bar {
                draw(step, opts.steps, &report, &values);
            }
            trajectory.push(FitStep {
                step,
                report,
                values,
            });
            if opts.tol > 0.0 && trajectory.len() >= 2 * w {
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
        if bar {
            eprintln!();
        }
        Ok(FitReport {
            trajectory,
            stopped_early,
            seconds: start.elapsed().as_secs_f64(),
        })
    }
}

/// One line of the progress bar: the bar, the step, the NLL per point and the values.
fn draw(step: usize, steps: usize, r: &NllReport, values: &[(String, Vec<f64>)]) {
    const WIDTH: usize = 20;
    let done = (step + 1) * WIDTH / steps.max(1);
    let vals: Vec<String> = values
        .iter()
        .map(|(name, v)| {
            let v: Vec<String> = v.iter().map(|x| format!("{x:.3}")).collect();
            format!("{name} {}", v.join(","))
        })
        .collect();
    let mut err = std::io::stderr();
    let _ = write!(
        err,
        "\r\x1b[2K[{}{}] {}/{} nll {:.4e}  {}",
        "#".repeat(done),
        "-".repeat(WIDTH - done),
        step + 1,
        steps,
        r.nll,
        vals.join("  ")
    );
    let _ = err.flush();
}
