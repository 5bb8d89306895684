//! Whole generated CUDA modules, run on the CPU: the main kernel over its launch grid, then the
//! combine kernel of the 2D scheme, compiled as host C++ and checked against the CPU backend.
//!
//! Each case generates a module with [`generate`], launches it as the CUDA backend would
//! ([`CudaKernel::grid`], `block` threads per block, one packed input buffer with an offset per
//! variable) through the shim `tests/emu/cuda_host_shim.h` (the host C++ compiler, `c++` or
//! `$CXX`, with AddressSanitizer and UBSan), and compares the outputs with
//! `LazyTensor::reduce` on the CPU: indices exactly; values to 1e-12 in f64 and 2e-5 in f32,
//! relative (for sums, relative to the sum of `|F|`), and one unit in the last place more in
//! f16 and bf16. Every case runs twice, with the outputs and chunk states poisoned with two
//! different patterns beforehand, so a value the kernels leave unwritten or read before
//! writing shows up. The cases cover every reduction family, f32 and f64 (bf16 and f16 for a
//! few), formulas with parameters, i-only and j-only parts, several components and
//! `j`-variables too wide for shared memory; sizes that are not multiples of the block, the 2D
//! scheme (several chunks and the combine kernel) and a single row; ties between repeated
//! points (the smallest index must win, also across tiles and chunks), and `-inf`, `+inf` and
//! `NaN` formula values, for which the CPU backend's values are also checked against the IEEE
//! rules of `src/reduction/mod.rs` computed by plain loops ([`ieee_rule`]: +inf sums are +inf
//! and not NaN, the softmax weights of `+inf` scores are their limit, a fully masked row is 0),
//! so that the kernels matching the CPU backend means they follow those rules too.
//!
//! Block-sparse modules ([`generate_ranged`]) run on the descriptors of
//! [`CudaKernel::ranged_grid`], built here from random clusters (empty ones included, so
//! intervals start anywhere) and kept blocks (some row clusters keep nothing, left out of the
//! groups or listed with no terms; adjacent kept intervals are not merged), against the CPU
//! backend's block-sparse reduction (`LazyTensor::with_ranges`) over `j`, or over `i` with the
//! formula's `i` and `j` and the blocks transposed: every kind, the four dtypes, several thread
//! blocks per row interval, chunks of kept terms (the 2D scheme) and one row. An interval or a
//! chunk read past its end shows up as an AddressSanitizer error or a wrong value.
//!
//! What this cannot see: timing and occupancy; the device's own arithmetic (the host runs
//! `lk_ex2` as `exp2f`, not `ex2.approx.ftz`, flushes no subnormals and does not contract
//! products and sums into FMAs as nvcc does); and races. The blocks run one after another
//! and every `__syncthreads()` is a full barrier over the block's threads (threads that have
//! returned leave it), so a missing barrier between writing and reading shared memory, a race
//! between warps or an out-of-bounds access within the packed input buffer can still pass.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

use candle_core::{DType, Device, Tensor};
use common::Rng;
use lazy_kernels::backend::cuda::blocks::{product_blocks, schedule};
use lazy_kernels::backend::cuda::{
    CudaKernel, Grid, RangedGrid, Storage, generate_ranged, generate_values, generate_with_pairs,
    values_grid,
};
use lazy_kernels::formula::{Expr, Op, UnaryOp, Var, VarCat, parse};
use lazy_kernels::{Axis, LazyTensor, Path as ReductionPath, ReductionKind, ReductionOptions};

/// The CUDA stand-ins and the launcher the generated programs include.
const SHIM: &str = include_str!("emu/cuda_host_shim.h");

/// Output rows, terms and multiprocessors of a launch.
#[derive(Clone, Copy, Debug)]
struct Size {
    rows: usize,
    terms: usize,
    sms: usize,
}

/// 1D: two blocks (of 256 threads, computing up to 4 rows each), the second one partial, and
/// a partial last tile.
const ONE_D: Size = Size {
    rows: 1100,
    terms: 533,
    sms: 1,
};
/// The 2D scheme: few rows, the terms split into three chunks.
const TWO_D: Size = Size {
    rows: 5,
    terms: 3001,
    sms: 2,
};
/// One row, two chunks.
const ONE_ROW: Size = Size {
    rows: 1,
    terms: 2000,
    sms: 132,
};

/// The inputs of a case.
#[derive(Clone, Copy, Debug)]
enum Inputs {
    /// x_i (3), y_j (3, a third of them repeating earlier ones), b_j (1, positive), s (1).
    Points,
    /// w_i (1) and b_j (1), for `Log(b - w)`: rows with only finite values, with `-inf`,
    /// with `NaN`, all `+inf`; with `inf_b`, `b` also holds `+inf`.
    Special { inf_b: bool },
    /// x_i and y_j of `dim` components.
    Wide { dim: usize },
    /// A block plan's inputs: x_i, y_j (`dim` components, distinct random points), their
    /// squared norms xn_i, yn_j, and b_j (1, positive).
    Gram { dim: usize },
}

/// One reduction of one formula, launched on one size.
struct Case {
    label: String,
    formula: Expr,
    vars: Vec<(VarCat, usize)>,
    kind: ReductionKind,
    storage: Storage,
    size: Size,
    inputs: Inputs,
    /// A block plan's pair inputs (`Dot(x, y)`), read from blocks; empty for the direct path.
    pairs: Vec<Expr>,
}

fn dtype(s: Storage) -> DType {
    match s {
        Storage::F32 => DType::F32,
        Storage::F64 => DType::F64,
        Storage::F16 => DType::F16,
        Storage::BF16 => DType::BF16,
    }
}

fn var(cat: VarCat, pos: usize, dim: usize) -> Expr {
    Expr::var(Var { cat, pos, dim }).unwrap()
}

/// The variables of [`Inputs`]: positions and categories, and the formula's names for them.
fn variables(inputs: Inputs) -> Vec<(&'static str, VarCat, usize)> {
    match inputs {
        Inputs::Points => vec![
            ("x", VarCat::I, 3),
            ("y", VarCat::J, 3),
            ("b", VarCat::J, 1),
            ("s", VarCat::P, 1),
        ],
        Inputs::Special { .. } => vec![("w", VarCat::I, 1), ("b", VarCat::J, 1)],
        Inputs::Wide { dim } => vec![("x", VarCat::I, dim), ("y", VarCat::J, dim)],
        Inputs::Gram { dim } => vec![
            ("x", VarCat::I, dim),
            ("y", VarCat::J, dim),
            ("xn", VarCat::I, 1),
            ("yn", VarCat::J, 1),
            ("b", VarCat::J, 1),
        ],
    }
}

fn case(src: &str, inputs: Inputs, kind: ReductionKind, storage: Storage, size: Size) -> Case {
    let vars = variables(inputs);
    let names: Vec<(&str, Expr)> = vars
        .iter()
        .enumerate()
        .map(|(pos, &(name, cat, dim))| (name, var(cat, pos, dim)))
        .collect();
    let formula = parse(src, &names).unwrap_or_else(|e| panic!("{src}: {e}"));
    // The pair inputs: the inner products and squared distances of x and y in the formula.
    let pairs = match inputs {
        Inputs::Gram { .. } => {
            let nodes = formula.topo_order();
            ["Dot(x, y)", "SqDist(x, y)"]
                .iter()
                .map(|src| parse(src, &names).unwrap())
                .filter(|p| nodes.contains(p))
                .collect()
        }
        _ => Vec::new(),
    };
    Case {
        pairs,
        label: format!("{kind:?} of {src} ({storage:?}, {inputs:?}, {size:?})"),
        formula,
        vars: vars.iter().map(|&(_, cat, dim)| (cat, dim)).collect(),
        kind,
        storage,
        size,
        inputs,
    }
}

