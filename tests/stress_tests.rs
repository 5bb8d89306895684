//! Stress (issue 17, point 6): many threads at once, several processes sharing one kernel
//! cache with one killed mid-write, and linear memory proved under an address-space limit.
//!
//! * **Threads.** Eight threads run reductions (sums, log-sum-exps, `argkmin`), solves and
//!   gradients (through reductions and through solves) at once, on shared tensors and on
//!   private copies, and every result must be bit-identical to a single-threaded run of the same
//!   call: the CPU backend splits rows and terms by the size of the (shared) rayon pool, never
//!   by which thread calls it.
//! * **Disk cache.** Worker processes (this test binary re-run with a filter and
//!   [`CHILD_VAR`]) store and load the same and different entries of one
//!   [`DiskCache`] directory at once; one more worker writing large entries is killed
//!   (SIGKILL) while a write is under way. No load may ever return anything but the PTX stored
//!   for its kernel and source.
//! * **Memory.** A reduction, a solve with its gradient and a stochastic GP step run in a child
//!   process under `ulimit -v` (RLIMIT_AS) a few hundred MiB above the child's own baseline
//!   plus its inputs. A control child asked for the dense `M x N` matrix under the same limit
//!   must fail. In a release build (`cargo test --release --test stress_tests`) the sizes are
//!   those where one dense matrix needs at least ten times the limit (asserted: about 17x, with
//!   M = 100, N = 10^7 for the reduction and N = 25,000 for the solve and the GP). The debug
//!   build of `cargo test` evaluates about 10^7 pairs per second, too slow for those sizes in
//!   a minute, so there the reduction has N = 10^6 (a dense matrix 2.4x the limit, and the
//!   control still fails) and the solve and the GP N = 1,500 (a smoke test of the limit only).
//!
//! Children are spawned through `sh -c 'ulimit -v ...; exec "$0" ...'`, so no `libc` is needed.

mod common;

use std::path::Path as FsPath;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor, Var};
use common::Rng;
use lazy_kernels::backend::cuda::cache::DiskCache;
use lazy_kernels::gp::{ExactGp, GpSettings, NllMethod, Positive};
use lazy_kernels::{Axis, Kernel, KernelOperator, LazyTensor, Preconditioner, Rank, SolveOptions};

/// The environment variable that turns a run of this binary into a child process: its value
/// names the role (see [`child_process_entry`]).
const CHILD_VAR: &str = "LK_STRESS_CHILD";

/// The line prefix of a child's report.
const REPORT: &str = "LK_STRESS_REPORT";

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

// ---------------------------------------------------------------------------------------------
// Threads
// ---------------------------------------------------------------------------------------------

/// The inputs of the thread jobs: points x `(100, 3)`, y `(700, 3)`, weights b `(N, 2)` and a
/// bandwidth, in one dtype.
#[derive(Clone)]
struct Inputs {
    x: Tensor,
    y: Tensor,
    b: Tensor,
    s: Tensor,
}

impl Inputs {
    fn new(dtype: DType) -> Inputs {
        let mut r = Rng(0x57e55);
        let f = |t: Tensor| t.to_dtype(dtype).unwrap();
        Inputs {
            x: f(r.tensor(&[100, 3], -1.0, 1.0)),
            y: f(r.tensor(&[700, 3], -1.0, 1.0)),
            b: f(r.tensor(&[700, 2], -1.0, 1.0)),
            s: f(Tensor::new(&[0.6f64], &Device::Cpu).unwrap()),
        }
    }

    /// A deep copy (new storage), so that "separate" jobs share nothing with others.
    fn deep_copy(&self) -> Inputs {
        let c = |t: &Tensor| t.copy().unwrap();
        Inputs {
            x: c(&self.x),
            y: c(&self.y),
            b: c(&self.b),
            s: c(&self.s),
        }
    }
}

