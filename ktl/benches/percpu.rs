//! Criterion benchmarks of the per-CPU structures against what programs use
//! for the same job today, in one group (`percpu`), the 1- and 2-thread rows
//! of `ktl bench --filter percpu`:
//!
//! - counter add: [`PerCpuCounter::add`] against one shared `AtomicU64`
//!   (`fetch_add`), a counter sharded per thread with the `thread_local`
//!   crate (`ThreadLocal<Cell<u64>>`, summed with its iterator) and a
//!   `Mutex<u64>`;
//! - pool get+put: [`Pool::get`] and the drop of the object (one get+put is
//!   one operation) against `crossbeam_queue::ArrayQueue` pop+push,
//!   `crossbeam_queue::SegQueue` pop+push and `Mutex<Vec<_>>` pop+push;
//! - stack push+pop: [`PerCpuStack`] push then pop, against the same three.
//!
//! The objects are 64-byte arrays on the heap; each pool and stack starts
//! with 256 of them, put in from each CPU in turn (pinned), so that every
//! CPU's list of the per-CPU structures has its share. An operation uses the
//! object it holds (adds 1 to its first word).
//!
//! The `2 threads` rows run the loop in the benchmarking thread and in a
//! helper thread at once, on one shared structure (the helper is spawned
//! once per row and driven sample by sample, with `iter_custom`); the time
//! is the wall time of a sample divided by the iterations of one thread. The
//! threads are not pinned.
//!
//! After each row, its structure is checked exactly: the counters sum to the
//! operations performed, and the pools and stacks hold every object they
//! made, whose uses sum to the operations performed; a mismatch fails the
//! run. Run with `cargo bench -p ktl --bench percpu`; `-- --test` runs each
//! row once.

use criterion::{Criterion, criterion_group, criterion_main};
use crossbeam_queue::{ArrayQueue, SegQueue};
use crossbeam_utils::CachePadded;
use ktl::percpu::{PerCpuCounter, PerCpuStack, Pool};
use ktl::rseq::Index;
use std::cell::Cell;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use thread_local::ThreadLocal;

/// The objects each pool and stack starts with.
const OBJECTS: usize = 256;

/// A pooled object: 64 bytes on the heap. Word 0 counts its uses.
type Obj = Box<[u64; 8]>;

fn new_obj() -> Obj {
    Box::new([0; 8])
}

/// Uses `o`: adds 1 to its use count, and returns it.
#[inline(always)]
fn use_obj(o: &mut [u64; 8]) -> u64 {
    o[0] = o[0].wrapping_add(1);
    o[0]
}

/// Runs `iters` calls of `op`, results summed into an accumulator that goes
/// through `black_box` at the end; returns the elapsed time.
#[inline(always)]
fn timed(op: impl Fn() -> u64, iters: u64) -> Duration {
    let mut acc = 0u64;
    let start = Instant::now();
    for _ in 0..iters {
        acc = acc.wrapping_add(op());
    }
    let elapsed = start.elapsed();
    black_box(acc);
    elapsed
}

/// Runs `f(share)` pinned to each CPU this thread may use in turn, the
/// shares splitting [`OBJECTS`]; then restores the thread's CPUs. Where the
/// thread cannot be pinned, runs `f` with what is left, where it is.
fn on_each_cpu(mut f: impl FnMut(usize)) {
    // SAFETY: cpu_set_t is plain data; all-zero is an empty set.
    let mut original: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: pid 0 is the calling thread; the kernel writes at most `size`
    // bytes into `original`.
    if unsafe { libc::sched_getaffinity(0, size, &mut original) } != 0 {
        f(OBJECTS);
        return;
    }
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: CPU_ISSET only reads the set, at an index below its size.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &original) })
        .collect();
    let n = cpus.len().max(1);
    let mut left = OBJECTS;
    for (k, &cpu) in cpus.iter().enumerate() {
        let share = OBJECTS / n + usize::from(k < OBJECTS % n);
        // SAFETY: as above.
        let mut one: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `cpu` is below CPU_SETSIZE (it came from the set).
        unsafe { libc::CPU_SET(cpu, &mut one) };
        // SAFETY: pid 0 is the calling thread; `one` is a valid set.
        if unsafe { libc::sched_setaffinity(0, size, &one) } == 0 {
            f(share);
            left -= share;
        }
    }
    // SAFETY: as above, with the set read at the start.
    unsafe { libc::sched_setaffinity(0, size, &original) };
    if left > 0 {
        f(left);
    }
}

