//! A census of the CUDA kernels a computation uses, on any device.
//!
//! Every distinct (formula, reduction, variable dimensions, dtype) is one generated CUDA module,
//! compiled by NVRTC at its first use in a process with an empty cache: the number of distinct
//! kernels a computation dispatches is what its first run costs on a GPU. The census records,
//! while it is on, every reduction dispatched on any device (the CPU too: the module it would
//! compile is generated there, so the count is observable without a GPU) and, on CUDA, how each
//! module was obtained (compiled, read from the disk cache, compiled ahead of its use) and the
//! NVRTC seconds.
//!
//! A tracked forward reduction on CUDA starts compiling the modules of its backward pass on
//! background threads (see [`crate::backend::cuda`]); on other devices the census notes those
//! modules as compiled ahead, so a module compiled for a backward pass that never comes shows
//! up there too ([`Census::unused`]). Code that takes another path on CUDA than on the CPU is
//! counted along the CPU's path (`KernelOperator::rows`, for one, pairs the points on a GPU
//! and binds each row's point as a parameter on the CPU, which is one module more).
//!
//! The census is one per process and off by default; while it is off, a dispatch costs one
//! atomic load and no code is generated. [`start`] clears and turns it on, [`stop`] turns it
//! off and returns what it saw; reductions dispatched by other threads meanwhile are counted
//! too.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use lazy_kernels::backend::census;
//! use lazy_kernels::{Axis, LazyTensor};
//! let x = Tensor::rand(0f32, 1., (100, 3), &Device::Cpu)?;
//! let b = Tensor::rand(0f32, 1., (100, 1), &Device::Cpu)?;
//! let (x_i, y_j, b_j) = (LazyTensor::vi(&x)?, LazyTensor::vj(&x)?, LazyTensor::vj(&b)?);
//! census::start();
//! for _ in 0..3 {
//!     ((-x_i.sqdist(&y_j)).exp() * &b_j).sum(Axis::J)?;
//! }
//! let c = census::stop();
//! assert_eq!((c.dispatches, c.distinct()), (3, 1)); // three reductions, one kernel
//! assert_eq!(c.kernels[0].dispatches, 3);
//! assert!(c.kernels[0].name.starts_with("lk_") && c.kernels[0].source.contains("_main"));
//! assert_eq!(c.compiled, 0); // nothing is compiled on the CPU
//! # Ok::<(), candle_core::Error>(())
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use candle_core::DType;

use super::ReductionPlan;
use super::cuda::codegen::{CudaKernel, Storage};
use crate::formula::VarCat;

/// One distinct CUDA module seen by the census.
#[derive(Clone, Debug)]
pub struct KernelRecord {
    /// The module's name (`lk_` and a hash of its source): distinct names are distinct
    /// compiles.
    pub name: String,
    /// The input dtype the module is generated for.
    pub storage: Storage,
    /// The reduction, e.g. `Sum(axis=j)` (plans always reduce over `j`).
    pub reduction: String,
    /// The formula's canonical text (reduced over `j`).
    pub formula: String,
    /// The variables by position: category and components.
    pub vars: Vec<(VarCat, usize)>,
    /// The path of the plans that use it: [`crate::Path::Direct`] or [`crate::Path::Blocks`]
    /// (inner products by matrix products, see [`crate::op::gram`]).
    pub path: crate::Path,
    /// On the block path: whether the plan is a `Sum` of `c_ij * t_ij` run as a matrix
    /// product `C V`.
    pub matmul: bool,
    /// How many reductions used it while the census was on (0: compiled ahead of a use that
    /// did not come).
    pub dispatches: usize,
    /// The generated CUDA C source (what NVRTC compiles).
    pub source: String,
    /// CUDA: the seconds NVRTC took for it, when it was compiled while the census was on.
    pub nvrtc_seconds: Option<f64>,
    /// It was compiled by a background thread, ahead of its first request (on the CPU: it
    /// would have been, on CUDA). With no dispatches, that compile was not needed.
    pub prepared: bool,
    /// CUDA: its PTX came from the disk cache.
    pub from_disk: bool,
    /// CUDA: the seconds loading its PTX into the device's context took (the driver's
    /// compile to machine code), when it was loaded while the census was on.
    pub load_seconds: Option<f64>,
}

