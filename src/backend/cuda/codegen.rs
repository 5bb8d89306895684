//! Formula -> CUDA C: one self-contained source per (formula, reduction, dimensions, dtype).
//!
//! The source holds the fixed skeleton (`cuda/lk_math.cuh`, `cuda/lk_reduce.cuh`, inlined so
//! that NVRTC needs no include path) and two kernels:
//!
//! - `<name>_main`: each thread computes [`CudaKernel::rows_per_thread`] output rows. The
//!   formula is unrolled into scalars and split by what each part reads (`hoist.rs`): the
//!   parameters' part once per thread, the i-variables' part once per row, the j-variables'
//!   part once per term when the tile of `block` terms is staged in shared memory (next to the
//!   j-variables the pair code reads), the rest per pair. Whole tiles run an unrolled
//!   constant-trip loop; each term updates the rows' tile states in the compute type, the
//!   rare part of an update (a new maximum, an insertion) runs once per term for all the
//!   thread's rows (its lines end in `// lk-rare`, for `scripts/sass-budget.py`), and tile
//!   states are merged into each row's `f64` state (for `Sum`, a compensated sum of tile
//!   partials). With `gridDim.y == 1` it writes the outputs; otherwise block `y` reduces one
//!   chunk of the terms and writes its states (the 2D scheme, for few rows and many terms;
//!   [`CudaKernel::grid`]);
//! - `<name>_combine`: merges the chunk states of each row in order and writes the outputs.
//!
//! The states, tie and NaN rules are those of [`crate::reduction`], so both backends return
//! the same numbers. f16 and bf16 are read and written as such and computed in f32.

use std::fmt::Write;
use std::ops::Range;

use candle_core::DType;

use super::hoist::{Level, Sections};
use crate::error::{Error, Result, invalid};
use crate::formula::{Expr, VarCat};
use crate::reduction::CudaCode;
use crate::reduction::{Axis, Reduction, ReductionKind};

/// The scalar semantics of the ops (host and device).
pub const MATH_CUH: &str = include_str!("../../../cuda/lk_math.cuh");
/// Storage conversions (device only); the reduction states' helpers are added to it from
/// [`crate::reduction`] in every generated module.
pub const REDUCE_CUH: &str = include_str!("../../../cuda/lk_reduce.cuh");

/// Most threads per block of the main kernel.
const MAX_BLOCK: usize = 256;
/// Shared memory a tile may use (the static limit is 48 KiB).
const SHARED_BYTES: usize = 40 * 1024;

/// The element type of a kernel's inputs and value outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Storage {
    /// `float`.
    F32,
    /// `double`.
    F64,
    /// IEEE half precision, computed in `float`.
    F16,
    /// bfloat16, computed in `float`.
    BF16,
}

impl Storage {
    /// Every storage type.
    pub const ALL: [Storage; 4] = [Storage::F32, Storage::F64, Storage::F16, Storage::BF16];

    /// The storage type of a Candle dtype, or an error naming the dtype.
    pub fn from_dtype(d: DType) -> Result<Storage> {
        match d {
            DType::F32 => Ok(Storage::F32),
            DType::F64 => Ok(Storage::F64),
            DType::F16 => Ok(Storage::F16),
            DType::BF16 => Ok(Storage::BF16),
            other => Err(Error::DType {
                op: "CUDA reduction",
                detail: format!("{other:?} is not a float dtype (expected f32, f64, f16 or bf16)"),
            }),
        }
    }

    /// The C type of the kernels' input and value-output buffers.
    pub fn c_type(self) -> &'static str {
        match self {
            Storage::F32 => "float",
            Storage::F64 => "double",
            Storage::F16 => "lk_f16_t",
            Storage::BF16 => "lk_bf16_t",
        }
    }

    /// The C type the formula is computed in.
    pub fn compute(self) -> &'static str {
        match self {
            Storage::F64 => "double",
            Storage::F32 | Storage::F16 | Storage::BF16 => "float",
        }
    }

    /// Bytes of a value of the compute type.
    pub fn compute_bytes(self) -> usize {
        match self {
            Storage::F64 => 8,
            Storage::F32 | Storage::F16 | Storage::BF16 => 4,
        }
    }
}

/// A generated module: its source and what the launcher needs to know about it.
#[derive(Clone, Debug)]
pub struct CudaKernel {
    /// `lk_` and a hash of the source: the module name, and the prefix of its functions
    /// (`<name>_main`, `<name>_combine`).
    pub name: String,
    /// The complete CUDA C source.
    pub source: String,
    /// Threads per block of the main kernel (also the tile length).
    pub block: usize,
    /// Whether tiles are staged in shared memory (not when the `j`-variables are too wide).
    pub shared: bool,
    /// `f64` slots of a row's state.
    pub state_vals: usize,
    /// `i64` slots of a row's state.
    pub state_idx: usize,
    /// Value columns of the output.
    pub out_vals: usize,
    /// Index columns of the output.
    pub out_idx: usize,
    /// Output rows each thread of the main kernel computes: a block covers
    /// `block * rows_per_thread` rows, thread `t` has rows `base + t + r * block`.
    pub rows_per_thread: usize,
    /// Whether the module is a block plan's coefficient kernel `<name>_values` alone
    /// ([`generate_values`]), without main and combine kernels.
    pub values: bool,
    /// Whether the module is a block plan's: it then has the helpers of [`block_helpers`]
    /// (`<name>_sqnorms`, `<name>_distances`, `<name>_finish_matmul`).
    pub blocks: bool,
    /// Whether the module is a block-sparse plan's ([`generate_ranged`]): its main kernel
    /// takes the launch's descriptors ([`CudaKernel::ranged_grid`]).
    pub ranged: bool,
}

