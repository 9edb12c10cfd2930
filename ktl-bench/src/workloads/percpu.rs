//! The `percpu` group: ktl's per-CPU structures against what programs use
//! for the same job today. All the threads of a row work on one shared
//! structure, and every row runs at 1, 2 and 8 threads (on a machine with
//! fewer than 8 CPUs, the 8-thread rows are oversubscribed).
//!
//! - counter add: [`PerCpuCounter::add`] against one shared `AtomicU64`
//!   (`fetch_add`), a counter sharded per thread with the `thread_local`
//!   crate (`ThreadLocal<Cell<u64>>`, as its documentation suggests for
//!   counters, summed with its iterator), and a `Mutex<u64>`;
//! - pool get+put: [`Pool::get`] and the drop of the object (one get+put is
//!   one operation) against `crossbeam_queue::ArrayQueue` pop+push,
//!   `crossbeam_queue::SegQueue` pop+push and `Mutex<Vec<_>>` pop+push;
//! - stack push+pop: [`PerCpuStack`] push then pop, against the same three;
//! - metric counter increment, through the ecosystem's interfaces: ktl's
//!   [`PerCpuCounterU64`] behind a `metrics::Counter`, against the
//!   `metrics` crate's own counter (an `AtomicU64` behind the same handle),
//!   `prometheus-client`'s `Counter::inc` and ktl's
//!   [`ktl::prometheus::Counter::inc`];
//! - histogram observe: [`PerCpuHistogram::observe`] against
//!   `prometheus-client`'s `Histogram::observe` (a mutex inside), a
//!   `Mutex`-protected histogram, and ktl's histogram behind a
//!   `metrics::Histogram`; the 11 default Prometheus bounds, values that
//!   cycle through every bucket.
//!
//! The two metric kinds run at 1, 2, 8 and 32 threads.
//!
//! The objects and the stores that hold them are those of the `stores`
//! module: each structure starts with 256 objects, put in from each CPU in
//! turn; the structure must hold every object it made after the samples,
//! and their uses must sum to the operations performed. The counters must
//! sum to the operations performed. Each row's ratio is taken against ktl's
//! structure with the same operation and thread count.

use crate::checks;
use crate::crew::{Work, crew_row};
use crate::harness::{Row, Shape, call_loop, counts_match, timed_loop};
use crate::stores::{Obj, Shelf, Store, filled_pool, objects_match, use_obj};
use crate::workloads::selects;
use crossbeam_queue::{ArrayQueue, SegQueue};
use crossbeam_utils::CachePadded;
use ktl::percpu::{PerCpu, PerCpuCounter, PerCpuCounterU64, PerCpuHistogram, PerCpuStack, Pool};
use ktl::rseq::Index;
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use thread_local::ThreadLocal;

/// The group's name.
pub const GROUP: &str = "percpu";

/// `PerCpuCounter::add` in one thread, which promises compare.
pub const PERCPU_ADD_1: &str = "counter: PerCpuCounter::add (1 thread)";
/// A `thread_local` sharded counter in one thread, which a promise compares.
pub const THREAD_LOCAL_ADD_1: &str = "counter: ThreadLocal<Cell<u64>> add (1 thread)";
/// `PerCpuStack` push+pop in one thread, which a promise compares.
pub const STACK_1: &str = "stack: PerCpuStack push+pop (1 thread)";
/// `ArrayQueue` push+pop in one thread, which a promise compares.
pub const ARRAY_QUEUE_STACK_1: &str = "stack: ArrayQueue push+pop (1 thread)";
/// `PerCpuCounter::add` in two threads, which a promise compares.
pub const PERCPU_ADD_2: &str = "counter: PerCpuCounter::add (2 threads)";
/// A shared `AtomicU64` in two threads, which a promise compares.
pub const PERCPU_SHARED_ADD_2: &str = "counter: shared AtomicU64 fetch_add (2 threads)";
/// `Pool` get+put in one thread, which a promise compares.
pub const POOL_1: &str = "pool: Pool get+put (1 thread)";
/// `ArrayQueue` pop+push in one thread, which a promise compares.
pub const ARRAY_QUEUE_1: &str = "pool: ArrayQueue pop+push (1 thread)";
/// `Pool` get+put in two threads, which a promise compares.
pub const POOL_2: &str = "pool: Pool get+put (2 threads)";
/// `ArrayQueue` pop+push in two threads, which a promise compares.
pub const ARRAY_QUEUE_2: &str = "pool: ArrayQueue pop+push (2 threads)";

