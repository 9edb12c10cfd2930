//! `ktl bench`: measures the per-thread accessors, the restartable
//! sequences, the per-CPU structures and the random bytes against their
//! alternatives.
//!
//! The framework is small and meant to grow. A [`Row`] is a named operation
//! in a group, or the reason it cannot run on this machine. For the rows that
//! can run, [`measure_all`] calibrates an iteration count per row, so that one
//! sample takes about `--sample-ms`, runs one untimed sample of each as a
//! warm-up, then takes `--samples` rounds of timed samples, one sample of
//! every row per round (every group's rows take part in the same rounds).
//!
//! Four groups of rows:
//! - `cpu`: `ktl::cpu_id()` and the other accessors, the raw load they are
//!   held to, and the other ways to learn the CPU (glibc, vDSO, system call,
//!   RDPID).
//! - `rseq`: a per-CPU counter incremented with restartable sequences
//!   ([`ktl::rseq::add`] after [`ktl::rseq::start`], [`ktl::rseq::add_current`]
//!   in one section, and [`ktl::rseq::cmpeqv_storev`] on a value read just
//!   before), against the same increment with an atomic instruction.
//!   The per-CPU counter is an array of `AtomicI64`, one per possible CPU,
//!   each on its own 128-byte pair of cache lines. Each operation goes
//!   through [`ktl::rseq::retry`] (`add_current` retries itself), so the cost
//!   of reading the CPU number is part of it. The rows need a live rseq area in the benchmarking thread;
//!   without one they are listed as "n/a".
//! - `percpu`: the structures of [`ktl::percpu`] against what programs use
//!   today, each at 1, 2 and 8 threads on one shared structure (see the
//!   `percpu` submodule): counter add ([`ktl::percpu::PerCpuCounter`]
//!   against a shared `AtomicU64`, a `thread_local::ThreadLocal<Cell<u64>>`
//!   and a `Mutex<u64>`), pool get+put ([`ktl::percpu::Pool`] against
//!   crossbeam's `ArrayQueue` and `SegQueue` and a `Mutex<Vec<_>>`) and stack
//!   push+pop ([`ktl::percpu::PerCpuStack`] against the same three). Each
//!   row's ratio is taken against ktl's structure with the same operation
//!   and thread count.
//! - `random`: random bytes for requests of 16, 256 and 4096 bytes (see the
//!   `random` submodule): [`ktl::random::fill`] (vDSO getrandom with a
//!   per-thread state) against the `getrandom(2)` system call
//!   ([`ktl::random::syscall_fill`]) and the `getrandom` crate as it is
//!   (`getrandom::fill`, which calls the C library's `getrandom`). ktl's row
//!   names the path it took: `(vDSO)`, or `(syscall fallback)` when the
//!   kernel has no vDSO getrandom; a line under the table gives the reason.
//!   Each row's ratio is taken against ktl's row of the same size.
//!
//! A row of N threads runs the loop in N threads at once: the benchmarking
//! thread and N - 1 helper threads that the row spawns once and drives
//! sample by sample (a [`Crew`]). The helpers block between samples; at the
//! start of a sample the threads meet in a short spin, the benchmarking
//! thread reads the clock and releases the helpers, all run the sample's
//! iteration count, and the clock is read again once all have finished. The
//! time per operation is that wall time divided by the iterations of *one*
//! thread (times the calls per iteration): what one operation costs a thread
//! while the others hammer the same structure. With more threads than CPUs
//! (the 8-thread rows on a smaller machine) the threads take turns, and the
//! time per operation grows with the oversubscription. The rseq row's
//! threads update their own CPUs' slots (no line is shared); the atomic
//! row's threads share one `AtomicU64`, the classic contended counter. The
//! threads are not pinned: on a machine with two CPUs or more the scheduler
//! keeps two threads on different CPUs nearly all the time, and when it does
//! not, the rseq sections abort and restart and the shared counter's line
//! stays in one cache (both are part of what is measured).
//!
//! Every `rseq`, `percpu` and `random` row checks its result: its loops
//! count the operations they perform (calibration and warm-up included), and
//! after the samples, once the row's threads are gone, the counters must sum
//! to that count exactly, the pools and stacks must hold every object they
//! made, whose use counts must sum to that count, and no random fill may
//! have failed, ktl's having all taken the path its row names. (Each random
//! fill adds the first 8 bytes it got to the loop's accumulator, so the
//! bytes are used.) A mismatch is a correctness failure, not noise: the
//! report is printed, the mismatch named, and `ktl bench` returns an error.
//!
//! Two loop shapes are available (`--shape`):
//! - `call` (the default): each iteration makes one call and adds its result
//!   to an accumulator, which goes through [`std::hint::black_box`] at the end
//!   of the sample. The loop's own add, decrement and branch are part of every
//!   row: this is the cost of a call as code that uses the result sees it.
//! - `throughput`: each iteration makes 8 calls (unrolled) and adds the
//!   results with `wrapping_add`; the sum goes through `black_box` at the end
//!   of the sample. Independent calls then overlap in the out-of-order core,
//!   and the loop approaches the processor's issue rate: the raw load costs
//!   about one cycle, and every extra instruction of a row shows. (The
//!   counter rows' calls are not independent: each updates the same word.)
//!
//! The report gives, per row, the median, minimum and maximum time per call
//! and the spread, `(max - min) / median`, and a ratio to the row's baseline
//! (`ktl::cpu_id()` in `cpu`, the uncontended `fetch_add` in `rseq`, ktl's
//! structure with the same operation and threads in `percpu`, ktl's fill of
//! the same size in `random`). Below the table come the comparisons the
//! project promises, computed from the medians of the same run:
//! - `ktl::cpu_id()` costs at most 1.5x the raw thread-pointer-relative load;
//! - `ktl::cpu_id()` is at least 4x faster than glibc's `sched_getcpu`;
//! - `rseq add` with 2 threads is at least 5x faster per operation than a
//!   shared `AtomicU64::fetch_add` with 2 threads;
//! - a single-thread `rseq add` costs at most half an uncontended
//!   `fetch_add`;
//! - `PerCpuCounter::add` with 2 threads is at least 5x faster per operation
//!   than a shared `AtomicU64::fetch_add` with 2 threads;
//! - `Pool` get+put with 2 threads is at least 2x faster per operation than
//!   `ArrayQueue` pop+push with 2 threads;
//! - `ktl::random::fill` of 16 bytes is at least 5x faster than the
//!   `getrandom(2)` system call (skipped when ktl's rows ran on the syscall
//!   fallback);
//! - `PerCpu<T>` takes exactly possible CPUs x `size_of::<CachePadded<T>>()`
//!   bytes ([`ktl::percpu::PerCpu::footprint`], for a few `T`; computed, not
//!   measured, whenever a `percpu` row runs).
//!
//! A failed comparison is reported, never turned into an error: machines are
//! noisy.
//!
//! `--quick` (and `ktl` with no subcommand) takes fewer, shorter samples, of
//! the `percpu` group runs only the 2-thread counter and pool rows, and of
//! the `random` group only ktl's and the system call's 16-byte rows: the
//! rows the promises compare. A filter that is a group's name selects that
//! group (`cpu` does not select `percpu`); any other filter selects the rows
//! whose name or group contains it.
//!
//! `--plot FILE.svg` draws two SVG charts (see [`crate::plot`]): the rows of
//! the run as bars into `FILE.svg`, and, into `FILE-scaling.svg`, the thread
//! scaling of the counters and pools that the filter selects, measured after
//! the rows at 1, 2, 4, 8 and 32 threads, with the same settings and the
//! same checks. Both paths are checked before anything is measured.
//!
//! The JSON form (`--json`) follows the schema `ktl-bench/1`:
//!
//! ```text
//! {"schema": "ktl-bench/1",
//!  "machine": {"cpu_model", "kernel", "arch", "logical_cpus", "usable_cpus"},
//!  "owner": "libc" | "ktl" | "unavailable",
//!  "shape": "call" | "throughput",
//!  "rows": [{"name", "group", "threads", "available", "reason", "median_ns",
//!            "min_ns", "max_ns", "spread_pct", "samples", "iters_per_sample"}],
//!  "checks": [{"name", "ratio", "limit", "bound", "pass", "reason", "detail"}],
//!  "scaling": [{"structure", "implementation", "ours", "threads",
//!               "median_ns", "min_ns", "max_ns", "reason"}]}
//! ```
//!
//! Numbers of a row that did not run, and the ratio and verdict of a check
//! that could not be computed, are `null`; `reason` says why. `bound` is
//! `"max"` when `ratio` must be at most `limit`, `"min"` when at least, and
//! `"exact"` when it must equal it (the footprint check, whose `ratio` is
//! bytes taken / bytes expected and whose `detail` gives the sizes in
//! words; `detail` is `null` for the others). `scaling` is empty without
//! `--plot`. `rows[].threads`, `checks[].detail` and `scaling` were added
//! within version 1 (a version only ever gains fields).

mod percpu;
mod random;

use crate::plot;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ktl::cpu::Source;
use ktl::rseq::{Failure, Index, Start};
use serde::Serialize;
use std::cell::Cell;
use std::fmt::Write as _;
use std::hint::black_box;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The JSON schema name and version.
const SCHEMA: &str = "ktl-bench/1";

/// The row the ratio column compares against.
const BASELINE: &str = "ktl::cpu_id()";

/// The name of the raw-load row, the limit `ktl::cpu_id()` is held to.
const RAW_LOAD: &str = "raw %fs load (limit)";

/// The name of the glibc row.
const GLIBC: &str = "glibc sched_getcpu";

/// The `rseq` group's rows.
const RSEQ_ADD_1: &str = "rseq add (1 thread)";
const FETCH_ADD_1: &str = "fetch_add uncontended (1 thread)";
const RSEQ_ADD_2: &str = "rseq add (2 threads)";
const RSEQ_CURRENT_1: &str = "rseq add_current (1 thread)";
const RSEQ_CURRENT_2: &str = "rseq add_current (2 threads)";
const SHARED_ADD_2: &str = "shared AtomicU64 fetch_add (2 threads)";
const RSEQ_CAS_1: &str = "rseq cmpeqv_storev (1 thread)";
const CAS_1: &str = "compare_exchange uncontended (1 thread)";

/// The `percpu` group's rows that the promises compare.
const PERCPU_ADD_2: &str = "counter: PerCpuCounter::add (2 threads)";
const PERCPU_SHARED_ADD_2: &str = "counter: shared AtomicU64 fetch_add (2 threads)";
const POOL_2: &str = "pool: Pool get+put (2 threads)";
const ARRAY_QUEUE_2: &str = "pool: ArrayQueue pop+push (2 threads)";

/// Each group's baseline: the row the ratio column compares against. The
/// `percpu` group's rows each name their own (ktl's structure with the same
/// operation and thread count).
const BASELINES: &[(&str, &str)] = &[("cpu", BASELINE), ("rseq", FETCH_ADD_1)];

/// Calls of the operation per timed iteration in the throughput shape.
const UNROLL: u64 = 8;

/// How a sample's loop calls the operation.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// One call per iteration, its result added to an accumulator.
    #[default]
    Call,
    /// 8 unrolled calls per iteration, results summed.
    Throughput,
}

impl Shape {
    /// Calls per loop iteration.
    fn calls_per_iter(self) -> u64 {
        match self {
            Shape::Call => 1,
            Shape::Throughput => UNROLL,
        }
    }
}

