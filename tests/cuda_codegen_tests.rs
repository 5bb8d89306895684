//! The CUDA code generator, checked without a GPU:
//!
//! - the generated per-pair formula code is valid host C++: it is compiled with the system C++
//!   compiler (`c++`, or `$CXX`) and its values are compared with the CPU backend's on random
//!   inputs, for every op, in f64 and f32;
//! - a corpus of whole generated modules (every op, every reduction, gradient formulas, every
//!   dtype, tiles in shared memory and not) is written to `$LK_CUDA_CORPUS` (or a temporary
//!   directory) for `scripts/check-cuda-corpus.sh`, which CI runs, to compile with
//!   `nvcc -cubin` for sm_80 and sm_90.

mod common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Tensor};
use common::{Rng, table_op_sources};
use lazy_kernels::backend::cuda::codegen::{MATH_CUH, formula_function};
use lazy_kernels::backend::cuda::{
    Storage, generate, generate_ranged, generate_values, generate_with_pairs,
};
use lazy_kernels::formula::{BinaryOp, Expr, TernaryOp, UnaryOp, Var, VarCat, grad};
use lazy_kernels::{Axis, LazyTensor, ReductionKind};

const D: usize = 3;

fn var(cat: VarCat, pos: usize, dim: usize) -> Expr {
    Expr::var(Var { cat, pos, dim }).unwrap()
}

/// The variables every test formula may use: x_i (3), y_j (3), b_j (1), p (parameter, 1).
fn vars() -> [(VarCat, usize); 4] {
    [
        (VarCat::I, D),
        (VarCat::J, D),
        (VarCat::J, 1),
        (VarCat::P, 1),
    ]
}

fn k(c: f64) -> Expr {
    Expr::constant(c).unwrap()
}

/// One formula per op (and the composite forms the library builds), each on inputs where the
/// op is defined and away from its discontinuities.
fn op_formulas() -> Vec<(String, Expr)> {
    let (x, y, b, p) = (
        var(VarCat::I, 0, D),
        var(VarCat::J, 1, D),
        var(VarCat::J, 2, 1),
        var(VarCat::P, 3, 1),
    );
    let bin = |op, a: &Expr, c: &Expr| Expr::binary(op, a, c).unwrap();
    let d = bin(BinaryOp::Sub, &x, &y); // in (-2, 2)
    let pos = bin(BinaryOp::Add, &Expr::unary(UnaryOp::Square, &d), &k(0.25)); // > 0
    let mut out: Vec<(String, Expr)> = Vec::new();
    // Hand-picked arguments for the first ops (their kernels are the corpus' stable part); every
    // op of the table follows, generated from its metadata.
    use UnaryOp::*;
    for u in [
        Neg, Exp, Log, Sqrt, Rsqrt, Square, Inv, Abs, Sign, Step, Relu, Sin, Cos,
    ]
    .into_iter()
    .chain([UnaryOp::Pow(3), UnaryOp::Pow(-2)])
    {
        let arg = match u {
            UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Rsqrt | UnaryOp::Inv | UnaryOp::Pow(_) => {
                pos.clone()
            }
            _ => d.clone(),
        };
        out.push((format!("{u:?}"), Expr::unary(u, &arg)));
    }
    for &op in &BinaryOp::ALL[..13] {
        let (a, c) = match op {
            BinaryOp::Powf => (pos.clone(), bin(BinaryOp::Mul, &b, &p)),
            BinaryOp::Div => (d.clone(), pos.clone()),
            _ => (x.clone(), y.clone()),
        };
        out.push((format!("{op:?}"), bin(op, &a, &c)));
    }
    for &t in &TernaryOp::ALL[..2] {
        let e = match t {
            TernaryOp::Clamp => Expr::ternary(t, &x, &y, &bin(BinaryOp::Add, &y, &p)),
            TernaryOp::IfElse => Expr::ternary(t, &d, &x, &y),
            _ => unreachable!("the first two ternary ops"),
        };
        out.push((format!("{t:?}"), e.unwrap()));
    }
    let sq = Expr::sqdist(&x, &y).unwrap();
    out.extend([
        ("Sum".into(), d.sum()),
        (
            "Elem".into(),
            Expr::new(lazy_kernels::formula::Op::Elem(2), vec![d.clone()]).unwrap(),
        ),
        (
            "Extract".into(),
            Expr::new(
                lazy_kernels::formula::Op::Extract { start: 1, len: 2 },
                vec![d.clone()],
            )
            .unwrap(),
        ),
        (
            "Concat".into(),
            Expr::new(
                lazy_kernels::formula::Op::Concat,
                vec![d.clone(), b.clone()],
            )
            .unwrap(),
        ),
        (
            "MatVecMult".into(),
            Expr::new(
                lazy_kernels::formula::Op::MatVecMult,
                vec![
                    Expr::new(
                        lazy_kernels::formula::Op::Concat,
                        vec![d.clone(), x.clone()],
                    )
                    .unwrap(),
                    Expr::new(
                        lazy_kernels::formula::Op::Extract { start: 0, len: 2 },
                        vec![y.clone()],
                    )
                    .unwrap(),
                ],
            )
            .unwrap(),
        ),
        ("Gaussian".into(), bin(BinaryOp::Mul, &sq.neg().exp(), &b)),
        (
            "Laplacian".into(),
            bin(
                BinaryOp::Mul,
                &Expr::unary(UnaryOp::Sqrt, &sq).neg().exp(),
                &b,
            ),
        ),
        ("Dot".into(), Expr::dot(&x, &y).unwrap()),
        (
            "Norm".into(),
            Expr::normalize(&bin(BinaryOp::Add, &d, &k(0.5))),
        ),
        (
            "Const".into(),
            bin(
                BinaryOp::Mul,
                &bin(BinaryOp::Mul, &k(-2.5e-3), &bin(BinaryOp::Add, &p, &k(7.0))),
                &d,
            ),
        ),
    ]);
    let leaves = [("x", x.clone()), ("y", y.clone()), ("b", b.clone())];
    for (name, src) in table_op_sources(["x - y", "x + y", "2.0 * x * b"]) {
        let f =
            lazy_kernels::formula::parse(&src, &leaves).unwrap_or_else(|e| panic!("{src}: {e}"));
        // A formula the hand-picked list already has is one kernel (nvcc rejects a module
        // defined twice in one corpus file).
        if !out.iter().any(|(_, g)| *g == f) {
            out.push((format!("table {name}"), f));
        }
    }
    out
}

