//! The loops of the tile executor: each instruction is one of these, run over a tile.
//!
//! Registers are seen through a [`View`]: a base pointer, the distance between components,
//! whether the register has one value per term (`tile`) or one per row (broadcast over the
//! tile), and its dimension (a 1-component view is broadcast over components). Every loop is
//! written so that its innermost level is a plain slice loop that LLVM vectorises; the
//! operation is a generic closure, fixed per instantiation, so no dispatch happens inside a
//! loop.

use crate::math::Real;

/// Pointers and strides of one register over the current tile.
#[derive(Clone, Copy, Debug)]
pub(crate) struct View<T> {
    pub ptr: *const T,
    pub cstride: usize,
    pub tile: bool,
    pub dim: usize,
}

/// A register being written: component `c` starts at `ptr + c * cstride`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OutView<T> {
    pub ptr: *mut T,
    pub cstride: usize,
}

impl<T> View<T> {
    /// Component `c` (component 0 for a broadcast 1-component register).
    #[inline(always)]
    pub(crate) fn comp(&self, c: usize) -> *const T {
        if self.dim == 1 {
            self.ptr
        } else {
            self.ptr.wrapping_add(c * self.cstride)
        }
    }

    /// Component `c` as a slice of `len` terms.
    ///
    /// # Safety
    /// The view must be a tile view with at least `len` valid terms per component.
    #[inline(always)]
    pub(crate) unsafe fn slice<'a>(&self, c: usize, len: usize) -> &'a [T] {
        // SAFETY: guaranteed by the caller (the executor sizes every tile register to the
        // tile length and pads j-inputs to it).
        unsafe { std::slice::from_raw_parts(self.comp(c), len) }
    }

    /// Component `c` of a row view (one value).
    ///
    /// # Safety
    /// The view must point at a register with at least `dim` values.
    #[inline(always)]
    pub(crate) unsafe fn scalar(&self, c: usize) -> T
    where
        T: Copy,
    {
        // SAFETY: guaranteed by the caller.
        unsafe { *self.comp(c) }
    }
}

impl<T> OutView<T> {
    /// Component `c` as a mutable slice of `len` terms.
    ///
    /// # Safety
    /// The register must have room for `len` terms per component, and must not overlap any
    /// register read by the same instruction (the compiler gives every node its own register).
    #[inline(always)]
    pub(crate) unsafe fn slice<'a>(&self, c: usize, len: usize) -> &'a mut [T] {
        // SAFETY: guaranteed by the caller.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(c * self.cstride), len) }
    }
}

/// `out = f(a)`, component-wise.
///
/// # Safety
/// See [`View::slice`] and [`OutView::slice`].
#[inline(always)]
pub(crate) unsafe fn map1<T: Real>(
    a: View<T>,
    out: OutView<T>,
    dim: usize,
    len: usize,
    f: impl Fn(T) -> T,
) {
    for c in 0..dim {
        // SAFETY: forwarded from the caller.
        let o = unsafe { out.slice(c, len) };
        if a.tile {
            let x = unsafe { a.slice(c, len) };
            for (o, &x) in o.iter_mut().zip(x) {
                *o = f(x);
            }
        } else {
            o.fill(f(unsafe { a.scalar(c) }));
        }
    }
}

/// `f(&mut o[l], a_c[l], b_c[l])` for every term of component `c`, with either argument
/// broadcast: one loop per layout, so each is a plain slice loop that vectorises.
///
/// # Safety
/// See [`View::slice`].
#[inline(always)]
unsafe fn for_each_pair<T: Real>(
    a: View<T>,
    b: View<T>,
    c: usize,
    o: &mut [T],
    f: impl Fn(&mut T, T, T),
) {
    let len = o.len();
    // SAFETY (all blocks below): forwarded from the caller.
    match (a.tile, b.tile) {
        (true, true) => {
            let (x, y) = unsafe { (a.slice(c, len), b.slice(c, len)) };
            for ((o, &x), &y) in o.iter_mut().zip(x).zip(y) {
                f(o, x, y);
            }
        }
        (true, false) => {
            let (x, y) = unsafe { (a.slice(c, len), b.scalar(c)) };
            for (o, &x) in o.iter_mut().zip(x) {
                f(o, x, y);
            }
        }
        (false, true) => {
            let (x, y) = unsafe { (a.scalar(c), b.slice(c, len)) };
            for (o, &y) in o.iter_mut().zip(y) {
                f(o, x, y);
            }
        }
        (false, false) => {
            let (x, y) = unsafe { (a.scalar(c), b.scalar(c)) };
            for o in o.iter_mut() {
                f(o, x, y);
            }
        }
    }
}

