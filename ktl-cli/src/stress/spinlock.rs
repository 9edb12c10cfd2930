//! `spinlock`: a per-slot lock taken with `cmpeqv_storev(0 -> 1)`, a plain
//! increment under it, a release store of 0. The counters sum to threads x
//! reps.

use super::{Config, ScenarioResult, exact, lines, live, result, run_threads, sum, worker};
use ktl::rseq;
use std::sync::atomic::Ordering;

/// Failed lock attempts before the spinning thread yields: with many more
/// threads than CPUs, the holder is often preempted.
const SPINS_BEFORE_YIELD: u32 = 64;

pub(super) fn spinlock(cfg: &Config) -> ScenarioResult {
    let locks = lines(cfg.slots);
    let counts = lines(cfg.slots);
    let run = run_threads::<()>(
        cfg,
        "spinlock",
        |ctx| {
            worker(cfg, ctx, || {
                let mut spins = 0;
                let slot = loop {
                    let r = live(rseq::retry(cfg.index, |s| {
                        let slot = cfg.slot(s);
                        // SAFETY: a lock word goes 0 -> 1 only through this
                        // rseq operation with `cfg.index` on the slot of its
                        // index value; the only other write is the holder's
                        // release store of 0 below, made while the word is 1,
                        // when no section can commit a write to it.
                        unsafe { rseq::cmpeqv_storev(s, locks[slot].0.as_ptr(), 0, 1) }
                            .map(|()| slot)
                    }))?;
                    match r {
                        Ok(slot) => break slot,
                        Err(_) => {
                            spins += 1;
                            if spins % SPINS_BEFORE_YIELD == 0 {
                                std::thread::yield_now();
                            } else {
                                std::hint::spin_loop();
                            }
                        }
                    }
                };
                // The commit is a plain store that read the holder's release
                // store of 0 under a control dependency: acquire (param_test's
                // rseq_smp_acquire__after_ctrl_dep).
                std::sync::atomic::fence(Ordering::Acquire);
                // Not atomic on purpose: the lock protects it, even if this
                // thread has migrated since taking it.
                let c = &counts[slot].0;
                c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
                locks[slot].0.store(0, Ordering::Release);
                Ok(true)
            })
        },
        None,
    );
    let mut check = exact("the sum of the counters", sum(&counts), cfg.expected());
    if sum(&locks) != 0 {
        check.push("a lock is still held".into());
    }
    result(cfg, "spinlock", &run, check)
}
