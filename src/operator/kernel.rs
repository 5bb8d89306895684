//! Covariance kernels as symbolic formulas: the stationary families, the linear kernel, and
//! sums, products and positive scalings of kernels.
//!
//! A [`Kernel`] is a description; [`Kernel::formula`] turns it into a [`LazyTensor`] over the
//! pairs of two point sets. Every hyperparameter is a Candle tensor, bound into the formula,
//! so a `Var` there is learned by `backward()`. Lengthscales (and periods) are applied to the
//! points by Candle ops before the formula (`x / l`), so that the formula itself is the plain
//! radial shape the backends fuse (`exp(-|x - y|^2 / 2)`), and the gradient with respect to
//! `l` flows through those ops.

use std::fmt;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::LazyTensor;
use crate::error::Error;
use crate::formula::VarCat;

/// A user formula `k(x_i, y_j)`, given the two points as lazy variables.
pub type KernelFn =
    dyn Fn(&LazyTensor, &LazyTensor) -> candle_core::Result<LazyTensor> + Send + Sync;

/// The smoothness of a Matern kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nu {
    /// `nu = 1/2`: `exp(-r)` (the Laplacian or exponential kernel).
    Half,
    /// `nu = 3/2`: `(1 + sqrt(3) r) exp(-sqrt(3) r)`.
    ThreeHalves,
    /// `nu = 5/2`: `(1 + sqrt(5) r + 5 r^2 / 3) exp(-sqrt(5) r)`.
    FiveHalves,
}

#[derive(Clone)]
enum Node {
    Gaussian {
        lengthscale: Tensor,
    },
    Matern {
        nu: Nu,
        lengthscale: Tensor,
    },
    RationalQuadratic {
        lengthscale: Tensor,
        alpha: Tensor,
    },
    Periodic {
        lengthscale: Tensor,
        period: Tensor,
    },
    Linear,
    Scale {
        scale: Tensor,
        kernel: Arc<Kernel>,
    },
    Sum(Arc<Kernel>, Arc<Kernel>),
    Product(Arc<Kernel>, Arc<Kernel>),
    Formula(Arc<KernelFn>),
    /// A symbolic matrix `K_ij` of one `i`- and one `j`-variable, rebound to other points.
    Lazy(Arc<LazyTensor>),
}

/// A covariance kernel `k(x, y)` between points of `R^D`.
///
/// `r` below is the scaled distance `|(x - y) / l|`, with a lengthscale `l` of shape `(1,)`
/// (isotropic; a scalar tensor is accepted too) or `(D,)` (one per dimension).
///
/// ```
/// use candle_core::{Device, Tensor, Var};
/// use lazy_kernels::{Kernel, KernelOperator};
/// let dev = Device::Cpu;
/// let l = Var::new(&[0.5f64], &dev)?;                    // learnable lengthscale
/// let c = Tensor::new(&[2.0f64], &dev)?;                 // output scale
/// let k = Kernel::gaussian(l.as_tensor()).scale(&c) + Kernel::linear();
/// let x = Tensor::new(&[[0f64], [1.0]], &dev)?;
/// let dense = KernelOperator::new(k, &x, &x)?.to_dense()?.to_vec2::<f64>()?;
/// let want = 2.0 * (-0.5f64 / 0.25).exp();               // 2 exp(-r^2/2) + x y at (0, 1)
/// assert!((dense[0][1] - want).abs() < 1e-12);
/// assert!((dense[1][1] - 3.0).abs() < 1e-12);            // 2 + 1 * 1
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Clone)]
pub struct Kernel {
    node: Node,
    /// Nesting of sums, products and scales (1 for a base kernel).
    depth: usize,
}

/// The deepest composition of kernels (sums, products, scales) a [`crate::KernelOperator`]
/// takes: building, cloning and dropping deeper ones works (they never recurse), but building
/// the operator's formula does (about 4 KiB of stack per level in a debug build: 256 levels
/// use half of a spawned thread's 2 MiB), so [`crate::KernelOperator::new`] refuses them with
/// an error.
pub const MAX_KERNEL_DEPTH: usize = 256;

