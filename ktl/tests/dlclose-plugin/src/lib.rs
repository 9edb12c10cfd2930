//! A plugin built on ktl, for `ktl/tests/pin_dlclose.rs`: a shared object that
//! the test process loads with `dlopen`, calls from worker threads, and
//! unloads with `dlclose` while those threads are blocked.
//!
//! Its functions run ktl's critical sections in the calling thread, which
//! leave the thread's `rseq_cs` field pointing at the sections' descriptors
//! in this object until the kernel clears it, lazily, on the thread's next
//! return to user space after a preemption. It uses only the API that ktl
//! had before it pinned its object, so that the same fixture shows the
//! failure of that code.

use ktl::Owner;
use ktl::rseq::{self, Index, Path};
use std::sync::atomic::AtomicI64;

/// One counter per CPU number (more than any machine this runs on has).
static COUNTS: [AtomicI64; 4096] = [const { AtomicI64::new(0) }; 4096];

/// Adds 1 to the current CPU's counter `n` times, each addition in one
/// critical section (`rseq::add` in `rseq::retry`). Returns how many of them
/// committed as restartable sequences (not on a fallback path): `n` when the
/// calling thread has a live rseq area.
#[unsafe(no_mangle)]
pub extern "C" fn ktl_dlclose_plugin_add(n: u32) -> u32 {
    let mut in_sections = 0;
    for _ in 0..n {
        let done = rseq::retry(Index::CpuId, |s| {
            let Some(slot) = COUNTS.get(s.value() as usize) else {
                return Ok(false);
            };
            let section = s.path() == Path::CriticalSections;
            // SAFETY: the counters are written only by these additions,
            // indexed by CPU, and `slot` is a valid, aligned i64.
            unsafe { rseq::add(s, slot.as_ptr(), 1) }.map(|()| section)
        });
        if let Some(Ok(true)) = done {
            in_sections += 1;
        }
    }
    in_sections
}

/// The owner of the process's rseq areas as ktl decided it: 1 for the C
/// library, 2 for ktl, 0 when no area is available.
#[unsafe(no_mangle)]
pub extern "C" fn ktl_dlclose_plugin_owner() -> u32 {
    match ktl::layout().owner {
        Owner::Libc => 1,
        Owner::Ktl(_) => 2,
        Owner::Unavailable(_) => 0,
    }
}
