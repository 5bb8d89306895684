//! Misuse returns an error that names the problem; nothing panics. NaN propagates.

use candle_core::{DType, Device, Tensor};
use lazy_kernels::formula::parse;
use lazy_kernels::{Axis, LazyTensor};

fn t(shape: &[usize], dtype: DType) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|k| (k as f64 * 0.37).sin()).collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

fn err_text<T: std::fmt::Debug>(r: candle_core::Result<T>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.to_string(),
    }
}

fn assert_mentions(text: &str, words: &[&str]) {
    for w in words {
        assert!(text.contains(w), "error {text:?} does not mention {w:?}");
    }
}

#[test]
fn mismatched_dimensions() {
    let x = LazyTensor::vi(&t(&[4, 3], DType::F32)).unwrap();
    let y = LazyTensor::vj(&t(&[5, 2], DType::F32)).unwrap();
    assert_mentions(
        &err_text(x.sqdist(&y).checked()),
        &["SqDist", "dimension", "3", "2"],
    );
    assert_mentions(&err_text(x.dot(&y).checked()), &["Dot", "3", "2"]);
    // Every builder defers its error to the reduction, naming the op and its operands.
    let k = (-x.sqdist(&y) / (2.0 * LazyTensor::constant(0.5).square())).exp();
    assert_mentions(
        &err_text(k.sum(Axis::J)),
        &[
            "SqDist",
            "dimension",
            "Vi(0,3) is a [4, 3] F32 tensor",
            "Vj(1,2) is a [5, 2] F32 tensor",
        ],
    );
    // Operators defer the error to the first fallible call, naming the op.
    let bad = (&x + &y).exp() * 2.0;
    assert_mentions(&err_text(bad.sum(Axis::J)), &["Add", "dimension", "[3, 2]"]);
    assert_mentions(&err_text(bad.dim()), &["Add"]);
    assert_mentions(&err_text(x.elem(3).checked()), &["Elem", "component 3"]);
    assert_mentions(&err_text(x.extract(2, 5).checked()), &["Extract"]);
    assert_mentions(&err_text(x.matvecmult(&y).checked()), &["MatVecMult"]);
    let w = LazyTensor::param(&t(&[2], DType::F32)).unwrap();
    assert_mentions(
        &err_text(x.weighted_sqdist(&x, &w).checked()),
        &["WeightedSqDist", "2 components"],
    );
    let s = LazyTensor::vj(&t(&[5, 3], DType::F32)).unwrap();
    assert_mentions(
        &err_text(
            x.sqdist(&s)
                .sum_softmax_weight(&s, Axis::J)
                .map(|_| ())
                .and(s.sum_softmax_weight(&s, Axis::J)),
        ),
        &["SumSoftMaxWeight", "1 component"],
    );
}

#[test]
fn mismatched_rows_dtypes_and_missing_axes() {
    let x = LazyTensor::vi(&t(&[4, 3], DType::F32)).unwrap();
    let x2 = LazyTensor::vi(&t(&[6, 3], DType::F32)).unwrap();
    let y = LazyTensor::vj(&t(&[5, 3], DType::F32)).unwrap();
    let y64 = LazyTensor::vj(&t(&[5, 3], DType::F64)).unwrap();
    let f = (x.sqdist(&y) + x2.sqdist(&y)).exp();
    assert_mentions(
        &err_text(f.sum(Axis::J)),
        &[
            "Sum",
            "i-variables have different numbers of rows",
            "4",
            "6",
        ],
    );
    assert_mentions(
        &err_text(f.sum(Axis::I)),
        &["i-variables have different numbers of rows"],
    );
    assert_mentions(
        &err_text(x.sqdist(&y64).sum(Axis::J)),
        &["dtype", "F32", "F64"],
    );
    assert_mentions(&err_text(x.exp().sum(Axis::J)), &["no j-variable"]);
    assert_mentions(&err_text(y.exp().sum(Axis::J)), &["no i-variable"]);
    assert_mentions(
        &err_text(y.exp().min(Axis::I)),
        &["no i-variable", "reduced terms"],
    );
    assert_mentions(
        &err_text(LazyTensor::constant(1.0).sum(Axis::J)),
        &["no variables"],
    );
}

