//! # lazy-kernels
//!
//! Symbolic kernel reductions for [Candle](https://github.com/huggingface/candle): sums,
//! log-sum-exps, minima and k-nearest neighbours over all pairs `(i, j)` of two point sets,
//! computed from a formula `F(x_i, y_j, p)` without ever building the `M x N` matrix
//! (KeOps' `LazyTensor`, in Rust).
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use lazy_kernels::{Axis, LazyTensor};
//! let dev = Device::Cpu;
//! let x = Tensor::rand(0f32, 1., (1000, 3), &dev)?;
//! let y = Tensor::rand(0f32, 1., (2000, 3), &dev)?;
//! let b = Tensor::rand(0f32, 1., (2000, 2), &dev)?;
//! let sigma = Tensor::new(&[0.5f32], &dev)?;
//! let (x_i, y_j, b_j) = (LazyTensor::vi(&x)?, LazyTensor::vj(&y)?, LazyTensor::vj(&b)?);
//! let s = LazyTensor::param(&sigma)?;
//! let k_ij = (-x_i.sqdist(&y_j)? / (2.0 * s.square())).exp(); // Gaussian kernel, lazily
//! let out = (k_ij * b_j).sum(Axis::J)?;                      // (1000, 2): K @ b
//! assert_eq!(out.dims(), &[1000, 2]);
//! let knn = x_i.sqdist(&y_j)?.argkmin(5, Axis::J)?;          // (1000, 5) i64 indices
//! let lse = (-x_i.sqdist(&y_j)?).logsumexp(Axis::J)?;        // (1000, 1)
//! # Ok::<(), candle_core::Error>(())
//! ```
//!
//! Layers, from the bottom: [`formula`] (pure symbolic formulas: expressions, parser,
//! simplifier), [`reduction`] (what is reduced and how partial results combine), [`backend`]
//! (the CPU tile executor; CUDA later), [`op`] (the Candle custom op and input checks) and
//! [`lazy`] (the [`LazyTensor`] builder). Gradients (`bwd`) are not implemented yet: a
//! backward pass through a reduction returns an error saying so.

#![deny(missing_docs)]
#![warn(rustdoc::broken_intra_doc_links)]

pub mod backend;
pub mod error;
pub mod formula;
pub mod lazy;
pub mod op;
pub mod reduction;

pub use error::Error;
pub use lazy::LazyTensor;
pub use op::ReductionOutput;
pub use reduction::{Axis, Reduction, ReductionKind};