/// The block path's helper kernels, appended to every block-plan module (`LKNAME` is the
/// module's name, `TC` its compute type):
///
/// - `LKNAME_sqnorms(x, n, d, out)`: the squared norms of `n` points of `d` components,
///   summed in `double`;
/// - `LKNAME_distances(x, y, xn, yn, rows, terms, d, near, s)`: turns the block of inner
///   products `s` (`s[j * rows + i]`) of the points `x` (the launch's rows) and `y` (its
///   terms) into their squared distances `xn_i + yn_j - 2 s`, recomputed as `|x_i - y_j|^2`
///   (eight partial sums, as the CPU does) where that is below `near (xn_i + yn_j)`: the rule
///   of `crate::op::gram::NEAR`;
/// - `LKNAME_finish_matmul(out, u, csum, rows, e, v_sign, u_sign)`: the outputs of a matrix
///   product plan, `out = v_sign out + u_sign u_i csum_i` (`u` null: no `u` term).
pub fn block_helpers(tc: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "extern \"C\" __global__ void LKNAME_sqnorms(const {tc}* __restrict__ x, int n, int d, \
         {tc}* __restrict__ out) {{
const int r = blockIdx.x * blockDim.x + threadIdx.x;
if (r >= n) return;
double acc = 0.0;
for (int c = 0; c < d; ++c) {{ const double v = (double)x[(long long)r * d + c]; acc += v * v; }}
out[r] = ({tc})acc;
}}"
    );
    let _ = writeln!(
        s,
        "extern \"C\" __global__ void LKNAME_distances(const {tc}* __restrict__ x, \
         const {tc}* __restrict__ y, const {tc}* __restrict__ xn, const {tc}* __restrict__ yn, \
         int rows, int terms, int d, {tc} near, {tc}* __restrict__ s) {{
const long long n = (long long)rows * terms;
for (long long q = (long long)blockIdx.x * blockDim.x + threadIdx.x; q < n;
     q += (long long)gridDim.x * blockDim.x) {{
    const int i = (int)(q % rows);
    const long long j = q / rows;
    const {tc} scale = xn[i] + yn[j];
    {tc} e = scale - ({tc})2 * s[q];
    if (e < near * scale) {{
        const {tc}* a = x + (long long)i * d;
        const {tc}* b = y + j * d;
        {tc} acc[8] = {{0, 0, 0, 0, 0, 0, 0, 0}};
        int c = 0;
        for (; c + 8 <= d; c += 8) {{
#pragma unroll
            for (int k = 0; k < 8; ++k) {{ const {tc} t = a[c + k] - b[c + k]; acc[k] += t * t; }}
        }}
#pragma unroll
        for (int k = 0; k < 8; ++k) {{
            if (c + k < d) {{ const {tc} t = a[c + k] - b[c + k]; acc[k] += t * t; }}
        }}
        e = ({tc})0;
#pragma unroll
        for (int k = 0; k < 8; ++k) e += acc[k];
    }}
    s[q] = e;
}}
}}"
    );
    let _ = writeln!(
        s,
        "extern \"C\" __global__ void LKNAME_finish_matmul({tc}* __restrict__ out, \
         const {tc}* __restrict__ u, const {tc}* __restrict__ csum, int rows, int e, \
         {tc} v_sign, {tc} u_sign) {{
const long long n = (long long)rows * e;
for (long long q = (long long)blockIdx.x * blockDim.x + threadIdx.x; q < n;
     q += (long long)gridDim.x * blockDim.x) {{
    {tc} v = v_sign * out[q];
    if (u != 0) v += u_sign * u[q] * csum[q / e];
    out[q] = v;
}}
}}"
    );
    s
}

/// How a reduction is launched: `blocks_x * chunks` blocks of [`CudaKernel::block`] threads,
/// block `(x, y)` reducing the terms `y * chunk .. min(terms, (y + 1) * chunk)` for its rows;
/// with `chunks > 1` the combine kernel merges the chunks' states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grid {
    /// Blocks along the rows.
    pub blocks_x: usize,
    /// Chunks of terms (blocks along `y`).
    pub chunks: usize,
    /// Terms per chunk, a multiple of the tile.
    pub chunk: usize,
}

impl CudaKernel {
    /// The launch of this kernel for `rows` output rows and `terms` terms on a device of `sms`
    /// multiprocessors: the 2D scheme (the terms split into chunks, one grid row of blocks
    /// per chunk) when the rows alone would leave most of the device idle.
    ///
    /// ```
    /// use lazy_kernels::backend::cuda::{generate, Storage};
    /// use lazy_kernels::formula::{Expr, Var, VarCat};
    /// use lazy_kernels::ReductionKind;
    /// let x = Expr::var(Var { cat: VarCat::I, pos: 0, dim: 3 })?;
    /// let y = Expr::var(Var { cat: VarCat::J, pos: 1, dim: 3 })?;
    /// let f = Expr::sqdist(&x, &y)?;
    /// let k = generate(&f, ReductionKind::Sum, &[(VarCat::I, 3), (VarCat::J, 3)], Storage::F32)?;
    /// let g = k.grid(1_000_000, 1_000_000, 132);
    /// assert_eq!((g.chunks, g.blocks_x * k.block * k.rows_per_thread >= 1_000_000), (1, true));
    /// assert!(k.grid(100, 1_000_000, 132).chunks > 1); // few rows: the terms are split
    /// # Ok::<(), lazy_kernels::Error>(())
    /// ```
    pub fn grid(&self, rows: usize, terms: usize, sms: usize) -> Grid {
        let blocks_x = rows.div_ceil(self.block * self.rows_per_thread).max(1);
        let chunk = self.chunk_length(blocks_x, terms, sms);
        Grid {
            blocks_x,
            chunks: terms.div_ceil(chunk),
            chunk,
        }
    }

    /// Terms per chunk of a launch of `blocks_x` blocks along the rows whose blocks reduce
    /// (at most) `terms` terms each, on `sms` multiprocessors: all of them, or, when the
    /// blocks alone would leave most of the device idle, chunks of at least four tiles, about
    /// `4 sms` blocks in all (the 2D scheme). A multiple of the tile.
    fn chunk_length(&self, blocks_x: usize, terms: usize, sms: usize) -> usize {
        let block = self.block;
        if blocks_x < 2 * sms && terms > 4 * block {
            let want = (4 * sms)
                .div_ceil(blocks_x)
                .min(terms.div_ceil(4 * block))
                .min(65535);
            terms.div_ceil(want).div_ceil(block) * block
        } else {
            terms.div_ceil(block).max(1) * block
        }
    }

