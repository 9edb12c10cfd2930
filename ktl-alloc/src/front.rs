//! Which front end serves a thread, decided once per process: the first
//! allocation decides the owner of the rseq areas (through ktl) and maps the
//! per-CPU regions; until that is done, allocations (the decision's own, and
//! any other thread's) go to the central cache one object at a time.

use crate::cpu::Regions;
use crate::{central, thread};
use core::sync::atomic::{AtomicU8, Ordering};
use ktl::rseq::{self, Index, Path};
use std::sync::OnceLock;

/// Nothing decided yet.
const UNDECIDED: u8 = 0;
/// A thread is deciding.
const DECIDING: u8 = 1;
/// Every thread uses its per-thread cache.
const PER_THREAD: u8 = 2;
/// Threads that run restartable sequences use the per-CPU caches.
const PER_CPU: u8 = 3;

static STATE: AtomicU8 = AtomicU8::new(UNDECIDED);
static REGIONS: OnceLock<Regions> = OnceLock::new();
static WHY: OnceLock<Why> = OnceLock::new();

/// Why the per-thread front end serves every thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// No thread can have an rseq area: the kernel lacks the system call,
    /// a filter refuses it, or registration failed
    /// ([`ktl::area::Unavailable`]).
    RseqUnavailable(ktl::area::Unavailable),
    /// The per-CPU regions could not be mapped, or the number of CPUs could
    /// not be read.
    NoRegions,
}

impl core::fmt::Display for Why {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Why::RseqUnavailable(u) => write!(f, "rseq is unavailable ({u})"),
            Why::NoRegions => f.write_str("the per-CPU caches could not be mapped"),
        }
    }
}

/// The front end live in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontEnd {
    /// No allocation has been made yet, or the first one is deciding.
    Undecided,
    /// Per-CPU caches indexed by `index` (`mm_cid` where the kernel has it),
    /// for every thread that runs restartable sequences; a thread that
    /// cannot (its registration failed, or it released its area) uses a
    /// per-thread cache.
    PerCpu {
        /// The index of the caches.
        index: Index,
        /// How many caches (index values) there are.
        caches: usize,
    },
    /// Per-thread caches for every thread, and why.
    PerThread(Why),
}

impl core::fmt::Display for FrontEnd {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FrontEnd::Undecided => f.write_str("undecided (nothing allocated yet)"),
            FrontEnd::PerCpu { index, caches } => {
                let by = match index {
                    Index::CpuId => "CPU number",
                    Index::MmCid => "concurrency id (mm_cid)",
                };
                write!(
                    f,
                    "per-CPU caches by {by}, {caches} of them (restartable sequences)"
                )
            }
            FrontEnd::PerThread(why) => write!(f, "per-thread caches: {why}"),
        }
    }
}

/// The front end live now.
pub(crate) fn front_end() -> FrontEnd {
    match STATE.load(Ordering::Acquire) {
        PER_CPU => match REGIONS.get() {
            Some(r) => FrontEnd::PerCpu {
                index: r.index(),
                caches: r.count(),
            },
            None => FrontEnd::Undecided,
        },
        PER_THREAD => FrontEnd::PerThread(WHY.get().copied().unwrap_or(Why::NoRegions)),
        _ => FrontEnd::Undecided,
    }
}

/// The per-CPU regions, once mapped.
#[inline(always)]
pub(crate) fn regions() -> Option<&'static Regions> {
    REGIONS.get()
}

/// An object of class `c`; null when the OS refuses memory.
#[inline(always)]
pub(crate) fn alloc(c: usize) -> *mut u8 {
    if STATE.load(Ordering::Acquire) == PER_CPU {
        if let Some(r) = REGIONS.get() {
            if let Ok(p) = r.alloc(c) {
                return p;
            }
            return thread::alloc(c);
        }
    }
    alloc_cold(c)
}

#[cold]
#[inline(never)]
fn alloc_cold(c: usize) -> *mut u8 {
    match decide() {
        PER_CPU => alloc(c),
        PER_THREAD => thread::alloc(c),
        _ => {
            let mut one = [core::ptr::null_mut()];
            central::fetch(c, &mut one);
            one[0]
        }
    }
}

/// Frees an object of class `c`.
///
/// # Safety
///
/// `p` is an object of class `c` from this allocator, freed once.
#[inline(always)]
pub(crate) unsafe fn free(c: usize, p: *mut u8) {
    if STATE.load(Ordering::Acquire) == PER_CPU {
        if let Some(r) = REGIONS.get() {
            if r.free(c, p).is_ok() {
                return;
            }
            // SAFETY: the caller's contract.
            unsafe { thread::free(c, p) };
            return;
        }
    }
    // SAFETY: the caller's contract.
    unsafe { free_cold(c, p) }
}

/// # Safety
///
/// As for [`free`].
#[cold]
#[inline(never)]
unsafe fn free_cold(c: usize, p: *mut u8) {
    // SAFETY: the caller's contract, for each front end.
    unsafe {
        match STATE.load(Ordering::Acquire) {
            PER_CPU => free(c, p),
            PER_THREAD => thread::free(c, p),
            _ => central::give(c, &[p]),
        }
    }
}

/// Decides the front end if nobody has; returns the state (`DECIDING`
/// while another thread, or this one further up its stack, decides).
fn decide() -> u8 {
    match STATE.compare_exchange(UNDECIDED, DECIDING, Ordering::Acquire, Ordering::Acquire) {
        Ok(_) => {}
        Err(state) => return state,
    }
    crate::fork::register();
    // The owner decision; it may allocate, which the state sends to the
    // central cache.
    let layout = ktl::layout();
    let state = if let ktl::Owner::Unavailable(u) = layout.owner {
        let _ = WHY.set(Why::RseqUnavailable(u));
        PER_THREAD
    } else if rseq::path() != Path::CriticalSections {
        let _ = WHY.set(Why::NoRegions);
        PER_THREAD
    } else {
        let index = if layout.features.contains(ktl::Features::MM_CID) {
            Index::MmCid
        } else {
            Index::CpuId
        };
        let count = ktl::cpu::possible_cpus().map(|n| n as usize);
        match count.and_then(|n| Regions::map(index, n)) {
            Some(r) => {
                // `exclusive` sets itself up on first use, and part of that
                // (registering its fork handlers) takes the C library's
                // fork lock, which a forking thread holds while our prepare
                // handler waits for the lock of an idle round. An idle round
                // takes `exclusive` with that lock held: set it up now,
                // before any of the allocator's locks is held, so that it
                // never takes the C library's lock later.
                let _ = rseq::exclusive(index, 0);
                let _ = REGIONS.set(r);
                PER_CPU
            }
            None => {
                let _ = WHY.set(Why::NoRegions);
                PER_THREAD
            }
        }
    };
    STATE.store(state, Ordering::Release);
    state
}
