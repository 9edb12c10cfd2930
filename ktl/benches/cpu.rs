//! Criterion benchmarks of the per-thread accessors against their
//! alternatives, in one group (`cpu`) so they are compared side by side:
//!
//! - `ktl::cpu_id()`, `ktl::node_id()`, `ktl::mm_cid()`;
//! - `raw %fs load (limit)`: [`ktl::cpu::cpu_id_at`] with the offset from
//!   [`ktl::layout`], the single load `cpu_id()` is measured against;
//! - glibc `sched_getcpu`, vDSO `getcpu`, the `getcpu` system call and RDPID.
//!
//! Rows this machine cannot run (no rseq area, no vDSO `getcpu`, no RDPID)
//! are skipped with a note on stderr. Run with
//! `cargo bench -p ktl --bench cpu`; `-- --test` runs each once.

use criterion::{Criterion, criterion_group, criterion_main};
use ktl::cpu::Source;
use std::time::Duration;

/// glibc's `sched_getcpu`: the CPU number, or -1 with `errno` set.
#[inline(always)]
fn glibc_sched_getcpu() -> i32 {
    // SAFETY: `sched_getcpu` takes no arguments, touches no memory of ours
    // and may be called from any thread at any time.
    unsafe { libc::sched_getcpu() }
}

/// Notes a skipped row on stderr.
fn skip(name: &str, reason: &str) {
    eprintln!("cpu/{name}: skipped ({reason})");
}

/// The `cpu` group: every row that this machine can run.
fn cpu(c: &mut Criterion) {
    // Decide the owner and register this thread's area (when ktl owns the
    // areas) before anything is timed. Criterion runs the routines on this
    // thread.
    let layout = ktl::layout();
    let sources = ktl::cpu::sources();

    let mut g = c.benchmark_group("cpu");

    g.bench_function("ktl::cpu_id()", |b| b.iter(ktl::cpu_id));

    match (layout.offset, sources.cpu_id) {
        (Some(offset), Source::Area) => {
            g.bench_function("raw %fs load (limit)", |b| {
                b.iter(|| {
                    // SAFETY: `offset` comes from `ktl::layout()`, so it
                    // designates the calling thread's area (live:
                    // `sources()` reads it), mapped for the life of the
                    // thread.
                    unsafe { ktl::cpu::cpu_id_at(offset) }
                })
            });
        }
        _ => skip("raw %fs load (limit)", "no registered rseq area"),
    }

    g.bench_function("ktl::node_id()", |b| b.iter(ktl::node_id));
    g.bench_function("ktl::mm_cid()", |b| b.iter(ktl::mm_cid));

    if glibc_sched_getcpu() >= 0 {
        g.bench_function("glibc sched_getcpu", |b| b.iter(glibc_sched_getcpu));
    } else {
        skip("glibc sched_getcpu", "sched_getcpu failed");
    }

    if ktl::cpu::getcpu_vdso().is_some() {
        g.bench_function("vDSO getcpu", |b| b.iter(ktl::cpu::getcpu_vdso));
    } else {
        skip("vDSO getcpu", "the vDSO has no getcpu");
    }

    match ktl::cpu::getcpu_syscall() {
        Ok(_) => {
            g.bench_function("getcpu syscall", |b| b.iter(ktl::cpu::getcpu_syscall));
        }
        Err(e) => skip("getcpu syscall", &e.to_string()),
    }

    if ktl::cpu::rdpid().is_some() {
        g.bench_function("RDPID", |b| b.iter(ktl::cpu::rdpid));
    } else {
        skip("RDPID", "this CPU has no RDPID instruction");
    }

    g.finish();
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
    targets = cpu
}
criterion_main!(benches);
