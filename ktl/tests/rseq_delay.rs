//! With delays injected before and inside the critical sections (cargo
//! feature `delay-injection`), two threads pinned to one CPU preempt each
//! other inside their sections: aborts must happen, and no update may be lost,
//! with `rseq::add` and with `rseq::add_current`.
//!
//! Run with `cargo test -p ktl --features delay-injection --test rseq_delay`.
#![cfg(feature = "delay-injection")]

use ktl::rseq::{self, Index, delay};
use ktl_testkit::affinity::{allowed_cpus, pin};
use ktl_testkit::exclusive;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// The delays are settings of the whole process, and the tests of this
/// file run in parallel: each holds this lock while its delays are set, and
/// sets them back to 0 when it lets go. Caught: without it, the first test
/// to finish zeroed the delays of the others, so `add_current` ran 2.1
/// million adds for one abort and "the delays caused no abort" failed in 2
/// of 8 runs of this file.
static DELAYS: Mutex<()> = Mutex::new(());

/// The delays set, for as long as the guard lives.
struct Delays {
    _held: MutexGuard<'static, ()>,
}

impl Delays {
    fn set(before: u64, inside: u64) -> Delays {
        let guard = DELAYS.lock().unwrap_or_else(PoisonError::into_inner);
        delay::set_before(before);
        delay::set_inside(inside);
        Delays { _held: guard }
    }
}

impl Drop for Delays {
    fn drop(&mut self) {
        delay::set_before(0);
        delay::set_inside(0);
    }
}

#[test]
fn injected_delays_cause_aborts_and_lose_nothing() {
    if rseq::start(Index::CpuId).is_none() || rseq::path() != rseq::Path::CriticalSections {
        eprintln!(
            "SKIPPED injected_delays_cause_aborts_and_lose_nothing: no critical sections here ({})",
            rseq::path()
        );
        return;
    }
    let delays = Delays::set(200, 2_000);
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
    let total: i64 = slots.iter().map(|s| s.load(Ordering::Relaxed)).sum();
    assert_eq!(total, 2 * N as i64, "no update may be lost");
    assert!(aborts > 0, "the delays caused no abort");
    eprintln!("{aborts} aborts in {} adds", 2 * N);

    // The same with `add_current`, whose section reads the CPU itself. It
    // checks no gate, so only preemptions (and fences) abort it: each worker
    // adds in rounds of N until it has seen an abort, or a cap.
    #[repr(C, align(128))]
    struct Word(AtomicI64);
    const MAX_ROUNDS: u64 = 20;
    let words: Arc<Vec<Word>> = Arc::new((0..4096).map(|_| Word(AtomicI64::new(0))).collect());
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let words = words.clone();
            std::thread::spawn(move || {
                pin(cpu);
                let before = rseq::aborts();
                let base = words[0].0.as_ptr().cast::<u8>();
                let mut added = 0;
                for _ in 0..MAX_ROUNDS {
                    for _ in 0..N {
                        // SAFETY: word `i` is at `base + i * size_of::<Word>()`
                        // for `i` below 4096, and only this call, indexed by
                        // CPU, writes the words.
                        let done = unsafe {
                            rseq::add_current(Index::CpuId, base, size_of::<Word>(), 4096, 1)
                        };
                        assert!(done);
                    }
                    added += N;
                    if rseq::aborts() > before {
                        break;
                    }
                }
                (added, rseq::aborts() - before)
            })
        })
        .collect();
    let (mut added, mut aborts) = (0, 0);
    for w in workers {
        let (a, b) = w.join().unwrap();
        added += a;
        aborts += b;
    }
    drop(delays);
    let total: i64 = words.iter().map(|w| w.0.load(Ordering::Relaxed)).sum();
    assert_eq!(total, added as i64, "add_current: no update may be lost");
    assert_eq!(words[cpu].0.load(Ordering::Relaxed), added as i64);
    assert!(aborts > 0, "add_current: the delays caused no abort");
    eprintln!("add_current: {aborts} aborts in {added} adds");
}

/// Two threads on one CPU observe into a histogram with delays inside the
/// section, one of them between its store of the new sum and its commit:
/// aborts there must leave the count and the sum as they were, so the
/// totals stay exact.
#[test]
fn histogram_observations_survive_aborts_before_the_commit() {
    if rseq::start(Index::CpuId).is_none() || rseq::path() != rseq::Path::CriticalSections {
        eprintln!(
            "SKIPPED histogram_observations_survive_aborts_before_the_commit: no critical sections here ({})",
            rseq::path()
        );
        return;
    }
    let delays = Delays::set(200, 2_000);
    let cpu = allowed_cpus()[0];
    let h = Arc::new(ktl::percpu::PerCpuHistogram::new([1.0, 2.0]).unwrap());
    const N: u64 = 100_000;
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let h = h.clone();
            std::thread::spawn(move || {
                pin(cpu);
                let before = rseq::aborts();
                for i in 0..N {
                    h.observe((i % 3) as f64 + 0.5);
                }
                rseq::aborts() - before
            })
        })
        .collect();
    let aborts: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    drop(delays);
    let s = h.snapshot();
    // 0.5, 1.5, 2.5 in turn: one in each bucket, a third of the time.
    let third = |k: u64| (0..N).filter(|i| i % 3 == k).count() as u64 * 2;
    assert_eq!(s.buckets(), [third(0), third(1), third(2)]);
    let sum: f64 = (0..N).map(|i| (i % 3) as f64 + 0.5).sum::<f64>() * 2.0;
    assert_eq!(s.sum(), sum, "an abort changed the sum");
    assert!(aborts > 0, "the delays caused no abort");
    eprintln!("histogram: {aborts} aborts in {} observations", 2 * N);
}

/// With a delay inside every section, a section that read the gate open is
/// still running when `exclusive` closes it: only the fence stops its
/// commit.
#[test]
fn exclusive_waits_for_delayed_sections() {
    let _delays = Delays::set(200, 2_000);
    exclusive::stops_every_commit("exclusive_waits_for_delayed_sections");
}
