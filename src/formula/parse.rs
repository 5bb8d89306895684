//! The string syntax of formulas: a hand-written recursive-descent parser.
//!
//! The syntax is KeOps-like: `Exp(-SqDist(x, y)) * b`, infix `+ - * /`, unary minus, decimal
//! constants, named arguments bound by the caller, and `Vi(pos,dim)` / `Vj(pos,dim)` /
//! `Pm(pos,dim)` leaves (the canonical printed form, which parses back to the same formula).
//! It builds through the same constructors as the Rust API, so dimension rules are checked in
//! one place; errors keep the source and the byte span, and print the column with a marker.
//! Unknown names are errors; nothing is evaluated.

use super::expr::Expr;
use super::ops::{BinaryOp, Op, TernaryOp, UnaryOp, Var, VarCat};

pub use crate::error::ParseError;

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Num(f64, bool),
    Ident(String),
    Punct(char),
    End,
}

struct Token {
    tok: Tok,
    start: usize,
    end: usize,
}

fn tokenize(src: &str) -> Result<Vec<Token>, ParseError> {
    let bytes = src.as_bytes();
    let mut toks = Vec::new();
    let mut i = 0;
    let err = |msg: String, s: usize, e: usize| ParseError {
        message: msg,
        source: src.to_string(),
        span: (s, e),
    };
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c.is_ascii_digit()
            || (c == b'.' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            let start = i;
            let mut is_int = true;
            while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
                is_int &= bytes[i] != b'.';
                i += 1;
            }
            if i < bytes.len() && (bytes[i] == b'e' || bytes[i] == b'E') {
                is_int = false;
                i += 1;
                if i < bytes.len() && (bytes[i] == b'+' || bytes[i] == b'-') {
                    i += 1;
                }
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
            }
            let text = &src[start..i];
            let v: f64 = text
                .parse()
                .map_err(|_| err(format!("malformed number '{text}'"), start, i))?;
            toks.push(Token {
                tok: Tok::Num(v, is_int),
                start,
                end: i,
            });
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            toks.push(Token {
                tok: Tok::Ident(src[start..i].to_string()),
                start,
                end: i,
            });
        } else if matches!(c, b'(' | b')' | b',' | b'+' | b'-' | b'*' | b'/') {
            toks.push(Token {
                tok: Tok::Punct(c as char),
                start: i,
                end: i + 1,
            });
            i += 1;
        } else {
            let ch = src[i..].chars().next().unwrap_or('?');
            return Err(err(
                format!("unexpected character '{ch}'"),
                i,
                i + ch.len_utf8(),
            ));
        }
    }
    toks.push(Token {
        tok: Tok::End,
        start: src.len(),
        end: src.len(),
    });
    Ok(toks)
}

/// Maximum nesting depth, so that a hostile string cannot overflow the stack.
const MAX_DEPTH: usize = 256;

struct Parser<'a> {
    src: &'a str,
    toks: Vec<Token>,
    pos: usize,
    names: &'a [(&'a str, Expr)],
    depth: usize,
}

/// Parses a formula string; `names` binds identifiers to formulas (usually variables).
///
/// ```
/// use lazy_kernels::formula::{parse, Expr, Var, VarCat};
/// let x = Expr::var(Var { cat: VarCat::I, pos: 0, dim: 2 })?;
/// let y = Expr::var(Var { cat: VarCat::J, pos: 1, dim: 2 })?;
/// let f = parse("Exp(-SqDist(x, y) / 2.0)", &[("x", x), ("y", y)])?;
/// assert_eq!(f.to_string(), "Exp(-Sum(Square(Vi(0,2) - Vj(1,2))) / 2.0)");
/// assert_eq!(parse(&f.to_string(), &[])?, f); // the canonical form round-trips
/// # Ok::<(), lazy_kernels::Error>(())
/// ```
pub fn parse(src: &str, names: &[(&str, Expr)]) -> Result<Expr, ParseError> {
    let toks = tokenize(src)?;
    let mut p = Parser {
        src,
        toks,
        pos: 0,
        names,
        depth: 0,
    };
    let e = p.expr()?;
    let t = p.peek_token();
    if t.tok != Tok::End {
        let (s, en) = (t.start, t.end);
        return Err(p.err_at("unexpected text after the end of the formula", s, en));
    }
    Ok(e)
}

