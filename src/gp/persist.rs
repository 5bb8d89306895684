//! Saving and loading a fitted [`ExactGp`] in [safetensors](https://github.com/huggingface/safetensors),
//! Candle's format.
//!
//! # What a file holds
//!
//! The kernel of an [`ExactGp`] is a user closure, which cannot be saved. A file holds the
//! model's *state*; the user rebuilds its *structure*, the same closure over the same named
//! [`Positive`]s, and loads the state into it. The state is, bit for bit in each tensor's own
//! dtype:
//!
//! | tensor | shape | content |
//! |---|---|---|
//! | `hypers.<name>` | `(k,)` | the raw (unconstrained) values of the hyperparameter `<name>` |
//! | `noise` | `(k,)` | the raw values of the noise variance |
//! | `mean` | `(1,)` | the constant mean |
//! | `data.x`, `data.y` | `(N, D)`, `(N,)` | the training data (optional) |
//!
//! and, in the safetensors metadata header (a string-to-string map):
//!
//! | key | value |
//! |---|---|
//! | `format`, `version` | `lazy-kernels/ExactGp`, `1` |
//! | `hypers.count`, `hypers.<i>` | the number of hyperparameters, and the name of the `i`-th, in the model's order |
//! | `hypers.<name>.transform`, `noise.transform` | `softplus` or `exp` ([`Transform`]) |
//! | `noise.name` | the noise's name (informative, not checked) |
//! | `data` | `true` or `false` |
//! | `settings.<field>` | each field of [`GpSettings`]: numbers in Rust's shortest round-trip form, the preconditioner as `none`, `fixed:<rank>` or `auto:<max>`, the variances as `exact` or `love:<tol>:<max_rank>`, the log-determinant estimator as `hutchinson`, `diagonal-corrected` or `block-corrected`, the NLL method as `auto`, `exact` or `stochastic` |
//!
//! # Loading
//!
//! Loading checks, before changing anything, that the model and the file agree: the same
//! hyperparameter names (in any order), and for each the same transform, dtype and shape;
//! then it sets the raw values, the noise, the mean and the settings. A model that was saved
//! and loaded back on the same device predicts bit for bit as the original.
//!
//! * [`ExactGp::load`]: a file saved with its data; give the hyperparameters (any initial
//!   values of the right length: they are overwritten), the noise and the kernel closure.
//! * [`ExactGp::load_state`]: load into a model already built on its data (the file's data, if
//!   any, is ignored).
//! * [`SavedGp`]: read a file once, inspect it (names, settings, data) and build the
//!   hyperparameters from it ([`SavedGp::positive`]), then [`SavedGp::into_gp`] or
//!   [`SavedGp::apply`].
//!
//! A file that is not safetensors, is truncated, was not written by [`ExactGp::save`], lacks a
//! tensor, or holds a tensor of the wrong shape or dtype gives an error that says which.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use lazy_kernels::gp::{ExactGp, Positive};
//! use lazy_kernels::Kernel;
//!
//! // The model's structure: the same code builds it before saving and before loading.
//! fn build(x: &Tensor, y: &Tensor, init: f64) -> candle_core::Result<ExactGp> {
//!     let dev = x.device();
//!     let l = Positive::new("lengthscale", &[init], DType::F64, dev)?;
//!     let s = Positive::new("outputscale", &[init], DType::F64, dev)?;
//!     let noise = Positive::new("noise", &[init], DType::F64, dev)?;
//!     let (lc, sc) = (l.clone(), s.clone());
//!     ExactGp::new(x, y, vec![l, s], noise,
//!         move || Ok(Kernel::gaussian(&lc.value()?).scale(&sc.value()?)))
//! }
//!
//! let dev = Device::Cpu;
//! let x = Tensor::rand(0f64, 1., (100, 1), &dev)?;
//! let y = ((x.clone() * 6.0)?.sin()?).squeeze(1)?;
//! let gp = build(&x, &y, 0.3)?;        // ... then gp.fit(...)
//! let path = std::env::temp_dir().join("lazy_kernels_doc_gp.safetensors");
//! gp.save(&path, false)?;              // the state only
//!
//! let mut again = build(&x, &y, 1.0)?; // other values: the file overwrites them
//! again.load_state(&path)?;
//! let x_new = Tensor::new(&[[0.25f64], [0.5]], &dev)?;
//! let (p, q) = (gp.predict(&x_new)?, again.predict(&x_new)?);
//! assert_eq!(p.mean.to_vec1::<f64>()?, q.mean.to_vec1::<f64>()?);
//! assert_eq!(p.variance.to_vec1::<f64>()?, q.variance.to_vec1::<f64>()?);
//! # std::fs::remove_file(&path).ok();
//! # Ok::<(), candle_core::Error>(())
//! ```

