//! The benchmarks of ktl: they measure the per-thread accessors, the
//! restartable sequences, the per-CPU structures and the random bytes
//! against their alternatives. `ktl bench` (the command in `ktl-cli`) runs
//! them through [`run`], and the criterion benches (`benches/`) measure the
//! same workloads, each written once in [`workloads`].
//!
//! The framework is small and meant to grow. A [`Row`] is a named operation
//! in a group, or the reason it cannot run on this machine. For the rows that
//! can run, the measurement calibrates an iteration count per row, so that
//! one sample takes about `--sample-ms` (the `peers` rows take the count
//! calibrated on librseq), runs one untimed sample of each as a
//! warm-up, then takes `--samples` rounds of timed samples, one sample of
//! every row per round (every group's rows take part in the same rounds).
//!
//! The modules, at their seams:
//! - `harness`: rows, loop shapes ([`Shape`]), operation counts, statistics,
//!   the calibrated and interleaved measurement;
//! - `crew`: the helper threads of the multi-thread rows;
//! - [`workloads`]: the groups' rows, `cpu`, `rseq`, `percpu`, `random` and
//!   `peers`;
//! - `stores`: the objects of the `percpu` group and the structures that
//!   hold them, with their accounting;
//! - `checks`: the promised comparisons and the footprint check;
//! - `report` and `json`: the text report, the JSON report (schema
//!   `ktl-bench/1`) and a saved record rendered as Markdown
//!   ([`render_record`]);
//! - `scaling` and `plot`: the thread scaling of `--plot` and the SVG
//!   charts;
//! - [`os`]: the operating-system calls of the command and the benchmarks
//!   (CPU affinity, signals, `pthread_create`, `fork`).
//! - [`alloc`]: the allocator benchmark (ktl-alloc against glibc, mimalloc
//!   and jemalloc), with its workloads and the programs `alloc-workload`
//!   and `alloc-bench`.
//!
//! Five groups of rows:
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
//!   today, each at 1, 2 and 8 threads on one shared structure (see
//!   [`workloads::percpu`]): counter add ([`ktl::percpu::PerCpuCounter`]
//!   against a shared `AtomicU64`, a `thread_local::ThreadLocal<Cell<u64>>`
//!   and a `Mutex<u64>`), pool get+put ([`ktl::percpu::Pool`] against
//!   crossbeam's `ArrayQueue` and `SegQueue` and a `Mutex<Vec<_>>`) and stack
//!   push+pop ([`ktl::percpu::PerCpuStack`] against the same three); and at
//!   1, 2, 8 and 32 threads, a counter increment through the metrics crates
//!   (ktl's counter behind `metrics::Counter` against the `metrics` crate's
//!   own `AtomicU64`, `prometheus-client`'s `Counter` against
//!   [`ktl::prometheus::Counter`]) and a histogram observe
//!   ([`ktl::percpu::PerCpuHistogram`] against `prometheus-client`'s
//!   `Histogram`, a `Mutex`-protected one, and ktl's behind
//!   `metrics::Histogram`). Each row's ratio is taken against ktl's
//!   structure with the same operation and thread count.
//! - `random`: random bytes for requests of 16, 256 and 4096 bytes (see
//!   [`workloads::random`]): [`ktl::random::fill`] (vDSO getrandom with a
//!   per-thread state) against the `getrandom(2)` system call
//!   ([`ktl::random::syscall_fill`]) and the `getrandom` crate as it is
//!   (`getrandom::fill`, which calls the C library's `getrandom`). ktl's row
//!   names the path it took: `(vDSO)`, or `(syscall fallback)` when the
//!   kernel has no vDSO getrandom; a line under the table gives the reason.
//!   Right after it, `raw vDSO getrandom (limit)` calls the vDSO's
//!   `getrandom` directly with a state of its own (n/a without one). Each
//!   row's ratio is taken against ktl's row of the same size.
//! - `peers`: the scenarios of the kernel's rseq `param_test` (increment,
//!   spinlock, list, buffer, memcpy) at 2 threads, written with
//!   [`ktl::rseq`]'s operations, next to librseq's `param_test_benchmark`
//!   of a built librseq tree (`--librseq DIR` or `KTL_LIBRSEQ=DIR`; see
//!   [`workloads::peers`]). ktl's rows time their threads from spawn to
//!   join, librseq's rows the whole process from spawn to exit; both run the
//!   repetitions calibrated on librseq, and report the time of one
//!   repetition of one thread. Each ktl row's ratio is taken against
//!   librseq's row of its scenario. Without librseq the rows are "n/a" with
//!   the way to get it; the group is not in `--quick` and not in the
//!   criterion benches.
//!
//! A row of N threads (outside `peers`, whose rows start their threads in
//! every run) runs the loop in N threads at once: the benchmarking
//! thread and N - 1 helper threads that the row spawns once and drives
//! sample by sample (a crew). The helpers block between samples; at the
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
//! Every `rseq`, `percpu`, `random` and `peers` row checks its result (a
//! `peers` row each of its runs, see [`workloads::peers`]): its loops
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
//! project promises, computed from the medians of the same run, each with
//! its limit (the list, with what each compares, is in `docs/cli.md`): the
//! accessors against the raw load and glibc, the rseq add and the per-CPU
//! structures against atomics, `thread_local` and `ArrayQueue`, ktl's
//! random fill against the raw vDSO getrandom, the footprint of `PerCpu<T>`
//! (computed, not measured), and for each `peers` scenario ktl against
//! librseq's `param_test_benchmark` (listed when the run includes the
//! `peers` group; not computed without librseq).
//!
//! A failed comparison is reported, never turned into an error: machines are
//! noisy.
//!
//! `--quick` (and `ktl` with no subcommand) takes fewer, shorter samples, of
//! the `percpu` group runs only the 2-thread rows of every structure but the
//! stack and the 1-thread rows a promise compares (the counters of ktl and
//! `thread_local`, the pools and stacks of ktl and `ArrayQueue`, the metric
//! counters and the histograms of ktl and the crates), and of the `random` group
//! only the 16-byte rows of ktl, the raw vDSO limit and the system call. A filter that is a
//! group's name selects that group (`cpu` does not select `percpu`); any
//! other filter selects the rows whose name or group contains it.
//!
//! `--plot FILE.svg` draws two SVG charts: the rows of the run as bars into
//! `FILE.svg`, and, into `FILE-scaling.svg`, the thread scaling of the
//! counters and pools that the filter selects, measured after the rows at
//! 1, 2, 4, 8 and 32 threads, with the same settings and the same checks.
//! Both paths are checked before anything is measured.
//!
//! The JSON form (`--json`) follows the schema `ktl-bench/1`:
//!
//! ```text
//! {"schema": "ktl-bench/1",
//!  "machine": {"cpu_model", "kernel", "arch", "logical_cpus", "usable_cpus"},
//!  "commit": "<git commit>[-dirty]" | "unknown",
//!  "owner": "libc" | "ktl" | "unavailable",
//!  "shape": "call" | "throughput",
//!  "rows": [{"name", "group", "threads", "available", "reason", "median_ns",
//!            "min_ns", "max_ns", "spread_pct", "samples", "iters_per_sample",
//!            "baseline"}],
//!  "checks": [{"name", "ratio", "limit", "bound", "pass", "reason", "detail"}],
//!  "scaling": [{"structure", "implementation", "ours", "threads",
//!               "median_ns", "min_ns", "max_ns", "reason"}]}
//! ```
//!
//! Numbers of a row that did not run, and the ratio and verdict of a check
//! that could not be computed, are `null`; `reason` says why. `commit` is
//! the git commit the benchmarks were built from, with `-dirty` when the
//! tree had changes, or `"unknown"` (no git, or no repository).
//! `rows[].baseline` names the row its ratio is taken against (`null` when
//! none). `bound` is `"max"` when `ratio` must be at most `limit`, `"min"`
//! when at least, and `"exact"` when it must equal it (the footprint check,
//! whose `ratio` is bytes taken / bytes expected and whose `detail` gives
//! the sizes in words; `detail` is `null` for the others). `scaling` is
//! empty without `--plot`. `rows[].threads`, `checks[].detail`, `scaling`,
//! `commit` and `rows[].baseline` were added within version 1 (a version
//! only ever gains fields), and so were the `peers` group's rows (group
//! `"peers"`) and its five checks (present when the run includes the
//! group).
//!
//! A saved report is a dated record of a machine's numbers:
//! [`render_record`] turns it into the Markdown table the documentation
//! shows (`ktl bench --render FILE`).

#![warn(missing_docs)]

/// The allocator benchmark: its workloads, programs and reports.
pub mod alloc;
mod checks;
mod crew;
mod driver;
mod harness;
mod json;
pub mod os;
mod plot;
mod report;
mod scaling;
mod stores;
pub mod workloads;

pub use driver::{Options, run, run_to};
pub use harness::{Row, Shape, UNROLL};
pub use json::COMMIT;

/// Renders a saved `ktl bench --json` record (the text of the file) as the
/// Markdown table the documentation shows: the machine and the commit as a
/// list, a blank line, then the table of the text report (median, minimum,
/// maximum, spread and ratio per row). Fails with a message when the text
/// is not a `ktl-bench/1` record.
pub fn render_record(json: &str) -> Result<String, String> {
    report::render_record(json)
}