/// Gradients of a few kernels with respect to x, y, b and the parameter.
fn grad_formulas() -> Vec<(String, Expr)> {
    let (x, y, b, p) = (
        var(VarCat::I, 0, D),
        var(VarCat::J, 1, D),
        var(VarCat::J, 2, 1),
        var(VarCat::P, 3, 1),
    );
    let sq = Expr::sqdist(&x, &y).unwrap();
    let scaled = Expr::binary(BinaryOp::Mul, &sq, &p).unwrap();
    let gauss = Expr::binary(BinaryOp::Mul, &scaled.neg().exp(), &b).unwrap();
    let lap = Expr::binary(
        BinaryOp::Mul,
        &Expr::unary(UnaryOp::Sqrt, &scaled).neg().exp(),
        &b,
    )
    .unwrap();
    let eta = var(VarCat::I, 4, 1);
    let mut out = Vec::new();
    for (name, f) in [("gauss", gauss), ("laplace", lap)] {
        let wrt = [
            Var {
                cat: VarCat::I,
                pos: 0,
                dim: D,
            },
            Var {
                cat: VarCat::J,
                pos: 1,
                dim: D,
            },
            Var {
                cat: VarCat::J,
                pos: 2,
                dim: 1,
            },
            Var {
                cat: VarCat::P,
                pos: 3,
                dim: 1,
            },
        ];
        for (w, g) in wrt.iter().zip(grad(&f, &wrt, &eta).unwrap()) {
            let g = lazy_kernels::formula::simplify(&g.expect("every variable is used"));
            out.push((format!("d{name}/d{:?}{}", w.cat, w.pos), g));
        }
    }
    out
}

/// A block plan's formula, variables and pair inputs.
type BlockFormula = (Expr, Vec<(VarCat, usize)>, Vec<Expr>);