    /// The launch of a block-sparse module ([`generate_ranged`]) for `rows` output rows and
    /// `terms` terms on a device of `sms` multiprocessors, whose rows `groups[g].0` (sorted,
    /// disjoint) reduce over the intervals of terms `groups[g].1` (sorted, disjoint; every
    /// other row over none): blocks of at most `block * rows_per_thread` rows, each inside one
    /// group (KeOps' `GpuReduc1D_ranges` aligns its blocks to the row intervals the same
    /// way), covering every row in order, so that the rows of no group get the reduction over
    /// zero terms from their own blocks. When the blocks are too few to fill the device,
    /// the kept terms of each block are split into `chunks` of `chunk` terms as in
    /// [`CudaKernel::grid`] (sized by the block that keeps the most terms; a chunk past a
    /// block's terms writes the initial states), merged by the combine kernel.
    ///
    /// ```
    /// use lazy_kernels::backend::cuda::{generate_ranged, Storage};
    /// use lazy_kernels::formula::{Expr, Var, VarCat};
    /// use lazy_kernels::ReductionKind;
    /// let x = Expr::var(Var { cat: VarCat::I, pos: 0, dim: 3 })?;
    /// let y = Expr::var(Var { cat: VarCat::J, pos: 1, dim: 3 })?;
    /// let f = Expr::sqdist(&x, &y)?;
    /// let k = generate_ranged(&f, ReductionKind::Min, &[(VarCat::I, 3), (VarCat::J, 3)], Storage::F32)?;
    /// // Rows 10..20 keep terms 0..5 and 90..100; rows 0..10 and 20..30 keep nothing.
    /// let g = k.ranged_grid(30, 100, &[(10..20, vec![0..5, 90..100])], 132)?;
    /// assert_eq!(g.blocks, vec![0, 10, 0, 0, 10, 20, 0, 2, 20, 30, 2, 2]);
    /// assert_eq!(g.intervals, vec![0, 5, 90, 100]);
    /// assert_eq!((g.blocks_x(), g.chunks), (3, 1));
    /// # Ok::<(), lazy_kernels::Error>(())
    /// ```
    pub fn ranged_grid(
        &self,
        rows: usize,
        terms: usize,
        groups: &[(Range<usize>, Vec<Range<usize>>)],
        sms: usize,
    ) -> Result<RangedGrid> {
        const OP: &str = "CUDA block-sparse launch";
        let int = |what: &str, n: usize| {
            i32::try_from(n).map_err(|_| Error::Shape {
                op: OP,
                detail: format!("{n} {what} exceed the CUDA backend's limit of 2^31 - 1"),
            })
        };
        int("output rows", rows)?;
        int("terms", terms)?;
        let per_block = self.block * self.rows_per_thread;
        let (mut blocks, mut intervals) = (Vec::new(), Vec::new());
        let mut most = 0;
        let mut at = 0;
        // Blocks of at most `per_block` rows over `rows`, all with the intervals `first..end`.
        let mut push = |r: Range<usize>, first: usize, end: usize| -> Result<()> {
            for r0 in r.clone().step_by(per_block) {
                let r1 = (r0 + per_block).min(r.end);
                for v in [r0, r1, first, end] {
                    blocks.push(int("descriptor entries", v)?);
                }
            }
            Ok(())
        };
        for (g, (r, ts)) in groups.iter().enumerate() {
            if r.start < at || r.end < r.start || r.end > rows {
                let detail =
                    format!("row group {g} ({r:?}) is not sorted, disjoint and in 0..{rows}");
                return Err(invalid(OP, detail));
            }
            let (first, mut end, mut kept) = (intervals.len() / 2, 0, 0);
            for t in ts {
                if t.start < end || t.end < t.start || t.end > terms {
                    let detail = format!(
                        "the terms {t:?} of row group {g} are not sorted, disjoint and in 0..{terms}"
                    );
                    return Err(invalid(OP, detail));
                }
                end = t.end;
                kept += t.len();
                intervals.push(int("terms", t.start)?);
                intervals.push(int("terms", t.end)?);
            }
            most = most.max(kept);
            push(at..r.start, first, first)?;
            push(r.clone(), first, intervals.len() / 2)?;
            at = r.end;
        }
        let n = intervals.len() / 2;
        push(at..rows, n, n)?;
        let blocks_x = blocks.len() / 4;
        let chunk = self.chunk_length(blocks_x, most, sms);
        let chunks = most.div_ceil(chunk).max(1);
        int("terms in all chunks", chunks * chunk)?;
        Ok(RangedGrid {
            blocks,
            intervals,
            chunks,
            chunk,
        })
    }
}

/// The launch of a block-sparse module ([`CudaKernel::ranged_grid`]): `blocks_x()` blocks
/// along the rows, each described by four entries of `blocks` (its first row, the end of its
/// rows, its first interval of terms and the end of its intervals), the intervals of terms
/// (start, end), and the chunks of kept terms (blocks along `y`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangedGrid {
    /// Four entries per block: rows `[0] .. [1]`, intervals `[2] .. [3]`.
    pub blocks: Vec<i32>,
    /// Two entries per interval: its terms `[0] .. [1]`.
    pub intervals: Vec<i32>,
    /// Chunks of each block's kept terms (blocks along `y`).
    pub chunks: usize,
    /// Kept terms per chunk, a multiple of the tile.
    pub chunk: usize,
}

impl RangedGrid {
    /// Blocks along the rows.
    pub fn blocks_x(&self) -> usize {
        self.blocks.len() / 4
    }
}

/// FNV-1a, 64 bits: a hash that is the same in every build and process (cache keys).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Checks that the formula's variables are those of `vars` (position, category, dimension).
fn check_vars(formula: &Expr, vars: &[(VarCat, usize)]) -> Result<()> {
    for v in formula.vars() {
        match vars.get(v.pos) {
            Some(&(cat, dim)) if cat == v.cat && dim == v.dim => {}
            other => {
                return Err(invalid(
                    "CUDA codegen",
                    format!("variable {v:?} does not match the bound inputs ({other:?})"),
                ));
            }
        }
    }
    Ok(())
}

/// The formula as a C function `void fname(const TC* a0, .., const TC* a{n-1}, TC* out)`:
/// `ak` points at the components of the variable at position `k`, `out` receives the
/// formula's components. Valid as CUDA device code and as host C++ (after `lk_math.cuh`).
/// It runs the sections of the hoisting (`hoist.rs`) one after the other, as the kernel does at
/// their levels: the host check of the generated code covers the hoisted code too.
pub fn formula_function(
    formula: &Expr,
    nvars: usize,
    storage: Storage,
    fname: &str,
) -> Result<String> {
    let tc = storage.compute();
    let sec = Sections::new(formula, nvars, &[], tc)?;
    let mut s = String::new();
    let params: Vec<String> = (0..nvars)
        .map(|k| format!("const {tc}* __restrict__ a{k}"))
        .chain(std::iter::once(format!("{tc}* __restrict__ out")))
        .collect();
    let _ = writeln!(s, "// {}", formula.brief());
    let _ = writeln!(s, "LK_FN void {fname}({}) {{", params.join(", "));
    for level in [Level::Param, Level::Row, Level::Term] {
        let _ = writeln!(s, "{}", sec.decl(level, tc));
    }
    for code in &sec.code[..3] {
        let _ = writeln!(s, "{{\n{code}}}");
    }
    let _ = writeln!(s, "{{\n{}", sec.code[Level::Pair as usize]);
    for (c, x) in sec.out.iter().enumerate() {
        let _ = writeln!(s, "    out[{c}] = {x};");
    }
    s.push_str("}\n}\n");
    Ok(s)
}