use std::collections::{HashMap, HashSet};
use std::path::Path;

use candle_core::safetensors::Load;
use candle_core::{DType, Device, Tensor};
use safetensors::SafeTensors;

use super::{ExactGp, GpSettings, NllMethod, Positive, Transform, Variances};
use crate::Kernel;
use crate::error::Error;
use crate::solve::{LogdetEstimator, Preconditioner, Rank};

/// The value of the `format` metadata key.
pub const FORMAT: &str = "lazy-kernels/ExactGp";
/// The value of the `version` metadata key written by this version of the crate.
pub const VERSION: &str = "1";

const SAVE: &str = "ExactGp::save";
const LOAD: &str = "ExactGp::load";

fn invalid(op: &'static str, detail: impl Into<String>) -> candle_core::Error {
    Error::InvalidArgument {
        op,
        detail: detail.into(),
    }
    .into()
}

fn transform_name(t: Transform) -> &'static str {
    match t {
        Transform::Softplus => "softplus",
        Transform::Exp => "exp",
    }
}

/// The settings as metadata entries. The destructuring is exhaustive, so that a new field of
/// [`GpSettings`] does not compile until it is saved (and loaded, in [`settings_from`]).
fn settings_entries(s: &GpSettings) -> Vec<(&'static str, String)> {
    let GpSettings {
        nll_method,
        train_tol,
        predict_tol,
        probes,
        lanczos_iters,
        preconditioner,
        max_iters,
        seed,
        noise_floor,
        predict_chunk,
        learn_mean,
        variances,
        logdet_estimator,
        quadrature_tol,
    } = s;
    let preconditioner = match preconditioner {
        Preconditioner::None => "none".to_string(),
        Preconditioner::PivotedCholesky(Rank::Fixed(r)) => format!("fixed:{r}"),
        Preconditioner::PivotedCholesky(Rank::Auto { max }) => format!("auto:{max}"),
    };
    let variances = match variances {
        Variances::Exact => "exact".to_string(),
        Variances::Love { tol, max_rank } => format!("love:{tol:e}:{max_rank}"),
    };
    vec![
        ("settings.train_tol", format!("{train_tol:e}")),
        ("settings.predict_tol", format!("{predict_tol:e}")),
        ("settings.probes", probes.to_string()),
        ("settings.lanczos_iters", lanczos_iters.to_string()),
        ("settings.preconditioner", preconditioner),
        ("settings.max_iters", max_iters.to_string()),
        ("settings.seed", seed.to_string()),
        ("settings.noise_floor", format!("{noise_floor:e}")),
        ("settings.predict_chunk", predict_chunk.to_string()),
        ("settings.learn_mean", learn_mean.to_string()),
        (
            "settings.nll_method",
            match nll_method {
                NllMethod::Auto => "auto",
                NllMethod::Exact => "exact",
                NllMethod::Stochastic => "stochastic",
            }
            .to_string(),
        ),
        ("settings.variances", variances),
        (
            "settings.logdet_estimator",
            match logdet_estimator {
                LogdetEstimator::Hutchinson => "hutchinson",
                LogdetEstimator::DiagonalCorrected => "diagonal-corrected",
                LogdetEstimator::BlockCorrected => "block-corrected",
            }
            .to_string(),
        ),
        ("settings.quadrature_tol", format!("{quadrature_tol:e}")),
    ]
}

/// The metadata header, read with clear errors.
struct Meta<'a>(&'a HashMap<String, String>);

