//! `membarrier`: `offset_deref_addv(+1)` through a per-slot pointer that a
//! manager thread swaps between two arrays and fences. Both arrays sum to
//! threads x reps, and a swapped-out array never changes after its fence.

use super::{
    Config, ScenarioResult, exact, lines, live, not_run, result, run_threads, sum, worker,
};
use ktl::rseq::fence::{self, FenceKind};
use ktl::rseq::{self, Index};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub(super) fn membarrier(cfg: &Config) -> ScenarioResult {
    // With only critical sections, the manager swaps a pointer and fences
    // the slot's CPU, as the kernel's test does. A fallback operation does
    // not run in a section, so a fence alone does not stop it: with workers
    // that have rseq off, or on the locked path, the manager swaps under
    // `rseq::exclusive`, which closes the value's gate and fences.
    let exclusive = cfg.rseq_off_every > 0 || rseq::path() == rseq::Path::Locked;
    let kind = fence::kind();
    if kind != FenceKind::Rseq && rseq::path() != rseq::Path::Locked {
        return not_run(
            cfg,
            "membarrier",
            "skipped",
            format!("needs MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ; the fence here is {kind}"),
        );
    }
    let arrays = [lines(cfg.slots), lines(cfg.slots)];
    // Per slot: a pointer to that slot's counter in the active array.
    let active = lines(cfg.slots);
    for (i, a) in active.iter().enumerate() {
        a.0.store(arrays[0][i].0.as_ptr() as i64, Ordering::Relaxed);
    }
    let manager = |stop: &AtomicBool| -> (u64, Vec<String>) {
        // Which array each reachable slot uses, and the value its other
        // array had right after the fence that retired it.
        let mut which = vec![0usize; cfg.slots];
        let mut retired: Vec<Option<i64>> = vec![None; cfg.slots];
        let (mut swaps, mut problems) = (0u64, Vec::new());
        while !stop.load(Ordering::Relaxed) {
            for &slot in &cfg.reachable {
                let old = which[slot];
                let new = 1 - old;
                // The new array's counter must not have moved since it was
                // retired: no section may use a retired array.
                if let Some(v) = retired[slot] {
                    let now = arrays[new][slot].0.load(Ordering::Relaxed);
                    if now != v {
                        problems.push(format!(
                            "slot {slot}: a retired counter changed from {v} to {now}"
                        ));
                    }
                }
                let swap = || {
                    active[slot]
                        .0
                        .store(arrays[new][slot].0.as_ptr() as i64, Ordering::Release)
                };
                let fenced = if exclusive {
                    rseq::exclusive(cfg.index, slot as u32).map(|_held| swap())
                } else {
                    swap();
                    match cfg.index {
                        Index::CpuId => fence::fence_cpu(slot as u32),
                        Index::MmCid => fence::fence_all(),
                    }
                };
                if let Err(e) = fenced {
                    problems.push(format!("fence on slot {slot}: {e}"));
                    return (swaps, problems);
                }
                which[slot] = new;
                retired[slot] = Some(arrays[old][slot].0.load(Ordering::Acquire));
                swaps += 1;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        (swaps, problems)
    };
    let run = run_threads(
        cfg,
        "membarrier",
        |ctx| {
            worker(cfg, ctx, || {
                live(rseq::retry(cfg.index, |s| {
                    let ptr = active[cfg.slot(s)].0.as_ptr() as *mut *mut u8;
                    // SAFETY: the counters are written only by this rseq
                    // operation with `cfg.index` on the slot of its index
                    // value. The manager stores the pointers with atomic
                    // stores and fences the slot's CPU (or, with fallbacks
                    // running, swaps under `rseq::exclusive`) before it
                    // relies on the old counter, so an operation that
                    // loaded the old pointer aborts instead of committing;
                    // both arrays outlive the threads.
                    unsafe { rseq::offset_deref_addv(s, ptr, 0, 1) }
                }))?
                .map_err(|e| format!("offset_deref_addv: {e}"))?;
                Ok(true)
            })
        },
        Some(&manager),
    );
    let total = sum(&arrays[0]) + sum(&arrays[1]);
    let mut check = exact("the sum of both arrays", total, cfg.expected());
    let mut swaps = 0;
    if let Some((s, problems)) = &run.manager {
        swaps = *s;
        check.extend(problems.iter().take(5).cloned());
    }
    let mut r = result(cfg, "membarrier", &run, check);
    if r.detail.is_empty() {
        r.detail = if exclusive {
            format!("{swaps} swaps under rseq::exclusive")
        } else {
            format!("{swaps} swaps with fences")
        };
    }
    r
}