/// Defaults of a full run.
const DEFAULT_SAMPLES: u32 = 15;
const DEFAULT_SAMPLE_MS: u64 = 20;

/// Defaults of the quick run (`--quick`, and `ktl` with no subcommand).
const QUICK_SAMPLES: u32 = 7;
const QUICK_SAMPLE_MS: u64 = 5;

/// Upper bounds on the options, to catch typos that would run for hours.
const MAX_SAMPLES: u32 = 10_000;
const MAX_SAMPLE_MS: u64 = 60_000;

/// Options of `ktl bench`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct BenchArgs {
    /// Timed samples per row [default: 15, or 7 with --quick].
    #[arg(long, value_name = "N")]
    pub samples: Option<u32>,
    /// Target duration of one sample, in milliseconds [default: 20, or 5 with
    /// --quick].
    #[arg(long, value_name = "MS")]
    pub sample_ms: Option<u64>,
    /// The short run: fewer, shorter samples, of the percpu group only the
    /// 2-thread counter and pool rows, and of the random group only the
    /// 16-byte ktl and syscall rows (a few seconds in all).
    #[arg(long)]
    pub quick: bool,
    /// Run only the rows of this group (cpu, rseq, percpu, random), or else
    /// the rows whose name or group contains this text (ignoring case).
    #[arg(long, value_name = "SUBSTRING")]
    pub filter: Option<String>,
    /// Print the results as JSON (schema `ktl-bench/1`), without a progress
    /// bar.
    #[arg(long)]
    pub json: bool,
    /// The loop shape: `call` (one call per iteration, like criterion) or
    /// `throughput` (8 unrolled, independent calls per iteration).
    #[arg(long, value_enum, default_value_t = Shape::Call)]
    pub shape: Shape,
    /// Draw SVG charts: the rows of the run as bars into FILE, and the thread
    /// scaling of the counters and pools (1 to 32 threads, measured after
    /// the rows) into FILE with `-scaling` added to its name.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
}

impl BenchArgs {
    /// The short run that `ktl` with no subcommand does after the report.
    pub fn quick() -> BenchArgs {
        BenchArgs {
            quick: true,
            ..BenchArgs::default()
        }
    }

    /// The effective sample count and sample duration, checked.
    fn settings(&self) -> Result<(u32, Duration), String> {
        let (default_samples, default_ms) = if self.quick {
            (QUICK_SAMPLES, QUICK_SAMPLE_MS)
        } else {
            (DEFAULT_SAMPLES, DEFAULT_SAMPLE_MS)
        };
        let samples = self.samples.unwrap_or(default_samples);
        let ms = self.sample_ms.unwrap_or(default_ms);
        if !(1..=MAX_SAMPLES).contains(&samples) {
            return Err(format!(
                "--samples must be between 1 and {MAX_SAMPLES} (got {samples})"
            ));
        }
        if !(1..=MAX_SAMPLE_MS).contains(&ms) {
            return Err(format!(
                "--sample-ms must be between 1 and {MAX_SAMPLE_MS} (got {ms})"
            ));
        }
        Ok((samples, Duration::from_millis(ms)))
    }
}

/// A timed loop: runs `iters` iterations of the unrolled body and returns the
/// elapsed time.
type TimedLoop = Box<dyn Fn(u64, Shape) -> Duration>;

/// A row's check after its samples (and after its threads have stopped):
/// what was verified, or what went wrong.
type Verify = Box<dyn FnOnce() -> Result<String, String>>;

/// One line of the benchmark: a named operation, or why it cannot run here.
pub struct Row {
    /// The name shown in the table and in JSON.
    pub name: String,
    /// The group of related rows (for example `"cpu"`).
    pub group: String,
    /// The timed loop, or the reason the row is not available.
    op: Result<TimedLoop, String>,
    /// Run after the row's samples, once its loop and threads are gone
    /// (counting rows: the counters sum to the operations performed; object
    /// rows: the structure holds every object); an error is a correctness
    /// failure.
    verify: Option<Verify>,
    /// Threads that run the loop at once (each its own `iters` iterations).
    threads: u32,
    /// Whether the row measures ktl's own code (charts draw it apart).
    ours: bool,
    /// Whether the quick run (`--quick`) measures it.
    quick: bool,
    /// The row the ratio column compares against; `None`: the group's
    /// baseline ([`BASELINES`]).
    baseline: Option<String>,
}

impl Row {
    /// A row measuring `op`. The results of its calls are summed with
    /// `wrapping_add`, so any integer type that widens to `u64` will do.
    pub fn new<T, F>(name: &str, group: &str, op: F) -> Row
    where
        T: Into<u64>,
        F: Fn() -> T + 'static,
    {
        Row::timed(
            name,
            group,
            Box::new(move |iters, shape| run_shape(&op, iters, shape)),
            None,
        )
    }

    /// A row with its own timed loop, and a check to run after its samples.
    fn timed(name: &str, group: &str, op: TimedLoop, verify: Option<Verify>) -> Row {
        Row {
            name: name.to_owned(),
            group: group.to_owned(),
            op: Ok(op),
            verify,
            threads: 1,
            ours: false,
            quick: true,
            baseline: None,
        }
    }

    /// A row that cannot run on this machine, listed as "n/a" with `reason`.
    pub fn unavailable(name: &str, group: &str, reason: impl Into<String>) -> Row {
        Row {
            name: name.to_owned(),
            group: group.to_owned(),
            op: Err(reason.into()),
            verify: None,
            threads: 1,
            ours: false,
            quick: true,
            baseline: None,
        }
    }

    /// The row, marked as measuring ktl's own code.
    fn ours(mut self) -> Row {
        self.ours = true;
        self
    }

    /// The row, measured by the quick run or not.
    fn in_quick_run(mut self, quick: bool) -> Row {
        self.quick = quick;
        self
    }

    /// The row, with its ratio taken against the row named `baseline`.
    fn compared_to(mut self, baseline: String) -> Row {
        self.baseline = Some(baseline);
        self
    }

    /// Whether `filter` selects this row (see [`selects`]).
    fn matches(&self, filter: Option<&str>) -> bool {
        selects(filter, &self.name, &self.group)
    }
}

/// The groups of rows, in order.
const GROUPS: &[&str] = &["cpu", "rseq", percpu::GROUP, random::GROUP];

/// Whether `filter` selects the row `name` of `group`. A filter that is a
/// group's name (ignoring case) selects that group; any other filter
/// selects the rows whose name or group contains it (ignoring case). No
/// filter selects every row.
fn selects(filter: Option<&str>, name: &str, group: &str) -> bool {
    filter.is_none_or(|f| {
        let f = f.to_lowercase();
        if GROUPS.iter().any(|g| g.to_lowercase() == f) {
            return group.to_lowercase() == f;
        }
        name.to_lowercase().contains(&f) || group.to_lowercase().contains(&f)
    })
}

/// Runs `iters` iterations of `op` in the loop of `shape` and returns the
/// elapsed time.
#[inline(always)]
fn run_shape<T: Into<u64>>(op: &impl Fn() -> T, iters: u64, shape: Shape) -> Duration {
    match shape {
        Shape::Call => call_loop(op, iters),
        Shape::Throughput => timed_loop(op, iters),
    }
}

/// Runs `iters` iterations of one call of `op`, adding each result into an
/// accumulator that goes through `black_box` at the end, and returns the
/// elapsed time.
///
/// The loop is not unrolled, so its own cost (an add, a decrement and a
/// branch) is part of every row, as in any per-call benchmark. It stores
/// nothing per call: a store per call would let the processor's memory
/// disambiguation stall some rows and not others, depending on where the
/// stack happens to sit.
#[inline(always)]
fn call_loop<T: Into<u64>>(op: &impl Fn() -> T, iters: u64) -> Duration {
    let mut acc = 0u64;
    let start = Instant::now();
    for _ in 0..iters {
        acc = acc.wrapping_add(op().into());
    }
    let elapsed = start.elapsed();
    black_box(acc);
    elapsed
}

/// Runs `iters` iterations of 8 calls of `op` and returns the elapsed time.
///
/// Generic, so `op` is inlined into the loop: the only dynamic call is the
/// one into this function, once per sample.
#[inline(always)]
fn timed_loop<T: Into<u64>>(op: &impl Fn() -> T, iters: u64) -> Duration {
    let mut acc = 0u64;
    let start = Instant::now();
    for _ in 0..iters {
        acc = acc.wrapping_add(op().into());
        acc = acc.wrapping_add(op().into());
        acc = acc.wrapping_add(op().into());
        acc = acc.wrapping_add(op().into());
        acc = acc.wrapping_add(op().into());
        acc = acc.wrapping_add(op().into());
        acc = acc.wrapping_add(op().into());
        acc = acc.wrapping_add(op().into());
    }
    let elapsed = start.elapsed();
    black_box(acc);
    elapsed
}

/// glibc's `sched_getcpu`: the CPU number, or -1 with `errno` set.
#[inline(always)]
fn glibc_sched_getcpu() -> i32 {
    // SAFETY: `sched_getcpu` takes no arguments, touches no memory of ours
    // and may be called from any thread at any time.
    unsafe { libc::sched_getcpu() }
}

/// The rows of this version, in order: the `cpu` group, the `rseq` group,
/// the `percpu` group, then the `random` group. Rows that cannot run here
/// carry their reason.
pub fn rows() -> Vec<Row> {
    let mut rows = cpu_rows();
    rows.extend(rseq_rows());
    rows.extend(percpu::rows());
    rows.extend(random::rows());
    rows
}

/// The `cpu` group: ktl's accessors, the limit, then the alternatives.
fn cpu_rows() -> Vec<Row> {
    const G: &str = "cpu";
    // Decide the owner and register this thread's area (when ktl owns the
    // areas) before anything is timed.
    let layout = ktl::layout();
    let sources = ktl::cpu::sources();

    let mut rows = vec![Row::new(BASELINE, G, ktl::cpu_id).ours()];

    rows.push(match (layout.offset, sources.cpu_id) {
        (Some(offset), Source::Area) => Row::new(RAW_LOAD, G, move || {
            // SAFETY: `offset` comes from `ktl::layout()`, so it designates
            // the calling thread's area (live: `sources()` reads it), which
            // stays mapped for the life of the thread. The closure only runs
            // on the thread that built the rows.
            unsafe { ktl::cpu::cpu_id_at(offset) }
        }),
        (None, _) => Row::unavailable(
            RAW_LOAD,
            G,
            format!("no rseq area (owner: {})", owner_text(&layout.owner)),
        ),
        (Some(_), source) => Row::unavailable(
            RAW_LOAD,
            G,
            format!("this thread's area is not registered (cpu_id reads: {source})"),
        ),
    });

    rows.push(Row::new("ktl::node_id()", G, ktl::node_id).ours());
    rows.push(Row::new("ktl::mm_cid()", G, ktl::mm_cid).ours());

    rows.push(if glibc_sched_getcpu() >= 0 {
        Row::new(GLIBC, G, || glibc_sched_getcpu() as u32)
    } else {
        let err = std::io::Error::last_os_error();
        Row::unavailable(GLIBC, G, format!("sched_getcpu failed: {err}"))
    });

    rows.push(match ktl::cpu::getcpu_vdso() {
        Some(_) => Row::new("vDSO getcpu", G, || {
            ktl::cpu::getcpu_vdso().map_or(0, |(cpu, _)| cpu)
        }),
        None => Row::unavailable("vDSO getcpu", G, "the vDSO has no getcpu"),
    });

    rows.push(match ktl::cpu::getcpu_syscall() {
        Ok(_) => Row::new("getcpu syscall", G, || {
            ktl::cpu::getcpu_syscall().map_or(0, |(cpu, _)| cpu)
        }),
        Err(e) => Row::unavailable("getcpu syscall", G, format!("getcpu failed: {e}")),
    });

    rows.push(match ktl::cpu::rdpid() {
        Some(_) => Row::new("RDPID", G, || ktl::cpu::rdpid().map_or(0, |(cpu, _)| cpu)),
        None => Row::unavailable("RDPID", G, "this CPU has no RDPID instruction"),
    });

    rows
}