#[test]
fn bad_tensors_are_rejected_when_bound() {
    assert_mentions(
        &err_text(LazyTensor::vi(&t(&[2, 3, 4, 5], DType::F32))),
        &["vi", "shape", "[2, 3, 4, 5]", "(B, rows, dim)"],
    );
    assert_mentions(
        &err_text(LazyTensor::vj(&t(&[4, 0], DType::F32))),
        &["vj", "[4, 0]"],
    );
    assert_mentions(
        &err_text(LazyTensor::vj(&Tensor::new(3f32, &Device::Cpu).unwrap())),
        &["vj", "shape"],
    );
    let ints = Tensor::new(&[[1u32, 2]], &Device::Cpu).unwrap();
    assert_mentions(
        &err_text(LazyTensor::vi(&ints)),
        &["vi", "U32", "not a float dtype"],
    );
    assert_mentions(
        &err_text(LazyTensor::param(&t(&[0], DType::F32))),
        &["param", "at least one value"],
    );
    let f = parse("SqDist(Vi(0,3), Vj(1,3))", &[]).unwrap();
    let x = t(&[4, 3], DType::F32);
    assert_mentions(
        &err_text(LazyTensor::from_formula(&f, &[&x])),
        &["argument 1", "1 tensors"],
    );
    let y2 = t(&[4, 2], DType::F32);
    assert_mentions(
        &err_text(LazyTensor::from_formula(&f, &[&x, &y2])),
        &["2 components", "expects 3"],
    );
}

#[test]
fn empty_inputs() {
    let x = LazyTensor::vi(&t(&[0, 3], DType::F32)).unwrap();
    let y = LazyTensor::vj(&t(&[5, 3], DType::F32)).unwrap();
    let y0 = LazyTensor::vj(&t(&[0, 3], DType::F32)).unwrap();
    let x4 = LazyTensor::vi(&t(&[4, 3], DType::F32)).unwrap();
    assert_mentions(
        &err_text(x.sqdist(&y).sum(Axis::J)),
        &["empty input", "0 i-rows"],
    );
    assert_mentions(
        &err_text(x4.sqdist(&y0).argkmin(3, Axis::J)),
        &["empty input", "0 j-rows"],
    );
    assert_mentions(&err_text(x4.sqdist(&y0).min(Axis::I)), &["empty input"]);
}

#[test]
fn bad_reduction_arguments() {
    let x = LazyTensor::vi(&t(&[4, 3], DType::F32)).unwrap();
    let y = LazyTensor::vj(&t(&[5, 3], DType::F32)).unwrap();
    let d = x.sqdist(&y);
    assert_mentions(
        &err_text(d.argkmin(0, Axis::J)),
        &["ArgKMin", "k must be at least 1"],
    );
    assert_mentions(
        &err_text(d.kmin(usize::MAX, Axis::J)),
        &["KMin", "out of memory", "usize overflows"],
    );
}

#[test]
fn nan_inputs_propagate_without_crashing() {
    let mut xv: Vec<f32> = (0..12).map(|k| k as f32 * 0.1).collect();
    xv[4] = f32::NAN; // row 1
    let x = Tensor::from_vec(xv, (4, 3), &Device::Cpu).unwrap();
    let y = t(&[700, 3], DType::F32);
    let (xi, yj) = (LazyTensor::vi(&x).unwrap(), LazyTensor::vj(&y).unwrap());
    let d = xi.sqdist(&yj);
    let s = d.exp().sum(Axis::J).unwrap().to_vec2::<f32>().unwrap();
    assert!(s[1][0].is_nan() && s[0][0].is_finite() && s[2][0].is_finite());
    let l = (-d.clone())
        .logsumexp(Axis::J)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert!(l[1][0].is_nan() && l[0][0].is_finite());
    // The fused path (a scaled distance) too.
    let l = (d.clone() * -2.0).logsumexp(Axis::J).unwrap();
    let l = l.to_vec2::<f32>().unwrap();
    assert!(l[1][0].is_nan() && l[0][0].is_finite());
    let (m, i) = d.min_argmin(Axis::J).unwrap();
    let (m, i) = (m.to_vec2::<f32>().unwrap(), i.to_vec2::<i64>().unwrap());
    assert!(m[1][0].is_nan() && m[0][0].is_finite());
    assert_eq!(i[1][0], 0);
    // Over i, every j-row sees the NaN row.
    let (mi, ii) = d.min_argmin(Axis::I).unwrap();
    assert!(mi.to_vec2::<f32>().unwrap().iter().all(|r| r[0].is_nan()));
    assert!(ii.to_vec2::<i64>().unwrap().iter().all(|r| r[0] == 1));
    let k = d.kmin_argkmin(3, Axis::J).unwrap();
    assert!(k.0.to_vec2::<f32>().unwrap()[1][0].is_nan());
    let w = (-d.clone())
        .sum_softmax_weight(&yj, Axis::J)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert!(w[1][0].is_nan() && w[0][0].is_finite());
    // Infinite inputs give infinities or NaN, not a crash.
    let xinf = Tensor::new(&[[f32::INFINITY, 0., 0.]], &Device::Cpu).unwrap();
    let di = LazyTensor::vi(&xinf).unwrap().sqdist(&yj);
    assert_eq!(
        di.min(Axis::J).unwrap().to_vec2::<f32>().unwrap()[0][0],
        f32::INFINITY
    );
    assert_eq!(
        (-di.clone())
            .exp()
            .sum(Axis::J)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()[0][0],
        0.0
    );
    assert_eq!(
        (-di.clone())
            .logsumexp(Axis::J)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()[0][0],
        f32::NEG_INFINITY
    );
    let fused = (di * -0.5).logsumexp(Axis::J).unwrap();
    assert_eq!(fused.to_vec2::<f32>().unwrap()[0][0], f32::NEG_INFINITY);
}

