//! Fuzzing of the public entry points (issue 17, point 5): random and mutated strings into the
//! parsers, random formula trees built through the API (random shapes, dtypes, layouts, special
//! values, every reduction kind on both axes, `k`, gradients), and random options and kernels
//! into [`KernelOperator::solve`] and [`ExactGp`].
//!
//! The property: every call returns `Ok` or `Err`, never panics (a panic is reported with the
//! input that caused it), and an `Ok` agrees with a dense `f64` Candle reference
//! (`tests/common`) where one is computable: finite `f64` inputs, and formulas without
//! discontinuous ops (near a jump, ulp differences between the backend and Candle may land on
//! either side). With NaN or infinite inputs only `Ok`-or-`Err` is required.
//!
//! The entry points, one test each: `formula::parse` and `LazyTensor::parse` (mutated valid
//! formulas; random strings), formulas through `LazyTensor`'s operators, methods and
//! `reduce_with`, and through `Expr::new` and `LazyTensor::from_formula` (every
//! `ReductionKind`, both axes, `k`, gradients), `KernelOperator`'s products, `solve`, and
//! `ExactGp::{new, nll, predict, fit}`.
//!
//! Each test prints its case count (`cargo test --test fuzz_tests -- --nocapture` shows the
//! `fuzz: ...` lines). The default counts keep the file under a minute in the debug build
//! (about 25 s on a 2-core machine). The
//! cases come from a fixed seed, so the default run is reproducible; to fuzz longer and with
//! other inputs, set the number of cases per test and a seed, for example:
//!
//! ```text
//! LK_FUZZ_CASES=20000 LK_FUZZ_SEED=7 cargo test --release --test fuzz_tests -- --nocapture
//! ```
//!
//! `LK_FUZZ_REPLAY=<seed>` runs only the case of that seed (the seed a failure prints), and
//! `LK_FUZZ_DEBUG=1` prints the errors the cases return.
//!
//! The failures found so far are kept as regression tests in `tests/fuzz_corpus.rs`.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var as CVar};
use common::{
    dense_autodiff_covers, dense_eval, dense_values, flat, flat_i64, ref_lse, ref_softmax_weight,
    ref_sorted, ref_sum, table_op_sources, Dense, Rng,
};
use lazy_kernels::formula::{parse, BinaryOp, Expr, Op, TernaryOp, UnaryOp, Var, VarCat};
use lazy_kernels::gp::{
    ExactGp, FitOptions, GpSettings, NllMethod, Optimizer, Positive, Variances,
};
use lazy_kernels::{
    Axis, Kernel, KernelOperator, LazyTensor, LogdetEstimator, Nu, Path, Preconditioner, Rank,
    ReductionKind, ReductionOptions, Ridge, SolveOptions,
};
use proptest::prelude::{any, TestCaseError};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

// ------------------------------------------------------------------------------------------
// The harness
// ------------------------------------------------------------------------------------------