impl Meta<'_> {
    fn get(&self, key: &str) -> candle_core::Result<&str> {
        self.0.get(key).map(String::as_str).ok_or_else(|| {
            invalid(
                LOAD,
                format!("the file's metadata has no key '{key}' (a damaged or foreign file)"),
            )
        })
    }

    fn parse<T: std::str::FromStr>(&self, key: &str, what: &str) -> candle_core::Result<T> {
        let v = self.get(key)?;
        v.parse().map_err(|_| {
            invalid(
                LOAD,
                format!("the file's metadata key '{key}' is '{v}', not {what}"),
            )
        })
    }

    fn transform(&self, key: &str) -> candle_core::Result<Transform> {
        match self.get(key)? {
            "softplus" => Ok(Transform::Softplus),
            "exp" => Ok(Transform::Exp),
            v => Err(invalid(
                LOAD,
                format!("the file's metadata key '{key}' is '{v}', not 'softplus' or 'exp'"),
            )),
        }
    }
}

fn settings_from(m: &Meta) -> candle_core::Result<GpSettings> {
    const NUM: &str = "a number";
    const INT: &str = "a non-negative integer";
    let key = "settings.preconditioner";
    let text = m.get(key)?;
    let bad = || {
        invalid(
            LOAD,
            format!(
                "the file's metadata key '{key}' is '{text}', not 'none', 'fixed:<rank>' or 'auto:<max>'"
            ),
        )
    };
    let preconditioner = match text.split_once(':') {
        None if text == "none" => Preconditioner::None,
        Some(("fixed", r)) => {
            Preconditioner::PivotedCholesky(Rank::Fixed(r.parse().map_err(|_| bad())?))
        }
        Some(("auto", r)) => Preconditioner::PivotedCholesky(Rank::Auto {
            max: r.parse().map_err(|_| bad())?,
        }),
        _ => return Err(bad()),
    };
    let key = "settings.variances";
    let text = m.get(key)?;
    let bad = || {
        invalid(
            LOAD,
            format!(
                "the file's metadata key '{key}' is '{text}', not 'exact' or 'love:<tol>:<max_rank>'"
            ),
        )
    };
    let variances = match text.split(':').collect::<Vec<_>>()[..] {
        ["exact"] => Variances::Exact,
        ["love", tol, max_rank] => Variances::Love {
            tol: tol.parse().map_err(|_| bad())?,
            max_rank: max_rank.parse().map_err(|_| bad())?,
        },
        _ => return Err(bad()),
    };
    let key = "settings.logdet_estimator";
    let logdet_estimator = match m.get(key)? {
        "hutchinson" => LogdetEstimator::Hutchinson,
        "diagonal-corrected" => LogdetEstimator::DiagonalCorrected,
        "block-corrected" => LogdetEstimator::BlockCorrected,
        other => {
            return Err(invalid(
                LOAD,
                format!(
                    "the file's metadata key '{key}' is '{other}', not 'hutchinson', 'diagonal-corrected' or 'block-corrected'"
                ),
            ));
        }
    };
    let key = "settings.nll_method";
    let nll_method = match m.get(key)? {
        "auto" => NllMethod::Auto,
        "exact" => NllMethod::Exact,
        "stochastic" => NllMethod::Stochastic,
        other => {
            return Err(invalid(
                LOAD,
                format!(
                    "the file's metadata key '{key}' is '{other}', not 'auto', 'exact' or \
                     'stochastic'"
                ),
            ));
        }
    };
    Ok(GpSettings {
        nll_method,
        train_tol: m.parse("settings.train_tol", NUM)?,
        predict_tol: m.parse("settings.predict_tol", NUM)?,
        probes: m.parse("settings.probes", INT)?,
        lanczos_iters: m.parse("settings.lanczos_iters", INT)?,
        preconditioner,
        max_iters: m.parse("settings.max_iters", INT)?,
        seed: m.parse("settings.seed", INT)?,
        noise_floor: m.parse("settings.noise_floor", NUM)?,
        predict_chunk: m.parse("settings.predict_chunk", INT)?,
        learn_mean: m.parse("settings.learn_mean", "'true' or 'false'")?,
        variances,
        logdet_estimator,
        quadrature_tol: m.parse("settings.quadrature_tol", NUM)?,
    })
}

