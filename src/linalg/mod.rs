//! Matrix products that every Candle backend accepts, written once, and the dense
//! factorisation built on them ([`Cholesky`], blocked, on any device).
//!
//! Candle's CPU matmul takes operands of any strides; its CUDA matmul hands them to cuBLAS,
//! which takes a matrix only if it is row-major or column-major with unit stride along one
//! axis (a plain transpose is fine, a column cut out of a wider matrix and transposed is not).
//! A product that runs on the CPU can therefore fail on a GPU, and no CPU test sees it: the
//! first GPU run of this crate failed every preconditioned solve this way (a `(1, r)` operand
//! with strides `(1, N)` in the pivoted-Cholesky factor).
//!
//! So every matrix product of the crate goes through [`matmul`], and the rule cuBLAS applies
//! is written here once, as [`cublas_layout_error`] (a copy of the checks of Candle 0.11's
//! `gemm_config`). In builds with debug assertions (`cargo test`) a product whose operands
//! cuBLAS would reject is an error on every device, so the CPU test suite catches a strided
//! operand at its call site; in release builds such an operand is made contiguous first, so a
//! case the tests missed costs a copy, never a failed GPU run. `clippy.toml` forbids calling
//! `Tensor::matmul` anywhere else.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use lazy_kernels::linalg;
//! let a = Tensor::arange(0f32, 12., &Device::Cpu)?.reshape((3, 4))?;
//! let col = a.narrow(1, 2, 1)?.t()?;                       // (1, 3), strides (1, 4)
//! assert!(linalg::cublas_layout_error(col.layout(), a.layout()).is_some());
//! let ok = col.contiguous()?;
//! assert!(linalg::cublas_layout_error(ok.layout(), a.layout()).is_none());
//! assert_eq!(linalg::matmul(&ok, &a)?.dims(), &[1, 4]);
//! # Ok::<(), candle_core::Error>(())
//! ```

use candle_core::{Layout, Tensor};

use crate::error::Error;

pub mod cholesky;
pub use cholesky::Cholesky;

/// Why cuBLAS (through Candle's CUDA matmul) would reject the product of operands with these
/// layouts (`lhs`: `(.., M, K)`, `rhs`: `(.., K, N)`), or `None` if it accepts them.
///
/// The rule, per operand: the last two axes must be row-major (unit stride along the last
/// axis, the row stride equal to the row length) or column-major (the transpose of that); an
/// axis of length one may have any stride. Batch axes (at most two) must be evenly strided.
/// Products with no element (`M`, `N` or `K` zero) never reach cuBLAS and are accepted.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use lazy_kernels::linalg::cublas_layout_error;
/// let x = Tensor::zeros((5, 8), candle_core::DType::F32, &Device::Cpu)?;
/// assert!(cublas_layout_error(x.layout(), x.t()?.layout()).is_none()); // x x^T
/// let strided = x.narrow(1, 0, 2)?;                                    // (5, 2), strides (8, 1)
/// assert!(cublas_layout_error(x.t()?.layout(), strided.layout()).is_some());
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn cublas_layout_error(lhs: &Layout, rhs: &Layout) -> Option<String> {
    let (ld, rd) = (lhs.dims(), rhs.dims());
    let rank = ld.len();
    if rank < 2 || rd.len() != rank {
        // Candle reports the shape mismatch itself.
        return None;
    }
    let (m, k, n) = (ld[rank - 2], ld[rank - 1], rd[rank - 1]);
    let batch: usize = ld[..rank - 2].iter().product();
    if m == 0 || n == 0 || k == 0 || batch == 0 {
        return None;
    }
    let (ls, rs) = (lhs.stride(), rhs.stride());
    let describe = |what: &str| {
        format!(
            "cuBLAS rejects the {what} operand of this matrix product: lhs {ld:?} with strides \
             {ls:?}, rhs {rd:?} with strides {rs:?} (each operand must be row- or column-major \
             in its last two axes)"
        )
    };
    // The last two axes of an (rows, cols) operand.
    let matrix_ok = |s: &[usize], rows: usize, cols: usize| {
        let (s1, s2) = (s[s.len() - 1], s[s.len() - 2]);
        let row_major = (s1 == 1 || cols == 1) && (s2 == cols || rows == 1);
        let col_major = (s1 == rows || cols == 1) && (s2 == 1 || rows == 1);
        row_major || col_major
    };
    if !matrix_ok(rs, k, n) {
        return Some(describe("right"));
    }
    if !matrix_ok(ls, m, k) {
        return Some(describe("left"));
    }
    let batch_ok = |s: &[usize], d: &[usize]| match (&s[..s.len() - 2], &d[..d.len() - 2]) {
        ([], _) | ([_], _) => true,
        ([s0, s1], [d0, d1]) => *s0 == s1 * d1 || *d0 == 1 || *d1 == 1,
        _ => false,
    };
    if !batch_ok(ls, ld) {
        return Some(describe("left (batch axes)"));
    }
    if !batch_ok(rs, rd) {
        return Some(describe("right (batch axes)"));
    }
    None
}