/// A value alone on a 128-byte aligned block: a pair of cache lines, which
/// the adjacent-line prefetcher treats as one unit, so that no two values
/// share either line.
#[repr(align(128))]
#[derive(Default)]
struct Padded<T>(T);

/// One CPU's counter.
type Slot = Padded<AtomicI64>;

/// A per-CPU counter: `n` zeroed slots.
fn slots(n: usize) -> Arc<[Slot]> {
    (0..n).map(|_| Slot::default()).collect()
}

/// The slot of the index `s` was started with, as the pointer the rseq
/// operations take, or `None` if the index is past the slots (never, when
/// they are sized by the possible CPUs: a CPU number is below that count).
#[inline(always)]
fn slot_ptr(slots: &[Slot], s: Start) -> Option<*mut i64> {
    slots.get(s.value() as usize).map(|slot| slot.0.as_ptr())
}

/// Adds 1 to the slot of the current CPU with [`ktl::rseq::add`]: 1 when
/// done, 0 when not (no live area, or an index past the slots; the count
/// check then reports it).
#[inline(always)]
fn rseq_add_once(slots: &[Slot]) -> u64 {
    let done = ktl::rseq::retry(Index::CpuId, |s| match slot_ptr(slots, s) {
        // SAFETY: the rseq contract holds for these slots. Only rseq
        // operations indexed by CPU (this function and `rseq_cas_once`, each
        // started with the index they write under) write them; everything
        // else only reads them. `slot_ptr` returned the slot of `s.value()`,
        // so the index is below the number of slots, and the pointer is a
        // live, 8-byte aligned `AtomicI64`'s, valid for `i64` reads and
        // writes.
        Some(p) => unsafe { ktl::rseq::add(s, p, 1) }.map(|()| true),
        None => Ok(false),
    });
    u64::from(matches!(done, Some(Ok(true))))
}

/// Adds 1 to the slot of the current CPU with [`ktl::rseq::add_current`],
/// which reads the CPU number inside its section: 1 when done, 0 when not
/// (as in [`rseq_add_once`]).
#[inline(always)]
fn rseq_current_once(slots: &[Slot]) -> u64 {
    let base = slots
        .first()
        .map_or(core::ptr::null_mut(), |s| s.0.as_ptr().cast::<u8>());
    // SAFETY: slot `i`'s AtomicI64 is at `base + i * size_of::<Slot>()` for
    // every `i < slots.len()` (each sits at the same offset in its slot), live, aligned
    // and valid for i64 reads and writes. Only rseq operations indexed by CPU
    // write the slots, each while running with the index value of the slot it
    // writes; everything else only reads them.
    let done =
        unsafe { ktl::rseq::add_current(Index::CpuId, base, size_of::<Slot>(), slots.len(), 1) };
    u64::from(done)
}

/// Adds 1 to the slot of the current CPU through compare-and-store: reads
/// the slot, then [`ktl::rseq::cmpeqv_storev`] stores the value plus one if
/// the slot still holds the value read. 1 when done, 0 when not (as in
/// [`rseq_add_once`]).
#[inline(always)]
fn rseq_cas_once(slots: &[Slot]) -> u64 {
    loop {
        let done = ktl::rseq::retry(Index::CpuId, |s| match slots.get(s.value() as usize) {
            Some(slot) => {
                let seen = slot.0.load(Ordering::Relaxed);
                // SAFETY: as in `rseq_add_once`: only rseq operations
                // indexed by CPU write the slots, and `s.value()` indexes
                // this live, aligned slot, below the number of slots.
                unsafe { ktl::rseq::cmpeqv_storev(s, slot.0.as_ptr(), seen, seen.wrapping_add(1)) }
                    .map(|()| true)
            }
            None => Ok(false),
        });
        match done {
            Some(Ok(done)) => return u64::from(done),
            // Another sequence on this CPU changed the slot between the read
            // and the section (only when two threads share the CPU): read
            // again.
            Some(Err(Failure::CompareFailed)) => continue,
            // `retry` restarts aborts itself; `None`: no live area.
            Some(Err(Failure::Aborted | Failure::FenceFailed)) | None => return 0,
        }
    }
}

/// Adds 1 to `a` through a compare-and-exchange loop; returns the value
/// replaced.
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

/// The sum of a per-CPU counter's slots.
fn slot_sum(slots: &[Slot]) -> i128 {
    slots
        .iter()
        .map(|s| i128::from(s.0.load(Ordering::Relaxed)))
        .sum()
}

/// The operations a row's loops have performed, counted outside the timed
/// part.
type OpCount = Rc<Cell<u64>>;

/// Wraps a row's timed loop so that every run adds the operations it performs
/// (`threads` threads running `iters` iterations of the shape's calls) to
/// `count`.
fn counted(op: TimedLoop, threads: u64, count: OpCount) -> TimedLoop {
    Box::new(move |iters, shape| {
        let elapsed = op(iters, shape);
        let ops = iters
            .saturating_mul(shape.calls_per_iter())
            .saturating_mul(threads);
        count.set(count.get().saturating_add(ops));
        elapsed
    })
}

/// The check of a row, run after its samples: `check` gets the operations
/// performed and says what it verified, or what is wrong; either is prefixed
/// with the row's name. It fails without calling `check` if one of the row's
/// other threads stopped early (`lost`).
fn verified(
    name: &str,
    count: OpCount,
    lost: Option<Rc<Cell<bool>>>,
    check: impl FnOnce(u64) -> Result<String, String> + 'static,
) -> Verify {
    let name = name.to_owned();
    Box::new(move || {
        if lost.as_ref().is_some_and(|l| l.get()) {
            return Err(format!(
                "{name}: another thread of the row stopped before the samples finished"
            ));
        }
        check(count.get())
            .map(|m| format!("{name}: {m}"))
            .map_err(|m| format!("{name}: {m}"))
    })
}

/// Whether counters that sum to `sum` account for `ops` operations.
fn counts_match(sum: i128, ops: u64) -> Result<String, String> {
    if sum == i128::from(ops) {
        Ok(format!("{ops} operations, counters sum to {sum}"))
    } else {
        Err(format!("the counters sum to {sum} after {ops} operations"))
    }
}

/// The check of a counting row: the counters (read by `total`) sum to the
/// operations performed, and the row's other threads (if any) stayed up.
fn exactness(
    name: &str,
    count: OpCount,
    lost: Option<Rc<Cell<bool>>>,
    total: impl FnOnce() -> i128 + 'static,
) -> Verify {
    verified(name, count, lost, move |ops| counts_match(total(), ops))
}

/// The work of one thread in a sample of a multi-thread row: runs `iters`
/// iterations of the row's loop in `shape` (untimed; the sample's clock is
/// read around all the threads).
type Work = Arc<dyn Fn(u64, Shape) + Send + Sync>;

/// Where the threads of a multi-thread row meet. `ready` and `done` count
/// the helpers that reached the step, summed over the samples (after sample
/// `n` of a crew of `k` helpers, both are `n * k`); `go` holds the number of
/// the last sample whose clock runs.
#[derive(Default)]
struct Rendezvous {
    /// Helpers that have the sample's orders and wait for `go`.
    ready: AtomicU64,
    /// The clock is running: start.
    go: AtomicU64,
    /// Helpers that have finished the sample's loop.
    done: AtomicU64,
}

/// Spins (yielding now and then) until `cond`, or until `give_up` says the
/// other thread is gone; returns whether `cond` was met.
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

/// The helper threads of a multi-thread row: spawned once, blocked between
/// samples, and run alongside the benchmarking thread in every sample. A
/// crew of 0 helpers times the benchmarking thread alone.
struct Crew {
    /// The orders of each sample, one channel per helper: iterations, shape
    /// and sample number. Dropping the senders stops the threads.
    orders: Vec<mpsc::Sender<(u64, Shape, u64)>>,
    meet: Arc<Rendezvous>,
    threads: Vec<JoinHandle<()>>,
    /// The number of the last sample.
    sample: Cell<u64>,
    /// Set when a helper was gone during a sample.
    lost: Rc<Cell<bool>>,
}

impl Crew {
    /// Spawns `helpers` threads, each of which runs `setup` first; the error
    /// says why a thread could not start or `setup` failed (the threads
    /// already started are then stopped).
    fn spawn(
        helpers: usize,
        work: &Work,
        setup: fn() -> Result<(), String>,
    ) -> Result<Crew, String> {
        let mut crew = Crew {
            orders: Vec::with_capacity(helpers),
            meet: Arc::new(Rendezvous::default()),
            threads: Vec::with_capacity(helpers),
            sample: Cell::new(0),
            lost: Rc::new(Cell::new(false)),
        };
        for _ in 0..helpers {
            let (orders, inbox) = mpsc::channel::<(u64, Shape, u64)>();
            let (setup_tx, setup_rx) = mpsc::channel();
            let m = Arc::clone(&crew.meet);
            let work = Arc::clone(work);
            let thread = std::thread::Builder::new()
                .name("ktl-bench-helper".to_owned())
                .spawn(move || {
                    let ready = setup();
                    let ok = ready.is_ok();
                    let _ = setup_tx.send(ready);
                    if !ok {
                        return;
                    }
                    while let Ok((iters, shape, n)) = inbox.recv() {
                        m.ready.fetch_add(1, Ordering::AcqRel);
                        spin_until(|| m.go.load(Ordering::Acquire) == n, || false);
                        work(iters, shape);
                        m.done.fetch_add(1, Ordering::AcqRel);
                    }
                })
                .map_err(|e| format!("cannot start a helper thread: {e}"))?;
            crew.orders.push(orders);
            crew.threads.push(thread);
            match setup_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(reason)) => return Err(reason),
                Err(_) => return Err("a helper thread stopped while starting".to_owned()),
            }
        }
        Ok(crew)
    }

    /// One sample: every thread runs `work(iters, shape)`. Returns the wall
    /// time from the release of the helpers until all have finished.
    fn sample(&self, work: &Work, iters: u64, shape: Shape) -> Duration {
        let n = self.sample.get() + 1;
        self.sample.set(n);
        let arrivals = n.saturating_mul(self.orders.len() as u64);
        let gone = || self.threads.iter().any(JoinHandle::is_finished);
        let sent = self
            .orders
            .iter()
            .all(|o| o.send((iters, shape, n)).is_ok());
        if !sent || !spin_until(|| self.meet.ready.load(Ordering::Acquire) >= arrivals, gone) {
            self.lost.set(true);
            return Duration::ZERO;
        }
        let start = Instant::now();
        self.meet.go.store(n, Ordering::Release);
        work(iters, shape);
        let finished = spin_until(|| self.meet.done.load(Ordering::Acquire) >= arrivals, gone);
        let elapsed = start.elapsed();
        if !finished {
            self.lost.set(true);
        }
        elapsed
    }
}

