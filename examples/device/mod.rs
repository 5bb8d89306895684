//! The options every example and benchmark shares, for their `clap` parsers: `--device
//! cpu|cuda|cuda:N` ([`DeviceArg`], flattened into each program's `#[derive(Parser)]` struct)
//! and `--dtype f32|f64` ([`Dtype`]). The device is opened, and the problems an example cannot get
//! past (a build without CUDA support, no usable CUDA device) stop it with one line on stderr
//! and exit code 1; an unknown `--device` value is clap's usage error (exit code 2).
//!
//! The examples create their data on the CPU, move it with `.to_device(&dev)`, bring results
//! back with `.to_device(&Device::Cpu)`, and call [`elapsed`] (which synchronises the device)
//! instead of reading a clock while a GPU may still be working.
#![allow(dead_code)]

use std::time::Instant;

use candle_core::Device;

/// `--device`, shared by every example: `#[command(flatten)] device: device::DeviceArg`.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct DeviceArg {
    /// Where to run: `cpu`, `cuda` (CUDA device 0) or `cuda:N`; `cuda` needs a build with
    /// `--features cuda`.
    #[arg(long, value_name = "cpu|cuda|cuda:N", default_value = "cpu", value_parser = Choice::parse)]
    pub device: Choice,
}

impl DeviceArg {
    /// Opens the device, or stops the program (exit 1) with one line saying why it cannot be
    /// used.
    pub fn open(&self) -> Device {
        open_or_exit(self.device)
    }
}

/// `--dtype f32|f64`: the floating-point type of an example's tensors.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    /// 32-bit floats.
    F32,
    /// 64-bit floats.
    F64,
}

impl Dtype {
    /// Candle's dtype.
    pub fn dtype(self) -> candle_core::DType {
        match self {
            Dtype::F32 => candle_core::DType::F32,
            Dtype::F64 => candle_core::DType::F64,
        }
    }

    /// `f32` or `f64`, as `--dtype` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F64 => "f64",
        }
    }
}

/// What `--device` asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    /// The CPU (the default).
    Cpu,
    /// The CUDA device of this ordinal (`cuda` is `cuda:0`).
    Cuda(usize),
}

impl Choice {
    /// `cpu`, `cuda` or `cuda:N`.
    pub fn parse(s: &str) -> Result<Choice, String> {
        let bad = || format!("--device {s:?}: expected cpu, cuda or cuda:N");
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Choice::Cpu),
            "cuda" => Ok(Choice::Cuda(0)),
            t => match t.strip_prefix("cuda:") {
                Some(n) => n.parse().map(Choice::Cuda).map_err(|_| bad()),
                None => Err(bad()),
            },
        }
    }

    /// The spelling `--device` takes back (`cpu`, `cuda`, `cuda:N` for N > 0), e.g. for a
    /// child process.
    pub fn spec(&self) -> String {
        match self {
            Choice::Cpu => "cpu".to_string(),
            Choice::Cuda(0) => "cuda".to_string(),
            Choice::Cuda(n) => format!("cuda:{n}"),
        }
    }

    /// Opens the device, or says in one line why it cannot be used.
    pub fn open(&self) -> Result<Device, String> {
        match *self {
            Choice::Cpu => Ok(Device::Cpu),
            Choice::Cuda(_) if !candle_core::utils::cuda_is_available() => {
                let name = program_name();
                Err(format!(
                    "cannot use --device {}: this build has no CUDA support; build with the \
                     `cuda` feature: cargo run --release --features cuda --example {name} -- \
                     --device {}",
                    self.spec(),
                    self.spec()
                ))
            }
            Choice::Cuda(n) => Device::new_cuda(n).map_err(|e| {
                format!(
                    "cannot use --device {}: no CUDA device {n} ({})",
                    self.spec(),
                    one_line(&e)
                )
            }),
        }
    }
}

impl std::fmt::Display for Choice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.spec())
    }
}

/// The first line of an error's message, without the backtrace Candle attaches when
/// `RUST_BACKTRACE` is set.
pub fn one_line(e: &candle_core::Error) -> String {
    let mut e = e;
    while let candle_core::Error::WithBacktrace { inner, .. } = e {
        e = inner;
    }
    let text = e.to_string();
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    lines.next().unwrap_or("unknown error").to_string()
}

/// The example's name: the file name of the running program, without the `-HASH` suffix of
/// Cargo's copies in `deps/`.
pub fn program_name() -> String {
    let arg0 = std::env::args_os().next().unwrap_or_default();
    let stem = std::path::Path::new(&arg0)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "example".to_string());
    match stem.rsplit_once('-') {
        Some((name, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            name.to_string()
        }
        _ => stem,
    }
}

/// Prints `NAME: message` on stderr and exits with `code`.
pub fn fail(message: &str, code: i32) -> ! {
    eprintln!("{}: {message}", program_name());
    std::process::exit(code)
}

/// Opens `choice`, or stops the program (exit 1) with the one line of [`Choice::open`].
pub fn open_or_exit(choice: Choice) -> Device {
    choice.open().unwrap_or_else(|e| fail(&e, 1))
}

/// Waits until the work queued on `dev` is done (nothing to wait for on the CPU).
pub fn sync(dev: &Device) -> candle_core::Result<()> {
    dev.synchronize()
}

/// Seconds since `start`, read after the device's queued work is done.
pub fn elapsed(dev: &Device, start: Instant) -> candle_core::Result<f64> {
    dev.synchronize()?;
    Ok(start.elapsed().as_secs_f64())
}

/// `CPU (ISA, T threads)` or `CUDA device N`, for the examples' headers.
pub fn describe(dev: &Device) -> String {
    match dev.location() {
        candle_core::DeviceLocation::Cpu => format!(
            "CPU ({}, {} threads)",
            lazy_kernels::backend::cpu::isa::detect().name(),
            rayon::current_num_threads()
        ),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("CUDA device {gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("Metal device {gpu_id}"),
    }
}
