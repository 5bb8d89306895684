//! Compiling (NVRTC), caching and launching generated kernels on Candle's CUDA stream.
//!
//! A reduction looks for its module in memory (keyed by the plan's kernel key, the dtype, the
//! architecture and the device), then on disk ([`super::cache`]), and compiles it with NVRTC
//! only when both miss; the PTX is then loaded into the device's context (the driver compiles
//! it for the device) and its functions kept with it, so both steps happen once per device.
//!
//! The memory cache holds modules in flight too ([`super::inflight`]): [`prepare`] starts the
//! compile and load of modules that will predictably be needed (the gradient reductions of a
//! tracked forward reduction, see `crate::op`) on background threads, and a reduction that
//! needs one of them waits for it (or takes it over if no thread has started it) instead of
//! compiling it a second time. NVRTC and module loading are thread-safe, so independent
//! modules compile in parallel.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::DeviceRepr;
use candle_core::cuda_backend::cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaView, DriverError, LaunchConfig, PushKernelArg, sys,
};
use candle_core::cuda_backend::cudarc::nvrtc::{
    CompileError, CompileOptions, Ptx, compile_ptx_with_opts,
};
use candle_core::cuda_backend::{CudaDevice, CudaStorage, WrapErr};
use candle_core::{DType, Layout};

use super::cache::DiskCache;
use super::codegen::{CudaKernel, Grid, Storage};
use super::inflight::{Found, InFlight};
use crate::backend::census::{self, Obtained};
use crate::backend::{Outputs, ReductionPlan};
use crate::error::Error;

/// A compiled module, and its functions once loaded into a device's context.
pub(super) struct Compiled {
    pub(super) kernel: CudaKernel,
    /// Loaded (`None` for a module compiled without a device, in tests).
    pub(super) loaded: Option<Loaded>,
    /// A block plan's helper kernels, once loaded.
    pub(super) helpers: Option<BlockHelpers>,
}

/// A module loaded into a context: the driver's JIT has turned its PTX into machine code.
pub(super) enum Loaded {
    /// A reduction's main and combine kernels.
    Reduction {
        main: CudaFunction,
        combine: CudaFunction,
    },
    /// A matrix-product plan's coefficient kernel ([`CudaKernel::values`]).
    Values(CudaFunction),
}

/// The helper kernels of a block-plan module ([`super::block_helpers`]).
pub(super) struct BlockHelpers {
    pub(super) sqnorms: CudaFunction,
    pub(super) distances: CudaFunction,
    pub(super) finish_matmul: CudaFunction,
}

/// A module's identity: the plan's kernel key, the storage, the architecture and the device
/// (the ordinal of the context it is loaded into; `None`: not loaded).
type Key = (String, Storage, String, Option<usize>);

/// Compiled modules of this process, and those being compiled (see [`super::inflight`]).
fn memory() -> &'static Arc<InFlight<Key, Arc<Compiled>>> {
    static MEM: OnceLock<Arc<InFlight<Key, Arc<Compiled>>>> = OnceLock::new();
    MEM.get_or_init(Default::default)
}

pub(crate) fn arch_of(dev: &CudaDevice) -> candle_core::Result<String> {
    let (major, minor) = dev.cuda_stream().context().compute_capability().w()?;
    Ok(format!("compute_{major}{minor}"))
}

pub(super) fn multiprocessors(dev: &CudaDevice) -> usize {
    dev.cuda_stream()
        .context()
        .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .map(|n| n.max(1) as usize)
        .unwrap_or(100)
}

/// The NVRTC options of every compile.
fn nvrtc_options(arch: &str) -> CompileOptions {
    CompileOptions {
        options: vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()],
        ..Default::default()
    }
}