/// `out = f(a, b)`, component-wise, with either argument broadcast.
///
/// # Safety
/// See [`View::slice`] and [`OutView::slice`].
#[inline(always)]
pub(crate) unsafe fn map2<T: Real>(
    a: View<T>,
    b: View<T>,
    out: OutView<T>,
    dim: usize,
    len: usize,
    f: impl Fn(T, T) -> T,
) {
    for c in 0..dim {
        // SAFETY: forwarded from the caller.
        unsafe { for_each_pair(a, b, c, out.slice(c, len), |o, x, y| *o = f(x, y)) };
    }
}

/// `out = f(a, b, c)`, component-wise, with any argument broadcast.
///
/// # Safety
/// See [`View::slice`] and [`OutView::slice`].
#[inline(always)]
pub(crate) unsafe fn map3<T: Real>(
    a: View<T>,
    b: View<T>,
    c3: View<T>,
    out: OutView<T>,
    dim: usize,
    len: usize,
    f: impl Fn(T, T, T) -> T,
) {
    let at = |v: &View<T>, c: usize, l: usize| -> T {
        // SAFETY: forwarded from the caller; `l < len`.
        unsafe { *v.comp(c).add(if v.tile { l } else { 0 }) }
    };
    for c in 0..dim {
        // SAFETY: forwarded from the caller.
        let o = unsafe { out.slice(c, len) };
        for (l, o) in o.iter_mut().enumerate() {
            *o = f(at(&a, c, l), at(&b, c, l), at(&c3, c, l));
        }
    }
}

/// `out = sum_c g(a_c, b_c)` over the components of the inputs (a 1-component result).
///
/// # Safety
/// See [`View::slice`] and [`OutView::slice`].
#[inline(always)]
pub(crate) unsafe fn reduce_components<T: Real, const FMA: bool>(
    a: View<T>,
    b: View<T>,
    out: OutView<T>,
    dim: usize,
    len: usize,
    sub: bool,
) {
    // Up to MAX_ONE_PASS_DIM components: one pass over the tile.
    // SAFETY (all calls below): forwarded from the caller.
    unsafe {
        if dim <= MAX_ONE_PASS_DIM {
            return reduce_one_pass::<T, FMA>(a, b, out, dim, len, sub);
        }
    }
    // Many components: one pass per component.
    // SAFETY: forwarded from the caller.
    let o = unsafe { out.slice(0, len) };
    o.fill(T::ZERO);
    for c in 0..dim {
        // SAFETY: forwarded from the caller.
        unsafe {
            for_each_pair(a, b, c, &mut *o, |o, x, y| {
                *o = term::<T, FMA>(*o, x, y, sub)
            })
        };
    }
}

/// Largest dimension handled by the one-pass distance and dot-product loops.
pub(crate) const MAX_ONE_PASS_DIM: usize = 16;

