//! The membarrier fences: the mechanism this kernel offers, fences on every
//! allowed CPU, invalid CPUs, and a fence that really aborts a critical
//! section running on another CPU without losing an update.

#[path = "support/affinity.rs"]
mod affinity;
#[path = "support/exclusive.rs"]
mod exclusive;

use affinity::{allowed_cpus, pin};
use ktl::rseq::fence::{self, FenceError, FenceKind};
use ktl::rseq::{self, Index};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Slots for any CPU number this machine can produce.
const SLOTS: usize = 4096;

/// The running kernel's `(major, minor)`, if it can be read.
fn kernel_version() -> Option<(u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut parts = release.trim().split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Whether the calling thread runs the operations as critical sections
/// (it has a live rseq area, and the process is not on the locked
/// fallback); says why not.
fn has_area(test: &str) -> bool {
    let live = rseq::start(Index::CpuId).is_some() && rseq::path() == rseq::Path::CriticalSections;
    if !live {
        let owner = ktl::layout().owner;
        eprintln!("SKIPPED {test}: no live rseq area (owner: {owner})");
    }
    live
}

#[test]
fn kind_is_decided_once_and_is_rseq_here() {
    // Concurrent first calls agree.
    let kinds: Vec<FenceKind> = (0..8)
        .map(|_| std::thread::spawn(fence::kind))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    assert!(kinds.iter().all(|&k| k == kinds[0]), "{kinds:?}");
    assert_eq!(fence::kind(), kinds[0]);
    eprintln!("fence kind: {}", kinds[0]);
    if !has_area("kind_is_decided_once_and_is_rseq_here") {
        return;
    }
    match kernel_version() {
        Some(v) if v >= (5, 10) => assert_eq!(fence::kind(), FenceKind::Rseq, "kernel {v:?}"),
        v => eprintln!("SKIPPED kind_is_decided_once_and_is_rseq_here: kernel {v:?} < 5.10"),
    }
}

#[test]
fn fences_succeed_on_every_allowed_cpu() {
    if fence::kind() == FenceKind::Unavailable {
        assert_eq!(fence::fence_all(), Err(FenceError::Unsupported));
        assert_eq!(fence::fence_cpu(0), Err(FenceError::Unsupported));
        eprintln!("SKIPPED fences_succeed_on_every_allowed_cpu: no fence");
        return;
    }
    fence::fence_all().unwrap();
    for cpu in allowed_cpus() {
        fence::fence_cpu(cpu as u32).unwrap_or_else(|e| panic!("CPU {cpu}: {e}"));
    }
    fence::fence_all().unwrap();
}

#[test]
fn an_impossible_cpu_is_einval() {
    if fence::kind() == FenceKind::Unavailable {
        eprintln!("SKIPPED an_impossible_cpu_is_einval: no fence");
        return;
    }
    for cpu in [1_000_000, i32::MAX as u32, i32::MAX as u32 + 1, u32::MAX] {
        assert_eq!(
            fence::fence_cpu(cpu),
            Err(FenceError::Failed(libc::EINVAL)),
            "CPU {cpu}"
        );
    }
}

#[test]
fn errors_display_their_cause() {
    let e: Box<dyn std::error::Error> = Box::new(FenceError::Failed(libc::EINVAL));
    let text = e.to_string();
    assert!(text.contains("EINVAL"), "{text}");
    assert!(text.contains("membarrier"), "{text}");
    assert!(!FenceError::Unsupported.to_string().is_empty());
    assert!(!FenceKind::Expedited.to_string().is_empty());
}

#[test]
fn fence_cpu_aborts_a_running_sequence() {
    const TEST: &str = "fence_cpu_aborts_a_running_sequence";
    if !has_area(TEST) {
        return;
    }
    if fence::kind() != FenceKind::Rseq {
        eprintln!(
            "SKIPPED {TEST}: the fence is {}, which does not abort",
            fence::kind()
        );
        return;
    }
    let cpus = allowed_cpus();
    let cpu = cpus[0];
    let fencer_cpu = cpus.get(1).copied();
    if fencer_cpu.is_none() {
        eprintln!("{TEST}: one allowed CPU; preemption adds aborts too");
    }
    let slots: Arc<Vec<AtomicI64>> = Arc::new((0..SLOTS).map(|_| AtomicI64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(AtomicU64::new(0));
    let added = Arc::new(AtomicU64::new(0));

    // The worker adds to its CPU's slot until told to stop, publishing its
    // abort and add counts as it goes.
    let worker = {
        let (slots, stop, seen, added) = (slots.clone(), stop.clone(), seen.clone(), added.clone());
        std::thread::spawn(move || {
            pin(cpu);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                rseq::retry(Index::CpuId, |s| {
                    let slot = &slots[s.value() as usize];
                    // SAFETY: every write to the slots goes through rseq
                    // operations indexed by CPU, and `value()` < SLOTS.
                    unsafe { rseq::add(s, slot.as_ptr(), 1) }
                })
                .expect("a live area")
                .expect("add never fails a compare");
                n += 1;
                seen.store(rseq::aborts(), Ordering::Relaxed);
                added.store(n, Ordering::Relaxed);
            }
            (n, rseq::aborts())
        })
    };

    // The fencer (its own thread, so pinning it leaves the test harness's
    // threads alone) first lets the worker run unfenced for a while, for a
    // baseline, then fences its CPU at least MIN_FENCES times and until the
    // worker has seen aborts since the baseline, within generous caps (the
    // deadline is the one that matters with a single allowed CPU, where
    // only the worker's preemption can abort it).
    const MIN_FENCES: u64 = 20_000;
    const MAX_FENCES: u64 = 50_000_000;
    let fencer = {
        let (seen, added) = (seen.clone(), added.clone());
        std::thread::spawn(move || {
            if let Some(c) = fencer_cpu {
                pin(c);
            }
            let deadline = Instant::now() + Duration::from_secs(60);
            while added.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
                std::thread::yield_now();
            }
            std::thread::sleep(Duration::from_millis(50));
            let baseline = (seen.load(Ordering::Relaxed), added.load(Ordering::Relaxed));
            let mut fences = 0u64;
            while fences < MAX_FENCES && Instant::now() < deadline {
                fence::fence_cpu(cpu as u32).expect("fence_cpu");
                fences += 1;
                if fencer_cpu.is_none() && fences.is_multiple_of(1000) {
                    // One CPU: let the worker be preempted more often.
                    std::thread::sleep(Duration::from_micros(100));
                }
                if fences >= MIN_FENCES && seen.load(Ordering::Relaxed) > baseline.0 {
                    break;
                }
            }
            (baseline, fences)
        })
    };
    let ((baseline_aborts, baseline_adds), fences) = fencer.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let (adds, aborts) = worker.join().unwrap();

    let total: i64 = slots.iter().map(|s| s.load(Ordering::Relaxed)).sum();
    assert_eq!(total, adds as i64, "no update may be lost");
    assert_eq!(
        slots[cpu].load(Ordering::Relaxed),
        adds as i64,
        "all on CPU {cpu}"
    );
    assert!(
        aborts > baseline_aborts,
        "{fences} fences of CPU {cpu} caused no abort in {adds} adds \
         ({baseline_aborts} aborts before fencing)"
    );
    eprintln!(
        "{TEST}: {aborts} aborts in {adds} adds on CPU {cpu} with {fences} fences \
         (before fencing: {baseline_aborts} aborts in {baseline_adds} adds)"
    );
}

#[test]
fn exclusive_stops_every_commit_on_its_value() {
    exclusive::stops_every_commit("exclusive_stops_every_commit_on_its_value");
}
