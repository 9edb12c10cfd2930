//! The allocator benchmark: ktl-alloc against glibc's malloc (the system
//! allocator), mimalloc and jemalloc, on workloads after the classic
//! allocator benchmarks.
//!
//! An allocator is chosen when a program is linked, so the benchmark is two
//! programs:
//!
//! - `alloc-workload <workload> <threads> [--scale F]` runs one workload
//!   once under the global allocator it was built with, checks its result,
//!   and prints one JSON line ([`Line`](crate::alloc::child::Line)): the
//!   allocator, the workload, the threads, the wall time of the workload
//!   alone, the check value, and for the ktl build ktl's front end. It is
//!   built four ways by the features of this crate: `alloc-ktl`
//!   (`ktl_alloc::PerCpuAlloc`), `alloc-mimalloc` (`mimalloc::MiMalloc`),
//!   `alloc-jemalloc` (`tikv_jemallocator::Jemalloc`), and none of them:
//!   the system allocator. With several, the first of ktl, mimalloc and
//!   jemalloc wins, and the program says which.
//! - `alloc-bench --bins DIR ...` ([`driver`](crate::alloc::driver)) runs
//!   the four builds as child processes for every workload and thread
//!   count, the repetitions interleaved (a round of every allocator, each
//!   round starting one allocator later, then the next round), reads each
//!   run's time from its line and its peak resident set from `wait4`, and
//!   reports per workload, thread count and allocator the median, fastest
//!   and slowest time and the median peak RSS, with each other allocator's
//!   median over ktl's (`glibc/ktl time 1.80x`: ktl is 1.8 times as fast).
//!   It prints the table with the machine (CPU model, kernel, CPU count,
//!   glibc version) and the date, evaluates ktl's targets as `PASS` and
//!   `MISS` lines, and can write the runs as JSON (schema
//!   `ktl-bench-alloc/1`), the table as Markdown and a chart as SVG.
//!
//! `ktl-bench/alloc-run` builds the four programs and the driver, and runs
//! the driver with its own arguments; `ktl-bench/alloc-run --quick` (threads
//! 1 and 2, one run each, a tenth of the work) shows that the whole
//! pipeline works in seconds.
//!
//! The workloads ([`workloads`](crate::alloc::workloads)) do a fixed total
//! amount of work, divided among their threads: at 8 threads each thread
//! does an eighth of the work of one thread alone. Perfect scaling halves
//! the time with each doubling of the threads, up to the CPUs there are,
//! and keeps it flat beyond. Each workload checks the contents of every
//! object before freeing it and returns a check value known in advance, so
//! an allocator that breaks fails the run: a failed run or a wrong check
//! value is an error of the driver, a missed target only a `MISS` line.
//!
//! ktl's targets: at 2 threads and more, faster than glibc and jemalloc on
//! every workload, and at least as fast as mimalloc on `xmalloc` and
//! `larson`; at 1 thread, within 1.1 times mimalloc's time; everywhere, a
//! peak RSS within 1.3 times mimalloc's.

mod chart;
pub mod child;
pub mod driver;
mod report;
pub mod workloads;

pub use report::{ALLOCATORS, OURS};
