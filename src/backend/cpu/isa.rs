//! Run-time choice of the instruction set, made once per process.
//!
//! The tile executor is written once, generic, and instantiated inside `#[target_feature]`
//! functions for AVX-512, AVX2+FMA and the baseline; [`detect`] picks the best the CPU
//! supports (cached, like gemm's function pointer). `LAZY_KERNELS_ISA=avx2|baseline` forces a
//! lower level, for benchmarks and for testing every path on one machine.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};

/// An instruction-set level of the CPU backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Portable code (SSE2 on x86-64, NEON on aarch64), no FMA on x86-64.
    Baseline,
    /// x86-64 with AVX2 and FMA.
    Avx2,
    /// x86-64 with AVX-512F (and AVX2, FMA).
    Avx512,
}

impl Isa {
    /// Name as accepted by `LAZY_KERNELS_ISA`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Baseline => "baseline",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Every level this CPU can run, lowest first.
    pub fn available() -> Vec<Isa> {
        let best = hardware_best();
        [Isa::Baseline, Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|i| *i <= best)
            .collect()
    }
}

fn hardware_best() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
        {
            return Isa::Avx512;
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Isa::Avx2;
        }
    }
    Isa::Baseline
}

/// A process-wide override set by [`force`] (0: none).
static FORCED: AtomicU8 = AtomicU8::new(0);

/// Forces every later reduction of this process to run with `isa` (clamped to what the CPU
/// supports), or restores the automatic choice with `None`. For tests and benchmarks that
/// compare instruction sets in one process; it affects all threads.
///
/// ```
/// use lazy_kernels::backend::cpu::isa::{self, Isa};
/// isa::force(Some(Isa::Baseline));
/// assert_eq!(isa::detect(), Isa::Baseline);
/// isa::force(None);
/// ```
pub fn force(isa: Option<Isa>) {
    let code = match isa.map(|i| i.min(hardware_best())) {
        None => 0,
        Some(Isa::Baseline) => 1,
        Some(Isa::Avx2) => 2,
        Some(Isa::Avx512) => 3,
    };
    FORCED.store(code, Ordering::Relaxed);
}

/// The level used by reductions: the one set by [`force`], else the best the CPU supports, or
/// lower if the environment variable `LAZY_KERNELS_ISA` asks for it (a request above the
/// hardware is ignored).
pub fn detect() -> Isa {
    match FORCED.load(Ordering::Relaxed) {
        1 => return Isa::Baseline,
        2 => return Isa::Avx2,
        3 => return Isa::Avx512,
        _ => {}
    }
    static CHOICE: OnceLock<Isa> = OnceLock::new();
    *CHOICE.get_or_init(|| {
        let best = hardware_best();
        let asked = std::env::var("LAZY_KERNELS_ISA").ok();
        match asked.as_deref() {
            Some("baseline") | Some("scalar") => Isa::Baseline,
            Some("avx2") => best.min(Isa::Avx2),
            _ => best,
        }
    })
}

use super::kernels;
use crate::math::Real;

