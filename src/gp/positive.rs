//! Positive hyperparameters: a Candle `Var` holding `softplus^-1(value)`, so that any update
//! by an optimiser keeps the value positive.

use candle_core::{DType, Device, Tensor, Var};

use crate::error::Error;

/// A positive hyperparameter (a lengthscale, an output scale, a noise variance), learned
/// through its unconstrained `Var` `raw`: `value = softplus(raw) = log(1 + exp(raw))`
/// ([`Positive::new`]), or `value = exp(raw)` ([`Positive::with_transform`] and
/// [`Transform::Exp`]): an optimiser step then changes the value by a factor rather than by an
/// amount, which suits values far from 1 (a trend's 50 ppm scale next to a 0.2 ppm noise).
///
/// Clones share the `Var`: a kernel built by a closure that captured a clone sees every
/// update.
///
/// ```
/// use candle_core::{DType, Device};
/// use lazy_kernels::gp::Positive;
/// let l = Positive::new("lengthscale", &[0.5, 2.0], DType::F64, &Device::Cpu)?;
/// let v = l.value()?.to_vec1::<f64>()?;
/// assert!((v[0] - 0.5).abs() < 1e-12 && (v[1] - 2.0).abs() < 1e-12);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Positive {
    name: String,
    raw: Var,
    transform: Transform,
}

/// How a [`Positive`] maps its unconstrained `Var` to its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Transform {
    /// `log(1 + exp(raw))`: about `raw` for large values (steps change the value by an
    /// amount), `exp(raw)` for small ones (the default, as in GPyTorch).
    #[default]
    Softplus,
    /// `exp(raw)`: steps change the value by a factor.
    Exp,
}

/// `log(1 + exp(x)) = relu(x) + log1p(exp(-|x|))`, with Candle ops (differentiable), in
/// `f64` whatever the dtype: `log1p(u)` is `log(1 + u)` for `u >= 1e-4` (relative error
/// below 1e-12) and its series `u (1 - u/2 + u^2/3 - u^3/4)` below, so that values down to
/// the smallest `f64` stay accurate and positive; both branches are finite, so gradients are.
fn softplus(x: &Tensor) -> candle_core::Result<Tensor> {
    let x64 = x.to_dtype(DType::F64)?;
    let u = x64.abs()?.neg()?.exp()?;
    let log = (&u + 1.0)?.log()?;
    let series = (&u * (1.0 - (&u * (0.5 - (&u * (1.0 / 3.0 - (&u * 0.25)?)?)?)?)?)?)?;
    let log1p = u.lt(1e-4)?.where_cond(&series, &log)?;
    (x64.relu()? + log1p)?.to_dtype(x.dtype())
}

/// The inverse of softplus: `log(exp(v) - 1)`, stably.
fn softplus_inv(v: f64) -> f64 {
    if v > 30.0 {
        v + (-(-v).exp_m1()).ln()
    } else {
        v.exp_m1().ln()
    }
}

impl Positive {
    /// A hyperparameter named `name` (for reports and errors) with initial values `init`
    /// (one, or one per dimension), each finite and `> 0`.
    pub fn new(
        name: &str,
        init: &[f64],
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Positive> {
        Positive::with_transform(name, init, Transform::Softplus, dtype, device)
    }

    /// As [`Positive::new`], with the given transform.
    ///
    /// ```
    /// use candle_core::{DType, Device};
    /// use lazy_kernels::gp::{Positive, Transform};
    /// let s = Positive::with_transform("scale", &[50.0], Transform::Exp, DType::F64, &Device::Cpu)?;
    /// assert!((s.values()?[0] - 50.0).abs() < 1e-12);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn with_transform(
        name: &str,
        init: &[f64],
        transform: Transform,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Positive> {
        let raw = raw_of("Positive::new", name, init, transform, dtype, device)?;
        Ok(Positive {
            name: name.to_string(),
            raw: Var::from_tensor(&raw)?,
            transform,
        })
    }

    /// A hyperparameter holding exactly the raw tensor `raw` (no round trip through values):
    /// what [`crate::gp::SavedGp`] restores.
    pub(crate) fn from_raw(
        name: &str,
        raw: &Tensor,
        transform: Transform,
    ) -> candle_core::Result<Positive> {
        Ok(Positive {
            name: name.to_string(),
            raw: Var::from_tensor(raw)?,
            transform,
        })
    }

    /// The name given at creation.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The unconstrained `Var` an optimiser updates.
    pub fn var(&self) -> &Var {
        &self.raw
    }

    /// The transform from `raw` to the value.
    pub fn transform(&self) -> Transform {
        self.transform
    }

    /// The current value, shape `(k,)`, tracked (gradients reach `raw`).
    pub fn value(&self) -> candle_core::Result<Tensor> {
        match self.transform {
            Transform::Softplus => softplus(self.raw.as_tensor()),
            Transform::Exp => self.raw.as_tensor().exp(),
        }
    }

    /// The current values as `f64` numbers.
    pub fn values(&self) -> candle_core::Result<Vec<f64>> {
        self.value()?.to_dtype(DType::F64)?.to_vec1::<f64>()
    }

    /// Sets the values (each finite and `> 0`).
    pub fn set(&self, values: &[f64]) -> candle_core::Result<()> {
        let raw = raw_of(
            "Positive::set",
            &self.name,
            values,
            self.transform,
            self.raw.dtype(),
            self.raw.device(),
        )?;
        if raw.dims() != self.raw.dims() {
            return Err(Error::Shape {
                op: "Positive::set",
                detail: format!(
                    "the hyperparameter {} has {} values, got {}",
                    self.name,
                    self.raw.elem_count(),
                    values.len()
                ),
            }
            .into());
        }
        self.raw.set(&raw)
    }
}

/// The raw tensor of a hyperparameter named `name` with `values` (each finite and `> 0`,
/// else an error of `op`).
fn raw_of(
    op: &'static str,
    name: &str,
    values: &[f64],
    transform: Transform,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Tensor> {
    if values.is_empty() {
        return Err(Error::InvalidArgument {
            op,
            detail: format!("the hyperparameter {name} needs at least one value"),
        }
        .into());
    }
    if let Some(bad) = values.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
        return Err(Error::InvalidArgument {
            op,
            detail: format!("the hyperparameter {name} must be finite and > 0, got {bad}"),
        }
        .into());
    }
    let inverse = |v: f64| match transform {
        Transform::Softplus => softplus_inv(v),
        Transform::Exp => v.ln(),
    };
    let raw: Vec<f64> = values.iter().map(|&v| inverse(v)).collect();
    Tensor::from_vec(raw, values.len(), device)?.to_dtype(dtype)
}