impl Drop for Crew {
    fn drop(&mut self) {
        self.orders.clear();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A row of `threads` threads (the benchmarking thread and `threads - 1`
/// helpers) that each run `work` in every sample, with `check` run after
/// the samples (see [`verified`]).
fn crew_row(
    name: &str,
    group: &str,
    threads: u32,
    work: Work,
    setup: fn() -> Result<(), String>,
    check: impl FnOnce(u64) -> Result<String, String> + 'static,
) -> Row {
    let helpers = threads.max(1) as usize - 1;
    match Crew::spawn(helpers, &work, setup) {
        Ok(crew) => {
            let count = OpCount::default();
            let lost = Rc::clone(&crew.lost);
            let run: TimedLoop = Box::new(move |iters, shape| crew.sample(&work, iters, shape));
            let mut row = Row::timed(
                name,
                group,
                counted(run, u64::from(threads.max(1)), Rc::clone(&count)),
                Some(verified(name, count, Some(lost), check)),
            );
            row.threads = threads.max(1);
            row
        }
        Err(reason) => {
            let mut row = Row::unavailable(name, group, reason);
            row.threads = threads.max(1);
            row
        }
    }
}

/// A 2-thread counting row: `work` in this thread and in a helper thread,
/// checked against `total` after the samples.
fn two_thread_row(
    name: &str,
    group: &str,
    work: Work,
    setup: fn() -> Result<(), String>,
    total: impl FnOnce() -> i128 + 'static,
) -> Row {
    crew_row(name, group, 2, work, setup, move |ops| {
        counts_match(total(), ops)
    })
}

/// A 1-thread counting row, checked against `total` after the samples.
fn one_thread_row(
    name: &str,
    group: &str,
    run: TimedLoop,
    total: impl FnOnce() -> i128 + 'static,
) -> Row {
    let count = OpCount::default();
    Row::timed(
        name,
        group,
        counted(run, 1, Rc::clone(&count)),
        Some(exactness(name, count, None, total)),
    )
}

/// The helper thread of the rseq row needs its own live area.
fn helper_rseq_setup() -> Result<(), String> {
    ktl::rseq::start(Index::CpuId)
        .map(|_| ())
        .ok_or_else(|| "the second thread has no live rseq area".to_owned())
}

/// The `rseq` group: per-CPU counters with restartable sequences against
/// atomics, in one thread and in two. Each row counts its operations and
/// checks its counters after the samples.
fn rseq_rows() -> Vec<Row> {
    const G: &str = "rseq";
    // The number of slots, or why the rseq rows cannot run.
    let cpus = match (ktl::rseq::start(Index::CpuId), ktl::cpu::possible_cpus()) {
        (None, _) => Err(format!(
            "no live rseq area in this thread (owner: {})",
            owner_text(&ktl::layout().owner)
        )),
        (Some(_), None) => {
            Err("cannot read the possible CPUs (/sys/devices/system/cpu/possible)".to_owned())
        }
        (Some(_), Some(n)) => Ok(n as usize),
    };
    let rseq_row = |name: &str, make: &dyn Fn(usize) -> Row| match &cpus {
        Ok(n) => make(*n).ours(),
        Err(reason) => Row::unavailable(name, G, reason.clone()).ours(),
    };
    let mut rows = Vec::new();

    rows.push(rseq_row(RSEQ_ADD_1, &|n| {
        let s = slots(n);
        let mine = Arc::clone(&s);
        let run: TimedLoop = Box::new(move |iters, shape| {
            // A local copy of the slice, so the loop keeps it in registers.
            let slots: &[Slot] = &mine;
            run_shape(&|| rseq_add_once(slots), iters, shape)
        });
        one_thread_row(RSEQ_ADD_1, G, run, move || slot_sum(&s))
    }));

    rows.push({
        let a = Arc::new(Padded(AtomicU64::new(0)));
        let mine = Arc::clone(&a);
        let run: TimedLoop = Box::new(move |iters, shape| {
            let a: &AtomicU64 = &mine.0;
            run_shape(&|| a.fetch_add(1, Ordering::Relaxed), iters, shape)
        });
        one_thread_row(FETCH_ADD_1, G, run, move || {
            i128::from(a.0.load(Ordering::Relaxed))
        })
    });

    rows.push(rseq_row(RSEQ_ADD_2, &|n| {
        let s = slots(n);
        let theirs = Arc::clone(&s);
        let work: Work = Arc::new(move |iters, shape| {
            let slots: &[Slot] = &theirs;
            run_shape(&|| rseq_add_once(slots), iters, shape);
        });
        two_thread_row(RSEQ_ADD_2, G, work, helper_rseq_setup, move || slot_sum(&s))
    }));

    rows.push({
        let a = Arc::new(Padded(AtomicU64::new(0)));
        let theirs = Arc::clone(&a);
        let work: Work = Arc::new(move |iters, shape| {
            let a: &AtomicU64 = &theirs.0;
            run_shape(&|| a.fetch_add(1, Ordering::Relaxed), iters, shape);
        });
        two_thread_row(
            SHARED_ADD_2,
            G,
            work,
            || Ok(()),
            move || i128::from(a.0.load(Ordering::Relaxed)),
        )
    });

    rows.push(rseq_row(RSEQ_CURRENT_1, &|n| {
        let s = slots(n);
        let mine = Arc::clone(&s);
        let run: TimedLoop = Box::new(move |iters, shape| {
            let slots: &[Slot] = &mine;
            run_shape(&|| rseq_current_once(slots), iters, shape)
        });
        one_thread_row(RSEQ_CURRENT_1, G, run, move || slot_sum(&s))
    }));

    rows.push(rseq_row(RSEQ_CURRENT_2, &|n| {
        let s = slots(n);
        let theirs = Arc::clone(&s);
        let work: Work = Arc::new(move |iters, shape| {
            let slots: &[Slot] = &theirs;
            run_shape(&|| rseq_current_once(slots), iters, shape);
        });
        two_thread_row(RSEQ_CURRENT_2, G, work, helper_rseq_setup, move || {
            slot_sum(&s)
        })
    }));

    rows.push(rseq_row(RSEQ_CAS_1, &|n| {
        let s = slots(n);
        let mine = Arc::clone(&s);
        let run: TimedLoop = Box::new(move |iters, shape| {
            let slots: &[Slot] = &mine;
            run_shape(&|| rseq_cas_once(slots), iters, shape)
        });
        one_thread_row(RSEQ_CAS_1, G, run, move || slot_sum(&s))
    }));

    rows.push({
        let a = Arc::new(Padded(AtomicU64::new(0)));
        let mine = Arc::clone(&a);
        let run: TimedLoop = Box::new(move |iters, shape| {
            let a: &AtomicU64 = &mine.0;
            run_shape(&|| cas_once(a), iters, shape)
        });
        one_thread_row(CAS_1, G, run, move || {
            i128::from(a.0.load(Ordering::Relaxed))
        })
    });

    rows
}

/// The statistics of one measured row, in nanoseconds per call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    /// The median over the samples.
    pub median_ns: f64,
    /// The fastest sample.
    pub min_ns: f64,
    /// The slowest sample.
    pub max_ns: f64,
    /// `(max - min) / median`, in percent.
    pub spread_pct: f64,
    /// Timed samples taken.
    pub samples: u32,
    /// Loop iterations per sample (one call each in the `call` shape, 8 in
    /// the `throughput` shape).
    pub iters_per_sample: u64,
}

impl Stats {
    /// The statistics of per-call times `ns` (not empty).
    fn from_samples(mut ns: Vec<f64>, iters_per_sample: u64) -> Stats {
        ns.sort_by(f64::total_cmp);
        let n = ns.len();
        let median = if n == 0 {
            0.0
        } else if n % 2 == 1 {
            ns[n / 2]
        } else {
            (ns[n / 2 - 1] + ns[n / 2]) / 2.0
        };
        let min = ns.first().copied().unwrap_or(0.0);
        let max = ns.last().copied().unwrap_or(0.0);
        let spread_pct = if median > 0.0 {
            (max - min) / median * 100.0
        } else {
            0.0
        };
        Stats {
            median_ns: median,
            min_ns: min,
            max_ns: max,
            spread_pct,
            samples: n as u32,
            iters_per_sample,
        }
    }
}

/// A row after the run: its statistics, or the reason it did not run.
struct Outcome {
    name: String,
    group: String,
    result: Result<Stats, String>,
    /// The row's check after its samples, if it has one and ran: what was
    /// verified, or the correctness failure.
    verified: Option<Result<String, String>>,
    /// Threads that ran the loop at once.
    threads: u32,
    /// Whether the row measures ktl's own code.
    ours: bool,
    /// The row the ratio compares against, when not the group's baseline.
    baseline: Option<String>,
}

impl Outcome {
    fn median(&self) -> Option<f64> {
        self.result.as_ref().ok().map(|s| s.median_ns)
    }
}

/// The iteration count that makes one sample of `op` last about `target`.
///
/// Doubles the count until a run lasts a tenth of the target (long enough for
/// `Instant` to resolve well), then scales it. A run that reaches the tenth
/// is repeated and the faster of the two counts: a first run can carry a
/// one-time cost (a registration with the kernel, page faults, a structure
/// moving its objects to the threads' CPUs) that would otherwise make the
/// count far too small. These runs are also the start of the warm-up.
fn calibrate(op: &dyn Fn(u64) -> Duration, target: Duration) -> u64 {
    const MAX_ITERS: u64 = 1 << 40;
    let probe_target = target / 10;
    let mut iters = 1u64;
    loop {
        let mut elapsed = op(iters);
        if elapsed >= probe_target && iters < MAX_ITERS {
            elapsed = elapsed.min(op(iters));
        }
        if elapsed >= probe_target || iters >= MAX_ITERS {
            let per_iter = elapsed.as_secs_f64() / iters as f64;
            if per_iter <= 0.0 {
                return MAX_ITERS;
            }
            let want = (target.as_secs_f64() / per_iter).round();
            return (want as u64).clamp(1, MAX_ITERS);
        }
        iters *= 2;
    }
}

/// Measures several operations side by side: calibrates each (which also
/// warms it up), runs one untimed warm-up sample of each, then takes
/// `samples` rounds, each round one timed sample of every operation in turn,
/// ticking `bar` once per sample.
///
/// Interleaving the rounds spreads the machine's slow phases (frequency
/// changes, a noisy neighbour) over every row alike, so ratios between rows
/// of one run stay meaningful even when absolute times wander.
fn measure_all(
    ops: &[&dyn Fn(u64) -> Duration],
    calls_per_iter: u64,
    samples: u32,
    target: Duration,
    bar: &ProgressBar,
) -> Vec<Stats> {
    let iters: Vec<u64> = ops.iter().map(|op| calibrate(*op, target)).collect();
    for (op, &n) in ops.iter().zip(&iters) {
        black_box(op(n)); // warm-up
    }
    let mut ns: Vec<Vec<f64>> = vec![Vec::with_capacity(samples as usize); ops.len()];
    for _ in 0..samples {
        for (i, (op, &n)) in ops.iter().zip(&iters).enumerate() {
            let elapsed = op(n);
            bar.inc(1);
            ns[i].push(elapsed.as_nanos() as f64 / (n * calls_per_iter) as f64);
        }
    }
    ns.into_iter()
        .zip(iters)
        .map(|(v, n)| Stats::from_samples(v, n))
        .collect()
}

/// The progress bar: on stderr, hidden when stderr is not a terminal (and
/// always with `--json`).
fn progress_bar(total: u64, json: bool) -> ProgressBar {
    if json {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("bench {bar:30.cyan/blue} {pos:>3}/{len:3} {wide_msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Runs the selected rows side by side (see [`measure_all`]) and returns
/// their outcomes, in order; `what` is the progress bar's message. Each
/// row's check runs after its loop, and with it the row's threads, is gone.
fn run_rows(
    rows: Vec<Row>,
    shape: Shape,
    samples: u32,
    target: Duration,
    json: bool,
    what: &str,
) -> Vec<Outcome> {
    let timed: Vec<Box<dyn Fn(u64) -> Duration + '_>> = rows
        .iter()
        .filter_map(|r| r.op.as_ref().ok())
        .map(|op| Box::new(move |iters| op(iters, shape)) as Box<dyn Fn(u64) -> Duration>)
        .collect();
    let refs: Vec<&dyn Fn(u64) -> Duration> = timed.iter().map(|b| b.as_ref()).collect();
    let bar = progress_bar(refs.len() as u64 * u64::from(samples), json);
    bar.set_message(what.to_owned());
    let mut stats = measure_all(&refs, shape.calls_per_iter(), samples, target, &bar).into_iter();
    bar.finish_and_clear();
    drop(timed);
    rows.into_iter()
        .map(|row| {
            let (result, verified) = match row.op {
                Ok(op) => {
                    // Stops the row's helper threads, so the check sees the
                    // final state and may take the structure back.
                    drop(op);
                    (
                        stats.next().ok_or_else(|| "not measured".to_owned()),
                        row.verify.map(|v| v()),
                    )
                }
                Err(reason) => (Err(reason), None),
            };
            Outcome {
                result,
                verified,
                name: row.name,
                group: row.group,
                threads: row.threads,
                ours: row.ours,
                baseline: row.baseline,
            }
        })
        .collect()
}

/// Which side of the limit a check's ratio must stay on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Bound {
    /// The ratio must be at most the limit.
    Max,
    /// The ratio must be at least the limit.
    Min,
    /// The ratio must equal the limit (a quantity that is not measured but
    /// computed, such as a memory footprint).
    Exact,
}

/// A promised comparison: `median(numerator) / median(denominator)` against
/// `limit`.
struct CheckSpec {
    name: &'static str,
    numerator: &'static str,
    denominator: &'static str,
    bound: Bound,
    limit: f64,
}

/// The comparisons the project promises.
const CHECKS: &[CheckSpec] = &[
    CheckSpec {
        name: "ktl::cpu_id() costs at most 1.5x the raw load",
        numerator: BASELINE,
        denominator: RAW_LOAD,
        bound: Bound::Max,
        limit: 1.5,
    },
    CheckSpec {
        name: "ktl::cpu_id() is at least 4x faster than glibc sched_getcpu",
        numerator: GLIBC,
        denominator: BASELINE,
        bound: Bound::Min,
        limit: 4.0,
    },
    CheckSpec {
        name: "rseq add with 2 threads is at least 5x faster per op than a shared AtomicU64 fetch_add",
        numerator: SHARED_ADD_2,
        denominator: RSEQ_CURRENT_2,
        bound: Bound::Min,
        limit: 5.0,
    },
    CheckSpec {
        name: "a single-thread rseq add costs at most half an uncontended fetch_add",
        numerator: RSEQ_CURRENT_1,
        denominator: FETCH_ADD_1,
        bound: Bound::Max,
        limit: 0.5,
    },
    CheckSpec {
        name: "PerCpuCounter::add with 2 threads is at least 5x faster per op than a shared AtomicU64 fetch_add",
        numerator: PERCPU_SHARED_ADD_2,
        denominator: PERCPU_ADD_2,
        bound: Bound::Min,
        limit: 5.0,
    },
    CheckSpec {
        name: "Pool get+put with 2 threads is at least 2x faster per op than ArrayQueue pop+push",
        numerator: ARRAY_QUEUE_2,
        denominator: POOL_2,
        bound: Bound::Min,
        limit: 2.0,
    },
];

/// The name of the footprint check, which is computed, not measured.
const FOOTPRINT_CHECK: &str =
    "PerCpu<T> takes possible CPUs x size_of::<CachePadded<T>>() bytes (PerCpu::footprint)";

/// A comparison's result, as serialized.
#[derive(Serialize, Debug)]
struct Check {
    name: &'static str,
    /// `median(numerator) / median(denominator)` (for the footprint: bytes
    /// taken / bytes expected); null when not computed.
    ratio: Option<f64>,
    limit: f64,
    bound: Bound,
    /// Null when the ratio could not be computed.
    pass: Option<bool>,
    /// Why the ratio could not be computed.
    reason: Option<String>,
    /// What was compared, in words (the footprint check); null otherwise.
    detail: Option<String>,
}

/// Evaluates the checks from the medians of `outcomes`.
fn checks(outcomes: &[Outcome]) -> Vec<Check> {
    CHECKS
        .iter()
        .map(|spec| evaluate(spec, outcomes))
        .chain([random::check(outcomes), footprint_check(outcomes)])
        .collect()
}

/// Evaluates one comparison from the medians of `outcomes`.
fn evaluate(spec: &CheckSpec, outcomes: &[Outcome]) -> Check {
    let median = |name: &str| -> Result<f64, String> {
        match outcomes.iter().find(|o| o.name == name) {
            None => Err(format!("{name} was not run (--filter)")),
            Some(o) => match &o.result {
                Err(reason) => Err(format!("{name} is n/a: {reason}")),
                Ok(s) if s.median_ns > 0.0 => Ok(s.median_ns),
                Ok(_) => Err(format!("{name} measured 0 ns")),
            },
        }
    };
    let ratio = median(spec.numerator).and_then(|n| median(spec.denominator).map(|d| n / d));
    let (ratio, reason) = match ratio {
        Ok(r) => (Some(r), None),
        Err(e) => (None, Some(e)),
    };
    let pass = ratio.map(|r| match spec.bound {
        Bound::Max => r <= spec.limit,
        Bound::Min => r >= spec.limit,
        Bound::Exact => r == spec.limit,
    });
    Check {
        name: spec.name,
        ratio,
        limit: spec.limit,
        bound: spec.bound,
        pass,
        reason,
        detail: None,
    }
}

/// The footprint check, when a row of the `percpu` group ran: the bytes
/// that [`ktl::percpu::PerCpu`] takes for a few slot types, against the
/// possible CPUs times the padded slot.
fn footprint_check(outcomes: &[Outcome]) -> Check {
    let mut check = Check {
        name: FOOTPRINT_CHECK,
        ratio: None,
        limit: 1.0,
        bound: Bound::Exact,
        pass: None,
        reason: None,
        detail: None,
    };
    if !outcomes.iter().any(|o| o.group == percpu::GROUP) {
        check.reason = Some(format!("no {} row was run (--filter)", percpu::GROUP));
        return check;
    }
    match percpu::footprints() {
        Ok(f) => {
            check.ratio = Some(f.taken as f64 / f.expected.max(1) as f64);
            check.pass = Some(f.taken == f.expected && f.each_matches);
            check.detail = Some(f.detail);
        }
        Err(reason) => check.reason = Some(reason),
    }
    check
}

/// The machine the numbers come from.
#[derive(Serialize, Debug)]
struct Machine {
    /// `model name` from /proc/cpuinfo, or `"unknown"`.
    cpu_model: String,
    /// The kernel release (`uname -r`), or `"unknown"`.
    kernel: String,
    /// The target architecture.
    arch: &'static str,
    /// Logical CPUs the system has (the `processor` entries of /proc/cpuinfo).
    logical_cpus: Option<usize>,
    /// CPUs this process may run on.
    usable_cpus: Option<usize>,
}

impl Machine {
    fn probe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |line: &str, key: &str| -> Option<String> {
            let (k, v) = line.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_owned())
        };
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| field(l, "model name"))
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| "unknown".to_owned());
        let logical = cpuinfo
            .lines()
            .filter(|l| field(l, "processor").is_some())
            .count();
        // The same string as uname(2)'s `release`, without unsafe code.
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unknown".to_owned());
        Machine {
            cpu_model,
            kernel,
            arch: std::env::consts::ARCH,
            logical_cpus: (logical > 0).then_some(logical),
            usable_cpus: std::thread::available_parallelism().ok().map(|n| n.get()),
        }
    }
}

