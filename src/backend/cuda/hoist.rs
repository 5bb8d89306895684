//! The formula as CUDA C, split by where each value is computed.
//!
//! A reduction kernel evaluates the formula for every pair `(i, j)`, but most formulas have
//! parts that depend on less: constants and parameters (the same for the whole kernel), the
//! `i`-variables (the same for a row), the `j`-variables (the same for a term, whatever the
//! row). Each node of the formula gets the [`Level`] of what it depends on, and its code goes
//! to that level's section:
//!
//! - `param`: once per thread, before everything;
//! - `row`: once per output row, before the `j` loop;
//! - `term`: once per term of a tile, shared by all the rows a thread computes;
//! - `pair`: once per pair.
//!
//! A value used by a higher level is handed over in a slot of `hp[]`, `hi[]` or `hj[]` (the
//! param, row and term slots); constants are written in place and variables read in place
//! (`a{k}[c]`). Two rewrites move work out of the pair section, as the CPU backend's register
//! program does (`backend::cpu::program`):
//!
//! - a division by a lower-level value is a product by its reciprocal, computed at that level
//!   (`x / (2 s^2)` is `x * hp[0]`);
//! - in `float`, `exp(c * a)` is `ex2(a * (c log2 e))` on the exp2 unit, where the factor
//!   `c` gathers the constants, negations, lower-level factors and lower-level divisors around
//!   `a`: the Gaussian kernel written with a parameter, `exp(-|x - y|^2 / (2 s^2))`, then has
//!   the inner loop of the constant form `exp(-0.5 |x - y|^2)`.
//!
//! Components are emitted on demand, so a component no one reads is never computed, and each
//! node's components are computed once (the formula is hash-consed).
//!
//! A block plan's pair nodes (`crate::op::gram`: the inner products `<x_i, y_j>` computed by
//! matrix products) are leaves of the pair section: pair node `k` is read as `sp[k]`, which the
//! kernel loads from its block of inner products, and its arguments are not computed.

use std::collections::HashMap;
use std::fmt::Write;

use crate::error::{Result, invalid};
use crate::formula::{BinaryOp, Expr, Op, UnaryOp, VarCat};

/// Where a value is computed: what it depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Level {
    /// Constants and parameters only: once per thread.
    Param = 0,
    /// `i`-variables (and parameters): once per row.
    Row = 1,
    /// `j`-variables (and parameters): once per term.
    Term = 2,
    /// Both: once per pair.
    Pair = 3,
}

impl Level {
    fn of(cat: VarCat) -> Level {
        match cat {
            VarCat::P => Level::Param,
            VarCat::I => Level::Row,
            VarCat::J => Level::Term,
        }
    }

    fn join(self, other: Level) -> Level {
        match (self, other) {
            (a, b) if a == b => a,
            (Level::Param, x) | (x, Level::Param) => x,
            _ => Level::Pair,
        }
    }

    /// Whether a value of this level can be computed before, and handed to, `other`.
    fn below(self, other: Level) -> bool {
        self != other && self.join(other) == other
    }

    /// The array of slots that hands this level's values up.
    fn slots(self) -> &'static str {
        match self {
            Level::Param => "hp",
            Level::Row => "hi",
            Level::Term => "hj",
            Level::Pair => unreachable!("pair values are not handed up"),
        }
    }
}

/// The formula's code by section (see the module documentation). Each section reads the
/// variables as `a{k}[c]` (pointers to the components of variable `k`) and the slots of the
/// lower sections, and writes its own slots.
#[derive(Clone, Debug, Default)]
pub(crate) struct Sections {
    /// Code per [`Level`], in order.
    pub code: [String; 4],
    /// Slots written by the param, row and term sections (`hp`, `hi`, `hj`).
    pub slots: [usize; 3],
    /// The formula's components, as C expressions valid at the end of the pair section.
    pub out: Vec<String>,
}

impl Sections {
    /// Splits `formula`, whose variable at position `k` is `a{k}` (`nvars` of them), for the
    /// compute type `tc` (`float` or `double`); the scalar nodes `pairs[k]` are read as `sp[k]`
    /// in the pair section (see the module documentation).
    pub(crate) fn new(
        formula: &Expr,
        nvars: usize,
        pairs: &[Expr],
        tc: &'static str,
    ) -> Result<Sections> {
        let mut g = Gen {
            tc,
            nvars,
            pairs,
            s: Sections::default(),
            names: HashMap::new(),
            handed: HashMap::new(),
            levels: HashMap::new(),
            count: 0,
        };
        let out = (0..formula.dim())
            .map(|c| g.comp(formula, c, Level::Pair))
            .collect::<Result<Vec<_>>>()?;
        g.s.out = out;
        Ok(g.s)
    }