/// `a @ b` (Candle's `matmul`), with operands every backend accepts (see the module's doc).
///
/// With debug assertions, operands that cuBLAS would reject are an error naming the caller,
/// on every device; without, they are made contiguous first.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let a = Tensor::new(&[[1f64, 2.], [3., 4.]], &Device::Cpu)?;
/// let p = lazy_kernels::linalg::matmul(&a, &a.t()?)?;   // a a^T: a transpose is accepted
/// assert_eq!(p.to_vec2::<f64>()?, vec![vec![5., 11.], vec![11., 25.]]);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[track_caller]
pub fn matmul(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    if let Some(why) = cublas_layout_error(a.layout(), b.layout()) {
        if cfg!(debug_assertions) {
            let at = std::panic::Location::caller();
            return Err(Error::InvalidArgument {
                op: "matmul",
                detail: format!(
                    "{why}; called from {}:{} (a bug of lazy-kernels: give this product \
                     contiguous operands)",
                    at.file(),
                    at.line()
                ),
            }
            .into());
        }
        return product(&a.contiguous()?, &b.contiguous()?);
    }
    product(a, b)
}

#[allow(clippy::disallowed_methods)] // The one call of `Tensor::matmul`.
fn product(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    a.matmul(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// The operand that failed every preconditioned solve on the first GPU run
    /// (`src/solve/pivoted_cholesky.rs`, `done.narrow(1, piv, 1)?.t()?`), with the layout in
    /// cuBLAS's error: `[1, 2]`, strides `[1, 2000]`.
    #[test]
    fn the_first_gpu_runs_failing_operand_is_rejected_on_the_cpu() {
        let done = Tensor::rand(0f64, 1., (2, 2000), &Device::Cpu).unwrap();
        let coef = done.narrow(1, 17, 1).unwrap().t().unwrap();
        assert_eq!((coef.dims(), coef.stride()), (&[1, 2][..], &[1, 2000][..]));
        let why = cublas_layout_error(coef.layout(), done.layout()).expect("rejected");
        assert!(
            why.contains("left operand") && why.contains("[1, 2000]"),
            "{why}"
        );
        // Candle's CPU matmul takes it: only the rule above makes the CPU suite see it.
        #[allow(clippy::disallowed_methods)]
        let cpu = coef.matmul(&done).unwrap();
        let err = matmul(&coef, &done);
        if cfg!(debug_assertions) {
            let msg = err.unwrap_err().to_string();
            assert!(msg.contains("linalg/mod.rs"), "names the caller: {msg}");
        } else {
            let got = err.unwrap();
            let diff = (got - &cpu).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(diff.to_scalar::<f64>().unwrap(), 0.0);
        }
        // Contiguous, it is accepted.
        let fixed = coef.contiguous().unwrap();
        assert!(cublas_layout_error(fixed.layout(), done.layout()).is_none());
        let got = matmul(&fixed, &done).unwrap();
        let diff = (got - cpu).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f64>().unwrap(), 0.0);
    }

    #[test]
    fn accepted_and_rejected_layouts() {
        let dev = Device::Cpu;
        let t = |r: usize, c: usize| Tensor::zeros((r, c), DType::F32, &dev).unwrap();
        let ok = |a: &Tensor, b: &Tensor| cublas_layout_error(a.layout(), b.layout()).is_none();
        let (a, b) = (t(4, 6), t(6, 5));
        assert!(ok(&a, &b));
        assert!(
            ok(&t(6, 4).t().unwrap(), &t(5, 6).t().unwrap()),
            "transposes"
        );
        // A row of a matrix is fine; a column of a wider one is not, either way round.
        assert!(
            ok(&a.narrow(0, 1, 1).unwrap(), &b),
            "(1, 6) with strides (6, 1)"
        );
        let col = a.narrow(1, 2, 1).unwrap();
        assert!(
            !ok(&col.t().unwrap(), &t(4, 3)),
            "(1, 4) with strides (1, 6)"
        );
        assert!(!ok(&t(3, 4), &col), "(4, 1) with strides (6, 1)");
        // A block of columns of a wider matrix is neither row- nor column-major.
        let block = a.narrow(1, 1, 3).unwrap();
        assert!(!ok(&block, &t(3, 2)), "left (4, 3) with strides (6, 1)");
        assert!(!ok(&t(2, 4), &block), "right (4, 3) with strides (6, 1)");
        assert!(
            !ok(&block.t().unwrap(), &t(4, 2)),
            "left (3, 4) with strides (1, 6)"
        );
        // (N, 1) cut from (N, E): rejected on the right of a product (the solve's b).
        let b_col = t(7, 3).narrow(1, 0, 1).unwrap();
        assert!(!ok(&t(2, 7), &b_col));
        assert!(ok(&t(2, 7), &b_col.contiguous().unwrap()));
        // Empty products never reach cuBLAS.
        assert!(ok(&t(0, 3), &block.narrow(0, 0, 3).unwrap()));
        // Batches: evenly strided batch axes only.
        let b3 = Tensor::zeros((2, 4, 6), DType::F32, &dev).unwrap();
        assert!(ok(
            &b3,
            &Tensor::zeros((2, 6, 3), DType::F32, &dev).unwrap()
        ));
        let b4 = Tensor::zeros((3, 2, 4, 6), DType::F32, &dev).unwrap();
        let cut = b4
            .narrow(1, 0, 1)
            .unwrap()
            .broadcast_as((3, 2, 4, 6))
            .unwrap();
        let rhs = Tensor::zeros((3, 2, 6, 1), DType::F32, &dev).unwrap();
        assert!(!ok(&cut, &rhs), "strides {:?}", cut.stride());
    }
}
