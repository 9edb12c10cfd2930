//! `increment`: `add(+1)` on one set of slots, `add_current(+1)` on
//! another (a shared word where it has no area). Each set sums to threads x
//! reps; the shared word holds exactly the adds of the workers without an
//! area.

use super::{Config, Line, ScenarioResult, exact, lines, live, result, run_threads, sum, worker};
use ktl::rseq;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

pub(super) fn increment(cfg: &Config) -> ScenarioResult {
    let slots = lines(cfg.slots);
    // The words of `add_current`, which no other operation may write, and the
    // shared word of the workers it has no area for.
    let current = lines(cfg.slots);
    let shared = AtomicI64::new(0);
    let no_area = AtomicU64::new(0);
    let stride = size_of::<Line<AtomicI64>>();
    let run = run_threads::<()>(
        cfg,
        "increment",
        |ctx| {
            let base = current[0].0.as_ptr().cast::<u8>();
            // `add_current` runs sections exactly where the thread has a
            // live area, and refuses every add elsewhere.
            let sections =
                rseq::start(cfg.index).map(rseq::Start::path) == Some(rseq::Path::CriticalSections);
            if !sections {
                no_area.fetch_add(1, Ordering::Relaxed);
            }
            worker(cfg, ctx, || {
                live(rseq::retry(cfg.index, |s| {
                    let slot = &slots[cfg.slot(s)].0;
                    // SAFETY: the slots are written only by rseq operations
                    // with `cfg.index`, each on the slot of its index value;
                    // the slot is an aligned i64 that outlives the threads.
                    unsafe { rseq::add(s, slot.as_ptr(), 1) }
                }))?
                .map_err(|e| format!("add: {e}"))?;
                // SAFETY: word `i` of `current` is the aligned AtomicI64 at
                // `base + i * stride` for every `i < cfg.slots` (`Line` is
                // `repr(C)`), and it outlives the threads; only this call,
                // always with `cfg.index`, writes those words.
                let done = unsafe { rseq::add_current(cfg.index, base, stride, cfg.slots, 1) };
                if done != sections {
                    return Err(format!(
                        "add_current returned {done} in a worker {} a live area",
                        if sections { "with" } else { "without" }
                    ));
                }
                if !done {
                    shared.fetch_add(1, Ordering::Relaxed);
                }
                Ok(true)
            })
        },
        None,
    );
    let shared = shared.load(Ordering::Relaxed);
    let mut check = exact("the sum of the add slots", sum(&slots), cfg.expected());
    check.extend(exact(
        "the sum of the add_current slots and the shared word",
        sum(&current) + shared,
        cfg.expected(),
    ));
    check.extend(exact(
        "the shared word (the adds of the workers without an area)",
        shared,
        no_area.load(Ordering::Relaxed) * cfg.reps,
    ));
    result(cfg, "increment", &run, check)
}