/// An instruction set as a type: the executor is generic over it. Elementwise loops are
/// inlined into the executor (compiled with the caller's target features); the horizontal
/// reductions over a tile are separate `#[target_feature]` functions, because inside the
/// large inlined executor LLVM vectorised them poorly (two-lane pieces and spills, seen in
/// the disassembly), while on their own they become clean multi-accumulator loops.
pub(crate) trait Arch: Copy + Send + Sync + 'static {
    /// Whether `a * b + c` is fused.
    const FMA: bool;
    /// Sum of a slice.
    ///
    /// # Safety
    /// The CPU must support the instruction set.
    unsafe fn sum<T: Real>(x: &[T]) -> T;
    /// Dot product of two slices of equal length.
    ///
    /// # Safety
    /// The CPU must support the instruction set.
    unsafe fn dot<T: Real>(x: &[T], y: &[T]) -> T;
    /// Maximum of a slice (`NaN` if any element is `NaN`).
    ///
    /// # Safety
    /// The CPU must support the instruction set.
    unsafe fn max<T: Real>(x: &[T]) -> T;
    /// `sum exp(x - m)`.
    ///
    /// # Safety
    /// The CPU must support the instruction set.
    unsafe fn sum_exp<T: Real>(x: &[T], m: T) -> T;
    /// Whether some element comes strictly before `thr` in the order of a minimum (`max`
    /// false) or maximum (`max` true) reduction, `NaN` counting as first.
    ///
    /// # Safety
    /// The CPU must support the instruction set.
    unsafe fn any_before<T: Real>(x: &[T], thr: T, max: bool) -> bool;
    /// `sum exp(a * s) * y` over slices of equal length.
    ///
    /// # Safety
    /// The CPU must support the instruction set.
    unsafe fn dot_exp<T: Real>(a: &[T], s: T, y: &[T]) -> T;
    /// `sum_l exp(s * sum_c (x_c - t_c[l])^2) * y_l`.
    ///
    /// # Safety
    /// The CPU must support the instruction set.
    unsafe fn sqdist_exp_dot<T: Real>(x: &[T], t: &[&[T]], s: T, y: &[T]) -> T;
    /// `sum_l exp(s * |x - t_l|) * y_l` ([`kernels::dist_exp_dot`]).
    ///
    /// # Safety
    /// The CPU must support the instruction set.
    unsafe fn dist_exp_dot<T: Real>(x: &[T], t: &[&[T]], s: T, y: &[T]) -> T;
    /// `out[l] = s * sum_c (x_c - t_c[l])^2`; returns the maximum of `out`.
    ///
    /// # Safety
    /// The CPU must support the instruction set.
    unsafe fn sqdist_scaled_max<T: Real>(x: &[T], t: &[&[T]], s: T, out: &mut [T]) -> T;
    /// The Gaussian kernel sum and its first moments ([`kernels::sqdist_exp_moments`]).
    ///
    /// # Safety
    /// The CPU must support the instruction set.
    unsafe fn sqdist_exp_moments<T: Real>(
        x: &[T],
        t: &[&[T]],
        s: T,
        y: &[T],
        e: &mut [T],
    ) -> [T; kernels::MOMENTS];
    /// `[sum_l e_l (x_c - t_c[l]) for c]` ([`kernels::diff_dots`]).
    ///
    /// # Safety
    /// The CPU must support the instruction set.
    unsafe fn diff_dots<T: Real>(x: &[T], t: &[&[T]], e: &[T]) -> [T; kernels::MOMENTS];
    /// `[sum_l w_l y_k[l] for k in 0..4]`: four dot products sharing one factor.
    ///
    /// # Safety
    /// The CPU must support the instruction set.
    unsafe fn dot4<T: Real>(w: &[T], y: [&[T]; 4]) -> [T; 4];
}

/// Calls a `kernels` function instantiated for the number of components of `x`.
macro_rules! by_dim {
    ($kernel:ident, $fma:expr, $x:expr, $t:expr, $s:expr, $y:expr; $($d:literal)*) => {
        match $x.len() {
            $($d => match (<[T; $d]>::try_from($x), <[&[T]; $d]>::try_from($t)) {
                (Ok(x), Ok(t)) => kernels::$kernel::<T, $fma, $d>(x, t, $s, $y),
                _ => unreachable!("x and t have one length"),
            },)*
            _ => unreachable!("the planner fuses 1 to 16 components"),
        }
    };
}

