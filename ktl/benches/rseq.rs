//! Criterion benchmarks of restartable sequences against atomics, in one
//! group (`rseq`), the same rows as `ktl bench --filter rseq`:
//!
//! - `rseq add (1 thread)`: [`ktl::rseq::add`] of 1 through
//!   [`ktl::rseq::retry`] on a per-CPU counter (one `AtomicI64` per possible
//!   CPU, each on its own 128-byte pair of cache lines);
//! - `fetch_add uncontended (1 thread)`: `AtomicU64::fetch_add` on a
//!   variable only the benchmarking thread uses;
//! - `rseq add (2 threads)` and `shared AtomicU64 fetch_add (2 threads)`: the
//!   same loop in the benchmarking thread and in a helper thread at once
//!   (spawned once per row, driven sample by sample); the time is the wall
//!   time of the sample divided by the iterations of one thread. The rseq
//!   threads update their own CPUs' slots; the atomic threads share one
//!   `AtomicU64`. The threads are not pinned (on a machine with two CPUs or
//!   more they run on different CPUs nearly all the time);
//! - `rseq add_current (1 thread)` and `rseq add_current (2 threads)`: the
//!   same counter with [`ktl::rseq::add_current`], one section that reads
//!   the CPU number itself (no `Start`, no retry closure);
//! - `rseq cmpeqv_storev (1 thread)`: the increment as a read of the slot and
//!   [`ktl::rseq::cmpeqv_storev`] of the value read plus one, and
//!   `compare_exchange uncontended (1 thread)`.
//!
//! Every row counts the operations its loops perform; after the group, each
//! counter must sum to its row's count, or the run fails. The rseq rows are
//! skipped with a note on stderr when this thread has no live rseq area.
//! Run with `cargo bench -p ktl --bench rseq`; `-- --test` runs each once.

use criterion::{Criterion, criterion_group, criterion_main};
use ktl::rseq::{Failure, Index, Start};
use std::cell::Cell;
use std::hint::black_box;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A value alone on a 128-byte aligned block (a pair of cache lines).
#[repr(align(128))]
#[derive(Default)]
struct Padded<T>(T);

/// One CPU's counter.
type Slot = Padded<AtomicI64>;

/// A per-CPU counter: `n` zeroed slots.
fn slots(n: usize) -> Arc<[Slot]> {
    (0..n).map(|_| Slot::default()).collect()
}

/// The slot of the index `s` was started with, or `None` past the slots
/// (never, when they are sized by the possible CPUs).
#[inline(always)]
fn slot_ptr(slots: &[Slot], s: Start) -> Option<*mut i64> {
    slots.get(s.value() as usize).map(|slot| slot.0.as_ptr())
}

/// Adds 1 to the current CPU's slot with [`ktl::rseq::add`]: 1 when done.
#[inline(always)]
fn rseq_add_once(slots: &[Slot]) -> u64 {
    let done = ktl::rseq::retry(Index::CpuId, |s| match slot_ptr(slots, s) {
        // SAFETY: only rseq operations indexed by CPU (this function and
        // `rseq_cas_once`, each started with the index they write under)
        // write the slots; everything else only reads them. `slot_ptr`
        // returned the slot of `s.value()`, so the index is below the number
        // of slots, and the pointer is a live, aligned `AtomicI64`'s.
        Some(p) => unsafe { ktl::rseq::add(s, p, 1) }.map(|()| true),
        None => Ok(false),
    });
    u64::from(matches!(done, Some(Ok(true))))
}

/// Adds 1 to the current CPU's slot with [`ktl::rseq::add_current`], which
/// reads the CPU number inside its section: 1 when done.
#[inline(always)]
fn rseq_current_once(slots: &[Slot]) -> u64 {
    let base = slots
        .first()
        .map_or(std::ptr::null_mut(), |s| s.0.as_ptr().cast::<u8>());
    // SAFETY: slot `i`'s AtomicI64 is at `base + i * size_of::<Slot>()` for
    // every `i` below `slots.len()` (each sits at the same offset in its
    // slot), live and aligned; only `add_current` indexed by CPU writes these
    // slots, each while running with the index value of the slot it writes.
    u64::from(unsafe {
        ktl::rseq::add_current(Index::CpuId, base, size_of::<Slot>(), slots.len(), 1)
    })
}

/// Adds 1 to the current CPU's slot through a read and
/// [`ktl::rseq::cmpeqv_storev`]: 1 when done.
#[inline(always)]
fn rseq_cas_once(slots: &[Slot]) -> u64 {
    loop {
        let done = ktl::rseq::retry(Index::CpuId, |s| match slots.get(s.value() as usize) {
            Some(slot) => {
                let seen = slot.0.load(Ordering::Relaxed);
                // SAFETY: as in `rseq_add_once`: only rseq operations indexed
                // by CPU write the slots, and `s.value()` indexes this live,
                // aligned slot, below the number of slots.
                unsafe { ktl::rseq::cmpeqv_storev(s, slot.0.as_ptr(), seen, seen.wrapping_add(1)) }
                    .map(|()| true)
            }
            None => Ok(false),
        });
        match done {
            Some(Ok(done)) => return u64::from(done),
            // Another sequence on this CPU changed the slot first: read again.
            Some(Err(Failure::CompareFailed)) => continue,
            Some(Err(Failure::Aborted | Failure::FenceFailed)) | None => return 0,
        }
    }
}