/// Whether `objects`, all that a structure held at the end, are the `made`
/// objects it made, used `ops` times in all.
fn objects_match(objects: Vec<Obj>, made: u64, ops: u64) -> Result<(), String> {
    let held = objects.len() as u64;
    let uses = objects.iter().fold(0u64, |n, o| n.wrapping_add(o[0]));
    if held == made && uses == ops {
        Ok(())
    } else {
        Err(format!(
            "{held} of the {made} objects made are held after {ops} operations, their uses sum to {uses}"
        ))
    }
}

/// Whether counters that sum to `sum` account for `ops` operations.
fn counts_match(sum: u64, ops: u64) -> Result<(), String> {
    if sum == ops {
        Ok(())
    } else {
        Err(format!("the counters sum to {sum} after {ops} operations"))
    }
}

/// A ktl pool that has made [`OBJECTS`] objects, all back in it, returned
/// from each CPU in turn.
fn filled_pool() -> Pool<Obj> {
    let pool = Pool::new(new_obj);
    let mut out: Vec<_> = (0..OBJECTS).map(|_| pool.get()).collect();
    on_each_cpu(|share| out.truncate(out.len().saturating_sub(share)));
    drop(out);
    pool
}

#[path = "support/stores.rs"]
mod stores;
use stores::{Shelf, Store};

impl<S: Store> Shelf<S> {
    fn check(self, ops: u64) -> Result<(), String> {
        let made = self.made.into_inner();
        let refused = self.refused.into_inner();
        objects_match(self.store.into_objects(), made, ops)?;
        if refused == 0 {
            Ok(())
        } else {
            Err(format!("{refused} objects were refused (full)"))
        }
    }
}

fn counter_ktl(c: &PerCpuCounter, iters: u64) -> Duration {
    timed(
        || {
            c.add(1);
            1
        },
        iters,
    )
}

fn counter_atomic(a: &CachePadded<AtomicU64>, iters: u64) -> Duration {
    timed(|| a.fetch_add(1, Ordering::Relaxed), iters)
}

fn counter_thread_local(t: &ThreadLocal<Cell<u64>>, iters: u64) -> Duration {
    timed(
        || {
            let c = t.get_or_default();
            let v = c.get().wrapping_add(1);
            c.set(v);
            v
        },
        iters,
    )
}

fn counter_mutex(m: &CachePadded<Mutex<u64>>, iters: u64) -> Duration {
    timed(
        || {
            let mut v = m.lock().unwrap_or_else(PoisonError::into_inner);
            *v = v.wrapping_add(1);
            *v
        },
        iters,
    )
}

fn pool_ktl(pool: &Pool<Obj>, iters: u64) -> Duration {
    timed(|| use_obj(&mut pool.get()), iters)
}

/// Pool get+put on a store: takes an object, uses it, puts it back.
fn pool_store<S: Store>(shelf: &Shelf<S>, iters: u64) -> Duration {
    timed(
        || {
            let mut o = shelf.store.take().unwrap_or_else(|| shelf.make());
            let v = use_obj(&mut o);
            shelf.put(o);
            v
        },
        iters,
    )
}

/// Stack push+pop: pushes the object held, pops one, uses it and holds it;
/// the object is taken before the sample and put back after it.
fn stack_store<S: Store>(shelf: &Shelf<S>, iters: u64) -> Duration {
    let held = Cell::new(shelf.store.take());
    let elapsed = timed(
        || {
            let o = held.take().unwrap_or_else(|| shelf.make());
            shelf.put(o);
            let mut o = shelf.store.take().unwrap_or_else(|| shelf.make());
            let v = use_obj(&mut o);
            held.set(Some(o));
            v
        },
        iters,
    );
    if let Some(o) = held.take() {
        shelf.put(o);
    }
    elapsed
}

/// One thread's part of a 2-thread sample: `iters` iterations.
type Work = Arc<dyn Fn(u64) + Send + Sync>;