/// The bits of every element of `t` (any float dtype, or i64 indices).
fn bits(t: &Tensor) -> Vec<u64> {
    let t = t.flatten_all().unwrap();
    match t.dtype() {
        DType::F64 => t
            .to_vec1::<f64>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect(),
        DType::F32 => t
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits() as u64)
            .collect(),
        DType::I64 => t
            .to_vec1::<i64>()
            .unwrap()
            .iter()
            .map(|&v| v as u64)
            .collect(),
        DType::U32 => t
            .to_vec1::<u32>()
            .unwrap()
            .iter()
            .map(|&v| v as u64)
            .collect(),
        other => panic!("bits: unexpected dtype {other:?}"),
    }
}

/// A Gaussian kernel sum `sum_j exp(-|x_i - y_j|^2 / (2 s^2)) b_j` as a lazy tensor.
fn gauss(p: &Inputs) -> Res<LazyTensor> {
    let (x, y, b, s) = (
        LazyTensor::vi(&p.x)?,
        LazyTensor::vj(&p.y)?,
        LazyTensor::vj(&p.b)?,
        LazyTensor::param(&p.s)?,
    );
    let names = [("x", &x), ("y", &y), ("b", &b), ("s", &s)];
    Ok(LazyTensor::parse(
        "Exp(-SqDist(x, y) / (2.0 * Square(s))) * b",
        &names,
    )?)
}