/// Adds 1 to `a` through a compare-and-exchange loop.
#[inline(always)]
fn cas_once(a: &AtomicU64) -> u64 {
    let mut seen = a.load(Ordering::Relaxed);
    loop {
        match a.compare_exchange(
            seen,
            seen.wrapping_add(1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(prev) => return prev,
            Err(now) => seen = now,
        }
    }
}

/// Runs `iters` calls of `op`, results summed into an accumulator that goes
/// through `black_box` at the end (no store per call); returns the elapsed
/// time.
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

/// The sum of a per-CPU counter's slots.
fn slot_sum(slots: &[Slot]) -> i128 {
    slots
        .iter()
        .map(|s| i128::from(s.0.load(Ordering::Relaxed)))
        .sum()
}

/// One thread's part of a 2-thread sample: `iters` iterations, untimed.
type Work = Arc<dyn Fn(u64) + Send + Sync>;

/// The second thread of a 2-thread row: spawned once, blocked between
/// samples, released by the benchmarking thread at the start of each.
struct Helper {
    orders: Option<mpsc::Sender<(u64, u64)>>,
    /// The number of the last sample that reached: the helper is ready,
    /// the clock runs, the helper is done.
    ready: Arc<AtomicU64>,
    go: Arc<AtomicU64>,
    done: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
    sample: Cell<u64>,
}

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

impl Helper {
    fn spawn(work: Work, setup: fn() -> bool) -> Option<Helper> {
        let (orders, inbox) = mpsc::channel::<(u64, u64)>();
        let (setup_tx, setup_rx) = mpsc::channel();
        let (ready, go, done) = (Arc::default(), Arc::default(), Arc::default());
        let (r, g, d): (Arc<AtomicU64>, Arc<AtomicU64>, Arc<AtomicU64>) =
            (Arc::clone(&ready), Arc::clone(&go), Arc::clone(&done));
        let thread = std::thread::Builder::new()
            .name("rseq-bench-helper".to_owned())
            .spawn(move || {
                let ok = setup();
                let _ = setup_tx.send(ok);
                if !ok {
                    return;
                }
                while let Ok((iters, n)) = inbox.recv() {
                    r.store(n, Ordering::Release);
                    spin_until(|| g.load(Ordering::Acquire) == n, || false);
                    work(iters);
                    d.store(n, Ordering::Release);
                }
            })
            .ok()?;
        let helper = Helper {
            orders: Some(orders),
            ready,
            go,
            done,
            thread: Some(thread),
            sample: Cell::new(0),
        };
        setup_rx.recv().ok()?.then_some(helper)
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

/// A counting row's check: its name, the operations its loops performed,
/// and the counter's total.
struct Tally {
    name: &'static str,
    performed: Rc<Cell<u64>>,
    total: Box<dyn Fn() -> i128>,
}

/// Notes a skipped row on stderr.
fn skip(name: &str, reason: &str) {
    eprintln!("rseq/{name}: skipped ({reason})");
}

/// Adds `n` to a row's count of operations.
fn count(performed: &Cell<u64>, n: u64) {
    performed.set(performed.get().saturating_add(n));
}

/// Benchmarks a 1-thread counting row.
fn one_thread(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    tallies: &mut Vec<Tally>,
    name: &'static str,
    op: impl Fn() -> u64 + Copy,
    total: Box<dyn Fn() -> i128>,
) {
    let performed = Rc::new(Cell::new(0u64));
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            // `op` by value: a fresh copy of the references it captures,
            // which the loop keeps in registers.
            let elapsed = timed(op, iters);
            count(&performed, iters);
            elapsed
        })
    });
    tallies.push(Tally {
        name,
        performed,
        total,
    });
}

/// Benchmarks a 2-thread counting row: `work` in this thread and a helper.
fn two_threads(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    tallies: &mut Vec<Tally>,
    name: &'static str,
    work: Work,
    setup: fn() -> bool,
    total: Box<dyn Fn() -> i128>,
) {
    let Some(helper) = Helper::spawn(Arc::clone(&work), setup) else {
        skip(
            name,
            "the helper thread could not start or has no live rseq area",
        );
        return;
    };
    let performed = Rc::new(Cell::new(0u64));
    let lost = Cell::new(false);
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            count(&performed, iters.saturating_mul(2));
            helper.sample(&work, iters).unwrap_or_else(|| {
                lost.set(true);
                Duration::ZERO
            })
        })
    });
    drop(helper);
    if lost.get() {
        eprintln!("rseq/{name}: the helper thread stopped during the samples");
        std::process::exit(1);
    }
    tallies.push(Tally {
        name,
        performed,
        total,
    });
}