/// One saved [`Positive`]: its name, transform and raw values.
#[derive(Clone, Debug)]
struct SavedPositive {
    name: String,
    transform: Transform,
    raw: Tensor,
}

impl SavedPositive {
    /// An error unless `p` can take these values: the same transform, dtype, shape and device.
    fn check(&self, p: &Positive, tensor: &str) -> candle_core::Result<()> {
        let what = format!("the hyperparameter '{}' (tensor '{tensor}')", self.name);
        if p.transform() != self.transform {
            return Err(invalid(
                LOAD,
                format!(
                    "{what} has the transform {} in the file, {} in the model",
                    transform_name(self.transform),
                    transform_name(p.transform())
                ),
            ));
        }
        let raw = p.var();
        if raw.dtype() != self.raw.dtype() {
            return Err(Error::DType {
                op: LOAD,
                detail: format!(
                    "{what} is {:?} in the file, {:?} in the model",
                    self.raw.dtype(),
                    raw.dtype()
                ),
            }
            .into());
        }
        if raw.dims() != self.raw.dims() {
            return Err(Error::Shape {
                op: LOAD,
                detail: format!(
                    "{what} has the shape {:?} in the file, {:?} in the model",
                    self.raw.dims(),
                    raw.dims()
                ),
            }
            .into());
        }
        if !raw.device().same_device(self.raw.device()) {
            return Err(Error::Device {
                op: LOAD,
                detail: format!(
                    "{what} is on {:?} in the model, the file was read onto {:?}",
                    raw.device(),
                    self.raw.device()
                ),
            }
            .into());
        }
        Ok(())
    }
}

/// The tensor name of the hyperparameter `name`.
fn hyper_key(name: &str) -> String {
    format!("hypers.{name}")
}

/// A saved [`ExactGp`], read from a file (see the [module documentation](self)): its state,
/// on a device, checked for consistency, ready to be put into a rebuilt model.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use lazy_kernels::gp::{ExactGp, Positive, SavedGp};
/// use lazy_kernels::Kernel;
/// let dev = Device::Cpu;
/// let x = Tensor::rand(0f32, 1., (50, 2), &dev)?;
/// let y = x.sum(1)?;
/// let l = Positive::new("lengthscale", &[0.5, 0.7], DType::F32, &dev)?;
/// let noise = Positive::new("noise", &[0.01], DType::F32, &dev)?;
/// let lc = l.clone();
/// let gp = ExactGp::new(&x, &y, vec![l], noise, move || Ok(Kernel::matern52(&lc.value()?)))?;
/// let bytes = gp.to_safetensors(true)?;
///
/// // Elsewhere: the hyperparameters come from the file, the structure from the code.
/// let saved = SavedGp::from_bytes(&bytes, &dev)?;
/// assert_eq!(saved.hyper_names(), vec!["lengthscale"]);
/// let l = saved.positive("lengthscale")?;
/// let lc = l.clone();
/// let again = saved.into_gp(vec![l], None, move || Ok(Kernel::matern52(&lc.value()?)))?;
/// assert_eq!(again.values()?, gp.values()?);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct SavedGp {
    hypers: Vec<SavedPositive>,
    noise: SavedPositive,
    mean: Tensor,
    data: Option<(Tensor, Tensor)>,
    settings: GpSettings,
}

impl SavedGp {
    /// Reads the file at `path` onto `device`.
    pub fn read(path: impl AsRef<Path>, device: &Device) -> candle_core::Result<SavedGp> {
        let path = path.as_ref();
        let bytes = std::fs::read(path)
            .map_err(|e| invalid(LOAD, format!("cannot read {}: {e}", path.display())))?;
        SavedGp::from_bytes(&bytes, device)
    }