/// Compiles a generated source for `arch` with NVRTC; a failure returns the NVRTC log and
/// the path the source was written to.
pub(crate) fn compile(
    kernel: &CudaKernel,
    arch: &str,
    disk: Option<&DiskCache>,
) -> Result<String, Error> {
    match compile_ptx_with_opts(&kernel.source, nvrtc_options(arch)) {
        Ok(ptx) => Ok(ptx.to_src()),
        Err(e) => {
            let log = match &e {
                CompileError::CompileError { log, .. } => log.to_string_lossy().into_owned(),
                other => format!("{other:?}"),
            };
            let dir = disk
                .map(|d| d.dir().to_path_buf())
                .unwrap_or_else(std::env::temp_dir);
            let written = DiskCache::at(&dir)
                .write_source(&kernel.name, &kernel.source)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|w| format!("(could not be written: {w})"));
            Err(Error::Backend {
                what: "NVRTC",
                detail: format!(
                    "compiling kernel {} for {arch} failed; source written to {written}; log:\n{log}",
                    kernel.name
                ),
            })
        }
    }
}

/// Loads PTX into `ctx` (the driver compiles it for the device) and finds the functions.
fn load(
    ctx: &Arc<CudaContext>,
    kernel: &CudaKernel,
    ptx: String,
) -> Result<(Loaded, Option<BlockHelpers>), Error> {
    let fail = |step: &str, e: DriverError| Error::Backend {
        what: "CUDA module load",
        detail: format!("{step} of kernel {}: {e:?}", kernel.name),
    };
    let module = ctx
        .load_module(Ptx::from_src(ptx))
        .map_err(|e| fail("loading the PTX", e))?;
    let function = |suffix: &str| {
        module
            .load_function(&format!("{}_{suffix}", kernel.name))
            .map_err(|e| fail("finding a function", e))
    };
    let loaded = if kernel.values {
        Loaded::Values(function("values")?)
    } else {
        Loaded::Reduction {
            main: function("main")?,
            combine: function("combine")?,
        }
    };
    let helpers = if kernel.blocks {
        Some(BlockHelpers {
            sqnorms: function("sqnorms")?,
            distances: function("distances")?,
            finish_matmul: function("finish_matmul")?,
        })
    } else {
        None
    };
    Ok((loaded, helpers))
}

/// The module of `plan`: generated, then read from the disk cache or compiled (and stored
/// there), then loaded into `ctx` when there is one. `ahead`: for a background job, run
/// before the module is requested.
fn obtain(
    plan: &ReductionPlan,
    storage: Storage,
    arch: &str,
    ctx: Option<&Arc<CudaContext>>,
    ahead: bool,
) -> Result<Arc<Compiled>, Error> {
    let kernel = plan.cuda_kernel(storage)?;
    let disk = disk_cache();
    let cached = disk
        .as_ref()
        .and_then(|d| d.load(&kernel.name, arch, &kernel.source));
    let (ptx, how) = match cached {
        Some(ptx) => (ptx, Obtained::Disk),
        None => {
            let t = Instant::now();
            let ptx = compile(&kernel, arch, disk.as_ref())?;
            let seconds = t.elapsed().as_secs_f64();
            if let Some(d) = &disk {
                // A cache that cannot be written only costs a compile next time.
                let _ = d.store(&kernel.name, arch, &kernel.source, &ptx);
            }
            (ptx, Obtained::Compiled { seconds, ahead })
        }
    };
    let t = Instant::now();
    let (loaded, helpers) = match ctx.map(|ctx| load(ctx, &kernel, ptx)).transpose()? {
        Some((l, h)) => (Some(l), h),
        None => (None, None),
    };
    let load_seconds = ctx.is_some().then(|| t.elapsed().as_secs_f64());
    census::obtained(plan, storage, &kernel, how, load_seconds);
    Ok(Arc::new(Compiled {
        kernel,
        loaded,
        helpers,
    }))
}

/// The disk cache (unit tests: one of their own, so that they neither read nor fill the
/// user's).
fn disk_cache() -> Option<DiskCache> {
    #[cfg(test)]
    return Some(DiskCache::at(&tests::scratch_cache()));
    #[cfg(not(test))]
    DiskCache::from_env()
}

fn key_of(plan: &ReductionPlan, storage: Storage, arch: &str, ctx: Option<&CudaContext>) -> Key {
    (
        plan.kernel_key(),
        storage,
        arch.to_string(),
        ctx.map(|c| c.ordinal()),
    )
}