/// Runs `$iters` iterations of the loop of `$shape` over `$op`, a closure
/// expression, written out once for each loop. Each loop then has a closure
/// of its own, and the `call` loop calls its closure from one place only, so
/// the compiler inlines the operation into the loop as it would into a
/// caller's loop. (One closure shared by both loops is called from nine
/// places, and a large operation, such as one that dispatches on its index
/// at run time, is then called out of line: that measures the call.)
macro_rules! shaped {
    ($iters:expr, $shape:expr, $op:expr) => {
        match $shape {
            Shape::Call => {
                call_loop(&$op, $iters);
            }
            Shape::Throughput => {
                timed_loop(&$op, $iters);
            }
        }
    };
}

/// The thread counts of the table's rows.
pub const THREADS: [u32; 3] = [1, 2, 8];

/// The thread counts of the metric kinds' rows.
pub const METRIC_THREADS: [u32; 4] = [1, 2, 8, 32];

/// The thread counts of the scaling measurement (`--plot`).
const SCALING_THREADS: [u32; 5] = [1, 2, 4, 8, 32];

/// What a row measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Add 1 to a counter.
    Counter,
    /// Take an object from a pool, use it, put it back.
    Pool,
    /// Push the object held, pop one, use it.
    Stack,
    /// Increment a counter through a metrics crate's interface.
    Metric,
    /// Observe a value in a histogram.
    Histogram,
}

/// The structures whose thread scaling `--plot` measures.
pub(crate) const SCALED: [Kind; 4] = [Kind::Counter, Kind::Pool, Kind::Metric, Kind::Histogram];

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::Counter,
        Kind::Pool,
        Kind::Stack,
        Kind::Metric,
        Kind::Histogram,
    ];

    /// The thread counts of its rows in the full table.
    fn table_threads(self) -> &'static [u32] {
        match self {
            Kind::Metric | Kind::Histogram => &METRIC_THREADS,
            _ => &THREADS,
        }
    }

    /// The prefix of its rows' names.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Pool => "pool",
            Kind::Stack => "stack",
            Kind::Metric => "metric",
            Kind::Histogram => "histogram",
        }
    }

    /// The operation, in words.
    pub(crate) fn operation(self) -> &'static str {
        match self {
            Kind::Counter => "counter add",
            Kind::Pool => "pool get+put",
            Kind::Stack => "stack push+pop",
            Kind::Metric => "counter increment (metrics crates)",
            Kind::Histogram => "histogram observe",
        }
    }

    /// The implementations, ktl's first.
    fn labels(self) -> [&'static str; 4] {
        match self {
            Kind::Counter => [
                "PerCpuCounter::add",
                "shared AtomicU64 fetch_add",
                "ThreadLocal<Cell<u64>> add",
                "Mutex<u64> add",
            ],
            Kind::Pool => [
                "Pool get+put",
                "ArrayQueue pop+push",
                "SegQueue pop+push",
                "Mutex<Vec> pop+push",
            ],
            Kind::Stack => [
                "PerCpuStack push+pop",
                "ArrayQueue push+pop",
                "SegQueue push+pop",
                "Mutex<Vec> push+pop",
            ],
            Kind::Metric => [
                METRIC_KTL,
                METRIC_ATOMIC,
                METRIC_PROMETHEUS,
                METRIC_KTL_PROMETHEUS,
            ],
            Kind::Histogram => [
                HISTOGRAM_KTL,
                HISTOGRAM_PROMETHEUS,
                HISTOGRAM_MUTEX,
                HISTOGRAM_KTL_METRICS,
            ],
        }
    }
}