/// Block plans as `crate::op::gram` makes them (distances rewritten into `Dot`s of centred
/// points and norms): each reduction (`Some(kind)`) of one- and two-component formulas over
/// one or two pair inputs, and coefficient kernels (`None`) of matrix products.
fn block_plan_formulas() -> Vec<(BlockFormula, Option<ReductionKind>)> {
    let d = 64;
    let vars = vec![
        (VarCat::I, d),
        (VarCat::J, d),
        (VarCat::I, 1),
        (VarCat::J, 1),
        (VarCat::J, 1),
        (VarCat::P, 1),
        (VarCat::I, 32),
        (VarCat::J, 32),
    ];
    let (x, y, xn, yn, b, s) = (
        var(VarCat::I, 0, d),
        var(VarCat::J, 1, d),
        var(VarCat::I, 2, 1),
        var(VarCat::J, 3, 1),
        var(VarCat::J, 4, 1),
        var(VarCat::P, 5, 1),
    );
    let (u, v) = (var(VarCat::I, 6, 32), var(VarCat::J, 7, 32));
    let bin = |op, a: &Expr, c: &Expr| Expr::binary(op, a, c).unwrap();
    let dot = Expr::dot(&x, &y).unwrap();
    let dist = Expr::unary(
        UnaryOp::Relu,
        &bin(
            BinaryOp::Sub,
            &bin(BinaryOp::Add, &xn, &yn),
            &bin(BinaryOp::Mul, &k(2.0), &dot),
        ),
    );
    let gauss = bin(BinaryOp::Mul, &dist, &s).neg().exp();
    let uv = Expr::dot(&u, &v).unwrap();
    let two = Expr::new(
        lazy_kernels::formula::Op::Concat,
        vec![dist.clone(), bin(BinaryOp::Mul, &uv, &b)],
    )
    .unwrap();
    let softmax = Expr::new(
        lazy_kernels::formula::Op::Concat,
        vec![dist.neg(), y.clone()],
    )
    .unwrap();
    let one = vec![dot.clone()];
    let both = vec![dot.clone(), uv.clone()];
    let mut out = Vec::new();
    for kind in ReductionKind::all(3) {
        let (f, pairs) = match kind {
            ReductionKind::Sum => (bin(BinaryOp::Mul, &gauss, &b), &one),
            ReductionKind::SumSoftMaxWeight => (softmax.clone(), &one),
            _ => (two.clone(), &both),
        };
        out.push(((f, vars.clone(), pairs.clone()), Some(kind)));
    }
    // Coefficients of `Sum_j c_ij y_j`: the Gaussian's, and a gradient's (with both pairs).
    out.push(((gauss.clone(), vars.clone(), one), None));
    let grad_coef = bin(BinaryOp::Mul, &bin(BinaryOp::Mul, &gauss, &uv), &b);
    out.push(((grad_coef, vars, both), None));
    out
}

