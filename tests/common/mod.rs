//! Independent references for the tests: formulas evaluated densely with Candle ops on
//! `(M, N, dim)` tensors in f64, and reductions written as plain loops.
#![allow(dead_code)]

use candle_core::{DType, Device, Result, Tensor};
use lazy_kernels::formula::{BinaryOp, Expr, Op, TernaryOp, UnaryOp, VarCat};

/// A small deterministic generator (xorshift), so tests need no RNG crate state.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn tensor(&mut self, shape: &[usize], lo: f64, hi: f64) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| self.uniform(lo, hi)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }
}

/// Evaluates `e` densely: variables at position `p` are `inputs[p]` (`(M, D)` for i, `(N, D)`
/// for j, `(D,)` for parameters); returns an `(M, N, dim)` f64 tensor.
pub fn dense_eval(e: &Expr, inputs: &[(VarCat, Tensor)], m: usize, n: usize) -> Result<Tensor> {
    let full = |t: Tensor, d: usize| t.broadcast_as((m, n, d))?.contiguous();
    let args: Vec<Tensor> = e
        .args()
        .iter()
        .map(|a| dense_eval(a, inputs, m, n))
        .collect::<Result<_>>()?;
    let d = e.dim();
    let one = |t: &Tensor| t.ones_like();
    let bcast = |t: &Tensor| full(t.clone(), d);
    Ok(match *e.op() {
        Op::Var(v) => {
            let t = inputs[v.pos].1.to_dtype(DType::F64)?;
            let t = match v.cat {
                VarCat::I => t.reshape((m, 1, v.dim))?,
                VarCat::J => t.reshape((1, n, v.dim))?,
                VarCat::P => t.reshape((1, 1, v.dim))?,
            };
            full(t, v.dim)?
        }
        Op::Const(c) => Tensor::full(c, (m, n, 1), &Device::Cpu)?,
        Op::Unary(u) => {
            let x = &args[0];
            match u {
                UnaryOp::Neg => x.neg()?,
                UnaryOp::Exp => x.exp()?,
                UnaryOp::Log => x.log()?,
                UnaryOp::Sqrt => x.sqrt()?,
                UnaryOp::Rsqrt => x.sqrt()?.recip()?,
                UnaryOp::Square => x.sqr()?,
                UnaryOp::Inv => x.recip()?,
                UnaryOp::Abs => x.abs()?,
                UnaryOp::Sign => {
                    (x.gt(0.0)?.to_dtype(DType::F64)? - x.lt(0.0)?.to_dtype(DType::F64)?)?
                }
                UnaryOp::Step => x.ge(0.0)?.to_dtype(DType::F64)?,
                UnaryOp::Relu => x.relu()?,
                UnaryOp::Sin => x.sin()?,
                UnaryOp::Cos => x.cos()?,
                UnaryOp::Pow(k) => {
                    let mut acc = one(x)?;
                    for _ in 0..k.unsigned_abs() {
                        acc = (acc * x)?;
                    }
                    if k < 0 {
                        acc.recip()?
                    } else {
                        acc
                    }
                }
            }
        }
        Op::Binary(b) => {
            let (x, y) = (bcast(&args[0])?, bcast(&args[1])?);
            let f = |t: Tensor| t.to_dtype(DType::F64);
            match b {
                BinaryOp::Add => (x + y)?,
                BinaryOp::Sub => (x - y)?,
                BinaryOp::Mul => (x * y)?,
                BinaryOp::Div => (x / y)?,
                BinaryOp::Powf => (y * x.log()?)?.exp()?,
                BinaryOp::Min => x.minimum(&y)?,
                BinaryOp::Max => x.maximum(&y)?,
                BinaryOp::Lt => f(x.lt(&y)?)?,
                BinaryOp::Le => f(x.le(&y)?)?,
                BinaryOp::Gt => f(x.gt(&y)?)?,
                BinaryOp::Ge => f(x.ge(&y)?)?,
                BinaryOp::Eq => f(x.eq(&y)?)?,
                BinaryOp::Ne => f(x.ne(&y)?)?,
            }
        }
        Op::Ternary(t) => {
            let (x, a, b) = (bcast(&args[0])?, bcast(&args[1])?, bcast(&args[2])?);
            match t {
                TernaryOp::Clamp => x.maximum(&a)?.minimum(&b)?,
                TernaryOp::IfElse => x.ge(0.0)?.where_cond(&a, &b)?,
            }
        }
        Op::Sum => args[0].sum_keepdim(2)?,
        Op::Elem(k) => args[0].narrow(2, k, 1)?,
        Op::Extract { start, len } => args[0].narrow(2, start, len)?,
        Op::Concat => Tensor::cat(&[&args[0], &args[1]], 2)?,
        Op::MatVecMult => {
            let (a, v) = (&args[0], &args[1]);
            let k = v.dim(2)?;
            let rows = a.dim(2)? / k;
            let a = a.reshape((m, n, rows, k))?;
            let v = v.reshape((m, n, 1, k))?;
            a.broadcast_mul(&v)?.sum(3)?
        }
    })
}