/// One job: a name and a computation whose outputs (as bits) must not depend on the thread.
type Job = (&'static str, fn(&Inputs) -> Res<Vec<Vec<u64>>>);

fn jobs() -> Vec<Job> {
    vec![
        ("sum over j", |p| Ok(vec![bits(&gauss(p)?.sum(Axis::J)?)])),
        ("sum over i", |p| Ok(vec![bits(&gauss(p)?.sum(Axis::I)?)])),
        ("logsumexp over j", |p| {
            let (x, y) = (LazyTensor::vi(&p.x)?, LazyTensor::vj(&p.y)?);
            Ok(vec![bits(&(-x.sqdist(&y)).logsumexp(Axis::J)?)])
        }),
        ("argkmin(5) over j and i", |p| {
            let (x, y) = (LazyTensor::vi(&p.x)?, LazyTensor::vj(&p.y)?);
            let d = x.sqdist(&y);
            Ok(vec![
                bits(&d.argkmin(5, Axis::J)?),
                bits(&d.argkmin(5, Axis::I)?),
            ])
        }),
        ("gradient of a sum (x, y, b, s)", |p| {
            let vars = [&p.x, &p.y, &p.b, &p.s].map(|t| Var::from_tensor(t).unwrap());
            let q = Inputs {
                x: vars[0].as_tensor().clone(),
                y: vars[1].as_tensor().clone(),
                b: vars[2].as_tensor().clone(),
                s: vars[3].as_tensor().clone(),
            };
            let out = gauss(&q)?.sum(Axis::J)?;
            let g = out.sqr()?.sum_all()?.backward()?;
            Ok(vars
                .iter()
                .map(|v| bits(g.get(v).expect("a gradient")))
                .collect())
        }),
        ("solve and its gradient (b, lengthscale)", |p| {
            // 150 of the points: every product is a reduction over 150 x 150 pairs.
            let l = Var::from_tensor(&p.s)?;
            let b = Var::from_tensor(&p.b.narrow(0, 0, 150)?)?;
            let y = p.y.narrow(0, 0, 150)?;
            let k = KernelOperator::new(Kernel::gaussian(l.as_tensor()), &y, &y)?;
            let opts = SolveOptions {
                tol: 1e-4,
                max_iters: 200,
                preconditioner: Preconditioner::PivotedCholesky(Rank::Fixed(20)),
                ..SolveOptions::default()
            };
            let (a, info) = k.solve(b.as_tensor(), 1.0, &opts)?;
            let g = a.sqr()?.sum_all()?.backward()?;
            Ok(vec![
                bits(&a),
                vec![info.iterations as u64],
                bits(g.get(&l).expect("d/dl")),
                bits(g.get(&b).expect("d/db")),
            ])
        }),
    ]
}

/// Rounds of every job per thread.
const ROUNDS: usize = 1;

/// Eight threads run every job, each in its own order, on the shared inputs
/// (`shared`) or on private deep copies; every output must equal the single-threaded one bit
/// for bit.
fn threads_agree_with_one_thread(dtype: DType, shared: bool) {
    let inputs = Inputs::new(dtype);
    let jobs = jobs();
    let want: Vec<Vec<Vec<u64>>> = jobs.iter().map(|(_, f)| f(&inputs).unwrap()).collect();
    let want = Arc::new(want);
    let t0 = Instant::now();
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let (want, jobs) = (Arc::clone(&want), jobs.clone());
            let mine = if shared {
                inputs.clone()
            } else {
                inputs.deep_copy()
            };
            std::thread::spawn(move || -> Result<usize, String> {
                let mut runs = 0;
                for round in 0..ROUNDS {
                    for k in 0..jobs.len() {
                        // Each thread and round starts at another job, so that different
                        // jobs overlap in time.
                        let j = (k + t + round) % jobs.len();
                        let (name, f) = jobs[j];
                        let got = f(&mine).map_err(|e| format!("{name}: {e}"))?;
                        if got != want[j] {
                            return Err(format!(
                                "thread {t}, round {round}: {name} ({dtype:?}) differs from \
                                 the single-threaded run"
                            ));
                        }
                        runs += 1;
                    }
                }
                Ok(runs)
            })
        })
        .collect();
    let runs: usize = handles
        .into_iter()
        .map(|h| h.join().expect("a thread panicked").unwrap())
        .sum();
    eprintln!(
        "threads ({dtype:?}, {}): {runs} runs bit-identical in {:.1}s",
        if shared { "shared" } else { "separate" },
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn threads_on_shared_tensors_match_one_thread_bit_for_bit() {
    threads_agree_with_one_thread(DType::F32, true);
    threads_agree_with_one_thread(DType::F64, true);
}

#[test]
fn threads_on_separate_tensors_match_one_thread_bit_for_bit() {
    threads_agree_with_one_thread(DType::F32, false);
    threads_agree_with_one_thread(DType::F64, false);
}

// ---------------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------------

/// The entry point of child processes: does nothing in a normal test run; with [`CHILD_VAR`]
/// set, plays that role (`cache-worker`, `cache-big-writer` or `memory`), prints a line
/// starting with [`REPORT`] and exits non-zero on failure.
#[test]
fn child_process_entry() {
    let Ok(role) = std::env::var(CHILD_VAR) else {
        return;
    };
    let result = match role.as_str() {
        "cache-worker" => cache_worker(),
        "cache-big-writer" => cache_big_writer(),
        "memory" => memory_child(),
        other => Err(format!("unknown child role {other:?}").into()),
    };
    // libtest has already printed "test child_process_entry ... " on this line.
    match result {
        Ok(r) => println!("\n{REPORT} ok {r}"),
        Err(e) => {
            println!("\n{REPORT} error {e}");
            std::process::exit(3);
        }
    }
}

fn env_var(name: &str) -> Res<String> {
    std::env::var(name).map_err(|_| format!("{name} is not set").into())
}

fn env_usize(name: &str) -> Res<usize> {
    Ok(env_var(name)?.parse()?)
}

/// This test binary as a child process in `role`, with `env`; under `ulimit -v limit_kib`
/// (RLIMIT_AS) when given, through `sh -c`. One malloc arena (each extra arena reserves up to
/// 128 MiB of address space that it never uses) and two rayon threads keep the child's address
/// space predictable.
fn child(role: &str, env: &[(&str, String)], limit_kib: Option<u64>) -> Command {
    let exe = std::env::current_exe().expect("the test binary's path");
    let ulimit = match limit_kib {
        Some(k) => format!("ulimit -v {k} || exit 90; "),
        None => String::new(),
    };
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "{ulimit}exec \"$0\" child_process_entry --exact --nocapture --test-threads=1"
        ))
        .arg(exe)
        .env(CHILD_VAR, role)
        .env("MALLOC_ARENA_MAX", "1")
        .env("RAYON_NUM_THREADS", "2")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs a child to its end: whether it exited 0, its report line (if any) and all its output.