/// Writes the corpus, one file per group of modules; returns the files and the number of
/// modules.
fn write_corpus(dir: &Path) -> (Vec<PathBuf>, usize) {
    std::fs::create_dir_all(dir).unwrap();
    let vars5 = {
        let mut v = vars().to_vec();
        v.push((VarCat::I, 1));
        v
    };
    let x = var(VarCat::I, 0, D);
    let y = var(VarCat::J, 1, D);
    let b = var(VarCat::J, 2, 1);
    let gauss = Expr::binary(
        BinaryOp::Mul,
        &Expr::sqdist(&x, &y).unwrap().neg().exp(),
        &b,
    )
    .unwrap();
    let sq = Expr::sqdist(&x, &y).unwrap();
    let two = Expr::new(
        lazy_kernels::formula::Op::Concat,
        vec![sq.clone(), sq.neg()],
    )
    .unwrap();
    let softmax = Expr::new(lazy_kernels::formula::Op::Concat, vec![sq.neg(), y.clone()]).unwrap();

    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    let mut add = |group: &str, src: String| match groups.iter_mut().find(|g| g.0 == group) {
        Some(g) => g.1.push(src),
        None => groups.push((group.to_string(), vec![src])),
    };
    // Every op, summed, in f32 and f64 (the ops generated from the table in their own file).
    for (name, f) in op_formulas() {
        let group = if name.starts_with("table ") {
            "table"
        } else {
            "ops"
        };
        for s in [Storage::F32, Storage::F64] {
            add(
                group,
                generate(&f, ReductionKind::Sum, &vars(), s).unwrap().source,
            );
        }
    }
    // Every reduction, in every dtype, on one- and two-component formulas.
    for s in Storage::ALL {
        for kind in ReductionKind::all(3) {
            let f = match kind {
                ReductionKind::Sum => &gauss,
                ReductionKind::SumSoftMaxWeight => &softmax,
                _ => &two,
            };
            add(
                &format!("{s:?}"),
                generate(f, kind, &vars(), s).unwrap().source,
            );
        }
    }
    // Gradient formulas.
    for (_, g) in grad_formulas() {
        for s in [Storage::F32, Storage::F64] {
            add(
                "grads",
                generate(&g, ReductionKind::Sum, &vars5, s).unwrap().source,
            );
        }
    }
    // Wide j-variables: a short tile, and no shared memory at all.
    for d in [40, 400] {
        let (x, y) = (var(VarCat::I, 0, d), var(VarCat::J, 1, d));
        let f = Expr::sqdist(&x, &y).unwrap().neg().exp();
        let v = [(VarCat::I, d), (VarCat::J, d)];
        for s in [Storage::F32, Storage::F64] {
            let k = generate(&f, ReductionKind::Sum, &v, s).unwrap();
            assert_eq!(k.shared, d == 40, "tiles in shared memory for D = {d}");
            add("wide", k.source);
        }
    }
    // Block plans: every reduction over inner products read from blocks, and the coefficient
    // kernels of matrix products (gradients' shape), in f32 and f64.
    for (src, kind) in block_plan_formulas() {
        let (f, vars, pairs) = src;
        for s in [Storage::F32, Storage::F64] {
            let k = match kind {
                Some(kind) => generate_with_pairs(&f, kind, &vars, &pairs, s),
                None => generate_values(&f, &vars, &pairs, s),
            };
            add("blocks", k.unwrap().source);
        }
    }
    // Block-sparse modules (the main kernel over the launch's descriptors): every reduction
    // in every dtype, gradient formulas, and j-variables without shared memory.
    for s in Storage::ALL {
        for kind in ReductionKind::all(3) {
            let f = match kind {
                ReductionKind::Sum => &gauss,
                ReductionKind::SumSoftMaxWeight => &softmax,
                _ => &two,
            };
            add(
                "ranges",
                generate_ranged(f, kind, &vars(), s).unwrap().source,
            );
        }
    }
    for (_, g) in grad_formulas().into_iter().take(3) {
        for s in [Storage::F32, Storage::F64] {
            let k = generate_ranged(&g, ReductionKind::Sum, &vars5, s).unwrap();
            add("ranges", k.source);
        }
    }
    {
        let (x, y) = (var(VarCat::I, 0, 400), var(VarCat::J, 1, 400));
        let f = Expr::sqdist(&x, &y).unwrap().neg().exp();
        let v = [(VarCat::I, 400), (VarCat::J, 400)];
        for s in [Storage::F32, Storage::F64] {
            let k = generate_ranged(&f, ReductionKind::Sum, &v, s).unwrap();
            assert!(k.ranged && !k.shared);
            add("ranges", k.source);
        }
    }
    let mut files = Vec::new();
    let mut count = 0;
    for (g, srcs) in groups {
        let path = dir.join(format!("corpus_{g}.cu"));
        count += srcs.len();
        std::fs::write(&path, srcs.join("\n")).unwrap();
        files.push(path);
    }
    (files, count)
}

#[test]
fn corpus_of_generated_kernels_is_written() {
    let dir = std::env::var_os("LK_CUDA_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join(format!("lk-corpus-{}", std::process::id())));
    let (files, count) = write_corpus(&dir);
    assert!(count > 100, "{count} kernels");
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let mains = text.matches("_main(").count();
        let combines = text.matches("_combine(").count();
        let values = text.matches("_values(").count();
        assert!(
            (mains > 0 || values > 0) && mains == combines,
            "{}: {mains} main, {combines} combine, {values} values",
            f.display()
        );
    }
    eprintln!(
        "{count} kernels in {} files under {}",
        files.len(),
        dir.display()
    );
}

#[test]
fn generated_names_are_stable_and_distinct() {
    let f = &op_formulas()[0].1;
    let a = generate(f, ReductionKind::Sum, &vars(), Storage::F32).unwrap();
    let b = generate(f, ReductionKind::Sum, &vars(), Storage::F32).unwrap();
    let c = generate(f, ReductionKind::Sum, &vars(), Storage::F64).unwrap();
    let d = generate(f, ReductionKind::Max, &vars(), Storage::F32).unwrap();
    assert_eq!(a.name, b.name);
    assert_eq!(a.source, b.source);
    assert_ne!(a.name, c.name);
    assert_ne!(a.name, d.name);
    // A formula whose variables do not match the inputs is refused.
    let wrong = [
        (VarCat::J, D),
        (VarCat::J, D),
        (VarCat::J, 1),
        (VarCat::P, 1),
    ];
    assert!(generate(f, ReductionKind::Sum, &wrong, Storage::F32).is_err());
}

/// The CPU backend's value of `f` at (x_i, y_0, b_0, p) for every row i.
fn cpu_values(f: &Expr, t: &[Tensor]) -> Vec<Vec<f64>> {
    let args: Vec<&Tensor> = t.iter().collect();
    LazyTensor::from_formula(f, &args)
        .unwrap_or_else(|e| panic!("{f}: {e}"))
        .sum(Axis::J)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec2::<f64>()
        .unwrap()
}