/// Dropping a kernel frees its sub-kernels one after another, without recursion, so that a
/// sum of a million kernels cannot overflow the stack.
impl Drop for Kernel {
    fn drop(&mut self) {
        let mut stack: Vec<Arc<Kernel>> = Vec::new();
        let take = |node: &mut Node, stack: &mut Vec<Arc<Kernel>>| match std::mem::replace(
            node,
            Node::Linear,
        ) {
            Node::Sum(a, b) | Node::Product(a, b) => stack.extend([a, b]),
            Node::Scale { kernel, .. } => stack.push(kernel),
            _ => {}
        };
        take(&mut self.node, &mut stack);
        while let Some(k) = stack.pop() {
            // The last reference to a sub-kernel: take its children before it is freed.
            if let Ok(mut k) = Arc::try_unwrap(k) {
                take(&mut k.node, &mut stack);
            }
        }
    }
}

impl fmt::Debug for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.depth > MAX_KERNEL_DEPTH {
            return write!(f, "Kernel({} levels deep)", self.depth);
        }
        match &self.node {
            Node::Gaussian { lengthscale } => write!(f, "Gaussian(l{:?})", lengthscale.dims()),
            Node::Matern { nu, lengthscale } => {
                write!(f, "Matern({nu:?}, l{:?})", lengthscale.dims())
            }
            Node::RationalQuadratic { lengthscale, .. } => {
                write!(f, "RationalQuadratic(l{:?})", lengthscale.dims())
            }
            Node::Periodic {
                lengthscale,
                period,
            } => write!(
                f,
                "Periodic(l{:?}, p{:?})",
                lengthscale.dims(),
                period.dims()
            ),
            Node::Linear => write!(f, "Linear"),
            Node::Scale { kernel, .. } => write!(f, "c * {kernel:?}"),
            Node::Sum(a, b) => write!(f, "({a:?} + {b:?})"),
            Node::Product(a, b) => write!(f, "({a:?} * {b:?})"),
            Node::Formula(_) => write!(f, "Formula"),
            Node::Lazy(k) => match k.expr() {
                Ok(e) => write!(f, "LazyTensor({})", e.brief()),
                Err(_) => write!(f, "LazyTensor(<error>)"),
            },
        }
    }
}

fn kernel(node: Node) -> Kernel {
    let depth = match &node {
        Node::Sum(a, b) | Node::Product(a, b) => 1 + a.depth.max(b.depth),
        Node::Scale { kernel, .. } => 1 + kernel.depth,
        _ => 1,
    };
    Kernel { node, depth }
}

impl Kernel {
    /// The Gaussian (squared-exponential, RBF) kernel `exp(-r^2 / 2)`.
    pub fn gaussian(lengthscale: &Tensor) -> Kernel {
        kernel(Node::Gaussian {
            lengthscale: lengthscale.clone(),
        })
    }

    /// The Laplacian (exponential) kernel `exp(-r)`, which is [`Kernel::matern12`].
    pub fn laplacian(lengthscale: &Tensor) -> Kernel {
        Kernel::matern(Nu::Half, lengthscale)
    }

    /// The Matern kernel of smoothness `nu`.
    pub fn matern(nu: Nu, lengthscale: &Tensor) -> Kernel {
        kernel(Node::Matern {
            nu,
            lengthscale: lengthscale.clone(),
        })
    }

    /// Matern 1/2: `exp(-r)`.
    pub fn matern12(lengthscale: &Tensor) -> Kernel {
        Kernel::matern(Nu::Half, lengthscale)
    }

    /// Matern 3/2: `(1 + sqrt(3) r) exp(-sqrt(3) r)`.
    pub fn matern32(lengthscale: &Tensor) -> Kernel {
        Kernel::matern(Nu::ThreeHalves, lengthscale)
    }

