//! Fuzzing of the parsers and of formulas built through the API (issue 17, point 5; the
//! harness, the property and how to fuzz longer: `tests/fuzz/mod.rs`): mutated valid formulas
//! and random strings into `formula::parse` and `LazyTensor::parse`; random formula trees
//! through `LazyTensor`'s operators, methods and `reduce_with`, and through `Expr::new` and
//! `LazyTensor::from_formula`, with random shapes (0, 1, mismatched), dtypes (f32, f64, f16,
//! bf16, i64, u8), layouts (transposed, narrowed, strided, broadcast), NaN, infinite and
//! subnormal values, every `ReductionKind` on both axes, `k` from 0 to `usize::MAX`, and
//! gradients, against the dense reference of `tests/common`.

mod common;
mod fuzz;

use candle_core::{DType, Device, Tensor, Var as CVar};
use common::{
    Dense, Rng, dense_autodiff_covers, dense_eval, dense_values, flat, flat_i64, ref_lse,
    ref_softmax_weight, ref_sorted, ref_sum, table_op_sources,
};
use fuzz::{all_finite, cases, check, close, debug, fuzz, no_panic};
use lazy_kernels::formula::{BinaryOp, Expr, Op, TernaryOp, UnaryOp, Var, VarCat, parse};
use lazy_kernels::{Axis, LazyTensor, Path, ReductionKind, ReductionOptions};
use proptest::prelude::TestCaseError;

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
        8 if valid && b.dim().ok() != Some(dim) => a.sqdist(&a.sin()),
        8 => a.sqdist(&b),
        9 if valid && b.dim().ok() != Some(dim) => a.dot(&(&a + &b)),
        9 => a.dot(&b),
        10 if valid => a.elem(r.below(dim)),
        10 => a.elem(dim),
        11 if valid => {
            let start = r.below(dim);
            a.extract(start, 1 + r.below(dim - start))
        }
        11 => a.extract(r.below(dim + 1), r.below(dim + 2)),
        12 => a.concat(&b),
        13 if valid && dim % b.dim().unwrap_or(1) != 0 => a.matvecmult(&b.component_sum()),
        13 => a.matvecmult(&b),
        14 => match r.below(5) {
            0 => a.exp(),
            1 => a.sqnorm2(),
            2 => a.norm2(),
            3 => a.normalize(),
            _ => a.component_sum(),
        },
        _ if valid && b.dim().ok() != Some(dim) => a.weighted_sqdist(&a.exp(), &b.component_sum()),
        _ => a.weighted_sqdist(&b, &random_tree(r, leaves, 0)?),
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

/// Whether `e` has a constant beyond `[1e-6, 1e6]` in magnitude (other than 0): with
/// `Cos(Sum(1e300 * Square(y - x)))` the order of the sum's rounding moves the cosine's
/// argument by many periods, so two correct evaluations disagree.
fn extreme_constant(e: &Expr) -> bool {
    e.topo_order().iter().any(|n| match n.op() {
        Op::Const(c) => *c != 0.0 && !(1e-6..=1e6).contains(&c.abs()),
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
                                return Some(format!(
                                    "row {row} rank {rank} component {c}: index {i}, want value {w}"
                                ));
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
    let kinds = ReductionKind::all(
        [
            0,
            1,
            2,
            3,
            n,
            n + 1,
            m + 1,
            1_000_000_000,
            usize::MAX / 2,
            usize::MAX,
        ][r.below(10)],
    );
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
        lt.component_sum()
            .concat(&lazies[r.below(lazies.len())])
            .checked(),
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
        && !extreme_constant(&e)
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
