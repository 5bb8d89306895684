//! Small helpers shared by the benchmark programs' reports.
#![allow(dead_code)]

/// The CPU from `/proc/cpuinfo`: its model name, then its family, model and clock, which tell
/// apart CPUs that a virtual machine names alike (`AMD EPYC (family 23, model 1, 2.0 GHz)`), or
/// "unknown".
pub fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| {
        info.lines()
            .find(|l| l.split(':').next().map(str::trim) == Some(key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let Some(name) = field("model name") else {
        return "unknown".to_string();
    };
    let mut details = Vec::new();
    if let Some(f) = field("cpu family") {
        details.push(format!("family {f}"));
    }
    if let Some(m) = field("model") {
        details.push(format!("model {m}"));
    }
    if let Some(mhz) = field("cpu MHz").and_then(|v| v.parse::<f64>().ok()) {
        details.push(format!("{:.1} GHz", mhz / 1000.0));
    }
    if details.is_empty() {
        name
    } else {
        format!("{name} ({})", details.join(", "))
    }
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

/// Today's date and time in UTC, `YYYY-MM-DD HH:MM UTC` (days to civil date: H. Hinnant's
/// `civil_from_days`).
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// The header every benchmark prints first, so that its figures say where they came from:
/// lines `- machine: CPU model, N cores, ISA` and `- date: ...`, and the command that ran it.
pub fn machine_header() -> String {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!(
        "- machine: {}, {cores} cores, {} (rayon threads: {})\n- date: {}\n- arguments: {}",
        cpu_model(),
        lazy_kernels::backend::cpu::isa::detect().name(),
        rayon::current_num_threads(),
        utc_now(),
        if args.is_empty() {
            "(none)".to_string()
        } else {
            args.join(" ")
        }
    )
}

/// A progress bar of `len` steps on standard error for a benchmark's long loops (indicatif:
/// drawn only when standard error is a terminal, so a redirected table stays clean).
pub fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {pos}/{len} {elapsed_precise} (eta {eta})",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}
