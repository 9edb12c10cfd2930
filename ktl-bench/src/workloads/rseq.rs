//! The `rseq` group: a per-CPU counter incremented with restartable
//! sequences ([`ktl::rseq::add`] after [`ktl::rseq::start`],
//! [`ktl::rseq::add_current`] in one section, and
//! [`ktl::rseq::cmpeqv_storev`] on a value read just before), against the
//! same increment with an atomic instruction, in one thread and in two.
//!
//! The per-CPU counter is an array of `AtomicI64`, one per possible CPU,
//! each on its own 128-byte pair of cache lines. Each operation goes
//! through [`ktl::rseq::retry`] (`add_current` retries itself), so the cost
//! of reading the CPU number is part of it. The rseq rows need a live rseq
//! area in the benchmarking thread; without one they are listed as "n/a".
//! The rseq row's threads update their own CPUs' slots (no line is shared);
//! the atomic row's threads share one `AtomicU64`, the classic contended
//! counter. Each row counts its operations and checks its counters after
//! the samples.

use super::owner_text;
use crate::crew::{Work, two_thread_row};
use crate::harness::{Row, TimedLoop, one_thread_row, run_shape};
use ktl::rseq::{Failure, Index, Start};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// The group's name.
pub const GROUP: &str = "rseq";

/// `rseq::add` in one thread.
pub const RSEQ_ADD_1: &str = "rseq add (1 thread)";
/// The group's baseline: an uncontended `fetch_add`.
pub const FETCH_ADD_1: &str = "fetch_add uncontended (1 thread)";
/// `rseq::add` in two threads.
pub const RSEQ_ADD_2: &str = "rseq add (2 threads)";
/// `rseq::add_current` in one thread.
pub const RSEQ_CURRENT_1: &str = "rseq add_current (1 thread)";
/// `rseq::add_current` in two threads.
pub const RSEQ_CURRENT_2: &str = "rseq add_current (2 threads)";
/// One `AtomicU64` shared by two threads.
pub const SHARED_ADD_2: &str = "shared AtomicU64 fetch_add (2 threads)";
/// `rseq::cmpeqv_storev` in one thread.
pub const RSEQ_CAS_1: &str = "rseq cmpeqv_storev (1 thread)";
/// An uncontended `compare_exchange`.
pub const CAS_1: &str = "compare_exchange uncontended (1 thread)";

/// A value alone on a 128-byte aligned block: a pair of cache lines, which
/// the adjacent-line prefetcher treats as one unit, so that no two values
/// share either line.
#[repr(align(128))]
#[derive(Default)]
struct Padded<T>(T);

/// One CPU's counter.
type Slot = Padded<AtomicI64>;

/// A per-CPU counter: `n` zeroed slots.
fn slots(n: usize) -> Arc<[Slot]> {
    (0..n).map(|_| Slot::default()).collect()
}

/// The slot of the index `s` was started with, as the pointer the rseq
/// operations take, or `None` if the index is past the slots (never, when
/// they are sized by the possible CPUs: a CPU number is below that count).
#[inline(always)]
fn slot_ptr(slots: &[Slot], s: Start) -> Option<*mut i64> {
    slots.get(s.value() as usize).map(|slot| slot.0.as_ptr())
}

/// Adds 1 to the slot of the current CPU with [`ktl::rseq::add`]: 1 when
/// done, 0 when not (no live area, or an index past the slots; the count
/// check then reports it).
#[inline(always)]
fn rseq_add_once(slots: &[Slot]) -> u64 {
    let done = ktl::rseq::retry(Index::CpuId, |s| match slot_ptr(slots, s) {
        // SAFETY: the rseq contract holds for these slots. Only rseq
        // operations indexed by CPU (this function and `rseq_cas_once`, each
        // started with the index they write under) write them; everything
        // else only reads them. `slot_ptr` returned the slot of `s.value()`,
        // so the index is below the number of slots, and the pointer is a
        // live, 8-byte aligned `AtomicI64`'s, valid for `i64` reads and
        // writes.
        Some(p) => unsafe { ktl::rseq::add(s, p, 1) }.map(|()| true),
        None => Ok(false),
    });
    u64::from(matches!(done, Some(Ok(true))))
}

