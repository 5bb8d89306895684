//! Running a block plan (`crate::op::gram`) on CUDA: cuBLAS products of blocks, then the
//! generated kernels over them, launch by launch as [`super::blocks`] schedules them.
//!
//! For each launch, cuBLAS computes each pair input's block of inner products transposed,
//! `S_k^T` (column-major `rows x terms`: `S = X_blk Y_blk^T`), into device buffers of the
//! schedule's size, on Candle's stream; the main kernel reads them (`s_k[j * rows + i]`), and
//! the row block's combine kernel merges the states of its launches. A matrix-product plan
//! runs its coefficient kernel into a block `C^T` instead, and cuBLAS adds `C_blk V_blk` to the
//! row block's outputs (`beta = 1` across term blocks): that sum is accumulated in the output
//! dtype (f32 or f64), not in the f64 states of the reductions.
//!
//! f32 products run in f32 ([`Precision::Full`], `CUBLAS_COMPUTE_32F`, no TF32) or on TF32
//! tensor cores ([`Precision::Tf32`]); f64 products in f64.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::cuda_backend::cudarc::cublas::{CudaBlas, result as blas, sys as blas_sys};
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaStream, CudaView, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig,
    PushKernelArg, ValidAsZeroBits,
};
use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage, DeviceId, WrapErr};

use super::blocks::{product_blocks, schedule};
use super::codegen::{Storage, VALUES_BLOCK, values_grid};
use super::launch::{BlockHelpers, Loaded, compiled, multiprocessors, outputs, too_large};
use crate::backend::{Outputs, ReductionPlan};
use crate::error::Error;
use crate::op::gram::{BlockPlan, Precision};

/// An element type of the block path's products: f32 or f64.
pub(crate) trait BlasElem: CudaDType + DeviceRepr + ValidAsZeroBits + Copy {
    /// The storage of the generated kernels.
    const STORAGE: Storage;
    /// cuBLAS's name of the type.
    const DATA: blas_sys::cudaDataType;
    /// 1 and 0, the products' scale factors (in the compute type's scalar type).
    const ONE: Self;
    const ZERO: Self;
    /// The compute type of a product in `precision`.
    fn compute(precision: Precision) -> blas_sys::cublasComputeType_t;
    /// `crate::op::gram::NEAR` in this type.
    fn near() -> Self;
    /// `-1` or `1`.
    fn sign(negative: bool) -> Self;
}

impl BlasElem for f32 {
    const STORAGE: Storage = Storage::F32;
    const DATA: blas_sys::cudaDataType = blas_sys::cudaDataType::CUDA_R_32F;
    const ONE: f32 = 1.0;
    const ZERO: f32 = 0.0;
    fn near() -> f32 {
        crate::op::gram::NEAR as f32
    }
    fn sign(negative: bool) -> f32 {
        if negative { -1.0 } else { 1.0 }
    }
    fn compute(precision: Precision) -> blas_sys::cublasComputeType_t {
        match precision {
            Precision::Full => blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            Precision::Tf32 => blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32,
        }
    }
}

impl BlasElem for f64 {
    const STORAGE: Storage = Storage::F64;
    const DATA: blas_sys::cudaDataType = blas_sys::cudaDataType::CUDA_R_64F;
    const ONE: f64 = 1.0;
    const ZERO: f64 = 0.0;
    fn compute(_: Precision) -> blas_sys::cublasComputeType_t {
        blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_64F
    }
    fn near() -> f64 {
        crate::op::gram::NEAR
    }
    fn sign(negative: bool) -> f64 {
        if negative { -1.0 } else { 1.0 }
    }
}

/// The cuBLAS handle of a device, on its Candle stream: created at first use, then kept.
fn cublas(dev: &CudaDevice) -> candle_core::Result<Arc<CudaBlas>> {
    static HANDLES: OnceLock<Mutex<HashMap<DeviceId, Arc<CudaBlas>>>> = OnceLock::new();
    let mut handles = HANDLES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(h) = handles.get(&dev.id()) {
        return Ok(h.clone());
    }
    let h = Arc::new(CudaBlas::new(dev.cuda_stream()).map_err(blas_error)?);
    handles.insert(dev.id(), h.clone());
    Ok(h)
}