/// The fixed reduction part of every module: `cuda/lk_reduce.cuh`'s storage conversions, then
/// the state helpers of every reduction family ([`crate::reduction`] holds them, each next to
/// its Rust version), inside the header's include guard.
fn reduce_header() -> String {
    const END: &str = "\n#endif // LK_REDUCE_CUH\n";
    let head = REDUCE_CUH
        .strip_suffix(END)
        .expect("lk_reduce.cuh ends with its include guard");
    format!("{head}{}{END}", crate::reduction::cuda_helpers())
}

/// Emits the copy of a state, `dst = src` for the values and, if there are any, the indices:
/// `dst` and `src` are the value expressions (of `c`, with `{n}` for the number of slots); the
/// index expressions are the same with `sv`/`part_vals` replaced by `si`/`part_idx`.
fn copy_state(s: &mut String, (dst, src): (&str, &str), sv: usize, si: usize) {
    let idx = |e: &str| e.replace("part_vals", "part_idx").replace("sv", "si");
    for (n, d, r) in [
        (sv, dst.to_string(), src.to_string()),
        (si, idx(dst), idx(src)),
    ] {
        if n > 0 {
            let (d, r) = (
                d.replace("{n}", &n.to_string()),
                r.replace("{n}", &n.to_string()),
            );
            let _ = writeln!(s, "for (int c = 0; c < {n}; ++c) {d} = {r};");
        }
    }
}

/// Generates the module of a reduction of `formula` over `j` (the axis of `kind` is ignored:
/// plans always reduce over `j`), whose variable at position `k` is `vars[k]` (category,
/// components), for inputs of type `storage`.
pub fn generate(
    formula: &Expr,
    kind: ReductionKind,
    vars: &[(VarCat, usize)],
    storage: Storage,
) -> Result<CudaKernel> {
    generate_with_pairs(formula, kind, vars, &[], storage)
}

/// Checks a block plan's pair inputs: scalar nodes of the formula, in f32 or f64 (half
/// precision never takes the block path: the expansion of distances cancels too much).
fn check_pairs(formula: &Expr, pairs: &[Expr], storage: Storage) -> Result<()> {
    if pairs.is_empty() {
        return Ok(());
    }
    if !matches!(storage, Storage::F32 | Storage::F64) {
        return Err(Error::NotImplemented {
            what: "the CUDA block path in half precision",
            detail: format!("{storage:?} inputs with inner products read from blocks"),
        });
    }
    let nodes = formula.topo_order();
    match pairs.iter().find(|p| p.dim() != 1 || !nodes.contains(p)) {
        Some(p) => Err(invalid(
            "CUDA codegen",
            format!("pair input {p} is not a scalar node of {}", formula.brief()),
        )),
        None => Ok(()),
    }
}

/// [`generate`] for a block plan (`crate::op::gram`): the scalar nodes `pairs[k]` of the
/// formula (inner products `<x_i, y_j>`) are not computed but read from blocks of inner
/// products that a matrix product computed. With pairs, the main kernel takes, after the
/// parameters of [`generate`]'s, `const TC* s0, .., long long jbase, int chunk_base`: block
/// `k` holds the value of pair `k` for the launch's row `i` and term `j` at
/// `s_k[j * rows + i]` (transposed, so that a warp's rows are consecutive addresses); `jbase`
/// is the launch's first term in the whole reduction (indices are global); with
/// `chunk_base < 0` the kernel writes the outputs (one chunk in all), otherwise block `y`
/// writes its states as chunk `chunk_base + y` for the combine kernel. Without pairs, the
/// module of [`generate`], byte for byte. f32 and f64 only.
///
/// ```
/// use lazy_kernels::backend::cuda::{generate_with_pairs, Storage};
/// use lazy_kernels::formula::{Expr, Var, VarCat};
/// use lazy_kernels::ReductionKind;
/// let x = Expr::var(Var { cat: VarCat::I, pos: 0, dim: 64 })?;
/// let y = Expr::var(Var { cat: VarCat::J, pos: 1, dim: 64 })?;
/// let dot = Expr::dot(&x, &y)?;
/// let vars = [(VarCat::I, 64), (VarCat::J, 64)];
/// let k = generate_with_pairs(&dot.exp(), ReductionKind::Sum, &vars, &[dot], Storage::F32)?;
/// assert!(k.source.contains("long long jbase, int chunk_base)"));
/// # Ok::<(), lazy_kernels::Error>(())
/// ```
pub fn generate_with_pairs(
    formula: &Expr,
    kind: ReductionKind,
    vars: &[(VarCat, usize)],
    pairs: &[Expr],
    storage: Storage,
) -> Result<CudaKernel> {
    generate_module(formula, kind, vars, pairs, storage, false)
}

/// [`generate`] for a block-sparse plan (KeOps' `ranges`, [`crate::ranges`]): the same module
/// but for the main kernel's rows and terms, which come from the launch's descriptors
/// ([`CudaKernel::ranged_grid`]) instead of the grid. The main kernel takes two more
/// parameters after [`generate`]'s, `const int* rblocks, const int* tivals`: block `x` of the
/// grid has the rows `rblocks[4x] .. rblocks[4x + 1]` (at most `block * rows_per_thread`, inside
/// one row interval) and reduces them over the intervals of terms `tivals[2v] .. tivals[2v +
/// 1]` for `v` in `rblocks[4x + 2] .. rblocks[4x + 3]`, in order; no other term is read. With
/// `gridDim.y > 1` block `(x, y)` reduces the kept terms at positions `y * chunk .. (y + 1) *
/// chunk` of that list and writes its states for the combine kernel (the same as
/// [`generate`]'s). A block without intervals writes the reduction over zero terms. The
/// dense module's source is not changed by this variant ([`CudaKernel::ranged`] tells them
/// apart).
///
/// ```
/// use lazy_kernels::backend::cuda::{generate, generate_ranged, Storage};
/// use lazy_kernels::formula::{Expr, Var, VarCat};
/// use lazy_kernels::ReductionKind;
/// let x = Expr::var(Var { cat: VarCat::I, pos: 0, dim: 3 })?;
/// let y = Expr::var(Var { cat: VarCat::J, pos: 1, dim: 3 })?;
/// let vars = [(VarCat::I, 3), (VarCat::J, 3)];
/// let f = Expr::sqdist(&x, &y)?.neg().exp();
/// let k = generate_ranged(&f, ReductionKind::Sum, &vars, Storage::F32)?;
/// assert!(k.ranged && k.source.contains("const int* __restrict__ tivals)"));
/// assert_ne!(k.name, generate(&f, ReductionKind::Sum, &vars, Storage::F32)?.name);
/// # Ok::<(), lazy_kernels::Error>(())
/// ```
pub fn generate_ranged(
    formula: &Expr,
    kind: ReductionKind,
    vars: &[(VarCat, usize)],
    storage: Storage,
) -> Result<CudaKernel> {
    generate_module(formula, kind, vars, &[], storage, true)
}

