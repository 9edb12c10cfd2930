//! Criterion benchmarks of the per-CPU structures against what programs use
//! for the same job today, in one group (`percpu`): the rows of
//! `ktl bench --filter percpu` ([`ktl_bench::workloads::percpu::rows`]),
//! the structures at 1, 2 and 8 threads and the metric kinds at 1, 2, 8
//! and 32.
//!
//! - counter add: [`ktl::percpu::PerCpuCounter::add`] against one shared
//!   `AtomicU64` (`fetch_add`), a counter sharded per thread with the
//!   `thread_local` crate (`ThreadLocal<Cell<u64>>`, summed with its
//!   iterator) and a `Mutex<u64>`;
//! - pool get+put: [`ktl::percpu::Pool::get`] and the drop of the object
//!   (one get+put is one operation) against `crossbeam_queue::ArrayQueue`
//!   pop+push, `crossbeam_queue::SegQueue` pop+push and `Mutex<Vec<_>>`
//!   pop+push;
//! - stack push+pop: [`ktl::percpu::PerCpuStack`] push then pop, against the
//!   same three;
//! - metric counter increment: ktl's counter behind a `metrics::Counter`
//!   against the `metrics` crate's own (an `AtomicU64` behind the same
//!   handle), and `ktl::prometheus::Counter` against `prometheus-client`'s
//!   `Counter`;
//! - histogram observe: [`ktl::percpu::PerCpuHistogram::observe`] against
//!   `prometheus-client`'s `Histogram` and a `Mutex`-protected histogram,
//!   and ktl's behind a `metrics::Histogram`.
//!
//! The objects are 64-byte arrays on the heap; each pool and stack starts
//! with 256 of them, put in from each CPU in turn (pinned), so that every
//! CPU's list of the per-CPU structures has its share. An operation uses the
//! object it holds (adds 1 to its first word).
//!
//! The rows of N threads run the loop in the benchmarking thread and in
//! N - 1 helper threads at once, on one shared structure (the helpers are
//! spawned once per row and driven sample by sample, with `iter_custom`);
//! the time is the wall time of a sample divided by the iterations of one
//! thread. The threads are not pinned.
//!
//! After the group, each row's structure is checked exactly: the counters
//! and histograms sum to the operations performed, and the pools and stacks
//! hold every object they made, whose uses sum to the operations performed;
//! a mismatch fails the run. Run with `cargo bench -p ktl-bench --bench
//! percpu` (a filter after `--` picks rows, for example `-- metric`);
//! `-- --test` runs each row once.

mod common;

use criterion::{Criterion, criterion_group, criterion_main};

/// The `percpu` group. Criterion runs the routines on this thread, which
/// builds the rows (and so registers its area, when ktl owns the areas,
/// before anything is timed).
fn percpu(c: &mut Criterion) {
    let rows = ktl_bench::workloads::percpu::rows();
    common::bench_rows(c, ktl_bench::workloads::percpu::GROUP, rows, None);
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = percpu
}
criterion_main!(benches);