    /// The declaration of the slots of `level` (at least one, so that the array exists), and
    /// a cast to void (so that unused slots raise no warning).
    pub(crate) fn decl(&self, level: Level, tc: &str) -> String {
        let (name, n) = (level.slots(), self.slots[level as usize].max(1));
        format!("{tc} {name}[{n}]; (void){name};")
    }
}

/// A C literal of `c` in the compute type.
pub(crate) fn literal(c: f64, tc: &str) -> String {
    format!("(({tc})({c:e}))")
}

struct Gen<'p> {
    tc: &'static str,
    nvars: usize,
    /// Pair nodes read from `sp[k]`.
    pairs: &'p [Expr],
    s: Sections,
    /// Components emitted so far: their names in their own level's section.
    names: HashMap<(Expr, usize), String>,
    /// Components handed up: their slot.
    handed: HashMap<(Expr, usize), String>,
    levels: HashMap<Expr, Level>,
    count: usize,
}

impl Gen<'_> {
    fn level(&mut self, e: &Expr) -> Level {
        if let Some(&l) = self.levels.get(e) {
            return l;
        }
        let l = match e.op() {
            Op::Var(v) => Level::of(v.cat),
            Op::Const(_) => Level::Param,
            _ => {
                let args = e.args().to_vec();
                args.iter()
                    .fold(Level::Param, |acc, a| acc.join(self.level(a)))
            }
        };
        self.levels.insert(e.clone(), l);
        l
    }

    /// Component `c` of `e` (its only component when it has one: broadcasting), as a C
    /// expression valid in the section of `at`.
    fn comp(&mut self, e: &Expr, c: usize, at: Level) -> Result<String> {
        let c = if e.dim() == 1 { 0 } else { c };
        match *e.op() {
            Op::Var(v) => {
                if v.pos >= self.nvars {
                    return Err(invalid(
                        "CUDA codegen",
                        format!("variable at position {} of {}", v.pos, self.nvars),
                    ));
                }
                return Ok(format!("a{}[{c}]", v.pos));
            }
            Op::Const(k) => return Ok(literal(k, self.tc)),
            _ => {}
        }
        if let Some(k) = self.pairs.iter().position(|p| p == e) {
            if at != Level::Pair || e.dim() != 1 {
                return Err(invalid(
                    "CUDA codegen",
                    format!("pair input {e} read at {at:?} (dimension {})", e.dim()),
                ));
            }
            return Ok(format!("sp[{k}]"));
        }
        let name = self.emit(e, c)?;
        let l = self.level(e);
        if l == at {
            return Ok(name);
        }
        debug_assert!(l.below(at), "{e} at {l:?} read at {at:?}");
        let key = (e.clone(), c);
        if let Some(slot) = self.handed.get(&key) {
            return Ok(slot.clone());
        }
        let k = &mut self.s.slots[l as usize];
        let slot = format!("{}[{}]", l.slots(), *k);
        *k += 1;
        let _ = writeln!(self.s.code[l as usize], "    {slot} = {name};");
        self.handed.insert(key, slot.clone());
        Ok(slot)
    }

    /// Writes `expr` as a new named value of `level`'s section.
    fn define(&mut self, level: Level, expr: String) -> String {
        let name = format!("v{}", self.count);
        self.count += 1;
        let _ = writeln!(
            self.s.code[level as usize],
            "    const {} {name} = {expr};",
            self.tc
        );
        name
    }

    /// Component `c` of the operation `e`, named in its level's section.
    fn emit(&mut self, e: &Expr, c: usize) -> Result<String> {
        let key = (e.clone(), c);
        if let Some(n) = self.names.get(&key) {
            return Ok(n.clone());
        }
        let l = self.level(e);
        let args = e.args().to_vec();
        let name = match *e.op() {
            Op::Var(_) | Op::Const(_) => unreachable!("read in place by `comp`"),
            Op::Unary(UnaryOp::Exp) if self.tc == "float" => {
                let (base, factor) = self.peel(&args[0], l)?;
                let x = self.comp(&base, c, l)?;
                let k = self.comp(&factor, c, l)?;
                self.define(l, format!("lk_ex2({x} * {k})"))
            }
            Op::Unary(u) => {
                let a = self.comp(&args[0], c, l)?;
                self.define(l, u.cuda(&a, self.tc))
            }
            // A division by a lower-level value: a product by its reciprocal.
            Op::Binary(BinaryOp::Div) if self.level(&args[1]).below(l) => {
                let a = self.comp(&args[0], c, l)?;
                let r = self.comp(&Expr::unary(UnaryOp::Inv, &args[1]), c, l)?;
                self.define(l, format!("{a} * {r}"))
            }
            Op::Binary(b) => {
                let x = self.comp(&args[0], c, l)?;
                let y = self.comp(&args[1], c, l)?;
                self.define(l, b.cuda(&x, &y, self.tc))
            }
            Op::Ternary(t) => {
                let x = self.comp(&args[0], c, l)?;
                let y = self.comp(&args[1], c, l)?;
                let z = self.comp(&args[2], c, l)?;
                self.define(l, t.cuda(&x, &y, &z, self.tc))
            }
            Op::Sum => {
                // A left-to-right chain, each partial sum named.
                let mut acc = self.comp(&args[0], 0, l)?;
                for k in 1..args[0].dim() {
                    let x = self.comp(&args[0], k, l)?;
                    acc = self.define(l, format!("{acc} + {x}"));
                }
                acc
            }
            Op::Elem(m) => self.comp(&args[0], m, l)?,
            Op::Extract { start, .. } => self.comp(&args[0], start + c, l)?,
            Op::Concat => {
                let d0 = args[0].dim();
                if c < d0 {
                    self.comp(&args[0], c, l)?
                } else {
                    self.comp(&args[1], c - d0, l)?
                }
            }
            Op::MatVecMult => {
                let m = args[1].dim();
                let mut terms = Vec::with_capacity(m);
                for k in 0..m {
                    let a = self.comp(&args[0], c * m + k, l)?;
                    let v = self.comp(&args[1], k, l)?;
                    terms.push(format!("{a} * {v}"));
                }
                self.define(l, terms.join(" + "))
            }
        };
        self.names.insert(key, name.clone());
        Ok(name)
    }

    /// `x` as `base * factor` for `exp(x) = ex2(base * factor)`: the factor gathers `log2 e`,
    /// constants, negations, and factors and divisors of a level below `at` (computed there).
    fn peel(&mut self, x: &Expr, at: Level) -> Result<(Expr, Expr)> {
        let mut scale = std::f64::consts::LOG2_E;
        let mut factors: Vec<(Expr, bool)> = Vec::new(); // (value, divides)
        let mut e = x.clone();
        loop {
            let args = e.args().to_vec();
            let next = match *e.op() {
                Op::Unary(UnaryOp::Neg) => {
                    scale = -scale;
                    args[0].clone()
                }
                Op::Binary(op @ (BinaryOp::Mul | BinaryOp::Div)) => {
                    let (a, b) = (&args[0], &args[1]);
                    let (lo_a, lo_b) = (self.level(a).below(at), self.level(b).below(at));
                    let d = e.dim();
                    let div = op == BinaryOp::Div;
                    match (a.op(), b.op()) {
                        (Op::Const(k), _) if !div && b.dim() == d => {
                            scale *= k;
                            b.clone()
                        }
                        (_, Op::Const(k)) if a.dim() == d && *k != 0.0 => {
                            scale *= if div { 1.0 / k } else { *k };
                            a.clone()
                        }
                        _ if !div && lo_a && a.dim() == 1 && b.dim() == d => {
                            factors.push((a.clone(), false));
                            b.clone()
                        }
                        _ if lo_b && b.dim() == 1 && a.dim() == d => {
                            factors.push((b.clone(), div));
                            a.clone()
                        }
                        _ => break,
                    }
                }
                _ => break,
            };
            e = next;
        }
        let mut factor = Expr::constant(scale)?;
        for (f, divides) in factors {
            let op = if divides {
                BinaryOp::Div
            } else {
                BinaryOp::Mul
            };
            factor = Expr::binary(op, &factor, &f)?;
        }
        Ok((e, factor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formula::Var;

    fn var(cat: VarCat, pos: usize, dim: usize) -> Expr {
        Expr::var(Var { cat, pos, dim }).unwrap()
    }

    fn k(c: f64) -> Expr {
        Expr::constant(c).unwrap()
    }

    fn bin(op: BinaryOp, a: &Expr, b: &Expr) -> Expr {
        Expr::binary(op, a, b).unwrap()
    }

    /// Lines that compute something in a section.
    fn lines(code: &str) -> usize {
        code.lines().filter(|l| !l.trim().is_empty()).count()
    }

    /// The Gaussian sum with a constant and with sigma as a parameter: the same pair code
    /// (the parameter's part computed once, before everything), no division per pair.
    #[test]
    fn the_sigma_spelling_has_the_pair_code_of_the_constant_one() {
        let (x, y, b, s) = (
            var(VarCat::I, 0, 3),
            var(VarCat::J, 1, 3),
            var(VarCat::J, 2, 1),
            var(VarCat::P, 3, 1),
        );
        let d = Expr::sqdist(&x, &y).unwrap();
        let constant = bin(
            BinaryOp::Mul,
            &bin(BinaryOp::Mul, &d.neg(), &k(0.5)).exp(),
            &b,
        );
        let two_s2 = bin(BinaryOp::Mul, &Expr::unary(UnaryOp::Square, &s), &k(2.0));
        let sigma = bin(
            BinaryOp::Mul,
            &bin(BinaryOp::Div, &d.neg(), &two_s2).exp(),
            &b,
        );
        for tc in ["float", "double"] {
            let c = Sections::new(&constant, 4, &[], tc).unwrap();
            let p = Sections::new(&sigma, 4, &[], tc).unwrap();
            let pair = &p.code[Level::Pair as usize];
            assert_eq!(
                lines(&c.code[Level::Pair as usize]),
                lines(pair),
                "{tc}:\n{pair}"
            );
            assert!(
                !pair.contains(" / ") && !pair.contains("lk_inv"),
                "{tc}:\n{pair}"
            );
            assert_eq!((c.slots, p.slots[0]), ([0, 0, 0], 1), "{tc}");
            assert!(p.code[Level::Param as usize].contains("a3[0]"));
            // The exponential in f32 is one product and the exp2 unit.
            assert_eq!(
                tc == "float",
                pair.contains("lk_ex2(") && !pair.contains("lk_exp(")
            );
        }
    }

    /// Row-only and term-only parts go to their sections, and only the components read are
    /// computed.
    #[test]
    fn subexpressions_are_computed_at_the_level_of_what_they_read() {
        let (x, y, b, s) = (
            var(VarCat::I, 0, 3),
            var(VarCat::J, 1, 3),
            var(VarCat::J, 2, 1),
            var(VarCat::P, 3, 1),
        );
        // exp(-|x|^2 s) * sqrt(|y|^2 + 1) * b / s + Elem(x * y, 1)
        let row = bin(BinaryOp::Mul, &Expr::sqnorm2(&x).neg(), &s).exp();
        let term = Expr::unary(
            UnaryOp::Sqrt,
            &bin(BinaryOp::Add, &Expr::sqnorm2(&y), &k(1.0)),
        );
        let f = bin(
            BinaryOp::Div,
            &bin(BinaryOp::Mul, &bin(BinaryOp::Mul, &row, &term), &b),
            &s,
        );
        let xy = Expr::new(Op::Elem(1), vec![bin(BinaryOp::Mul, &x, &y)]).unwrap();
        let f = bin(BinaryOp::Add, &f, &xy);
        let sec = Sections::new(&f, 4, &[], "float").unwrap();
        let [param, row_code, term_code, pair] = &sec.code;
        assert!(param.contains("lk_inv(a3[0])"), "{param}");
        assert!(
            row_code.contains("lk_ex2(") && row_code.contains("a0[2]"),
            "{row_code}"
        );
        assert!(
            term_code.contains("sqrt") && term_code.contains("a1[2]"),
            "{term_code}"
        );
        assert!(!pair.contains("sqrt") && !pair.contains("lk_ex2") && !pair.contains(" / "));
        // Only component 1 of x * y is computed, in the pair section.
        assert!(
            pair.contains("a0[1] * a1[1]") && !pair.contains("a0[0] * a1[0]"),
            "{pair}"
        );
        // 1 / s and the exponent's factor -s log2(e) (param), the exponential (row), the root (term).
        assert_eq!(sec.slots, [2, 1, 1]);
        assert_eq!(sec.out.len(), 1);
    }
}