/// Dense values as `[row][term][component]`, reduced over `j` (for axis I, pass the
/// transposed values).
pub type Dense = Vec<Vec<Vec<f64>>>;

pub fn dense_values(t: &Tensor, axis_j: bool) -> Result<Dense> {
    let t = if axis_j {
        t.clone()
    } else {
        t.transpose(0, 1)?.contiguous()?
    };
    t.to_vec3::<f64>()
}

pub fn ref_sum(d: &Dense) -> Vec<Vec<f64>> {
    d.iter()
        .map(|row| {
            let e = row[0].len();
            (0..e).map(|c| row.iter().map(|t| t[c]).sum()).collect()
        })
        .collect()
}

pub fn ref_lse(d: &Dense) -> Vec<Vec<f64>> {
    d.iter()
        .map(|row| {
            let e = row[0].len();
            (0..e)
                .map(|c| {
                    let m = row.iter().map(|t| t[c]).fold(f64::NEG_INFINITY, f64::max);
                    m + row.iter().map(|t| (t[c] - m).exp()).sum::<f64>().ln()
                })
                .collect()
        })
        .collect()
}

pub fn ref_softmax_weight(d: &Dense) -> Vec<Vec<f64>> {
    d.iter()
        .map(|row| {
            let e = row[0].len();
            let m = row.iter().map(|t| t[0]).fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = row.iter().map(|t| (t[0] - m).exp()).collect();
            let s: f64 = w.iter().sum();
            (1..e)
                .map(|c| row.iter().zip(&w).map(|(t, w)| w * t[c]).sum::<f64>() / s)
                .collect()
        })
        .collect()
}

/// Sorted `(value, index)` per row and component: `[row][component][rank]`, ties by index.
pub fn ref_sorted(d: &Dense, descending: bool) -> Vec<Vec<Vec<(f64, i64)>>> {
    d.iter()
        .map(|row| {
            let e = row[0].len();
            (0..e)
                .map(|c| {
                    let mut v: Vec<(f64, i64)> = row
                        .iter()
                        .enumerate()
                        .map(|(j, t)| (t[c], j as i64))
                        .collect();
                    v.sort_by(|a, b| {
                        let o = a.0.partial_cmp(&b.0).unwrap();
                        if descending {
                            o.reverse()
                        } else {
                            o
                        }
                    });
                    v
                })
                .collect()
        })
        .collect()
}

pub fn assert_close(got: &[f64], want: &[f64], rtol: f64, atol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = (g - w).abs() <= atol + rtol * w.abs() || (g.is_nan() && w.is_nan()) || g == w;
        assert!(
            ok,
            "{what}: element {k}: got {g}, want {w} (rtol {rtol}, atol {atol})"
        );
    }
}

pub fn flat(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

pub fn flat_i64(t: &Tensor) -> Vec<i64> {
    t.flatten_all().unwrap().to_vec1::<i64>().unwrap()
}