/// What the census saw between [`start`] and [`stop`] (or [`snapshot`]).
#[derive(Clone, Debug, Default)]
pub struct Census {
    /// The distinct modules, in the order they were first seen.
    pub kernels: Vec<KernelRecord>,
    /// Reductions dispatched (on any device).
    pub dispatches: usize,
    /// CUDA: modules compiled by NVRTC.
    pub compiled: usize,
    /// Modules compiled ahead of their first request by background threads (on the CPU:
    /// those that would have been, on CUDA).
    pub prepared: usize,
    /// CUDA: modules read from the disk cache.
    pub disk_hits: usize,
    /// CUDA: NVRTC seconds, summed over compiles (which may have overlapped in time).
    pub nvrtc_seconds: f64,
    /// CUDA: seconds of loading modules into the device's context (the driver's compile of
    /// PTX to machine code), summed.
    pub load_seconds: f64,
    /// CUDA: seconds reductions waited for a module (their own compile, a disk read, or a
    /// compile in flight in another thread): the compile time on the critical path.
    pub wait_seconds: f64,
}

impl Census {
    /// The number of distinct modules dispatched (what a cold process compiles at the least).
    ///
    /// ```
    /// assert_eq!(lazy_kernels::backend::census::Census::default().distinct(), 0);
    /// ```
    pub fn distinct(&self) -> usize {
        self.kernels.iter().filter(|k| k.dispatches > 0).count()
    }

    /// The modules compiled ahead of use (see [`KernelRecord::prepared`]) that no reduction
    /// used.
    ///
    /// ```
    /// use lazy_kernels::backend::census::Census;
    /// assert_eq!(Census::default().unused().count(), 0);
    /// ```
    pub fn unused(&self) -> impl Iterator<Item = &KernelRecord> {
        self.kernels
            .iter()
            .filter(|k| k.prepared && k.dispatches == 0)
    }

    /// The distinct modules of one dtype that were dispatched.
    ///
    /// ```
    /// use lazy_kernels::backend::{census::Census, cuda::Storage};
    /// assert_eq!(Census::default().of(Storage::F32).count(), 0);
    /// ```
    pub fn of(&self, storage: Storage) -> impl Iterator<Item = &KernelRecord> {
        self.kernels
            .iter()
            .filter(move |k| k.storage == storage && k.dispatches > 0)
    }
}

impl fmt::Display for Census {
    /// A table: one line per module (dispatches, NVRTC seconds, how it was obtained, the
    /// reduction, the variables and the formula), then the totals.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:>3} {:<20} {:>5} {:>6} {:>8} {:>8} {:<6} {:<14} variables / formula",
            "#", "kernel", "dtype", "calls", "nvrtc s", "load s", "how", "reduction"
        )?;
        for (n, k) in self.kernels.iter().enumerate() {
            let how = if k.from_disk {
                "disk"
            } else if k.prepared {
                "ahead"
            } else if k.nvrtc_seconds.is_some() {
                "nvrtc"
            } else {
                "-"
            };
            let secs = |s: Option<f64>| s.map(|s| format!("{s:.3}")).unwrap_or_else(|| "-".into());
            let vars: Vec<String> = k.vars.iter().map(|(c, d)| format!("{c:?}{d}")).collect();
            let mut formula = k.formula.clone();
            if formula.len() > 120 {
                let mut cut = 117;
                while !formula.is_char_boundary(cut) {
                    cut -= 1;
                }
                formula.truncate(cut);
                formula.push_str("...");
            }
            writeln!(
                f,
                "{:>3} {:<20} {:>5} {:>6} {:>8} {:>8} {:<6} {:<14} [{}] {}",
                n + 1,
                k.name,
                format!("{:?}", k.storage),
                k.dispatches,
                secs(k.nvrtc_seconds),
                secs(k.load_seconds),
                how,
                k.reduction,
                vars.join(" "),
                formula
            )?;
        }
        write!(
            f,
            "{} dispatches, {} distinct kernels; compiled {} ({} ahead of use), {} from disk, \
             NVRTC {:.3} s, load {:.3} s, waited {:.3} s",
            self.dispatches,
            self.distinct(),
            self.compiled,
            self.prepared,
            self.disk_hits,
            self.nvrtc_seconds,
            self.load_seconds,
            self.wait_seconds
        )
    }
}