/// [`reduce_components`] for at most [`MAX_ONE_PASS_DIM`] components, in one pass over the
/// tile.
///
/// # Safety
/// See [`View::slice`] and [`OutView::slice`].
#[inline(always)]
unsafe fn reduce_one_pass<T: Real, const FMA: bool>(
    a: View<T>,
    b: View<T>,
    out: OutView<T>,
    dim: usize,
    len: usize,
    sub: bool,
) {
    // SAFETY (all blocks below): forwarded from the caller.
    let o = unsafe { out.slice(0, len) };
    match (a.tile, b.tile) {
        (false, true) | (true, false) => {
            let (row, tile) = if a.tile { (b, a) } else { (a, b) };
            let mut s = [T::ZERO; MAX_ONE_PASS_DIM];
            let mut t: [&[T]; MAX_ONE_PASS_DIM] = [&[]; MAX_ONE_PASS_DIM];
            for c in 0..dim {
                s[c] = unsafe { row.scalar(c) };
                t[c] = unsafe { tile.slice(c, len) };
            }
            // (s - t)^2 = (t - s)^2 and s t = t s: operand order does not matter.
            let f = |acc, s, t| term::<T, FMA>(acc, s, t, sub);
            // Few components (the usual point dimensions): one instantiation each, measured
            // 10 to 18% faster than the run-time count for LogSumExp and ArgKMin with D = 3.
            match dim {
                1 => one_pass_fixed::<T, 1>(&s, &t, o, f),
                2 => one_pass_fixed::<T, 2>(&s, &t, o, f),
                3 => one_pass_fixed::<T, 3>(&s, &t, o, f),
                4 => one_pass_fixed::<T, 4>(&s, &t, o, f),
                _ => one_pass(&s[..dim], &t[..dim], o, f),
            }
        }
        (true, true) => {
            let mut x: [&[T]; MAX_ONE_PASS_DIM] = [&[]; MAX_ONE_PASS_DIM];
            let mut y: [&[T]; MAX_ONE_PASS_DIM] = [&[]; MAX_ONE_PASS_DIM];
            for c in 0..dim {
                x[c] = unsafe { a.slice(c, len) };
                y[c] = unsafe { b.slice(c, len) };
            }
            let (x, y) = (&x[..dim], &y[..dim]);
            let mut o_chunks = o.chunks_exact_mut(CHUNK);
            for (q, och) in (&mut o_chunks).enumerate() {
                let base = q * CHUNK;
                let mut acc = [T::ZERO; CHUNK];
                for (xc, yc) in x.iter().zip(y) {
                    let xc: &[T; CHUNK] = (&xc[base..base + CHUNK]).try_into().expect("chunk");
                    let yc: &[T; CHUNK] = (&yc[base..base + CHUNK]).try_into().expect("chunk");
                    for k in 0..CHUNK {
                        acc[k] = term::<T, FMA>(acc[k], xc[k], yc[k], sub);
                    }
                }
                och.copy_from_slice(&acc);
            }
            let done = len - o_chunks.into_remainder().len();
            for l in done..len {
                let mut acc = T::ZERO;
                for (xc, yc) in x.iter().zip(y) {
                    acc = term::<T, FMA>(acc, xc[l], yc[l], sub);
                }
                o[l] = acc;
            }
        }
        (false, false) => {
            let mut acc = T::ZERO;
            for c in 0..dim {
                acc = term::<T, FMA>(acc, unsafe { a.scalar(c) }, unsafe { b.scalar(c) }, sub);
            }
            o.fill(acc);
        }
    }
}

/// [`one_pass`] for the first `D` entries of `s` and `t`, with `D` known at compile time.
#[inline(always)]
fn one_pass_fixed<T: Real, const D: usize>(
    s: &[T],
    t: &[&[T]],
    o: &mut [T],
    f: impl Fn(T, T, T) -> T,
) {
    let s: [T; D] = std::array::from_fn(|c| s[c]);
    let t: [&[T]; D] = std::array::from_fn(|c| t[c]);
    let len = o.len();
    let mut o_chunks = o.chunks_exact_mut(CHUNK);
    for (q, och) in (&mut o_chunks).enumerate() {
        let base = q * CHUNK;
        let mut acc = [T::ZERO; CHUNK];
        for c in 0..D {
            let tc: &[T; CHUNK] = (&t[c][base..base + CHUNK]).try_into().expect("chunk");
            for k in 0..CHUNK {
                acc[k] = f(acc[k], s[c], tc[k]);
            }
        }
        och.copy_from_slice(&acc);
    }
    let done = len - o_chunks.into_remainder().len();
    for l in done..len {
        let mut acc = T::ZERO;
        for c in 0..D {
            acc = f(acc, s[c], t[c][l]);
        }
        o[l] = acc;
    }
}