    /// Matern 5/2: `(1 + sqrt(5) r + 5 r^2 / 3) exp(-sqrt(5) r)`.
    pub fn matern52(lengthscale: &Tensor) -> Kernel {
        Kernel::matern(Nu::FiveHalves, lengthscale)
    }

    /// The rational quadratic kernel `(1 + r^2 / (2 alpha))^(-alpha)`, `alpha` of shape `(1,)`.
    pub fn rational_quadratic(lengthscale: &Tensor, alpha: &Tensor) -> Kernel {
        kernel(Node::RationalQuadratic {
            lengthscale: lengthscale.clone(),
            alpha: alpha.clone(),
        })
    }

    /// The periodic kernel `exp(-2 sum_d sin^2(pi (x_d - y_d) / p_d) / l_d^2)` (MacKay's; the
    /// form of GPyTorch and of Rasmussen & Williams eq. 5.16 in 1D). Lengthscale and period
    /// each have shape `(1,)` or `(D,)`.
    pub fn periodic(lengthscale: &Tensor, period: &Tensor) -> Kernel {
        kernel(Node::Periodic {
            lengthscale: lengthscale.clone(),
            period: period.clone(),
        })
    }

    /// The linear kernel `x . y` (scale it with [`Kernel::scale`]).
    pub fn linear() -> Kernel {
        kernel(Node::Linear)
    }

    /// A kernel from any formula `k(x_i, y_j)` of one component. It should be symmetric and
    /// positive semi-definite for [`crate::KernelOperator::solve`]; nothing can check that.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use lazy_kernels::{Kernel, KernelOperator};
    /// // The inverse multiquadric kernel 1 / sqrt(1 + |x - y|^2).
    /// let k = Kernel::from_formula(|x, y| Ok((x.sqdist(y) + 1.0).rsqrt()));
    /// let x = Tensor::new(&[[0f64], [1.0]], &Device::Cpu)?;
    /// let d = KernelOperator::new(k, &x, &x)?.to_dense()?.to_vec2::<f64>()?;
    /// assert!((d[0][1] - 0.5f64.sqrt()).abs() < 1e-12);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn from_formula<F>(f: F) -> Kernel
    where
        F: Fn(&LazyTensor, &LazyTensor) -> candle_core::Result<LazyTensor> + Send + Sync + 'static,
    {
        kernel(Node::Formula(Arc::new(f)))
    }

    /// The kernel of a symbolic matrix `K_ij = k(x_i, y_j)`: a one-component formula of one
    /// `i`-variable, one `j`-variable and parameters, with the points it is bound to (`x`,
    /// `y`), what [`crate::KernelOperator::from_lazy`] builds on.
    pub(crate) fn of_lazy(
        k_ij: &LazyTensor,
        op: &'static str,
    ) -> candle_core::Result<(Kernel, Tensor, Tensor)> {
        let dim = k_ij.dim()?;
        if dim != 1 {
            return Err(Error::Shape {
                op,
                detail: format!(
                    "a kernel matrix is a formula of one component, this one has {dim}"
                ),
            }
            .into());
        }
        if k_ij.has_ranges() {
            return Err(Error::NotImplemented {
                what: "a kernel operator (or solve) of a block-sparse LazyTensor",
                detail: "its reductions (`matmul`, `sum`, ...) take the ranges; the operator's \
                         rows, diagonal and preconditioner do not yet"
                    .into(),
            }
            .into());
        }
        if k_ij.is_batched() {
            return Err(Error::NotImplemented {
                what: "a kernel operator (or solve) of a batched LazyTensor",
                detail: "its reductions and `matmul` are batched; solve each batch's \
                         formula (`Tensor::get(b)`) on its own"
                    .into(),
            }
            .into());
        }
        let (x, y) = k_ij.pair_points(op)?;
        Ok((kernel(Node::Lazy(Arc::new(k_ij.clone()))), x, y))
    }