    /// Reads a file's bytes (as written by [`ExactGp::to_safetensors`]) onto `device`.
    pub fn from_bytes(bytes: &[u8], device: &Device) -> candle_core::Result<SavedGp> {
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| {
            invalid(
                LOAD,
                format!(
                    "not a complete safetensors file ({e}; {} bytes): truncated, damaged or \
                     another format",
                    bytes.len()
                ),
            )
        })?;
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| invalid(LOAD, format!("not a valid safetensors file: {e}")))?;
        let empty = HashMap::new();
        let meta = Meta(header.metadata().as_ref().unwrap_or(&empty));
        match meta.0.get("format") {
            Some(f) if f == FORMAT => {}
            other => {
                return Err(invalid(
                    LOAD,
                    format!(
                        "a safetensors file, but not one written by ExactGp::save (metadata \
                         'format' is {other:?}, expected \"{FORMAT}\")"
                    ),
                ));
            }
        }
        let version = meta.get("version")?;
        if version != VERSION {
            return Err(invalid(
                LOAD,
                format!(
                    "the file has format version {version}; this crate reads version {VERSION}"
                ),
            ));
        }
        let tensor = |key: &str| -> candle_core::Result<Tensor> {
            let view = st.tensor(key).map_err(|_| {
                let mut names = st.names();
                names.sort();
                invalid(
                    LOAD,
                    format!("the file has no tensor '{key}' (it holds {names:?})"),
                )
            })?;
            view.load(device)
                .map_err(|e| invalid(LOAD, format!("cannot load the tensor '{key}': {e}")))
        };
        let vector = |key: &str| -> candle_core::Result<Tensor> {
            let t = tensor(key)?;
            match t.dims() {
                [k] if *k > 0 => Ok(t),
                dims => Err(Error::Shape {
                    op: LOAD,
                    detail: format!(
                        "the tensor '{key}' has the shape {dims:?}, expected (k,) with k > 0"
                    ),
                }
                .into()),
            }
        };
        let count: usize = meta.parse("hypers.count", "a non-negative integer")?;
        let mut hypers = Vec::with_capacity(count);
        let mut seen = HashSet::new();
        for i in 0..count {
            let name = meta.get(&format!("hypers.{i}"))?.to_string();
            if !seen.insert(name.clone()) {
                return Err(invalid(
                    LOAD,
                    format!("the file names the hyperparameter '{name}' twice"),
                ));
            }
            let key = hyper_key(&name);
            hypers.push(SavedPositive {
                transform: meta.transform(&format!("{key}.transform"))?,
                raw: vector(&key)?,
                name,
            });
        }
        let noise = SavedPositive {
            name: meta.get("noise.name")?.to_string(),
            transform: meta.transform("noise.transform")?,
            raw: vector("noise")?,
        };
        let mean = tensor("mean")?;
        if mean.dims() != [1] {
            return Err(Error::Shape {
                op: LOAD,
                detail: format!(
                    "the tensor 'mean' has the shape {:?}, expected [1]",
                    mean.dims()
                ),
            }
            .into());
        }
        let dtype = mean.dtype();
        let same_dtype = |key: &str, t: &Tensor| -> candle_core::Result<()> {
            if t.dtype() == dtype {
                Ok(())
            } else {
                Err(Error::DType {
                    op: LOAD,
                    detail: format!(
                        "the tensor '{key}' is {:?}, the mean {dtype:?}: they must agree",
                        t.dtype()
                    ),
                }
                .into())
            }
        };
        if !matches!(dtype, DType::F32 | DType::F64) {
            return Err(Error::DType {
                op: LOAD,
                detail: format!("the tensor 'mean' is {dtype:?}, expected F32 or F64"),
            }
            .into());
        }
        same_dtype("noise", &noise.raw)?;
        let data = match meta.get("data")? {
            "false" => None,
            "true" => {
                let (x, y) = (tensor("data.x")?, tensor("data.y")?);
                same_dtype("data.x", &x)?;
                same_dtype("data.y", &y)?;
                match (x.dims(), y.dims()) {
                    ([n, d], [m]) if n == m && *n > 0 && *d > 0 => {}
                    (dx, dy) => {
                        return Err(Error::Shape {
                            op: LOAD,
                            detail: format!(
                                "the tensors 'data.x' and 'data.y' have the shapes {dx:?} and \
                                 {dy:?}, expected (N, D) and (N,) with N, D > 0"
                            ),
                        }
                        .into());
                    }
                }
                Some((x, y))
            }
            v => {
                return Err(invalid(
                    LOAD,
                    format!("the file's metadata key 'data' is '{v}', not 'true' or 'false'"),
                ));
            }
        };
        Ok(SavedGp {
            hypers,
            noise,
            mean,
            data,
            settings: settings_from(&meta)?,
        })
    }

    /// The names of the saved hyperparameters, in the saved model's order.
    pub fn hyper_names(&self) -> Vec<&str> {
        self.hypers.iter().map(|h| h.name.as_str()).collect()
    }

    /// A new hyperparameter holding the saved raw values of `name` (its name, transform,
    /// dtype and shape), for a kernel closure to capture.
    pub fn positive(&self, name: &str) -> candle_core::Result<Positive> {
        let h = self.hypers.iter().find(|h| h.name == name).ok_or_else(|| {
            invalid(
                LOAD,
                format!(
                    "the file has no hyperparameter '{name}' (it has {:?})",
                    self.hyper_names()
                ),
            )
        })?;
        Positive::from_raw(&h.name, &h.raw, h.transform)
    }

    /// A new noise variance holding the saved raw values.
    pub fn noise(&self) -> candle_core::Result<Positive> {
        Positive::from_raw(&self.noise.name, &self.noise.raw, self.noise.transform)
    }

    /// The constant mean, `(1,)`.
    pub fn mean(&self) -> &Tensor {
        &self.mean
    }

    /// The model's dtype (its mean's, data's and noise's).
    pub fn dtype(&self) -> DType {
        self.mean.dtype()
    }

    /// The training inputs `(N, D)` and targets `(N,)`, if they were saved.
    pub fn data(&self) -> Option<(&Tensor, &Tensor)> {
        self.data.as_ref().map(|(x, y)| (x, y))
    }

    /// The saved settings.
    pub fn settings(&self) -> &GpSettings {
        &self.settings
    }

    /// Puts the saved state into `gp`: the raw values of its hyperparameters (matched by
    /// name) and noise, the mean and the settings (not the data). Checks first, so that on
    /// an error `gp` is unchanged: the same hyperparameter names, and for each (and the
    /// noise) the same transform, dtype, shape and device; the mean of the model's dtype.
    pub fn apply(&self, gp: &mut ExactGp) -> candle_core::Result<()> {
        let mut pairs = Vec::with_capacity(gp.hypers.len() + 1);
        let mut seen = HashSet::new();
        for p in &gp.hypers {
            if !seen.insert(p.name()) {
                return Err(invalid(
                    LOAD,
                    format!("the model has two hyperparameters named '{}'", p.name()),
                ));
            }
            let key = hyper_key(p.name());
            let h = self
                .hypers
                .iter()
                .find(|h| h.name == p.name())
                .ok_or_else(|| {
                    invalid(
                        LOAD,
                        format!(
                            "the file has no tensor '{key}' for the model's hyperparameter '{}' \
                         (the file has {:?})",
                            p.name(),
                            self.hyper_names()
                        ),
                    )
                })?;
            h.check(p, &key)?;
            pairs.push((p.var(), &h.raw));
        }
        if let Some(h) = self.hypers.iter().find(|h| !seen.contains(h.name.as_str())) {
            return Err(invalid(
                LOAD,
                format!(
                    "the file's hyperparameter '{}' is not in the model (the model has {:?})",
                    h.name,
                    gp.hypers.iter().map(Positive::name).collect::<Vec<_>>()
                ),
            ));
        }
        self.noise.check(&gp.noise, "noise")?;
        pairs.push((gp.noise.var(), &self.noise.raw));
        if self.mean.dtype() != gp.mean.dtype() {
            return Err(Error::DType {
                op: LOAD,
                detail: format!(
                    "the file's model is {:?}, this model {:?}",
                    self.mean.dtype(),
                    gp.mean.dtype()
                ),
            }
            .into());
        }
        let mean = self.mean.to_device(gp.mean.device())?;
        for (var, raw) in pairs {
            var.set(raw)?;
        }
        gp.mean.set(&mean)?;
        gp.settings = self.settings.clone();
        Ok(())
    }

    /// The saved model, on its saved data, with the kernel built by `kernel` from `hypers`
    /// (the structure the file cannot hold: any values, overwritten by the saved ones, see
    /// [`SavedGp::apply`]) and the noise `noise` (`None`: [`SavedGp::noise`]). An error if
    /// the file holds no data.
    pub fn into_gp(
        self,
        hypers: Vec<Positive>,
        noise: Option<Positive>,
        kernel: impl Fn() -> candle_core::Result<Kernel> + Send + Sync + 'static,
    ) -> candle_core::Result<ExactGp> {
        let Some((x, y)) = &self.data else {
            return Err(invalid(
                LOAD,
                "the file holds no training data (saved with with_data = false): build the \
                 model on its data with ExactGp::new, then ExactGp::load_state or \
                 SavedGp::apply",
            ));
        };
        let noise = match noise {
            Some(n) => n,
            None => self.noise()?,
        };
        let mut gp = ExactGp::new(x, y, hypers, noise, kernel)?;
        self.apply(&mut gp)?;
        Ok(gp)
    }
}