#[test]
fn cuda_tensors_get_a_clear_error_or_are_skipped() {
    match Device::new_cuda(0) {
        Ok(dev) => {
            let x = t(&[4, 3], DType::F32).to_device(&dev).unwrap();
            let f = LazyTensor::vi(&x)
                .unwrap()
                .sqdist(&LazyTensor::vj(&x).unwrap());
            assert_mentions(
                &err_text(f.sum(Axis::J)),
                &["CUDA backend", "not implemented yet"],
            );
            let y = t(&[4, 3], DType::F32);
            let g = LazyTensor::vi(&x)
                .unwrap()
                .sqdist(&LazyTensor::vj(&y).unwrap());
            assert_mentions(&err_text(g.sum(Axis::J)), &["device mismatch"]);
        }
        Err(_) => eprintln!("skipped: no CUDA device (or not built with --features cuda)"),
    }
}

#[test]
fn malformed_strings_name_the_column() {
    let x = LazyTensor::vi(&t(&[4, 3], DType::F32)).unwrap();
    let y = LazyTensor::vj(&t(&[5, 3], DType::F32)).unwrap();
    let text = err_text(LazyTensor::parse(
        "Exp(-SqDist(x, y) * Foo(y))",
        &[("x", &x), ("y", &y)],
    ));
    assert_mentions(&text, &["column 21", "unknown function 'Foo'"]);
    let text = err_text(LazyTensor::parse(
        "Exp(-SqDist(x, y)",
        &[("x", &x), ("y", &y)],
    ));
    assert_mentions(&text, &["column 18", "expected ')'"]);
    // A deferred error in a bound lazy tensor is reported by parse.
    let bad = &x + &LazyTensor::vj(&t(&[5, 2], DType::F32)).unwrap();
    assert_mentions(
        &err_text(LazyTensor::parse("Exp(b)", &[("b", &bad)])),
        &["Add"],
    );
}

/// `f_k(x)`: `k` nested ops, alternately `sin` and `* 1.5`, and its derivative, by the chain
/// rule in `f64` (the reference).
fn chain_reference(x: f64, k: usize) -> (f64, f64) {
    let (mut v, mut d) = (x, 1.0);
    for i in 0..k {
        if i % 2 == 0 {
            d *= v.cos();
            v = v.sin();
        } else {
            v *= 1.5;
            d *= 1.5;
        }
    }
    (v, d)
}

/// The same chain as a lazy formula over `x`.
fn chain(x: &LazyTensor, k: usize) -> LazyTensor {
    let c = LazyTensor::constant(1.5);
    let mut f = x.clone();
    for i in 0..k {
        f = if i % 2 == 0 { f.sin() } else { &f * &c };
    }
    f
}

