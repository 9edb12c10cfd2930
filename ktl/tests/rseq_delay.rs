//! With delays injected before and inside the critical sections (cargo
//! feature `delay-injection`), two threads pinned to one CPU preempt each
//! other inside their sections: aborts must happen, and no update may be lost.
//!
//! Run with `cargo test -p ktl --features delay-injection --test rseq_delay`.
#![cfg(feature = "delay-injection")]

#[path = "support/affinity.rs"]
mod affinity;
#[path = "support/exclusive.rs"]
mod exclusive;

use affinity::{allowed_cpus, pin};
use ktl::rseq::{self, Index, delay};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

#[test]
fn injected_delays_cause_aborts_and_lose_nothing() {
    if rseq::start(Index::CpuId).is_none() || rseq::path() != rseq::Path::CriticalSections {
        eprintln!(
            "SKIPPED injected_delays_cause_aborts_and_lose_nothing: no critical sections here ({})",
            rseq::path()
        );
        return;
    }
    delay::set_before(200);
    delay::set_inside(2_000);
    assert_eq!(
        (delay::before_iterations(), delay::inside_iterations()),
        (200, 2_000)
    );
    let cpu = allowed_cpus()[0];
    let slots: Arc<Vec<AtomicI64>> = Arc::new((0..4096).map(|_| AtomicI64::new(0)).collect());
    const N: u64 = 100_000;
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let slots = slots.clone();
            std::thread::spawn(move || {
                pin(cpu);
                for _ in 0..N {
                    rseq::retry(Index::CpuId, |s| {
                        // SAFETY: the slots are written only by rseq
                        // operations indexed by CPU, below 4096.
                        unsafe { rseq::add(s, slots[s.value() as usize].as_ptr(), 1) }
                    })
                    .unwrap()
                    .unwrap();
                }
                rseq::aborts()
            })
        })
        .collect();
    let aborts: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    delay::set_before(0);
    delay::set_inside(0);
    let total: i64 = slots.iter().map(|s| s.load(Ordering::Relaxed)).sum();
    assert_eq!(total, 2 * N as i64, "no update may be lost");
    assert!(aborts > 0, "the delays caused no abort");
    eprintln!("{aborts} aborts in {} adds", 2 * N);
}

/// With a delay inside every section, a section that read the gate open is
/// still running when `exclusive` closes it: only the fence stops its
/// commit.
#[test]
fn exclusive_waits_for_delayed_sections() {
    delay::set_before(200);
    delay::set_inside(2_000);
    exclusive::stops_every_commit("exclusive_waits_for_delayed_sections");
}