fn blas_error(e: blas::CublasError) -> candle_core::Error {
    Error::Backend {
        what: "cuBLAS",
        detail: format!("{e:?}"),
    }
    .into()
}

fn int(what: &str, n: usize) -> candle_core::Result<i32> {
    i32::try_from(n).map_err(|_| too_large(what, n))
}

/// cuBLAS on a device: its handle, the stream it runs on (Candle's), the products' precision.
struct Blas<'a> {
    handle: &'a CudaBlas,
    stream: &'a Arc<CudaStream>,
    precision: Precision,
}

/// A column-major product `c[c_at..] (m x n, ldc) = op(a) op(b) + beta c[c_at..]` (`a_t`, `b_t`:
/// whether `a`, `b` are transposed; `k` the inner dimension).
fn gemm<T: BlasElem>(
    blas: &Blas<'_>,
    (a_t, b_t): (bool, bool),
    (m, n, k): (usize, usize, usize),
    (a, lda): (&CudaView<'_, T>, usize),
    (b, ldb): (&CudaView<'_, T>, usize),
    beta: T,
    (c, ldc, c_at): (&mut CudaSlice<T>, usize, usize),
) -> candle_core::Result<()> {
    use blas_sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
    let op = |t: bool| if t { CUBLAS_OP_T } else { CUBLAS_OP_N };
    let stream = blas.stream;
    let (a_ptr, _ga) = a.device_ptr(stream);
    let (b_ptr, _gb) = b.device_ptr(stream);
    let mut c_view = c.slice_mut(c_at..);
    let (c_ptr, _gc) = c_view.device_ptr_mut(stream);
    let alpha = T::ONE;
    // SAFETY: the views hold matrices of these shapes and leading dimensions (the callers size
    // them from the schedule), `c` does not overlap `a` or `b`, and the scale factors are of
    // the compute type's scalar type (f32 for the 32F compute types, f64 for 64F).
    unsafe {
        blas::gemm_ex(
            *blas.handle.handle(),
            op(a_t),
            op(b_t),
            int("product rows", m)?,
            int("product columns", n)?,
            int("product depth", k)?,
            &alpha as *const T as *const _,
            a_ptr as *const _,
            T::DATA,
            int("leading dimension", lda)?,
            b_ptr as *const _,
            T::DATA,
            int("leading dimension", ldb)?,
            &beta as *const T as *const _,
            c_ptr as *mut _,
            T::DATA,
            int("leading dimension", ldc)?,
            T::compute(blas.precision),
            blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(blas_error)
}

/// The squared norms of the points of a distance pair input, on the device: (i-side, j-side).
type Norms<T> = Vec<Option<(CudaSlice<T>, CudaSlice<T>)>>;

/// Grid-stride launch geometry of a helper kernel over `n` items.
fn helper_cfg(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256).clamp(1, 65535) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The squared norms of the points of every distance pair input (`<name>_sqnorms`).
fn pair_norms<T: BlasElem>(
    h: &BlockHelpers,
    dev: &CudaDevice,
    plan: &ReductionPlan,
    bp: &BlockPlan,
    input: &CudaView<'_, T>,
) -> candle_core::Result<Norms<T>> {
    let stream = dev.cuda_stream();
    let norms = |v: usize, d: usize| -> candle_core::Result<CudaSlice<T>> {
        let vs = &plan.vars[v];
        let mut out = dev.alloc_zeros::<T>(vs.rows.max(1))?;
        let x = input.slice(vs.offset..vs.offset + vs.rows * d);
        let (n, d) = (int("points", vs.rows)?, int("dimension", d)?);
        let mut b = stream.launch_builder(&h.sqnorms);
        b.arg(&x);
        b.arg(&n);
        b.arg(&d);
        b.arg(&mut out);
        let cfg = LaunchConfig {
            grid_dim: (vs.rows.div_ceil(256).max(1) as u32, 1, 1),
            ..helper_cfg(0)
        };
        // SAFETY: the arguments match `<name>_sqnorms(x, n, d, out)`: `x` holds `n x d`
        // values, `out` `n`.
        unsafe { b.launch(cfg) }.w()?;
        Ok(out)
    };
    bp.pairs
        .iter()
        .map(|p| {
            if p.distance {
                Ok(Some((norms(p.x, p.dim)?, norms(p.y, p.dim)?)))
            } else {
                Ok(None)
            }
        })
        .collect()
}

/// The blocks of the launch `rows x terms` of every pair input, into `bufs`: `S_k^T` by
/// cuBLAS, and for a distance its squared distances (`<name>_distances`: the expansion, or the
/// direct computation where the expansion cancels, see `crate::op::gram::NEAR`).
#[allow(clippy::too_many_arguments)]
fn inner_products<T: BlasElem>(
    blas: &Blas<'_>,
    h: &BlockHelpers,
    norms: &Norms<T>,
    plan: &ReductionPlan,
    bp: &BlockPlan,
    input: &CudaView<'_, T>,
    (rows, terms): (&std::ops::Range<usize>, &std::ops::Range<usize>),
    bufs: &mut [CudaSlice<T>],
) -> candle_core::Result<()> {
    for ((p, buf), nm) in bp.pairs.iter().zip(bufs.iter_mut()).zip(norms) {
        let (x, y, d) = (&plan.vars[p.x], &plan.vars[p.y], p.dim);
        let xs = input.slice(x.offset + rows.start * d..x.offset + rows.end * d);
        let ys = input.slice(y.offset + terms.start * d..y.offset + terms.end * d);
        // Column-major S (rows x terms, ld rows) = X^T' Y': X_blk is column-major `d x rows`.
        gemm(
            blas,
            (true, false),
            (rows.len(), terms.len(), d),
            (&xs, d),
            (&ys, d),
            T::ZERO,
            (buf, rows.len(), 0),
        )?;
        if let Some((xn, yn)) = nm {
            let xn = xn.slice(rows.clone());
            let yn = yn.slice(terms.clone());
            let (n, m, dd) = (
                int("rows", rows.len())?,
                int("terms", terms.len())?,
                int("dimension", d)?,
            );
            let near = T::near();
            let mut b = blas.stream.launch_builder(&h.distances);
            b.arg(&xs);
            b.arg(&ys);
            b.arg(&xn);
            b.arg(&yn);
            b.arg(&n);
            b.arg(&m);
            b.arg(&dd);
            b.arg(&near);
            b.arg(buf);
            // SAFETY: the arguments match `<name>_distances(x, y, xn, yn, rows, terms, d, near,
            // s)`: the points and norms of the launch's rows and terms, and its block.
            unsafe { b.launch(helper_cfg(rows.len() * terms.len())) }.w()?;
        }
    }
    Ok(())
}

/// The offsets of the variables for a launch from row `r0` and term `t0`.
fn offsets(plan: &ReductionPlan, r0: usize, t0: usize) -> Vec<i64> {
    use crate::formula::VarCat;
    plan.vars
        .iter()
        .map(|v| {
            let at = match v.cat {
                VarCat::I => v.offset + r0 * v.dim,
                VarCat::J => v.offset + t0 * v.dim,
                VarCat::P => v.offset,
            };
            at as i64
        })
        .collect()
}

/// Runs the block plan `bp` of `plan` on the packed input (f32 or f64).
pub(crate) fn run<T: BlasElem>(
    plan: &ReductionPlan,
    bp: &BlockPlan,
    dev: &CudaDevice,
    input: CudaView<'_, T>,
) -> candle_core::Result<Outputs<CudaStorage>> {
    int("output rows", plan.rows)?;
    int("reduced terms", plan.terms)?;
    let arch = super::launch::arch_of(dev)?;
    let stream = dev.cuda_stream();
    let c = compiled(plan, T::STORAGE, &arch, Some(stream.context()))?;
    let k = &c.kernel;
    let not_loaded = || Error::Backend {
        what: "CUDA reduction",
        detail: format!("kernel {} was compiled but not loaded", k.name),
    };
    let loaded = c.loaded.as_ref().ok_or_else(not_loaded)?;
    let helpers = c.helpers.as_ref().ok_or_else(not_loaded)?;
    let handle = cublas(dev)?;
    let blas = Blas {
        handle: &handle,
        stream: &stream,
        precision: bp.precision,
    };
    let elem = T::STORAGE.compute_bytes();
    let npairs = bp.pairs.len();
    let alloc = |n: usize| dev.alloc_zeros::<T>(n.max(1));
    let norms = pair_norms(helpers, dev, plan, bp, &input)?;

    if let (Some(mm), Loaded::Values(values)) = (&bp.matmul, loaded) {
        // Sum_j c_ij (u_i - v_j) = u_i sum_j c_ij - (C V)_i: C_blk^T by the coefficient
        // kernel, then out_blk += C_blk V_blk and csum_blk += C_blk 1 by cuBLAS; the signs and
        // the u term at the end (`<name>_finish_matmul`).
        let vs = plan.vars[mm.v];
        let e = vs.dim;
        let launches = product_blocks((plan.rows, plan.terms), npairs + 1, elem, bp.block_bytes);
        let most = launches
            .iter()
            .map(|(r, t)| r.len() * t.len())
            .max()
            .unwrap_or(1);
        let mut bufs: Vec<CudaSlice<T>> =
            (0..npairs).map(|_| alloc(most)).collect::<Result<_, _>>()?;
        let mut coef = alloc(most)?;
        let mut out: CudaSlice<T> = alloc(plan.rows * e)?;
        let mut csum: CudaSlice<T> = alloc(plan.rows)?;
        let most_terms = launches.iter().map(|(_, t)| t.len()).max().unwrap_or(1);
        let ones: CudaSlice<T> = stream.clone_htod(&vec![T::ONE; most_terms.max(1)]).w()?;
        for (rows, terms) in &launches {
            inner_products(
                &blas,
                helpers,
                &norms,
                plan,
                bp,
                &input,
                (rows, terms),
                &mut bufs,
            )?;
            let (n, m) = (int("rows", rows.len())?, int("terms", terms.len())?);
            let offs = offsets(plan, rows.start, terms.start);
            let (gx, gy) = values_grid(rows.len(), terms.len());
            let mut b = stream.launch_builder(values);
            b.arg(&input);
            for o in &offs {
                b.arg(o);
            }
            b.arg(&n);
            b.arg(&m);
            for s in &bufs {
                b.arg(s);
            }
            b.arg(&mut coef);
            let cfg = LaunchConfig {
                grid_dim: (gx as u32, gy as u32, 1),
                block_dim: (VALUES_BLOCK as u32, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: the arguments match the generated signature (input, one offset per
            // variable, rows, terms, one block per pair input, coefficients), every buffer
            // holds `rows x terms` values, and all live until the launch is enqueued.
            unsafe { b.launch(cfg) }.w()?;
            let vdata = input.slice(vs.offset + terms.start * e..vs.offset + terms.end * e);
            // Row-major out_blk (rows x E) is column-major out^T (E x rows, ld E):
            // out^T += V_blk^T C_blk^T, V_blk^T column-major E x terms (ld E), C^T transposed.
            gemm(
                &blas,
                (false, true),
                (e, rows.len(), terms.len()),
                (&vdata, e),
                (&coef.slice(..), rows.len()),
                T::ONE,
                (&mut out, e, rows.start * e),
            )?;
            if mm.u.is_some() {
                // csum_blk (rows) += C_blk (column-major rows x terms, ld rows) 1.
                gemm(
                    &blas,
                    (false, false),
                    (rows.len(), 1, terms.len()),
                    (&coef.slice(..), rows.len()),
                    (&ones.slice(..), terms.len()),
                    T::ONE,
                    (&mut csum, plan.rows, rows.start),
                )?;
            }
        }
        let (n, ee) = (int("rows", plan.rows)?, int("columns", e)?);
        let (v_sign, u_sign) = (T::sign(mm.v_neg), T::sign(mm.u.is_some_and(|u| u.1)));
        let u = mm.u.map(|(u, _)| {
            let us = &plan.vars[u];
            input.slice(us.offset..us.offset + us.rows * e)
        });
        let mut b = stream.launch_builder(&helpers.finish_matmul);
        b.arg(&mut out);
        let null: u64 = 0;
        match &u {
            Some(u) => b.arg(u),
            None => b.arg(&null),
        };
        b.arg(&csum);
        b.arg(&n);
        b.arg(&ee);
        b.arg(&v_sign);
        b.arg(&u_sign);
        // SAFETY: the arguments match `<name>_finish_matmul(out, u, csum, rows, e, v_sign,
        // u_sign)`: `out` and `u` hold `rows x e` values (`u` may be null), `csum` `rows`.
        unsafe { b.launch(helper_cfg(plan.rows * e)) }.w()?;
        return Ok(Outputs {
            primary: CudaStorage::wrap_cuda_slice(out, dev.clone()),
            indices: None,
        });
    }
    let Loaded::Reduction { main, combine } = loaded else {
        return Err(Error::Backend {
            what: "CUDA block path",
            detail: format!("module {} has no main kernel", k.name),
        }
        .into());
    };
    let sched = schedule(
        k,
        (plan.rows, plan.terms),
        npairs,
        elem,
        bp.block_bytes,
        multiprocessors(dev),
    );
    let most = sched
        .iter()
        .flat_map(|rb| rb.terms.iter().map(|l| rb.rows.len() * l.terms.len()))
        .max()
        .unwrap_or(1);
    let most_parts = sched
        .iter()
        .map(|rb| {
            if rb.chunks > 1 {
                rb.chunks * rb.rows.len()
            } else {
                1
            }
        })
        .max()
        .unwrap_or(1);
    let mut bufs: Vec<CudaSlice<T>> = (0..npairs).map(|_| alloc(most)).collect::<Result<_, _>>()?;
    let mut out_vals: CudaSlice<T> = alloc(plan.rows * k.out_vals)?;
    let mut out_idx: CudaSlice<i64> = dev.alloc_zeros::<i64>((plan.rows * k.out_idx).max(1))?;
    let part_vals: CudaSlice<f64> = dev.alloc_zeros::<f64>((most_parts * k.state_vals).max(1))?;
    let part_idx: CudaSlice<i64> = dev.alloc_zeros::<i64>((most_parts * k.state_idx).max(1))?;
    for rb in &sched {
        let n = int("rows", rb.rows.len())?;
        let mut ov = out_vals.slice_mut(rb.rows.start * k.out_vals..);
        let mut oi = out_idx.slice_mut(rb.rows.start * k.out_idx..);
        for l in &rb.terms {
            inner_products(
                &blas,
                helpers,
                &norms,
                plan,
                bp,
                &input,
                (&rb.rows, &l.terms),
                &mut bufs,
            )?;
            let m = int("terms", l.terms.len())?;
            let chunk = int("terms per chunk", l.grid.chunk)?;
            let jbase = l.terms.start as i64;
            let offs = offsets(plan, rb.rows.start, l.terms.start);
            let mut b = stream.launch_builder(main);
            b.arg(&input);
            for o in &offs {
                b.arg(o);
            }
            b.arg(&n);
            b.arg(&m);
            b.arg(&chunk);
            b.arg(&mut ov);
            b.arg(&mut oi);
            b.arg(&part_vals);
            b.arg(&part_idx);
            for s in &bufs {
                b.arg(s);
            }
            b.arg(&jbase);
            b.arg(&l.chunk_base);
            let cfg = LaunchConfig {
                grid_dim: (l.grid.blocks_x as u32, l.grid.chunks as u32, 1),
                block_dim: (k.block as u32, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: the arguments match the generated signature (input, one offset per
            // variable, rows, terms, chunk, outputs from the row block's first row, chunk
            // states, one block per pair input, first term, first chunk); the blocks hold
            // `rows x terms` values, the chunk states the row block's chunks, and all live
            // until the launch is enqueued.
            unsafe { b.launch(cfg) }.w()?;
        }
        if rb.chunks > 1 {
            let chunks = int("chunks", rb.chunks)?;
            let mut b = stream.launch_builder(combine);
            b.arg(&n);
            b.arg(&chunks);
            b.arg(&part_vals);
            b.arg(&part_idx);
            b.arg(&mut ov);
            b.arg(&mut oi);
            let cfg = LaunchConfig {
                grid_dim: (rb.rows.len().div_ceil(256) as u32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: as above, for the combine kernel's signature.
            unsafe { b.launch(cfg) }.w()?;
        }
    }
    Ok(outputs(k, out_vals, out_idx, dev))
}