/// The labels of the metric and histogram kinds' implementations, as
/// literals, so that the checks can spell the rows' names with `concat!`.
macro_rules! metric_label {
    (counter_ktl) => {
        "ktl PerCpuCounterU64 via metrics::Counter"
    };
    (counter_atomic) => {
        "metrics::Counter over AtomicU64"
    };
    (counter_prometheus) => {
        "prometheus_client Counter::inc"
    };
    (counter_ktl_prometheus) => {
        "ktl::prometheus::Counter::inc"
    };
    (histogram_ktl) => {
        "PerCpuHistogram::observe"
    };
    (histogram_prometheus) => {
        "prometheus_client Histogram::observe"
    };
    (histogram_mutex) => {
        "Mutex<histogram> observe"
    };
    (histogram_ktl_metrics) => {
        "ktl PerCpuHistogram via metrics::Histogram"
    };
}
pub(crate) use metric_label;

const METRIC_KTL: &str = metric_label!(counter_ktl);
const METRIC_ATOMIC: &str = metric_label!(counter_atomic);
const METRIC_PROMETHEUS: &str = metric_label!(counter_prometheus);
const METRIC_KTL_PROMETHEUS: &str = metric_label!(counter_ktl_prometheus);
const HISTOGRAM_KTL: &str = metric_label!(histogram_ktl);
const HISTOGRAM_PROMETHEUS: &str = metric_label!(histogram_prometheus);
const HISTOGRAM_MUTEX: &str = metric_label!(histogram_mutex);
const HISTOGRAM_KTL_METRICS: &str = metric_label!(histogram_ktl_metrics);

/// The name of the row of implementation `which` of `kind` at `threads`.
fn row_name(kind: Kind, which: usize, threads: u32) -> String {
    let label = kind.labels().get(which).copied().unwrap_or("?");
    let s = if threads == 1 { "" } else { "s" };
    format!("{}: {label} ({threads} thread{s})", kind.name())
}

/// The group's rows: for each structure and thread count, ktl's
/// implementation then the alternatives, each compared to ktl's. The quick
/// run measures the 2-thread rows of every structure but the stack, and the
/// 1-thread rows that a promise of the checks compares.
pub fn rows() -> Vec<Row> {
    let mut rows = Vec::new();
    for kind in Kind::ALL {
        rows.extend(kind_rows(kind, kind.table_threads()));
    }
    rows
}

/// The rows of `kind` at `threads`.
fn kind_rows(kind: Kind, threads: &[u32]) -> Vec<Row> {
    let mut rows = Vec::new();
    for &threads in threads {
        for which in 0..kind.labels().len() {
            // The 2-thread rows but the stacks', and the 1-thread rows
            // that a promise compares.
            let row = row(kind, which, threads);
            let quick = (threads == 2 && kind != Kind::Stack)
                || (threads == 1 && checks::compares(&row.name));
            rows.push(row.in_quick_run(quick));
        }
    }
    rows
}

/// One line of the scaling chart at one thread count.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Line {
    pub(crate) kind: Kind,
    pub(crate) label: &'static str,
    pub(crate) ours: bool,
    pub(crate) threads: u32,
}

/// The rows of the scaling measurement: each counter and pool
/// implementation that `filter` selects (at any of the table's thread
/// counts), at 1, 2, 4, 8 and 32 threads.
pub(crate) fn scaling_rows(filter: Option<&str>) -> Vec<(Row, Line)> {
    let mut rows = Vec::new();
    for kind in SCALED {
        for (which, label) in kind.labels().into_iter().enumerate() {
            let chosen = THREADS
                .iter()
                .any(|&t| selects(filter, &row_name(kind, which, t), GROUP));
            if !chosen {
                continue;
            }
            for threads in SCALING_THREADS {
                let line = Line {
                    kind,
                    label,
                    ours: which == 0,
                    threads,
                };
                rows.push((row(kind, which, threads), line));
            }
        }
    }
    rows
}