/// Spins (yielding now and then) until `cond`, or until `give_up`; returns
/// whether `cond` was met.
fn spin_until(cond: impl Fn() -> bool, give_up: impl Fn() -> bool) -> bool {
    let mut spins = 0u32;
    while !cond() {
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(1024) {
            if give_up() {
                return cond();
            }
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
    true
}

/// The second thread of a 2-thread row: spawned once, blocked between
/// samples, released by the benchmarking thread at the start of each.
struct Helper {
    orders: Option<mpsc::Sender<(u64, u64)>>,
    ready: Arc<AtomicU64>,
    go: Arc<AtomicU64>,
    done: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
    sample: Cell<u64>,
}

impl Helper {
    fn spawn(work: Work) -> Option<Helper> {
        let (orders, inbox) = mpsc::channel::<(u64, u64)>();
        let (ready, go, done) = (Arc::default(), Arc::default(), Arc::default());
        let (r, g, d): (Arc<AtomicU64>, Arc<AtomicU64>, Arc<AtomicU64>) =
            (Arc::clone(&ready), Arc::clone(&go), Arc::clone(&done));
        let thread = std::thread::Builder::new()
            .name("percpu-bench-helper".to_owned())
            .spawn(move || {
                // Register this thread's area (when ktl owns the areas)
                // before anything is timed.
                let _ = ktl::rseq::start(Index::CpuId);
                while let Ok((iters, n)) = inbox.recv() {
                    r.store(n, Ordering::Release);
                    spin_until(|| g.load(Ordering::Acquire) == n, || false);
                    work(iters);
                    d.store(n, Ordering::Release);
                }
            })
            .ok()?;
        Some(Helper {
            orders: Some(orders),
            ready,
            go,
            done,
            thread: Some(thread),
            sample: Cell::new(0),
        })
    }

    /// One sample: both threads run `work(iters)`; the wall time from the
    /// release of the helper until both have finished, or `None` if the
    /// helper is gone.
    fn sample(&self, work: &Work, iters: u64) -> Option<Duration> {
        let n = self.sample.get() + 1;
        self.sample.set(n);
        let gone = || self.thread.as_ref().is_none_or(JoinHandle::is_finished);
        self.orders.as_ref()?.send((iters, n)).ok()?;
        if !spin_until(|| self.ready.load(Ordering::Acquire) == n, gone) {
            return None;
        }
        let start = Instant::now();
        self.go.store(n, Ordering::Release);
        work(iters);
        let finished = spin_until(|| self.done.load(Ordering::Acquire) == n, gone);
        finished.then(|| start.elapsed())
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        self.orders = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

type Group<'a> = criterion::BenchmarkGroup<'a, criterion::measurement::WallTime>;

/// Benchmarks `sample` on one shared `S` with `threads` (1 or 2) threads,
/// then checks the structure; returns the check's failure, if any.
fn row<S: Send + Sync + 'static>(
    g: &mut Group<'_>,
    name: &str,
    threads: u64,
    shared: S,
    sample: fn(&S, u64) -> Duration,
    check: fn(S, u64) -> Result<(), String>,
) -> Result<(), String> {
    let shared = Arc::new(shared);
    let performed = Cell::new(0u64);
    let count = |n: u64| performed.set(performed.get().saturating_add(n));
    if threads == 1 {
        let s: &S = &shared;
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                count(iters);
                sample(s, iters)
            })
        });
    } else {
        let theirs = Arc::clone(&shared);
        let work: Work = Arc::new(move |iters| {
            sample(&theirs, iters);
        });
        let helper = Helper::spawn(Arc::clone(&work))
            .ok_or_else(|| "the helper thread could not start".to_owned())?;
        let lost = Cell::new(false);
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                count(iters.saturating_mul(2));
                helper.sample(&work, iters).unwrap_or_else(|| {
                    lost.set(true);
                    Duration::ZERO
                })
            })
        });
        drop(helper);
        drop(work);
        if lost.get() {
            return Err("the helper thread stopped during the samples".to_owned());
        }
    }
    match Arc::try_unwrap(shared) {
        Ok(s) => check(s, performed.get()),
        Err(_) => Err("the structure is still in use after the samples".to_owned()),
    }
}