/// The module of `plan`, from memory, or obtained now, or waited for when a background
/// thread is compiling it.
pub(super) fn compiled(
    plan: &ReductionPlan,
    storage: Storage,
    arch: &str,
    ctx: Option<&Arc<CudaContext>>,
) -> Result<Arc<Compiled>, Error> {
    let t = Instant::now();
    let key = key_of(plan, storage, arch, ctx.map(|c| &**c));
    let (c, found) = memory().get(&key, || obtain(plan, storage, arch, ctx, false));
    if found != Found::Ready {
        census::waited(t.elapsed().as_secs_f64());
    }
    c
}

/// Starts compiling (and loading into `ctx`), on background threads, the modules of `plans`
/// that are neither ready nor in flight, so that the reductions that ask for them find them
/// ready, or in flight and wait instead of compiling again. Errors surface at those requests.
pub(crate) fn prepare(
    plans: impl IntoIterator<Item = ReductionPlan>,
    storage: Storage,
    arch: &str,
    ctx: Option<&Arc<CudaContext>>,
) {
    let mem = memory();
    for plan in plans {
        let key = key_of(&plan, storage, arch, ctx.map(|c| &**c));
        let (arch, ctx) = (arch.to_string(), ctx.cloned());
        mem.prefetch(
            key,
            Box::new(move || obtain(&plan, storage, &arch, ctx.as_ref(), true)),
        );
    }
}

/// [`prepare`] for the device of `dev`.
pub(crate) fn prepare_on(
    plans: impl IntoIterator<Item = ReductionPlan>,
    storage: Storage,
    dev: &CudaDevice,
) {
    if let Ok(arch) = arch_of(dev) {
        prepare(plans, storage, &arch, Some(dev.cuda_stream().context()));
    }
}

pub(super) fn too_large(what: &str, n: usize) -> candle_core::Error {
    Error::Shape {
        op: "CUDA reduction",
        detail: format!("{n} {what} exceed the CUDA backend's limit of 2^31 - 1"),
    }
    .into()
}

/// Runs `plan` on the packed input in `storage` (contiguous, from `layout`).
pub(crate) fn reduce(
    plan: &ReductionPlan,
    storage: &CudaStorage,
    layout: &Layout,
) -> candle_core::Result<Outputs<CudaStorage>> {
    let (start, end) = crate::backend::packed_range(layout)?;
    let dev = storage.device().clone();
    if let Some(bp) = &plan.blocks {
        use super::block_launch::run as blocks;
        return match storage.dtype() {
            DType::F32 => blocks::<f32>(plan, bp, &dev, storage.as_cuda_slice()?.slice(start..end)),
            DType::F64 => blocks::<f64>(plan, bp, &dev, storage.as_cuda_slice()?.slice(start..end)),
            other => Err(Error::NotImplemented {
                what: "the CUDA block path in this dtype",
                detail: format!("{other:?} inputs (the block path takes f32 and f64)"),
            }
            .into()),
        };
    }
    match storage.dtype() {
        DType::F32 => run::<f32>(
            plan,
            &dev,
            storage.as_cuda_slice::<f32>()?.slice(start..end),
            Storage::F32,
        ),
        DType::F64 => run::<f64>(
            plan,
            &dev,
            storage.as_cuda_slice::<f64>()?.slice(start..end),
            Storage::F64,
        ),
        DType::F16 => run::<half::f16>(
            plan,
            &dev,
            storage.as_cuda_slice::<half::f16>()?.slice(start..end),
            Storage::F16,
        ),
        DType::BF16 => run::<half::bf16>(
            plan,
            &dev,
            storage.as_cuda_slice::<half::bf16>()?.slice(start..end),
            Storage::BF16,
        ),
        other => Err(Error::DType {
            op: "CUDA reduction",
            detail: format!("unsupported dtype {other:?}"),
        }
        .into()),
    }
}