/// `o[l] = sum_c f(s[c], t[c][l])` (as a fold from 0) in chunks of [`CHUNK`] terms.
///
/// Each chunk is computed in registers and stored once, which LLVM vectorises without the
/// runtime alias checks (and their scalar fallback, seen taking a fifth of the time) of a
/// plain indexed loop.
#[inline(always)]
fn one_pass<T: Real>(s: &[T], t: &[&[T]], o: &mut [T], f: impl Fn(T, T, T) -> T) {
    let len = o.len();
    let mut o_chunks = o.chunks_exact_mut(CHUNK);
    for (q, och) in (&mut o_chunks).enumerate() {
        let base = q * CHUNK;
        let mut acc = [T::ZERO; CHUNK];
        for (&sc, tc) in s.iter().zip(t) {
            let tc: &[T; CHUNK] = (&tc[base..base + CHUNK]).try_into().expect("chunk");
            for k in 0..CHUNK {
                acc[k] = f(acc[k], sc, tc[k]);
            }
        }
        och.copy_from_slice(&acc);
    }
    let done = len - o_chunks.into_remainder().len();
    for l in done..len {
        let mut acc = T::ZERO;
        for (&sc, tc) in s.iter().zip(t) {
            acc = f(acc, sc, tc[l]);
        }
        o[l] = acc;
    }
}

/// `acc + (x - y)^2` or `acc + x * y`.
#[inline(always)]
fn term<T: Real, const FMA: bool>(acc: T, x: T, y: T, sub: bool) -> T {
    if sub {
        let d = x - y;
        T::fma::<FMA>(d, d, acc)
    } else {
        T::fma::<FMA>(x, y, acc)
    }
}

/// Terms computed together in registers by the one-pass component loops.
const CHUNK: usize = 32;

/// Number of independent accumulators of the tile reductions: enough vector registers to hide
/// the latency of additions (2 AVX-512 registers of f32, 4 of f64).
const ACC: usize = 32;

/// Sum of a slice, with `ACC` independent accumulators.
#[inline(always)]
pub(crate) fn sum_slice<T: Real>(x: &[T]) -> T {
    let mut acc = [T::ZERO; ACC];
    let mut chunks = x.chunks_exact(ACC);
    for ch in &mut chunks {
        for k in 0..ACC {
            acc[k] += ch[k];
        }
    }
    let mut tail = T::ZERO;
    for &v in chunks.remainder() {
        tail += v;
    }
    fold_acc(acc) + tail
}

/// Dot product of two slices, with `ACC` independent accumulators.
#[inline(always)]
pub(crate) fn dot_slice<T: Real, const FMA: bool>(x: &[T], y: &[T]) -> T {
    let mut acc = [T::ZERO; ACC];
    let mut cx = x.chunks_exact(ACC);
    let mut cy = y.chunks_exact(ACC);
    for (a, b) in (&mut cx).zip(&mut cy) {
        for k in 0..ACC {
            acc[k] = T::fma::<FMA>(a[k], b[k], acc[k]);
        }
    }
    let mut tail = T::ZERO;
    for (&a, &b) in cx.remainder().iter().zip(cy.remainder()) {
        tail = T::fma::<FMA>(a, b, tail);
    }
    fold_acc(acc) + tail
}

/// Maximum of a slice; `NaN` if any element is `NaN`; `-inf` if empty.
#[inline(always)]
#[allow(clippy::eq_op)] // `x - x` is the vectorisable NaN test.
pub(crate) fn max_slice<T: Real>(x: &[T]) -> T {
    let mut acc = [T::NEG_INFINITY; ACC];
    let mut nan = [T::ZERO; ACC];
    let mut chunks = x.chunks_exact(ACC);
    for ch in &mut chunks {
        for k in 0..ACC {
            acc[k] = if ch[k] > acc[k] { ch[k] } else { acc[k] };
            // x - x is 0, or NaN for NaN (and for infinities, which the max handles anyway).
            nan[k] += ch[k] - ch[k];
        }
    }
    let mut m = T::NEG_INFINITY;
    let mut n = T::ZERO;
    for k in 0..ACC {
        m = if acc[k] > m { acc[k] } else { m };
        n += nan[k];
    }
    for &v in chunks.remainder() {
        m = if v > m { v } else { m };
        n += v - v;
    }
    #[allow(clippy::eq_op)]
    let has_nan = n != n;
    if has_nan {
        // Either a NaN term or inf - inf: only a real NaN term makes the maximum NaN.
        if let Some(&v) = x.iter().find(|v| v.partial_cmp(v).is_none()) {
            return v;
        }
    }
    m
}