/// The `percpu` group.
fn percpu(c: &mut Criterion) {
    // Decide the owner and register this thread's area (when ktl owns the
    // areas) before anything is timed. Criterion runs the routines on this
    // thread.
    let _ = ktl::rseq::start(Index::CpuId);
    let mut g = c.benchmark_group("percpu");
    let mut failures = Vec::new();
    let mut note = |name: &str, r: Result<(), String>| {
        if let Err(e) = r {
            failures.push(format!("percpu/{name}: {e}"));
        }
    };
    for threads in [1u64, 2] {
        let t = if threads == 1 {
            "1 thread".to_owned()
        } else {
            format!("{threads} threads")
        };
        let name = format!("counter: PerCpuCounter::add ({t})");
        let r = row(
            &mut g,
            &name,
            threads,
            PerCpuCounter::new(),
            counter_ktl,
            |c, ops| counts_match(c.sum() as u64, ops),
        );
        note(&name, r);
        let name = format!("counter: shared AtomicU64 fetch_add ({t})");
        let shared = CachePadded::new(AtomicU64::new(0));
        let r = row(&mut g, &name, threads, shared, counter_atomic, |a, ops| {
            counts_match(a.into_inner().into_inner(), ops)
        });
        note(&name, r);
        let name = format!("counter: ThreadLocal<Cell<u64>> add ({t})");
        let shared = ThreadLocal::<Cell<u64>>::new();
        let r = row(
            &mut g,
            &name,
            threads,
            shared,
            counter_thread_local,
            |t, ops| counts_match(t.into_iter().map(Cell::into_inner).sum(), ops),
        );
        note(&name, r);
        let name = format!("counter: Mutex<u64> add ({t})");
        let shared = CachePadded::new(Mutex::new(0u64));
        let r = row(&mut g, &name, threads, shared, counter_mutex, |m, ops| {
            let v = m
                .into_inner()
                .into_inner()
                .unwrap_or_else(PoisonError::into_inner);
            counts_match(v, ops)
        });
        note(&name, r);
    }
    for threads in [1u64, 2] {
        let t = if threads == 1 {
            "1 thread".to_owned()
        } else {
            format!("{threads} threads")
        };
        let name = format!("pool: Pool get+put ({t})");
        let r = row(
            &mut g,
            &name,
            threads,
            filled_pool(),
            pool_ktl,
            |mut p, ops| {
                let made = p.created();
                objects_match(p.drain(), made, ops)
            },
        );
        note(&name, r);
        let name = format!("pool: ArrayQueue pop+push ({t})");
        let shelf = Shelf::<ArrayQueue<Obj>>::filled();
        note(
            &name,
            row(&mut g, &name, threads, shelf, pool_store, Shelf::check),
        );
        let name = format!("pool: SegQueue pop+push ({t})");
        let shelf = Shelf::<SegQueue<Obj>>::filled();
        note(
            &name,
            row(&mut g, &name, threads, shelf, pool_store, Shelf::check),
        );
        let name = format!("pool: Mutex<Vec> pop+push ({t})");
        let shelf = Shelf::<Mutex<Vec<Obj>>>::filled();
        note(
            &name,
            row(&mut g, &name, threads, shelf, pool_store, Shelf::check),
        );
    }
    for threads in [1u64, 2] {
        let t = if threads == 1 {
            "1 thread".to_owned()
        } else {
            format!("{threads} threads")
        };
        let name = format!("stack: PerCpuStack push+pop ({t})");
        let shelf = Shelf::<PerCpuStack<Obj>>::filled();
        note(
            &name,
            row(&mut g, &name, threads, shelf, stack_store, Shelf::check),
        );
        let name = format!("stack: ArrayQueue push+pop ({t})");
        let shelf = Shelf::<ArrayQueue<Obj>>::filled();
        note(
            &name,
            row(&mut g, &name, threads, shelf, stack_store, Shelf::check),
        );
        let name = format!("stack: SegQueue push+pop ({t})");
        let shelf = Shelf::<SegQueue<Obj>>::filled();
        note(
            &name,
            row(&mut g, &name, threads, shelf, stack_store, Shelf::check),
        );
        let name = format!("stack: Mutex<Vec> push+pop ({t})");
        let shelf = Shelf::<Mutex<Vec<Obj>>>::filled();
        note(
            &name,
            row(&mut g, &name, threads, shelf, stack_store, Shelf::check),
        );
    }
    g.finish();
    if !failures.is_empty() {
        for f in &failures {
            eprintln!("{f}");
        }
        std::process::exit(1);
    }
}

/// Modest times: 24 rows in about a minute.
fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = percpu
}
criterion_main!(benches);
