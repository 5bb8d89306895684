//! Compiling a formula into a register program for the tile executor.
//!
//! The formula DAG is hash-consed (structurally equal subexpressions get one register) and
//! each node is classified: nodes that do not depend on `j` are *row* registers, computed once
//! per output row (hoisted out of the `j` loop); the others are *tile* registers, one value per
//! `j` of the current tile, stored component-major so every instruction is a tight loop over
//! the tile. A few fusions save passes over the tile where kernels spend their time:
//! `Sum(Square(a - b))` (squared distances), `Sum(a * b)` (dot products), `Exp(a * b)`
//! (scaled exponentials), division by a row value (multiplication by its hoisted inverse),
//! negation moved onto the row side of a product, and a `Sum` reduction of a product that
//! multiplies and accumulates without storing the product; when that product is
//! `exp(s * a) * y` (and `a` a small squared distance), the whole formula runs in the
//! reduction's single pass ([`Root::ExpProduct`], [`Root::SqDistExpProduct`]): the Gaussian
//! kernel sum, reached by general rules rather than a hand-written special case.

use std::collections::HashMap;

use super::kernels::MAX_ONE_PASS_DIM;
use crate::formula::{BinaryOp, Expr, Op, TernaryOp, UnaryOp, VarCat};
use crate::reduction::ReductionKind;

/// Index of a register.
pub(crate) type Reg = usize;

/// Where a register's values live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Storage {
    /// Computed into scratch memory at this offset (row or tile scratch, by level).
    Scratch(usize),
    /// The bound tensor at this position, read in place.
    Input(usize),
}

/// Whether a register has one value per output row or one per term of the tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Level {
    Row,
    Tile,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct RegInfo {
    pub dim: usize,
    pub level: Level,
    pub storage: Storage,
}

/// One instruction: writes `out` from earlier registers.
#[derive(Clone, Debug)]
pub(crate) enum Instr {
    Const {
        value: f64,
        out: Reg,
    },
    Unary {
        op: UnaryOp,
        a: Reg,
        out: Reg,
    },
    /// `exp(a * b)`.
    ExpMul {
        a: Reg,
        b: Reg,
        out: Reg,
    },
    Binary {
        op: BinaryOp,
        a: Reg,
        b: Reg,
        out: Reg,
    },
    Ternary {
        op: TernaryOp,
        a: Reg,
        b: Reg,
        c: Reg,
        out: Reg,
    },
    Sum {
        a: Reg,
        out: Reg,
    },
    /// `Sum((a - b)^2)`.
    SqDist {
        a: Reg,
        b: Reg,
        out: Reg,
    },
    /// `Sum(a * b)`.
    Dot {
        a: Reg,
        b: Reg,
        out: Reg,
    },
    /// Components `start..start + dim(out)` of `a`.
    Extract {
        a: Reg,
        start: usize,
        out: Reg,
    },
    Concat {
        a: Reg,
        b: Reg,
        out: Reg,
    },
    MatVec {
        a: Reg,
        v: Reg,
        out: Reg,
    },
    /// A row register copied to every term of the tile.
    Broadcast {
        a: Reg,
        out: Reg,
    },
}

/// What the reduction consumes for each term.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Root {
    /// The register's value.
    Value(Reg),
    /// The product of two registers (only for `Sum`, which multiplies and accumulates).
    Product(Reg, Reg),
    /// `exp(a * s) * y` with every register of one component, `a` and `y` tile registers and
    /// `s` a row register (only for `Sum`: the Gaussian-type kernel times weights, summed in
    /// one pass without storing the exponentials).
    ExpProduct { a: Reg, s: Reg, y: Reg },
    /// `exp(s * |x - t|^2) * y`: [`Root::ExpProduct`] whose `a` is the squared distance
    /// between a row register `x` and a tile register `t` of the same dimension, at most
    /// `MAX_ONE_PASS_DIM` (the Gaussian kernel times weights, in one pass over the tile). With
    /// `sqrt`, `a` is the distance `|x - t|` instead (the Laplacian kernel).
    SqDistExpProduct {
        x: Reg,
        t: Reg,
        s: Reg,
        y: Reg,
        sqrt: bool,
    },
    /// `s * |x - t|^2` for a `LogSumExp`, with `x` a row register, `t` a tile register of the
    /// same dimension (at most `MAX_ONE_PASS_DIM`) and `s` a row register of one component: the
    /// distances, their scaling and their maximum in one pass, then the sum of exponentials.
    SqDistScaled { x: Reg, t: Reg, s: Reg },
    /// For `Sum`: a concatenation of parts `+- exp(s * |x - t|^2) * w * m` with one shared
    /// exponential and weight `w` (a one-component tile register, or 1 when absent) and
    /// per-part moments `m` ([`Program::moments`]): 1, `x - t` or `|x - t|^2`. The gradients
    /// of a Gaussian kernel sum have this form; they run in one pass over the tile.
    SqDistExpMoments {
        x: Reg,
        t: Reg,
        s: Reg,
        w: Option<Reg>,
    },
    /// For `Sum`: a concatenation of parts `c_k` or `c_k * (x - t)` ([`Program::diff_parts`]),
    /// with one-component tile coefficients `c_k` computed by the tile code, `x` a row and
    /// `t` a tile register: the shape of the gradients of radial kernels with respect to the
    /// points. The `D`-component products are never stored: each `sum_l c_l (x - t_l)` is
    /// accumulated directly from the differences.
    DiffMoments { x: Reg, t: Reg },
}

