//! Criterion benchmarks of the per-thread accessors against their
//! alternatives, in one group (`cpu`) so they are compared side by side:
//! the rows of `ktl bench --filter cpu` ([`ktl_bench::workloads::cpu`]).
//!
//! - `ktl::cpu_id()`, `ktl::node_id()`, `ktl::mm_cid()`;
//! - `raw %fs load (limit)`: [`ktl::cpu::cpu_id_at`] with the offset from
//!   [`ktl::layout`], the single load `cpu_id()` is measured against;
//! - glibc `sched_getcpu`, vDSO `getcpu`, the `getcpu` system call and RDPID.
//!
//! Rows this machine cannot run (no rseq area, no vDSO `getcpu`, no RDPID)
//! are skipped with a note on stderr. Run with
//! `cargo bench -p ktl-bench --bench cpu`; `-- --test` runs each once.

mod common;

use criterion::{Criterion, criterion_group, criterion_main};

/// The `cpu` group: every row that this machine can run. Criterion runs
/// the routines on this thread, which builds the rows (and so decides the
/// owner and registers its area, when ktl owns the areas, before anything
/// is timed).
fn cpu(c: &mut Criterion) {
    let rows = ktl_bench::workloads::cpu::rows();
    common::bench_rows(c, ktl_bench::workloads::cpu::GROUP, rows, None);
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = cpu
}
criterion_main!(benches);