/// The row of implementation `which` of `kind` at `threads`.
fn row(kind: Kind, which: usize, threads: u32) -> Row {
    let name = row_name(kind, which, threads);
    let n = &name;
    let row = match (kind, which) {
        (Kind::Counter, 0) => {
            shared_row(n, threads, PerCpuCounter::new(), counter_ktl, |c, ops| {
                counts_match(i128::from(c.sum()), ops)
            })
        }
        (Kind::Counter, 1) => shared_row(
            n,
            threads,
            CachePadded::new(AtomicU64::new(0)),
            counter_atomic,
            |a, ops| counts_match(i128::from(a.into_inner().into_inner()), ops),
        ),
        (Kind::Counter, 2) => shared_row(
            n,
            threads,
            ThreadLocal::<Cell<u64>>::new(),
            counter_thread_local,
            |t, ops| counts_match(t.into_iter().map(|c| i128::from(c.get())).sum(), ops),
        ),
        (Kind::Counter, _) => shared_row(
            n,
            threads,
            CachePadded::new(Mutex::new(0u64)),
            counter_mutex,
            |m, ops| {
                let v = m
                    .into_inner()
                    .into_inner()
                    .unwrap_or_else(PoisonError::into_inner);
                counts_match(i128::from(v), ops)
            },
        ),
        (Kind::Pool, 0) => shared_row(n, threads, filled_pool(), pool_ktl, |mut p, ops| {
            let made = p.created();
            objects_match(p.drain(), made, ops)
        }),
        (Kind::Pool, 1) => store_row::<ArrayQueue<Obj>>(n, threads, pool_store::<ArrayQueue<Obj>>),
        (Kind::Pool, 2) => store_row::<SegQueue<Obj>>(n, threads, pool_store::<SegQueue<Obj>>),
        (Kind::Pool, _) => store_row::<Mutex<Vec<Obj>>>(n, threads, pool_store::<Mutex<Vec<Obj>>>),
        (Kind::Stack, 0) => {
            store_row::<PerCpuStack<Obj>>(n, threads, stack_store::<PerCpuStack<Obj>>)
        }
        (Kind::Stack, 1) => {
            store_row::<ArrayQueue<Obj>>(n, threads, stack_store::<ArrayQueue<Obj>>)
        }
        (Kind::Stack, 2) => store_row::<SegQueue<Obj>>(n, threads, stack_store::<SegQueue<Obj>>),
        (Kind::Stack, _) => {
            store_row::<Mutex<Vec<Obj>>>(n, threads, stack_store::<Mutex<Vec<Obj>>>)
        }
        (Kind::Metric, 0) => {
            let ktl = Arc::new(PerCpuCounterU64::new());
            let handle = metrics::Counter::from_arc(Arc::clone(&ktl));
            shared_row(n, threads, (handle, ktl), metric_facade, |(h, c), ops| {
                drop(h);
                counts_match(i128::from(c.sum()), ops)
            })
        }
        (Kind::Metric, 1) => {
            let atomic = Arc::new(AtomicU64::new(0));
            let handle = metrics::Counter::from_arc(Arc::clone(&atomic));
            shared_row(
                n,
                threads,
                (handle, atomic),
                metric_facade,
                |(h, a), ops| {
                    drop(h);
                    counts_match(i128::from(a.load(Ordering::Relaxed)), ops)
                },
            )
        }
        (Kind::Metric, 2) => shared_row(
            n,
            threads,
            prometheus_client::metrics::counter::Counter::<u64>::default(),
            |c, iters, shape| shaped!(iters, shape, || c.inc()),
            |c, ops| counts_match(i128::from(c.get()), ops),
        ),
        (Kind::Metric, _) => shared_row(
            n,
            threads,
            ktl::prometheus::Counter::default(),
            |c, iters, shape| {
                shaped!(iters, shape, || {
                    c.inc();
                    1u64
                })
            },
            |c, ops| counts_match(i128::from(c.get()), ops),
        ),
        (Kind::Histogram, 0) => shared_row(
            n,
            threads,
            PerCpuHistogram::with_default_bounds(),
            |h, iters, shape| {
                observe_samples(iters, shape, |v| {
                    h.observe(v);
                    1
                })
            },
            |h, ops| counts_match(i128::from(h.snapshot().count()), ops),
        ),
        (Kind::Histogram, 1) => shared_row(
            n,
            threads,
            prometheus_client::metrics::histogram::Histogram::new(PerCpuHistogram::DEFAULT_BOUNDS),
            |h, iters, shape| {
                observe_samples(iters, shape, |v| {
                    h.observe(v);
                    1
                })
            },
            |h, ops| counts_match(prometheus_count(&h), ops),
        ),
        (Kind::Histogram, 2) => shared_row(
            n,
            threads,
            CachePadded::new(Mutex::new(MutexHistogram::default())),
            |h, iters, shape| {
                observe_samples(iters, shape, |v| {
                    let mut g = h.lock().unwrap_or_else(PoisonError::into_inner);
                    g.observe(v);
                    g.count
                })
            },
            |h, ops| {
                let g = h
                    .into_inner()
                    .into_inner()
                    .unwrap_or_else(PoisonError::into_inner);
                counts_match(i128::from(g.count), ops)
            },
        ),
        (Kind::Histogram, _) => {
            let ktl = Arc::new(PerCpuHistogram::with_default_bounds());
            let handle = metrics::Histogram::from_arc(Arc::clone(&ktl));
            shared_row(
                n,
                threads,
                (handle, ktl),
                |(h, _), iters, shape| {
                    observe_samples(iters, shape, |v| {
                        h.record(v);
                        1
                    })
                },
                |(h, k), ops| {
                    drop(h);
                    counts_match(i128::from(k.snapshot().count()), ops)
                },
            )
        }
    };
    let row = row.compared_to(row_name(kind, 0, threads));
    if which == 0 { row.ours() } else { row }
}