static ON: AtomicBool = AtomicBool::new(false);

#[derive(Default)]
struct State {
    census: Census,
    /// Module name per kernel key and storage (so that a key is generated once).
    names: HashMap<(String, Storage), String>,
    /// Forward reductions (kernel key, inputs that need gradients, storage) whose backward
    /// modules were noted as compiled ahead.
    planned: std::collections::HashSet<(String, Vec<bool>, Storage)>,
    /// Position in `census.kernels` per module name.
    index: HashMap<String, usize>,
}

fn state() -> MutexGuard<'static, State> {
    static STATE: OnceLock<Mutex<State>> = OnceLock::new();
    STATE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// Clears the census and turns it on.
///
/// ```
/// lazy_kernels::backend::census::start();
/// assert!(lazy_kernels::backend::census::is_on());
/// lazy_kernels::backend::census::stop();
/// ```
pub fn start() {
    let mut s = state();
    *s = State::default();
    ON.store(true, Ordering::SeqCst);
}

/// Turns the census off and returns what it saw since [`start`].
///
/// ```
/// let c = lazy_kernels::backend::census::stop();
/// assert!(!lazy_kernels::backend::census::is_on());
/// # let _ = c;
/// ```
pub fn stop() -> Census {
    let mut s = state();
    ON.store(false, Ordering::SeqCst);
    std::mem::take(&mut s.census)
}

/// What the census saw since [`start`], leaving it running.
///
/// ```
/// lazy_kernels::backend::census::start();
/// assert_eq!(lazy_kernels::backend::census::snapshot().dispatches, 0);
/// lazy_kernels::backend::census::stop();
/// ```
pub fn snapshot() -> Census {
    state().census.clone()
}

/// Whether the census is on.
///
/// ```
/// # lazy_kernels::backend::census::stop();
/// assert!(!lazy_kernels::backend::census::is_on());
/// ```
pub fn is_on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// The record of `kernel`, created on first sight.
fn record<'a>(
    s: &'a mut State,
    plan: &ReductionPlan,
    storage: Storage,
    kernel: &CudaKernel,
) -> &'a mut KernelRecord {
    let at = match s.index.get(&kernel.name) {
        Some(&at) => at,
        None => {
            let at = s.census.kernels.len();
            s.census.kernels.push(KernelRecord {
                name: kernel.name.clone(),
                storage,
                reduction: plan.kernel_reduction().to_string(),
                formula: plan.formula.to_string(),
                vars: plan.kernel_vars(),
                path: match plan.blocks {
                    Some(_) => crate::Path::Blocks,
                    None => crate::Path::Direct,
                },
                matmul: plan.blocks.as_ref().is_some_and(|b| b.matmul.is_some()),
                dispatches: 0,
                source: kernel.source.clone(),
                nvrtc_seconds: None,
                prepared: false,
                from_disk: false,
                load_seconds: None,
            });
            s.index.insert(kernel.name.clone(), at);
            at
        }
    };
    &mut s.census.kernels[at]
}

