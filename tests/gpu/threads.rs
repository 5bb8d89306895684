//! Threads on the device under test (issue 17, stress): eight host threads run reductions
//! (sums over both axes, a log-sum-exp, `argkmin`), a gradient through a reduction and a
//! preconditioned solve with its gradient at once, on shared device tensors and on private
//! copies, and every output must be bit-identical to a single-threaded run of the same call on
//! the same device. The CPU side of this check is `tests/stress_tests.rs`; here the point is
//! the device: its kernels, caches of compiled modules and streams under concurrent callers.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use lazy_kernels::{Axis, Kernel, KernelOperator, LazyTensor, Preconditioner, Rank, SolveOptions};

use super::common::Rng;
use super::{Check, Ctx, Res, check, dt, on_device};

/// Host threads running at once.
const THREADS: usize = 8;

pub(super) fn checks(v: &mut Vec<Check>) {
    for dtype in [DType::F32, DType::F64] {
        for shared in [true, false] {
            let what = if shared { "shared" } else { "separate" };
            v.push(check(
                format!(
                    "threads/{THREADS} threads vs 1/{what} tensors/{}",
                    dt(dtype)
                ),
                move |ctx| threads(ctx, dtype, shared),
            ));
        }
    }
}

/// Points x `(2000, 3)` and y `(20000, 3)`, weights b `(20000, 2)` and a bandwidth, on the
/// device.
#[derive(Clone)]
struct Inputs {
    x: Tensor,
    y: Tensor,
    b: Tensor,
    s: Tensor,
}

impl Inputs {
    fn new(dev: &Device, dtype: DType) -> Res<Inputs> {
        let mut r = Rng(0x7487);
        let f = |t: Tensor| t.to_dtype(dtype)?.to_device(dev);
        Ok(Inputs {
            x: f(r.tensor(&[2000, 3], -1.0, 1.0))?,
            y: f(r.tensor(&[20000, 3], -1.0, 1.0))?,
            b: f(r.tensor(&[20000, 2], -1.0, 1.0))?,
            s: f(Tensor::new(&[0.6f64], &Device::Cpu)?)?,
        })
    }

    /// New device storage with the same values.
    fn deep_copy(&self) -> Res<Inputs> {
        Ok(Inputs {
            x: self.x.copy()?,
            y: self.y.copy()?,
            b: self.b.copy()?,
            s: self.s.copy()?,
        })
    }
}

type Out = Result<Vec<Vec<u64>>, String>;

/// The bits of every element of `t` (read back to the host), after checking that `t` is on the
/// device under test.
fn bits(t: &Tensor) -> Result<Vec<u64>, String> {
    on_device(t, "an output").map_err(|e| e.to_string())?;
    let t = t
        .flatten_all()
        .and_then(|t| t.to_device(&Device::Cpu))
        .map_err(|e| e.to_string())?;
    let r = match t.dtype() {
        DType::F64 => t
            .to_vec1::<f64>()
            .map(|v| v.iter().map(|x| x.to_bits()).collect()),
        DType::F32 => t
            .to_vec1::<f32>()
            .map(|v| v.iter().map(|x| x.to_bits() as u64).collect()),
        DType::I64 => t
            .to_vec1::<i64>()
            .map(|v| v.iter().map(|&x| x as u64).collect()),
        other => return Err(format!("unexpected dtype {other:?}")),
    };
    r.map_err(|e| e.to_string())
}

fn gauss(p: &Inputs) -> candle_core::Result<LazyTensor> {
    let (x, y, b, s) = (
        LazyTensor::vi(&p.x)?,
        LazyTensor::vj(&p.y)?,
        LazyTensor::vj(&p.b)?,
        LazyTensor::param(&p.s)?,
    );
    let names = [("x", &x), ("y", &y), ("b", &b), ("s", &s)];
    LazyTensor::parse("Exp(-SqDist(x, y) / (2.0 * Square(s))) * b", &names)
}

