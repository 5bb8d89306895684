//! The machinery behind the op table of [`super::ops`]: the macros that turn one table row per
//! op into the op enums and everything every layer reads from them.
//!
//! The tables themselves are `unary_table!`, `binary_table!` and `ternary_table!` in
//! [`super::ops`]: each hands its rows to a *consumer* macro (the "x-macro" pattern). The
//! consumers here define the enums and their methods; `crate::lazy` has one more consumer that
//! defines [`crate::LazyTensor`]'s named methods from the same rows. A row's fields, in order:
//!
//! - `method: name,`: the [`crate::LazyTensor`] method (`_` for none: `Neg` and the
//!   arithmetic operators are Rust's operators);
//! - `name: "Name",`: the printed and parsed name;
//! - `domain: [..],`: per argument, the [`Domain`](super::ops::Domain) the tests sample;
//! - `apply: |x, ..| ..,`: the scalar semantics, generic over `T: Real` and `const FMA: bool`,
//!   vectorised by the CPU backend (it is inlined into SIMD loops: selects, no branches);
//! - `large: |x| ..,` (unary, optional): the value from the standard library, used where `|x|`
//!   exceeds `T::TRIG_LIMIT` (the vectorised trigonometric functions are accurate below it);
//! - `reference: |x, ..| ..,`: the mathematical definition in `f64`, from `std` and `libm`
//!   only: the independent reference every test compares the backends with;
//! - `cuda: "..",`: the CUDA C expression, with `{a}`, `{b}`, `{c}` the arguments, `{T}` the
//!   compute type (`float` or `double`), `{f}` the suffix of C's math functions (`f` for
//!   `float`, empty for `double`) and `{n}` the integer payload; the same text is compiled
//!   as host C++ by the tests (after `cuda/lk_math.cuh`);
//! - `vjp: |x, .., out, adj| ..`: the derivative, as a vector-Jacobian product returning the
//!   adjoint of each argument (`None`: exactly zero).

/// Fills a CUDA C template of the op table (see the module doc).
pub(crate) fn cuda_template(
    template: &str,
    args: &[&str],
    tc: &str,
    payload: Option<i64>,
) -> String {
    let suffix = if tc == "float" { "f" } else { "" };
    let mut s = template.replace("{T}", tc).replace("{f}", suffix);
    if let Some(n) = payload {
        s = s.replace("{n}", &n.to_string());
    }
    for (name, a) in ["{a}", "{b}", "{c}"].iter().zip(args) {
        s = s.replace(name, a);
    }
    s
}

