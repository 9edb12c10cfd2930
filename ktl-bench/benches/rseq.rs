//! Criterion benchmarks of restartable sequences against atomics, in one
//! group (`rseq`), the same rows as `ktl bench --filter rseq`
//! ([`ktl_bench::workloads::rseq`]):
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
//! Run with `cargo bench -p ktl-bench --bench rseq`; `-- --test` runs each
//! once.

mod common;

use criterion::{Criterion, criterion_group, criterion_main};

/// The `rseq` group. Criterion runs the routines on this thread, which
/// builds the rows (and so registers its area, when ktl owns the areas,
/// before anything is timed).
fn rseq(c: &mut Criterion) {
    let rows = ktl_bench::workloads::rseq::rows();
    common::bench_rows(c, ktl_bench::workloads::rseq::GROUP, rows, None);
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = rseq
}
criterion_main!(benches);