/// Each helper thread reads its CPU once before the samples, so that
/// registering its rseq area (when ktl owns the areas) is not timed. The
/// structures work without an area too (through their fallbacks), so a
/// thread without one still runs the row.
fn thread_setup() -> Result<(), String> {
    let _ = ktl::rseq::start(Index::CpuId);
    Ok(())
}

/// A row of `threads` threads that each run `sample` on one shared `S`;
/// after the samples, `check` gets the structure back, with the operations
/// performed.
fn shared_row<S: Send + Sync + 'static>(
    name: &str,
    threads: u32,
    shared: S,
    sample: fn(&S, u64, Shape),
    check: fn(S, u64) -> Result<String, String>,
) -> Row {
    let shared = Arc::new(shared);
    let theirs = Arc::clone(&shared);
    let work: Work = Arc::new(move |iters, shape| sample(&theirs, iters, shape));
    crew_row(
        name,
        GROUP,
        threads,
        work,
        thread_setup,
        move |ops| match Arc::try_unwrap(shared) {
            Ok(s) => check(s, ops),
            Err(_) => Err("the structure is still in use after the samples".to_owned()),
        },
    )
}

fn counter_ktl(c: &PerCpuCounter, iters: u64, shape: Shape) {
    shaped!(iters, shape, || {
        c.add(1);
        1u64
    });
}

fn counter_atomic(a: &CachePadded<AtomicU64>, iters: u64, shape: Shape) {
    shaped!(iters, shape, || a.fetch_add(1, Ordering::Relaxed));
}

fn counter_thread_local(t: &ThreadLocal<Cell<u64>>, iters: u64, shape: Shape) {
    shaped!(iters, shape, || {
        let c = t.get_or_default();
        let v = c.get().wrapping_add(1);
        c.set(v);
        v
    });
}

fn counter_mutex(m: &CachePadded<Mutex<u64>>, iters: u64, shape: Shape) {
    shaped!(iters, shape, || {
        let mut v = m.lock().unwrap_or_else(PoisonError::into_inner);
        *v = v.wrapping_add(1);
        *v
    });
}

/// An increment through a `metrics::Counter` handle (of either backing).
fn metric_facade<T>((handle, _): &(metrics::Counter, Arc<T>), iters: u64, shape: Shape) {
    shaped!(iters, shape, || {
        handle.increment(1);
        1u64
    });
}