/// One part of a [`Root::DiffMoments`] root: `coef * 1` or `coef * (x - t)`, with `coef` a
/// one-component tile register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DiffPart {
    pub coef: Reg,
    /// Whether the part is `coef * (x - t)` (else `coef`).
    pub diff: bool,
}

/// The factor that multiplies one part of [`Root::SqDistExpMoments`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Moment {
    /// 1 (one component).
    One,
    /// `x - t` (the points' dimension).
    Diff,
    /// `|x - t|^2` (one component).
    SqDist,
}

/// A compiled formula.
#[derive(Clone, Debug)]
pub(crate) struct Program {
    pub regs: Vec<RegInfo>,
    /// Instructions writing row registers, in order.
    pub row_code: Vec<Instr>,
    /// Instructions writing tile registers, in order.
    pub tile_code: Vec<Instr>,
    pub root: Root,
    /// The parts of a [`Root::SqDistExpMoments`] root, in order, each with its sign (`true`:
    /// negated); empty for other roots.
    pub moments: Vec<(Moment, bool)>,
    /// The parts of a [`Root::DiffMoments`] root, in order; empty for other roots.
    pub diff_parts: Vec<DiffPart>,
    /// Size of the row scratch, in elements per row.
    pub row_len: usize,
    /// Size of the tile scratch, in units of the tile length (components of tile registers).
    pub tile_components: usize,
}

struct Builder {
    regs: Vec<RegInfo>,
    row_code: Vec<Instr>,
    tile_code: Vec<Instr>,
    memo: HashMap<Expr, Reg>,
    uses: HashMap<Expr, usize>,
    row_len: usize,
    tile_components: usize,
    /// Registers created by rewrites (negated or inverted row values), keyed by source and op.
    derived: HashMap<(Reg, UnaryOp), Reg>,
}

impl Builder {
    fn new_reg(&mut self, dim: usize, level: Level) -> Reg {
        let offset = match level {
            Level::Row => {
                let o = self.row_len;
                self.row_len += dim;
                o
            }
            Level::Tile => {
                let o = self.tile_components;
                self.tile_components += dim;
                o
            }
        };
        self.regs.push(RegInfo {
            dim,
            level,
            storage: Storage::Scratch(offset),
        });
        self.regs.len() - 1
    }

    fn level(&self, r: Reg) -> Level {
        self.regs[r].level
    }

    fn emit(&mut self, dim: usize, level: Level, make: impl FnOnce(Reg) -> Instr) -> Reg {
        let out = self.new_reg(dim, level);
        let ins = make(out);
        match level {
            Level::Row => self.row_code.push(ins),
            Level::Tile => self.tile_code.push(ins),
        }
        out
    }

    fn join(&self, rs: &[Reg]) -> Level {
        if rs.iter().any(|&r| self.level(r) == Level::Tile) {
            Level::Tile
        } else {
            Level::Row
        }
    }

    fn single_use(&self, e: &Expr) -> bool {
        self.uses.get(e).copied().unwrap_or(0) <= 1
    }

    /// A row register holding `op(r)`, created once.
    fn derived_row(&mut self, r: Reg, op: UnaryOp) -> Reg {
        if let Some(&d) = self.derived.get(&(r, op)) {
            return d;
        }
        let dim = self.regs[r].dim;
        let d = self.emit(dim, Level::Row, |out| Instr::Unary { op, a: r, out });
        self.derived.insert((r, op), d);
        d
    }

    fn lower(&mut self, e: &Expr) -> Reg {
        if let Some(&r) = self.memo.get(e) {
            return r;
        }
        let r = self.lower_new(e);
        self.memo.insert(e.clone(), r);
        r
    }

    /// `a * r` for a row register `r`: a negation of a single-use tile `a` moves onto `r`.
    fn mul_by_row(&mut self, a: &Expr, r: Reg) -> (Reg, Reg) {
        if let Op::Unary(UnaryOp::Neg) = a.op()
            && self.single_use(a)
            && !self.memo.contains_key(a)
        {
            let inner = self.lower(&a.args()[0]);
            if self.level(inner) == Level::Tile {
                return (inner, self.derived_row(r, UnaryOp::Neg));
            }
        }
        (self.lower(a), r)
    }

    /// `a * b`, with a negation of a single-use tile operand moved onto a row operand.
    fn lower_mul(&mut self, a: &Expr, b: &Expr) -> (Reg, Reg) {
        for (x, y, swap) in [(a, b, false), (b, a, true)] {
            if matches!(x.op(), Op::Unary(UnaryOp::Neg)) && !self.memo.contains_key(x) {
                let ry = self.lower(y);
                if self.level(ry) == Level::Row {
                    let (rx, ry) = self.mul_by_row(x, ry);
                    return if swap { (ry, rx) } else { (rx, ry) };
                }
            }
        }
        (self.lower(a), self.lower(b))
    }