/// `sum_c (x_c - t_c[base + k])^2` for the `ACC` terms of the chunk at `base`.
#[inline(always)]
fn sqdist_chunk<T: Real, const FMA: bool, const D: usize>(
    x: &[T; D],
    t: &[&[T]; D],
    base: usize,
) -> [T; ACC] {
    let mut d2 = [T::ZERO; ACC];
    if D == 1 {
        // `d * d` is `fma(d, d, 0)` exactly. Accumulating onto zeros made LLVM keep part of
        // `d2` on the stack for `D = 1` in f64 with AVX-512 (misaligned store forwarding):
        // 1.6x slower than `D = 2`. Only `D = 1` takes this form: for larger `D` it made the
        // f32 kernels slower.
        let t0: &[T; ACC] = (&t[0][base..base + ACC]).try_into().expect("chunk");
        for k in 0..ACC {
            let d = x[0] - t0[k];
            d2[k] = d * d;
        }
        return d2;
    }
    for c in 0..D {
        let tc: &[T; ACC] = (&t[c][base..base + ACC]).try_into().expect("chunk");
        for k in 0..ACC {
            let d = x[c] - tc[k];
            d2[k] = T::fma::<FMA>(d, d, d2[k]);
        }
    }
    d2
}

/// `sum_c (x_c - t_c[l])^2` for one term.
#[inline(always)]
fn sqdist_term<T: Real, const FMA: bool, const D: usize>(x: &[T; D], t: &[&[T]; D], l: usize) -> T {
    let mut d2 = T::ZERO;
    for c in 0..D {
        let d = x[c] - t[c][l];
        d2 = T::fma::<FMA>(d, d, d2);
    }
    d2
}

/// Writes `out[l] = s * sum_c (x_c - t_c[l])^2` and returns the maximum of `out` (as
/// [`max_slice`]): the first pass of a fused log-sum-exp of a scaled squared distance. All
/// slices have the length of `out`; `D` is a const generic for the reason given at
/// [`sqdist_exp_dot`].
#[inline(always)]
#[allow(clippy::eq_op)] // `x - x` is the vectorisable NaN test.
pub(crate) fn sqdist_scaled_max<T: Real, const FMA: bool, const D: usize>(
    x: [T; D],
    t: [&[T]; D],
    s: T,
    out: &mut [T],
) -> T {
    let n = out.len();
    let full = n / ACC * ACC;
    let mut mx = [T::NEG_INFINITY; ACC];
    let mut nan = [T::ZERO; ACC];
    let mut base = 0;
    while base < full {
        let mut v = sqdist_chunk::<T, FMA, D>(&x, &t, base);
        for k in 0..ACC {
            v[k] = v[k] * s;
            mx[k] = if v[k] > mx[k] { v[k] } else { mx[k] };
            nan[k] += v[k] - v[k];
        }
        out[base..base + ACC].copy_from_slice(&v);
        base += ACC;
    }
    let mut m = T::NEG_INFINITY;
    let mut flag = T::ZERO;
    for k in 0..ACC {
        m = if mx[k] > m { mx[k] } else { m };
        flag += nan[k];
    }
    for (l, o) in out.iter_mut().enumerate().skip(full) {
        let v = sqdist_term::<T, FMA, D>(&x, &t, l) * s;
        *o = v;
        m = if v > m { v } else { m };
        flag += v - v;
    }
    if flag != flag {
        // A NaN term, or inf - inf: only a real NaN makes the maximum NaN.
        if let Some(&v) = out.iter().find(|v| v.partial_cmp(v).is_none()) {
            return v;
        }
    }
    m
}