/// The matrix of cases (see the module documentation).
fn cases() -> Vec<Case> {
    use ReductionKind::*;
    use Storage::{BF16, F16, F32, F64};
    let pts = Inputs::Points;
    let mut out = Vec::new();
    let sums = [
        ("Exp(-SqDist(x, y) * 0.5) * b", &[ONE_D, TWO_D, ONE_ROW][..]),
        ("Exp(-SqDist(x, y) / (2 * s * s)) * b", &[ONE_D, TWO_D]),
        ("Exp(-Sqrt(SqDist(x, y))) * b", &[ONE_D]),
        (
            "Exp(-SqNorm2(x) * s) * Sqrt(SqNorm2(y) + 1) * b",
            &[ONE_D, TWO_D],
        ),
        ("b * Exp(-SqDist(x, y)) * (x - y)", &[ONE_D, TWO_D]),
    ];
    for (src, sizes) in sums {
        for &size in sizes {
            for s in [F32, F64] {
                out.push(case(src, pts, Sum, s, size));
            }
        }
    }
    for (s, size) in [(BF16, ONE_D), (BF16, TWO_D), (F16, ONE_D), (F16, TWO_D)] {
        out.push(case("Exp(-SqDist(x, y) * 0.5) * b", pts, Sum, s, size));
    }
    for size in [ONE_D, TWO_D, ONE_ROW] {
        for s in [F32, F64] {
            out.push(case("-SqDist(x, y)", pts, LogSumExp, s, size));
            out.push(case(
                "Concat(-SqDist(x, y), y)",
                pts,
                SumSoftMaxWeight,
                s,
                size,
            ));
            for kind in [
                Min,
                Max,
                ArgMin,
                ArgMax,
                MinArgMin,
                MaxArgMax,
                KMin(3),
                ArgKMin(10),
                KMinArgKMin(4),
            ] {
                out.push(case("SqDist(x, y)", pts, kind, s, size));
            }
        }
    }
    out.push(case("-SqDist(x, y)", pts, LogSumExp, BF16, ONE_D));
    out.push(case("-SqDist(x, y)", pts, LogSumExp, F16, TWO_D));
    out.push(case(
        "Concat(-SqDist(x, y), y)",
        pts,
        SumSoftMaxWeight,
        BF16,
        ONE_D,
    ));
    for kind in [Min, ArgKMin(10), KMinArgKMin(4)] {
        out.push(case("SqDist(x, y)", pts, kind, BF16, ONE_D));
    }
    for kind in [MinArgMin, KMin(3)] {
        out.push(case("SqDist(x, y)", pts, kind, F16, TWO_D));
    }
    // Several components: each is reduced on its own.
    for s in [F32, F64] {
        for kind in [LogSumExp, MinArgMin, KMinArgKMin(4)] {
            out.push(case(
                "b * Exp(-SqDist(x, y)) * (x - y)",
                pts,
                kind,
                s,
                TWO_D,
            ));
        }
    }
    // -inf, +inf and NaN formula values.
    for inf_b in [false, true] {
        for size in [ONE_D, TWO_D, ONE_ROW] {
            for s in [F32, F64] {
                for kind in [
                    Sum,
                    LogSumExp,
                    Min,
                    Max,
                    MinArgMin,
                    ArgKMin(10),
                    KMinArgKMin(4),
                ] {
                    out.push(case("Log(b - w)", Inputs::Special { inf_b }, kind, s, size));
                }
                let softmax = "Concat(Log(b - w), Exp(-b * b))";
                let inputs = Inputs::Special { inf_b };
                out.push(case(softmax, inputs, SumSoftMaxWeight, s, size));
            }
        }
    }
    // j-variables too wide for shared memory (and, in f32 at 300 components, a short tile).
    let wide_1d = Size {
        rows: 70,
        terms: 517,
        sms: 1,
    };
    let wide_2d = Size {
        rows: 5,
        terms: 700,
        sms: 2,
    };
    for (dim, storages) in [(400, &[F32, F64][..]), (300, &[F32, F64])] {
        for &s in storages {
            for size in [wide_1d, wide_2d] {
                let src = "Exp(-SqDist(x, y) * 0.01)";
                out.push(case(src, Inputs::Wide { dim }, Sum, s, size));
            }
        }
    }
    out
}

/// The case's input tensors, in f64 (see [`Inputs`]).
fn input_values(c: &Case, rng: &mut Rng) -> Vec<Tensor> {
    let Size { rows, terms, .. } = c.size;
    let mat = |v: Vec<f64>, n: usize, d: usize| Tensor::from_vec(v, (n, d), &Device::Cpu).unwrap();
    match c.inputs {
        Inputs::Points => {
            let mut y: Vec<[f64; 3]> = Vec::with_capacity(terms);
            for j in 0..terms {
                // A third of the points repeat an earlier one (ties, across tiles and chunks).
                let p = if j > 0 && rng.below(3) == 0 {
                    y[rng.below(j)]
                } else {
                    [(); 3].map(|_| rng.uniform(-1.0, 1.0))
                };
                y.push(p);
            }
            // A fifth of the x_i sit on a y_j: ties at distance 0.
            let x: Vec<[f64; 3]> = (0..rows)
                .map(|_| {
                    if rng.below(5) == 0 {
                        y[rng.below(terms)]
                    } else {
                        [(); 3].map(|_| rng.uniform(-1.0, 1.0))
                    }
                })
                .collect();
            let b: Vec<f64> = (0..terms).map(|_| rng.uniform(0.5, 2.0)).collect();
            vec![
                mat(x.concat(), rows, 3),
                mat(y.concat(), terms, 3),
                mat(b, terms, 1),
                Tensor::new(&[rng.uniform(0.5, 1.5)], &Device::Cpu).unwrap(),
            ]
        }
        Inputs::Special { inf_b } => {
            // Log(b - w) per row: finite; with -inf (b = -0.5); NaN (b = -0.5 or 0); all
            // +inf (w = -inf); all NaN (w = 3, save b = +inf).
            let classes = [-0.5, 0.0, f64::NEG_INFINITY, 3.0, -1.0, 0.25];
            let w: Vec<f64> = (0..rows)
                .map(|i| {
                    classes
                        .get(i)
                        .copied()
                        .unwrap_or_else(|| rng.uniform(-2.0, 0.5))
                })
                .collect();
            let b: Vec<f64> = (0..terms)
                .map(|_| match rng.below(50) {
                    0..=4 => 0.0,
                    5..=9 => -0.5,
                    10 if inf_b => f64::INFINITY,
                    _ => rng.uniform(0.5, 2.0),
                })
                .collect();
            vec![mat(w, rows, 1), mat(b, terms, 1)]
        }
        Inputs::Gram { dim } => {
            let x = rng.tensor(&[rows, dim], -1.0, 1.0);
            let y = rng.tensor(&[terms, dim], -1.0, 1.0);
            let xn = x.sqr().unwrap().sum_keepdim(1).unwrap();
            let yn = y.sqr().unwrap().sum_keepdim(1).unwrap();
            let b: Vec<f64> = (0..terms).map(|_| rng.uniform(0.5, 2.0)).collect();
            vec![x, y, xn, yn, mat(b, terms, 1)]
        }
        Inputs::Wide { dim } => vec![
            mat(
                (0..rows * dim).map(|_| rng.uniform(-1.0, 1.0)).collect(),
                rows,
                dim,
            ),
            mat(
                (0..terms * dim).map(|_| rng.uniform(-1.0, 1.0)).collect(),
                terms,
                dim,
            ),
        ],
    }
}

