//! The harness of the fuzz tests (issue 17, point 5): `tests/fuzz_tests.rs` (strings into the
//! parsers, formulas through the API) and `tests/fuzz_gp_tests.rs` (kernel operators, solves,
//! Gaussian processes).
//!
//! The property: every call returns `Ok` or `Err`, never panics (a panic is reported with the
//! input that caused it), and an `Ok` agrees with a dense `f64` reference (`tests/common` for
//! formulas, the kernels' definitions for operators) where one is computable: finite `f64`
//! inputs, formulas without discontinuous ops (near a jump, ulp differences between the
//! backend and Candle may land on either side), moderate hyperparameters. With NaN or
//! infinite inputs only `Ok`-or-`Err` is required.
//!
//! Each test prints its case count (`--nocapture` shows the `fuzz: ...` lines). The default
//! counts keep both files under a minute in the debug build (about 15 s together on a 2-core
//! machine). The cases come from a fixed seed, so the default run is reproducible; to fuzz
//! longer and with other inputs, set the number of cases per test and a seed, for example:
//!
//! ```text
//! LK_FUZZ_CASES=20000 LK_FUZZ_SEED=7 cargo test --release --test fuzz_tests -- --nocapture
//! ```
//!
//! `LK_FUZZ_REPLAY=<seed>` runs only the case of that seed (the seed a failure prints), and
//! `LK_FUZZ_DEBUG=1` prints the errors the cases return. The failures found so far are kept as
//! regression tests in `tests/fuzz_corpus.rs`.
#![allow(dead_code)]

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use candle_core::{DType, Tensor};
use proptest::prelude::{TestCaseError, any};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

/// Cases per test: `LK_FUZZ_CASES` if set, else `default`.
pub fn cases(default: u32) -> u32 {
    std::env::var("LK_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// A runner of `n` cases, seeded by `LK_FUZZ_SEED` if set, else by proptest's fixed seed.
pub fn runner(n: u32) -> TestRunner {
    let config = Config {
        cases: n,
        failure_persistence: None,
        max_shrink_iters: 0,
        ..Config::default()
    };
    let rng = match std::env::var("LK_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        Some(seed) => {
            let mut bytes = [0u8; 32];
            bytes[..8].copy_from_slice(&seed.to_le_bytes());
            TestRng::from_seed(RngAlgorithm::ChaCha, &bytes)
        }
        None => TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    };
    TestRunner::new_with_rng(config, rng)
}

/// Runs `check` on `n` random seeds; fails the test with the failing seed's message.
pub fn fuzz(name: &str, n: u32, check: impl Fn(u64) -> Result<(), TestCaseError>) {
    if let Some(seed) = std::env::var("LK_FUZZ_REPLAY")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        // One case again, by the seed a failure printed.
        if let Err(e) = check(seed) {
            panic!("{name}: {e}");
        }
        return;
    }
    let start = Instant::now();
    let count = std::cell::Cell::new(0usize);
    let result = runner(n).run(&any::<u64>(), |seed| {
        count.set(count.get() + 1);
        check(seed)
    });
    eprintln!(
        "fuzz: {} {name} cases in {:.1} s",
        count.get(),
        start.elapsed().as_secs_f64()
    );
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
}

/// `f()`, with a panic turned into a test failure that names `what` (the input).
pub fn no_panic<T>(what: impl Fn() -> String, f: impl FnOnce() -> T) -> Result<T, TestCaseError> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        TestCaseError::fail(format!("panic on {}: {msg}", what()))
    })
}

/// With `LK_FUZZ_DEBUG` set, prints the first line of an error a case returned (to see which
/// errors the generators produce most).
pub fn debug(what: &str, err: &candle_core::Error) {
    if std::env::var("LK_FUZZ_DEBUG").is_ok() {
        eprintln!("{what}: {}", err.to_string().lines().next().unwrap_or(""));
    }
}

pub fn check(ok: bool, what: impl Fn() -> String) -> Result<(), TestCaseError> {
    if ok {
        Ok(())
    } else {
        Err(TestCaseError::fail(what()))
    }
}

/// `|g - w| <= atol + rtol |w|` element-wise (NaN equals NaN).
pub fn close(got: &[f64], want: &[f64], rtol: f64, atol: f64) -> Option<String> {
    if got.len() != want.len() {
        return Some(format!("{} values, want {}", got.len(), want.len()));
    }
    got.iter().zip(want).enumerate().find_map(|(k, (g, w))| {
        let ok = g == w || (g.is_nan() && w.is_nan()) || (g - w).abs() <= atol + rtol * w.abs();
        (!ok).then(|| format!("element {k}: got {g}, want {w} (rtol {rtol}, atol {atol})"))
    })
}

/// Whether every value of `t` is finite.
pub fn all_finite(t: &Tensor) -> bool {
    t.flatten_all()
        .and_then(|t| t.to_dtype(DType::F64))
        .and_then(|t| t.to_vec1::<f64>())
        .is_ok_and(|v| v.iter().all(|x| x.is_finite()))
}
