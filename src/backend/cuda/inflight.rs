//! A cache of values that are expensive to make (compiled modules), made at most once each,
//! on demand or ahead of time by background threads.
//!
//! Each key holds a slot: queued (a background job waits for a thread), running (some thread
//! makes it), ready, or failed. A request for a queued key takes the job over and runs it at
//! once (it does not wait behind the queue); a request for a running key waits for it, so
//! nothing is made twice. A failure, or a panic of the job, is handed to every request waiting
//! for it, and the key is forgotten, so that a later request tries again: no request hangs or
//! panics because of another thread's job.
//!
//! Background jobs run on a small pool of threads started on demand (at most
//! [`worker_count`]). Independent of CUDA, so that it is tested in every build.

#![cfg_attr(not(feature = "cuda"), allow(dead_code))]

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

use crate::error::Error;

/// Makes a value, or says why it could not.
pub(crate) type Job<V> = Box<dyn FnOnce() -> Result<V, Error> + Send + 'static>;

enum State<V> {
    Queued(Job<V>),
    Running,
    Ready(V),
    Failed(Error),
}

struct Slot<V> {
    state: Mutex<State<V>>,
    done: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A job's panic is caught before it can poison anything; this is for safety only.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<V: Clone> Slot<V> {
    fn new(state: State<V>) -> Arc<Slot<V>> {
        Arc::new(Slot {
            state: Mutex::new(state),
            done: Condvar::new(),
        })
    }

    /// Runs `job` (the slot is `Running`) and publishes its outcome; a panic is an error.
    fn run(&self, job: impl FnOnce() -> Result<V, Error>) -> Result<V, Error> {
        let out = match catch_unwind(AssertUnwindSafe(job)) {
            Ok(r) => r,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into());
                Err(Error::Backend {
                    what: "kernel compile",
                    detail: format!("the compile job panicked: {what}"),
                })
            }
        };
        *lock(&self.state) = match &out {
            Ok(v) => State::Ready(v.clone()),
            Err(e) => State::Failed(e.clone()),
        };
        self.done.notify_all();
        out
    }

    /// The outcome, once the slot is no longer queued or running; takes a queued job over.
    fn wait(&self) -> Result<V, Error> {
        let mut st = lock(&self.state);
        loop {
            match &*st {
                State::Ready(v) => return Ok(v.clone()),
                State::Failed(e) => return Err(e.clone()),
                State::Queued(_) => {
                    let State::Queued(job) = std::mem::replace(&mut *st, State::Running) else {
                        unreachable!("matched Queued above")
                    };
                    drop(st);
                    return self.run(job);
                }
                State::Running => st = self.done.wait(st).unwrap_or_else(|e| e.into_inner()),
            }
        }
    }
}

/// What a request found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Found {
    /// The value was ready.
    Ready,
    /// This request made it.
    Made,
    /// Another thread was making it (or had queued it): this request waited, or took the
    /// queued job over.
    Waited,
}

/// Values by key, each made once (see the module documentation).
pub(crate) struct InFlight<K, V> {
    slots: Mutex<HashMap<K, Arc<Slot<V>>>>,
}

impl<K, V> Default for InFlight<K, V> {
    fn default() -> Self {
        InFlight {
            slots: Mutex::new(HashMap::new()),
        }
    }
}