impl ExactGp {
    /// The model's state as the bytes of a safetensors file (see the
    /// [module documentation](mod@crate::gp::persist)), with the training data if `with_data`.
    pub fn to_safetensors(&self, with_data: bool) -> candle_core::Result<Vec<u8>> {
        let mut meta: HashMap<String, String> = HashMap::new();
        let mut tensors: Vec<(String, &Tensor)> = Vec::new();
        meta.insert("format".into(), FORMAT.into());
        meta.insert("version".into(), VERSION.into());
        meta.insert("hypers.count".into(), self.hypers.len().to_string());
        let mut seen = HashSet::new();
        for (i, h) in self.hypers.iter().enumerate() {
            if !seen.insert(h.name()) {
                return Err(invalid(
                    SAVE,
                    format!(
                        "two hyperparameters are named '{}': names identify them in the file",
                        h.name()
                    ),
                ));
            }
            let key = hyper_key(h.name());
            meta.insert(format!("hypers.{i}"), h.name().to_string());
            meta.insert(
                format!("{key}.transform"),
                transform_name(h.transform()).into(),
            );
            tensors.push((key, h.var().as_tensor()));
        }
        meta.insert("noise.name".into(), self.noise.name().to_string());
        meta.insert(
            "noise.transform".into(),
            transform_name(self.noise.transform()).into(),
        );
        tensors.push(("noise".into(), self.noise.var().as_tensor()));
        tensors.push(("mean".into(), self.mean.as_tensor()));
        meta.insert("data".into(), with_data.to_string());
        if with_data {
            tensors.push(("data.x".into(), &self.x));
            tensors.push(("data.y".into(), &self.y));
        }
        for (k, v) in settings_entries(&self.settings) {
            meta.insert(k.into(), v);
        }
        safetensors::serialize(tensors, Some(meta))
            .map_err(|e| invalid(SAVE, format!("safetensors serialisation failed: {e}")))
    }