/// A row, as serialized.
#[derive(Serialize, Debug)]
struct RowReport {
    name: String,
    group: String,
    /// Threads that ran the loop at once.
    threads: u32,
    available: bool,
    reason: Option<String>,
    median_ns: Option<f64>,
    min_ns: Option<f64>,
    max_ns: Option<f64>,
    spread_pct: Option<f64>,
    samples: Option<u32>,
    iters_per_sample: Option<u64>,
}

/// The whole result, as serialized for `--json`.
#[derive(Serialize, Debug)]
struct Report {
    /// Always [`SCHEMA`].
    schema: &'static str,
    machine: Machine,
    /// `"libc"`, `"ktl"` or `"unavailable"`.
    owner: String,
    /// The loop shape: `"call"` or `"throughput"`.
    shape: Shape,
    rows: Vec<RowReport>,
    checks: Vec<Check>,
    /// The thread-scaling measurement of `--plot` (empty without it).
    scaling: Vec<ScalingPoint>,
}

/// One point of the thread-scaling measurement, as serialized.
#[derive(Serialize, Debug, Clone)]
struct ScalingPoint {
    /// `"counter"` or `"pool"`.
    structure: &'static str,
    /// The implementation, as in the row names (e.g. `"Pool get+put"`).
    implementation: &'static str,
    /// Whether it is ktl's.
    ours: bool,
    /// Threads on the one shared structure.
    threads: u32,
    /// Time per operation per thread (wall time of a sample / the
    /// operations of one thread): median, fastest and slowest sample. Null
    /// when the point could not be measured (`reason` says why).
    median_ns: Option<f64>,
    min_ns: Option<f64>,
    max_ns: Option<f64>,
    reason: Option<String>,
}

impl Report {
    fn new(
        machine: Machine,
        owner: &ktl::Owner,
        shape: Shape,
        outcomes: &[Outcome],
        scaling: Vec<ScalingPoint>,
    ) -> Report {
        let rows = outcomes
            .iter()
            .map(|o| {
                let stats = o.result.as_ref().ok();
                RowReport {
                    name: o.name.clone(),
                    group: o.group.clone(),
                    threads: o.threads,
                    available: stats.is_some(),
                    reason: o.result.as_ref().err().cloned(),
                    median_ns: stats.map(|s| s.median_ns),
                    min_ns: stats.map(|s| s.min_ns),
                    max_ns: stats.map(|s| s.max_ns),
                    spread_pct: stats.map(|s| s.spread_pct),
                    samples: stats.map(|s| s.samples),
                    iters_per_sample: stats.map(|s| s.iters_per_sample),
                }
            })
            .collect();
        Report {
            schema: SCHEMA,
            machine,
            owner: owner.to_string(),
            shape,
            rows,
            checks: checks(outcomes),
            scaling,
        }
    }
}

