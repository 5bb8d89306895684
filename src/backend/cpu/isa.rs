//! Run-time choice of the instruction set, made once per process.
//!
//! The tile executor is written once, generic, and instantiated inside `#[target_feature]`
//! functions for AVX-512, AVX2+FMA and the baseline; [`detect`] picks the best the CPU
//! supports (cached, like gemm's function pointer). `LAZY_KERNELS_ISA=avx2|baseline` forces a
//! lower level, for benchmarks and for testing every path on one machine.

use std::sync::OnceLock;

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

/// The level used by reductions: the best the CPU supports, or lower if
/// `LAZY_KERNELS_ISA` asks for it (a request above the hardware is ignored).
pub fn detect() -> Isa {
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