/// The `rseq` group.
fn rseq(c: &mut Criterion) {
    // Decide the owner and register this thread's area (when ktl owns the
    // areas) before anything is timed. Criterion runs the routines on this
    // thread.
    let cpus = match (ktl::rseq::start(Index::CpuId), ktl::cpu::possible_cpus()) {
        (Some(_), Some(n)) => Ok(n as usize),
        (None, _) => Err("no live rseq area in this thread"),
        (Some(_), None) => Err("cannot read the possible CPUs"),
    };
    let helper_setup: fn() -> bool = || ktl::rseq::start(Index::CpuId).is_some();
    let mut tallies = Vec::new();
    let mut g = c.benchmark_group("rseq");
    let t = &mut tallies;

    match cpus {
        Ok(n) => {
            let s = slots(n);
            let (mine, s): (&[Slot], _) = (&s, Arc::clone(&s));
            let op = move || rseq_add_once(mine);
            one_thread(
                &mut g,
                t,
                "rseq add (1 thread)",
                op,
                Box::new(move || slot_sum(&s)),
            );
        }
        Err(reason) => skip("rseq add (1 thread)", reason),
    }

    let a = Arc::new(Padded(AtomicU64::new(0)));
    let (mine, a): (&AtomicU64, _) = (&a.0, Arc::clone(&a));
    one_thread(
        &mut g,
        t,
        "fetch_add uncontended (1 thread)",
        move || mine.fetch_add(1, Ordering::Relaxed),
        Box::new(move || i128::from(a.0.load(Ordering::Relaxed))),
    );

    match cpus {
        Ok(n) => {
            let s = slots(n);
            let theirs = Arc::clone(&s);
            let work: Work = Arc::new(move |iters| {
                let slots: &[Slot] = &theirs;
                timed(|| rseq_add_once(slots), iters);
            });
            let total = Box::new(move || slot_sum(&s));
            two_threads(&mut g, t, "rseq add (2 threads)", work, helper_setup, total);
        }
        Err(reason) => skip("rseq add (2 threads)", reason),
    }

    let a = Arc::new(Padded(AtomicU64::new(0)));
    let theirs = Arc::clone(&a);
    let work: Work = Arc::new(move |iters| {
        let a: &AtomicU64 = &theirs.0;
        timed(|| a.fetch_add(1, Ordering::Relaxed), iters);
    });
    two_threads(
        &mut g,
        t,
        "shared AtomicU64 fetch_add (2 threads)",
        work,
        || true,
        Box::new(move || i128::from(a.0.load(Ordering::Relaxed))),
    );

    match cpus {
        Ok(n) => {
            let s = slots(n);
            let (mine, s): (&[Slot], _) = (&s, Arc::clone(&s));
            let op = move || rseq_current_once(mine);
            let total = Box::new(move || slot_sum(&s));
            one_thread(&mut g, t, "rseq add_current (1 thread)", op, total);
        }
        Err(reason) => skip("rseq add_current (1 thread)", reason),
    }

    match cpus {
        Ok(n) => {
            let s = slots(n);
            let theirs = Arc::clone(&s);
            let work: Work = Arc::new(move |iters| {
                let slots: &[Slot] = &theirs;
                timed(|| rseq_current_once(slots), iters);
            });
            let total = Box::new(move || slot_sum(&s));
            let name = "rseq add_current (2 threads)";
            two_threads(&mut g, t, name, work, helper_setup, total);
        }
        Err(reason) => skip("rseq add_current (2 threads)", reason),
    }

    match cpus {
        Ok(n) => {
            let s = slots(n);
            let (mine, s): (&[Slot], _) = (&s, Arc::clone(&s));
            let op = move || rseq_cas_once(mine);
            let total = Box::new(move || slot_sum(&s));
            one_thread(&mut g, t, "rseq cmpeqv_storev (1 thread)", op, total);
        }
        Err(reason) => skip("rseq cmpeqv_storev (1 thread)", reason),
    }

    let a = Arc::new(Padded(AtomicU64::new(0)));
    let (mine, a): (&AtomicU64, _) = (&a.0, Arc::clone(&a));
    one_thread(
        &mut g,
        t,
        "compare_exchange uncontended (1 thread)",
        move || cas_once(mine),
        Box::new(move || i128::from(a.0.load(Ordering::Relaxed))),
    );

    g.finish();

    let mut exact = true;
    for tally in &tallies {
        let (sum, ops) = ((tally.total)(), tally.performed.get());
        if sum != i128::from(ops) {
            eprintln!(
                "rseq/{}: the counters sum to {sum} after {ops} operations",
                tally.name
            );
            exact = false;
        }
    }
    if !exact {
        std::process::exit(1);
    }
}

/// Modest times, so the whole file runs in well under a minute.
fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = rseq
}
criterion_main!(benches);