/// Adds 1 to the slot of the current CPU with [`ktl::rseq::add_current`],
/// which reads the CPU number inside its section: 1 when done, 0 when not
/// (as in [`rseq_add_once`]).
#[inline(always)]
fn rseq_current_once(slots: &[Slot]) -> u64 {
    let base = slots
        .first()
        .map_or(core::ptr::null_mut(), |s| s.0.as_ptr().cast::<u8>());
    // SAFETY: slot `i`'s AtomicI64 is at `base + i * size_of::<Slot>()` for
    // every `i < slots.len()` (each sits at the same offset in its slot), live, aligned
    // and valid for i64 reads and writes. Only rseq operations indexed by CPU
    // write the slots, each while running with the index value of the slot it
    // writes; everything else only reads them.
    let done =
        unsafe { ktl::rseq::add_current(Index::CpuId, base, size_of::<Slot>(), slots.len(), 1) };
    u64::from(done)
}

/// Adds 1 to the slot of the current CPU through compare-and-store: reads
/// the slot, then [`ktl::rseq::cmpeqv_storev`] stores the value plus one if
/// the slot still holds the value read. 1 when done, 0 when not (as in
/// [`rseq_add_once`]).
#[inline(always)]
fn rseq_cas_once(slots: &[Slot]) -> u64 {
    loop {
        let done = ktl::rseq::retry(Index::CpuId, |s| match slots.get(s.value() as usize) {
            Some(slot) => {
                let seen = slot.0.load(Ordering::Relaxed);
                // SAFETY: as in `rseq_add_once`: only rseq operations
                // indexed by CPU write the slots, and `s.value()` indexes
                // this live, aligned slot, below the number of slots.
                unsafe { ktl::rseq::cmpeqv_storev(s, slot.0.as_ptr(), seen, seen.wrapping_add(1)) }
                    .map(|()| true)
            }
            None => Ok(false),
        });
        match done {
            Some(Ok(done)) => return u64::from(done),
            // Another sequence on this CPU changed the slot between the read
            // and the section (only when two threads share the CPU): read
            // again.
            Some(Err(Failure::CompareFailed)) => continue,
            // `retry` restarts aborts itself; `None`: no live area.
            Some(Err(Failure::Aborted | Failure::FenceFailed)) | None => return 0,
        }
    }
}