fn run_child(role: &str, env: &[(&str, String)], limit_kib: Option<u64>) -> (bool, String, String) {
    let out = child(role, env, limit_kib)
        .output()
        .expect("spawning a child");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report = text
        .lines()
        .find_map(|l| l.strip_prefix(REPORT))
        .unwrap_or("")
        .trim()
        .to_string();
    (out.status.success(), report, text)
}

// ---------------------------------------------------------------------------------------------
// Disk cache: processes at once, one killed mid-write
// ---------------------------------------------------------------------------------------------

const ARCH: &str = "compute_90";
/// Kernel names every worker writes (each with two sources, so that a name's entry keeps
/// changing source under the readers).
const SHARED: [&str; 3] = ["lk_shared0", "lk_shared1", "lk_shared2"];
const SOURCES: [&str; 2] = ["source A", "source B"];
/// The source of the killed writer's (large) entries, under `SHARED[0]`.
const BIG_SOURCE: &str = "source big";

/// The PTX that every process stores for `(name, source)`: `lines` lines naming both, so that
/// an entry returned for the wrong kernel or source, or cut short, cannot pass for another.
fn ptx_for(name: &str, source: &str, lines: usize) -> String {
    let mut s = format!(".version 8.0\n.target sm_90\n// {name} from {source}\n");
    for k in 0..lines {
        s.push_str(&format!("// {name} {source} line {k}\n"));
    }
    s
}

fn lines_of(source: &str) -> usize {
    if source == BIG_SOURCE {
        // About 16 MiB: the write takes long enough to be killed in the middle.
        400_000
    } else {
        200
    }
}

/// A load of `(name, source)` is either a miss or exactly the PTX stored for them.
fn check_load(c: &DiskCache, name: &str, source: &str) -> Res<bool> {
    match c.load(name, ARCH, source) {
        None => Ok(false),
        Some(p) if p == ptx_for(name, source, lines_of(source)) => Ok(true),
        Some(p) => Err(format!(
            "CORRUPT: load({name}, {source}) returned {} bytes that are not its PTX",
            p.len()
        )
        .into()),
    }
}

/// A worker: rounds of loads and stores of the shared names (both sources, and the big
/// writer's entry) and of names of its own.
fn cache_worker() -> Res<String> {
    let c = DiskCache::at(FsPath::new(&env_var("LK_STRESS_DIR")?));
    let id = env_usize("LK_STRESS_ID")?;
    let rounds = env_usize("LK_STRESS_ROUNDS")?;
    let own: Vec<String> = (0..2).map(|k| format!("lk_worker{id}_{k}")).collect();
    let (mut hits, mut misses, mut stores) = (0, 0, 0);
    for round in 0..rounds {
        for (k, name) in SHARED.iter().enumerate() {
            let source = SOURCES[(id + k + round) % 2];
            for s in SOURCES.iter().chain([&BIG_SOURCE]) {
                if check_load(&c, name, s)? {
                    hits += 1;
                } else {
                    misses += 1;
                }
            }
            c.store(name, ARCH, source, &ptx_for(name, source, lines_of(source)))?;
            stores += 1;
            if check_load(&c, name, source)? {
                hits += 1;
            } else {
                misses += 1;
            }
        }
        for name in &own {
            let source = SOURCES[round % 2];
            c.store(name, ARCH, source, &ptx_for(name, source, lines_of(source)))?;
            stores += 1;
            // Nobody else writes this name: the entry must be there.
            if !check_load(&c, name, source)? {
                return Err(
                    format!("{name}: its own entry is missing right after the store").into(),
                );
            }
            hits += 1;
        }
    }
    Ok(format!(
        "worker {id}: {stores} stores, {hits} hits, {misses} misses, no corrupt entry"
    ))
}

