//! Resource limits: the allocations whose size a user's choice sets or that grow faster than
//! the inputs (the `k` of a k-nearest search, an output's rows and components, the partial
//! states of a reduction, a preconditioner's rank, a batch of right-hand sides or probes, a
//! chunk of predictions, a dense matrix) are checked here before they are made, against the
//! memory the machine or the device reports as available. A request that
//! does not fit is an [`Error::OutOfMemory`] giving the size it would have needed, instead
//! of an abort in the allocator.
//!
//! What "available" means, per device ([`available`]):
//! - the CPU (Linux): the smallest of the kernel's `MemAvailable` (`/proc/meminfo`), the
//!   room left under the process's cgroup v2 limit (`memory.max - memory.current`), and the
//!   room left under its address-space limit (`ulimit -v`: the soft `RLIMIT_AS` of
//!   `/proc/self/limits` minus the `VmSize` of `/proc/self/status`); elsewhere, or when
//!   none can be read, the documented cap [`CAP`];
//! - a CUDA device: the free memory the driver reports (`cuMemGetInfo`).
//!
//! Requests under [`CHECKED_FROM`] are not checked (reading `/proc` costs more than such an
//! allocation), except that an overflowing size computation is always an error.

use candle_core::Device;

use crate::error::{Error, Result};

/// Requests of fewer bytes pass without a check.
pub const CHECKED_FROM: usize = 64 << 20;

/// The bound where the system reports nothing: the largest allocation Rust allows.
pub const CAP: usize = isize::MAX as usize;

/// The bytes that `device` reports as available now, and where the figure comes from.
///
/// ```
/// use candle_core::Device;
/// let (bytes, source) = lazy_kernels::backend::memory::available(&Device::Cpu);
/// assert!(bytes > 0 && !source.is_empty());
/// ```
pub fn available(device: &Device) -> (usize, &'static str) {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => cuda_free(d).unwrap_or((CAP, "no report from the CUDA driver")),
        _ => host_available(),
    }
}

/// The free memory of a CUDA device.
#[cfg(feature = "cuda")]
fn cuda_free(dev: &candle_core::CudaDevice) -> Option<(usize, &'static str)> {
    use candle_core::cuda_backend::cudarc::driver::result;
    dev.cuda_stream().context().bind_to_thread().ok()?;
    let (free, _total) = result::mem_get_info().ok()?;
    Some((free, "the device's free memory (cuMemGetInfo)"))
}

/// The host's available memory (see the module documentation).
fn host_available() -> (usize, &'static str) {
    let kib = |text: &str, field: &str| -> Option<usize> {
        let line = text.lines().find(|l| l.starts_with(field))?;
        let v: usize = line[field.len()..]
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        v.checked_mul(1024)
    };
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let mut best: Option<(usize, &'static str)> = None;
    let mut take = |bytes: Option<usize>, source: &'static str| {
        if let Some(b) = bytes
            && best.is_none_or(|(v, _)| b < v)
        {
            best = Some((b, source));
        }
    };
    take(
        read("/proc/meminfo").and_then(|t| kib(&t, "MemAvailable:")),
        "the host's available memory (MemAvailable in /proc/meminfo)",
    );
    let number = |path: &str| read(path).and_then(|t| t.trim().parse::<usize>().ok());
    take(
        number("/sys/fs/cgroup/memory.max")
            .zip(number("/sys/fs/cgroup/memory.current"))
            .map(|(max, cur)| max.saturating_sub(cur)),
        "the room under the cgroup's memory limit (memory.max - memory.current)",
    );
    let address_limit = read("/proc/self/limits").and_then(|t| {
        let line = t.lines().find(|l| l.starts_with("Max address space"))?;
        line["Max address space".len()..]
            .split_whitespace()
            .next()?
            .parse::<usize>()
            .ok()
    });
    take(
        address_limit
            .zip(read("/proc/self/status").and_then(|t| kib(&t, "VmSize:")))
            .map(|(limit, used)| limit.saturating_sub(used)),
        "the room under the process's address-space limit (ulimit -v)",
    );
    best.unwrap_or((CAP, "no report from the system (the cap isize::MAX)"))
}

/// Bytes in a short human form (`1.5 GiB`).
pub(crate) fn human(bytes: usize) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `Ok` when `bytes` (`None`: the size overflowed `usize`) can be allocated on `device` for
/// `what` (a noun phrase, e.g. "the output of 10 rows x 1e9 columns"); otherwise the error
/// giving the size that would be needed and what is available.
pub(crate) fn reserve(
    op: &'static str,
    what: impl FnOnce() -> String,
    bytes: Option<usize>,
    device: &Device,
) -> Result<()> {
    let Some(bytes) = bytes else {
        return Err(Error::OutOfMemory {
            op,
            detail: format!(
                "{} needs more than {} bytes (usize overflows)",
                what(),
                usize::MAX
            ),
        });
    };
    if bytes < CHECKED_FROM {
        return Ok(());
    }
    let (free, source) = available(device);
    if bytes <= free && bytes <= CAP {
        return Ok(());
    }
    Err(Error::OutOfMemory {
        op,
        detail: format!(
            "{} needs {} ({bytes} bytes), but {source} is {} ({free} bytes)",
            what(),
            human(bytes),
            human(free)
        ),
    })
}

/// The bytes of `counts` elements of `size` bytes each, summed (`None` on overflow).
pub(crate) fn bytes(parts: &[(usize, usize)]) -> Option<usize> {
    parts.iter().try_fold(0usize, |acc, &(count, size)| {
        acc.checked_add(count.checked_mul(size)?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_reports() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(3 << 29), "1.5 GiB");
        assert_eq!(bytes(&[(10, 8), (3, 4)]), Some(92));
        assert_eq!(bytes(&[(usize::MAX, 2)]), None);
        let (free, _) = available(&Device::Cpu);
        assert!(free >= CHECKED_FROM, "{free}");
        // Small requests pass unchecked; an overflow and an absurd size do not.
        reserve("t", || "x".into(), Some(1), &Device::Cpu).unwrap();
        let e = reserve("t", || "the thing".into(), None, &Device::Cpu).unwrap_err();
        assert!(e.to_string().contains("the thing needs more than"), "{e}");
        let e = reserve("t", || "the thing".into(), Some(CAP), &Device::Cpu).unwrap_err();
        assert!(
            e.to_string()
                .contains("out of memory: the thing needs 8.0 EiB"),
            "{e}"
        );
    }
}
