//! The crate's error type.
//!
//! Every public function returns [`candle_core::Result`], as DESIGN.md asks, so that our calls
//! compose with Candle's `?`. Our own failures are described by [`Error`], whose variants name
//! the operation and the offending values, and are converted into [`candle_core::Error`] with
//! their message intact. A formula string that does not parse gives a [`ParseError`] (defined
//! here, re-exported by [`crate::formula::parse`](mod@crate::formula::parse)).
//!
//! This module is a leaf: it imports nothing from the rest of the crate, so that every layer
//! can use it.

use std::fmt;

/// What went wrong inside lazy-kernels.
///
/// Converted into [`candle_core::Error`] (through `From`), so user code sees a
/// `candle_core::Result`; the message always names the operation and the values involved.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Operands of a formula operation have incompatible dimensions.
    #[error("{op}: dimension mismatch: {detail}")]
    DimMismatch {
        /// The operation being built.
        op: &'static str,
        /// Which dimensions disagreed.
        detail: String,
    },
    /// An argument is outside the domain an operation accepts.
    #[error("{op}: invalid argument: {detail}")]
    InvalidArgument {
        /// The operation being built or run.
        op: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// A tensor bound into a formula does not have an accepted shape.
    #[error("{op}: bad shape: {detail}")]
    Shape {
        /// The operation that received the tensor.
        op: &'static str,
        /// The expected and actual shapes.
        detail: String,
    },
    /// Tensors of different dtypes, or an unsupported dtype.
    #[error("{op}: dtype error: {detail}")]
    DType {
        /// The operation that received the tensors.
        op: &'static str,
        /// The dtypes involved.
        detail: String,
    },
    /// Tensors on different devices.
    #[error("{op}: device mismatch: {detail}")]
    Device {
        /// The operation that received the tensors.
        op: &'static str,
        /// The devices involved.
        detail: String,
    },
    /// An allocation would not fit in the memory the machine or the device reports as
    /// available (see [`crate::backend::memory`]); `detail` gives the size needed.
    #[error("{op}: out of memory: {detail}")]
    OutOfMemory {
        /// The operation that would allocate.
        op: &'static str,
        /// What would be allocated, its size, and what is available.
        detail: String,
    },
    /// A formula string could not be parsed.
    #[error("{0}")]
    Parse(#[from] ParseError),
    /// A capability that exists in the design but is not built yet.
    #[error("{what} is not implemented yet: {detail}")]
    NotImplemented {
        /// The missing capability.
        what: &'static str,
        /// Where it is planned, or what to use instead.
        detail: String,
    },
    /// A device backend failed: compiling a generated kernel, or launching it.
    #[error("{what} failed: {detail}")]
    Backend {
        /// The failing step (e.g. `NVRTC`).
        what: &'static str,
        /// What happened, with the compiler's log where there is one.
        detail: String,
    },
}

impl From<Error> for candle_core::Error {
    fn from(e: Error) -> Self {
        candle_core::Error::wrap(e)
    }
}

impl Error {
    /// The same error with `extra` appended to its detail (for context found by a caller: the
    /// operands of a formula op whose error is deferred to the reduction).
    pub(crate) fn with_detail(mut self, extra: &str) -> Error {
        match &mut self {
            Error::DimMismatch { detail, .. }
            | Error::InvalidArgument { detail, .. }
            | Error::Shape { detail, .. }
            | Error::DType { detail, .. }
            | Error::Device { detail, .. }
            | Error::OutOfMemory { detail, .. }
            | Error::NotImplemented { detail, .. }
            | Error::Backend { detail, .. } => {
                detail.push_str("; ");
                detail.push_str(extra);
            }
            Error::Parse(_) => {}
        }
        self
    }
}

/// Results inside the crate, before conversion into `candle_core::Result`.
pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn dim_mismatch(op: &'static str, detail: impl Into<String>) -> Error {
    Error::DimMismatch {
        op,
        detail: detail.into(),
    }
}

pub(crate) fn invalid(op: &'static str, detail: impl Into<String>) -> Error {
    Error::InvalidArgument {
        op,
        detail: detail.into(),
    }
}

impl From<ParseError> for candle_core::Error {
    fn from(e: ParseError) -> Self {
        candle_core::Error::wrap(Error::Parse(e))
    }
}

/// A formula string that could not be parsed, with the location of the problem (made by
/// [`crate::formula::parse()`], which also re-exports it).
///
/// Its `Display` shows the message, the source, and a marker under the offending span:
///
/// ```
/// use lazy_kernels::formula::parse;
/// let err = parse("Exp(x) + Foo(x)", &[("x", lazy_kernels::formula::Expr::constant(1.0)?)])
///     .unwrap_err();
/// assert_eq!(err.column(), 10);
/// assert!(err.to_string().contains("unknown function 'Foo'"));
/// # Ok::<(), lazy_kernels::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// What is wrong.
    pub(crate) message: String,
    /// The whole formula string.
    pub(crate) source: String,
    /// Byte range of the offending text in `source`.
    pub(crate) span: (usize, usize),
}

impl ParseError {
    /// What is wrong.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// 1-based column (in characters) where the problem starts.
    pub fn column(&self) -> usize {
        self.source[..self.span.0].chars().count() + 1
    }

    /// Byte range of the offending text in the source.
    pub fn span(&self) -> (usize, usize) {
        self.span
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let col = self.column();
        let width = self.source[self.span.0..self.span.1].chars().count().max(1);
        writeln!(f, "formula parse error at column {col}: {}", self.message)?;
        writeln!(f, "  {}", self.source)?;
        write!(f, "  {}{}", " ".repeat(col - 1), "^".repeat(width))
    }
}

impl std::error::Error for ParseError {}