    /// Whether the kernel holds a user formula (a closure or a symbolic matrix), which nothing
    /// guarantees symmetric.
    pub(crate) fn has_formula(&self) -> bool {
        if self.depth > MAX_KERNEL_DEPTH {
            return false; // never recursed into: `check` refuses such a kernel
        }
        match &self.node {
            Node::Formula(_) | Node::Lazy(_) => true,
            Node::Scale { kernel, .. } => kernel.has_formula(),
            Node::Sum(a, b) | Node::Product(a, b) => a.has_formula() || b.has_formula(),
            _ => false,
        }
    }

    /// `scale * k`, with `scale` a positive tensor of shape `(1,)` (or a scalar tensor).
    pub fn scale(&self, scale: &Tensor) -> Kernel {
        kernel(Node::Scale {
            scale: scale.clone(),
            kernel: Arc::new(self.clone()),
        })
    }

    /// The hyperparameter tensors, in a fixed order (for checks; a formula kernel's captured
    /// tensors are not listed; none for a kernel deeper than [`MAX_KERNEL_DEPTH`], which no
    /// operator takes).
    pub fn parameters(&self) -> Vec<Tensor> {
        let mut out = Vec::new();
        let _ = self.visit(&mut |_, _, t| {
            out.push(t.clone());
            Ok(())
        });
        out
    }

    /// Calls `f(name, per_dim, tensor)` on every hyperparameter, depth first (`per_dim`: it may
    /// have one value per dimension).
    fn visit(
        &self,
        f: &mut dyn FnMut(&'static str, bool, &Tensor) -> candle_core::Result<()>,
    ) -> candle_core::Result<()> {
        if self.depth > MAX_KERNEL_DEPTH {
            return Ok(()); // never recursed into: `check` refuses such a kernel
        }
        match &self.node {
            Node::Gaussian { lengthscale } | Node::Matern { lengthscale, .. } => {
                f("lengthscale", true, lengthscale)
            }
            Node::RationalQuadratic { lengthscale, alpha } => {
                f("lengthscale", true, lengthscale)?;
                f("rational quadratic alpha", false, alpha)
            }
            Node::Periodic {
                lengthscale,
                period,
            } => {
                f("lengthscale", true, lengthscale)?;
                f("period", true, period)
            }
            Node::Linear | Node::Formula(_) | Node::Lazy(_) => Ok(()),
            Node::Scale { scale, kernel } => {
                f("scale", false, scale)?;
                kernel.visit(f)
            }
            Node::Sum(a, b) | Node::Product(a, b) => {
                a.visit(f)?;
                b.visit(f)
            }
        }
    }

    /// The same kernel with every hyperparameter replaced by `f(hyperparameter)`.
    fn map(
        &self,
        f: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
    ) -> candle_core::Result<Kernel> {
        let node = match &self.node {
            Node::Gaussian { lengthscale } => Node::Gaussian {
                lengthscale: f(lengthscale)?,
            },
            Node::Matern { nu, lengthscale } => Node::Matern {
                nu: *nu,
                lengthscale: f(lengthscale)?,
            },
            Node::RationalQuadratic { lengthscale, alpha } => Node::RationalQuadratic {
                lengthscale: f(lengthscale)?,
                alpha: f(alpha)?,
            },
            Node::Periodic {
                lengthscale,
                period,
            } => Node::Periodic {
                lengthscale: f(lengthscale)?,
                period: f(period)?,
            },
            Node::Linear => Node::Linear,
            Node::Formula(k) => Node::Formula(k.clone()),
            Node::Lazy(k) => Node::Lazy(Arc::new(k.map_tensors(f)?)),
            Node::Scale { scale, kernel } => Node::Scale {
                scale: f(scale)?,
                kernel: Arc::new(kernel.map(f)?),
            },
            Node::Sum(a, b) => Node::Sum(Arc::new(a.map(f)?), Arc::new(b.map(f)?)),
            Node::Product(a, b) => Node::Product(Arc::new(a.map(f)?), Arc::new(b.map(f)?)),
        };
        Ok(kernel(node))
    }

    /// The same kernel with every hyperparameter detached and converted to `dtype` (a formula
    /// kernel's captured tensors are not reached: convert its bindings afterwards).
    pub(crate) fn to_dtype(&self, dtype: DType) -> candle_core::Result<Kernel> {
        self.map(&|t| t.detach().to_dtype(dtype))
    }

    /// Checks every hyperparameter against points of dimension `d`, of `dtype` on `device`:
    /// shapes, dtypes, devices, and values (finite and positive).
    pub(crate) fn check(&self, d: usize, dtype: DType, device: &Device) -> candle_core::Result<()> {
        let op = "Kernel";
        if self.depth > MAX_KERNEL_DEPTH {
            return Err(Error::InvalidArgument {
                op,
                detail: format!(
                    "the kernel nests {} sums, products and scales, more than \
                     MAX_KERNEL_DEPTH = {MAX_KERNEL_DEPTH}",
                    self.depth
                ),
            }
            .into());
        }
        self.visit(&mut |name, per_dim, t| {
            if t.dtype() != dtype {
                return Err(Error::DType {
                    op,
                    detail: format!("the {name} is {:?} but the points are {dtype:?}", t.dtype()),
                }
                .into());
            }
            if !t.device().same_device(device) {
                return Err(Error::Device {
                    op,
                    detail: format!(
                        "the {name} is on {:?} but the points are on {:?}",
                        t.device().location(),
                        device.location()
                    ),
                }
                .into());
            }
            let n = t.elem_count();
            let ok = n == 1 || (per_dim && n == d);
            if !ok || t.rank() > 1 {
                let want = if per_dim {
                    format!("(1,) or (D,) = ({d},)")
                } else {
                    "(1,)".to_string()
                };
                return Err(Error::Shape {
                    op,
                    detail: format!("the {name} has shape {:?}, expected {want}", t.dims()),
                }
                .into());
            }
            let v = t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
            if let Some(bad) = v.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
                return Err(Error::InvalidArgument {
                    op,
                    detail: format!("the {name} must be finite and positive, got {bad}"),
                }
                .into());
            }
            Ok(())
        })
    }