/// `iters` observations of the values a histogram row observes
/// ([`sample_value`]), each made by `observe`, whose result the loop keeps.
#[inline(always)]
fn observe_samples(iters: u64, shape: Shape, observe: impl Fn(f64) -> u64) {
    let i = Cell::new(0u32);
    shaped!(iters, shape, || {
        i.set(i.get().wrapping_add(1));
        observe(sample_value(i.get()))
    });
}

/// The `i`-th value a histogram row observes: 0.001 s to 16.384 s in
/// doublings, so that every one of the default buckets (5 ms to 10 s, then
/// +Inf) sees observations.
#[inline(always)]
fn sample_value(i: u32) -> f64 {
    f64::from(1u32 << (i % 15)) * 0.001
}

/// The count of a `prometheus-client` histogram, read through its encoder
/// (the crate exposes no getter).
fn prometheus_count(h: &prometheus_client::metrics::histogram::Histogram) -> i128 {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register("h", "", h.clone());
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
        return -1;
    }
    text.lines()
        .find_map(|l| l.strip_prefix("h_count "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-1)
}

/// A histogram behind a mutex: what a program writes without a metrics
/// crate.
#[derive(Default)]
struct MutexHistogram {
    buckets: [u64; PerCpuHistogram::DEFAULT_BOUNDS.len() + 1],
    sum: f64,
    count: u64,
}

impl MutexHistogram {
    fn observe(&mut self, v: f64) {
        let b = PerCpuHistogram::DEFAULT_BOUNDS.partition_point(|&b| b < v);
        self.buckets[b] += 1;
        self.sum += v;
        self.count += 1;
    }
}

fn pool_ktl(pool: &Pool<Obj>, iters: u64, shape: Shape) {
    shaped!(iters, shape, || use_obj(&mut pool.get()));
}

/// A row of a pool or stack made of a [`Store`], filled ([`Shelf::filled`]).
fn store_row<S: Store>(name: &str, threads: u32, sample: fn(&Shelf<S>, u64, Shape)) -> Row {
    shared_row(name, threads, Shelf::<S>::filled(), sample, Shelf::check)
}

/// Pool get+put: takes an object, uses it, puts it back.
fn pool_store<S: Store>(shelf: &Shelf<S>, iters: u64, shape: Shape) {
    shaped!(iters, shape, || {
        let mut o = shelf.store.take().unwrap_or_else(|| shelf.make());
        let v = use_obj(&mut o);
        shelf.put(o);
        v
    });
}

/// Stack push+pop: pushes the object the thread holds, pops one, uses it,
/// and holds it until the next operation. The thread takes an object before
/// its first operation of a sample and puts it back after its last, so the
/// store holds every object between samples.
fn stack_store<S: Store>(shelf: &Shelf<S>, iters: u64, shape: Shape) {
    let held = Cell::new(shelf.store.take());
    shaped!(iters, shape, || {
        let o = held.take().unwrap_or_else(|| shelf.make());
        shelf.put(o);
        let mut o = shelf.store.take().unwrap_or_else(|| shelf.make());
        let v = use_obj(&mut o);
        held.set(Some(o));
        v
    });
    if let Some(o) = held.take() {
        shelf.put(o);
    }
}

/// The footprint of [`PerCpu`] for a few slot types, against the possible
/// CPUs times `size_of::<CachePadded<T>>()`.
pub(crate) struct Footprints {
    /// Bytes the structures take, summed.
    pub(crate) taken: usize,
    /// Bytes expected, summed.
    pub(crate) expected: usize,
    /// Whether each type's footprint is the expected one.
    pub(crate) each_matches: bool,
    /// Per type, in words.
    pub(crate) detail: String,
}

