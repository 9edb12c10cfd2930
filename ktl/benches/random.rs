//! Criterion benchmarks of random bytes, one group per request size
//! (`random 16 B`, `random 256 B`, `random 4096 B`), the rows of
//! `ktl bench --filter random`:
//!
//! - `ktl::random::fill (vDSO)`: [`ktl::random::fill`], vDSO getrandom with
//!   this thread's state; named `ktl::random::fill (syscall fallback)` when
//!   the kernel has no vDSO getrandom and it uses the system call;
//! - `getrandom(2) syscall`: [`ktl::random::syscall_fill`], the system call
//!   alone;
//! - `getrandom crate`: `getrandom::fill` as it is, with its default Linux
//!   backend (the C library's `getrandom`, the system call before glibc
//!   2.41).
//!
//! Each call fills a fresh buffer on the stack and returns its first 8 bytes,
//! so the bytes are used; throughput is in bytes. A call that fails fails
//! the run, after the group. Run with `cargo bench -p ktl --bench random`;
//! `-- --test` runs each once.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::cell::Cell;
use std::fmt::Display;
use std::time::Duration;

/// The name of ktl's function: the path it takes in this thread. The first
/// fill gives the thread its state, so none is mapped while it is timed.
fn ktl_name() -> &'static str {
    let before = ktl::random::thread_fills().vdso;
    let ok = ktl::random::fill(&mut [0u8; 16]).is_ok();
    if ok && ktl::random::thread_fills().vdso > before {
        "ktl::random::fill (vDSO)"
    } else {
        "ktl::random::fill (syscall fallback)"
    }
}

/// One call: fills a fresh `N`-byte buffer with `fill` and returns its first
/// 8 bytes (0, and one more in `failed`, when the call fails).
#[inline(always)]
fn draw<const N: usize, E: Display>(
    fill: impl Fn(&mut [u8]) -> Result<(), E>,
    failed: &Cell<u64>,
) -> u64 {
    let mut buf = [0u8; N];
    match fill(&mut buf) {
        Ok(()) => buf.first_chunk::<8>().map_or(0, |b| u64::from_ne_bytes(*b)),
        Err(e) => {
            if failed.get() == 0 {
                eprintln!("random/{N} B: a fill failed: {e}");
            }
            failed.set(failed.get() + 1);
            0
        }
    }
}

/// The group of `N`-byte requests.
fn size<const N: usize>(c: &mut Criterion, ktl_name: &str) {
    let failed = Cell::new(0u64);
    let mut g = c.benchmark_group(format!("random {N} B"));
    g.throughput(Throughput::Bytes(N as u64));
    g.bench_function(ktl_name, |b| {
        b.iter(|| draw::<N, _>(ktl::random::fill, &failed))
    });
    g.bench_function("getrandom(2) syscall", |b| {
        b.iter(|| draw::<N, _>(ktl::random::syscall_fill, &failed))
    });
    g.bench_function("getrandom crate", |b| {
        b.iter(|| draw::<N, _>(getrandom::fill, &failed))
    });
    g.finish();
    if failed.get() > 0 {
        eprintln!("random/{N} B: {} fills failed", failed.get());
        std::process::exit(1);
    }
}

/// The three groups.
fn random(c: &mut Criterion) {
    // Criterion runs the routines on this thread.
    let name = ktl_name();
    size::<16>(c, name);
    size::<256>(c, name);
    size::<4096>(c, name);
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
    targets = random
}
criterion_main!(benches);