/// Issue 17: formulas of any depth can be built, printed, compared and dropped on a thread
/// with the default (2 MiB) stack; a reduction refuses one deeper than `MAX_DEPTH` with an
/// error naming the limit, and runs one just under it (its gradient too, whose formula is
/// deeper still), against the chain rule in f64.
#[test]
fn deep_formulas_never_overflow_the_stack() {
    use lazy_kernels::formula::expr::MAX_DEPTH;
    std::thread::spawn(|| {
        let xs = [0.5f64, -0.25];
        let xt = Tensor::new(&[[xs[0]], [xs[1]]], &Device::Cpu).unwrap();
        let yt = Tensor::new(&[[1f64]], &Device::Cpu).unwrap();
        let (x, y) = (LazyTensor::vi(&xt).unwrap(), LazyTensor::vj(&yt).unwrap());

        // A million nested ops through the API.
        let deep = chain(&x, 1_000_000);
        let f = deep.expr().unwrap();
        assert_eq!(f.depth(), 1_000_001);
        let printed = f.to_string();
        assert!(printed.len() > 5_000_000 && printed.starts_with("Sin("));
        assert!(deep.expr().unwrap() == chain(&x, 1_000_000).expr().unwrap());
        let e = err_text((&deep * &y).sum(Axis::J));
        assert_mentions(
            &e,
            &["1000002 ops deep", "MAX_DEPTH", &MAX_DEPTH.to_string()],
        );
        drop((deep, printed));

        // Just under the limit: values; and a gradient, whose backward formula is about twice
        // as deep as the chain (it goes through the same check as the forward formula).
        let k = MAX_DEPTH - 2;
        let v = (&chain(&x, k) * &y).sum(Axis::J).unwrap();
        let v = v.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for (i, &x0) in xs.iter().enumerate() {
            let (want, _) = chain_reference(x0, k);
            assert!(
                (v[i] - want).abs() <= 1e-12 * want.abs().max(1e-300),
                "{} vs {want}",
                v[i]
            );
        }
        let xv = candle_core::Var::from_tensor(&xt).unwrap();
        let xl = LazyTensor::vi(xv.as_tensor()).unwrap();
        let k = MAX_DEPTH / 4;
        let s = (&chain(&xl, k) * &y)
            .sum(Axis::J)
            .unwrap()
            .sum_all()
            .unwrap();
        let g = s.backward().unwrap();
        let g = g
            .get(xv.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        for (i, &x0) in xs.iter().enumerate() {
            let (_, want) = chain_reference(x0, k);
            assert!(
                (g[i] - want).abs() <= 1e-10 * want.abs().max(1e-300),
                "{} vs {want}",
                g[i]
            );
        }
    })
    .join()
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Resource limits (issue 17): every allocation sized by user input is checked first against
// the memory the machine reports, and a request too large is an error giving the size.
// ---------------------------------------------------------------------------------------------

/// The error of `r`, which must be an out-of-memory error naming `what` and a size.
fn oom<T: std::fmt::Debug>(r: candle_core::Result<T>, what: &str) -> String {
    let e = err_text(r);
    assert_mentions(&e, &["out of memory", what, "needs", "bytes"]);
    e
}

#[test]
fn too_large_requests_are_errors_that_give_the_size() {
    use lazy_kernels::backend::memory::available;
    use lazy_kernels::gp::{ExactGp, GpSettings, NllMethod, Positive};
    use lazy_kernels::{Kernel, KernelOperator, LogdetOptions, Preconditioner, Rank, SolveOptions};
    let dev = Device::Cpu;
    let (free, source) = available(&dev);
    eprintln!("available: {free} bytes ({source})");
    let x = LazyTensor::vi(&t(&[3, 2], DType::F32)).unwrap();
    let y = LazyTensor::vj(&t(&[5, 2], DType::F32)).unwrap();
    let d = x.sqdist(&y);

    // k: the case (an abort in the allocator before), and larger.
    let e = oom(
        d.argkmin(1_000_000_000_000, Axis::J),
        "the output (3 rows x 0 values",
    );
    eprintln!("{e}");
    oom(d.kmin_argkmin(usize::MAX / 4, Axis::J), "the output");
    // A k whose output fits but whose partial states (32 rows per task) do not.
    let k = free / 64;
    oom(d.argkmin(k, Axis::J), "the partial states");

    // Output rows x components: many rows of a wide k-min.
    let many = LazyTensor::vi(&t(&[200_000, 1], DType::F32)).unwrap();
    let wide = many.sqdist(&LazyTensor::vj(&t(&[4, 1], DType::F32)).unwrap());
    oom(
        wide.kmin(free / 100_000, Axis::J),
        "the output (200000 rows",
    );

    // Dense rows and dense matrices of a kernel operator.
    let pts = Tensor::zeros((1_000_000, 1), DType::F32, &dev).unwrap();
    let ls = Tensor::new(&[0.5f32], &dev).unwrap();
    let op = KernelOperator::new(Kernel::gaussian(&ls), &pts, &pts).unwrap();
    oom(op.to_dense(), "1000000 dense rows of 1000000 kernel values");
    let idx: Vec<usize> = (0..1_000_000).collect();
    oom(op.rows(&idx), "dense rows");

    // A batch of right-hand sides (a broadcast view: nothing is allocated to ask).
    let b = Tensor::zeros((1, 1), DType::F32, &dev)
        .unwrap()
        .broadcast_as((1_000_000, 10_000_000))
        .unwrap();
    oom(
        op.solve(&b, 0.1, &SolveOptions::default()),
        "the CG buffers",
    );

    // The preconditioner's rank.
    let b1 = Tensor::zeros((1_000_000, 1), DType::F32, &dev).unwrap();
    let ranked = SolveOptions {
        preconditioner: Preconditioner::PivotedCholesky(Rank::Fixed(1_000_000)),
        ..SolveOptions::default()
    };
    oom(op.solve(&b1, 0.1, &ranked), "a factor of rank 1000000");

    // The log-determinant's probes.
    let probes = LogdetOptions {
        probes: 1_000_000_000,
        ..LogdetOptions::default()
    };
    let small = Tensor::zeros((1000, 1), DType::F32, &dev).unwrap();
    let op_small = KernelOperator::new(Kernel::gaussian(&ls), &small, &small).unwrap();
    let b_small = Tensor::zeros((1000, 1), DType::F32, &dev).unwrap();
    oom(
        op_small.solve_logdet(&b_small, 0.1, &SolveOptions::default(), &probes),
        "1000000000 probes",
    );

    // The exact GP path on a million points.
    let yv = Tensor::zeros(1_000_000, DType::F32, &dev).unwrap();
    let l = Positive::new("lengthscale", &[0.5], DType::F32, &dev).unwrap();
    let noise = Positive::new("noise", &[0.1], DType::F32, &dev).unwrap();
    let lc = l.clone();
    let gp = ExactGp::new(&pts, &yv, vec![l], noise, move || {
        Ok(Kernel::gaussian(&lc.value()?))
    })
    .unwrap()
    .with_settings(GpSettings {
        nll_method: NllMethod::Exact,
        ..GpSettings::default()
    });
    oom(
        gp.nll(),
        "the exact NLL's dense f64 matrices for N = 1000000",
    );

    // The chunk of test points of exact predictive variances: chunk x N dense kernel rows.
    use lazy_kernels::gp::Variances;
    let n = 500;
    let xs = Tensor::arange(0u32, n as u32, &dev)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .affine(0.01, 0.0)
        .unwrap()
        .reshape((n, 1))
        .unwrap();
    let ys = xs.sin().unwrap().flatten_all().unwrap();
    let l = Positive::new("lengthscale", &[0.5], DType::F32, &dev).unwrap();
    let noise = Positive::new("noise", &[0.1], DType::F32, &dev).unwrap();
    let lc = l.clone();
    let gp = ExactGp::new(&xs, &ys, vec![l], noise, move || {
        Ok(Kernel::gaussian(&lc.value()?))
    })
    .unwrap()
    .with_settings(GpSettings {
        nll_method: NllMethod::Exact,
        variances: Variances::Exact,
        predict_chunk: usize::MAX,
        ..GpSettings::default()
    });
    // Twice the test points whose kernel rows (f32, and their pieces) fill the memory.
    let m = free / (4 * n);
    let x_new = Tensor::zeros((m, 1), DType::F32, &dev).unwrap();
    oom(
        gp.predict(&x_new),
        &format!("{m} dense rows of {n} kernel values"),
    );
}

/// Kernels too: a sum of a million kernels builds, prints and drops on a default-stack thread,
/// and an operator refuses it (more than `MAX_KERNEL_DEPTH` levels); a sum just under the
/// limit runs, against the closed form.
#[test]
fn deep_kernel_compositions_never_overflow_the_stack() {
    use lazy_kernels::operator::MAX_KERNEL_DEPTH;
    use lazy_kernels::{Kernel, KernelOperator};
    std::thread::spawn(|| {
        let dev = Device::Cpu;
        let ls = Tensor::new(&[1.0f64], &dev).unwrap();
        let x = Tensor::new(&[[0.0f64], [1.0]], &dev).unwrap();
        let sum_of = |n: usize| {
            let mut k = Kernel::gaussian(&ls);
            for _ in 1..n {
                k = k + Kernel::gaussian(&ls);
            }
            k
        };
        let deep = sum_of(1_000_000);
        assert!(format!("{deep:?}").contains("1000000 levels deep"));
        let copy = deep.clone();
        let e = err_text(KernelOperator::new(copy, &x, &x));
        assert_mentions(&e, &["MAX_KERNEL_DEPTH", "1000000"]);
        drop(deep);
        // n kernels of depth n: n Gaussians summed, K_01 = n exp(-1/2).
        let n = MAX_KERNEL_DEPTH;
        let k = KernelOperator::new(sum_of(n), &x, &x).unwrap();
        let dense = k.to_dense().unwrap().to_vec2::<f64>().unwrap();
        let want = n as f64 * (-0.5f64).exp();
        assert!(
            (dense[0][1] - want).abs() < 1e-9 * want,
            "{} vs {want}",
            dense[0][1]
        );
    })
    .join()
    .unwrap();
}
