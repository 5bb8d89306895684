//! The failures `tests/fuzz_tests.rs` and `tests/fuzz_gp_tests.rs` found, each as its minimal
//! input (issue 17, point 5).
//!
//! A test marked `#[ignore]` is a failure not fixed yet; its reason names the place. Run them
//! with `cargo test --test fuzz_corpus -- --ignored` (the hang fails after 60 s).

use candle_core::{DType, Device, Tensor};
use lazy_kernels::formula::parse;
use lazy_kernels::gp::{ExactGp, FitOptions, GpSettings, NllMethod, Optimizer, Positive};
use lazy_kernels::{Axis, Kernel, KernelOperator, LazyTensor, Preconditioner, Rank, SolveOptions};

/// A 1D GP of 8 points with a Gaussian kernel, with `settings`.
fn small_gp(settings: GpSettings) -> ExactGp {
    let dev = Device::Cpu;
    let x = Tensor::new(&[0.0f64, 0.1, 0.25, 0.4, 0.5, 0.7, 0.8, 0.95], &dev).unwrap();
    let y = (x.clone() * 3.0).unwrap().sin().unwrap();
    let l = Positive::new("lengthscale", &[0.3], DType::F64, &dev).unwrap();
    let noise = Positive::new("noise", &[1e-2], DType::F64, &dev).unwrap();
    let lc = l.clone();
    ExactGp::new(&x, &y, vec![l], noise, move || {
        Ok(Kernel::gaussian(&lc.value()?))
    })
    .unwrap()
    .with_settings(settings)
}

/// A formula nested near the parser's depth cap parses back from its canonical form: `--x`
/// prints as `-(-x)`, and the parser used to count that parenthesis as a second level, so
/// 200 negations printed as 400 levels, over the cap of 256. Fixed in `src/formula/parse.rs`.
#[test]
fn printed_negation_chain_parses_back() {
    let src = format!("{}Vi(0,1)", "-".repeat(200));
    let f = parse(&src, &[]).unwrap();
    let printed = f.to_string();
    assert!(printed.starts_with("-(-(-("), "{printed}");
    assert_eq!(parse(&printed, &[]).unwrap(), f);
    // The cap still holds for parenthesised negations.
    let deep = format!("{}Vi(0,1){}", "-(".repeat(300), ")".repeat(300));
    assert!(parse(&deep, &[]).is_err());
}

/// A bound name at the parser's depth cap parses back from its canonical form: the name
/// prints as the leaf `Vi(0,1)`, a call, which the parser used to count as one more level.
/// Fixed in `src/formula/parse.rs`.
#[test]
fn printed_leaf_at_the_depth_cap_parses_back() {
    let x = parse("Vi(0,1)", &[]).unwrap();
    let src = format!("{}x", "-".repeat(255));
    let f = parse(&src, &[("x", x)]).unwrap();
    assert_eq!(parse(&f.to_string(), &[]).unwrap(), f);
}

/// `probes: usize::MAX` on the stochastic path: `rows * cols` of the probe block overflowed in
/// `src/solve/random.rs` ("attempt to multiply with overflow" in debug builds); fixed by the
/// resource limits of issue 17 point 1.
#[test]
fn huge_probe_count_is_an_error() {
    let gp = small_gp(GpSettings {
        nll_method: NllMethod::Stochastic,
        probes: usize::MAX,
        ..GpSettings::default()
    });
    assert!(gp.nll().is_err());
}

/// `Optimizer::Lbfgs { history: usize::MAX }`: `VecDeque::with_capacity(history)` in
/// `src/gp/fit.rs` panics with "capacity overflow" (a large finite history would abort).
#[test]
fn huge_lbfgs_history_is_an_error() {
    let mut gp = small_gp(GpSettings {
        nll_method: NllMethod::Exact,
        ..GpSettings::default()
    });
    let opts = FitOptions {
        optimizer: Optimizer::Lbfgs {
            history: usize::MAX,
        },
        steps: 2,
        progress: false,
        ..FitOptions::default()
    };
    let _ = gp.fit(&opts);
}

/// `FitOptions { steps: usize::MAX }`: `Vec::with_capacity(opts.steps)` in `src/gp/fit.rs`
/// panics with "capacity overflow" (a large finite count would abort), before any step.
#[test]
fn huge_step_count_is_not_an_allocation() {
    let mut gp = small_gp(GpSettings {
        nll_method: NllMethod::Exact,
        ..GpSettings::default()
    });
    let opts = FitOptions {
        steps: usize::MAX,
        tol: 1.0, // stops at the first window
        patience: 1,
        progress: false,
        ..FitOptions::default()
    };
    let _ = gp.fit(&opts);
}

/// `FitOptions { patience: usize::MAX }`: `2 * w` in the early-stopping test of
/// `src/gp/fit.rs` overflows ("attempt to multiply with overflow" in debug builds).
#[test]
fn huge_patience_is_not_an_overflow() {
    let mut gp = small_gp(GpSettings {
        nll_method: NllMethod::Exact,
        ..GpSettings::default()
    });
    let opts = FitOptions {
        steps: 2,
        patience: usize::MAX,
        progress: false,
        ..FitOptions::default()
    };
    let report = gp.fit(&opts).unwrap();
    assert_eq!(report.trajectory.len(), 2);
}

/// The issue's own case: `argkmin(10^9)` aborted the process (a 256 GB allocation); fixed by
/// the resource limits of issue 17 point 1.
#[test]
fn argkmin_of_a_billion_is_an_error() {
    let x = Tensor::rand(0f32, 1., (32, 3), &Device::Cpu).unwrap();
    let d = LazyTensor::vi(&x)
        .unwrap()
        .sqdist(&LazyTensor::vj(&x).unwrap());
    assert!(d.argkmin(1_000_000_000, Axis::J).is_err());
}

/// `SolveOptions { max_iters: usize::MAX, check_residual: false }` on a numerically singular
/// system (50 points of the unit square, a Gaussian kernel of lengthscale 1.06, no ridge) whose
/// tolerance `1e-8` the recurrence never reaches: only the residual checks detected a stall, so
/// the solve never returned; the recurrence's own stall rule stops it now. The test fails
/// after 60 s (its thread runs on until the process ends).
#[test]
fn unbounded_iterations_without_residual_checks_terminate() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let dev = Device::Cpu;
        let x = Tensor::rand(0f64, 1., (50, 2), &dev).unwrap();
        let b = Tensor::rand(-1f64, 1., (50, 2), &dev).unwrap();
        let l = Tensor::new(&[1.064f64], &dev).unwrap();
        let k = KernelOperator::new(Kernel::gaussian(&l), &x, &x).unwrap();
        let opts = SolveOptions {
            tol: 1e-8,
            max_iters: usize::MAX,
            preconditioner: Preconditioner::PivotedCholesky(Rank::Auto { max: 100 }),
            x0: None,
            check_residual: false,
            progress: None,
        };
        let _ = tx.send(
            k.solve(&b, 0.0, &opts)
                .map(|(_, info)| info.all_converged()),
        );
    });
    let answer = rx.recv_timeout(std::time::Duration::from_secs(60));
    // It returns, reporting columns that did not converge (stalled).
    assert!(matches!(answer, Ok(Ok(false))), "{answer:?}");
}