    /// Writes [`ExactGp::to_safetensors`] to the file `path` (replacing it).
    pub fn save(&self, path: impl AsRef<Path>, with_data: bool) -> candle_core::Result<()> {
        let path = path.as_ref();
        let bytes = self.to_safetensors(with_data)?;
        std::fs::write(path, bytes)
            .map_err(|e| invalid(SAVE, format!("cannot write {}: {e}", path.display())))
    }

    /// The model saved in `path` with its data ([`ExactGp::save`] with `with_data`), rebuilt
    /// from its structure: the kernel closure `kernel` over the hyperparameters `hypers`, and
    /// the noise `noise` (any values: the saved ones replace them; see [`SavedGp::apply`] for
    /// the checks). The tensors go to the noise's device.
    pub fn load(
        path: impl AsRef<Path>,
        hypers: Vec<Positive>,
        noise: Positive,
        kernel: impl Fn() -> candle_core::Result<Kernel> + Send + Sync + 'static,
    ) -> candle_core::Result<ExactGp> {
        let device = noise.var().device().clone();
        SavedGp::read(path, &device)?.into_gp(hypers, Some(noise), kernel)
    }

    /// Loads the state saved in `path` into this model, built on its data (the file's data,
    /// if any, is not used): see [`SavedGp::apply`].
    pub fn load_state(&mut self, path: impl AsRef<Path>) -> candle_core::Result<()> {
        let device = self.x.device().clone();
        SavedGp::read(path, &device)?.apply(self)
    }
}
