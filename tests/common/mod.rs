//! Independent references for the tests: formulas evaluated densely on `(M, N, dim)` tensors in
//! f64 (Candle ops for the vector ops, each component-wise op's `f64` definition from the op
//! table), and reductions written as plain loops.
#![allow(dead_code)]

use candle_core::{DType, Device, Result, Tensor};
use lazy_kernels::formula::{BinaryOp, Domain, Expr, Op, TernaryOp, UnaryOp, VarCat};

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
        // Component-wise ops: Candle's differentiable ops where Candle has the op (the dense
        // autodiff reference of the gradient tests), else the op's `f64` definition in the op
        // table (from `std` and `libm`), element by element. Both are independent of the
        // backends' vectorised and CUDA forms.
        Op::Unary(u) => {
            let x = bcast(&args[0])?;
            match candle_unary(u, &x) {
                Some(t) => t?,
                None => elementwise(&[x], |v| u.reference(v[0]))?,
            }
        }
        Op::Binary(b) => {
            let (x, y) = (bcast(&args[0])?, bcast(&args[1])?);
            match candle_binary(b, &x, &y) {
                Some(t) => t?,
                None => elementwise(&[x, y], |v| b.reference(v[0], v[1]))?,
            }
        }
        Op::Ternary(t) => {
            let xs = [bcast(&args[0])?, bcast(&args[1])?, bcast(&args[2])?];
            match candle_ternary(t, &xs) {
                Some(r) => r?,
                None => elementwise(&xs, |v| t.reference(v[0], v[1], v[2]))?,
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

/// `u` with Candle's (differentiable) ops, where Candle has them.
fn candle_unary(u: UnaryOp, x: &Tensor) -> Option<Result<Tensor>> {
    let f64 = |t: Result<Tensor>| t?.to_dtype(DType::F64);
    Some(match u {
        UnaryOp::Neg => x.neg(),
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.log(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Rsqrt => x.sqrt().and_then(|t| t.recip()),
        UnaryOp::Square => x.sqr(),
        UnaryOp::Inv => x.recip(),
        UnaryOp::Abs => x.abs(),
        UnaryOp::Sign => f64(x.gt(0.0)).and_then(|p| p - f64(x.lt(0.0))?),
        UnaryOp::Step => f64(x.ge(0.0)),
        UnaryOp::Relu => x.relu(),
        UnaryOp::Sin => x.sin(),
        UnaryOp::Cos => x.cos(),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Pow(k) => (|| {
            let mut acc = x.ones_like()?;
            for _ in 0..k.unsigned_abs() {
                acc = (acc * x)?;
            }
            if k < 0 { acc.recip() } else { Ok(acc) }
        })(),
        _ => return None,
    })
}

/// `b` with Candle's (differentiable) ops, where Candle has them.
fn candle_binary(b: BinaryOp, x: &Tensor, y: &Tensor) -> Option<Result<Tensor>> {
    let f64 = |t: Result<Tensor>| t?.to_dtype(DType::F64);
    Some(match b {
        BinaryOp::Add => x + y,
        BinaryOp::Sub => x - y,
        BinaryOp::Mul => x * y,
        BinaryOp::Div => x / y,
        BinaryOp::Powf => x.log().and_then(|l| (y * l)?.exp()),
        BinaryOp::Min => x.minimum(y),
        BinaryOp::Max => x.maximum(y),
        BinaryOp::Lt => f64(x.lt(y)),
        BinaryOp::Le => f64(x.le(y)),
        BinaryOp::Gt => f64(x.gt(y)),
        BinaryOp::Ge => f64(x.ge(y)),
        BinaryOp::Eq => f64(x.eq(y)),
        BinaryOp::Ne => f64(x.ne(y)),
        _ => return None,
    })
}

/// `t` with Candle's (differentiable) ops, where Candle has them.
fn candle_ternary(t: TernaryOp, xs: &[Tensor; 3]) -> Option<Result<Tensor>> {
    let [x, a, b] = xs;
    Some(match t {
        TernaryOp::Clamp => x.maximum(a).and_then(|l| l.minimum(b)),
        TernaryOp::IfElse => x.ge(0.0).and_then(|c| c.where_cond(a, b)),
        _ => return None,
    })
}

/// Whether every op of `e` goes through Candle's differentiable ops in [`dense_eval`], so that
/// Candle's autodiff of the dense reference is a gradient reference (for the other ops the
/// gradient tests use finite differences alone).
pub fn dense_autodiff_covers(e: &Expr) -> bool {
    let z = Tensor::zeros(1, DType::F64, &Device::Cpu).unwrap();
    let zs = [z.clone(), z.clone(), z.clone()];
    e.topo_order().iter().all(|n| match *n.op() {
        Op::Unary(u) => candle_unary(u, &z).is_some(),
        Op::Binary(b) => candle_binary(b, &z, &z).is_some(),
        Op::Ternary(t) => candle_ternary(t, &zs).is_some(),
        _ => true,
    })
}

/// `f` applied element by element to tensors of one shape (f64).
fn elementwise(xs: &[Tensor], f: impl Fn(&[f64]) -> f64) -> Result<Tensor> {
    let vals: Vec<Vec<f64>> = xs
        .iter()
        .map(|x| x.flatten_all()?.to_vec1::<f64>())
        .collect::<Result<_>>()?;
    let out: Vec<f64> = (0..vals[0].len())
        .map(|i| {
            let v: Vec<f64> = vals.iter().map(|x| x[i]).collect();
            f(&v)
        })
        .collect();
    Tensor::from_vec(out, xs[0].shape(), &Device::Cpu)
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
                        if descending { o.reverse() } else { o }
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

/// `t`, a formula (in the parser's syntax) with values in `[-2, 2]`, mapped into the domain `d`
/// (see [`Domain::range`]).
pub fn in_domain(d: Domain, t: &str) -> String {
    match d {
        Domain::All => format!("({t})"),
        Domain::Positive => format!("(0.1 + 0.7 * Square({t}))"),
        Domain::Unit => format!("(0.45 * ({t}))"),
        Domain::NonZero => format!("(Sign({t}) * (0.2 + 0.9 * Abs({t})))"),
    }
}

/// One formula per op of the table, generated from its metadata: `(name, source)`, the op
/// applied to `args[k]` (formulas with values in `[-2, 2]`) mapped into the op's domains.
pub fn table_op_sources(args: [&str; 3]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for &u in UnaryOp::ALL {
        let a = in_domain(u.domain(), args[0]);
        let src = match u.payload() {
            Some(n) => format!("{}({a}, {n})", u.name()),
            None => format!("{}({a})", u.name()),
        };
        out.push((u.name().to_string(), src));
    }
    for &b in BinaryOp::ALL {
        let [d0, d1] = b.domain();
        let (a, c) = (in_domain(d0, args[0]), in_domain(d1, args[1]));
        out.push((b.name().to_string(), format!("{}({a}, {c})", b.name())));
    }
    for &t in TernaryOp::ALL {
        let [d0, d1, d2] = t.domain();
        let (a, b, c) = (
            in_domain(d0, args[0]),
            in_domain(d1, args[1]),
            in_domain(d2, args[2]),
        );
        out.push((t.name().to_string(), format!("{}({a}, {b}, {c})", t.name())));
    }
    out
}

/// The value of one row of terms `row` under the IEEE rules of `src/reduction/mod.rs`, by
/// plain `f64` loops, for `Sum` (the plain sum: `+inf` with `+inf` terms, `NaN` with both
/// infinities or a `NaN`), `LogSumExp` (`+inf` with a `+inf` term, `-inf` when every term is
/// `-inf`) and `SumSoftMaxWeight` of the scores `row` and values `g` (the `+inf` scores share
/// the weight, `-inf` ones weigh 0, a row of `-inf` scores is 0); `None` for other kinds.
pub fn ieee_rule(kind: lazy_kernels::ReductionKind, row: &[f64], g: &[f64]) -> Option<f64> {
    use lazy_kernels::ReductionKind::{LogSumExp, Sum, SumSoftMaxWeight};
    let (inf, nan) = (f64::INFINITY, f64::NAN);
    let any_nan = row.iter().any(|v| v.is_nan());
    let m = row.iter().cloned().fold(-inf, f64::max);
    Some(match kind {
        Sum => row.iter().sum(),
        LogSumExp | SumSoftMaxWeight if any_nan => nan,
        LogSumExp if m.is_infinite() => m,
        LogSumExp => m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln(),
        SumSoftMaxWeight if m == -inf => 0.0,
        SumSoftMaxWeight => {
            let w: Vec<f64> = row
                .iter()
                .map(|&v| match (v == inf, m == inf) {
                    (true, _) => 1.0,
                    (false, true) => 0.0,
                    _ => (v - m).exp(),
                })
                .collect();
            w.iter().zip(g).map(|(w, g)| w * g).sum::<f64>() / w.iter().sum::<f64>()
        }
        _ => return None,
    })
}