/// A case made ready to run: its module, launch and inputs.
struct Prepared {
    case: Case,
    kernel: CudaKernel,
    grid: Grid,
    /// The inputs in the case's dtype, one per variable position.
    tensors: Vec<Tensor>,
}

/// What the CPU backend returns for a case.
struct Reference {
    /// Values (as f64), row-major.
    vals: Vec<f64>,
    /// Indices, row-major.
    idx: Vec<i64>,
    /// Per value: the magnitude the accumulated error scales with (the sum of `|F|` for
    /// `Sum`, 1 for the log-sum-exp and softmax families, 0 for selections).
    scale: Vec<f64>,
}

fn prepare(case: Case, seed: u64) -> Prepared {
    let dt = dtype(case.storage);
    let tensors = input_values(&case, &mut Rng(seed))
        .iter()
        .map(|t| t.to_dtype(dt).unwrap())
        .collect();
    let kernel = generate_with_pairs(
        &case.formula,
        case.kind,
        &case.vars,
        &case.pairs,
        case.storage,
    )
    .unwrap_or_else(|e| panic!("{}: {e}", case.label));
    let Size { rows, terms, sms } = case.size;
    let grid = kernel.grid(rows, terms, sms);
    Prepared {
        case,
        kernel,
        grid,
        tensors,
    }
}

fn flat_f64(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// The CPU backend's outputs for a case, on the path of `options`.
fn reference(p: &Prepared, options: &ReductionOptions) -> Reference {
    // The scale of a sum (the sum of `Abs(F)`) on the default path: a forced block path
    // refuses `Abs` of a formula with much work besides its inner products.
    let own = &p.case.formula;
    reference_by(p, &|f: &Expr, args: &[&Tensor], kind: ReductionKind| {
        let options = if f == own {
            *options
        } else {
            ReductionOptions::default()
        };
        LazyTensor::from_formula(f, args).and_then(|l| l.reduce_with(kind, Axis::J, &options))
    })
}

/// How the CPU backend runs a case's formula (or its `Abs`, for the scale of sums) over its
/// inputs with a kind: the reduction the case's module computes.
type CpuRun<'a> = &'a dyn Fn(
    &Expr,
    &[&Tensor],
    ReductionKind,
) -> candle_core::Result<lazy_kernels::ReductionOutput>;

/// [`reference`] with the CPU backend's run given by `run`.
fn reference_by(p: &Prepared, run: CpuRun) -> Reference {
    let c = &p.case;
    let args: Vec<&Tensor> = p.tensors.iter().collect();
    let out =
        run(&c.formula, &args, c.kind).unwrap_or_else(|e| panic!("CPU backend, {}: {e}", c.label));
    let vals = out.values.as_ref().map(flat_f64).unwrap_or_default();
    let idx = out
        .indices
        .map(|t| t.flatten_all().unwrap().to_vec1::<i64>().unwrap())
        .unwrap_or_default();
    let scale = match c.kind {
        ReductionKind::Sum => {
            // The sum of |F| in f64 over the same (rounded) inputs; 0 where it is not finite
            // (those values must then match exactly, or both be NaN).
            let f64s: Vec<Tensor> = p
                .tensors
                .iter()
                .map(|t| t.to_dtype(DType::F64).unwrap())
                .collect();
            let args: Vec<&Tensor> = f64s.iter().collect();
            let abs = Expr::unary(lazy_kernels::formula::UnaryOp::Abs, &c.formula);
            let s = run(&abs, &args, ReductionKind::Sum)
                .unwrap()
                .values
                .unwrap();
            flat_f64(&s)
                .into_iter()
                .map(|v| if v.is_finite() { v } else { 0.0 })
                .collect()
        }
        ReductionKind::LogSumExp | ReductionKind::SumSoftMaxWeight => vec![1.0; vals.len()],
        _ => vec![0.0; vals.len()],
    };
    if let Some(rule) = ieee_rule(p) {
        for (n, (&v, &r)) in vals.iter().zip(&rule).enumerate() {
            assert!(
                close(v, r, scale[n], c.storage),
                "CPU backend, {}: row {n} is {v:e}, the IEEE rule gives {r:e}",
                c.label
            );
        }
    }
    Reference { vals, idx, scale }
}

/// For the [`Inputs::Special`] cases of Sum, LogSumExp and SumSoftMaxWeight: each row's value
/// by the IEEE rules of `src/reduction/mod.rs` ([`common::ieee_rule`], plain `f64` loops) over
/// the formula's values `F = Log(b - w)` (and `G = Exp(-b * b)`), computed in the storage type
/// as the kernels do.
fn ieee_rule(p: &Prepared) -> Option<Vec<f64>> {
    let c = &p.case;
    if !matches!(c.inputs, Inputs::Special { .. }) {
        return None;
    }
    let (w, b) = (&p.tensors[0], &p.tensors[1]);
    // F_ij in the storage type: broadcast, subtract and log with Candle, as the kernel does.
    let f = b
        .t()
        .unwrap()
        .broadcast_sub(w)
        .unwrap()
        .log()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec2::<f64>()
        .unwrap();
    let g: Vec<f64> = flat_f64(b).iter().map(|b| (-b * b).exp()).collect();
    f.iter()
        .map(|row| common::ieee_rule(c.kind, row, &g))
        .collect()
}

/// The packed input buffer of a case (variable `k` at the `k`-th offset, row-major), as the
/// bytes of its storage type, and the offsets in elements.
fn packed_input(p: &Prepared) -> (Vec<u8>, Vec<usize>) {
    let mut bytes = Vec::new();
    let mut offsets = Vec::new();
    let mut at = 0;
    for t in &p.tensors {
        offsets.push(at);
        at += t.elem_count();
        let t = t.flatten_all().unwrap();
        match p.case.storage {
            Storage::F32 => bytes.extend(
                t.to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .flat_map(|v| v.to_le_bytes()),
            ),
            Storage::F64 => bytes.extend(
                t.to_vec1::<f64>()
                    .unwrap()
                    .iter()
                    .flat_map(|v| v.to_le_bytes()),
            ),
            Storage::F16 => bytes.extend(
                t.to_vec1::<half::f16>()
                    .unwrap()
                    .iter()
                    .flat_map(|v| v.to_bits().to_le_bytes()),
            ),
            Storage::BF16 => bytes.extend(
                t.to_vec1::<half::bf16>()
                    .unwrap()
                    .iter()
                    .flat_map(|v| v.to_bits().to_le_bytes()),
            ),
        }
    }
    (bytes, offsets)
}

/// Values in the bytes of a storage type, as f64.
fn decode(bytes: &[u8], s: Storage) -> Vec<f64> {
    match s {
        Storage::F32 => bytes
            .chunks_exact(4)
            .map(|b| f64::from(f32::from_le_bytes(b.try_into().unwrap())))
            .collect(),
        Storage::F64 => bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        Storage::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f64())
            .collect(),
        Storage::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f64())
            .collect(),
    }
}