/// Stores the large entry over and over until it is killed.
fn cache_big_writer() -> Res<String> {
    let c = DiskCache::at(FsPath::new(&env_var("LK_STRESS_DIR")?));
    let ptx = ptx_for(SHARED[0], BIG_SOURCE, lines_of(BIG_SOURCE));
    loop {
        c.store(SHARED[0], ARCH, BIG_SOURCE, &ptx)?;
    }
}

/// The temporary files in `dir` (a writer's file before its rename).
fn temp_files(dir: &FsPath) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(".tmp"))
                .collect()
        })
        .unwrap_or_default()
}

/// Starts the big writer and kills it (SIGKILL) as soon as its temporary file exists, that
/// is in the middle of a store; retries until a kill leaves the temporary file behind (the
/// writer died between creating it and renaming it). Returns the tries taken.
fn kill_a_writer_mid_write(dir: &FsPath) -> usize {
    let env = [("LK_STRESS_DIR", dir.display().to_string())];
    for tries in 1..=20 {
        let mut w = child("cache-big-writer", &env, None)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning the writer");
        let pid = w.id();
        let mine = |n: &String| n.contains(&format!(".tmp{pid}-"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !temp_files(dir).iter().any(mine) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        w.kill().expect("SIGKILL");
        let status = w.wait().expect("waiting for the killed writer");
        assert!(!status.success(), "the writer was not killed: {status}");
        if temp_files(dir).iter().any(mine) {
            return tries;
        }
    }
    panic!("in 20 tries, no kill landed inside a store");
}

#[test]
fn processes_share_the_disk_cache_and_a_killed_writer_corrupts_nothing() {
    let dir = std::env::temp_dir().join(format!("lk-stress-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let t0 = Instant::now();
    let workers = 4;
    let spawn_worker = |id: usize| {
        let env = [
            ("LK_STRESS_DIR", dir.display().to_string()),
            ("LK_STRESS_ID", id.to_string()),
            ("LK_STRESS_ROUNDS", "150".to_string()),
        ];
        child("cache-worker", &env, None)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning a worker")
    };
    let running: Vec<_> = (0..workers).map(spawn_worker).collect();
    // One writer killed while the workers run, and another one after they are done.
    let tries = kill_a_writer_mid_write(&dir);
    let mut reports = Vec::new();
    for w in running {
        let out = w.wait_with_output().expect("a worker");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        let report = text
            .lines()
            .find_map(|l| l.strip_prefix(REPORT))
            .map(str::trim);
        assert!(
            out.status.success() && report.is_some_and(|r| r.starts_with("ok")),
            "a worker failed ({}):\n{text}",
            out.status
        );
        reports.push(report.unwrap_or_default().to_string());
    }
    let tries_after = kill_a_writer_mid_write(&dir);
    let leftovers = temp_files(&dir);
    assert!(!leftovers.is_empty());

    // Readers after the kills: every entry is a miss or its exact PTX.
    let c = DiskCache::at(&dir);
    let mut names: Vec<String> = SHARED.iter().map(|s| s.to_string()).collect();
    names.extend((0..workers).flat_map(|id| (0..2).map(move |k| format!("lk_worker{id}_{k}"))));
    for name in &names {
        for s in SOURCES.iter().chain([&BIG_SOURCE]) {
            check_load(&c, name, s).unwrap();
        }
    }
    // A fresh worker in the same directory, leftovers and all, finds and writes entries as
    // before, and a later store of the killed writer's entry succeeds and reads back.
    let (ok, report, text) = run_child(
        "cache-worker",
        &[
            ("LK_STRESS_DIR", dir.display().to_string()),
            ("LK_STRESS_ID", "9".into()),
            ("LK_STRESS_ROUNDS", "5".into()),
        ],
        None,
    );
    assert!(ok && report.starts_with("ok"), "{text}");
    let big = ptx_for(SHARED[0], BIG_SOURCE, lines_of(BIG_SOURCE));
    c.store(SHARED[0], ARCH, BIG_SOURCE, &big).unwrap();
    assert!(check_load(&c, SHARED[0], BIG_SOURCE).unwrap());
    eprintln!(
        "disk cache: {workers} workers [{}], writers killed mid-store after {tries} and \
         {tries_after} tries, {} temporary files left behind (never read), {:.1}s",
        reports.join("; "),
        leftovers.len(),
        t0.elapsed().as_secs_f64()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Memory: linear, under an address-space limit
// ---------------------------------------------------------------------------------------------

/// What the address-space limit leaves for the work above the child's baseline and its
/// inputs.
const SLACK_MIB: u64 = 256;

/// A memory job: `(what, M, N)`, M the rows of the reduction (unused by the solve and the GP,
/// which are `N x N`).
#[derive(Clone, Copy, Debug)]
struct MemJob {
    what: &'static str,
    m: usize,
    n: usize,
}

impl MemJob {
    /// Bytes of the job's input tensors (f64).
    fn input_bytes(&self) -> u64 {
        let (m, n) = (self.m as u64, self.n as u64);
        8 * match self.what {
            // x (M, 1), y (N, 1), and a copy of y read back for the reference.
            "reduce" | "dense" => m + 2 * n,
            // x (N, 2) and b (N, 1).
            "solve" => 3 * n,
            // x (N, 2) and y (N,).
            "gp" => 3 * n,
            _ => unreachable!(),
        }
    }

    /// Bytes of one dense `M x N` (or `N x N`) f64 matrix.
    fn dense_bytes(&self) -> u64 {
        let rows = if self.what == "reduce" || self.what == "dense" {
            self.m
        } else {
            self.n
        };
        8 * rows as u64 * self.n as u64
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("LK_STRESS_WHAT", self.what.to_string()),
            ("LK_STRESS_M", self.m.to_string()),
            ("LK_STRESS_N", self.n.to_string()),
        ]
    }

    fn tiny(&self) -> MemJob {
        MemJob {
            m: self.m.min(10),
            n: 200,
            ..*self
        }
    }
}

/// The VmPeak of this process in KiB, from /proc/self/status.
fn vm_peak_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmPeak:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn memory_child() -> Res<String> {
    let what = env_var("LK_STRESS_WHAT")?;
    let (m, n) = (env_usize("LK_STRESS_M")?, env_usize("LK_STRESS_N")?);
    let t0 = Instant::now();
    let r = match what.as_str() {
        "reduce" => memory_reduce(m, n)?,
        "dense" => memory_dense(m, n)?,
        "solve" => memory_solve(n)?,
        "gp" => memory_gp(n)?,
        other => return Err(format!("unknown memory job {other:?}").into()),
    };
    Ok(format!(
        "{what} M={m} N={n}: {r}; VmPeak {} KiB; {:.1}s",
        vm_peak_kib(),
        t0.elapsed().as_secs_f64()
    ))
}

/// Points `(n, d)` uniform in `[-1, 1)`, f64.
fn points(seed: u64, n: usize, d: usize) -> Tensor {
    Rng(seed).tensor(&[n, d], -1.0, 1.0)
}

/// `sum_j exp(-(x_i - y_j)^2)` for `m` points against `n` in 1D, checked on two rows against a
/// plain loop in f64.
fn memory_reduce(m: usize, n: usize) -> Res<String> {
    let (x, y) = (points(3, m, 1), points(4, n, 1));
    let out = (-LazyTensor::vi(&x)?.sqdist(&LazyTensor::vj(&y)?))
        .exp()
        .sum(Axis::J)?;
    let got = out.flatten_all()?.to_vec1::<f64>()?;
    let (xv, yv) = (
        x.flatten_all()?.to_vec1::<f64>()?,
        y.flatten_all()?.to_vec1::<f64>()?,
    );
    let mut worst: f64 = 0.0;
    for i in [0, m - 1] {
        let want: f64 = yv.iter().map(|v| (-(xv[i] - v).powi(2)).exp()).sum();
        worst = worst.max((got[i] - want).abs() / want);
    }
    if worst > 1e-10 {
        return Err(format!("rows 0 and M-1 differ from a loop by {worst:.1e}").into());
    }
    Ok(format!("sum row 0 = {:.6}, error {worst:.1e}", got[0]))
}

/// The control: the dense `(m, n)` matrix of `-(x_i - y_j)^2` by a Candle matrix product.
fn memory_dense(m: usize, n: usize) -> Res<String> {
    let (x, y) = (points(3, m, 1), points(4, n, 1));
    let dense = lazy_kernels::linalg::matmul(&x, &y.t()?)?;
    Ok(format!("dense {:?} built", dense.dims()))
}

/// The Gaussian-kernel system of the solve and GP jobs: `n` points in `[-1, 1)^2` and a
/// lengthscale of `0.6 / sqrt(n)`, so that each point has about one neighbour within two
/// lengthscales at every `n`: with a ridge of 1, `K + I` is well conditioned and CG converges
/// in a few iterations (the adjoint solve of the gradient must converge too).
fn memory_problem(n: usize) -> (Tensor, f64) {
    (points(5, n, 2), 0.6 / (n as f64).sqrt())
}

/// `(K + I) a = b` with a rank-10 preconditioner and at most 10 iterations, and the
/// gradient of `sum(a^2)` with respect to `b` and the lengthscale.
fn memory_solve(n: usize) -> Res<String> {
    let (x, l) = memory_problem(n);
    let l = Var::new(&[l], &Device::Cpu)?;
    let b = Var::from_tensor(&points(6, n, 1))?;
    let k = KernelOperator::new(Kernel::gaussian(l.as_tensor()), &x, &x)?;
    let opts = SolveOptions {
        tol: 1e-2,
        max_iters: 10,
        preconditioner: Preconditioner::PivotedCholesky(Rank::Fixed(10)),
        check_residual: false,
        ..SolveOptions::default()
    };
    let (a, info) = k.solve(b.as_tensor(), 1.0, &opts)?;
    let g = a.sqr()?.sum_all()?.backward()?;
    let dl = g.get(&l).ok_or("no d/dl")?.to_vec1::<f64>()?[0];
    let db = g
        .get(&b)
        .ok_or("no d/db")?
        .sqr()?
        .sum_all()?
        .to_scalar::<f64>()?;
    if !(dl.is_finite() && db.is_finite()) || info.iterations == 0 {
        return Err(format!("d/dl {dl}, |d/db|^2 {db}, {info:?}").into());
    }
    Ok(format!(
        "{} iterations, residual {:.1e}, d/dl = {dl:.4e}",
        info.iterations, info.residuals[0]
    ))
}

/// One NLL and its gradient of a GP on the stochastic path: 2 probes, at most 10 CG and 5
/// Lanczos iterations, a rank-10 preconditioner.
fn memory_gp(n: usize) -> Res<String> {
    let (x, l) = memory_problem(n);
    let y = (x.narrow(1, 0, 1)?.affine(6.0, 0.0)?.sin()? + x.narrow(1, 1, 1)?)?.reshape(n)?;
    let l = Positive::new("lengthscale", &[l], DType::F64, &Device::Cpu)?;
    let noise = Positive::new("noise", &[1.0], DType::F64, &Device::Cpu)?;
    let lc = l.clone();
    let settings = GpSettings {
        nll_method: NllMethod::Stochastic,
        train_tol: 1e-2,
        probes: 2,
        lanczos_iters: 5,
        max_iters: 10,
        preconditioner: Preconditioner::PivotedCholesky(Rank::Fixed(10)),
        ..GpSettings::default()
    };
    let gp = ExactGp::new(&x, &y, vec![l], noise, move || {
        Ok(Kernel::gaussian(&lc.value()?))
    })?
    .with_settings(settings);
    let (nll, rep) = gp.nll()?;
    let g = nll.backward()?;
    let grads: Vec<f64> = gp
        .vars()
        .iter()
        .map(|v| {
            g.get(v).map_or(f64::NAN, |t| {
                t.flatten_all().unwrap().to_vec1::<f64>().unwrap()[0]
            })
        })
        .collect();
    if !rep.nll.is_finite() || grads.iter().any(|v| !v.is_finite()) {
        return Err(format!("nll {}, gradient {grads:?}", rep.nll).into());
    }
    Ok(format!("nll {:.4e}, gradient {grads:?}", rep.nll))
}

/// The sizes: in a release build those of the issue (a dense matrix would need at least ten
/// times the limit); in the debug build of `cargo test`, smaller (see the module docs).
fn mem_jobs() -> [MemJob; 3] {
    if cfg!(debug_assertions) {
        [
            MemJob {
                what: "reduce",
                m: 100,
                n: 1_000_000,
            },
            MemJob {
                what: "solve",
                m: 0,
                n: 1_500,
            },
            MemJob {
                what: "gp",
                m: 0,
                n: 1_500,
            },
        ]
    } else {
        [
            MemJob {
                what: "reduce",
                m: 100,
                n: 10_000_000,
            },
            MemJob {
                what: "solve",
                m: 0,
                n: 25_000,
            },
            MemJob {
                what: "gp",
                m: 0,
                n: 25_000,
            },
        ]
    }
}

/// The limit of `job`: the VmPeak of the same child at a tiny size, plus its inputs, plus
/// [`SLACK_MIB`]; in KiB.
fn limit_kib(job: MemJob) -> u64 {
    let (ok, report, text) = run_child("memory", &job.tiny().env(), None);
    assert!(ok, "baseline of {job:?}:\n{text}");
    let base: u64 = report
        .split("VmPeak ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no VmPeak in {report:?}"));
    base + job.input_bytes() / 1024 + SLACK_MIB * 1024
}

fn run_under_limit(job: MemJob) {
    let limit = limit_kib(job);
    let margin = job.dense_bytes() as f64 / (limit * 1024) as f64;
    let t = Instant::now();
    let (ok, report, text) = run_child("memory", &job.env(), Some(limit));
    assert!(
        ok && report.starts_with("ok"),
        "{job:?} under {limit} KiB:\n{text}"
    );
    eprintln!(
        "{} under ulimit -v {} MiB (dense matrix {:.1}x that): {report} [{:.1}s]",
        job.what,
        limit / 1024,
        margin,
        t.elapsed().as_secs_f64()
    );
    if !cfg!(debug_assertions) {
        assert!(
            margin >= 10.0,
            "{job:?}: a dense matrix is only {margin:.1}x the limit"
        );
    }
}

#[test]
fn a_reduction_runs_in_linear_memory_and_a_dense_matrix_does_not_fit() {
    let job = mem_jobs()[0];
    run_under_limit(job);
    // The control: the same child, asked for the dense matrix under the same limit, fails.
    let dense = MemJob {
        what: "dense",
        ..job
    };
    let limit = limit_kib(job);
    let (ok, report, text) = run_child("memory", &dense.env(), Some(limit));
    assert!(!ok, "the dense matrix fit under the limit: {report}");
    assert!(
        text.contains("memory allocation") || text.contains("alloc"),
        "the dense child failed, but not for want of memory:\n{text}"
    );
}

#[test]
fn a_solve_and_its_gradient_run_in_linear_memory() {
    run_under_limit(mem_jobs()[1]);
}

#[test]
fn a_stochastic_gp_step_runs_in_linear_memory() {
    run_under_limit(mem_jobs()[2]);
}