/// Compiles the formulas' generated functions into one host program that prints their values
/// on the given inputs, runs it and returns the values per formula and row.
fn host_values(fs: &[(String, Expr)], t: &[Tensor], s: Storage, dir: &Path) -> Vec<Vec<Vec<f64>>> {
    let tc = s.compute();
    let mut src = String::from(MATH_CUH);
    src.push_str("#include <stdio.h>\n");
    let flat: Vec<Vec<f64>> = t
        .iter()
        .map(|x| x.flatten_all().unwrap().to_vec1::<f64>().unwrap())
        .collect();
    for (k, v) in flat.iter().enumerate() {
        let vals: Vec<String> = v.iter().map(|x| format!("{x:e}")).collect();
        let _ = writeln!(src, "static const {tc} in{k}[] = {{{}}};", vals.join(", "));
    }
    for (n, (_, f)) in fs.iter().enumerate() {
        src.push_str(&formula_function(f, 5, s, &format!("f{n}")).unwrap());
    }
    let rows = flat[0].len() / D;
    let _ = writeln!(src, "int main() {{\n{tc} out[64];");
    for (n, (_, f)) in fs.iter().enumerate() {
        let _ = writeln!(
            src,
            "for (int i = 0; i < {rows}; ++i) {{ f{n}(in0 + i * {D}, in1, in2, in3, in4 + i, out); \
             for (int c = 0; c < {}; ++c) printf(\"%.17g \", (double)out[c]); printf(\"\\n\"); }}",
            f.dim()
        );
    }
    src.push_str("return 0;\n}\n");
    let cpp = dir.join(format!("formulas_{s:?}.cpp"));
    let exe = dir.join(format!("formulas_{s:?}"));
    std::fs::write(&cpp, &src).unwrap();
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let out = Command::new(&cxx)
        .args([
            "-O1",
            "-std=c++17",
            "-Wall",
            "-Werror",
            "-Wno-unused-function",
            "-o",
        ])
        .arg(&exe)
        .arg(&cpp)
        .output()
        .unwrap_or_else(|e| panic!("the host C++ compiler `{cxx}` could not be run: {e}"));
    assert!(
        out.status.success(),
        "{cxx} rejected the generated code ({}):\n{}",
        cpp.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&exe).output().unwrap();
    assert!(run.status.success());
    let text = String::from_utf8(run.stdout).unwrap();
    let mut lines = text.lines();
    fs.iter()
        .map(|_| {
            (0..rows)
                .map(|_| {
                    lines
                        .next()
                        .unwrap()
                        .split_whitespace()
                        .map(|v| v.parse::<f64>().unwrap())
                        .collect()
                })
                .collect()
        })
        .collect()
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= tol * (1.0 + a.abs().max(b.abs()))
}

#[test]
fn generated_formula_code_matches_the_cpu_backend_as_host_cpp() {
    let dir = std::env::temp_dir().join(format!("lk-hostcpp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut fs = op_formulas();
    fs.extend(grad_formulas());
    let mut rng = Rng(0x5eed_cafe);
    for trial in 0..3 {
        for (s, dtype, tol) in [
            (Storage::F64, DType::F64, 1e-12),
            (Storage::F32, DType::F32, 2e-5),
        ] {
            let t: Vec<Tensor> = [
                rng.tensor(&[16, D], -1.0, 1.0),
                rng.tensor(&[1, D], -1.0, 1.0),
                rng.tensor(&[1, 1], 0.5, 2.0),
                rng.tensor(&[1], 0.5, 2.0),
                rng.tensor(&[16, 1], -1.0, 1.0),
            ]
            .into_iter()
            .map(|x| x.to_dtype(dtype).unwrap().to_dtype(DType::F64).unwrap())
            .collect();
            let typed: Vec<Tensor> = t.iter().map(|x| x.to_dtype(dtype).unwrap()).collect();
            let host = host_values(&fs, &t, s, &dir);
            for ((name, f), h) in fs.iter().zip(&host) {
                let cpu = cpu_values(f, &typed);
                for (i, (hr, cr)) in h.iter().zip(&cpu).enumerate() {
                    for (c, (&hv, &cv)) in hr.iter().zip(cr).enumerate() {
                        assert!(
                            close(hv, cv, tol),
                            "{name} ({s:?}, trial {trial}), row {i} component {c}: generated {hv} vs CPU {cv}\n{f}"
                        );
                    }
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