/// `sum_l exp(a_l * s) * y_l`, with `ACC` independent accumulators.
#[inline(always)]
pub(crate) fn dot_exp<T: Real, const FMA: bool>(a: &[T], s: T, y: &[T]) -> T {
    let mut acc = [T::ZERO; ACC];
    let mut ca = a.chunks_exact(ACC);
    let mut cy = y.chunks_exact(ACC);
    for (a, y) in (&mut ca).zip(&mut cy) {
        for k in 0..ACC {
            acc[k] = T::fma::<FMA>((a[k] * s).exp::<FMA>(), y[k], acc[k]);
        }
    }
    let mut tail = T::ZERO;
    for (&a, &y) in ca.remainder().iter().zip(cy.remainder()) {
        tail = T::fma::<FMA>((a * s).exp::<FMA>(), y, tail);
    }
    fold_acc(acc) + tail
}

/// `sum_l exp(s * sum_c (x_c - t_c[l])^2) * y_l`: the Gaussian kernel times weights in one
/// pass, with `ACC` independent accumulators. All slices have the length of `y`.
///
/// The number of components is a const generic: with a run-time count LLVM split the
/// squared-distance chunk into odd-sized stores and a wide reload (a store-forwarding stall
/// that made the kernel three times slower).
#[inline(always)]
pub(crate) fn sqdist_exp_dot<T: Real, const FMA: bool, const D: usize>(
    x: [T; D],
    t: [&[T]; D],
    s: T,
    y: &[T],
) -> T {
    radial_exp_dot::<T, FMA, D, false>(x, t, s, y)
}

/// `sum_l exp(s * |x - t_l|) * y_l`: the Laplacian kernel times weights in one pass, as
/// [`sqdist_exp_dot`] with a square root of the squared distance.
#[inline(always)]
pub(crate) fn dist_exp_dot<T: Real, const FMA: bool, const D: usize>(
    x: [T; D],
    t: [&[T]; D],
    s: T,
    y: &[T],
) -> T {
    radial_exp_dot::<T, FMA, D, true>(x, t, s, y)
}

/// [`sqdist_exp_dot`] (`SQRT = false`) and [`dist_exp_dot`] (`SQRT = true`).
#[inline(always)]
fn radial_exp_dot<T: Real, const FMA: bool, const D: usize, const SQRT: bool>(
    x: [T; D],
    t: [&[T]; D],
    s: T,
    y: &[T],
) -> T {
    let r = |d2: T| if SQRT { d2.sqrt() } else { d2 };
    let n = y.len();
    let full = n / ACC * ACC;
    let mut acc = [T::ZERO; ACC];
    let mut base = 0;
    while base < full {
        let w: &[T; ACC] = (&y[base..base + ACC]).try_into().expect("chunk");
        let d2 = sqdist_chunk::<T, FMA, D>(&x, &t, base);
        for k in 0..ACC {
            acc[k] = T::fma::<FMA>((r(d2[k]) * s).exp::<FMA>(), w[k], acc[k]);
        }
        base += ACC;
    }
    let mut tail = T::ZERO;
    for (l, &w) in y.iter().enumerate().skip(full) {
        let d2 = sqdist_term::<T, FMA, D>(&x, &t, l);
        tail = T::fma::<FMA>((r(d2) * s).exp::<FMA>(), w, tail);
    }
    fold_acc(acc) + tail
}

/// Number of values [`sqdist_exp_moments`] returns.
pub(crate) const MOMENTS: usize = MAX_ONE_PASS_DIM + 2;