impl<K, V> InFlight<K, V>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    /// The value of `key`: ready, made now by `make`, or waited for.
    pub(crate) fn get(
        &self,
        key: &K,
        make: impl FnOnce() -> Result<V, Error>,
    ) -> (Result<V, Error>, Found) {
        let (slot, mine) = {
            let mut slots = lock(&self.slots);
            match slots.get(key) {
                Some(s) => (s.clone(), false),
                None => {
                    let s = Slot::new(State::Running);
                    slots.insert(key.clone(), s.clone());
                    (s, true)
                }
            }
        };
        if mine {
            let out = slot.run(make);
            if out.is_err() {
                self.forget(key, &slot);
            }
            return (out, Found::Made);
        }
        let ready = matches!(&*lock(&slot.state), State::Ready(_));
        let out = slot.wait();
        if out.is_err() {
            self.forget(key, &slot);
        }
        (out, if ready { Found::Ready } else { Found::Waited })
    }

    /// Queues `job` to make the value of `key` on a background thread, unless the key is
    /// already known (ready, queued or running). Returns whether it was queued.
    pub(crate) fn prefetch(self: &Arc<Self>, key: K, job: Job<V>) -> bool {
        if worker_count() == 0 {
            return false;
        }
        let slot = {
            let mut slots = lock(&self.slots);
            if slots.contains_key(&key) {
                return false;
            }
            let s = Slot::new(State::Queued(job));
            slots.insert(key.clone(), s.clone());
            s
        };
        let this = Arc::clone(self);
        pool().submit(Box::new(move || {
            let job = {
                let mut st = lock(&slot.state);
                match std::mem::replace(&mut *st, State::Running) {
                    State::Queued(job) => job,
                    // Taken over by a request (or done): put the state back.
                    other => {
                        *st = other;
                        return;
                    }
                }
            };
            if slot.run(job).is_err() {
                this.forget(&key, &slot);
            }
        }));
        true
    }

    /// Drops `key` if it still maps to `slot` (after a failure, so a later request retries).
    fn forget(&self, key: &K, slot: &Arc<Slot<V>>) {
        let mut slots = lock(&self.slots);
        if slots.get(key).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            slots.remove(key);
        }
    }

    /// Whether the value of `key` is ready.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn is_ready(&self, key: &K) -> bool {
        let slot = lock(&self.slots).get(key).cloned();
        slot.is_some_and(|s| matches!(&*lock(&s.state), State::Ready(_)))
    }
}

type Task = Box<dyn FnOnce() + Send + 'static>;

/// Threads that run background jobs, started as jobs arrive.
struct Pool {
    queue: Mutex<(VecDeque<Task>, usize, usize)>, // tasks, threads, idle threads
    more: Condvar,
}

/// The environment variable that sets the number of background compile threads (0: none, no
/// kernel is compiled ahead of its use).
///
/// ```
/// assert_eq!(lazy_kernels::backend::cuda::THREADS_VAR, "LAZY_KERNELS_COMPILE_THREADS");
/// ```
pub const THREADS_VAR: &str = "LAZY_KERNELS_COMPILE_THREADS";

/// The number of background compile threads: `$LAZY_KERNELS_COMPILE_THREADS`, else the
/// available parallelism (at most 16). Read once per process.
///
/// ```
/// let n = lazy_kernels::backend::cuda::compile_threads();
/// assert!(n <= 16 || std::env::var("LAZY_KERNELS_COMPILE_THREADS").is_ok());
/// ```
pub fn worker_count() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| {
        std::env::var(THREADS_VAR)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(4)
                    .min(16)
            })
    })
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool {
        queue: Mutex::new((VecDeque::new(), 0, 0)),
        more: Condvar::new(),
    })
}

impl Pool {
    fn submit(&'static self, task: Task) {
        let mut q = lock(&self.queue);
        q.0.push_back(task);
        let (threads, idle) = (q.1, q.2);
        if idle < q.0.len() && threads < worker_count() {
            let spawned = std::thread::Builder::new()
                .name("lk-compile".into())
                .spawn(move || self.work());
            if spawned.is_ok() {
                q.1 += 1;
            }
        }
        if q.1 == 0 {
            // No thread could be started: the queued slots are taken over by their requests.
            q.0.clear();
        }
        drop(q);
        self.more.notify_one();
    }