/// Every job's outputs, in job order starting at `first` (so that threads overlap different
/// jobs), returned in job order.
fn run_jobs(p: &Inputs, first: usize) -> Out {
    let e = |e: candle_core::Error| e.to_string();
    let jobs: [&dyn Fn() -> Out; 5] = [
        &|| {
            let g = gauss(p).map_err(e)?;
            Ok(vec![
                bits(&g.sum(Axis::J).map_err(e)?)?,
                bits(&g.sum(Axis::I).map_err(e)?)?,
            ])
        },
        &|| {
            let d = LazyTensor::vi(&p.x)
                .and_then(|x| Ok(x.sqdist(&LazyTensor::vj(&p.y)?)))
                .map_err(e)?;
            Ok(vec![bits(&(-d).logsumexp(Axis::J).map_err(e)?)?])
        },
        &|| {
            let d = LazyTensor::vi(&p.x)
                .and_then(|x| Ok(x.sqdist(&LazyTensor::vj(&p.y)?)))
                .map_err(e)?;
            Ok(vec![
                bits(&d.argkmin(5, Axis::J).map_err(e)?)?,
                bits(&d.argkmin(5, Axis::I).map_err(e)?)?,
            ])
        },
        &|| {
            let vars = [&p.x, &p.y, &p.b, &p.s]
                .map(Var::from_tensor)
                .into_iter()
                .collect::<candle_core::Result<Vec<_>>>()
                .map_err(e)?;
            let q = Inputs {
                x: vars[0].as_tensor().clone(),
                y: vars[1].as_tensor().clone(),
                b: vars[2].as_tensor().clone(),
                s: vars[3].as_tensor().clone(),
            };
            let g = gauss(&q)
                .and_then(|f| f.sum(Axis::J)?.sqr()?.sum_all()?.backward())
                .map_err(e)?;
            vars.iter()
                .map(|v| bits(g.get(v).ok_or("a gradient is missing")?))
                .collect()
        },
        &|| {
            // 1500 of the points, well conditioned (ridge 1).
            let l = Var::from_tensor(&p.s).map_err(e)?;
            let b = p.b.narrow(0, 0, 1500).and_then(|b| Var::from_tensor(&b));
            let b = b.map_err(e)?;
            let y = p.y.narrow(0, 0, 1500).map_err(e)?;
            let opts = SolveOptions {
                tol: 1e-4,
                max_iters: 200,
                preconditioner: Preconditioner::PivotedCholesky(Rank::Fixed(20)),
                ..SolveOptions::default()
            };
            let (a, info) = KernelOperator::new(Kernel::gaussian(l.as_tensor()), &y, &y)
                .and_then(|k| k.solve(b.as_tensor(), 1.0, &opts))
                .map_err(e)?;
            let g = a.sqr().and_then(|s| s.sum_all()?.backward()).map_err(e)?;
            Ok(vec![
                bits(&a)?,
                vec![info.iterations as u64],
                bits(g.get(&l).ok_or("no d/dl")?)?,
                bits(g.get(&b).ok_or("no d/db")?)?,
            ])
        },
    ];
    let mut outs = vec![Vec::new(); jobs.len()];
    for k in 0..jobs.len() {
        let j = (first + k) % jobs.len();
        outs[j] = jobs[j]().map_err(|msg| format!("job {j}: {msg}"))?;
    }
    Ok(outs.concat())
}

fn threads(ctx: &Ctx, dtype: DType, shared: bool) -> Res<String> {
    let inputs = Inputs::new(&ctx.dev, dtype)?;
    let want = Arc::new(run_jobs(&inputs, 0)?);
    let handles = (0..THREADS)
        .map(|t| {
            let mine = if shared {
                inputs.clone()
            } else {
                inputs.deep_copy()?
            };
            let want = Arc::clone(&want);
            Ok(std::thread::spawn(move || -> Result<(), String> {
                let got = run_jobs(&mine, t)?;
                match got.iter().zip(want.iter()).position(|(g, w)| g != w) {
                    None => Ok(()),
                    Some(k) => Err(format!(
                        "thread {t}: output {k} differs from the single-threaded run in {} \
                         of {} elements",
                        got[k].iter().zip(&want[k]).filter(|(a, b)| a != b).count(),
                        want[k].len()
                    )),
                }
            }))
        })
        .collect::<Res<Vec<_>>>()?;
    for h in handles {
        h.join().map_err(|_| "a thread panicked")??;
    }
    Ok(format!(
        "{THREADS} threads x {} outputs bit-identical to one thread",
        want.len()
    ))
}
