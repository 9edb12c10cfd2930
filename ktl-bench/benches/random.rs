//! Criterion benchmarks of random bytes, one group per request size
//! (`random 16 B`, `random 256 B`, `random 4096 B`), the rows of
//! `ktl bench --filter random` ([`ktl_bench::workloads::random`]):
//!
//! - `ktl::random::fill (vDSO)`: [`ktl::random::fill`], vDSO getrandom with
//!   this thread's state; named `ktl::random::fill (syscall fallback)` when
//!   the kernel has no vDSO getrandom and it uses the system call;
//! - `raw vDSO getrandom (limit)`: the vDSO's `getrandom` called directly
//!   with a state of the row's own, the limit ktl's fill is held to (skipped
//!   where the vDSO has no getrandom);
//! - `getrandom(2) syscall`: [`ktl::random::syscall_fill`], the system call
//!   alone;
//! - `getrandom crate`: `getrandom::fill` as it is, with its default Linux
//!   backend (the C library's `getrandom`, the system call before glibc
//!   2.41).
//!
//! Each call fills a fresh buffer on the stack and adds its first 8 bytes to
//! the loop's accumulator, so the bytes are used; throughput is in bytes. A
//! call that fails (for the limit, one that writes fewer bytes than asked),
//! or a call of ktl's row on another path than its name gives, fails the
//! run, after the group. Run with
//! `cargo bench -p ktl-bench --bench random`; `-- --test` runs each once.

mod common;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// The three groups. Criterion runs the routines on this thread, which
/// builds the rows (and so gives itself its random state before anything
/// is timed).
fn random(c: &mut Criterion) {
    for (size, rows) in ktl_bench::workloads::random::rows_by_size() {
        let throughput = Throughput::Bytes(size as u64);
        common::bench_rows(c, &format!("random {size} B"), rows, Some(throughput));
    }
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = random
}
criterion_main!(benches);
