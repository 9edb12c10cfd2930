//! `rseq::exclusive` against running critical sections.

use crate::affinity::{allowed_cpus, pin};
use ktl::rseq::fence::{self, FenceKind};
use ktl::rseq::{self, Index};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Two threads pinned to one CPU add to its slot while the main thread
/// takes `rseq::exclusive` on that CPU 20 times: no commit may land while it
/// is held, and the holder's own writes must survive. Skips (saying so in
/// the name of `test`) where the fallbacks cannot exclude.
pub fn stops_every_commit(test: &str) {
    if rseq::start(Index::CpuId).is_none() {
        eprintln!("SKIPPED {test}: this thread cannot run operations");
        return;
    }
    if rseq::path() == rseq::Path::CriticalSections && fence::kind() != FenceKind::Rseq {
        eprintln!("SKIPPED {test}: no rseq fence ({})", fence::kind());
        return;
    }
    let cpu = allowed_cpus()[0];
    let slots: Arc<Vec<AtomicI64>> = Arc::new((0..4096).map(|_| AtomicI64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    // Two threads on `cpu` add to its slot until told to stop.
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (slots, stop, done) = (slots.clone(), stop.clone(), done.clone());
            std::thread::spawn(move || {
                pin(cpu);
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    rseq::retry(Index::CpuId, |s| {
                        // SAFETY: the slots are written only by rseq
                        // operations indexed by CPU, and by the holder of
                        // `exclusive` below.
                        unsafe { rseq::add(s, slots[s.value() as usize].as_ptr(), 1) }
                    })
                    .unwrap()
                    .unwrap();
                    n += 1;
                }
                done.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    let slot = &slots[cpu];
    let deadline = Instant::now() + Duration::from_secs(10);
    while slot.load(Ordering::Relaxed) < 1000 && Instant::now() < deadline {
        std::thread::yield_now();
    }
    for _ in 0..20 {
        let held = rseq::exclusive(Index::CpuId, cpu as u32).expect("exclusive");
        assert_eq!(held.value(), cpu as u32);
        let before = slot.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(slot.load(Ordering::Relaxed), before, "a commit while held");
        // The holder's write must survive the sections that resume.
        slot.fetch_add(1_000_000, Ordering::Relaxed);
        drop(held);
        std::thread::sleep(Duration::from_millis(1));
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let total = slots.iter().map(|s| s.load(Ordering::Relaxed)).sum::<i64>();
    assert_eq!(total as u64, done.load(Ordering::Relaxed) + 20 * 1_000_000);
}