/// Measures [`PerCpu::footprint`] for a byte, a counter slot and a slot
/// larger than a cache line.
pub(crate) fn footprints() -> Result<Footprints, String> {
    let cpus = ktl::cpu::possible_cpus()
        .ok_or("cannot read the possible CPUs (/sys/devices/system/cpu/possible)")?
        as usize;
    fn one<T: Default>(name: &str, cpus: usize) -> (usize, usize, String) {
        let p: PerCpu<T> = PerCpu::new(Index::CpuId);
        let pad = std::mem::size_of::<CachePadded<T>>();
        let (taken, expected) = (p.footprint(), cpus * pad);
        let words = if taken == expected {
            format!("PerCpu<{name}> {taken} B = {cpus} x {pad}")
        } else {
            format!("PerCpu<{name}> {taken} B, not {cpus} x {pad} = {expected}")
        };
        (taken, expected, words)
    }
    let parts = [
        one::<u8>("u8", cpus),
        one::<AtomicU64>("AtomicU64", cpus),
        one::<[u64; 24]>("[u64; 24]", cpus),
    ];
    Ok(Footprints {
        taken: parts.iter().map(|p| p.0).sum(),
        expected: parts.iter().map(|p| p.1).sum(),
        each_matches: parts.iter().all(|p| p.0 == p.1),
        detail: parts.map(|p| p.2).join(", "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_the_checks_find_theirs() {
        let rows = rows();
        // Counter, pool, stack at 1, 2, 8 threads; metric and histogram
        // at 1, 2, 8, 32; four implementations each.
        assert_eq!(rows.len(), 3 * 3 * 4 + 2 * 4 * 4);
        let mut names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        for wanted in [
            PERCPU_ADD_2,
            PERCPU_SHARED_ADD_2,
            POOL_1,
            ARRAY_QUEUE_1,
            POOL_2,
            ARRAY_QUEUE_2,
        ] {
            assert!(names.contains(&wanted), "{wanted}");
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), rows.len());
        for r in &rows {
            assert_eq!(r.group, GROUP);
            assert!(r.op.is_ok(), "{} runs everywhere", r.name);
            let base = r.baseline.as_deref().unwrap();
            assert!(
                rows.iter()
                    .any(|b| b.name == base && b.ours && b.threads == r.threads)
            );
            let metric_promise = r.threads == 1
                && [
                    metric_label!(counter_ktl),
                    metric_label!(counter_atomic),
                    metric_label!(counter_prometheus),
                    metric_label!(counter_ktl_prometheus),
                    metric_label!(histogram_ktl),
                    metric_label!(histogram_prometheus),
                ]
                .iter()
                .any(|l| r.name.contains(l));
            let one_thread_promise = metric_promise
                || [
                    PERCPU_ADD_1,
                    THREAD_LOCAL_ADD_1,
                    POOL_1,
                    ARRAY_QUEUE_1,
                    STACK_1,
                    ARRAY_QUEUE_STACK_1,
                ]
                .contains(&r.name.as_str());
            assert_eq!(
                r.quick,
                (r.threads == 2 && !r.name.starts_with("stack")) || one_thread_promise,
                "{}",
                r.name
            );
        }
    }

    #[test]
    fn scaling_follows_the_filter() {
        let all = scaling_rows(None);
        assert_eq!(all.len(), 4 * 4 * SCALING_THREADS.len());
        let counters = scaling_rows(Some("counter"));
        // The counter kind, and the metric kind, whose four labels name a
        // Counter too.
        assert_eq!(counters.len(), 8 * SCALING_THREADS.len());
        assert!(
            counters
                .iter()
                .all(|(_, l)| matches!(l.kind, Kind::Counter | Kind::Metric))
        );
        let one = scaling_rows(Some("arrayqueue pop"));
        assert_eq!(one.len(), SCALING_THREADS.len());
        assert_eq!(one[4].1.threads, 32);
        assert!(one[4].0.name.ends_with("(32 threads)"));
        assert!(scaling_rows(Some("stack")).is_empty());
    }

    #[test]
    fn a_lost_object_fails_the_check() {
        let shelf = Shelf::<ArrayQueue<Obj>>::filled();
        pool_store(&shelf, 10, Shape::Call);
        let o = shelf.store.take().unwrap();
        drop(o);
        let err = shelf.check(10).unwrap_err();
        assert!(err.contains("255 of the 256 objects"), "{err}");
    }

    #[test]
    fn footprints_match() {
        let f = footprints().unwrap();
        assert!(f.each_matches, "{}", f.detail);
        assert_eq!(f.taken, f.expected);
    }
}