fn run<T>(
    plan: &ReductionPlan,
    dev: &CudaDevice,
    input: CudaView<'_, T>,
    storage: Storage,
) -> candle_core::Result<Outputs<CudaStorage>>
where
    T: candle_core::cuda_backend::CudaDType
        + DeviceRepr
        + candle_core::cuda_backend::cudarc::driver::ValidAsZeroBits,
{
    let int = |what: &str, n: usize| i32::try_from(n).map_err(|_| too_large(what, n));
    let rows = int("output rows", plan.rows)?;
    let terms = int("reduced terms", plan.terms)?;
    let arch = arch_of(dev)?;
    let stream = dev.cuda_stream();
    let c = compiled(plan, storage, &arch, Some(stream.context()))?;
    let k = &c.kernel;
    let loaded = c.loaded.as_ref().ok_or_else(|| Error::Backend {
        what: "CUDA reduction",
        detail: format!("kernel {} was compiled but not loaded", k.name),
    })?;
    let Loaded::Reduction { main, combine } = loaded else {
        return Err(Error::Backend {
            what: "CUDA reduction",
            detail: format!("module {} has no main kernel", k.name),
        }
        .into());
    };
    let block = k.block;

    let sms = multiprocessors(dev);
    if k.ranged != plan.ranges.is_some() {
        return Err(Error::Backend {
            what: "CUDA reduction",
            detail: format!(
                "module {} is {}a block-sparse module, the plan {} ranges",
                k.name,
                if k.ranged { "" } else { "not " },
                if plan.ranges.is_some() {
                    "has"
                } else {
                    "has no"
                }
            ),
        }
        .into());
    }
    // A block-sparse plan: blocks aligned to its row intervals, each over its kept terms
    // (the descriptors go to the device with the launch).
    let ranged = match &plan.ranges {
        Some(r) => {
            let groups: Vec<_> = r
                .row_blocks()
                .into_iter()
                .map(|b| (b.rows, b.terms))
                .collect();
            Some(k.ranged_grid(plan.rows, plan.terms, &groups, sms)?)
        }
        None => None,
    };
    let Grid {
        blocks_x,
        chunks,
        chunk,
    } = match &ranged {
        Some(g) => Grid {
            blocks_x: g.blocks_x(),
            chunks: g.chunks,
            chunk: g.chunk,
        },
        None => k.grid(plan.rows, plan.terms, sms),
    };
    let chunk_i = int("terms per chunk", chunk)?;
    let blocks_x_u32 = u32::try_from(blocks_x).map_err(|_| too_large("blocks", blocks_x))?;

    let n_vals = (plan.rows * k.out_vals).max(1);
    let n_idx = (plan.rows * k.out_idx).max(1);
    let parts = if chunks > 1 { chunks * plan.rows } else { 1 };
    {
        use crate::backend::memory::{bytes, reserve};
        let per_part = (k.state_vals.checked_add(k.state_idx)).and_then(|s| s.checked_mul(8));
        // The block-sparse launch's descriptors (4-byte entries).
        let descriptors = ranged
            .as_ref()
            .map_or(0, |g| g.blocks.len() + g.intervals.len().max(1));
        let need = per_part.and_then(|p| {
            bytes(&[
                (n_vals, std::mem::size_of::<T>()),
                (n_idx, 8),
                (parts, p),
                (descriptors, 4),
            ])
        });
        reserve(
            plan.reduction.kind.name(),
            || match &ranged {
                Some(g) => format!(
                    "the output, the {parts} partial states and the descriptors of {} blocks \
                     and {} intervals of terms on the device",
                    g.blocks_x(),
                    g.intervals.len() / 2
                ),
                None => format!("the output and the {parts} partial states on the device"),
            },
            need,
            &candle_core::Device::Cuda(dev.clone()),
        )?;
    }
    let out_vals: CudaSlice<T> = dev.alloc_zeros::<T>(n_vals)?;
    let out_idx: CudaSlice<i64> = dev.alloc_zeros::<i64>(n_idx)?;
    let part_vals: CudaSlice<f64> = dev.alloc_zeros::<f64>((parts * k.state_vals).max(1))?;
    let part_idx: CudaSlice<i64> = dev.alloc_zeros::<i64>((parts * k.state_idx).max(1))?;
    let offsets: Vec<i64> = plan.vars.iter().map(|v| v.offset as i64).collect();
    // An empty list of intervals (no kept block) still gets a buffer, never read.
    let descriptors = match &ranged {
        Some(g) => {
            let intervals = if g.intervals.is_empty() {
                vec![0, 0]
            } else {
                g.intervals.clone()
            };
            Some((
                stream.clone_htod(&g.blocks).w()?,
                stream.clone_htod(&intervals).w()?,
            ))
        }
        None => None,
    };

    let mut b = stream.launch_builder(main);
    b.arg(&input);
    for o in &offsets {
        b.arg(o);
    }
    b.arg(&rows);
    b.arg(&terms);
    b.arg(&chunk_i);
    b.arg(&out_vals);
    b.arg(&out_idx);
    b.arg(&part_vals);
    b.arg(&part_idx);
    if let Some((rblocks, tivals)) = &descriptors {
        b.arg(rblocks);
        b.arg(tivals);
    }
    let cfg = LaunchConfig {
        grid_dim: (blocks_x_u32, chunks as u32, 1),
        block_dim: (block as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the arguments match the generated signature (input, one offset per variable,
    // rows, terms, chunk, outputs, partial states, and for a block-sparse module its two
    // descriptor buffers, checked against the module above), every buffer has the size the
    // kernel indexes (`ranged_grid` checked the descriptors' rows and terms against the
    // plan's sizes), and all live until the launch is enqueued on the device's stream
    // (freed after it, in stream order).
    unsafe { b.launch(cfg) }.w()?;
    if chunks > 1 {
        let chunks_i = int("chunks", chunks)?;
        let mut b = stream.launch_builder(combine);
        b.arg(&rows);
        b.arg(&chunks_i);
        b.arg(&part_vals);
        b.arg(&part_idx);
        b.arg(&out_vals);
        b.arg(&out_idx);
        let cfg = LaunchConfig {
            grid_dim: (plan.rows.div_ceil(256) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: as above, for the combine kernel's signature.
        unsafe { b.launch(cfg) }.w()?;
    }
    Ok(outputs(k, out_vals, out_idx, dev))
}

/// The outputs of a reduction kernel `k` from its value and index buffers: values (with their
/// indices when the kernel has both), or the indices alone.
pub(super) fn outputs<T: candle_core::cuda_backend::CudaDType>(
    k: &CudaKernel,
    out_vals: CudaSlice<T>,
    out_idx: CudaSlice<i64>,
    dev: &CudaDevice,
) -> Outputs<CudaStorage> {
    let vals = CudaStorage::wrap_cuda_slice(out_vals, dev.clone());
    let idx = CudaStorage::wrap_cuda_slice(out_idx, dev.clone());
    if k.out_vals > 0 {
        Outputs {
            primary: vals,
            indices: (k.out_idx > 0).then_some(idx),
        }
    } else {
        Outputs {
            primary: idx,
            indices: None,
        }
    }
}

#[cfg(test)]
mod tests {
    //! NVRTC needs no GPU: these run wherever the `cuda` feature builds and links.

    use super::*;
    use crate::backend::cuda::generate;
    use crate::formula::{Expr, Var, VarCat};
    use crate::reduction::ReductionKind;

    fn gaussian() -> (Expr, Vec<(VarCat, usize)>) {
        let v = |cat, pos, dim| Expr::var(Var { cat, pos, dim }).unwrap();
        let (x, y, b) = (v(VarCat::I, 0, 3), v(VarCat::J, 1, 3), v(VarCat::J, 2, 1));
        let k = Expr::sqdist(&x, &y).unwrap().neg().exp();
        let f = Expr::binary(crate::formula::BinaryOp::Mul, &k, &b).unwrap();
        (f, vec![(VarCat::I, 3), (VarCat::J, 3), (VarCat::J, 1)])
    }

    #[test]
    fn nvrtc_compiles_generated_kernels_for_sm80_and_sm90() {
        let (f, vars) = gaussian();
        let cases = [
            (ReductionKind::Sum, Storage::F32),
            (ReductionKind::Sum, Storage::F64),
            (ReductionKind::LogSumExp, Storage::F16),
            (ReductionKind::ArgKMin(10), Storage::BF16),
            (ReductionKind::MinArgMin, Storage::F64),
        ];
        for (kind, storage) in cases {
            let k = generate(&f, kind, &vars, storage).unwrap();
            let ranged = crate::backend::cuda::generate_ranged(&f, kind, &vars, storage).unwrap();
            for arch in ["compute_80", "compute_90"] {
                let ptx = compile(&ranged, arch, None)
                    .unwrap_or_else(|e| panic!("block-sparse {kind:?} {storage:?} {arch}: {e}"));
                assert!(ptx.contains(&format!("{}_main", ranged.name)));
            }
            for arch in ["compute_80", "compute_90"] {
                let ptx = compile(&k, arch, None)
                    .unwrap_or_else(|e| panic!("{kind:?} {storage:?} {arch}: {e}"));
                assert!(
                    ptx.contains(&format!("{}_main", k.name)),
                    "{kind:?} {storage:?}"
                );
                assert!(
                    ptx.contains(&format!("{}_combine", k.name)),
                    "{kind:?} {storage:?}"
                );
            }
        }
    }

    /// A block plan's modules (inner products read from blocks, and a matrix product's
    /// coefficient kernel) compile for both architectures.
    #[test]
    fn nvrtc_compiles_block_plan_kernels() {
        use crate::backend::cuda::{generate_values, generate_with_pairs};
        let v = |cat, pos, dim| Expr::var(Var { cat, pos, dim }).unwrap();
        let (x, y, b) = (v(VarCat::I, 0, 64), v(VarCat::J, 1, 64), v(VarCat::J, 2, 1));
        let vars = [(VarCat::I, 64), (VarCat::J, 64), (VarCat::J, 1)];
        let dot = Expr::dot(&x, &y).unwrap();
        let pairs = [dot.clone()];
        let coef = dot.neg().exp();
        let f = Expr::binary(crate::formula::BinaryOp::Mul, &coef, &b).unwrap();
        for storage in [Storage::F32, Storage::F64] {
            let mut kernels = Vec::new();
            for kind in [
                ReductionKind::Sum,
                ReductionKind::LogSumExp,
                ReductionKind::ArgKMin(10),
                ReductionKind::MinArgMin,
            ] {
                kernels.push(generate_with_pairs(&f, kind, &vars, &pairs, storage).unwrap());
            }
            kernels.push(generate_values(&coef, &vars, &pairs, storage).unwrap());
            for k in &kernels {
                for arch in ["compute_80", "compute_90"] {
                    let ptx = compile(k, arch, None)
                        .unwrap_or_else(|e| panic!("{} {storage:?} {arch}: {e}", k.name));
                    let entries: &[&str] = if k.values {
                        &["values"]
                    } else {
                        &["main", "combine"]
                    };
                    for e in entries {
                        assert!(ptx.contains(&format!("{}_{e}", k.name)), "{storage:?}");
                    }
                }
            }
        }
        // Half precision never takes the block path.
        let err = generate_with_pairs(&f, ReductionKind::Sum, &vars, &pairs, Storage::F16);
        assert!(matches!(err, Err(Error::NotImplemented { .. })));
    }

    pub(super) fn scratch_cache() -> std::path::PathBuf {
        std::env::temp_dir().join(format!("lk-unit-cache-{}", std::process::id()))
    }

    /// A Gaussian kernel sum `sum_j exp(-c |x_i - y_j|^2) b_j` with `e` columns, `c` unique to
    /// this process (so that its module is in no cache).
    fn plan_of(tag: f64, e: usize) -> ReductionPlan {
        use crate::backend::VarSpec;
        use crate::reduction::{Axis, Reduction};
        let c = tag + f64::from(std::process::id() % 10_000) * 1e-9;
        let v = |cat, pos, dim| Expr::var(Var { cat, pos, dim }).unwrap();
        let (x, y, b) = (v(VarCat::I, 0, 3), v(VarCat::J, 1, 3), v(VarCat::J, 2, e));
        let d = Expr::sqdist(&x, &y).unwrap();
        let k = Expr::binary(
            crate::formula::BinaryOp::Mul,
            &Expr::constant(-c).unwrap(),
            &d,
        )
        .unwrap()
        .exp();
        let formula = Expr::binary(crate::formula::BinaryOp::Mul, &k, &b).unwrap();
        let reduction = Reduction::new(ReductionKind::Sum, Axis::J);
        let spec = |cat, dim| VarSpec {
            cat,
            dim,
            rows: 1,
            offset: 0,
        };
        ReductionPlan {
            out: reduction.output_spec(formula.dim()).unwrap(),
            formula,
            reduction,
            vars: vec![spec(VarCat::I, 3), spec(VarCat::J, 3), spec(VarCat::J, e)],
            rows: 1,
            terms: 1,
            blocks: None,
            ranges: None,
        }
    }

    #[test]
    fn prepared_kernels_compile_once_in_the_background_and_requests_wait_for_them() {
        let _lock = census::test_lock();
        let plans: Vec<ReductionPlan> = (1..=4).map(|e| plan_of(0.271828, e)).collect();
        census::start();
        prepare(plans.clone(), Storage::F32, "compute_80", None);
        // Asked for at once: each is ready, in flight (waited for) or queued (taken over).
        for p in &plans {
            let c = compiled(p, Storage::F32, "compute_80", None).unwrap();
            let want = generate(&p.formula, p.reduction.kind, &p.kernel_vars(), Storage::F32);
            assert_eq!(c.kernel.name, want.unwrap().name);
            assert!(c.loaded.is_none(), "no device: compiled, not loaded");
        }
        // Asked for again: from memory.
        for p in &plans {
            compiled(p, Storage::F32, "compute_80", None).unwrap();
        }
        let c = census::stop();
        assert_eq!(c.compiled, 4, "each module compiled once:\n{c}");
        assert_eq!(c.prepared, 4, "by the prepared jobs:\n{c}");
        assert!(c.nvrtc_seconds > 0.0 && c.wait_seconds > 0.0, "{c}");
        for k in c.kernels.iter().filter(|k| k.formula.contains("0.271828")) {
            assert!(k.prepared && k.nvrtc_seconds.is_some() && k.load_seconds.is_none());
        }
        // A new process would read them from the disk cache.
        let disk = disk_cache().unwrap();
        for p in &plans {
            let k = generate(&p.formula, p.reduction.kind, &p.kernel_vars(), Storage::F32).unwrap();
            assert!(disk.load(&k.name, "compute_80", &k.source).is_some());
        }
        let _ = std::fs::remove_dir_all(scratch_cache());
    }

    #[test]
    fn a_failed_background_compile_reaches_the_request_that_needs_it() {
        let (f, vars) = gaussian();
        let mut k = generate(&f, ReductionKind::Sum, &vars, Storage::F32).unwrap();
        k.source.push_str("\nthis is not CUDA either;\n");
        let key: Key = (
            format!("broken {}", k.name),
            Storage::F32,
            "compute_80".into(),
            None,
        );
        let dir = std::env::temp_dir().join(format!("lk-nvrtc-bg-{}", std::process::id()));
        let broken = {
            let (k, dir) = (k.clone(), dir.clone());
            move || -> Result<Arc<Compiled>, Error> {
                compile(&k, "compute_80", Some(&DiskCache::at(&dir)))?;
                Ok(Arc::new(Compiled {
                    kernel: k,
                    loaded: None,
                    helpers: None,
                }))
            }
        };
        assert!(memory().prefetch(key.clone(), Box::new(broken.clone())));
        let t = Instant::now();
        let (r, _) = memory().get(&key, broken.clone());
        let err = r.err().expect("the compile fails").to_string();
        assert!(
            err.contains("NVRTC failed") && err.contains(&k.name),
            "{err}"
        );
        assert!(t.elapsed().as_secs() < 60);
        // Forgotten after the failure: asked again, it is compiled (and fails) again.
        let (r, found) = memory().get(&key, broken);
        assert!(r.is_err());
        assert_eq!(found, Found::Made);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn nvrtc_errors_carry_the_log_and_the_source_path() {
        let (f, vars) = gaussian();
        let mut k = generate(&f, ReductionKind::Sum, &vars, Storage::F32).unwrap();
        k.source.push_str("\nthis is not CUDA;\n");
        let dir = std::env::temp_dir().join(format!("lk-nvrtc-err-{}", std::process::id()));
        let err = compile(&k, "compute_80", Some(&DiskCache::at(&dir)))
            .unwrap_err()
            .to_string();
        let path = dir.join(format!("{}.cu", k.name));
        assert!(err.contains("NVRTC failed"), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("error"), "the log: {err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), k.source);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