/// The owner with its reason, for the text report.
fn owner_text(owner: &ktl::Owner) -> String {
    match owner {
        ktl::Owner::Libc => "libc (the C library registered the areas)".to_owned(),
        ktl::Owner::Ktl(reason) => format!("ktl ({reason})"),
        ktl::Owner::Unavailable(why) => format!("unavailable ({why})"),
    }
}

/// A time in nanoseconds, for the table.
fn ns(v: f64) -> String {
    if v < 100.0 {
        format!("{v:.2}")
    } else if v < 10_000.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// A ratio, for the table.
fn ratio(r: f64) -> String {
    if r < 10.0 {
        format!("{r:.2}x")
    } else if r < 100.0 {
        format!("{r:.1}x")
    } else {
        format!("{r:.0}x")
    }
}

/// The text report: machine, owner, table and checks.
fn render_text(
    report: &Report,
    outcomes: &[Outcome],
    owner: &str,
    shape: Shape,
    samples: u32,
    target: Duration,
    left_out: usize,
) -> String {
    let mut out = String::new();
    let m = &report.machine;
    let count = |n: Option<usize>| n.map_or_else(|| "?".to_owned(), |n| n.to_string());
    let sources = ktl::cpu::sources();
    let _ = writeln!(
        out,
        "ktl bench: {samples} samples of ~{} ms per row, loop shape {}",
        target.as_millis(),
        match shape {
            Shape::Call => "`call` (one call per iteration, results summed)".to_string(),
            Shape::Throughput => format!("`throughput` ({UNROLL} unrolled calls per iteration)"),
        }
    );
    let _ = writeln!(out, "machine: {} ({})", m.cpu_model, m.arch);
    let _ = writeln!(
        out,
        "         Linux {}, {} logical CPUs ({} usable)",
        m.kernel,
        count(m.logical_cpus),
        count(m.usable_cpus)
    );
    let _ = writeln!(out, "owner:   {owner}");
    let _ = writeln!(
        out,
        "reads:   cpu_id: {}, node_id: {}, mm_cid: {}",
        sources.cpu_id, sources.node_id, sources.mm_cid
    );
    let _ = writeln!(out);

    let width = outcomes
        .iter()
        .map(|o| o.name.len())
        .chain([3])
        .max()
        .unwrap_or(3);
    // Each group's baseline row and its median, when it ran.
    let baselines: Vec<(&str, &str, f64)> = BASELINES
        .iter()
        .filter_map(|&(group, name)| {
            let median = outcomes
                .iter()
                .find(|o| o.group == group && o.name == name)
                .and_then(Outcome::median)
                .filter(|&b| b > 0.0)?;
            Some((group, name, median))
        })
        .collect();
    // The median a row's ratio divides by: its own baseline row's, or its
    // group's.
    let baseline = |o: &Outcome| match &o.baseline {
        Some(name) => outcomes
            .iter()
            .find(|b| &b.name == name)
            .and_then(Outcome::median)
            .filter(|&b| b > 0.0),
        None => baselines
            .iter()
            .find(|(g, _, _)| *g == o.group)
            .map(|&(_, _, b)| b),
    };
    let _ = writeln!(
        out,
        "{:<width$}  {:>10}  {:>10}  {:>10}  {:>9}  {:>8}",
        "row", "median ns", "min ns", "max ns", "spread %", "ratio"
    );
    let mut groups: Vec<&str> = outcomes.iter().map(|o| o.group.as_str()).collect();
    groups.dedup();
    let show_groups = groups.len() > 1;
    let mut last_group: Option<&str> = None;
    for o in outcomes {
        if show_groups && last_group != Some(o.group.as_str()) {
            let _ = writeln!(out, "[{}]", o.group);
            last_group = Some(&o.group);
        }
        match &o.result {
            Ok(s) => {
                let r = baseline(o).map_or_else(|| "-".to_owned(), |b| ratio(s.median_ns / b));
                let _ = writeln!(
                    out,
                    "{:<width$}  {:>10}  {:>10}  {:>10}  {:>9.1}  {:>8}",
                    o.name,
                    ns(s.median_ns),
                    ns(s.min_ns),
                    ns(s.max_ns),
                    s.spread_pct,
                    r
                );
            }
            Err(reason) => {
                let _ = writeln!(out, "{:<width$}  {:>10}  ({reason})", o.name, "n/a");
            }
        }
    }
    let mut bases: Vec<String> = baselines
        .iter()
        .map(|(group, name, _)| format!("{name} in [{group}]"))
        .collect();
    // The groups whose rows each name their own baseline, and what it is.
    let own_baselines: Vec<(&str, &str)> = [
        (
            percpu::GROUP,
            "ktl's structure with the same operation and threads",
        ),
        (random::GROUP, random::BASELINE_TEXT),
    ]
    .into_iter()
    .filter(|&(g, _)| {
        outcomes
            .iter()
            .any(|o| o.group == g && o.baseline.is_some())
    })
    .collect();
    for (group, text) in &own_baselines {
        bases.push(format!("{text} in [{group}]"));
    }
    match (baselines.as_slice(), own_baselines.as_slice()) {
        ([], []) => {}
        ([(_, name, _)], []) => {
            let _ = writeln!(out, "ratio: median / median of {name}");
        }
        ([], [(_, text)]) => {
            let _ = writeln!(out, "ratio: median / median of {text}");
        }
        _ => {
            let _ = writeln!(
                out,
                "ratio: median / median of the group's baseline: {}",
                bases.join(", ")
            );
        }
    }
    if let Some(note) = random::note(outcomes) {
        let _ = writeln!(out, "{note}");
    }
    if outcomes.iter().any(|o| o.threads > 1 && o.result.is_ok()) {
        let _ = writeln!(
            out,
            "rows of N threads: the wall time of a sample / the operations of one thread \
             (all N threads run the same count)"
        );
    }
    let verified: Vec<&Result<String, String>> = outcomes
        .iter()
        .filter_map(|o| o.verified.as_ref())
        .collect();
    if !verified.is_empty() {
        let exact = verified.iter().filter(|v| v.is_ok()).count();
        let checked = |group: &str| {
            outcomes
                .iter()
                .any(|o| o.group == group && o.verified.is_some())
        };
        let (objects, fills) = (checked(percpu::GROUP), checked(random::GROUP));
        if objects || fills {
            let mut what = Vec::new();
            if objects
                || outcomes
                    .iter()
                    .any(|o| o.group == "rseq" && o.verified.is_some())
            {
                what.push("counters sum to the operations performed");
            }
            if objects {
                what.push(
                    "pools and stacks hold every object made, whose uses sum to the operations \
                     performed",
                );
            }
            if fills {
                what.push("every random fill succeeded, ktl's through the path its row names");
            }
            let _ = writeln!(
                out,
                "exactness: {exact} of {} checked rows are exact ({})",
                verified.len(),
                what.join("; ")
            );
        } else {
            let _ = writeln!(
                out,
                "exactness: the counters of {exact} of {} counting rows sum to the operations performed",
                verified.len()
            );
        }
        for failure in verified.iter().filter_map(|v| v.as_ref().err()) {
            let _ = writeln!(out, "  MISMATCH {failure}");
        }
    }
    if left_out > 0 {
        let _ = writeln!(
            out,
            "quick run: {left_out} selected rows left out (of the [{}] group it runs the 2-thread \
             counter and pool rows, of the [{}] group the 16-byte ktl and syscall rows); \
             `ktl bench` runs them all",
            percpu::GROUP,
            random::GROUP
        );
    }

    let _ = writeln!(out);
    let _ = writeln!(out, "checks (medians of this run):");
    for c in &report.checks {
        let op = match c.bound {
            Bound::Max => "<=",
            Bound::Min => ">=",
            Bound::Exact => "=",
        };
        let verdict = match (c.ratio, c.pass, &c.detail) {
            (Some(_), Some(pass), Some(detail)) => {
                format!("{} ({detail})", if pass { "pass" } else { "FAIL" })
            }
            (Some(r), Some(pass), None) => format!(
                "{} (ratio {}, limit {op} {})",
                if pass { "pass" } else { "FAIL" },
                ratio(r),
                ratio(c.limit)
            ),
            _ => format!(
                "skipped ({})",
                c.reason.as_deref().unwrap_or("not computed")
            ),
        };
        let _ = writeln!(out, "  {}: {verdict}", c.name);
    }
    if !report.scaling.is_empty() {
        let _ = writeln!(out);
        out.push_str(&render_scaling(&report.scaling));
    }
    out
}

/// The thread-scaling measurement as a table: one line per implementation,
/// one column per thread count (medians, ns per operation per thread).
fn render_scaling(points: &[ScalingPoint]) -> String {
    let mut out = String::new();
    let mut threads: Vec<u32> = points.iter().map(|p| p.threads).collect();
    threads.sort_unstable();
    threads.dedup();
    let mut lines: Vec<(&str, &str)> = points
        .iter()
        .map(|p| (p.structure, p.implementation))
        .collect();
    lines.dedup();
    let width = lines
        .iter()
        .map(|(s, i)| s.len() + 2 + i.len())
        .chain([14])
        .max()
        .unwrap_or(14);
    let _ = writeln!(
        out,
        "thread scaling (median ns per operation per thread; wall time of a sample / the \
         operations of one thread):"
    );
    let _ = write!(out, "{:<width$}", "implementation");
    for t in &threads {
        let _ = write!(out, "  {:>9}", format!("{t} thr"));
    }
    let _ = writeln!(out);
    for (structure, implementation) in lines {
        let _ = write!(out, "{:<width$}", format!("{structure}: {implementation}"));
        for t in &threads {
            let cell = points
                .iter()
                .find(|p| {
                    p.structure == structure
                        && p.implementation == implementation
                        && p.threads == *t
                })
                .and_then(|p| p.median_ns)
                .map_or_else(|| "n/a".to_owned(), ns);
            let _ = write!(out, "  {cell:>9}");
        }
        let _ = writeln!(out);
    }
    out
}

/// `ktl bench`: runs the rows that match the filter, then prints the table
/// (or JSON with `--json`) to stdout; with `--plot`, measures the thread
/// scaling too and writes the charts. Failed comparisons are reported, not
/// returned as errors; a row whose check fails (counters that do not sum to
/// the operations, a structure that lost objects) is an error, returned
/// after the report, and so is a chart that cannot be written.
pub fn run_cli(args: &BenchArgs) -> Result<(), String> {
    let (samples, target) = args.settings()?;
    // Before anything is measured: a chart that cannot be written fails now,
    // not after the run.
    let charts = args.plot.as_deref().map(plot::Charts::new).transpose()?;
    let filter = args.filter.as_deref();
    let all = rows();
    let names: Vec<String> = all.iter().map(|r| r.name.clone()).collect();
    let selected: Vec<Row> = all.into_iter().filter(|r| r.matches(filter)).collect();
    if selected.is_empty() {
        return Err(format!(
            "no row matches --filter {:?}; the groups are {}, and the rows are: {}",
            filter.unwrap_or_default(),
            GROUPS.join(", "),
            names.join(", ")
        ));
    }
    let (selected, left_out): (Vec<Row>, Vec<Row>) = if args.quick {
        selected.into_iter().partition(|r| r.quick)
    } else {
        (selected, Vec::new())
    };
    if selected.is_empty() {
        return Err(format!(
            "no row of the quick run matches --filter {:?}; without --quick, {} rows do",
            filter.unwrap_or_default(),
            left_out.len()
        ));
    }
    let left_out = left_out.len();

    let owner = ktl::layout().owner;
    let machine = Machine::probe();
    let outcomes = run_rows(
        selected,
        args.shape,
        samples,
        target,
        args.json,
        "calibrating, then interleaved samples of every row",
    );
    let mut failures: Vec<String> = outcomes
        .iter()
        .filter_map(|o| o.verified.as_ref()?.as_ref().err().cloned())
        .collect();
    let scaling = match charts {
        Some(_) => {
            let (points, scaling_failures) = run_scaling(args, filter, samples, target);
            failures.extend(scaling_failures);
            points
        }
        None => Vec::new(),
    };
    let report = Report::new(machine, &owner, args.shape, &outcomes, scaling);

    if args.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| format!("cannot serialize the results: {e}"))?;
        println!("{text}");
    } else {
        print!(
            "{}",
            render_text(
                &report,
                &outcomes,
                &owner_text(&owner),
                args.shape,
                samples,
                target,
                left_out
            )
        );
    }
    let written = match &charts {
        Some(charts) => draw_charts(charts, &report, &outcomes, samples, target),
        None => Ok(()),
    };
    if !failures.is_empty() {
        return Err(format!(
            "counters or objects do not match the operations performed: {}",
            failures.join("; ")
        ));
    }
    written
}

