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
//! let k_ij = (-x_i.sqdist(&y_j) / (2.0 * s.square())).exp(); // Gaussian kernel, lazily
//! let out = (k_ij * b_j).sum(Axis::J)?;                      // (1000, 2): K @ b
//! assert_eq!(out.dims(), &[1000, 2]);
//! let knn = x_i.sqdist(&y_j).argkmin(5, Axis::J)?;          // (1000, 5) i64 indices
//! let lse = (-x_i.sqdist(&y_j)).logsumexp(Axis::J)?;        // (1000, 1)
//! # Ok::<(), candle_core::Error>(())
//! ```
//!
//! Gradients flow through Candle's autodiff: bind a `Var` and call `backward()`. The gradient
//! reductions are built symbolically and run by the same backend, so they are lazy too.
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//! use lazy_kernels::{Axis, LazyTensor};
//! let dev = Device::Cpu;
//! let x = Var::new(&[[0f64], [1.0]], &dev)?;                   // (M, D) = (2, 1), learnable
//! let y = Tensor::new(&[[0f64], [2.0], [3.0]], &dev)?;         // (N, D) = (3, 1)
//! let sigma = Var::new(&[0.5f64], &dev)?;                      // a learnable bandwidth
//! let (x_i, y_j) = (LazyTensor::vi(x.as_tensor())?, LazyTensor::vj(&y)?);
//! let s = LazyTensor::param(sigma.as_tensor())?;
//! let out = (-x_i.sqdist(&y_j) / (2.0 * s.square())).exp().sum(Axis::J)?; // (2, 1)
//! let grads = out.sum_all()?.backward()?;
//! let gx = grads.get(&x).expect("x is a Var").to_vec2::<f64>()?;      // (2, 1), like x
//! // d/dx_0 of sum_j exp(-(x_0 - y_j)^2 / 0.5) = sum_j -4 (x_0 - y_j) exp(..)
//! let want: f64 = [0.0f64, 2.0, 3.0].iter().map(|y| -4.0 * (0.0 - y) * (-(0.0 - y) * (0.0 - y) / 0.5).exp()).sum();
//! assert!((gx[0][0] - want).abs() < 1e-12);
//! assert_eq!(grads.get(&sigma).expect("sigma is a Var").dims(), &[1]);
//! # Ok::<(), candle_core::Error>(())
//! ```
//!
//! A formula of `i`- and `j`-variables is a matrix, as in KeOps: [`LazyTensor::matmul`]
//! (`K @ b`), [`LazyTensor::t`] and [`LazyTensor::solve`] (`K.solve(b, alpha)`, by
//! preconditioned conjugate gradients). Variables of `(B, M, D)` tensors make a batch of
//! reductions ([`LazyTensor::param_batched`]).
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use lazy_kernels::{LazyTensor, SolveOptions};
//! let x = Tensor::rand(0f64, 1., (300, 1), &Device::Cpu)?;
//! let b = (&x * 6.0)?.sin()?;
//! let gaussian_kernel = |x: &Tensor, y: &Tensor| -> candle_core::Result<LazyTensor> {
//!     let (x_i, y_j) = (LazyTensor::vi(x)?, LazyTensor::vj(y)?);
//!     Ok((-x_i.sqdist(&y_j) / (2.0 * 0.1 * 0.1)).exp())
//! };
//! let (a, info) = gaussian_kernel(&x, &x)?.solve(&b, 0.1, &SolveOptions::default())?;
//! assert!(info.all_converged());
//! let t = Tensor::new(&[[0.5f64]], &Device::Cpu)?;
//! let mean_t = gaussian_kernel(&t, &x)?.matmul(&a)?;                  // K_tx @ a: (1, 1)
//! assert!((mean_t.to_vec2::<f64>()?[0][0] - 3f64.sin()).abs() < 0.2);
//! # Ok::<(), candle_core::Error>(())
//! ```
//!
//! Layers, from the bottom: [`math`] (the compute types and branchless, vectorisable scalar
//! functions; it imports nothing from the crate), [`formula`] (pure symbolic formulas:
//! expressions, the op table that defines every op in one row, parser, simplifier; nothing
//! from `backend`), [`reduction`] (the reduction kinds, one file per family, each with its
//! host protocol, CPU tile loop, CUDA state code and gradient rule), [`backend`] (the
//! devices' executors: the CPU's SIMD tile executor, and generated CUDA kernels with feature
//! `cuda`, behind one dispatch point from a Candle device to its backend), [`op`] (binding,
//! input checks, planning, with the block path of matrix products for inner products of high
//! dimension in [`op::gram`], and the Candle custom op that hands a plan to the backend) and
//! [`lazy`] (the [`LazyTensor`] builder and its symbolic-matrix methods; batches in
//! `op::batch`), with [`ranges`] (block-sparse reductions, KeOps'
//! `ranges`: clusters of rows and the kept blocks of cluster pairs, which a reduction visits
//! alone; [`LazyTensor::with_ranges`]). [`formula::grad()`] differentiates formulas and
//! `op`'s backward pass turns the gradient of each reduction into new reductions. On top:
//! [`operator`] (kernel matrices as linear operators), [`solve`] (preconditioned conjugate
//! gradients, log-determinants) and [`gp`] (exact Gaussian processes). Beside them, [`dist`]
//! splits all of these over ranks (MPI processes with feature `mpi`, GPUs with `nccl`):
//! [`KernelOperator::shard`], [`LazyTensor::shard`], [`gp::ExactGp::shard`].

#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(rustdoc::broken_intra_doc_links)]

pub mod backend;
pub mod dist;
pub mod error;
pub mod formula;
pub mod gp;
pub mod lazy;
pub mod linalg;
pub mod math;
pub mod op;
pub mod operator;
mod progress;
pub mod ranges;
pub mod reduction;
pub mod solve;

/// The Candle this crate is built against, re-exported (as Candle's own crates do) so that a
/// user's tensors and this crate's are always of the same version:
/// `use lazy_kernels::candle_core::{Device, Tensor};`.
pub use candle_core;
/// Candle's neural-network crate at the version this crate uses (its optimisers drive
/// [`gp::ExactGp::fit`]).
pub use candle_nn;
pub use error::Error;
pub use lazy::LazyTensor;
pub use op::ReductionOutput;
pub use op::gram::{Path, PathReport, Precision, ReductionOptions};
pub use operator::{Kernel, KernelOperator, Nu};
pub use ranges::{BlockSparse, Clusters};
pub use reduction::{Axis, Reduction, ReductionKind};
pub use solve::{
    LogdetEstimator, LogdetInfo, LogdetOptions, Preconditioner, Rank, Ridge, SolveInfo,
    SolveOptions, Stop,
};