/// With `e_l = exp(s * |x - t_l|^2) * y_l`: `[sum_l e_l, sum_l e_l (x - t_l) (D values),
/// sum_l e_l |x - t_l|^2]` (then zeros): the Gaussian kernel sum with its first moments, which
/// is what the gradients of a Gaussian kernel sum reduce. `e` (scratch, the length of `y`)
/// receives the `e_l` in a first pass (which also sums the scalar moments); a short pass per
/// component then sums `e_l (x_c - t_c[l])` from L1, each term computed directly from the
/// difference (never as `x sum e - sum e t`, which would cancel). `D` is a const generic for
/// the reason given at [`sqdist_exp_dot`].
#[inline(always)]
pub(crate) fn sqdist_exp_moments<T: Real, const FMA: bool, const D: usize>(
    x: [T; D],
    t: [&[T]; D],
    s: T,
    (y, e): (&[T], &mut [T]),
) -> [T; MOMENTS] {
    let n = y.len();
    let e = &mut e[..n];
    let full = n / ACC * ACC;
    let mut a0 = [T::ZERO; ACC];
    let mut a2 = [T::ZERO; ACC];
    let mut base = 0;
    while base < full {
        let w: &[T; ACC] = (&y[base..base + ACC]).try_into().expect("chunk");
        let d2 = sqdist_chunk::<T, FMA, D>(&x, &t, base);
        let ec: &mut [T; ACC] = (&mut e[base..base + ACC]).try_into().expect("chunk");
        for k in 0..ACC {
            let v = (d2[k] * s).exp::<FMA>() * w[k];
            ec[k] = v;
            a0[k] += v;
            a2[k] = T::fma::<FMA>(v, d2[k], a2[k]);
        }
        base += ACC;
    }
    let mut out = [T::ZERO; MOMENTS];
    let (mut t0, mut t2) = (T::ZERO, T::ZERO);
    for l in full..n {
        let d2 = sqdist_term::<T, FMA, D>(&x, &t, l);
        let v = (d2 * s).exp::<FMA>() * y[l];
        e[l] = v;
        t0 += v;
        t2 = T::fma::<FMA>(v, d2, t2);
    }
    out[0] = fold_acc(a0) + t0;
    out[1 + D] = fold_acc(a2) + t2;
    let dots = diff_dots::<T, FMA, D>(x, t, e, ());
    out[1..1 + D].copy_from_slice(&dots[..D]);
    out
}

/// `[sum_l e_l (x_c - t_c[l]) for c in 0..D]` (then zeros; `t` has `D` component slices, each
/// at least as long as `e`): four components per pass over `e`, then the remaining ones, every
/// group size known at compile time. Each term is formed from its own difference, so nothing
/// cancels. (The unit argument fits the signature `isa`'s dispatch by dimension expects.)
#[inline(always)]
pub(crate) fn diff_dots<T: Real, const FMA: bool, const D: usize>(
    x: [T; D],
    t: [&[T]; D],
    e: &[T],
    (): (),
) -> [T; MOMENTS] {
    let mut out = [T::ZERO; MOMENTS];
    let group = |c: usize| -> ([T; 4], [&[T]; 4]) {
        // Components c..c + 3, the last one repeated past D.
        let at = |m: usize| (c + m).min(D - 1);
        (
            [x[at(0)], x[at(1)], x[at(2)], x[at(3)]],
            [t[at(0)], t[at(1)], t[at(2)], t[at(3)]],
        )
    };
    for g in 0..D / 4 {
        let (xs, ts) = group(4 * g);
        let sums = dot_diff4::<T, FMA, 4>(e, xs, ts);
        out[4 * g..4 * g + 4].copy_from_slice(&sums);
    }
    let c = D / 4 * 4;
    if c < D {
        let (xs, ts) = group(c);
        let sums = match D - c {
            1 => dot_diff4::<T, FMA, 1>(e, xs, ts),
            2 => dot_diff4::<T, FMA, 2>(e, xs, ts),
            _ => dot_diff4::<T, FMA, 3>(e, xs, ts),
        };
        out[c..D].copy_from_slice(&sums[..D - c]);
    }
    out
}

/// `[sum_l e_l (x_k - t_k[l]) for k in 0..K]` (`K <= 4`, then zeros) in one pass over `e`
/// (named accumulator arrays, as in [`dot4`]; the unused ones are compiled away).
#[inline(always)]
fn dot_diff4<T: Real, const FMA: bool, const K: usize>(e: &[T], x: [T; 4], t: [&[T]; 4]) -> [T; 4] {
    const LANES: usize = 16;
    let n = e.len();
    let full = n / LANES * LANES;
    let (mut a0, mut a1, mut a2, mut a3) = (
        [T::ZERO; LANES],
        [T::ZERO; LANES],
        [T::ZERO; LANES],
        [T::ZERO; LANES],
    );
    let mut base = 0;
    while base < full {
        let chunk = |v: &[T]| -> [T; LANES] { (&v[base..base + LANES]).try_into().expect("chunk") };
        let (ec, t0, t1, t2, t3) = (chunk(e), chunk(t[0]), chunk(t[1]), chunk(t[2]), chunk(t[3]));
        for l in 0..LANES {
            a0[l] = T::fma::<FMA>(ec[l], x[0] - t0[l], a0[l]);
            if K > 1 {
                a1[l] = T::fma::<FMA>(ec[l], x[1] - t1[l], a1[l]);
            }
            if K > 2 {
                a2[l] = T::fma::<FMA>(ec[l], x[2] - t2[l], a2[l]);
            }
            if K > 3 {
                a3[l] = T::fma::<FMA>(ec[l], x[3] - t3[l], a3[l]);
            }
        }
        base += LANES;
    }
    let mut out = [a0, a1, a2, a3].map(|a| a.iter().fold(T::ZERO, |s, &v| s + v));
    for (k, o) in out.iter_mut().enumerate().take(K) {
        for l in full..n {
            *o = T::fma::<FMA>(e[l], x[k] - t[k][l], *o);
        }
    }
    out
}