/// The thread-scaling measurement of `--plot`: the counters and pools that
/// the filter selects, at 1 to 32 threads, measured side by side like the
/// rows. Returns the points, and the failed checks.
fn run_scaling(
    args: &BenchArgs,
    filter: Option<&str>,
    samples: u32,
    target: Duration,
) -> (Vec<ScalingPoint>, Vec<String>) {
    let (rows, lines): (Vec<Row>, Vec<percpu::Line>) =
        percpu::scaling_rows(filter).into_iter().unzip();
    if rows.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let max = lines.iter().map(|l| l.threads).max().unwrap_or(1);
    let outcomes = run_rows(
        rows,
        args.shape,
        samples,
        target,
        args.json,
        &format!("thread scaling, 1 to {max} threads: calibrating, then interleaved samples"),
    );
    let failures = outcomes
        .iter()
        .filter_map(|o| o.verified.as_ref()?.as_ref().err().cloned())
        .collect();
    let points = outcomes
        .iter()
        .zip(lines)
        .map(|(o, line)| {
            let stats = o.result.as_ref().ok();
            ScalingPoint {
                structure: line.kind.name(),
                implementation: line.label,
                ours: line.ours,
                threads: line.threads,
                median_ns: stats.map(|s| s.median_ns),
                min_ns: stats.map(|s| s.min_ns),
                max_ns: stats.map(|s| s.max_ns),
                reason: o.result.as_ref().err().cloned(),
            }
        })
        .collect();
    (points, failures)
}