    /// Registers `(x, y)` whose product is `e`, when `e` is a product or a division by a row
    /// value (`a / r = a * (1 / r)`, with `1 / r` hoisted out of the `j` loop).
    fn lower_as_product(&mut self, e: &Expr) -> Option<(Reg, Reg)> {
        let args = e.args();
        match e.op() {
            Op::Binary(BinaryOp::Mul) => Some(self.lower_mul(&args[0], &args[1])),
            Op::Binary(BinaryOp::Div) => {
                let r = self.lower(&args[1]);
                if self.level(r) != Level::Row {
                    return None;
                }
                let inv = self.derived_row(r, UnaryOp::Inv);
                Some(self.mul_by_row(&args[0], inv))
            }
            _ => None,
        }
    }

    fn lower_new(&mut self, e: &Expr) -> Reg {
        let args = e.args();
        let dim = e.dim();
        match *e.op() {
            Op::Var(_) => unreachable!("variables are registered before lowering"),
            Op::Const(value) => self.emit(1, Level::Row, |out| Instr::Const { value, out }),
            Op::Unary(UnaryOp::Exp) => {
                let x = &args[0];
                // `exp(-y)` of a one-component tile value is `exp(y * -1)`, which the kernel
                // fusions recognise (`Exp(-SqDist(x, y))`, the Laplacian's `exp(-|x - y|)`).
                if let (Op::Unary(UnaryOp::Neg), 1) = (x.op(), x.dim()) {
                    let y = &x.args()[0];
                    if self.single_use(x) && !self.memo.contains_key(x) {
                        let a = self.lower(y);
                        if self.level(a) == Level::Tile {
                            let m =
                                self.emit(1, Level::Row, |out| Instr::Const { value: -1.0, out });
                            return self.emit(dim, Level::Tile, |out| Instr::ExpMul {
                                a,
                                b: m,
                                out,
                            });
                        }
                    }
                }
                if self.single_use(x)
                    && !self.memo.contains_key(x)
                    && let Some((a, b)) = self.lower_as_product(x)
                {
                    let level = self.join(&[a, b]);
                    if level == Level::Tile {
                        return self.emit(dim, level, |out| Instr::ExpMul { a, b, out });
                    }
                    let m = self.emit(x.dim(), level, |out| Instr::Binary {
                        op: BinaryOp::Mul,
                        a,
                        b,
                        out,
                    });
                    self.memo.insert(x.clone(), m);
                    return self.emit(dim, level, |out| Instr::Unary {
                        op: UnaryOp::Exp,
                        a: m,
                        out,
                    });
                }
                let a = self.lower(x);
                let level = self.level(a);
                self.emit(dim, level, |out| Instr::Unary {
                    op: UnaryOp::Exp,
                    a,
                    out,
                })
            }
            Op::Unary(UnaryOp::Square)
                if dim == 1
                    && matches!(args[0].op(), Op::Binary(BinaryOp::Sub))
                    && self.single_use(&args[0])
                    && !self.memo.contains_key(&args[0]) =>
            {
                // A one-component squared distance (`Sum` of one component is simplified away).
                let a = self.lower(&args[0].args()[0]);
                let b = self.lower(&args[0].args()[1]);
                let level = self.join(&[a, b]);
                self.emit(1, level, |out| Instr::SqDist { a, b, out })
            }
            Op::Unary(op) => {
                let a = self.lower(&args[0]);
                let level = self.level(a);
                self.emit(dim, level, |out| Instr::Unary { op, a, out })
            }
            Op::Binary(BinaryOp::Mul | BinaryOp::Div) => {
                if let Some((a, b)) = self.lower_as_product(e) {
                    let level = self.join(&[a, b]);
                    return self.emit(dim, level, |out| Instr::Binary {
                        op: BinaryOp::Mul,
                        a,
                        b,
                        out,
                    });
                }
                let a = self.lower(&args[0]);
                let b = self.lower(&args[1]);
                let level = self.join(&[a, b]);
                self.emit(dim, level, |out| Instr::Binary {
                    op: BinaryOp::Div,
                    a,
                    b,
                    out,
                })
            }
            Op::Binary(op) => {
                let a = self.lower(&args[0]);
                let b = self.lower(&args[1]);
                let level = self.join(&[a, b]);
                self.emit(dim, level, |out| Instr::Binary { op, a, b, out })
            }
            Op::Ternary(op) => {
                let a = self.lower(&args[0]);
                let b = self.lower(&args[1]);
                let c = self.lower(&args[2]);
                let level = self.join(&[a, b, c]);
                self.emit(dim, level, |out| Instr::Ternary { op, a, b, c, out })
            }
            Op::Sum => {
                let x = &args[0];
                let fusable = self.single_use(x) && !self.memo.contains_key(x);
                match x.op() {
                    Op::Unary(UnaryOp::Square) if fusable => {
                        let y = &x.args()[0];
                        if let (Op::Binary(BinaryOp::Sub), true) = (y.op(), self.single_use(y))
                            && !self.memo.contains_key(y)
                        {
                            let a = self.lower(&y.args()[0]);
                            let b = self.lower(&y.args()[1]);
                            let level = self.join(&[a, b]);
                            return self.emit(1, level, |out| Instr::SqDist { a, b, out });
                        }
                        let a = self.lower(y);
                        let level = self.level(a);
                        self.emit(1, level, |out| Instr::Dot { a, b: a, out })
                    }
                    Op::Binary(BinaryOp::Mul) if fusable => {
                        let a = self.lower(&x.args()[0]);
                        let b = self.lower(&x.args()[1]);
                        let level = self.join(&[a, b]);
                        self.emit(1, level, |out| Instr::Dot { a, b, out })
                    }
                    _ => {
                        let a = self.lower(x);
                        let level = self.level(a);
                        self.emit(1, level, |out| Instr::Sum { a, out })
                    }
                }
            }
            Op::Elem(m) => {
                let a = self.lower(&args[0]);
                let level = self.level(a);
                self.emit(1, level, |out| Instr::Extract { a, start: m, out })
            }
            Op::Extract { start, .. } => {
                let a = self.lower(&args[0]);
                let level = self.level(a);
                self.emit(dim, level, |out| Instr::Extract { a, start, out })
            }
            Op::Concat => {
                let a = self.lower(&args[0]);
                let b = self.lower(&args[1]);
                let level = self.join(&[a, b]);
                self.emit(dim, level, |out| Instr::Concat { a, b, out })
            }
            Op::MatVecMult => {
                let a = self.lower(&args[0]);
                let v = self.lower(&args[1]);
                let level = self.join(&[a, v]);
                self.emit(dim, level, |out| Instr::MatVec { a, v, out })
            }
        }
    }
}