/// Counts a reduction dispatched with inputs of `dtype` (any device). Generates the module's
/// source the first time a kernel key is seen; nothing at all when the census is off.
pub(crate) fn dispatched(plan: &ReductionPlan, dtype: DType) {
    if !is_on() {
        return;
    }
    let Ok(storage) = Storage::from_dtype(dtype) else {
        return;
    };
    let key = (plan.kernel_key(), storage);
    let known = state().names.get(&key).cloned();
    let name = match known {
        Some(name) => name,
        // Generated outside the lock: other threads may dispatch meanwhile.
        None => match plan.cuda_kernel(storage) {
            Ok(kernel) => {
                let mut s = state();
                record(&mut s, plan, storage, &kernel);
                s.names.insert(key, kernel.name.clone());
                kernel.name
            }
            // A plan the generator rejects fails on CUDA with the generator's error; it is
            // not a kernel.
            Err(_) => return,
        },
    };
    let mut s = state();
    s.census.dispatches += 1;
    if let Some(&at) = s.index.get(&name) {
        s.census.kernels[at].dispatches += 1;
    }
}

/// Whether the backward pass of a forward reduction (kernel key, inputs that need gradients,
/// storage) is yet to be noted; notes it.
fn first_backward(plan: &ReductionPlan, needs_grad: &[bool], storage: Storage) -> bool {
    is_on()
        && state()
            .planned
            .insert((plan.kernel_key(), needs_grad.to_vec(), storage))
}

/// On a device that compiles nothing, with the census on: notes the modules CUDA would
/// compile ahead for the backward pass of `forward` (its plans from `backward`, asked for
/// once per kernel key, inputs that need gradients, and storage).
pub(crate) fn note_backward(
    forward: &ReductionPlan,
    needs_grad: &[bool],
    storage: Storage,
    backward: impl FnOnce() -> candle_core::Result<Vec<ReductionPlan>>,
) {
    if first_backward(forward, needs_grad, storage)
        && let Ok(plans) = backward()
    {
        for p in &plans {
            would_prepare(p, storage);
        }
    }
}

/// Notes, on a device that compiles nothing, a module that CUDA would compile ahead of its use
/// (unless it is known already: then CUDA would have it in memory).
fn would_prepare(plan: &ReductionPlan, storage: Storage) {
    if !is_on() {
        return;
    }
    let key = (plan.kernel_key(), storage);
    if state().names.contains_key(&key) {
        return;
    }
    let Ok(kernel) = plan.cuda_kernel(storage) else {
        return;
    };
    let mut s = state();
    let s = &mut *s;
    if s.names.contains_key(&key) {
        return;
    }
    s.names.insert(key, kernel.name.clone());
    let r = record(s, plan, storage, &kernel);
    if !r.prepared {
        r.prepared = true;
        s.census.prepared += 1;
    }
}

/// How a CUDA module was obtained.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) enum Obtained {
    /// Compiled by NVRTC in `seconds`, by a background thread (`ahead`) or on demand.
    Compiled { seconds: f64, ahead: bool },
    /// Read from the disk cache.
    Disk,
}

/// Counts a CUDA module obtained while the census is on (and loaded in `load_seconds`).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) fn obtained(
    plan: &ReductionPlan,
    storage: Storage,
    kernel: &CudaKernel,
    how: Obtained,
    load_seconds: Option<f64>,
) {
    if !is_on() {
        return;
    }
    let mut s = state();
    let s = &mut *s;
    s.names
        .insert((plan.kernel_key(), storage), kernel.name.clone());
    s.census.load_seconds += load_seconds.unwrap_or(0.0);
    match how {
        Obtained::Compiled { seconds, ahead } => {
            s.census.compiled += 1;
            s.census.prepared += usize::from(ahead);
            s.census.nvrtc_seconds += seconds;
        }
        Obtained::Disk => s.census.disk_hits += 1,
    }
    let r = record(s, plan, storage, kernel);
    r.load_seconds = load_seconds;
    match how {
        Obtained::Compiled { seconds, ahead } => {
            r.nvrtc_seconds = Some(seconds);
            r.prepared = ahead;
        }
        Obtained::Disk => r.from_disk = true,
    }
}

/// Counts seconds a CUDA reduction waited for its module.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) fn waited(seconds: f64) {
    if is_on() {
        state().census.wait_seconds += seconds;
    }
}

/// Serialises the crate's unit tests that turn the census on (it is one per process).
#[cfg(test)]
pub(crate) fn test_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