/// Cases per test: `LK_FUZZ_CASES` if set, else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("LK_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// A runner of `n` cases, seeded by `LK_FUZZ_SEED` if set, else by proptest's fixed seed.
fn runner(n: u32) -> TestRunner {
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
fn fuzz(name: &str, n: u32, check: impl Fn(u64) -> Result<(), TestCaseError>) {
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
fn no_panic<T>(what: impl Fn() -> String, f: impl FnOnce() -> T) -> Result<T, TestCaseError> {
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
fn debug(what: &str, err: &candle_core::Error) {
    if std::env::var("LK_FUZZ_DEBUG").is_ok() {
        eprintln!("{what}: {}", err.to_string().lines().next().unwrap_or(""));
    }
}

fn check(ok: bool, what: impl Fn() -> String) -> Result<(), TestCaseError> {
    if ok {
        Ok(())
    } else {
        Err(TestCaseError::fail(what()))
    }
}

/// `|g - w| <= atol + rtol |w|` element-wise (NaN equals NaN).
fn close(got: &[f64], want: &[f64], rtol: f64, atol: f64) -> Option<String> {
    if got.len() != want.len() {
        return Some(format!("{} values, want {}", got.len(), want.len()));
    }
    got.iter().zip(want).enumerate().find_map(|(k, (g, w))| {
        let ok = g == w || (g.is_nan() && w.is_nan()) || (g - w).abs() <= atol + rtol * w.abs();
        (!ok).then(|| format!("element {k}: got {g}, want {w} (rtol {rtol}, atol {atol})"))
    })
}

// ------------------------------------------------------------------------------------------
// Strings into the parsers
// ------------------------------------------------------------------------------------------

/// The names the parse cases bind: `x = Vi(0,3)`, `y = Vj(1,3)`, `u = Vi(2,1)`.
fn parse_names() -> Vec<(&'static str, Expr)> {
    let v = |cat, pos, dim| Expr::var(Var { cat, pos, dim }).unwrap();
    vec![
        ("x", v(VarCat::I, 0, 3)),
        ("y", v(VarCat::J, 1, 3)),
        ("u", v(VarCat::I, 2, 1)),
    ]
}

/// Valid formulas: one per op of the table (from its metadata) and a few of the vector ops.
fn valid_formulas() -> Vec<String> {
    let mut out: Vec<String> = table_op_sources(["x", "y", "u"])
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    out.extend(
        [
            "Exp(-SqDist(x, y) / 2.0) * u",
            "Sum(x * y) + Elem(Concat(x, u), 3)",
            "Extract(Concat(x, y), 1, 4)",
            "MatVecMult(Concat(Concat(x, x), x), y)",
            "Pow(Vi(0,3) - Vj(1,3), -2)",
            "IfElse(u - 0.5, Norm2(x), -1.25e-3)",
            "Clamp(x, -1, 1) / (1 + Square(y))",
            "Sqrt(Sum(Square(x - y))) + Pm(3,1)",
            "-(-(-(x)))",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    out
}

/// Characters that are not in the syntax, some of them multi-byte.
const ODD: &[&str] = &[
    "é", "∞", "\u{0}", "𝑥", "\u{202e}", "\u{301}", "ﬁ", "\t", "\n", "#", "\"", "[", "]", "{", "^",
    "%", "=", "!", "'", "\\", "😀", "\u{feff}", "·", "−",
];

/// Tokens of the syntax, and a few that look like tokens.
const TOKENS: &[&str] = &[
    "Exp",
    "Log",
    "Pow",
    "Powf",
    "Sum",
    "Elem",
    "Extract",
    "Concat",
    "MatVecMult",
    "IfElse",
    "Clamp",
    "SqDist",
    "Norm2",
    "Vi",
    "Vj",
    "Pm",
    "Vk",
    "exp",
    "x",
    "y",
    "u",
    "z",
    "(",
    ")",
    ",",
    "+",
    "-",
    "*",
    "/",
    " ",
    "0",
    "1",
    "3",
    "-1",
    "0.5",
    ".",
    "e",
    "1e308",
    "1e309",
    "1e-400",
    "NaN",
    "inf",
    "18446744073709551616",
    "_",
    "Min",
    "Max",
];

/// Numbers that are edge cases of the tokenizer and of constants.
const NUMBERS: &[&str] = &[
    "1e400",
    "-1e400",
    "1e-400",
    "99999999999999999999999999999999",
    "18446744073709551615",
    "18446744073709551616",
    "9223372036854775808",
    "0.0000000000000000000000000000001",
    "1.7976931348623157e308",
    "4.9e-324",
    "1e",
    "1e+",
    ".5e-",
    "1.2.3",
    "0x10",
    "00000",
    "1_000",
];

/// A mutation of `s` (a valid formula): one or a few edits at character boundaries.
fn mutate(r: &mut Rng, s: &str) -> String {
    let mut s = s.to_string();
    for _ in 0..1 + r.below(3) {
        let cuts: Vec<usize> = s.char_indices().map(|(i, _)| i).chain([s.len()]).collect();
        let at = cuts[r.below(cuts.len())];
        let to =
            cuts[(cuts.iter().position(|&c| c == at).unwrap() + r.below(6)).min(cuts.len() - 1)];
        s = match r.below(9) {
            // Replace one character by an odd or a syntax character.
            0 => {
                let c = if r.below(2) == 0 {
                    ODD[r.below(ODD.len())]
                } else {
                    TOKENS[r.below(TOKENS.len())]
                };
                let next = s[at..].chars().next().map_or(0, char::len_utf8);
                format!("{}{c}{}", &s[..at], &s[at + next..])
            }
            // Truncate.
            1 => s[..at].to_string(),
            // Delete a span.
            2 => format!("{}{}", &s[..at], &s[to..]),
            // Duplicate a span.
            3 => format!("{}{}{}", &s[..to], &s[at..to], &s[to..]),
            // Insert a huge or malformed number.
            4 => format!(
                "{}{}{}",
                &s[..at],
                NUMBERS[r.below(NUMBERS.len())],
                &s[at..]
            ),
            // Deep nesting around the whole formula (the parser's cap is 256).
            5 => {
                let d = [200, 255, 256, 257, 300, 5000, 100_000][r.below(7)];
                let (open, close) = match r.below(4) {
                    0 => ("(", ")"),
                    1 => ("Exp(", ")"),
                    2 => ("-", ""),
                    _ => ("Sum(", ")"),
                };
                format!("{}{s}{}", open.repeat(d), close.repeat(d))
            }
            // Insert a token.
            6 => format!("{}{}{}", &s[..at], TOKENS[r.below(TOKENS.len())], &s[at..]),
            // Swap two characters' halves of the string.
            7 => format!("{}{}", &s[at..], &s[..at]),
            // Unbalance the parentheses.
            _ => format!(
                "{}{}{}",
                &s[..at],
                ["(", ")", ",,", "()"][r.below(4)],
                &s[at..]
            ),
        };
    }
    s
}

/// A random string: a soup of tokens, odd characters and arbitrary code points.
fn random_string(r: &mut Rng) -> String {
    let len = r.below(40);
    (0..len)
        .map(|_| match r.below(6) {
            0 => ODD[r.below(ODD.len())].to_string(),
            1 => char::from_u32(r.below(0x11_0000) as u32)
                .unwrap_or('?')
                .to_string(),
            2 => NUMBERS[r.below(NUMBERS.len())].to_string(),
            _ => TOKENS[r.below(TOKENS.len())].to_string(),
        })
        .collect()
}

/// One string into both parsers: `formula::parse` and `LazyTensor::parse` agree on whether it
/// parses, a parsed formula's canonical form round-trips, and its sum runs (Ok or Err).
fn parse_case(src: &str, lazies: &[(&str, &LazyTensor)]) -> Result<(), TestCaseError> {
    let names = parse_names();
    let what = || format!("{src:?}");
    let parsed = no_panic(what, || parse(src, &names))?;
    let lazy = no_panic(what, || LazyTensor::parse(src, lazies))?;
    check(parsed.is_ok() == lazy.is_ok(), || {
        format!("{src:?}: formula::parse {parsed:?} but LazyTensor::parse {lazy:?}")
    })?;
    if let Err(e) = &parsed {
        // The error's Display (with its column marker) must not panic on any source.
        no_panic(what, || e.to_string())?;
    }
    if let Ok(f) = parsed {
        let printed = no_panic(what, || f.to_string())?;
        let again = no_panic(what, || parse(&printed, &[]))?;
        check(again.as_ref() == Ok(&f), || {
            format!("{src:?} prints as {printed:?}, which parses to {again:?}")
        })?;
    }
    if let Ok(l) = lazy {
        let _ = no_panic(what, || l.sum(Axis::J).map(|_| ()))?;
    }
    Ok(())
}

fn parse_lazies() -> (LazyTensor, LazyTensor, LazyTensor) {
    let mut g = Rng(11);
    (
        LazyTensor::vi(&g.tensor(&[4, 3], -1.0, 1.0)).unwrap(),
        LazyTensor::vj(&g.tensor(&[5, 3], -1.0, 1.0)).unwrap(),
        LazyTensor::vi(&g.tensor(&[4, 1], -1.0, 1.0)).unwrap(),
    )
}

#[test]
fn fuzz_parse_mutations_of_valid_formulas() {
    let valid = valid_formulas();
    let (x, y, u) = parse_lazies();
    let lazies = [("x", &x), ("y", &y), ("u", &u)];
    for src in &valid {
        assert!(parse(src, &parse_names()).is_ok(), "{src} must parse");
    }
    fuzz("parse (mutated formulas)", cases(2500), |seed| {
        let mut r = Rng(seed | 1);
        let base = &valid[r.below(valid.len())];
        let src = mutate(&mut r, base);
        parse_case(&src, &lazies)
    });
}

#[test]
fn fuzz_parse_random_strings() {
    let (x, y, u) = parse_lazies();
    let lazies = [("x", &x), ("y", &y), ("u", &u)];
    fuzz("parse (random strings)", cases(20000), |seed| {
        let mut r = Rng(seed | 1);
        parse_case(&random_string(&mut r), &lazies)
    });
}

// ------------------------------------------------------------------------------------------
// Formula trees through the API
// ------------------------------------------------------------------------------------------

/// How a leaf's tensor is laid out in memory.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Layout {
    Contiguous,
    /// `t()` of a contiguous transpose: column-major.
    Transposed,
    /// The middle third of a wider tensor: rows with a gap.
    Narrowed,
    /// Every other row of a taller tensor.
    RowStrided,
    /// One row broadcast to all rows (stride 0).
    Broadcast,
    /// `(rows,)` for one component.
    Rank1,
}

const LAYOUTS: [Layout; 6] = [
    Layout::Contiguous,
    Layout::Transposed,
    Layout::Narrowed,
    Layout::RowStrided,
    Layout::Broadcast,
    Layout::Rank1,
];

/// Values that are edge cases: NaN, infinities, signed zeros, subnormals (of `f64`, and of
/// `f32` and `f16` once converted), huge and tiny.
const SPECIAL: [f64; 12] = [
    f64::NAN,
    f64::INFINITY,
    f64::NEG_INFINITY,
    0.0,
    -0.0,
    1e-310,
    1e-40,
    1e-6,
    1e300,
    -1e300,
    65504.0,
    f64::MIN_POSITIVE,
];

/// A bound input: its tensor as bound (dtype, layout) and its values in `f64`, `(rows, dim)`.
struct Leaf {
    cat: VarCat,
    bound: Tensor,
    dense: Tensor,
    /// The Candle `Var` the bound tensor is (for gradients).
    var: Option<CVar>,
    layout: Layout,
}

fn make_leaf(
    r: &mut Rng,
    cat: VarCat,
    rows: usize,
    dim: usize,
    dtype: DType,
    special: bool,
    as_var: bool,
) -> candle_core::Result<Leaf> {
    let v: Vec<f64> = (0..rows * dim)
        .map(|_| {
            if special && r.below(4) == 0 {
                SPECIAL[r.below(SPECIAL.len())]
            } else {
                r.uniform(-1.5, 1.5)
            }
        })
        .collect();
    let mut layout = LAYOUTS[r.below(LAYOUTS.len())];
    if as_var || (layout == Layout::Rank1 && dim != 1) || (layout == Layout::Broadcast && rows == 0)
    {
        layout = Layout::Contiguous;
    }
    let (rows, v) = if cat == VarCat::P {
        (1, v[..dim.min(v.len())].to_vec())
    } else {
        (rows, v)
    };
    let v = if v.len() < rows * dim {
        vec![0.5; rows * dim]
    } else {
        v
    };
    let master = Tensor::from_vec(v, (rows, dim), &Device::Cpu)?;
    let master = match layout {
        Layout::Broadcast => master
            .narrow(0, 0, 1)?
            .broadcast_as((rows, dim))?
            .contiguous()?,
        _ => master,
    };
    let typed = master.to_dtype(dtype)?;
    let dense = typed.to_dtype(DType::F64)?;
    let var = if as_var {
        Some(CVar::from_tensor(&typed)?)
    } else {
        None
    };
    let bound = match (&var, layout) {
        (Some(v), _) => v.as_tensor().clone(),
        (None, Layout::Contiguous) => typed,
        (None, Layout::Transposed) => typed.t()?.contiguous()?.t()?,
        (None, Layout::Narrowed) => {
            Tensor::cat(&[&typed, &typed, &typed], 1)?.narrow(1, dim, dim)?
        }
        (None, Layout::RowStrided) => Tensor::stack(&[&typed, &typed], 1)?
            .narrow(1, 0, 1)?
            .squeeze(1)?,
        (None, Layout::Broadcast) => typed.narrow(0, 0, 1)?.broadcast_as((rows, dim))?,
        (None, Layout::Rank1) => typed.reshape(rows)?,
    };
    let bound = if cat == VarCat::P && layout == Layout::Rank1 {
        bound.reshape(dim)?
    } else {
        bound
    };
    Ok(Leaf {
        cat,
        bound,
        dense,
        var,
        layout,
    })
}

/// A random formula over `leaves`, built with the operators, the named methods and (for every
/// op of the table, through its printed name) `LazyTensor::parse`.
fn random_tree(
    r: &mut Rng,
    leaves: &[LazyTensor],
    depth: usize,
) -> candle_core::Result<LazyTensor> {
    if depth == 0 || r.below(4) == 0 {
        if r.below(8) == 0 {
            let c = [0.5, -1.25, 2.0, 0.0, 1e-300, 1e300, 3.0][r.below(7)];
            return Ok(LazyTensor::constant(c));
        }
        return Ok(leaves[r.below(leaves.len())].clone());
    }
    let a = random_tree(r, leaves, depth - 1)?;
    let b = random_tree(r, leaves, depth - 1)?;
    let op = |src: String, args: &[&LazyTensor]| {
        let names: Vec<(&str, &LazyTensor)> = ["a", "b", "c"]
            .into_iter()
            .zip(args.iter().copied())
            .collect();
        LazyTensor::parse(&src, &names)
    };
    let dim = a.dim().unwrap_or(1);
    let valid = r.below(8) != 0;
    Ok(match r.below(16) {
        0..=3 => {
            let u = UnaryOp::ALL[r.below(UnaryOp::ALL.len())];
            match u.payload() {
                Some(_) => op(format!("{}(a, {})", u.name(), r.below(8) as i64 - 3), &[&a])?,
                None => op(format!("{}(a)", u.name()), &[&a])?,
            }
        }
        4 | 5 => {
            let o = BinaryOp::ALL[r.below(BinaryOp::ALL.len())];
            op(format!("{}(a, b)", o.name()), &[&a, &b])?
        }
        6 => {
            let c = random_tree(r, leaves, depth - 1)?;
            let t = TernaryOp::ALL[r.below(TernaryOp::ALL.len())];
            op(format!("{}(a, b, c)", t.name()), &[&a, &b, &c])?
        }
        7 => match r.below(6) {
            0 => &a + &b,
            1 => &a - &b,
            2 => &a * &b,
            3 => &a / &b,
            4 => -&a,
            _ => 0.5 * &a - 1.0,
        },
        // Mostly valid arguments of the vector ops, sometimes not.
        8 if valid && b.dim().ok() != Some(dim) => a.sqdist(&a.sin())?,
        8 => a.sqdist(&b)?,
        9 if valid && b.dim().ok() != Some(dim) => a.dot(&(&a + &b))?,
        9 => a.dot(&b)?,
        10 if valid => a.elem(r.below(dim))?,
        10 => a.elem(dim)?,
        11 if valid => {
            let start = r.below(dim);
            a.extract(start, 1 + r.below(dim - start))?
        }
        11 => a.extract(r.below(dim + 1), r.below(dim + 2))?,
        12 => a.concat(&b)?,
        13 if valid && dim % b.dim().unwrap_or(1) != 0 => a.matvecmult(&b.component_sum())?,
        13 => a.matvecmult(&b)?,
        14 => match r.below(5) {
            0 => a.exp(),
            1 => a.sqnorm2(),
            2 => a.norm2(),
            3 => a.normalize(),
            _ => a.component_sum(),
        },
        _ if valid && b.dim().ok() != Some(dim) => {
            a.weighted_sqdist(&a.exp(), &b.component_sum())?
        }
        _ => a.weighted_sqdist(&b, &random_tree(r, leaves, 0)?)?,
    })
}

/// `e` with the variable bound as `ids[k]` at position `k`.
fn remap(e: &Expr, ids: &[usize]) -> Expr {
    let mut memo: std::collections::HashMap<Expr, Expr> = std::collections::HashMap::new();
    for n in e.topo_order() {
        let new = match *n.op() {
            Op::Var(v) => {
                let pos = ids.iter().position(|&id| id == v.pos).expect("a leaf");
                Expr::var(Var { pos, ..v }).unwrap()
            }
            op => Expr::new(op, n.args().iter().map(|a| memo[a].clone()).collect()).unwrap(),
        };
        memo.insert(n, new);
    }
    memo[e].clone()
}

/// Whether `e` has an op with a jump (where ulp differences between the backend and the dense
/// reference may fall on either side).
fn has_jump(e: &Expr) -> bool {
    e.topo_order().iter().any(|n| match n.op() {
        Op::Unary(u) => matches!(
            u,
            UnaryOp::Sign | UnaryOp::Step | UnaryOp::Floor | UnaryOp::Round | UnaryOp::Tan
        ),
        Op::Binary(b) => matches!(
            b,
            BinaryOp::Lt
                | BinaryOp::Le
                | BinaryOp::Gt
                | BinaryOp::Ge
                | BinaryOp::Eq
                | BinaryOp::Ne
                | BinaryOp::Atan2
        ),
        Op::Ternary(t) => matches!(t, TernaryOp::IfElse | TernaryOp::Mod),
        _ => false,
    })
}

/// Whether `e` is differentiable everywhere its value is finite (no kinks), so that Candle's
/// autodiff of the dense reference is a gradient reference.
fn smooth(e: &Expr) -> bool {
    !has_jump(e)
        && dense_autodiff_covers(e)
        && e.topo_order().iter().all(|n| match n.op() {
            Op::Unary(u) => !matches!(
                u,
                UnaryOp::Abs | UnaryOp::Relu | UnaryOp::Sqrt | UnaryOp::Rsqrt
            ),
            Op::Binary(b) => !matches!(b, BinaryOp::Min | BinaryOp::Max | BinaryOp::Powf),
            Op::Ternary(_) => false,
            _ => true,
        })
}

fn all_finite(t: &Tensor) -> bool {
    flat(t).iter().all(|v| v.is_finite())
}

/// Checks a reduction's values and indices against the dense reference `dv`
/// (`[row][term][component]`, at least one term per row).
fn check_values(
    kind: ReductionKind,
    dv: &Dense,
    values: Option<&Tensor>,
    indices: Option<&Tensor>,
) -> Option<String> {
    let e = dv[0][0].len();
    let scale = |row: &Vec<Vec<f64>>| row.iter().flatten().map(|v| v.abs()).fold(0.0, f64::max);
    let max_term = dv.iter().map(scale).fold(1.0, f64::max);
    let max_sum = dv
        .iter()
        .map(|row| row.iter().flatten().map(|v| v.abs()).sum::<f64>())
        .fold(1.0, f64::max);
    let got = values.map(flat);
    match kind {
        ReductionKind::Sum => close(&got?, &ref_sum(dv).concat(), 1e-8, 1e-8 * max_sum),
        ReductionKind::LogSumExp => close(&got?, &ref_lse(dv).concat(), 1e-8, 1e-8 * max_term),
        ReductionKind::SumSoftMaxWeight => close(
            &got?,
            &ref_softmax_weight(dv).concat(),
            1e-8,
            1e-8 * max_term,
        ),
        _ => {
            let max = matches!(
                kind,
                ReductionKind::Max | ReductionKind::ArgMax | ReductionKind::MaxArgMax
            );
            let sorted = ref_sorted(dv, max);
            let k = match kind {
                ReductionKind::KMin(k)
                | ReductionKind::ArgKMin(k)
                | ReductionKind::KMinArgKMin(k) => k,
                _ => 1,
            };
            // want[row][rank][component] (`+inf` past the terms, as documented).
            let want = |row: usize, rank: usize, c: usize| {
                sorted[row][c].get(rank).map_or(f64::INFINITY, |t| t.0)
            };
            let tol = |w: f64| 1e-9 * max_term + 1e-9 * w.abs();
            let rows = dv.len();
            if let Some(got) = got {
                for row in 0..rows {
                    for rank in 0..k {
                        for c in 0..e {
                            let (g, w) = (got[(row * k + rank) * e + c], want(row, rank, c));
                            if !(g == w || (g - w).abs() <= tol(w)) {
                                return Some(format!(
                                    "row {row} rank {rank} component {c}: got {g}, want {w}"
                                ));
                            }
                        }
                    }
                }
            }
            if let Some(idx) = indices.map(flat_i64) {
                for row in 0..rows {
                    for rank in 0..k {
                        for c in 0..e {
                            let i = idx[(row * k + rank) * e + c];
                            let w = want(row, rank, c);
                            let terms = dv[row].len();
                            let ok = if rank >= terms {
                                i == -1
                            } else {
                                i >= 0
                                    && (i as usize) < terms
                                    && (dv[row][i as usize][c] - w).abs() <= tol(w)
                            };
                            if !ok {
                                return Some(format!("row {row} rank {rank} component {c}: index {i}, want value {w}"));
                            }
                        }
                    }
                }
            }
            None
        }
    }
}

/// One random formula case: build, reduce with a random kind, axis and `k`, compare.
fn formula_case(seed: u64, stats: &std::cell::RefCell<[usize; 4]>) -> Result<(), TestCaseError> {
    let mut r = Rng(seed | 1);
    let dtype = [
        DType::F64,
        DType::F64,
        DType::F64,
        DType::F64,
        DType::F64,
        DType::F64,
        DType::F32,
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::I64,
        DType::U8,
    ][r.below(12)];
    let special = r.below(5) == 0;
    let sizes = [0, 1, 1, 2, 3, 5, 8, 17, 40];
    let (m, n) = (sizes[r.below(sizes.len())], sizes[r.below(sizes.len())]);
    let dx = 1 + r.below(4);
    let dy = if r.below(8) == 0 { 1 + r.below(4) } else { dx };
    let dp = if r.below(2) == 0 { 1 } else { dx };
    let mu = if r.below(12) == 0 { m + 1 } else { m };
    let as_var = dtype == DType::F64 && r.below(3) == 0;
    let odd = if r.below(20) == 0 { DType::F32 } else { dtype };
    let what_inputs = format!(
        "seed {seed}: {dtype:?} (u {odd:?}), M {m} (u {mu}), N {n}, dims x {dx} y {dy} p {dp}, special {special}"
    );
    let leaves = (|| -> candle_core::Result<Vec<Leaf>> {
        Ok(vec![
            make_leaf(&mut r, VarCat::I, m, dx, dtype, special, as_var)?,
            make_leaf(&mut r, VarCat::J, n, dy, dtype, special, false)?,
            make_leaf(&mut r, VarCat::I, mu, 1, odd, special, false)?,
            make_leaf(&mut r, VarCat::J, n, 1, dtype, special, false)?,
            make_leaf(&mut r, VarCat::P, 1, dp, dtype, special, false)?,
        ])
    })()
    .map_err(|e| TestCaseError::fail(format!("{what_inputs}: making the inputs: {e}")))?;
    let what_layouts: Vec<Layout> = leaves.iter().map(|l| l.layout).collect();
    let what = || format!("{what_inputs}, layouts {what_layouts:?}");
    let float = matches!(dtype, DType::F64 | DType::F32 | DType::F16 | DType::BF16);
    let bind = |l: &Leaf| match l.cat {
        VarCat::I => LazyTensor::vi(&l.bound),
        VarCat::J => LazyTensor::vj(&l.bound),
        VarCat::P => LazyTensor::param(&l.bound),
    };
    let lazies: Vec<LazyTensor> = match no_panic(what, || leaves.iter().map(bind).collect())? {
        Ok(l) => l,
        Err(_) => {
            check(!float || odd != dtype, || {
                format!("{}: binding failed", what())
            })?;
            stats.borrow_mut()[1] += 1;
            return Ok(());
        }
    };
    check(float, || format!("{}: a non-float dtype was bound", what()))?;
    let ids: Vec<usize> = lazies
        .iter()
        .map(|l| l.expr().unwrap().vars()[0].pos)
        .collect();
    let depth = 1 + r.below(4);
    // With a gradient to check, draw until the formula is smooth (a few tries), since only
    // smooth formulas have a dense gradient reference.
    let build = |r: &mut Rng| {
        let mut lt = random_tree(r, &lazies, depth);
        for _ in 0..if as_var { 30 } else { 0 } {
            match &lt {
                Ok(l) if l.expr().is_ok_and(|e| smooth(e) && e.depends_on(VarCat::I)) => break,
                _ => lt = random_tree(r, &lazies, depth),
            }
        }
        lt
    };
    let lt = match no_panic(what, || build(&mut r))? {
        Ok(lt) => lt,
        Err(err) => {
            debug("build", &err);
            stats.borrow_mut()[1] += 1;
            return Ok(());
        }
    };
    // Mostly formulas with both an i- and a j-variable (else the reduction has no size).
    let lt = if r.below(8) != 0 {
        lt + 0.0 * (&lazies[2] + &lazies[3])
    } else {
        lt
    };
    let kinds =
        ReductionKind::all([0, 1, 2, 3, n, n + 1, m + 1, usize::MAX, usize::MAX / 2][r.below(9)]);
    let kind = kinds[r.below(kinds.len())];
    // Half the cases with a gradient reduce by Sum, whose gradient has a dense reference.
    let kind = if as_var && r.below(2) == 0 {
        ReductionKind::Sum
    } else {
        kind
    };
    let axis = if r.below(2) == 0 { Axis::I } else { Axis::J };
    // SumSoftMaxWeight reduces Concat(F, G) with a 1-component F.
    let lt = match (
        kind,
        lt.component_sum().concat(&lazies[r.below(lazies.len())]),
    ) {
        (ReductionKind::SumSoftMaxWeight, Ok(sm)) if r.below(4) != 0 => sm,
        _ => lt,
    };
    let e = lt.expr().ok().map(|e| remap(e, &ids));
    let printed = e.as_ref().map_or("<error>".into(), |e| e.to_string());
    let what = || format!("{}, {printed} {kind:?} {axis:?}", what());
    // A quarter of the cases choose the path and the block path's memory (including none).
    let options = if r.below(4) == 0 {
        ReductionOptions {
            path: [Path::Auto, Path::Direct, Path::Blocks][r.below(3)],
            block_bytes: [256 << 20, 0, 1, 4096, usize::MAX][r.below(5)],
            ..ReductionOptions::default()
        }
    } else {
        ReductionOptions::default()
    };
    let what = || format!("{}, {options:?}", what());
    let out = no_panic(what, || lt.reduce_with(kind, axis, &options))?;
    let Some(e) = e else {
        check(out.is_err(), || {
            format!("{}: a failed formula reduced", what())
        })?;
        stats.borrow_mut()[1] += 1;
        return Ok(());
    };
    // Rows of the i- and j-inputs the formula uses must agree, or the reduction fails.
    let used: Vec<usize> = e.vars().iter().map(|v| v.pos).collect();
    let rows_of = |cat: VarCat| -> Vec<usize> {
        used.iter()
            .filter(|&&p| leaves[p].cat == cat)
            .map(|&p| leaves[p].dense.dim(0).unwrap())
            .collect()
    };
    let (ri, rj) = (rows_of(VarCat::I), rows_of(VarCat::J));
    let consistent = ri.windows(2).all(|w| w[0] == w[1])
        && used.iter().all(|&p| leaves[p].bound.dtype() == dtype);
    let out = match out {
        Ok(out) => out,
        Err(err) => {
            debug("reduce", &err);
            stats.borrow_mut()[1] += 1;
            return Ok(());
        }
    };
    check(consistent, || {
        format!("{}: inputs of {ri:?} rows or mixed dtypes reduced", what())
    })?;
    stats.borrow_mut()[0] += 1;
    // The same formula through `formula::Expr` and `LazyTensor::from_formula`: the same bits.
    let args: Vec<&Tensor> = leaves.iter().map(|l| &l.bound).collect();
    let again = no_panic(what, || {
        LazyTensor::from_formula(&e, &args).and_then(|l| l.reduce(kind, axis))
    })?
    .map_err(|err| TestCaseError::fail(format!("{}: from_formula failed: {err}", what())))?;
    let same_path = options == ReductionOptions::default();
    for (a, b) in [(&out.values, &again.values), (&out.indices, &again.indices)] {
        if !same_path {
            break;
        }
        check(a.is_some() == b.is_some(), || {
            format!("{}: from_formula's outputs differ", what())
        })?;
        if let (Some(a), Some(b)) = (a, b) {
            check(close(&flat(a), &flat(b), 0.0, 0.0).is_none(), || {
                format!("{}: from_formula differs", what())
            })?;
        }
    }
    // The dense reference, where one is computable.
    let (mi, nj) = (ri.first().copied(), rj.first().copied());
    let (Some(mi), Some(nj)) = (mi, nj) else {
        return Ok(());
    };
    let (rows, terms) = if axis == Axis::J { (mi, nj) } else { (nj, mi) };
    for t in [&out.values, &out.indices].into_iter().flatten() {
        check(t.dims().first() == Some(&rows), || {
            format!("{}: output {:?}, want {rows} rows", what(), t.dims())
        })?;
    }
    let reference = dtype == DType::F64
        && terms > 0
        && rows > 0
        && !has_jump(&e)
        && leaves.iter().all(|l| all_finite(&l.dense));
    if !reference {
        return Ok(());
    }
    let inputs: Vec<(VarCat, Tensor)> = leaves.iter().map(|l| (l.cat, l.dense.clone())).collect();
    // Every node finite, not only the result: Candle's `relu`, `minimum` and `maximum` map
    // NaN to a number where the backend keeps the NaN.
    let finite = |node: &Expr| dense_eval(node, &inputs, mi, nj).is_ok_and(|t| all_finite(&t));
    if !e.topo_order().iter().all(finite) {
        return Ok(());
    }
    let dense = dense_eval(&e, &inputs, mi, nj).unwrap();
    let dv = dense_values(&dense, axis == Axis::J).unwrap();
    if kind == ReductionKind::SumSoftMaxWeight && e.dim() < 2 {
        return Ok(());
    }
    if let Some(msg) = check_values(kind, &dv, out.values.as_ref(), out.indices.as_ref()) {
        return Err(TestCaseError::fail(format!("{}: {msg}", what())));
    }
    stats.borrow_mut()[2] += 1;
    // Gradients, through the reduction, against Candle's autodiff of the dense reference.
    if let (Some(var), Some(values)) = (&leaves[0].var, &out.values) {
        let grads = no_panic(what, || values.sum_all().and_then(|s| s.backward()))?;
        let Ok(grads) = grads else { return Ok(()) };
        let Some(g) = grads.get(var) else {
            return Ok(());
        };
        check(g.dims() == var.dims(), || {
            format!("{}: gradient of shape {:?}", what(), g.dims())
        })?;
        if kind == ReductionKind::Sum && smooth(&e) {
            let mut inputs = inputs;
            inputs[0].1 = var.as_tensor().clone();
            let dg = dense_eval(&e, &inputs, mi, nj)
                .and_then(|d| d.sum_all()?.backward())
                .unwrap();
            // No dense gradient: Candle's graph does not reach `x` (`Pow(x, 0)` is built
            // from `ones_like`), so it is zero.
            let want = dg
                .get(var)
                .map_or_else(|| vec![0.0; var.elem_count()], flat);
            if want.iter().all(|v| v.is_finite()) {
                let scale = want.iter().map(|v| v.abs()).fold(1.0, f64::max) * terms as f64;
                if let Some(msg) = close(&flat(g), &want, 1e-7, 1e-8 * scale) {
                    return Err(TestCaseError::fail(format!("{}: gradient: {msg}", what())));
                }
                stats.borrow_mut()[3] += 1;
            }
        }
    }
    Ok(())
}

#[test]
fn fuzz_formulas_through_the_api() {
    let stats = std::cell::RefCell::new([0usize; 4]);
    fuzz("formula", cases(5000), |seed| formula_case(seed, &stats));
    let [ok, err, values, grads] = *stats.borrow();
    eprintln!(
        "fuzz: formula cases: {ok} Ok ({values} checked against the dense reference, {grads} \
         gradients), {err} Err"
    );
}

// ------------------------------------------------------------------------------------------
// Kernels, solves and Gaussian processes
// ------------------------------------------------------------------------------------------

/// A kernel of the families of [`Kernel`], with its hyperparameters as numbers (the dense
/// reference) and tensors (the kernel).
#[derive(Clone, Debug)]
enum KSpec {
    Gaussian(Vec<f64>),
    Matern(Nu, Vec<f64>),
    RationalQuadratic(Vec<f64>, Vec<f64>),
    Periodic(Vec<f64>, Vec<f64>),
    Linear,
    Scale(Vec<f64>, Box<KSpec>),
    Sum(Box<KSpec>, Box<KSpec>),
    Product(Box<KSpec>, Box<KSpec>),
    /// `1 / sqrt(1 + |x - y|^2)`, through [`Kernel::from_formula`].
    InverseMultiquadric,
}

/// Hyperparameter values: mostly valid, of one or `d` values, sometimes invalid (zero,
/// negative, NaN, infinite, of the wrong length) or extreme.
fn hyper(r: &mut Rng, d: usize, per_dim: bool) -> Vec<f64> {
    let wild = r.below(4) == 0;
    let len = match r.below(10) {
        0 if wild => 0,
        1 if wild => d + 1,
        2 | 3 if per_dim => d,
        _ => 1,
    };
    (0..len)
        .map(|_| match r.below(6) {
            0 if wild => [0.0, -1.0, f64::NAN, f64::INFINITY, 1e-300, 1e300, 1e-8, 1e8][r.below(8)],
            _ => r.uniform(0.2, 2.0),
        })
        .collect()
}

fn random_kspec(r: &mut Rng, d: usize, depth: usize) -> KSpec {
    let leaf = depth == 0 || r.below(3) != 0;
    match r.below(if leaf { 6 } else { 9 }) {
        0 => KSpec::Gaussian(hyper(r, d, true)),
        1 => KSpec::Matern(
            [Nu::Half, Nu::ThreeHalves, Nu::FiveHalves][r.below(3)],
            hyper(r, d, true),
        ),
        2 => KSpec::RationalQuadratic(hyper(r, d, true), hyper(r, d, false)),
        3 => KSpec::Periodic(hyper(r, d, true), hyper(r, d, true)),
        4 => KSpec::Linear,
        5 => KSpec::InverseMultiquadric,
        6 => KSpec::Scale(hyper(r, d, false), Box::new(random_kspec(r, d, depth - 1))),
        7 => KSpec::Sum(
            Box::new(random_kspec(r, d, depth - 1)),
            Box::new(random_kspec(r, d, depth - 1)),
        ),
        _ => KSpec::Product(
            Box::new(random_kspec(r, d, depth - 1)),
            Box::new(random_kspec(r, d, depth - 1)),
        ),
    }
}

impl KSpec {
    fn kernel(&self, dtype: DType) -> candle_core::Result<Kernel> {
        let t = |v: &Vec<f64>| Tensor::new(v.as_slice(), &Device::Cpu)?.to_dtype(dtype);
        Ok(match self {
            KSpec::Gaussian(l) => Kernel::gaussian(&t(l)?),
            KSpec::Matern(nu, l) => Kernel::matern(*nu, &t(l)?),
            KSpec::RationalQuadratic(l, a) => Kernel::rational_quadratic(&t(l)?, &t(a)?),
            KSpec::Periodic(l, p) => Kernel::periodic(&t(l)?, &t(p)?),
            KSpec::Linear => Kernel::linear(),
            KSpec::Scale(c, k) => k.kernel(dtype)?.scale(&t(c)?),
            KSpec::Sum(a, b) => a.kernel(dtype)? + b.kernel(dtype)?,
            KSpec::Product(a, b) => a.kernel(dtype)? * b.kernel(dtype)?,
            KSpec::InverseMultiquadric => {
                Kernel::from_formula(|x, y| Ok((x.sqdist(y)? + 1.0).rsqrt()))
            }
        })
    }

    /// Whether every hyperparameter is valid for points of dimension `d`.
    fn valid(&self, d: usize) -> bool {
        let ok = |v: &Vec<f64>, per_dim: bool| {
            (v.len() == 1 || (per_dim && v.len() == d))
                && v.iter().all(|x| x.is_finite() && *x > 0.0)
        };
        match self {
            KSpec::Gaussian(l) | KSpec::Matern(_, l) => ok(l, true),
            KSpec::RationalQuadratic(l, a) => ok(l, true) && ok(a, false),
            KSpec::Periodic(l, p) => ok(l, true) && ok(p, true),
            KSpec::Linear | KSpec::InverseMultiquadric => true,
            KSpec::Scale(c, k) => ok(c, false) && k.valid(d),
            KSpec::Sum(a, b) | KSpec::Product(a, b) => a.valid(d) && b.valid(d),
        }
    }

    /// Whether every hyperparameter is within `[1e-3, 1e3]`: beyond, `sin(pi (x - y) / p)`
    /// and the like are so ill-conditioned that two correct evaluations disagree (a period of
    /// `1e-300` put 0.57 between the operator's matrix and this reference).
    fn moderate(&self) -> bool {
        let ok = |v: &Vec<f64>| v.iter().all(|x| (1e-3..=1e3).contains(x));
        match self {
            KSpec::Gaussian(l) | KSpec::Matern(_, l) => ok(l),
            KSpec::RationalQuadratic(a, b) | KSpec::Periodic(a, b) => ok(a) && ok(b),
            KSpec::Linear | KSpec::InverseMultiquadric => true,
            KSpec::Scale(c, k) => ok(c) && k.moderate(),
            KSpec::Sum(a, b) | KSpec::Product(a, b) => a.moderate() && b.moderate(),
        }
    }

    /// `k(x, y)` in `f64` from the kernels' definitions (hyperparameters valid).
    fn eval(&self, x: &[f64], y: &[f64]) -> f64 {
        let per = |v: &Vec<f64>, i: usize| if v.len() == 1 { v[0] } else { v[i] };
        let r2 = |l: &Vec<f64>| -> f64 {
            x.iter()
                .zip(y)
                .enumerate()
                .map(|(i, (a, b))| ((a - b) / per(l, i)).powi(2))
                .sum()
        };
        match self {
            KSpec::Gaussian(l) => (-r2(l) / 2.0).exp(),
            KSpec::Matern(nu, l) => {
                let r = r2(l).sqrt();
                match nu {
                    Nu::Half => (-r).exp(),
                    Nu::ThreeHalves => (1.0 + 3f64.sqrt() * r) * (-(3f64.sqrt()) * r).exp(),
                    Nu::FiveHalves => {
                        (1.0 + 5f64.sqrt() * r + 5.0 * r * r / 3.0) * (-(5f64.sqrt()) * r).exp()
                    }
                }
            }
            KSpec::RationalQuadratic(l, a) => (1.0 + r2(l) / (2.0 * a[0])).powf(-a[0]),
            KSpec::Periodic(l, p) => {
                let s: f64 = (0..x.len())
                    .map(|i| {
                        let s = (std::f64::consts::PI * (x[i] - y[i]) / per(p, i)).sin();
                        s * s / per(l, i).powi(2)
                    })
                    .sum();
                (-2.0 * s).exp()
            }
            KSpec::Linear => x.iter().zip(y).map(|(a, b)| a * b).sum(),
            KSpec::Scale(c, k) => c[0] * k.eval(x, y),
            KSpec::Sum(a, b) => a.eval(x, y) + b.eval(x, y),
            KSpec::Product(a, b) => a.eval(x, y) * b.eval(x, y),
            KSpec::InverseMultiquadric => {
                1.0 / (1.0 + x.iter().zip(y).map(|(a, b)| (a - b).powi(2)).sum::<f64>()).sqrt()
            }
        }
    }

    fn dense(&self, xs: &[Vec<f64>], ys: &[Vec<f64>]) -> Vec<Vec<f64>> {
        xs.iter()
            .map(|x| ys.iter().map(|y| self.eval(x, y)).collect())
            .collect()
    }
}

fn rows_of(t: &Tensor) -> Vec<Vec<f64>> {
    let t = t.to_dtype(DType::F64).unwrap();
    match t.rank() {
        1 => t
            .to_vec1::<f64>()
            .unwrap()
            .into_iter()
            .map(|v| vec![v])
            .collect(),
        _ => t.to_vec2::<f64>().unwrap(),
    }
}

/// Extreme and invalid values for the real-valued options.
const ODD_REALS: [f64; 9] = [
    0.0,
    -1.0,
    f64::NAN,
    f64::INFINITY,
    f64::NEG_INFINITY,
    1e300,
    1e-300,
    0.5,
    2.0,
];

/// A tolerance: mostly usual, sometimes extreme or invalid.
fn real_option(r: &mut Rng, usual: f64) -> f64 {
    if r.below(8) == 0 {
        ODD_REALS[r.below(ODD_REALS.len())]
    } else {
        usual
    }
}

fn count_option(r: &mut Rng, usual: usize, n: usize) -> usize {
    match r.below(12) {
        0 => 0,
        1 => 1,
        2 => n + 3,
        3 => usize::MAX,
        _ => usual,
    }
}

fn random_preconditioner(r: &mut Rng, n: usize) -> Preconditioner {
    match r.below(3) {
        0 => Preconditioner::None,
        1 => Preconditioner::PivotedCholesky(Rank::Fixed(count_option(r, 5, n))),
        _ => Preconditioner::PivotedCholesky(Rank::Auto {
            max: count_option(r, 100, n),
        }),
    }
}

/// Random points `(n, d)`, sometimes with a NaN or an infinity.
fn random_points(r: &mut Rng, n: usize, d: usize, special: bool) -> Vec<f64> {
    (0..n * d)
        .map(|_| {
            if special && r.below(6) == 0 {
                [f64::NAN, f64::INFINITY, 1e300, -0.0][r.below(4)]
            } else {
                r.uniform(0.0, 1.0)
            }
        })
        .collect()
}

/// One random solve: kernel, points, right-hand side, ridge and options.
fn solve_case(seed: u64, stats: &std::cell::RefCell<[usize; 3]>) -> Result<(), TestCaseError> {
    let mut r = Rng(seed | 1);
    let dtype = [
        DType::F64,
        DType::F64,
        DType::F64,
        DType::F64,
        DType::F32,
        DType::F16,
        DType::I64,
    ][r.below(7)];
    let n = [0, 1, 2, 5, 5, 20, 20, 50][r.below(8)];
    let d = 1 + r.below(3);
    let spec = random_kspec(&mut r, d, 2);
    let special = r.below(8) == 0;
    let xv = random_points(&mut r, n, d, special);
    let x = Tensor::from_vec(xv, (n, d), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    // Mostly one point set; sometimes a copy, other points or another count.
    let y = match r.below(16) {
        0 => x.copy().unwrap(),
        1 => Tensor::from_vec(random_points(&mut r, n, d, false), (n, d), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap(),
        2 => x.narrow(0, 0, n.saturating_sub(1)).unwrap(),
        _ => x.clone(),
    };
    let e = 1 + r.below(3);
    let b_special = r.below(10) == 0;
    let (b_rows, vector) = match r.below(20) {
        0 => (n + 1, false),
        1..=3 => (n, true),
        _ => (n, false),
    };
    let bv: Vec<f64> = (0..b_rows * e)
        .map(|_| {
            if b_special && r.below(4) == 0 {
                f64::NAN
            } else {
                r.uniform(-1.0, 1.0)
            }
        })
        .collect();
    let b_dtype = if r.below(15) == 0 { DType::F32 } else { dtype };
    let b = Tensor::from_vec(bv, (b_rows, e), &Device::Cpu)
        .unwrap()
        .to_dtype(b_dtype)
        .unwrap();
    let b = if vector {
        b.narrow(1, 0, 1).unwrap().squeeze(1).unwrap()
    } else {
        b
    };
    let b_nan = !all_finite(&b);
    let alpha_value = real_option(&mut r, 0.1);
    let alpha: Ridge = match r.below(12) {
        0 | 1 => Ridge::Tensor(
            Tensor::new(&[alpha_value], &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap(),
        ),
        2 => Ridge::Tensor(Tensor::new(&[alpha_value, 1.0], &Device::Cpu).unwrap()),
        _ => Ridge::Value(alpha_value),
    };
    let x0 = match r.below(10) {
        0 => Some(b.zeros_like().unwrap()),
        1 => Some((b.ones_like().unwrap() * f64::NAN).unwrap()),
        2 => Some(Tensor::zeros(n + 2, dtype, &Device::Cpu).unwrap()),
        _ => None,
    };
    let check_residual = r.below(2) == 0;
    let max_iters = count_option(&mut r, 1000, n);
    let opts = SolveOptions {
        tol: real_option(&mut r, 1e-8),
        // Without residual checks nothing detects a stall, so an unreachable tolerance with
        // no iteration cap never returns (see fuzz_corpus.rs
        // `unbounded_iterations_without_residual_checks_terminate`).
        max_iters: if check_residual {
            max_iters
        } else {
            max_iters.min(10_000)
        },
        preconditioner: random_preconditioner(&mut r, n),
        x0,
        check_residual,
    };
    let what = || {
        format!(
            "seed {seed}: {spec:?} {dtype:?} N {n} D {d} b {:?} {b_dtype:?} special {special}/{b_special} \
             alpha {alpha:?} {opts:?}",
            b.dims()
        )
    };
    if std::env::var("LK_FUZZ_DEBUG").is_ok() {
        eprintln!("solve case {}", what());
    }
    let result = no_panic(what, || {
        let k = KernelOperator::new(spec.kernel(dtype)?, &x, &y)?;
        k.solve(&b, alpha.clone(), &opts)
    })?;
    let (a, info) = match result {
        Ok(v) => v,
        Err(err) => {
            debug("solve", &err);
            stats.borrow_mut()[1] += 1;
            return Ok(());
        }
    };
    stats.borrow_mut()[0] += 1;
    // Inputs that must have been refused.
    let alpha_ok = match &alpha {
        Ridge::Value(v) => v.is_finite() && *v >= 0.0,
        Ridge::Tensor(t) => t.elem_count() == 1 && alpha_value.is_finite() && alpha_value >= 0.0,
    };
    check(
        spec.valid(d)
            && alpha_ok
            && opts.tol.is_finite()
            && opts.tol > 0.0
            && !b_nan
            && b_rows == n
            && b_dtype == dtype,
        || format!("{}: invalid input accepted", what()),
    )?;
    check(a.dims() == b.dims() && a.dtype() == b.dtype(), || {
        format!("{}: a is {:?} {:?}", what(), a.dims(), a.dtype())
    })?;
    check(
        info.converged.len() == e.min(if vector { 1 } else { e }),
        || format!("{}: {} columns reported", what(), info.converged.len()),
    )?;
    // The dense reference: converged columns have a small residual.
    if dtype != DType::F64 || special || y.dims() != x.dims() || !spec.moderate() {
        return Ok(());
    }
    let xs = rows_of(&x);
    let kd = spec.dense(&xs, &rows_of(&y));
    if kd.iter().flatten().any(|v| !v.is_finite()) {
        return Ok(());
    }
    let (a, b) = (rows_of(&a), rows_of(&b));
    let k_norm = kd.iter().flatten().map(|v| v * v).sum::<f64>().sqrt() + alpha_value;
    for c in 0..info.converged.len() {
        if !info.converged[c] {
            continue;
        }
        let col = |m: &Vec<Vec<f64>>| m.iter().map(|row| row[c]).collect::<Vec<f64>>();
        let (ac, bc) = (col(&a), col(&b));
        let res: f64 = (0..n)
            .map(|i| {
                let ka: f64 = (0..n).map(|j| kd[i][j] * ac[j]).sum::<f64>() + alpha_value * ac[i];
                (bc[i] - ka).powi(2)
            })
            .sum::<f64>()
            .sqrt();
        let (b_norm, a_norm) = (norm(&bc), norm(&ac));
        let allowed = 10.0 * opts.tol * b_norm + 1e-12 * k_norm * a_norm;
        check(res <= allowed, || {
            // How far the operator's own matrix is from the reference, to tell a wrong
            // matrix from a wrong solve.
            let k = KernelOperator::new(spec.kernel(dtype).unwrap(), &x, &y).unwrap();
            let kk = rows_of(&k.to_dense().unwrap());
            let diff = kk
                .iter()
                .flatten()
                .zip(kd.iter().flatten())
                .map(|(a, b)| (a - b).abs());
            format!(
                "{}: column {c} converged with the dense residual {res:e}, allowed {allowed:e} \
                 (|K - dense K|_max = {:e})",
                what(),
                diff.fold(0.0, f64::max)
            )
        })?;
    }
    stats.borrow_mut()[2] += 1;
    Ok(())
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

#[test]
fn fuzz_kernel_operator_solve() {
    let stats = std::cell::RefCell::new([0usize; 3]);
    fuzz("solve", cases(1500), |seed| solve_case(seed, &stats));
    let [ok, err, checked] = *stats.borrow();
    eprintln!("fuzz: solve cases: {ok} Ok ({checked} checked against a dense residual), {err} Err");
}

/// The Cholesky factor of the symmetric `a` (row-major `n x n`), or `None` if it is not
/// numerically positive definite.
fn cholesky(a: &[Vec<f64>]) -> Option<Vec<Vec<f64>>> {
    let n = a.len();
    let mut l = vec![vec![0.0; n]; n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = a[i][j] - (0..j).map(|k| l[i][k] * l[j][k]).sum::<f64>();
            if i == j {
                if s.is_nan() || s <= 0.0 {
                    return None;
                }
                l[i][i] = s.sqrt();
            } else {
                l[i][j] = s / l[j][j];
            }
        }
    }
    Some(l)
}

/// `A^-1 b` from the Cholesky factor of `A`.
fn chol_solve(l: &[Vec<f64>], b: &[f64]) -> Vec<f64> {
    let n = l.len();
    let mut z = b.to_vec();
    for i in 0..n {
        z[i] = (z[i] - (0..i).map(|k| l[i][k] * z[k]).sum::<f64>()) / l[i][i];
    }
    for i in (0..n).rev() {
        z[i] = (z[i] - (i + 1..n).map(|k| l[k][i] * z[k]).sum::<f64>()) / l[i][i];
    }
    z
}

/// One random GP: data, kernel, settings; `nll`, `predict`, a short `fit`, `predict` again.
fn gp_case(seed: u64, stats: &std::cell::RefCell<[usize; 4]>) -> Result<(), TestCaseError> {
    let mut r = Rng(seed | 1);
    let wild = r.below(2) == 0;
    let dtype = if wild && r.below(4) == 0 {
        DType::F32
    } else {
        DType::F64
    };
    let n = [1, 2, 5, 12, 30][r.below(5)];
    let d = 1 + r.below(2);
    let special_x = wild && r.below(4) == 0;
    let xv = random_points(&mut r, n, d, special_x);
    let yv: Vec<f64> = (0..n)
        .map(|i| (3.0 * xv[i * d]).sin() + 0.1 * r.uniform(-1.0, 1.0))
        .collect();
    let x = Tensor::from_vec(xv, (n, d), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    let y = match r.below(if wild { 8 } else { 1 }) {
        1 => Tensor::from_vec(vec![f64::NAN; n], n, &Device::Cpu).unwrap(),
        2 => Tensor::from_vec(vec![0.5; n + 1], n + 1, &Device::Cpu).unwrap(),
        _ => Tensor::from_vec(yv, (n, 1), &Device::Cpu).unwrap(),
    }
    .to_dtype(dtype)
    .unwrap();
    let pick = |r: &mut Rng, usual: f64| if wild { real_option(r, usual) } else { usual };
    let count = |r: &mut Rng, usual: usize| {
        if wild {
            count_option(r, usual, n)
        } else {
            usual
        }
    };
    let ls: Vec<f64> = (0..if r.below(2) == 0 { 1 } else { d })
        .map(|_| r.uniform(0.1, 1.0))
        .collect();
    let ls = if wild && r.below(6) == 0 {
        vec![pick(&mut r, 0.5); d + 1]
    } else {
        ls
    };
    let family = r.below(4);
    let noise_init = [1e-2, 1e-4, 1e-12, 10.0][r.below(4)];
    let settings = GpSettings {
        nll_method: [NllMethod::Auto, NllMethod::Exact, NllMethod::Stochastic][r.below(3)],
        train_tol: pick(&mut r, 1e-3),
        predict_tol: pick(&mut r, 1e-8),
        // Not usize::MAX: `n * probes` overflows (issue 17 point 1, see
        // fuzz_corpus.rs `huge_probe_count_is_an_error`).
        probes: count(&mut r, 8).min(n + 3),
        lanczos_iters: count(&mut r, 50),
        logdet_estimator: [
            LogdetEstimator::Hutchinson,
            LogdetEstimator::DiagonalCorrected,
            LogdetEstimator::BlockCorrected,
        ][r.below(3)],
        quadrature_tol: pick(&mut r, 1e-2),
        preconditioner: if wild {
            random_preconditioner(&mut r, n)
        } else {
            Preconditioner::default()
        },
        max_iters: count(&mut r, 200),
        seed: r.next_u64(),
        noise_floor: pick(&mut r, 1e-6),
        predict_chunk: count(&mut r, 64),
        variances: if r.below(2) == 0 {
            Variances::Exact
        } else {
            Variances::Love {
                tol: pick(&mut r, 1e-5),
                max_rank: count(&mut r, 1000),
            }
        },
        learn_mean: r.below(2) == 0,
    };
    let fit_opts = FitOptions {
        optimizer: if r.below(2) == 0 {
            Optimizer::AdamW
        } else {
            // Not usize::MAX: `VecDeque::with_capacity(history)` overflows (issue 17 point 1,
            // see fuzz_corpus.rs `huge_lbfgs_history_is_an_error`).
            Optimizer::Lbfgs {
                history: count(&mut r, 10).min(n + 3),
            }
        },
        steps: 1 + r.below(2),
        lr: pick(&mut r, 0.05),
        tol: pick(&mut r, 1e-4),
        // Not usize::MAX: `2 * patience` overflows (issue 17 point 4, see fuzz_corpus.rs
        // `huge_patience_is_not_an_overflow`).
        patience: count(&mut r, 5).min(n + 3),
        progress: false,
    };
    let x_new = match r.below(if wild { 6 } else { 2 }) {
        0 => Tensor::from_vec(random_points(&mut r, 7, d, false), (7, d), &Device::Cpu).unwrap(),
        1 => Tensor::from_vec(random_points(&mut r, 3, d, false), (3, d), &Device::Cpu).unwrap(),
        2 => Tensor::zeros((0, d), DType::F64, &Device::Cpu).unwrap(),
        3 => Tensor::zeros((2, d + 1), DType::F64, &Device::Cpu).unwrap(),
        4 => Tensor::from_vec(random_points(&mut r, 4, d, true), (4, d), &Device::Cpu).unwrap(),
        _ => Tensor::from_vec(random_points(&mut r, 5, d, false), (5, d), &Device::Cpu).unwrap(),
    }
    .to_dtype(dtype)
    .unwrap();
    let what = || {
        format!(
            "seed {seed}: {dtype:?} N {n} D {d} family {family} lengthscale {ls:?} noise \
             {noise_init} x_new {:?} {settings:?} {fit_opts:?}",
            x_new.dims()
        )
    };
    let made = no_panic(
        what,
        || -> candle_core::Result<(ExactGp, Positive, Positive, Positive)> {
            let l = Positive::new("lengthscale", &ls, dtype, &Device::Cpu)?;
            let s = Positive::new("outputscale", &[1.5], dtype, &Device::Cpu)?;
            let noise = Positive::new("noise", &[noise_init], dtype, &Device::Cpu)?;
            let (lc, sc) = (l.clone(), s.clone());
            let kernel = move || {
                let l = lc.value()?;
                let k = match family {
                    0 => Kernel::gaussian(&l),
                    1 => Kernel::matern52(&l),
                    2 => Kernel::rational_quadratic(
                        &l,
                        &Tensor::new(&[2.0], &Device::Cpu)?.to_dtype(l.dtype())?,
                    ),
                    _ => Kernel::matern12(&l),
                };
                Ok(k.scale(&sc.value()?))
            };
            let gp = ExactGp::new(&x, &y, vec![l.clone(), s.clone()], noise.clone(), kernel)?
                .with_settings(settings.clone());
            Ok((gp, l, s, noise))
        },
    )?;
    let (mut gp, l, s, noise) = match made {
        Ok(v) => v,
        Err(err) => {
            debug("ExactGp::new", &err);
            stats.borrow_mut()[1] += 1;
            return Ok(());
        }
    };
    let nll = no_panic(what, || gp.nll())?;
    let method = no_panic(what, || gp.nll_method())?;
    let pred = no_panic(what, || gp.predict(&x_new))?;
    for (name, res) in [
        ("nll", nll.as_ref().err()),
        ("predict", pred.as_ref().err()),
    ] {
        if let Some(err) = res {
            debug(name, err);
        }
    }
    stats.borrow_mut()[if nll.is_ok() { 0 } else { 1 }] += 1;
    // The dense reference of the exact path (f64, sane settings).
    let exact = matches!(method, Ok(NllMethod::Exact));
    let floor = settings.noise_floor;
    if dtype == DType::F64 && exact && !wild && floor.is_finite() && floor >= 0.0 {
        let lv = l.values().unwrap();
        let sv = s.values().unwrap()[0];
        let s2 = noise.values().unwrap()[0] + floor;
        let spec = KSpec::Scale(
            vec![sv],
            Box::new(match family {
                0 => KSpec::Gaussian(lv),
                1 => KSpec::Matern(Nu::FiveHalves, lv),
                2 => KSpec::RationalQuadratic(lv, vec![2.0]),
                _ => KSpec::Matern(Nu::Half, lv),
            }),
        );
        let xs = rows_of(&x);
        let mut a = spec.dense(&xs, &xs);
        for (i, row) in a.iter_mut().enumerate() {
            row[i] += s2;
        }
        let yv = flat(&y);
        let mean = yv.iter().sum::<f64>() / n as f64;
        let res: Vec<f64> = yv.iter().map(|v| v - mean).collect();
        let cond = (sv * n as f64 + s2) / s2;
        if let (Some(lf), Ok((value, _))) = (cholesky(&a), &nll) {
            let alpha = chol_solve(&lf, &res);
            let fit: f64 = res.iter().zip(&alpha).map(|(r, a)| r * a).sum();
            let logdet: f64 = 2.0 * (0..n).map(|i| lf[i][i].ln()).sum::<f64>();
            let want =
                0.5 * fit + 0.5 * logdet + 0.5 * n as f64 * (2.0 * std::f64::consts::PI).ln();
            let got = value
                .to_dtype(DType::F64)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap()[0];
            let tol = 1e-9 * (fit.abs() + logdet.abs() + n as f64) * (1.0 + 1e-6 * cond);
            check((got - want).abs() <= tol, || {
                format!(
                    "{}: exact NLL {got}, dense {want} (tolerance {tol:e})",
                    what()
                )
            })?;
            if let Ok(p) = &pred {
                let xn = rows_of(&x_new);
                let kx = spec.dense(&xn, &xs);
                let want_mean: Vec<f64> = kx
                    .iter()
                    .map(|k| mean + k.iter().zip(&alpha).map(|(k, a)| k * a).sum::<f64>())
                    .collect();
                let scale = 1.0 + alpha.iter().map(|a| a.abs()).sum::<f64>() * sv;
                if let Some(msg) = close(
                    &flat(&p.mean),
                    &want_mean,
                    0.0,
                    1e-9 * scale * (1.0 + 1e-6 * cond),
                ) {
                    return Err(TestCaseError::fail(format!(
                        "{}: predicted mean: {msg}",
                        what()
                    )));
                }
                if settings.variances == Variances::Exact {
                    let want_var: Vec<f64> = kx
                        .iter()
                        .enumerate()
                        .map(|(i, k)| {
                            let v = chol_solve(&lf, k);
                            let prior = spec.eval(&xn[i], &xn[i]);
                            (prior - k.iter().zip(&v).map(|(k, v)| k * v).sum::<f64>()).max(0.0)
                        })
                        .collect();
                    if let Some(msg) = close(
                        &flat(&p.variance),
                        &want_var,
                        0.0,
                        1e-9 * sv * (1.0 + 1e-6 * cond),
                    ) {
                        return Err(TestCaseError::fail(format!(
                            "{}: predicted variance: {msg}",
                            what()
                        )));
                    }
                }
                stats.borrow_mut()[2] += 1;
            }
        }
    }
    // Sane inputs give finite predictions with nonnegative variances.
    if let (Ok(p), false) = (&pred, wild) {
        let (mu, var) = (flat(&p.mean), flat(&p.variance));
        check(
            mu.iter().all(|v| v.is_finite()) && var.iter().all(|v| v.is_finite() && *v >= 0.0),
            || format!("{}: prediction mean {mu:?} variance {var:?}", what()),
        )?;
    }
    // A short fit, then a prediction with what it learned.
    let fitted = no_panic(what, || gp.fit(&fit_opts))?;
    match &fitted {
        Ok(report) => {
            stats.borrow_mut()[3] += 1;
            check(
                !report.trajectory.is_empty() && report.trajectory.len() <= fit_opts.steps,
                || format!("{}: {} steps reported", what(), report.trajectory.len()),
            )?;
        }
        Err(err) => debug("fit", err),
    }
    let _ = no_panic(what, || gp.predict(&x_new))?;
    Ok(())
}

#[test]
fn fuzz_exact_gp() {
    let stats = std::cell::RefCell::new([0usize; 4]);
    fuzz("GP", cases(150), |seed| gp_case(seed, &stats));
    let [ok, err, checked, fits] = *stats.borrow();
    eprintln!(
        "fuzz: GP cases: {ok} with an NLL ({checked} checked against the dense exact NLL and \
         prediction), {err} Err at new or nll, {fits} fits Ok"
    );
}

/// One random kernel operator: `matmul`, `t().matmul`, `diag`, `rows` and `to_dense` against
/// the kernel's definition, with random shapes (non-square, mismatched `b`) and indices (some
/// out of range).
fn operator_case(seed: u64, stats: &std::cell::RefCell<[usize; 3]>) -> Result<(), TestCaseError> {
    let mut r = Rng(seed | 1);
    let dtype = [
        DType::F64,
        DType::F64,
        DType::F64,
        DType::F32,
        DType::BF16,
        DType::U8,
    ][r.below(6)];
    let (m, n) = ([0, 1, 3, 17, 40][r.below(5)], [1, 2, 9, 33][r.below(4)]);
    let d = 1 + r.below(3);
    let spec = random_kspec(&mut r, d, 2);
    let special = r.below(8) == 0;
    let x = Tensor::from_vec(random_points(&mut r, m, d, special), (m, d), &Device::Cpu).unwrap();
    let y = Tensor::from_vec(random_points(&mut r, n, d, false), (n, d), &Device::Cpu).unwrap();
    let (x, y) = (x.to_dtype(dtype).unwrap(), y.to_dtype(dtype).unwrap());
    // Non-contiguous points sometimes: the transpose of a contiguous transpose.
    let x = if r.below(4) == 0 {
        x.t().unwrap().contiguous().unwrap().t().unwrap()
    } else {
        x
    };
    let (b_rows, e) = (if r.below(10) == 0 { n + 1 } else { n }, 1 + r.below(3));
    let b = Tensor::from_vec(
        (0..b_rows * e)
            .map(|_| r.uniform(-1.0, 1.0))
            .collect::<Vec<f64>>(),
        (b_rows, e),
        &Device::Cpu,
    )
    .unwrap()
    .to_dtype(dtype)
    .unwrap();
    let idx: Vec<usize> = (0..r.below(4)).map(|_| r.below(m + 2)).collect();
    let what = || {
        format!(
            "seed {seed}: {spec:?} {dtype:?} M {m} N {n} D {d} b {:?} rows {idx:?}",
            b.dims()
        )
    };
    let k = match no_panic(what, || KernelOperator::new(spec.kernel(dtype)?, &x, &y))? {
        Ok(k) => k,
        Err(err) => {
            debug("KernelOperator::new", &err);
            stats.borrow_mut()[1] += 1;
            return Ok(());
        }
    };
    let kb = no_panic(what, || k.matmul(&b))?;
    let ktc = no_panic(what, || {
        k.t().matmul(&Tensor::ones((m, 1), dtype, &Device::Cpu)?)
    })?;
    let diag = no_panic(what, || k.diag())?;
    let rows = no_panic(what, || k.rows(&idx))?;
    let dense = no_panic(what, || k.to_dense())?;
    check(rows.is_ok() || idx.iter().any(|&i| i >= m), || {
        format!("{}: rows failed: {rows:?}", what())
    })?;
    check(rows.is_err() || idx.iter().all(|&i| i < m), || {
        format!("{}: an index out of range was accepted", what())
    })?;
    stats.borrow_mut()[0] += 1;
    if dtype != DType::F64 || special || !spec.valid(d) || !spec.moderate() {
        return Ok(());
    }
    let (xs, ys) = (rows_of(&x), rows_of(&y));
    let kd = spec.dense(&xs, &ys);
    let scale = 1.0 + kd.iter().flatten().map(|v| v.abs()).fold(0.0, f64::max);
    let fail =
        |what_: &str, msg: String| TestCaseError::fail(format!("{}: {what_}: {msg}", what()));
    if let Ok(dense) = &dense {
        if let Some(msg) = close(&flat(dense), &kd.concat(), 1e-12, 1e-12 * scale) {
            return Err(fail("to_dense", msg));
        }
    }
    if let (Ok(kb), true) = (&kb, b_rows == n) {
        let bv = rows_of(&b);
        let want: Vec<f64> = kd
            .iter()
            .flat_map(|row| {
                (0..e)
                    .map(|c| row.iter().zip(&bv).map(|(k, b)| k * b[c]).sum::<f64>())
                    .collect::<Vec<_>>()
            })
            .collect();
        if let Some(msg) = close(&flat(kb), &want, 1e-10, 1e-10 * scale * n as f64) {
            return Err(fail("matmul", msg));
        }
    }
    if let Ok(kt) = &ktc {
        let want: Vec<f64> = (0..n).map(|j| (0..m).map(|i| kd[i][j]).sum()).collect();
        if let Some(msg) = close(&flat(kt), &want, 1e-10, 1e-10 * scale * m as f64) {
            return Err(fail("t().matmul", msg));
        }
    }
    if let Ok(dg) = &diag {
        let want: Vec<f64> = (0..m.min(n)).map(|i| kd[i][i]).collect();
        if let Some(msg) = close(&flat(dg), &want, 1e-12, 1e-12 * scale) {
            return Err(fail("diag", msg));
        }
    }
    if let Ok(rw) = &rows {
        let want: Vec<f64> = idx.iter().flat_map(|&i| kd[i].clone()).collect();
        if let Some(msg) = close(&flat(rw), &want, 1e-12, 1e-12 * scale) {
            return Err(fail("rows", msg));
        }
    }
    stats.borrow_mut()[2] += 1;
    Ok(())
}

#[test]
fn fuzz_kernel_operator_products() {
    let stats = std::cell::RefCell::new([0usize; 3]);
    fuzz("operator", cases(1000), |seed| operator_case(seed, &stats));
    let [ok, err, checked] = *stats.borrow();
    eprintln!(
        "fuzz: operator cases: {ok} built ({checked} checked against the dense kernel), {err} Err"
    );
}
