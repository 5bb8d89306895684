//! The block path (inner products by matrix products, `lazy_kernels::op::gram`) against the
//! direct path, dense f64 references and finite differences, on the CPU.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::{Rng, assert_close, flat, flat_i64};
use lazy_kernels::{Axis, LazyTensor, Path, ReductionKind, ReductionOptions};

fn with(path: Path) -> ReductionOptions {
    ReductionOptions {
        path,
        ..Default::default()
    }
}

/// Squared distances `(M, N)` in f64, densely.
fn dense_sqdist(x: &Tensor, y: &Tensor) -> Tensor {
    let (x, y) = (
        x.to_dtype(DType::F64).unwrap(),
        y.to_dtype(DType::F64).unwrap(),
    );
    let d = x
        .unsqueeze(1)
        .unwrap()
        .broadcast_sub(&y.unsqueeze(0).unwrap())
        .unwrap();
    d.sqr().unwrap().sum(2).unwrap()
}

/// A formula for each kind: a Gaussian kernel times 3 weights for `Sum`, the kernel with the
/// weights for `SumSoftMaxWeight`, the scaled distance otherwise.
fn formula_for(kind: ReductionKind, x: &LazyTensor, y: &LazyTensor, b: &LazyTensor) -> LazyTensor {
    let d = x.sqdist(y);
    match kind {
        ReductionKind::Sum => (-&d * 0.05).exp() * b,
        ReductionKind::LogSumExp => -&d * 0.05,
        ReductionKind::SumSoftMaxWeight => (-&d * 0.05).concat(b),
        _ => d,
    }
}

fn run(f: &LazyTensor, kind: ReductionKind, axis: Axis, path: Path) -> (Vec<f64>, Vec<i64>) {
    let out = f.reduce_with(kind, axis, &with(path)).unwrap();
    (
        out.values.map(|v| flat(&v)).unwrap_or_default(),
        out.indices.map(|i| flat_i64(&i)).unwrap_or_default(),
    )
}

#[test]
fn every_reduction_kind_on_blocks_agrees_with_the_direct_path_in_f64() {
    let mut rng = Rng(7);
    let (m, n, d) = (70, 150, 40);
    let x = rng.tensor(&[m, d], 0.0, 1.0);
    let y = rng.tensor(&[n, d], 0.0, 1.0);
    let b = rng.tensor(&[n, 3], -1.0, 1.0);
    let bi = rng.tensor(&[m, 3], -1.0, 1.0);
    for axis in [Axis::J, Axis::I] {
        let (xl, yl) = (LazyTensor::vi(&x).unwrap(), LazyTensor::vj(&y).unwrap());
        let bl = match axis {
            Axis::J => LazyTensor::vj(&b).unwrap(),
            Axis::I => LazyTensor::vi(&bi).unwrap(),
        };
        for kind in ReductionKind::all(5) {
            let f = formula_for(kind, &xl, &yl, &bl);
            let (v_blk, i_blk) = run(&f, kind, axis, Path::Blocks);
            let (v_dir, i_dir) = run(&f, kind, axis, Path::Direct);
            let what = format!("{kind:?} over {axis:?}");
            assert_close(&v_blk, &v_dir, 1e-11, 1e-12, &what);
            assert_eq!(i_blk, i_dir, "{what}: indices");
        }
    }
}

#[test]
fn the_gaussian_sum_on_blocks_matches_a_dense_f64_sum() {
    let mut rng = Rng(11);
    let (m, n, d) = (90, 300, 64);
    let x = rng.tensor(&[m, d], -1.0, 1.0);
    let y = rng.tensor(&[n, d], -1.0, 1.0);
    let b = rng.tensor(&[n, 2], -1.0, 1.0);
    let k = (-LazyTensor::vi(&x)
        .unwrap()
        .sqdist(&LazyTensor::vj(&y).unwrap())
        * 0.1)
        .exp();
    let f = k * LazyTensor::vj(&b).unwrap();
    assert_eq!(
        f.explain(ReductionKind::Sum, Axis::J, &Default::default())
            .unwrap()
            .path,
        Path::Blocks
    );
    let got = f.sum(Axis::J).unwrap();
    let kxy = (dense_sqdist(&x, &y) * -0.1).unwrap().exp().unwrap();
    let want = lazy_kernels::linalg::matmul(&kxy, &b).unwrap();
    assert_close(&flat(&got), &flat(&want), 1e-12, 1e-13, "Gaussian sum");
}