/// The module of [`generate_with_pairs`] (`ranged` false) or [`generate_ranged`] (`ranged` true,
/// no pairs).
fn generate_module(
    formula: &Expr,
    kind: ReductionKind,
    vars: &[(VarCat, usize)],
    pairs: &[Expr],
    storage: Storage,
    ranged: bool,
) -> Result<CudaKernel> {
    check_vars(formula, vars)?;
    if ranged && !pairs.is_empty() {
        return Err(invalid(
            "CUDA codegen",
            "a block-sparse module reads no blocks of inner products (ranges run on the direct path)",
        ));
    }
    check_pairs(formula, pairs, storage)?;
    let blocks = !pairs.is_empty();
    let red = Reduction::new(kind, Axis::J);
    let f = formula.dim();
    let out = red.output_spec(f)?;
    let st = red.state_spec(f);
    let tc = storage.compute();
    let t = storage.c_type();

    let sec = Sections::new(formula, vars.len(), pairs, tc)?;
    let code = kind.cuda_code(f, tc, out.values);

    // The pair section and the reduction's update of one row, for one term (after the row's
    // values of the pair inputs, zeros past the last row).
    let mut pair_code = String::from("{\n");
    if blocks {
        let _ = writeln!(
            pair_code,
            // The tile length, known below.
            "const int i = i0 + r * LKBLOCK; {tc} sp[{}];",
            pairs.len()
        );
        for k in 0..pairs.len() {
            let _ = writeln!(
                pair_code,
                "sp[{k}] = i < rows ? s{k}[(long long)(j0 + jj) * rows + i] : ({tc})0;"
            );
        }
    }
    pair_code.push_str(&sec.code[Level::Pair as usize]);
    for (c, x) in sec.out.iter().enumerate() {
        let _ = writeln!(pair_code, "    f[{c}] = {x};");
    }
    pair_code.push_str("}\n");
    pair_code.push_str(&code.term);
    // A term's values in shared memory: the j-variables that the pair code reads, then the
    // term section's slots `hj` (computed once per term and block, when the tile is staged).
    let mut layout: Vec<(usize, usize, usize)> = Vec::new(); // (variable, offset, dims)
    let mut j_width = 0;
    for (k, &(cat, d)) in vars.iter().enumerate() {
        if cat == VarCat::J && reads(&pair_code, &format!("a{k}")) {
            layout.push((k, j_width, d));
            j_width += d;
        }
    }
    let term_slots = sec.slots[Level::Term as usize];
    let hj_off = j_width;
    j_width += term_slots;

    // Tile length: as many terms as fit the shared-memory budget, a multiple of 32. A term's
    // values are stored together, padded to a multiple of 16 bytes, so that a term is read
    // with 16-byte loads (one for a 3D point and its weight in f32).
    let vec = 16 / storage.compute_bytes();
    let stride = j_width.div_ceil(vec) * vec;
    let per_term = stride * storage.compute_bytes();
    let mut block = MAX_BLOCK;
    while block > 32 && block * per_term > SHARED_BYTES {
        block /= 2;
    }
    let shared = block * per_term <= SHARED_BYTES;
    let pair_code = pair_code.replace("LKBLOCK", &block.to_string());

    let (sv, si) = (st.vals, st.idx);
    let rows = rows_per_thread(vars, &sec, &code, sv + si, storage, shared);
    let unroll = (16 / rows).max(1);

    let mut s = String::new();
    let _ = writeln!(
        s,
        "// lazy-kernels generated kernel: {red} of {}",
        formula.brief()
    );
    let _ = writeln!(s, "// inputs {storage:?}, variables {vars:?}");
    s.push_str(MATH_CUH);
    s.push_str(&reduce_header());

    // Names bound per row `r` (inside `for r`): the row's i-variables, row slots and states,
    // each only where the code reads it.
    let mut per_row_names: Vec<(String, String)> = Vec::new();
    for (k, &(cat, _)) in vars.iter().enumerate() {
        if cat == VarCat::I {
            per_row_names.push((format!("a{k}"), format!("const {tc}* a{k} = a{k}_r[r];")));
        }
    }
    per_row_names.push(("sv".into(), "double* sv = sv_r[r];".into()));
    per_row_names.push(("si".into(), "long long* si = si_r[r];".into()));
    for (name, _) in &code.tile_vars {
        per_row_names.push((name.to_string(), format!("{tc}* {name} = {name}_r[r];")));
    }
    let bind = |body: &str, extra: &[(String, String)]| -> String {
        let mut b = String::new();
        for (name, decl) in per_row_names.iter().chain(extra) {
            if reads(body, name) {
                b.push_str(decl);
                b.push('\n');
            }
        }
        b.push_str(body);
        b
    };
    let per_row =
        |body: &str| format!("#pragma unroll\nfor (int r = 0; r < {rows}; ++r) {{\n{body}}}\n");

    // The main kernel, after a line for scripts/sass-budget.py: the rows each thread computes
    // and the shared-memory loads of one term (16 bytes each) in its main loop.
    let _ = writeln!(
        s,
        "// lk-sass-loop rows={rows} loads={}",
        if shared { stride / vec } else { 0 }
    );
    let offs: String = (0..vars.len())
        .map(|k| format!("long long o{k}, "))
        .collect();
    let block_params: String = if blocks {
        (0..pairs.len())
            .map(|k| format!(", const {tc}* __restrict__ s{k}"))
            .chain(std::iter::once(", long long jbase, int chunk_base".into()))
            .collect()
    } else if ranged {
        ", const int* __restrict__ rblocks, const int* __restrict__ tivals".into()
    } else {
        String::new()
    };
    // The end of the rows of the thread's block: all rows, or the block's descriptor's.
    let lim = if ranged { "lk_rend" } else { "rows" };
    let _ = writeln!(
        s,
        "extern \"C\" __global__ void __launch_bounds__({block}) LKNAME_main(\
         const {t}* __restrict__ in, {offs}int rows, int terms, int chunk, \
         {t}* __restrict__ out_vals, long long* __restrict__ out_idx, \
         double* __restrict__ part_vals, long long* __restrict__ part_idx{block_params}) {{"
    );
    if ranged {
        let _ = writeln!(
            s,
            "const int* __restrict__ lk_rb = rblocks + 4 * (long long)blockIdx.x;\n\
             const int lk_rend = lk_rb[1]; (void)terms;\nconst int i0 = lk_rb[0] + threadIdx.x;"
        );
    } else {
        let _ = writeln!(
            s,
            "const int i0 = blockIdx.x * {} + threadIdx.x;",
            block * rows
        );
    }
    // The variables' loads go here once the kernel's code says which it reads.
    let loads_at = s.len();
    let _ = writeln!(s, "{}", sec.decl(Level::Param, tc));
    let _ = writeln!(s, "{{\n{}}}", sec.code[Level::Param as usize]);
    let _ = writeln!(
        s,
        "{tc} hi_r[{rows}][{}]; (void)hi_r;",
        sec.slots[Level::Row as usize].max(1)
    );
    let hi_w = [("hi".to_string(), format!("{tc}* hi = hi_r[r];"))];
    let hi_r = [("hi".to_string(), format!("const {tc}* hi = hi_r[r];"))];
    s.push_str(&per_row(&bind(&sec.code[Level::Row as usize], &hi_w)));
    // States, then tiles of terms.
    let _ = writeln!(
        s,
        "double sv_r[{rows}][{}]; long long si_r[{rows}][{}]; (void)sv_r; (void)si_r;",
        sv.max(1),
        si.max(1)
    );
    for (name, len) in &code.tile_vars {
        let _ = writeln!(s, "{tc} {name}_r[{rows}][{len}];");
    }
    s.push_str(&per_row(&bind(&code.init, &[])));

    // Term `j0 + idx`'s j-variables read from global memory (those `wanted`), then its term
    // section.
    let term_from_global = |idx: &str, wanted: &dyn Fn(usize) -> bool| -> String {
        let mut t = String::new();
        for (k, &(cat, d)) in vars.iter().enumerate() {
            if cat == VarCat::J && wanted(k) {
                let _ = writeln!(
                    t,
                    "{tc} a{k}[{d}];\nfor (int c = 0; c < {d}; ++c) \
                     a{k}[c] = lk_load(in + o{k} + (long long)(j0 + {idx}) * {d} + c);"
                );
            }
        }
        let _ = writeln!(
            t,
            "{}\n{{\n{}}}",
            sec.decl(Level::Term, tc),
            sec.code[Level::Term as usize]
        );
        t
    };
    let mut tile_load = String::new();
    let mut local_j = String::new();
    if shared {
        // The variables the pair code reads: coalesced copies.
        for &(k, off, d) in &layout {
            let _ = writeln!(
                tile_load,
                "for (int t = threadIdx.x; t < n * {d}; t += {block}) {{ \
                 const int q = t / {d}; \
                 sj[q * {stride} + {off} + (t - q * {d})] = \
                 lk_load(in + o{k} + (long long)j0 * {d} + t); }}"
            );
        }
        // The term section, once per term of the tile.
        if term_slots > 0 {
            let term_reads = |k: usize| reads(&sec.code[Level::Term as usize], &format!("a{k}"));
            let _ = writeln!(
                tile_load,
                "for (int q = threadIdx.x; q < n; q += {block}) {{\n{}\
                 for (int c = 0; c < {term_slots}; ++c) sj[q * {stride} + {hj_off} + c] = hj[c];\n}}",
                term_from_global("q", &term_reads),
            );
        }
    } else {
        // Not staged (too wide): each thread reads a term's variables and computes its term
        // section.
        local_j.push_str(&term_from_global("jj", &|_| true));
    }
    if shared && j_width > 0 {
        let _ = writeln!(s, "__shared__ __align__(16) {tc} sj[{}];", block * stride);
        // The term's values, read with 16-byte loads.
        let v4 = if storage == Storage::F64 {
            "double2"
        } else {
            "float4"
        };
        let comps: &[&str] = if vec == 2 {
            &["x", "y"]
        } else {
            &["x", "y", "z", "w"]
        };
        let _ = write!(
            local_j,
            "{tc} yj[{stride}];\n{{ const {v4}* __restrict__ q = reinterpret_cast<const {v4}*>(sj + jj * {stride});\n"
        );
        for w in 0..stride / vec {
            let _ = write!(local_j, "{{ const {v4} v = q[{w}];");
            for (c, name) in comps.iter().enumerate() {
                let _ = write!(local_j, " yj[{}] = v.{name};", w * vec + c);
            }
            let _ = writeln!(local_j, " }}");
        }
        let _ = writeln!(local_j, "}}");
        for &(k, off, _) in &layout {
            let _ = writeln!(local_j, "const {tc}* a{k} = yj + {off};");
        }
        if term_slots > 0 {
            let _ = writeln!(local_j, "const {tc}* hj = yj + {hj_off};");
        }
    }
    // One term: its values, then the pair section and the reduction's update for each row.
    // Each row's value of the formula stays in `f_r` for the rare part of the update (a new
    // maximum, an insertion), which runs once per term for all the thread's rows when any of
    // them needs it. Its lines end in `// lk-rare`: scripts/sass-budget.py leaves the
    // instructions compiled from them out of the per-pair count of the main loop.
    let f_bind = [("f".to_string(), format!("{tc}* f = f_r[r];"))];
    let row_names: Vec<(String, String)> = hi_r.iter().chain(&f_bind).cloned().collect();
    let mut term_code = format!("{tc} f_r[{rows}][{f}];\n");
    if !code.term_rare.is_empty() {
        term_code.push_str("bool rare = false;\n");
    }
    term_code.push_str(&per_row(&bind(&pair_code, &row_names)));
    if !code.term_rare.is_empty() {
        let rare = per_row(&bind(&code.term_rare, &f_bind));
        term_code.push_str("if (rare) {\n");
        for line in rare.lines() {
            let _ = writeln!(term_code, "{line} // lk-rare");
        }
        term_code.push_str("}\n");
    }
    // The term's index in the whole reduction (a block plan's launch starts at `jbase`).
    let j_index = if blocks {
        "jbase + j0 + jj"
    } else {
        "(long long)(j0 + jj)"
    };
    let body = format!("{{\nconst long long j = {j_index}; (void)j;\n{local_j}{term_code}}}\n");
    if ranged {
        // One loop over the tiles of the block's intervals, in order (one loop nest as in the
        // dense kernel: nested loops over intervals and tiles made ptxas spill registers).
        // Chunk `y` takes the kept terms at positions `lk_cbeg .. lk_cbeg + chunk` of the
        // intervals' concatenation (`lk_p`: the terms of the intervals before `lk_v`); when a
        // tile passes the end of its interval the next non-empty one starts. Every thread of
        // the block runs the same trips (the barriers).
        let _ = writeln!(
            s,
            "const int lk_cbeg = blockIdx.y * chunk;\nint lk_v = lk_rb[2], lk_p = 0, jend = 0;"
        );
        let _ = writeln!(s, "for (int j0 = 0;; j0 += {block}) {{");
        let _ = writeln!(s, "while (j0 >= jend && lk_v < lk_rb[3]) {{");
        let _ = writeln!(
            s,
            "const int lk_t0 = tivals[2 * lk_v], lk_len = tivals[2 * lk_v + 1] - lk_t0;"
        );
        let _ = writeln!(s, "j0 = lk_t0 + max(0, lk_cbeg - lk_p);");
        let _ = writeln!(s, "jend = lk_t0 + min(lk_len, lk_cbeg - lk_p + chunk);");
        let _ = writeln!(s, "lk_p += lk_len;\n++lk_v;\n}}");
        let _ = writeln!(s, "if (j0 >= jend) break;");
    } else {
        let _ = writeln!(s, "const int jbeg = blockIdx.y * chunk;");
        let _ = writeln!(s, "const int jend = min(terms, jbeg + chunk);");
        let _ = writeln!(s, "for (int j0 = jbeg; j0 < jend; j0 += {block}) {{");
    }
    let _ = writeln!(s, "const int n = min({block}, jend - j0);");
    if shared && j_width > 0 {
        let _ = writeln!(s, "__syncthreads();");
        s.push_str(&tile_load);
        let _ = writeln!(s, "__syncthreads();");
    }
    let _ = writeln!(s, "if (i0 < {lim}) {{");
    s.push_str(&per_row(&bind(&code.tile_init, &[])));
    // Whole tiles with a constant trip count (unrolled), then the last, partial one.
    let _ = writeln!(
        s,
        "if (n == {block}) {{\n#pragma unroll {unroll}\nfor (int jj = 0; jj < {block}; ++jj) {body}}} else {{\nfor (int jj = 0; jj < n; ++jj) {body}}}"
    );
    s.push_str(&per_row(&bind(&code.tile_end, &[])));
    let _ = writeln!(s, "}}\n}}");
    // Outputs, or the chunk's states (2D scheme).
    let (one_chunk, chunk_at) = if blocks {
        ("chunk_base < 0", "(long long)(chunk_base + blockIdx.y)")
    } else {
        ("gridDim.y == 1", "(long long)blockIdx.y")
    };
    let mut fin = String::new();
    let _ = writeln!(fin, "if ({one_chunk}) {{");
    fin.push_str(&code.finalize);
    let _ = writeln!(fin, "}} else {{");
    let _ = writeln!(fin, "const long long at = {chunk_at} * rows + i;");
    copy_state(&mut fin, ("part_vals[at * {n} + c]", "sv[c]"), sv, si);
    let _ = writeln!(fin, "}}");
    s.push_str(&per_row(&format!(
        "const int i = i0 + r * {block};\nif (i < {lim}) {{\n{}}}\n",
        bind(&fin, &[])
    )));
    let _ = writeln!(s, "}}");
    // Parameters once per thread; each row's i-variables (zeros past the last row).
    let mut loads = String::new();
    let mut load_i = format!("const int i = i0 + r * {block}; (void)i;\n");
    for (k, &(cat, d)) in vars.iter().enumerate() {
        match cat {
            VarCat::P if reads(&s[loads_at..], &format!("a{k}")) => {
                let _ = writeln!(
                    loads,
                    "{tc} a{k}[{d}];\n#pragma unroll\nfor (int c = 0; c < {d}; ++c) a{k}[c] = lk_load(in + o{k} + c);"
                );
            }
            VarCat::I if reads(&s[loads_at..], &format!("a{k}_r")) => {
                let _ = writeln!(loads, "{tc} a{k}_r[{rows}][{d}];");
                let _ = writeln!(
                    load_i,
                    "#pragma unroll\nfor (int c = 0; c < {d}; ++c) \
                     a{k}_r[r][c] = i < {lim} ? lk_load(in + o{k} + (long long)i * {d} + c) : ({tc})0;"
                );
            }
            _ => {}
        }
    }
    loads.push_str(&per_row(&load_i));
    s.insert_str(loads_at, &loads);

    // The combine kernel of the 2D scheme.
    let idx_decl = |v: &str| {
        if si > 0 {
            format!(" long long {v}[{si}];")
        } else {
            String::new()
        }
    };
    let _ = writeln!(
        s,
        "extern \"C\" __global__ void LKNAME_combine(int rows, int chunks, \
         const double* __restrict__ part_vals, const long long* __restrict__ part_idx, \
         {t}* __restrict__ out_vals, long long* __restrict__ out_idx) {{"
    );
    let _ = writeln!(s, "const int i = blockIdx.x * blockDim.x + threadIdx.x;");
    let _ = writeln!(s, "if (i >= rows) return;");
    let _ = writeln!(s, "double sv[{sv}];{}", idx_decl("si"));
    copy_state(
        &mut s,
        ("sv[c]", "part_vals[(long long)i * {n} + c]"),
        sv,
        si,
    );
    let _ = writeln!(s, "for (int ch = 1; ch < chunks; ++ch) {{");
    let _ = writeln!(s, "const long long at = (long long)ch * rows + i;");
    let _ = writeln!(s, "double sv2[{sv}];{}", idx_decl("si2"));
    copy_state(&mut s, ("sv2[c]", "part_vals[at * {n} + c]"), sv, si);
    s.push_str(&code.combine);
    let _ = writeln!(s, "}}");
    s.push_str(&code.finalize);
    let _ = writeln!(s, "}}");
    if blocks {
        s.push_str(&block_helpers(tc));
    }

    let name = format!("lk_{:016x}", fnv1a(s.as_bytes()));
    let source = s.replace("LKNAME", &name);
    Ok(CudaKernel {
        name,
        source,
        block,
        shared,
        state_vals: st.vals,
        state_idx: st.idx,
        out_vals: out.values,
        out_idx: out.indices,
        rows_per_thread: rows,
        values: false,
        blocks,
        ranged,
    })
}