/// `Product(e, y)` where `e = exp(a * s)` is the last tile instruction and used nowhere else
/// becomes [`Root::ExpProduct`] (one component everywhere, `s` a row register).
fn fuse_exp_product(b: &mut Builder, root: Root) -> Root {
    let Root::Product(x, y) = root else {
        return root;
    };
    for (e, y) in [(x, y), (y, x)] {
        let Some(&Instr::ExpMul { a, b: m, out }) = b.tile_code.last() else {
            continue;
        };
        if out != e {
            continue;
        }
        let (a, s) = match (b.level(a), b.level(m)) {
            (Level::Tile, Level::Row) => (a, m),
            (Level::Row, Level::Tile) => (m, a),
            _ => continue,
        };
        let used_elsewhere = b.tile_code[..b.tile_code.len() - 1]
            .iter()
            .any(|ins| reads(ins).contains(&e));
        let one = |r: Reg| b.regs[r].dim == 1;
        if used_elsewhere || !(one(a) && one(s) && one(y) && one(e)) || b.level(y) != Level::Tile {
            continue;
        }
        b.tile_code.pop();
        return fuse_sqdist(b, Root::ExpProduct { a, s, y });
    }
    root
}

/// [`Root::ExpProduct`] whose `a` comes from the last tile instruction, a squared distance
/// (or the square root of one, computed by the instruction before) used nowhere else between a
/// row and a tile register of equal small dimension, becomes [`Root::SqDistExpProduct`].
fn fuse_sqdist(b: &mut Builder, root: Root) -> Root {
    let Root::ExpProduct { a, s, y } = root else {
        return root;
    };
    let n = b.tile_code.len();
    // The instructions to fuse: `[SqDist]` or `[SqDist, Sqrt]`, ending in `a`.
    let (fused, sqrt) = match b.tile_code.last() {
        Some(&Instr::SqDist { out, .. }) if out == a => (1, false),
        Some(&Instr::Unary {
            op: UnaryOp::Sqrt,
            a: d,
            out,
        }) if out == a && n >= 2 => match b.tile_code[n - 2] {
            Instr::SqDist { out: d2, .. } if d2 == d => (2, true),
            _ => return root,
        },
        _ => return root,
    };
    let Instr::SqDist { a: p, b: q, out: d } = b.tile_code[n - fused] else {
        return root;
    };
    let (x, t) = match (b.level(p), b.level(q)) {
        (Level::Row, Level::Tile) => (p, q),
        (Level::Tile, Level::Row) => (q, p),
        _ => return root,
    };
    let used_elsewhere = b.tile_code[..n - fused]
        .iter()
        .any(|ins| reads(ins).contains(&d) || reads(ins).contains(&a));
    let dim = b.regs[x].dim;
    // The root's other operands must not be the fused values (`exp(s d) * d`), which would
    // then never be computed.
    if used_elsewhere
        || [y, s].iter().any(|&r| r == d || r == a)
        || dim != b.regs[t].dim
        || !(1..=MAX_ONE_PASS_DIM).contains(&dim)
    {
        return root;
    }
    b.tile_code.truncate(n - fused);
    Root::SqDistExpProduct { x, t, s, y, sqrt }
}