/// Defines [`super::ops::UnaryOp`] from the rows of `unary_table!`.
macro_rules! define_unary {
    ($(
        $(#[doc = $doc:literal])*
        $V:ident $(($p:ident: $pt:ty = $sample:expr))? {
            method: $method:tt,
            name: $name:literal,
            domain: [$domain:expr],
            apply: |$x:ident| $apply:expr,
            $(large: |$lx:ident| $large:expr,)?
            reference: |$rx:ident| $reference:expr,
            cuda: $cuda:literal,
            vjp: |$vx:ident, $vout:ident, $va:ident| $vjp:expr $(,)?
        }
    ),* $(,)?) => {
        /// Component-wise operations of one argument (the rows of the op table, see
        /// [`crate::formula::ops`]).
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
        pub enum UnaryOp {
            $($(#[doc = $doc])* $V $(($pt))?,)*
        }

        impl UnaryOp {
            /// Every unary op (an op with an integer payload appears once, with a sample
            /// payload), for tests and for the parser's name table.
            pub const ALL: &'static [UnaryOp] = &[$(UnaryOp::$V $(($sample))?),*];

            /// The name used by the printer and the parser.
            pub fn name(self) -> &'static str {
                match self {
                    $(UnaryOp::$V $(($p))? => { $(let _ = $p;)? $name })*
                }
            }

            /// The op's integer payload (written as a second argument), if it has one.
            pub fn payload(self) -> Option<i64> {
                match self {
                    $(UnaryOp::$V $(($p))? => None $(.or(Some(i64::from($p))))?,)*
                }
            }

            /// The domain the tests sample the argument from.
            pub fn domain(self) -> Domain {
                match self {
                    $(UnaryOp::$V $(($p))? => { $(let _ = $p;)? $domain })*
                }
            }

            /// The scalar semantics, inlined into the backends' vectorised loops.
            #[inline(always)]
            pub fn apply<T: Real, const FMA: bool>(self, x: T) -> T {
                self.with_fn::<T, FMA, _>(ApplyOne(x))
            }

            /// Calls `k` with the op's scalar function as a closure of its own type, so that
            /// a loop over a tile is compiled (and vectorised) once per op.
            #[inline(always)]
            pub fn with_fn<T: Real, const FMA: bool, K: UnaryKernel<T>>(self, k: K) -> K::Output {
                match self {
                    $(UnaryOp::$V $(($p))? => k.run(
                        move |$x: T| -> T { $apply }
                    ),)*
                }
            }

            /// For ops whose vectorised form is accurate only for `|x| <= T::TRIG_LIMIT`: the
            /// function to recompute the other arguments with (from the standard library).
            #[inline(always)]
            #[allow(unused_variables)]
            pub fn large_arg<T: Real>(self) -> Option<fn(T) -> T> {
                match self {
                    $(UnaryOp::$V $(($p))? => {
                        $(let _ = $p;)?
                        None $(.or(Some((|$lx: T| -> T { $large }) as fn(T) -> T)))?
                    })*
                }
            }

            /// The mathematical definition in `f64` (from `std` and `libm`): the tests'
            /// independent reference.
            pub fn reference(self, x: f64) -> f64 {
                match self {
                    $(UnaryOp::$V $(($p))? => { let $rx = x; $reference })*
                }
            }

            /// The CUDA C expression of the op on the C expression `a`, in the compute type
            /// `tc` (`float` or `double`).
            pub fn cuda(self, a: &str, tc: &str) -> String {
                match self {
                    $(UnaryOp::$V $(($p))? => {
                        let payload: Option<i64> = None $(.or(Some(i64::from($p))))?;
                        super::table::cuda_template($cuda, &[a], tc, payload)
                    })*
                }
            }

            /// The adjoint of `x` given the adjoint `a` of `out = self(x)` (`None`: zero).
            pub(crate) fn vjp(self, x: &Expr, out: &Expr, a: &Expr) -> Option<Expr> {
                #[allow(unused_variables)]
                match self {
                    $(UnaryOp::$V $(($p))? => {
                        let ($vx, $vout, $va) = (x, out, a);
                        $vjp
                    })*
                }
            }
        }
    };
}

/// Defines [`super::ops::BinaryOp`] from the rows of `binary_table!`.
macro_rules! define_binary {
    ($(
        $(#[doc = $doc:literal])*
        $V:ident {
            method: $method:tt,
            name: $name:literal,
            infix: $infix:expr,
            domain: [$da:expr, $db:expr],
            apply: |$x:ident, $y:ident| $apply:expr,
            reference: |$rx:ident, $ry:ident| $reference:expr,
            cuda: $cuda:literal,
            vjp: |$vx:ident, $vy:ident, $vout:ident, $va:ident| $vjp:expr $(,)?
        }
    ),* $(,)?) => {
        /// Component-wise operations of two arguments; a 1-component argument is broadcast
        /// against the other (the rows of the op table, see [`crate::formula::ops`]).
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
        pub enum BinaryOp {
            $($(#[doc = $doc])* $V,)*
        }

        impl BinaryOp {
            /// Every binary op, for tests and for the parser's name table.
            pub const ALL: &'static [BinaryOp] = &[$(BinaryOp::$V),*];

            /// The name used by the printer (for the function-call form) and the parser.
            pub fn name(self) -> &'static str {
                match self {
                    $(BinaryOp::$V => $name,)*
                }
            }

            /// The infix symbol of the four arithmetic operators.
            pub fn infix(self) -> Option<char> {
                match self {
                    $(BinaryOp::$V => $infix,)*
                }
            }

            /// The domains the tests sample the two arguments from.
            pub fn domain(self) -> [Domain; 2] {
                match self {
                    $(BinaryOp::$V => [$da, $db],)*
                }
            }

            /// The scalar semantics, inlined into the backends' vectorised loops.
            #[inline(always)]
            pub fn apply<T: Real, const FMA: bool>(self, a: T, b: T) -> T {
                self.with_fn::<T, FMA, _>(ApplyTwo(a, b))
            }

            /// Calls `k` with the op's scalar function as a closure of its own type (see
            /// [`UnaryOp::with_fn`]).
            #[inline(always)]
            pub fn with_fn<T: Real, const FMA: bool, K: BinaryKernel<T>>(self, k: K) -> K::Output {
                match self {
                    $(BinaryOp::$V => k.run(
                        move |$x: T, $y: T| -> T { $apply }
                    ),)*
                }
            }

            /// The mathematical definition in `f64`: the tests' independent reference.
            pub fn reference(self, a: f64, b: f64) -> f64 {
                match self {
                    $(BinaryOp::$V => { let ($rx, $ry) = (a, b); $reference })*
                }
            }

            /// The CUDA C expression of the op on the C expressions `a` and `b`.
            pub fn cuda(self, a: &str, b: &str, tc: &str) -> String {
                match self {
                    $(BinaryOp::$V => super::table::cuda_template($cuda, &[a, b], tc, None),)*
                }
            }

            /// The adjoints of `x` and `y` given the adjoint `a` of `out = self(x, y)`.
            pub(crate) fn vjp(
                self,
                x: &Expr,
                y: &Expr,
                out: &Expr,
                a: &Expr,
            ) -> (Option<Expr>, Option<Expr>) {
                #[allow(unused_variables)]
                match self {
                    $(BinaryOp::$V => {
                        let ($vx, $vy, $vout, $va) = (x, y, out, a);
                        $vjp
                    })*
                }
            }
        }
    };
}

/// Defines [`super::ops::TernaryOp`] from the rows of `ternary_table!`.
macro_rules! define_ternary {
    ($(
        $(#[doc = $doc:literal])*
        $V:ident {
            method: $method:tt $(($mb:ident, $mc:ident))?,
            name: $name:literal,
            domain: [$da:expr, $db:expr, $dc:expr],
            apply: |$x:ident, $y:ident, $z:ident| $apply:expr,
            reference: |$rx:ident, $ry:ident, $rz:ident| $reference:expr,
            cuda: $cuda:literal,
            vjp: |$vx:ident, $vy:ident, $vz:ident, $vout:ident, $va:ident| $vjp:expr $(,)?
        }
    ),* $(,)?) => {
        /// Component-wise operations of three arguments, with broadcasting of 1-component
        /// arguments (the rows of the op table, see [`crate::formula::ops`]).
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
        pub enum TernaryOp {
            $($(#[doc = $doc])* $V,)*
        }

        impl TernaryOp {
            /// Every ternary op.
            pub const ALL: &'static [TernaryOp] = &[$(TernaryOp::$V),*];

            /// The name used by the printer and the parser.
            pub fn name(self) -> &'static str {
                match self {
                    $(TernaryOp::$V => $name,)*
                }
            }

            /// The domains the tests sample the three arguments from.
            pub fn domain(self) -> [Domain; 3] {
                match self {
                    $(TernaryOp::$V => [$da, $db, $dc],)*
                }
            }

            /// The scalar semantics, inlined into the backends' loops.
            #[inline(always)]
            pub fn apply<T: Real, const FMA: bool>(self, a: T, b: T, c: T) -> T {
                self.with_fn::<T, FMA, _>(ApplyThree(a, b, c))
            }

            /// Calls `k` with the op's scalar function as a closure of its own type (see
            /// [`UnaryOp::with_fn`]).
            #[inline(always)]
            pub fn with_fn<T: Real, const FMA: bool, K: TernaryKernel<T>>(self, k: K) -> K::Output {
                match self {
                    $(TernaryOp::$V => k.run(
                        move |$x: T, $y: T, $z: T| -> T { $apply }
                    ),)*
                }
            }

            /// The mathematical definition in `f64`: the tests' independent reference.
            pub fn reference(self, a: f64, b: f64, c: f64) -> f64 {
                match self {
                    $(TernaryOp::$V => { let ($rx, $ry, $rz) = (a, b, c); $reference })*
                }
            }

            /// The CUDA C expression of the op on the C expressions `a`, `b` and `c`.
            pub fn cuda(self, a: &str, b: &str, c: &str, tc: &str) -> String {
                match self {
                    $(TernaryOp::$V => super::table::cuda_template($cuda, &[a, b, c], tc, None),)*
                }
            }

            /// The adjoints of the three arguments given the adjoint `a` of
            /// `out = self(x, y, z)`.
            pub(crate) fn vjp(self, args: [&Expr; 3], out: &Expr, a: &Expr) -> [Option<Expr>; 3] {
                let [x, y, z] = args;
                #[allow(unused_variables)]
                match self {
                    $(TernaryOp::$V => {
                        let ($vx, $vy, $vz, $vout, $va) = (x, y, z, out, a);
                        $vjp
                    })*
                }
            }
        }
    };
}

pub(crate) use {define_binary, define_ternary, define_unary};