/// Adds 1 to `a` through a compare-and-exchange loop; returns the value
/// replaced.
#[inline(always)]
fn cas_once(a: &AtomicU64) -> u64 {
    let mut seen = a.load(Ordering::Relaxed);
    loop {
        match a.compare_exchange(
            seen,
            seen.wrapping_add(1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(prev) => return prev,
            Err(now) => seen = now,
        }
    }
}

/// The sum of a per-CPU counter's slots.
fn slot_sum(slots: &[Slot]) -> i128 {
    slots
        .iter()
        .map(|s| i128::from(s.0.load(Ordering::Relaxed)))
        .sum()
}

/// The helper thread of the rseq row needs its own live area.
fn helper_rseq_setup() -> Result<(), String> {
    ktl::rseq::start(Index::CpuId)
        .map(|_| ())
        .ok_or_else(|| "the second thread has no live rseq area".to_owned())
}

/// The group's rows: per-CPU counters with restartable sequences against
/// atomics, in one thread and in two. Each row counts its operations and
/// checks its counters after the samples.
pub fn rows() -> Vec<Row> {
    const G: &str = GROUP;
    // The number of slots, or why the rseq rows cannot run.
    let cpus = match (ktl::rseq::start(Index::CpuId), ktl::cpu::possible_cpus()) {
        (None, _) => Err(format!(
            "no live rseq area in this thread (owner: {})",
            owner_text(&ktl::layout().owner)
        )),
        (Some(_), None) => {
            Err("cannot read the possible CPUs (/sys/devices/system/cpu/possible)".to_owned())
        }
        (Some(_), Some(n)) => Ok(n as usize),
    };
    let rseq_row = |name: &str, make: &dyn Fn(usize) -> Row| match &cpus {
        Ok(n) => make(*n).ours(),
        Err(reason) => Row::unavailable(name, G, reason.clone()).ours(),
    };
    let mut rows = Vec::new();

    rows.push(rseq_row(RSEQ_ADD_1, &|n| {
        let s = slots(n);
        let mine = Arc::clone(&s);
        let run: TimedLoop = Box::new(move |iters, shape| {
            // A local copy of the slice, so the loop keeps it in registers.
            let slots: &[Slot] = &mine;
            run_shape(&|| rseq_add_once(slots), iters, shape)
        });
        one_thread_row(RSEQ_ADD_1, G, run, move || slot_sum(&s))
    }));

    rows.push({
        let a = Arc::new(Padded(AtomicU64::new(0)));
        let mine = Arc::clone(&a);
        let run: TimedLoop = Box::new(move |iters, shape| {
            let a: &AtomicU64 = &mine.0;
            run_shape(&|| a.fetch_add(1, Ordering::Relaxed), iters, shape)
        });
        one_thread_row(FETCH_ADD_1, G, run, move || {
            i128::from(a.0.load(Ordering::Relaxed))
        })
    });

    rows.push(rseq_row(RSEQ_ADD_2, &|n| {
        let s = slots(n);
        let theirs = Arc::clone(&s);
        let work: Work = Arc::new(move |iters, shape| {
            let slots: &[Slot] = &theirs;
            run_shape(&|| rseq_add_once(slots), iters, shape);
        });
        two_thread_row(RSEQ_ADD_2, G, work, helper_rseq_setup, move || slot_sum(&s))
    }));

    rows.push({
        let a = Arc::new(Padded(AtomicU64::new(0)));
        let theirs = Arc::clone(&a);
        let work: Work = Arc::new(move |iters, shape| {
            let a: &AtomicU64 = &theirs.0;
            run_shape(&|| a.fetch_add(1, Ordering::Relaxed), iters, shape);
        });
        two_thread_row(
            SHARED_ADD_2,
            G,
            work,
            || Ok(()),
            move || i128::from(a.0.load(Ordering::Relaxed)),
        )
    });

    rows.push(rseq_row(RSEQ_CURRENT_1, &|n| {
        let s = slots(n);
        let mine = Arc::clone(&s);
        let run: TimedLoop = Box::new(move |iters, shape| {
            let slots: &[Slot] = &mine;
            run_shape(&|| rseq_current_once(slots), iters, shape)
        });
        one_thread_row(RSEQ_CURRENT_1, G, run, move || slot_sum(&s))
    }));

    rows.push(rseq_row(RSEQ_CURRENT_2, &|n| {
        let s = slots(n);
        let theirs = Arc::clone(&s);
        let work: Work = Arc::new(move |iters, shape| {
            let slots: &[Slot] = &theirs;
            run_shape(&|| rseq_current_once(slots), iters, shape);
        });
        two_thread_row(RSEQ_CURRENT_2, G, work, helper_rseq_setup, move || {
            slot_sum(&s)
        })
    }));

    rows.push(rseq_row(RSEQ_CAS_1, &|n| {
        let s = slots(n);
        let mine = Arc::clone(&s);
        let run: TimedLoop = Box::new(move |iters, shape| {
            let slots: &[Slot] = &mine;
            run_shape(&|| rseq_cas_once(slots), iters, shape)
        });
        one_thread_row(RSEQ_CAS_1, G, run, move || slot_sum(&s))
    }));

    rows.push({
        let a = Arc::new(Padded(AtomicU64::new(0)));
        let mine = Arc::clone(&a);
        let run: TimedLoop = Box::new(move |iters, shape| {
            let a: &AtomicU64 = &mine.0;
            run_shape(&|| cas_once(a), iters, shape)
        });
        one_thread_row(CAS_1, G, run, move || {
            i128::from(a.0.load(Ordering::Relaxed))
        })
    });

    rows
}