/// Threads per block of a coefficient kernel ([`generate_values`]).
pub const VALUES_BLOCK: usize = 256;

/// Generates the coefficient kernel of a block plan's matrix product (`Sum_j c_ij v_j` runs as
/// `C V`): `<name>_values(const T* in, long long o0, .., int rows, int terms, const TC* s0, ..,
/// TC* coef)` writes the scalar `coef_formula` of the launch's pair `(i, j)` at
/// `coef[j * rows + i]` (stored as the blocks of inner products are, which it reads like the
/// main kernel of [`generate_with_pairs`]). Thread `x` of block `(bx, by)` has row
/// `bx * VALUES_BLOCK + x` and the terms `by, by + gridDim.y, ..` ([`values_grid`]). The
/// module has no main and combine kernels ([`CudaKernel::values`]). f32 and f64 only.
///
/// ```
/// use lazy_kernels::backend::cuda::{generate_values, Storage};
/// use lazy_kernels::formula::{Expr, Var, VarCat};
/// let x = Expr::var(Var { cat: VarCat::I, pos: 0, dim: 64 })?;
/// let y = Expr::var(Var { cat: VarCat::J, pos: 1, dim: 64 })?;
/// let dot = Expr::dot(&x, &y)?;
/// let vars = [(VarCat::I, 64), (VarCat::J, 64)];
/// let k = generate_values(&dot.neg().exp(), &vars, &[dot], Storage::F64)?;
/// assert!(k.values && k.source.contains(&format!("{}_values(", k.name)));
/// # Ok::<(), lazy_kernels::Error>(())
/// ```
pub fn generate_values(
    coef_formula: &Expr,
    vars: &[(VarCat, usize)],
    pairs: &[Expr],
    storage: Storage,
) -> Result<CudaKernel> {
    check_vars(coef_formula, vars)?;
    check_pairs(coef_formula, pairs, storage)?;
    if coef_formula.dim() != 1 {
        return Err(invalid(
            "CUDA codegen",
            format!(
                "a coefficient has one component, {coef_formula} has {}",
                coef_formula.dim()
            ),
        ));
    }
    let (tc, t) = (storage.compute(), storage.c_type());
    let sec = Sections::new(coef_formula, vars.len(), pairs, tc)?;
    let mut body = String::new();
    let _ = writeln!(
        body,
        "{}\n{{\n{}}}",
        sec.decl(Level::Param, tc),
        sec.code[0]
    );
    let _ = writeln!(body, "{}\n{{\n{}}}", sec.decl(Level::Row, tc), sec.code[1]);
    let _ = writeln!(
        body,
        "for (int j = blockIdx.y; j < terms; j += gridDim.y) {{\nLKTERMLOADS"
    );
    let _ = writeln!(body, "{}\n{{\n{}}}", sec.decl(Level::Term, tc), sec.code[2]);
    let _ = writeln!(body, "{tc} sp[{}]; (void)sp;", pairs.len().max(1));
    for k in 0..pairs.len() {
        let _ = writeln!(body, "sp[{k}] = s{k}[(long long)j * rows + i];");
    }
    let _ = writeln!(
        body,
        "{{\n{}coef[(long long)j * rows + i] = {};\n}}\n}}",
        sec.code[Level::Pair as usize],
        sec.out[0]
    );
    // The variables the code reads: parameters and the row's i-variables before it, the
    // term's j-variables in the loop.
    let (mut loads, mut term_loads) = (String::new(), String::new());
    for (k, &(cat, d)) in vars.iter().enumerate() {
        if !reads(&body, &format!("a{k}")) {
            continue;
        }
        let (at, to) = match cat {
            VarCat::P => ("", &mut loads),
            VarCat::I => ("(long long)i * ", &mut loads),
            VarCat::J => ("(long long)j * ", &mut term_loads),
        };
        let _ = writeln!(
            to,
            "{tc} a{k}[{d}];\nfor (int c = 0; c < {d}; ++c) a{k}[c] = lk_load(in + o{k} + {at}{d} + c);"
        );
    }
    let body = body.replace("LKTERMLOADS\n", &term_loads);
    let offs: String = (0..vars.len())
        .map(|k| format!("long long o{k}, "))
        .collect();
    let blocks: String = (0..pairs.len())
        .map(|k| format!("const {tc}* __restrict__ s{k}, "))
        .collect();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "// lazy-kernels generated coefficient kernel: {}",
        coef_formula.brief()
    );
    let _ = writeln!(s, "// inputs {storage:?}, variables {vars:?}, pair inputs:");
    for p in pairs {
        let _ = writeln!(s, "//   {p}");
    }
    s.push_str(MATH_CUH);
    s.push_str(&reduce_header());
    let _ = writeln!(
        s,
        "extern \"C\" __global__ void __launch_bounds__({VALUES_BLOCK}) LKNAME_values(\
         const {t}* __restrict__ in, {offs}int rows, int terms, {blocks}{tc}* __restrict__ coef) {{"
    );
    let _ = writeln!(
        s,
        "const int i = blockIdx.x * {VALUES_BLOCK} + threadIdx.x;"
    );
    let _ = writeln!(s, "if (i >= rows) return;\n{loads}{body}}}");
    s.push_str(&block_helpers(tc));
    let name = format!("lk_{:016x}", fnv1a(s.as_bytes()));
    Ok(CudaKernel {
        source: s.replace("LKNAME", &name),
        name,
        block: VALUES_BLOCK,
        shared: false,
        state_vals: 0,
        state_idx: 0,
        out_vals: 1,
        out_idx: 0,
        rows_per_thread: 1,
        values: true,
        blocks: true,
        ranged: false,
    })
}

