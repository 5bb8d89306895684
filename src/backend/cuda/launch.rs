//! Compiling (NVRTC), caching and launching generated kernels on Candle's CUDA stream.
//!
//! A reduction looks for its module in memory (keyed by the plan's canonical text, the
//! variables, the dtype and the architecture), then on disk ([`super::cache`]), and compiles
//! it with NVRTC only when both miss. Candle's device keeps loaded modules by name, and the
//! name is a hash of the source, so a module is loaded once per device.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::DeviceRepr;
use candle_core::cuda_backend::cudarc::driver::{
    sys, CudaSlice, CudaView, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::cudarc::nvrtc::{
    compile_ptx_with_opts, CompileError, CompileOptions,
};
use candle_core::cuda_backend::{CudaDevice, CudaStorage, WrapErr};
use candle_core::{DType, Layout};

use super::cache::DiskCache;
use super::codegen::{generate, CudaKernel, Storage};
use crate::backend::ReductionPlan;
use crate::error::Error;
use crate::formula::VarCat;

/// A compiled module.
struct Compiled {
    kernel: CudaKernel,
    ptx: String,
}

type Key = (String, Storage, String);

fn memory() -> &'static Mutex<HashMap<Key, Arc<Compiled>>> {
    static MEM: OnceLock<Mutex<HashMap<Key, Arc<Compiled>>>> = OnceLock::new();
    MEM.get_or_init(Default::default)
}

fn arch_of(dev: &CudaDevice) -> candle_core::Result<String> {
    let (major, minor) = dev.cuda_stream().context().compute_capability().w()?;
    Ok(format!("compute_{major}{minor}"))
}

fn multiprocessors(dev: &CudaDevice) -> usize {
    dev.cuda_stream()
        .context()
        .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .map(|n| n.max(1) as usize)
        .unwrap_or(100)
}

/// Compiles a generated source for `arch` with NVRTC; a failure returns the NVRTC log and
/// the path the source was written to.
fn compile(
    kernel: &CudaKernel,
    arch: &str,
    disk: Option<&DiskCache>,
) -> candle_core::Result<String> {
    let opts = CompileOptions {
        options: vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()],
        ..Default::default()
    };
    match compile_ptx_with_opts(&kernel.source, opts) {
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
            }
            .into())
        }
    }
}

fn compiled(
    plan: &ReductionPlan,
    storage: Storage,
    arch: &str,
) -> candle_core::Result<Arc<Compiled>> {
    let vars: Vec<(VarCat, usize)> = plan.vars.iter().map(|v| (v.cat, v.dim)).collect();
    let key: Key = (
        format!("{}:{vars:?}", plan.key()),
        storage,
        arch.to_string(),
    );
    let mem = memory();
    if let Some(c) = mem.lock().ok().and_then(|m| m.get(&key).cloned()) {
        return Ok(c);
    }
    let kernel = generate(&plan.formula, plan.reduction.kind, &vars, storage)?;
    let disk = DiskCache::from_env();
    let cached = disk
        .as_ref()
        .and_then(|d| d.load(&kernel.name, arch, &kernel.source));
    let ptx = match cached {
        Some(p) => p,
        None => {
            let p = compile(&kernel, arch, disk.as_ref())?;
            if let Some(d) = &disk {
                // A cache that cannot be written only costs a compile next time.
                let _ = d.store(&kernel.name, arch, &kernel.source, &p);
            }
            p
        }
    };
    let c = Arc::new(Compiled { kernel, ptx });
    if let Ok(mut m) = mem.lock() {
        m.insert(key, c.clone());
    }
    Ok(c)
}

/// The outputs of a CUDA reduction: the primary output (values, or indices when the
/// reduction has no values) and the indices next to values.
pub(crate) struct Outputs {
    pub(crate) primary: CudaStorage,
    pub(crate) indices: Option<CudaStorage>,
}

fn too_large(what: &str, n: usize) -> candle_core::Error {
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
) -> candle_core::Result<Outputs> {
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| Error::InvalidArgument {
            op: "reduction",
            detail: "packed input is not contiguous".into(),
        })?;
    let dev = storage.device().clone();
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
) -> candle_core::Result<Outputs>
where
    T: candle_core::cuda_backend::CudaDType
        + DeviceRepr
        + candle_core::cuda_backend::cudarc::driver::ValidAsZeroBits,
{
    let int = |what: &str, n: usize| i32::try_from(n).map_err(|_| too_large(what, n));
    let rows = int("output rows", plan.rows)?;
    let terms = int("reduced terms", plan.terms)?;
    let arch = arch_of(dev)?;
    let c = compiled(plan, storage, &arch)?;
    let k = &c.kernel;
    let block = k.block;

    // The 2D scheme when the rows leave most of the GPU idle: the terms are split into
    // chunks (a multiple of the tile), one grid row of blocks per chunk.
    let blocks_x = plan.rows.div_ceil(block);
    let sms = multiprocessors(dev);
    let mut chunk = plan.terms.div_ceil(block) * block;
    if blocks_x < 2 * sms && plan.terms > 4 * block {
        let want = (4 * sms)
            .div_ceil(blocks_x)
            .min(plan.terms.div_ceil(4 * block))
            .min(65535);
        chunk = plan.terms.div_ceil(want).div_ceil(block) * block;
    }
    let chunks = plan.terms.div_ceil(chunk);
    let chunk_i = int("terms per chunk", chunk)?;

    let n_vals = (plan.rows * k.out_vals).max(1);
    let n_idx = (plan.rows * k.out_idx).max(1);
    let out_vals: CudaSlice<T> = dev.alloc_zeros::<T>(n_vals)?;
    let out_idx: CudaSlice<i64> = dev.alloc_zeros::<i64>(n_idx)?;
    let parts = if chunks > 1 { chunks * plan.rows } else { 1 };
    let part_vals: CudaSlice<f64> = dev.alloc_zeros::<f64>((parts * k.state_vals).max(1))?;
    let part_idx: CudaSlice<i64> = dev.alloc_zeros::<i64>((parts * k.state_idx).max(1))?;
    let offsets: Vec<i64> = plan.vars.iter().map(|v| v.offset as i64).collect();

    let main = dev.get_or_load_custom_func(&format!("{}_main", k.name), &k.name, &c.ptx)?;
    let mut b = main.builder();
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
    let cfg = LaunchConfig {
        grid_dim: (blocks_x as u32, chunks as u32, 1),
        block_dim: (block as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the arguments match the generated signature (input, one offset per variable,
    // rows, terms, chunk, outputs, partial states), every buffer has the size the kernel
    // indexes, and all live until the launch is enqueued on the device's stream.
    unsafe { b.launch(cfg) }.w()?;
    if chunks > 1 {
        let combine =
            dev.get_or_load_custom_func(&format!("{}_combine", k.name), &k.name, &c.ptx)?;
        let chunks_i = int("chunks", chunks)?;
        let mut b = combine.builder();
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
    let vals = CudaStorage::wrap_cuda_slice(out_vals, dev.clone());
    let idx = CudaStorage::wrap_cuda_slice(out_idx, dev.clone());
    Ok(if k.out_vals > 0 {
        Outputs {
            primary: vals,
            indices: (k.out_idx > 0).then_some(idx),
        }
    } else {
        Outputs {
            primary: idx,
            indices: None,
        }
    })
}

#[cfg(test)]
mod tests {
    //! NVRTC needs no GPU: these run wherever the `cuda` feature builds and links.

    use super::*;
    use crate::formula::{Expr, Var};
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
