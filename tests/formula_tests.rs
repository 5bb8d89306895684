//! The symbolic layer: printing, parsing (and its errors), simplification, dimension rules.

use lazy_kernels::formula::{Expr, Var, VarCat, parse, simplify};

fn leaves() -> Vec<(&'static str, Expr)> {
    vec![
        (
            "x",
            Expr::var(Var {
                cat: VarCat::I,
                pos: 0,
                dim: 3,
            })
            .unwrap(),
        ),
        (
            "y",
            Expr::var(Var {
                cat: VarCat::J,
                pos: 1,
                dim: 3,
            })
            .unwrap(),
        ),
        (
            "s",
            Expr::var(Var {
                cat: VarCat::P,
                pos: 2,
                dim: 1,
            })
            .unwrap(),
        ),
    ]
}

#[test]
fn canonical_form_round_trips() {
    let names = leaves();
    for src in [
        "Exp(-SqDist(x, y) / (2.0 * Square(s)))",
        "x - (y - x)",
        "(x - y) - x",
        "x / (y / s)",
        "-(-x)",
        "-x * y",
        "-(x * y)",
        "x * -2.5",
        "-2.5 * x",
        "x - -1e-30",
        "Pow(x, -3) + Powf(Abs(x) + 1.0, s)",
        "Clamp(x, -1.0, 1.0) + IfElse(x - y, x, y)",
        "Concat(Elem(x, 2), Extract(y, 0, 2)) + MatVecMult(Concat(x, y), Extract(y, 1, 2))",
        "Min(x, y) + Max(x, y) + Lt(x, y) + Le(x, y) + Gt(x, y) + Ge(x, y) + Eq(x, y) + Ne(x, y)",
        "Sign(x) + Step(x) + ReLU(x) + Abs(x) + Inv(x) + Rsqrt(x) + Sqrt(x) + Log(x) + Sin(x) + Cos(x)",
        "WeightedSqDist(s, x, y) + Norm2(x) + Normalize(y) + Dot(x, y) + Sum(x)",
        "0.1 + 1e300 * -0.0",
    ] {
        let f = parse(src, &names).unwrap_or_else(|e| panic!("{e}"));
        let printed = f.to_string();
        let again = parse(&printed, &[]).unwrap_or_else(|e| panic!("{printed}: {e}"));
        assert_eq!(again, f, "{src} printed as {printed}");
        assert_eq!(again.to_string(), printed);
    }
}

#[test]
fn shared_subexpressions_are_shared() {
    let names = leaves();
    let f = parse("Exp(-SqDist(x, y)) * SqDist(x, y)", &names).unwrap();
    // x, y, Sub, Square, Sum, Neg, Exp, Mul: the distance is one node.
    assert_eq!(f.node_count(), 8);
}

#[test]
fn dimensions_are_inferred() {
    let names = leaves();
    let dim = |s: &str| parse(s, &names).unwrap().dim();
    assert_eq!(dim("x + s"), 3);
    assert_eq!(dim("SqDist(x, y)"), 1);
    assert_eq!(dim("Concat(x, y)"), 6);
    assert_eq!(dim("Extract(x, 1, 2)"), 2);
    assert_eq!(dim("MatVecMult(Concat(x, y), Extract(y, 0, 2))"), 3);
    assert_eq!(dim("WeightedSqDist(x, x, y)"), 1);
}

fn parse_err(src: &str) -> lazy_kernels::formula::ParseError {
    let mut names = leaves();
    names.push((
        "z",
        Expr::var(Var {
            cat: VarCat::J,
            pos: 3,
            dim: 2,
        })
        .unwrap(),
    ));
    match parse(src, &names) {
        Ok(f) => panic!("{src} parsed as {f}"),
        Err(e) => e,
    }
}

#[test]
fn parse_errors_point_at_the_offending_column() {
    let cases: &[(&str, usize, &str)] = &[
        ("Exp(x) + Foo(y)", 10, "unknown function 'Foo'"),
        ("Exp(x) + w", 10, "unknown name 'w'"),
        ("Exp(x", 6, "expected ')'"),
        ("Exp(x))", 7, "unexpected text after the end"),
        ("x +", 4, "expected a number, a name or '('"),
        ("x $ y", 3, "unexpected character '$'"),
        ("", 1, "expected a number"),
        ("Pow(x, 1.5)", 8, "integer literal"),
        ("x + SqDist(x, z)", 5, "SqDist: dimension mismatch"),
        ("x + z", 1, "dimension mismatch"),
        ("Elem(x, 3)", 1, "component 3 of a 3-component argument"),
        ("Extract(x, 2, 2)", 1, "components 2..4"),
        ("Clamp(x, y)", 11, "expected ','"),
        ("Sin(x, y)", 6, "expected ')'"),
        ("Vi(0, -1)", 7, "non-negative integer"),
        ("1e999", 1, "not finite"),
        ("Dot(x, s)", 1, "Dot: dimension mismatch"),
        ("WeightedSqDist(z, x, y)", 1, "weights have 2 components"),
    ];
    for (src, col, msg) in cases {
        let e = parse_err(src);
        assert_eq!(e.column(), *col, "{src}: {e}");
        assert!(e.to_string().contains(msg), "{src}: {e}");
        // The display marks the column under the source.
        let shown = e.to_string();
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(lines.len(), 3, "{shown}");
        assert_eq!(lines[2].find('^'), Some(col + 1), "{shown}");
    }
}

#[test]
fn hostile_nesting_is_an_error_not_a_stack_overflow() {
    let deep = format!("{}x{}", "(".repeat(100_000), ")".repeat(100_000));
    assert!(parse_err(&deep).to_string().contains("nested more than"));
    let deep = format!("{}x", "-".repeat(100_000));
    assert!(parse_err(&deep).to_string().contains("nested more than"));
}

#[test]
fn simplification_folds_constants_and_neutral_elements() {
    let names = leaves();
    let cases = [
        ("x * (2.0 - 1.0) + 0.0", "Vi(0,3)"),
        ("--x", "Vi(0,3)"),
        ("Sum(s) / 1.0", "Pm(2,1)"),
        ("Exp(0.0) * y", "Vj(1,3)"),
        ("0.0 + s", "Pm(2,1)"),
        // `0 * x` stays: it is NaN for infinite x.
        ("0.0 * x", "0.0 * Vi(0,3)"),
        // A neutral scalar that broadcasts s to 3 components stays.
        (
            "s + Concat(0.0, Concat(0.0, 0.0))",
            "Pm(2,1) + Concat(0.0,Concat(0.0,0.0))",
        ),
    ];
    for (src, want) in cases {
        let f = simplify(&parse(src, &names).unwrap());
        assert_eq!(f.to_string(), want, "{src}");
    }
}