    fn work(&self) {
        loop {
            let task = {
                let mut q = lock(&self.queue);
                loop {
                    if let Some(t) = q.0.pop_front() {
                        break t;
                    }
                    q.2 += 1;
                    q = self.more.wait(q).unwrap_or_else(|e| e.into_inner());
                    q.2 -= 1;
                }
            };
            // Tasks catch their jobs' panics; this keeps the thread alive regardless.
            let _ = catch_unwind(AssertUnwindSafe(task));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    fn fail(msg: &str) -> Error {
        Error::Backend {
            what: "NVRTC",
            detail: msg.into(),
        }
    }

    #[test]
    fn a_value_is_made_once_and_then_ready() {
        let m: InFlight<u32, u32> = InFlight::default();
        let made = AtomicUsize::new(0);
        let f = || {
            made.fetch_add(1, Ordering::SeqCst);
            Ok(7)
        };
        assert_eq!(m.get(&1, f).1, Found::Made);
        let (v, found) = m.get(&1, || panic!("not called"));
        assert_eq!((v.unwrap(), found), (7, Found::Ready));
        assert_eq!(made.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_request_waits_for_a_background_job_instead_of_making_it_again() {
        let m: Arc<InFlight<u32, u32>> = Arc::default();
        let made = Arc::new(AtomicUsize::new(0));
        let counter = made.clone();
        let started = Arc::new((Mutex::new(false), Condvar::new()));
        let s2 = started.clone();
        assert!(m.prefetch(
            5,
            Box::new(move || {
                *lock(&s2.0) = true;
                s2.1.notify_all();
                std::thread::sleep(Duration::from_millis(300));
                counter.fetch_add(1, Ordering::SeqCst);
                Ok(50)
            })
        ));
        assert!(!m.prefetch(5, Box::new(|| Ok(0))), "queued once");
        // Wait until the job runs, then ask: the request must wait for it.
        let mut go = lock(&started.0);
        while !*go {
            go = started.1.wait(go).unwrap();
        }
        drop(go);
        let (v, found) = m.get(&5, || panic!("must not compile twice"));
        assert_eq!((v.unwrap(), found), (50, Found::Waited));
        assert_eq!(made.load(Ordering::SeqCst), 1);
        assert!(m.is_ready(&5));
    }

    /// A job that says when it starts, sleeps, then returns `out` (or panics with "boom").
    fn slow(out: Option<Result<u32, Error>>, started: Arc<(Mutex<bool>, Condvar)>) -> Job<u32> {
        Box::new(move || {
            *lock(&started.0) = true;
            started.1.notify_all();
            std::thread::sleep(Duration::from_millis(200));
            match out {
                Some(r) => r,
                None => panic!("boom"),
            }
        })
    }

    fn wait_started(started: &(Mutex<bool>, Condvar)) {
        let mut go = lock(&started.0);
        while !*go {
            go = started.1.wait(go).unwrap();
        }
    }

    #[test]
    fn failures_and_panics_reach_the_request_and_are_retried_later() {
        let m: Arc<InFlight<u32, u32>> = Arc::default();
        for (key, out) in [(1u32, Some(Err(fail("bad source")))), (2, None)] {
            // Failing while a request waits for it (the job runs in the background).
            let started = Arc::new((Mutex::new(false), Condvar::new()));
            assert!(m.prefetch(key, slow(out.clone(), started.clone())));
            wait_started(&started);
            let t = Instant::now();
            // (Were the job already forgotten, this `make` fails the same way.)
            let (v, found) = m.get(&key, || match out {
                Some(r) => r,
                None => panic!("boom"),
            });
            let err = v.unwrap_err().to_string();
            assert!(err.contains("bad source") || err.contains("boom"), "{err}");
            assert_ne!(found, Found::Ready);
            assert!(t.elapsed() < Duration::from_secs(10));
            // Forgotten: the next request makes it again.
            let (v, found) = m.get(&key, || Ok(key * 10));
            assert_eq!((v.unwrap(), found), (key * 10, Found::Made));
        }
        // A panic of the request's own `make` is an error too, and nothing is kept.
        let (v, _) = m.get(&3, || panic!("own"));
        assert!(v.unwrap_err().to_string().contains("own"));
        assert!(!m.is_ready(&3));
        // Two requests waiting for one failing job both get its error.
        let started = Arc::new((Mutex::new(false), Condvar::new()));
        m.prefetch(4, slow(Some(Err(fail("shared"))), started.clone()));
        wait_started(&started);
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || m.get(&4, || Err(fail("shared"))).0)
            })
            .collect();
        for w in waiters {
            assert!(
                w.join()
                    .unwrap()
                    .unwrap_err()
                    .to_string()
                    .contains("shared")
            );
        }
    }

    #[test]
    fn many_threads_asking_for_many_keys_get_one_make_each() {
        let m: Arc<InFlight<u32, u32>> = Arc::default();
        let made = Arc::new(AtomicUsize::new(0));
        for k in 0..8u32 {
            let c = made.clone();
            m.prefetch(
                k,
                Box::new(move || {
                    c.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(5));
                    Ok(k + 100)
                }),
            );
        }
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (m, c) = (m.clone(), made.clone());
                std::thread::spawn(move || {
                    for k in 0..12u32 {
                        let (v, _) = m.get(&k, || {
                            c.fetch_add(1, Ordering::SeqCst);
                            Ok(k + 100)
                        });
                        assert_eq!(v.unwrap(), k + 100);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(made.load(Ordering::SeqCst), 12);
    }
}
