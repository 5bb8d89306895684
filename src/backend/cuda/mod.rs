//! The CUDA backend: fused reduction kernels generated from the formula ([`codegen`]),
//! compiled with NVRTC for the device's architecture at first use, cached in memory and on disk
//! ([`cache`]), and launched on Candle's stream (feature `cuda`).
//!
//! The code generator and the disk cache are part of every build, so that they can be tested
//! (and the generated sources compiled by `nvcc`) on machines without a GPU.
//!
//! Compiles that can be foreseen run ahead, in parallel, on background threads
//! ([`compile_threads`] of them, `$LAZY_KERNELS_COMPILE_THREADS`, 0 to turn this off): a
//! reduction whose inputs track gradients starts the compiles of its backward pass's modules
//! (NVRTC, then the driver's compile of the PTX when the module is loaded), and a reduction
//! that needs a module being compiled waits for it rather than compiling it again. The
//! census ([`crate::backend::census`]) counts the modules, compiles and seconds.

#[cfg(feature = "cuda")]
pub(crate) mod block_launch;
pub mod blocks;
pub mod cache;
pub mod codegen;
pub(crate) mod hoist;
pub(crate) mod inflight;
#[cfg(feature = "cuda")]
pub(crate) mod launch;

pub use codegen::{
    CudaKernel, Grid, RangedGrid, Storage, block_helpers, generate, generate_ranged,
    generate_values, generate_with_pairs, values_grid,
};
pub use inflight::{THREADS_VAR, worker_count as compile_threads};

/// Compiles a generated module with NVRTC for `arch` (`compute_XY`), with the options the
/// backend uses, and returns its PTX. Needs NVRTC, not a GPU (feature `cuda`).
///
/// ```
/// # #[cfg(feature = "cuda")] {
/// use lazy_kernels::backend::cuda::{compile_ptx, generate, Storage};
/// use lazy_kernels::formula::{Expr, Var, VarCat};
/// use lazy_kernels::ReductionKind;
/// let v = |cat, pos| Expr::var(Var { cat, pos, dim: 3 }).unwrap();
/// let f = Expr::sqdist(&v(VarCat::I, 0), &v(VarCat::J, 1))?.neg().exp();
/// let k = generate(&f, ReductionKind::Sum, &[(VarCat::I, 3), (VarCat::J, 3)], Storage::F32)?;
/// let ptx = compile_ptx(&k, "compute_80")?;
/// assert!(ptx.contains(&format!("{}_main", k.name)));
/// # }
/// # Ok::<(), candle_core::Error>(())
/// ```
#[cfg(any(feature = "cuda", docsrs))]
#[cfg_attr(docsrs, doc(cfg(feature = "cuda")))]
pub fn compile_ptx(kernel: &CudaKernel, arch: &str) -> candle_core::Result<String> {
    #[cfg(feature = "cuda")]
    return Ok(launch::compile(kernel, arch, None)?);
    // docs.rs documents this function from a build without CUDA (candle's CUDA kernels need
    // nvcc at build time): there it can only say so.
    #[cfg(not(feature = "cuda"))]
    Err(crate::Error::NotImplemented {
        op: "compile_ptx",
        detail: format!(
            "this build of lazy-kernels has no CUDA support (feature `cuda`): cannot compile {} for {arch}",
            kernel.name
        ),
    }
    .into())
}

#[cfg(feature = "cuda")]
use super::ReductionPlan;

/// Queues the modules of the backward pass of `forward` (inputs stored as `storage`, those
/// flagged in `needs_grad` needing gradients; its plans from `backward`) for compiling on
/// background threads for `dev`, once per kernel key, flags, storage and architecture;
/// nothing with [`compile_threads`] 0.
#[cfg(feature = "cuda")]
pub(crate) fn prepare_backward(
    dev: &candle_core::CudaDevice,
    forward: &ReductionPlan,
    needs_grad: &[bool],
    storage: Storage,
    backward: impl FnOnce() -> candle_core::Result<Vec<ReductionPlan>>,
) {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};

    if compile_threads() == 0 {
        return;
    }
    let Ok(arch) = launch::arch_of(dev) else {
        return;
    };
    type Seen = HashSet<(String, Vec<bool>, Storage, String)>;
    static SEEN: OnceLock<Mutex<Seen>> = OnceLock::new();
    let key = (forward.kernel_key(), needs_grad.to_vec(), storage, arch);
    {
        let mut seen = SEEN
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !seen.insert(key) {
            return;
        }
    }
    // A backward pass that cannot be planned fails (or not) when it runs; nothing to do here.
    if let Ok(plans) = backward() {
        launch::prepare_on(plans, storage, dev);
    }
}