/// A `LogSumExp` root `r = a * s` (the last tile instruction, `s` a one-component row
/// register) where `a` is a squared distance (the instruction before it) between a row and a
/// tile register of equal small dimension, both used nowhere else, becomes
/// [`Root::SqDistScaled`].
fn fuse_scaled_sqdist(b: &mut Builder, root: Root) -> Root {
    let Root::Value(r) = root else {
        return root;
    };
    let n = b.tile_code.len();
    if n < 2 {
        return root;
    }
    let (
        Instr::Binary {
            op: BinaryOp::Mul,
            a: m0,
            b: m1,
            out,
        },
        Instr::SqDist { a: p, b: q, out: d },
    ) = (b.tile_code[n - 1].clone(), b.tile_code[n - 2].clone())
    else {
        return root;
    };
    let s = match (m0 == d, m1 == d) {
        (true, false) => m1,
        (false, true) => m0,
        _ => return root,
    };
    let (x, t) = match (b.level(p), b.level(q)) {
        (Level::Row, Level::Tile) => (p, q),
        (Level::Tile, Level::Row) => (q, p),
        _ => return root,
    };
    let dim = b.regs[x].dim;
    let used_elsewhere = b.tile_code[..n - 2]
        .iter()
        .any(|ins| reads(ins).contains(&d) || reads(ins).contains(&out));
    if out != r
        || used_elsewhere
        || b.level(s) != Level::Row
        || b.regs[s].dim != 1
        || dim != b.regs[t].dim
        || !(1..=MAX_ONE_PASS_DIM).contains(&dim)
    {
        return root;
    }
    b.tile_code.truncate(n - 2);
    Root::SqDistScaled { x, t, s }
}

/// Registers an instruction reads.
fn reads(ins: &Instr) -> Vec<Reg> {
    match *ins {
        Instr::Const { .. } => vec![],
        Instr::Unary { a, .. }
        | Instr::Sum { a, .. }
        | Instr::Extract { a, .. }
        | Instr::Broadcast { a, .. } => vec![a],
        Instr::ExpMul { a, b, .. }
        | Instr::Binary { a, b, .. }
        | Instr::SqDist { a, b, .. }
        | Instr::Dot { a, b, .. }
        | Instr::Concat { a, b, .. } => vec![a, b],
        Instr::MatVec { a, v, .. } => vec![a, v],
        Instr::Ternary { a, b, c, .. } => vec![a, b, c],
    }
}

/// Number of parents of each node (plus one for the root).
fn use_counts(root: &Expr) -> HashMap<Expr, usize> {
    let mut uses: HashMap<Expr, usize> = HashMap::new();
    for n in root.topo_order() {
        for a in n.args() {
            *uses.entry(a.clone()).or_insert(0) += 1;
        }
    }
    *uses.entry(root.clone()).or_insert(0) += 1;
    uses
}

impl Program {
    /// Compiles `formula` (whose variables have positions `0..n_inputs`, categories and dims
    /// as in `inputs`) for a reduction of `kind`: a `Sum` multiplies and accumulates a
    /// top-level product without storing it, and Gaussian-type roots of `Sum` and
    /// `LogSumExp` are fused into the reduction.
    pub(crate) fn compile(
        formula: &Expr,
        inputs: &[(VarCat, usize)],
        kind: ReductionKind,
    ) -> Program {
        Program::compile_with_pairs(formula, inputs, kind, &[])
    }

    /// As [`Program::compile`], for a block plan: the node `pairs[k]` is not computed but read
    /// from the pair input at position `inputs.len() + k` (a tile register of one component).
    pub(crate) fn compile_with_pairs(
        formula: &Expr,
        inputs: &[(VarCat, usize)],
        kind: ReductionKind,
        pairs: &[Expr],
    ) -> Program {
        if kind == ReductionKind::Sum && pairs.is_empty() {
            if let Some(m) = match_moments(formula)
                && let Some(prog) = Builder::new(formula, inputs, pairs).lower_moments(m)
            {
                return prog;
            }
            if let Some(m) = match_diff_moments(formula)
                && let Some(prog) = Builder::new(formula, inputs, pairs).lower_diff_moments(m)
            {
                return prog;
            }
        }
        let mut b = Builder::new(formula, inputs, pairs);
        let product = if kind == ReductionKind::Sum {
            b.lower_as_product(formula)
        } else {
            None
        };
        let root = match product {
            Some((x, y)) => {
                if b.join(&[x, y]) == Level::Tile {
                    Root::Product(x, y)
                } else {
                    let out = b.emit(formula.dim(), Level::Row, |out| Instr::Binary {
                        op: BinaryOp::Mul,
                        a: x,
                        b: y,
                        out,
                    });
                    Root::Value(out)
                }
            }
            None => Root::Value(b.lower(formula)),
        };
        let root = fuse_exp_product(&mut b, root);
        let root = if kind == ReductionKind::LogSumExp {
            fuse_scaled_sqdist(&mut b, root)
        } else {
            root
        };
        // The reduction reads tile registers. Every runnable formula depends on j (a formula
        // without a j-variable is rejected earlier), but a row root is broadcast rather than
        // trusted, so the executor never reads a row register as a tile.
        let root = match root {
            Root::Value(r) if b.level(r) == Level::Row => {
                let dim = b.regs[r].dim;
                Root::Value(b.emit(dim, Level::Tile, |out| Instr::Broadcast { a: r, out }))
            }
            other => other,
        };
        b.finish(root, Vec::new())
    }
}