/// The grid of a coefficient kernel ([`generate_values`]) over `rows x terms` pairs: blocks
/// along the rows, and along the terms as many as the grid allows (each then covers several
/// terms).
pub fn values_grid(rows: usize, terms: usize) -> (usize, usize) {
    (rows.div_ceil(VALUES_BLOCK).max(1), terms.clamp(1, 65535))
}

/// Output rows per thread of the main kernel: each term's shared-memory load and term section
/// then serve that many pairs. Four rows when a row's registers (i-variables, row slots, tile
/// and row states) are few, two when they are moderate, else one.
fn rows_per_thread(
    vars: &[(VarCat, usize)],
    sec: &Sections,
    code: &CudaCode,
    state_slots: usize,
    storage: Storage,
    shared: bool,
) -> usize {
    let words = storage.compute_bytes() / 4;
    let i_dims: usize = vars.iter().filter(|v| v.0 == VarCat::I).map(|v| v.1).sum();
    let tile: usize = code.tile_vars.iter().map(|v| v.1).sum();
    let per_row = (i_dims + sec.slots[Level::Row as usize] + tile) * words + 2 * state_slots;
    match per_row {
        _ if !shared => 1,
        0..=16 => 4,
        17..=48 => 2,
        _ => 1,
    }
}

/// Whether the C code `body` reads the identifier `name` (as a whole word).
fn reads(body: &str, name: &str) -> bool {
    let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    body.match_indices(name).any(|(at, _)| {
        !word(body[..at].chars().next_back()) && !word(body[at + name.len()..].chars().next())
    })
}
