//! Small helpers shared by the benchmark programs' reports.
#![allow(dead_code)]

/// The CPU's model name from `/proc/cpuinfo`, or "unknown".
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string())
}

/// `10^e` for a power of ten, else the number.
pub fn fmt_n(n: usize) -> String {
    let e = (n as f64).log10().round() as u32;
    if 10usize.pow(e) == n {
        format!("10^{e}")
    } else {
        n.to_string()
    }
}