#[test]
fn weighted_distances_and_inner_products_take_the_block_path() {
    let mut rng = Rng(3);
    let (m, n, d) = (40, 200, 32);
    let x = rng.tensor(&[m, d], -1.0, 1.0);
    let y = rng.tensor(&[n, d], -1.0, 1.0);
    let w = rng.tensor(&[d], 0.1, 2.0);
    let (xl, yl) = (LazyTensor::vi(&x).unwrap(), LazyTensor::vj(&y).unwrap());
    let wl = LazyTensor::param(&w).unwrap();
    let weighted = (-xl.weighted_sqdist(&yl, &wl) * 0.1).exp();
    let dot = xl.dot(&yl).tanh();
    for f in [weighted, dot] {
        let r = f
            .explain(ReductionKind::Sum, Axis::J, &Default::default())
            .unwrap();
        assert_eq!(r.path, Path::Blocks, "{r}");
        let (a, _) = run(&f, ReductionKind::Sum, Axis::J, Path::Blocks);
        let (b, _) = run(&f, ReductionKind::Sum, Axis::J, Path::Direct);
        assert_close(&a, &b, 1e-11, 1e-12, &format!("{r}"));
    }
}

#[test]
fn the_choice_is_reported_and_a_forced_block_path_that_cannot_run_is_an_error() {
    let dev = Device::Cpu;
    let pts = |rows: usize, d: usize| Tensor::zeros((rows, d), DType::F32, &dev).unwrap();
    let (x3, y3) = (
        LazyTensor::vi(&pts(1000, 3)).unwrap(),
        LazyTensor::vj(&pts(1000, 3)).unwrap(),
    );
    let (x8, y8) = (
        LazyTensor::vi(&pts(1000, 8)).unwrap(),
        LazyTensor::vj(&pts(1000, 8)).unwrap(),
    );
    let (x64, y64) = (
        LazyTensor::vi(&pts(1000, 64)).unwrap(),
        LazyTensor::vj(&pts(1000, 64)).unwrap(),
    );
    let auto = ReductionOptions::default();
    let knn = ReductionKind::ArgKMin(10);
    for (x, y, want) in [
        (&x3, &y3, Path::Direct),
        (&x8, &y8, Path::Direct),
        (&x64, &y64, Path::Blocks),
    ] {
        let r = x.sqdist(y).explain(knn, Axis::J, &auto).unwrap();
        assert_eq!(r.path, want, "{r}");
        assert!(!r.reason.is_empty());
    }
    let forced_direct = x64.sqdist(&y64).explain(knn, Axis::J, &with(Path::Direct));
    assert_eq!(forced_direct.unwrap().path, Path::Direct);
    // The periodic kernel's sin(x - y) is not a function of <x, y>.
    let periodic = (x64.clone() - y64.clone()).sin().square().component_sum();
    let err = periodic
        .reduce_with(ReductionKind::Sum, Axis::J, &with(Path::Blocks))
        .unwrap_err()
        .to_string();
    assert!(err.contains("block path was forced"), "{err}");
    // Half precision keeps the direct path (the expansion cancels).
    let h = |t: &Tensor| t.to_dtype(DType::F16).unwrap();
    let xh = LazyTensor::vi(&h(&pts(1000, 64))).unwrap();
    let yh = LazyTensor::vj(&h(&pts(1000, 64))).unwrap();
    let r = xh.sqdist(&yh).explain(knn, Axis::J, &auto).unwrap();
    assert_eq!(r.path, Path::Direct, "{r}");
}

#[test]
fn a_small_memory_budget_gives_small_blocks_and_the_same_result() {
    let mut rng = Rng(5);
    let (m, n, d) = (130, 5000, 24);
    let x = rng.tensor(&[m, d], 0.0, 1.0);
    let y = rng.tensor(&[n, d], 0.0, 1.0);
    let f = (-LazyTensor::vi(&x)
        .unwrap()
        .sqdist(&LazyTensor::vj(&y).unwrap()))
    .exp();
    let tiny = ReductionOptions {
        path: Path::Blocks,
        block_bytes: 4096,
        ..Default::default()
    };
    let a = flat(
        &f.reduce_with(ReductionKind::Sum, Axis::J, &tiny)
            .unwrap()
            .values
            .unwrap(),
    );
    let (b, _) = run(&f, ReductionKind::Sum, Axis::J, Path::Direct);
    assert_close(&a, &b, 1e-12, 1e-13, "tiny blocks");
}