impl Builder {
    /// A builder with the formula's inputs registered, and the pair inputs after them.
    fn new(formula: &Expr, inputs: &[(VarCat, usize)], pairs: &[Expr]) -> Builder {
        let mut b = Builder {
            regs: Vec::new(),
            row_code: Vec::new(),
            tile_code: Vec::new(),
            memo: HashMap::new(),
            uses: use_counts(formula),
            row_len: 0,
            tile_components: 0,
            derived: HashMap::new(),
        };
        for (pos, &(cat, dim)) in inputs.iter().enumerate() {
            b.regs.push(RegInfo {
                dim,
                level: if cat == VarCat::J {
                    Level::Tile
                } else {
                    Level::Row
                },
                storage: Storage::Input(pos),
            });
        }
        for v in formula.vars() {
            let e = Expr::var(v).expect("variables of a valid formula are valid");
            b.memo.insert(e, v.pos);
        }
        for (k, node) in pairs.iter().enumerate() {
            b.regs.push(RegInfo {
                dim: 1,
                level: Level::Tile,
                storage: Storage::Input(inputs.len() + k),
            });
            b.memo.insert(node.clone(), inputs.len() + k);
        }
        b
    }

    /// The program, once its root is chosen.
    fn finish(self, root: Root, moments: Vec<(Moment, bool)>) -> Program {
        self.finish_with(root, moments, Vec::new())
    }

    fn finish_with(
        self,
        root: Root,
        moments: Vec<(Moment, bool)>,
        diff_parts: Vec<DiffPart>,
    ) -> Program {
        Program {
            regs: self.regs,
            row_code: self.row_code,
            tile_code: self.tile_code,
            root,
            moments,
            diff_parts,
            row_len: self.row_len,
            tile_components: self.tile_components,
        }
    }

    /// Lowers a matched [`MomentsMatch`] into a [`Root::SqDistExpMoments`] program, if its
    /// operands land at the levels and dimensions the fused kernel needs.
    fn lower_moments(mut self, m: MomentsMatch) -> Option<Program> {
        let x = self.lower(&m.x);
        let t = self.lower(&m.t);
        let s = self.lower(&m.s);
        let w = m.w.as_ref().map(|w| self.lower(w));
        let d = self.regs[x].dim;
        let ok = self.level(x) == Level::Row
            && self.level(t) == Level::Tile
            && self.level(s) == Level::Row
            && self.regs[s].dim == 1
            && self.regs[t].dim == d
            && (1..=MAX_ONE_PASS_DIM).contains(&d)
            && w.is_none_or(|w| self.level(w) == Level::Tile && self.regs[w].dim == 1);
        ok.then(|| self.finish(Root::SqDistExpMoments { x, t, s, w }, m.parts))
    }
}

impl Builder {
    /// Lowers a matched [`DiffMatch`] into a [`Root::DiffMoments`] program, if `x` and `t`
    /// land on a row and a tile register of equal small dimension.
    fn lower_diff_moments(mut self, m: DiffMatch) -> Option<Program> {
        // Only the points and the coefficients are lowered (the differences are the root's):
        // count uses among them, so that fusions see the distance as used once.
        let lowered = m
            .parts
            .iter()
            .map(|(c, _)| c.clone())
            .chain([m.x.clone(), m.t.clone()])
            .reduce(|a, b| Expr::new(Op::Concat, vec![a, b]).expect("Concat accepts any dims"))
            .expect("at least the points");
        self.uses = use_counts(&lowered);
        let x = self.lower(&m.x);
        let t = self.lower(&m.t);
        let d = self.regs[x].dim;
        if self.level(x) != Level::Row
            || self.level(t) != Level::Tile
            || self.regs[t].dim != d
            || !(1..=MAX_ONE_PASS_DIM).contains(&d)
        {
            return None;
        }
        let mut parts = Vec::with_capacity(m.parts.len());
        for (coef, diff) in &m.parts {
            let mut c = self.lower(coef);
            if self.level(c) == Level::Row {
                c = self.emit(1, Level::Tile, |out| Instr::Broadcast { a: c, out });
            }
            parts.push(DiffPart {
                coef: c,
                diff: *diff,
            });
        }
        Some(self.finish_with(Root::DiffMoments { x, t }, Vec::new(), parts))
    }
}

/// A formula of the [`Root::DiffMoments`] form, as expressions: the row and tile points and,
/// per part, its coefficient and whether it multiplies `x - t`.
struct DiffMatch {
    x: Expr,
    t: Expr,
    parts: Vec<(Expr, bool)>,
}