/// `[sum_l w_l y_k[l] for k in 0..4]`: four dot products with the shared factor loaded once
/// per chunk, 16 independent accumulators per column (named arrays: an array of arrays was
/// vectorised into odd pieces). All slices have the length of `w`.
#[inline(always)]
pub(crate) fn dot4<T: Real, const FMA: bool>(w: &[T], y: [&[T]; 4]) -> [T; 4] {
    const LANES: usize = 16;
    let n = w.len();
    let full = n / LANES * LANES;
    let (mut a0, mut a1, mut a2, mut a3) = (
        [T::ZERO; LANES],
        [T::ZERO; LANES],
        [T::ZERO; LANES],
        [T::ZERO; LANES],
    );
    let mut base = 0;
    while base < full {
        let chunk = |v: &[T]| -> [T; LANES] { (&v[base..base + LANES]).try_into().expect("chunk") };
        let (wc, y0, y1, y2, y3) = (chunk(w), chunk(y[0]), chunk(y[1]), chunk(y[2]), chunk(y[3]));
        for l in 0..LANES {
            a0[l] = T::fma::<FMA>(wc[l], y0[l], a0[l]);
            a1[l] = T::fma::<FMA>(wc[l], y1[l], a1[l]);
            a2[l] = T::fma::<FMA>(wc[l], y2[l], a2[l]);
            a3[l] = T::fma::<FMA>(wc[l], y3[l], a3[l]);
        }
        base += LANES;
    }
    let mut out = [a0, a1, a2, a3].map(|a| a.iter().fold(T::ZERO, |s, &v| s + v));
    for (k, o) in out.iter_mut().enumerate() {
        for l in full..n {
            *o = T::fma::<FMA>(w[l], y[k][l], *o);
        }
    }
    out
}

/// `sum_l exp(x_l - m)`, with `ACC` independent accumulators.
#[inline(always)]
pub(crate) fn sum_exp_shifted<T: Real, const FMA: bool>(x: &[T], m: T) -> T {
    let mut acc = [T::ZERO; ACC];
    let mut chunks = x.chunks_exact(ACC);
    for ch in &mut chunks {
        for k in 0..ACC {
            acc[k] += (ch[k] - m).exp::<FMA>();
        }
    }
    let mut tail = T::ZERO;
    for &v in chunks.remainder() {
        tail += (v - m).exp::<FMA>();
    }
    fold_acc(acc) + tail
}

/// Sum of the accumulators, in order. (A pairwise tree here made LLVM vectorise the main
/// loop two lanes at a time: keep this a plain fold.)
#[inline(always)]
fn fold_acc<T: Real>(acc: [T; ACC]) -> T {
    acc.iter().fold(T::ZERO, |s, &v| s + v)
}

/// Whether some element of `x` comes strictly before `thr` in a minimum (`max` false) or
/// maximum (`max` true) order, `NaN` counting as first: `!(v >= thr)` is also true for NaN.
#[inline(always)]
#[allow(clippy::neg_cmp_op_on_partial_ord)] // The negation is what makes NaN count.
pub(crate) fn any_before<T: Real>(x: &[T], thr: T, max: bool) -> bool {
    let mut any = false;
    if max {
        for &v in x {
            any |= !(v <= thr);
        }
    } else {
        for &v in x {
            any |= !(v >= thr);
        }
    }
    any
}