/// The driver's call running case `id` (see `lk_emu_case` in the shim).
fn case_call(id: usize, p: &Prepared, offsets: &[usize]) -> String {
    let (k, g, c) = (&p.kernel, &p.grid, &p.case);
    let t = c.storage.c_type();
    let offs: String = offsets.iter().map(|o| format!("{o}LL, ")).collect();
    format!(
        "lk_emu_case<{t}>(dir, {id}, lk_emu_shape{{{in_len}, {rows}, {terms}, {chunk}, {bx}, \
         {chunks}, {block}, {nv}, {ni}, {sv}, {si}}},\n    \
         +[](const {t}* in, int rows, int terms, int chunk, {t}* ov, long long* oi, double* pv, \
         long long* pi) {{ {name}_main(in, {offs}rows, terms, chunk, ov, oi, pv, pi); }},\n    \
         {name}_combine);\n",
        in_len = p.tensors.iter().map(Tensor::elem_count).sum::<usize>(),
        rows = c.size.rows,
        terms = c.size.terms,
        chunk = g.chunk,
        bx = g.blocks_x,
        chunks = g.chunks,
        block = k.block,
        nv = k.out_vals,
        ni = k.out_idx,
        sv = k.state_vals,
        si = k.state_idx,
        name = k.name,
    )
}

/// The host C++ compiler: `$CXX`, else `c++`. Panics when it cannot be run: the test must not
/// pass without having run the kernels.
fn cxx() -> String {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    match Command::new(&cxx).arg("--version").output() {
        Ok(o) if o.status.success() => cxx,
        other => panic!(
            "the CUDA emulation test needs a host C++20 compiler: `{cxx} --version` failed \
             ({other:?}); install g++ or clang++, or point $CXX at one"
        ),
    }
}

/// The driver's call of a case: its id, the case, and its inputs' offsets in the packed input.
type CaseCall<'a> = &'a dyn Fn(usize, &Prepared, &[usize]) -> String;

/// Writes the program of a group of cases (their modules once each, and a `main` running the
/// cases, each by its `call`) and starts compiling it.
fn start_compile(
    cxx: &str,
    dir: &Path,
    group: &str,
    cases: &[(usize, &Prepared)],
    call: CaseCall,
) -> (PathBuf, Child) {
    let mut src = String::from("#include \"cuda_host_shim.h\"\n");
    let mut seen = std::collections::HashSet::new();
    for (_, p) in cases {
        if seen.insert(p.kernel.name.as_str()) {
            src.push_str(&p.kernel.source);
            src.push('\n');
        }
    }
    src.push_str("int main(int argc, char** argv) {\nif (argc != 2) return 2;\nconst std::string dir = argv[1];\n");
    for &(id, p) in cases {
        let (bytes, offsets) = packed_input(p);
        std::fs::write(dir.join(format!("case_{id}.in")), bytes).unwrap();
        src.push_str(&call(id, p, &offsets));
    }
    src.push_str("return 0;\n}\n");
    let cpp = dir.join(format!("emu_{group}.cpp"));
    let exe = dir.join(format!("emu_{group}"));
    std::fs::write(&cpp, src).unwrap();
    // -Og: with the sanitizers, it compiles these programs in 0.7x the time of -O1 and runs them
    // as fast (-O0 compiles in 0.8x and runs 3.7x slower; measured on emu_f32 of the blocks
    // cases, 2026-12-05); the compiles are most of this binary's time.
    let child = Command::new(cxx)
        .args(["-std=c++20", "-Og", "-pthread", "-fno-strict-aliasing"])
        .args(["-Wall", "-Werror", "-Wno-unknown-pragmas"])
        .args(["-fsanitize=address,undefined", "-fno-sanitize-recover=all"])
        .arg("-o")
        .arg(&exe)
        .arg(&cpp)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("could not start `{cxx}`: {e}"));
    (exe, child)
}