/// Recognises the [`Root::DiffMoments`] form: every part is a product of one-component
/// factors, times at most one difference `x - t` (or `t - x`) of a row and a tile expression,
/// the same pair in every part, and at least one part has it.
fn match_diff_moments(f: &Expr) -> Option<DiffMatch> {
    let mut parts = Vec::new();
    concat_parts(f, &mut parts);
    let mut pair: Option<(Expr, Expr)> = None; // (row side, tile side)
    let mut out = Vec::with_capacity(parts.len());
    for part in &parts {
        let (factors, mut negated) = part.product_factors();
        let mut diff = false;
        let mut coef: Vec<Expr> = Vec::new();
        for fac in factors {
            if !diff && fac.dim() > 1 {
                let Op::Binary(BinaryOp::Sub) = fac.op() else {
                    return None;
                };
                let (a, b) = (&fac.args()[0], &fac.args()[1]);
                let (row, tile, flip) = match (depends_on_j(a), depends_on_j(b)) {
                    (false, true) => (a, b, false),
                    (true, false) => (b, a, true),
                    _ => return None,
                };
                if a.dim() != b.dim() {
                    return None;
                }
                match &pair {
                    None => pair = Some((row.clone(), tile.clone())),
                    Some((r, t)) if r == row && t == tile => {}
                    Some(_) => return None,
                }
                diff = true;
                negated ^= flip;
            } else if fac.dim() == 1 {
                coef.push(fac);
            } else {
                return None;
            }
        }
        if !diff && part.dim() != 1 {
            return None;
        }
        let mut c = coef
            .into_iter()
            .reduce(|p, q| Expr::binary(BinaryOp::Mul, &p, &q).expect("one component"))
            .unwrap_or_else(|| Expr::constant(1.0).expect("finite"));
        if negated {
            c = c.neg();
        }
        out.push((c, diff));
    }
    let (x, t) = pair?;
    Some(DiffMatch { x, t, parts: out })
}

/// A formula of the [`Root::SqDistExpMoments`] form, as expressions.
struct MomentsMatch {
    x: Expr,
    t: Expr,
    s: Expr,
    w: Option<Expr>,
    parts: Vec<(Moment, bool)>,
}

fn depends_on_j(e: &Expr) -> bool {
    e.depends_on(VarCat::J)
}

/// The parts of a `Concat` tree, left to right.
fn concat_parts(e: &Expr, out: &mut Vec<Expr>) {
    if let Op::Concat = e.op() {
        concat_parts(&e.args()[0], out);
        concat_parts(&e.args()[1], out);
    } else {
        out.push(e.clone());
    }
}

/// `(sqdist, a, b, s)` when `e = exp(s * |a - b|^2)`, with `s` a product of row factors and
/// exactly one of `a` and `b` depending on `j`.
fn match_gaussian(e: &Expr) -> Option<(Expr, Expr, Expr, Expr)> {
    let Op::Unary(UnaryOp::Exp) = e.op() else {
        return None;
    };
    let (factors, neg) = e.args()[0].product_factors();
    let mut sq = None;
    let mut scale: Vec<Expr> = Vec::new();
    for f in factors {
        if !depends_on_j(&f) {
            scale.push(f);
            continue;
        }
        // `Sum(Square(a - b))`, or `Square(a - b)` for one component (whose `Sum` is
        // simplified away).
        let square = match f.op() {
            Op::Sum => &f.args()[0],
            Op::Unary(UnaryOp::Square) if f.dim() == 1 => &f,
            _ => return None,
        };
        let Op::Unary(UnaryOp::Square) = square.op() else {
            return None;
        };
        let diff = &square.args()[0];
        let Op::Binary(BinaryOp::Sub) = diff.op() else {
            return None;
        };
        if sq.is_some() || depends_on_j(&diff.args()[0]) == depends_on_j(&diff.args()[1]) {
            return None;
        }
        sq = Some((f.clone(), diff.args()[0].clone(), diff.args()[1].clone()));
    }
    let (sq, a, b) = sq?;
    let mut s = scale
        .into_iter()
        .reduce(|p, q| Expr::binary(BinaryOp::Mul, &p, &q).expect("one-component factors"))
        .unwrap_or_else(|| Expr::constant(1.0).expect("finite"));
    if neg {
        s = s.neg();
    }
    (s.dim() == 1).then_some((sq, a, b, s))
}