/// `sum_i w_i * out_i` and its gradients with respect to x, y, the bandwidth and the weights.
fn gaussian_grads(x: &Var, y: &Var, s: &Var, b: &Var, w: &Tensor, path: Path) -> Vec<Vec<f64>> {
    let (xl, yl) = (LazyTensor::vi(x).unwrap(), LazyTensor::vj(y).unwrap());
    let sl = LazyTensor::param(s).unwrap();
    let k = (-xl.sqdist(&yl) / (sl.square() * 2.0)).exp();
    let out = (k * LazyTensor::vj(b).unwrap())
        .reduce_with(ReductionKind::Sum, Axis::J, &with(path))
        .unwrap()
        .values
        .unwrap();
    let loss = (out * w).unwrap().sum_all().unwrap();
    let g = loss.backward().unwrap();
    [x, y, s, b]
        .iter()
        .map(|v| flat(g.get(v).expect("a gradient")))
        .collect()
}

#[test]
fn gradients_through_blocks_match_the_direct_path_and_finite_differences() {
    let mut rng = Rng(13);
    let (m, n, d) = (50, 120, 48);
    let x = Var::from_tensor(&rng.tensor(&[m, d], 0.0, 1.0)).unwrap();
    let y = Var::from_tensor(&rng.tensor(&[n, d], 0.0, 1.0)).unwrap();
    let s = Var::from_tensor(&Tensor::new(&[1.5f64], &Device::Cpu).unwrap()).unwrap();
    let b = Var::from_tensor(&rng.tensor(&[n, 2], -1.0, 1.0)).unwrap();
    let w = rng.tensor(&[m, 2], -1.0, 1.0);
    let blk = gaussian_grads(&x, &y, &s, &b, &w, Path::Blocks);
    let dir = gaussian_grads(&x, &y, &s, &b, &w, Path::Direct);
    for (name, (a, b)) in ["x", "y", "sigma", "b"].iter().zip(blk.iter().zip(&dir)) {
        assert_close(a, b, 1e-9, 1e-12, &format!("gradient wrt {name}"));
    }
    // Central differences of the loss along a few coordinates of x, on the block path.
    let loss = |xv: &Tensor| -> f64 {
        let (xl, yl) = (
            LazyTensor::vi(xv).unwrap(),
            LazyTensor::vj(y.as_tensor()).unwrap(),
        );
        let sl = LazyTensor::param(&s).unwrap();
        let k = (-xl.sqdist(&yl) / (sl.square() * 2.0)).exp();
        let out = (k * LazyTensor::vj(&b).unwrap())
            .reduce_with(ReductionKind::Sum, Axis::J, &with(Path::Blocks))
            .unwrap()
            .values
            .unwrap();
        (out * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let x0 = flat(x.as_tensor());
    let h = 1e-5;
    for k in [0, 7, d + 3, 17 * d + 40] {
        let bump = |delta: f64| {
            let mut v = x0.clone();
            v[k] += delta;
            Tensor::from_vec(v, (m, d), &Device::Cpu).unwrap()
        };
        let fd = (loss(&bump(h)) - loss(&bump(-h))) / (2.0 * h);
        assert!(
            (fd - blk[0][k]).abs() <= 1e-6 * fd.abs().max(1.0),
            "x[{k}]: finite difference {fd}, block gradient {}",
            blk[0][k]
        );
    }
}

#[test]
fn gradients_of_logsumexp_and_kmin_on_blocks_match_the_direct_path() {
    let mut rng = Rng(17);
    let (m, n, d) = (40, 100, 32);
    let x = Var::from_tensor(&rng.tensor(&[m, d], 0.0, 1.0)).unwrap();
    let y = Var::from_tensor(&rng.tensor(&[n, d], 0.0, 1.0)).unwrap();
    for kind in [
        ReductionKind::LogSumExp,
        ReductionKind::KMin(3),
        ReductionKind::Min,
    ] {
        let grads = |path: Path| -> Vec<Vec<f64>> {
            let f = -LazyTensor::vi(&x)
                .unwrap()
                .sqdist(&LazyTensor::vj(&y).unwrap());
            let out = f
                .reduce_with(kind, Axis::J, &with(path))
                .unwrap()
                .values
                .unwrap();
            let g = out.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            [&x, &y].iter().map(|v| flat(g.get(v).unwrap())).collect()
        };
        let (a, b) = (grads(Path::Blocks), grads(Path::Direct));
        assert_close(
            &a[0],
            &b[0],
            1e-8,
            1e-10,
            &format!("{kind:?}: gradient wrt x"),
        );
        assert_close(
            &a[1],
            &b[1],
            1e-8,
            1e-10,
            &format!("{kind:?}: gradient wrt y"),
        );
    }
}

/// Points of three kinds, `(x, y)` in f32: uniform in the unit cube; five tight clusters far
/// from the origin; and `y` holding exact copies of the rows of `x`.
fn datasets(rng: &mut Rng, m: usize, n: usize, d: usize) -> Vec<(&'static str, Tensor, Tensor)> {
    let f32 = |t: Tensor| t.to_dtype(DType::F32).unwrap();
    let uniform = (rng.tensor(&[m, d], 0.0, 1.0), rng.tensor(&[n, d], 0.0, 1.0));
    let centres = rng.tensor(&[5, d], 20.0, 30.0);
    let mut cluster = |rows: usize| {
        let pick: Vec<u32> = (0..rows).map(|_| rng.below(5) as u32).collect();
        let idx = Tensor::new(pick.as_slice(), &Device::Cpu).unwrap();
        let c = centres.index_select(&idx, 0).unwrap();
        (c + rng.tensor(&[rows, d], -0.05, 0.05)).unwrap()
    };
    let clustered = (cluster(m), cluster(n));
    let x = rng.tensor(&[m, d], 0.0, 1.0);
    let copies: Vec<u32> = (0..n).map(|j| (j % m) as u32).collect();
    let y = x
        .index_select(&Tensor::new(copies.as_slice(), &Device::Cpu).unwrap(), 0)
        .unwrap();
    vec![
        ("uniform", f32(uniform.0), f32(uniform.1)),
        ("clustered", f32(clustered.0), f32(clustered.1)),
        ("duplicated", f32(x), f32(y)),
    ]
}

/// The largest error of `got` against `want`, relative to the largest `|want|`.
fn normwise_error(got: &[f64], want: &[f64]) -> f64 {
    let scale = want.iter().fold(0f64, |a, w| a.max(w.abs()));
    got.iter()
        .zip(want)
        .fold(0f64, |a, (g, w)| a.max((g - w).abs()))
        / scale
}

#[test]
fn in_f32_the_block_path_is_within_10x_of_the_direct_paths_error() {
    let mut rng = Rng(23);
    let (m, n, d) = (200, 700, 64);
    for (name, x, y) in datasets(&mut rng, m, n, d) {
        let d2 = dense_sqdist(&x, &y);
        // Bandwidths at the scale of the data (the mean squared distance) and of the nearest
        // pairs (the 1st percentile, where cancellation in |x|^2 + |y|^2 - 2<x, y> shows).
        let mut sorted = flat(&d2);
        sorted.sort_by(f64::total_cmp);
        let small = sorted[sorted.len() / 100].max(1e-3);
        let mean = sorted.iter().sum::<f64>() / sorted.len() as f64;
        for scale in [mean, small] {
            let want = flat(
                &(&d2 / -scale)
                    .unwrap()
                    .exp()
                    .unwrap()
                    .sum_keepdim(1)
                    .unwrap(),
            );
            let k = (-LazyTensor::vi(&x)
                .unwrap()
                .sqdist(&LazyTensor::vj(&y).unwrap())
                * (1.0 / scale))
                .exp();
            let err = |path| normwise_error(&run(&k, ReductionKind::Sum, Axis::J, path).0, &want);
            let (blk, dir) = (err(Path::Blocks), err(Path::Direct));
            println!(
                "{name}: Gaussian sum, f32, D = {d}, 2 s^2 = {scale:.3e}: error {blk:.2e} \
                 (blocks), {dir:.2e} (direct)"
            );
            assert!(
                blk <= 10.0 * dir.max(f32::EPSILON as f64),
                "{name}: block error {blk:e} against direct {dir:e}"
            );
        }
    }
}

#[test]
fn in_f32_argkmin_on_blocks_matches_the_direct_path_up_to_ties_within_the_stated_error() {
    let mut rng = Rng(29);
    let (m, n, d, k) = (150, 600, 96, 10);
    for (name, x, y) in datasets(&mut rng, m, n, d) {
        let f = LazyTensor::vi(&x)
            .unwrap()
            .sqdist(&LazyTensor::vj(&y).unwrap());
        let kind = ReductionKind::ArgKMin(k);
        let (_, blk) = run(&f, kind, Axis::J, Path::Blocks);
        let (_, dir) = run(&f, kind, Axis::J, Path::Direct);
        let d2 = dense_sqdist(&x, &y).to_vec2::<f64>().unwrap();
        // The stated error of a squared distance on the block path: 8 eps (|x'|^2 + |y'|^2),
        // with x' and y' centred on the mean of all points.
        let x64 = x.to_dtype(DType::F64).unwrap();
        let y64 = y.to_dtype(DType::F64).unwrap();
        let c = ((x64.sum_keepdim(0).unwrap() + y64.sum_keepdim(0).unwrap()).unwrap()
            / (m + n) as f64)
            .unwrap();
        let norms = |t: &Tensor| flat(&t.broadcast_sub(&c).unwrap().sqr().unwrap().sum(1).unwrap());
        let (xn, yn) = (norms(&x64), norms(&y64));
        let mut differ = 0;
        for i in 0..m {
            for r in 0..k {
                let (a, b) = (blk[i * k + r] as usize, dir[i * k + r] as usize);
                if a == b {
                    continue;
                }
                differ += 1;
                let tol = 8.0 * f32::EPSILON as f64 * (xn[i] + yn[a].max(yn[b]));
                assert!(
                    (d2[i][a] - d2[i][b]).abs() <= tol,
                    "{name}: row {i} rank {r}: blocks pick {a} ({}), direct {b} ({}), tol {tol:e}",
                    d2[i][a],
                    d2[i][b]
                );
            }
        }
        println!(
            "{name}: ArgKMin({k}), f32, D = {d}: {differ} of {} slots differ (ties)",
            m * k
        );
    }
}

#[test]
fn the_gradients_of_a_block_reduction_are_matrix_products_on_blocks() {
    use lazy_kernels::backend::census;
    let mut rng = Rng(31);
    // A dimension no other test of this file uses: the census sees their reductions too.
    let (m, n, d) = (100, 130, 44);
    let x = Var::from_tensor(&rng.tensor(&[m, d], 0.0, 1.0)).unwrap();
    let y = Var::from_tensor(&rng.tensor(&[n, d], 0.0, 1.0)).unwrap();
    census::start();
    let k = (-LazyTensor::vi(&x)
        .unwrap()
        .sqdist(&LazyTensor::vj(&y).unwrap()))
    .exp();
    let out = k.sum(Axis::J).unwrap();
    let grads = out.sum_all().unwrap().backward().unwrap();
    let seen = census::stop();
    assert!(grads.get(&x).is_some() && grads.get(&y).is_some());
    let used: Vec<(String, Path, bool)> = seen
        .kernels
        .iter()
        .filter(|k| k.dispatches > 0 && k.formula.contains(",44)"))
        .map(|k| (format!("{}: {}", k.reduction, k.formula), k.path, k.matmul))
        .collect();
    let products = used.iter().filter(|k| k.1 == Path::Blocks && k.2).count();
    // The gradients with respect to x (over j) and y (over i): c_ij (x_i - y_j), run as C Y
    // and C^T X.
    assert!(products >= 2, "{used:#?}");
    assert!(
        used.iter()
            .all(|k| k.1 == Path::Blocks || !k.0.contains("Vj(")),
        "a reduction over pairs ran on the direct path: {used:#?}"
    );
}

#[test]
fn block_results_do_not_depend_on_the_number_of_threads() {
    let mut rng = Rng(37);
    // Two row blocks and ten chunks of terms: the chunks are split into groups per row block,
    // combined in order.
    let (m, n, d) = (700, 20_000, 32);
    let x = rng.tensor(&[m, d], 0.0, 1.0).to_dtype(DType::F32).unwrap();
    let y = rng.tensor(&[n, d], 0.0, 1.0).to_dtype(DType::F32).unwrap();
    let b = rng.tensor(&[n, 3], -1.0, 1.0).to_dtype(DType::F32).unwrap();
    let (xl, yl) = (LazyTensor::vi(&x).unwrap(), LazyTensor::vj(&y).unwrap());
    let k = (-xl.sqdist(&yl) * 0.2).exp();
    let sum = k.clone() * LazyTensor::vj(&b).unwrap();
    let all = || {
        let (s, _) = run(&k, ReductionKind::Sum, Axis::J, Path::Blocks);
        let (v, _) = run(&sum, ReductionKind::Sum, Axis::J, Path::Blocks);
        let (_, i) = run(
            &xl.sqdist(&yl),
            ReductionKind::ArgKMin(7),
            Axis::J,
            Path::Blocks,
        );
        (s, v, i)
    };
    let many = all();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let one = pool.install(all);
    assert!(many.0 == one.0 && many.1 == one.1 && many.2 == one.2);
}

#[test]
fn mixed_dtypes_on_the_block_path_get_the_validation_error() {
    let mut rng = Rng(41);
    let x = rng.tensor(&[50, 64], 0.0, 1.0);
    let y = rng
        .tensor(&[80, 64], 0.0, 1.0)
        .to_dtype(DType::F32)
        .unwrap();
    let f = LazyTensor::vi(&x)
        .unwrap()
        .sqdist(&LazyTensor::vj(&y).unwrap());
    for path in [Path::Auto, Path::Blocks] {
        let err = f
            .reduce_with(ReductionKind::ArgKMin(3), Axis::J, &with(path))
            .unwrap_err()
            .to_string();
        assert!(err.contains("one dtype"), "{path:?}: {err}");
    }
}

/// A backward pass whose gradient parts each take the block path alone while their
/// concatenation would not (many hyperparameters of a composite kernel, weighted by an inner
/// product of dimension 32) is reduced once: it used to split the Concat into itself and
/// recurse until the stack overflowed. The gradient matches the dense one.
#[test]
fn gradient_concat_of_block_parts_is_reduced_and_right() {
    use lazy_kernels::{Kernel, KernelOperator};
    let dev = Device::Cpu;
    let (m, n, e) = (32, 300, 32);
    let x = Tensor::rand(0f64, 3.0, (n, 1), &dev).unwrap();
    let w = Tensor::randn(0f64, 1.0, (n, e), &dev).unwrap();
    let eye = Tensor::eye(e, DType::F64, &dev).unwrap();
    let vars: Vec<Var> = [0.7, 1.3, 0.9, 0.5, 2.0, 0.3]
        .iter()
        .map(|v| Var::new(&[*v], &dev).unwrap())
        .collect();
    let t = |k: usize| vars[k].as_tensor().clone();
    let kernel = (Kernel::gaussian(&t(0)) * Kernel::periodic(&t(1), &t(2))).scale(&t(5))
        + Kernel::rational_quadratic(&t(3), &t(4))
        + Kernel::gaussian(&t(2)).scale(&t(1));
    let op = KernelOperator::new(kernel, &x.narrow(0, 0, m).unwrap(), &x).unwrap();
    // sum_ij <e_i, w_j> K_ij = sum_ij W_ij K_ij with W = w[:, :m]^T.
    let lazy = (op.lazy().unwrap()
        * LazyTensor::vi(&eye)
            .unwrap()
            .dot(&LazyTensor::vj(&w).unwrap()))
    .sum(Axis::J)
    .unwrap()
    .sum_all()
    .unwrap();
    let weights = w.narrow(1, 0, m).unwrap().t().unwrap();
    let dense = (op.to_dense().unwrap() * weights)
        .unwrap()
        .sum_all()
        .unwrap();
    let (gl, gd) = (lazy.backward().unwrap(), dense.backward().unwrap());
    assert_close(&flat(&lazy), &flat(&dense), 1e-10, 1e-10, "value");
    for (k, v) in vars.iter().enumerate() {
        let (a, b) = (gl.get(v).unwrap(), gd.get(v).unwrap());
        assert_close(&flat(a), &flat(b), 1e-9, 1e-9, &format!("gradient {k}"));
    }
}