macro_rules! arch {
    ($name:ident, $module:ident, $features:literal, $fma:expr) => {
        /// Marker type of an instruction set.
        #[derive(Clone, Copy, Debug)]
        pub(crate) struct $name;

        mod $module {
            use super::kernels;
            use super::Real;

            #[target_feature(enable = $features)]
            #[inline(never)]
            pub(super) unsafe fn sum<T: Real>(x: &[T]) -> T {
                kernels::sum_slice(x)
            }
            #[target_feature(enable = $features)]
            #[inline(never)]
            pub(super) unsafe fn dot<T: Real>(x: &[T], y: &[T]) -> T {
                kernels::dot_slice::<T, $fma>(x, y)
            }
            #[target_feature(enable = $features)]
            #[inline(never)]
            pub(super) unsafe fn max<T: Real>(x: &[T]) -> T {
                kernels::max_slice(x)
            }
            #[target_feature(enable = $features)]
            #[inline(never)]
            pub(super) unsafe fn sum_exp<T: Real>(x: &[T], m: T) -> T {
                kernels::sum_exp_shifted::<T, $fma>(x, m)
            }
            #[target_feature(enable = $features)]
            #[inline(never)]
            pub(super) unsafe fn any_before<T: Real>(x: &[T], thr: T, max: bool) -> bool {
                kernels::any_before(x, thr, max)
            }
            #[target_feature(enable = $features)]
            #[inline(never)]
            pub(super) unsafe fn dot_exp<T: Real>(a: &[T], s: T, y: &[T]) -> T {
                kernels::dot_exp::<T, $fma>(a, s, y)
            }
            #[target_feature(enable = $features)]
            #[inline(never)]
            pub(super) unsafe fn sqdist_exp_dot<T: Real>(x: &[T], t: &[&[T]], s: T, y: &[T]) -> T {
                // One instantiation per dimension (see `kernels::sqdist_exp_dot`).
                by_dim!(sqdist_exp_dot, $fma, x, t, s, y; 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16)
            }
            #[target_feature(enable = $features)]
            #[inline(never)]
            pub(super) unsafe fn dist_exp_dot<T: Real>(x: &[T], t: &[&[T]], s: T, y: &[T]) -> T {
                by_dim!(dist_exp_dot, $fma, x, t, s, y; 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16)
            }
            #[target_feature(enable = $features)]
            #[inline(never)]
            pub(super) unsafe fn sqdist_scaled_max<T: Real>(
                x: &[T],
                t: &[&[T]],
                s: T,
                out: &mut [T],
            ) -> T {
                by_dim!(sqdist_scaled_max, $fma, x, t, s, out; 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16)
            }
            #[target_feature(enable = $features)]
            #[inline(never)]
            pub(super) unsafe fn sqdist_exp_moments<T: Real>(
                x: &[T],
                t: &[&[T]],
                s: T,
                y: &[T],
                e: &mut [T],
            ) -> [T; kernels::MOMENTS] {
                by_dim!(sqdist_exp_moments, $fma, x, t, s, (y, e); 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16)
            }
            #[target_feature(enable = $features)]
            #[inline(never)]
            pub(super) unsafe fn diff_dots<T: Real>(
                x: &[T],
                t: &[&[T]],
                e: &[T],
            ) -> [T; kernels::MOMENTS] {
                by_dim!(diff_dots, $fma, x, t, e, (); 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16)
            }
            #[target_feature(enable = $features)]
            #[inline(never)]
            pub(super) unsafe fn dot4<T: Real>(w: &[T], y: [&[T]; 4]) -> [T; 4] {
                kernels::dot4::<T, $fma>(w, y)
            }
        }

        impl Arch for $name {
            const FMA: bool = $fma;
            #[inline(always)]
            unsafe fn sum<T: Real>(x: &[T]) -> T {
                // SAFETY: forwarded from the caller.
                unsafe { $module::sum(x) }
            }
            #[inline(always)]
            unsafe fn dot<T: Real>(x: &[T], y: &[T]) -> T {
                // SAFETY: forwarded from the caller.
                unsafe { $module::dot(x, y) }
            }
            #[inline(always)]
            unsafe fn max<T: Real>(x: &[T]) -> T {
                // SAFETY: forwarded from the caller.
                unsafe { $module::max(x) }
            }
            #[inline(always)]
            unsafe fn sum_exp<T: Real>(x: &[T], m: T) -> T {
                // SAFETY: forwarded from the caller.
                unsafe { $module::sum_exp(x, m) }
            }
            #[inline(always)]
            unsafe fn any_before<T: Real>(x: &[T], thr: T, max: bool) -> bool {
                // SAFETY: forwarded from the caller.
                unsafe { $module::any_before(x, thr, max) }
            }
            #[inline(always)]
            unsafe fn dot_exp<T: Real>(a: &[T], s: T, y: &[T]) -> T {
                // SAFETY: forwarded from the caller.
                unsafe { $module::dot_exp(a, s, y) }
            }
            #[inline(always)]
            unsafe fn sqdist_exp_dot<T: Real>(x: &[T], t: &[&[T]], s: T, y: &[T]) -> T {
                // SAFETY: forwarded from the caller.
                unsafe { $module::sqdist_exp_dot(x, t, s, y) }
            }
            #[inline(always)]
            unsafe fn dist_exp_dot<T: Real>(x: &[T], t: &[&[T]], s: T, y: &[T]) -> T {
                // SAFETY: forwarded from the caller.
                unsafe { $module::dist_exp_dot(x, t, s, y) }
            }
            #[inline(always)]
            unsafe fn sqdist_scaled_max<T: Real>(x: &[T], t: &[&[T]], s: T, out: &mut [T]) -> T {
                // SAFETY: forwarded from the caller.
                unsafe { $module::sqdist_scaled_max(x, t, s, out) }
            }
            #[inline(always)]
            unsafe fn sqdist_exp_moments<T: Real>(
                x: &[T],
                t: &[&[T]],
                s: T,
                y: &[T],
                e: &mut [T],
            ) -> [T; kernels::MOMENTS] {
                // SAFETY: forwarded from the caller.
                unsafe { $module::sqdist_exp_moments(x, t, s, y, e) }
            }
            #[inline(always)]
            unsafe fn diff_dots<T: Real>(x: &[T], t: &[&[T]], e: &[T]) -> [T; kernels::MOMENTS] {
                // SAFETY: forwarded from the caller.
                unsafe { $module::diff_dots(x, t, e) }
            }
            #[inline(always)]
            unsafe fn dot4<T: Real>(w: &[T], y: [&[T]; 4]) -> [T; 4] {
                // SAFETY: forwarded from the caller.
                unsafe { $module::dot4(w, y) }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
arch!(Avx512, avx512_kernels, "avx512f,avx2,fma", true);
#[cfg(target_arch = "x86_64")]
arch!(Avx2, avx2_kernels, "avx2,fma", true);
#[cfg(target_arch = "x86_64")]
arch!(Baseline, baseline_kernels, "sse2", false);
#[cfg(target_arch = "aarch64")]
arch!(Baseline, baseline_kernels, "neon", true);