fn check_status(what: &str, out: &Output, dir: &Path) {
    assert!(
        out.status.success(),
        "{what} failed ({}), files kept in {}:\n{}",
        out.status,
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether the emulated value `got` matches the CPU backend's `want`.
fn close(got: f64, want: f64, scale: f64, s: Storage) -> bool {
    if got.is_nan() || want.is_nan() {
        return got.is_nan() && want.is_nan();
    }
    // The last place of the output type (the results are rounded to it once), and the
    // accumulated error of the compute type.
    let (round, acc) = match s {
        Storage::F64 => (0.0, 1e-12),
        Storage::F32 => (0.0, 2e-5),
        Storage::BF16 => (2f64.powi(-7), 2e-5),
        Storage::F16 => (2f64.powi(-10), 2e-5),
    };
    let m = got.abs().max(want.abs());
    got == want || (got - want).abs() <= round * m + acc * (m + scale)
}

/// Compares one case's outputs (both runs) with the CPU backend's; returns what differs.
fn compare(id: usize, p: &Prepared, want: &Reference, dir: &Path) -> Vec<String> {
    let read = |ext: &str, run: usize| {
        std::fs::read(dir.join(format!("case_{id}.run{run}.{ext}"))).unwrap()
    };
    let mut errors = Vec::new();
    let label = &p.case.label;
    for ext in ["vals", "idx"] {
        if read(ext, 0) != read(ext, 1) {
            errors.push(format!(
                "{label}: the {ext} differ between the runs poisoned with 0xff and with 0x41 \
                 bytes (an output left unwritten, or a state read before it was written)"
            ));
        }
    }
    let vals = decode(&read("vals", 0), p.case.storage);
    let idx: Vec<i64> = read("idx", 0)
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let (nv, ni) = (p.kernel.out_vals, p.kernel.out_idx);
    if vals.len() != want.vals.len() || idx.len() != want.idx.len() {
        errors.push(format!(
            "{label}: {} values and {} indices, the CPU backend has {} and {}",
            vals.len(),
            idx.len(),
            want.vals.len(),
            want.idx.len()
        ));
        return errors;
    }
    let bad_vals = (0..vals.len())
        .filter(|&n| !close(vals[n], want.vals[n], want.scale[n], p.case.storage))
        .map(|n| {
            format!(
                "row {} value {}: got {:e}, want {:e}",
                n / nv,
                n % nv,
                vals[n],
                want.vals[n]
            )
        });
    let bad_idx = (0..idx.len()).filter(|&n| idx[n] != want.idx[n]).map(|n| {
        format!(
            "row {} index {}: got {}, want {}",
            n / ni,
            n % ni,
            idx[n],
            want.idx[n]
        )
    });
    let bad: Vec<String> = bad_vals.chain(bad_idx).collect();
    if !bad.is_empty() {
        errors.push(format!(
            "{label}, module {} (block {}, {:?}): {} mismatches, first {}",
            p.kernel.name,
            p.kernel.block,
            p.grid,
            bad.len(),
            bad[..bad.len().min(4)].join("; ")
        ));
    }
    errors
}

/// Runs the cases on the host, one program per storage group (compiled while the CPU
/// backend computes the references), each case by its `call`; returns what differs from
/// `reference`.
fn emulate(
    cxx: &str,
    dir: &Path,
    prepared: &[Prepared],
    call: CaseCall,
    reference: &dyn Fn(&Prepared) -> Reference,
) -> Vec<String> {
    let groups: Vec<(&str, Vec<(usize, &Prepared)>)> = [
        ("f32", &[Storage::F32][..]),
        ("f64", &[Storage::F64]),
        ("half", &[Storage::F16, Storage::BF16]),
    ]
    .into_iter()
    .map(|(g, ss)| {
        let members = prepared
            .iter()
            .enumerate()
            .filter(|(_, p)| ss.contains(&p.case.storage))
            .collect();
        (g, members)
    })
    .filter(|(_, members): &(&str, Vec<_>)| !members.is_empty())
    .collect();
    let compiles: Vec<(PathBuf, Child)> = groups
        .iter()
        .map(|(g, members)| start_compile(cxx, dir, g, members, call))
        .collect();
    let references: Vec<Reference> = prepared.iter().map(reference).collect();

    let mut errors = Vec::new();
    for ((exe, child), (group, members)) in compiles.into_iter().zip(&groups) {
        let out = child.wait_with_output().unwrap();
        check_status(
            &format!("compiling the {group} cases with {cxx}"),
            &out,
            dir,
        );
        let run = Command::new(&exe)
            .arg(dir)
            .env("ASAN_OPTIONS", "detect_leaks=0")
            .env("UBSAN_OPTIONS", "print_stacktrace=1")
            .output()
            .unwrap();
        check_status(&format!("running {}", exe.display()), &run, dir);
        for &(id, p) in members {
            errors.extend(compare(id, p, &references[id], dir));
        }
    }
    errors
}

#[test]
fn generated_modules_emulated_on_the_host_match_the_cpu_backend() {
    let cxx = cxx();
    let dir = std::env::temp_dir().join(format!("lk-cuda-emulation-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cuda_host_shim.h"), SHIM).unwrap();

    let prepared: Vec<Prepared> = cases()
        .into_iter()
        .enumerate()
        .map(|(n, c)| prepare(c, 0x5eed_0000 + n as u64))
        .collect();
    // The launches the cases are meant to reach.
    let reached = |what: fn(&Prepared) -> bool| prepared.iter().any(what);
    assert!(reached(|p| p.grid.chunks == 1 && p.grid.blocks_x > 1));
    assert!(reached(
        |p| p.kernel.rows_per_thread == 4 && p.grid.blocks_x > 1
    ));
    assert!(reached(
        |p| p.kernel.rows_per_thread == 2 && p.grid.blocks_x > 1
    ));
    assert!(reached(
        |p| p.kernel.rows_per_thread == 1 && p.grid.blocks_x > 1
    ));
    assert!(reached(|p| p.grid.chunks > 1 && p.case.size.rows == 1));
    assert!(reached(|p| !p.kernel.shared));
    assert!(reached(|p| p.kernel.shared && p.kernel.block < 256));

    let direct = ReductionOptions {
        path: ReductionPath::Direct,
        ..Default::default()
    };
    let errors = emulate(&cxx, &dir, &prepared, &case_call, &|p| {
        reference(p, &direct)
    });
    assert!(
        errors.is_empty(),
        "{} of {} cases differ from the CPU backend (files kept in {}):\n{}",
        errors.len(),
        prepared.len(),
        dir.display(),
        errors.join("\n")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The sizes of a block-plan case: its launch [`Size`], and its memory budget in pairs (the
/// budget in bytes is that many pairs' blocks).
#[derive(Clone, Copy, Debug)]
struct BlockSize {
    size: Size,
    budget_pairs: usize,
}

/// One launch: the whole reduction.
const BIG: usize = usize::MAX >> 8;
const B_ONE: BlockSize = BlockSize {
    size: Size {
        rows: 700,
        terms: 900,
        sms: 1,
    },
    budget_pairs: BIG,
};
/// Term blocks of 512 terms (the rows of one row block).
const B_TERMS: BlockSize = BlockSize {
    size: Size {
        rows: 700,
        terms: 2500,
        sms: 2,
    },
    budget_pairs: 700 * 600,
};
/// Row blocks of all the terms.
const B_ROWS: BlockSize = BlockSize {
    size: Size {
        rows: 2100,
        terms: 300,
        sms: 1,
    },
    budget_pairs: 1100 * 300,
};
/// One launch of several chunks (the 2D scheme).
const B_CHUNKS: BlockSize = BlockSize {
    size: Size {
        rows: 5,
        terms: 3001,
        sms: 2,
    },
    budget_pairs: BIG,
};
/// Term blocks of 2048 terms, each of several chunks.
const B_BOTH: BlockSize = BlockSize {
    size: Size {
        rows: 5,
        terms: 5000,
        sms: 2,
    },
    budget_pairs: 5 * 2048,
};

/// A block-plan case: the case (its pair inputs set), its budget, and for a matrix product
/// the coefficient's source (`Sum` of it times `y`).
struct BlockCase {
    case: Case,
    budget_pairs: usize,
    coef: Option<&'static str>,
}

fn block_cases() -> Vec<BlockCase> {
    use ReductionKind::*;
    use Storage::{F32, F64};
    const DIST: &str = "Relu(xn + yn - 2 * Dot(x, y))";
    const GAUSS: &str = "Exp(-Relu(xn + yn - 2 * Dot(x, y)) * 0.1)";
    let gram = Inputs::Gram { dim: 16 };
    let mut out = Vec::new();
    let mut add = |src: String, kind, s, b: BlockSize, coef| {
        out.push(BlockCase {
            case: case(&src, gram, kind, s, b.size),
            budget_pairs: b.budget_pairs,
            coef,
        })
    };
    for b in [B_ONE, B_TERMS, B_ROWS, B_CHUNKS, B_BOTH] {
        for s in [F32, F64] {
            add(format!("{GAUSS} * b"), Sum, s, b, None);
        }
    }
    for (s, b) in [
        (F32, B_TERMS),
        (F32, B_BOTH),
        (F64, B_ROWS),
        (F64, B_CHUNKS),
    ] {
        add(format!("-{DIST}"), LogSumExp, s, b, None);
    }
    add(DIST.into(), Min, F32, B_TERMS, None);
    add(DIST.into(), Max, F64, B_CHUNKS, None);
    // Indices in f64, where the points' distances are far apart next to the rounding.
    for b in [B_TERMS, B_ROWS, B_BOTH] {
        for kind in [ArgMin, MinArgMin, ArgKMin(5), KMinArgKMin(3)] {
            add(DIST.into(), kind, F64, b, None);
        }
    }
    for b in [B_ONE, B_TERMS, B_ROWS] {
        for s in [F32, F64] {
            add(format!("{GAUSS} * y"), Sum, s, b, Some(GAUSS));
        }
    }
    // Squared distances as pair inputs: the module's helpers turn the blocks of inner products
    // into distances (recomputed where the expansion cancels), as the CPU block path does.
    const SQ: &str = "SqDist(x, y)";
    for (s, b) in [(F32, B_TERMS), (F64, B_BOTH), (F64, B_ONE)] {
        add(format!("Exp(-{SQ} * 0.1) * b"), Sum, s, b, None);
    }
    for b in [B_ROWS, B_BOTH] {
        for kind in [MinArgMin, ArgKMin(5)] {
            add(SQ.into(), kind, F64, b, None);
        }
    }
    add(
        format!("Exp(-{SQ} * 0.1) * y"),
        Sum,
        F64,
        B_TERMS,
        Some("Exp(-SqDist(x, y) * 0.1)"),
    );
    out
}

/// The offsets of a launch's variables as C expressions: i-variables from row `r0`,
/// j-variables from term `t0`.
fn launch_offsets(p: &Prepared, offsets: &[usize]) -> String {
    p.case
        .vars
        .iter()
        .zip(offsets)
        .map(|(&(cat, d), o)| match cat {
            VarCat::I => format!("{o}LL + (long long)r0 * {d}, "),
            VarCat::J => format!("{o}LL + (long long)t0 * {d}, "),
            VarCat::P => format!("{o}LL, "),
        })
        .collect()
}

/// The pair inputs of a case as `lk_emu_pair`s.
fn emu_pairs(p: &Prepared, offsets: &[usize]) -> String {
    let pairs: Vec<String> = p
        .case
        .pairs
        .iter()
        .map(|node| {
            let vars = node.vars();
            let x = vars.iter().find(|v| v.cat == VarCat::I).unwrap();
            let y = vars.iter().find(|v| v.cat == VarCat::J).unwrap();
            // A squared distance is `Sum(Square(x - y))`.
            let distance = node
                .args()
                .first()
                .is_some_and(|a| *a.op() == Op::Unary(UnaryOp::Square));
            format!(
                "{{{}LL, {}LL, {}, {}}}",
                offsets[x.pos],
                offsets[y.pos],
                x.dim,
                i32::from(distance)
            )
        })
        .collect();
    format!("{{{}}}", pairs.join(", "))
}

/// The driver's call of a block-plan case (`lk_emu_blocks_case` or `lk_emu_matmul_case` in the
/// shim), with the launches of the CUDA backend's schedule for a budget of `budget_pairs`
/// pairs.
fn block_call(id: usize, p: &Prepared, offsets: &[usize], budget_pairs: usize) -> String {
    let (k, c) = (&p.kernel, &p.case);
    let t = c.storage.c_type();
    let Size { rows, terms, sms } = c.size;
    let in_len = p.tensors.iter().map(Tensor::elem_count).sum::<usize>();
    let elem = c.storage.compute_bytes();
    let npairs = c.pairs.len();
    let offs = launch_offsets(p, offsets);
    let blocks: String = (0..npairs).map(|n| format!("s[{n}], ")).collect();
    let pairs = emu_pairs(p, offsets);
    // The distance blocks: the module's helpers, norms then distances, on the launch's points.
    let fix = format!(
        "+[](const {t}* in, const lk_emu_pair& p, int r0, int t0, int rows, int terms, {t}* s) {{\n    \
         std::vector<{t}> xn((size_t)rows), yn((size_t)terms);\n    \
         const {t}* x = in + p.x + (long long)r0 * p.dim;\n    \
         const {t}* y = in + p.y + (long long)t0 * p.dim;\n    \
         lk_emu_launch((unsigned)((rows + 255) / 256), 1, 256, [&] {{ {name}_sqnorms(x, rows, p.dim, xn.data()); }});\n    \
         lk_emu_launch((unsigned)((terms + 255) / 256), 1, 256, [&] {{ {name}_sqnorms(y, terms, p.dim, yn.data()); }});\n    \
         lk_emu_launch(3, 1, 256, [&] {{ {name}_distances(x, y, xn.data(), yn.data(), rows, terms, p.dim, ({t}){near:?}, s); }});\n}}",
        name = k.name,
        near = lazy_kernels::op::gram::NEAR,
    );
    if k.values {
        let buffers = npairs + 1;
        let launches: Vec<String> =
            product_blocks((rows, terms), buffers, elem, budget_pairs * buffers * elem)
                .into_iter()
                .map(|(r, tr)| {
                    let (gx, gy) = values_grid(r.len(), tr.len());
                    // Fewer blocks along the terms than the device gets: each covers several.
                    let gy = gy.min(7);
                    format!(
                        "{{{}, {}, {}, {}, {gx}, {gy}, 0, 0}}",
                        r.start, r.end, tr.start, tr.end
                    )
                })
                .collect();
        let v = c
            .vars
            .iter()
            .position(|v| v.0 == VarCat::J && v.1 > 1)
            .unwrap();
        return format!(
            "lk_emu_matmul_case<{t}>(dir, {id}, {in_len}, {rows}, {}LL, {}, {pairs}, {{{}}},\n    \
             +[](const {t}* in, int r0, int t0, int rows, int terms, const {t}* const* s, {t}* coef) \
             {{ {name}_values(in, {offs}rows, terms, {blocks}coef); }},\n    {fix});\n",
            offsets[v],
            c.vars[v].1,
            launches.join(", "),
            name = k.name,
        );
    }
    let plan = schedule(
        k,
        (rows, terms),
        npairs,
        elem,
        budget_pairs * npairs * elem,
        sms,
    );
    let row_blocks: Vec<String> = plan
        .iter()
        .map(|rb| {
            let launches: Vec<String> = rb
                .terms
                .iter()
                .map(|l| {
                    format!(
                        "{{{}, {}, {}, {}, {}, {}, {}, {}}}",
                        rb.rows.start,
                        rb.rows.end,
                        l.terms.start,
                        l.terms.end,
                        l.grid.blocks_x,
                        l.grid.chunks,
                        l.grid.chunk,
                        l.chunk_base
                    )
                })
                .collect();
            format!(
                "{{{}, {}, {}, {{{}}}}}",
                rb.rows.start,
                rb.rows.end,
                rb.chunks,
                launches.join(", ")
            )
        })
        .collect();
    format!(
        "lk_emu_blocks_case<{t}>(dir, {id}, lk_emu_shape{{{in_len}, {rows}, {terms}, 0, 0, 0, \
         {block}, {nv}, {ni}, {sv}, {si}}}, {pairs}, {{{}}},\n    \
         +[](const {t}* in, int r0, int t0, int rows, int terms, int chunk, {t}* ov, long long* oi, \
         double* pv, long long* pi, const {t}* const* s, long long jbase, int chunk_base) \
         {{ {name}_main(in, {offs}rows, terms, chunk, ov, oi, pv, pi, {blocks}jbase, chunk_base); }},\n    \
         {name}_combine,\n    {fix});\n",
        row_blocks.join(", "),
        block = k.block,
        nv = k.out_vals,
        ni = k.out_idx,
        sv = k.state_vals,
        si = k.state_idx,
        name = k.name,
    )
}

#[test]
fn block_plan_modules_emulated_on_the_host_match_the_cpu_block_path() {
    let cxx = cxx();
    let dir = std::env::temp_dir().join(format!("lk-cuda-emu-blocks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cuda_host_shim.h"), SHIM).unwrap();

    let cases = block_cases();
    let budgets: Vec<usize> = cases.iter().map(|c| c.budget_pairs).collect();
    let prepared: Vec<Prepared> = cases
        .into_iter()
        .enumerate()
        .map(|(n, bc)| {
            let coef = bc.coef.map(|src| {
                let names: Vec<(&str, Expr)> = variables(bc.case.inputs)
                    .iter()
                    .enumerate()
                    .map(|(pos, &(name, cat, dim))| (name, var(cat, pos, dim)))
                    .collect();
                parse(src, &names).unwrap()
            });
            let mut p = prepare(bc.case, 0xb10c_0000 + n as u64);
            if let Some(coef) = coef {
                let c = &p.case;
                p.kernel = generate_values(&coef, &c.vars, &c.pairs, c.storage)
                    .unwrap_or_else(|e| panic!("{}: {e}", c.label));
                // Values per output row (for the messages).
                p.kernel.out_vals = c.formula.dim();
            }
            p
        })
        .collect();
    // The schedules the cases are meant to reach.
    let plans: Vec<Vec<lazy_kernels::backend::cuda::blocks::RowBlock>> = prepared
        .iter()
        .zip(&budgets)
        .filter(|(p, _)| !p.kernel.values)
        .map(|(p, &b)| {
            let Size { rows, terms, sms } = p.case.size;
            let elem = p.case.storage.compute_bytes();
            schedule(&p.kernel, (rows, terms), 1, elem, b * elem, sms)
        })
        .collect();
    assert!(plans.iter().any(|s| s.len() > 1));
    assert!(plans.iter().any(|s| s[0].terms.len() > 1));
    assert!(
        plans
            .iter()
            .any(|s| s[0].terms.iter().filter(|l| l.grid.chunks > 1).count() > 1)
    );
    assert!(
        plans
            .iter()
            .any(|s| s.len() == 1 && s[0].terms.len() == 1 && s[0].chunks > 1)
    );
    assert!(plans.iter().any(|s| s[0].terms[0].chunk_base < 0));

    let blocks = ReductionOptions {
        path: ReductionPath::Blocks,
        ..Default::default()
    };
    let call = |id: usize, p: &Prepared, offsets: &[usize]| block_call(id, p, offsets, budgets[id]);
    let errors = emulate(&cxx, &dir, &prepared, &call, &|p| {
        let args: Vec<&Tensor> = p.tensors.iter().collect();
        let report = LazyTensor::from_formula(&p.case.formula, &args)
            .and_then(|l| l.explain(p.case.kind, Axis::J, &blocks))
            .unwrap();
        assert_eq!(report.path, ReductionPath::Blocks, "{}", p.case.label);
        assert_eq!(report.matmul_epilogue, p.kernel.values, "{}", p.case.label);
        reference(p, &blocks)
    });
    assert!(
        errors.is_empty(),
        "{} of {} block-plan cases differ from the CPU block path (files kept in {}):\n{}",
        errors.len(),
        prepared.len(),
        dir.display(),
        errors.join("\n")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A block-sparse case, in the orientation of the plan (rows: the output rows, terms: the
/// reduced ones): the sizes of the clusters of rows and of terms (sorted order, empty clusters
/// included), the kept blocks (row cluster, term cluster), and the axis the user reduces over
/// (over `i`, the user's formula has `i` and `j` exchanged and the transposed blocks, which
/// the crate transposes back for the plan).
#[derive(Clone, Debug)]
struct Sparse {
    row_sizes: Vec<usize>,
    term_sizes: Vec<usize>,
    kept: Vec<(usize, usize)>,
    axis: Axis,
}

impl Sparse {
    /// Cluster `k`'s range of a partition into `sizes`.
    fn range(sizes: &[usize], k: usize) -> std::ops::Range<usize> {
        let start: usize = sizes[..k].iter().sum();
        start..start + sizes[k]
    }

    /// The groups of the launch, computed here from the kept blocks: each row cluster with
    /// rows and its kept term clusters in order, adjacent ones *not* merged (the backend
    /// merges them; the kernel must not care). Clusters of even index that keep nothing are
    /// left out (their rows are a gap between groups), those of odd index stay with no terms.
    fn groups(&self) -> Vec<(std::ops::Range<usize>, Vec<std::ops::Range<usize>>)> {
        (0..self.row_sizes.len())
            .filter(|&k| self.row_sizes[k] > 0)
            .map(|k| {
                let mut ls: Vec<usize> =
                    self.kept.iter().filter(|b| b.0 == k).map(|b| b.1).collect();
                ls.sort_unstable();
                ls.dedup();
                let terms = ls
                    .into_iter()
                    .map(|l| Sparse::range(&self.term_sizes, l))
                    .filter(|t| !t.is_empty())
                    .collect();
                (k, Sparse::range(&self.row_sizes, k), terms)
            })
            .filter(|(k, _, t): &(usize, _, Vec<_>)| !t.is_empty() || k % 2 == 1)
            .map(|(_, r, t)| (r, t))
            .collect()
    }

    /// The user's blocks (transposed for a reduction over `i`).
    fn block_sparse(&self) -> lazy_kernels::BlockSparse {
        let clusters = |sizes: &[usize]| {
            let labels: Vec<usize> = sizes
                .iter()
                .enumerate()
                .flat_map(|(k, &n)| std::iter::repeat_n(k, n))
                .collect();
            lazy_kernels::Clusters::from_labels(&labels).unwrap()
        };
        let (rows, terms) = (clusters(&self.row_sizes), clusters(&self.term_sizes));
        match self.axis {
            Axis::J => lazy_kernels::BlockSparse::from_pairs(&rows, &terms, &self.kept),
            Axis::I => {
                let t: Vec<(usize, usize)> = self.kept.iter().map(|&(k, l)| (l, k)).collect();
                lazy_kernels::BlockSparse::from_pairs(&terms, &rows, &t)
            }
        }
        .unwrap()
    }
}

/// Random cluster sizes in `0..=most` (about one in six empty) summing to `total`, the last
/// one not empty (labels give no trailing empty cluster).
fn cluster_sizes(total: usize, most: usize, rng: &mut Rng) -> Vec<usize> {
    let mut sizes = Vec::new();
    let mut left = total;
    while left > 0 {
        let n = if rng.below(6) == 0 {
            0
        } else {
            (1 + rng.below(most)).min(left)
        };
        sizes.push(n);
        left -= n;
    }
    sizes
}

/// The shapes of block-sparse cases: (size, row cluster sizes, term cluster sizes, fraction
/// of kept blocks, row clusters that keep nothing).
fn sparse_layout(shape: usize, axis: Axis, rng: &mut Rng) -> (Size, Sparse) {
    let (size, row_sizes, term_sizes, p, none): (Size, Vec<usize>, Vec<usize>, f64, Vec<usize>) =
        match shape {
            // Many row blocks: a first cluster of 1100 rows (several blocks of one group),
            // then small ones; small term clusters, so intervals start anywhere and tiles are
            // partial.
            0 => {
                let mut rows = vec![1100];
                rows.extend(cluster_sizes(300, 60, rng));
                let terms = cluster_sizes(900, 120, rng);
                let none = vec![2, 3];
                (
                    Size {
                        rows: 1400,
                        terms: 900,
                        sms: 1,
                    },
                    rows,
                    terms,
                    0.4,
                    none,
                )
            }
            // Few row blocks, many kept terms each: the 2D scheme (chunks of kept terms).
            1 => {
                let terms = cluster_sizes(5000, 400, rng);
                let none = vec![3];
                (
                    Size {
                        rows: 9,
                        terms: 5000,
                        sms: 4,
                    },
                    vec![3, 0, 4, 2],
                    terms,
                    0.5,
                    none,
                )
            }
            // One row keeping most term clusters (split into chunks).
            _ => {
                let terms = cluster_sizes(2000, 300, rng);
                (
                    Size {
                        rows: 1,
                        terms: 2000,
                        sms: 132,
                    },
                    vec![1],
                    terms,
                    0.8,
                    vec![],
                )
            }
        };
    let mut kept = Vec::new();
    for k in 0..row_sizes.len() {
        for l in 0..term_sizes.len() {
            if !none.contains(&k) && rng.uniform(0.0, 1.0) < p {
                kept.push((k, l));
            }
        }
    }
    let sparse = Sparse {
        row_sizes,
        term_sizes,
        kept,
        axis,
    };
    (size, sparse)
}

/// The block-sparse cases: every reduction kind over both axes in f32 and f64, the half
/// precisions for a few, a formula with a parameter and j-variables too wide for shared
/// memory; many row blocks, the 2D scheme, one row.
fn ranged_cases() -> Vec<(Case, Sparse)> {
    use ReductionKind::*;
    use Storage::{BF16, F16, F32, F64};
    let mut rng = Rng(0x5a25e);
    let pts = Inputs::Points;
    let mut out = Vec::new();
    let kinds = [
        Sum,
        LogSumExp,
        SumSoftMaxWeight,
        Min,
        Max,
        ArgMin,
        ArgMax,
        MinArgMin,
        MaxArgMax,
        KMin(3),
        ArgKMin(10),
        KMinArgKMin(4),
    ];
    let src = |kind: ReductionKind| match kind {
        Sum => "Exp(-SqDist(x, y) * 0.5) * b",
        LogSumExp => "-SqDist(x, y)",
        SumSoftMaxWeight => "Concat(-SqDist(x, y), y)",
        _ => "SqDist(x, y)",
    };
    let mut add = |src: &str, inputs, kind, s, shape, axis, rng: &mut Rng| {
        let (size, sparse) = sparse_layout(shape, axis, rng);
        out.push((case(src, inputs, kind, s, size), sparse));
    };
    for kind in kinds {
        for s in [F32, F64] {
            add(src(kind), pts, kind, s, 0, Axis::J, &mut rng);
            add(src(kind), pts, kind, s, 1, Axis::I, &mut rng);
        }
    }
    for kind in [Sum, LogSumExp, MinArgMin, ArgKMin(10)] {
        add(src(kind), pts, kind, F32, 2, Axis::J, &mut rng);
        add(src(kind), pts, kind, F64, 0, Axis::I, &mut rng);
        add(src(kind), pts, kind, F32, 1, Axis::J, &mut rng);
    }
    for (s, shape) in [(BF16, 0), (F16, 1)] {
        for kind in [Sum, LogSumExp, SumSoftMaxWeight, KMinArgKMin(4)] {
            add(src(kind), pts, kind, s, shape, Axis::J, &mut rng);
        }
    }
    let gauss_s = "Exp(-SqDist(x, y) / (2 * s * s)) * b";
    add(gauss_s, pts, Sum, F32, 0, Axis::I, &mut rng);
    add(gauss_s, pts, Sum, F64, 1, Axis::J, &mut rng);
    let wide = Inputs::Wide { dim: 400 };
    for (s, shape) in [(F32, 0), (F64, 1)] {
        add(
            "Exp(-SqDist(x, y) * 0.01)",
            wide,
            Sum,
            s,
            shape,
            Axis::J,
            &mut rng,
        );
    }
    out
}

/// The driver's call of a block-sparse case: its launch descriptors as static arrays, then
/// `lk_emu_case` with them passed to the main kernel.
fn ranged_call(id: usize, p: &Prepared, offsets: &[usize], g: &RangedGrid) -> String {
    let (k, c) = (&p.kernel, &p.case);
    let t = c.storage.c_type();
    let offs: String = offsets.iter().map(|o| format!("{o}LL, ")).collect();
    let list = |v: &[i32]| {
        let v = if v.is_empty() { &[0][..] } else { v };
        v.iter().map(i32::to_string).collect::<Vec<_>>().join(", ")
    };
    format!(
        "static const int lk_rb_{id}[] = {{{}}};\nstatic const int lk_iv_{id}[] = {{{}}};\n\
         lk_emu_case<{t}>(dir, {id}, lk_emu_shape{{{in_len}, {rows}, {terms}, {chunk}, {bx}, \
         {chunks}, {block}, {nv}, {ni}, {sv}, {si}}},\n    \
         +[](const {t}* in, int rows, int terms, int chunk, {t}* ov, long long* oi, double* pv, \
         long long* pi) {{ {name}_main(in, {offs}rows, terms, chunk, ov, oi, pv, pi, lk_rb_{id}, \
         lk_iv_{id}); }},\n    {name}_combine);\n",
        list(&g.blocks),
        list(&g.intervals),
        in_len = p.tensors.iter().map(Tensor::elem_count).sum::<usize>(),
        rows = c.size.rows,
        terms = c.size.terms,
        chunk = g.chunk,
        bx = g.blocks_x(),
        chunks = g.chunks,
        block = k.block,
        nv = k.out_vals,
        ni = k.out_idx,
        sv = k.state_vals,
        si = k.state_idx,
        name = k.name,
    )
}

#[test]
fn ranged_modules_emulated_on_the_host_match_the_cpu_backend() {
    let cxx = cxx();
    let dir = std::env::temp_dir().join(format!("lk-cuda-emu-ranges-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cuda_host_shim.h"), SHIM).unwrap();

    let cases = ranged_cases();
    let sparse: Vec<Sparse> = cases.iter().map(|(_, s)| s.clone()).collect();
    let mut prepared: Vec<Prepared> = cases
        .into_iter()
        .enumerate()
        .map(|(n, (c, _))| {
            let mut p = prepare(c, 0x7a9e_0000 + n as u64);
            let c = &p.case;
            p.kernel = generate_ranged(&c.formula, c.kind, &c.vars, c.storage)
                .unwrap_or_else(|e| panic!("{}: {e}", c.label));
            p
        })
        .collect();
    let grids: Vec<RangedGrid> = prepared
        .iter()
        .zip(&sparse)
        .map(|(p, sp)| {
            let Size { rows, terms, sms } = p.case.size;
            p.kernel
                .ranged_grid(rows, terms, &sp.groups(), sms)
                .unwrap_or_else(|e| panic!("{}: {e}", p.case.label))
        })
        .collect();
    // The launch the messages print.
    for (p, g) in prepared.iter_mut().zip(&grids) {
        p.grid = Grid {
            blocks_x: g.blocks_x(),
            chunks: g.chunks,
            chunk: g.chunk,
        };
    }
    // The launches the cases are meant to reach: several blocks of one group, blocks without
    // intervals (gaps and groups that keep nothing), chunks of kept terms, intervals that
    // start inside a tile, and each rows-per-thread variant.
    let each = || prepared.iter().zip(&grids);
    assert!(each().any(|(p, g)| g.chunks > 1 && p.case.size.rows > 1));
    assert!(each().any(|(p, g)| g.chunks > 1 && p.case.size.rows == 1));
    assert!(each().any(|(_, g)| g.blocks.chunks(4).any(|b| b[2] == b[3])));
    assert!(each().any(|(p, g)| {
        let per = (p.kernel.block * p.kernel.rows_per_thread) as i32;
        g.blocks
            .chunks(4)
            .filter(|b| b[2] < b[3] && b[1] - b[0] == per)
            .count()
            > 1
    }));
    assert!(each().any(|(p, g)| {
        g.intervals
            .chunks(2)
            .any(|t| t[0] % p.kernel.block as i32 != 0)
    }));
    for rpt in [1, 2, 4] {
        assert!(
            prepared.iter().any(|p| p.kernel.rows_per_thread == rpt),
            "{rpt} rows per thread"
        );
    }
    assert!(prepared.iter().any(|p| !p.kernel.shared));

    let call = |id: usize, p: &Prepared, offsets: &[usize]| ranged_call(id, p, offsets, &grids[id]);
    let errors = emulate(&cxx, &dir, &prepared, &call, &|p| {
        let id = prepared
            .iter()
            .position(|q| std::ptr::eq(q, p))
            .expect("a prepared case");
        let sp = &sparse[id];
        let keep = sp.block_sparse();
        reference_by(p, &|f: &Expr, args: &[&Tensor], kind: ReductionKind| {
            // Over i, the user's formula has i and j exchanged.
            let f = match sp.axis {
                Axis::J => f.clone(),
                Axis::I => f.swap_ij(),
            };
            LazyTensor::from_formula(&f, args)
                .and_then(|l| l.with_ranges(&keep).reduce(kind, sp.axis))
        })
    });
    assert!(
        errors.is_empty(),
        "{} of {} block-sparse cases differ from the CPU backend (files kept in {}):\n{}",
        errors.len(),
        prepared.len(),
        dir.display(),
        errors.join("\n")
    );
    let _ = std::fs::remove_dir_all(&dir);
}