    /// The formula `k(x, y)` with `x` bound as a variable of category `xc` and `y` of `yc`
    /// (`(I, J)` for a kernel matrix, `(I, I)` for its values at paired rows). Both tensors are
    /// `(rows, D)`.
    pub(crate) fn formula(
        &self,
        x: &Tensor,
        xc: VarCat,
        y: &Tensor,
        yc: VarCat,
    ) -> candle_core::Result<LazyTensor> {
        // The recursion over compositions keeps a small frame (a debug build's frame of the
        // base kernels' code is about 18 KiB): `base_formula` holds that code.
        Ok(match &self.node {
            Node::Scale { scale, kernel } => {
                LazyTensor::param(&scale.flatten_all()?)? * kernel.formula(x, xc, y, yc)?
            }
            Node::Sum(a, b) => a.formula(x, xc, y, yc)? + b.formula(x, xc, y, yc)?,
            Node::Product(a, b) => a.formula(x, xc, y, yc)? * b.formula(x, xc, y, yc)?,
            _ => self.base_formula(x, xc, y, yc)?,
        })
    }

    /// [`Kernel::formula`] of a base kernel (not a sum, a product or a scale).
    #[inline(never)]
    fn base_formula(
        &self,
        x: &Tensor,
        xc: VarCat,
        y: &Tensor,
        yc: VarCat,
    ) -> candle_core::Result<LazyTensor> {
        let bind = |t: &Tensor, c: VarCat| match c {
            VarCat::I => LazyTensor::vi(t),
            VarCat::J => LazyTensor::vj(t),
            VarCat::P => LazyTensor::param(t),
        };
        let same = x.id() == y.id();
        // The points divided by the lengthscale (times a constant), bound as x_i and y_j.
        let scaled = |l: &Tensor, c: f64| -> candle_core::Result<(LazyTensor, LazyTensor)> {
            let inv = (l.flatten_all()?.recip()? * c)?.unsqueeze(0)?;
            let xs = x.broadcast_mul(&inv)?;
            let ys = if same {
                xs.clone()
            } else {
                y.broadcast_mul(&inv)?
            };
            Ok((bind(&xs, xc)?, bind(&ys, yc)?))
        };
        Ok(match &self.node {
            Node::Gaussian { lengthscale } => {
                let (a, b) = scaled(lengthscale, 1.0)?;
                (a.sqdist(&b) * -0.5).exp()
            }
            Node::Matern { nu, lengthscale } => {
                let c = match nu {
                    Nu::Half => 1.0,
                    Nu::ThreeHalves => 3f64.sqrt(),
                    Nu::FiveHalves => 5f64.sqrt(),
                };
                let (a, b) = scaled(lengthscale, c)?;
                let d2 = a.sqdist(&b);
                let r = d2.sqrt();
                let e = (-r.clone()).exp();
                match nu {
                    Nu::Half => e,
                    Nu::ThreeHalves => (r + 1.0) * e,
                    Nu::FiveHalves => (r + d2 * (1.0 / 3.0) + 1.0) * e,
                }
            }
            Node::RationalQuadratic { lengthscale, alpha } => {
                let (a, b) = scaled(lengthscale, 1.0)?;
                let alpha = alpha.flatten_all()?;
                let half_inv = LazyTensor::param(&(alpha.recip()? * 0.5)?)?;
                let neg = LazyTensor::param(&alpha.neg()?)?;
                (a.sqdist(&b) * half_inv + 1.0).powf(&neg)
            }
            Node::Periodic {
                lengthscale,
                period,
            } => {
                let (a, b) = scaled(period, std::f64::consts::PI)?;
                let w = LazyTensor::param(&(lengthscale.flatten_all()?.sqr()?.recip()? * -2.0)?)?;
                ((a - b).sin().square() * w).component_sum().exp()
            }
            Node::Linear => bind(x, xc)?.dot(&bind(y, yc)?),
            Node::Scale { .. } | Node::Sum(..) | Node::Product(..) => {
                return self.formula(x, xc, y, yc);
            }
            Node::Lazy(k) => k.rebind_pair(x, xc, y, yc)?,
            Node::Formula(f) => {
                let k = f(&bind(x, xc)?, &bind(y, yc)?)?;
                let dim = k.dim()?;
                if dim != 1 {
                    return Err(Error::Shape {
                        op: "Kernel::from_formula",
                        detail: format!(
                            "a kernel formula must have one component, this one has {dim}"
                        ),
                    }
                    .into());
                }
                k
            }
        })
    }
}

impl std::ops::Add for Kernel {
    type Output = Kernel;
    /// The sum of two kernels.
    fn add(self, rhs: Kernel) -> Kernel {
        kernel(Node::Sum(Arc::new(self), Arc::new(rhs)))
    }
}

impl std::ops::Mul for Kernel {
    type Output = Kernel;
    /// The product of two kernels.
    fn mul(self, rhs: Kernel) -> Kernel {
        kernel(Node::Product(Arc::new(self), Arc::new(rhs)))
    }
}

impl std::ops::Add for &Kernel {
    type Output = Kernel;
    /// The sum of two kernels.
    fn add(self, rhs: &Kernel) -> Kernel {
        self.clone() + rhs.clone()
    }
}

impl std::ops::Mul for &Kernel {
    type Output = Kernel;
    /// The product of two kernels.
    fn mul(self, rhs: &Kernel) -> Kernel {
        self.clone() * rhs.clone()
    }
}