/// Draws the charts of `--plot`: the rows of the run as bars, and the
/// thread scaling (when it was measured), then writes them.
fn draw_charts(
    charts: &plot::Charts,
    report: &Report,
    outcomes: &[Outcome],
    samples: u32,
    target: Duration,
) -> Result<(), String> {
    let m = &report.machine;
    let cpus = m
        .usable_cpus
        .map_or_else(|| "?".to_owned(), |n| n.to_string());
    let machine = format!(
        "{}, Linux {}, {cpus} usable CPUs; {samples} samples of ~{} ms, loop shape {}",
        m.cpu_model,
        m.kernel,
        target.as_millis(),
        match report.shape {
            Shape::Call => "call",
            Shape::Throughput => "throughput",
        }
    );
    let bars: Vec<plot::Bar> = outcomes
        .iter()
        .filter_map(|o| {
            let s = o.result.as_ref().ok()?;
            Some(plot::Bar {
                label: o.name.clone(),
                group: o.group.clone(),
                block: o.baseline.clone().unwrap_or_else(|| o.group.clone()),
                median_ns: s.median_ns,
                min_ns: s.min_ns,
                max_ns: s.max_ns,
                ours: o.ours,
            })
        })
        .collect();
    let mut series: Vec<plot::Series> = Vec::new();
    for p in &report.scaling {
        let Some(median) = p.median_ns else { continue };
        let name = p.implementation.to_owned();
        match series
            .iter_mut()
            .find(|s| s.panel == p.structure && s.name == name)
        {
            Some(s) => s.points.push((p.threads, median)),
            None => series.push(plot::Series {
                panel: p.structure.to_owned(),
                name,
                ours: p.ours,
                points: vec![(p.threads, median)],
            }),
        }
    }
    let panels: Vec<(String, String)> = percpu::SCALED
        .iter()
        .map(|k| (k.name().to_owned(), k.operation().to_owned()))
        .collect();
    let written = charts.write(&bars, &series, &panels, m.usable_cpus, &machine)?;
    for (what, path) in written {
        eprintln!("ktl bench: wrote the {what} to {}", path.display());
    }
    if series.is_empty() {
        eprintln!(
            "ktl bench: no thread-scaling chart: the filter selects no counter or pool of the {} group",
            percpu::GROUP
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(name: &str, median: Option<f64>) -> Outcome {
        Outcome {
            name: name.to_owned(),
            group: "cpu".to_owned(),
            result: median
                .map(|m| Stats::from_samples(vec![m], 1))
                .ok_or_else(|| "absent".to_owned()),
            verified: None,
            threads: 1,
            ours: false,
            baseline: None,
        }
    }

    #[test]
    fn stats_of_odd_and_even_counts() {
        let s = Stats::from_samples(vec![3.0, 1.0, 2.0], 10);
        assert_eq!((s.median_ns, s.min_ns, s.max_ns), (2.0, 1.0, 3.0));
        assert!((s.spread_pct - 100.0).abs() < 1e-9);
        assert_eq!((s.samples, s.iters_per_sample), (3, 10));
        let s = Stats::from_samples(vec![4.0, 1.0, 2.0, 3.0], 1);
        assert_eq!(s.median_ns, 2.5);
    }

    #[test]
    fn bad_settings_are_errors() {
        let zero_samples = BenchArgs {
            samples: Some(0),
            ..BenchArgs::default()
        };
        assert!(zero_samples.settings().unwrap_err().contains("--samples"));
        let zero_ms = BenchArgs {
            sample_ms: Some(0),
            ..BenchArgs::default()
        };
        assert!(zero_ms.settings().unwrap_err().contains("--sample-ms"));
        assert_eq!(
            BenchArgs::quick().settings(),
            Ok((QUICK_SAMPLES, Duration::from_millis(QUICK_SAMPLE_MS)))
        );
        assert!(run_cli(&zero_samples).is_err());
    }

    #[test]
    fn unknown_filter_is_an_error() {
        let args = BenchArgs {
            filter: Some("no such row".to_owned()),
            ..BenchArgs::quick()
        };
        assert!(run_cli(&args).unwrap_err().contains("no row matches"));
    }

    #[test]
    fn rows_are_in_order_and_filterable() {
        let rows = rows();
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names[..16],
            [
                "ktl::cpu_id()",
                "raw %fs load (limit)",
                "ktl::node_id()",
                "ktl::mm_cid()",
                "glibc sched_getcpu",
                "vDSO getcpu",
                "getcpu syscall",
                "RDPID",
                "rseq add (1 thread)",
                "fetch_add uncontended (1 thread)",
                "rseq add (2 threads)",
                "shared AtomicU64 fetch_add (2 threads)",
                "rseq add_current (1 thread)",
                "rseq add_current (2 threads)",
                "rseq cmpeqv_storev (1 thread)",
                "compare_exchange uncontended (1 thread)",
            ]
        );
        assert!(rows[16..52].iter().all(|r| r.group == percpu::GROUP));
        assert!(rows[52..].iter().all(|r| r.group == random::GROUP));
        assert_eq!(rows.len(), 16 + 36 + 9);
        assert_eq!(rows[16].name, "counter: PerCpuCounter::add (1 thread)");
        assert_eq!(rows[51].name, "stack: Mutex<Vec> push+pop (8 threads)");
        let names = &names[..16];
        assert!(rows[0].matches(Some("CPU_ID")));
        assert!(!rows[0].matches(Some("rdpid")));
        assert!(rows[0].op.is_ok(), "ktl::cpu_id() always runs");
        let rseq: Vec<&str> = rows
            .iter()
            .filter(|r| r.matches(Some("rseq")))
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(rseq, names[8..], "--filter rseq selects the rseq group");
        assert!(rows[8..16].iter().all(|r| r.group == "rseq"));
        let cpu = rows.iter().filter(|r| r.matches(Some("cpu"))).count();
        assert_eq!(cpu, 8, "--filter cpu selects the cpu group, not percpu");
        let percpu = rows.iter().filter(|r| r.matches(Some("PerCpu"))).count();
        assert_eq!(percpu, 36, "--filter percpu selects the percpu group");
        let counters = rows.iter().filter(|r| r.matches(Some("counter"))).count();
        assert_eq!(counters, 12);
        let random: Vec<&str> = rows
            .iter()
            .filter(|r| r.matches(Some("Random")))
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(random.len(), 9, "--filter random selects the random group");
        assert_eq!(random[1], random::SYSCALL_16);
        let small = rows.iter().filter(|r| r.matches(Some("16 B:"))).count();
        assert_eq!(small, 3, "16 B, not 4096 B");
        let quick: Vec<&str> = rows
            .iter()
            .filter(|r| r.quick)
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(
            quick.len(),
            16 + 8 + 2,
            "the quick run: 2-thread counters and pools, 16-byte ktl and syscall"
        );
        assert_eq!(quick[24..], [random[0], random::SYSCALL_16]);
        for r in &rows[8..] {
            assert_eq!(r.op.is_ok(), r.verify.is_some(), "{} counts", r.name);
        }
        // The atomic rows run everywhere.
        for name in [FETCH_ADD_1, SHARED_ADD_2, CAS_1] {
            assert!(
                rows.iter().any(|r| r.name == name && r.op.is_ok()),
                "{name}"
            );
        }
        if ktl::rseq::start(Index::CpuId).is_none() {
            assert!(
                rows.iter()
                    .any(|r| [RSEQ_ADD_1, RSEQ_CURRENT_1].contains(&r.name.as_str())
                        && r.op.is_err())
            );
        }
    }

    /// Runs every checked row a few times, in both shapes, and checks its
    /// counters or objects, like `ktl bench` does after the samples (once
    /// the row's loop and threads are gone).
    #[test]
    fn checked_rows_are_exact() {
        let rows = rows();
        let checked = rows
            .iter()
            .filter(|r| r.group != "cpu" && r.op.is_ok())
            .count();
        assert!(checked >= 3 + 36 + 9, "{checked}");
        for row in rows.into_iter().filter(|r| r.group != "cpu") {
            let (Ok(op), Some(verify)) = (row.op, row.verify) else {
                continue; // n/a here (no live rseq area)
            };
            for iters in [0, 1, 1000] {
                for shape in [Shape::Call, Shape::Throughput] {
                    op(iters, shape);
                }
            }
            drop(op);
            let verified = verify().unwrap();
            let ops = u64::from(row.threads) * 1001 * (1 + UNROLL);
            assert!(
                verified.contains(&format!("{ops} operations")),
                "{verified}"
            );
        }
    }

    #[test]
    fn exactness_reports_mismatches() {
        let count = OpCount::default();
        let run = counted(Box::new(|_, _| Duration::ZERO), 2, Rc::clone(&count));
        run(5, Shape::Throughput);
        assert_eq!(count.get(), 2 * 5 * UNROLL);
        let good = exactness("r", Rc::clone(&count), None, || 80);
        assert!(good().is_ok());
        let bad = exactness("r", Rc::clone(&count), None, || 79);
        assert!(bad().unwrap_err().contains("sum to 79 after 80 operations"));
        let lost = Rc::new(Cell::new(true));
        let gone = exactness("r", count, Some(lost), || 80);
        assert!(gone().unwrap_err().contains("another thread"));
    }

    #[test]
    fn two_thread_rows_measure_both_threads() {
        let slots = slots(4);
        let theirs = Arc::clone(&slots);
        let work: Work = Arc::new(move |iters, _| {
            for _ in 0..iters {
                theirs[0].0.fetch_add(1, Ordering::Relaxed);
            }
        });
        let total = Arc::clone(&slots);
        let row = two_thread_row(
            "pair",
            "g",
            work,
            || Ok(()),
            move || i128::from(total[0].0.load(Ordering::Relaxed)),
        );
        assert_eq!(row.threads, 2);
        let op = row.op.unwrap();
        for _ in 0..20 {
            op(100, Shape::Call);
        }
        assert_eq!(slots[0].0.load(Ordering::Relaxed), 4000);
        drop(op);
        assert!(row.verify.unwrap()().is_ok());
        let failing = two_thread_row("x", "g", Arc::new(|_, _| {}), || Err("nope".into()), || 0);
        assert_eq!(failing.op.err().as_deref(), Some("nope"));
    }

    #[test]
    fn measuring_a_row_gives_positive_times() {
        let row = Row::new("t", "g", ktl::cpu_id);
        let op = row.op.as_ref().unwrap();
        let timed = |iters| op(iters, Shape::Call);
        let s = measure_all(
            &[&timed],
            1,
            3,
            Duration::from_millis(1),
            &ProgressBar::hidden(),
        )
        .remove(0);
        assert_eq!(s.samples, 3);
        assert!(s.iters_per_sample >= 1);
        assert!(s.min_ns <= s.median_ns && s.median_ns <= s.max_ns);
    }

    #[test]
    fn checks_pass_fail_and_skip() {
        let outcomes = [
            outcome(BASELINE, Some(1.0)),
            outcome(RAW_LOAD, Some(0.5)),
            outcome(GLIBC, Some(10.0)),
        ];
        let c = checks(&outcomes);
        assert_eq!(c[0].ratio, Some(2.0));
        assert_eq!(c[0].pass, Some(false));
        assert_eq!(c[1].ratio, Some(10.0));
        assert_eq!(c[1].pass, Some(true));

        let outcomes = [
            outcome(RSEQ_CURRENT_1, Some(3.0)),
            outcome(FETCH_ADD_1, Some(2.5)),
            outcome(RSEQ_CURRENT_2, Some(3.0)),
            outcome(SHARED_ADD_2, Some(30.0)),
        ];
        let c = checks(&outcomes);
        assert_eq!(c.len(), 8);
        assert_eq!((c[2].ratio, c[2].bound), (Some(10.0), Bound::Min));
        assert_eq!(c[2].pass, Some(true));
        assert_eq!((c[3].ratio, c[3].bound), (Some(1.2), Bound::Max));
        assert_eq!(c[3].pass, Some(false));
        // No percpu or random row ran: their checks are skipped.
        assert!(c[4..].iter().all(|c| c.pass.is_none()));
        assert!(c[6].reason.as_deref().unwrap().contains("not run"));
        assert!(c[7].reason.as_deref().unwrap().contains("no percpu row"));

        let percpu = |name: &str, median: f64| Outcome {
            group: percpu::GROUP.to_owned(),
            threads: 2,
            ..outcome(name, Some(median))
        };
        let outcomes = [
            percpu(PERCPU_ADD_2, 2.0),
            percpu(PERCPU_SHARED_ADD_2, 30.0),
            percpu(POOL_2, 10.0),
            percpu(ARRAY_QUEUE_2, 15.0),
        ];
        let c = checks(&outcomes);
        assert_eq!((c[4].ratio, c[4].pass), (Some(15.0), Some(true)));
        assert_eq!((c[5].ratio, c[5].pass), (Some(1.5), Some(false)));
        assert_eq!((c[7].name, c[7].bound), (FOOTPRINT_CHECK, Bound::Exact));
        assert_eq!((c[7].ratio, c[7].pass), (Some(1.0), Some(true)));
        assert!(
            c[7].detail
                .as_deref()
                .unwrap()
                .contains("PerCpu<AtomicU64>")
        );

        let random = |name: &str, median: f64| Outcome {
            group: random::GROUP.to_owned(),
            baseline: Some(random::KTL_16.to_owned()),
            ..outcome(name, Some(median))
        };
        let outcomes = [
            random(random::KTL_16, 20.0),
            random(random::SYSCALL_16, 300.0),
        ];
        let c = checks(&outcomes);
        assert_eq!((c[6].name, c[6].bound), (random::CHECK.name, Bound::Min));
        assert_eq!((c[6].ratio, c[6].pass), (Some(15.0), Some(true)));
        let outcomes = [
            random(random::KTL_16, 80.0),
            random(random::SYSCALL_16, 300.0),
        ];
        assert_eq!(checks(&outcomes)[6].pass, Some(false));
        // ktl's row on the syscall fallback: skipped, not failed.
        let fallback = "16 B: ktl::random::fill (syscall fallback)";
        let outcomes = [random(fallback, 300.0), random(random::SYSCALL_16, 300.0)];
        let c = checks(&outcomes);
        assert_eq!((c[6].ratio, c[6].pass), (None, None));
        assert!(
            c[6].reason
                .as_deref()
                .unwrap()
                .contains("ran on the syscall fallback"),
            "{:?}",
            c[6].reason
        );

        let outcomes = [outcome(BASELINE, Some(1.0)), outcome(RAW_LOAD, None)];
        let c = checks(&outcomes);
        assert_eq!(c[0].pass, None);
        assert!(c[0].reason.as_deref().unwrap().contains("n/a"));
        assert!(c[1].reason.as_deref().unwrap().contains("not run"));
    }

    #[test]
    fn json_has_the_schema_fields() {
        let outcomes = [outcome(BASELINE, Some(1.0)), outcome(RAW_LOAD, None)];
        let point = ScalingPoint {
            structure: "counter",
            implementation: "PerCpuCounter::add",
            ours: true,
            threads: 4,
            median_ns: Some(2.0),
            min_ns: Some(1.5),
            max_ns: Some(3.0),
            reason: None,
        };
        let report = Report::new(
            Machine::probe(),
            &ktl::layout().owner,
            Shape::Call,
            &outcomes,
            vec![point],
        );
        let v = serde_json::to_value(&report).unwrap();
        assert_eq!(v["schema"], "ktl-bench/1");
        for key in ["cpu_model", "kernel", "logical_cpus"] {
            assert!(v["machine"].get(key).is_some(), "machine.{key}");
        }
        let row = &v["rows"][1];
        for key in [
            "name",
            "group",
            "threads",
            "available",
            "reason",
            "median_ns",
            "min_ns",
            "max_ns",
            "spread_pct",
            "samples",
            "iters_per_sample",
        ] {
            assert!(row.get(key).is_some(), "rows[].{key}");
        }
        assert_eq!(row["available"], false);
        for key in [
            "name", "ratio", "limit", "bound", "pass", "reason", "detail",
        ] {
            assert!(v["checks"][0].get(key).is_some(), "checks[].{key}");
        }
        let p = &v["scaling"][0];
        for key in [
            "structure",
            "implementation",
            "ours",
            "threads",
            "median_ns",
            "min_ns",
            "max_ns",
            "reason",
        ] {
            assert!(p.get(key).is_some(), "scaling[].{key}");
        }
    }

    #[test]
    fn percpu_ratios_compare_with_ktl_at_the_same_threads() {
        let row = |name: &str, median: f64, base: &str| Outcome {
            group: percpu::GROUP.to_owned(),
            threads: 2,
            baseline: Some(base.to_owned()),
            ..outcome(name, Some(median))
        };
        let outcomes = [
            row(PERCPU_ADD_2, 2.0, PERCPU_ADD_2),
            row(PERCPU_SHARED_ADD_2, 30.0, PERCPU_ADD_2),
        ];
        let report = Report::new(
            Machine::probe(),
            &ktl::layout().owner,
            Shape::Call,
            &outcomes,
            Vec::new(),
        );
        let text = render_text(
            &report,
            &outcomes,
            "o",
            Shape::Call,
            1,
            Duration::from_millis(1),
            3,
        );
        let line = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .unwrap()
                .to_owned()
        };
        assert!(line(PERCPU_ADD_2).ends_with("1.00x"), "{text}");
        assert!(line(PERCPU_SHARED_ADD_2).ends_with("15.0x"), "{text}");
        assert!(
            text.contains("ratio: median / median of ktl's structure"),
            "{text}"
        );
        assert!(text.contains("wall time of a sample / the operations of one thread"));
        assert!(text.contains("quick run: 3 selected rows left out"));
    }

    #[test]
    fn random_ratios_compare_with_ktl_of_the_same_size() {
        let row = |name: &str, median: f64, base: &str| Outcome {
            group: random::GROUP.to_owned(),
            baseline: Some(base.to_owned()),
            verified: Some(Ok("checked".to_owned())),
            ..outcome(name, Some(median))
        };
        let ktl_256 = "256 B: ktl::random::fill (vDSO)";
        let outcomes = [
            row(random::KTL_16, 20.0, random::KTL_16),
            row(random::SYSCALL_16, 300.0, random::KTL_16),
            row(ktl_256, 100.0, ktl_256),
            row("256 B: getrandom(2) syscall", 450.0, ktl_256),
        ];
        let report = Report::new(
            Machine::probe(),
            &ktl::layout().owner,
            Shape::Call,
            &outcomes,
            Vec::new(),
        );
        let text = render_text(
            &report,
            &outcomes,
            "o",
            Shape::Call,
            1,
            Duration::from_millis(1),
            0,
        );
        let line = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .unwrap()
                .to_owned()
        };
        assert!(line(random::KTL_16).ends_with("1.00x"), "{text}");
        assert!(line(random::SYSCALL_16).ends_with("15.0x"), "{text}");
        assert!(line("256 B: getrandom(2)").ends_with("4.50x"), "{text}");
        assert!(
            text.contains("ratio: median / median of ktl::random::fill of the same size"),
            "{text}"
        );
        assert!(
            text.contains("random: ktl::random::fill uses the "),
            "{text}"
        );
        assert!(
            text.contains("4 of 4 checked rows are exact (every random fill succeeded"),
            "{text}"
        );
        assert!(
            text.contains(&format!("  {}: pass (ratio 15.0x", random::CHECK.name)),
            "{text}"
        );
    }

    #[test]
    fn a_filter_outside_the_quick_run_is_an_error() {
        let args = BenchArgs {
            filter: Some("stack".to_owned()),
            ..BenchArgs::quick()
        };
        let err = run_cli(&args).unwrap_err();
        assert!(err.contains("no row of the quick run"), "{err}");
    }
}