impl Parser<'_> {
    fn peek_token(&self) -> &Token {
        &self.toks[self.pos]
    }

    fn peek(&self) -> &Tok {
        &self.toks[self.pos].tok
    }

    fn next(&mut self) -> &Token {
        let t = &self.toks[self.pos];
        if self.pos + 1 < self.toks.len() {
            self.pos += 1;
        }
        t
    }

    fn err_at(&self, msg: impl Into<String>, start: usize, end: usize) -> ParseError {
        ParseError {
            message: msg.into(),
            source: self.src.to_string(),
            span: (start, end),
        }
    }

    fn expect(&mut self, c: char, what: &str) -> Result<(), ParseError> {
        let t = self.next();
        if t.tok == Tok::Punct(c) {
            Ok(())
        } else {
            let (s, e, desc) = (t.start, t.end, describe(&t.tok));
            Err(self.err_at(format!("expected '{c}' {what}, found {desc}"), s, e))
        }
    }

    fn enter(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            let t = self.peek_token();
            return Err(self.err_at(
                format!("formula nested more than {MAX_DEPTH} levels deep"),
                t.start,
                t.end,
            ));
        }
        Ok(())
    }

    fn expr(&mut self) -> Result<Expr, ParseError> {
        self.enter()?;
        let start = self.peek_token().start;
        let mut lhs = self.term()?;
        while let Tok::Punct(c @ ('+' | '-')) = *self.peek() {
            self.next();
            let rhs = self.term()?;
            let op = if c == '+' {
                BinaryOp::Add
            } else {
                BinaryOp::Sub
            };
            let end = self.toks[self.pos.saturating_sub(1)].end;
            lhs =
                Expr::binary(op, &lhs, &rhs).map_err(|e| self.err_at(e.to_string(), start, end))?;
        }
        self.depth -= 1;
        Ok(lhs)
    }

    fn term(&mut self) -> Result<Expr, ParseError> {
        let start = self.peek_token().start;
        let mut lhs = self.unary()?;
        while let Tok::Punct(c @ ('*' | '/')) = *self.peek() {
            self.next();
            let rhs = self.unary()?;
            let op = if c == '*' {
                BinaryOp::Mul
            } else {
                BinaryOp::Div
            };
            let end = self.toks[self.pos.saturating_sub(1)].end;
            lhs =
                Expr::binary(op, &lhs, &rhs).map_err(|e| self.err_at(e.to_string(), start, end))?;
        }
        Ok(lhs)
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        if *self.peek() == Tok::Punct('-') {
            self.next();
            // `-(` is one level, counted by the parenthesis: the printer writes `--x` as
            // `-(-x)`, which must parse back within the depth that `--x` took.
            let counted = *self.peek() != Tok::Punct('(');
            if counted {
                self.enter()?;
            }
            let e = self.unary()?;
            if counted {
                self.depth -= 1;
            }
            return Ok(e.neg());
        }
        self.atom()
    }

    fn atom(&mut self) -> Result<Expr, ParseError> {
        let t = self.next();
        let (start, end) = (t.start, t.end);
        match t.tok.clone() {
            Tok::Num(v, _) => Expr::constant(v).map_err(|e| self.err_at(e.to_string(), start, end)),
            Tok::Punct('(') => {
                let e = self.expr()?;
                self.expect(')', "to close the parenthesis")?;
                Ok(e)
            }
            Tok::Ident(name) => {
                if *self.peek() == Tok::Punct('(') {
                    self.call(&name, start, end)
                } else if let Some((_, e)) = self.names.iter().find(|(n, _)| *n == name) {
                    Ok(e.clone())
                } else {
                    let known: Vec<&str> = self.names.iter().map(|(n, _)| *n).collect();
                    Err(self.err_at(
                        format!("unknown name '{name}' (bound names: {known:?})"),
                        start,
                        end,
                    ))
                }
            }
            other => Err(self.err_at(
                format!(
                    "expected a number, a name or '(', found {}",
                    describe(&other)
                ),
                start,
                end,
            )),
        }
    }

    /// An argument that must be an integer literal (possibly negative).
    fn int_arg(&mut self, fname: &str) -> Result<i64, ParseError> {
        let neg = if *self.peek() == Tok::Punct('-') {
            self.next();
            true
        } else {
            false
        };
        let t = self.next();
        let (s, e) = (t.start, t.end);
        match t.tok {
            Tok::Num(v, true) if v <= i32::MAX as f64 => {
                Ok(if neg { -(v as i64) } else { v as i64 })
            }
            _ => Err(self.err_at(format!("{fname} expects an integer literal here"), s, e)),
        }
    }

    fn nonneg_arg(&mut self, fname: &str) -> Result<usize, ParseError> {
        let start = self.peek_token().start;
        let v = self.int_arg(fname)?;
        let end = self.toks[self.pos.saturating_sub(1)].end;
        usize::try_from(v).map_err(|_| {
            self.err_at(
                format!("{fname} expects a non-negative integer here, got {v}"),
                start,
                end,
            )
        })
    }

    fn call(&mut self, name: &str, start: usize, name_end: usize) -> Result<Expr, ParseError> {
        self.expect('(', "after the function name")?;
        let sig = signature(name)
            .ok_or_else(|| self.err_at(format!("unknown function '{name}'"), start, name_end))?;
        // A call without formula arguments (a leaf `Vi(0,3)`) recurses no further, so it is no
        // level: the printer writes a bound name as such a leaf, which must parse back within
        // the depth that the name took.
        let nested = sig.iter().any(|a| matches!(a, Arg::Formula));
        if nested {
            self.enter()?;
        }
        let mut formulas = Vec::new();
        let mut ints = Vec::new();
        for (k, kind) in sig.iter().enumerate() {
            if k > 0 {
                let what = format!("between the arguments of {name} (it takes {})", sig.len());
                self.expect(',', &what)?;
            }
            match kind {
                Arg::Formula => formulas.push(self.expr()?),
                Arg::Int => ints.push(self.int_arg(name)?),
                Arg::Index => ints.push(self.nonneg_arg(name)? as i64),
            }
        }
        let what = format!("to close {name}(..) (it takes {} arguments)", sig.len());
        self.expect(')', &what)?;
        if nested {
            self.depth -= 1;
        }
        let end = self.toks[self.pos.saturating_sub(1)].end;
        build(name, &formulas, &ints).map_err(|e| self.err_at(e.to_string(), start, end))
    }
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Num(v, _) => format!("number {v}"),
        Tok::Ident(s) => format!("'{s}'"),
        Tok::Punct(c) => format!("'{c}'"),
        Tok::End => "the end of the formula".to_string(),
    }
}