/// Recognises the [`Root::SqDistExpMoments`] form (see there). Plain `exp(..) * w` parts alone
/// are left to [`Root::SqDistExpProduct`].
fn match_moments(f: &Expr) -> Option<MomentsMatch> {
    let mut parts = Vec::new();
    concat_parts(f, &mut parts);
    let mut kernel: Option<(Expr, Expr, Expr, Expr, Expr)> = None; // (exp, sq, a, b, s)
    let mut weight: Option<Option<Expr>> = None;
    let mut out = Vec::with_capacity(parts.len());
    for part in &parts {
        let (factors, neg) = part.product_factors();
        if kernel.is_none() {
            kernel = factors
                .iter()
                .find_map(|f| match_gaussian(f).map(|(sq, a, b, s)| (f.clone(), sq, a, b, s)));
        }
        let (exp, sq, a, b, _) = kernel.as_ref()?;
        let mut moment = None;
        let mut found = false;
        let mut rest: Vec<Expr> = Vec::new();
        for fac in factors {
            if !found && fac == *exp {
                found = true;
            } else if moment.is_none() && fac == *sq {
                moment = Some((Moment::SqDist, false));
            } else if moment.is_none() && matches!(fac.op(), Op::Binary(BinaryOp::Sub)) {
                let (p, q) = (&fac.args()[0], &fac.args()[1]);
                if p == a && q == b {
                    moment = Some((Moment::Diff, false));
                } else if p == b && q == a {
                    moment = Some((Moment::Diff, true));
                } else {
                    rest.push(fac);
                }
            } else {
                rest.push(fac);
            }
        }
        if !found {
            return None;
        }
        // Every other factor must be the part's weight: one component, depending on j.
        if rest.iter().any(|r| r.dim() != 1 || !depends_on_j(r)) {
            return None;
        }
        let w = rest
            .into_iter()
            .reduce(|p, q| Expr::binary(BinaryOp::Mul, &p, &q).expect("one component"));
        match &weight {
            None => weight = Some(w),
            Some(prev) if *prev == w => {}
            Some(_) => return None,
        }
        let (m, flip) = moment.unwrap_or((Moment::One, false));
        out.push((m, neg != flip));
    }
    let (_, _, a, b, s) = kernel?;
    if out.iter().all(|(m, _)| *m == Moment::One) {
        return None;
    }
    // The kernel computes `x - t` with `x` the row side.
    let (x, t, swap) = if depends_on_j(&a) {
        (b, a, true)
    } else {
        (a, b, false)
    };
    for (m, neg) in &mut out {
        if *m == Moment::Diff && swap {
            *neg = !*neg;
        }
    }
    Some(MomentsMatch {
        x,
        t,
        s,
        w: weight.flatten(),
        parts: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formula::parse;

    fn inputs(f: &Expr) -> Vec<(VarCat, usize)> {
        let mut v = f.vars();
        v.sort_by_key(|v| v.pos);
        v.iter().map(|v| (v.cat, v.dim)).collect()
    }

    #[test]
    fn gaussian_gradients_compile_to_the_moments_root() {
        let k = "Exp(-SqDist(Vi(0,3), Vj(1,3)) / (2.0 * Square(Pm(2,1))))";
        let src = format!(
            "Concat(Vj(3,1) * {k} * (Vj(1,3) - Vi(0,3)), Concat(-(Vj(3,1) * {k} * SqDist(Vi(0,3), Vj(1,3))), Vj(3,1) * {k}))"
        );
        let f = parse(&src, &[]).unwrap();
        let p = Program::compile(&f, &inputs(&f), ReductionKind::Sum);
        assert!(
            matches!(p.root, Root::SqDistExpMoments { w: Some(_), .. }),
            "{p:?}"
        );
        assert_eq!(
            p.moments,
            vec![
                (Moment::Diff, true),
                (Moment::SqDist, true),
                (Moment::One, false)
            ]
        );
        assert!(p.tile_code.is_empty());
        // Two different kernels, or a factor that is not a weight, are not this root (the
        // first is a `DiffMoments` one).
        let other = format!("Concat({k} * (Vi(0,3) - Vj(1,3)), Exp(-SqDist(Vi(0,3), Vj(1,3))))");
        let f = parse(&other, &[]).unwrap();
        let p = Program::compile(&f, &inputs(&f), ReductionKind::Sum);
        assert!(matches!(p.root, Root::DiffMoments { .. }));
        let f = parse(&format!("{k} * Vi(4,3) * (Vi(0,3) - Vj(1,3))"), &[]).unwrap();
        let p = Program::compile(&f, &inputs(&f), ReductionKind::Sum);
        assert!(!matches!(p.root, Root::SqDistExpMoments { .. }));
    }

    #[test]
    fn radial_gradients_compile_to_the_diff_moments_root() {
        let r = "Sqrt(SqDist(Vi(0,3), Vj(1,3)))";
        let src =
            format!("Concat(Vj(2,1) * Exp(-{r}) / {r} * (Vj(1,3) - Vi(0,3)), Vj(2,1) * Exp(-{r}))");
        let f = parse(&src, &[]).unwrap();
        let p = Program::compile(&f, &inputs(&f), ReductionKind::Sum);
        assert!(matches!(p.root, Root::DiffMoments { x: 0, t: 1 }), "{p:?}");
        assert_eq!(p.diff_parts.len(), 2);
        assert!(p.diff_parts[0].diff && !p.diff_parts[1].diff);
        // The distance is computed in one fused pass: `x - y` is never stored.
        assert!(p.tile_code.iter().all(|i| !matches!(
            i,
            Instr::Binary {
                op: BinaryOp::Sub,
                ..
            }
        )));
        // Two different differences keep the general path.
        let other = format!("Concat({r} * (Vi(0,3) - Vj(1,3)), {r} * (Vi(0,3) - Vj(4,3)))");
        let f = parse(&other, &[]).unwrap();
        let p = Program::compile(&f, &inputs(&f), ReductionKind::Sum);
        assert!(matches!(p.root, Root::Value(_)));
    }
}