#[derive(Clone, Copy)]
enum Arg {
    Formula,
    Int,
    Index,
}

/// The unary op without payload called `name` (`Relu` is accepted for `ReLU`).
fn simple_unary(name: &str) -> Option<UnaryOp> {
    UnaryOp::ALL
        .iter()
        .copied()
        .filter(|u| u.payload().is_none())
        .find(|u| u.name() == name || (name == "Relu" && *u == UnaryOp::Relu))
}

/// The argument kinds of each function name, or `None` for an unknown name.
fn signature(name: &str) -> Option<&'static [Arg]> {
    use Arg::*;
    if name == "Pow" {
        return Some(&[Formula, Int]);
    }
    if simple_unary(name).is_some() {
        return Some(&[Formula]);
    }
    if BinaryOp::ALL.iter().any(|b| b.name() == name) {
        return Some(&[Formula, Formula]);
    }
    if TernaryOp::ALL.iter().any(|t| t.name() == name) {
        return Some(&[Formula, Formula, Formula]);
    }
    Some(match name {
        "Vi" | "Vj" | "Pm" => &[Index, Index],
        "Sum" | "SqNorm2" | "Norm2" | "Normalize" => &[Formula],
        "SqDist" | "Dot" | "Scalprod" | "Concat" | "MatVecMult" | "WeightedSqNorm" => {
            &[Formula, Formula]
        }
        "WeightedSqDist" => &[Formula, Formula, Formula],
        "Elem" => &[Formula, Index],
        "Extract" => &[Formula, Index, Index],
        _ => return None,
    })
}

fn build(name: &str, f: &[Expr], ints: &[i64]) -> crate::error::Result<Expr> {
    let leaf = |cat| {
        Expr::var(Var {
            cat,
            pos: ints[0] as usize,
            dim: ints[1] as usize,
        })
    };
    if let Some(u) = simple_unary(name) {
        return Ok(Expr::unary(u, &f[0]));
    }
    if let Some(b) = BinaryOp::ALL.iter().find(|b| b.name() == name) {
        return Expr::binary(*b, &f[0], &f[1]);
    }
    if let Some(t) = TernaryOp::ALL.iter().find(|t| t.name() == name) {
        return Expr::ternary(*t, &f[0], &f[1], &f[2]);
    }
    match name {
        "Pow" => {
            let n = i32::try_from(ints[0]).map_err(|_| {
                crate::error::invalid("Pow", format!("exponent {} is out of range", ints[0]))
            })?;
            Ok(Expr::unary(UnaryOp::Pow(n), &f[0]))
        }
        "Vi" => leaf(VarCat::I),
        "Vj" => leaf(VarCat::J),
        "Pm" => leaf(VarCat::P),
        "Sum" => Ok(f[0].sum()),
        "SqNorm2" => Ok(Expr::sqnorm2(&f[0])),
        "Norm2" => Ok(Expr::norm2(&f[0])),
        "Normalize" => Ok(Expr::normalize(&f[0])),
        "SqDist" => Expr::sqdist(&f[0], &f[1]),
        "Dot" | "Scalprod" => Expr::dot(&f[0], &f[1]),
        "WeightedSqNorm" => Expr::weighted_sqnorm(&f[0], &f[1]),
        "WeightedSqDist" => Expr::weighted_sqdist(&f[0], &f[1], &f[2]),
        "Concat" => Expr::new(Op::Concat, vec![f[0].clone(), f[1].clone()]),
        "MatVecMult" => Expr::new(Op::MatVecMult, vec![f[0].clone(), f[1].clone()]),
        "Elem" => Expr::new(Op::Elem(ints[0] as usize), vec![f[0].clone()]),
        "Extract" => Expr::new(
            Op::Extract {
                start: ints[0] as usize,
                len: ints[1] as usize,
            },
            vec![f[0].clone()],
        ),
        _ => Err(crate::error::invalid(
            "parse",
            format!("unknown function '{name}'"),
        )),
    }
}
